//! The KLA Execution API's runs through the real server: start (`PENDING`, then `QUEUED`), status, list with
//! filters and pages, cancel (at once before a run runs, a repeat a no-op), tenants and bound tokens kept apart,
//! validation errors, and every run rebuilt from the ledger when the store is lost. Moves a runner makes (to
//! `RUNNING` and beyond) have no HTTP path yet; the lifecycle and a finished run's 409 are unit-tested in
//! `kla::executions`.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};

const T: &str = "acme";

/// The seed's start body for `agent`.
fn start_body(agent: &str) -> Value {
    json!({
        "agentId": agent,
        "input": {"prompt": "Analyze the quarterly report", "context": {"reportUrl": "https://example.com/report.pdf"}},
        "budgets": {"maxSteps": 50, "maxCostUsd": 5.0}
    })
}

async fn start(s: &Api, tok: &str, tenant: &str, body: &Value) -> Resp {
    send(s.req(Method::POST, "/v1/executions", tok, tenant).json(body)).await
}

/// Starts a run of `agent` and returns its id.
async fn started(s: &Api, tok: &str, agent: &str) -> String {
    let r = start(s, tok, T, &start_body(agent)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["executionId"].as_str().expect("executionId").to_owned()
}

async fn cancel(s: &Api, tok: &str, tenant: &str, id: &str) -> Resp {
    send(s.req(Method::POST, &format!("/v1/executions/{id}/cancel"), tok, tenant)).await
}

fn is_execution_id(id: &str) -> bool {
    id.strip_prefix("exec_").is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[tokio::test]
async fn a_started_run_answers_pending_and_reads_back_queued_with_every_field() {
    let (s, tok, agent) = Server::with_agent(T, "claims-triage").await;
    let r = start(&s, &tok, T, &start_body(&agent)).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["executionId"].as_str().expect("executionId").to_owned();
    assert!(is_execution_id(&id), "{id}");
    assert_eq!(
        r.body,
        json!({"executionId": id, "status": "PENDING", "message": "Execution started successfully"}),
        "the seed's answer, exactly"
    );

    let got = s.get(&format!("/v1/executions/{id}"), &tok, T).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let b = &got.body;
    assert_eq!(
        b["status"], "QUEUED",
        "recorded PENDING, then QUEUED, before the answer: {b}"
    );
    assert_eq!(b["executionId"], id.as_str());
    assert_eq!(b["agentId"], agent.as_str());
    assert_eq!(b["budgets"], json!({"maxSteps": 50, "maxCostUsd": 5.0}));
    assert_eq!(b["usage"], json!({"steps": 0, "costUsd": 0}));
    assert_eq!(b["priority"], 0);
    for k in [
        "currentStep",
        "progressPercent",
        "waitingFor",
        "finalResult",
        "errorLog",
        "retryOf",
        "startedAt",
        "completedAt",
    ] {
        assert!(b.get(k).is_some_and(Value::is_null), "{k}: {b}");
    }
    assert!(b["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{b}");

    // Both transitions are typed ledger entries that write back their bytes; the first holds the input.
    let admin = s.token(T, Role::Admin);
    let entries = s.get("/v1/ledger/entries?start=0", &admin, T).await;
    assert_eq!(entries.status, 200, "{}", entries.text());
    let mut statuses = Vec::new();
    for line in entries.text().lines() {
        if crate::records::assert_typed_round_trip(line) == kla::recorder::Kind::ExecutionTransition {
            let e: Value = serde_json::from_str(line).expect("entry");
            assert_eq!(e["body"]["executionId"], id.as_str());
            statuses.push(e["body"]["status"].as_str().expect("status").to_owned());
            if e["body"]["status"] == "PENDING" {
                assert_eq!(
                    e["body"]["start"]["input"]["prompt"],
                    "Analyze the quarterly report"
                );
                assert_eq!(e["body"]["by"]["role"], "agent");
            } else {
                assert_eq!(e["body"]["from"], "PENDING");
            }
        }
    }
    assert_eq!(statuses, ["PENDING", "QUEUED"]);

    // The tenant's other roles read it; the list finds it by status and agent.
    for role in [Role::Auditor, Role::Approver, Role::Admin] {
        let r = s.get(&format!("/v1/executions/{id}"), &s.token(T, role), T).await;
        assert_eq!(r.status, 200, "{role:?}: {}", r.body);
    }
    let listed = s
        .get(&format!("/v1/executions?status=QUEUED&agentId={agent}"), &tok, T)
        .await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(listed.body["executions"][0], got.body);
    assert_eq!(listed.body["nextCursor"], Value::Null);
    let none = s.get("/v1/executions?status=COMPLETED", &tok, T).await;
    assert_eq!(none.body["executions"], json!([]), "{}", none.body);
    s.stop().await;
}

#[tokio::test]
async fn cancel_ends_a_queued_run_at_once_and_a_repeated_cancel_changes_nothing() {
    let (s, tok, agent) = Server::with_agent(T, "claims-triage").await;
    let id = started(&s, &tok, &agent).await;
    let r = cancel(&s, &tok, T, &id).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "CANCELED");
    assert!(r.body["completedAt"].is_string(), "{}", r.body);
    assert_eq!(r.body["startedAt"], Value::Null);
    let admin = s.token(T, Role::Admin);
    let size = |body: &str| body.lines().count();
    let before = size(&s.get("/v1/ledger/entries?start=0", &admin, T).await.text());
    let again = cancel(&s, &admin, T, &id).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, r.body, "a repeated cancel answers the run as it is");
    let after = size(&s.get("/v1/ledger/entries?start=0", &admin, T).await.text());
    assert_eq!(after, before, "a repeated cancel records nothing");
    let got = s.get(&format!("/v1/executions/{id}"), &tok, T).await;
    assert_eq!(got.body, r.body);
    // Readers may not cancel.
    cancel(&s, &s.token(T, Role::Auditor), T, &id)
        .await
        .assert_error(403, "forbidden");
    s.stop().await;
}

#[tokio::test]
async fn a_start_with_the_same_idempotency_key_starts_one_run() {
    let (s, tok, agent) = Server::with_agent(T, "claims-triage").await;
    let once = |key: &'static str| {
        send(
            s.req(Method::POST, "/v1/executions", &tok, T)
                .header("Idempotency-Key", key)
                .json(&start_body(&agent)),
        )
    };
    let (a, b) = (once("run-1").await, once("run-1").await);
    assert_eq!(a.status, 202, "{}", a.body);
    assert_eq!(a.body, b.body, "the same key answers the same run");
    let c = once("run-2").await;
    assert_ne!(c.body["executionId"], a.body["executionId"]);
    let listed = s.get("/v1/executions", &tok, T).await;
    assert_eq!(
        listed.body["executions"].as_array().map(Vec::len),
        Some(2),
        "{}",
        listed.body
    );
    s.stop().await;
}

