//! Ledger benchmarks (durability on). `cargo bench --bench ledger`.
//! The 10M-entry scenario is `examples/ledger_load.rs` (see docs/ledger-bench.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kla::ledger::tree::{MemTree, leaf_hash};
use kla::ledger::{Ledger, LedgerConfig, verify_ledger_dir};
use rand::Rng;

const ENTRY: usize = 512;
const WRITERS: u64 = 64;

fn entry(i: u64) -> Vec<u8> {
    let mut v = format!("{{\"body\":{{\"n\":{i},\"pad\":\"").into_bytes();
    let tail = format!(
        "\"}},\"kind\":\"decision\",\"lineageId\":\"lr_{i:024x}\",\"tenant\":\"acme\",\"time\":\"2026-01-01T00:00:00Z\",\"v\":1}}"
    );
    let pad = ENTRY.saturating_sub(v.len() + tail.len());
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(tail.as_bytes());
    v
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `total` appends spread over 64 concurrent writers; returns (elapsed, sorted ack latencies).
async fn run_writers(l: &Ledger, total: u64) -> (Duration, Vec<Duration>) {
    let per = (total / WRITERS).max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let l = l.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for k in 0..per {
                let e = entry(w * per + k);
                let t = Instant::now();
                l.append(e).await.expect("append");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("join"));
    }
    let el = start.elapsed();
    lat.sort_unstable();
    (el, lat)
}

fn appends(c: &mut Criterion) {
    let rt = rt();
    let tmp = tempfile::tempdir().expect("tmp");
    let ledger = Ledger::open(LedgerConfig::new(tmp.path().join("ledger"))).expect("open");
    // One explicit sustained run with latency percentiles (criterion reports means only).
    let (el, lat) = rt.block_on(run_writers(&ledger, 200_000));
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "sustained: {} appends x {ENTRY} B, {WRITERS} writers: {:.0} appends/s, ack p50 {:?} p99 {:?} max {:?}",
        lat.len(),
        lat.len() as f64 / el.as_secs_f64(),
        p(0.5),
        p(0.99),
        lat[lat.len() - 1]
    );
    let mut g = c.benchmark_group("append");
    g.measurement_time(Duration::from_secs(4));
    g.sample_size(10);
    g.throughput(Throughput::Elements(6400));
    g.bench_function("64_writers_fsync_512B", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(run_writers(&ledger, 6400)).0;
            }
            total
        });
    });
    g.finish();
}

fn ceiling(c: &mut Criterion) {
    let leaves: Vec<Vec<u8>> = (0..4096).map(entry).collect();
    let mut g = c.benchmark_group("ceiling");
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements(leaves.len() as u64));
    g.bench_function("sha256_leaf_512B", |b| {
        b.iter(|| {
            for l in &leaves {
                std::hint::black_box(leaf_hash(l));
            }
        });
    });
    g.bench_function("memtree_append_512B", |b| {
        b.iter(|| {
            let mut t = MemTree::new();
            for l in &leaves {
                t.push(l);
            }
            std::hint::black_box(t.root())
        });
    });
    g.finish();
}

fn proofs_and_verify(c: &mut Criterion) {
    let rt = rt();
    let n: u64 = std::env::var("KLA_BENCH_PROOF_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("ledger");
    let ledger = Ledger::open(LedgerConfig::new(&dir)).expect("open");
    rt.block_on(run_writers(&ledger, n));
    let size = ledger.size();
    rt.block_on(ledger.checkpoint_now()).expect("checkpoint");
    let mut g = c.benchmark_group("read");
    g.measurement_time(Duration::from_secs(3));
    g.bench_with_input(BenchmarkId::new("inclusion_proof", size), &size, |b, &size| {
        let mut rng = rand::thread_rng();
        b.iter(|| {
            let i = rng.gen_range(0..size);
            std::hint::black_box(ledger.inclusion_proof(i, size).expect("proof"))
        });
    });
    g.bench_with_input(BenchmarkId::new("consistency_proof", size), &size, |b, &size| {
        let mut rng = rand::thread_rng();
        b.iter(|| {
            let m = rng.gen_range(1..=size);
            std::hint::black_box(ledger.consistency_proof(m, size).expect("proof"))
        });
    });
    g.finish();
    drop(ledger);
    let mut g = c.benchmark_group("reopen");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(10);
    g.bench_with_input(BenchmarkId::new("open", size), &size, |b, _| {
        b.iter(|| Ledger::open(LedgerConfig::new(&dir)).expect("open"));
    });
    g.finish();
    let mut g = c.benchmark_group("verify");
    g.measurement_time(Duration::from_secs(5));
    g.sample_size(10);
    g.throughput(Throughput::Elements(size));
    g.bench_with_input(BenchmarkId::new("full_log", size), &size, |b, _| {
        b.iter(|| verify_ledger_dir(&dir, &mut |_, _| {}).expect("verify"));
    });
    g.finish();
}

criterion_group!(benches, ceiling, appends, proofs_and_verify);
criterion_main!(benches);
