//! Evidence bundles: a self-contained JSON file proving chosen entries against a
//! signed checkpoint, verifiable offline with only the ledger's verifier key.
//! Building reads the ledger; verifying is pure.

use serde::{Deserialize, Serialize};

use super::LedgerError;
use super::entry::Entry;
use super::log::Ledger;
use super::note::{NoteVerifier, SignedCheckpoint};
use super::tree::{self, Hash};

/// The bundle format tag.
pub const BUNDLE_FORMAT: &str = "kla-evidence/v1";

/// A self-contained evidence bundle (`kla-evidence/v1`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvidenceBundle {
    /// Always [`BUNDLE_FORMAT`].
    pub format: String,
    /// Checkpoint origin.
    pub origin: String,
    /// Hex key id of the signing key.
    pub key_id: String,
    /// The signed checkpoint note text.
    pub checkpoint: String,
    /// Tree size of the checkpoint.
    pub tree_size: u64,
    /// `sha256:<hex>` root of the checkpoint.
    pub root_hash: String,
    /// The proven entries.
    pub entries: Vec<EvidenceEntry>,
}

/// One proven entry of an [`EvidenceBundle`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvidenceEntry {
    /// The entry's lineage id.
    pub lineage_id: String,
    /// The entry's index in the log.
    pub ledger_index: u64,
    /// The exact canonical entry bytes, as a string.
    pub entry: String,
    /// `sha256:<hex>` leaf hash.
    pub leaf_hash: String,
    /// `sha256:<hex>` inclusion proof hashes, leaf side first.
    pub inclusion_proof: Vec<String>,
}

/// What [`verify_bundle`] checked, for printing.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Checkpoint origin.
    pub origin: String,
    /// Checkpoint tree size.
    pub tree_size: u64,
    /// Checkpoint root, `sha256:<hex>`.
    pub root_hash: String,
    /// One line per check performed, in order.
    pub checks: Vec<String>,
}

fn fmt_hash(h: &Hash) -> String {
    format!("sha256:{}", hex::encode(h))
}

/// A hash exactly as kla writes it: `sha256:` and 64 lowercase hex digits. Any other spelling of the same bytes is
/// refused, so a bundle that verifies says what every other reader of it (a script comparing strings) reads.
fn parse_hash(s: &str) -> Option<Hash> {
    let hx = s.strip_prefix("sha256:")?;
    if hx.len() != 64 || !hx.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(hx).ok()?.try_into().ok()
}

impl Ledger {
    /// Builds a bundle proving `indices` against the latest checkpoint (signing a new
    /// checkpoint first if the latest one does not cover them all).
    pub async fn build_evidence(&self, indices: &[u64]) -> Result<EvidenceBundle, LedgerError> {
        let size = self.size();
        if let Some(&bad) = indices.iter().find(|&&i| i >= size) {
            return Err(LedgerError::NotFound(format!("no entry {bad} (log size {size})")));
        }
        let max = indices.iter().copied().max();
        let cp = match self.latest_checkpoint() {
            Some(cp) if max.is_none_or(|m| m < cp.size) => cp,
            _ => self.checkpoint_now().await?,
        };
        let mut entries = Vec::with_capacity(indices.len());
        for &i in indices {
            let bytes = self.entry(i)?;
            let decoded = Entry::decode(&bytes)?;
            let proof = self.inclusion_proof(i, cp.size)?;
            let entry = String::from_utf8(bytes.clone())
                .map_err(|_| LedgerError::InvalidEntry(format!("entry {i} is not UTF-8")))?;
            entries.push(EvidenceEntry {
                lineage_id: decoded.lineage_id,
                ledger_index: i,
                entry,
                leaf_hash: fmt_hash(&tree::leaf_hash(&bytes)),
                inclusion_proof: proof.iter().map(fmt_hash).collect(),
            });
        }
        Ok(EvidenceBundle {
            format: BUNDLE_FORMAT.to_owned(),
            origin: cp.origin.clone(),
            key_id: self.key_id(),
            checkpoint: cp.text().to_owned(),
            tree_size: cp.size,
            root_hash: fmt_hash(&cp.root),
            entries,
        })
    }
}

