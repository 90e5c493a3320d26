//! Errors answered before a request reaches its router, in kla's `{"code","message"}` form with an `x-request-id`
//! (the client's when it is well formed, as the API's own request-id layer does, else a new one). Every such error
//! is the client's request, so the code is always `invalid_request`.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// The response header that carries the request id.
pub const X_REQUEST_ID: &str = "x-request-id";

/// A new request id, in the API's form.
pub(super) fn new_request_id() -> String {
    format!("req_{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// The client's request id if it is one the API would keep (1-128 of `[A-Za-z0-9-_.:]`).
fn client_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    let v = headers.get(X_REQUEST_ID)?;
    let b = v.as_bytes();
    let sane =
        !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c));
    sane.then(|| v.clone())
}

/// The JSON body of an `invalid_request` error.
pub(super) fn body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"code": "invalid_request", "message": message}))
        .unwrap_or_default()
}

/// An `invalid_request` error with `status`, answering a request with `headers` (when they were parsed).
pub(super) fn response(status: StatusCode, message: &str, headers: Option<&HeaderMap>) -> Response<Body> {
    let id = headers
        .and_then(client_request_id)
        .or_else(|| HeaderValue::from_str(&new_request_id()).ok())
        .unwrap_or(HeaderValue::from_static("req_invalid"));
    let mut resp = Response::new(Body::from(body(message)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(X_REQUEST_ID, id);
    resp
}
