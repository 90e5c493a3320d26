//! Holding a `tools/call` that needs a person's approval, in the two ways MCP clients can wait (both on top of
//! the proxy's shared hold loop, `crate::proxy::hold`, which re-decides the call once approved and lets one call through per
//! approval):
//!
//! - **a task** (the client declared the tasks extension on the request, 2026-07-28): answered at once with a task
//!   kla owns; the hold runs in a spawned task, forwards the call once approved and keeps its result for
//!   `tasks/get`. `tasks/cancel` drops the hold, and so does a task its client stops polling (`super::tasks`):
//!   a call nobody follows is never forwarded.
//! - **an SSE stream** (the client accepts `text/event-stream`): the answer streams keep-alive comments (and
//!   `notifications/progress` when the request has a `progressToken`) up to the hold budget, then the forwarded
//!   call's own answer, or an `isError` result naming the approval and its URL. A client that goes away (or, in the
//!   handshake era, sends `notifications/cancelled` for the request) has cancelled: the hold is dropped and nothing
//!   is forwarded for it.
//!
//! Anyone else gets the `isError` answer naming the approval at once; the same call made again once approved goes
//! through once.

use super::Ctx;
use super::answer::{MAX_REWRITTEN, answer_of};
use super::tasks::TaskEnd;
use super::wire::{self, Era, Message};
use crate::decide::ActionRequest;
use crate::proxy::hold::{HoldEnd, Refusal};
use crate::proxy::respond::json as json_response;
use crate::recorder::ApprovalTerms;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http::header;
use http::request::Parts;
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Between two keep-alives of a held SSE answer (well under the idle timeouts of clients and intermediaries).
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Held calls at once, per proxy, that a handshake-era `notifications/cancelled` can find.
const MAX_TRACKED: usize = 10_000;

/// Calls held on an SSE answer, by session and request id, so a handshake-era `notifications/cancelled` finds them.
pub(crate) struct McpHolds {
    held: Mutex<HashMap<(String, String), CancellationToken>>,
}

/// Removes a held call's entry when its hold ends, however it ends.
struct Tracked<'a> {
    holds: &'a McpHolds,
    key: Option<(String, String)>,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.holds.held.lock().remove(&k);
        }
    }
}

fn session_of(headers: &http::HeaderMap) -> String {
    headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

impl McpHolds {
    /// No call held yet.
    pub(crate) fn new(_cfg: &crate::proxy::ProxyConfig) -> McpHolds {
        McpHolds {
            held: Mutex::new(HashMap::new()),
        }
    }

    fn track(&self, headers: &http::HeaderMap, id: &Value) -> (Tracked<'_>, CancellationToken) {
        let token = CancellationToken::new();
        let key = (session_of(headers), id.to_string());
        let mut held = self.held.lock();
        if held.len() >= MAX_TRACKED {
            // Still held (and still cancelled by a disconnect), only not findable by a cancel notification.
            return (
                Tracked {
                    holds: self,
                    key: None,
                },
                token,
            );
        }
        held.insert(key.clone(), token.clone());
        (
            Tracked {
                holds: self,
                key: Some(key),
            },
            token,
        )
    }

    /// A handshake-era client cancelled a request: the call held for it in the same session, if any, is dropped.
    pub(super) fn cancelled(&self, headers: &http::HeaderMap, msg: &Message) {
        let Some(id) = msg.params().and_then(|p| p.get("requestId")) else {
            return;
        };
        let key = (session_of(headers), id.to_string());
        if let Some(t) = self.held.lock().get(&key) {
            t.cancel();
        }
    }
}

/// The text of an answer for a call whose approval is still pending.
pub(super) fn pending(cx: &Ctx, tool: &str, approval: &str, expires: &str, decision_id: &str) -> String {
    format!(
        "kla is holding the call of tool '{tool}' for a person's approval: approval {approval} at {} (expires \
         {expires}). It was not forwarded. Make the same call again once it is approved and it goes through once. \
         Decision {decision_id}.",
        cx.approval_url(approval)
    )
}

/// The text of an answer for a held call that was refused.
pub(super) fn refused_text(tool: &str, r: &Refusal) -> String {
    let codes = if r.reason_codes.is_empty() {
        String::new()
    } else {
        format!(" Reason codes {}.", r.reason_codes.join(", "))
    };
    format!(
        "kla did not forward the call of tool '{tool}': {}.{codes} Decision {}.",
        r.message, r.decision_id
    )
}

/// The final JSON-RPC answer (for `id`) of an upstream response: its JSON body, or the answer event of its SSE
/// stream.
async fn final_answer(resp: http::Response<hyper::body::Incoming>, id: &Value) -> Result<Value, String> {
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let status = resp.status();
    let mut body = resp.into_body();
    if ctype.starts_with("text/event-stream") {
        let mut split = wire::SseSplitter::default();
        let mut first = true;
        let mut done = false;
        while !done {
            let events = match body.frame().await {
                Some(frame) => {
                    let frame = frame.map_err(|e| format!("reading the upstream's stream: {e}"))?;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    split
                        .push(&data)
                        .map_err(|n| format!("the upstream sent an event over {n} bytes"))?
                }
                None => {
                    done = true;
                    split.finish().0
                }
            };
            for ev in events {
                let Some(v) = wire::read_event(&ev, std::mem::take(&mut first))
                    .data
                    .and_then(|d| serde_json::from_str::<Value>(&d).ok())
                else {
                    continue;
                };
                if v.get("id") == Some(id) && (v.get("result").is_some() || v.get("error").is_some()) {
                    return Ok(v);
                }
            }
        }
        return Err("the upstream's stream ended without an answer".into());
    }
    let bytes = http_body_util::Limited::new(body, MAX_REWRITTEN)
        .collect()
        .await
        .map_err(|e| format!("reading the upstream's answer: {e}"))?
        .to_bytes();
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(|v| v.get("result").is_some() || v.get("error").is_some())
        .ok_or_else(|| format!("the upstream answered HTTP {status} without a JSON-RPC answer"))
}

/// How a client waits for a held call, when it can.
pub(super) enum Wait {
    /// A task kla owns (the client declared the tasks extension, 2026-07-28).
    Task,
    /// A held SSE answer (the client accepts `text/event-stream` and the hold budget is not zero).
    Stream,
}

/// A held `tools/call`, all a spawned hold needs.
pub(super) struct Held {
    pub parts: Parts,
    pub bytes: Bytes,
    pub msg: Message,
    pub era: Era,
    pub req: ActionRequest,
    /// The held call's decision (`require_approval`).
    pub decision_id: String,
    pub terms: ApprovalTerms,
    /// The tool as the client named it.
    pub tool: String,
}

impl Wait {
    /// How the client of `msg` can wait; `None`: it is answered as pending at once.
    pub(super) fn of(cx: &Ctx, parts: &Parts, msg: &Message, era: Era) -> Option<Wait> {
        let accepts_sse = parts
            .headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains("text/event-stream"));
        if msg.declares_tasks() && era == Era::Stateless {
            Some(Wait::Task)
        } else if accepts_sse && !cx.p.hold_budget.is_zero() {
            Some(Wait::Stream)
        } else {
            None
        }
    }

    /// The answer that starts the wait; the hold runs in a spawned task.
    pub(super) fn start(self, cx: &Ctx, h: Held) -> Response {
        match self {
            Wait::Task => as_task(cx, h),
            Wait::Stream => on_stream(cx, h),
        }
    }
}

