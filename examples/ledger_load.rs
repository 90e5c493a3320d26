//! Large-scale ledger load test (the opt-in 10M scenario of `docs/ledger-bench.md`).
//!
//! ```text
//! cargo run --release --example ledger_load            # build N entries, then measure
//! KLA_LOAD_PHASE=reopen cargo run --release --example ledger_load   # fresh process: reopen,
//!                                                      # proofs, memory, full verify
//! ```
//! Env: `KLA_LOAD_N` (default 10000000), `KLA_LOAD_DIR` (default `target/ledger-load`),
//! `KLA_LOAD_WRITERS` (64), `KLA_LOAD_ENTRY_BYTES` (512).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kla::ledger::tree::{leaf_hash, verify_inclusion};
use kla::ledger::{Ledger, LedgerConfig, verify_ledger_dir};
use rand::Rng;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A canonical-looking entry of exactly `size` bytes with a unique counter.
fn entry(i: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"body\":{{\"n\":{i},\"pad\":\"");
    let tail = format!(
        "\"}},\"kind\":\"decision\",\"lineageId\":\"lr_{i:024x}\",\"tenant\":\"acme\",\"time\":\"2026-01-01T00:00:00Z\",\"v\":1}}"
    );
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(head.as_bytes());
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(tail.as_bytes());
    v
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) consumed so far by this process, from /proc (10 ms ticks).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// In-run disk baseline: append one batch-sized write (64 entries) + fdatasync, 300 times.
fn fsync_baseline(dir: &std::path::Path, writers: u64, size: usize) {
    use std::io::Write;
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join("fsync-baseline.tmp");
    let mut f = std::fs::File::create(&path).expect("baseline file");
    let buf = vec![7u8; writers as usize * (size + 8)];
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed().as_nanos() as u32);
    }
    lat.sort_unstable();
    let p50 = pct(&lat, 0.5) / 1000.0;
    println!(
        "baseline: {} B append + fdatasync p50 {p50:.3} ms, p99 {:.3} ms => ceiling with {writers} waiting writers ~{:.0} appends/s",
        buf.len(),
        pct(&lat, 0.99) / 1000.0,
        writers as f64 / (p50 / 1000.0)
    );
    // The same writes into a region zero-filled (written + fdatasynced) beforehand, as the
    // ledger's preallocated tail: fdatasync does not have to write the inode.
    use std::os::unix::fs::FileExt;
    let start = f.metadata().expect("stat").len();
    let zeros = vec![0u8; 1 << 20];
    let region = 300 * buf.len() as u64;
    let mut at = start;
    while at < start + region {
        f.write_all_at(&zeros, at).expect("zero-fill");
        at += zeros.len() as u64;
    }
    f.sync_data().expect("fdatasync");
    let mut lat = Vec::new();
    for i in 0..300u64 {
        let t = Instant::now();
        f.write_all_at(&buf, start + i * buf.len() as u64).expect("write");
        f.sync_data().expect("fdatasync");
        lat.push(t.elapsed().as_nanos() as u32);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    lat.sort_unstable();
    let p50z = pct(&lat, 0.5) / 1000.0;
    println!(
        "baseline: {} B write into a zero-filled region + fdatasync p50 {p50z:.3} ms, p99 {:.3} ms (growing / zero-filled p50 = {:.2})",
        buf.len(),
        pct(&lat, 0.99) / 1000.0,
        p50 / p50z
    );
}

