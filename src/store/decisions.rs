//! Decisions and the lineage index. Both are derived from the ledger (the source of truth) and can be rebuilt
//! from it: `lineage_count_and_max` tells startup where to resume.
//!
//! A decision's outcome is `policy::Outcome` in the rows as everywhere else: the `decision` column holds its one
//! spelling (`allow`, `warn`, `require_approval`, `block`), bound from the enum, and a spelling this kla does not
//! know reads back as [`StoreError::Corrupt`]. The store may name the policy's value types (the dependency runs
//! one way: `policy` knows no store).

use super::agents::AgentVersionRow;
use super::approvals::{ApprovalRow, ApprovalUpdate, ApprovalUse, index_approvals};
use super::executions::{ExecutionRow, ExecutionUpdate, index_executions, truncate_executions};
use super::{Result, Store};
use crate::policy::Outcome;
use rusqlite::{OptionalExtension, params};

// `Outcome`'s `Display` is the policy's own; only the column's side is needed here.
super::spelled::column!(Outcome, "decision outcome", "decisions.decision");

/// A stored decision.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// `dec_...`.
    pub decision_id: String,
    pub tenant: String,
    /// Agent the decision was for.
    pub agent_id: String,
    pub action: String,
    /// The enforced outcome.
    pub decision: Outcome,
    /// Lineage id of its ledger entry.
    pub lineage_id: String,
    /// Ledger index of its entry (which holds the full decision).
    pub ledger_index: u64,
    /// RFC 3339.
    pub created_at: String,
}

/// One ledger entry in the lineage index.
#[derive(Debug, Clone)]
pub struct LineageRecord {
    /// `lr_...`.
    pub lineage_id: String,
    /// Tenant that owns the entry.
    pub tenant: String,
    pub ledger_index: u64,
    /// See `recorder::kind`.
    pub kind: String,
    /// For decision entries.
    pub decision_id: Option<String>,
    pub trace_id: Option<String>,
    pub execution_id: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// The index rows of one ledger entry, written in one transaction with the rest of its batch.
#[derive(Debug, Clone)]
pub struct IndexRows {
    pub lineage: LineageRecord,
    /// For decision entries.
    pub decision: Option<DecisionRecord>,
    /// For `agent.registered` entries: the version the entry registers.
    pub agent: Option<AgentVersionRow>,
    /// For `require_approval` decisions: the approval the entry opens.
    pub approval: Option<ApprovalRow>,
    /// For `approval.*` entries: the approval's new state.
    pub approval_update: Option<ApprovalUpdate>,
    /// For decisions that went through on an earlier approval: the approval they used up.
    pub approval_used: Option<ApprovalUse>,
    /// For an execution's first `execution.transition` entry: the execution it creates.
    pub execution: Option<ExecutionRow>,
    /// For `execution.transition` entries: the execution's new status.
    pub execution_update: Option<ExecutionUpdate>,
}

/// What selects a tenant's lineage entries besides their own id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineageKey {
    /// The one entry of a decision (`dec_...`).
    Decision(String),
    /// Every entry of a trace, in ledger order.
    Trace(String),
    /// Every entry of an execution, in ledger order.
    Execution(String),
}

/// Which page of a tenant's lineage entries to read: those selected by `key`, after ledger index `after` (all when
/// `None`), at most `limit`. With `agent` (an agent's id or name, as a token's `agent` claim names it), only the
/// entries of decisions for that agent: entries of no agent are left out.
#[derive(Debug, Clone, Copy)]
pub struct LineagePage<'a> {
    pub key: &'a LineageKey,
    pub agent: Option<&'a str>,
    pub after: Option<u64>,
    pub limit: usize,
}

fn lineage_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LineageRecord> {
    Ok(LineageRecord {
        lineage_id: r.get(0)?,
        tenant: r.get(1)?,
        ledger_index: r.get::<_, i64>(2)? as u64,
        kind: r.get(3)?,
        decision_id: r.get(4)?,
        trace_id: r.get(5)?,
        execution_id: r.get(6)?,
        created_at: r.get(7)?,
    })
}

const LINEAGE_COLS: &str =
    "lineage_id, tenant, ledger_index, kind, decision_id, trace_id, execution_id, created_at";

impl Store {
    /// Indexes ledger entries (with the decisions and agent versions among them) in one transaction.
    /// Idempotent: re-indexing an entry already present is a no-op, so startup can replay the ledger tail safely.
    pub async fn index_entries(&self, rows: Vec<IndexRows>) -> Result<()> {
        // The index connection does not fsync its commits (see `Store`); the ledger is the durable record.
        self.write_index(move |c| index_tx(c, &rows)).await
    }

