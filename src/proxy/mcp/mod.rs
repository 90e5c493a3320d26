//! MCP routes (`kind: mcp`): an MCP server over Streamable HTTP behind the proxy, in both protocol eras (the
//! handshake era up to 2025-11-25 and the stateless 2026-07-28 revision). kla reads each POST body, refuses what is
//! not JSON-RPC or whose routing headers disagree with it, decides every `tools/call` (action = the tool's name,
//! context = its `arguments`, the approval bound to the whole call) through the governed action and refuses any
//! other shape of one (a notification, a look-alike method), filters `tools/list`, advertises the tasks it serves in
//! `server/discover`, answers `tasks/*` for the tasks it owns, and passes everything else through untouched (GET
//! streams, DELETE, `Mcp-Session-Id`, `Mcp-Param-*`). Methods the transport does not define are refused, and so is a
//! body on GET or DELETE. An upstream answer kla rewrites is passed on only as kla read it: one it cannot read
//! becomes a JSON-RPC error (fail closed), never the upstream's bytes.
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
use wire::{Disposition, Era, Message, Posted, Rejection};

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
        return crate::server::ApiError::forbidden(format!("agent '{agent}': {e}")).into_response();
    }
    let cx = Ctx {
        p: p.clone(),
        table: table.clone(),
        route: route.clone(),
        rest: rest.to_owned(),
        caller,
        agent,
    };
    match parts.method {
        Method::POST => {}
        Method::GET | Method::DELETE | Method::OPTIONS => {
            // GET streams, DELETE of a session, OPTIONS: the upstream's business, streamed both ways. None carries a
            // body, and one there would reach the upstream undecided (a tools/call in a GET): refused.
            if http_body_util::Limited::new(body, 0).collect().await.is_err() {
                return http_error(
                    crate::server::Code::InvalidRequest,
                    format!(
                        "a {} request to an MCP route carries no body (MCP messages are POSTed)",
                        parts.method
                    ),
                );
            }
            return match cx.send(parts, Body::empty(), None).await {
                Ok(r) => passthrough(r),
                Err(r) => *r,
            };
        }
        _ => {
            let mut r = http_error(
                crate::server::Code::MethodNotAllowed,
                format!(
                    "method {} is not part of MCP's Streamable HTTP transport (POST, GET, DELETE)",
                    parts.method
                ),
            );
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("POST, GET, DELETE, OPTIONS"),
            );
            return r;
        }
    }
    if super::call::compressed(&parts.headers) {
        // kla decides on the bytes it reads; a compressed body would be read one way by kla and another upstream.
        let r = Rejection {
            code: wire::INVALID_REQUEST,
            message: "kla reads MCP request bodies uncompressed (no Content-Encoding)".into(),
            id: Value::Null,
        };
        return reject(StatusCode::UNSUPPORTED_MEDIA_TYPE, &r);
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

/// A refused HTTP request that carries no JSON-RPC message: the API's `{"code","message"}`.
fn http_error(code: crate::server::Code, message: String) -> Response {
    crate::server::ApiError::new(code, message).into_response()
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
        match wire::disposition(&msg, false) {
            Disposition::Refuse(r) => reject(StatusCode::BAD_REQUEST, &r),
            Disposition::Decide => self.tools_call(parts, bytes, msg, era).await,
            Disposition::ListTools if self.hide_blocked_tools() => {
                self.tools_list(parts, bytes, msg, era).await
            }
            Disposition::Discover => self.discover(parts, bytes, msg).await,
            Disposition::OwnTask => self.p.mcp.tasks.answer(&self.caller, &self.agent, &msg),
            Disposition::Cancelled => {
                // Handshake era: the client gave up on a request; a call held for it is never forwarded.
                self.p.mcp.holds.cancelled(&parts.headers, &msg);
                self.forward(parts, bytes, None).await
            }
            Disposition::ListTools | Disposition::Forward => {
                self.forward(parts, bytes, msg.request_id().cloned()).await
            }
        }
    }

    /// The request target below the route as it is forwarded (path and query), empty for the route itself.
    fn target(&self, parts: &Parts) -> String {
        let rest = if parts.uri.path() == self.route.prefix {
            ""
        } else {
            self.rest.as_str()
        };
        match parts.uri.query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.to_owned(),
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
        // The approval covers the whole call: what else is forwarded that can change its effect goes into `tool`
        // (so into the action digest), and the decision records it (redacted).
        let mut tool = Map::new();
        tool.insert("name".into(), name.into());
        tool.insert("server".into(), self.route.name.clone().into());
        match wire::call_binding(&parts.headers, msg, &self.target(parts)) {
            Ok(bound) => tool.extend(bound),
            Err(r) => return Err(Box::new(reject(StatusCode::BAD_REQUEST, &r))),
        }
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
                tool: Some(Value::Object(tool)),
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
        // Every answer on this response is filtered, whatever id it carries: clients match ids loosely (1.0 or "1"
        // for 1), so an answer kla skipped for its id could still be read as the listing.
        rewrite(resp, Pending::one(id), Vec::new(), move |answer: &mut Value| {
            wire::filter_tools(answer, era, |t| hidden(&set, &agent, t));
        })
        .await
    }

    /// `server/discover` (2026-07-28): the upstream's answer with the tasks extension added to its capabilities,
    /// since kla answers held calls with tasks of its own (and a client only accepts a task from a server that
    /// advertised them).
    async fn discover(&self, mut parts: Parts, bytes: Bytes, msg: Message) -> Response {
        let id = msg.answer_id();
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        let resp = match self.send(parts, Body::from(bytes), Some(&id)).await {
            Ok(r) => r,
            Err(r) => return *r,
        };
        rewrite(resp, Pending::one(id), Vec::new(), |answer: &mut Value| {
            wire::advertise_tasks(answer);
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
        if let Err(r) = wire::check_batch_headers(&parts.headers) {
            return reject(StatusCode::BAD_REQUEST, &r);
        }
        // One message kla refuses (a notification-shaped tools/call, a look-alike method) refuses the batch: nothing
        // of it is decided or forwarded.
        for msg in &msgs {
            if let Disposition::Refuse(r) = wire::disposition(msg, true) {
                let r = Rejection {
                    id: Value::Null,
                    message: format!("the batch was refused: {}", r.message),
                    ..r
                };
                return reject(StatusCode::BAD_REQUEST, &r);
            }
        }
        let era = Era::Handshake;
        let mut ours: Vec<Value> = Vec::new();
        let mut upstream: Vec<Value> = Vec::new();
        let mut decisions: Vec<String> = Vec::new();
        let mut warns: Vec<String> = Vec::new();
        let mut listing = false;
        let mut forwarded_ids: Vec<Value> = Vec::new();
        for msg in msgs {
            let id = msg.answer_id();
            match wire::disposition(&msg, true) {
                Disposition::Decide => {
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
                            forwarded_ids.push(id);
                            upstream.push(Value::Object(msg.0));
                        }
                    }
                }
                Disposition::ListTools if self.hide_blocked_tools() => {
                    listing = true;
                    forwarded_ids.push(id);
                    upstream.push(Value::Object(msg.0));
                }
                _ => {
                    if let Some(id) = msg.request_id() {
                        forwarded_ids.push(id.clone());
                    }
                    upstream.push(Value::Object(msg.0));
                }
            }
        }
        let mut resp = if upstream.is_empty() {
            json_response(StatusCode::OK, &Value::Array(ours))
        } else {
            let filter = if !listing {
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
                let pending = Pending {
                    ids: forwarded_ids,
                    batch: true,
                };
                // With a listing in the batch, every answer is filtered (see `tools_list`): a call's result has no
                // `tools` to lose.
                rewrite(r, pending, ours, move |answer: &mut Value| {
                    if let Some(agent) = &filter {
                        wire::filter_tools(answer, era, |t| hidden(&set, agent, t));
                    }
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

/// The requests a rewritten answer answers: whom kla answers with a JSON-RPC error when it cannot read the
/// upstream's answer.
struct Pending {
    /// The ids of the requests that went upstream.
    ids: Vec<Value>,
    /// Whether the request was a batch (the answer is then an array).
    batch: bool,
}

impl Pending {
    fn one(id: Value) -> Pending {
        Pending {
            ids: vec![id],
            batch: false,
        }
    }

    /// The errors that stand for the answers not yet given (`answered` already were).
    fn errors(&self, answered: &[Value], message: &str) -> Vec<Value> {
        let code = Class::UpstreamFailed.jsonrpc_code();
        let mut out: Vec<Value> = self
            .ids
            .iter()
            .filter(|i| !answered.contains(i))
            .map(|i| wire::error(i, code, message, None))
            .collect();
        if out.is_empty() && answered.is_empty() {
            out.push(wire::error(&Value::Null, code, message, None));
        }
        out
    }
}

/// The answer when the upstream's cannot be read: JSON-RPC errors (with kla's own `extra` answers of a batch), the
/// upstream's status kept when it was an error (a client may act on a 404), else 502. Never the upstream's bytes.
fn unreadable(status: StatusCode, pending: &Pending, extra: Vec<Value>, why: &str) -> Response {
    tracing::warn!(reason = %why, "mcp: an upstream answer kla must read could not be read; answered with an error");
    let message = format!("kla could not read the upstream's answer ({why}), so it is not passed on");
    let status = if status.is_client_error() || status.is_server_error() {
        status
    } else {
        StatusCode::BAD_GATEWAY
    };
    let mut errors = pending.errors(&[], &message);
    let body = if pending.batch {
        errors.extend(extra);
        Value::Array(errors)
    } else {
        errors.into_iter().next().unwrap_or_else(|| {
            wire::error(&Value::Null, Class::UpstreamFailed.jsonrpc_code(), &message, None)
        })
    };
    json_response(status, &body)
}

/// The upstream's answer with each JSON-RPC message passed through `edit`, and kla's own `extra` answers added: a
/// JSON answer is read whole (up to [`MAX_REWRITTEN`]) and written again, an SSE stream is read event by event as it
/// streams (kla's answers first) and each event written again from what kla read. So the client reads exactly what
/// kla read: whatever kla cannot read (not JSON, `NaN`, another content type with a body, a compressed answer, an
/// event over the size kla reads) ends the answer with JSON-RPC errors instead, never with the upstream's bytes.
async fn rewrite(
    resp: http::Response<Incoming>,
    pending: Pending,
    extra: Vec<Value>,
    mut edit: impl FnMut(&mut Value) + Send + 'static,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let ctype = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if super::call::compressed(&parts.headers) {
        return unreadable(parts.status, &pending, extra, "it is compressed");
    }
    if ctype.starts_with("text/event-stream") {
        parts.headers.remove(header::CONTENT_LENGTH);
        let first: Vec<Result<Bytes, hyper::Error>> = extra.iter().map(|m| Ok(wire::sse_event(m))).collect();
        let state = SseRewrite {
            body,
            split: wire::SseSplitter::default(),
            edit,
            first: true,
            answered: Vec::new(),
            pending,
            done: false,
        };
        let events = futures_util::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                let events = match st.body.frame().await {
                    None => {
                        st.done = true;
                        let (events, rest) = st.split.finish();
                        if !rest.is_empty() {
                            // An event the stream did not end: SSE clients discard it, and so does kla.
                            tracing::debug!(bytes = rest.len(), "mcp: upstream stream ended inside an event");
                        }
                        events
                    }
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e), st));
                    }
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        match st.split.push(&data) {
                            Ok(evs) => evs,
                            Err(n) => {
                                let out = st.fail(&format!("an event over {n} bytes"));
                                return Some((Ok(out), st));
                            }
                        }
                    }
                };
                if events.is_empty() && !st.done {
                    continue;
                }
                let out = st.events(events);
                return Some((Ok(out), st));
            }
        });
        let stream = futures_util::StreamExt::chain(futures_util::stream::iter(first), events);
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    let bytes = match http_body_util::Limited::new(body, MAX_REWRITTEN).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return unreadable(parts.status, &pending, extra, &format!("reading it: {e}")),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    if !ctype.starts_with("application/json") {
        if bytes.is_empty() && extra.is_empty() {
            // Nothing to read (a 202, an empty error): the status and headers are the answer.
            return Response::from_parts(parts, Body::empty());
        }
        if bytes.is_empty() {
            parts
                .headers
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return Response::from_parts(parts, Body::from(Value::Array(extra).to_string()));
        }
        let why = format!("its content type is {ctype:?}, neither JSON nor an SSE stream");
        return unreadable(parts.status, &pending, extra, &why);
    }
    let mut v = match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => v,
        Err(e) => return unreadable(parts.status, &pending, extra, &format!("not JSON: {e}")),
    };
    match &mut v {
        Value::Array(items) => {
            items.iter_mut().for_each(&mut edit);
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
    Response::from_parts(parts, Body::from(v.to_string()))
}

/// The state of an SSE answer being rewritten.
struct SseRewrite<E> {
    body: Incoming,
    split: wire::SseSplitter,
    edit: E,
    /// The next event starts the stream.
    first: bool,
    /// Ids of the answers passed on so far.
    answered: Vec<Value>,
    pending: Pending,
    done: bool,
}

impl<E: FnMut(&mut Value)> SseRewrite<E> {
    /// Whole events, written again from what kla read of them.
    fn events(&mut self, events: Vec<Bytes>) -> Bytes {
        let mut out = bytes::BytesMut::new();
        for raw in events {
            let ev = wire::read_event(&raw, std::mem::take(&mut self.first));
            let data = match ev.data.as_deref() {
                // No data (a comment, an id): nothing a client dispatches.
                None | Some("") => None,
                Some(d) => match serde_json::from_str::<Value>(d) {
                    Ok(mut v) => {
                        (self.edit)(&mut v);
                        if v.get("method").is_none()
                            && let Some(id) = v.get("id")
                        {
                            self.answered.push(id.clone());
                        }
                        Some(v)
                    }
                    Err(e) => {
                        out.extend_from_slice(&self.fail(&format!("an event whose data is not JSON: {e}")));
                        return out.freeze();
                    }
                },
            };
            out.extend_from_slice(&wire::render_event(&ev, data.as_ref()));
        }
        out.freeze()
    }

    /// Ends the stream with errors for the requests not yet answered.
    fn fail(&mut self, why: &str) -> Bytes {
        tracing::warn!(reason = %why, "mcp: an upstream stream kla must read could not be read; ended with errors");
        self.done = true;
        let message = format!("kla could not read the upstream's answer ({why}), so it is not passed on");
        let mut out = bytes::BytesMut::new();
        for e in self.pending.errors(&self.answered, &message) {
            out.extend_from_slice(&wire::sse_event(&e));
        }
        out.freeze()
    }
}
