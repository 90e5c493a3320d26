//! Evidence bundles (`GET /v1/evidence`): what they hold per selector, and `kla verify` checking them offline and
//! naming what was tampered with.

use crate::harness::*;
use crate::verifier::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

const T: &str = "acme-ledger";
const T2: &str = "globex-ledger";

/// Checks a bundle without kla's code: each entry's leaf and inclusion proof against the signed checkpoint.
fn check_bundle(b: &Value, key: &VKey) {
    assert_eq!(b["format"], "kla-evidence/v1");
    assert_eq!(b["keyId"], hex::encode(key.id));
    assert_eq!(b["origin"], key.name);
    let cp = verify_checkpoint(b["checkpoint"].as_str().unwrap(), key);
    assert_eq!(b["treeSize"], cp.size);
    assert_eq!(ph(&b["rootHash"]), cp.root);
    for e in b["entries"].as_array().unwrap() {
        let bytes = e["entry"].as_str().unwrap().as_bytes();
        assert_eq!(ph(&e["leafHash"]), leaf(bytes));
        let idx = e["ledgerIndex"].as_u64().unwrap();
        assert_eq!(
            root_from_inclusion(idx, cp.size, &leaf(bytes), &hashes(&e["inclusionProof"])),
            Some(cp.root)
        );
        let parsed: Value = serde_json::from_slice(bytes).unwrap();
        assert_eq!(parsed["lineageId"], e["lineageId"]);
    }
}

/// Runs `kla verify FILE --key KEY` on `bundle`; returns (success, stdout+stderr).
fn kla_verify(dir: &Path, name: &str, bundle: &Value, vkey: &str) -> (bool, String) {
    let file = dir.join(name);
    std::fs::write(&file, serde_json::to_vec_pretty(bundle).unwrap()).unwrap();
    let out = kla(&["verify", file.to_str().unwrap(), "--key", vkey]);
    (out.status.success(), output_text(&out))
}

