//! The real `kla` binary across restarts: data kept over SIGTERM, acknowledged decisions kept over SIGKILL, and a
//! damaged ledger named, refused, or (a torn or damaged tail, on request) repaired.

use crate::harness::*;
use crate::verifier::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const T: &str = "acme-ledger";

#[tokio::test]
async fn the_binary_restarts_with_all_data_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Process::serve(tmp.path(), &[]).await;
    // A token from `kla token`, to show it still verifies after the restart.
    let tok = kla_token(tmp.path(), &["--tenant", T, "--role", "admin", "--ttl", "10m"]);
    let post = |p: &Process, key: &str| {
        p.req(Method::POST, "/v1/agents", &tok, T)
            .header("Idempotency-Key", key)
            .json(&agent_body("keep-me"))
    };
    let r1 = send(post(&p, "persist-1")).await;
    assert_eq!(r1.status, 201, "{}", r1.body);
    let mut changed = agent_body("keep-me");
    changed["model"] = json!("v2");
    let r2 = send(p.req(Method::POST, "/v1/agents", &tok, T).json(&changed)).await;
    assert_eq!(r2.status, 201, "{}", r2.body);
    assert_eq!(r2.body["version"], 2);
    assert_eq!(r2.body["agentId"], r1.body["agentId"]);
    let status = p.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    let p = Process::serve(tmp.path(), &[]).await;
    let r = p
        .get(
            &format!("/v1/agents/{}", r1.body["agentId"].as_str().unwrap()),
            &tok,
            T,
        )
        .await;
    assert_eq!(
        r.status, 200,
        "the token minted before the restart still verifies: {}",
        r.body
    );
    let versions = r.body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["manifestHash"], r1.body["manifestHash"]);
    assert_eq!(versions[1]["manifestHash"], r2.body["manifestHash"]);
    // The idempotency key survived too.
    let replay = send(post(&p, "persist-1")).await;
    assert_eq!(replay.status, 201, "{}", replay.body);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, r1.body);
    assert!(p.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_decisions_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = Process::serve(dir, &[]).await;
    let tok = p.token(T, Role::Agent);
    let agent = p.register(&tok, T, "crash-agent").await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let api = p.api.clone();
        let tok = tok.clone();
        let bodies: Vec<Value> = cases(&agent).into_iter().map(|c| c.0).collect();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = w;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[n % bodies.len()].clone();
                n += 1;
                let r = api
                    .req(Method::POST, "/v1/decisions.evaluate", &tok, T)
                    .json(&body)
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != 200 {
                    // Only an answer with 200 is an acknowledgement; anything else must be an error body.
                    continue;
                }
                let Ok(v) = r.json::<Value>().await else { break };
                acked.push(v);
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    p.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(
        acked.len() >= 8,
        "some decisions were acknowledged: {}",
        acked.len()
    );
    let ids: BTreeSet<&str> = acked.iter().map(|v| v["lineageId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), acked.len(), "distinct lineage ids");
    let idx: BTreeSet<u64> = acked.iter().map(|v| v["ledgerIndex"].as_u64().unwrap()).collect();
    assert_eq!(idx.len(), acked.len(), "distinct ledger indices");

    let p = Process::serve(dir, &[]).await;
    let (_, key) = p.ledger_key(&tok, T).await;
    let acked = Arc::new(acked);
    let started = Instant::now();
    let mut checks = Vec::new();
    const WORKERS: usize = 16;
    for w in 0..WORKERS {
        let (api, tok, acked) = (p.api.clone(), tok.clone(), acked.clone());
        let key = key.clone();
        checks.push(tokio::spawn(async move {
            for d in acked.iter().skip(w).step_by(WORKERS) {
                let lineage = d["lineageId"].as_str().unwrap();
                let dec = d["decisionId"].as_str().unwrap();
                let e = api.get(&format!("/v1/lineage/{lineage}"), &tok, T).await;
                assert_eq!(e.status, 200, "acknowledged {lineage} lost: {}", e.body);
                assert_eq!(e.body["body"]["decisionId"], dec);
                assert_eq!(e.body["ledgerIndex"], d["ledgerIndex"]);
                assert_eq!(e.body["body"]["decision"], d["decision"]);
                assert_eq!(
                    ph(&e.body["leafHash"]),
                    leaf(e.body["canonical"].as_str().unwrap().as_bytes())
                );
                let deadline = Instant::now() + Duration::from_secs(3);
                loop {
                    let v = api.get(&format!("/v1/lineage/{lineage}/verify"), &tok, T).await;
                    assert_eq!(v.status, 200, "{}", v.body);
                    let (i, n) = (
                        v.body["ledgerIndex"].as_u64().unwrap(),
                        v.body["treeSize"].as_u64().unwrap(),
                    );
                    assert_eq!(
                        root_from_inclusion(i, n, &ph(&v.body["leafHash"]), &hashes(&v.body["merklePath"])),
                        Some(ph(&v.body["rootHash"]))
                    );
                    if v.body["anchored"] == true {
                        let cp = verify_checkpoint(v.body["checkpoint"].as_str().unwrap(), &key);
                        assert_eq!((cp.size, cp.root), (n, ph(&v.body["rootHash"])));
                        break;
                    }
                    assert!(Instant::now() < deadline, "{lineage} not anchored after restart");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let r = api.get(&format!("/v1/decisions/{dec}"), &tok, T).await;
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.body["lineageId"], lineage);
                assert_eq!(r.body["ledgerIndex"], d["ledgerIndex"]);
            }
        }));
    }
    for c in checks {
        c.await.unwrap();
    }
    eprintln!(
        "{} acknowledged decisions checked in {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(p.terminate().success());
    let out = ledger_verify(dir);
    assert!(out.status.success(), "{}", output_text(&out));
}

fn ledger_verify(dir: &Path) -> Output {
    kla(&["ledger", "verify", "--data-dir", dir.to_str().unwrap()])
}

/// `(offset, len)` of each record of an entries file (`[u32 len][u32 crc][bytes]`); panics on a torn tail.
/// The log ends at the end of the file or where only zeros follow (the preallocated tail of a killed server).
fn frames(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        if data[pos..].iter().all(|&b| b == 0) {
            break;
        }
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        assert!(pos + 8 + len <= data.len(), "complete record at {pos}");
        out.push((pos, len));
        pos += 8 + len;
    }
    out
}

/// A data dir with a cleanly stopped server: one agent and `n` decisions. Returns the decisions.
async fn populated(dir: &Path, n: usize) -> Vec<Value> {
    let p = Process::serve(dir, &[]).await;
    let tok = p.token(T, Role::Agent);
    let agent = p.register(&tok, T, "tamper-agent").await;
    let mut made = Vec::new();
    for i in 0..n {
        made.push(p.decide(&tok, T, cases(&agent)[i % 3].0.clone()).await);
    }
    assert!(p.terminate().success());
    made
}

/// The tree size in `<dir>/ledger/checkpoint` (0 if none).
fn disk_checkpoint_size(dir: &Path) -> u64 {
    match std::fs::read_to_string(dir.join("ledger").join("checkpoint")) {
        Ok(t) => t.lines().nth(1).unwrap().parse().unwrap(),
        Err(_) => 0,
    }
}

/// Flips one bit in the middle of record `i`'s payload (never its header).
fn damaged(clean: &[u8], i: usize) -> Vec<u8> {
    let recs = frames(clean);
    let (off, len) = recs[i];
    let mut data = clean.to_vec();
    data[off + 8 + len / 2] ^= 0x01;
    data
}

/// Asserts `kla serve` (plain and with `--ledger-repair truncate`) refuses the log and names index `i`, and
/// that refusing left the file as it was.
async fn assert_refused(dir: &Path, log: &Path, i: usize, what: &str) {
    let before = std::fs::read(log).unwrap();
    for extra in [&[][..], &["--ledger-repair", "truncate"][..]] {
        let Err(Exited { status, log: text }) = Process::start(dir, extra).await else {
            panic!("{what}: `kla serve {extra:?}` started on a ledger damaged at index {i}");
        };
        assert!(!status.success(), "{what}: {text}");
        assert!(
            text.contains(&format!("index {i}")),
            "{what}: names index {i}: {text}"
        );
    }
    assert_eq!(
        std::fs::read(log).unwrap(),
        before,
        "{what}: a refused open must not touch the log"
    );
}

fn assert_verify_names(dir: &Path, i: usize, what: &str) {
    let out = ledger_verify(dir);
    let text = output_text(&out);
    assert!(!out.status.success(), "{what}: {text}");
    assert!(
        text.contains(&format!("index {i}")),
        "{what}: names index {i}: {text}"
    );
}

#[tokio::test]
async fn a_flipped_byte_in_the_checkpointed_log_is_named_and_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    populated(dir, 6).await;
    let log = dir.join("ledger").join("entries.log");
    let clean = std::fs::read(&log).unwrap();
    let n = frames(&clean).len();
    assert!(n >= 8, "{n}");
    assert_eq!(
        disk_checkpoint_size(dir),
        n as u64,
        "a clean stop anchors everything"
    );
    let ok = ledger_verify(dir);
    assert!(ok.status.success(), "{}", output_text(&ok));
    assert!(
        output_text(&ok).contains(&format!("ok: {n} entries")),
        "{}",
        output_text(&ok)
    );

    for i in [1, n / 2, n - 1] {
        std::fs::write(&log, damaged(&clean, i)).unwrap();
        assert_verify_names(dir, i, "checkpointed record");
        // The last checkpointed record is what open re-reads; its damage is refused, truncate or not.
        if i == n - 1 {
            assert_refused(dir, &log, i, "last checkpointed record").await;
        }
        std::fs::write(&log, &clean).unwrap();
        let out = ledger_verify(dir);
        assert!(out.status.success(), "restored: {}", output_text(&out));
    }
}

/// Damage inside the checkpointed prefix, not only in its last record, stops `kla serve` from starting: open must
/// not re-read only record C-1 and what follows C.
#[tokio::test]
async fn mid_log_damage_below_the_checkpoint_stops_the_server_from_starting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    populated(dir, 6).await;
    let log = dir.join("ledger").join("entries.log");
    let clean = std::fs::read(&log).unwrap();
    let mid = frames(&clean).len() / 2;
    std::fs::write(&log, damaged(&clean, mid)).unwrap();
    assert_verify_names(dir, mid, "mid-log");
    assert_refused(dir, &log, mid, "mid-log damage below the checkpoint").await;
}

