//! MCP's wire as the proxy reads and writes it: JSON-RPC messages of a POST body, the Streamable HTTP routing
//! headers (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`), the answers kla writes itself, and SSE events.
//! Pure: no IO, no policy.

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use serde_json::{Map, Value, json};

/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: the body is JSON but not a valid request.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: a method's params are malformed.
pub const INVALID_PARAMS: i64 = -32602;
/// MCP (2026-07-28): a routing header disagrees with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// The first revision without a handshake: every POST is self-contained.
pub const STATELESS_REVISION: &str = "2026-07-28";
/// The only revision whose POST bodies may be JSON-RPC batches.
pub const BATCH_REVISION: &str = "2025-03-26";
/// The tasks extension's identifier.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";
/// Every task id kla makes starts with this, so `tasks/*` for other ids go upstream.
pub const TASK_PREFIX: &str = "kla-task-";
/// `params._meta` keys that only correlate a request (progress, W3C trace context), never change what it does: the
/// one part of a `tools/call` an approval is not bound to, since a client's retry carries new ones.
const CORRELATION_META: [&str; 4] = ["progressToken", "traceparent", "tracestate", "baggage"];
const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
const META_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// Routing headers; each may appear at most once (two readers must not see two values).
const ROUTING_HEADERS: [&str; 3] = ["mcp-protocol-version", "mcp-method", "mcp-name"];

/// Which protocol era a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Era {
    /// Revisions up to 2025-11-25: `initialize`, `Mcp-Session-Id`, GET streams.
    Handshake,
    /// 2026-07-28 and later: self-contained POSTs, `resultType` on results.
    Stateless,
}

/// A JSON-RPC message the proxy refuses to forward, with the id to answer (null when unknown).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// JSON-RPC error code.
    pub code: i64,
    /// What is wrong.
    pub message: String,
    /// The request's id, when it has a usable one.
    pub id: Value,
}

impl Rejection {
    fn new(code: i64, message: impl Into<String>, id: Value) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            id,
        }
    }
}

/// One well-formed JSON-RPC message (an object).
#[derive(Debug, Clone)]
pub struct Message(pub Map<String, Value>);

impl Message {
    /// The method of a request or notification.
    pub fn method(&self) -> Option<&str> {
        self.0.get("method").and_then(Value::as_str)
    }

    /// The id of a request (a message with a method and an id).
    pub fn request_id(&self) -> Option<&Value> {
        self.method()?;
        self.0.get("id")
    }

    /// The id to answer with: the request's, or null.
    pub fn answer_id(&self) -> Value {
        self.request_id().cloned().unwrap_or(Value::Null)
    }

    /// `params`, when an object.
    pub fn params(&self) -> Option<&Map<String, Value>> {
        self.0.get("params").and_then(Value::as_object)
    }

    /// `params._meta`, when an object.
    pub fn meta(&self) -> Option<&Map<String, Value>> {
        self.params()?.get("_meta")?.as_object()
    }

    /// The protocol version the 2026-07-28 envelope names in `params._meta`.
    pub fn meta_version(&self) -> Option<&str> {
        self.meta()?.get(META_VERSION)?.as_str()
    }

    /// Whether the request declares the tasks extension (in its per-request client capabilities).
    pub fn declares_tasks(&self) -> bool {
        self.meta()
            .and_then(|m| m.get(META_CAPABILITIES))
            .and_then(|c| c.get("extensions"))
            .and_then(|e| e.get(TASKS_EXTENSION))
            .is_some_and(Value::is_object)
    }

    /// `params._meta.progressToken`, when the request asks for progress.
    pub fn progress_token(&self) -> Option<&Value> {
        self.meta()?
            .get("progressToken")
            .filter(|t| t.is_string() || t.is_number())
    }

    /// The params key whose value `Mcp-Name` mirrors for this method.
    fn name_key(&self) -> Option<&'static str> {
        match self.method()? {
            "tools/call" | "prompts/get" => Some("name"),
            "resources/read" => Some("uri"),
            "tasks/get" | "tasks/update" | "tasks/cancel" | "tasks/result" => Some("taskId"),
            _ => None,
        }
    }
}

/// A POST body: one message or a batch (2025-03-26 only).
#[derive(Debug)]
pub enum Posted {
    /// One message.
    Single(Message),
    /// A non-empty array of messages.
    Batch(Vec<Message>),
}

/// Parses and checks a POST body. A body that is not JSON (or repeats a key) is a parse error; anything else that
/// is not a JSON-RPC 2.0 message (or a non-empty array of them) is an invalid request.
pub fn parse(bytes: &[u8]) -> Result<Posted, Rejection> {
    let v: Value = crate::json::from_slice_unique(bytes)
        .map_err(|e| Rejection::new(PARSE_ERROR, format!("the body is not JSON: {e}"), Value::Null))?;
    match v {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(Rejection::new(INVALID_REQUEST, "an empty batch", Value::Null));
            }
            items
                .into_iter()
                .map(message)
                .collect::<Result<_, _>>()
                .map(Posted::Batch)
        }
        other => message(other).map(Posted::Single),
    }
}