/// The request body to forward for a task kla owns: the tasks extension taken out of the client's declared
/// capabilities, so the upstream answers the call itself rather than with a task of its own.
fn without_tasks(bytes: &Bytes) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(bytes) else {
        return bytes.clone();
    };
    let ext = v
        .pointer_mut("/params/_meta/io.modelcontextprotocol~1clientCapabilities/extensions")
        .and_then(Value::as_object_mut);
    let removed = ext.is_some_and(|e| e.remove(wire::TASKS_EXTENSION).is_some());
    if removed {
        Bytes::from(v.to_string())
    } else {
        bytes.clone()
    }
}

fn as_task(cx: &Ctx, h: Held) -> Response {
    let Held {
        parts,
        bytes,
        msg,
        req,
        decision_id,
        terms,
        tool,
        ..
    } = h;
    let id = msg.answer_id();
    let ttl = Duration::from_secs(terms.timeout_seconds);
    let note = format!(
        "waiting for a person's approval: {} at {}; poll tasks/get at least every {} s or the task is cancelled \
         and its call not forwarded",
        terms.approval_id,
        cx.approval_url(&terms.approval_id),
        super::tasks::FOLLOW_POLLS
    );
    let Some((task_id, created, cancel)) = cx.p.mcp.tasks.create(&cx.caller, &cx.agent, note, ttl) else {
        // No room for one more task: the client is told to come back, as without the extension.
        let text = pending(cx, &tool, &terms.approval_id, &terms.expires_at, &decision_id);
        return json_response(StatusCode::OK, &wire::tool_error(&id, &text, Era::Stateless));
    };
    let cx = cx.clone();
    let body = without_tasks(&bytes);
    let mut parts = parts;
    // The body may have changed; its length is the new body's.
    parts.headers.remove(header::CONTENT_LENGTH);
    let answer_id = id.clone();
    tokio::spawn(async move {
        // The hold may take as long as the approval may: its expiry ends it in any case.
        let budget = ttl + Duration::from_secs(5);
        let hold = cx.p.hold(&cx.caller, req, &decision_id, &terms, budget);
        tokio::pin!(hold);
        let tasks = &cx.p.mcp.tasks;
        // Followed only while polled: at the end of each window without a poll the hold is dropped (the approval
        // stays unused for the agent's retry), and nothing is forwarded for a client that is not there.
        let end = loop {
            let Some(deadline) = tasks.follow_deadline(&task_id) else {
                return;
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                end = &mut hold => break end,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if !tasks.still_followed(&task_id) {
                        tracing::info!(task = %task_id, "mcp: a task nobody polls was cancelled; its call is not forwarded");
                        return;
                    }
                }
            }
        };
        let done = match end {
            HoldEnd::Go(d) => {
                // The approval came in; a client that stopped following meanwhile gets nothing run for it.
                if !tasks.still_followed(&task_id) {
                    tracing::info!(task = %task_id, "mcp: an approved task nobody polls was cancelled; not forwarded");
                    return;
                }
                tasks.progress(
                    &task_id,
                    format!("approved; forwarded as decision {}", d.decision_id),
                );
                let sent = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = cx.send(parts, Body::from(body), Some(&id)) => r,
                };
                match sent {
                    Ok(resp) => match final_answer(resp, &id).await {
                        Ok(a) => match (a.get("result"), a.get("error")) {
                            (Some(r), _) => TaskEnd::Completed(r.clone()),
                            (_, Some(e)) => TaskEnd::Failed(e.clone()),
                            _ => TaskEnd::Failed(json!({"code": -32603, "message": "no answer"})),
                        },
                        Err(e) => TaskEnd::Failed(json!({"code": -32002, "message": e})),
                    },
                    Err(r) => match answer_of(*r).await.and_then(|a| a.get("error").cloned()) {
                        Some(e) => TaskEnd::Failed(e),
                        None => TaskEnd::Failed(json!({"code": -32002, "message": "the upstream failed"})),
                    },
                }
            }
            HoldEnd::Refused(r) => TaskEnd::Completed(tool_result(&refused_text(&tool, &r))),
            HoldEnd::Pending {
                approval_id,
                expires_at,
            } => TaskEnd::Completed(tool_result(&pending(
                &cx,
                &tool,
                &approval_id,
                &expires_at,
                &decision_id,
            ))),
        };
        tasks.finish(&task_id, done);
    });
    json_response(StatusCode::OK, &wire::result(&answer_id, created))
}

