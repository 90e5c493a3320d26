//! Redaction of what kla records: every value that reaches the ledger (decision contexts and tool descriptions,
//! span attributes and tool-call arguments) passes through a [`Redactor`] first, because a ledger cannot forget.
//!
//! - `detectors`: the built-in detectors (PII and secrets) with their validation (Luhn, SSN rules, IBAN mod 97,
//!   decodable JWT headers, vendor key formats);
//! - `rules`: a policy pack's `redaction:` section and how the sections of the active packs combine;
//! - `fold`: the normalised view the built-in detectors read (compatibility digits and `@`, Unicode spaces and
//!   dashes, invisible characters removed) and the way back to the original's byte ranges;
//! - `engine`: the scanner (a literal and digit-run prefilter before any pattern), key rules, JSON in strings.
//!
//! [`Redactor`] is pure: no IO, and borrowed output (no allocation) when nothing is found. [`Redaction`], the
//! handle `app` builds once, is the edge: it reads the active packs' rules through a [`RuleSource`] (the policy
//! manager implements it, so `policy` depends on `redact` and never the other way) and keeps each
//! tenant's hashing key in the data dir (`keys/redaction/<tenant>.key`, created 0600 on first use). This module
//! must not touch HTTP, SQL or the ledger; callers hand in every string with the key it sits under (`""` when it
//! has none) and collect what fired in a [`Report`].

mod detectors;
mod engine;
mod fold;
mod rules;

pub use detectors::{Builtin, iban_checksum, luhn, pattern_source, ssn_digits};
pub use engine::HmacKey;
pub use rules::{
    Action, DEFAULT_KEY_RULES, MAX_CUSTOM, MAX_KEY_RULES, MAX_PATTERN_LEN, PackRules, RedactionDoc,
};

use crate::error::{Class, Classify};
use arc_swap::ArcSwapOption;
use engine::Engine;
use parking_lot::RwLock;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

/// What can go wrong in redaction.
#[derive(Debug, thiserror::Error)]
pub enum RedactError {
    /// The pack author's fault: the `redaction:` section is invalid (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The environment's fault: a tenant's hashing key could not be read or created.
    #[error("redaction key {path}: {source}")]
    Key {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for RedactError {
    fn class(&self) -> Class {
        match self {
            RedactError::Invalid(_) => Class::Invalid,
            RedactError::Key { .. } => Class::Internal,
        }
    }
}

/// The active packs' `redaction:` sections, in pack order: one immutable set (the policy set that holds them).
pub trait ActiveRules: Send + Sync {
    /// Each active pack's rules (`None`: the pack has no `redaction:` section, so it adds nothing).
    fn pack_rules(&self) -> Vec<Option<&PackRules>>;
}

/// Where the active rules come from (the policy manager, handed in by `app`).
pub trait RuleSource: Send + Sync {
    /// The set active now; the same `Arc` as long as it has not changed, so the merged engine is cached by it.
    fn active_rules(&self) -> Arc<dyn ActiveRules>;
}

/// Where redactors come from: built once by `app` and shared by every recording path (the decision pipeline, the
/// OTLP receivers). Owns the per-tenant hashing keys and follows the active packs' `redaction:` rules.
pub struct Redaction {
    policy: Option<Arc<dyn RuleSource>>,
    /// `<data-dir>/keys/redaction`; `None`: no keys, so `hash` masks.
    keys_dir: Option<PathBuf>,
    /// The engine of the policy set it was built for (holding the set, so its address is not reused).
    cached: ArcSwapOption<(Arc<dyn ActiveRules>, Arc<Engine>)>,
    tenant_keys: RwLock<HashMap<String, Arc<HmacKey>>>,
}

impl std::fmt::Debug for Redaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redaction")
            .field("keys_dir", &self.keys_dir)
            .finish_non_exhaustive()
    }
}

impl Default for Redaction {
    fn default() -> Self {
        Redaction::builtin()
    }
}

/// The engine of the defaults (no pack), built once.
static DEFAULTS: LazyLock<Arc<Engine>> = LazyLock::new(|| Arc::new(rules::merge(&[])));

impl Redaction {
    /// Redaction under the rules of `policy`'s active packs, with tenant keys under `data_dir/keys/redaction`.
    pub fn new(policy: Arc<dyn RuleSource>, data_dir: &Path) -> Redaction {
        Redaction {
            policy: Some(policy),
            keys_dir: Some(data_dir.join("keys").join("redaction")),
            cached: ArcSwapOption::empty(),
            tenant_keys: RwLock::new(HashMap::new()),
        }
    }

    /// The default rules without packs or keys (`hash` masks): for tools and tests.
    pub fn builtin() -> Redaction {
        Redaction {
            policy: None,
            keys_dir: None,
            cached: ArcSwapOption::empty(),
            tenant_keys: RwLock::new(HashMap::new()),
        }
    }

    /// The redactor for what `tenant` records, under the rules active now.
    pub fn redactor(&self, tenant: &str) -> Redactor {
        let engine = self.engine();
        let key = if engine.hashes() { self.key(tenant) } else { None };
        Redactor { engine, key }
    }