fn message(v: Value) -> Result<Message, Rejection> {
    let Value::Object(m) = v else {
        return Err(Rejection::new(
            INVALID_REQUEST,
            "a JSON-RPC message is an object",
            Value::Null,
        ));
    };
    // Answer with the id only when it is one a client could match.
    let id = match m.get("id") {
        Some(id @ (Value::String(_) | Value::Number(_))) => id.clone(),
        _ => Value::Null,
    };
    let bad = |what: &str| Err(Rejection::new(INVALID_REQUEST, what.to_string(), id.clone()));
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return bad("\"jsonrpc\" must be \"2.0\"");
    }
    if let Some(i) = m.get("id")
        && !(i.is_string() || i.is_number())
    {
        return bad("\"id\" must be a string or a number");
    }
    match m.get("method") {
        Some(Value::String(s)) if !s.is_empty() => {
            if let Some(p) = m.get("params")
                && !p.is_object()
            {
                return bad("\"params\" must be an object");
            }
        }
        Some(_) => return bad("\"method\" must be a non-empty string"),
        None => {
            // A response (to a request the server sent the client).
            if !m.contains_key("id") {
                return bad("a message without \"method\" is a response and needs an \"id\"");
            }
            if m.contains_key("result") == m.contains_key("error") {
                return bad("a response has exactly one of \"result\" and \"error\"");
            }
        }
    }
    Ok(Message(m))
}

/// A revision string `YYYY-MM-DD` (anything else is no revision).
fn revision(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    let ok = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    ok.then_some(s)
}

/// The `MCP-Protocol-Version` header, when it is one revision.
pub fn version_header(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .and_then(revision)
}

/// The era of a request: the header's revision, else the body envelope's (revisions compare as dates).
pub fn era(headers: &HeaderMap, msg: Option<&Message>) -> Era {
    let v = version_header(headers).or_else(|| msg.and_then(Message::meta_version).and_then(revision));
    match v {
        Some(v) if v >= STATELESS_REVISION => Era::Stateless,
        _ => Era::Handshake,
    }
}

/// Whether a batch may be posted: only 2025-03-26 has them, and a client of that revision sends no version header
/// (or that one).
pub fn batch_allowed(headers: &HeaderMap) -> bool {
    match headers.get("mcp-protocol-version") {
        None => true,
        Some(v) => v.to_str().ok() == Some(BATCH_REVISION),
    }
}

/// Decodes a header value the way MCP clients encode it: verbatim, or `=?base64?<canonical base64 of UTF-8>?=`.
/// `None`: a malformed encoding, which never matches anything.
pub fn decode_header(v: &str) -> Option<String> {
    let Some(payload) = v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) else {
        return Some(v.to_owned());
    };
    let e = base64::engine::general_purpose::STANDARD;
    let bytes = e.decode(payload).ok()?;
    if e.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// Checks the routing headers against the one message of the body. Present headers must agree with the body; in
/// the stateless era a request must carry `Mcp-Method`, and `Mcp-Name` where its method names something.
pub fn check_headers(headers: &HeaderMap, msg: &Message, era: Era) -> Result<(), Rejection> {
    let id = msg.answer_id();
    let mismatch = |what: String| Err(Rejection::new(HEADER_MISMATCH, what, id.clone()));
    for h in ROUTING_HEADERS {
        if headers.get_all(h).iter().count() > 1 {
            return mismatch(format!("the {h} header appears more than once"));
        }
    }
    let Some(method) = msg.method() else {
        // A response names no method: a routing header would tell an intermediary (or a server that routes on
        // headers) something the body does not say.
        for h in ["mcp-method", "mcp-name"] {
            if headers.contains_key(h) {
                return mismatch(format!("the {h} header is on a message that is not a request"));
            }
        }
        return Ok(());
    };
    let is_request = msg.request_id().is_some();
    match headers.get("mcp-method").map(|v| v.to_str()) {
        Some(Ok(h)) if h == method => {}
        Some(_) => {
            return mismatch(format!(
                "the Mcp-Method header does not match the body's method {method:?}"
            ));
        }
        None if era == Era::Stateless && is_request => {
            return mismatch(format!(
                "the Mcp-Method header is missing (the body's method is {method:?})"
            ));
        }
        None => {}
    }
    if let (Some(h), Some(b)) = (headers.get("mcp-protocol-version"), msg.meta_version())
        && h.to_str().ok() != Some(b)
    {
        return mismatch(format!(
            "the MCP-Protocol-Version header does not match the body's protocol version {b:?}"
        ));
    }
    if let Some(key) = msg.name_key()
        && let Some(body) = msg.params().and_then(|p| p.get(key)).and_then(Value::as_str)
    {
        match headers.get("mcp-name") {
            Some(h) => {
                let decoded = h.to_str().ok().and_then(decode_header);
                if decoded.as_deref() != Some(body) {
                    return mismatch(format!(
                        "the Mcp-Name header does not match the body's {key} {body:?}"
                    ));
                }
            }
            None if era == Era::Stateless && is_request => {
                return mismatch(format!(
                    "the Mcp-Name header is missing (the body's {key} is {body:?})"
                ));
            }
            None => {}
        }
    }
    Ok(())
}

