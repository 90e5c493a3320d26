use std::io::Write;
use std::path::Path;

use proptest::prelude::*;

use super::*;
use crate::ledger::evidence::{EvidenceBundle, verify_bundle};
use crate::ledger::tree::{MemTree, verify_consistency, verify_inclusion};
use crate::ledger::{Entry, new_lineage_id};

fn cfg(dir: &Path) -> LedgerConfig {
    LedgerConfig::new(dir.join("ledger"))
}

fn entry_bytes(i: u64) -> Vec<u8> {
    Entry {
        v: 1,
        kind: "decision".into(),
        lineage_id: new_lineage_id(),
        tenant: format!("t{}", i % 3),
        time: "2026-01-01T00:00:00Z".into(),
        body: serde_json::json!({ "n": i }),
    }
    .encode()
    .expect("encode")
}

fn entries_path(dir: &Path) -> std::path::PathBuf {
    dir.join("ledger").join(files::ENTRIES)
}

async fn append_n(l: &Ledger, n: u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let start = l.size();
    for i in 0..n {
        let b = entry_bytes(i);
        let idx = l.append(b.clone()).await.expect("append");
        assert_eq!(idx, start + out.len() as u64);
        out.push(b);
    }
    out
}

fn assert_matches_model(l: &Ledger, model: &[Vec<u8>]) {
    let mut mem = MemTree::new();
    for b in model {
        mem.push(b);
    }
    let n = model.len() as u64;
    assert_eq!(l.size(), n);
    assert_eq!(l.root(n).expect("root"), mem.root());
    for (i, b) in model.iter().enumerate() {
        assert_eq!(&l.entry(i as u64).expect("entry"), b);
    }
    let step = (n / 40).max(1);
    for size in (1..=n).step_by(step as usize) {
        assert_eq!(
            l.root(size).expect("root"),
            tree::root(&mem, size).expect("mem root")
        );
        for idx in (0..size).step_by(step as usize) {
            let p = l.inclusion_proof(idx, size).expect("proof");
            assert_eq!(p, tree::inclusion_proof(&mem, idx, size).expect("mem proof"));
            let c = l.consistency_proof(idx + 1, size).expect("consistency");
            assert_eq!(c, tree::consistency_proof(&mem, idx + 1, size).expect("mem c"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_survive_reopen_and_proofs_match_memory_tree() {
    let tmp = tempfile::tempdir().expect("tmp");
    let ledger = Ledger::open(cfg(tmp.path())).expect("open");
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..40u64 {
                let b = entry_bytes(w * 1000 + i);
                let idx = l.append(b.clone()).await.expect("append");
                got.push((idx, b));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    all.sort_by_key(|(i, _)| *i);
    let model: Vec<Vec<u8>> = all.iter().map(|(_, b)| b.clone()).collect();
    assert!(all.iter().enumerate().all(|(k, (i, _))| *i == k as u64));
    assert_matches_model(&ledger, &model);
    drop(ledger);
    let ledger = Ledger::open(cfg(tmp.path())).expect("reopen");
    assert_matches_model(&ledger, &model);
    // appending after reopen continues the same tree
    let b = entry_bytes(99_999);
    assert_eq!(ledger.append(b.clone()).await.expect("append"), 640);
    let mut model = model;
    model.push(b);
    assert_matches_model(&ledger, &model);
}

#[tokio::test]
async fn second_open_of_the_same_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _l = Ledger::open(cfg(tmp.path())).expect("open");
    assert!(matches!(
        Ledger::open(cfg(tmp.path())),
        Err(LedgerError::Locked(_))
    ));
}

#[tokio::test]
async fn torn_tail_is_cut_off_on_open() {
    let (tmp, l, model) = ledger_with(10).await;
    drop(l);
    // half a record: header announces 100 bytes, only 10 follow
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(entries_path(tmp.path()))
        .expect("entries");
    f.write_all(&100u32.to_le_bytes()).expect("w");
    f.write_all(&0u32.to_le_bytes()).expect("w");
    f.write_all(&[7u8; 10]).expect("w");
    drop(f);
    let len_before = std::fs::metadata(entries_path(tmp.path())).expect("m").len();
    let l = Ledger::open(cfg(tmp.path())).expect("reopen cuts torn tail");
    assert_eq!(
        std::fs::metadata(entries_path(tmp.path())).expect("m").len(),
        len_before - 18
    );
    assert_matches_model(&l, &model);
    assert_eq!(l.append(entry_bytes(1)).await.expect("append"), 10);
}

/// The ledger in `dir` reopens with `size` entries and verifies in full.
fn assert_reopens_with(dir: &Path, size: u64) {
    let l = Ledger::open(cfg(dir)).expect("reopen");
    assert_eq!(l.size(), size);
    drop(l);
    verify_ledger_dir(&dir.join("ledger"), &mut |_, _| {}).expect("verifies");
}

/// A ledger in a new temp dir, with entries `0..n` appended, and those entries (the model).
async fn ledger_with(n: u64) -> (tempfile::TempDir, Ledger, Vec<Vec<u8>>) {
    let tmp = tempfile::tempdir().expect("tmp");
    let l = Ledger::open(cfg(tmp.path())).expect("open");
    let model = append_n(&l, n).await;
    (tmp, l, model)
}

/// A ledger in a new temp dir, with entries `0..n` appended.
async fn ledger_of(n: u64) -> (tempfile::TempDir, Ledger) {
    let (tmp, l, _) = ledger_with(n).await;
    (tmp, l)
}

/// `r` refuses the ledger as corrupt at entry `at`, with a detail that contains `needle`.
#[track_caller]
fn assert_corrupt<T>(r: Result<T, LedgerError>, at: u64, needle: &str) {
    match r {
        Err(LedgerError::Corrupt { index, detail }) => {
            assert_eq!(index, at, "{detail}");
            assert!(detail.contains(needle), "{detail}");
        }
        Err(e) => panic!("expected corruption at {at}, got {e}"),
        Ok(_) => panic!("expected corruption at {at}, the ledger was accepted"),
    }
}

fn flip_byte_of_entry(dir: &Path, index: u64) {
    let store_dir = dir.join("ledger");
    let offsets = std::fs::read(store_dir.join(files::OFFSETS)).expect("offsets");
    let i = index as usize * 8;
    let off = u64::from_le_bytes(offsets[i..i + 8].try_into().expect("8 bytes"));
    let mut data = std::fs::read(entries_path(dir)).expect("entries");
    data[off as usize + 8 + 3] ^= 0x20;
    std::fs::write(entries_path(dir), data).expect("write");
}

#[tokio::test]
async fn byte_flipped_mid_log_refuses_open_naming_the_index() {
    let (tmp, l) = ledger_of(20).await;
    drop(l);
    flip_byte_of_entry(tmp.path(), 7);
    for repair in [RepairMode::Refuse, RepairMode::Truncate] {
        let mut c = cfg(tmp.path());
        c.repair = repair;
        assert_corrupt(Ledger::open(c), 7, "mid-log");
    }
}

#[tokio::test]
async fn full_verify_finds_damage_inside_the_checkpointed_prefix() {
    let (tmp, l) = ledger_of(30).await;
    l.checkpoint_now().await.expect("checkpoint");
    drop(l);
    let dir = tmp.path().join("ledger");
    let mut calls = 0;
    let s = verify_ledger_dir(&dir, &mut |_, _| calls += 1).expect("verifies");
    assert_eq!(s.entries, 30);
    assert_eq!(s.checkpoint_size, Some(30));
    assert!(calls > 0);
    flip_byte_of_entry(tmp.path(), 12);
    match verify_ledger_dir(&dir, &mut |_, _| {}) {
        Err(LedgerError::Corrupt { index, .. }) => assert_eq!(index, 12),
        other => panic!("expected corruption at 12, got {other:?}"),
    }
    // a wrong stored interior node is also caught
    flip_byte_of_entry(tmp.path(), 12);
    let lvl = dir.join("level-02.hash");
    let mut b = std::fs::read(&lvl).expect("level 2");
    b[32] ^= 1; // node (2, 1) covers entries 4..8
    std::fs::write(&lvl, b).expect("w");
    assert_corrupt(verify_ledger_dir(&dir, &mut |_, _| {}), 4, "level 2");
}

fn corrupt_last_record_checksum(dir: &Path) {
    let mut data = std::fs::read(entries_path(dir)).expect("entries");
    let n = data.len();
    data[n - 1] ^= 0xff;
    std::fs::write(entries_path(dir), data).expect("write");
}

#[tokio::test]
async fn truncate_repair_cuts_a_damaged_tail_after_the_checkpoint_only() {
    let (tmp, l, mut model) = ledger_with(12).await;
    l.checkpoint_now().await.expect("checkpoint at 12");
    model.extend(append_n(&l, 3).await);
    drop(l);
    corrupt_last_record_checksum(tmp.path());
    // default mode refuses, naming the index
    assert_corrupt(Ledger::open(cfg(tmp.path())), 14, "truncate");
    let mut c = cfg(tmp.path());
    c.repair = RepairMode::Truncate;
    let l = Ledger::open(c).expect("truncate repairs the tail");
    model.truncate(14);
    assert_matches_model(&l, &model);
    assert_eq!(l.latest_checkpoint().expect("cp").size, 12);
    drop(l);

    // now damage an entry covered by the checkpoint, at the tail
    let (tmp2, l) = ledger_of(5).await;
    l.checkpoint_now().await.expect("checkpoint at 5");
    drop(l);
    corrupt_last_record_checksum(tmp2.path());
    let mut c = cfg(tmp2.path());
    c.repair = RepairMode::Truncate;
    assert_corrupt(Ledger::open(c), 4, "checkpoint");
}

#[tokio::test]
async fn checkpoints_are_signed_persisted_and_anchor_entries() {
    let (tmp, l) = ledger_of(5).await;
    assert!(!l.is_anchored(0));
    let cp = l.checkpoint_now().await.expect("checkpoint");
    assert_eq!(cp.size, 5);
    assert_eq!(cp.root, l.root(5).expect("root"));
    assert!(cp.text().starts_with("kla.local/ledger\n5\n"));
    assert!(l.is_anchored(4) && !l.is_anchored(5));
    let vkey = l.verifier_key();
    assert!(vkey.starts_with(&format!("kla.local/ledger+{}+", l.key_id())));
    let v = NoteVerifier::parse(&vkey).expect("vkey");
    SignedCheckpoint::parse_verified(cp.text(), &v).expect("signature verifies");
    assert_eq!(
        verifier_key_for_dir(&tmp.path().join("ledger")).expect("vkey from dir"),
        vkey
    );
    drop(l);
    let key_mode = std::fs::metadata(tmp.path().join("ledger").join(files::KEY))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let l = Ledger::open(cfg(tmp.path())).expect("reopen");
    assert_eq!(l.latest_checkpoint(), Some(cp.clone()));
    assert_eq!(l.verifier_key(), vkey);
    // consistency from the checkpoint to a later size verifies
    append_n(&l, 4).await;
    let cp2 = l.checkpoint_now().await.expect("cp2");
    let proof = l.consistency_proof(cp.size, cp2.size).expect("proof");
    verify_consistency(cp.size, cp2.size, &cp.root, &cp2.root, &proof).expect("consistent");
    // a different origin on the same directory is refused
    drop(l);
    let mut c = cfg(tmp.path());
    c.origin = "other.example/log".into();
    assert!(matches!(Ledger::open(c), Err(LedgerError::Config(_))));
}

#[tokio::test]
async fn checkpointer_signs_while_entries_arrive_and_on_shutdown() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut c = cfg(tmp.path());
    c.checkpoint_interval = Duration::from_millis(50);
    let l = Ledger::open(c).expect("open");
    let stop = CancellationToken::new();
    let task = l.spawn_checkpointer(stop.clone());
    append_n(&l, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(l.latest_checkpoint().expect("periodic checkpoint").size, 3);
    append_n(&l, 2).await;
    stop.cancel();
    task.await.expect("join");
    assert_eq!(l.latest_checkpoint().expect("final checkpoint").size, 5);
}

#[tokio::test]
async fn out_of_range_requests_are_client_errors() {
    let (_tmp, l) = ledger_of(3).await;
    assert!(matches!(l.entry(3), Err(LedgerError::NotFound(_))));
    assert!(matches!(l.leaf_hash(9), Err(LedgerError::NotFound(_))));
    assert!(matches!(
        l.inclusion_proof(3, 3),
        Err(LedgerError::InvalidRange(_))
    ));
    assert!(matches!(
        l.inclusion_proof(0, 4),
        Err(LedgerError::InvalidRange(_))
    ));
    assert!(matches!(
        l.consistency_proof(0, 3),
        Err(LedgerError::InvalidRange(_))
    ));
    assert!(matches!(l.entries(2, 5), Err(LedgerError::InvalidRange(_))));
    assert!(matches!(
        l.append(Vec::new()).await,
        Err(LedgerError::InvalidEntry(_))
    ));
    assert_eq!(l.entries(1, 3).expect("range").len(), 2);
}

// ---------- evidence bundles ----------

async fn bundle_fixture() -> (tempfile::TempDir, Ledger, EvidenceBundle) {
    let (tmp, l) = ledger_of(11).await;
    let b = l.build_evidence(&[0, 6, 10]).await.expect("bundle");
    (tmp, l, b)
}

fn reject(b: &EvidenceBundle, vkey: &str) -> LedgerError {
    let bytes = serde_json::to_vec(b).expect("json");
    match verify_bundle(&bytes, vkey) {
        Err(e) => e,
        Ok(r) => panic!("altered bundle verified: {:?}", r.checks),
    }
}

fn names_entry(e: &LedgerError, index: u64, lineage: &str) {
    match e {
        LedgerError::BadBundle {
            ledger_index,
            lineage_id,
            ..
        } => {
            assert_eq!(*ledger_index, Some(index), "{e}");
            assert_eq!(lineage_id.as_deref(), Some(lineage), "{e}");
            assert!(e.to_string().contains(lineage));
        }
        other => panic!("wrong error {other}"),
    }
}

#[tokio::test]
async fn good_bundle_verifies_offline() {
    let (_tmp, l, b) = bundle_fixture().await;
    assert_eq!(b.tree_size, 11);
    assert_eq!(b.format, "kla-evidence/v1");
    let bytes = serde_json::to_vec_pretty(&b).expect("json");
    let report = verify_bundle(&bytes, &l.verifier_key()).expect("verifies");
    assert_eq!(report.tree_size, 11);
    assert_eq!(report.checks.len(), 5 + 3);
    // each entry string is the exact stored canonical entry
    assert_eq!(b.entries[1].entry.as_bytes(), l.entry(6).expect("e").as_slice());
    let lineage = Entry::decode(b.entries[1].entry.as_bytes())
        .expect("entry")
        .lineage_id;
    assert_eq!(b.entries[1].lineage_id, lineage);
}

#[tokio::test]
async fn altered_bundles_fail_naming_the_entry() {
    let (_tmp, l, b) = bundle_fixture().await;
    let vkey = l.verifier_key();
    let lineage6 = b.entries[1].lineage_id.clone();

    // one byte of the entry changed (leaf hash no longer matches)
    let mut x = b.clone();
    x.entries[1].entry = x.entries[1].entry.replacen("\"n\":6", "\"n\":7", 1);
    names_entry(&reject(&x, &vkey), 6, &lineage6);

    // entry and leaf hash changed consistently: the inclusion proof fails
    let mut x = b.clone();
    x.entries[1].entry = x.entries[1].entry.replacen("\"n\":6", "\"n\":7", 1);
    x.entries[1].leaf_hash = format!(
        "sha256:{}",
        hex::encode(tree::leaf_hash(x.entries[1].entry.as_bytes()))
    );
    names_entry(&reject(&x, &vkey), 6, &lineage6);

    // a proof hash changed
    let mut x = b.clone();
    let h = &mut x.entries[1].inclusion_proof[0];
    let last = if h.ends_with('0') { '1' } else { '0' };
    h.pop();
    h.push(last);
    names_entry(&reject(&x, &vkey), 6, &lineage6);

    // an extra proof hash appended
    let mut x = b.clone();
    let extra = x.entries[2].inclusion_proof[0].clone();
    x.entries[2].inclusion_proof.push(extra);
    let lineage10 = b.entries[2].lineage_id.clone();
    names_entry(&reject(&x, &vkey), 10, &lineage10);

    // the claimed lineage id does not match the entry
    let mut x = b.clone();
    x.entries[0].lineage_id = new_lineage_id();
    let e = reject(&x, &vkey);
    assert!(
        matches!(
            e,
            LedgerError::BadBundle {
                ledger_index: Some(0),
                ..
            }
        ),
        "{e}"
    );

    // the checkpoint text altered (tree size)
    let mut x = b.clone();
    x.checkpoint = x.checkpoint.replacen("\n11\n", "\n12\n", 1);
    x.tree_size = 12;
    let e = reject(&x, &vkey);
    assert!(e.to_string().contains("checkpoint"), "{e}");

    // bundle tree size or root disagreeing with the signed note
    let mut x = b.clone();
    x.root_hash = format!("sha256:{}", "00".repeat(32));
    assert!(reject(&x, &vkey).to_string().contains("rootHash"));

    // the wrong key (another ledger's)
    let tmp2 = tempfile::tempdir().expect("tmp");
    let other = Ledger::open(cfg(tmp2.path())).expect("open");
    let e = reject(&b, &other.verifier_key());
    assert!(e.to_string().contains("key"), "{e}");

    // garbage vkey
    assert!(reject(&b, "not-a-key").to_string().contains("verifier key"));
}

#[tokio::test]
async fn a_bundle_hash_in_another_spelling_is_refused() {
    // Uppercase hex decodes to the same bytes, so such a bundle verified while its text differs from what kla
    // wrote and from what a reader comparing strings expects.
    let (_tmp, l, b) = bundle_fixture().await;
    let vkey = l.verifier_key();
    let upper = |h: &str| format!("sha256:{}", h.trim_start_matches("sha256:").to_ascii_uppercase());
    let mut x = b.clone();
    x.root_hash = upper(&x.root_hash);
    assert!(reject(&x, &vkey).to_string().contains("rootHash"));
    let lineage6 = b.entries[1].lineage_id.clone();
    let mut x = b.clone();
    x.entries[1].leaf_hash = upper(&x.entries[1].leaf_hash);
    names_entry(&reject(&x, &vkey), 6, &lineage6);
    let mut x = b.clone();
    x.entries[1].inclusion_proof[0] = upper(&x.entries[1].inclusion_proof[0]);
    names_entry(&reject(&x, &vkey), 6, &lineage6);
}

// ---------- random operation sequences against a model ----------

#[derive(Clone, Debug)]
enum Op {
    Append(u8),
    Reopen,
    /// Append garbage past the last acknowledged byte (a torn, unacked write), then reopen.
    TornWrite(u8),
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..20).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => (1u8..40).prop_map(Op::TornWrite),
        1 => Just(Op::Checkpoint),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn random_operations_match_model(ops in proptest::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let tmp = tempfile::tempdir().expect("tmp");
            let mut l = Ledger::open(cfg(tmp.path())).expect("open");
            let mut model: Vec<Vec<u8>> = Vec::new();
            for op in ops {
                match op {
                    Op::Append(n) => {
                        let futs: Vec<_> = (0..n)
                            .map(|i| {
                                let l = l.clone();
                                let b = entry_bytes(u64::from(i));
                                tokio::spawn(async move {
                                    let idx = l.append(b.clone()).await.expect("append");
                                    (idx, b)
                                })
                            })
                            .collect();
                        let mut got = Vec::new();
                        for f in futs {
                            got.push(f.await.expect("join"));
                        }
                        got.sort_by_key(|(i, _)| *i);
                        for (i, b) in got {
                            assert_eq!(i as usize, model.len());
                            model.push(b);
                        }
                    }
                    Op::Reopen => {
                        drop(l);
                        l = Ledger::open(cfg(tmp.path())).expect("reopen");
                    }
                    Op::TornWrite(k) => {
                        drop(l);
                        let mut f = std::fs::OpenOptions::new()
                            .append(true)
                            .open(entries_path(tmp.path()))
                            .expect("entries");
                        let mut rec = 200u32.to_le_bytes().to_vec();
                        rec.extend_from_slice(&[1, 2, 3, 4]);
                        rec.extend(std::iter::repeat_n(9u8, 40));
                        f.write_all(&rec[..usize::from(k).min(rec.len())]).expect("w");
                        drop(f);
                        l = Ledger::open(cfg(tmp.path())).expect("reopen after torn write");
                    }
                    Op::Checkpoint => {
                        let cp = l.checkpoint_now().await.expect("checkpoint");
                        assert_eq!(cp.size, model.len() as u64);
                    }
                }
                assert_eq!(l.size(), model.len() as u64);
            }
            assert_matches_model(&l, &model);
            if let Some(cp) = l.latest_checkpoint() {
                for i in 0..cp.size {
                    let p = l.inclusion_proof(i, cp.size).expect("proof");
                    verify_inclusion(i, cp.size, &l.leaf_hash(i).expect("leaf"), &p, &cp.root)
                        .expect("inclusion verifies");
                }
            }
        });
    }
}

// ---------- preallocated (zero-filled) tail of entries.log ----------

fn file_len(dir: &Path) -> u64 {
    std::fs::metadata(entries_path(dir)).expect("entries").len()
}

/// Logical end of a log holding `model`.
fn logical_end(model: &[Vec<u8>]) -> u64 {
    model.iter().map(|b| 8 + b.len() as u64).sum()
}

/// Waits until the writer has zero-filled at least half a chunk past `end` and stopped.
async fn wait_prealloc(dir: &Path, end: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    loop {
        let len = file_len(dir);
        if len >= end + files::PREALLOC_CHUNK / 2 && len == last {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no preallocation: len {len}, end {end}"
        );
        last = len;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn assert_zeros_after(dir: &Path, end: u64) {
    let data = std::fs::read(entries_path(dir)).expect("entries");
    assert!(data.len() as u64 >= end);
    assert!(
        data[end as usize..].iter().all(|&b| b == 0),
        "only zeros after the logical end"
    );
}

/// What a crash (SIGKILL) of the open ledger in `src` leaves on disk, copied to `dst`.
fn crash_image(src: &Path, dst: &Path) {
    let (from, to) = (src.join("ledger"), dst.join("ledger"));
    std::fs::create_dir_all(&to).expect("mkdir");
    for e in std::fs::read_dir(&from).expect("ls") {
        let e = e.expect("entry");
        if e.file_name() != files::LOCK {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

fn write_at(dir: &Path, pos: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(entries_path(dir))
        .expect("entries");
    f.write_all_at(bytes, pos).expect("write");
}

fn big_entry(n: usize) -> Vec<u8> {
    let mut e = entry_bytes(7);
    e.extend(std::iter::repeat_n(b' ', n));
    e
}

#[tokio::test]
async fn appends_land_in_the_zeroed_region_and_a_crash_image_reopens() {
    let tmp = tempfile::tempdir().expect("tmp");
    let l = Ledger::open(cfg(tmp.path())).expect("open");
    let mut model = Vec::new();
    // Cross several chunk boundaries with the extension ready each time.
    while logical_end(&model) < 3 * files::PREALLOC_CHUNK {
        wait_prealloc(tmp.path(), logical_end(&model)).await;
        let before = file_len(tmp.path());
        model.extend(append_n(&l, 1).await);
        assert!(
            logical_end(&model) <= before,
            "the append went into the zero-filled region: end {} > file {before}",
            logical_end(&model)
        );
    }
    wait_prealloc(tmp.path(), logical_end(&model)).await;
    assert_zeros_after(tmp.path(), logical_end(&model));

    let img = tempfile::tempdir().expect("tmp");
    crash_image(tmp.path(), img.path());
    let s = verify_ledger_dir(&img.path().join("ledger"), &mut |_, _| {}).expect("verifies");
    assert_eq!(s.entries, model.len() as u64);
    assert_eq!(s.torn_tail_bytes, 0);
    assert_eq!(s.preallocated_bytes, file_len(img.path()) - logical_end(&model));
    let l2 = Ledger::open(cfg(img.path())).expect("reopen with a preallocated tail");
    assert_matches_model(&l2, &model);
    let mut model2 = model.clone();
    model2.extend(append_n(&l2, 3).await);
    assert_matches_model(&l2, &model2);
    drop(l2);
    // A clean close leaves exactly the log (as versions without preallocation wrote it).
    assert_eq!(file_len(img.path()), logical_end(&model2));

    drop(l);
    assert_eq!(file_len(tmp.path()), logical_end(&model));
    let l = Ledger::open(cfg(tmp.path())).expect("reopen of a non-preallocated log");
    assert_matches_model(&l, &model);
}

#[tokio::test]
async fn a_batch_beyond_the_zeroed_region_grows_the_file() {
    let (tmp, l, mut model) = ledger_with(5).await;
    wait_prealloc(tmp.path(), logical_end(&model)).await;
    let before = file_len(tmp.path());
    // One record larger than the whole chunk: it starts in the zeroed region and grows the file.
    let big = big_entry(2 * files::PREALLOC_CHUNK as usize);
    assert_eq!(l.append(big.clone()).await.expect("append"), 5);
    model.push(big);
    assert!(logical_end(&model) > before, "grew past the zeroed region");
    model.extend(append_n(&l, 2).await);
    wait_prealloc(tmp.path(), logical_end(&model)).await;
    assert_zeros_after(tmp.path(), logical_end(&model));
    let img = tempfile::tempdir().expect("tmp");
    crash_image(tmp.path(), img.path());
    let l2 = Ledger::open(cfg(img.path())).expect("reopen");
    assert_matches_model(&l2, &model);
    drop(l2);
    let s = verify_ledger_dir(&img.path().join("ledger"), &mut |_, _| {}).expect("verifies");
    assert_eq!(s.entries, 8);
    assert_matches_model(&l, &model);
}

/// A crashed ledger: 8 checkpointed + 4 more entries, zero-filled tail. Returns the image
/// dir, the model and the logical end.
async fn crashed_with_tail() -> (tempfile::TempDir, tempfile::TempDir, Vec<Vec<u8>>, u64) {
    let (tmp, l, mut model) = ledger_with(8).await;
    l.checkpoint_now().await.expect("checkpoint");
    model.extend(append_n(&l, 4).await);
    let end = logical_end(&model);
    wait_prealloc(tmp.path(), end).await;
    let img = tempfile::tempdir().expect("tmp");
    crash_image(tmp.path(), img.path());
    (tmp, img, model, end)
}

#[tokio::test]
async fn a_torn_final_record_in_preallocated_space_is_cut() {
    let (_tmp, img, model, end) = crashed_with_tail().await;
    let dir = img.path();
    // A torn 200-byte record: header and the first 50 bytes reached the disk, the rest is zeros.
    let mut rec = 200u32.to_le_bytes().to_vec();
    rec.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    rec.extend(std::iter::repeat_n(b'x', 50));
    write_at(dir, end, &rec);
    let s = verify_ledger_dir(&dir.join("ledger"), &mut |_, _| {}).expect("a torn write is not damage");
    assert_eq!((s.entries, s.torn_tail_bytes), (12, 208));
    let l = Ledger::open(cfg(dir)).expect("open cuts the torn record");
    assert_matches_model(&l, &model);
    assert_zeros_after(dir, end);
    assert_eq!(l.append(entry_bytes(1)).await.expect("append"), 12);
}

#[tokio::test]
async fn a_bad_acknowledged_final_record_before_zeros_is_not_taken_for_a_torn_write() {
    let (_tmp, img, _model, end) = crashed_with_tail().await;
    let dir = img.path();
    // The last record's offset is in offsets.idx (written after its fdatasync): damage.
    write_at(dir, end - 3, b"#");
    match verify_ledger_dir(&dir.join("ledger"), &mut |_, _| {}) {
        Err(LedgerError::Corrupt { index, .. }) => assert_eq!(index, 11),
        other => panic!("expected corruption at 11, got {other:?}"),
    }
    assert_corrupt(Ledger::open(cfg(dir)), 11, "truncate");
    // Covered by the checkpoint: refused even when nothing else says it was acknowledged.
    let (tmp, l, model) = ledger_with(6).await;
    l.checkpoint_now().await.expect("checkpoint");
    wait_prealloc(tmp.path(), logical_end(&model)).await;
    let img = tempfile::tempdir().expect("tmp");
    crash_image(tmp.path(), img.path());
    let ldir = img.path().join("ledger");
    flip_byte_of_entry(img.path(), 5);
    let offsets = std::fs::read(ldir.join(files::OFFSETS)).expect("offsets");
    std::fs::write(ldir.join(files::OFFSETS), &offsets[..5 * 8]).expect("w");
    std::fs::remove_file(ldir.join(files::SYNCED)).expect("rm");
    match verify_ledger_dir(&ldir, &mut |_, _| {}) {
        Err(LedgerError::Corrupt { index, .. }) => assert_eq!(index, 5),
        other => panic!("expected corruption at 5, got {other:?}"),
    }
    assert_corrupt(Ledger::open(cfg(img.path())), 5, "checkpoint");
}

#[tokio::test]
async fn non_zero_bytes_after_the_logical_end_are_refused() {
    let (_tmp, img, model, end) = crashed_with_tail().await;
    let dir = img.path();
    write_at(dir, end + 100, &[1]);
    assert_corrupt(
        verify_ledger_dir(&dir.join("ledger"), &mut |_, _| {}),
        12,
        "after the end",
    );
    assert_corrupt(Ledger::open(cfg(dir)), 12, "truncate");
    let mut c = cfg(dir);
    c.repair = RepairMode::Truncate;
    let l = Ledger::open(c).expect("truncate cuts the garbage");
    assert_matches_model(&l, &model);
    assert_zeros_after(dir, end);
    drop(l);
    verify_ledger_dir(&dir.join("ledger"), &mut |_, _| {}).expect("verifies after the cut");
}

/// Framed record bytes as the writer writes them.
fn framed(e: &[u8]) -> Vec<u8> {
    let mut r = (e.len() as u32).to_le_bytes().to_vec();
    r.extend_from_slice(&files::crc(e).to_le_bytes());
    r.extend_from_slice(e);
    r
}

/// A batch of 3 records whose fdatasync never completed (power loss): the device kept the first
/// and last parts of the write but not a block inside the first record, so intact records follow
/// the damage. None of them was acknowledged (all past `offsets.idx`). The default open refuses and
/// says why; `RepairMode::Truncate` cuts the whole batch.
#[tokio::test]
async fn a_torn_batch_with_a_lost_middle_block_is_cut_by_truncate_only() {
    let (_tmp, img, model, end) = crashed_with_tail().await;
    let dir = img.path();
    let mut batch = Vec::new();
    let a = framed(&big_entry(300));
    let hole = (a.len() / 2) as u64;
    batch.extend(a);
    batch.extend(framed(&entry_bytes(100)));
    batch.extend(framed(&entry_bytes(101)));
    assert!(end + (batch.len() as u64) < file_len(dir), "fits the zero tail");
    write_at(dir, end, &batch);
    write_at(dir, end + hole, &[0u8; 64]); // the block that did not reach the disk
    // The default open refuses.
    assert_corrupt(Ledger::open(cfg(dir)), model.len() as u64, "repair mode truncate");
    let mut c = cfg(dir);
    c.repair = RepairMode::Truncate;
    let l = Ledger::open(c).expect("truncate cuts an unacknowledged torn batch");
    assert_matches_model(&l, &model);
    drop(l);
    verify_ledger_dir(&dir.join("ledger"), &mut |_, _| {}).expect("verifies after the cut");
}

/// The last records are acknowledged (in `offsets.idx`; after a clean close also under the
/// `synced` marker) but their bytes read back as zeros (a lost write or a media fault). A zero
/// header is the end of a preallocated log, so this looked like a shorter log: open and verify
/// must refuse instead of dropping acknowledged entries; truncate accepts the loss above the
/// checkpoint.
#[tokio::test]
async fn acknowledged_entries_read_back_as_zeros_are_refused() {
    for clean in [true, false] {
        let (tmp, l, model) = ledger_with(8).await;
        l.checkpoint_now().await.expect("checkpoint");
        let model2 = append_n(&l, 4).await;
        let end = logical_end(&model) + logical_end(&model2);
        let img = tempfile::tempdir().expect("tmp");
        let dir = if clean {
            drop(l);
            tmp.path().to_owned()
        } else {
            wait_prealloc(tmp.path(), end).await;
            crash_image(tmp.path(), img.path());
            img.path().to_owned()
        };
        let from = logical_end(&model) + logical_end(&model2[..2]);
        write_at(&dir, from, &vec![0u8; (end - from) as usize]);
        // Both verify and open refuse, clean or not.
        assert_corrupt(
            verify_ledger_dir(&dir.join("ledger"), &mut |_, _| {}),
            10,
            "acknowledged",
        );
        assert_corrupt(Ledger::open(cfg(&dir)), 10, "acknowledged");
        let mut c = cfg(&dir);
        c.repair = RepairMode::Truncate;
        let l = Ledger::open(c).expect("truncate accepts the loss above the checkpoint");
        assert_eq!(l.size(), 10, "clean={clean}");
    }
}

/// Scheduling policies (field 41 of `/proc/self/task/<tid>/stat`) of this process's
/// threads named `name`.
fn thread_policies(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").expect("proc").flatten() {
        let dir = t.path();
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() != name {
            continue;
        }
        // Fields after the parenthesised command name start at field 3; the policy is field 41.
        let (_, rest) = stat.rsplit_once(')').expect("stat");
        out.push(
            rest.split_whitespace()
                .nth(38)
                .expect("policy")
                .parse()
                .expect("number"),
        );
    }
    out
}

#[tokio::test]
async fn the_writer_thread_runs_under_sched_batch() {
    let (_tmp, _ledger) = ledger_of(1).await;
    // The writer sets its policy before it takes the first entry, so it has by now. Other
    // tests' writers share the (15-byte cut) name; one that is just starting may not have
    // switched yet, so the check is that ours, at least, has.
    assert!(thread_policies("kla-ledger-writ").contains(&(libc::SCHED_BATCH as u32)));
}

// Running out of file descriptors (a peer holding many connections) must not stop appends: the writer opens
// every file it needs ahead of time. The tests below run in a child process (this test binary again, with
// `FD_CHILD` naming the test's directory) whose descriptor limit is small, so it can take every free descriptor
// for real; `open` then fails with EMFILE, as it would in the server.

const FD_CHILD: &str = "KLA_LEDGER_TEST_FD_CHILD";

/// Runs the unit test `name` (a path below `ledger::log::tests`) in a child process with at most 256 file
/// descriptors and `FD_CHILD` set to `dir`, and asserts that it passed.
fn run_with_few_descriptors(name: &str, dir: &Path) {
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 256 && exec "$0" "$@""#)
        .arg(exe)
        .args(["--exact", &format!("ledger::log::tests::{name}")])
        .args(["--nocapture", "--test-threads=1"])
        .env(FD_CHILD, dir)
        .output()
        .expect("spawn the test binary");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

/// Takes every free file descriptor of the process (until `open` fails with EMFILE) and returns them.
fn take_every_descriptor() -> Vec<std::fs::File> {
    let mut held = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
        assert!(held.len() < 4096, "the descriptor limit did not apply");
    }
    let e =
        std::fs::File::create(std::env::temp_dir().join("kla-fd-probe")).expect_err("no descriptor is left");
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
    held
}

fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Appends `n` entries concurrently (so they share batches) and returns them in log order.
async fn append_concurrently(l: &Ledger, n: u64) -> Vec<Vec<u8>> {
    let start = l.size();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let l = l.clone();
        set.spawn(async move {
            let b = entry_bytes(start + i);
            (l.append(b.clone()).await.expect("append"), b)
        });
    }
    let mut got: Vec<(u64, Vec<u8>)> = set.join_all().await;
    got.sort();
    for (k, (index, _)) in got.iter().enumerate() {
        assert_eq!(*index, start + k as u64);
    }
    got.into_iter().map(|(_, b)| b).collect()
}

#[test]
fn appends_across_level_boundaries_open_no_file() {
    let Some(dir) = std::env::var_os(FD_CHILD) else {
        let tmp = tempfile::tempdir().expect("tmp");
        run_with_few_descriptors("appends_across_level_boundaries_open_no_file", tmp.path());
        // The child's log reopens whole, with the marker it advanced while it had no descriptor to spare.
        let marker = std::fs::read(tmp.path().join("ledger").join(files::SYNCED)).expect("marker");
        assert_eq!(files::marker_size(&marker), 300);
        assert_reopens_with(tmp.path(), 300);
        return;
    };
    let dir = Path::new(&dir);
    child_runtime().block_on(async {
        let l = Ledger::open(cfg(dir)).expect("open");
        let held = take_every_descriptor();
        // One entry per batch from 1 to 70 crosses the boundaries 2, 4, ..., 64 one by one.
        let mut model = append_n(&l, 70).await;
        // Then batches of many entries, crossing 128 and 256 inside one batch.
        model.extend(append_concurrently(&l, 230).await);
        assert_matches_model(&l, &model);
        assert_eq!(l.health(), LedgerHealth::Healthy);
        // The derived files and the `synced` marker become durable without a new descriptor too.
        l.inner
            .shared
            .files
            .sync_derived(l.size())
            .expect("sync derived files");
        drop(l);
        drop(held);
    });
}

#[test]
fn a_level_file_that_cannot_be_opened_ahead_refuses_only_the_batch_that_needs_it() {
    let Some(dir) = std::env::var_os(FD_CHILD) else {
        let tmp = tempfile::tempdir().expect("tmp");
        run_with_few_descriptors(
            "a_level_file_that_cannot_be_opened_ahead_refuses_only_the_batch_that_needs_it",
            tmp.path(),
        );
        assert_reopens_with(tmp.path(), 8193);
        return;
    };
    let dir = Path::new(&dir);
    child_runtime().block_on(async {
        let l = Ledger::open(cfg(dir)).expect("open");
        let mut model = append_concurrently(&l, 4000).await;
        let held = take_every_descriptor();
        // Past 4096 the writer wants the file of level 13 open (the first node of level 13 is entry 8191) and
        // cannot open it; entries up to there still go in.
        model.extend(append_concurrently(&l, 8191 - 4000).await);
        assert_eq!(l.size(), 8191);
        for _ in 0..2 {
            let e = l.append(entry_bytes(1)).await.expect_err("level 13 is not open");
            assert!(e.to_string().contains("node level 13"), "{e}");
        }
        assert_eq!(l.size(), 8191);
        match l.health() {
            LedgerHealth::Refusing { reason, .. } => {
                assert!(reason.contains("node level 13"), "{reason}");
                assert!(
                    !reason.contains(dir.to_str().expect("utf-8")),
                    "no path: {reason}"
                );
            }
            LedgerHealth::Healthy => panic!("a ledger refusing appends reports healthy"),
        }
        // Descriptors are back: the idle writer opens the level (no append needed to notice) and takes batches.
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while l.health() != LedgerHealth::Healthy {
            assert!(std::time::Instant::now() < deadline, "still {:?}", l.health());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        model.extend(append_n(&l, 2).await);
        assert_matches_model(&l, &model);
    });
}

#[tokio::test]
async fn a_torn_synced_marker_falls_back_to_the_previous_size_on_open() {
    let (tmp, l, mut model) = ledger_with(10).await;
    l.checkpoint_now().await.expect("checkpoint"); // marker 10
    model.extend(append_n(&l, 10).await);
    drop(l); // marker 20, in the other slot
    let path = tmp.path().join("ledger").join(files::SYNCED);
    let mut b = std::fs::read(&path).expect("marker");
    assert_eq!(files::marker_size(&b), 20);
    let newest = if files::marker_size(&b[..16]) == 20 { 0 } else { 16 };
    b[newest + 3] ^= 0x40; // as if the write of 20 had torn
    std::fs::write(&path, &b).expect("write");
    assert_eq!(files::marker_size(&b), 10);
    let l = Ledger::open(cfg(tmp.path())).expect("reopens from the older marker");
    assert_matches_model(&l, &model);
    assert_eq!(files::marker_size(&std::fs::read(&path).expect("marker")), 20);
}
