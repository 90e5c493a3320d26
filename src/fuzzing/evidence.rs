//! Evidence bundles.

use crate::ledger::evidence::{BUNDLE_FORMAT, EvidenceEntry};
use crate::ledger::note::NoteSigner;
use crate::ledger::tree::{self, MemTree, NodeSource};
use crate::ledger::{Entry, EvidenceBundle, LedgerError};

use super::ledger::ORIGIN;
use super::{Verdict, key_from};

/// The signer of the evidence target's checkpoints (fixed, so seeds stay valid).
fn evidence_signer() -> NoteSigner {
    NoteSigner::new(ORIGIN, key_from("kla fuzzing: ledger checkpoint key"))
        .unwrap_or_else(|e| panic!("no note signer: {e}"))
}

/// The verifier key the evidence target checks bundles with (what `kla verify --key` takes).
pub fn evidence_vkey() -> String {
    evidence_signer().verifier().to_vkey()
}

fn parse_hash(s: &str) -> Option<tree::Hash> {
    hex::decode(s.strip_prefix("sha256:")?).ok()?.try_into().ok()
}

fn fmt_hash(h: &tree::Hash) -> String {
    format!("sha256:{}", hex::encode(h))
}

/// The length of the RFC 6962 audit path of leaf `m` in a tree of `n` leaves (section 2.1.1, written from the
/// definition): a strict verifier accepts no other length.
fn audit_path_len(m: u64, n: u64) -> usize {
    if n <= 1 {
        return 0;
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m < k {
        1 + audit_path_len(m, k)
    } else {
        1 + audit_path_len(m - k, n - k)
    }
}

/// An evidence bundle as `kla verify BUNDLE --key` reads it, checked with the target's key; and the same bundle with
/// its checkpoint re-signed for its own tree size and root, so the fuzzer reaches the inclusion proofs. A refusal is
/// a `BadBundle`; an accepted bundle's proofs have exactly the audit path's length, its entries decode, and changing
/// an entry or a proof hash makes it refused.
pub fn evidence(data: &[u8]) -> Verdict {
    let vkey = evidence_vkey();
    let first = check_bundle(data, &vkey);
    if let Ok(mut b) = serde_json::from_slice::<EvidenceBundle>(data)
        && let Some(root) = parse_hash(&b.root_hash)
    {
        let signer = evidence_signer();
        b.checkpoint = signer.checkpoint(ORIGIN, b.tree_size, root).text().to_owned();
        b.origin = ORIGIN.into();
        b.key_id = hex::encode(signer.verifier().key_id());
        if let Ok(bytes) = serde_json::to_vec(&b) {
            check_bundle(&bytes, &vkey);
        }
    }
    first
}

fn check_bundle(bytes: &[u8], vkey: &str) -> Verdict {
    match crate::ledger::verify_bundle(bytes, vkey) {
        Ok(report) => {
            let b: EvidenceBundle = crate::json::from_slice_unique(bytes)
                .unwrap_or_else(|e| panic!("an accepted bundle does not parse: {e}"));
            assert_eq!(b.format, BUNDLE_FORMAT);
            assert_eq!((report.tree_size, &report.root_hash), (b.tree_size, &b.root_hash));
            for e in &b.entries {
                assert_eq!(
                    e.inclusion_proof.len(),
                    audit_path_len(e.ledger_index, b.tree_size),
                    "an inclusion proof of the wrong length was accepted"
                );
                let entry = Entry::decode(e.entry.as_bytes()).unwrap_or_else(|err| {
                    panic!("an accepted bundle holds an entry that does not decode: {err}")
                });
                assert_eq!(entry.lineage_id, e.lineage_id);
            }
            let refused = |t: &EvidenceBundle| {
                serde_json::to_vec(t)
                    .map(|b| crate::ledger::verify_bundle(&b, vkey).is_err())
                    .unwrap_or(true)
            };
            if let Some(e) = b.entries.first() {
                let mut t = b.clone();
                t.entries[0].entry.push(' ');
                assert!(refused(&t), "a changed entry still verifies");
                if let Some(h) = e.inclusion_proof.first().and_then(|h| parse_hash(h)) {
                    let mut flipped = h;
                    flipped[0] ^= 1;
                    let mut t = b.clone();
                    t.entries[0].inclusion_proof[0] = fmt_hash(&flipped);
                    assert!(refused(&t), "a changed proof hash still verifies");
                }
            }
            Verdict::Accepted
        }
        Err(LedgerError::BadBundle { .. }) => Verdict::Refused,
        Err(e) => panic!("a bundle was refused as something else than a bad bundle: {e}"),
    }
}

/// A bundle of `entries` proving those at `prove`, signed with the evidence target's key.
pub fn bundle_of(entries: &[Vec<u8>], prove: &[u64]) -> EvidenceBundle {
    let mut t = MemTree::new();
    for e in entries {
        t.push(e);
    }
    let size = t.size();
    let signer = evidence_signer();
    let cp = signer.checkpoint(ORIGIN, size, t.root());
    let proven = prove
        .iter()
        .filter_map(|&i| {
            let bytes = entries.get(usize::try_from(i).ok()?)?;
            let e = Entry::decode(bytes).ok()?;
            let proof = tree::inclusion_proof(&t, i, size).ok()?;
            Some(EvidenceEntry {
                lineage_id: e.lineage_id,
                ledger_index: i,
                entry: String::from_utf8(bytes.clone()).ok()?,
                leaf_hash: fmt_hash(&tree::leaf_hash(bytes)),
                inclusion_proof: proof.iter().map(fmt_hash).collect(),
            })
        })
        .collect();
    EvidenceBundle {
        format: BUNDLE_FORMAT.into(),
        origin: ORIGIN.into(),
        key_id: hex::encode(signer.verifier().key_id()),
        checkpoint: cp.text().to_owned(),
        tree_size: size,
        root_hash: fmt_hash(&t.root()),
        entries: proven,
    }
}