/// What the proxy does with one JSON-RPC message of a POST body. Every message whose method is `tools/call` is
/// decided or refused, whatever its shape: never forwarded undecided.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// A `tools/call` request: decided before anything is forwarded.
    Decide,
    /// A `tools/list` request: its answer is filtered (when the route hides blocked tools).
    ListTools,
    /// A `server/discover` request: its answer advertises the tasks kla serves.
    Discover,
    /// A `tasks/*` request for one of kla's own tasks: answered by kla.
    OwnTask,
    /// `notifications/cancelled`: a call held for the request it names is dropped; then forwarded.
    Cancelled,
    /// Anything else (other requests, notifications, responses): forwarded as it is.
    Forward,
    /// Refused, never forwarded.
    Refuse(Rejection),
}

/// Whether `method` is `tools/call` spelled some other way (case, surrounding whitespace): a server that reads
/// methods loosely would run it as a call, so it is refused rather than forwarded as some other method.
fn loosely_tools_call(method: &str) -> bool {
    method != "tools/call" && method.trim().eq_ignore_ascii_case("tools/call")
}

/// What to do with `msg` (the [`Disposition`]). Inside a batch, kla answers no `tasks/*` and sees no discovery
/// (both exist only in the stateless era, which has no batches): those go upstream.
pub fn disposition(msg: &Message, in_batch: bool) -> Disposition {
    let Some(method) = msg.method() else {
        return Disposition::Forward;
    };
    let id = msg.answer_id();
    let is_request = msg.request_id().is_some();
    if loosely_tools_call(method) {
        return Disposition::Refuse(Rejection::new(
            INVALID_REQUEST,
            format!("method {method:?} is not \"tools/call\", and kla forwards no look-alike of it"),
            id,
        ));
    }
    match method {
        "tools/call" if is_request => Disposition::Decide,
        "tools/call" => Disposition::Refuse(Rejection::new(
            INVALID_REQUEST,
            "a tools/call without an \"id\" (a notification) is refused: kla decides every call and \
             answers it, and a notification cannot be answered",
            Value::Null,
        )),
        "tools/list" if is_request => Disposition::ListTools,
        "server/discover" if is_request && !in_batch => Disposition::Discover,
        "tasks/get" | "tasks/cancel" | "tasks/update" | "tasks/result" if is_request && !in_batch => {
            let ours = msg
                .params()
                .and_then(|p| p.get("taskId"))
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with(TASK_PREFIX));
            if ours {
                Disposition::OwnTask
            } else {
                Disposition::Forward
            }
        }
        "notifications/cancelled" if !in_batch => Disposition::Cancelled,
        _ => Disposition::Forward,
    }
}

/// Refuses a batch carrying a routing header: the headers describe one message, and a batch has several.
pub fn check_batch_headers(headers: &HeaderMap) -> Result<(), Rejection> {
    for h in ["mcp-method", "mcp-name"] {
        if headers.contains_key(h) {
            return Err(Rejection::new(
                HEADER_MISMATCH,
                format!("the {h} header names one message, and a batch has several"),
                Value::Null,
            ));
        }
    }
    Ok(())
}

/// Everything of a `tools/call` request that is forwarded and can change what it does, besides the tool's name and
/// `arguments` (which are the decision's action and context): the other `params` fields (`_meta` without its
/// correlation-only keys, see [`CORRELATION_META`]), the `MCP-Protocol-Version` and `Mcp-Param-*` headers (names
/// lowercased, values as sent), and the request target below the route (`target`, when there is one). An approval
/// is bound to it (it goes into the decision's `tool`), so a retry that changes any of it is decided anew.
/// `Err`: a header kla cannot bind (sent twice, or not text).
pub fn call_binding(
    headers: &HeaderMap,
    msg: &Message,
    target: &str,
) -> Result<Map<String, Value>, Rejection> {
    let id = msg.answer_id();
    let mut out = Map::new();
    let mut params = msg.params().cloned().unwrap_or_default();
    params.remove("name");
    params.remove("arguments");
    if let Some(Value::Object(meta)) = params.get_mut("_meta") {
        for k in CORRELATION_META {
            meta.remove(k);
        }
        if meta.is_empty() {
            params.remove("_meta");
        }
    }
    if !params.is_empty() {
        out.insert("params".into(), Value::Object(params));
    }
    let mut bound = Map::new();
    for name in headers.keys() {
        let n = name.as_str();
        if n != "mcp-protocol-version" && !n.starts_with("mcp-param-") {
            continue;
        }
        let mut values = headers.get_all(name).iter();
        let (Some(v), None) = (values.next(), values.next()) else {
            return Err(Rejection::new(
                HEADER_MISMATCH,
                format!("the {n} header appears more than once"),
                id,
            ));
        };
        let Ok(v) = std::str::from_utf8(v.as_bytes()) else {
            return Err(Rejection::new(
                HEADER_MISMATCH,
                format!("the {n} header is not UTF-8 text"),
                id,
            ));
        };
        bound.insert(n.to_owned(), v.into());
    }
    if !bound.is_empty() {
        out.insert("headers".into(), Value::Object(bound));
    }
    if !target.is_empty() {
        out.insert("target".into(), target.into());
    }
    Ok(out)
}

