//! Executions: governed agent runs. Owns the lifecycle ([`ExecutionStatus`] and its
//! allowed moves in `lifecycle.rs`), the recorded moves (`runs.rs`: every transition an `execution.transition`
//! ledger entry, durable and indexed before anyone is answered, one move of a run at a time by its turn), and the
//! rules of the callers' operations: who may start, read and cancel which run, and what a start must carry.
//!
//! A start names an agent of the caller's tenant (a token bound to one agent starts only that agent's runs), an
//! `input` object (redacted like a decision's context before it is recorded), optional budgets and a priority; it
//! is recorded `PENDING` then `QUEUED`. Nothing runs a queued execution yet: the runners, the queue's limits and
//! budget enforcement on tool calls come next, and move runs on through [`Executions::transition`]. Reads go through
//! the index past its barrier; the store's `executions` rows are derived from the entries and rebuilt by a re-index.
//! Knows no HTTP and no SQL.

mod lifecycle;
mod runs;

/// An execution's status. Defined beside the store's rows, which (with the recorder that fills them) sit below
/// this module; this is the name the rest of kla uses.
pub use crate::store::ExecutionStatus;
pub use lifecycle::{CancelStep, allowed, cancel_step};
pub use runs::Detail;

use crate::auth::{AuthError, Caller, Role};
use crate::error::{Class, Classify};
use crate::recorder::body::{Budgets, ExecutionStart, Principal};
use crate::recorder::{RecordError, Recorder};
use crate::redact::{Redaction, Report};
use crate::registry::{Agents, RegistryError};
use crate::store::{ExecutionFilter, ExecutionRecord, StoreError};
use runs::{NewRun, Runs};
use serde_json::Value;
use std::sync::Arc;

/// The longest page of a list.
pub const MAX_PAGE: usize = 1000;
/// The roles that read a tenant's executions.
const READERS: &[Role] = &[Role::Agent, Role::Approver, Role::Admin, Role::Auditor];
/// The roles that start and cancel executions.
const RUNNERS: &[Role] = &[Role::Agent, Role::Admin];

/// Why an execution could not be started, read or moved.
#[derive(Debug, thiserror::Error)]
pub enum ExecutionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// The run's status does not allow what was asked (a finished run canceled, a move off the lifecycle).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A run recorded a moment ago that the index does not hold.
    #[error("execution {0} is missing from the index")]
    Damaged(String),
}

impl Classify for ExecutionError {
    fn class(&self) -> Class {
        match self {
            ExecutionError::Invalid(_) => Class::Invalid,
            ExecutionError::NotFound(_) => Class::NotFound,
            ExecutionError::Conflict(_) => Class::Conflict,
            ExecutionError::Auth(e) => e.class(),
            ExecutionError::Registry(e) => e.class(),
            ExecutionError::Record(e) => e.class(),
            ExecutionError::Store(e) => e.class(),
            ExecutionError::Damaged(_) => Class::Internal,
        }
    }
}

/// What a caller asks to start.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub agent_id: String,
    /// Must be a JSON object.
    pub input: Value,
    pub budgets: Budgets,
    pub priority: i64,
}

/// One execution as the callers see it.
#[derive(Debug, Clone)]
pub struct Execution {
    pub record: ExecutionRecord,
    /// The final result, parsed back from the index.
    pub final_result: Option<Value>,
}

impl Execution {
    fn of(record: ExecutionRecord) -> Execution {
        let final_result = record
            .final_result
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        Execution { record, final_result }
    }
}

/// What a list asks for.
#[derive(Debug, Default)]
pub struct ListQuery {
    /// As the caller wrote it; checked against [`ExecutionStatus`]'s spellings.
    pub status: Option<String>,
    pub agent_id: Option<String>,
    pub limit: usize,
    /// The ledger index the previous page ended at, as the API decoded it from its cursor.
    pub after: Option<String>,
}

/// One page of executions, oldest first.
pub struct Page {
    pub executions: Vec<Execution>,
    /// Pass back (as the API's cursor) for the next page; `None` on the last.
    pub next: Option<String>,
}

/// The executions of every tenant. Built once by `app`, given to the API.
pub struct Executions {
    runs: Runs,
    agents: Arc<Agents>,
    /// An input passes the tenant's redactor before it is recorded.
    redaction: Arc<Redaction>,
}

impl Executions {
    pub fn new(recorder: Recorder, agents: Arc<Agents>, redaction: Arc<Redaction>) -> Executions {
        Executions {
            runs: Runs::new(recorder),
            agents,
            redaction,
        }
    }

    /// Starts an execution: checked, recorded `PENDING` then `QUEUED`; its id once `PENDING` is durable.
    pub async fn start(&self, caller: &Caller, req: StartRequest) -> Result<String, ExecutionError> {
        caller.require(RUNNERS)?;
        if !req.input.is_object() {
            return Err(ExecutionError::Invalid(
                "field 'input' must be a JSON object".into(),
            ));
        }
        check_budgets(&req.budgets)?;
        let agent = self.agents.get(&caller.tenant, &req.agent_id).await?;
        caller.require_agent(Some(&agent.id), &agent.name)?;
        let input = self
            .redaction
            .redactor(&caller.tenant)
            .value_report(&req.input, &mut Report::default())
            .into_owned();
        let execution_id = crate::names::ids::new_execution_id();
        self.runs
            .create(NewRun {
                tenant: caller.tenant.to_string(),
                execution_id: execution_id.clone(),
                agent_id: agent.id.clone(),
                agent_name: agent.name.clone(),
                by: principal(caller),
                start: ExecutionStart {
                    input,
                    budgets: req.budgets,
                    priority: req.priority,
                    retry_of: None,
                },
            })
            .await?;
        Ok(execution_id)
    }

