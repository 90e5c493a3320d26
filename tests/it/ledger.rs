//! The ledger through the real server: lineage entries and inclusion proofs, anchoring in signed checkpoints,
//! consistency proofs, the entries stream, tenant scoping, and the ledger positions of concurrent writes. Every
//! proof is checked with the independent code in `verifier.rs`.

use crate::harness::*;
use crate::verifier::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const T: &str = "acme-ledger";
const T2: &str = "globex-ledger";

#[tokio::test]
async fn lineage_proofs_verify_without_trusting_kla() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let mut made = Vec::new();
    for _ in 0..2 {
        for (body, outcome) in cases(&agent) {
            let d = s.decide(&tok, T, body.clone()).await;
            assert_eq!(d["decision"], outcome, "{d}");
            assert_eq!(d["requiresDeskApproval"], outcome == "require_approval", "{d}");
            if outcome == "block" {
                assert!(
                    d["reasonCodes"]
                        .as_array()
                        .unwrap()
                        .contains(&json!("DESTRUCTIVE_ACTION")),
                    "{d}"
                );
            }
            made.push((d, body, outcome));
        }
    }
    let (_, key) = s.ledger_key(&tok, T).await;
    let cp = s.checkpoint(&tok, T, &key).await;
    assert_eq!(cp.origin, "kla.local/ledger");
    let max_idx = made
        .iter()
        .map(|m| m.0["ledgerIndex"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(cp.size > max_idx, "the checkpoint covers every decision");
    let mut indices = BTreeSet::new();
    for (d, req, outcome) in &made {
        let lineage = d["lineageId"].as_str().unwrap();
        let (e, v) = check_lineage(&s, &tok, T, lineage, &key).await;
        assert!(
            indices.insert(e["ledgerIndex"].as_u64().unwrap()),
            "distinct indices"
        );
        assert_eq!(e["ledgerIndex"], d["ledgerIndex"]);
        assert_eq!(e["kind"], "decision");
        assert_eq!(e["tenant"], T);
        assert_eq!(e["v"], 1);
        assert_eq!(e["body"]["decisionId"], d["decisionId"]);
        assert_eq!(e["body"]["decision"], *outcome);
        assert_eq!(e["body"]["action"], req["action"]);
        assert_eq!(e["body"]["context"], req["context"]);
        assert_eq!(v["anchored"], true, "{v}");
        assert_eq!(
            v["treeSize"], cp.size,
            "proved against the checkpoint just signed"
        );
        assert_eq!(ph(&v["rootHash"]), cp.root);
        assert_eq!(v["checkpoint"], cp.text);
        // A proof is bound to its leaf and index: another leaf or index does not lead to the root.
        let path = hashes(&v["merklePath"]);
        let idx = v["ledgerIndex"].as_u64().unwrap();
        let other = leaf(b"not this entry");
        assert_ne!(root_from_inclusion(idx, cp.size, &other, &path), Some(cp.root));
        assert_ne!(
            root_from_inclusion(idx ^ 1, cp.size, &ph(&v["leafHash"]), &path),
            Some(cp.root)
        );
    }
    // Decisions are ordered in the log as they were answered.
    let order: Vec<u64> = made
        .iter()
        .map(|m| m.0["ledgerIndex"].as_u64().unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}

#[tokio::test]
async fn decisions_are_anchored_within_a_second() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let (_, key) = s.ledger_key(&tok, T).await;
    let mut unanchored_total = 0;
    for (body, _) in cases(&agent).into_iter().take(2) {
        let d = s.decide(&tok, T, body).await;
        let answered = Instant::now();
        let lineage = d["lineageId"].as_str().unwrap();
        let mut unanchored_seen = 0;
        loop {
            let (_, v) = check_lineage(&s, &tok, T, lineage, &key).await;
            if v["anchored"] == true {
                assert!(v["checkpoint"].is_string());
                break;
            }
            unanchored_seen += 1;
            assert!(v["checkpoint"].is_null(), "no checkpoint before anchoring: {v}");
            assert!(v["treeSize"].as_u64().unwrap() > d["ledgerIndex"].as_u64().unwrap());
            assert!(
                answered.elapsed() < Duration::from_millis(1500),
                "not anchored {:?} after the answer (target 1 s)",
                answered.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            answered.elapsed() < Duration::from_millis(1500),
            "{:?}",
            answered.elapsed()
        );
        eprintln!(
            "anchored after {:?} ({unanchored_seen} unanchored polls)",
            answered.elapsed()
        );
        unanchored_total += unanchored_seen;
    }
    // The checkpointer runs once a second, so (barring two unlucky ticks) some poll saw an unanchored entry:
    // the proof is then against the current tree and carries no checkpoint.
    assert!(unanchored_total > 0, "never observed the unanchored state");
}

#[tokio::test]
async fn consistency_proofs_between_checkpoints_verify() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let aud = s.token(T, Role::Auditor);
    let (_, key) = s.ledger_key(&tok, T).await;
    for (body, _) in cases(&agent) {
        s.decide(&tok, T, body).await;
    }
    let a = s.checkpoint(&tok, T, &key).await;
    for _ in 0..3 {
        for (body, _) in cases(&agent) {
            s.decide(&tok, T, body).await;
        }
    }
    let b = s.checkpoint(&tok, T, &key).await;
    assert!(b.size > a.size);
    let proof = check_consistency(&s, &tok, T, &a, &b).await;
    let mut bad = proof.clone();
    bad[0][31] ^= 1;
    assert!(!consistent(a.size, b.size, &a.root, &b.root, &bad));

    // Every pair of sizes, checked against roots computed from the raw entries.
    let lines = s.entries(&aud, T, b.size).await;
    let leaves: Vec<H> = lines.iter().map(|l| leaf(l)).collect();
    assert_eq!(mth(&leaves), b.root);
    for to in 1..=b.size {
        for from in 1..=to {
            let r = s
                .get(&format!("/v1/ledger/consistency?from={from}&to={to}"), &tok, T)
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            let (r1, r2) = (ph(&r.body["fromRoot"]), ph(&r.body["toRoot"]));
            assert_eq!(r1, mth(&leaves[..from as usize]), "root({from})");
            assert_eq!(r2, mth(&leaves[..to as usize]), "root({to})");
            assert!(
                consistent(from, to, &r1, &r2, &hashes(&r.body["proof"])),
                "{from} -> {to}: {}",
                r.body
            );
        }
    }

    let too_big = b.size + 1000;
    for q in [
        format!("from=0&to={}", b.size),
        format!("from={}&to={}", b.size, a.size),
        format!("from=1&to={too_big}"),
        "from=abc&to=2".to_owned(),
        "from=1&to=-2".to_owned(),
        "from=1".to_owned(),
        "from=1&to=2&x=3".to_owned(),
    ] {
        s.get(&format!("/v1/ledger/consistency?{q}"), &tok, T)
            .await
            .assert_error(400, "invalid_request");
    }
}

#[tokio::test]
async fn lineage_is_tenant_scoped_and_unknown_ids_are_404() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let (_, key) = s.ledger_key(&tok, T).await;
    let d = s.decide(&tok, T, cases(&agent)[0].0.clone()).await;
    let lineage = d["lineageId"].as_str().unwrap();
    let tok_b = s.token(T2, Role::Auditor);
    let aud_a = s.token(T, Role::Auditor);
    for id in ["lr_000000000000000000000000", "nope", "lr_%2e%2e"] {
        for suffix in ["", "/verify"] {
            s.get(&format!("/v1/lineage/{id}{suffix}"), &tok, T)
                .await
                .assert_error(404, "not_found");
        }
    }
    for suffix in ["", "/verify"] {
        s.get(&format!("/v1/lineage/{lineage}{suffix}"), &tok_b, T2)
            .await
            .assert_error(404, "not_found");
    }
    s.get(&format!("/v1/evidence?lineageId={lineage}"), &tok_b, T2)
        .await
        .assert_error(404, "not_found");
    s.get(
        &format!("/v1/evidence?decisionId={}", d["decisionId"].as_str().unwrap()),
        &tok_b,
        T2,
    )
    .await
    .assert_error(404, "not_found");
    s.get(
        &format!("/v1/decisions/{}", d["decisionId"].as_str().unwrap()),
        &tok_b,
        T2,
    )
    .await
    .assert_error(404, "not_found");
    // The owner still sees it.
    check_lineage(&s, &aud_a, T, lineage, &key).await;

    // System entries (policy activations) are visible to every tenant.
    let cp = s.checkpoint(&tok, T, &key).await;
    let lines = s.entries(&aud_a, T, cp.size).await;
    let (sys_idx, sys): (usize, Value) = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (i, serde_json::from_slice::<Value>(l).unwrap()))
        .find(|(_, e)| e["kind"] == "policy.activated")
        .expect("a policy.activated entry");
    assert_eq!(sys["tenant"], "_system");
    let sys_lineage = sys["lineageId"].as_str().unwrap();
    for (t, tk) in [(T, &tok), (T2, &tok_b)] {
        let (e, v) = check_lineage(&s, tk, t, sys_lineage, &key).await;
        assert_eq!(e["kind"], "policy.activated");
        assert_eq!(e["ledgerIndex"], sys_idx as u64);
        assert_eq!(e["canonical"].as_str().unwrap().as_bytes(), &lines[sys_idx][..]);
        assert_eq!(ph(&v["leafHash"]), leaf(&lines[sys_idx]));
    }
}

