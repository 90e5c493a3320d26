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
//! The MCP adapter of the tool-call phases (`crate::proxy::pipeline`): every `tools/call`, alone or in a batch, runs
//! the same phases as a plain HTTP call (decide strict or under `audit: overlap`, hold, forward, respond); this
//! module only reads the call from its JSON-RPC message and renders the answers (a JSON-RPC result, an `isError`
//! tool result, an SSE stream, a task). Owns the MCP wire ([`wire`]), the answers it rewrites ([`answer`]), kla's
//! own tasks ([`tasks`]) and how a held call waits ([`hold`]); identity, upstream transport and decision headers
//! are the proxy's (`identity`, `upstream`, `respond`). No SQL, no ledger writes of its own: every decision is
//! `decide`'s.

mod answer;
mod hold;
mod tasks;
pub(crate) mod wire;

use super::config::{ProxyConfig, Route, RouteKind};
use super::hold::Refusal as HoldRefusal;
use super::identity::Identified;
use super::pipeline::{Adapter, ToolCall};
use super::respond::{self, Code};
use super::upstream::{Table, UpstreamError};
use super::{Proxy, X_KLA_DECISION_ID};
use crate::auth::Caller;
use crate::decide::{ActionRequest, Decided};
use crate::error::{Class, Classify};
use crate::policy::Outcome;
use crate::recorder::ApprovalTerms;
use answer::{Pending, answer_of, passthrough, rewrite};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value};
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

