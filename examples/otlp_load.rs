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

/// One export of `batch` spans of about `span_bytes` each (attributes of a GenAI tool call), over 16 traces.
fn export(seq: u64, batch: usize, span_bytes: usize) -> Vec<u8> {
    let filler = "x".repeat(span_bytes.saturating_sub(190));
    let spans = (0..batch)
        .map(|i| {
            let mut trace = [0u8; 16];
            trace[..8].copy_from_slice(&seq.to_be_bytes());
            trace[8] = (i % 16) as u8 + 1;
            let mut id = [0u8; 8];
            id[..4].copy_from_slice(&(seq as u32).to_be_bytes());
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
    let sample = export(0, batch, span_bytes);
    println!(
        "{batch}-span exports of {} bytes ({} bytes per span), {clients} clients, {seconds}s",
        sample.len(),
        sample.len() / batch
    );
    // Bodies are built before the clock starts, so the figure is kla's work, not the client's encoding.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((1..=64).map(|i| export(i, batch, span_bytes)).collect());
    for b in bodies.iter().take(4) {
        post(b.clone()).await;
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (post, bodies, done) = (post.clone(), bodies.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = c;
            while Instant::now() < stop {
                post(bodies[n % bodies.len()].clone()).await;
                done.fetch_add(1, Ordering::Relaxed);
                n += clients;
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
    for i in 0..200 {
        let body = bodies[i % bodies.len()].clone();
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