/// A killed server whose log holds at least `extra` records after the last signed checkpoint.
/// Returns (temp dir, records, checkpoint size).
async fn unanchored_tail(extra: usize) -> (tempfile::TempDir, usize, u64) {
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let p = Process::serve(dir, &[]).await;
        let tok = p.token(T, Role::Agent);
        let agent = p.register(&tok, T, "tail-agent").await;
        for (body, _) in cases(&agent) {
            p.decide(&tok, T, body).await;
        }
        let (_, key) = p.ledger_key(&tok, T).await;
        p.checkpoint(&tok, T, &key).await;
        for i in 0..extra {
            p.decide(&tok, T, cases(&agent)[i % 3].0.clone()).await;
        }
        p.kill9();
        let n = frames(&std::fs::read(dir.join("ledger").join("entries.log")).unwrap()).len();
        let c = disk_checkpoint_size(dir);
        if n as u64 >= c + extra as u64 {
            return (tmp, n, c);
        }
        // The periodic checkpointer ticked in the short window; try again.
    }
    panic!("could not leave entries after the last checkpoint");
}

#[tokio::test]
async fn damage_after_the_checkpoint_is_refused_mid_log_and_truncated_only_at_the_tail_on_request() {
    let (tmp, n, c) = unanchored_tail(4).await;
    let dir = tmp.path();
    let log = dir.join("ledger").join("entries.log");
    let clean = std::fs::read(&log).unwrap();
    let c = c as usize;

    // Damage in the first unanchored record, intact records after it: refused, truncate or not.
    std::fs::write(&log, damaged(&clean, c)).unwrap();
    assert_verify_names(dir, c, "mid-log after the checkpoint");
    assert_refused(dir, &log, c, "mid-log after the checkpoint").await;

    // Damage in the last record: refused by default, cut off with --ledger-repair truncate.
    let tail = damaged(&clean, n - 1);
    std::fs::write(&log, &tail).unwrap();
    assert_verify_names(dir, n - 1, "damaged tail");
    let Err(Exited { status, log: text }) = Process::start(dir, &[]).await else {
        panic!("`kla serve` started on a damaged tail without --ledger-repair");
    };
    assert!(!status.success());
    assert!(text.contains(&format!("index {}", n - 1)), "{text}");
    assert_eq!(std::fs::read(&log).unwrap(), tail);

    let p = Process::serve(dir, &["--ledger-repair", "truncate"]).await;
    let aud = p.token(T, Role::Auditor);
    let (_, key) = p.ledger_key(&aud, T).await;
    let cp = p.checkpoint(&aud, T, &key).await;
    assert!(
        cp.size >= (n - 1) as u64,
        "only the damaged record is cut: {} < {}",
        cp.size,
        n - 1
    );
    let lines = p.entries(&aud, T, (n - 1) as u64).await;
    let clean_recs = frames(&clean);
    for (i, l) in lines.iter().enumerate() {
        let (off, len) = clean_recs[i];
        assert_eq!(l[..], clean[off + 8..off + 8 + len], "record {i} kept as it was");
        let e: Value = serde_json::from_slice(l).unwrap();
        if e["tenant"] == T {
            check_lineage(&p, &aud, T, e["lineageId"].as_str().unwrap(), &key).await;
        }
    }
    let all = p.entries(&aud, T, cp.size).await;
    assert_eq!(mth(&all.iter().map(|l| leaf(l)).collect::<Vec<_>>()), cp.root);
    // Regression: the cut entry's index rows are gone too. They used to survive and point at whatever entry
    // took its index after the restart (here a policy activation), i.e. at someone else's record.
    let (off, len) = clean_recs[n - 1];
    let cut: Value = serde_json::from_slice(&clean[off + 8..off + 8 + len]).unwrap();
    let r = send(
        reqwest::Client::new()
            .get(format!(
                "{}/v1/lineage/{}",
                p.base,
                cut["lineageId"].as_str().unwrap()
            ))
            .bearer_auth(&aud)
            .header("x-tenant-id", T),
    )
    .await;
    r.assert_error(404, "not_found");
    if let Some(d) = cut["body"]["decisionId"].as_str() {
        let r = send(
            reqwest::Client::new()
                .get(format!("{}/v1/decisions/{d}", p.base))
                .bearer_auth(&aud)
                .header("x-tenant-id", T),
        )
        .await;
        r.assert_error(404, "not_found");
    }
    assert!(p.terminate().success());
    let out = ledger_verify(dir);
    assert!(out.status.success(), "{}", output_text(&out));
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_everything_before_it_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let made = populated(dir, 4).await;
    let log = dir.join("ledger").join("entries.log");
    let clean = std::fs::read(&log).unwrap();
    let recs = frames(&clean);
    let n = recs.len();
    let end = recs.last().map_or(0, |&(off, len)| off + 8 + len);
    // A partial record: a header announcing 200 bytes, and 5 of them.
    let mut torn = clean[..end].to_vec();
    torn.extend_from_slice(&200u32.to_le_bytes());
    torn.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, b'{', b'"', b'v', b'"', b':']);
    std::fs::write(&log, &torn).unwrap();
    let out = ledger_verify(dir);
    assert!(
        out.status.success(),
        "a torn tail is not damage: {}",
        output_text(&out)
    );
    assert!(
        output_text(&out).contains(&format!("ok: {n} entries")),
        "{}",
        output_text(&out)
    );

    let p = Process::serve(dir, &[]).await;
    let tok = p.token(T, Role::Auditor);
    let (_, key) = p.ledger_key(&tok, T).await;
    for d in &made {
        let (_, v) = check_lineage(&p, &tok, T, d["lineageId"].as_str().unwrap(), &key).await;
        assert_eq!(v["anchored"], true);
    }
    let cp = p.checkpoint(&tok, T, &key).await;
    let lines = p.entries(&tok, T, cp.size).await;
    let leaves: Vec<H> = lines.iter().map(|l| leaf(l)).collect();
    assert_eq!(mth(&leaves), cp.root);
    assert!(p.terminate().success());
    let now = std::fs::read(&log).unwrap();
    assert_eq!(&now[..end], &clean[..end], "the intact prefix is untouched");
    assert_eq!(
        frames(&now).len() as u64,
        cp.size,
        "the torn bytes are gone; new records follow the prefix"
    );
    let out = ledger_verify(dir);
    assert!(out.status.success(), "{}", output_text(&out));
}

