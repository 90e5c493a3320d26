//! The recorded moves of executions: every transition is an `execution.transition` entry, recorded (durable and
//! indexed) under the execution's turn (`coord::Turns`) before anyone is answered, after the current status is read
//! from the index past its barrier (`Recorder::indexed`) and the move checked against the lifecycle. The store's
//! `executions` rows are derived from those entries, so a re-index rebuilds every run.

use super::lifecycle::{self, CancelStep};
use super::{ExecutionError, ExecutionStatus};
use crate::coord::Turns;
use crate::recorder::body::{ExecutionStart, ExecutionTransition, Principal};
use crate::recorder::{ExecutionChange, Record, Recorder};
use crate::store::ExecutionRecord;
use serde_json::Value;

/// What a move carries besides its status.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    /// Who asked; `None` when kla moves the run itself.
    pub by: Option<Principal>,
    pub reason: Option<String>,
    pub final_result: Option<Value>,
    pub error_log: Option<String>,
}

/// A new execution, as `Executions::start` checked it.
pub struct NewRun {
    pub tenant: String,
    pub execution_id: String,
    pub agent_id: String,
    pub agent_name: String,
    pub by: Principal,
    pub start: ExecutionStart,
}

/// The executions' recorded moves.
pub struct Runs {
    recorder: Recorder,
    /// One move of an execution at a time, by execution id.
    turns: Turns,
}

impl Runs {
    pub fn new(recorder: Recorder) -> Runs {
        Runs {
            recorder,
            turns: Turns::new(),
        }
    }

    /// The recorder (list reads pass its barrier).
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// An execution of `tenant` as the index holds it past the barrier.
    pub async fn load(&self, tenant: &str, id: &str) -> Result<Option<ExecutionRecord>, ExecutionError> {
        Ok(self.recorder.indexed().await.get_execution(tenant, id).await?)
    }

    /// Records a new execution as `PENDING`, then `QUEUED`. Once `PENDING` is durable the run exists: a failure to
    /// queue it is logged and the run stays `PENDING` (the answer is success, or a retry would start it twice).
    pub async fn create(&self, run: NewRun) -> Result<(), ExecutionError> {
        let _turn = self.turns.take(run.execution_id.as_str()).await;
        let pending = ExecutionTransition {
            execution_id: run.execution_id.clone(),
            agent_id: run.agent_id,
            agent_name: run.agent_name,
            from: None,
            status: ExecutionStatus::Pending,
            by: Some(run.by),
            start: Some(run.start),
            reason: None,
            final_result: None,
            error_log: None,
        };
        let queued = ExecutionTransition {
            from: Some(ExecutionStatus::Pending),
            status: ExecutionStatus::Queued,
            by: None,
            start: None,
            ..pending.clone()
        };
        self.record(&run.tenant, pending).await?;
        if let Err(e) = self.record(&run.tenant, queued).await {
            tracing::warn!(error = %e, execution_id = %run.execution_id, "execution recorded but not queued");
        }
        Ok(())
    }

    /// Moves an execution of `tenant` to `to`, if the lifecycle allows it from its current status; the record as
    /// it is after the move. For the runners (and tests): no caller's rights are checked here.
    pub async fn transition(
        &self,
        tenant: &str,
        id: &str,
        to: ExecutionStatus,
        detail: Detail,
    ) -> Result<ExecutionRecord, ExecutionError> {
        let _turn = self.turns.take(id).await;
        let rec = self.load(tenant, id).await?.ok_or_else(|| super::not_found(id))?;
        if !lifecycle::allowed(rec.status, to) {
            return Err(ExecutionError::Conflict(format!(
                "execution {id} is {} and cannot become {to}",
                rec.status
            )));
        }
        self.apply(tenant, &rec, to, detail).await
    }

    /// Cancels an execution of `tenant` that `visible` lets the caller see (else it is not found): `CANCELED` at
    /// once before it runs, `CANCEL_REQUESTED` while it runs, nothing when it is already canceled or being canceled,
    /// a conflict when it finished otherwise.
    pub async fn cancel(
        &self,
        tenant: &str,
        id: &str,
        by: Principal,
        visible: impl FnOnce(&ExecutionRecord) -> bool,
    ) -> Result<ExecutionRecord, ExecutionError> {
        let _turn = self.turns.take(id).await;
        let rec = self
            .load(tenant, id)
            .await?
            .filter(visible)
            .ok_or_else(|| super::not_found(id))?;
        match lifecycle::cancel_step(rec.status) {
            CancelStep::Nothing => Ok(rec),
            CancelStep::Finished => Err(ExecutionError::Conflict(format!(
                "execution {id} already finished ({})",
                rec.status
            ))),
            CancelStep::Move(to) => {
                let detail = Detail {
                    by: Some(by),
                    reason: Some("canceled by request".into()),
                    ..Detail::default()
                };
                self.apply(tenant, &rec, to, detail).await
            }
        }
    }