/// Adds the tasks extension to a `server/discover` answer's capabilities (kla serves tasks for the calls it holds,
/// whatever the upstream serves). `false`: not a discovery result (left as it is).
pub fn advertise_tasks(answer: &mut Value) -> bool {
    let Some(caps) = answer
        .get_mut("result")
        .and_then(|r| r.get_mut("capabilities"))
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    let ext = caps
        .entry("extensions")
        .or_insert_with(|| Value::Object(Map::new()));
    if !ext.is_object() {
        *ext = Value::Object(Map::new());
    }
    match ext.as_object_mut() {
        Some(e) if !e.contains_key(TASKS_EXTENSION) => {
            e.insert(TASKS_EXTENSION.into(), json!({}));
            true
        }
        _ => false,
    }
}

/// A JSON-RPC error answer.
pub fn error(id: &Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut e = json!({"code": code, "message": message});
    if let (Some(d), Some(o)) = (data, e.as_object_mut()) {
        o.insert("data".into(), d);
    }
    json!({"jsonrpc": "2.0", "id": id, "error": e})
}

/// A JSON-RPC result answer.
pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A `tools/call` result that failed, the way MCP clients show a tool's failure to the model (with `resultType` in
/// the stateless era).
pub fn tool_error(id: &Value, text: &str, era: Era) -> Value {
    let mut r = json!({"content": [{"type": "text", "text": text}], "isError": true});
    if era == Era::Stateless
        && let Some(o) = r.as_object_mut()
    {
        o.insert("resultType".into(), "complete".into());
    }
    result(id, r)
}

/// Removes from a `tools/list` answer the tools `hide` names (a tool without a string name is removed too: it
/// could never be called), and marks a stateless-era answer `cacheScope: "private"`, since it now depends on who
/// asked. `false`: not a `tools/list` result (left as it is).
pub fn filter_tools(answer: &mut Value, era: Era, mut hide: impl FnMut(&str) -> bool) -> bool {
    let Some(result) = answer.get_mut("result").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) else {
        return false;
    };
    tools.retain(|t| t.get("name").and_then(Value::as_str).is_some_and(|n| !hide(n)));
    if era == Era::Stateless {
        result.insert("cacheScope".into(), "private".into());
    }
    true
}

/// One SSE `message` event carrying `data` (JSON, so one line).
pub fn sse_event(data: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {data}\n\n"))
}

/// An SSE comment: a keep-alive the client ignores.
pub fn sse_comment(text: &str) -> Bytes {
    Bytes::from(format!(": {text}\n\n"))
}

/// Splits an SSE byte stream into whole events (each with the blank line that ends it), across chunk boundaries.
#[derive(Debug, Default)]
pub struct SseSplitter {
    buf: BytesMut,
    /// Where the next line starts in `buf`.
    line_start: usize,
    /// Bytes of `buf` already scanned.
    scanned: usize,
}

/// Bytes kept for an event that has not ended: an upstream that never ends one is cut off there.
pub const MAX_SSE_EVENT: usize = 8 * 1024 * 1024;

impl SseSplitter {
    /// Adds a chunk; returns the events it completed. `Err`: an event grew over [`MAX_SSE_EVENT`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, usize> {
        self.buf.extend_from_slice(chunk);
        let out = self.scan(false);
        if self.buf.len() > MAX_SSE_EVENT {
            return Err(self.buf.len());
        }
        Ok(out)
    }

    /// The end of the stream: a `\r` held back (it might have been the first half of `\r\n`) is a line end after
    /// all, as SSE parsers read it, so it may complete one more event. Returns those events and what is left (an
    /// event the stream did not end, which SSE clients discard).
    pub fn finish(&mut self) -> (Vec<Bytes>, Bytes) {
        let out = self.scan(true);
        (out, self.rest())
    }

    fn scan(&mut self, at_end: bool) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut i = self.scanned;
        while i < self.buf.len() {
            let c = self.buf[i];
            if c == b'\n' || c == b'\r' {
                let last = i + 1 == self.buf.len();
                // A '\r' at the end may be the first half of "\r\n": wait for the next byte, unless there is none.
                if c == b'\r' && last && !at_end {
                    break;
                }
                let end = if c == b'\r' && !last && self.buf[i + 1] == b'\n' {
                    i + 2
                } else {
                    i + 1
                };
                let empty = i == self.line_start;
                self.line_start = end;
                i = end;
                if empty {
                    out.push(self.buf.split_to(end).freeze());
                    i = 0;
                    self.line_start = 0;
                }
            } else {
                i += 1;
            }
        }
        self.scanned = i;
        out
    }

    /// What is left at the end of the stream (an unterminated event).
    pub fn rest(&mut self) -> Bytes {
        self.line_start = 0;
        self.scanned = 0;
        self.buf.split().freeze()
    }
}

