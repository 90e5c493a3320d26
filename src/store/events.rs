//! The event stream's read of the lineage index: where a tenant's entries of some kinds are among a window of
//! ledger positions, and whether the index holds every entry of that window yet.

use super::{Result, Store};
use rusqlite::types::Value as V;

/// A tenant's entries of the kinds asked for, in one window of ledger positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPositions {
    /// Their ledger indices, in order (empty when `complete` is false).
    pub indices: Vec<u64>,
    /// Where the part of the window these cover ends (exclusive): the window's end, or just after the last index
    /// when the page is full.
    pub end: u64,
    /// Whether the index held a row for every ledger position of the window when it was read. When it did not,
    /// an entry is in the ledger but its rows are not committed yet, and `indices` could miss it.
    pub complete: bool,
}

/// Which entries to look for: those whose kind is one of `kinds`, among ledger positions `[from, to)`, at most
/// `limit` of them.
#[derive(Debug, Clone, Copy)]
pub struct EventWindow<'a> {
    pub kinds: &'a [&'a str],
    pub from: u64,
    pub to: u64,
    pub limit: usize,
}

impl Store {
    /// The ledger indices of `tenant`'s entries in `window`, with whether the index is complete for the window.
    pub async fn event_positions(&self, tenant: &str, window: EventWindow<'_>) -> Result<EventPositions> {
        let EventWindow {
            kinds,
            from,
            to,
            limit,
        } = window;
        let tenant = tenant.to_owned();
        let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
        // Ledger positions fit in i64 (the ledger counts its entries).
        let pos = |p: u64| i64::try_from(p).unwrap_or(i64::MAX);
        let (lo, hi) = (pos(from), pos(to.max(from)));
        self.read(move |c| {
            // Counted first: rows are only ever added, so every row counted here is seen by the query after it.
            let indexed: i64 = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM lineage WHERE ledger_index >= ?1 AND ledger_index < ?2",
                )?
                .query_row([lo, hi], |r| r.get(0))?;
            if indexed != hi - lo {
                return Ok(EventPositions {
                    indices: Vec::new(),
                    end: to,
                    complete: false,
                });
            }
            let marks = (0..kinds.len())
                .map(|i| format!("?{}", i + 5))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT ledger_index FROM lineage
                 WHERE ledger_index >= ?1 AND ledger_index < ?2 AND tenant = ?3 AND kind IN ({marks})
                 ORDER BY ledger_index LIMIT ?4"
            );
            let mut p = vec![
                V::Integer(lo),
                V::Integer(hi),
                V::Text(tenant),
                V::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
            ];
            p.extend(kinds.into_iter().map(V::Text));
            let mut st = c.prepare_cached(&sql)?;
            let indices = st
                .query_map(rusqlite::params_from_iter(p), |r| r.get::<_, i64>(0))?
                .map(|r| r.map(|i| i as u64))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let end = match indices.last() {
                Some(&last) if indices.len() >= limit => last + 1,
                _ => to,
            };
            Ok(EventPositions {
                indices,
                end,
                complete: true,
            })
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::{IndexRows, LineageRecord};

    fn row(i: u64, tenant: &str, kind: &str) -> IndexRows {
        IndexRows {
            lineage: LineageRecord {
                lineage_id: format!("lr_{i:024x}"),
                tenant: tenant.into(),
                ledger_index: i,
                kind: kind.into(),
                decision_id: None,
                trace_id: None,
                execution_id: None,
                created_at: "2026-12-01T00:00:00.000Z".into(),
            },
            decision: None,
            agent: None,
            approval: None,
            approval_used: None,
            approval_update: None,
            execution: None,
            execution_update: None,
        }
    }

    /// `acme`'s entries of `kinds` among the positions `window`, at most `limit`.
    async fn positions(
        store: &Store,
        kinds: &[&str],
        window: std::ops::Range<u64>,
        limit: usize,
    ) -> EventPositions {
        let window = EventWindow {
            kinds,
            from: window.start,
            to: window.end,
            limit,
        };
        store.event_positions("acme", window).await.unwrap()
    }

    #[tokio::test]
    async fn positions_of_a_tenant_s_kinds_in_pages_and_gaps_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let rows = vec![
            row(0, "_system", "policy.activated"),
            row(1, "acme", "decision"),
            row(2, "other", "decision"),
            row(3, "acme", "agent.registered"),
            row(4, "acme", "approval.resolved"),
            row(5, "acme", "decision"),
        ];
        store.index_entries(rows).await.unwrap();
        let kinds = ["decision", "approval.resolved"];
        let all = positions(&store, &kinds, 0..6, 10).await;
        assert_eq!(
            all,
            EventPositions {
                indices: vec![1, 4, 5],
                end: 6,
                complete: true
            }
        );
        let page = positions(&store, &kinds, 0..6, 2).await;
        assert_eq!((page.indices, page.end), (vec![1, 4], 5));
        let rest = positions(&store, &kinds, 5..6, 2).await;
        assert_eq!(rest.indices, vec![5]);
        let only = positions(&store, &["decision"], 2..6, 10).await;
        assert_eq!(only.indices, vec![5]);
        // Position 7 has no row yet (6 does not either): the window is incomplete.
        store
            .index_entries(vec![row(7, "acme", "decision")])
            .await
            .unwrap();
        let gap = positions(&store, &kinds, 4..8, 10).await;
        assert!(!gap.complete && gap.indices.is_empty());
        store
            .index_entries(vec![row(6, "acme", "decision")])
            .await
            .unwrap();
        let healed = positions(&store, &kinds, 4..8, 10).await;
        assert_eq!((healed.indices, healed.complete), (vec![4, 5, 6, 7], true));
        let empty = positions(&store, &kinds, 8..8, 10).await;
        assert_eq!((empty.indices.len(), empty.end, empty.complete), (0, 8, true));
    }
}
