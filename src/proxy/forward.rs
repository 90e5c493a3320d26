//! The proxy listener's one handler: a request finds its route and action, becomes an [`ActionRequest`] decided by
//! [`crate::decide::Decider`] (durable in the ledger before anything is forwarded), and is then forwarded, flagged,
//! refused or answered with its approval. Identity comes from the config (sidecar mode) or from
//! `Proxy-Authorization` (shared mode), never from the request body.

use super::hold::HoldEnd;
use super::{Audit, ProxyConfig, Refusal, Route, Routes, Unmatched, target};
use crate::api::ApiState;
use crate::auth::{Caller, Principal, Role};
use crate::decide::{ActionRequest, Decided};
use crate::policy::Outcome;
use crate::server::{ApiError, Code};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Answer header naming the decision of a forwarded or refused call.
pub const X_KLA_DECISION_ID: &str = "x-kla-decision-id";
/// Answer header `warn` on a forwarded call the policy flagged.
pub const X_KLA_DECISION: &str = "x-kla-decision";
/// Answer header with the comma-separated reason codes of a `warn`.
pub const X_KLA_REASON_CODES: &str = "x-kla-reason-codes";
/// Request header naming the execution a call belongs to (its steps and cost are counted by it).
pub const X_KLA_EXECUTION_ID: &str = "x-kla-execution-id";

pub(super) type Upstream = Client<HttpsConnector<HttpConnector>, Body>;

/// The proxy: its routes, one pooled upstream client per route, and the API's state (its decider and token
/// verification).
pub struct Proxy {
    pub(super) app: Arc<ApiState>,
    pub(super) tenant: Arc<str>,
    agent: Option<Arc<str>>,
    /// The routes and their clients; swapped whole by a reload, so a call in flight keeps the table it started with.
    table: arc_swap::ArcSwap<Table>,
    pub(super) timeout: Duration,
    /// How long a call waiting for approval is held before it is answered as pending.
    pub(super) hold_budget: Duration,
    audit: Audit,
    /// `https` when the listener has TLS (for `x-forwarded-proto`).
    scheme: &'static str,
    /// Agent names resolved to ids (a registered name keeps its id: agents are never renamed or removed), so a
    /// call does not list the tenant's agents. Bounded; cleared when full.
    agent_ids: parking_lot::Mutex<HashMap<String, String>>,
    /// The API's base URL (`http://host:port`), known once the API listener is bound; approval URLs point there.
    pub(super) api_base: OnceLock<String>,
    /// MCP routes' state (kla's own tasks, held calls).
    pub(super) mcp: super::mcp::McpState,
}

impl Proxy {
    /// Builds the proxy and its upstream clients (reading each route's `ca-file`).
    pub fn new(cfg: &ProxyConfig, app: Arc<ApiState>) -> anyhow::Result<Arc<Proxy>> {
        Ok(Arc::new(Proxy {
            table: arc_swap::ArcSwap::from_pointee(Table::new(cfg)?),
            app,
            tenant: cfg.tenant.as_str().into(),
            agent: cfg.agent.as_deref().map(Into::into),
            timeout: cfg.timeout,
            hold_budget: cfg.hold_budget,
            audit: cfg.audit,
            scheme: if cfg.tls.is_some() { "https" } else { "http" },
            agent_ids: parking_lot::Mutex::new(HashMap::new()),
            api_base: OnceLock::new(),
            mcp: super::mcp::McpState::new(cfg),
        }))
    }

    /// Sets the API's base URL for approval links (once).
    pub fn set_api_base(&self, base: String) {
        let _ = self.api_base.set(base);
    }

    /// Takes the routes of a reloaded config: calls that start from now on use them; calls in flight finish with
    /// the table they started with, and no connection is dropped. What the listener itself was started with (its
    /// address and TLS) and who calls are made as (tenant, agent) need a restart: a reload that changes them is
    /// refused whole.
    pub fn reload(&self, cfg: &ProxyConfig) -> anyhow::Result<usize> {
        anyhow::ensure!(
            *self.tenant == *cfg.tenant && self.agent.as_deref() == cfg.agent.as_deref(),
            "proxy.tenant and proxy.agent change only with a restart"
        );
        anyhow::ensure!(
            (self.scheme == "https") == cfg.tls.is_some(),
            "proxy.tls changes only with a restart"
        );
        let table = Table::new(cfg)?;
        let n = table.routes.len();
        self.table.store(Arc::new(table));
        Ok(n)
    }

