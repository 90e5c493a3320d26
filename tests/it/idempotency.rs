//! `Idempotency-Key`: replays, conflicts, concurrent use of one key, keys released on 5xx or recorded late, the
//! caller in the fingerprint, and POSTs that run to completion when the client hangs up.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const T: &str = "acme-prod";

#[tokio::test]
async fn idempotency_replays_and_conflicts() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let post = |key: &str, body: &Value| {
        s.req(Method::POST, "/v1/agents", &tok, T)
            .header("Idempotency-Key", key)
            .json(body)
    };
    let first = send(post("k-1", &agent_body("idem"))).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(first.body["agentId"].as_str().unwrap().starts_with("agt_"));
    assert!(first.header("idempotent-replayed").is_none());
    let replay = send(post("k-1", &agent_body("idem"))).await;
    assert_eq!(
        replay.status, 201,
        "a replay returns the original response, not a duplicate conflict"
    );
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    let other = send(post("k-1", &agent_body("something-else"))).await;
    other.assert_error(409, "conflict");
    assert!(
        other.body["message"]
            .as_str()
            .unwrap()
            .contains("different request")
    );
    // Keys are per tenant: the same key in another tenant is independent.
    let tok2 = s.token("t2", Role::Admin);
    let r = send(
        s.req(Method::POST, "/v1/agents", &tok2, "t2")
            .header("Idempotency-Key", "k-1")
            .json(&agent_body("idem")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.header("idempotent-replayed").is_none());
    assert_ne!(r.body["agentId"], first.body["agentId"], "t2's own agent");
    let list = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(list.body["agents"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_agent() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let rb = s
            .req(Method::POST, "/v1/agents", &tok, T)
            .header("Idempotency-Key", "race")
            .json(&agent_body("racer"));
        tasks.push(tokio::spawn(send(rb)));
    }
    let mut created = Vec::new();
    let mut replayed = Vec::new();
    let mut in_flight = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match (r.status.as_u16(), r.header("idempotent-replayed")) {
            (201, None) => created.push(r.body),
            (201, Some("true")) => replayed.push(r.body),
            (409, _) => {
                r.assert_error(409, "conflict");
                assert_eq!(r.header("retry-after"), Some("1"), "{}", r.body);
                in_flight += 1;
            }
            other => panic!("unexpected {other:?} {}", r.body),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "exactly one request did the work ({} replays, {in_flight} in flight)",
        replayed.len()
    );
    for r in &replayed {
        assert_eq!(r, &created[0], "a replay is the original answer");
    }
    let list = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    let agents = list.body["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["agentId"], created[0]["agentId"]);
}

#[tokio::test]
async fn a_failed_request_releases_its_idempotency_key() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let db = rusqlite::Connection::open(s.data_dir.join("kla.db")).unwrap();
    db.execute_batch("ALTER TABLE agents RENAME TO injected_fault;")
        .unwrap();
    let post = || {
        s.req(Method::POST, "/v1/agents", &tok, T)
            .header("Idempotency-Key", "retry-me")
            .json(&agent_body("r"))
    };
    send(post()).await.assert_error(503, "internal_error");
    db.execute_batch("ALTER TABLE injected_fault RENAME TO agents;")
        .unwrap();
    let r = send(post()).await;
    assert_eq!(r.status, 201, "a retry after a 5xx does the work: {}", r.body);
    assert!(
        r.header("idempotent-replayed").is_none(),
        "not a replay of the 5xx"
    );
    let list = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(list.body["agents"].as_array().unwrap().len(), 1);
}

/// The KLA Control Plane API: "Replaying the same key returns the original result"; 409 is for "a different
/// payload". Regression: the
/// fingerprint was over the body's bytes, so a retry whose client re-serialised the same JSON (other whitespace,
/// other key order, `0.20` for `0.2`) got 409 instead of the original answer.
#[tokio::test]
async fn an_idempotent_retry_of_the_same_json_reformatted_is_replayed() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let post = |path: &str, key: &str, body: String| {
        s.req(Method::POST, path, &tok, T)
            .header("Idempotency-Key", key)
            .header("content-type", "application/json")
            .body(body)
    };
    let first = send(post(
        "/v1/agents",
        "reg-1",
        r#"{"name":"fmt","model":"gpt-4.1","temperature":0.2,"tools":["a","b"]}"#.into(),
    ))
    .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let retry = send(post(
            "/v1/agents",
            "reg-1",
            "{\n  \"tools\": [\"a\", \"b\"],\n  \"temperature\": 0.20,\n  \"model\": \"gpt-4.1\",\n  \"name\": \"fmt\"\n}\n"
                .into(),
        ))
        .await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body);
    // A different payload is still a conflict: another value, another array order.
    send(post(
        "/v1/agents",
        "reg-1",
        r#"{"name":"fmt","model":"gpt-4.1","temperature":0.3,"tools":["a","b"]}"#.into(),
    ))
    .await
    .assert_error(409, "conflict");
    send(post(
        "/v1/agents",
        "reg-1",
        r#"{"name":"fmt","model":"gpt-4.1","temperature":0.2,"tools":["b","a"]}"#.into(),
    ))
    .await
    .assert_error(409, "conflict");

    let agent = first.body["agentId"].as_str().unwrap();
    let d1 = send(post(
            "/v1/decisions.evaluate",
            "ev-1",
            format!(r#"{{"agentId":"{agent}","action":"execute_refund","context":{{"amount":1250.00,"user_id":"usr_22"}}}}"#),
        ))
        .await;
    assert_eq!(d1.status, 200, "{}", d1.body);
    let d2 = send(post(
            "/v1/decisions.evaluate",
            "ev-1",
            format!(r#"{{ "context": {{ "user_id": "usr_22", "amount": 1250 }}, "action": "execute_refund", "agentId": "{agent}" }}"#),
        ))
        .await;
    assert_eq!(d2.status, 200, "{}", d2.body);
    assert_eq!(d2.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        d2.body["decisionId"], d1.body["decisionId"],
        "one decision, not two"
    );
    // Integers beyond 2^53 are kept exactly: two that a double would confuse are different payloads.
    let big = |n: &str| format!(r#"{{"agentId":"{agent}","action":"lookup","context":{{"n":{n}}}}}"#);
    assert_eq!(
        send(post("/v1/decisions.evaluate", "ev-2", big("9007199254740993")))
            .await
            .status,
        200
    );
    send(post("/v1/decisions.evaluate", "ev-2", big("9007199254740992")))
        .await
        .assert_error(409, "conflict");
}

/// If recording a finished key fails (a real store fault: a trigger that aborts the update), the answer still goes
/// out, a retry meanwhile gets 409 + `Retry-After` (the key stays reserved), and the key is recorded in the
/// background once the store recovers: the retry then replays the original decision instead of deciding again.
#[tokio::test]
async fn a_key_that_could_not_be_recorded_is_recorded_once_the_store_recovers() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "finisher").await;
    let db = rusqlite::Connection::open(s.data_dir.join("kla.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER fault BEFORE UPDATE ON idempotency WHEN NEW.state = 'done'
         BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .unwrap();
    let post = || {
        s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
            .header("Idempotency-Key", "finish-later")
            .json(&json!({"agentId": agent, "action": "send_email", "context": {}}))
    };
    let first = send(post()).await;
    assert_eq!(first.status, 200, "the decision is answered: {}", first.body);
    let during = send(post()).await;
    during.assert_error(409, "conflict");
    assert_eq!(during.header("retry-after"), Some("1"));
    db.execute_batch("DROP TRIGGER fault;").unwrap();
    let mut replayed = None;
    for _ in 0..100 {
        let r = send(post()).await;
        if r.status == 200 {
            replayed = Some(r);
            break;
        }
        r.assert_error(409, "conflict");
        assert_eq!(r.header("retry-after"), Some("1"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = replayed.expect("the key was recorded in the background within 5 s");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        r.body["decisionId"], first.body["decisionId"],
        "the original decision, not a new one"
    );
    s.stop().await;
}

/// The idempotency fingerprint must bind the token's `agent` claim. `kla token` gives every token of
/// a role the same default subject (the role's name), so two agent tokens bound to different agents share subject
/// and role. Regression: the token bound to `beta-bot` sent the body and key that `alpha-bot`'s token had used and
/// got alpha's stored decision replayed (200), past the binding check that refuses it a fresh request (403).
#[tokio::test]
async fn an_idempotent_replay_does_not_cross_an_agent_binding() {
    let s = Server::start().await;
    // Same subject and role, bound to different agents.
    let alpha = agent_token(&s.data_dir, T, "alpha-bot");
    let beta = agent_token(&s.data_dir, T, "beta-bot");
    let alpha_id = s.register(&alpha, T, "alpha-bot").await;
    let body = json!({"agentId": alpha_id, "action": "send_email", "context": {}});
    let first = send(
        s.req(Method::POST, "/v1/decisions.evaluate", &alpha, T)
            .header("Idempotency-Key", "shared-key")
            .json(&body),
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let r = send(
        s.req(Method::POST, "/v1/decisions.evaluate", &beta, T)
            .header("Idempotency-Key", "shared-key")
            .json(&body),
    )
    .await;
    assert_ne!(
        r.status, 200,
        "beta's token got alpha's decision replayed: {}",
        r.body
    );
    r.assert_error(409, "conflict");
    s.stop().await;
}

/// Regression: a client that hangs up right after sending a POST used to cancel the handler halfway, leaving the
/// idempotency key stuck "in flight" and decisions in the ledger but not in the index. POSTs now run to completion
/// in their own task.
#[tokio::test]
async fn a_client_hanging_up_does_not_cancel_the_work() {
    use tokio::io::AsyncWriteExt;
    let s = Server::start().await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "a").await;
    let body = json!({"agentId": agent, "action": "delete_x", "context": {}}).to_string();
    let addr = s.base.trim_start_matches("http://").to_owned();
    for i in 0..5 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST /v1/decisions.evaluate HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {tok}\r\nx-tenant-id: {T}\r\n\
             content-type: application/json\r\nidempotency-key: hangup-{i}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        drop(c); // hang up without reading the answer
    }
    for i in 0..5 {
        let mut last = None;
        for _ in 0..50 {
            let r = send(
                s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
                    .header("Idempotency-Key", format!("hangup-{i}"))
                    .body(body.clone())
                    .header("content-type", "application/json"),
            )
            .await;
            if r.status == 200 {
                last = Some(r);
                break;
            }
            // Only "still in flight" may precede the replay.
            r.assert_error(409, "conflict");
            assert_eq!(r.header("retry-after"), Some("1"));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Either the hung-up request ran to completion (its answer is replayed) or it never got its body and did
        // nothing (the retry does the work): never a key stuck in flight, never half-recorded work.
        let r = last.expect("the retry is answered, not stuck behind a dead reservation");
        let id = r.body["decisionId"].as_str().unwrap();
        assert_eq!(r.body["decision"], "block", "{}", r.body);
        let stored = send(s.req(Method::GET, &format!("/v1/decisions/{id}"), &tok, T)).await;
        assert_eq!(stored.status, 200, "the decision was indexed: {}", stored.body);
        assert_eq!(stored.body["decisionId"], id);
        assert_eq!(stored.body["ledgerIndex"], r.body["ledgerIndex"]);
        assert_eq!(stored.body["decision"], "block");
    }
}
