//! Every response carries `x-request-id`: the caller's (if sane) or a new one. Logged on every request span.

use super::errors::{client_request_id, new_request_id};
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub use super::errors::X_REQUEST_ID;

/// The layer every listener of kla's HTTP surfaces runs first (the API, the OTLP/HTTP receiver).
pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = match client_request_id(req.headers()) {
        Some(v) => v,
        None => HeaderValue::from_str(&new_request_id()).unwrap_or(HeaderValue::from_static("req_invalid")),
    };
    req.headers_mut().insert(X_REQUEST_ID, id.clone());
    let span = tracing::debug_span!("request", id = ?id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    resp.headers_mut().insert(X_REQUEST_ID, id);
    resp
}
