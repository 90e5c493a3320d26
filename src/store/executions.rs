//! Executions: one row per execution, derived from the ledger like every index row. The row is created from the
//! execution's first `execution.transition` entry (to `PENDING`, which holds what was asked: agent, budgets,
//! priority, the run it retries) and moved on by each later transition; an update applies only when it comes from
//! a later ledger entry than the last one applied, so replaying the ledger at startup is idempotent and keeps
//! ledger order. The input itself stays in the ledger entry (`created_index` finds it).
//!
//! [`ExecutionStatus`] is defined here, beside the rows that carry it, because the store and the recorder (which
//! fills these rows) sit below `executions`; the rest of kla names it `executions::ExecutionStatus`, and the
//! lifecycle's rules (which transitions are allowed) live in `executions`. The `status` column holds its one
//! spelling, bound from the enum; a spelling this kla does not know reads back as [`StoreError::Corrupt`].

use super::{Result, Store};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// An execution's status: one spelling on the KLA Execution API's wire, in the ledger's `execution.transition`
/// entries and in the store's `status` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    /// Accepted, not yet in the queue.
    Pending,
    /// Waiting for a slot to run.
    Queued,
    /// A runner is running it.
    Running,
    /// Cancel asked while it runs; the runner stops it.
    CancelRequested,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Stopped before it finished.
    Canceled,
}

impl ExecutionStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [ExecutionStatus; 7] = [
        ExecutionStatus::Pending,
        ExecutionStatus::Queued,
        ExecutionStatus::Running,
        ExecutionStatus::CancelRequested,
        ExecutionStatus::Completed,
        ExecutionStatus::Failed,
        ExecutionStatus::Canceled,
    ];

    /// The one spelling (`PENDING`, `QUEUED`, `RUNNING`, `CANCEL_REQUESTED`, `COMPLETED`, `FAILED`, `CANCELED`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionStatus::Pending => "PENDING",
            ExecutionStatus::Queued => "QUEUED",
            ExecutionStatus::Running => "RUNNING",
            ExecutionStatus::CancelRequested => "CANCEL_REQUESTED",
            ExecutionStatus::Completed => "COMPLETED",
            ExecutionStatus::Failed => "FAILED",
            ExecutionStatus::Canceled => "CANCELED",
        }
    }

    /// The status spelled `s` exactly; `None` for anything else (no case folding).
    pub fn parse(s: &str) -> Option<ExecutionStatus> {
        ExecutionStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the run is over: a terminal status never changes.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            ExecutionStatus::Completed | ExecutionStatus::Failed | ExecutionStatus::Canceled
        )
    }
}

super::spelled::spelled!(ExecutionStatus, "execution status", "executions.status");

/// What a new execution's row starts with (from its `PENDING` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    /// `exec_...`.
    pub execution_id: String,
    pub tenant: String,
    pub agent_id: String,
    /// The agent's name when the run started (agent-bound tokens may name their agent by name).
    pub agent_name: String,
    pub priority: i64,
    pub max_steps: Option<u64>,
    pub max_cost_usd: Option<f64>,
    /// The execution this one retries.
    pub retry_of: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// Ledger index of the `PENDING` entry (which holds the input).
    pub created_index: u64,
}

/// A transition of an execution, from an `execution.transition` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionUpdate {
    pub execution_id: String,
    pub tenant: String,
    pub status: ExecutionStatus,
    /// RFC 3339: the entry's time.
    pub at: String,
    /// The final result (canonical JSON) a `COMPLETED` transition carries.
    pub final_result: Option<String>,
    /// The error a `FAILED` (or `CANCELED`) transition carries.
    pub error_log: Option<String>,
    /// Ledger index of the entry.
    pub ledger_index: u64,
}

/// A stored execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRecord {
    pub row: ExecutionRow,
    pub status: ExecutionStatus,
    /// RFC 3339: when it moved to `RUNNING`.
    pub started_at: Option<String>,
    /// RFC 3339: when it reached a terminal status.
    pub completed_at: Option<String>,
    /// Canonical JSON.
    pub final_result: Option<String>,
    pub error_log: Option<String>,
}

/// Which executions a list returns.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub status: Option<ExecutionStatus>,
    /// An agent id or name (name compared without case, as a bound token's `agent` claim is).
    pub agent: Option<String>,
    /// Those created after this ledger index (the page cursor).
    pub after: Option<u64>,
}

