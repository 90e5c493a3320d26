//! kla's own telemetry: kla exports its spans over OTLP/gRPC to its own receiver (fixed tenant), and they come
//! back from `GET /v1/traces/{traceId}`: the proxied call's `execute_tool` span is a child of the caller's
//! `traceparent`, the decision span is its child, attributes are the bounded ones, and no context value leaks.
//! The tracer is process-wide, so this is the only test that turns it on.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use kla::auth::Role;
use kla::otlp::FileOtlp;
use kla::proxy::{FileAction, FileProxy, FileRoute};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::time::Duration;

const T: &str = "acme-telemetry";
const AGENT: &str = "telemetry-bot";
const SECRET: &str = "user-secret-7731";

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kla_exports_its_own_spans_to_its_own_receiver() {
    // An upstream that answers 200 to everything.
    let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = up.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let packs = tempfile::tempdir().unwrap();
    write_pack_file(
        packs.path(),
        "telemetry",
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {name: telemetry, version: 1.0.0}\nspec:\n  defaultDecision: allow\n  rules: []\n",
    );
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut c = raw(data.path());
    c.policies = Some(packs.path().to_owned());
    c.allow_unsigned = Some(true);
    c.proxy_addr = Some("127.0.0.1:0".into());
    c.proxy = Some(FileProxy {
        tenant: Some(T.into()),
        agent: Some(AGENT.into()),
        connect_timeout: Some("1s".into()),
        timeout: Some("1s".into()),
        routes: Some(vec![FileRoute {
            name: "billing".into(),
            prefix: "/billing".into(),
            upstream: format!("http://{up_addr}/api"),
            ca_file: None,
            kind: None,
            hide_blocked_tools: None,
            case_insensitive: None,
            ignore_trailing_slash: None,
            unmatched: None,
            significant_headers: None,
            actions: Some(vec![FileAction {
                method: "POST".into(),
                path: "/refunds".into(),
                action: "execute_refund".into(),
                context: Some([("user".to_string(), "/user_id".to_string())].into()),
            }]),
        }]),
        ..Default::default()
    });
    c.otlp_http_addr = Some("off".into());
    c.otlp_grpc_addr = Some(grpc.to_string());
    c.otlp = Some(FileOtlp {
        tenant: Some(T.into()),
        ..Default::default()
    });
    c.otel_endpoint = Some(format!("http://{grpc}"));
    let s = Server::start_cfg(c, None).await;
    let admin = s.token(T, Role::Admin);
    let agent_id = s.register(&admin, T, AGENT).await;
    let proxy = format!("http://{}", s.listener("proxy").expect("proxy listener"));

    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    let r = reqwest::Client::new()
        .post(format!("{proxy}/billing/refunds"))
        .header("traceparent", format!("00-{trace_hex}-{parent_span}-01"))
        .json(&json!({"amount": 10, "user_id": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The batch processor exports within its delay (5s by default).
    let auditor = s.token(T, Role::Auditor);
    let mut spans = Vec::new();
    for _ in 0..60 {
        let r = s.get(&format!("/v1/traces/{trace_hex}"), &auditor, T).await;
        if r.status == 200 {
            spans = r.body["spans"].as_array().cloned().unwrap_or_default();
            if spans.len() >= 2 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let find = |name: &str| {
        spans
            .iter()
            .find(|e| e["span"]["name"] == name)
            .unwrap_or_else(|| panic!("no span {name} in {spans:?}"))
            .clone()
    };
    let tool = find("execute_tool execute_refund");
    let dec = find("kla.decision");
    let (tool_sp, dec_sp) = (&tool["span"], &dec["span"]);
    assert_eq!(
        attr(tool_sp, "gen_ai.operation.name"),
        Some(&json!({"stringValue": "execute_tool"}))
    );
    assert_eq!(
        attr(tool_sp, "gen_ai.tool.name"),
        Some(&json!({"stringValue": "execute_refund"}))
    );
    assert_eq!(
        attr(tool_sp, "kla.decision.outcome"),
        Some(&json!({"stringValue": "allow"}))
    );
    // Parent/child: caller's span → execute_tool → kla.decision.
    assert_eq!(tool_sp["parentSpanId"], parent_span, "{tool_sp}");
    assert_eq!(dec_sp["parentSpanId"], tool_sp["spanId"], "{dec_sp}");
    assert_eq!(
        attr(dec_sp, "kla.decision.outcome"),
        Some(&json!({"stringValue": "allow"}))
    );
    assert_eq!(
        attr(dec_sp, "kla.action"),
        Some(&json!({"stringValue": "execute_refund"}))
    );
    assert_eq!(
        attr(dec_sp, "kla.agent.id"),
        Some(&json!({"stringValue": agent_id}))
    );
    assert_eq!(attr(dec_sp, "kla.tenant"), Some(&json!({"stringValue": T})));
    assert!(
        attr(dec_sp, "kla.policy.packs").is_some_and(|v| v.to_string().contains("\"telemetry\"")),
        "{dec_sp}"
    );
    assert_eq!(
        attr(&dec["resource"], "service.name"),
        Some(&json!({"stringValue": "kla"}))
    );
    let all = serde_json::to_string(&spans).unwrap();
    assert!(!all.contains(SECRET), "a context value leaked: {all}");
    s.stop().await;
}
