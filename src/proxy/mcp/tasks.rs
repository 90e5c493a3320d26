//! The tasks kla owns (the tasks extension, `io.modelcontextprotocol/tasks`, 2026-07-28): a `tools/call` held for
//! approval by a client that declared the extension is answered at once with a task, and the client polls
//! `tasks/get` until the call was forwarded (or refused). A task is followed only while its client polls it: one
//! not polled for [`FOLLOW_POLLS`] poll intervals is cancelled, and its call is never forwarded (a client that
//! rejected the task, or went away, must not have a call run on its behalf). Tasks live in memory, bounded in
//! number and age; their ids are unguessable and bound to the tenant and agent that made them. `tasks/*` for ids
//! kla did not make pass through to the upstream.

use super::wire;
use crate::auth::Caller;
use axum::response::Response;
use http::StatusCode;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::wire::TASK_PREFIX as PREFIX;
/// Tasks kept at once; a call that would need one more is answered without a task.
const MAX_TASKS: usize = 10_000;
/// Suggested polling interval.
const POLL_MS: u64 = 1000;
/// Poll intervals without a poll (`tasks/get`, `tasks/result`, `tasks/update`) after which a working task is no
/// longer followed: it is cancelled and its call never forwarded.
pub(super) const FOLLOW_POLLS: u32 = 5;

/// How long a working task may go unpolled.
fn follow_window() -> Duration {
    Duration::from_millis(POLL_MS) * FOLLOW_POLLS
}
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
    /// When its client last polled it (or created it).
    polled: Instant,
    ttl: Duration,
    cancel: CancellationToken,
}

impl Task {
    /// No client follows the task: it is cancelled, and the hold of its call dropped.
    fn abandon(&mut self) {
        self.cancel.cancel();
        self.status = Status::Cancelled;
        self.message = format!(
            "cancelled: no client polled the task for {} s, so its call was not forwarded",
            follow_window().as_secs()
        );
        self.updated_at = crate::time::now_rfc3339();
    }

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
            polled: Instant::now(),
            ttl: ttl + KEEP_AFTER,
            cancel: cancel.clone(),
        };
        let mut created = task.wire(&id);
        created.insert("resultType".into(), "task".into());
        tasks.insert(id.clone(), task);
        Some((id, Value::Object(created), cancel))
    }

    /// When the working task `id` stops being followed unless polled again before; `None`: it is not working.
    pub(super) fn follow_deadline(&self, id: &str) -> Option<Instant> {
        let tasks = self.tasks.lock();
        let t = tasks.get(id).filter(|t| t.status == Status::Working)?;
        Some(t.polled + follow_window())
    }

    /// Whether the working task `id` is still followed (polled within the window). One that is not is cancelled
    /// here (its call is never forwarded); `false` too for a task that is no longer working.
    pub(super) fn still_followed(&self, id: &str) -> bool {
        let mut tasks = self.tasks.lock();
        let Some(t) = tasks.get_mut(id).filter(|t| t.status == Status::Working) else {
            return false;
        };
        if t.polled.elapsed() < follow_window() {
            return true;
        }
        t.abandon();
        false
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
            return crate::proxy::respond::json(
                StatusCode::OK,
                &wire::error(
                    &id,
                    wire::INVALID_PARAMS,
                    "Failed to retrieve task: Task not found",
                    None,
                ),
            );
        };
        if t.status == Status::Working && msg.method() != Some("tasks/cancel") {
            // Polled: its client still follows it (unless the window had already passed).
            if t.polled.elapsed() < follow_window() {
                t.polled = Instant::now();
            } else {
                t.abandon();
            }
        }
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
        crate::proxy::respond::json(StatusCode::OK, &answer)
    }
}
