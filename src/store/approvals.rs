//! Approvals: one row per approval, derived from the ledger like every index row. The row is created from the
//! `require_approval` decision's entry (which holds the approval's terms) and moved on by each `approval.*`
//! entry, which carries the approval's whole new state; an update applies only when it comes from a later ledger
//! entry than the last one applied, so replaying the ledger at startup is idempotent and keeps ledger order.
//!
//! [`ApprovalStatus`] is defined here, beside the rows that carry it, because the store and the recorder (which
//! fills these rows) sit below `approvals`; the rest of kla names it `approvals::ApprovalStatus`. The `status`
//! column holds its one spelling, bound from the enum, and a spelling this kla does not know reads back as
//! [`StoreError::Corrupt`], never as a guess.

use super::{Result, Store};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// An approval's status: one spelling on the wire (the API's approval objects and list filter), in the ledger's
/// `approval.*` entries and in the store's `status` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApprovalStatus {
    /// Open: waiting for votes (a vote short of the quorum leaves it pending).
    Pending,
    /// The quorum approved it (the re-check may still have blocked the action: see `finalDecision`).
    Approved,
    /// An approver denied it.
    Denied,
    /// Its time ran out; it resolved as its `onTimeout`.
    Expired,
    /// Withdrawn before anyone decided it.
    Canceled,
}

impl ApprovalStatus {
    /// Every status, in the order lists and counts show them.
    pub const ALL: [ApprovalStatus; 5] = [
        ApprovalStatus::Pending,
        ApprovalStatus::Approved,
        ApprovalStatus::Denied,
        ApprovalStatus::Expired,
        ApprovalStatus::Canceled,
    ];

    /// The one spelling (`PENDING`, `APPROVED`, `DENIED`, `EXPIRED`, `CANCELED`).
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "PENDING",
            ApprovalStatus::Approved => "APPROVED",
            ApprovalStatus::Denied => "DENIED",
            ApprovalStatus::Expired => "EXPIRED",
            ApprovalStatus::Canceled => "CANCELED",
        }
    }

    /// The status spelled `s` exactly; `None` for anything else (no case folding).
    pub fn parse(s: &str) -> Option<ApprovalStatus> {
        ApprovalStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

super::spelled::spelled!(ApprovalStatus, "approval status", "approvals.status");

/// A new approval, from its decision's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    /// `appr_...`.
    pub approval_id: String,
    pub tenant: String,
    pub decision_id: String,
    pub agent_id: String,
    pub action: String,
    pub execution_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// `expires_at` in Unix milliseconds (the expiry service's order).
    pub expires_ms: i64,
    /// Ledger index of the decision's entry (which holds the action, its context and the approval's terms).
    pub decision_index: u64,
    /// The keyed digest of the action the approval is bound to (`hmac-sha256:...`).
    pub action_digest: Option<String>,
}

/// A decision that used an approval up: the approved action went through once.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalUse {
    pub approval_id: String,
    pub tenant: String,
    /// The decision that used it.
    pub decision_id: String,
}

/// A change of an approval's state, from an `approval.*` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalUpdate {
    pub approval_id: String,
    pub tenant: String,
    pub status: ApprovalStatus,
    /// The entry's body (canonical JSON): the approval's whole state after the change.
    pub state: String,
    /// Ledger index of the entry.
    pub ledger_index: u64,
}

/// A stored approval.
#[derive(Debug, Clone)]
pub struct ApprovalRecord {
    pub row: ApprovalRow,
    pub status: ApprovalStatus,
    /// The body of the last `approval.*` entry applied; `None` while nothing has happened to it.
    pub state: Option<String>,
    /// The decision that used the approval up, once one has.
    pub used_by: Option<String>,
}

/// Which approvals a list returns.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    pub status: Option<ApprovalStatus>,
    pub agent_id: Option<String>,
    /// Those whose decision entry comes after this ledger index (the page cursor).
    pub after: Option<u64>,
}

