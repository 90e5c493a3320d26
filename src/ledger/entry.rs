//! Ledger entries: one record, versioned, encoded as RFC 8785 (JCS) canonical JSON.
//! The encoded bytes are what the log stores and hashes; an entry's index is its
//! position in the log, not part of the bytes.

use serde::{Deserialize, Serialize};

use super::LedgerError;

/// The only entry encoding version this code reads and writes.
pub const ENTRY_VERSION: u32 = 1;

/// One ledger record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    /// Encoding version; always [`ENTRY_VERSION`].
    pub v: u32,
    /// Record kind, e.g. `decision`, `policy.activated`, `policy.refused`, `agent.registered`.
    pub kind: String,
    /// Lineage id (`lr_` + 24 lowercase hex), linking records about one action.
    pub lineage_id: String,
    /// Tenant the record belongs to.
    pub tenant: String,
    /// RFC 3339 UTC timestamp.
    pub time: String,
    /// Kind-specific payload.
    pub body: serde_json::Value,
}

impl Entry {
    /// The canonical (JCS) bytes of this entry: what the ledger stores and hashes.
    pub fn encode(&self) -> Result<Vec<u8>, LedgerError> {
        if let Some(bytes) = self.encode_fast() {
            return Ok(bytes);
        }
        serde_json_canonicalizer::to_vec(self)
            .map_err(|e| LedgerError::InvalidEntry(format!("cannot canonicalize entry: {e}")))
    }

    /// The direct encoder (`super::jcs`); `None` when it cannot vouch for the canonical form.
    fn encode_fast(&self) -> Option<Vec<u8>> {
        let mut body = Vec::with_capacity(512);
        super::jcs::write_value(&self.body, &mut body)?;
        Some(Self::encode_with_body(
            self.v,
            &self.kind,
            &self.lineage_id,
            &self.tenant,
            &self.time,
            &body,
        ))
    }

    /// The canonical bytes of an entry whose body is already canonical JSON (written with [`super::jcs::Obj`]),
    /// so a hot path can skip building a `serde_json::Value`. Readers check the form: [`Entry::decode`] refuses
    /// bytes that are not canonical.
    pub fn encode_with_body(
        v: u32,
        kind: &str,
        lineage_id: &str,
        tenant: &str,
        time: &str,
        canonical_body: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(canonical_body.len() + 160);
        // Keys in RFC 8785 order: body, kind, lineageId, tenant, time, v.
        let mut o = super::jcs::Obj::begin(&mut out);
        o.raw("body").extend_from_slice(canonical_body);
        o.str("kind", kind);
        o.str("lineageId", lineage_id);
        o.str("tenant", tenant);
        o.str("time", time);
        o.raw("v").extend_from_slice(v.to_string().as_bytes());
        o.end();
        out
    }

    /// Parses canonical entry bytes; rejects unknown versions, unknown fields and
    /// bytes that are not the canonical encoding of what they contain.
    pub fn decode(bytes: &[u8]) -> Result<Entry, LedgerError> {
        let entry: Entry = serde_json::from_slice(bytes)
            .map_err(|e| LedgerError::InvalidEntry(format!("not an entry: {e}")))?;
        if entry.v != ENTRY_VERSION {
            return Err(LedgerError::InvalidEntry(format!(
                "unsupported entry version {}",
                entry.v
            )));
        }
        if entry.encode()? != bytes {
            return Err(LedgerError::InvalidEntry(
                "entry bytes are not in canonical (RFC 8785) form".to_owned(),
            ));
        }
        Ok(entry)
    }
}

/// A fresh random lineage id: `lr_` followed by 24 lowercase hex digits.
pub fn new_lineage_id() -> String {
    crate::time::sortable_id("lr_")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        Entry {
            v: 1,
            kind: "decision".into(),
            lineage_id: "lr_00112233445566778899aabb".into(),
            tenant: "acme".into(),
            time: "2026-01-02T03:04:05Z".into(),
            body: serde_json::json!({"z": 1, "a": [true, null, 1.5], "é": "x"}),
        }
    }

    #[test]
    fn encode_is_jcs_with_camel_case() {
        let bytes = sample().encode().expect("encode");
        let text = String::from_utf8(bytes.clone()).expect("utf8");
        assert_eq!(
            text,
            r#"{"body":{"a":[true,null,1.5],"z":1,"é":"x"},"kind":"decision","lineageId":"lr_00112233445566778899aabb","tenant":"acme","time":"2026-01-02T03:04:05Z","v":1}"#
        );
        assert_eq!(Entry::decode(&bytes).expect("decode"), sample());
    }

    #[test]
    fn decode_rejects_other_versions_and_non_canonical_bytes() {
        let mut e = sample();
        e.v = 2;
        let bytes = e.encode().expect("encode");
        assert!(matches!(
            Entry::decode(&bytes),
            Err(LedgerError::InvalidEntry(m)) if m.contains("version")
        ));
        let pretty = serde_json::to_vec_pretty(&sample()).expect("json");
        assert!(Entry::decode(&pretty).is_err());
        assert!(Entry::decode(b"{\"v\":1}").is_err());
    }

    #[test]
    fn lineage_ids_are_well_formed_and_distinct() {
        let a = new_lineage_id();
        let b = new_lineage_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 27);
        assert!(a.starts_with("lr_"));
        assert!(
            a[3..]
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }
}
