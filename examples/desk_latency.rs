//! The Decision Desk's speed on loopback: how long a person's decision takes to reach a caller that waits for it
//! (`GET /v1/decisions/{id}?wait=`), beside a plain round trip of the same server in the same run, and the cost
//! of many pending approvals (creating them, listing the oldest page, deciding one of them).
//!
//! ```text
//! cargo run --release --example desk_latency            # KLA_DESK_N=500 decisions waited for, KLA_DESK_PENDING=10000
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kla::auth::{self, Role, keys};
use kla::config::RawConfig;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn show(name: &str, v: &mut [Duration]) {
    println!(
        "| {name} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
        v.len(),
        pct(v, 0.5).as_secs_f64() * 1e3,
        pct(v, 0.99).as_secs_f64() * 1e3,
        pct(v, 1.0).as_secs_f64() * 1e3
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_usize("KLA_DESK_N", 500);
    let pending = env_usize("KLA_DESK_PENDING", 10_000);
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = RawConfig {
        data_dir: Some(dir.path().to_owned()),
        api_addr: Some("127.0.0.1:0".into()),
        policies: Some("policies".into()),
        ..Default::default()
    };
    let running = kla::app::start(cfg.validate().expect("config"))
        .await
        .expect("start");
    let base = format!("http://{}", running.api_addr);
    let key = keys::load(&keys::token_key_path(dir.path())).expect("key");
    let mint = |role: Role, subject: &str| {
        auth::mint(
            key.private_pem.as_bytes(),
            vec!["bench".into()],
            role,
            subject.into(),
            None,
            Duration::from_secs(3600),
        )
        .expect("mint")
    };
    let (agent_tok, approver) = (mint(Role::Agent, "bot"), mint(Role::Approver, "alice"));
    let c = reqwest::Client::new();
    let req = |m: reqwest::Method, path: &str, tok: &str| {
        c.request(m, format!("{base}{path}"))
            .bearer_auth(tok)
            .header("x-tenant-id", "bench")
    };
    let agent: Value = req(reqwest::Method::POST, "/v1/agents", &agent_tok)
        .json(&json!({"name": "payer"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agent["agentId"].as_str().unwrap().to_owned();
    let ask = |amount: u64| {
        req(reqwest::Method::POST, "/v1/decisions.evaluate", &agent_tok)
            .json(&json!({"agentId": agent, "action": "execute_refund", "context": {"amount": amount}}))
            .send()
    };

    println!("| run | n | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    let mut base_rt = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        req(reqwest::Method::GET, "/v1/agents?limit=1", &agent_tok)
            .send()
            .await
            .unwrap();
        base_rt.push(t.elapsed());
    }
    show(
        "baseline: GET /v1/agents?limit=1 round trip (auth + index read)",
        &mut base_rt,
    );

    let (mut to_waiter, mut after_answer, mut decide_rt) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let d: Value = ask(5000 + i as u64).await.unwrap().json().await.unwrap();
        let (decision, approval) = (
            d["decisionId"].as_str().unwrap().to_owned(),
            d["approvalId"].as_str().unwrap().to_owned(),
        );
        let poll = req(
            reqwest::Method::GET,
            &format!("/v1/decisions/{decision}?wait=30s"),
            &agent_tok,
        )
        .send();
        let poll = tokio::spawn(async move {
            let r: Value = poll.await.unwrap().json().await.unwrap();
            (r, Instant::now())
        });
        // Let the long-poll park before the person decides.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let sent = Instant::now();
        let r = req(
            reqwest::Method::POST,
            &format!("/v1/approvals/{approval}/decision"),
            &approver,
        )
        .json(&json!({"decision": "APPROVED"}))
        .send()
        .await
        .unwrap();
        let answered = Instant::now();
        assert_eq!(r.status(), 200);
        let (body, woke) = poll.await.unwrap();
        assert_eq!(body["finalDecision"], "allow", "{body}");
        to_waiter.push(woke.saturating_duration_since(sent));
        after_answer.push(woke.saturating_duration_since(answered));
        decide_rt.push(answered - sent);
    }
    show("POST decision round trip (ledger fsync + index)", &mut decide_rt);
    show(
        "a person's decision sent -> the waiting long-poll answered",
        &mut to_waiter,
    );
    show("decision answered -> long-poll answered", &mut after_answer);

    let t = Instant::now();
    let mut open = Vec::with_capacity(pending);
    for chunk in (0..pending).collect::<Vec<_>>().chunks(64) {
        let rs = futures_util::future::join_all(chunk.iter().map(|i| ask(2000 + *i as u64))).await;
        for r in rs {
            open.push(r.unwrap().status());
        }
    }
    let created = t.elapsed();
    assert!(open.iter().all(|s| *s == 200));
    println!(
        "\n{pending} approvals opened in {:.1} s ({:.0}/s, 64 at a time)",
        created.as_secs_f64(),
        pending as f64 / created.as_secs_f64()
    );
    let mut list = Vec::new();
    let mut first = None;
    for _ in 0..50 {
        let t = Instant::now();
        let r: Value = req(
            reqwest::Method::GET,
            "/v1/approvals?status=PENDING&limit=100",
            &approver,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        list.push(t.elapsed());
        assert_eq!(
            r["counts"]["PENDING"].as_u64(),
            Some(pending as u64),
            "{}",
            r["counts"]
        );
        first = r["approvals"][0]["approvalId"].as_str().map(str::to_owned);
    }
    println!("\n| with {pending} pending | n | p50 | p99 | max |\n|---|---|---|---|---|");
    show("GET /v1/approvals?status=PENDING&limit=100", &mut list);
    let t = Instant::now();
    let r = req(
        reqwest::Method::POST,
        &format!("/v1/approvals/{}/decision", first.unwrap()),
        &approver,
    )
    .json(&json!({"decision": "DENIED"}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut one = vec![t.elapsed()];
    show("POST decision on the oldest", &mut one);
    running.shutdown.cancel();
    let _ = running.done.await;
}
