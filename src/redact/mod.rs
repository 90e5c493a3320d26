//! Redaction of what kla records: every value that reaches the ledger (decision contexts and tool descriptions,
//! span attributes and tool-call arguments) passes through a [`Redactor`] first, because a ledger cannot forget.
//! Pure: no IO, no allocation when nothing is redacted.
//!
//! Today's redactor has no detectors and returns its input unchanged; the detectors (PII and secrets) and the
//! pack's `redaction:` rules plug in here without changing any caller. Callers hand in every string with the key
//! it sits under (`""` when it has none), and collect what fired in a [`Report`].

use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Where redactors come from: built once by `app` and shared by every recording path (the decision pipeline, the
/// OTLP receivers). It will own the per-tenant hashing keys and the active packs' `redaction:` rules.
#[derive(Debug, Default)]
pub struct Redaction {}

impl Redaction {
    /// Redaction with no detectors (today's only kind).
    pub fn new() -> Redaction {
        Redaction {}
    }

    /// The redactor for what `tenant` records, under the rules active now.
    pub fn redactor(&self, _tenant: &str) -> Redactor {
        Redactor::none()
    }
}

/// Redacts values before they are recorded. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Redactor {}

/// What one redaction pass found: how many values each detector (or key rule) replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Detector name (e.g. `email`, `key:password`) to the number of replacements.
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
}

impl Redactor {
    /// A redactor with no detectors: every value is recorded as given.
    pub fn none() -> Redactor {
        Redactor {}
    }

    /// `value` with every detected secret or personal datum replaced; borrowed when nothing was found.
    pub fn value<'a>(&self, value: &'a Value) -> Cow<'a, Value> {
        self.value_report(value, &mut Report::default())
    }

    /// As [`Redactor::value`], counting what fired into `report`.
    pub fn value_report<'a>(&self, value: &'a Value, _report: &mut Report) -> Cow<'a, Value> {
        Cow::Borrowed(value)
    }

    /// One string found under `key` (an attribute key, a JSON object key; `""` when there is none), with every
    /// detected datum replaced; a string holding a JSON document is redacted inside and re-serialized. Borrowed
    /// when nothing was found.
    pub fn text<'a>(&self, _key: &str, s: &'a str, _report: &mut Report) -> Cow<'a, str> {
        Cow::Borrowed(s)
    }
}