    /// An execution of the caller's tenant (a token bound to one agent reads only that agent's; anything else is
    /// not found).
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Execution, ExecutionError> {
        caller.require(READERS)?;
        let rec = self
            .runs
            .load(&caller.tenant, id)
            .await?
            .filter(|r| visible(caller, r))
            .ok_or_else(|| not_found(id))?;
        Ok(Execution::of(rec))
    }

    /// One page of the caller's tenant's executions, oldest first.
    pub async fn list(&self, caller: &Caller, q: ListQuery) -> Result<Page, ExecutionError> {
        caller.require(READERS)?;
        let status = match q.status.as_deref() {
            None => None,
            Some(s) => Some(ExecutionStatus::parse(s).ok_or_else(|| {
                let all: Vec<&str> = ExecutionStatus::ALL.iter().map(|s| s.as_str()).collect();
                ExecutionError::Invalid(format!("status must be one of {}", all.join(", ")))
            })?),
        };
        let after = match &q.after {
            None => None,
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| ExecutionError::Invalid("cursor is not one this server gave".into()))?,
            ),
        };
        // A bound token lists its agent's runs only; every row of the filter is then of that one agent, so the
        // list's own agent filter keeps either all of a page or none of it.
        let bound = caller.principal.agent.as_deref().map(str::to_owned);
        let filter = ExecutionFilter {
            status,
            agent: bound.clone().or_else(|| q.agent_id.clone()),
            after,
        };
        let limit = q.limit.clamp(1, MAX_PAGE);
        let rows = self
            .runs
            .recorder()
            .indexed()
            .await
            .list_executions(&caller.tenant, &filter, limit + 1)
            .await?;
        let more = rows.len() > limit;
        let mut last = None;
        let mut executions = Vec::with_capacity(rows.len().min(limit));
        for rec in rows.into_iter().take(limit) {
            last = Some(rec.row.created_index);
            let asked = match (&bound, &q.agent_id) {
                (Some(_), Some(a)) => rec.row.agent_id == *a || rec.row.agent_name.eq_ignore_ascii_case(a),
                _ => true,
            };
            if asked && visible(caller, &rec) {
                executions.push(Execution::of(rec));
            }
        }
        Ok(Page {
            executions,
            next: if more { last.map(|l| l.to_string()) } else { None },
        })
    }

    /// Cancels an execution of the caller's tenant: `CANCELED` at once while it is pending or queued,
    /// `CANCEL_REQUESTED` while it runs, unchanged when already canceled (a repeated cancel is a no-op); a
    /// conflict when it finished otherwise.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<Execution, ExecutionError> {
        caller.require(RUNNERS)?;
        let rec = self
            .runs
            .cancel(&caller.tenant, id, principal(caller), |r| visible(caller, r))
            .await?;
        Ok(Execution::of(rec))
    }

    /// Moves an execution on along the lifecycle, for the runners that come next (and tests): no caller's rights
    /// are checked here.
    #[allow(dead_code)] // The runners call it; until they land only tests do.
    pub(crate) async fn transition(
        &self,
        tenant: &str,
        id: &str,
        to: ExecutionStatus,
        detail: Detail,
    ) -> Result<Execution, ExecutionError> {
        Ok(Execution::of(self.runs.transition(tenant, id, to, detail).await?))
    }
}

/// Whether `caller` may see `rec` (of its tenant already): a bound token sees its agent's runs only.
fn visible(caller: &Caller, rec: &ExecutionRecord) -> bool {
    caller.may_read(&rec.row.tenant, Some((&rec.row.agent_id, &rec.row.agent_name)))
}

fn not_found(id: &str) -> ExecutionError {
    // The id is echoed only in its exact form (it may be anything a caller typed).
    match crate::names::ids::execution_id(id) {
        Ok(()) => ExecutionError::NotFound(format!("execution {id} not found")),
        Err(_) => ExecutionError::NotFound("no such execution".into()),
    }
}

/// Who asked, as the ledger records it.
fn principal(caller: &Caller) -> Principal {
    Principal {
        role: caller.principal.role.as_str().to_owned(),
        subject: caller.principal.subject.to_string(),
    }
}

/// Budgets are limits: `maxSteps` at least 1, `maxCostUsd` a positive finite number.
fn check_budgets(b: &Budgets) -> Result<(), ExecutionError> {
    if b.max_steps == Some(0) {
        return Err(ExecutionError::Invalid(
            "field 'budgets.maxSteps' must be at least 1".into(),
        ));
    }
    if let Some(c) = b.max_cost_usd
        && !(c.is_finite() && c > 0.0)
    {
        return Err(ExecutionError::Invalid(
            "field 'budgets.maxCostUsd' must be a positive number".into(),
        ));
    }
    Ok(())
}