#[tokio::test]
async fn entries_stream_is_the_exact_leaves_of_the_tree() {
    let (s, tok, agent) = Server::with_agent(T, "ledger-agent").await;
    let aud = s.token(T, Role::Auditor);
    let admin = s.token(T, Role::Admin);
    let (_, key) = s.ledger_key(&tok, T).await;
    let mut made = Vec::new();
    for _ in 0..3 {
        for (body, _) in cases(&agent) {
            made.push(s.decide(&tok, T, body).await);
        }
    }
    let cp = s.checkpoint(&tok, T, &key).await;
    let lines = s.entries(&aud, T, cp.size).await;
    assert_eq!(lines, s.entries(&admin, T, cp.size).await, "admin reads the same");
    let leaves: Vec<H> = lines.iter().map(|l| leaf(l)).collect();
    assert_eq!(
        mth(&leaves),
        cp.root,
        "MTH over the streamed entries = signed root"
    );
    for (i, l) in lines.iter().enumerate() {
        let e: Value = serde_json::from_slice(l).unwrap();
        assert_eq!(e["v"], 1, "entry {i}");
        assert!(e["lineageId"].as_str().unwrap().starts_with("lr_"));
        // Canonical: keys sorted, no whitespace outside strings (re-serialising a sorted Map round-trips).
        assert_eq!(serde_json::to_vec(&e).unwrap(), *l, "entry {i} is canonical");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.windows(16).any(|w| w == b"agent.registered"))
    );
    for d in &made {
        let i = d["ledgerIndex"].as_u64().unwrap() as usize;
        let e: Value = serde_json::from_slice(&lines[i]).unwrap();
        assert_eq!(e["lineageId"], d["lineageId"]);
        let (le, v) = check_lineage(&s, &aud, T, d["lineageId"].as_str().unwrap(), &key).await;
        assert_eq!(ph(&v["leafHash"]), leaves[i]);
        assert_eq!(le["canonical"].as_str().unwrap().as_bytes(), &lines[i][..]);
    }
    // Sub-ranges and the default end.
    let size = cp.size.to_string();
    let r = s.get("/v1/ledger/entries?start=2&end=5", &aud, T).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.bytes,
        [&lines[2][..], b"\n", &lines[3], b"\n", &lines[4], b"\n"].concat()
    );
    assert_eq!(r.header("x-kla-start"), Some("2"));
    assert_eq!(r.header("x-kla-next"), Some("5"));
    assert_eq!(r.header("x-kla-tree-size"), Some(size.as_str()));
    let r = s.get("/v1/ledger/entries?start=0", &aud, T).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-kla-tree-size"), Some(size.as_str()));
    assert_eq!(
        r.header("x-kla-next"),
        Some(size.as_str()),
        "the default end is the tree size"
    );
    assert_eq!(
        r.bytes,
        lines
            .iter()
            .flat_map(|l| [&l[..], b"\n"])
            .collect::<Vec<_>>()
            .concat()
    );
    let r = s
        .get(&format!("/v1/ledger/entries?start={}", cp.size), &aud, T)
        .await;
    assert_eq!(
        (r.status.as_u16(), r.bytes.len()),
        (200, 0),
        "an empty range is fine"
    );
    assert_eq!(r.header("x-kla-start"), Some(size.as_str()));
    assert_eq!(r.header("x-kla-next"), Some(size.as_str()));

    for role in [Role::Agent, Role::Approver] {
        s.get("/v1/ledger/entries?start=0", &s.token(T, role), T)
            .await
            .assert_error(403, "forbidden");
    }
    for q in [
        format!("start={}", cp.size + 1),
        format!("start=0&end={}", cp.size + 1),
        "start=3&end=2".to_owned(),
        "start=x".to_owned(),
        "end=2".to_owned(),
    ] {
        s.get(&format!("/v1/ledger/entries?{q}"), &aud, T)
            .await
            .assert_error(400, "invalid_request");
    }
}