    /// The API URL of an approval.
    pub(super) fn approval_url(&self, approval_id: &str) -> String {
        format!(
            "{}/v1/approvals/{approval_id}",
            self.api_base.get().map(String::as_str).unwrap_or("")
        )
    }

    /// The proxy listener's router: every path goes to the one handler.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(handle).with_state(self.clone())
    }
}

/// The routes of one config and a pooled client per route.
pub(super) struct Table {
    pub(super) routes: Routes,
    pub(super) clients: HashMap<String, Upstream>,
}

impl Table {
    fn new(cfg: &ProxyConfig) -> anyhow::Result<Table> {
        let mut clients = HashMap::new();
        for r in &cfg.routes {
            clients.insert(
                r.name.clone(),
                client(r.ca_file.as_deref(), cfg.connect_timeout, &r.name)?,
            );
        }
        Ok(Table {
            routes: Routes::new(cfg.routes.clone()),
            clients,
        })
    }
}

fn client(
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
    route: &str,
) -> anyhow::Result<Upstream> {
    use anyhow::Context;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(f) = ca_file {
        let pem = std::fs::read(f)
            .with_context(|| format!("proxy route {route}: reading ca-file {}", f.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.with_context(|| format!("proxy route {route}: ca-file {}", f.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("proxy route {route}: ca-file {}", f.display()))?;
            n += 1;
        }
        anyhow::ensure!(
            n > 0,
            "proxy route {route}: ca-file {} holds no certificate",
            f.display()
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = json!({"code": code, "message": message});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(super) fn with_decision_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(X_KLA_DECISION_ID, v);
    }
    resp
}

/// The caller of this request: the configured agent (sidecar mode) or the agent-bound token in
/// `Proxy-Authorization` (shared mode).
pub(super) fn caller(p: &Proxy, headers: &HeaderMap) -> Result<(Caller, String), Box<Response>> {
    if let Some(agent) = &p.agent {
        let principal = Principal {
            issuer: "kla".into(),
            subject: format!("proxy:{agent}").into(),
            role: Role::Agent,
            tenants: Arc::from(vec![p.tenant.to_string()]),
            exp: u64::MAX,
            agent: Some(agent.clone()),
            desk_session: false,
        };
        return Ok((
            Caller {
                principal,
                tenant: p.tenant.clone(),
            },
            agent.to_string(),
        ));
    }
    let unauthenticated = |message: String| {
        let mut r = json_error(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "unauthorized", message);
        r.headers_mut()
            .insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Box::new(r)
    };
    let token = headers
        .get(header::PROXY_AUTHORIZATION)
        .ok_or_else(|| unauthenticated("missing Proxy-Authorization: Bearer <kla agent token>".into()))?
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthenticated("Proxy-Authorization must be 'Bearer <kla agent token>'".into()))?;
    let principal = p
        .app
        .auth
        .verify(token)
        .map_err(|e| unauthenticated(format!("Proxy-Authorization: {e}")))?;
    if principal.desk_session {
        return Err(unauthenticated(
            "a Decision Desk session cannot make tool calls".into(),
        ));
    }
    let Some(agent) = principal.agent.clone() else {
        return Err(ApiError::forbidden(
            "the proxy accepts only tokens bound to an agent (an `agent` claim)",
        )
        .into_response()
        .into());
    };
    if !principal.allows_tenant(&p.tenant) {
        return Err(Box::new(
            ApiError::forbidden(format!("this token may not act in tenant '{}'", p.tenant)).into_response(),
        ));
    }
    Ok((
        Caller {
            principal,
            tenant: p.tenant.clone(),
        },
        agent.to_string(),
    ))
}

async fn handle(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    // One canonical request target: routes and actions are matched on it, the policy decides on it, and it is
    // exactly what the upstream receives. What stays ambiguous is refused before anything else.
    let canonical = target::method(&parts.method)
        .and_then(|()| target::no_overrides(&parts.headers))
        .and_then(|()| target::path(parts.uri.path()));
    let path = match canonical {
        Ok(p) => p,
        Err(e) => return ApiError::invalid(e.0).into_response(),
    };
    let table = p.table.load_full();
    let m = match table.routes.resolve(&parts.method, &path) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return ApiError::not_found(format!("no proxy route owns the path '{path}'")).into_response();
        }
        Err(e) => return ApiError::invalid(e.0).into_response(),
    };
    if let super::RouteKind::Mcp { .. } = m.route.kind {
        return super::mcp::handle(&p, &table, m.route, m.rest, parts, body).await;
    }
    let (caller, agent) = match caller(&p, &parts.headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    // A name outside the grammar is refused here, before anything is decided or forwarded.
    if let Err(e) = crate::names::agent(&agent) {
        return ApiError::forbidden(format!("agent '{agent}': {e}")).into_response();
    }
    if let Err(e) = crate::names::ids::execution_header(
        parts
            .headers
            .get_all(X_KLA_EXECUTION_ID)
            .iter()
            .map(|v| v.as_bytes()),
    ) {
        return ApiError::invalid(format!("header '{X_KLA_EXECUTION_ID}' {e}")).into_response();
    }
    let route = m.route;
    if m.action.is_none() && route.unmatched == Unmatched::Block {
        return json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {} matches none of route {}'s actions, and the route refuses unmatched calls",
                parts.method, m.path, route.name
            ),
        );
    }
    let mut context = m.context;
    // The whole body is read (under the limit) before deciding: the decision and an approval bind its bytes, and
    // the upstream receives exactly those bytes.
    let limit = p.app.body_limit;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return ApiError::new(
                Code::PayloadTooLarge,
                format!(
                    "the request body is over {limit} bytes, the most the proxy reads before deciding {}",
                    m.name
                ),
            )
            .into_response();
        }
        Err(e) => return ApiError::invalid(format!("reading the request body: {e}")).into_response(),
    };
    let tool = match super::call::read(route, m.action, &m.path, &parts, &bytes, &mut context) {
        Ok(t) => t,
        Err(Refusal::Invalid(e)) => return ApiError::invalid(e).into_response(),
        Err(Refusal::Unsupported(e)) => {
            return ApiError::new(Code::UnsupportedMediaType, e).into_response();
        }
    };
    // The upstream gets the canonical path: the one that was decided.
    parts.uri = match canonical_uri(&parts.uri, &m.path) {
        Ok(u) => u,
        Err(e) => return ApiError::invalid(e).into_response(),
    };
    // `decide` looks agents up by id; a name (sidecar config, or a token's `agent` claim) is resolved in the
    // tenant first. An unknown agent stays as given, so `decide` refuses it.
    let agent = match resolve_agent(&p, agent).await {
        Ok(a) => a,
        Err(e) => return ApiError::classified(&e).into_response(),
    };
    let accepted = match p.app.decider.accept(&caller) {
        Ok(a) => a,
        Err(e) => return ApiError::classified(&e).into_response(),
    };
    let action_name = m.name.clone();
    let req = ActionRequest {
        agent_id: agent,
        action: m.name,
        context,
        // The whole call as forwarded (its record, redacted, shows it; an approval is bound to it).
        tool: Some(tool),
        execution_id: header_str(&parts.headers, X_KLA_EXECUTION_ID),
        trace_id: trace_id(&parts.headers),
        // A held call that timed out on the client's side is retried: one approval lets one call through.
        reuse_approval: true,
    };
    let body = Body::from(bytes);
    let respond_async = prefers_async(&parts.headers);
    // No decision, no forward: every failure here is a refusal. Under `audit: overlap` an allowed call is sent
    // while its decision is being made durable, and its answer waits for that.
    let overlap = p.audit == Audit::Overlap;
    // kla's own `execute_tool` span (telemetry on): the decision runs in its context, so it is the parent.
    let tool_cx = crate::telemetry::otel::tool_call(
        &action_name,
        &route.name,
        req.trace_id
            .as_ref()
            .and_then(|_| parts.headers.get("traceparent"))
            .and_then(|v| v.to_str().ok()),
    );
    let mut call = Some((parts, body));
    let deciding = p.app.decider.decide_overlapped(accepted, req.clone(), |_| {
        if !overlap {
            return None;
        }
        let (parts, body) = call.take()?;
        Some(upstream(&p, &table, route, m.rest, parts, body))
    });
    let decided = match &tool_cx {
        Some(cx) => opentelemetry::context::FutureExt::with_context(deciding, cx.clone()).await,
        None => deciding.await,
    };
    if let Ok((d, _)) = &decided {
        crate::telemetry::otel::tool_outcome(tool_cx.as_ref(), d.decision.outcome.as_str());
    }
    let (d, early) = match decided {
        Ok(d) => d,
        Err(e) => {
            if call.is_none() {
                tracing::error!(error = %e, route = %route.name,
                    "a call was sent upstream (audit: overlap) but its decision could not be recorded; its answer is withheld");
            }
            return ApiError::classified(&e).into_response();
        }
    };
    if let Some(resp) = early {
        return finish(resp, &d.decision, &d.decision_id);
    }
    let Some((parts, body)) = call else {
        return with_decision_id(
            ApiError::internal("the call was consumed without an answer").into_response(),
            &d.decision_id,
        );
    };
    let dec = &d.decision;
    match dec.outcome {
        Outcome::Block => {
            let body = json!({
                "code": "forbidden",
                "message": format!("policy blocked {action_name} on route {}", route.name),
                "decisionId": d.decision_id,
                "reasonCodes": dec.reason_codes,
            });
            with_decision_id(json_response(StatusCode::FORBIDDEN, &body), &d.decision_id)
        }
        Outcome::RequireApproval if d.used_approval.is_none() => {
            let Some(terms) = d.approval.clone() else {
                return with_decision_id(
                    ApiError::internal("a require_approval decision without its approval").into_response(),
                    &d.decision_id,
                );
            };
            let approval_url = p.approval_url(&terms.approval_id);
            if respond_async || p.hold_budget.is_zero() {
                let body = json!({
                    "approvalId": terms.approval_id,
                    "decisionId": d.decision_id,
                    "approvalUrl": approval_url,
                    "expiresAt": terms.expires_at,
                });
                let status = if respond_async {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::FORBIDDEN
                };
                let body = if status == StatusCode::ACCEPTED {
                    body
                } else {
                    pending_body(
                        &action_name,
                        &terms.approval_id,
                        &d.decision_id,
                        &approval_url,
                        &terms.expires_at,
                    )
                };
                return with_decision_id(json_response(status, &body), &d.decision_id);
            }
            // Held: the client waits while a person decides; if it goes away, this future is dropped and nothing
            // is forwarded for it.
            match p.hold(&caller, req, &d.decision_id, &terms, p.hold_budget).await {
                HoldEnd::Go(d) => forward(&p, &table, route, m.rest, parts, body, &d).await,
                HoldEnd::Refused(r) => {
                    let body = json!({
                        "code": "forbidden",
                        "message": format!("{action_name} was not forwarded: {}", r.message),
                        "decisionId": r.decision_id,
                        "approvalId": r.approval_id,
                        "approvalStatus": r.status,
                        "reasonCodes": r.reason_codes,
                    });
                    with_decision_id(json_response(StatusCode::FORBIDDEN, &body), &r.decision_id)
                }
                HoldEnd::Pending {
                    approval_id,
                    expires_at,
                } => {
                    let body = pending_body(
                        &action_name,
                        &approval_id,
                        &d.decision_id,
                        &approval_url,
                        &expires_at,
                    );
                    with_decision_id(json_response(StatusCode::FORBIDDEN, &body), &d.decision_id)
                }
            }
        }
        Outcome::RequireApproval | Outcome::Allow | Outcome::Warn => {
            forward(&p, &table, route, m.rest, parts, body, &d).await
        }
    }
}

