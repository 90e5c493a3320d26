//! A ledger that has stopped taking appends says so: `/readyz` answers 503 and `/admin/health` names the ledger's
//! state, through the real server. The failure is real: `entries.log` is `/dev/full`, on which every write fails
//! with ENOSPC, as on a full disk.

use crate::harness::*;
use kla::auth::Role;
use kla::ledger::{Ledger, LedgerConfig};
use reqwest::Method;

const T: &str = "acme-ledger-health";

async fn get(s: &Server, path: &str) -> Resp {
    send(s.client.get(format!("{}{path}", s.base))).await
}

#[tokio::test]
async fn a_healthy_ledger_is_ready_and_reported_ok() {
    let s = Server::start().await;
    let r = get(&s, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "ready");
    let h = get(&s, "/admin/health").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.body["status"], "ok", "{}", h.body);
    assert_eq!(h.body["ledger"]["status"], "ok", "{}", h.body);
    assert!(h.body["sqlite_version"].is_string() && h.body["uptime_sec"].is_u64());
    s.stop().await;
}

#[tokio::test]
async fn a_ledger_refusing_appends_makes_the_server_unready_and_degraded() {
    assert!(
        std::path::Path::new("/dev/full").exists(),
        "this test needs /dev/full"
    );
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    // A ledger directory with its origin and key, whose entries file is /dev/full.
    let ldir = data.join("ledger");
    drop(Ledger::open(LedgerConfig::new(&ldir)).expect("create ledger"));
    let entries = ldir.join(kla::ledger::log::ENTRIES_FILE);
    std::fs::remove_file(&entries).expect("rm entries");
    std::os::unix::fs::symlink("/dev/full", &entries).expect("symlink");

    let s = Server::start_cfg(raw(&data), None).await;
    // Appends are refused for real: registering an agent records it in the ledger.
    let tok = s.token(T, Role::Admin);
    let r = send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&agent_body("full")),
    )
    .await;
    assert!(r.status.is_server_error(), "{} {}", r.status, r.body);

    let r = get(&s, "/readyz").await;
    r.assert_error(503, "internal_error");
    let msg = r.body["message"].as_str().expect("message");
    assert!(msg.contains("ledger refuses appends"), "{msg}");
    assert!(!msg.contains(&*data.to_string_lossy()), "no path in {msg}");
    assert_eq!(r.header("retry-after"), Some("1"));

    let h = get(&s, "/admin/health").await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["status"], "degraded", "{}", h.body);
    assert_eq!(h.body["ledger"]["status"], "refusing_appends", "{}", h.body);
    let reason = h.body["ledger"]["reason"].as_str().expect("reason");
    assert!(reason.contains("until restart"), "{reason}");
    assert!(reason.to_lowercase().contains("no space left"), "{reason}");
    let since = h.body["ledger"]["since"].as_str().expect("since");
    let since = time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("since {since:?}: {e}"));
    assert!(since <= time::OffsetDateTime::now_utc());
    assert!(h.body["sqlite_version"].is_string() && h.body["uptime_sec"].is_u64());
    s.stop().await;
}
