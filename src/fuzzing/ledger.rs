//! Ledger entries and files (the `ledger_entry` and `ledger_file` targets).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::ledger::tree::{self, MemTree, NodeSource};
use crate::ledger::{Entry, Ledger, LedgerConfig, LedgerError, RepairMode};

use super::{Verdict, key_from, verdict};

/// Stored ledger entry bytes (`Entry::decode`): accepted exactly when they are the RFC 8785 form of an entry (checked
/// against the reference encoder); and for any JSON value as a body, kla's direct encoder writes what the reference
/// writes, which decodes again.
pub fn ledger_entry(data: &[u8]) -> Verdict {
    let v = match Entry::decode(data) {
        Ok(e) => {
            let reference = serde_json_canonicalizer::to_vec(&e)
                .unwrap_or_else(|err| panic!("a decoded entry has no canonical form: {err}"));
            assert_eq!(reference, data, "decode accepted bytes that are not RFC 8785");
            assert!(
                crate::json::check_unique_keys(data).is_ok(),
                "decode accepted an entry that repeats a key"
            );
            Verdict::Accepted
        }
        Err(LedgerError::InvalidEntry(_)) => Verdict::Refused,
        Err(e) => panic!("an entry was refused as something else than invalid: {e}"),
    };
    if let Ok(body) = serde_json::from_slice::<Value>(data) {
        let e = Entry {
            v: crate::ledger::entry::ENTRY_VERSION,
            kind: "decision".into(),
            lineage_id: "lr_000000000000000000000001".into(),
            tenant: "acme".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            body,
        };
        match e.encode() {
            Ok(bytes) => {
                let reference = serde_json_canonicalizer::to_vec(&e)
                    .unwrap_or_else(|err| panic!("kla encoded what the reference cannot: {err}"));
                assert_eq!(bytes, reference, "the direct entry encoder differs from RFC 8785");
                Entry::decode(&bytes).unwrap_or_else(|err| panic!("an encoded entry does not decode: {err}"));
            }
            Err(LedgerError::InvalidEntry(_)) => {}
            Err(err) => panic!("encoding an entry failed with {err}"),
        }
    }
    v
}

/// A private directory under `/dev/shm` (or the temporary directory), removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "kla-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ledger key of the ledger-file target (fixed, as a PKCS#8 PEM).
fn ledger_key_pem() -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    key_from("kla fuzzing: ledger key")
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|p| p.to_string())
        .unwrap_or_else(|e| panic!("cannot encode the ledger key: {e}"))
}

pub(super) const ORIGIN: &str = "kla.local/ledger";

/// A ledger directory holding `entries` as its `entries.log` (and its key and origin, so nothing is generated).
fn ledger_dir(entries: &[u8]) -> ScratchDir {
    use std::os::unix::fs::OpenOptionsExt;
    let d = ScratchDir::new();
    let write = |name: &str, bytes: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(d.0.join(name))
            .and_then(|mut f| f.write_all(bytes))
            .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    };
    write("origin", format!("{ORIGIN}\n").as_bytes());
    write("ledger.key", ledger_key_pem().as_bytes());
    write(crate::ledger::log::ENTRIES_FILE, entries);
    d
}

/// How an entries file ends, by the framing rules of `docs/ledger-format.md` (written independently of kla's two
/// readers, `kla ledger verify` and recovery on open).
#[derive(Debug, PartialEq)]
enum Tail {
    /// At the end of the file, or only zeros follow (the preallocated region).
    Clean,
    /// An incomplete final record: never acknowledged, cut on open.
    Torn,
    /// A full-length final record with a bad checksum followed only by zeros: a torn write into the zero-filled
    /// region, cut on open.
    TornInZeros,
    /// Anything else: damage.
    Damage,
}

struct Framing {
    intact: u64,
    root: tree::Hash,
    tail: Tail,
}

