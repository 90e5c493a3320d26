//! The OTLP receivers through the real server over loopback: the official OpenTelemetry Python SDK (HTTP protobuf
//! and gRPC) and the Rust `opentelemetry-otlp` exporter export to kla; the spans come back from
//! `GET /v1/traces/{id}` with their lineage ids, each entry's inclusion proof verifies without trusting kla and
//! each span's hash recomputes; the JSON mapping, gzip, partial success, the HTTP error answers (400, 401, 403,
//! 405, 413 for a gzip bomb, 415), backpressure (503 + Retry-After, gRPC UNAVAILABLE), tenant isolation, the
//! fixed-tenant listener, decisions found from their trace, and forwarding over HTTP and gRPC.

use crate::harness::*;
use crate::verifier::check_lineage;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kla::auth::Role;
use kla::otlp::{FileForward, FileOtlp};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T: &str = "acme-otlp";

/// A server with both receivers on ephemeral ports, `f` adjusting the `otlp:` section.
async fn server(f: impl FnOnce(&mut FileOtlp)) -> Server {
    let mut o = FileOtlp::default();
    f(&mut o);
    Server::start_with(|c| {
        c.otlp_http_addr = Some("127.0.0.1:0".into());
        c.otlp_grpc_addr = Some("127.0.0.1:0".into());
        c.otlp = Some(o);
    })
    .await
}

fn http_url(s: &Server) -> String {
    format!(
        "http://{}/v1/traces",
        s.listener("otlp-http").expect("otlp-http listener")
    )
}

fn grpc_addr(s: &Server) -> SocketAddr {
    s.listener("otlp-grpc").expect("otlp-grpc listener")
}