    /// A decision of a tenant.
    pub async fn get_decision(&self, tenant: &str, decision_id: &str) -> Result<Option<DecisionRecord>> {
        let (t, d) = (tenant.to_owned(), decision_id.to_owned());
        self.read(move |c| {
            c.query_row(
                "SELECT decision_id, tenant, agent_id, action, decision, lineage_id, ledger_index, created_at
                 FROM decisions WHERE tenant = ?1 AND decision_id = ?2",
                params![t, d],
                |r| {
                    Ok(DecisionRecord {
                        decision_id: r.get(0)?,
                        tenant: r.get(1)?,
                        agent_id: r.get(2)?,
                        action: r.get(3)?,
                        decision: r.get(4)?,
                        lineage_id: r.get(5)?,
                        ledger_index: r.get::<_, i64>(6)? as u64,
                        created_at: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(read_error)
        })
        .await
    }

    /// A lineage entry of a tenant.
    pub async fn get_lineage(&self, tenant: &str, lineage_id: &str) -> Result<Option<LineageRecord>> {
        let (t, l) = (tenant.to_owned(), lineage_id.to_owned());
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {LINEAGE_COLS} FROM lineage WHERE tenant = ?1 AND lineage_id = ?2"),
                params![t, l],
                lineage_from_row,
            )
            .optional()?)
        })
        .await
    }

    /// Lineage entries of a tenant selected by `key` (at most `limit`).
    pub async fn find_lineage(
        &self,
        tenant: &str,
        key: &LineageKey,
        limit: usize,
    ) -> Result<Vec<LineageRecord>> {
        let page = LineagePage {
            key,
            agent: None,
            after: None,
            limit,
        };
        self.find_lineage_page(tenant, page).await
    }

