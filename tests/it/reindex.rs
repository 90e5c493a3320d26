//! The store's index is derived from the ledger: losing `kla.db` loses nothing, agents included.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::json;

const T: &str = "acme";

#[tokio::test]
async fn losing_the_store_loses_no_agent_and_no_decision() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = Server::start_cfg(raw(tmp.path()), None).await;
    let tok = s.token(T, Role::Admin);
    let first = s.register(&tok, T, "claims-triage").await;
    let mut changed = agent_body("claims-triage");
    changed["model"] = json!("gpt-5");
    let r = send(s.req(Method::POST, "/v1/agents", &tok, T).json(&changed)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["agentId"], first.as_str(), "a new version keeps the id");
    assert_eq!(r.body["version"], 2);
    let other = s.register(&tok, T, "mailer").await;
    let d = s.evaluate(&tok, T, &first, "lookup_policy", json!({})).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let before = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    let detail_before = send(s.req(Method::GET, &format!("/v1/agents/{first}"), &tok, T)).await;
    s.stop().await;

    for f in ["kla.db", "kla.db-wal", "kla.db-shm"] {
        let _ = std::fs::remove_file(tmp.path().join(f));
    }
    let s = Server::start_cfg(raw(tmp.path()), None).await;
    let tok = s.token(T, Role::Admin);
    let after = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(after.status, 200);
    assert_eq!(
        after.body, before.body,
        "every agent and its latest version are rebuilt from the ledger"
    );
    let detail_after = send(s.req(Method::GET, &format!("/v1/agents/{first}"), &tok, T)).await;
    assert_eq!(
        detail_after.body, detail_before.body,
        "every version, with its signature and lineage id"
    );
    let ids: Vec<&str> = after.body["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .map(|a| a["agentId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&first.as_str()) && ids.contains(&other.as_str()));

    // The decision is found again, and the rebuilt agents are usable.
    let id = d.body["decisionId"].as_str().expect("decisionId");
    let got = send(s.req(Method::GET, &format!("/v1/decisions/{id}"), &tok, T)).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let again = s.evaluate(&tok, T, &first, "lookup_policy", json!({})).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["decision"], d.body["decision"]);
    // Registration continues from the rebuilt versions: the same manifest is a duplicate, a new one is version 3.
    let dup = send(s.req(Method::POST, "/v1/agents", &tok, T).json(&changed)).await;
    dup.assert_error(409, "conflict");
    changed["model"] = json!("gpt-5.1");
    let v3 = send(s.req(Method::POST, "/v1/agents", &tok, T).json(&changed)).await;
    assert_eq!(v3.status, 201, "{}", v3.body);
    assert_eq!(
        (v3.body["agentId"].as_str(), v3.body["version"].as_i64()),
        (Some(first.as_str()), Some(3))
    );
}

/// Concurrent registrations of one name take distinct, contiguous versions under one id.
#[tokio::test]
async fn concurrent_registrations_of_one_name_take_distinct_versions() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut body = agent_body("racer");
        body["description"] = json!(format!("variant {i}"));
        tasks.push(send(s.req(Method::POST, "/v1/agents", &tok, T).json(&body)));
    }
    let answers = futures_util::future::join_all(tasks).await;
    let mut versions: Vec<i64> = answers
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["version"].as_i64().expect("version")
        })
        .collect();
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|r| r.body["agentId"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), 1, "one agent id for one name");
    versions.sort_unstable();
    assert_eq!(versions, (1..=12).collect::<Vec<_>>());
}
