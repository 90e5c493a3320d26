//! Redaction of what kla records: every value that reaches the ledger (decision contexts and tool descriptions now;
//! span attributes and tool-call arguments next) passes through a [`Redactor`] first, because a ledger cannot
//! forget. Pure: no IO, no allocation when nothing is redacted.
//!
//! Today's redactor has no detectors and returns its input unchanged; the detectors (PII and secrets) and the
//! pack's `redaction:` rules plug in here without changing any caller.

use serde_json::Value;
use std::borrow::Cow;

/// Redacts values before they are recorded. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Redactor {}

impl Redactor {
    /// A redactor with no detectors: every value is recorded as given.
    pub fn none() -> Redactor {
        Redactor {}
    }

    /// `value` with every detected secret or personal datum replaced; borrowed when nothing was found.
    pub fn value<'a>(&self, value: &'a Value) -> Cow<'a, Value> {
        Cow::Borrowed(value)
    }
}
