//! What both adapters read from a request's headers and write on an answer: the `X-KLA-*` headers (the decision's
//! id, the `warn` flag and its reason codes, the execution a call belongs to), the trace id of a `traceparent`,
//! `Prefer: respond-async`, and the `{"code","message"}` errors of the KLA Control Plane API. The one file of
//! `proxy/` that renders API errors, so where they come from changes in one place.

use crate::error::Classify;
use crate::policy::{Decision, Outcome};
use crate::server::ApiError;
pub(crate) use crate::server::Code;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

/// Answer header naming the decision of a forwarded or refused call.
pub const X_KLA_DECISION_ID: &str = "x-kla-decision-id";
/// Answer header `warn` on a forwarded call the policy flagged.
pub const X_KLA_DECISION: &str = "x-kla-decision";
/// Answer header with the comma-separated reason codes of a `warn`.
pub const X_KLA_REASON_CODES: &str = "x-kla-reason-codes";
/// Request header naming the execution a call belongs to (its steps and cost are counted by it).
pub const X_KLA_EXECUTION_ID: &str = "x-kla-execution-id";

/// An API error `{"code","message"}` with its code's status.
pub(crate) fn error(code: Code, message: impl Into<String>) -> Response {
    ApiError::new(code, message).into_response()
}

/// The API error of a classified failure (its class says who is at fault and the status).
pub(crate) fn classified(e: &(impl Classify + ?Sized)) -> Response {
    ApiError::classified(e).into_response()
}

/// A `500` that says nothing of its cause to the caller (`detail` is logged).
pub(crate) fn internal(detail: impl std::fmt::Display) -> Response {
    ApiError::internal(detail).into_response()
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `{"code","message"}` with a status other than the code's own (a `407` or a gateway error).
pub(crate) fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    json(status, &serde_json::json!({"code": code, "message": message}))
}

/// The answer with the decision id header.
pub(crate) fn with_decision_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert(X_KLA_DECISION_ID, v);
    }
    resp
}

/// The decision's headers on a forwarded call's answer: its id, and the flag and reason codes of a `warn`.
pub(crate) fn decided(mut resp: Response, dec: &Decision, decision_id: &str) -> Response {
    if dec.outcome == Outcome::Warn {
        flag_warn(&mut resp, &dec.reason_codes);
    }
    with_decision_id(resp, decision_id)
}

/// The `warn` flag with `codes` (nothing when there are none: no call was flagged).
pub(crate) fn flag_warn(resp: &mut Response, codes: &[String]) {
    resp.headers_mut()
        .insert(X_KLA_DECISION, HeaderValue::from_static("warn"));
    if let Ok(v) = HeaderValue::from_str(&codes.join(",")) {
        resp.headers_mut().insert(X_KLA_REASON_CODES, v);
    }
}

/// Whether the client asked not to be held (`Prefer: respond-async`, RFC 7240).
pub(crate) fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("respond-async"))
}

/// The execution a call belongs to (checked by the identify phase: one value, in its exact form).
pub(crate) fn execution_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(X_KLA_EXECUTION_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`); `None` when absent or malformed, or
/// when the id is all zeros (invalid by the spec).
pub(crate) fn trace_id(headers: &HeaderMap) -> Option<String> {
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
