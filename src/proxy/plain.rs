//! The plain HTTP adapter (routes of `kind: http`): each request is one tool call. It reads the call (the body
//! whole, under the limit, then `super::call`), hands it to the phases (`super::pipeline`), and renders their answers
//! as HTTP: the upstream's own answer (with the decision's headers), or `{"code","message"}` refusals (`403` blocked
//! or refused, `202`/`403` waiting for an approval). Named `plain` rather than `http` so it never shadows the `http`
//! crate inside `proxy`.

use super::hold::Refusal as HoldRefusal;
use super::identity::Identified;
use super::pipeline::{Adapter, ToolCall};
use super::respond::{self, Code};
use super::routes::Matched;
use super::upstream::{Table, UpstreamError};
use super::{Proxy, Refusal, Route, Unmatched};
use crate::decide::{ActionRequest, Decided};
use crate::error::Classify;
use axum::body::Body;
use axum::response::Response;
use http::header;
use http::request::Parts;
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::json;

/// A plain HTTP route's request, after its route and caller are known.
pub(super) async fn handle(
    p: &Proxy,
    table: &Table,
    m: Matched<'_>,
    who: Identified,
    mut parts: Parts,
    body: Body,
) -> Response {
    let route = m.route;
    if m.action.is_none() && route.unmatched == Unmatched::Block {
        return respond::json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {} matches none of route {}'s actions, and the route refuses unmatched calls",
                parts.method, m.path, route.name
            ),
        );
    }
    // Phase read context. The whole body is read (under the limit) before deciding: the decision and an approval
    // bind its bytes, and the upstream receives exactly those bytes.
    let mut context = m.context;
    let limit = p.core.body_limit;
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return respond::error(
                Code::PayloadTooLarge,
                format!(
                    "the request body is over {limit} bytes, the most the proxy reads before deciding {}",
                    m.name
                ),
            );
        }
        Err(e) => return respond::error(Code::InvalidRequest, format!("reading the request body: {e}")),
    };
    let tool = match super::call::read(route, m.action, &m.path, &parts, &bytes, &mut context) {
        Ok(t) => t,
        Err(Refusal::Invalid(e)) => return respond::error(Code::InvalidRequest, e),
        Err(Refusal::Unsupported(e)) => return respond::error(Code::UnsupportedMediaType, e),
    };
    // The upstream gets the canonical path: the one that was decided.
    parts.uri = match canonical_uri(&parts.uri, &m.path) {
        Ok(u) => u,
        Err(e) => return respond::error(Code::InvalidRequest, e),
    };
    let action_name = m.name.clone();
    let req = ActionRequest {
        agent_id: who.agent,
        action: m.name,
        context,
        // The whole call as forwarded (its record, redacted, shows it; an approval is bound to it).
        tool: Some(tool),
        execution_id: respond::execution_id(&parts.headers),
        trace_id: respond::trace_id(&parts.headers),
        // A held call that timed out on the client's side is retried: one approval lets one call through.
        reuse_approval: true,
    };
    let mut a = Plain {
        p,
        table,
        route,
        rest: m.rest,
        respond_async: respond::prefers_async(&parts.headers),
        traced: req.trace_id.is_some(),
        call: Some((parts, Body::from(bytes))),
    };
    let call = ToolCall {
        caller: &who.caller,
        route,
        tool: &action_name,
        req,
    };
    p.run(call, &mut a).await
}

/// A plain HTTP call between its reading and its answer.
struct Plain<'a> {
    p: &'a Proxy,
    /// The route table the call started with (a reload swaps in a new one).
    table: &'a Table,
    route: &'a Route,
    /// The canonical path below the route's prefix.
    rest: &'a str,
    /// `Prefer: respond-async`: the client is never held.
    respond_async: bool,
    /// Whether its `traceparent` is valid (kla's span is then its child).
    traced: bool,
    /// The request to forward, until it is.
    call: Option<(Parts, Body)>,
}

impl Adapter for Plain<'_> {
    type Answer = Response;

    fn traceparent(&self) -> Option<&str> {
        let (parts, _) = self.call.as_ref().filter(|_| self.traced)?;
        parts.headers.get("traceparent")?.to_str().ok()
    }

    async fn forward(&mut self) -> Response {
        let Some((parts, body)) = self.call.take() else {
            return respond::internal("the call was consumed without an answer");
        };
        let route = self.route;
        let client_host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()));
        let ups = &self.p.upstreams;
        let answer = match ups.send(self.table, route, self.rest, parts, body).await {
            Ok(resp) => ups.answer(resp, route, client_host.as_deref()),
            Err(e) => Err(e),
        };
        match answer {
            Ok(r) => r,
            Err(UpstreamError::NoClient) => respond::internal("route without client"),
            Err(e) => respond::json_error(e.status(), "internal_error", e.message(&route.name)),
        }
    }

    fn respond(&mut self, answer: Response, d: &Decided) -> Response {
        respond::decided(answer, &d.decision, &d.decision_id)
    }

    fn undecided(&mut self, e: &dyn Classify, _sent: bool) -> Response {
        respond::classified(e)
    }

    fn broken(&mut self, what: &'static str, decision_id: &str) -> Response {
        respond::with_decision_id(respond::internal(what), decision_id)
    }

    fn blocked(&mut self, tool: &str, d: &Decided) -> Response {
        let body = json!({
            "code": "forbidden",
            "message": format!("policy blocked {tool} on route {}", self.route.name),
            "decisionId": d.decision_id,
            "reasonCodes": d.decision.reason_codes,
        });
        respond::with_decision_id(respond::json(StatusCode::FORBIDDEN, &body), &d.decision_id)
    }

    fn waits(&self) -> bool {
        !self.respond_async && !self.p.hold_budget.is_zero()
    }

    /// `202` with the approval for a client that asked not to be held; otherwise `403` naming it: the same call,
    /// retried once a person has approved, goes through once.
    fn pending(&mut self, tool: &str, decision_id: &str, approval_id: &str, expires_at: &str) -> Response {
        let url = self.p.approval_url(approval_id);
        let (status, body) = if self.respond_async {
            let body = json!({
                "approvalId": approval_id,
                "decisionId": decision_id,
                "approvalUrl": url,
                "expiresAt": expires_at,
            });
            (StatusCode::ACCEPTED, body)
        } else {
            let body = json!({
                "code": "forbidden",
                "message": format!(
                    "{tool} needs a person's approval ({approval_id}); it was not forwarded. \
                     Retry the same call once it is approved (before {expires_at})"
                ),
                "approvalId": approval_id,
                "decisionId": decision_id,
                "approvalUrl": url,
                "expiresAt": expires_at,
            });
            (StatusCode::FORBIDDEN, body)
        };
        respond::with_decision_id(respond::json(status, &body), decision_id)
    }

    fn refused(&mut self, tool: &str, r: &HoldRefusal) -> Response {
        let body = json!({
            "code": "forbidden",
            "message": format!("{tool} was not forwarded: {}", r.message),
            "decisionId": r.decision_id,
            "approvalId": r.approval_id,
            "approvalStatus": r.status,
            "reasonCodes": r.reason_codes,
        });
        respond::with_decision_id(respond::json(StatusCode::FORBIDDEN, &body), &r.decision_id)
    }
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