/// The answer to a call still waiting for its approval: not forwarded; the same call, retried once a person has
/// approved, goes through once.
fn pending_body(
    action: &str,
    approval_id: &str,
    decision_id: &str,
    url: &str,
    expires_at: &str,
) -> serde_json::Value {
    json!({
        "code": "forbidden",
        "message": format!(
            "{action} needs a person's approval ({approval_id}); it was not forwarded. \
             Retry the same call once it is approved (before {expires_at})"
        ),
        "approvalId": approval_id,
        "decisionId": decision_id,
        "approvalUrl": url,
        "expiresAt": expires_at,
    })
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Whether the client asked not to be held (`Prefer: respond-async`, RFC 7240).
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("respond-async"))
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when absent or malformed, or
/// when the id is all zeros (invalid by the spec).
pub(super) fn trace_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("traceparent")?.to_str().ok()?.trim();
    let mut parts = v.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0') {
        return None;
    }
    Some(trace.to_owned())
}

/// Forwards a decided call to its route's upstream and streams the answer back (with the warn headers when
/// the decision flagged it). The decision is durable (`decide` returned), so the effect may follow.
pub(super) async fn forward(
    p: &Proxy,
    table: &Table,
    route: &Route,
    rest: &str,
    parts: http::request::Parts,
    body: Body,
    d: &Decided,
) -> Response {
    let resp = upstream(p, table, route, rest, parts, body).await;
    finish(resp, &d.decision, &d.decision_id)
}

