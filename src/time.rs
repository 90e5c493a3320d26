//! Wall-clock helpers: one RFC 3339 format (UTC, millisecond precision, `Z`) used on every wire and in the ledger.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now as RFC 3339 UTC, e.g. `2026-06-01T10:48:00.123Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// Formats a time as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// `prefix` + 24 hex digits: 48 bits of milliseconds since the epoch, then 48 random bits. Ids made later sort
/// later, so the store's indexes grow at their right edge instead of dirtying random pages on every insert (which
/// made index commits the most expensive step of a decision), and the random half keeps ids unguessable enough
/// to be unique across replicas.
pub fn sortable_id(prefix: &str) -> String {
    let ms = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64 & 0xffff_ffff_ffff;
    let r: [u8; 6] = rand::random();
    format!("{prefix}{ms:012x}{}", hex::encode(r))
}
