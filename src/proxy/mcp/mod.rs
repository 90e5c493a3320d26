//! MCP routes (`kind: mcp`): an MCP server over Streamable HTTP behind the proxy, in both protocol eras (the
//! handshake era up to 2025-11-25 and the stateless 2026-07-28 revision). kla reads each POST body, refuses what is
//! not JSON-RPC or whose routing headers disagree with it, decides every `tools/call` (action = the tool's name,
//! context = its `arguments`) through the governed action, filters `tools/list`, answers `tasks/*` for the tasks it
//! owns, and passes everything else through untouched (GET streams, DELETE, `Mcp-Session-Id`, `Mcp-Param-*`).
//!
//! Owns the MCP wire ([`wire`]), kla's own tasks ([`tasks`]) and holding calls for approval ([`hold`]); reuses
//! the plain proxy's identity, header and URL helpers (`forward.rs`) and never changes them. No SQL, no ledger
//! writes of its own: every decision is `decide`'s.

mod hold;
mod tasks;
pub(crate) mod wire;

use super::forward::{
    Proxy, Table, caller, forwarded_head, resolve_agent, strip_hop_by_hop, trace_id, upstream_reason,
    upstream_uri, with_decision_id,
};
use super::{ProxyConfig, Route, RouteKind, X_KLA_DECISION, X_KLA_REASON_CODES};
use crate::auth::Caller;
use crate::decide::{ActionRequest, Decided};
use crate::error::{Class, Classify};
use crate::policy::Outcome;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use wire::{Era, Message, Posted, Rejection};

pub(crate) use hold::McpHolds;

/// The MCP routes' shared state: kla's own tasks and the calls held for approval.
pub(crate) struct McpState {
    tasks: tasks::Tasks,
    holds: McpHolds,
}

impl McpState {
    /// State for a proxy built from `cfg`.
    pub(crate) fn new(cfg: &ProxyConfig) -> McpState {
        McpState {
            tasks: tasks::Tasks::default(),
            holds: McpHolds::new(cfg),
        }
    }
}

/// The largest upstream answer kla rewrites (a `tools/list` to filter, a task's result): bigger ones fail.
const MAX_REWRITTEN: usize = 16 * 1024 * 1024;

/// One request on an MCP route, after its route and caller are known. Owned, so a held call's task can keep it.
#[derive(Clone)]
pub(super) struct Ctx {
    p: Arc<Proxy>,
    /// The route table the call started with (a reload swaps in a new one).
    table: Arc<Table>,
    route: Route,
    rest: String,
    caller: Caller,
    agent: String,
}

/// The MCP route's handler (dispatched from the proxy's one handler).
pub(super) async fn handle(
    p: &Arc<Proxy>,
    table: &Arc<Table>,
    route: &Route,
    rest: &str,
    parts: Parts,
    body: Body,
) -> Response {
    let (caller, agent) = match caller(p, &parts.headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    if let Err(e) = crate::names::agent(&agent) {
        return crate::api::ApiError::forbidden(format!("agent '{agent}': {e}")).into_response();
    }
    let cx = Ctx {
        p: p.clone(),
        table: table.clone(),
        route: route.clone(),
        rest: rest.to_owned(),
        caller,
        agent,
    };
    if parts.method != Method::POST {
        // GET streams, DELETE of a session, OPTIONS: the upstream's business, streamed both ways.
        return match cx.send(parts, body, None).await {
            Ok(r) => passthrough(r),
            Err(r) => *r,
        };
    }
    let limit = p.app.body_limit;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let r = Rejection {
                code: wire::INVALID_REQUEST,
                message: format!("the body is over {limit} bytes, the most kla reads"),
                id: Value::Null,
            };
            return reject(StatusCode::PAYLOAD_TOO_LARGE, &r);
        }
        Err(e) => {
            let r = Rejection {
                code: wire::INVALID_REQUEST,
                message: format!("reading the body: {e}"),
                id: Value::Null,
            };
            return reject(StatusCode::BAD_REQUEST, &r);
        }
    };
    match wire::parse(&bytes) {
        Err(r) => reject(StatusCode::BAD_REQUEST, &r),
        Ok(Posted::Single(msg)) => cx.single(parts, bytes, msg).await,
        Ok(Posted::Batch(msgs)) => cx.batch(parts, msgs).await,
    }
}