fn flip_char(s: &str, at: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[at] = if b[at] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn evidence_bundles_verify_offline_and_tampering_is_named() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let (vkey, key) = s.ledger_key(&tok, T).await;
    let aud = s.token(T, Role::Auditor);
    let mut made = Vec::new();
    for (body, _) in cases(&agent) {
        made.push(s.decide(&tok, T, body).await);
    }
    let tmp = tempfile::tempdir().unwrap();
    let d0 = &made[0];
    let by_dec = s
        .get(
            &format!("/v1/evidence?decisionId={}", d0["decisionId"].as_str().unwrap()),
            &aud,
            T,
        )
        .await;
    assert_eq!(by_dec.status, 200, "{}", by_dec.body);
    let by_lin = s
        .get(
            &format!("/v1/evidence?lineageId={}", d0["lineageId"].as_str().unwrap()),
            &tok,
            T,
        )
        .await;
    assert_eq!(by_lin.status, 200, "{}", by_lin.body);
    // Served as a download named after the entry.
    for r in [&by_dec, &by_lin] {
        assert_eq!(
            r.header("content-disposition"),
            Some(
                format!(
                    "attachment; filename=\"evidence-{}.json\"",
                    d0["lineageId"].as_str().unwrap()
                )
                .as_str()
            )
        );
    }
    for b in [&by_dec.body, &by_lin.body] {
        let entries = b["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{b}");
        assert_eq!(entries[0]["lineageId"], d0["lineageId"]);
        assert_eq!(entries[0]["ledgerIndex"], d0["ledgerIndex"]);
        check_bundle(b, &key);
        let (ok, out) = kla_verify(tmp.path(), "good.json", b, &vkey);
        assert!(ok, "{out}");
        assert!(out.contains("VERIFIED"), "{out}");
    }
    let idx = d0["ledgerIndex"].as_u64().unwrap().to_string();
    let lin = d0["lineageId"].as_str().unwrap();

    // One byte of the entry: the action name.
    let mut bad = by_dec.body.clone();
    let entry = bad["entries"][0]["entry"].as_str().unwrap().to_owned();
    let altered = entry.replacen("\"action\":\"lookup_policy\"", "\"action\":\"lookup_policz\"", 1);
    assert_ne!(altered, entry);
    bad["entries"][0]["entry"] = json!(altered);
    let (ok, out) = kla_verify(tmp.path(), "entry.json", &bad, &vkey);
    assert!(!ok, "an altered entry must not verify: {out}");
    assert!(out.contains(&idx) && out.contains(lin), "names the entry: {out}");
    assert!(!out.contains("VERIFIED"), "{out}");

    // One hash of the inclusion proof.
    let mut bad = by_dec.body.clone();
    let p0 = bad["entries"][0]["inclusionProof"][0]
        .as_str()
        .unwrap()
        .to_owned();
    bad["entries"][0]["inclusionProof"][0] = json!(flip_char(&p0, 20));
    let (ok, out) = kla_verify(tmp.path(), "proof.json", &bad, &vkey);
    assert!(!ok, "an altered proof must not verify: {out}");
    assert!(out.contains(&idx) && out.contains(lin), "names the entry: {out}");

    // The checkpoint text: its root line, and its size line.
    for (i, mutate) in [
        Box::new(|cp: &str| {
            let root_at = cp.find('\n').unwrap() + 1;
            let root_at = root_at + cp[root_at..].find('\n').unwrap() + 3;
            flip_char(cp, root_at)
        }) as Box<dyn Fn(&str) -> String>,
        Box::new(|cp: &str| cp.replacen('\n', "\n1", 1)),
        Box::new(|cp: &str| cp.replacen("kla.local", "kla.locaL", 1)),
    ]
    .iter()
    .enumerate()
    {
        let mut bad = by_dec.body.clone();
        let cp = bad["checkpoint"].as_str().unwrap().to_owned();
        let changed = mutate(&cp);
        assert_ne!(changed, cp);
        bad["checkpoint"] = json!(changed);
        let (ok, out) = kla_verify(tmp.path(), &format!("cp{i}.json"), &bad, &vkey);
        assert!(!ok, "an altered checkpoint must not verify: {out}");
        assert!(out.contains("checkpoint"), "{out}");
    }

    // Another (genuine, correctly hashed) entry substituted at this index: its proof does not fit.
    let mut bad = by_dec.body.clone();
    let other = s
        .get(
            &format!(
                "/v1/evidence?lineageId={}",
                made[1]["lineageId"].as_str().unwrap()
            ),
            &aud,
            T,
        )
        .await;
    bad["entries"][0]["entry"] = other.body["entries"][0]["entry"].clone();
    bad["entries"][0]["leafHash"] = other.body["entries"][0]["leafHash"].clone();
    let (ok, out) = kla_verify(tmp.path(), "swap.json", &bad, &vkey);
    assert!(!ok, "an entry moved to another index must not verify: {out}");
    assert!(out.contains(&idx), "{out}");

    // Another ledger's key.
    let s2 = Server::start().await;
    let (vkey2, _) = s2.ledger_key(&s2.token(T, Role::Auditor), T).await;
    assert_ne!(vkey2, vkey);
    let (ok, out) = kla_verify(tmp.path(), "good.json", &by_dec.body, &vkey2);
    assert!(!ok, "another ledger's key must not verify: {out}");
    assert!(!out.contains("VERIFIED"), "{out}");
    // The key as a file works too.
    let kf = tmp.path().join("ledger.pub");
    std::fs::write(&kf, format!("{vkey}\n")).unwrap();
    let (ok, out) = kla_verify(tmp.path(), "good.json", &by_dec.body, kf.to_str().unwrap());
    assert!(ok, "{out}");

    // Bad selectors.
    for q in ["", "?lineageId=a&decisionId=b", "?foo=1"] {
        s.get(&format!("/v1/evidence{q}"), &aud, T)
            .await
            .assert_error(400, "invalid_request");
    }
    s.get("/v1/evidence?decisionId=dec_nope", &aud, T)
        .await
        .assert_error(404, "not_found");
}

