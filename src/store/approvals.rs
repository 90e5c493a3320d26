//! Approvals: one row per approval, derived from the ledger like every index row. The row is created from the
//! `require_approval` decision's entry (which holds the approval's terms) and moved on by each `approval.*`
//! entry, which carries the approval's whole new state; an update applies only when it comes from a later ledger
//! entry than the last one applied, so replaying the ledger at startup is idempotent and keeps ledger order.

use super::{Result, Store};
use rusqlite::{OptionalExtension, params};

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
    /// `PENDING`, `APPROVED`, `DENIED`, `EXPIRED` or `CANCELED`.
    pub status: String,
    /// The entry's body (canonical JSON): the approval's whole state after the change.
    pub state: String,
    /// Ledger index of the entry.
    pub ledger_index: u64,
}

/// A stored approval.
#[derive(Debug, Clone)]
pub struct ApprovalRecord {
    pub row: ApprovalRow,
    pub status: String,
    /// The body of the last `approval.*` entry applied; `None` while nothing has happened to it.
    pub state: Option<String>,
    /// The decision that used the approval up, once one has.
    pub used_by: Option<String>,
}

/// Which approvals a list returns.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    pub status: Option<String>,
    pub agent_id: Option<String>,
    /// Those whose decision entry comes after this ledger index (the page cursor).
    pub after: Option<u64>,
}

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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'PENDING', NULL, ?10, ?11)",
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
            a.action_digest
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
        let (t, a) = (tenant.to_owned(), approval_id.to_owned());
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {COLS} FROM approvals WHERE approval_id = ?1 AND tenant = ?2"
            ))?
            .query_row(params![a, t], from_row)
            .optional()?)
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
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    /// The approval a decision of a tenant opened.
    pub async fn approval_of_decision(
        &self,
        tenant: &str,
        decision_id: &str,
    ) -> Result<Option<ApprovalRecord>> {
        let (t, d) = (tenant.to_owned(), decision_id.to_owned());
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {COLS} FROM approvals WHERE tenant = ?1 AND decision_id = ?2"
            ))?
            .query_row(params![t, d], from_row)
            .optional()?)
        })
        .await
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
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// How many approvals of a tenant (of one agent, when given) are in each status.
    pub async fn approval_counts(&self, tenant: &str, agent_id: Option<&str>) -> Result<Vec<(String, u64)>> {
        let t = tenant.to_owned();
        let a = agent_id.map(str::to_owned);
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT status, COUNT(*) FROM approvals WHERE tenant = ?1 AND (?2 IS NULL OR agent_id = ?2)
                 GROUP BY status",
            )?;
            let rows = st.query_map(params![t, a], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
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
            let mut st = c.prepare_cached(
                "SELECT tenant, approval_id FROM approvals WHERE status = 'PENDING' AND expires_ms <= ?1
                 ORDER BY expires_ms LIMIT ?2",
            )?;
            let due = st
                .query_map(params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let next: Option<i64> = c
                .prepare_cached(
                    "SELECT MIN(expires_ms) FROM approvals WHERE status = 'PENDING' AND expires_ms > ?1",
                )?
                .query_row(params![now_ms], |r| r.get(0))?;
            Ok((due, next))
        })
        .await
    }
}
