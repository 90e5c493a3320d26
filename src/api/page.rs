//! Pagination of list answers (`GET /v1/agents`, `GET /v1/evidence`): a `limit` (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]), a byte budget per page ([`PAGE_BYTES`]), and an opaque cursor naming where the next page starts.
//!
//! A cursor is a position, not a grant: each page applies the caller's visibility again, so a cursor handed to
//! another caller shows that caller nothing it could not read anyway. It is base64url of `<scope>:<position>`;
//! the scope keeps one endpoint's cursor from being read as another's.

use super::{ApiError, ApiResult};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Items per page when the request gives no `limit`.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 1000;
/// Bytes of items per page: a page stops before the item that would take it past this (it always holds at least
/// one item, so a page can exceed it by one large item).
pub const PAGE_BYTES: usize = 4 << 20;

/// The page size a request asks for: `limit` in `1..=MAX_LIMIT`, or the default.
pub fn limit(asked: Option<u64>) -> ApiResult<usize> {
    match asked {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => Ok(n as usize),
        Some(n) => Err(ApiError::invalid(format!("limit must be 1-{MAX_LIMIT}, got {n}"))),
    }
}

/// How many of `sizes` (in order) fit one page of [`PAGE_BYTES`]: at least one when there is any.
pub fn fit(sizes: impl IntoIterator<Item = usize>) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if n > 0 && total > PAGE_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// The cursor for a page that starts after `position`.
pub fn cursor(scope: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{scope}:{position}"))
}

/// The answer to a cursor this endpoint did not issue.
fn not_ours() -> ApiError {
    ApiError::invalid("cursor is not one this endpoint returned")
}

/// The position a cursor of `scope` names; 400 for anything this endpoint did not issue.
pub fn position(scope: &str, cursor: &str) -> ApiResult<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| not_ours())?;
    let text = String::from_utf8(bytes).map_err(|_| not_ours())?;
    match text.split_once(':') {
        Some((s, p)) if s == scope && !p.is_empty() => Ok(p.to_owned()),
        _ => Err(not_ours()),
    }
}

/// The query of a list filtered by status and agent (approvals, executions): `status`, `agentId`, `limit`,
/// `cursor`; anything else is refused.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusAgentQuery {
    pub status: Option<String>,
    pub agent_id: Option<String>,
    pub limit: Option<u64>,
    pub cursor: Option<String>,
}

impl StatusAgentQuery {
    /// The page's size and the position after which it starts (the cursor of the list's `scope`).
    pub fn page(&self, scope: &str) -> ApiResult<(usize, Option<String>)> {
        Ok((limit(self.limit)?, after(scope, self.cursor.as_deref())?))
    }
}

/// Where a page starts: after the position the request's cursor of `scope` names, or at the beginning without one.
pub fn after(scope: &str, cursor: Option<&str>) -> ApiResult<Option<String>> {
    cursor.map(|c| position(scope, c)).transpose()
}

/// Where a page over ledger indexes starts: after the index the request's cursor of `scope` names.
pub fn after_index(scope: &str, cursor: Option<&str>) -> ApiResult<Option<u64>> {
    after(scope, cursor)?
        .map(|p| p.parse::<u64>().map_err(|_| not_ours()))
        .transpose()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_keep_their_scope() {
        let c = cursor("agents", "billing-bot");
        assert_eq!(position("agents", &c).unwrap(), "billing-bot");
        assert!(position("evidence", &c).is_err());
        for bad in ["", "!!", "YWdlbnRz", "YWdlbnRzOg"] {
            assert!(position("agents", bad).is_err(), "{bad}");
        }
        assert_eq!(after("agents", None).unwrap(), None);
        assert_eq!(after("agents", Some(&c)).unwrap().as_deref(), Some("billing-bot"));
        assert_eq!(
            after_index("evidence", Some(&cursor("evidence", "7"))).unwrap(),
            Some(7)
        );
        assert!(after_index("evidence", Some(&cursor("evidence", "x"))).is_err());
        assert!(after_index("evidence", Some(&c)).is_err());
    }

    #[test]
    fn a_page_fits_its_budget_but_holds_at_least_one_item() {
        assert_eq!(fit([]), 0);
        assert_eq!(fit([PAGE_BYTES * 3]), 1);
        assert_eq!(fit([PAGE_BYTES / 2, PAGE_BYTES / 2, 1]), 2);
        assert_eq!(fit([1, PAGE_BYTES]), 1);
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some(MAX_LIMIT as u64)).unwrap(), MAX_LIMIT);
        assert!(limit(Some(0)).is_err() && limit(Some(MAX_LIMIT as u64 + 1)).is_err());
    }
}
