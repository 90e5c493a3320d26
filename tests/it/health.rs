//! The health routes: `/admin/health`, `/healthz`, `/readyz`, without auth.

use crate::harness::*;

#[tokio::test]
async fn health_endpoints_need_no_auth() {
    let s = Server::start().await;
    let r = send(s.client.get(format!("{}/admin/health", s.base))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    assert!(r.body["sqlite_version"].as_str().unwrap().starts_with("3."));
    assert!(r.body["uptime_sec"].is_u64());
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    assert_eq!(
        r.body["ledger"],
        serde_json::json!({"status": "ok"}),
        "{}",
        r.body
    );
    assert_eq!(r.body.as_object().unwrap().len(), 4, "{}", r.body);
    let live = send(s.client.get(format!("{}/healthz", s.base))).await;
    assert_eq!(live.status, 200);
    assert_eq!(live.body, serde_json::json!({"status": "ok"}));
    let ready = send(s.client.get(format!("{}/readyz", s.base))).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.body, serde_json::json!({"status": "ready"}));
}