fn text(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

fn span(trace: [u8; 16], id: u8, name: &str) -> Span {
    Span {
        trace_id: trace.to_vec(),
        span_id: vec![id; 8],
        name: name.into(),
        kind: 3,
        start_time_unix_nano: 1_764_633_600_000_000_000,
        end_time_unix_nano: 1_764_633_600_000_500_000,
        attributes: vec![KeyValue {
            key: "gen_ai.tool.name".into(),
            value: text("lookup_policy"),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn export(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: text("rust-test"),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// POSTs `body` to the OTLP/HTTP receiver with `content_type` and the agent token of `tenant` (`None`: no auth).
async fn post(s: &Server, body: Vec<u8>, content_type: &str, auth: Option<(&str, &str)>, gz: bool) -> Resp {
    let mut rb = s
        .client
        .post(http_url(s))
        .header("content-type", content_type)
        .body(if gz { gzip(&body) } else { body });
    if gz {
        rb = rb.header("content-encoding", "gzip");
    }
    if let Some((tok, tenant)) = auth {
        rb = rb.bearer_auth(tok).header("x-tenant-id", tenant);
    }
    send(rb).await
}

/// `GET /v1/traces/{id}` as `tok` in `tenant`.
async fn trace(s: &Server, tok: &str, tenant: &str, id: &str) -> Resp {
    s.get(&format!("/v1/traces/{id}"), tok, tenant).await
}

/// Checks every span entry of a trace answer: its lineage proof verifies (inclusion in the signed tree) and each
/// span's hash is SHA-256 of the canonical form of the span as the entry holds it.
async fn check_sealed(s: &Server, tenant: &str, got: &Value) {
    let tok = s.token(tenant, Role::Auditor);
    let (_, key) = s.ledger_key(&tok, tenant).await;
    let mut lineages: Vec<&str> = got["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sp| sp["lineageId"].as_str().unwrap())
        .collect();
    lineages.dedup();
    assert!(!lineages.is_empty());
    for lin in lineages {
        let (entry, _) = check_lineage(s, &tok, tenant, lin, &key).await;
        assert_eq!(entry["kind"], "trace.spans");
        assert_eq!(entry["tenant"], tenant);
        let body = &entry["body"];
        let stored: Vec<&Value> = body["resourceSpans"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["scopeSpans"].as_array().unwrap())
            .flat_map(|s| s["spans"].as_array().unwrap())
            .collect();
        let hashes = body["spanHashes"].as_array().unwrap();
        assert_eq!(stored.len(), hashes.len());
        for (sp, h) in stored.iter().zip(hashes) {
            let canonical = serde_json_canonicalizer::to_vec(sp).unwrap();
            assert_eq!(
                h["hash"],
                format!("sha256:{}", hex::encode(Sha256::digest(&canonical)))
            );
            assert_eq!(h["spanId"], sp["spanId"]);
        }
        assert!(
            body["packs"].as_array().is_some_and(|p| !p.is_empty()),
            "the active pack is named"
        );
    }
    // The evidence endpoint selects the same entries by trace.
    let id = got["traceId"].as_str().unwrap();
    let ev = s.get(&format!("/v1/evidence?traceId={id}"), &tok, tenant).await;
    assert_eq!(ev.status, 200, "{}", ev.text());
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
        .unwrap_or_else(|| panic!("no attribute {key} in {span}"))
}

/// Runs tests/py/otlp_export.py; returns what it printed.
async fn python_export(protocol: &str, endpoint: String, token: &str, tenant: &str, gzip: bool) -> Value {
    let (protocol, token, tenant) = (protocol.to_owned(), token.to_owned(), tenant.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(venv_python())
            .arg(repo_path("tests/py/otlp_export.py"))
            .env("PROTOCOL", protocol)
            .env("ENDPOINT", endpoint)
            .env("TOKEN", token)
            .env("TENANT", tenant)
            .env("GZIP", if gzip { "1" } else { "0" })
            .output()
            .expect("run the Python exporter")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exporter failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_exports_over_http_protobuf_and_grpc_and_every_sealed_span_verifies() {
    let s = server(|_| {}).await;
    let agent = s.token(T, Role::Agent);
    // Each protocol plain and gzip-compressed.
    for (protocol, endpoint, gzip) in [
        ("http", http_url(&s), false),
        ("grpc", format!("http://{}", grpc_addr(&s)), false),
        ("http", http_url(&s), true),
        ("grpc", format!("http://{}", grpc_addr(&s)), true),
    ] {
        let sent = python_export(protocol, endpoint, &agent, T, gzip).await;
        assert_eq!(sent["ok"], true, "{protocol}: {sent}");
        let id = sent["traceId"].as_str().unwrap();
        let r = trace(&s, &agent, T, id).await;
        assert_eq!(r.status, 200, "{protocol}: {}", r.text());
        let spans = r.body["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2, "{protocol}: {}", r.body);
        let by_name = |n: &str| {
            spans
                .iter()
                .find(|s| s["span"]["name"] == n)
                .unwrap_or_else(|| panic!("{n} in {}", r.body))
        };
        let root = by_name("invoke_agent claims-triage");
        let tool = by_name("execute_tool lookup_policy");
        assert_eq!(root["span"]["traceId"], id);
        assert_eq!(root["span"]["kind"], 2, "SERVER, an enum as its number");
        assert_eq!(tool["span"]["parentSpanId"], root["span"]["spanId"]);
        let a = &root["span"];
        assert_eq!(
            attr(a, "gen_ai.operation.name"),
            &json!({"stringValue": "invoke_agent"})
        );
        assert_eq!(attr(a, "gen_ai.usage.input_tokens"), &json!({"intValue": "1234"}));
        assert_eq!(
            attr(a, "gen_ai.request.temperature"),
            &json!({"doubleValue": 0.2})
        );
        assert_eq!(attr(a, "app.flagged"), &json!({"boolValue": true}));
        assert_eq!(
            attr(a, "app.tags"),
            &json!({"arrayValue": {"values": [{"stringValue": "refund"}, {"stringValue": "priority"}]}})
        );
        assert_eq!(
            attr(a, "app.counts")["arrayValue"]["values"][2],
            json!({"intValue": "3"})
        );
        assert_eq!(a["events"][0]["name"], "user.message");
        assert_eq!(
            attr(&a["events"][0], "content"),
            &json!({"stringValue": "please refund order 1234"})
        );
        let t = &tool["span"];
        assert_eq!(t["links"][0]["traceId"], sent["linkedTraceId"]);
        assert_eq!(
            attr(&t["links"][0], "link.reason"),
            &json!({"stringValue": "retry"})
        );
        assert_eq!(t["status"]["code"], 2);
        assert_eq!(t["status"]["message"], "tool timed out");
        assert_eq!(
            attr(&root["resource"], "service.name"),
            &json!({"stringValue": "py-agent"})
        );
        assert_eq!(root["scope"]["name"], "kla.tests.python");
        check_sealed(&s, T, &r.body).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_opentelemetry_otlp_exporter_exports_over_grpc() {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
    let s = server(|_| {}).await;
    let agent = s.token(T, Role::Agent);
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("authorization", format!("Bearer {agent}").parse().unwrap());
    md.insert("x-tenant-id", T.parse().unwrap());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", grpc_addr(&s)))
        .with_metadata(md)
        .build()
        .expect("exporter");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("rust-agent")
                .build(),
        )
        .build();
    // The simple processor blocks on each export: off the runtime's workers, which serve kla meanwhile.
    let trace_id = tokio::task::spawn_blocking(move || {
        let tracer = provider.tracer("kla.tests.rust");
        let mut span = tracer.start("guardrail check_refund");
        span.set_attribute(opentelemetry::KeyValue::new("gen_ai.operation.name", "guardrail"));
        span.set_attribute(opentelemetry::KeyValue::new("app.amount", 1250_i64));
        span.add_event("checked", vec![opentelemetry::KeyValue::new("ok", true)]);
        let id = span.span_context().trace_id().to_string();
        span.end();
        provider.force_flush().expect("flush");
        provider.shutdown().expect("shutdown");
        id
    })
    .await
    .unwrap();
    let r = trace(&s, &agent, T, &trace_id).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let spans = r.body["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 1, "{}", r.body);
    let sp = &spans[0]["span"];
    assert_eq!(sp["name"], "guardrail check_refund");
    assert_eq!(attr(sp, "app.amount"), &json!({"intValue": "1250"}));
    assert_eq!(sp["events"][0]["name"], "checked");
    assert_eq!(
        attr(&spans[0]["resource"], "service.name"),
        &json!({"stringValue": "rust-agent"})
    );
    check_sealed(&s, T, &r.body).await;
}

#[tokio::test]
async fn json_mapping_gzip_and_partial_success() {
    let s = server(|_| {}).await;
    let agent = s.token(T, Role::Agent);
    let trace_hex = "5b8efff798038103d269b633813fc60c";
    // The OTLP JSON mapping: hex ids (upper case accepted), int64 as strings, enums as numbers, unknown fields;
    // the second span's id has 2 bytes, so it is rejected and the rest is sealed.
    let body = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "json-agent"}}]},
    "scopeSpans": [{"scope": {"name": "manual"}, "spans": [
        {"traceId": trace_hex.to_uppercase(), "spanId": "eee19b7ec3c1b174", "name": "json op", "kind": 1,
         "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
         "attributes": [{"key": "big", "value": {"intValue": "9007199254740993"}}], "someFutureField": 1},
        {"traceId": trace_hex, "spanId": "abcd", "name": "bad id"}
    ]}]}]});
    let r = post(
        &s,
        body.to_string().into_bytes(),
        "application/json",
        Some((&agent, T)),
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "answered in the request's encoding"
    );
    assert_eq!(r.body["partialSuccess"]["rejectedSpans"], "1");
    let msg = r.body["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(msg.contains("spans[1]: spanId must be 8 bytes, got 2"), "{msg}");
    // gzip, protobuf: a second span of the same trace in its own entry.
    let mut t = [0u8; 16];
    hex::decode_to_slice(trace_hex, &mut t).unwrap();
    let proto = export(vec![span(t, 7, "proto op")]).encode_to_vec();
    let r = post(&s, proto, "application/x-protobuf", Some((&agent, T)), true).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    let resp = ExportTraceServiceResponse::decode(r.bytes.as_slice()).unwrap();
    assert_eq!(resp.partial_success, None, "fully accepted");
    let got = trace(&s, &agent, T, trace_hex).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let names: Vec<_> = got.body["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["span"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["json op", "proto op"],
        "ledger order, the rejected span absent"
    );
    let first = &got.body["spans"][0]["span"];
    assert_eq!(
        attr(first, "big"),
        &json!({"intValue": "9007199254740993"}),
        "exact beyond 2^53"
    );
    assert_eq!(first["startTimeUnixNano"], "1544712660000000000");
    assert_ne!(
        got.body["spans"][0]["lineageId"],
        got.body["spans"][1]["lineageId"]
    );
    check_sealed(&s, T, &got.body).await;
    // An export whose every span is invalid is still a success, with every span rejected and nothing sealed.
    let mut bad = span(t, 1, "zero trace");
    bad.trace_id = vec![0; 16];
    let r = post(
        &s,
        export(vec![bad]).encode_to_vec(),
        "application/x-protobuf",
        Some((&agent, T)),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    let resp = ExportTraceServiceResponse::decode(r.bytes.as_slice()).unwrap();
    assert_eq!(resp.partial_success.map(|p| p.rejected_spans), Some(1));
}

#[tokio::test]
async fn http_errors_are_answered_with_their_codes() {
    let s = server(|o| o.max_body = Some(1 << 20)).await;
    let agent = s.token(T, Role::Agent);
    let ok = export(vec![span([1; 16], 1, "x")]).encode_to_vec();
    let a = Some((agent.as_str(), T));
    // Undecodable: 400, as google.rpc.Status for protobuf and kla's shape for JSON.
    let r = post(
        &s,
        b"\xff\xff\xff\xff".to_vec(),
        "application/x-protobuf",
        a,
        false,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(!r.bytes.is_empty());
    post(&s, b"{not json".to_vec(), "application/json", a, false)
        .await
        .assert_error(400, "invalid_request");
    post(
        &s,
        br#"{"resourceSpans":[],"resourceSpans":[]}"#.to_vec(),
        "application/json",
        a,
        false,
    )
    .await
    .assert_error(400, "invalid_request");
    // A gzip body that is not protobuf once inflated, and a body that is not gzip at all.
    let r = post(
        &s,
        b"\xff\xff\xff\xff".to_vec(),
        "application/x-protobuf",
        a,
        true,
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    let r = send(
        s.client
            .post(http_url(&s))
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .bearer_auth(&agent)
            .header("x-tenant-id", T)
            .body("{}"),
    )
    .await;
    r.assert_error(400, "invalid_request");
    // 415: another media type or content encoding.
    post(&s, ok.clone(), "text/plain", a, false)
        .await
        .assert_error(415, "invalid_request");
    let r = send(
        s.client
            .post(http_url(&s))
            .header("content-type", "application/json")
            .header("content-encoding", "br")
            .bearer_auth(&agent)
            .header("x-tenant-id", T)
            .body("{}"),
    )
    .await;
    r.assert_error(415, "invalid_request");
    // 405 and 404.
    send(s.client.get(http_url(&s)))
        .await
        .assert_error(405, "invalid_request");
    send(s.client.post(http_url(&s).replace("/v1/traces", "/v1/logs")))
        .await
        .assert_error(404, "not_found");
    // 413: a gzip bomb (64 MiB of zeroes in about 64 KiB) is cut off while inflating; a plain body over the limit.
    let bomb = vec![0u8; 64 << 20];
    let r = post(&s, bomb, "application/x-protobuf", a, true).await;
    assert_eq!(r.status, 413, "{r:?}");
    post(&s, vec![b' '; (1 << 20) + 1], "application/json", a, false)
        .await
        .assert_error(413, "invalid_request");
    // 401 without or with a bad credential; 403 for a role other than agent or a tenant the token lacks.
    post(&s, ok.clone(), "application/json", None, false)
        .await
        .assert_error(401, "unauthorized");
    post(
        &s,
        ok.clone(),
        "application/json",
        Some(("not-a-token", T)),
        false,
    )
    .await
    .assert_error(401, "unauthorized");
    let admin = s.token(T, Role::Admin);
    post(&s, ok.clone(), "application/json", Some((&admin, T)), false)
        .await
        .assert_error(403, "forbidden");
    post(
        &s,
        ok.clone(),
        "application/json",
        Some((&agent, "other-tenant")),
        false,
    )
    .await
    .assert_error(403, "forbidden");
    // gRPC: unauthenticated without a token.
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
            format!("http://{}", grpc_addr(&s)),
        )
        .await
        .unwrap();
    let err = client
        .export(export(vec![span([1; 16], 1, "x")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    // Nothing of the refused exports was sealed.
    let r = trace(&s, &agent, T, &hex::encode([1u8; 16])).await;
    r.assert_error(404, "not_found");
}

/// An export whose body is still arriving holds its slot: with one slot, the next export over HTTP is answered
/// 503 with `Retry-After` and one over gRPC UNAVAILABLE, and once the slow one finishes exports are taken again.
#[tokio::test]
async fn backpressure_answers_503_with_retry_after_and_grpc_unavailable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server(|o| o.max_in_flight = Some(1)).await;
    let agent = s.token(T, Role::Agent);
    let body = export(vec![span([2; 16], 1, "slow")]).encode_to_vec();
    let mut slow = tokio::net::TcpStream::connect(s.listener("otlp-http").unwrap())
        .await
        .unwrap();
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nhost: kla\r\ncontent-type: application/x-protobuf\r\nauthorization: Bearer {agent}\r\n\
         x-tenant-id: {T}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..1]).await.unwrap();
    let a = Some((agent.as_str(), T));
    let quick = export(vec![span([3; 16], 1, "quick")]).encode_to_vec();
    let mut busy = None;
    for _ in 0..100 {
        let r = post(&s, quick.clone(), "application/json", a, false).await;
        if r.status == 503 {
            busy = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let busy = busy.expect("an export is refused while the slot is held");
    busy.assert_error(503, "internal_error");
    assert_eq!(busy.header("retry-after"), Some("1"));
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
            format!("http://{}", grpc_addr(&s)),
        )
        .await
        .unwrap();
    let mut req = tonic::Request::new(export(vec![span([3; 16], 1, "quick")]));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {agent}").parse().unwrap());
    req.metadata_mut().insert("x-tenant-id", T.parse().unwrap());
    let err = client.export(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // The slow export completes and is sealed; then the slot is free again.
    slow.write_all(&body[1..]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = slow.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let r = post(&s, quick, "application/x-protobuf", a, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(trace(&s, &agent, T, &hex::encode([2u8; 16])).await.status, 200);
}

#[tokio::test]
async fn tenants_are_isolated_and_a_fixed_tenant_listener_takes_exports_without_a_token() {
    const FIXED: &str = "acme-fixed";
    let s = server(|o| o.tenant = Some(FIXED.into())).await;
    // No credential: into the fixed tenant.
    let req = export(vec![span([4; 16], 1, "no token")]).encode_to_vec();
    let r = post(&s, req.clone(), "application/x-protobuf", None, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let id = hex::encode([4u8; 16]);
    let fixed_reader = s.token(FIXED, Role::Auditor);
    let got = trace(&s, &fixed_reader, FIXED, &id).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body["spans"][0]["span"]["name"], "no token");
    // A token for another tenant cannot push into the fixed listener under another tenant name.
    let other = s.token(T, Role::Agent);
    let r = post(&s, req, "application/json", Some((&other, T)), false).await;
    r.assert_error(403, "forbidden");
    // Another tenant cannot read the trace (the same 404 as an unknown trace), nor its entries.
    let stranger = s.token(T, Role::Admin);
    trace(&s, &stranger, T, &id).await.assert_error(404, "not_found");
    let lin = got.body["spans"][0]["lineageId"].as_str().unwrap();
    s.get(&format!("/v1/lineage/{lin}"), &stranger, T)
        .await
        .assert_error(404, "not_found");
    s.get(&format!("/v1/evidence?traceId={id}"), &stranger, T)
        .await
        .assert_error(404, "not_found");
    // A token of tenant T cannot read as the fixed tenant.
    trace(&s, &stranger, FIXED, &id)
        .await
        .assert_error(403, "forbidden");
    // Reading needs a token: the API's own 401.
    send(s.anon(Method::GET, &format!("/v1/traces/{id}")))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn decisions_made_with_a_trace_id_are_listed_from_the_trace() {
    let s = server(|_| {}).await;
    let agent = s.token(T, Role::Agent);
    let agent_id = s.register(&agent, T, "traced-bot").await;
    let trace_hex = hex::encode([5u8; 16]);
    let r = post(
        &s,
        export(vec![span([5; 16], 1, "execute_tool refund")]).encode_to_vec(),
        "application/x-protobuf",
        Some((&agent, T)),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    let d = s
        .decide(
            &agent,
            T,
            json!({"agentId": agent_id, "action": "lookup_policy", "context": {}, "traceId": trace_hex}),
        )
        .await;
    let got = trace(&s, &agent, T, &trace_hex).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body["spans"].as_array().unwrap().len(), 1);
    let decisions = got.body["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{}", got.body);
    assert_eq!(decisions[0]["decisionId"], d["decisionId"]);
    assert_eq!(decisions[0]["lineageId"], d["lineageId"]);
    assert_eq!(decisions[0]["action"], "lookup_policy");
    // The upper-case form of the id names the same trace.
    let upper = trace(&s, &agent, T, &trace_hex.to_uppercase()).await;
    assert_eq!(upper.body, got.body);
    // Paging by entries: one per page.
    let p1 = s.get(&format!("/v1/traces/{trace_hex}?limit=1"), &agent, T).await;
    assert_eq!(p1.body["spans"].as_array().unwrap().len(), 1);
    assert!(p1.body["decisions"].as_array().unwrap().is_empty());
    let cursor = p1.body["nextCursor"].as_str().unwrap();
    let p2 = s
        .get(
            &format!("/v1/traces/{trace_hex}?limit=1&cursor={cursor}"),
            &agent,
            T,
        )
        .await;
    assert_eq!(p2.body["decisions"].as_array().unwrap().len(), 1, "{}", p2.body);
    assert_eq!(p2.body["nextCursor"], Value::Null);
}

/// A plain HTTP/1.1 OTLP endpoint on 127.0.0.1:0 recording every export it receives (protobuf decoded).
struct Downstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Downstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn downstream() -> Downstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let ok = req.uri().path() == "/v1/traces"
                            && req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v == "application/x-protobuf");
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        if let (true, Ok(r)) = (ok, ExportTraceServiceRequest::decode(body)) {
                            record.lock().unwrap().push(r);
                        }
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Downstream { addr, seen, task }
}

async fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..250 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not forwarded within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redacted_spans_are_forwarded_after_sealing_over_http_and_grpc() {
    // HTTP: to a recording endpoint.
    let down = downstream().await;
    let s = server(|o| {
        o.forward = Some(FileForward {
            endpoint: format!("http://{}/v1/traces", down.addr),
            ..Default::default()
        })
    })
    .await;
    let agent = s.token(T, Role::Agent);
    let mut bad = span([6; 16], 2, "rejected");
    bad.span_id = vec![1];
    let r = post(
        &s,
        export(vec![span([6; 16], 1, "forwarded"), bad]).encode_to_vec(),
        "application/x-protobuf",
        Some((&agent, T)),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    let got = eventually(|| down.seen.lock().unwrap().first().cloned()).await;
    let spans: Vec<&Span> = got
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    assert_eq!(spans.len(), 1, "only the accepted span is forwarded");
    assert_eq!(spans[0].name, "forwarded");
    assert_eq!(spans[0].trace_id, vec![6; 16]);
    // What was forwarded is what was sealed.
    let sealed = trace(&s, &agent, T, &hex::encode([6u8; 16])).await;
    assert_eq!(sealed.body["spans"].as_array().unwrap().len(), 1);
    assert_eq!(
        serde_json::to_value(spans[0]).unwrap(),
        sealed.body["spans"][0]["span"]
    );

    // gRPC: to a second kla's OTLP/gRPC receiver with a fixed tenant.
    let second = server(|o| o.tenant = Some("acme-down".into())).await;
    let s2 = server(|o| {
        o.forward = Some(FileForward {
            endpoint: format!("http://{}", grpc_addr(&second)),
            protocol: Some("grpc".into()),
            ..Default::default()
        })
    })
    .await;
    let agent2 = s2.token(T, Role::Agent);
    let r = post(
        &s2,
        export(vec![span([7; 16], 1, "via grpc")]).encode_to_vec(),
        "application/x-protobuf",
        Some((&agent2, T)),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    let reader = second.token("acme-down", Role::Auditor);
    let id = hex::encode([7u8; 16]);
    let mut found = Value::Null;
    for _ in 0..250 {
        let r = trace(&second, &reader, "acme-down", &id).await;
        if r.status == 200 {
            found = r.body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(found["spans"][0]["span"]["name"], "via grpc", "{found}");
}

/// A ledger that refuses appends (its entries file is `/dev/full`, so every write fails as on a full disk): the
/// export is answered 503 with `Retry-After` over HTTP and UNAVAILABLE over gRPC, nothing is indexed and
/// nothing is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_failure_answers_503_and_seals_and_forwards_nothing() {
    use kla::ledger::{Ledger, LedgerConfig};
    assert!(
        std::path::Path::new("/dev/full").exists(),
        "this test needs /dev/full"
    );
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ldir = data.join("ledger");
    drop(Ledger::open(LedgerConfig::new(&ldir)).unwrap());
    let entries = ldir.join(kla::ledger::log::ENTRIES_FILE);
    std::fs::remove_file(&entries).unwrap();
    std::os::unix::fs::symlink("/dev/full", &entries).unwrap();
    let down = downstream().await;
    let mut cfg = raw(&data);
    cfg.otlp_http_addr = Some("127.0.0.1:0".into());
    cfg.otlp_grpc_addr = Some("127.0.0.1:0".into());
    cfg.otlp = Some(FileOtlp {
        forward: Some(FileForward {
            endpoint: format!("http://{}/v1/traces", down.addr),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = Server::start_cfg(cfg, None).await;
    let agent = s.token(T, Role::Agent);
    let req = export(vec![span([8; 16], 1, "never sealed")]);
    let json = serde_json::to_vec(&req).unwrap();
    let r = post(&s, json, "application/json", Some((&agent, T)), false).await;
    r.assert_error(503, "internal_error");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = post(
        &s,
        req.encode_to_vec(),
        "application/x-protobuf",
        Some((&agent, T)),
        false,
    )
    .await;
    assert_eq!(r.status, 503);
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
            format!("http://{}", grpc_addr(&s)),
        )
        .await
        .unwrap();
    let mut g = tonic::Request::new(req);
    g.metadata_mut()
        .insert("authorization", format!("Bearer {agent}").parse().unwrap());
    g.metadata_mut().insert("x-tenant-id", T.parse().unwrap());
    let err = client.export(g).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    trace(&s, &agent, T, &hex::encode([8u8; 16]))
        .await
        .assert_error(404, "not_found");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(down.seen.lock().unwrap().is_empty(), "nothing is forwarded");
    s.stop().await;
}

/// `google.rpc.Status` with its details, as OTLP error bodies and `grpc-status-details-bin` carry it.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The retry delay (seconds) of the one `RetryInfo` detail of an encoded `google.rpc.Status`.
fn retry_delay(status: &[u8]) -> i64 {
    let st = RpcStatus::decode(status).unwrap();
    assert_eq!(st.details.len(), 1, "{st:?}");
    assert_eq!(st.details[0].type_url, "type.googleapis.com/google.rpc.RetryInfo");
    RetryInfo::decode(st.details[0].value.as_slice())
        .unwrap()
        .retry_delay
        .unwrap()
        .seconds
}

/// A gRPC export of `req` as `tenant`'s agent.
async fn grpc_export(
    s: &Server,
    tok: &str,
    tenant: &str,
    req: ExportTraceServiceRequest,
) -> Result<ExportTraceServiceResponse, tonic::Status> {
    let mut client =
        opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
            format!("http://{}", grpc_addr(s)),
        )
        .await
        .unwrap();
    let mut r = tonic::Request::new(req);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {tok}").parse().unwrap());
    r.metadata_mut().insert("x-tenant-id", tenant.parse().unwrap());
    client.export(r).await.map(|r| r.into_inner())
}

fn spans_of(n: u8, trace: u8) -> Vec<Span> {
    (1..=n).map(|i| span([trace; 16], i, "q")).collect()
}

/// A tenant over its span quota (`otlp.quota`) is answered 429 with `Retry-After` (JSON: `rate_limited`;
/// protobuf: `google.rpc.Status` RESOURCE_EXHAUSTED with a `RetryInfo` of the same delay) and over gRPC
/// RESOURCE_EXHAUSTED with `RetryInfo` in its details and as `google.rpc.retryinfo-bin`; nothing of a refused
/// export is sealed; another tenant is not affected; the quota refills. The API's rate limit applies to exports
/// as a bucket of its own: a throttled exporter leaves the tenant's API calls alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_or_rate_is_answered_429_and_resource_exhausted_with_the_retry_delay() {
    const OTHER: &str = "acme-otlp-2";
    let s = server(|o| {
        o.quota = Some(kla::otlp::FileQuota {
            spans_per_second: 2.0,
            burst: Some(3),
        })
    })
    .await;
    let agent = s.token(T, Role::Agent);
    let a = Some((agent.as_str(), T));
    let r = post(
        &s,
        export(spans_of(3, 0x31)).encode_to_vec(),
        "application/x-protobuf",
        a,
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The bucket is empty: two more spans need 1 s at 2 spans/s.
    let r = post(
        &s,
        serde_json::to_vec(&export(spans_of(2, 0x32))).unwrap(),
        "application/json",
        a,
        false,
    )
    .await;
    r.assert_error(429, "rate_limited");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(r.text().contains("span quota"), "{}", r.text());
    let r = post(
        &s,
        export(spans_of(2, 0x33)).encode_to_vec(),
        "application/x-protobuf",
        a,
        false,
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(
        RpcStatus::decode(r.bytes.as_slice()).unwrap().code,
        8,
        "RESOURCE_EXHAUSTED"
    );
    assert_eq!(retry_delay(&r.bytes), 1);
    let err = grpc_export(&s, &agent, T, export(spans_of(2, 0x34)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(retry_delay(err.details()), 1);
    let bin = err
        .metadata()
        .get_bin("google.rpc.retryinfo-bin")
        .expect("RetryInfo as metadata")
        .to_bytes()
        .unwrap();
    assert_eq!(RetryInfo::decode(bin).unwrap().retry_delay.unwrap().seconds, 1);
    for t in [0x32u8, 0x33, 0x34] {
        trace(&s, &agent, T, &hex::encode([t; 16]))
            .await
            .assert_error(404, "not_found");
    }
    // Another tenant has a quota of its own.
    let other = s.token(OTHER, Role::Agent);
    let r = post(
        &s,
        export(spans_of(3, 0x35)).encode_to_vec(),
        "application/x-protobuf",
        Some((&other, OTHER)),
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Once refilled (the delay it was given), the export is taken.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    grpc_export(&s, &agent, T, export(spans_of(2, 0x34)))
        .await
        .unwrap();
    assert_eq!(
        trace(&s, &agent, T, &hex::encode([0x34u8; 16])).await.body["spans"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    drop(s);

    // The export rate: the API's rate limit (1/s, burst 1 here), in a bucket of its own.
    let s = Server::start_with(|c| {
        c.otlp_http_addr = Some("127.0.0.1:0".into());
        c.otlp_grpc_addr = Some("127.0.0.1:0".into());
        c.rate_limit_rps = Some(1.0);
        c.rate_limit_burst = Some(1);
    })
    .await;
    let agent = s.token(T, Role::Agent);
    let a = Some((agent.as_str(), T));
    let r = post(
        &s,
        export(spans_of(1, 0x36)).encode_to_vec(),
        "application/x-protobuf",
        a,
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(
        &s,
        export(spans_of(1, 0x37)).encode_to_vec(),
        "application/json",
        a,
        false,
    )
    .await;
    r.assert_error(429, "rate_limited");
    assert!(r.text().contains("export rate"), "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let err = grpc_export(&s, &agent, T, export(spans_of(1, 0x37)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert_eq!(retry_delay(err.details()), 1);
    // The tenant's API bucket is untouched by its exports.
    let got = trace(&s, &agent, T, &hex::encode([0x36u8; 16])).await;
    assert_eq!(got.status, 200, "{}", got.text());
}

/// The official Python exporters honour kla's throttling: with a quota of one span per second, the second of two
/// one-span exports is answered 429 with `Retry-After: 1` (HTTP) or RESOURCE_EXHAUSTED with `RetryInfo` of 1 s
/// (gRPC); the exporter waits exactly that long (its log says so), retries, succeeds, and every span is sealed
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_exporters_wait_out_the_retry_delay_kla_gives_and_every_span_is_sealed_once() {
    let s = server(|o| {
        o.quota = Some(kla::otlp::FileQuota {
            spans_per_second: 1.0,
            burst: Some(1),
        })
    })
    .await;
    let agent = s.token(T, Role::Agent);
    for (protocol, endpoint, said) in [
        ("http", http_url(&s), "Too Many Requests"),
        ("grpc", grpc_addr(&s).to_string(), "RESOURCE_EXHAUSTED"),
    ] {
        let out = python_export(protocol, endpoint, &agent, T, false).await;
        assert_eq!(out["ok"], true, "{protocol}: {out}");
        let warnings: Vec<&str> = out["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(said) && w.contains("retrying in 1.00s")),
            "{protocol}: the exporter waited the delay kla gave: {warnings:?}"
        );
        let got = trace(&s, &agent, T, out["traceId"].as_str().unwrap()).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let mut ids: Vec<&str> = got.body["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sp| sp["span"]["spanId"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let mut want: Vec<&str> = out["spanIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        want.sort_unstable();
        assert_eq!(ids, want, "{protocol}: each span sealed once");
        // The next protocol starts from an empty bucket too.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
}

/// Span ids, in ledger order, of every span of a trace as served.
async fn sealed_span_ids(s: &Server, tok: &str, trace_id: [u8; 16]) -> Vec<String> {
    let got = trace(s, tok, T, &hex::encode(trace_id)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    got.body["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sp| sp["span"]["spanId"].as_str().unwrap().to_owned())
        .collect()
}

/// Exports are idempotent by span identity: a retried export (HTTP protobuf, JSON, gRPC) is acknowledged and seals
/// only its spans not sealed yet; a span repeated within an export is sealed once; the same ids in another tenant
/// are that tenant's own spans; and after a restart the spans sealed before it are still recognised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_export_seals_each_span_once_also_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = raw(data.path());
        c.otlp_http_addr = Some("127.0.0.1:0".into());
        c.otlp_grpc_addr = Some("127.0.0.1:0".into());
        c
    };
    let tr = [0x41u8; 16];
    let s = Server::start_cfg(cfg(), None).await;
    let agent = s.token(T, Role::Agent);
    let a = Some((agent.as_str(), T));
    let first = export(vec![span(tr, 1, "a"), span(tr, 2, "b"), span(tr, 2, "b again")]);
    let r = post(&s, first.encode_to_vec(), "application/x-protobuf", a, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&s, first.encode_to_vec(), "application/x-protobuf", a, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.bytes.is_empty(), "a plain success, no partial success");
    let retry = export(vec![span(tr, 1, "a"), span(tr, 2, "b"), span(tr, 3, "c")]);
    let r = post(
        &s,
        serde_json::to_vec(&retry).unwrap(),
        "application/json",
        a,
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    grpc_export(&s, &agent, T, retry.clone()).await.unwrap();
    let one = |b: u8| hex::encode([b; 8]);
    assert_eq!(sealed_span_ids(&s, &agent, tr).await, [one(1), one(2), one(3)]);
    // Another tenant's spans with the same ids are its own.
    const OTHER: &str = "acme-otlp-2";
    let other = s.token(OTHER, Role::Agent);
    let r = post(
        &s,
        retry.encode_to_vec(),
        "application/x-protobuf",
        Some((&other, OTHER)),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        trace(&s, &other, OTHER, &hex::encode(tr)).await.body["spans"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    s.stop().await;

    let s = Server::start_cfg(cfg(), None).await;
    let agent = s.token(T, Role::Agent);
    let again = export(vec![span(tr, 1, "a"), span(tr, 3, "c"), span(tr, 4, "d")]);
    let r = post(
        &s,
        again.encode_to_vec(),
        "application/x-protobuf",
        Some((&agent, T)),
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    grpc_export(&s, &agent, T, again).await.unwrap();
    assert_eq!(
        sealed_span_ids(&s, &agent, tr).await,
        [one(1), one(2), one(3), one(4)],
        "only the new span is sealed after the restart"
    );
}

/// Secrets planted in a span export (values, attribute keys, entity references, events, links, status, nested
/// values) and in a body that does not decode, sent to the real `kla` binary logging at debug level with forwarding
/// on: the forward target receives the spans redacted, and nothing kla wrote to stdout or stderr holds a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_spans_are_redacted_and_kla_s_own_log_never_holds_a_planted_secret() {
    const SECRETS: &[&str] = &[
        "ceo@vip.example.com",
        "4111 1111 1111 1111",
        "123-45-6789",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    ];
    let down = downstream().await;
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("kla.yaml");
    std::fs::write(
        &config,
        format!(
            "otlp:\n  http-addr: 127.0.0.1:0\n  grpc-addr: 'off'\n  forward:\n    endpoint: http://{}/v1/traces\n",
            down.addr
        ),
    )
    .unwrap();
    let kla = Process::start_env(
        &data.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    )
    .await
    .unwrap_or_else(|e| panic!("kla serve exited: {}", e.log));
    // The receiver's own "listening" line names its address.
    let mut addr = None;
    for _ in 0..500 {
        addr = kla.log().lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["listener"] == "otlp-http")
                .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
        });
        if addr.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = format!(
        "http://{}/v1/traces",
        addr.expect("the OTLP/HTTP listener is logged")
    );
    let agent = kla.token(T, Role::Agent);
    let sv = |v: &str| json!({"stringValue": v});
    let [email, card, ssn, aws, gh] = SECRETS else {
        unreachable!()
    };
    let body = json!({"resourceSpans": [{
        "resource": {
            "attributes": [{"key": "owner", "value": sv(email)}, {"key": format!("host {aws}"), "value": sv("h")}],
            "entityRefs": [{"schemaUrl": format!("https://x/{email}"), "type": format!("svc {email}"), "idKeys": [format!("host {aws}")], "descriptionKeys": [*ssn]}]
        },
        "scopeSpans": [{"scope": {"name": format!("lib {gh}")}, "spans": [{
            "traceId": "5b8efff798038103d269b633813fc60d", "spanId": "eee19b7ec3c1b175",
            "name": format!("charge {card}"), "kind": 3,
            "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
            "attributes": [
                {"key": *ssn, "value": sv("ssn as a key")},
                {"key": "nested", "value": {"kvlistValue": {"values": [
                    {"key": "list", "value": {"arrayValue": {"values": [sv(card)]}}}]}}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": format!("mail {email}"),
                        "attributes": [{"key": "aws", "value": sv(aws)}]}],
            "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                       "attributes": [{"key": "gh", "value": sv(gh)}]}],
            "status": {"code": 2, "message": format!("declined {card} for {email}")}
        }]}]
    }]});
    let post = |body: String| {
        send(
            client()
                .post(&url)
                .bearer_auth(&agent)
                .header("x-tenant-id", T)
                .header("content-type", "application/json")
                .body(body),
        )
    };
    let r = post(body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A body that does not decode, its error naming a secret where a number belongs.
    let bad = post(format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"kind":"{email}"}}]}}]}}]}}"#
    ))
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
    let got = eventually(|| down.seen.lock().unwrap().first().cloned()).await;
    let forwarded = serde_json::to_string(&got).unwrap();
    for secret in SECRETS {
        assert!(
            !forwarded.contains(secret),
            "forwarded raw {secret:?}: {forwarded}"
        );
    }
    assert!(forwarded.contains("[REDACTED:"), "{forwarded}");
    assert_eq!(got.resource_spans[0].scope_spans[0].spans.len(), 1);
    let exited = kla.terminate();
    assert!(exited.success(), "{}", exited.log);
    assert!(
        exited.log.contains("DEBUG"),
        "kla logged at debug level: {}",
        exited.log
    );
    for secret in SECRETS {
        assert!(
            !exited.log.contains(secret),
            "kla's log holds {secret:?}:\n{}",
            exited.log
        );
    }
}