/// The decision's headers on a forwarded call's answer: its id, and the flag and reason codes of a `warn`.
pub(super) fn finish(mut resp: Response, dec: &crate::policy::Decision, decision_id: &str) -> Response {
    if dec.outcome == Outcome::Warn {
        resp.headers_mut()
            .insert(X_KLA_DECISION, HeaderValue::from_static("warn"));
        if let Ok(v) = HeaderValue::from_str(&dec.reason_codes.join(",")) {
            resp.headers_mut().insert(X_KLA_REASON_CODES, v);
        }
    }
    with_decision_id(resp, decision_id)
}

/// Sends the call to its route's upstream: the upstream's answer (headers in, body streaming), or the `502`/`504`
/// that says why there is none.
pub(super) async fn upstream(
    p: &Proxy,
    table: &Table,
    route: &Route,
    rest: &str,
    mut parts: http::request::Parts,
    body: Body,
) -> Response {
    let Some(client) = table.clients.get(&route.name) else {
        return ApiError::internal("route without client").into_response();
    };
    let uri = match upstream_uri(&route.upstream, rest, parts.uri.query()) {
        Ok(u) => u,
        Err(e) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                "internal_error",
                format!("route {}: {e}", route.name),
            );
        }
    };
    let client_host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()));
    forwarded_head(p, &mut parts, uri);
    let out = http::Request::from_parts(parts, body);
    let resp = match tokio::time::timeout(p.timeout, client.request(out)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!(route = %route.name, error = %e, "proxy upstream failed");
            return json_error(
                StatusCode::BAD_GATEWAY,
                "internal_error",
                format!(
                    "the upstream of route {} failed: {}",
                    route.name,
                    upstream_reason(&e)
                ),
            );
        }
        Err(_) => {
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "internal_error",
                format!(
                    "the upstream of route {} did not answer within {}",
                    route.name,
                    humantime::format_duration(p.timeout)
                ),
            );
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    if let Some(loc) = rparts.headers.get(header::LOCATION) {
        match location(loc, route, p.scheme, client_host.as_deref()) {
            Location::Keep => {}
            Location::Rewrite(v) => {
                rparts.headers.insert(header::LOCATION, v);
            }
            Location::Outside => {
                tracing::warn!(route = %route.name, "upstream redirected outside its route; answer withheld");
                return json_error(
                    StatusCode::BAD_GATEWAY,
                    "internal_error",
                    format!(
                        "the upstream of route {} redirected to a path outside the route, which would bypass kla",
                        route.name
                    ),
                );
            }
        }
    }
    Response::from_parts(rparts, Body::new(rbody))
}

