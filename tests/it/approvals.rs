//! The Decision Desk's approvals through the real server: opened by a `require_approval` decision, decided over
//! `POST /v1/approvals/{id}/decision`, expired at their timeout (also across a restart), re-checked against the
//! policy active when they are approved, and waited for with `GET /v1/decisions/{id}?wait=`.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const T: &str = "acme-desk";

const RULES: &str = r#"    - {id: big-refunds, match: {actions: [execute_refund]}, when: "input.context.amount > 1000", decision: require_approval, reasonCode: AMOUNT_OVER_THRESHOLD, message: "Refunds over 1000 need approval", approval: {timeout: 15m, onTimeout: block}}
    - {id: quick-allow, match: {actions: [send_digest]}, decision: require_approval, reasonCode: DIGEST, approval: {timeout: 1s, onTimeout: allow}}
    - {id: quick-block, match: {actions: [wire_money]}, decision: require_approval, reasonCode: WIRE, approval: {timeout: 1s, onTimeout: block}}
    - {id: two-people, match: {actions: [close_account]}, decision: require_approval, reasonCode: CLOSE, approval: {timeout: 15m, approvers: 2}}
    - {id: restart-expiry, match: {actions: [rotate_keys]}, decision: require_approval, reasonCode: ROTATE, approval: {timeout: 3s}}
"#;

fn config(data: &Path, packs: &Path) -> kla::config::RawConfig {
    let mut c = raw(data);
    c.policies = Some(packs.to_owned());
    c.allow_unsigned = Some(true);
    c
}

/// A server over the desk pack, an agent token and the agent's id.
struct Desk {
    s: Server,
    agent_tok: String,
    agent: String,
    packs: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Desk {
    async fn start() -> Desk {
        let packs = tempfile::tempdir().expect("packs");
        write_pack(packs.path(), "desk", RULES);
        let data = tempfile::tempdir().expect("data");
        let s = Server::start_cfg(config(data.path(), packs.path()), None).await;
        let agent_tok = s.token(T, Role::Agent);
        let agent = s.register(&agent_tok, T, "refund-bot").await;
        Desk {
            s,
            agent_tok,
            agent,
            packs,
            data,
        }
    }

    /// Asks for `action`; asserts `require_approval` and returns (decisionId, approvalId).
    async fn ask(&self, action: &str, context: Value) -> (String, String) {
        let r = self
            .s
            .evaluate(&self.agent_tok, T, &self.agent, action, context)
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["decision"], "require_approval", "{}", r.body);
        assert_eq!(r.body["requiresDeskApproval"], true);
        let approval = r.body["approvalId"].as_str().expect("approvalId").to_owned();
        assert!(approval.starts_with("appr_"), "{}", r.body);
        (
            r.body["decisionId"].as_str().expect("decisionId").to_owned(),
            approval,
        )
    }

    async fn vote(&self, token: &str, approval: &str, decision: &str, comment: &str) -> Resp {
        self.s.vote(token, T, approval, decision, Some(comment)).await
    }

    async fn approval(&self, approval: &str) -> Value {
        let r = self
            .s
            .get(
                &format!("/v1/approvals/{approval}"),
                &self.s.token(T, Role::Auditor),
                T,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_action_is_allowed_once_decided_and_the_decision_is_durable() {
    let d = Desk::start().await;
    let (decision, id) = d
        .ask("execute_refund", json!({"amount": 5000, "user_id": "usr_22"}))
        .await;
    let a = d.approval(&id).await;
    assert_eq!(a["status"], "PENDING");
    assert_eq!(a["decisionId"], decision.as_str());
    assert_eq!(a["agentId"], d.agent.as_str());
    assert_eq!(a["action"], "execute_refund");
    assert_eq!(a["context"], json!({"amount": 5000, "user_id": "usr_22"}));
    assert_eq!(a["reasonCodes"], json!(["AMOUNT_OVER_THRESHOLD"]));
    assert_eq!(a["matchedRules"][0]["message"], "Refunds over 1000 need approval");
    assert_eq!(a["onTimeout"], "block");
    assert_eq!(a["approvers"], 1);
    assert_eq!(a["finalDecision"], Value::Null);
    assert_eq!(a["requestedBy"]["role"], "agent");
    assert!(
        a["actionDigest"]
            .as_str()
            .is_some_and(|x| x.starts_with("hmac-sha256:")),
        "{a}"
    );
    assert!(a["policy"][0]["digest"].is_string(), "{a}");
    let (created, expires) = (
        a["createdAt"].as_str().unwrap_or(""),
        a["expiresAt"].as_str().unwrap_or(""),
    );
    assert!(created < expires, "{created} < {expires}");

    // Not decided yet: the caller must not act.
    let r =
        d.s.get(&format!("/v1/decisions/{decision}"), &d.agent_tok, T)
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["finalDecision"], Value::Null);
    assert_eq!(r.body["approval"]["status"], "PENDING");

    let approver = d.s.token(T, Role::Approver);
    let r = d.vote(&approver, &id, "APPROVED", "refund checked").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "APPROVED");
    assert_eq!(r.body["finalDecision"], "allow");
    assert_eq!(r.body["comment"], "refund checked");
    assert_eq!(r.body["resolvedBy"]["subject"], "test-approver");
    assert_eq!(r.body["recheck"]["decision"], "require_approval");
    assert!(r.body["resolvedAt"].is_string());

    // The same answer again returns what is stored; a different one is a conflict that names the winner.
    let again = d.vote(&approver, &id, "APPROVED", "twice").await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["comment"], "refund checked");
    let other = d.vote(&d.s.token(T, Role::Admin), &id, "DENIED", "no").await;
    other.assert_error_with(409, "conflict", &["approval"]);
    assert_eq!(other.body["approval"]["status"], "APPROVED", "{}", other.body);