    fn engine(&self) -> Arc<Engine> {
        let Some(policy) = &self.policy else {
            return DEFAULTS.clone();
        };
        let set = policy.active_rules();
        // Compared by address only (the data pointer; a vtable pointer may differ between codegen units).
        if let Some(c) = &*self.cached.load()
            && std::ptr::eq(Arc::as_ptr(&c.0).cast::<()>(), Arc::as_ptr(&set).cast::<()>())
        {
            return c.1.clone();
        }
        let engine = Arc::new(rules::merge(&set.pack_rules()));
        self.cached.store(Some(Arc::new((set, engine.clone()))));
        engine
    }

    /// The tenant's hashing key, read or created on first use; `None` (hash masks) when that fails.
    fn key(&self, tenant: &str) -> Option<Arc<HmacKey>> {
        if let Some(k) = self.tenant_keys.read().get(tenant) {
            return Some(k.clone());
        }
        let dir = self.keys_dir.as_ref()?;
        let mut keys = self.tenant_keys.write();
        if let Some(k) = keys.get(tenant) {
            return Some(k.clone());
        }
        match load_or_create_key(&dir.join(key_file_name(tenant))) {
            Ok(k) => {
                let k = Arc::new(k);
                keys.insert(tenant.to_string(), k.clone());
                Some(k)
            }
            Err(e) => {
                tracing::error!(error = %e, tenant, "cannot read the tenant's redaction key: hashed values are masked");
                None
            }
        }
    }
}

/// A tenant's key file name: the tenant itself when it is a plain name, else its hex form (never a path).
fn key_file_name(tenant: &str) -> String {
    let plain = !tenant.is_empty()
        && !tenant.starts_with('.')
        && tenant.len() <= 128
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        format!("{tenant}.key")
    } else {
        format!("hex-{}.key", hex::encode(tenant))
    }
}

/// Reads a key file (its trimmed text is the key), or creates one holding 32 random bytes in hex, readable by its
/// owner only, written to a temporary file and renamed so a crash leaves no half key.
fn load_or_create_key(path: &Path) -> Result<HmacKey, RedactError> {
    let err = |source| RedactError::Key {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(HmacKey::new(text.trim())),
        Ok(_) => return Err(err(std::io::Error::other("the key file is empty"))),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text = hex::encode(rand::random::<[u8; 32]>());
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(HmacKey::new(&text))
}

/// Redacts values before they are recorded. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Redactor {
    engine: Arc<Engine>,
    key: Option<Arc<HmacKey>>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::builtin()
    }
}

/// What one redaction pass found: how many values each detector (or key rule) replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Detector name (e.g. `email`, `key:*password*`) to the number of replacements.
    pub counts: BTreeMap<String, u64>,
}

impl Report {
    /// Whether nothing was redacted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Adds `other`'s counts to this report.
    pub fn merge(&mut self, other: &Report) {
        for (k, n) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += n;
        }
    }

    fn add(&mut self, name: &str) {
        match self.counts.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(name.to_string(), 1);
            }
        }
    }

    fn add_key(&mut self, glob: &str) {
        self.add(&format!("key:{glob}"));
    }

    /// The report as a JSON object (detector to count), as decision entries record it.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.counts
                .iter()
                .map(|(k, n)| (k.clone(), Value::from(*n)))
                .collect(),
        )
    }
}

impl Redactor {
    /// A redactor with no detectors: every value is recorded as given.
    pub fn none() -> Redactor {
        Redactor {
            engine: Arc::new(Engine::off()),
            key: None,
        }
    }

    /// The default detectors and key rules (no pack), without a hashing key.
    pub fn builtin() -> Redactor {
        Redactor {
            engine: DEFAULTS.clone(),
            key: None,
        }
    }

    /// A redactor for one pack's rules (tools and tests), hashing with `key` when given.
    pub fn for_rules(rules: Option<&PackRules>, key: Option<HmacKey>) -> Redactor {
        Redactor {
            engine: Arc::new(rules::merge(&[rules])),
            key: key.map(Arc::new),
        }
    }

    /// `value` with every detected secret or personal datum replaced; borrowed when nothing was found.
    pub fn value<'a>(&self, value: &'a Value) -> Cow<'a, Value> {
        self.value_report(value, &mut Report::default())
    }

    /// As [`Redactor::value`], counting what fired into `report`.
    pub fn value_report<'a>(&self, value: &'a Value, report: &mut Report) -> Cow<'a, Value> {
        self.engine.value("", value, self.key.as_deref(), report, 0)
    }

    /// One string found under `key` (an attribute key, a JSON object key; `""` when there is none), with every
    /// detected datum replaced; a string holding a JSON document is redacted inside and re-serialized. Borrowed
    /// when nothing was found.
    pub fn text<'a>(&self, key: &str, s: &'a str, report: &mut Report) -> Cow<'a, str> {
        self.engine.text(key, s, self.key.as_deref(), report, 0)
    }
}