/// Pending approvals due by `?1`, soonest first, at most `?2`; `?3` is [`ApprovalStatus::Pending`], which lets
/// SQLite use the partial index `approvals_due` (its `WHERE` spells the same status; a test checks the plan).
const DUE: &str = "SELECT tenant, approval_id FROM approvals WHERE status = ?3 AND expires_ms <= ?1
                   ORDER BY expires_ms LIMIT ?2";

const COLS: &str = "approval_id, tenant, decision_id, agent_id, action, execution_id, created_at, expires_at,
                    expires_ms, decision_index, status, state, action_digest, used_by";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        row: ApprovalRow {
            approval_id: r.get(0)?,
            tenant: r.get(1)?,
            decision_id: r.get(2)?,
            agent_id: r.get(3)?,
            action: r.get(4)?,
            execution_id: r.get(5)?,
            created_at: r.get(6)?,
            expires_at: r.get(7)?,
            expires_ms: r.get(8)?,
            decision_index: r.get::<_, i64>(9)? as u64,
            action_digest: r.get(12)?,
        },
        status: r.get(10)?,
        state: r.get(11)?,
        used_by: r.get(13)?,
    })
}

/// Writes the approval rows of an index batch (inside its transaction).
pub(super) fn index_approvals(
    tx: &rusqlite::Transaction<'_>,
    created: Option<&ApprovalRow>,
    updated: Option<&ApprovalUpdate>,
    used: Option<&ApprovalUse>,
) -> Result<()> {
    if let Some(a) = created {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO approvals(approval_id, tenant, decision_id, agent_id, action, execution_id,
                                             created_at, expires_at, expires_ms, decision_index, status, state,
                                             updated_index, action_digest)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?12, NULL, ?10, ?11)",
        )?
        .execute(params![
            a.approval_id,
            a.tenant,
            a.decision_id,
            a.agent_id,
            a.action,
            a.execution_id,
            a.created_at,
            a.expires_at,
            a.expires_ms,
            a.decision_index as i64,
            a.action_digest,
            ApprovalStatus::Pending
        ])?;
    }
    if let Some(u) = used {
        // The first decision to use an approval keeps it (a replay of the ledger finds the same first).
        tx.prepare_cached(
            "UPDATE approvals SET used_by = ?3 WHERE approval_id = ?1 AND tenant = ?2 AND used_by IS NULL",
        )?
        .execute(params![u.approval_id, u.tenant, u.decision_id])?;
    }
    if let Some(u) = updated {
        tx.prepare_cached(
            "UPDATE approvals SET status = ?3, state = ?4, updated_index = ?5
             WHERE approval_id = ?1 AND tenant = ?2 AND updated_index < ?5",
        )?
        .execute(params![
            u.approval_id,
            u.tenant,
            u.status,
            u.state,
            u.ledger_index as i64
        ])?;
    }
    Ok(())
}

impl Store {
    /// An approval of a tenant.
    pub async fn get_approval(&self, tenant: &str, approval_id: &str) -> Result<Option<ApprovalRecord>> {
        self.approval_where(tenant, "approval_id", approval_id).await
    }

