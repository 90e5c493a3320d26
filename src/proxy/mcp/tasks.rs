//! The tasks kla owns (the tasks extension, `io.modelcontextprotocol/tasks`, 2026-07-28): a `tools/call` held for
//! approval by a client that declared the extension is answered at once with a task, and the client polls
//! `tasks/get` until the call was forwarded (or refused). Tasks live in memory, bounded in number and age; their
//! ids are unguessable and bound to the tenant and agent that made them. `tasks/*` for ids kla did not make pass
//! through to the upstream.

use super::wire;
use crate::auth::Caller;
use axum::response::Response;
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Every task id kla makes starts with this, so `tasks/*` for other ids go upstream.
const PREFIX: &str = "kla-task-";
/// Tasks kept at once; a call that would need one more is answered without a task.
const MAX_TASKS: usize = 10_000;
/// Suggested polling interval.
const POLL_MS: u64 = 1000;
/// How long a task is kept after its approval could have expired.
const KEEP_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Working,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Working => "working",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

struct Task {
    tenant: String,
    agent: String,
    status: Status,
    message: String,
    created_at: String,
    updated_at: String,
    /// `completed`: the call's result; `failed`: its JSON-RPC error.
    payload: Option<Value>,
    created: Instant,
    ttl: Duration,
    cancel: CancellationToken,
}

impl Task {
    fn wire(&self, id: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("taskId".into(), id.into());
        m.insert("status".into(), self.status.as_str().into());
        m.insert("statusMessage".into(), self.message.clone().into());
        m.insert("createdAt".into(), self.created_at.clone().into());
        m.insert("lastUpdatedAt".into(), self.updated_at.clone().into());
        m.insert(
            "ttlMs".into(),
            u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).into(),
        );
        m.insert("pollIntervalMs".into(), POLL_MS.into());
        match (self.status, &self.payload) {
            (Status::Completed, Some(r)) => {
                m.insert("result".into(), r.clone());
            }
            (Status::Failed, Some(e)) => {
                m.insert("error".into(), e.clone());
            }
            _ => {}
        }
        m
    }
}

/// How a task's call ended.
pub(super) enum TaskEnd {
    /// The call's result (forwarded, or kla's own `isError` refusal).
    Completed(Value),
    /// The JSON-RPC error the call ended with.
    Failed(Value),
}

/// kla's own tasks.
#[derive(Default)]
pub(super) struct Tasks {
    tasks: Mutex<HashMap<String, Task>>,
}

/// Whether `msg` (a `tasks/*` request) names a task kla made.
pub(super) fn is_ours(msg: &wire::Message) -> bool {
    msg.params()
        .and_then(|p| p.get("taskId"))
        .and_then(Value::as_str)
        .is_some_and(|t| t.starts_with(PREFIX))
}

impl Tasks {
    /// Makes a working task for `caller`'s `agent`, kept `ttl`; returns its id, the `CreateTaskResult` and the token
    /// that `tasks/cancel` fires. `None`: too many tasks.
    pub(super) fn create(
        &self,
        caller: &Caller,
        agent: &str,
        message: String,
        ttl: Duration,
    ) -> Option<(String, Value, CancellationToken)> {
        let mut tasks = self.tasks.lock();
        tasks.retain(|_, t| t.created.elapsed() < t.ttl);
        if tasks.len() >= MAX_TASKS {
            return None;
        }
        let id = format!("{PREFIX}{}", hex::encode(rand::random::<[u8; 16]>()));
        let now = crate::time::now_rfc3339();
        let cancel = CancellationToken::new();
        let task = Task {
            tenant: caller.tenant.to_string(),
            agent: agent.to_owned(),
            status: Status::Working,
            message,
            created_at: now.clone(),
            updated_at: now,
            payload: None,
            created: Instant::now(),
            ttl: ttl + KEEP_AFTER,
            cancel: cancel.clone(),
        };
        let mut created = task.wire(&id);
        created.insert("resultType".into(), "task".into());
        tasks.insert(id.clone(), task);
        Some((id, Value::Object(created), cancel))
    }

    /// Records how a task's call ended (unless it was cancelled first).
    pub(super) fn finish(&self, id: &str, end: TaskEnd) {
        let mut tasks = self.tasks.lock();
        let Some(t) = tasks.get_mut(id) else {
            return;
        };
        if t.status != Status::Working {
            return;
        }
        let (status, payload, message) = match end {
            TaskEnd::Completed(r) => (Status::Completed, r, "the call finished"),
            TaskEnd::Failed(e) => (Status::Failed, e, "the call failed"),
        };
        t.status = status;
        t.payload = Some(payload);
        t.message = message.into();
        t.updated_at = crate::time::now_rfc3339();
    }

    /// Updates a working task's status message.
    pub(super) fn progress(&self, id: &str, message: String) {
        if let Some(t) = self.tasks.lock().get_mut(id)
            && t.status == Status::Working
        {
            t.message = message;
            t.updated_at = crate::time::now_rfc3339();
        }
    }

    /// Answers `tasks/get`, `tasks/cancel`, `tasks/update` or `tasks/result` for one of kla's tasks, for the
    /// tenant and agent that made it only (anyone else is told it does not exist).
    pub(super) fn answer(&self, caller: &Caller, agent: &str, msg: &wire::Message) -> Response {
        let id = msg.answer_id();
        let task_id = msg
            .params()
            .and_then(|p| p.get("taskId"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut tasks = self.tasks.lock();
        let found = tasks
            .get_mut(task_id)
            .filter(|t| t.tenant == *caller.tenant && t.agent == agent && t.created.elapsed() < t.ttl);
        let Some(t) = found else {
            return super::json_response(
                StatusCode::OK,
                &wire::error(
                    &id,
                    wire::INVALID_PARAMS,
                    "Failed to retrieve task: Task not found",
                    None,
                ),
            );
        };
        let answer = match msg.method() {
            Some("tasks/get") => {
                let mut m = t.wire(task_id);
                m.insert("resultType".into(), "complete".into());
                wire::result(&id, Value::Object(m))
            }
            Some("tasks/cancel") => {
                if t.status == Status::Working {
                    // The hold is dropped: a call not yet forwarded never is.
                    t.cancel.cancel();
                    t.status = Status::Cancelled;
                    t.message = "cancelled by the client".into();
                    t.updated_at = crate::time::now_rfc3339();
                }
                wire::result(&id, json!({"resultType": "complete"}))
            }
            // kla's tasks never ask for input: an update has nothing to answer.
            Some("tasks/update") => wire::result(&id, json!({"resultType": "complete"})),
            _ => match (t.status, &t.payload) {
                (Status::Completed, Some(r)) => wire::result(&id, r.clone()),
                (Status::Failed, Some(Value::Object(e))) => json!({"jsonrpc": "2.0", "id": id, "error": e}),
                _ => wire::error(
                    &id,
                    wire::INVALID_PARAMS,
                    &format!("task {task_id} is {}, it has no result", t.status.as_str()),
                    None,
                ),
            },
        };
        super::json_response(StatusCode::OK, &answer)
    }
}
