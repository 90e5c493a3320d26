//! Webhooks through the real server: approval events are POSTed to a real local receiver that verifies each
//! signature with the `standardwebhooks` package (the Standard Webhooks reference library) and fails at first, so
//! kla must retry; delivery resumes where it stood after the receiver and kla were both down.

use crate::harness::*;
use kla::auth::Role;
use kla::config::FileWebhook;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const T: &str = "acme-hooks";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The receiver on `port` (0: any); returns it and its port.
fn receiver(out: &Path, fail_first: u32, port: u16) -> (Child, u16) {
    let (child, port) = spawn_listening(
        Command::new(venv_python())
            .arg(repo_path("tests/py/webhook_receiver.py"))
            .env("SECRET", SECRET)
            .env("OUT", out)
            .env("FAIL_FIRST", fail_first.to_string())
            .env("PORT", port.to_string()),
        "the receiver",
    );
    (child, port)
}

fn lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("receiver line"))
        .collect()
}

/// Waits until the receiver verified `n` deliveries.
async fn verified(out: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<Value> = lines(out).into_iter().filter(|l| l["verified"] == true).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} verified: {:?}",
            got.len(),
            lines(out)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(data: &Path, port: u16) -> kla::config::RawConfig {
    let mut c = raw(data);
    c.webhooks = vec![FileWebhook {
        name: "desk".into(),
        url: format!("http://127.0.0.1:{port}/hooks/kla"),
        tenant: T.into(),
        secret: Some(SECRET.into()),
        timeout: Some("2s".into()),
        retry_initial: Some("50ms".into()),
        ..Default::default()
    }];
    c
}

async fn approval(s: &Server, agent_tok: &str, agent: &str, amount: u64) -> String {
    let r = s
        .evaluate(agent_tok, T, agent, "execute_refund", json!({"amount": amount}))
        .await;
    assert_eq!(r.body["decision"], "require_approval", "{}", r.body);
    r.body["approvalId"].as_str().expect("approvalId").to_owned()
}

async fn decide(s: &Server, id: &str, verdict: &str) {
    let r = s.vote(&s.token(T, Role::Approver), T, id, verdict, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_events_arrive_signed_retried_and_resumed_across_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("received.jsonl");
    let data = dir.path().join("data");
    let (mut rx, port) = receiver(&out, 2, 0);
    let s = Server::start_cfg(config(&data, port), None).await;
    let agent_tok = s.token(T, Role::Agent);
    let agent = s.register(&agent_tok, T, "refund-bot").await;
    // Another tenant's approvals never reach this tenant's webhook.
    let other = s.token("other-tenant", Role::Agent);
    let other_agent = s.register(&other, "other-tenant", "refund-bot").await;
    let r = s
        .evaluate(
            &other,
            "other-tenant",
            &other_agent,
            "execute_refund",
            json!({"amount": 5000}),
        )
        .await;
    assert_eq!(r.body["decision"], "require_approval");

    let first = approval(&s, &agent_tok, &agent, 5000).await;
    decide(&s, &first, "APPROVED").await;
    let got = verified(&out, 2).await;
    let types: Vec<&str> = got.iter().filter_map(|l| l["type"].as_str()).collect();
    assert_eq!(types, ["approval.required", "approval.resolved"], "{got:?}");
    assert_eq!(got[0]["event"]["data"]["approvalId"], first.as_str());
    assert_eq!(got[1]["event"]["data"]["status"], "APPROVED");
    // The two refused deliveries were the first event, sent again with the same id.
    let all = lines(&out);
    let failed: Vec<&Value> = all.iter().filter(|l| l["failed_on_purpose"] == true).collect();
    assert_eq!(failed.len(), 2, "{all:?}");
    assert!(failed.iter().all(|l| l["id"] == got[0]["id"]), "{all:?}");
    assert!(
        all.iter().all(|l| l["verified"] != false),
        "every signature verified: {all:?}"
    );

    // The receiver goes away; an approval is opened and denied while it is down; then kla stops too.
    rx.kill().expect("kill receiver");
    let _ = rx.wait();
    let second = approval(&s, &agent_tok, &agent, 6000).await;
    decide(&s, &second, "DENIED").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.stop().await;

    // Both come back: what was not delivered is, once, and nothing delivered before is sent again.
    let (mut rx, _) = receiver(&out, 0, port);
    let s = Server::start_cfg(config(&data, port), None).await;
    let got = verified(&out, 4).await;
    let types: Vec<&str> = got.iter().filter_map(|l| l["type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "approval.required",
            "approval.resolved",
            "approval.required",
            "approval.resolved"
        ],
        "{got:?}"
    );
    assert_eq!(got[2]["event"]["data"]["approvalId"], second.as_str());
    assert_eq!(got[3]["event"]["data"]["status"], "DENIED");
    // A marker after them: deliveries follow the ledger's order, so once it has arrived, a second delivery of any
    // of the four would have arrived before it (no waiting for something not to happen).
    let marker = approval(&s, &agent_tok, &agent, 7000).await;
    let got = verified(&out, 5).await;
    assert_eq!(got[4]["event"]["data"]["approvalId"], marker.as_str(), "{got:?}");
    let delivered: Vec<Value> = lines(&out)
        .into_iter()
        .filter(|l| l["verified"] == true)
        .collect();
    let ids: std::collections::BTreeSet<&str> = delivered.iter().filter_map(|l| l["id"].as_str()).collect();
    assert_eq!(ids.len(), 5, "five events: {delivered:?}");
    assert_eq!(delivered.len(), 5, "no event delivered twice: {delivered:?}");
    s.stop().await;
    let _ = rx.kill();
    let _ = rx.wait();
}

#[test]
fn webhook_entries_are_validated() {
    let dir = tempfile::tempdir().expect("dir");
    let base = |f: &dyn Fn(&mut FileWebhook)| {
        let mut c = config(dir.path(), 9);
        f(&mut c.webhooks[0]);
        c.validate().err().map(|e| e.to_string())
    };
    assert_eq!(base(&|_| {}), None);
    for (what, f) in [
        (
            "url",
            &(|w: &mut FileWebhook| w.url = "ftp://x/".into()) as &dyn Fn(&mut FileWebhook),
        ),
        ("secret", &|w: &mut FileWebhook| w.secret = Some("hunter2".into())),
        ("secret", &|w: &mut FileWebhook| w.secret = None),
        ("tenant", &|w: &mut FileWebhook| w.tenant = "_system".into()),
        ("name", &|w: &mut FileWebhook| w.name = "a b".into()),
        ("events", &|w: &mut FileWebhook| {
            w.events = Some(vec!["approval.maybe".into()])
        }),
        ("timeout", &|w: &mut FileWebhook| w.timeout = Some("1d".into())),
    ] {
        let e = base(f).unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(e.contains("webhooks[0]"), "{what}: {e}");
    }
}
