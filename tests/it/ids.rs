//! Trace and execution ids are recorded as given, outside redaction, so they are accepted only in their exact form
//! (`kla::names::ids`): a W3C trace id, and `exec_` with lowercase hex. Through `POST /v1/decisions.evaluate`
//! (`traceId`, `executionId`) and the proxy's `x-kla-execution-id` header anything else is a 400 `invalid_request`
//! naming the field, before anything is decided, recorded or forwarded.

use crate::harness::*;
use crate::upstream::{Upstream, through};
use kla::auth::Role;
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};

const T: &str = "acme-ids";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// Values that must never be recorded, planted in ids.
const PLANTED: [&str; 3] = ["jane.doe@example.com", "AKIAIOSFODNN7EXAMPLE", "4111111111111111"];

/// The ledger index of a decision.
async fn ledger_index(s: &Api, tok: &str, decision_id: &str) -> u64 {
    let r = s.get(&format!("/v1/decisions/{decision_id}"), tok, T).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["ledgerIndex"].as_u64().expect("ledgerIndex")
}

fn message(r: &Resp) -> String {
    r.body["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn evaluate_refuses_trace_and_execution_ids_outside_their_form() {
    let data = tempfile::tempdir().unwrap();
    let s = Server::start_cfg(raw(data.path()), None).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "ids-bot").await;
    let first = s
        .decide(&tok, T, json!({"agentId": agent, "action": "lookup_policy"}))
        .await;
    let before = first["ledgerIndex"].as_u64().unwrap();

    let bad_traces = [
        "t-1".to_owned(),
        TRACE.to_uppercase(),
        "0".repeat(32),
        TRACE[..31].to_owned(),
        format!("{TRACE}0"),
        format!(" {TRACE}"),
        String::new(),
        PLANTED[0].to_owned(),
        PLANTED[2].to_owned(),
    ];
    let bad_executions = [
        "exec-456".to_owned(),
        "EXEC_42".to_owned(),
        "exec_".to_owned(),
        format!("exec_{}", "a".repeat(33)),
        "exec_42\n".to_owned(),
        format!("exec_{}", PLANTED[0]),
        PLANTED[1].to_owned(),
        String::new(),
    ];
    let cases = bad_traces
        .iter()
        .map(|v| ("traceId", v))
        .chain(bad_executions.iter().map(|v| ("executionId", v)));
    for (field, value) in cases {
        let mut body = json!({"agentId": agent, "action": "lookup_policy", "context": {}});
        body[field] = json!(value);
        let r = send(s.req(Method::POST, "/v1/decisions.evaluate", &tok, T).json(&body)).await;
        r.assert_error(400, "invalid_request");
        let m = message(&r);
        assert!(m.contains(&format!("field '{field}'")), "{field}={value:?}: {m}");
        for p in PLANTED {
            assert!(!m.contains(p), "the refusal quotes {p:?}: {m}");
        }
    }

    // Valid ids are recorded and found; nothing was recorded for the refused ones.
    let exec = kla::names::ids::new_execution_id();
    let d = s
        .decide(
            &tok,
            T,
            json!({"agentId": agent, "action": "lookup_policy", "traceId": TRACE, "executionId": exec}),
        )
        .await;
    assert_eq!(
        d["ledgerIndex"].as_u64().unwrap(),
        before + 1,
        "a refused request left an entry"
    );
    let id = d["decisionId"].as_str().unwrap();
    let stored = s.get(&format!("/v1/decisions/{id}"), &tok, T).await;
    assert_eq!(stored.body["traceId"], TRACE);
    assert_eq!(stored.body["executionId"], exec.as_str());
    let aud = s.token(T, Role::Auditor);
    for q in [format!("traceId={TRACE}"), format!("executionId={exec}")] {
        let e = s.get(&format!("/v1/evidence?{q}"), &aud, T).await;
        assert_eq!(e.status, 200, "{q}: {}", e.body);
        assert_eq!(e.body["entries"].as_array().map(Vec::len), Some(1), "{q}");
    }
    // The short form a caller may mint itself.
    s.decide(
        &tok,
        T,
        json!({"agentId": agent, "action": "lookup_policy", "executionId": "exec_456"}),
    )
    .await;
    s.stop().await;
    assert_nowhere_raw(data.path(), &PLANTED);
}

