//! Fuzz targets: one function per parser of bytes that reach kla from outside, each calling the real entry point and
//! checking what kla promises about it: no panic; an accepted input re-validates (or round-trips) to the same
//! canonical value; a refusal is the typed error its caller renders. A broken promise panics, which is what a fuzzer
//! reports. `fuzz/` drives these functions with cargo-fuzz (nightly) and `tests/it/fuzz.rs` with proptest, bounded,
//! on stable; `docs/security.md` records what they ran and found.
//!
//! Not an API (hidden from the docs). Pure apart from [`ledger_file`], which works in a private temporary directory,
//! and [`seed_corpus`], which reads the repository's own inputs. Owns no production behaviour: it only calls it.

mod config_yaml;
mod evidence;
mod json;
mod ledger;
mod mcp;
mod names;
mod otlp;
mod pack;
mod redactor;
mod request_body;
mod seeds;
mod token;

pub use config_yaml::config_yaml;
pub use evidence::{bundle_of, evidence, evidence_vkey};
pub use json::json;
pub use ledger::{frame_entries, ledger_entry, ledger_file};
pub use mcp::mcp;
pub use names::names;
pub use otlp::otlp;
pub use pack::{FILE_MARK, pack, pack_input, when_expr};
pub use redactor::redactor;
pub use request_body::request_body;
pub use seeds::{Seed, seed_corpus};
pub use token::{INTERNALS, TOKEN_IDP, sign_token, token, token_idp_key, token_local_key};

use ed25519_dalek::SigningKey;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn key_from(label: &str) -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(label.as_bytes()).into())
}

/// What one input came to (the stable driver checks seeds against it; the fuzzer ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Parsed and accepted by kla.
    Accepted,
    /// Refused with the typed error its caller renders.
    Refused,
}

/// One fuzz target: its name (the cargo-fuzz binary and corpus directory) and its function.
pub type Target = (&'static str, fn(&[u8]) -> Verdict);

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("json", json),
    ("request_body", request_body),
    ("config_yaml", config_yaml),
    ("pack", pack),
    ("when_expr", when_expr),
    ("token", token),
    ("ledger_entry", ledger_entry),
    ("ledger_file", ledger_file),
    ("evidence", evidence),
    ("names", names),
    ("otlp", otlp),
    ("redactor", redactor),
    ("mcp", mcp),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8]) -> Verdict> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn verdict(accepted: bool) -> Verdict {
    if accepted {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// Whether two JSON values are equal, numbers compared as kla stores them: integers exactly, other numbers by their
/// RFC 8785 (shortest round-trip) form, so a value parsed back from its own canonical text compares equal.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn canonical_json(v: &Value) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(v).unwrap_or_else(|e| panic!("a JSON value has no canonical form: {e}"))
}