fn framing(data: &[u8]) -> Framing {
    const HEADER: usize = 8;
    const MAX_ENTRY: usize = 16 << 20;
    let zeros = |from: usize| data[from..].iter().all(|&b| b == 0);
    let mut tree = MemTree::new();
    let mut pos = 0usize;
    let tail = loop {
        if pos == data.len() {
            break Tail::Clean;
        }
        if data.len() - pos < HEADER {
            break if zeros(pos) { Tail::Clean } else { Tail::Torn };
        }
        let h = &data[pos..pos + HEADER];
        if h.iter().all(|&b| b == 0) {
            break if zeros(pos) { Tail::Clean } else { Tail::Damage };
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 || len > MAX_ENTRY {
            break Tail::Damage;
        }
        let next = pos + HEADER + len;
        if next > data.len() {
            break Tail::Torn;
        }
        let body = &data[pos + HEADER..next];
        if crc32fast::hash(body) != sum {
            break if next < data.len() && zeros(next) {
                Tail::TornInZeros
            } else {
                Tail::Damage
            };
        }
        tree.push(body);
        pos = next;
    };
    Framing {
        intact: tree.size(),
        root: tree.root(),
        tail,
    }
}

/// `kla ledger verify` on the directory: its entry count and root, or the error.
fn verify_dir(dir: &Path) -> Result<(u64, tree::Hash), LedgerError> {
    crate::ledger::verify_ledger_dir(dir, &mut |_, _| {}).map(|s| (s.entries, s.root))
}

/// Opens the ledger in `dir` with `repair` (recovery on open) and closes it again; returns its size.
fn open_dir(dir: &Path, repair: RepairMode) -> Result<u64, LedgerError> {
    let mut cfg = LedgerConfig::new(dir);
    cfg.repair = repair;
    Ledger::open(cfg).map(|l| l.size())
}

/// An `entries.log` as `kla ledger verify` and startup read it. Both readers agree with an independent reading of
/// the framing and with each other: verify accepts exactly a clean, torn or torn-into-zeros end and then counts the
/// intact records and their root; opening refuses exactly what verify refuses; repair mode `truncate` always opens,
/// keeping exactly the intact records; and every log an open leaves behind verifies.
pub fn ledger_file(data: &[u8]) -> Verdict {
    let expect = framing(data);
    let readable = expect.tail != Tail::Damage;
    let dir = ledger_dir(data);
    let verified = verify_dir(&dir.0);
    match &verified {
        Ok((n, root)) => {
            assert!(readable, "verify accepted a damaged log ({:?})", expect.tail);
            assert_eq!(
                (*n, *root),
                (expect.intact, expect.root),
                "verify counted other records"
            );
        }
        Err(LedgerError::Corrupt { .. }) => assert!(!readable, "verify refused a readable log"),
        Err(e) => panic!("verify failed with {e}"),
    }
    match open_dir(&dir.0, RepairMode::Refuse) {
        Ok(size) => {
            assert!(readable, "open accepted a damaged log ({:?})", expect.tail);
            assert_eq!(size, expect.intact, "open kept other records");
            let after = verify_dir(&dir.0).unwrap_or_else(|e| panic!("an opened log does not verify: {e}"));
            assert_eq!(
                after,
                (expect.intact, expect.root),
                "the opened log verifies differently"
            );
        }
        Err(LedgerError::Corrupt { .. }) => assert!(!readable, "open refused a readable log"),
        Err(e) => panic!("open failed with {e}"),
    }
    let dir = ledger_dir(data);
    let size = open_dir(&dir.0, RepairMode::Truncate)
        .unwrap_or_else(|e| panic!("repair mode truncate could not open a log without a checkpoint: {e}"));
    assert_eq!(
        size, expect.intact,
        "truncate kept other records than the intact ones"
    );
    let after = verify_dir(&dir.0).unwrap_or_else(|e| panic!("a truncated log does not verify: {e}"));
    assert_eq!(
        after,
        (expect.intact, expect.root),
        "the truncated log verifies differently"
    );
    verdict(verified.is_ok())
}

/// A ledger file's bytes: each entry framed as `entries.log` stores it (length, CRC-32, bytes).
pub fn frame_entries(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(e).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}