    /// Records the move of `rec` to `to` (the caller holds the run's turn and checked the move) and reads it back.
    async fn apply(
        &self,
        tenant: &str,
        rec: &ExecutionRecord,
        to: ExecutionStatus,
        detail: Detail,
    ) -> Result<ExecutionRecord, ExecutionError> {
        let body = ExecutionTransition {
            execution_id: rec.row.execution_id.clone(),
            agent_id: rec.row.agent_id.clone(),
            agent_name: rec.row.agent_name.clone(),
            from: Some(rec.status),
            status: to,
            by: detail.by,
            start: None,
            reason: detail.reason,
            final_result: detail.final_result,
            error_log: detail.error_log,
        };
        self.record(tenant, body).await?;
        self.load(tenant, &rec.row.execution_id)
            .await?
            .ok_or_else(|| ExecutionError::Damaged(rec.row.execution_id.clone()))
    }

    async fn record(&self, tenant: &str, body: ExecutionTransition) -> Result<(), ExecutionError> {
        let change = ExecutionChange {
            tenant: tenant.to_owned(),
            body,
        };
        self.recorder.record(Record::Execution(change)).await?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::recorder::body::Budgets;
    use crate::test_support::recorder::TempRecorder;
    use ExecutionStatus::{CancelRequested, Canceled, Completed, Queued, Running};

    fn principal() -> Principal {
        Principal {
            role: "admin".into(),
            subject: "ops".into(),
        }
    }

    async fn started(runs: &Runs, id: &str) {
        runs.create(NewRun {
            tenant: "acme".into(),
            execution_id: id.into(),
            agent_id: "agt_1".into(),
            agent_name: "claims".into(),
            by: principal(),
            start: ExecutionStart {
                input: serde_json::json!({"prompt": "x"}),
                budgets: Budgets::default(),
                priority: 0,
                retry_of: None,
            },
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn moves_follow_the_lifecycle_and_a_finished_run_refuses_cancel() {
        let t = TempRecorder::new();
        let runs = Runs::new(t.recorder.clone());
        started(&runs, "exec_01").await;
        assert_eq!(
            runs.load("acme", "exec_01").await.unwrap().unwrap().status,
            Queued
        );
        let done = Detail {
            final_result: Some(serde_json::json!({"answer": 42})),
            ..Detail::default()
        };
        // Not along the lifecycle: a conflict, nothing recorded.
        let skipped = runs.transition("acme", "exec_01", Completed, done.clone()).await;
        assert!(matches!(skipped, Err(ExecutionError::Conflict(_))), "{skipped:?}");
        runs.transition("acme", "exec_01", Running, Detail::default())
            .await
            .unwrap();
        let rec = runs.transition("acme", "exec_01", Completed, done).await.unwrap();
        assert_eq!(rec.status, Completed);
        assert_eq!(rec.final_result.as_deref(), Some(r#"{"answer":42}"#));
        assert!(rec.started_at.is_some() && rec.completed_at.is_some());
        let again = runs.cancel("acme", "exec_01", principal(), |_| true).await;
        assert!(matches!(again, Err(ExecutionError::Conflict(_))), "{again:?}");
        // Another tenant's run, or one the caller may not see, is not found.
        let other = runs.cancel("other", "exec_01", principal(), |_| true).await;
        assert!(matches!(other, Err(ExecutionError::NotFound(_))), "{other:?}");
        let hidden = runs.cancel("acme", "exec_01", principal(), |_| false).await;
        assert!(matches!(hidden, Err(ExecutionError::NotFound(_))), "{hidden:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancel_stops_a_queued_run_at_once_asks_a_running_one_and_repeats_as_a_no_op() {
        let t = TempRecorder::new();
        let runs = Runs::new(t.recorder.clone());
        started(&runs, "exec_01").await;
        let size = t.recorder.ledger().size();
        let rec = runs
            .cancel("acme", "exec_01", principal(), |_| true)
            .await
            .unwrap();
        assert_eq!(rec.status, Canceled);
        assert!(rec.completed_at.is_some());
        let rec = runs
            .cancel("acme", "exec_01", principal(), |_| true)
            .await
            .unwrap();
        assert_eq!(rec.status, Canceled);
        assert_eq!(
            t.recorder.ledger().size(),
            size + 1,
            "a repeated cancel records nothing"
        );

        started(&runs, "exec_02").await;
        runs.transition("acme", "exec_02", Running, Detail::default())
            .await
            .unwrap();
        let rec = runs
            .cancel("acme", "exec_02", principal(), |_| true)
            .await
            .unwrap();
        assert_eq!(rec.status, CancelRequested);
        assert!(rec.completed_at.is_none());
        let size = t.recorder.ledger().size();
        runs.cancel("acme", "exec_02", principal(), |_| true)
            .await
            .unwrap();
        assert_eq!(
            t.recorder.ledger().size(),
            size,
            "a repeated cancel records nothing"
        );
        let rec = runs
            .transition("acme", "exec_02", Canceled, Detail::default())
            .await
            .unwrap();
        assert_eq!(rec.status, Canceled);
    }
}