    /// The approval of a tenant whose `column` (one of the table's unique keys) holds `value`.
    async fn approval_where(
        &self,
        tenant: &str,
        column: &'static str,
        value: &str,
    ) -> Result<Option<ApprovalRecord>> {
        let (t, v) = (tenant.to_owned(), value.to_owned());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLS} FROM approvals WHERE tenant = ?1 AND {column} = ?2"
            ))?
            .query_row(params![t, v], from_row)
            .optional()
            .map_err(read_error)
        })
        .await
    }

    /// The approvals of a tenant bound to the action with this digest that no decision has used yet, newest first
    /// (at most a few: each opened for one call of that action).
    pub async fn unused_approvals(&self, tenant: &str, action_digest: &str) -> Result<Vec<ApprovalRecord>> {
        let (t, d) = (tenant.to_owned(), action_digest.to_owned());
        self.read(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLS} FROM approvals WHERE tenant = ?1 AND action_digest = ?2 AND used_by IS NULL
                 ORDER BY decision_index DESC LIMIT 16"
            ))?;
            let rows = st.query_map(params![t, d], from_row)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(read_error)
        })
        .await
    }

    /// The approval a decision of a tenant opened.
    pub async fn approval_of_decision(
        &self,
        tenant: &str,
        decision_id: &str,
    ) -> Result<Option<ApprovalRecord>> {
        self.approval_where(tenant, "decision_id", decision_id).await
    }

    /// One page of a tenant's approvals, oldest first, at most `limit`.
    pub async fn list_approvals(
        &self,
        tenant: &str,
        filter: &ApprovalFilter,
        limit: usize,
    ) -> Result<Vec<ApprovalRecord>> {
        let t = tenant.to_owned();
        let f = filter.clone();
        self.read(move |c| {
            let after = f.after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLS} FROM approvals
                 WHERE tenant = ?1 AND decision_index > ?2 AND (?3 IS NULL OR status = ?3)
                       AND (?4 IS NULL OR agent_id = ?4)
                 ORDER BY decision_index LIMIT ?5"
            ))?;
            let rows = st.query_map(
                params![
                    t,
                    after,
                    f.status,
                    f.agent_id,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                from_row,
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(read_error)
        })
        .await
    }

    /// How many approvals of a tenant (of one agent, when given) are in each status.
    pub async fn approval_counts(
        &self,
        tenant: &str,
        agent_id: Option<&str>,
    ) -> Result<Vec<(ApprovalStatus, u64)>> {
        let t = tenant.to_owned();
        let a = agent_id.map(str::to_owned);
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT status, COUNT(*) FROM approvals WHERE tenant = ?1 AND (?2 IS NULL OR agent_id = ?2)
                 GROUP BY status",
            )?;
            let rows = st.query_map(params![t, a], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(read_error)
        })
        .await
    }

    /// Pending approvals (any tenant) whose time ran out by `now_ms`, soonest first, at most `limit`; and the
    /// expiry time of the next pending one after those.
    pub async fn due_approvals(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<(Vec<(String, String)>, Option<i64>)> {
        self.read(move |c| {
            let mut st = c.prepare_cached(DUE)?;
            let due = st
                .query_map(
                    params![
                        now_ms,
                        i64::try_from(limit).unwrap_or(i64::MAX),
                        ApprovalStatus::Pending
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let next: Option<i64> = c
                .prepare_cached(
                    "SELECT MIN(expires_ms) FROM approvals WHERE status = ?2 AND expires_ms > ?1",
                )?
                .query_row(params![now_ms, ApprovalStatus::Pending], |r| r.get(0))?;
            Ok((due, next))
        })
        .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::error::{Class, Classify};
    use crate::store::StoreError;

    #[test]
    fn each_status_has_one_spelling_on_the_wire_and_in_sql() {
        let spelled: Vec<&str> = ApprovalStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(spelled, ["PENDING", "APPROVED", "DENIED", "EXPIRED", "CANCELED"]);
        for s in ApprovalStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(
                serde_json::from_value::<ApprovalStatus>(s.as_str().into()).unwrap(),
                s
            );
            assert_eq!(ApprovalStatus::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        // Exact spellings only: no case folding, no trimming.
        for bad in ["pending", "Approved", " DENIED", "CANCELLED", ""] {
            assert_eq!(ApprovalStatus::parse(bad), None, "{bad:?}");
            assert!(
                serde_json::from_value::<ApprovalStatus>(bad.into()).is_err(),
                "{bad:?}"
            );
        }
    }

    fn row(id: &str, expires_ms: i64, decision_index: u64) -> ApprovalRow {
        ApprovalRow {
            approval_id: id.into(),
            tenant: "acme".into(),
            decision_id: format!("dec_{id}"),
            agent_id: "agt_1".into(),
            action: "pay".into(),
            execution_id: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            expires_at: "2026-01-01T00:15:00.000Z".into(),
            expires_ms,
            decision_index,
            action_digest: Some("hmac-sha256:00".into()),
        }
    }

    async fn index(store: &Store, created: Option<ApprovalRow>, updated: Option<ApprovalUpdate>) {
        store
            .write_index(move |c| {
                let tx = c.transaction()?;
                index_approvals(&tx, created.as_ref(), updated.as_ref(), None)?;
                tx.commit()?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn statuses_are_stored_and_read_back_through_the_enum() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        index(&store, Some(row("appr_1", 1_000, 1)), None).await;
        index(&store, Some(row("appr_2", 2_000, 2)), None).await;
        let a = store.get_approval("acme", "appr_1").await.unwrap().unwrap();
        assert_eq!(a.status, ApprovalStatus::Pending);
        // Both are due at 5_000; none is due at 500, and the next one expires at 1_000.
        let (due, _) = store.due_approvals(5_000, 10).await.unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(
            store.due_approvals(500, 10).await.unwrap(),
            (Vec::new(), Some(1_000))
        );

        let update = ApprovalUpdate {
            approval_id: "appr_1".into(),
            tenant: "acme".into(),
            status: ApprovalStatus::Denied,
            state: "{}".into(),
            ledger_index: 3,
        };
        index(&store, None, Some(update)).await;
        let a = store.get_approval("acme", "appr_1").await.unwrap().unwrap();
        assert_eq!(a.status, ApprovalStatus::Denied);
        let (due, _) = store.due_approvals(5_000, 10).await.unwrap();
        assert_eq!(due, [("acme".to_owned(), "appr_2".to_owned())]);
        let denied = ApprovalFilter {
            status: Some(ApprovalStatus::Denied),
            ..ApprovalFilter::default()
        };
        let listed = store.list_approvals("acme", &denied, 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].row.approval_id, "appr_1");
        let mut counts = store.approval_counts("acme", None).await.unwrap();
        counts.sort_by_key(|(s, _)| s.as_str());
        assert_eq!(
            counts,
            [(ApprovalStatus::Denied, 1), (ApprovalStatus::Pending, 1)]
        );

        // A truncation that cuts the change sets the approval back to pending.
        store.truncate_index(3).await.unwrap();
        let a = store.get_approval("acme", "appr_1").await.unwrap().unwrap();
        assert_eq!(a.status, ApprovalStatus::Pending);
    }

    #[tokio::test]
    async fn an_unknown_stored_status_is_a_corrupt_value_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        index(&store, Some(row("appr_1", 1_000, 1)), None).await;
        store
            .write_index(|c| {
                c.execute(
                    "UPDATE approvals SET status = 'pending' WHERE approval_id = 'appr_1'",
                    [],
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let corrupt = |e: StoreError| {
            assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
            assert_eq!(e.class(), Class::Internal);
            assert!(e.to_string().contains("\"pending\""), "{e}");
        };
        corrupt(store.get_approval("acme", "appr_1").await.unwrap_err());
        corrupt(
            store
                .approval_of_decision("acme", "dec_appr_1")
                .await
                .unwrap_err(),
        );
        corrupt(
            store
                .unused_approvals("acme", "hmac-sha256:00")
                .await
                .unwrap_err(),
        );
        corrupt(
            store
                .list_approvals("acme", &ApprovalFilter::default(), 10)
                .await
                .unwrap_err(),
        );
        corrupt(store.approval_counts("acme", None).await.unwrap_err());
        // The expiry service only looks for the pending spelling: the unknown row is not due.
        assert_eq!(store.due_approvals(5_000, 10).await.unwrap(), (Vec::new(), None));
    }

    #[tokio::test]
    async fn the_due_query_uses_the_partial_index_of_pending_approvals() {
        // The schema's `approvals_due` index is partial on the pending spelling; a status bound from the enum must
        // still let the planner use it, or the expiry service scans every approval each tick.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let plan = |status: ApprovalStatus| {
            store.read(move |c| {
                let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {DUE}"))?;
                let rows = st.query_map(params![5_000i64, 10i64, status], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
        };
        let pending = plan(ApprovalStatus::Pending).await.unwrap();
        assert!(pending.iter().any(|p| p.contains("approvals_due")), "{pending:?}");
        // The plan follows the bound value: another status cannot use the partial index.
        let denied = plan(ApprovalStatus::Denied).await.unwrap();
        assert!(!denied.iter().any(|p| p.contains("approvals_due")), "{denied:?}");
    }
}
