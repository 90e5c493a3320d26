//! Wall-clock helpers: one RFC 3339 format (UTC, millisecond precision, `Z`) used on every wire and in the ledger.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now as RFC 3339 UTC, e.g. `2026-06-01T10:48:00.123Z`.
pub fn now_rfc3339() -> String {
    format_rfc3339(OffsetDateTime::now_utc())
}

/// The one timestamp format: RFC 3339 UTC with exactly three fraction digits (`time`'s RFC 3339 formatter drops
/// trailing zeros, so `.940` would be `.94` and a whole second would have no fraction).
const MILLIS: &[time::format_description::FormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Formats a time as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(MILLIS)
        .or_else(|_| t.format(&Rfc3339))
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Now in Unix milliseconds.
pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Parses an RFC 3339 time into Unix milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// A time `ms` Unix milliseconds as RFC 3339.
pub fn ms_rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map(format_rfc3339)
        .unwrap_or_else(|_| ms.to_string())
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

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn timestamps_always_carry_three_fraction_digits() {
        let at = |unix: i64, ms: u32| {
            let t = OffsetDateTime::from_unix_timestamp(unix).expect("time");
            format_rfc3339(t.replace_millisecond(ms as u16).expect("ms"))
        };
        assert_eq!(at(1_780_000_000, 0), "2026-05-28T20:26:40.000Z");
        assert_eq!(at(1_780_000_000, 940), "2026-05-28T20:26:40.940Z");
        assert_eq!(at(1_780_000_000, 7), "2026-05-28T20:26:40.007Z");
        assert!(OffsetDateTime::parse(&at(1_780_000_000, 940), &Rfc3339).is_ok());
    }
}
