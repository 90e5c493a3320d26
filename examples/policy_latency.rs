//! Latency distribution and thread scaling of `PolicySet::evaluate`.
//!
//! `cargo run --release --example policy_latency` (`KLA_LATENCY_ONLY=1`: the percentiles only, as `bench/gate.sh`
//! runs it)
//!
//! Builds a 1,000-rule pack (every rule has a Rego `when`; 3 rules match the measured action),
//! then records 100,000 individual evaluation latencies and prints percentiles, and measures
//! throughput with 1 and 2 threads sharing one compiled set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../benches/support/policy_workload.rs"]
mod policy_workload;

use kla::policy::{CompiledPack, EvalInput, PackFiles, PolicySet, VerifiedPack};
use policy_workload::{refund_input, write_pack};

fn build_set(n: usize, with_when: bool) -> (PolicySet, Duration) {
    let dir = tempfile::tempdir().unwrap();
    write_pack(dir.path(), n, with_when);
    let t = Instant::now();
    let files = PackFiles::read_dir(dir.path()).unwrap();
    let pack = CompiledPack::compile(&VerifiedPack::accept_unsigned(files)).unwrap();
    let took = t.elapsed();
    (
        PolicySet::new(vec![Arc::new(pack)], Duration::from_millis(5)),
        took,
    )
}

fn percentiles(name: &str, set: &PolicySet, input: &EvalInput, n: usize) {
    for _ in 0..10_000 {
        std::hint::black_box(set.evaluate(input));
    }
    let mut lat = Vec::with_capacity(n);
    let mut failed_closed = 0;
    for _ in 0..n {
        let t = Instant::now();
        let d = set.evaluate(std::hint::black_box(input));
        lat.push(t.elapsed());
        failed_closed += usize::from(d.error.is_some());
        std::hint::black_box(d);
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_nanos() as f64 / 1000.0;
    println!(
        "{name:<40} n={n} p50={:.1}us p90={:.1}us p99={:.1}us p99.9={:.1}us max={:.1}us failed_closed={failed_closed}",
        p(0.50),
        p(0.90),
        p(0.99),
        p(0.999),
        p(1.0),
    );
}

fn throughput(set: &Arc<PolicySet>, input: &EvalInput, threads: usize, per_thread: usize) {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let set = set.clone();
            let input = input.clone();
            s.spawn(move || {
                for _ in 0..per_thread {
                    std::hint::black_box(set.evaluate(&input));
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    println!(
        "throughput {threads} thread(s): {:.0} decisions/s ({} decisions in {:.2}s)",
        (threads * per_thread) as f64 / secs,
        threads * per_thread,
        secs
    );
}

fn main() {
    let input = refund_input();
    let (rego, compile) = build_set(1000, true);
    println!("compiled 1000-rule pack (all rules with Rego `when`) in {compile:?}");
    let d = rego.evaluate(&input);
    assert_eq!(d.matched_rules.len(), 3, "{d:?}");
    let (plain, _) = build_set(1000, false);
    assert_eq!(plain.evaluate(&input).matched_rules.len(), 3);

    percentiles("1000 rules, 3 match, 3 Rego `when`", &rego, &input, 100_000);
    percentiles("1000 rules, 3 match, no Rego (baseline)", &plain, &input, 100_000);
    let mut miss = input.clone();
    miss.action = "read_ticket".into();
    miss.agent.name = "support-bot".into();
    percentiles("1000 rules, 0 match", &rego, &miss, 100_000);

    // The shipped default pack and the request `bench/load.sh` sends to evaluate: the policy
    // share of one HTTP decision in the load runs.
    let files = PackFiles::read_dir(std::path::Path::new("policies/default")).unwrap();
    let default = PolicySet::new(
        vec![Arc::new(
            CompiledPack::compile(&VerifiedPack::accept_unsigned(files)).unwrap(),
        )],
        Duration::from_millis(5),
    );
    let mut load_request = input.clone();
    load_request.context = serde_json::json!({"amount": 1250.00, "user_id": "usr_22"});
    load_request.execution = None;
    let d = default.evaluate(&load_request);
    assert_eq!(d.matched_rules.len(), 1, "{d:?}");
    percentiles(
        "default pack, bench/load.sh's evaluate request",
        &default,
        &load_request,
        100_000,
    );

    // `KLA_LATENCY_ONLY=1` (bench/gate.sh): the percentiles only.
    if std::env::var_os("KLA_LATENCY_ONLY").is_some() {
        return;
    }
    let rego = Arc::new(rego);
    println!("with Rego (3 matching rules, each with `when`):");
    throughput(&rego, &input, 1, 200_000);
    throughput(&rego, &input, 2, 200_000);
    // Control: no Rego, no shared atomics on the path; shows what the host allows.
    let plain = Arc::new(plain);
    println!("control without Rego:");
    throughput(&plain, &input, 1, 2_000_000);
    throughput(&plain, &input, 2, 2_000_000);
}