    /// One page of the lineage entries of a tenant, in ledger order (see [`LineagePage`]).
    pub async fn find_lineage_page(&self, tenant: &str, page: LineagePage<'_>) -> Result<Vec<LineageRecord>> {
        use rusqlite::types::Value as V;
        let LineagePage {
            key,
            agent,
            after,
            limit,
        } = page;
        let t = tenant.to_owned();
        let key = key.clone();
        let agent = agent.map(str::to_owned);
        // Ledger indices fit in i64 (the ledger counts entries); -1 is below every index.
        let after = after.map_or(-1, |a| i64::try_from(a).unwrap_or(i64::MAX));
        self.read(move |c| {
            // One indexed lookup per key (decision via its primary key, trace and execution via partial indexes);
            // `(?2 IS NULL OR ...)` forms would scan the table. The agent filter goes through the decision row
            // (its `agent_id`) and the agent's id or name (the `agents` table's two unique keys).
            const OF_AGENT: &str =
                "d.agent_id IN (SELECT agent_id FROM agents WHERE tenant = ?1 AND (agent_id = ?5 OR name = ?5))";
            let filter = if agent.is_some() {
                format!(" AND {OF_AGENT}")
            } else {
                String::new()
            };
            let (sql, k) = match key {
                // The decision's own entry (through its primary key) and the entries of the approval it opened
                // (through the partial index of non-decision entries that name a decision).
                LineageKey::Decision(d) => (
                    format!(
                        "SELECT lineage_id, tenant, ledger_index, kind, decision_id, trace_id, execution_id, created_at
                         FROM (
                           SELECT l.* FROM decisions d JOIN lineage l ON l.ledger_index = d.ledger_index
                           WHERE d.tenant = ?1 AND d.decision_id = ?2{filter}
                           UNION ALL
                           SELECT l.* FROM decisions d
                             JOIN lineage l ON l.tenant = d.tenant AND l.decision_id = d.decision_id
                                           AND l.kind <> 'decision'
                           WHERE d.tenant = ?1 AND d.decision_id = ?2{filter}
                         )
                         WHERE ledger_index > ?4 ORDER BY ledger_index LIMIT ?3"
                    ),
                    d,
                ),
                LineageKey::Trace(tr) => (lineage_by("trace_id", agent.is_some(), &filter), tr),
                LineageKey::Execution(e) => (lineage_by("execution_id", agent.is_some(), &filter), e),
            };
            let mut p = vec![
                V::Text(t),
                V::Text(k),
                V::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
                V::Integer(after),
            ];
            p.extend(agent.map(V::Text));
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(p), lineage_from_row)?;
            Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// The page query of lineage entries by one of their optional keys (`trace_id`, `execution_id`); joins the
/// decision row when `filter` needs its agent.
fn lineage_by(column: &str, join_decision: bool, filter: &str) -> String {
    let join = if join_decision {
        " JOIN decisions d ON d.decision_id = l.decision_id AND d.tenant = l.tenant"
    } else {
        ""
    };
    format!(
        "SELECT l.lineage_id, l.tenant, l.ledger_index, l.kind, l.decision_id, l.trace_id, l.execution_id,
                l.created_at
         FROM lineage l{join}
         WHERE l.tenant = ?1 AND l.{column} = ?2 AND l.ledger_index > ?4{filter}
         ORDER BY l.ledger_index LIMIT ?3"
    )
}

impl Store {
    /// Drops index rows for ledger entries at `size` and beyond (after `--ledger-repair=truncate` cut them),
    /// agent versions among them included.
    pub async fn truncate_index(&self, size: u64) -> Result<usize> {
        self.write_index(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut n = tx.execute("DELETE FROM lineage WHERE ledger_index >= ?1", [size as i64])?;
            n += tx.execute("DELETE FROM decisions WHERE ledger_index >= ?1", [size as i64])?;
            n += tx.execute("DELETE FROM approvals WHERE decision_index >= ?1", [size as i64])?;
            n += truncate_executions(&tx, size)?;
            // A state change that was cut goes back to pending (the expiry service resolves it again if its time
            // ran out): the entries that held earlier changes are not replayed by a truncation.
            tx.execute(
                "UPDATE approvals SET status = ?2, state = NULL, updated_index = decision_index
                 WHERE updated_index >= ?1",
                params![size as i64, super::ApprovalStatus::Pending],
            )?;
            n += tx.execute(
                "DELETE FROM agent_versions WHERE lineage_id IS NULL OR lineage_id NOT IN (SELECT lineage_id FROM lineage)",
                [],
            )?;
            tx.execute(
                "DELETE FROM agents WHERE NOT EXISTS
                 (SELECT 1 FROM agent_versions v WHERE v.tenant = agents.tenant AND v.agent_id = agents.agent_id)",
                [],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    /// Number of indexed ledger entries and the highest index (a contiguous index has count = max + 1).
    pub async fn lineage_count_and_max(&self) -> Result<(u64, Option<u64>)> {
        self.read(|c| {
            let (n, m): (i64, Option<i64>) =
                c.query_row("SELECT COUNT(*), MAX(ledger_index) FROM lineage", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            Ok((n as u64, m.map(|m| m as u64)))
        })
        .await
    }
}

fn index_tx(c: &mut rusqlite::Connection, rows: &[IndexRows]) -> Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut lineage = tx.prepare_cached(
            "INSERT OR IGNORE INTO lineage(lineage_id, tenant, ledger_index, kind, decision_id, trace_id,
                                           execution_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut decision = tx.prepare_cached(
            "INSERT OR IGNORE INTO decisions(decision_id, tenant, agent_id, action, decision, lineage_id,
                                             ledger_index, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut agent = tx.prepare_cached(
            "INSERT OR IGNORE INTO agents(tenant, agent_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut version = tx.prepare_cached(
            "INSERT OR IGNORE INTO agent_versions(tenant, agent_id, version, manifest, manifest_hash, signature,
                                                  key_id, registered_at, lineage_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for r in rows {
            let l = &r.lineage;
            lineage.execute(params![
                l.lineage_id,
                l.tenant,
                l.ledger_index as i64,
                l.kind,
                l.decision_id,
                l.trace_id,
                l.execution_id,
                l.created_at
            ])?;
            if let Some(d) = &r.decision {
                decision.execute(params![
                    d.decision_id,
                    d.tenant,
                    d.agent_id,
                    d.action,
                    d.decision,
                    d.lineage_id,
                    d.ledger_index as i64,
                    d.created_at
                ])?;
            }
            if let Some(a) = &r.agent {
                agent.execute(params![a.tenant, a.agent_id, a.name, a.registered_at])?;
                version.execute(params![
                    a.tenant,
                    a.agent_id,
                    a.version,
                    a.manifest,
                    a.manifest_hash,
                    a.signature,
                    a.key_id,
                    a.registered_at,
                    l.lineage_id
                ])?;
            }
            index_approvals(
                &tx,
                r.approval.as_ref(),
                r.approval_update.as_ref(),
                r.approval_used.as_ref(),
            )?;
            index_executions(&tx, r.execution.as_ref(), r.execution_update.as_ref())?;
        }
    }
    tx.commit()?;
    Ok(())
}