/// What becomes of an upstream answer's `Location`.
#[derive(Debug, PartialEq)]
enum Location {
    /// It points elsewhere (another origin, or a relative reference that resolves through kla anyway).
    Keep,
    /// It pointed at the upstream itself: the same place, as reached through kla.
    Rewrite(HeaderValue),
    /// It points at the upstream's origin outside the route's base path: following it would bypass kla.
    Outside,
}

/// Maps a `Location` that points at the route's upstream (absolute, scheme-relative or an absolute path) onto the
/// route's prefix at kla, so clients are not redirected around kla.
fn location(v: &HeaderValue, route: &Route, scheme: &str, client_host: Option<&str>) -> Location {
    let Ok(text) = v.to_str() else {
        return Location::Outside;
    };
    let up = &route.upstream;
    let up_port = up
        .port_u16()
        .unwrap_or(if up.scheme_str() == Some("https") { 443 } else { 80 });
    let same_origin = |u: &Uri| {
        let port = u
            .port_u16()
            .unwrap_or(if u.scheme_str() == Some("https") { 443 } else { 80 });
        u.host()
            .is_some_and(|h| up.host().is_some_and(|uh| h.eq_ignore_ascii_case(uh)))
            && port == up_port
    };
    let (absolute, path_and_query) = if text.starts_with('/') && !text.starts_with("//") {
        (false, text.to_owned())
    } else {
        let full = match text.strip_prefix("//") {
            Some(rest) => format!("{}://{rest}", up.scheme_str().unwrap_or("http")),
            None => text.to_owned(),
        };
        let Ok(u) = full.parse::<Uri>() else {
            return Location::Keep;
        };
        if u.scheme().is_none() || !same_origin(&u) {
            return Location::Keep;
        }
        (
            true,
            u.path_and_query().map_or("/".into(), |pq| pq.as_str().to_owned()),
        )
    };
    let base = up.path().trim_end_matches('/');
    let below = path_and_query
        .strip_prefix(base)
        .filter(|b| b.is_empty() || b.starts_with(['/', '?', '#']));
    let Some(below) = below else {
        // An absolute path resolves against kla's own origin, so it cannot lead around kla.
        return if absolute {
            Location::Outside
        } else {
            Location::Keep
        };
    };
    let prefix = if route.prefix == "/" {
        ""
    } else {
        route.prefix.as_str()
    };
    let below = if below.is_empty() && prefix.is_empty() {
        "/"
    } else {
        below
    };
    let at_kla = match (absolute, client_host) {
        (true, Some(h)) => format!("{scheme}://{h}{prefix}{below}"),
        _ => format!("{prefix}{below}"),
    };
    HeaderValue::from_str(&at_kla).map_or(Location::Outside, Location::Rewrite)
}