#[tokio::test]
async fn other_tenants_and_other_agents_tokens_never_see_a_run() {
    let s = Server::start().await;
    let admin = s.token(T, Role::Admin);
    let claims = s.register(&admin, T, "claims-triage").await;
    let mailer = s.register(&admin, T, "mailer").await;
    let other_admin = s.token("globex", Role::Admin);
    let theirs = s.register(&other_admin, "globex", "claims-triage").await;
    let id = started(&s, &admin, &claims).await;

    // Another tenant: not found, for reads and cancels; its list is empty; it cannot start our agent.
    let r = s
        .get(&format!("/v1/executions/{id}"), &other_admin, "globex")
        .await;
    r.assert_error(404, "not_found");
    cancel(&s, &other_admin, "globex", &id)
        .await
        .assert_error(404, "not_found");
    let listed = s.get("/v1/executions", &other_admin, "globex").await;
    assert_eq!(listed.body["executions"], json!([]), "{}", listed.body);
    start(&s, &other_admin, "globex", &start_body(&claims))
        .await
        .assert_error(404, "not_found");
    start(&s, &admin, T, &start_body(&theirs))
        .await
        .assert_error(404, "not_found");

    // A token bound to another agent of the tenant: not found; it may not start the other agent's runs.
    let bound_mailer = agent_token(&s.data_dir, T, "mailer");
    s.get(&format!("/v1/executions/{id}"), &bound_mailer, T)
        .await
        .assert_error(404, "not_found");
    cancel(&s, &bound_mailer, T, &id)
        .await
        .assert_error(404, "not_found");
    start(&s, &bound_mailer, T, &start_body(&claims))
        .await
        .assert_error(403, "forbidden");
    let own = started(&s, &bound_mailer, &mailer).await;
    let listed = s.get("/v1/executions", &bound_mailer, T).await;
    let ids: Vec<&str> = listed.body["executions"]
        .as_array()
        .expect("executions")
        .iter()
        .filter_map(|e| e["executionId"].as_str())
        .collect();
    assert_eq!(ids, [own.as_str()], "a bound token lists its agent's runs only");
    let asked_other = s
        .get(&format!("/v1/executions?agentId={claims}"), &bound_mailer, T)
        .await;
    assert_eq!(asked_other.body["executions"], json!([]), "{}", asked_other.body);
    // The bound token of the run's agent sees it.
    let bound_claims = agent_token(&s.data_dir, T, "claims-triage");
    let r = s.get(&format!("/v1/executions/{id}"), &bound_claims, T).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Readers may not start.
    start(&s, &s.token(T, Role::Auditor), T, &start_body(&claims))
        .await
        .assert_error(403, "forbidden");
    s.stop().await;
}