/// One SSE event as a client reads it (the WHATWG algorithm): bytes decoded as UTF-8 with replacement, lines ended
/// by `\r\n`, `\n` or `\r`, a byte order mark dropped at the start of the stream, comments and unknown fields
/// ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// Comment lines (without the `:`), kept so keep-alives still flow.
    pub comments: Vec<String>,
    /// The `event` field.
    pub event: Option<String>,
    /// The `id` field (a value with NUL is ignored, as clients do).
    pub id: Option<String>,
    /// The `retry` field, when all ASCII digits.
    pub retry: Option<String>,
    /// The data (its lines joined with `\n`); `None` when the event has no `data` field, so is not dispatched.
    pub data: Option<String>,
}

/// Reads one event of [`SseSplitter`]; `first`: it starts the stream (where a byte order mark is dropped).
pub fn read_event(event: &[u8], first: bool) -> SseEvent {
    let text = String::from_utf8_lossy(event);
    let text = if first {
        text.strip_prefix('\u{feff}').unwrap_or(&text)
    } else {
        &text
    };
    let mut ev = SseEvent::default();
    let mut data: Option<String> = None;
    for line in text.split("\r\n").flat_map(|l| l.split(['\n', '\r'])) {
        if line.is_empty() {
            // The blank line that ends the event (the splitter's events have no other).
            break;
        }
        if let Some(c) = line.strip_prefix(':') {
            ev.comments.push(c.to_owned());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "event" => ev.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => ev.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                ev.retry = Some(value.to_owned())
            }
            _ => {}
        }
    }
    ev.data = data;
    ev
}

/// Writes an event kla read ([`read_event`]) with `data` as its data (or none): only what kla read goes out, so the
/// client reads what kla read. Empty when there is nothing to write.
pub fn render_event(ev: &SseEvent, data: Option<&Value>) -> Bytes {
    let mut out = String::new();
    for c in &ev.comments {
        out.push(':');
        out.push_str(c);
        out.push('\n');
    }
    for (name, v) in [("event", &ev.event), ("id", &ev.id), ("retry", &ev.retry)] {
        if let Some(v) = v {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(v);
            out.push('\n');
        }
    }
    if let Some(d) = data {
        out.push_str("data: ");
        out.push_str(&d.to_string());
        out.push('\n');
    }
    if out.is_empty() {
        return Bytes::new();
    }
    out.push('\n');
    Bytes::from(out)
}

/// The `data` of one event (its `data:` lines joined with `\n`); `None` when it has none. Only the tests and the
/// fuzz targets use it and [`replace_data`]; the proxy reads with [`read_event`] and writes with [`render_event`].
#[cfg(any(test, feature = "fuzzing"))]
pub fn event_data(event: &[u8]) -> Option<String> {
    read_event(event, false).data
}