async fn build(dir: &PathBuf, n: u64, writers: u64, size: usize) {
    let _ = std::fs::remove_dir_all(dir);
    fsync_baseline(dir.parent().unwrap_or(dir), writers, size);
    let ledger = Ledger::open(LedgerConfig::new(dir)).expect("open");
    let stop = tokio_util::sync::CancellationToken::new();
    let cp_task = if std::env::var("KLA_LOAD_NO_CHECKPOINTER").is_ok() {
        tokio::spawn(async {})
    } else {
        ledger.spawn_checkpointer(stop.clone())
    };
    let per = n / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let l = ledger.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per as usize);
            for k in 0..per {
                let e = entry(w * per + k, size);
                let t = Instant::now();
                l.append(e).await.expect("append");
                lat.push(t.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
            }
            lat
        }));
    }
    let mut lat = Vec::with_capacity(n as usize);
    for t in tasks {
        lat.extend(t.await.expect("join"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "append: {} entries of {size} B, {writers} writers, {secs:.1}s => {:.0} appends/s; ack latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        lat.len(),
        lat.len() as f64 / secs,
        pct(&lat, 0.5) / 1000.0,
        pct(&lat, 0.99) / 1000.0,
        pct(&lat, 0.999) / 1000.0,
        lat.last().map_or(0.0, |&m| f64::from(m) / 1e6)
    );
    stop.cancel();
    cp_task.await.expect("checkpointer");
    let cp = ledger.checkpoint_now().await.expect("checkpoint");
    println!("final checkpoint: size {}", cp.size);
}

fn reopen_and_measure(dir: &PathBuf, size: usize) {
    let rss0 = rss_kib("VmRSS:");
    let mut times = Vec::new();
    let mut ledger = None;
    for _ in 0..3 {
        drop(ledger.take());
        let t = Instant::now();
        let l = Ledger::open(LedgerConfig::new(dir)).expect("reopen");
        times.push(t.elapsed());
        ledger = Some(l);
    }
    let ledger = ledger.expect("ledger");
    let n = ledger.size();
    println!(
        "reopen of {n} entries: {:?} (3 runs; first is cold for derived-file metadata)",
        times
    );
    println!(
        "memory: VmRSS {} KiB before open, {} KiB after open (frontier holds {} hashes = {} bytes)",
        rss0,
        rss_kib("VmRSS:"),
        n.count_ones(),
        n.count_ones() * 32
    );
    let cp = ledger.latest_checkpoint().expect("checkpoint");
    let mut rng = rand::thread_rng();
    let samples = 100_000u64;
    let mut lat = Vec::with_capacity(samples as usize);
    let cpu0 = cpu_secs();
    let started = Instant::now();
    for _ in 0..samples {
        let i = rng.gen_range(0..cp.size);
        let t = Instant::now();
        let p = ledger.inclusion_proof(i, cp.size).expect("proof");
        lat.push(t.elapsed().as_nanos() as u32);
        std::hint::black_box(p);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    lat.sort_unstable();
    println!(
        "inclusion proof at size {}: {samples} random indices, CPU {:.1} us/proof, wall mean {:.1} us, p50 {:.1} us, p99 {:.1} us",
        cp.size,
        cpu * 1e6 / samples as f64,
        secs * 1e6 / samples as f64,
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    // sanity: a proof verifies against the signed root
    let i = cp.size / 3;
    let p = ledger.inclusion_proof(i, cp.size).expect("proof");
    verify_inclusion(i, cp.size, &ledger.leaf_hash(i).expect("leaf"), &p, &cp.root).expect("verifies");
    drop(ledger);

    let t = Instant::now();
    let cpu0 = cpu_secs();
    let s = verify_ledger_dir(dir, &mut |_, _| {}).expect("full verify");
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    println!(
        "full verify: {} entries in {secs:.1}s wall, {cpu:.1}s CPU (2 threads) => {:.0} entries/s (checkpoint {:?})",
        s.entries,
        s.entries as f64 / secs,
        s.checkpoint_size
    );

    // in-run ceiling: raw SHA-256 leaf hashing and CRC-32 of the same entries, one core
    let leaves: Vec<Vec<u8>> = (0..200_000).map(|i| entry(i, size)).collect();
    let t = Instant::now();
    for l in &leaves {
        std::hint::black_box(leaf_hash(l));
    }
    let sha = leaves.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for l in &leaves {
        std::hint::black_box(leaf_hash(l));
        std::hint::black_box(crc32fast::hash(l));
    }
    let sha_crc = leaves.len() as f64 / t.elapsed().as_secs_f64();
    println!(
        "ceiling: SHA-256 leaf hash of {size} B entries {sha:.0}/s; SHA-256 + CRC-32 {sha_crc:.0}/s; verify/ceiling = {:.2}",
        s.entries as f64 / secs / sha_crc
    );
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let n = env_u64("KLA_LOAD_N", 10_000_000);
    let writers = env_u64("KLA_LOAD_WRITERS", 64);
    let size = env_u64("KLA_LOAD_ENTRY_BYTES", 512) as usize;
    let dir = std::env::var("KLA_LOAD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/ledger-load"));
    let phase = std::env::var("KLA_LOAD_PHASE").unwrap_or_default();
    if phase != "reopen" {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(build(&dir, n, writers, size));
        std::thread::sleep(Duration::from_millis(100));
    }
    reopen_and_measure(&dir, size);
}