/// A `CallToolResult` that failed, as a task's result.
fn tool_result(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true, "resultType": "complete"})
}

fn on_stream(cx: &Ctx, h: Held) -> Response {
    let Held {
        parts,
        bytes,
        msg,
        era,
        req,
        decision_id,
        terms,
        tool,
    } = h;
    let id = msg.answer_id();
    let progress = msg.progress_token().cloned();
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let cx = cx.clone();
    tokio::spawn(async move {
        let (_tracked, cancelled) = cx.p.mcp.holds.track(&parts.headers, &id);
        let note = format!(
            "waiting for a person's approval: {} at {}",
            terms.approval_id,
            cx.approval_url(&terms.approval_id)
        );
        let hold = cx.p.hold(&cx.caller, req, &decision_id, &terms, cx.p.hold_budget);
        tokio::pin!(hold);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        let mut n = 0u64;
        let progress_event = |n: u64| {
            progress.as_ref().map(|t| {
                wire::sse_event(&json!({"jsonrpc": "2.0", "method": "notifications/progress",
                    "params": {"progressToken": t, "progress": n, "message": note}}))
            })
        };
        // The first event goes out at once, so the client knows the call is held, not lost.
        let first = progress_event(0).unwrap_or_else(|| wire::sse_comment("held for approval"));
        if tx.send(first).await.is_err() {
            return;
        }
        // Dropping `hold` (any return below before it ends) cancels it: nothing is forwarded for a client that left.
        let end = loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = cancelled.cancelled() => return,
                end = &mut hold => break end,
                _ = tick.tick() => {
                    n += 1;
                    let ev = progress_event(n).unwrap_or_else(|| wire::sse_comment("keep-alive"));
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        };
        let answer = match end {
            HoldEnd::Go(_) => {
                if tx.is_closed() || cancelled.is_cancelled() {
                    return;
                }
                match cx.send(parts, Body::from(bytes), Some(&id)).await {
                    Ok(resp) => match final_answer(resp, &id).await {
                        Ok(a) => a,
                        Err(e) => wire::error(&id, -32002, &e, None),
                    },
                    Err(r) => answer_of(*r)
                        .await
                        .unwrap_or_else(|| wire::error(&id, -32002, "the upstream failed", None)),
                }
            }
            HoldEnd::Refused(r) => wire::tool_error(&id, &refused_text(&tool, &r), era),
            HoldEnd::Pending {
                approval_id,
                expires_at,
            } => wire::tool_error(
                &id,
                &pending(&cx, &tool, &approval_id, &expires_at, &decision_id),
                era,
            ),
        };
        let _ = tx.send(wire::sse_event(&answer)).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    crate::server::sse::response(Body::from_stream(stream))
}
