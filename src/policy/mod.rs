//! Signed YAML policy packs and the decision engine.
//!
//! This module owns the pack format (`pack.yaml`, `rules/*.yaml`, `*.rego`, `tests/*.yaml`),
//! Ed25519 pack signing and verification, compilation of packs into an immutable
//! [`PolicySet`], the hot-path [`PolicySet::evaluate`] (a pure function returning a
//! [`Decision`], never an error), YAML test suites, and the runtime holder [`PolicyManager`]
//! (hot reload with last-good fallback, file watching, ledger events).
//!
//! It must not touch HTTP, SQL or the ledger: it knows no hyper/axum types and writes no
//! database; the lead's API layer calls [`PolicyManager::evaluate`] and records
//! [`PolicyEvent`]s. The engine does no IO: file reading is confined to
//! [`PackFiles::read_dir`] (and key files in `signing`), and writing to `kla pack sign`/`keygen`.

mod engine;
mod manager;
mod pack;
mod signing;
mod suite;
mod types;

#[cfg(test)]
mod names_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use engine::{CompiledPack, DEFAULT_DEADLINE, MAX_DEADLINE, PolicySet};
pub use manager::{
    AuditHook, HookError, PackFloors, PackStatus, PolicyConfig, PolicyEvent, PolicyManager, PolicyStatus,
    Refusal, WatchHandle,
};
pub use pack::{
    FREE_REGO_NESTING, MAX_REGO_NESTING, PACK_FILE, PackFiles, REGO_NESTING_BUDGET, SIGNATURE_FILE,
};
pub use signing::{PackSigner, TrustedKey, VerifiedPack, sign_files, sign_pack_dir, verify_pack};
pub use suite::{CaseResult, SuiteReport, canonical_input, run_suites};
pub use types::{
    AgentRef, ApprovalSpec, DEFAULT_DECISION, Decision, EvalInput, MatchedRule, Mode, OnTimeout, Outcome,
    POLICY_ERROR, POLICY_UNAVAILABLE, PackRef,
};

/// Everything that can go wrong in the policy module. Each variant says who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The pack author's fault: the pack content is invalid (YAML, schema, glob, Rego,
    /// duplicate id). Names file, line and rule when known.
    #[error("{}", fmt_invalid(file, *line, rule.as_deref(), reason))]
    Invalid {
        /// File (path as read) at fault.
        file: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// Rule id, when the error is rule-level.
        rule: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// The signer's or operator's fault: missing/invalid signature, untrusted key, or files
    /// that differ from the signed manifest (tampering).
    #[error("pack {pack}: signature refused: {reason}")]
    Signature {
        /// Pack directory.
        pack: String,
        /// What failed (names the file for manifest mismatches).
        reason: String,
    },
    /// The operator's fault: a key file is unreadable or malformed.
    #[error("key {path}: {reason}")]
    Key {
        /// Key file path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The environment's fault: the file system refused a read or write.
    #[error("{path}: {source}")]
    Io {
        /// Path involved.
        path: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The operator's fault: the policies directory holds no pack.
    #[error("{path}: no policy pack found (expected pack.yaml here or in subdirectories)")]
    NoPacks {
        /// Directory searched.
        path: String,
    },
}

fn fmt_invalid(file: &str, line: Option<usize>, rule: Option<&str>, reason: &str) -> String {
    let mut s = file.to_string();
    if let Some(line) = line {
        s.push_str(&format!(":{line}"));
    }
    if let Some(rule) = rule {
        s.push_str(&format!(": rule '{rule}'"));
    }
    s.push_str(": ");
    s.push_str(reason);
    s
}

impl PolicyError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        PolicyError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn invalid(
        file: String,
        line: Option<usize>,
        rule: Option<String>,
        reason: impl Into<String>,
    ) -> Self {
        PolicyError::Invalid {
            file,
            line,
            rule,
            reason: reason.into(),
        }
    }
}

/// Reads, verifies (against `trusted`, or unsigned when `allow_unsigned` and the pack has no
/// signature file) and compiles one pack directory.
pub fn load_pack(
    dir: &Path,
    trusted: &[TrustedKey],
    allow_unsigned: bool,
) -> Result<CompiledPack, PolicyError> {
    let files = PackFiles::read_dir(dir)?;
    let verified = if allow_unsigned && !signing::is_signed(&files) {
        VerifiedPack::accept_unsigned(files)
    } else {
        verify_pack(files, trusted)?
    };
    CompiledPack::compile(&verified)
}
