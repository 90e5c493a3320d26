//! Listeners: several served and drained together, their addresses read back by name, and (with lowered limits)
//! the connection cap, the idle, header and body timeouts, and the early 413, each against slow or idle raw TCP
//! clients.

use crate::harness::*;
use axum::routing::get;
use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

/// Two listeners with their own routers: both bound on port 0, both reachable by name, and one shutdown stops both
/// after letting a request in flight on each finish.
#[tokio::test]
async fn several_listeners_are_served_and_drained_together() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let slow = |name: &'static str| {
        let mut rx = release_rx.clone();
        axum::Router::new()
            .route("/", get(move || async move { name }))
            .route(
                "/slow",
                get(move || async move {
                    let _ = rx.wait_for(|go| *go).await;
                    name
                }),
            )
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound = kla::server::bind(vec![
        kla::server::Listener::new("one", any, slow("one")),
        kla::server::Listener::new("two", any, slow("two")),
    ])
    .await
    .expect("bind");
    let addrs = bound.addrs();
    assert_eq!(addrs.keys().collect::<Vec<_>>(), ["one", "two"]);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(bound.serve(shutdown.clone(), Duration::from_secs(10)));
    let client = reqwest::Client::new();
    for (name, addr) in &addrs {
        let body = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(&body, name);
    }
    // One request in flight on each listener, then shut down.
    let in_flight: Vec<_> = addrs
        .values()
        .map(|addr| tokio::spawn(client.get(format!("http://{addr}/slow")).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for addr in addrs.values() {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} stopped accepting"
        );
    }
    assert!(
        !served.is_finished(),
        "the drain waits for the requests in flight"
    );
    release_tx.send(true).unwrap();
    for (r, name) in in_flight.into_iter().zip(addrs.keys()) {
        let body = r.await.unwrap().expect("drained, not cut").text().await.unwrap();
        assert_eq!(&body, name);
    }
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("stopped once drained")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn two_listeners_may_not_share_a_name() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let err = kla::server::bind(vec![
        kla::server::Listener::new("api", any, axum::Router::new()),
        kla::server::Listener::new("api", any, axum::Router::new()),
    ])
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("\"api\""), "{err}");
}

/// `Running` names every bound address; `api_addr` is the API listener's.
#[tokio::test]
async fn the_running_server_exposes_its_addresses_by_listener_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = raw(tmp.path()).validate().unwrap();
    let running = kla::app::start(cfg).await.expect("starts");
    assert_eq!(running.listeners.get("api"), Some(&running.api_addr));
    assert_ne!(running.api_addr.port(), 0);
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}

/// The API listener's log line keeps its exact message and its `addr` field, which tools parse.
#[tokio::test]
async fn the_api_listener_logs_its_bound_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(kla_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["--api-addr", "127.0.0.1:0", "--log-format", "json"])
        .arg("--policies")
        .arg(repo_path("policies"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (printed, logged) = tokio::task::spawn_blocking(move || {
        let mut printed = String::new();
        std::io::BufReader::new(stdout).read_line(&mut printed).unwrap();
        let logged = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening"))
            .unwrap();
        (printed, logged)
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(line["fields"]["message"], "kla API listening", "{logged}");
    let addr = line["fields"]["addr"].as_str().unwrap();
    assert_eq!(printed.trim(), format!("kla listening on {addr}"));
}
