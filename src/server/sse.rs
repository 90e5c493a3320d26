//! Server-sent event responses: the headers every `text/event-stream` answer of kla carries (the REST API's event
//! stream, the MCP proxy's held calls). The frames themselves are written by their edges.

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;

/// A `text/event-stream` response, never cached, whose body streams the frames in `body`.
pub fn response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}