#[tokio::test]
async fn evidence_by_execution_and_trace_id_holds_exactly_those_decisions() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let (vkey, key) = s.ledger_key(&tok, T).await;
    let aud = s.token(T, Role::Auditor);
    // (executionId, traceId) per decision; the same ids in another tenant must not leak in.
    let plan = [
        (Some("exec_1"), Some("0af7651916cd43dd8448eb211c80319a")),
        (Some("exec_1"), Some("0af7651916cd43dd8448eb211c80319b")),
        (None, Some("0af7651916cd43dd8448eb211c80319a")),
        (Some("exec_2"), None),
        (Some("exec_1"), None),
        (None, None),
    ];
    let mut made = Vec::new();
    for (i, (ex, tr)) in plan.iter().enumerate() {
        let (mut body, _) = cases(&agent)[i % 3].clone();
        if let Some(e) = ex {
            body["executionId"] = json!(e);
        }
        if let Some(t) = tr {
            body["traceId"] = json!(t);
        }
        made.push(s.decide(&tok, T, body).await);
    }
    let tok2 = s.token(T2, Role::Agent);
    let agent2 = s.register(&tok2, T2, "other-tenant").await;
    s.decide(
        &tok2,
        T2,
        json!({"agentId": agent2, "action": "lookup_policy", "executionId": "exec_1", "traceId": "0af7651916cd43dd8448eb211c80319a"}),
    )
    .await;

    let tmp = tempfile::tempdir().unwrap();
    for (param, value) in [
        ("executionId", "exec_1"),
        ("executionId", "exec_2"),
        ("traceId", "0af7651916cd43dd8448eb211c80319a"),
        ("traceId", "0af7651916cd43dd8448eb211c80319b"),
    ] {
        let want: BTreeSet<String> = plan
            .iter()
            .zip(&made)
            .filter(|((ex, tr), _)| {
                if param == "executionId" {
                    *ex == Some(value)
                } else {
                    *tr == Some(value)
                }
            })
            .map(|(_, d)| d["lineageId"].as_str().unwrap().to_owned())
            .collect();
        let r = s.get(&format!("/v1/evidence?{param}={value}"), &aud, T).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let got: BTreeSet<String> = r.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["lineageId"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "{param}={value}");
        assert_eq!(
            r.body["entries"].as_array().unwrap().len(),
            want.len(),
            "no duplicates"
        );
        for e in r.body["entries"].as_array().unwrap() {
            let entry: Value = serde_json::from_str(e["entry"].as_str().unwrap()).unwrap();
            assert_eq!(entry["tenant"], T);
            assert_eq!(entry["body"][param], value);
        }
        check_bundle(&r.body, &key);
        let (ok, out) = kla_verify(tmp.path(), "multi.json", &r.body, &vkey);
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("VERIFIED: {} entries", want.len())),
            "{out}"
        );
        // Damage in the last entry of a multi-entry bundle names that entry, not the first.
        if want.len() > 1 {
            let mut bad = r.body.clone();
            let last = bad["entries"].as_array().unwrap().len() - 1;
            let p = bad["entries"][last]["inclusionProof"][0]
                .as_str()
                .unwrap()
                .to_owned();
            bad["entries"][last]["inclusionProof"][0] = json!(flip_char(&p, 40));
            let (ok, out) = kla_verify(tmp.path(), "multi-bad.json", &bad, &vkey);
            assert!(!ok, "{out}");
            let want_idx = format!("bundle entry {}", bad["entries"][last]["ledgerIndex"]);
            assert!(out.contains(&want_idx), "names entry {want_idx}: {out}");
            assert!(
                out.contains(bad["entries"][last]["lineageId"].as_str().unwrap()),
                "{out}"
            );
        }
    }
    s.get("/v1/evidence?executionId=exec_0e0e", &aud, T)
        .await
        .assert_error(404, "not_found");
    // Ids are checked like the evaluate fields.
    let r = send(
        s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
            .json(&json!({"agentId": agent, "action": "lookup_policy", "executionId": ""})),
    )
    .await;
    r.assert_error(400, "invalid_request");
}
