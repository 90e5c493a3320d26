//! MCP: `proxy::mcp::wire`, the POST body, the routing headers and the SSE events of an MCP route, and the target's seeds.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{Verdict, same_json, verdict};

/// Input: header lines (`name: value`) up to the first empty line, then the body. The body is read as a POST body
/// (`wire::parse`, then the header checks of both eras) and as an SSE stream (split whole and in two chunks, each
/// event's data read and replaced).
pub fn mcp(data: &[u8]) -> Verdict {
    use crate::proxy::mcp::wire::{self, Era, Posted};
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&[][..], data),
    };
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    for v in headers.values() {
        let Ok(s) = v.to_str() else { continue };
        if let (Some(d), Some(payload)) = (
            wire::decode_header(s),
            s.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")),
        ) {
            let e = base64::engine::general_purpose::STANDARD;
            assert_eq!(
                e.encode(d.as_bytes()),
                payload,
                "a decoded header is not its canonical base64"
            );
        }
    }
    mcp_sse(body);

    let posted = match wire::parse(body) {
        Ok(p) => p,
        Err(r) => {
            assert!(
                r.code == wire::PARSE_ERROR || r.code == wire::INVALID_REQUEST,
                "{r:?}"
            );
            assert!(r.id.is_null() || r.id.is_string() || r.id.is_number(), "{r:?}");
            assert!(r.code != wire::PARSE_ERROR || r.id.is_null(), "{r:?}");
            assert!(!r.message.is_empty());
            return Verdict::Refused;
        }
    };
    let messages = match &posted {
        Posted::Single(m) => std::slice::from_ref(m),
        Posted::Batch(b) => {
            assert!(!b.is_empty(), "an empty batch was accepted");
            b.as_slice()
        }
    };
    // Each accepted message re-serialises to JSON that parses back to the same message.
    for m in messages {
        let text = serde_json::to_vec(&m.0).expect("an accepted message re-serialises");
        match wire::parse(&text) {
            Ok(Posted::Single(again)) => assert!(
                same_json(&Value::Object(again.0), &Value::Object(m.0.clone())),
                "a message changed on re-parsing"
            ),
            other => panic!("a re-serialised message is refused: {other:?}"),
        }
        let id = m.answer_id();
        assert!(id.is_null() || id.is_string() || id.is_number(), "{id:?}");
    }
    if let Posted::Batch(b) = &posted {
        let all = Value::Array(b.iter().map(|m| Value::Object(m.0.clone())).collect());
        let text = serde_json::to_vec(&all).expect("an accepted batch re-serialises");
        assert!(matches!(wire::parse(&text), Ok(Posted::Batch(again)) if again.len() == b.len()));
        let _ = wire::batch_allowed(&headers);
        return Verdict::Accepted;
    }
    let m = &messages[0];
    let era = wire::era(&headers, Some(m));
    let checks = [Era::Handshake, Era::Stateless].map(|e| {
        let r = wire::check_headers(&headers, m, e);
        if let Err(r) = &r {
            assert_eq!((r.code, &r.id), (wire::HEADER_MISMATCH, &m.answer_id()), "{r:?}");
            assert!(!r.message.is_empty());
        }
        r.is_ok()
    });
    // The stateless era only adds requirements.
    assert!(
        !checks[1] || checks[0],
        "a stateless check passed that the handshake check refused"
    );
    if checks[1] && m.request_id().is_some() {
        let method = headers.get("mcp-method").and_then(|v| v.to_str().ok());
        assert_eq!(
            method,
            m.method(),
            "a stateless request passed without its Mcp-Method"
        );
    }
    verdict(checks[usize::from(era == Era::Stateless)])
}