const COLS: &str = "execution_id, tenant, agent_id, agent_name, priority, max_steps, max_cost_usd, retry_of,
                    created_at, created_index, status, started_at, completed_at, final_result, error_log";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExecutionRecord> {
    Ok(ExecutionRecord {
        row: ExecutionRow {
            execution_id: r.get(0)?,
            tenant: r.get(1)?,
            agent_id: r.get(2)?,
            agent_name: r.get(3)?,
            priority: r.get(4)?,
            max_steps: r.get::<_, Option<i64>>(5)?.map(|n| n.max(0) as u64),
            max_cost_usd: r.get(6)?,
            retry_of: r.get(7)?,
            created_at: r.get(8)?,
            created_index: r.get::<_, i64>(9)?.max(0) as u64,
        },
        status: r.get(10)?,
        started_at: r.get(11)?,
        completed_at: r.get(12)?,
        final_result: r.get(13)?,
        error_log: r.get(14)?,
    })
}

/// Writes the execution rows of an index batch (inside its transaction): the row a `PENDING` entry creates, then
/// the transition every entry (that one included) applies.
pub(super) fn index_executions(
    tx: &rusqlite::Transaction<'_>,
    created: Option<&ExecutionRow>,
    updated: Option<&ExecutionUpdate>,
) -> Result<()> {
    if let Some(e) = created {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO executions(execution_id, tenant, agent_id, agent_name, priority, max_steps,
                                              max_cost_usd, retry_of, created_at, created_index, status,
                                              updated_index)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, -1)",
        )?
        .execute(params![
            e.execution_id,
            e.tenant,
            e.agent_id,
            e.agent_name,
            e.priority,
            e.max_steps.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            e.max_cost_usd,
            e.retry_of,
            e.created_at,
            e.created_index as i64,
            ExecutionStatus::Pending
        ])?;
    }
    if let Some(u) = updated {
        tx.prepare_cached(
            "UPDATE executions SET status = ?3, updated_index = ?4,
                 started_at = CASE WHEN ?5 THEN ?6 ELSE started_at END,
                 completed_at = CASE WHEN ?7 THEN ?6 ELSE completed_at END,
                 final_result = COALESCE(?8, final_result), error_log = COALESCE(?9, error_log)
             WHERE execution_id = ?1 AND tenant = ?2 AND updated_index < ?4",
        )?
        .execute(params![
            u.execution_id,
            u.tenant,
            u.status,
            u.ledger_index as i64,
            u.status == ExecutionStatus::Running,
            u.at,
            u.status.is_terminal(),
            u.final_result,
            u.error_log
        ])?;
    }
    Ok(())
}

/// Drops the execution rows of entries at `size` and beyond (inside a truncation's transaction). A run whose
/// later transitions were cut keeps its row; its status goes back to `PENDING` with no times after its start, so
/// it must be moved on again (the entries that held its other transitions are not replayed by a truncation).
pub(super) fn truncate_executions(tx: &rusqlite::Transaction<'_>, size: u64) -> Result<usize> {
    let n = tx.execute("DELETE FROM executions WHERE created_index >= ?1", [size as i64])?;
    tx.execute(
        "UPDATE executions SET status = ?2, updated_index = created_index, started_at = NULL, completed_at = NULL,
                final_result = NULL, error_log = NULL
         WHERE updated_index >= ?1",
        params![size as i64, ExecutionStatus::Pending],
    )?;
    Ok(n)
}

