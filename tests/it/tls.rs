//! Serving HTTPS with rustls.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;

const T: &str = "acme-prod";

#[tokio::test]
async fn serves_https_with_rustls() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _, client) = https_config(tmp.path());
    let s = Server::start_cfg(cfg, Some((client, "localhost"))).await;
    assert!(s.base.starts_with("https://localhost:"));
    let r = send(s.client.get(format!("{}/admin/health", s.base))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    let tok = s.token(T, Role::Admin);
    let r = send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&agent_body("tls")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["agentId"].as_str().unwrap();
    let one = send(s.req(Method::GET, &format!("/v1/agents/{id}"), &tok, T)).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body["name"], "tls");
    // Plain HTTP to the TLS port fails.
    let plain = reqwest::Client::new()
        .get(s.base.replace("https://localhost", "http://127.0.0.1") + "/healthz")
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}
