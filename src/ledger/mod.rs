//! The tamper-evident ledger: an append-only, RFC 6962 Merkle-tree log of canonical
//! (RFC 8785 JCS) entries, made durable with group-committed fsyncs, anchored by
//! Ed25519-signed C2SP checkpoints, and provable offline with evidence bundles.
//!
//! It owns the ledger directory (`<data-dir>/ledger/`): the entries file, the derived
//! offset and node-level files, the ledger signing key and the latest checkpoint.
//! The tree code ([`tree`]) never does IO; the entry, note and evidence code is pure as
//! well; only [`log`] touches the file system. This module never touches SQL or HTTP:
//! the API layer maps [`LedgerError`] to status codes and serves what [`Ledger`] returns.
//! The on-disk format, write path and recovery rules are in `docs/ledger-format.md`.

pub mod entry;
pub mod evidence;
mod files;
pub(crate) mod jcs;
pub mod log;
pub mod note;
pub mod tree;

pub use entry::{Entry, new_lineage_id};
pub use evidence::{EvidenceBundle, VerifyReport, verify_bundle};
pub use log::{
    DEFAULT_PREALLOCATE, Ledger, LedgerConfig, LedgerHealth, RepairMode, VerifySummary, verifier_key_for_dir,
    verify_ledger_dir,
};
pub use note::SignedCheckpoint;
pub use tree::Hash;

/// Everything that can go wrong in the ledger; each variant says who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The caller asked for an index or tree size outside the log (a client error).
    #[error("invalid range: {0}")]
    InvalidRange(String),
    /// The caller asked for something that does not exist (a client error).
    #[error("not found: {0}")]
    NotFound(String),
    /// The caller supplied an entry that is not acceptable (a client error).
    #[error("invalid entry: {0}")]
    InvalidEntry(String),
    /// A presented proof, note or signature does not verify (the presenter's fault).
    #[error("verification failed: {0}")]
    InvalidProof(String),
    /// An evidence bundle failed verification; names the entry when one is at fault.
    #[error("{}: {reason}", bundle_location(*.ledger_index, .lineage_id.as_deref()))]
    BadBundle {
        /// Ledger index of the failing entry, if the failure is about one entry.
        ledger_index: Option<u64>,
        /// Lineage id of the failing entry, if known.
        lineage_id: Option<String>,
        /// What did not check out.
        reason: String,
    },
    /// The ledger files on disk are damaged (the storage's or an operator's fault).
    #[error("ledger corrupt at index {index}: {detail}")]
    Corrupt {
        /// First index found damaged.
        index: u64,
        /// What is wrong.
        detail: String,
    },
    /// The ledger configuration does not match what is on disk (the operator's fault).
    #[error("ledger configuration: {0}")]
    Config(String),
    /// The ledger key file is missing, unreadable or malformed (the operator's fault).
    #[error("ledger key: {0}")]
    Key(String),
    /// Another process holds the ledger directory.
    #[error("ledger directory {0} is locked by another process")]
    Locked(String),
    /// The ledger has shut down (the writer is gone); retry after restart.
    #[error("ledger is closed")]
    Closed,
    /// The operating system refused an IO operation (the environment's fault).
    #[error("ledger IO ({context}): {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

fn bundle_location(index: Option<u64>, lineage: Option<&str>) -> String {
    match (index, lineage) {
        (Some(i), Some(l)) => format!("bundle entry {i} ({l})"),
        (Some(i), None) => format!("bundle entry {i}"),
        (None, Some(l)) => format!("bundle entry {l}"),
        (None, None) => "bundle".to_owned(),
    }
}

impl LedgerError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LedgerError {
        let context = context.into();
        move |source| LedgerError::Io { context, source }
    }
}

impl crate::error::Classify for LedgerError {
    fn class(&self) -> crate::error::Class {
        use crate::error::Class;
        match self {
            LedgerError::InvalidRange(_) | LedgerError::InvalidEntry(_) => Class::Invalid,
            LedgerError::NotFound(_) => Class::NotFound,
            LedgerError::InvalidProof(_) | LedgerError::BadBundle { .. } => Class::Invalid,
            LedgerError::Closed | LedgerError::Io { .. } => Class::Unavailable,
            LedgerError::Corrupt { .. }
            | LedgerError::Config(_)
            | LedgerError::Key(_)
            | LedgerError::Locked(_) => Class::Internal,
        }
    }
}