#[tokio::test]
async fn ledger_survives_a_clean_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = Process::serve(dir, &[]).await;
    let tok = p.token(T, Role::Agent);
    let aud = p.token(T, Role::Auditor);
    let agent = p.register(&tok, T, "restart-agent").await;
    let mut made = Vec::new();
    for (body, _) in cases(&agent) {
        made.push(p.decide(&tok, T, body).await);
    }
    let (vkey, key) = p.ledger_key(&tok, T).await;
    let before = p.checkpoint(&tok, T, &key).await;
    let lines = p.entries(&aud, T, before.size).await;
    let mut lineage: HashMap<String, Value> = HashMap::new();
    for d in &made {
        let id = d["lineageId"].as_str().unwrap();
        lineage.insert(
            id.to_owned(),
            p.get(&format!("/v1/lineage/{id}"), &tok, T).await.body,
        );
    }
    assert!(p.terminate().success());
    let on_disk = std::fs::read_to_string(dir.join("ledger").join("checkpoint")).unwrap();
    let on_disk = verify_checkpoint(&on_disk, &key);
    assert_eq!(
        on_disk.size, before.size,
        "the final checkpoint covers everything, nothing more"
    );
    assert_eq!(on_disk.root, before.root);

    let p = Process::serve(dir, &[]).await;
    let (vkey2, key2) = p.ledger_key(&tok, T).await;
    assert_eq!(vkey2, vkey, "the verifier key survives");
    let after = p.checkpoint(&tok, T, &key2).await;
    assert!(after.size >= before.size);
    if after.size == before.size {
        assert_eq!(after.text, before.text);
    } else {
        check_consistency(&p, &tok, T, &before, &after).await;
    }
    let now = p.entries(&aud, T, after.size).await;
    assert_eq!(
        now[..before.size as usize],
        lines[..],
        "entries are byte-identical"
    );
    for (i, l) in now.iter().enumerate().skip(before.size as usize) {
        let e: Value = serde_json::from_slice(l).unwrap();
        assert_eq!(
            e["kind"], "policy.activated",
            "a restart adds only system entries: {i}"
        );
    }
    for d in &made {
        let id = d["lineageId"].as_str().unwrap();
        let (e, v) = check_lineage(&p, &tok, T, id, &key2).await;
        assert_eq!(e, lineage[id], "lineage entry unchanged");
        assert_eq!(v["anchored"], true);
        let r = p
            .get(
                &format!("/v1/decisions/{}", d["decisionId"].as_str().unwrap()),
                &tok,
                T,
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["lineageId"], id);
    }
    // New entries continue the same log.
    let d = p.decide(&tok, T, cases(&agent)[0].0.clone()).await;
    assert!(d["ledgerIndex"].as_u64().unwrap() >= before.size);
    check_lineage(&p, &tok, T, d["lineageId"].as_str().unwrap(), &key2).await;
    assert!(p.terminate().success());
    let out = ledger_verify(dir);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = kla(&["ledger", "key", "--data-dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{vkey}\n"),
        "`kla ledger key` = GET /v1/ledger/key"
    );
}
