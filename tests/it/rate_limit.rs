//! The per-tenant rate limit.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use std::time::Duration;

#[tokio::test]
async fn rate_limit_per_tenant() {
    let s = Server::start_with(|c| {
        c.rate_limit_rps = Some(1.0);
        c.rate_limit_burst = Some(3);
    })
    .await;
    let a = s.token("a", Role::Auditor);
    let b = s.token("b", Role::Auditor);
    for _ in 0..3 {
        assert_eq!(send(s.req(Method::GET, "/v1/agents", &a, "a")).await.status, 200);
    }
    let r = send(s.req(Method::GET, "/v1/agents", &a, "a")).await;
    r.assert_error(429, "rate_limited");
    assert!(
        r.body["message"].as_str().unwrap().contains("tenant 'a'"),
        "names the tenant: {}",
        r.body
    );
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&after));
    assert_eq!(
        send(s.req(Method::GET, "/v1/agents", &b, "b")).await.status,
        200,
        "tenant b has its own bucket"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        send(s.req(Method::GET, "/v1/agents", &a, "a")).await.status,
        200,
        "refilled"
    );
}