#[tokio::test]
async fn bad_starts_and_bad_queries_are_refused_with_code_and_message() {
    let (s, tok, agent) = Server::with_agent(T, "claims-triage").await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = start_body(&agent);
        f(&mut b);
        b
    };
    let bad = [
        with(&|b| {
            b.as_object_mut().map(|o| o.remove("agentId"));
        }),
        with(&|b| {
            b.as_object_mut().map(|o| o.remove("input"));
        }),
        with(&|b| b["input"] = json!("a string")),
        with(&|b| b["input"] = json!([1, 2])),
        with(&|b| b["extra"] = json!(1)),
        with(&|b| b["budgets"]["maxSteps"] = json!(0)),
        with(&|b| b["budgets"]["maxSteps"] = json!(-1)),
        with(&|b| b["budgets"]["maxSteps"] = json!(1.5)),
        with(&|b| b["budgets"]["maxCostUsd"] = json!(-1)),
        with(&|b| b["budgets"]["maxCostUsd"] = json!(0)),
        with(&|b| b["budgets"]["maxCostUsd"] = json!("5")),
        with(&|b| b["budgets"]["maxTokens"] = json!(5)),
        with(&|b| b["priority"] = json!(1.5)),
        with(&|b| b["priority"] = json!("high")),
    ];
    for body in bad {
        let r = start(&s, &tok, T, &body).await;
        r.assert_error(400, "invalid_request");
        assert!(!r.body["message"].as_str().unwrap_or("").is_empty(), "{body}");
    }
    start(&s, &tok, T, &with(&|b| b["agentId"] = json!("agt_missing")))
        .await
        .assert_error(404, "not_found");
    for q in [
        "status=queued",
        "status=CANCELLED",
        "limit=0",
        "cursor=abc",
        "color=red",
    ] {
        s.get(&format!("/v1/executions?{q}"), &tok, T)
            .await
            .assert_error(400, "invalid_request");
    }
    for id in ["exec_0123", "exec-456", "nope"] {
        s.get(&format!("/v1/executions/{id}"), &tok, T)
            .await
            .assert_error(404, "not_found");
    }
    // Nothing was recorded for any of them.
    let listed = s.get("/v1/executions", &tok, T).await;
    assert_eq!(listed.body["executions"], json!([]), "{}", listed.body);
    // A priority and no budgets are fine.
    let r = start(
        &s,
        &tok,
        T,
        &json!({"agentId": agent, "input": {}, "priority": -3}),
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["executionId"].as_str().expect("id");
    let got = s.get(&format!("/v1/executions/{id}"), &tok, T).await;
    assert_eq!(got.body["priority"], -3);
    assert_eq!(got.body["budgets"], json!({"maxSteps": null, "maxCostUsd": null}));
    s.stop().await;
}

#[tokio::test]
async fn lists_come_in_pages_oldest_first() {
    let (s, tok, agent) = Server::with_agent(T, "claims-triage").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(started(&s, &tok, &agent).await);
    }
    let first = s.get("/v1/executions?limit=2", &tok, T).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let cursor = first.body["nextCursor"].as_str().expect("a next page").to_owned();
    let second = s
        .get(&format!("/v1/executions?limit=2&cursor={cursor}"), &tok, T)
        .await;
    assert_eq!(second.body["nextCursor"], Value::Null, "{}", second.body);
    let seen: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|p| p.body["executions"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["executionId"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(seen, ids);
    s.stop().await;
}

#[tokio::test]
async fn losing_the_store_loses_no_run() {
    let tmp = tempfile::tempdir().expect("tmp");
    let s = Server::start_cfg(raw(tmp.path()), None).await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "claims-triage").await;
    let kept = started(&s, &tok, &agent).await;
    let canceled = started(&s, &tok, &agent).await;
    assert_eq!(cancel(&s, &tok, T, &canceled).await.status, 200);
    let before = s.get("/v1/executions", &tok, T).await;
    assert_eq!(before.body["executions"].as_array().map(Vec::len), Some(2));
    s.stop().await;

    for f in ["kla.db", "kla.db-wal", "kla.db-shm"] {
        let _ = std::fs::remove_file(tmp.path().join(f));
    }
    let s = Server::start_cfg(raw(tmp.path()), None).await;
    let tok = s.token(T, Role::Admin);
    let after = s.get("/v1/executions", &tok, T).await;
    assert_eq!(
        after.body, before.body,
        "every run is rebuilt from the ledger, times and statuses included"
    );
    let got = s.get(&format!("/v1/executions/{kept}"), &tok, T).await;
    assert_eq!(got.body["status"], "QUEUED");
    // The rebuilt runs move on as before: the queued one cancels, the canceled one stays canceled.
    assert_eq!(cancel(&s, &tok, T, &kept).await.body["status"], "CANCELED");
    assert_eq!(cancel(&s, &tok, T, &canceled).await.body["status"], "CANCELED");
    s.stop().await;
}
