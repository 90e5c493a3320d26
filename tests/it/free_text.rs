//! Free text that callers write and kla records besides decision contexts: an agent manifest's `description`,
//! `model` and `owner` (`POST /v1/agents`) and an approver's `comment` (`POST /v1/approvals/{id}/decision`) pass the
//! tenant's redactor before they are recorded, so they are stored and served redacted and no file of the data dir
//! holds them raw. A manifest `endpoint` that would need redacting is refused (kla calls it as recorded).

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};

const T: &str = "acme-text";
const CARD: &str = "4111 1111 1111 1111";
const EMAIL: &str = "jane.doe@example.com";
const TOKEN: &str = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
const PLANTED: [&str; 4] = [CARD, EMAIL, TOKEN, AWS];

fn assert_clean(what: &str, text: &str) {
    for p in PLANTED {
        assert!(!text.contains(p), "{what} holds the planted {p:?}: {text}");
    }
}

#[tokio::test]
async fn manifest_free_text_is_recorded_and_served_redacted() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_cfg(raw(data.path()), None).await;
    let admin = s.token(T, Role::Admin);
    let auditor = s.token(T, Role::Auditor);
    let manifest = json!({
        "name": "claims-triage",
        "description": format!("Refunds to card {CARD}; escalations to {EMAIL}; deploys with {TOKEN}"),
        "model": format!("gpt-4.1 via {AWS}"),
        "owner": EMAIL,
        "tools": ["lookup_policy"],
        "endpoint": "https://agents.example.internal/claims",
    });
    let r = send(s.req(Method::POST, "/v1/agents", &admin, T).json(&manifest)).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_clean("the registration's answer", &r.text());
    let agent = r.body["agentId"].as_str().unwrap().to_owned();
    let lineage = r.body["lineageId"].as_str().unwrap().to_owned();

    let got = s.get(&format!("/v1/agents/{agent}"), &admin, T).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_clean("the agent", &got.text());
    let text = got.text();
    for marker in [
        "[REDACTED:CARD]",
        "[REDACTED:EMAIL]",
        "[REDACTED:GITHUB_TOKEN]",
        "[REDACTED:AWS_ACCESS_KEY]",
    ] {
        assert!(text.contains(marker), "{marker} missing: {text}");
    }
    // What is not personal stays as written.
    assert!(
        text.contains("Refunds to card") && text.contains("gpt-4.1 via"),
        "{text}"
    );
    assert!(text.contains("https://agents.example.internal/claims"), "{text}");
    for path in [
        format!("/v1/lineage/{lineage}"),
        format!("/v1/evidence?lineageId={lineage}"),
        "/v1/agents".to_owned(),
    ] {
        let r = s.get(&path, &auditor, T).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_clean(&path, &r.text());
    }
    // The hash and signature cover the stored (redacted) manifest: the same manifest again is the same version.
    let again = send(s.req(Method::POST, "/v1/agents", &admin, T).json(&manifest)).await;
    again.assert_error(409, "conflict");

    // An endpoint is called as recorded: one that carries a credential is refused, not redacted.
    for (endpoint, says) in [
        (
            format!("https://bot:{TOKEN}@agents.example.internal/x"),
            "credentials",
        ),
        (
            format!("https://agents.example.internal/x?key={TOKEN}"),
            "redaction",
        ),
        (format!("https://agents.example.internal/{EMAIL}"), "redaction"),
    ] {
        let mut m = manifest.clone();
        m["name"] = json!("endpoint-bot");
        m["endpoint"] = json!(endpoint);
        let r = send(s.req(Method::POST, "/v1/agents", &admin, T).json(&m)).await;
        r.assert_error(400, "invalid_request");
        let msg = r.body["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("field 'endpoint'") && msg.contains(says),
            "{endpoint}: {msg}"
        );
        assert_clean("the refusal", msg);
    }
    s.stop().await;
    assert_nowhere_raw(data.path(), &PLANTED);
}

#[tokio::test]
async fn approval_comments_are_recorded_and_served_redacted() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_cfg(raw(data.path()), None).await;
    let agent_tok = s.token(T, Role::Agent);
    let approver = s.token(T, Role::Approver);
    let auditor = s.token(T, Role::Auditor);
    let agent = s.register(&agent_tok, T, "refund-bot").await;
    // Under the default pack a refund over 1000 waits for a person.
    let ask = || async {
        let d = s
            .decide(
                &agent_tok,
                T,
                json!({"agentId": agent, "action": "execute_refund", "context": {"amount": 5000}}),
            )
            .await;
        assert_eq!(d["decision"], "require_approval", "{d}");
        d["approvalId"].as_str().unwrap().to_owned()
    };
    let (denied, approved) = (ask().await, ask().await);
    for (approval, verdict, comment) in [
        (&denied, "DENIED", format!("customer card {CARD}, ask {EMAIL}")),
        (
            &approved,
            "APPROVED",
            format!("ok, rotate {AWS} and {TOKEN} after"),
        ),
    ] {
        let r = s.vote(&approver, T, approval, verdict, Some(&comment)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], verdict, "{}", r.body);
        assert_clean("the vote's answer", &r.text());
        let c = r.body["comment"].as_str().unwrap_or_default();
        assert!(c.contains("[REDACTED:"), "{}", r.body);
        let votes: Vec<Value> = r.body["votes"].as_array().cloned().unwrap_or_default();
        assert!(
            votes.iter().any(|v| v["comment"] == c),
            "the vote records the same redacted comment: {}",
            r.body
        );
        // The same answer again returns what is stored.
        let again = s.vote(&approver, T, approval, verdict, Some(&comment)).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_clean("the stored vote", &again.text());
    }
    for path in [
        format!("/v1/approvals/{denied}"),
        format!("/v1/approvals/{approved}"),
        "/v1/approvals".to_owned(),
        format!(
            "/v1/ledger/entries?start=0&end={}",
            ledger_size(&s, &auditor).await
        ),
    ] {
        let r = s.get(&path, &auditor, T).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_clean(&path, &r.text());
        assert!(
            r.text().contains("[REDACTED:"),
            "{path} holds no comment: {}",
            r.text()
        );
    }
    s.stop().await;
    assert_nowhere_raw(data.path(), &PLANTED);
}

/// The ledger's current size, from the entry stream's header.
async fn ledger_size(s: &Server, tok: &str) -> u64 {
    let r = s.get("/v1/ledger/entries?start=0&end=0", tok, T).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-kla-tree-size")
        .and_then(|v| v.parse().ok())
        .expect("x-kla-tree-size")
}