#[tokio::test]
async fn the_proxy_refuses_a_malformed_execution_header_before_deciding_or_forwarding() {
    let mut up = Upstream::start().await;
    let packs = tempfile::tempdir().unwrap();
    write_pack(
        packs.path(),
        "ids",
        "    - {id: no-delete, match: {actions: [delete_customer]}, decision: block, reasonCode: NO_DELETE}\n",
    );
    let data = tempfile::tempdir().unwrap();
    let mut c = raw(data.path());
    c.policies = Some(packs.path().to_owned());
    c.allow_unsigned = Some(true);
    c.proxy_addr = Some("127.0.0.1:0".into());
    let yaml = format!(
        "proxy:\n  tenant: {T}\n  agent: ids-bot\n  routes:\n    - {{name: tools, prefix: /tools, upstream: \"http://{}/api\"}}\n",
        up.addr
    );
    c.proxy = kla::config::RawConfig::from_yaml(&yaml).unwrap().proxy;
    let s = Server::start_cfg(c, None).await;
    let admin = s.token(T, Role::Admin);
    let reg = send(
        s.req(Method::POST, "/v1/agents", &admin, T)
            .json(&agent_body("ids-bot")),
    )
    .await;
    assert_eq!(reg.status, 201, "{}", reg.body);
    let reg_lineage = reg.body["lineageId"].as_str().expect("lineageId").to_owned();
    let proxy = format!("http://{}", s.listener("proxy").expect("proxy listener"));
    let call = |values: &[&[u8]]| {
        let mut rb = client().get(format!("{proxy}/tools/lookup"));
        for v in values {
            rb = rb.header("x-kla-execution-id", HeaderValue::from_bytes(v).unwrap());
        }
        rb
    };
    let planted = format!("exec_{}", PLANTED[0]);
    let refused: [&[&[u8]]; 6] = [
        &[b"exec-456"],
        &[planted.as_bytes()],
        &[PLANTED[1].as_bytes()],
        &[b"exec_42", b"exec_43"],
        &[b"exec_4\xff2"],
        &[b""],
    ];
    for values in refused {
        let (status, headers, body) = through(call(values)).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("invalid_request")),
            "{values:?}: {body}"
        );
        let m = body["message"].as_str().unwrap_or_default();
        assert!(m.contains("header 'x-kla-execution-id'"), "{values:?}: {m}");
        for p in PLANTED {
            assert!(!m.contains(p), "the refusal quotes {p:?}: {m}");
        }
        assert!(
            headers.get("x-kla-decision-id").is_none(),
            "{values:?} was decided"
        );
    }
    let (status, headers, body) =
        through(call(&[b"exec_42"]).header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))).await;
    assert_eq!(status, 200, "{body}");
    let decision = headers
        .get("x-kla-decision-id")
        .and_then(|v| v.to_str().ok())
        .expect("decided")
        .to_owned();
    // Everything the upstream received was sent before its answer: only the valid call reached it.
    let seen = up.drain();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", "/api/lookup")
    );
    assert_eq!(seen[0].headers["x-kla-execution-id"], "exec_42");
    let stored: Value = s.get(&format!("/v1/decisions/{decision}"), &admin, T).await.body;
    assert_eq!(stored["executionId"], "exec_42", "{stored}");
    assert_eq!(stored["traceId"], TRACE, "{stored}");
    // The agent's registration is the entry right before: no refused call was recorded.
    let reg = s.get(&format!("/v1/lineage/{reg_lineage}"), &admin, T).await;
    assert_eq!(reg.status, 200, "{}", reg.body);
    assert_eq!(
        ledger_index(&s, &admin, &decision).await,
        reg.body["ledgerIndex"].as_u64().expect("ledgerIndex") + 1,
        "a refused call left an entry"
    );
    s.stop().await;
    assert_nowhere_raw(data.path(), &PLANTED);
}