/// The most agent names [`Proxy::agent_ids`] keeps.
const AGENT_ID_CACHE: usize = 4096;

/// The request head as the upstream gets it: hop-by-hop headers and `Host` removed, `x-forwarded-for` (appended),
/// `x-forwarded-proto` and `x-forwarded-host` set, the upstream's URI, HTTP/1.1 (the client negotiates up).
pub(super) fn forwarded_head(p: &Proxy, parts: &mut http::request::Parts, uri: Uri) {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let original_host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if let Some(ip) = peer {
        let xff = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static(p.scheme));
    match original_host.or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    }) {
        Some(h) => {
            parts.headers.insert("x-forwarded-host", h);
        }
        None => {
            parts.headers.remove("x-forwarded-host");
        }
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
}

pub(super) async fn resolve_agent(
    p: &Proxy,
    agent: String,
) -> Result<String, crate::registry::RegistryError> {
    if agent.starts_with("agt_") {
        return Ok(agent);
    }
    let key = agent.to_ascii_lowercase();
    if let Some(id) = p.agent_ids.lock().get(&key) {
        return Ok(id.clone());
    }
    let found = p
        .app
        .agents
        .list(&p.tenant)
        .await?
        .into_iter()
        .find(|a| a.name.eq_ignore_ascii_case(&agent))
        .map(|a| a.agent_id);
    // Only found names are kept: an agent registered later is found by its next call.
    let Some(id) = found else {
        return Ok(agent);
    };
    let mut ids = p.agent_ids.lock();
    if ids.len() >= AGENT_ID_CACHE {
        ids.clear();
    }
    ids.insert(key, id.clone());
    Ok(id)
}

/// A connect error says little in its `Display`; its source chain says why.
pub(super) fn upstream_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The upstream's base URL with the path below the route's prefix (and the query) appended.
pub(super) fn upstream_uri(base: &Uri, rest: &str, query: Option<&str>) -> Result<Uri, String> {
    let base_path = base.path().trim_end_matches('/');
    let mut pq = format!("{base_path}{rest}");
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|e| format!("path {pq:?}: {e}"))?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

/// The request's URI with its path replaced by the canonical one (the query kept as sent).
fn canonical_uri(uri: &Uri, path: &str) -> Result<Uri, String> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|e| format!("path {pq:?}: {e}"))?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}