/// A JSON answer.
fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// A refused message: a JSON-RPC error, never forwarded.
fn reject(status: StatusCode, r: &Rejection) -> Response {
    json_response(status, &wire::error(&r.id, r.code, &r.message, None))
}

/// The upstream's answer, streamed back without hop-by-hop headers.
fn passthrough(resp: http::Response<Incoming>) -> Response {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

fn flag_warn(resp: &mut Response, d: &Decided) {
    if d.decision.outcome == Outcome::Warn {
        resp.headers_mut()
            .insert(X_KLA_DECISION, HeaderValue::from_static("warn"));
        if let Ok(v) = HeaderValue::from_str(&d.decision.reason_codes.join(",")) {
            resp.headers_mut().insert(X_KLA_REASON_CODES, v);
        }
    }
}

/// The text of a refusal: the enforced rules that decided it (pack/rule, reason code, message), else the
/// reason codes, and the decision id.
fn refusal_text(tool: &str, d: &Decided) -> String {
    let dec = &d.decision;
    let rules: Vec<String> = dec
        .matched_rules
        .iter()
        .filter(|m| !m.shadow && m.decision == dec.outcome)
        .map(|m| {
            let mut s = format!("rule {}/{} ({})", m.pack, m.id, m.reason_code);
            if let Some(msg) = &m.message {
                s.push_str(": ");
                s.push_str(msg);
            }
            s
        })
        .collect();
    let why = if rules.is_empty() {
        format!("reason codes {}", dec.reason_codes.join(", "))
    } else {
        rules.join("; ")
    };
    format!(
        "kla policy blocked the call of tool '{tool}': {why}. Decision {}.",
        d.decision_id
    )
}

/// A refused decision (it could not be made, so nothing is forwarded) as a JSON-RPC error.
fn decide_failed(id: &Value, e: &dyn Classify) -> Box<Response> {
    let class = e.class();
    let message = match class {
        Class::Unavailable | Class::Internal => {
            tracing::warn!(error = %e, "mcp: no decision could be made; refused");
            "kla could not decide this call (it was not forwarded); retry later".to_string()
        }
        _ => e.to_string(),
    };
    Box::new(json_response(
        StatusCode::OK,
        &wire::error(id, class.jsonrpc_code(), &message, None),
    ))
}

impl Ctx {
    fn approval_url(&self, approval_id: &str) -> String {
        format!(
            "{}/v1/approvals/{approval_id}",
            self.p.api_base.get().map(String::as_str).unwrap_or("")
        )
    }

    /// Sends a request upstream (the body as given) and waits for its response headers. `Err`: the answer to give,
    /// a JSON-RPC error when the request has an `id`.
    async fn send(
        &self,
        mut parts: Parts,
        body: Body,
        id: Option<&Value>,
    ) -> Result<http::Response<Incoming>, Box<Response>> {
        let route = &self.route;
        let fail = |status: StatusCode, message: String| {
            Box::new(match id {
                Some(id) => json_response(
                    status,
                    &wire::error(id, Class::UpstreamFailed.jsonrpc_code(), &message, None),
                ),
                None => json_response(status, &json!({"code": "internal_error", "message": message})),
            })
        };
        let Some(client) = self.table.clients.get(&route.name) else {
            return Err(fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("route {} has no client", route.name),
            ));
        };
        // An MCP server has one endpoint URL: the route's prefix itself is the upstream URL as configured (no
        // trailing '/' added, which servers answer with a redirect clients do not follow).
        let rest =
            if parts.uri.path() == route.prefix && !route.upstream.path().trim_end_matches('/').is_empty() {
                ""
            } else {
                self.rest.as_str()
            };
        let uri = upstream_uri(&route.upstream, rest, parts.uri.query())
            .map_err(|e| fail(StatusCode::BAD_GATEWAY, format!("route {}: {e}", route.name)))?;
        forwarded_head(&self.p, &mut parts, uri);
        let out = http::Request::from_parts(parts, body);
        match tokio::time::timeout(self.p.timeout, client.request(out)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::warn!(route = %route.name, error = %e, "mcp upstream failed");
                Err(fail(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "the upstream of route {} failed: {}",
                        route.name,
                        upstream_reason(&e)
                    ),
                ))
            }
            Err(_) => Err(fail(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the upstream of route {} did not answer within {}",
                    route.name,
                    humantime::format_duration(self.p.timeout)
                ),
            )),
        }
    }

    fn hide_blocked_tools(&self) -> bool {
        matches!(
            self.route.kind,
            RouteKind::Mcp {
                hide_blocked_tools: true
            }
        )
    }

    /// One message (the usual POST).
    async fn single(&self, parts: Parts, bytes: Bytes, msg: Message) -> Response {
        let era = wire::era(&parts.headers, Some(&msg));
        if let Err(r) = wire::check_headers(&parts.headers, &msg, era) {
            return reject(StatusCode::BAD_REQUEST, &r);
        }
        let is_request = msg.request_id().is_some();
        match msg.method() {
            Some("tools/call") if is_request => self.tools_call(parts, bytes, msg, era).await,
            Some("tools/list") if is_request && self.hide_blocked_tools() => {
                self.tools_list(parts, bytes, msg, era).await
            }
            Some("tasks/get" | "tasks/cancel" | "tasks/update" | "tasks/result")
                if is_request && tasks::is_ours(&msg) =>
            {
                self.p.mcp.tasks.answer(&self.caller, &self.agent, &msg)
            }
            Some("notifications/cancelled") => {
                // Handshake era: the client gave up on a request; a call held for it is never forwarded.
                self.p.mcp.holds.cancelled(&parts.headers, &msg);
                self.forward(parts, bytes, None).await
            }
            _ => self.forward(parts, bytes, msg.request_id().cloned()).await,
        }
    }

    async fn forward(&self, parts: Parts, bytes: Bytes, id: Option<Value>) -> Response {
        match self.send(parts, Body::from(bytes), id.as_ref()).await {
            Ok(r) => passthrough(r),
            Err(r) => *r,
        }
    }

    /// The tool call of `msg` as an action: its tool name (canonical) and its arguments. `Err`: the answer.
    fn action_of(
        &self,
        parts: &Parts,
        msg: &Message,
        era: Era,
    ) -> Result<(String, ActionRequest), Box<Response>> {
        let id = msg.answer_id();
        let invalid = |m: &str| {
            Err(Box::new(json_response(
                StatusCode::BAD_REQUEST,
                &wire::error(&id, wire::INVALID_PARAMS, m, None),
            )))
        };
        let Some(params) = msg.params() else {
            return invalid("tools/call needs params with the tool's name");
        };
        let Some(name) = params.get("name").and_then(Value::as_str) else {
            return invalid("tools/call needs params.name, a string");
        };
        let context = match params.get("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(a)) => a.clone(),
            Some(_) => return invalid("tools/call params.arguments must be an object"),
        };
        let action = match crate::names::action(name) {
            Ok(a) => a.into_string(),
            Err(e) => {
                // Refused before any decision: rules are written for names in the grammar only.
                let text = format!(
                    "kla refused the call of tool '{name}': its name {e}, so no policy can decide it"
                );
                return Err(Box::new(json_response(
                    StatusCode::OK,
                    &wire::tool_error(&id, &text, era),
                )));
            }
        };
        let execution_id = parts
            .headers
            .get("x-kla-execution-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((
            name.to_owned(),
            ActionRequest {
                agent_id: self.agent.clone(),
                action,
                context,
                tool: Some(json!({"name": name, "server": self.route.name})),
                execution_id,
                trace_id: trace_id(&parts.headers),
                // A call held past its client's patience is retried: one approval lets one such call through.
                reuse_approval: true,
            },
        ))
    }

    /// Decides one tool call, with its agent resolved to an id in `req` (a hold decides it again). `Err`: the
    /// answer (no decision could be made).
    async fn decide(&self, id: &Value, req: &mut ActionRequest) -> Result<Decided, Box<Response>> {
        req.agent_id = resolve_agent(&self.p, req.agent_id.clone())
            .await
            .map_err(|e| decide_failed(id, &e))?;
        let accepted = self
            .p
            .app
            .decider
            .accept(&self.caller)
            .map_err(|e| decide_failed(id, &e))?;
        self.p
            .app
            .decider
            .decide(accepted, req.clone())
            .await
            .map_err(|e| decide_failed(id, &e))
    }

    async fn tools_call(&self, parts: Parts, bytes: Bytes, msg: Message, era: Era) -> Response {
        let id = msg.answer_id();
        let (tool, mut req) = match self.action_of(&parts, &msg, era) {
            Ok(r) => r,
            Err(r) => return *r,
        };
        // kla's own `execute_tool` span (telemetry on): the decision runs in its context, so it is the parent.
        let tool_cx = crate::telemetry::otel::tool_call(
            &tool,
            &self.route.name,
            parts.headers.get("traceparent").and_then(|v| v.to_str().ok()),
        );
        let deciding = self.decide(&id, &mut req);
        let decided = match &tool_cx {
            Some(cx) => opentelemetry::context::FutureExt::with_context(deciding, cx.clone()).await,
            None => deciding.await,
        };
        let d = match decided {
            Ok(d) => d,
            Err(r) => return *r,
        };
        crate::telemetry::otel::tool_outcome(tool_cx.as_ref(), d.decision.outcome.as_str());
        match d.decision.outcome {
            Outcome::Block => {
                let text = refusal_text(&tool, &d);
                with_decision_id(
                    json_response(StatusCode::OK, &wire::tool_error(&id, &text, era)),
                    &d.decision_id,
                )
            }
            Outcome::RequireApproval if d.used_approval.is_none() => {
                hold::held(self, parts, bytes, msg, era, req, d).await
            }
            // Allowed, or a retry that uses an approval already given up.
            Outcome::RequireApproval | Outcome::Allow | Outcome::Warn => {
                let mut resp = self.forward(parts, bytes, Some(id)).await;
                flag_warn(&mut resp, &d);
                with_decision_id(resp, &d.decision_id)
            }
        }
    }

    async fn tools_list(&self, mut parts: Parts, bytes: Bytes, msg: Message, era: Era) -> Response {
        let id = msg.answer_id();
        let agent = match self.policy_agent(&id).await {
            Ok(a) => a,
            Err(r) => return *r,
        };
        // The answer is read and rewritten: ask for it uncompressed.
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let resp = match self.send(parts, Body::from(bytes), Some(&id)).await {
            Ok(r) => r,
            Err(r) => return *r,
        };
        let set = self.p.app.policy.active();
        let ids = [id.clone()];
        rewrite(resp, &id, Vec::new(), move |answer: &mut Value| {
            if answer.get("id").is_some_and(|i| ids.contains(i)) {
                wire::filter_tools(answer, era, |t| hidden(&set, &agent, t))
            } else {
                false
            }
        })
        .await
    }

    /// The caller's agent as the policy sees it (for `tools/list` filtering). `Err`: the answer.
    async fn policy_agent(&self, id: &Value) -> Result<crate::policy::AgentRef, Box<Response>> {
        let agent_id = resolve_agent(&self.p, self.agent.clone())
            .await
            .map_err(|e| decide_failed(id, &e))?;
        self.p
            .app
            .decider
            .accept(&self.caller)
            .map_err(|e| decide_failed(id, &e))?;
        let a = self
            .p
            .app
            .agents
            .get(&self.caller.tenant, &agent_id)
            .await
            .map_err(|e| decide_failed(id, &e))?;
        self.caller
            .require_agent(Some(&a.id), &a.name)
            .map_err(|e| decide_failed(id, &e))?;
        Ok(crate::policy::AgentRef::clone(&a))
    }

    /// A JSON-RPC batch (2025-03-26): each `tools/call` is decided; the ones kla refuses are answered by kla, the
    /// rest go upstream as a smaller batch, and the answers are merged.
    async fn batch(&self, mut parts: Parts, msgs: Vec<Message>) -> Response {
        if !wire::batch_allowed(&parts.headers) {
            let r = Rejection {
                code: wire::INVALID_REQUEST,
                message: format!("JSON-RPC batches exist only in MCP {}", wire::BATCH_REVISION),
                id: Value::Null,
            };
            return reject(StatusCode::BAD_REQUEST, &r);
        }
        let era = Era::Handshake;
        let mut ours: Vec<Value> = Vec::new();
        let mut upstream: Vec<Value> = Vec::new();
        let mut decisions: Vec<String> = Vec::new();
        let mut warns: Vec<String> = Vec::new();
        let mut list_ids: Vec<Value> = Vec::new();
        for msg in msgs {
            let id = msg.answer_id();
            match msg.method() {
                Some("tools/call") if msg.request_id().is_some() => {
                    let (tool, mut req) = match self.action_of(&parts, &msg, era) {
                        Ok(r) => r,
                        Err(r) => {
                            ours.push(answer_of(*r).await.unwrap_or_else(|| {
                                wire::error(
                                    &id,
                                    wire::INVALID_PARAMS,
                                    "tools/call params are malformed",
                                    None,
                                )
                            }));
                            continue;
                        }
                    };
                    let d = match self.decide(&id, &mut req).await {
                        Ok(d) => d,
                        Err(r) => {
                            ours.push(answer_of(*r).await.unwrap_or_else(|| {
                                wire::error(&id, -32603, "no decision could be made", None)
                            }));
                            continue;
                        }
                    };
                    decisions.push(d.decision_id.clone());
                    match d.decision.outcome {
                        Outcome::Block => ours.push(wire::tool_error(&id, &refusal_text(&tool, &d), era)),
                        // A batch cannot be held open for one of its calls: the approval is opened and named, and
                        // the same call sent again once approved goes through.
                        Outcome::RequireApproval if d.used_approval.is_none() => {
                            ours.push(wire::tool_error(&id, &hold::pending_text(self, &tool, &d), era))
                        }
                        Outcome::RequireApproval | Outcome::Allow | Outcome::Warn => {
                            if d.decision.outcome == Outcome::Warn {
                                warns.extend(d.decision.reason_codes.iter().cloned());
                            }
                            upstream.push(Value::Object(msg.0));
                        }
                    }
                }
                Some("tools/list") if msg.request_id().is_some() && self.hide_blocked_tools() => {
                    list_ids.push(id);
                    upstream.push(Value::Object(msg.0));
                }
                _ => upstream.push(Value::Object(msg.0)),
            }
        }
        let mut resp = if upstream.is_empty() {
            json_response(StatusCode::OK, &Value::Array(ours))
        } else {
            let filter = if list_ids.is_empty() {
                None
            } else {
                match self.policy_agent(&Value::Null).await {
                    Ok(a) => Some(a),
                    Err(r) => return *r,
                }
            };
            if filter.is_some() {
                parts
                    .headers
                    .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            }
            let body = Body::from(Value::Array(upstream).to_string());
            let r = match self.send(parts, body, Some(&Value::Null)).await {
                Ok(r) => r,
                Err(r) => return *r,
            };
            if r.status() == StatusCode::ACCEPTED && !ours.is_empty() {
                // Only notifications and responses went upstream: kla's answers are the whole answer.
                json_response(StatusCode::OK, &Value::Array(ours))
            } else if filter.is_none() && ours.is_empty() {
                passthrough(r)
            } else {
                let set = self.p.app.policy.active();
                rewrite(r, &Value::Null, ours, move |answer: &mut Value| match &filter {
                    Some(agent) if answer.get("id").is_some_and(|i| list_ids.contains(i)) => {
                        wire::filter_tools(answer, era, |t| hidden(&set, agent, t))
                    }
                    _ => false,
                })
                .await
            }
        };
        flag_warn_codes(&mut resp, &warns);
        if let Ok(v) = HeaderValue::from_str(&decisions.join(","))
            && !decisions.is_empty()
        {
            resp.headers_mut().insert(super::X_KLA_DECISION_ID, v);
        }
        resp
    }
}