/// The SSE side of [`mcp`]: splitting loses and adds no bytes and does not depend on chunking; every event ends with
/// a blank line; replacing an event's data leaves exactly the new data.
fn mcp_sse(stream: &[u8]) {
    use crate::proxy::mcp::wire::{self, SseSplitter};
    let split = |chunks: &[&[u8]]| {
        let mut s = SseSplitter::default();
        let mut events = Vec::new();
        for c in chunks {
            events.extend(s.push(c).expect("a short stream is under the event limit"));
        }
        (events, s.rest())
    };
    let (whole, rest) = split(&[stream]);
    let cut = stream.len().checked_div(2).unwrap_or(0) + stream.first().map_or(0, |b| usize::from(*b) % 7);
    let cut = cut.min(stream.len());
    let (parts, rest2) = split(&[&stream[..cut], &stream[cut..]]);
    let mut all: Vec<u8> = whole.iter().flat_map(|e| e.iter().copied()).collect();
    all.extend_from_slice(&rest);
    assert_eq!(all, stream, "splitting changed the stream");
    // A '\r' held back at a chunk's end may end an event only once the next chunk arrives; the bytes are the same.
    let mut all2: Vec<u8> = parts.iter().flat_map(|e| e.iter().copied()).collect();
    all2.extend_from_slice(&rest2);
    assert_eq!(all2, stream, "splitting in two chunks changed the stream");
    for ev in &whole {
        // An event is its lines and the empty line that ends it: it ends with a line break, and so does what
        // precedes that break (unless nothing does).
        let strip = |b: &[u8]| -> Option<usize> {
            if b.ends_with(b"\r\n") {
                Some(b.len() - 2)
            } else if b.ends_with(b"\n") || b.ends_with(b"\r") {
                Some(b.len() - 1)
            } else {
                None
            }
        };
        let body = strip(ev).expect("an event ends with a line break");
        assert!(
            body == 0 || strip(&ev[..body]).is_some(),
            "an event does not end with an empty line: {ev:?}"
        );
        let Some(old) = wire::event_data(ev) else {
            continue;
        };
        let new = json!({"jsonrpc": "2.0", "id": 1, "result": {"replaced": old.len()}});
        let out = wire::replace_data(ev, &new);
        assert_eq!(
            wire::event_data(&out),
            Some(new.to_string()),
            "a replaced event carries other data: {:?}",
            String::from_utf8_lossy(&out)
        );
        let (again, left) = split(&[&out]);
        assert!(
            again.len() == 1 && left.is_empty(),
            "a replaced event is not one event"
        );
    }
    // The end of the stream may complete one more event (a held-back '\r'); what an MCP route writes of each event
    // reads back as it read it, so a client reads nothing the route did not.
    let mut s = SseSplitter::default();
    let mut events = s.push(stream).expect("a short stream is under the event limit");
    events.extend(s.finish().0);
    for (i, ev) in events.iter().enumerate() {
        let read = wire::read_event(ev, i == 0);
        let data = read
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok());
        let out = wire::render_event(&read, data.as_ref());
        let again = wire::read_event(&out, false);
        assert_eq!(
            again.data,
            data.map(|v| v.to_string()),
            "a rewritten event carries other data"
        );
        assert_eq!(
            (again.comments, again.event, again.id, again.retry),
            (read.comments, read.event, read.id, read.retry)
        );
    }
}

/// MCP seeds: requests of both eras with their routing headers, a batch, a notification, a response, SSE streams,
/// and refusals.
pub(super) fn mcp_seeds() -> Vec<(&'static str, Vec<u8>, Verdict)> {
    let post = |headers: &str, body: Value| format!("{headers}\n\n{body}").into_bytes();
    let v2026 = "io.modelcontextprotocol/protocolVersion";
    vec![
        (
            "initialize",
            post(
                "mcp-protocol-version: 2025-06-18",
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
                    "capabilities": {"roots": {"listChanged": true}, "sampling": {}},
                    "clientInfo": {"name": "claude-code", "version": "1.0.0"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "initialized-notification",
            post(
                "mcp-protocol-version: 2025-06-18\nmcp-session-id: 1868a90c",
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-list-handshake",
            post(
                "mcp-protocol-version: 2025-11-25",
                json!({"jsonrpc": "2.0", "id": "list-1", "method": "tools/list", "params": {"cursor": "c1"}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-call-handshake",
            post(
                "mcp-protocol-version: 2025-06-18",
                json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "execute_refund",
                    "arguments": {"amount": 5000, "currency": "EUR", "note": "caf\u{e9}"},
                    "_meta": {"progressToken": "p-2"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "batch-2025-03-26",
            format!(
                "mcp-protocol-version: 2025-03-26\n\n{}",
                json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "lookup", "arguments": {"q": "x"}}},
                       {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 0}}])
            )
            .into_bytes(),
            Verdict::Accepted,
        ),
        (
            "response-to-server",
            post(
                "",
                json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": [{"uri": "file:///tmp", "name": "tmp"}]}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-list-stateless",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/list",
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {v2026: "2026-07-28"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-call-stateless",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/call\nmcp-name: execute_refund",
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "execute_refund",
                    "arguments": {"amount": 12000, "to": ["a@example.com"]},
                    "_meta": {v2026: "2026-07-28", "io.modelcontextprotocol/clientCapabilities":
                        {"extensions": {"io.modelcontextprotocol/tasks": {}}}}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-call-base64-name",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/call\nmcp-name: =?base64?Y2Fmw6k=?=",
                json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "caf\u{e9}",
                    "arguments": {}, "_meta": {v2026: "2026-07-28"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tasks-get-stateless",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tasks/get\nmcp-name: task-1",
                json!({"jsonrpc": "2.0", "id": 9, "method": "tasks/get", "params": {"taskId": "task-1"}}),
            ),
            Verdict::Accepted,
        ),
        (
            "sse-stream",
            b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p-2\",\"progress\":1}}\r\n\r\n: ping\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\n data: \"result\":{\"tools\":[{\"name\":\"a\"}]}}\n\n"
                .to_vec(),
            Verdict::Refused,
        ),
        (
            "sse-cr-lines",
            b"event: message\rdata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"hidden\"}]}}\r\r\n".to_vec(),
            Verdict::Refused,
        ),
        (
            "header-mismatch",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/list\nmcp-name: lookup",
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "lookup"}}),
            ),
            Verdict::Refused,
        ),
        (
            "repeated-key",
            b"\n\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"method\":\"tools/list\"}".to_vec(),
            Verdict::Refused,
        ),
    ]
}
