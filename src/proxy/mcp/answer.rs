//! The answers of an MCP upstream that kla reads rather than streams through: a `tools/list` to filter, a
//! `server/discover` to extend, a batch merged with kla's own answers. Each JSON-RPC message is read and written
//! again, so the client reads exactly what kla read; what kla cannot read becomes JSON-RPC errors (fail closed),
//! never the upstream's bytes.

use super::wire;
use crate::error::Class;
use crate::proxy::respond;
use crate::proxy::upstream::strip_hop_by_hop;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

/// The largest upstream answer kla rewrites (a `tools/list` to filter, a task's result): bigger ones fail.
pub(super) const MAX_REWRITTEN: usize = 16 * 1024 * 1024;

/// The upstream's answer, streamed back without hop-by-hop headers.
pub(super) fn passthrough(resp: http::Response<Incoming>) -> Response {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}

/// The JSON-RPC message of an answer kla built itself.
pub(super) async fn answer_of(r: Response) -> Option<Value> {
    let bytes = r.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&bytes).ok()
}

/// The requests a rewritten answer answers: whom kla answers with a JSON-RPC error when it cannot read the
/// upstream's answer.
pub(super) struct Pending {
    /// The ids of the requests that went upstream.
    pub(super) ids: Vec<Value>,
    /// Whether the request was a batch (the answer is then an array).
    pub(super) batch: bool,
}

impl Pending {
    pub(super) fn one(id: Value) -> Pending {
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
    respond::json(status, &body)
}

/// The upstream's answer with each JSON-RPC message passed through `edit`, and kla's own `extra` answers added: a
/// JSON answer is read whole (up to [`MAX_REWRITTEN`]) and written again, an SSE stream is read event by event as it
/// streams (kla's answers first) and each event written again from what kla read. So the client reads exactly what
/// kla read: whatever kla cannot read (not JSON, `NaN`, another content type with a body, a compressed answer, an
/// event over the size kla reads) ends the answer with JSON-RPC errors instead, never with the upstream's bytes.
pub(super) async fn rewrite(
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
    if crate::proxy::call::compressed(&parts.headers) {
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