/// Registrations and decisions racing each other all succeed, and each gets a ledger entry of its own: decision
/// ids distinct, and the entries of the 24 answers fill the positions after what was there before, with no gap,
/// no duplicate and nothing else in between. Regression: registrations (main write connection) racing decisions
/// (index write connection) got SQLITE_BUSY from deferred transactions that upgraded to writes; every write
/// transaction is now IMMEDIATE.
#[tokio::test]
async fn concurrent_registrations_and_decisions_all_succeed_with_contiguous_ledger_entries() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "base").await;
    let tree_size = |r: &Resp| -> u64 { r.header("x-kla-tree-size").unwrap().parse().unwrap() };
    let before = tree_size(&s.get("/v1/ledger/entries?start=0&end=0", &tok, T).await);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let rb = if i % 2 == 0 {
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&agent_body(&format!("racer-{i}")))
        } else {
            s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
                .json(&json!({"agentId": agent, "action": "lookup_policy", "context": {}}))
        };
        tasks.push(tokio::spawn(send(rb)));
    }
    let (mut decisions, mut agents, mut lineages) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    // Ledger index -> lineage id, as the decision answers give it.
    let mut decided = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        let lineage = r.body["lineageId"].as_str().unwrap_or_default().to_owned();
        assert!(lineage.starts_with("lr_"), "{} {}", r.status, r.body);
        assert!(lineages.insert(lineage.clone()), "lineage {lineage} twice");
        if i % 2 == 0 {
            assert_eq!(r.status, 201, "{}", r.body);
            assert_eq!(r.body["version"], 1, "{}", r.body);
            assert!(agents.insert(r.body["agentId"].as_str().unwrap().to_owned()));
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
            let id = r.body["decisionId"].as_str().unwrap().to_owned();
            assert!(decisions.insert(id.clone()), "decision id {id} twice");
            decided.push((r.body["ledgerIndex"].as_u64().unwrap(), lineage));
        }
    }
    assert_eq!((decisions.len(), agents.len()), (12, 12));

    let after = tree_size(&s.get("/v1/ledger/entries?start=0&end=0", &tok, T).await);
    assert_eq!(after, before + 24, "one entry per answer, nothing else");
    let lines = s.entries(&tok, T, after).await;
    let written: Vec<Value> = lines[before as usize..]
        .iter()
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let at: BTreeSet<String> = written
        .iter()
        .map(|e| e["lineageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        at, lineages,
        "positions {before}..{after} hold exactly the 24 answers' entries"
    );
    for (index, lineage) in &decided {
        let e = &written[(index - before) as usize];
        assert_eq!(
            e["lineageId"],
            lineage.as_str(),
            "the decision's ledgerIndex {index} holds its entry"
        );
        assert_eq!(e["kind"], "decision");
    }
    let registered = written.iter().filter(|e| e["kind"] == "agent.registered").count();
    assert_eq!(registered, 12, "{written:?}");
}
