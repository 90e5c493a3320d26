//! `POST /v1/decisions.evaluate` and `GET /v1/decisions/{id}`: validation, storage, roles, and reading a
//! decision back at once by every route.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;

const T: &str = "acme-prod";

#[tokio::test]
async fn decisions_are_stored_idempotent_and_validated() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "x").await;
    let body = json!({"agentId": agent, "action": "delete_customer", "context": {"id": 1}, "traceId": "4bf92f3577b34da6a3ce929d0e0e4736"});
    let post = |key: &str| {
        s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
            .header("Idempotency-Key", key)
            .json(&body)
    };
    let first = send(post("e-1")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["decision"], "block");
    assert_eq!(first.body["reasonCodes"], json!(["DESTRUCTIVE_ACTION"]));
    let again = send(post("e-1")).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        again.body["decisionId"], first.body["decisionId"],
        "one decision, not two"
    );
    assert_eq!(again.body, first.body, "the replay is the original answer");
    let id = first.body["decisionId"].as_str().unwrap();
    let stored = send(s.req(Method::GET, &format!("/v1/decisions/{id}"), &tok, T)).await;
    assert_eq!(stored.status, 200, "{}", stored.body);
    assert_eq!(stored.body["decisionId"], id);
    assert_eq!(stored.body["decision"], "block");
    assert_eq!(stored.body["lineageId"], first.body["lineageId"]);
    assert_eq!(stored.body["ledgerIndex"], first.body["ledgerIndex"]);
    assert!(stored.body["createdAt"].is_string(), "{}", stored.body);
    assert_eq!(stored.body["action"], "delete_customer");
    assert_eq!(stored.body["context"], json!({"id": 1}));
    assert_eq!(stored.body["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(stored.body["agent"]["id"], agent.as_str());
    assert_eq!(stored.body["agent"]["name"], "x");
    assert!(
        stored.body["agent"]["manifestHash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:")),
        "{}",
        stored.body
    );
    assert_eq!(stored.body["principal"]["role"], "agent");
    // Recorded as answered.
    for field in [
        "reasonCodes",
        "requiresDeskApproval",
        "wouldDecide",
        "matchedRules",
        "policy",
    ] {
        assert_eq!(stored.body[field], first.body[field], "{field}: {}", stored.body);
    }
    // Other tenants cannot read it.
    let other = s.token("other", Role::Admin);
    send(s.req(Method::GET, &format!("/v1/decisions/{id}"), &other, "other"))
        .await
        .assert_error(404, "not_found");
    // Unknown agent: 404. Bad bodies: 400 naming the field.
    s.evaluate(&tok, T, "agt_unknown", "x", json!({}))
        .await
        .assert_error(404, "not_found");
    let r = send(
        s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
            .json(&json!({"agentId": agent})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("action"),
        "{}",
        r.body
    );
    let r = send(
        s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
            .json(&json!({"agentId": agent, "action": "x", "context": [1]})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("context"),
        "{}",
        r.body
    );
    let r = send(
        s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
            .json(&json!({"agentId": agent, "action": "x", "extra": 1})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("extra"),
        "{}",
        r.body
    );
    // Approvers and auditors do not ask for decisions.
    let auditor = s.token(T, Role::Auditor);
    s.evaluate(&auditor, T, &agent, "x", json!({}))
        .await
        .assert_error(403, "forbidden");
}

/// A decision is answered once its entry is durable, before its index rows are committed; every index read
/// waits for the index to cover what was answered before it. So reading a decision right after its answer,
/// by every route, finds it, even with many decisions in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answered_decision_is_readable_at_once_by_every_route() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let aud = s.token(T, Role::Auditor);
    let api = Arc::new(s.api.clone());
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (api, tok, aud, agent) = (api.clone(), tok.clone(), aud.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let trace = format!("{:032x}", 0x7259_0000 + w * 1000 + i);
                let d = api
                    .decide(
                        &tok,
                        T,
                        json!({"agentId": agent, "action": "lookup_policy", "traceId": trace}),
                    )
                    .await;
                let id = d["decisionId"].as_str().unwrap();
                let lineage = d["lineageId"].as_str().unwrap();
                let got = api.get(&format!("/v1/decisions/{id}"), &tok, T).await;
                assert_eq!(
                    got.status, 200,
                    "decision {id} right after its answer: {}",
                    got.body
                );
                assert_eq!(got.body["ledgerIndex"], d["ledgerIndex"]);
                assert_eq!(got.body["lineageId"], lineage);
                let l = api.get(&format!("/v1/lineage/{lineage}"), &tok, T).await;
                assert_eq!(l.status, 200, "lineage {lineage}: {}", l.body);
                assert_eq!(l.body["ledgerIndex"], d["ledgerIndex"]);
                assert_eq!(l.body["body"]["decisionId"], id);
                for q in [format!("traceId={trace}"), format!("decisionId={id}")] {
                    let e = api.get(&format!("/v1/evidence?{q}"), &aud, T).await;
                    assert_eq!(e.status, 200, "evidence by {q}: {}", e.body);
                    let entries = e.body["entries"].as_array().unwrap();
                    assert_eq!(entries.len(), 1, "evidence by {q}: {}", e.body);
                    assert_eq!(entries[0]["lineageId"], lineage, "evidence by {q}");
                    assert_eq!(entries[0]["ledgerIndex"], d["ledgerIndex"], "evidence by {q}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
