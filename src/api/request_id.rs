//! Every response carries `x-request-id`: the caller's (if sane) or a new one. Logged on every request span.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Header name.
pub const X_REQUEST_ID: &str = "x-request-id";

fn sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

pub(crate) async fn layer(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(X_REQUEST_ID) {
        Some(v) if sane(v) => v.clone(),
        _ => {
            let id = format!("req_{}", hex::encode(rand::random::<[u8; 8]>()));
            HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("req_invalid"))
        }
    };
    req.headers_mut().insert(X_REQUEST_ID, id.clone());
    let span = tracing::debug_span!("request", id = ?id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    resp.headers_mut().insert(X_REQUEST_ID, id);
    resp
}