impl Store {
    /// An execution of a tenant.
    pub async fn get_execution(&self, tenant: &str, execution_id: &str) -> Result<Option<ExecutionRecord>> {
        let (t, id) = (tenant.to_owned(), execution_id.to_owned());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLS} FROM executions WHERE tenant = ?1 AND execution_id = ?2"
            ))?
            .query_row(params![t, id], from_row)
            .optional()
            .map_err(read_error)
        })
        .await
    }

    /// One page of a tenant's executions, oldest first, at most `limit`.
    pub async fn list_executions(
        &self,
        tenant: &str,
        filter: &ExecutionFilter,
        limit: usize,
    ) -> Result<Vec<ExecutionRecord>> {
        let t = tenant.to_owned();
        let f = filter.clone();
        self.read(move |c| {
            let after = f.after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLS} FROM executions
                 WHERE tenant = ?1 AND created_index > ?2 AND (?3 IS NULL OR status = ?3)
                       AND (?4 IS NULL OR agent_id = ?4 OR agent_name = ?4 COLLATE NOCASE)
                 ORDER BY created_index LIMIT ?5"
            ))?;
            let rows = st.query_map(
                params![
                    t,
                    after,
                    f.status,
                    f.agent,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                from_row,
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(read_error)
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
        for s in ExecutionStatus::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(
                serde_json::from_value::<ExecutionStatus>(s.as_str().into()).unwrap(),
                s
            );
            assert_eq!(ExecutionStatus::parse(s.as_str()), Some(s));
        }
        for bad in ["queued", "Running", "CANCELLED", " FAILED", ""] {
            assert_eq!(ExecutionStatus::parse(bad), None, "{bad:?}");
        }
    }

    fn row(id: &str, created_index: u64) -> ExecutionRow {
        ExecutionRow {
            execution_id: id.into(),
            tenant: "acme".into(),
            agent_id: "agt_1".into(),
            agent_name: "claims".into(),
            priority: 0,
            max_steps: Some(5),
            max_cost_usd: Some(1.5),
            retry_of: None,
            created_at: "2026-01-01T00:00:00.000Z".into(),
            created_index,
        }
    }

    fn update(id: &str, status: ExecutionStatus, ledger_index: u64) -> ExecutionUpdate {
        ExecutionUpdate {
            execution_id: id.into(),
            tenant: "acme".into(),
            status,
            at: format!("2026-01-01T00:00:0{ledger_index}.000Z"),
            final_result: (status == ExecutionStatus::Completed).then(|| "{\"ok\":true}".into()),
            error_log: None,
            ledger_index,
        }
    }

    async fn index(store: &Store, created: Option<ExecutionRow>, updated: Option<ExecutionUpdate>) {
        store
            .write_index(move |c| {
                let tx = c.transaction()?;
                index_executions(&tx, created.as_ref(), updated.as_ref())?;
                tx.commit()?;
                Ok(())
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn transitions_apply_in_ledger_order_once_and_truncation_sets_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = "exec_01";
        index(
            &store,
            Some(row(id, 1)),
            Some(update(id, ExecutionStatus::Pending, 1)),
        )
        .await;
        index(&store, None, Some(update(id, ExecutionStatus::Queued, 2))).await;
        index(&store, None, Some(update(id, ExecutionStatus::Running, 3))).await;
        index(&store, None, Some(update(id, ExecutionStatus::Completed, 4))).await;
        // A replay of an earlier entry changes nothing.
        index(
            &store,
            Some(row(id, 1)),
            Some(update(id, ExecutionStatus::Queued, 2)),
        )
        .await;
        let e = store.get_execution("acme", id).await.unwrap().unwrap();
        assert_eq!(e.status, ExecutionStatus::Completed);
        assert_eq!(e.started_at.as_deref(), Some("2026-01-01T00:00:03.000Z"));
        assert_eq!(e.completed_at.as_deref(), Some("2026-01-01T00:00:04.000Z"));
        assert_eq!(e.final_result.as_deref(), Some("{\"ok\":true}"));
        assert_eq!(e.row, row(id, 1));
        assert!(store.get_execution("other", id).await.unwrap().is_none());

        index(
            &store,
            Some(row("exec_02", 5)),
            Some(update("exec_02", ExecutionStatus::Pending, 5)),
        )
        .await;
        let by = |status, agent: Option<&str>| ExecutionFilter {
            status,
            agent: agent.map(str::to_owned),
            after: None,
        };
        let all = store.list_executions("acme", &by(None, None), 10).await.unwrap();
        assert_eq!(all.len(), 2);
        let done = by(Some(ExecutionStatus::Completed), Some("CLAIMS"));
        let listed = store.list_executions("acme", &done, 10).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].row.execution_id, id);
        let page = ExecutionFilter {
            after: Some(1),
            ..ExecutionFilter::default()
        };
        let rest = store.list_executions("acme", &page, 10).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].row.execution_id, "exec_02");

        store.truncate_index(3).await.unwrap();
        let e = store.get_execution("acme", id).await.unwrap().unwrap();
        assert_eq!(e.status, ExecutionStatus::Pending);
        assert_eq!((e.started_at, e.completed_at, e.final_result), (None, None, None));
        assert!(store.get_execution("acme", "exec_02").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_unknown_stored_status_is_a_corrupt_value_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        index(&store, Some(row("exec_01", 1)), None).await;
        store
            .write_index(|c| {
                c.execute("UPDATE executions SET status = 'queued'", [])?;
                Ok(())
            })
            .await
            .unwrap();
        let e = store.get_execution("acme", "exec_01").await.unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
        assert_eq!(e.class(), Class::Internal);
        let e = store
            .list_executions("acme", &ExecutionFilter::default(), 10)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    }
}