fn flag_warn_codes(resp: &mut Response, codes: &[String]) {
    if codes.is_empty() {
        return;
    }
    resp.headers_mut()
        .insert(X_KLA_DECISION, HeaderValue::from_static("warn"));
    if let Ok(v) = HeaderValue::from_str(&codes.join(",")) {
        resp.headers_mut().insert(X_KLA_REASON_CODES, v);
    }
}

/// Whether `tool` is always blocked for `agent` (a name outside the grammar always is: it is never forwarded).
fn hidden(set: &crate::policy::PolicySet, agent: &crate::policy::AgentRef, tool: &str) -> bool {
    match crate::names::action(tool) {
        Ok(a) => set.always_blocks(agent, a.as_str()).is_some(),
        Err(_) => true,
    }
}

/// The JSON-RPC message of an answer kla built itself.
async fn answer_of(r: Response) -> Option<Value> {
    let bytes = r.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

/// The upstream's answer with each JSON-RPC message passed through `edit` (which says whether it changed it) and
/// kla's own `extra` answers added: a JSON answer is read whole (up to [`MAX_REWRITTEN`]) and rewritten, an SSE
/// stream is rewritten event by event as it streams (kla's answers first). Anything else passes through.
async fn rewrite(
    resp: http::Response<Incoming>,
    id: &Value,
    extra: Vec<Value>,
    mut edit: impl FnMut(&mut Value) -> bool + Send + 'static,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    if encoded {
        return json_response(
            StatusCode::BAD_GATEWAY,
            &wire::error(
                id,
                Class::UpstreamFailed.jsonrpc_code(),
                "the upstream compressed an answer kla must read",
                None,
            ),
        );
    }
    if ctype.starts_with("application/json") {
        let bytes = match http_body_util::Limited::new(body, MAX_REWRITTEN).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return json_response(
                    StatusCode::BAD_GATEWAY,
                    &wire::error(
                        id,
                        Class::UpstreamFailed.jsonrpc_code(),
                        &format!("reading the upstream's answer: {e}"),
                        None,
                    ),
                );
            }
        };
        let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
            // Not JSON after all: the client gets it as it was.
            parts.headers.remove(header::CONTENT_LENGTH);
            return Response::from_parts(parts, Body::from(bytes));
        };
        match &mut v {
            Value::Array(items) => {
                items.iter_mut().for_each(|m| {
                    edit(m);
                });
                items.extend(extra);
            }
            single => {
                edit(single);
                if !extra.is_empty() {
                    let mut all = vec![single.take()];
                    all.extend(extra);
                    *single = Value::Array(all);
                }
            }
        }
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(v.to_string()));
    }
    if ctype.starts_with("text/event-stream") {
        parts.headers.remove(header::CONTENT_LENGTH);
        let first: Vec<Result<Bytes, hyper::Error>> = extra.iter().map(|m| Ok(wire::sse_event(m))).collect();
        let state = (body, wire::SseSplitter::default(), edit, false);
        let events =
            futures_util::stream::unfold(state, |(mut body, mut split, mut edit, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match body.frame().await {
                        None => {
                            let rest = split.rest();
                            return Some((Ok(rest), (body, split, edit, true)));
                        }
                        Some(Err(e)) => return Some((Err(e), (body, split, edit, true))),
                        Some(Ok(frame)) => {
                            let Ok(data) = frame.into_data() else {
                                continue;
                            };
                            let Ok(evs) = split.push(&data) else {
                                tracing::warn!(
                                    "mcp upstream sent an SSE event over the size kla reads; stream cut"
                                );
                                return None;
                            };
                            if evs.is_empty() {
                                continue;
                            }
                            let mut out = bytes::BytesMut::new();
                            for ev in evs {
                                let changed = wire::event_data(&ev)
                                    .and_then(|d| serde_json::from_str::<Value>(&d).ok())
                                    .and_then(|mut v| edit(&mut v).then_some(v));
                                match changed {
                                    Some(v) => out.extend_from_slice(&wire::replace_data(&ev, &v)),
                                    None => out.extend_from_slice(&ev),
                                }
                            }
                            return Some((Ok(out.freeze()), (body, split, edit, false)));
                        }
                    }
                }
            });
        let stream = futures_util::StreamExt::chain(futures_util::stream::iter(first), events);
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    Response::from_parts(parts, Body::new(body))
}
