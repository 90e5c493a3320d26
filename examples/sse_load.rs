//! Many concurrent SSE subscribers against a running kla (driven by `bench/sse.sh`): opens them all, measures
//! kla's resident memory before and after (so the memory of one idle subscriber), then makes decisions and checks
//! that every subscriber got every one of them, in order.
//!
//! ```text
//! KLA_BASE=http://127.0.0.1:18700 KLA_TOKEN=... KLA_TENANT=bench KLA_AGENT=agt_... KLA_PID=1234 \
//!   cargo run --release --example sse_load
//! ```
//! Env: `KLA_SUBSCRIBERS` (1000), `KLA_DECISIONS` (20), `KLA_SETTLE_SECS` (3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is required"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("kla's /proc status");
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    ids: Vec<String>,
    error: Option<String>,
}

#[tokio::main]
async fn main() {
    let base = env("KLA_BASE");
    let token = env("KLA_TOKEN");
    let tenant = env("KLA_TENANT");
    let agent = env("KLA_AGENT");
    let pid = env("KLA_PID");
    let n = env_u64("KLA_SUBSCRIBERS", 1000) as usize;
    let decisions = env_u64("KLA_DECISIONS", 20) as usize;
    let settle = Duration::from_secs(env_u64("KLA_SETTLE_SECS", 3));

    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let rss_before = rss_kib(&pid);
    let opened = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, base, token, tenant, opened) = (
            client.clone(),
            base.clone(),
            token.clone(),
            tenant.clone(),
            opened.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Seen::default();
            let resp = client
                .get(format!("{base}/v1/events?types=decision.made"))
                .bearer_auth(&token)
                .header("x-tenant-id", &tenant)
                .send()
                .await;
            let mut resp = match resp {
                Ok(r) if r.status() == 200 => r,
                Ok(r) => {
                    seen.error = Some(format!(
                        "status {}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    ));
                    opened.fetch_add(1, Ordering::SeqCst);
                    return seen;
                }
                Err(e) => {
                    seen.error = Some(format!("connect: {e}"));
                    opened.fetch_add(1, Ordering::SeqCst);
                    return seen;
                }
            };
            let mut buf = String::new();
            let mut counted = false;
            loop {
                let chunk = match tokio::time::timeout(Duration::from_secs(120), resp.chunk()).await {
                    Ok(Ok(Some(c))) => c,
                    Ok(Ok(None)) => break,
                    Ok(Err(e)) => {
                        seen.error = Some(format!("read: {e}"));
                        break;
                    }
                    Err(_) => {
                        seen.error = Some("no data for 120s".into());
                        break;
                    }
                };
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let block: String = buf.drain(..end + 2).collect();
                    if !counted {
                        // The first message (`retry:`): the subscription is open.
                        counted = true;
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                    if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: "))
                        && block.contains("\nevent: decision.made\n")
                    {
                        seen.ids.push(id.to_owned());
                    }
                }
                if seen.ids.len() >= decisions {
                    break;
                }
            }
            seen
        }));
    }
    while (opened.load(Ordering::SeqCst) as usize) < n {
        if started.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "only {} of {n} subscriptions opened in 120s",
                opened.load(Ordering::SeqCst)
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_time = started.elapsed();
    tokio::time::sleep(settle).await;
    let rss_idle = rss_kib(&pid);

    let mut ids = Vec::with_capacity(decisions);
    let fanout_start = Instant::now();
    for i in 0..decisions {
        let r: serde_json::Value = client
            .post(format!("{base}/v1/decisions.evaluate"))
            .bearer_auth(&token)
            .header("x-tenant-id", &tenant)
            .json(&serde_json::json!({"agentId": agent, "action": "lookup_policy", "context": {"i": i}}))
            .send()
            .await
            .expect("evaluate")
            .json()
            .await
            .expect("answer");
        ids.push(format!("{}.0", r["ledgerIndex"].as_u64().expect("ledgerIndex")));
    }
    let mut errors = Vec::new();
    let mut complete = 0usize;
    for t in tasks {
        let seen = t.await.expect("task");
        match seen.error {
            Some(e) if seen.ids.len() < decisions => errors.push(e),
            _ if seen.ids == ids => complete += 1,
            _ => errors.push(format!("got {:?}, wanted {:?}", seen.ids, ids)),
        }
    }
    let fanout = fanout_start.elapsed();
    let per_sub = (rss_idle.saturating_sub(rss_before) as f64) / n as f64;
    println!(
        "| subscribers | opened in | errors | every event, in order | kla RSS before | RSS with idle subscribers | per idle subscriber | {decisions} decisions to all |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {:.2} s | {} | {complete}/{n} | {} MiB | {} MiB | {per_sub:.1} KiB | {:.2} s |",
        open_time.as_secs_f64(),
        errors.len(),
        rss_before / 1024,
        rss_idle / 1024,
        fanout.as_secs_f64()
    );
    errors.sort();
    errors.dedup();
    for e in errors.iter().take(10) {
        eprintln!("error: {e}");
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