    let r =
        d.s.get(&format!("/v1/decisions/{decision}"), &d.agent_tok, T)
            .await;
    assert_eq!(r.body["finalDecision"], "allow", "{}", r.body);
    assert_eq!(r.body["approval"]["approvalId"], id.as_str());

    // The evidence of the decision carries its approval chain, and it verifies.
    let r =
        d.s.get(
            &format!("/v1/evidence?decisionId={decision}"),
            &d.s.token(T, Role::Auditor),
            T,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let kinds: Vec<String> = r.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let v: Value =
                serde_json::from_str(e["entry"].as_str().expect("entry text")).expect("entry json");
            v["kind"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(kinds, ["decision", "approval.resolved"], "{}", r.body);
    let bundle = d.data.path().join("evidence.json");
    std::fs::write(&bundle, &r.bytes).expect("bundle");
    let (vkey, _) = d.s.ledger_key(&d.s.token(T, Role::Auditor), T).await;
    let out = kla(&["verify", bundle.to_str().expect("path"), "--key", &vkey]);
    assert!(out.status.success(), "{}", output_text(&out));

    // Durable and derived from the ledger: a restart with the store's file lost rebuilds the same approval.
    let Desk { s, packs, data, .. } = d;
    s.stop().await;
    for f in ["kla.db", "kla.db-wal", "kla.db-shm"] {
        let _ = std::fs::remove_file(data.path().join(f));
    }
    let s = Server::start_cfg(config(data.path(), packs.path()), None).await;
    let r = s
        .get(&format!("/v1/approvals/{id}"), &s.token(T, Role::Auditor), T)
        .await;
    assert_eq!(r.body["status"], "APPROVED", "{}", r.body);
    assert_eq!(r.body["finalDecision"], "allow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_blocks_and_only_approvers_and_admins_other_than_the_asker_decide() {
    let d = Desk::start().await;
    let (decision, id) = d.ask("execute_refund", json!({"amount": 2000})).await;
    for role in [Role::Agent, Role::Auditor] {
        d.vote(&d.s.token(T, role), &id, "APPROVED", "")
            .await
            .assert_error(403, "forbidden");
    }
    // Another tenant's approver does not see it at all.
    let stranger = d.s.token("other-tenant", Role::Approver);
    let r = d.s.vote(&stranger, "other-tenant", &id, "APPROVED", None).await;
    r.assert_error(404, "not_found");
    // Malformed answers.
    d.vote(&d.s.token(T, Role::Approver), &id, "approved", "")
        .await
        .assert_error(400, "invalid_request");
    let r = send(
        d.s.req(
            Method::POST,
            &format!("/v1/approvals/{id}/decision"),
            &d.s.token(T, Role::Approver),
            T,
        )
        .json(&json!({"decision": "APPROVED", "extra": 1})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    d.vote(&d.s.token(T, Role::Approver), "appr_missing", "APPROVED", "")
        .await
        .assert_error(404, "not_found");
    assert_eq!(
        d.approval(&id).await["status"],
        "PENDING",
        "refusals changed nothing"
    );

    let r = d
        .vote(&d.s.token(T, Role::Approver), &id, "DENIED", "not this one")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "DENIED");
    assert_eq!(r.body["finalDecision"], "block");
    let r =
        d.s.get(&format!("/v1/decisions/{decision}"), &d.agent_tok, T)
            .await;
    assert_eq!(r.body["finalDecision"], "block");

    // An admin who asked for an action may not approve it.
    let admin = d.s.token(T, Role::Admin);
    let r =
        d.s.evaluate(&admin, T, &d.agent, "execute_refund", json!({"amount": 3000}))
            .await;
    let own = r.body["approvalId"].as_str().expect("approvalId").to_owned();
    let r = d.vote(&admin, &own, "APPROVED", "mine").await;
    r.assert_error(403, "forbidden");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap_or("")
            .contains("asked for this action"),
        "{}",
        r.body
    );
    let r = d
        .vote(&d.s.token(T, Role::Approver), &own, "APPROVED", "someone else")
        .await;
    assert_eq!(r.body["status"], "APPROVED", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_needs_distinct_approvers_and_any_denial_denies() {
    let d = Desk::start().await;
    let (_, id) = d.ask("close_account", json!({"account": "a-1"})).await;
    let approver = d.s.token(T, Role::Approver);
    let r = d.vote(&approver, &id, "APPROVED", "one").await;
    assert_eq!(r.body["status"], "PENDING", "{}", r.body);
    assert_eq!(r.body["votes"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.body["approvers"], 2);
    // The same person again still counts once.
    let r = d.vote(&approver, &id, "APPROVED", "one again").await;
    assert_eq!(r.body["status"], "PENDING", "{}", r.body);
    assert_eq!(r.body["votes"].as_array().map(Vec::len), Some(1));
    let r = d.vote(&d.s.token(T, Role::Admin), &id, "APPROVED", "two").await;
    assert_eq!(r.body["status"], "APPROVED", "{}", r.body);
    assert_eq!(r.body["votes"].as_array().map(Vec::len), Some(2));
    assert_eq!(r.body["finalDecision"], "allow");

    let (_, id) = d.ask("close_account", json!({"account": "a-2"})).await;
    let r = d.vote(&approver, &id, "APPROVED", "fine by me").await;
    assert_eq!(r.body["status"], "PENDING");
    let r = d
        .vote(&d.s.token(T, Role::Admin), &id, "DENIED", "not by me")
        .await;
    assert_eq!(r.body["status"], "DENIED", "{}", r.body);
    assert_eq!(r.body["finalDecision"], "block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_twenty_concurrent_conflicting_decisions_exactly_one_wins() {
    let d = Desk::start().await;
    let (_, id) = d.ask("execute_refund", json!({"amount": 9000})).await;
    let tokens = [d.s.token(T, Role::Approver), d.s.token(T, Role::Admin)];
    let mut tasks = Vec::new();
    for i in 0..20 {
        let api = d.s.api.clone();
        let tok = tokens[i % 2].clone();
        let id = id.clone();
        let verdict = if i % 2 == 0 { "APPROVED" } else { "DENIED" };
        tasks.push(tokio::spawn(async move {
            let r = api.vote(&tok, T, &id, verdict, Some(&format!("vote {i}"))).await;
            (verdict, r)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let stored = d.approval(&id).await;
    let winner = stored["status"].as_str().expect("status").to_owned();
    assert!(winner == "APPROVED" || winner == "DENIED", "{stored}");
    assert_eq!(
        stored["votes"].as_array().map(Vec::len),
        Some(1),
        "one vote decided it: {stored}"
    );
    for (verdict, r) in &results {
        if *verdict == winner {
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["status"], winner.as_str());
            assert_eq!(
                r.body["comment"], stored["comment"],
                "every winner sees the stored result"
            );
        } else {
            r.assert_error_with(409, "conflict", &["approval"]);
            assert_eq!(r.body["approval"]["status"], winner.as_str());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_expires_as_its_rule_says_both_ways() {
    let d = Desk::start().await;
    let (allow_dec, allow_id) = d.ask("send_digest", json!({})).await;
    let (block_dec, block_id) = d.ask("wire_money", json!({"amount": 1})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (d.approval(&allow_id).await, d.approval(&block_id).await);
        if a["status"] == "EXPIRED" && b["status"] == "EXPIRED" {
            assert_eq!(a["finalDecision"], "allow", "{a}");
            assert_eq!(b["finalDecision"], "block", "{b}");
            assert_eq!(a["resolvedBy"], Value::Null);
            break;
        }
        assert!(Instant::now() < deadline, "not expired in time: {a} {b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r =
        d.s.get(&format!("/v1/decisions/{allow_dec}"), &d.agent_tok, T)
            .await;
    assert_eq!(r.body["finalDecision"], "allow");
    let r =
        d.s.get(&format!("/v1/decisions/{block_dec}"), &d.agent_tok, T)
            .await;
    assert_eq!(r.body["finalDecision"], "block");
    // Too late to decide: a conflict naming the expiry.
    let r = d
        .vote(&d.s.token(T, Role::Approver), &block_id, "APPROVED", "late")
        .await;
    r.assert_error_with(409, "conflict", &["approval"]);
    assert_eq!(r.body["approval"]["status"], "EXPIRED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_whose_time_ran_out_while_kla_was_down_expires_after_the_restart() {
    let d = Desk::start().await;
    let (_, id) = d.ask("rotate_keys", json!({})).await;
    let Desk { s, packs, data, .. } = d;
    s.stop().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let s = Server::start_cfg(config(data.path(), packs.path()), None).await;
    let auditor = s.token(T, Role::Auditor);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = s.get(&format!("/v1/approvals/{id}"), &auditor, T).await.body;
        if a["status"] == "EXPIRED" {
            assert_eq!(a["finalDecision"], "block", "the default onTimeout: {a}");
            break;
        }
        assert_eq!(a["status"], "PENDING", "{a}");
        assert!(Instant::now() < deadline, "not expired after the restart: {a}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_rule_added_while_a_person_looked_wins_over_the_approval() {
    let d = Desk::start().await;
    let (decision, id) = d
        .ask("execute_refund", json!({"amount": 4000, "user_id": "usr_bad"}))
        .await;
    let blocked = format!(
        "{RULES}    - {{id: frozen-user, match: {{actions: [execute_refund]}}, when: \"input.context.user_id == \\\"usr_bad\\\"\", decision: block, reasonCode: USER_FROZEN}}\n"
    );
    write_pack_file(d.packs.path(), "desk", &pack_yaml("desk", "1.0.1", &blocked));
    let r = send(d.s.req(Method::POST, "/v1/policies/reload", &d.s.token(T, Role::Admin), T)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = d
        .vote(&d.s.token(T, Role::Approver), &id, "APPROVED", "looks fine")
        .await;
    assert_eq!(r.body["status"], "APPROVED", "{}", r.body);
    assert_eq!(r.body["finalDecision"], "block", "{}", r.body);
    assert_eq!(r.body["recheck"]["decision"], "block");
    assert!(
        r.body["recheck"]["reasonCodes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "USER_FROZEN")),
        "{}",
        r.body
    );
    let r =
        d.s.get(&format!("/v1/decisions/{decision}"), &d.agent_tok, T)
            .await;
    assert_eq!(r.body["finalDecision"], "block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_a_person_decides() {
    let d = Desk::start().await;
    let (decision, id) = d.ask("execute_refund", json!({"amount": 7000})).await;
    // Without a wait, at once; a wait that runs out answers with the pending state.
    let r =
        d.s.get(&format!("/v1/decisions/{decision}?wait=200ms"), &d.agent_tok, T)
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["finalDecision"], Value::Null);
    d.s.get(&format!("/v1/decisions/{decision}?wait=1h"), &d.agent_tok, T)
        .await
        .assert_error(400, "invalid_request");
    d.s.get(&format!("/v1/decisions/{decision}?wait=soon"), &d.agent_tok, T)
        .await
        .assert_error(400, "invalid_request");

    // A long-poll waits while the approval is pending: its answer (the event) comes only when its wait runs out,
    // with the pending state. The server measures the wait, so a slow machine cannot make this pass or fail.
    let started = Instant::now();
    let r =
        d.s.get(&format!("/v1/decisions/{decision}?wait=1s"), &d.agent_tok, T)
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["finalDecision"], Value::Null, "{}", r.body);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "answered before its wait ran out"
    );

    let api = d.s.api.clone();
    let (tok, dec) = (d.agent_tok.clone(), decision.clone());
    const WAIT: Duration = Duration::from_secs(30);
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let r = api.get(&format!("/v1/decisions/{dec}?wait=30s"), &tok, T).await;
        (r, started.elapsed())
    });
    let r = d.vote(&d.s.token(T, Role::Approver), &id, "APPROVED", "go").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (r, waited) = poll.await.expect("poll");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["finalDecision"], "allow", "{}", r.body);
    assert_eq!(r.body["approval"]["status"], "APPROVED");
    // Compared with the wait it asked for, not a guess at how fast a busy machine is.
    assert!(
        waited < WAIT,
        "the waiting caller is answered on the decision, not by its timeout: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_is_oldest_first_with_counts_filters_and_pages() {
    let d = Desk::start().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(d.ask("execute_refund", json!({"amount": 2000 + i})).await.1);
    }
    let approver = d.s.token(T, Role::Approver);
    assert_eq!(d.vote(&approver, &ids[1], "DENIED", "").await.status, 200);
    let r =
        d.s.get("/v1/approvals?status=PENDING&limit=2", &approver, T)
            .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page: Vec<&str> = r.body["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .filter_map(|a| a["approvalId"].as_str())
        .collect();
    assert_eq!(page, [ids[0].as_str(), ids[2].as_str()]);
    assert_eq!(r.body["counts"]["PENDING"], 4);
    assert_eq!(r.body["counts"]["DENIED"], 1);
    assert_eq!(r.body["counts"]["EXPIRED"], 0);
    let cursor = r.body["nextCursor"].as_str().expect("a next page").to_owned();
    let r =
        d.s.get(
            &format!("/v1/approvals?status=PENDING&limit=2&cursor={cursor}"),
            &approver,
            T,
        )
        .await;
    let page: Vec<&str> = r.body["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .filter_map(|a| a["approvalId"].as_str())
        .collect();
    assert_eq!(page, [ids[3].as_str(), ids[4].as_str()]);
    assert_eq!(r.body["nextCursor"], Value::Null);
    let r =
        d.s.get(&format!("/v1/approvals?agentId={}", d.agent), &approver, T)
            .await;
    assert_eq!(r.body["approvals"].as_array().map(Vec::len), Some(5));
    let r = d.s.get("/v1/approvals?agentId=agt_other", &approver, T).await;
    assert_eq!(r.body["approvals"].as_array().map(Vec::len), Some(0));
    // A status is matched by its one spelling, exactly.
    for bad in ["MAYBE", "pending", "Approved"] {
        d.s.get(&format!("/v1/approvals?status={bad}"), &approver, T)
            .await
            .assert_error(400, "invalid_request");
    }
    d.s.get("/v1/approvals?cursor=xyz", &approver, T)
        .await
        .assert_error(400, "invalid_request");
    d.s.get("/v1/approvals", &d.agent_tok, T)
        .await
        .assert_error(403, "forbidden");
    // Another tenant sees none of them.
    let other = d.s.token("other-tenant", Role::Approver);
    let r = d.s.get("/v1/approvals", &other, "other-tenant").await;
    assert_eq!(
        r.body["approvals"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r.body
    );
    assert_eq!(r.body["counts"]["PENDING"], 0);
}

/// Every entry a real server wrote for a quorum's life (registration, policy activation, the decision that opens
/// the approval, a vote short of the quorum, the resolution) reads as its kind's typed body and writes back the
/// very bytes the ledger holds.
#[tokio::test]
async fn every_recorded_entry_reads_as_its_typed_body_and_writes_back_its_bytes() {
    let d = Desk::start().await;
    let (_, id) = d.ask("close_account", json!({"account": "a-9"})).await;
    let r = d
        .vote(&d.s.token(T, Role::Approver), &id, "APPROVED", "one")
        .await;
    assert_eq!(r.body["status"], "PENDING", "{}", r.body);
    let r = d.vote(&d.s.token(T, Role::Admin), &id, "DENIED", "no").await;
    assert_eq!(r.body["status"], "DENIED", "{}", r.body);
    let r =
        d.s.get("/v1/ledger/entries?start=0", &d.s.token(T, Role::Admin), T)
            .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let kinds: std::collections::BTreeSet<String> = r
        .text()
        .lines()
        .map(|line| crate::records::assert_typed_round_trip(line).as_str().to_owned())
        .collect();
    for k in [
        "agent.registered",
        "policy.activated",
        "decision",
        "approval.voted",
        "approval.resolved",
    ] {
        assert!(kinds.contains(k), "no {k} entry among {kinds:?}");
    }
}
