//! A power cut under the real binary: kla's data dir lives on a [`LazyFs`], a FUSE file system that keeps every
//! write in memory until it is synced and loses it when its daemon is killed. kla acknowledges decisions, approval
//! resolutions and OTLP exports, then both die at once (SIGKILL to kla, then to the file system); after a restart
//! on what was synced, every acknowledged item is in the ledger and the index, the tree did not shrink below the
//! last published checkpoint, and `kla ledger verify` passes. SIGKILL alone never shows a missing `fdatasync`
//! (the page cache outlives a process); this does.

use crate::harness::*;
use crate::verifier::{consistent, hashes};
use kla::auth::Role;
use serde_json::{Value, json};
use std::path::Path;

const T: &str = "acme-crash";

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("kla.yaml");
    std::fs::write(&path, "otlp:\n  http-addr: 127.0.0.1:0\n  grpc-addr: \"off\"\n").unwrap();
    path
}

/// An OTLP/HTTP JSON export of one trace with `spans` span ids.
fn export(trace: &str, spans: &[&str]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|id| {
            json!({"traceId": trace, "spanId": id, "name": format!("step {id}"), "kind": 1,
                   "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000"})
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "crash-test"}}]},
        "scopeSpans": [{"scope": {"name": "crash"}, "spans": spans}]
    }]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_no_acknowledged_decision_approval_or_span() {
    let mut fs = LazyFs::mount();
    let data = fs.root().join("data");
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = config(cfg_dir.path());
    let args = ["--config", cfg.to_str().unwrap()];
    let p = Process::serve(&data, &args).await;
    fs.wait_zero_fill("data/ledger").await;

    let agent_tok = p.token(T, Role::Agent);
    let approver = p.token(T, Role::Approver);
    let agent = p.register(&agent_tok, T, "crash-bot").await;

    // Decisions: allowed ones, and three that open approvals.
    let mut decisions: Vec<(String, &str)> = Vec::new();
    for i in 0..4 {
        let d = p
            .decide(&agent_tok, T, json!({"agentId": agent, "action": "lookup_policy", "context": {"claimId": format!("c-{i}")}}))
            .await;
        assert_eq!(d["decision"], "allow", "{d}");
        decisions.push((d["decisionId"].as_str().unwrap().to_owned(), "allow"));
    }
    let mut approvals = Vec::new();
    for i in 0..3 {
        let d = p
            .decide(
                &agent_tok,
                T,
                json!({"agentId": agent, "action": "execute_refund", "context": {"amount": 5000 + i}}),
            )
            .await;
        assert_eq!(d["decision"], "require_approval", "{d}");
        decisions.push((d["decisionId"].as_str().unwrap().to_owned(), "require_approval"));
        approvals.push(d["approvalId"].as_str().unwrap().to_owned());
    }
    // Resolutions: one approved, one denied, one left pending.
    let mut resolved = Vec::new();
    for (id, verdict) in approvals.iter().zip(["APPROVED", "DENIED"]) {
        let r = p.vote(&approver, T, id, verdict, Some("checked")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["status"], verdict, "{}", r.body);
        resolved.push((id.clone(), verdict));
    }
    // Spans: two exports, acknowledged.
    let otlp = p.listener("otlp-http").await;
    let traces = [
        (
            "5a1f0000000000000000000000000001",
            vec!["00000000000000a1", "00000000000000a2"],
        ),
        ("5a1f0000000000000000000000000002", vec!["00000000000000b1"]),
    ];
    for (trace, spans) in &traces {
        let r = send(
            client()
                .post(format!("http://{otlp}/v1/traces"))
                .bearer_auth(&agent_tok)
                .header("x-tenant-id", T)
                .json(&export(trace, spans)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // One last decision, acknowledged right before the cut.
    let d = p
        .decide(
            &agent_tok,
            T,
            json!({"agentId": agent, "action": "lookup_policy", "context": {"claimId": "last"}}),
        )
        .await;
    decisions.push((d["decisionId"].as_str().unwrap().to_owned(), "allow"));
    let admin = p.token(T, Role::Admin);
    let (_, key) = p.ledger_key(&admin, T).await;
    let published = p.checkpoint(&admin, T, &key).await;

    // The cut must lose something, or it proves nothing: the index (SQLite's WAL at synchronous=NORMAL) and the
    // ledger's derived files are synced later than the entries.
    let (files, pages, listing) = fs.pending();
    assert!(
        files > 0 && pages > 0,
        "nothing was pending at the cut:\n{listing}"
    );
    p.kill9();
    fs.power_cut();

    let p = Process::serve(&data, &args).await;
    let admin = p.token(T, Role::Admin);
    let records = ledger_records(&data.join("ledger"));
    let kind_with = |kind: &str, field: &str, id: &str| {
        records
            .iter()
            .any(|e| e["kind"] == kind && e["body"][field].as_str() == Some(id))
    };
    // The agent's registration.
    let r = p.get(&format!("/v1/agents/{agent}"), &admin, T).await;
    assert_eq!(r.status, 200, "the registered agent is lost: {}", r.body);
    for (id, outcome) in &decisions {
        assert!(
            kind_with("decision", "decisionId", id),
            "decision {id} is not in the ledger"
        );
        let r = p.get(&format!("/v1/decisions/{id}"), &admin, T).await;
        assert_eq!(r.status, 200, "decision {id} is lost: {}", r.body);
        assert_eq!(r.body["decision"], *outcome, "{}", r.body);
    }
    for (id, verdict) in &resolved {
        assert!(
            kind_with("approval.resolved", "approvalId", id),
            "the resolution of {id} is not in the ledger"
        );
        let r = p.get(&format!("/v1/approvals/{id}"), &admin, T).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            r.body["status"], *verdict,
            "the resolution of {id} is lost: {}",
            r.body
        );
    }
    let r = p.get(&format!("/v1/approvals/{}", approvals[2]), &admin, T).await;
    assert_eq!(r.body["status"], "PENDING", "{}", r.body);
    for (trace, spans) in &traces {
        let r = p.get(&format!("/v1/traces/{trace}"), &admin, T).await;
        assert_eq!(r.status, 200, "trace {trace} is lost: {}", r.body);
        let mut got: Vec<&str> = r.body["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["span"]["spanId"].as_str().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(&got, spans, "{}", r.body);
    }
    // What was published before the cut is still a prefix of the log.
    let now = p.checkpoint(&admin, T, &key).await;
    assert!(
        now.size >= published.size,
        "the tree shrank: {} -> {}",
        published.size,
        now.size
    );
    let r = p
        .get(
            &format!("/v1/ledger/consistency?from={}&to={}", published.size, now.size),
            &admin,
            T,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        consistent(
            published.size,
            now.size,
            &published.root,
            &now.root,
            &hashes(&r.body["proof"])
        ),
        "the checkpoint published before the cut is not a prefix of the log after it: {}",
        r.body
    );

    let exited = p.terminate();
    assert!(exited.success(), "{}", exited.log);
    let out = kla(&["ledger", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "kla ledger verify: {}", output_text(&out));
}
