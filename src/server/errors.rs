//! Errors answered before a request reaches its router, in kla's `{"code","message"}` form with an `x-request-id`
//! (the client's when it is well formed, as the API's own request-id layer does, else a new one). Every such error
//! is the client's request, so the code is always `invalid_request`.
//!
//! Two kinds: requests that parsed but are over a listener's limits (answered by the connection's service, see
//! `conn.rs`), and HTTP/1 requests hyper could not parse at all. For those hyper writes a fixed answer with an empty
//! body itself (400 for a bad request line, header or Content-Length, 414 for a target over 65534 bytes, 431 for a
//! head over its buffer or more than 100 headers) and offers no hook; [`rewrite_canned`] recognises that exact
//! answer on its way to the socket and puts kla's in its place.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

/// The response header that carries the request id.
pub const X_REQUEST_ID: &str = "x-request-id";

/// A new request id, in the API's form.
pub(super) fn new_request_id() -> String {
    format!("req_{}", hex::encode(rand::random::<[u8; 8]>()))
}

/// The client's request id if it is one the API would keep (1-128 of `[A-Za-z0-9-_.:]`).
pub(super) fn client_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
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

/// The cheap first test of every write: could `buf` be hyper's fixed answer (short, a 4xx status line)?
pub(super) fn may_be_canned(buf: &[u8]) -> bool {
    buf.len() <= 256 && buf.starts_with(b"HTTP/1.1 4")
}

/// kla's answer in place of hyper's fixed one, if `buf` is exactly that: `HTTP/1.1 400|414|431 …` with
/// `connection: close`, `content-length: 0`, a `date` and no body (any response kla's routers make has a body).
pub(super) fn rewrite_canned(buf: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(buf).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?;
    let message = match status {
        "HTTP/1.1 400 Bad Request" => {
            "malformed HTTP/1.1 request: its request line, a header or its Content-Length cannot be parsed"
                .to_owned()
        }
        "HTTP/1.1 414 URI Too Long" => format!(
            "the request target is longer than {} bytes",
            super::conn::MAX_URI_BYTES
        ),
        "HTTP/1.1 431 Request Header Fields Too Large" => {
            "the request head is larger than the server's buffer, or has more than 100 headers".to_owned()
        }
        _ => return None,
    };
    let mut date = None;
    for line in lines {
        match line.split_once(": ") {
            Some(("connection", "close")) | Some(("content-length", "0")) => {}
            Some(("date", d)) => date = Some(d),
            _ => return None,
        }
    }
    let body = body(&message);
    let mut out = format!(
        "{status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{X_REQUEST_ID}: {}\r\nconnection: close\r\n",
        body.len(),
        new_request_id()
    );
    if let Some(d) = date {
        out += &format!("date: {d}\r\n");
    }
    out += "\r\n";
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn hyper_s_fixed_answers_are_rewritten_and_nothing_else() {
        let date = "date: Tue, 01 Dec 2026 21:20:43 GMT";
        for (status, code) in [
            ("400 Bad Request", 400),
            ("414 URI Too Long", 414),
            ("431 Request Header Fields Too Large", 431),
        ] {
            let canned =
                format!("HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n\r\n");
            assert!(may_be_canned(canned.as_bytes()));
            let out = String::from_utf8(rewrite_canned(canned.as_bytes()).expect(status)).unwrap();
            let (head, body) = out.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {code} ")), "{head}");
            assert!(head.contains("content-type: application/json") && head.contains("x-request-id: req_"));
            assert!(head.contains(date) && head.contains(&format!("content-length: {}", body.len())));
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["code"], "invalid_request");
        }
        for other in [
            // A router's error has a body.
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n{date}\r\n\r\n{{}}"
            ),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: a\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
        ] {
            assert!(rewrite_canned(other.as_bytes()).is_none(), "{other}");
        }
        assert!(!may_be_canned(b"HTTP/1.1 200 OK\r\n\r\n"));
    }
}
