//! Shutdown of the real binary: on SIGTERM `kla serve` drains, releases the ledger and exits at once, also with the
//! tool-call proxy running (its handle must not keep the ledger open until the 10 s bound runs out).

use crate::harness::*;
use crate::upstream::{Upstream, through};
use kla::auth::Role;
use serde_json::Value;
use std::time::{Duration, Instant};

const T: &str = "acme-stop";

/// Well under the 10 s that a held ledger costs; room for a loaded 2-core machine.
const STOP_BOUND: Duration = Duration::from_secs(3);

/// The address of listener `name` from its `<title> listening` log line.
async fn listener_addr(p: &Process, title: &str) -> String {
    let needle = format!("{title} listening");
    let line = p
        .wait_log(&needle, Duration::from_secs(10), |l| l.contains(&needle))
        .await;
    let v: Value = serde_json::from_str(&line).expect("a JSON log line");
    v["fields"]["addr"].as_str().expect("addr").to_owned()
}

#[tokio::test]
async fn sigterm_with_a_proxy_route_exits_at_once_and_releases_the_ledger() {
    let mut up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kla.yaml");
    std::fs::write(
        &config,
        format!(
            "proxy:\n  tenant: {T}\n  agent: stop-bot\n  routes:\n    - {{name: tools, prefix: /tools, upstream: \"http://{}/api\"}}\n",
            up.addr
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let p = Process::serve(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--proxy-addr",
            "127.0.0.1:0",
        ],
    )
    .await;
    let admin = p.token(T, Role::Admin);
    p.register(&admin, T, "stop-bot").await;
    let proxy = listener_addr(&p, "kla proxy").await;
    // A call through the proxy (decided, recorded, forwarded), so its state has been used.
    let (status, headers, body) = through(client().get(format!("http://{proxy}/tools/lookup"))).await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-kla-decision-id"), "{headers:?}");
    assert_eq!(up.drain().len(), 1);

    let started = Instant::now();
    let exited = tokio::task::spawn_blocking(move || p.terminate()).await.unwrap();
    let took = started.elapsed();
    assert!(exited.success(), "{}: {}", exited.status, exited.log);
    assert!(
        !exited.log.contains("still held after shutdown"),
        "the ledger was held past shutdown:\n{}",
        exited.log
    );
    assert!(
        took < STOP_BOUND,
        "SIGTERM to exit took {took:?}:\n{}",
        exited.log
    );
    assert!(exited.log.contains("\"stopped\""), "{}", exited.log);
    // Released means released: the data dir opens again at once, with the call's decision in it.
    let again = Process::serve(&data, &[]).await;
    let ok = again.get("/readyz", &admin, T).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}