/// The MCP route's handler (dispatched from the proxy's one handler once the caller is identified).
pub(super) async fn handle(
    p: &Arc<Proxy>,
    table: &Arc<Table>,
    route: &Route,
    rest: &str,
    who: Identified,
    parts: Parts,
    body: Body,
) -> Response {
    let cx = Ctx {
        p: p.clone(),
        table: table.clone(),
        route: route.clone(),
        rest: rest.to_owned(),
        caller: who.caller,
        agent: who.agent,
    };
    match parts.method {
        Method::POST => {}
        Method::GET | Method::DELETE | Method::OPTIONS => {
            // GET streams, DELETE of a session, OPTIONS: the upstream's business, streamed both ways. None carries a
            // body, and one there would reach the upstream undecided (a tools/call in a GET): refused.
            if http_body_util::Limited::new(body, 0).collect().await.is_err() {
                return http_error(
                    Code::InvalidRequest,
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
                Code::MethodNotAllowed,
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
    let limit = p.core.body_limit;
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

/// A refused message: a JSON-RPC error, never forwarded.
fn reject(status: StatusCode, r: &Rejection) -> Response {
    respond::json(status, &wire::error(&r.id, r.code, &r.message, None))
}

/// A refused HTTP request that carries no JSON-RPC message: the API's `{"code","message"}`.
fn http_error(code: Code, message: String) -> Response {
    respond::error(code, message)
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
fn decide_failed(id: &Value, e: &dyn Classify) -> Value {
    let class = e.class();
    let message = match class {
        Class::Unavailable | Class::Internal => {
            tracing::warn!(error = %e, "mcp: no decision could be made; refused");
            "kla could not decide this call (it was not forwarded); retry later".to_string()
        }
        _ => e.to_string(),
    };
    wire::error(id, class.jsonrpc_code(), &message, None)
}

impl Ctx {
    /// This request's call of `tool`, deciding `req`, as the pipeline's phases take it.
    fn call<'a>(&'a self, tool: &'a str, req: ActionRequest) -> ToolCall<'a> {
        ToolCall {
            caller: &self.caller,
            route: &self.route,
            tool,
            req,
        }
    }

    fn approval_url(&self, approval_id: &str) -> String {
        self.p.approval_url(approval_id)
    }

    /// Sends a request upstream (the body as given) and waits for its response headers. `Err`: the answer to give,
    /// a JSON-RPC error when the request has an `id`.
    async fn send(
        &self,
        parts: Parts,
        body: Body,
        id: Option<&Value>,
    ) -> Result<http::Response<Incoming>, Box<Response>> {
        let route = &self.route;
        // An MCP server has one endpoint URL: the route's prefix itself is the upstream URL as configured (no
        // trailing '/' added, which servers answer with a redirect clients do not follow).
        let rest =
            if parts.uri.path() == route.prefix && !route.upstream.path().trim_end_matches('/').is_empty() {
                ""
            } else {
                self.rest.as_str()
            };
        self.p
            .upstreams
            .send(&self.table, route, rest, parts, body)
            .await
            .map_err(|e| {
                let message = e.message(&route.name);
                let status = e.status();
                if let UpstreamError::NoClient = e {
                    tracing::error!(route = %route.name, "mcp: a route without its client");
                }
                Box::new(match id {
                    Some(id) => respond::json(
                        status,
                        &wire::error(id, Class::UpstreamFailed.jsonrpc_code(), &message, None),
                    ),
                    None => respond::json_error(status, "internal_error", message),
                })
            })
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
                self.forward(parts, bytes, msg.request_id()).await
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

    async fn forward(&self, parts: Parts, bytes: Bytes, id: Option<&Value>) -> Response {
        match self.send(parts, Body::from(bytes), id).await {
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
            Err(Box::new(respond::json(
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
                return Err(Box::new(respond::json(
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
        Ok((
            name.to_owned(),
            ActionRequest {
                agent_id: self.agent.clone(),
                action,
                context,
                tool: Some(Value::Object(tool)),
                execution_id: respond::execution_id(&parts.headers),
                trace_id: respond::trace_id(&parts.headers),
                // A call held past its client's patience is retried: one approval lets one such call through.
                reuse_approval: true,
            },
        ))
    }

    /// A `tools/call` alone in its POST: the phases run over it, and its answer is the HTTP answer.
    async fn tools_call(&self, parts: Parts, bytes: Bytes, msg: Message, era: Era) -> Response {
        let id = msg.answer_id();
        let (tool, req) = match self.action_of(&parts, &msg, era) {
            Ok(r) => r,
            Err(r) => return *r,
        };
        let call = self.call(&tool, req);
        let mut a = Single {
            cx: self,
            parts: Some(parts),
            bytes,
            msg: Some(msg),
            era,
            id,
        };
        self.p.run(call, &mut a).await
    }

    async fn tools_list(&self, parts: Parts, bytes: Bytes, msg: Message, era: Era) -> Response {
        let id = msg.answer_id();
        let agent = match self.policy_agent(&id).await {
            Ok(a) => a,
            Err(r) => return *r,
        };
        let resp = match self.send_to_rewrite(parts, bytes, &id).await {
            Ok(r) => r,
            Err(r) => return *r,
        };
        let set = self.p.core.policy.active();
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
    async fn discover(&self, parts: Parts, bytes: Bytes, msg: Message) -> Response {
        let id = msg.answer_id();
        let resp = match self.send_to_rewrite(parts, bytes, &id).await {
            Ok(r) => r,
            Err(r) => return *r,
        };
        rewrite(resp, Pending::one(id), Vec::new(), |answer: &mut Value| {
            wire::advertise_tasks(answer);
        })
        .await
    }

    /// Sends a request whose answer kla reads and rewrites, asking for that answer uncompressed. `Err`: the answer.
    async fn send_to_rewrite(
        &self,
        mut parts: Parts,
        bytes: Bytes,
        id: &Value,
    ) -> Result<http::Response<Incoming>, Box<Response>> {
        parts
            .headers
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        self.send(parts, Body::from(bytes), Some(id)).await
    }

    /// The caller's agent as the policy sees it (for `tools/list` filtering). `Err`: the answer.
    async fn policy_agent(&self, id: &Value) -> Result<crate::policy::AgentRef, Box<Response>> {
        let failed = |e: &dyn Classify| Box::new(respond::json(StatusCode::OK, &decide_failed(id, e)));
        let identity = &self.p.identity;
        let agent_id = identity
            .resolve(self.agent.clone())
            .await
            .map_err(|e| failed(&e))?;
        self.p.core.decider.accept(&self.caller).map_err(|e| failed(&e))?;
        let a = identity
            .agents()
            .get(&self.caller.tenant, &agent_id)
            .await
            .map_err(|e| failed(&e))?;
        self.caller
            .require_agent(Some(&a.id), &a.name)
            .map_err(|e| failed(&e))?;
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
        let mut out = Batch::default();
        let mut listing = false;
        for msg in msgs {
            let id = msg.answer_id();
            match wire::disposition(&msg, true) {
                Disposition::Decide => {
                    let (tool, req) = match self.action_of(&parts, &msg, era) {
                        Ok(r) => r,
                        Err(r) => {
                            out.ours.push(answer_of(*r).await.unwrap_or_else(|| {
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
                    let call = self.call(&tool, req);
                    let mut a = InBatch {
                        cx: self,
                        parts: &parts,
                        msg: Some(msg),
                        id,
                        era,
                        out: &mut out,
                    };
                    self.p.run(call, &mut a).await;
                }
                Disposition::ListTools if self.hide_blocked_tools() => {
                    listing = true;
                    out.forwarded_ids.push(id);
                    out.upstream.push(Value::Object(msg.0));
                }
                _ => {
                    if let Some(id) = msg.request_id() {
                        out.forwarded_ids.push(id.clone());
                    }
                    out.upstream.push(Value::Object(msg.0));
                }
            }
        }
        let Batch {
            ours,
            upstream,
            decisions,
            warns,
            forwarded_ids,
        } = out;
        let mut resp = if upstream.is_empty() {
            respond::json(StatusCode::OK, &Value::Array(ours))
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
                respond::json(StatusCode::OK, &Value::Array(ours))
            } else if filter.is_none() && ours.is_empty() {
                passthrough(r)
            } else {
                let set = self.p.core.policy.active();
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
        if !warns.is_empty() {
            respond::flag_warn(&mut resp, &warns);
        }
        if let Ok(v) = HeaderValue::from_str(&decisions.join(","))
            && !decisions.is_empty()
        {
            resp.headers_mut().insert(X_KLA_DECISION_ID, v);
        }
        resp
    }
}

/// A `tools/call` alone in its POST, between its reading and its answer.
struct Single<'a> {
    cx: &'a Ctx,
    /// The request to forward (or hold), until it is.
    parts: Option<Parts>,
    bytes: Bytes,
    msg: Option<Message>,
    era: Era,
    /// The id kla's answers carry.
    id: Value,
}

impl Single<'_> {
    fn answer(&self, body: &Value, decision_id: &str) -> Response {
        respond::with_decision_id(respond::json(StatusCode::OK, body), decision_id)
    }
}

impl Adapter for Single<'_> {
    type Answer = Response;

    fn traceparent(&self) -> Option<&str> {
        self.parts.as_ref()?.headers.get("traceparent")?.to_str().ok()
    }

    async fn forward(&mut self) -> Response {
        let Some(parts) = self.parts.take() else {
            return respond::json(
                StatusCode::OK,
                &wire::error(&self.id, -32603, "the call was consumed without an answer", None),
            );
        };
        // The id stays: under `audit: overlap` a failed record is still answered to it.
        self.cx
            .forward(parts, std::mem::take(&mut self.bytes), Some(&self.id))
            .await
    }

    fn respond(&mut self, answer: Response, d: &Decided) -> Response {
        respond::decided(answer, &d.decision, &d.decision_id)
    }

    fn undecided(&mut self, e: &dyn Classify, _sent: bool) -> Response {
        respond::json(StatusCode::OK, &decide_failed(&self.id, e))
    }

    fn broken(&mut self, what: &'static str, decision_id: &str) -> Response {
        self.answer(&wire::error(&self.id, -32603, what, None), decision_id)
    }

    fn blocked(&mut self, tool: &str, d: &Decided) -> Response {
        let text = refusal_text(tool, d);
        self.answer(&wire::tool_error(&self.id, &text, self.era), &d.decision_id)
    }

    fn pending(&mut self, tool: &str, decision_id: &str, approval_id: &str, expires_at: &str) -> Response {
        let text = hold::pending(self.cx, tool, approval_id, expires_at, decision_id);
        self.answer(&wire::tool_error(&self.id, &text, self.era), decision_id)
    }

    fn refused(&mut self, tool: &str, r: &HoldRefusal) -> Response {
        let text = hold::refused_text(tool, r);
        self.answer(&wire::tool_error(&self.id, &text, self.era), &r.decision_id)
    }

    /// A task kla owns (the client declared the tasks extension) or a held SSE answer (the client accepts one and
    /// the hold budget is not zero), each waiting in a spawned task; anyone else is answered as pending at once.
    async fn hold(&mut self, _p: &Proxy, call: ToolCall<'_>, d: Decided, terms: ApprovalTerms) -> Response {
        let (Some(parts), Some(msg)) = (self.parts.take(), self.msg.take()) else {
            return self.broken("the call was consumed before its hold", &d.decision_id);
        };
        let Some(how) = hold::Wait::of(self.cx, &parts, &msg, self.era) else {
            return self.pending(call.tool, &d.decision_id, &terms.approval_id, &terms.expires_at);
        };
        let held = hold::Held {
            parts,
            bytes: std::mem::take(&mut self.bytes),
            msg,
            era: self.era,
            req: call.req,
            decision_id: d.decision_id.clone(),
            terms,
            tool: call.tool.to_owned(),
        };
        respond::with_decision_id(how.start(self.cx, held), &d.decision_id)
    }
}

/// What a batch collects from its calls.
#[derive(Default)]
struct Batch {
    /// kla's own answers.
    ours: Vec<Value>,
    /// The messages that go upstream, as a smaller batch.
    upstream: Vec<Value>,
    /// Every decision made, in order.
    decisions: Vec<String>,
    /// The reason codes of the `warn`s forwarded.
    warns: Vec<String>,
    /// The ids of the requests sent upstream.
    forwarded_ids: Vec<Value>,
}

/// One `tools/call` of a batch. Its forward only queues it for the batch's one upstream request, which is sent
/// once every call is decided; so it never overlaps, and nothing of a batch waits for an approval.
struct InBatch<'a> {
    cx: &'a Ctx,
    parts: &'a Parts,
    msg: Option<Message>,
    id: Value,
    era: Era,
    out: &'a mut Batch,
}

impl InBatch<'_> {
    fn answer(&mut self, body: Value, decision_id: &str) {
        self.out.decisions.push(decision_id.to_owned());
        self.out.ours.push(body);
    }
}

impl Adapter for InBatch<'_> {
    type Answer = ();

    fn traceparent(&self) -> Option<&str> {
        self.parts.headers.get("traceparent")?.to_str().ok()
    }

    fn overlaps(&self) -> bool {
        false
    }

    async fn forward(&mut self) {
        if let Some(msg) = self.msg.take() {
            self.out.forwarded_ids.push(std::mem::take(&mut self.id));
            self.out.upstream.push(Value::Object(msg.0));
        }
    }

    fn respond(&mut self, (): (), d: &Decided) {
        self.out.decisions.push(d.decision_id.clone());
        if d.decision.outcome == Outcome::Warn {
            self.out.warns.extend(d.decision.reason_codes.iter().cloned());
        }
    }

    fn undecided(&mut self, e: &dyn Classify, _sent: bool) {
        self.out.ours.push(decide_failed(&self.id, e));
    }

    fn broken(&mut self, what: &'static str, decision_id: &str) {
        let body = wire::error(&self.id, -32603, what, None);
        self.answer(body, decision_id);
    }

    fn blocked(&mut self, tool: &str, d: &Decided) {
        let body = wire::tool_error(&self.id, &refusal_text(tool, d), self.era);
        self.answer(body, &d.decision_id);
    }

    /// A batch cannot be held open for one of its calls: the approval is opened and named, and the same call sent
    /// again once approved goes through.
    fn pending(&mut self, tool: &str, decision_id: &str, approval_id: &str, expires_at: &str) {
        let text = hold::pending(self.cx, tool, approval_id, expires_at, decision_id);
        let body = wire::tool_error(&self.id, &text, self.era);
        self.answer(body, decision_id);
    }

    fn refused(&mut self, tool: &str, r: &HoldRefusal) {
        let body = wire::tool_error(&self.id, &hold::refused_text(tool, r), self.era);
        self.answer(body, &r.decision_id);
    }
}

/// Whether `tool` is always blocked for `agent` (a name outside the grammar always is: it is never forwarded).
fn hidden(set: &crate::policy::PolicySet, agent: &crate::policy::AgentRef, tool: &str) -> bool {
    match crate::names::action(tool) {
        Ok(a) => set.always_blocks(agent, a.as_str()).is_some(),
        Err(_) => true,
    }
}