fn fail(reason: impl Into<String>) -> LedgerError {
    LedgerError::BadBundle {
        ledger_index: None,
        lineage_id: None,
        reason: reason.into(),
    }
}

/// Verifies a bundle offline against the verifier key string `vkey`; the error names
/// the first failing entry (index and lineage id).
pub fn verify_bundle(bundle_bytes: &[u8], vkey: &str) -> Result<VerifyReport, LedgerError> {
    let mut checks = Vec::new();
    // A repeated key is refused at any depth, so no other reader of the same file can see another bundle.
    let b: EvidenceBundle = crate::json::from_slice_unique(bundle_bytes)
        .map_err(|e| fail(format!("not a kla evidence bundle: {e}")))?;
    if b.format != BUNDLE_FORMAT {
        return Err(fail(format!("unsupported format {:?}", b.format)));
    }
    checks.push(format!("format is {BUNDLE_FORMAT}"));
    let verifier = NoteVerifier::parse(vkey).map_err(|e| fail(format!("verifier key: {e}")))?;
    checks.push(format!(
        "verifier key parses: name {}, key id {}",
        verifier.name(),
        hex::encode(verifier.key_id())
    ));
    if b.key_id != hex::encode(verifier.key_id()) {
        return Err(fail(format!(
            "bundle key id {} is not the verifier key's {}",
            b.key_id,
            hex::encode(verifier.key_id())
        )));
    }
    let cp = SignedCheckpoint::parse_verified(&b.checkpoint, &verifier)
        .map_err(|e| fail(format!("checkpoint: {e}")))?;
    checks.push("checkpoint signature verifies with the verifier key".to_owned());
    if cp.origin != b.origin || cp.origin != verifier.name() {
        return Err(fail(format!(
            "origin mismatch: checkpoint {:?}, bundle {:?}, key {:?}",
            cp.origin,
            b.origin,
            verifier.name()
        )));
    }
    checks.push(format!("origin is {}", cp.origin));
    if cp.size != b.tree_size || parse_hash(&b.root_hash) != Some(cp.root) {
        return Err(fail("treeSize/rootHash do not match the signed checkpoint"));
    }
    checks.push(format!(
        "tree size {} and root {} match the checkpoint",
        cp.size,
        fmt_hash(&cp.root)
    ));
    for e in &b.entries {
        let at = |reason: String| LedgerError::BadBundle {
            ledger_index: Some(e.ledger_index),
            lineage_id: Some(e.lineage_id.clone()),
            reason,
        };
        let leaf = tree::leaf_hash(e.entry.as_bytes());
        if parse_hash(&e.leaf_hash) != Some(leaf) {
            return Err(at("leaf hash is not SHA-256(0x00 || entry)".to_owned()));
        }
        let proof = e
            .inclusion_proof
            .iter()
            .map(|h| parse_hash(h))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| at("inclusion proof holds a malformed hash".to_owned()))?;
        tree::verify_inclusion(e.ledger_index, cp.size, &leaf, &proof, &cp.root)
            .map_err(|err| at(format!("inclusion proof: {err}")))?;
        let decoded = Entry::decode(e.entry.as_bytes()).map_err(|err| at(format!("entry: {err}")))?;
        if decoded.lineage_id != e.lineage_id {
            return Err(at(format!(
                "entry's lineageId is {}, bundle says {}",
                decoded.lineage_id, e.lineage_id
            )));
        }
        checks.push(format!(
            "entry {} ({}, {}): leaf hash, inclusion proof against the checkpoint, lineage id",
            e.ledger_index, e.lineage_id, decoded.kind
        ));
    }
    Ok(VerifyReport {
        origin: cp.origin,
        tree_size: cp.size,
        root_hash: fmt_hash(&cp.root),
        checks,
    })
}