/// `event` with its data replaced by `data` (its other fields, such as `id:`, kept). Lines end at `\r\n`, `\n`
/// or a lone `\r`, as SSE clients read them: otherwise a `data:` line after a lone `\r` would pass unreplaced.
#[cfg(any(test, feature = "fuzzing"))]
pub fn replace_data(event: &[u8], data: &Value) -> Bytes {
    let text = String::from_utf8_lossy(event);
    let mut out = String::new();
    let mut wrote = false;
    for line in text.split(['\n', '\r']) {
        if line.is_empty() {
            continue;
        }
        if line.starts_with("data:") || line == "data" {
            if !wrote {
                out.push_str(&format!("data: {data}\n"));
                wrote = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    Bytes::from(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn msg(v: Value) -> Message {
        match parse(v.to_string().as_bytes()) {
            Ok(Posted::Single(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn code(bytes: &[u8]) -> (i64, Value) {
        match parse(bytes) {
            Err(r) => (r.code, r.id),
            Ok(p) => panic!("accepted {p:?}"),
        }
    }

    #[test]
    fn bad_json_rpc_is_refused_with_the_right_code() {
        assert_eq!(code(b"{not json"), (PARSE_ERROR, Value::Null));
        assert_eq!(code(br#"{"a":1,"a":2}"#).0, PARSE_ERROR);
        assert_eq!(code(b"[]").0, INVALID_REQUEST);
        assert_eq!(code(b"3").0, INVALID_REQUEST);
        assert_eq!(
            code(br#"{"jsonrpc":"1.0","id":7,"method":"x"}"#),
            (INVALID_REQUEST, json!(7))
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#).0,
            INVALID_REQUEST
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"method":""}"#).0,
            INVALID_REQUEST
        );
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#).0,
            INVALID_REQUEST
        );
        assert_eq!(code(br#"{"jsonrpc":"2.0","id":1}"#).0, INVALID_REQUEST);
        assert_eq!(
            code(br#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#).0,
            INVALID_REQUEST
        );
        assert_eq!(code(br#"[{"jsonrpc":"2.0","method":"a"}, 5]"#).0, INVALID_REQUEST);
        assert!(matches!(
            parse(br#"{"jsonrpc":"2.0","id":"r","result":{}}"#),
            Ok(Posted::Single(_))
        ));
        assert!(matches!(
            parse(br#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","id":1,"method":"b"}]"#),
            Ok(Posted::Batch(b)) if b.len() == 2
        ));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn routing_headers_must_agree_with_the_body() {
        let call = msg(json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "lookup", "_meta": {META_VERSION: "2026-07-28"}}}));
        let ok = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "lookup"),
        ]);
        assert_eq!(era(&ok, Some(&call)), Era::Stateless);
        assert!(check_headers(&ok, &call, Era::Stateless).is_ok());
        let cases: [&[(&str, &str)]; 6] = [
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/list"),
                ("mcp-name", "lookup"),
            ],
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "other"),
            ],
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
            ],
            &[("mcp-protocol-version", "2026-07-28"), ("mcp-name", "lookup")],
            &[
                ("mcp-protocol-version", "2099-01-01"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "lookup"),
            ],
            &[
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "lookup"),
            ],
        ];
        for h in cases {
            let r = check_headers(&headers(h), &call, Era::Stateless).unwrap_err();
            assert_eq!(
                (r.code, r.id.clone()),
                (HEADER_MISMATCH, json!(3)),
                "{h:?}: {r:?}"
            );
        }
        // A base64-wrapped name is decoded; a non-canonical one never matches.
        let b64 = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode("lookup")
        );
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", &b64),
        ]);
        assert!(check_headers(&h, &call, Era::Stateless).is_ok());
        assert_eq!(decode_header("=?base64?bG9va3Vw?="), Some("lookup".into()));
        assert_eq!(decode_header("=?base64?bG9va3Vx=?="), None);
        // The handshake era checks only the headers that are present.
        let old =
            msg(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "lookup"}}));
        assert_eq!(era(&HeaderMap::new(), Some(&old)), Era::Handshake);
        assert!(check_headers(&HeaderMap::new(), &old, Era::Handshake).is_ok());
        let r = check_headers(&headers(&[("mcp-name", "x")]), &old, Era::Handshake).unwrap_err();
        assert_eq!(r.code, HEADER_MISMATCH);
    }

    #[test]
    fn eras_and_batches() {
        assert_eq!(
            era(&headers(&[("mcp-protocol-version", "2025-06-18")]), None),
            Era::Handshake
        );
        assert_eq!(
            era(&headers(&[("mcp-protocol-version", "2026-07-28")]), None),
            Era::Stateless
        );
        assert_eq!(
            era(&headers(&[("mcp-protocol-version", "garbage")]), None),
            Era::Handshake
        );
        assert!(batch_allowed(&HeaderMap::new()));
        assert!(batch_allowed(&headers(&[("mcp-protocol-version", "2025-03-26")])));
        assert!(!batch_allowed(&headers(&[(
            "mcp-protocol-version",
            "2025-06-18"
        )])));
    }

    #[test]
    fn tasks_and_progress_are_read_from_meta() {
        let m = msg(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a",
            "_meta": {"progressToken": "p1", META_CAPABILITIES: {"extensions": {TASKS_EXTENSION: {}}}}}}),
        );
        assert!(m.declares_tasks());
        assert_eq!(m.progress_token(), Some(&json!("p1")));
        let m = msg(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "a"}}));
        assert!(!m.declares_tasks());
        assert_eq!(m.progress_token(), None);
    }

    #[test]
    fn tools_are_filtered_and_marked_private() {
        let mut a = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "a"}, {"name": "b"}, {"x": 1}],
            "resultType": "complete", "cacheScope": "public", "ttlMs": 0}});
        assert!(filter_tools(&mut a, Era::Stateless, |n| n == "b"));
        assert_eq!(a["result"]["tools"], json!([{"name": "a"}]));
        assert_eq!(a["result"]["cacheScope"], "private");
        let mut e = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m"}});
        assert!(!filter_tools(&mut e, Era::Stateless, |_| true));
        let t = tool_error(&json!(4), "no", Era::Stateless);
        assert_eq!(t["result"]["isError"], true);
        assert_eq!(t["result"]["resultType"], "complete");
        assert!(
            tool_error(&json!(4), "no", Era::Handshake)["result"]
                .get("resultType")
                .is_none()
        );
    }

    #[test]
    fn sse_events_split_across_chunks() {
        let stream = b"event: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n: ping\n\nevent: message\ndata: {\"b\"\ndata: :2}\n\n";
        for cut in 0..stream.len() {
            let mut s = SseSplitter::default();
            let mut events = s.push(&stream[..cut]).unwrap();
            events.extend(s.push(&stream[cut..]).unwrap());
            assert_eq!(events.len(), 3, "cut at {cut}");
            assert_eq!(events.concat(), stream.to_vec());
            assert_eq!(event_data(&events[0]).as_deref(), Some("{\"a\":1}"));
            assert_eq!(event_data(&events[1]), None);
            assert_eq!(event_data(&events[2]).as_deref(), Some("{\"b\"\n:2}"));
            assert!(s.rest().is_empty());
        }
        let r = replace_data(b"event: message\nid: 7\ndata: {}\n\n", &json!({"x": 1}));
        assert_eq!(&r[..], b"event: message\nid: 7\ndata: {\"x\":1}\n\n");
    }

    #[test]
    fn replaced_data_leaves_no_old_data_behind_a_lone_cr() {
        // A filtered tools/list answer whose lines end in lone CRs must not keep the upstream's data.
        let ev = b"event: message\rdata: {\"tools\":[{\"name\":\"hidden\"}]}\r\r\n";
        let mut s = SseSplitter::default();
        let events = s.push(ev).unwrap();
        assert_eq!(events.len(), 1);
        let new = json!({"tools": []});
        let r = replace_data(&events[0], &new);
        assert_eq!(&r[..], b"event: message\ndata: {\"tools\":[]}\n\n");
        assert_eq!(event_data(&r), Some(new.to_string()));
        let r = replace_data(b"id: 1\r\ndata: a\r\ndata: b\r\n\r\n", &json!(1));
        assert_eq!(&r[..], b"id: 1\ndata: 1\n\n");
    }

    #[test]
    fn a_stream_is_read_as_sse_clients_read_it() {
        // A lone CR ending the stream ends a line: the event it completes is read, not passed on raw.
        let msg = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"hidden"}]}}"#;
        let stream = format!("event: message\rdata: {msg}\r\r");
        let mut s = SseSplitter::default();
        assert!(s.push(stream.as_bytes()).unwrap().is_empty());
        let (events, rest) = s.finish();
        assert_eq!(events.len(), 1);
        assert!(rest.is_empty());
        let ev = read_event(&events[0], true);
        assert_eq!(
            (ev.event.as_deref(), ev.data.as_deref()),
            (Some("message"), Some(msg))
        );
        // An event the stream did not end is left over (clients discard it).
        let mut s = SseSplitter::default();
        assert!(s.push(format!("data: {msg}\n").as_bytes()).unwrap().is_empty());
        let (events, rest) = s.finish();
        assert!(events.is_empty() && !rest.is_empty());
        // A byte that is not UTF-8 (in a comment, or anywhere) is read as a replacement character, as clients do.
        let raw = [
            &b": \xff\xfe\nevent: message\ndata: "[..],
            msg.as_bytes(),
            b"\n\n",
        ]
        .concat();
        let ev = read_event(&raw, false);
        assert_eq!(ev.data.as_deref(), Some(msg));
        assert_eq!(ev.comments, [" \u{fffd}\u{fffd}"]);
        // A byte order mark starts the stream only.
        let bom = format!("\u{feff}data: {msg}\n\n");
        assert_eq!(read_event(bom.as_bytes(), true).data.as_deref(), Some(msg));
        assert_eq!(read_event(bom.as_bytes(), false).data, None);
        // Fields as the spec reads them: one leading space dropped, no colon = empty value, NUL ids ignored.
        let ev = read_event(
            b"data\ndata:  x\nid: a\0b\nretry: 12x\nretry: 30\nfoo: bar\n\n",
            false,
        );
        assert_eq!(ev.data.as_deref(), Some("\n x"));
        assert_eq!((ev.id, ev.retry.as_deref()), (None, Some("30")));
        // Rendering writes only what was read.
        let ev = read_event(b": ping\nid: 7\ndata: {\"a\":\n data: 1}\n\n", false);
        let out = render_event(&ev, Some(&json!({"b": 2})));
        assert_eq!(&out[..], b": ping\nid: 7\ndata: {\"b\":2}\n\n");
        assert!(render_event(&SseEvent::default(), None).is_empty());
    }

    #[test]
    fn the_binding_of_a_call_is_everything_but_its_correlation() {
        let base = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "pay",
            "arguments": {"amount": 5}, "mode": "live",
            "_meta": {META_VERSION: "2026-07-28", "progressToken": 3, "traceparent": "00-x"}}});
        let h = headers(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-param-to", "acct"),
            ("x-other", "not bound"),
        ]);
        let b = call_binding(&h, &msg(base.clone()), "").unwrap();
        assert_eq!(
            Value::Object(b.clone()),
            json!({"params": {"mode": "live", "_meta": {META_VERSION: "2026-07-28"}},
                "headers": {"mcp-protocol-version": "2026-07-28", "mcp-param-to": "acct"}})
        );
        // Correlation changes nothing; anything else does.
        let mut v = base.clone();
        v["params"]["_meta"]["progressToken"] = json!("other");
        v["params"]["_meta"]
            .as_object_mut()
            .unwrap()
            .remove("traceparent");
        assert_eq!(call_binding(&h, &msg(v), "").unwrap(), b);
        let mut v = base.clone();
        v["params"]["mode"] = json!("test");
        assert_ne!(call_binding(&h, &msg(v), "").unwrap(), b);
        let mut v = base.clone();
        v["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = json!("debug");
        assert_ne!(call_binding(&h, &msg(v), "").unwrap(), b);
        let h2 = headers(&[("mcp-protocol-version", "2026-07-28"), ("mcp-param-to", "other")]);
        assert_ne!(call_binding(&h2, &msg(base.clone()), "").unwrap(), b);
        assert_ne!(call_binding(&h, &msg(base.clone()), "/x?y=1").unwrap(), b);
        // A bound header sent twice is refused, not bound to one of its values.
        let twice = headers(&[("mcp-param-to", "a"), ("mcp-param-to", "b")]);
        assert_eq!(
            call_binding(&twice, &msg(base), "").unwrap_err().code,
            HEADER_MISMATCH
        );
    }

    #[test]
    fn discovery_advertises_tasks() {
        let mut a = json!({"jsonrpc": "2.0", "id": 1, "result": {"capabilities": {"tools": {}}}});
        assert!(advertise_tasks(&mut a));
        assert_eq!(
            a["result"]["capabilities"]["extensions"][TASKS_EXTENSION],
            json!({})
        );
        assert_eq!(a["result"]["capabilities"]["tools"], json!({}));
        assert!(!advertise_tasks(&mut a));
        let mut e = json!({"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "m"}});
        assert!(!advertise_tasks(&mut e));
    }

    /// A method name: `tools/call` and its look-alikes, and others.
    fn method() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            Just("tools/call".to_owned()),
            "[tT][oO][oO][lL][sS]/[cC][aA][lL][lL]",
            "[ \t]{0,2}tools/call[ \t]{0,2}",
            Just("tools/list".to_owned()),
            Just("tasks/get".to_owned()),
            Just("notifications/cancelled".to_owned()),
            "[a-z/]{1,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever the shape (request, notification, batch member, look-alike method), a message whose method reads
        /// as `tools/call` is decided or refused, never forwarded, and only an exact `tools/call` request is decided.
        #[test]
        fn no_tools_call_is_forwarded_undecided(
            methods in proptest::collection::vec((method(), proptest::option::of(0u64..3), proptest::bool::ANY), 1..4),
            batch in proptest::bool::ANY,
        ) {
            let msgs: Vec<Value> = methods
                .iter()
                .map(|(m, id, string_id)| {
                    let mut v = json!({"jsonrpc": "2.0", "method": m, "params": {"name": "pay"}});
                    if let Some(id) = id {
                        v["id"] = if *string_id { json!(id.to_string()) } else { json!(id) };
                    }
                    v
                })
                .collect();
            let body = if batch { Value::Array(msgs) } else { msgs[0].clone() };
            let parsed = match parse(body.to_string().as_bytes()).unwrap() {
                Posted::Single(m) => vec![m],
                Posted::Batch(b) => b,
            };
            for m in &parsed {
                let d = disposition(m, batch);
                let method = m.method().unwrap();
                if method.trim().eq_ignore_ascii_case("tools/call") {
                    proptest::prop_assert!(
                        matches!(d, Disposition::Decide | Disposition::Refuse(_)),
                        "{method:?} -> {d:?}"
                    );
                    let exact = method == "tools/call" && m.request_id().is_some();
                    proptest::prop_assert_eq!(d == Disposition::Decide, exact, "{:?} -> {:?}", method, d);
                } else {
                    proptest::prop_assert!(!matches!(d, Disposition::Decide), "{method:?} -> {d:?}");
                }
            }
        }

        /// What kla writes of an event is read back by a client as exactly what kla read (so nothing kla did not
        /// read reaches the client), for any bytes.
        #[test]
        fn a_rewritten_event_reads_back_as_kla_read_it(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            first in proptest::bool::ANY,
        ) {
            let ev = read_event(&raw, first);
            let data = ev.data.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok());
            let out = render_event(&ev, data.as_ref());
            let mut s = SseSplitter::default();
            let mut events = s.push(&out).unwrap();
            let (more, rest) = s.finish();
            events.extend(more);
            proptest::prop_assert!(rest.is_empty());
            proptest::prop_assert!(events.len() <= 1);
            let again = events.first().map(|e| read_event(e, false)).unwrap_or_default();
            let expected = SseEvent { data: data.map(|v| v.to_string()), ..ev };
            proptest::prop_assert_eq!(again, expected);
        }
    }
}
