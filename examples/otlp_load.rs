//! End-to-end OTLP ingest: spans per second and export latency through the real server over loopback (decode,
//! validate, redact, seal into the ledger with fsync, answer).
//!
//! `cargo run --release --example otlp_load -- [--clients 8] [--seconds 10] [--span-bytes 1000] [--batch 512]`
//!
//! Starts kla in-process with the OTLP/HTTP receiver in a temporary data dir (on the disk of `TMPDIR`, so the
//! ledger's fsync is that disk's), then: (1) throughput: `--clients` concurrent HTTP/1.1 clients each posting
//! `--batch`-span protobuf exports of about `--span-bytes` bytes per span (16 traces per export) for
//! `--seconds`, reporting spans/s and exports/s; (2) latency: one client posting one export at a time, reporting
//! p50/p90/p99/max of 200 exports. The client runs in the same process and shares the 2 cores, so the figures
//! are a floor of what kla alone would do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kla::auth::{self, Role, keys};
use kla::config::RawConfig;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

// The allocator of the `kla` binary (src/main.rs), so the figures are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TENANT: &str = "bench";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn s(v: String) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v)),
    })
}

/// Where an export template holds its sequence number: the first 8 bytes of each trace id, the first 4 of each span
/// id (bytes no ASCII filler contains).
const TRACE_MARK: [u8; 8] = [0xa1; 8];
const SPAN_MARK: [u8; 4] = [0xb2; 4];

/// One export of `batch` spans of about `span_bytes` each (attributes of a GenAI tool call), over 16 traces, with
/// the marks where [`numbered`] writes each request's own sequence number.
fn export(batch: usize, span_bytes: usize) -> Vec<u8> {
    let filler = "x".repeat(span_bytes.saturating_sub(190));
    let spans = (0..batch)
        .map(|i| {
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&TRACE_MARK);
            trace[8] = (i % 16) as u8 + 1;
            let mut id = [0u8; 8];
            id[..4].copy_from_slice(&SPAN_MARK);
            id[4..].copy_from_slice(&(i as u32 + 1).to_be_bytes());
            Span {
                trace_id: trace.to_vec(),
                span_id: id.to_vec(),
                name: "execute_tool lookup_policy".into(),
                kind: 3,
                start_time_unix_nano: 1_764_633_600_000_000_000 + i as u64,
                end_time_unix_nano: 1_764_633_600_000_500_000 + i as u64,
                attributes: vec![
                    KeyValue {
                        key: "gen_ai.tool.name".into(),
                        value: s("lookup_policy".into()),
                        ..Default::default()
                    },
                    KeyValue {
                        key: "gen_ai.tool.call.arguments".into(),
                        value: s(format!("{{\"policy_id\":\"P-{i}\",\"note\":\"{filler}\"}}")),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: s("bench-agent".into()),
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
    .encode_to_vec()
}

/// The template with `seq` in every trace and span id.
fn numbered(template: &[u8], seq: u64) -> Vec<u8> {
    let mut body = template.to_vec();
    let mut i = 0;
    while i + 8 <= body.len() {
        if body[i..i + 8] == TRACE_MARK {
            body[i..i + 8].copy_from_slice(&seq.to_be_bytes());
            i += 8;
        } else if body[i..i + 4] == SPAN_MARK {
            body[i..i + 4].copy_from_slice(&(seq as u32).to_be_bytes());
            i += 4;
        } else {
            i += 1;
        }
    }
    body
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let clients = arg("--clients", 8);
    let seconds = arg("--seconds", 10) as u64;
    let span_bytes = arg("--span-bytes", 1000);
    let batch = arg("--batch", 512);
    let tmp = tempfile::tempdir().unwrap();
    let cfg = RawConfig {
        data_dir: Some(tmp.path().to_owned()),
        api_addr: Some("127.0.0.1:0".into()),
        policies: Some("policies".into()),
        otlp_http_addr: Some("127.0.0.1:0".into()),
        otlp_grpc_addr: Some("off".into()),
        ..Default::default()
    }
    .validate()
    .unwrap();
    let running = kla::app::start(cfg).await.unwrap();
    let url = format!("http://{}/v1/traces", running.listeners["otlp-http"]);
    let key = keys::load(&keys::token_key_path(tmp.path())).unwrap();
    let token = auth::mint(
        key.private_pem.as_bytes(),
        vec![TENANT.into()],
        Role::Agent,
        "bench".into(),
        None,
        Duration::from_secs(3600),
    )
    .unwrap();
    let client = reqwest::Client::builder().http1_only().build().unwrap();
    let post = {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        move |body: Vec<u8>| {
            let req = client
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .header("x-tenant-id", TENANT)
                .bearer_auth(&token)
                .body(body);
            async move {
                let r = req.send().await.expect("sent");
                assert!(r.status().is_success(), "{}", r.status());
                r.bytes().await.expect("answer");
            }
        }
    };
    let template = Arc::new(export(batch, span_bytes));
    let sample = numbered(&template, 0);
    println!(
        "{batch}-span exports of {} bytes ({} bytes per span), {clients} clients, {seconds}s",
        sample.len(),
        sample.len() / batch
    );
    // Every export is a new one (its own trace and span ids): kla remembers what it sealed and answers a repeated
    // export without sealing it again, which is not what this measures. The body is encoded once; each request
    // only copies it with its number written in (a memcpy, not the client's encoding).
    let seq = Arc::new(AtomicU64::new(1));
    for _ in 0..4 {
        post(numbered(&template, seq.fetch_add(1, Ordering::Relaxed))).await;
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (post, template, seq, done) = (post.clone(), template.clone(), seq.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                post(numbered(&template, seq.fetch_add(1, Ordering::Relaxed))).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let exports = done.load(Ordering::Relaxed);
    println!(
        "throughput: {:.0} spans/s ({:.1} exports/s, {exports} exports in {secs:.1}s)",
        (exports * batch as u64) as f64 / secs,
        exports as f64 / secs
    );
    let mut lat = Vec::with_capacity(200);
    for _ in 0..200 {
        let body = numbered(&template, seq.fetch_add(1, Ordering::Relaxed));
        let t = Instant::now();
        post(body).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "one {batch}-span export at a time: p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms (includes the ledger fsync)",
        p(0.5),
        p(0.9),
        p(0.99),
        p(1.0)
    );
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}
