//! Holding a `tools/call` that needs a person's approval.

use super::wire::{self, Era, Message};
use super::{Ctx, json_response};
use crate::decide::{ActionRequest, Decided};
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http::request::Parts;

/// Calls held for approval, by session and request id (so a handshake-era `notifications/cancelled` finds them).
pub(crate) struct McpHolds {}

impl McpHolds {
    pub(crate) fn new(_cfg: &super::ProxyConfig) -> McpHolds {
        McpHolds {}
    }

    /// A handshake-era client cancelled a request: the call held for it, if any, is dropped.
    pub(super) fn cancelled(&self, _headers: &http::HeaderMap, _msg: &Message) {}
}

/// The text of an answer for a call whose approval is still pending.
pub(super) fn pending_text(cx: &Ctx<'_>, tool: &str, d: &Decided) -> String {
    let approval = d.approval.as_ref().map(|a| a.approval_id.as_str()).unwrap_or("");
    format!(
        "kla is holding the call of tool '{tool}' for a person's approval ({approval}, {}); it was not forwarded. \
         Once it is approved, make the same call again and it goes through once. Decision {}.",
        cx.approval_url(approval),
        d.decision_id
    )
}

/// Answers a `require_approval` call.
pub(super) async fn held(
    cx: &Ctx<'_>,
    _parts: Parts,
    _bytes: Bytes,
    msg: Message,
    era: Era,
    _req: ActionRequest,
    d: Decided,
) -> Response {
    let tool = msg
        .params()
        .and_then(|p| p.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("");
    json_response(
        StatusCode::OK,
        &wire::tool_error(&msg.answer_id(), &pending_text(cx, tool, &d), era),
    )
}
