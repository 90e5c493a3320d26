//! Criterion benchmarks of the policy engine hot path.
//!
//! `cargo bench --bench policy`
//!
//! * `policy/input_to_rego_generic` — baseline: the generic way to build the Rego input
//!   (`serde_json::to_value` + `regorus::Value::from`), for comparison with the engine's direct
//!   encoding, which is included in every `*_rego` case;
//! * `policy/1000_rules_3_match_no_rego` — index lookup + agent globs, no Rego;
//! * `policy/1000_rules_3_match_rego` — the target case: 3 matching rules, each with a `when`;
//! * `policy/1000_rules_0_match` — an action no rule matches;
//! * `policy/default_pack_refund` — the shipped default pack on a large refund.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, black_box, criterion_group, criterion_main};
#[path = "support/policy_workload.rs"]
mod policy_workload;

use kla::policy::{CompiledPack, PackFiles, PolicySet, VerifiedPack};
use policy_workload::{refund_input, write_pack};

fn set_from(dir: &Path) -> PolicySet {
    let files = PackFiles::read_dir(dir).unwrap();
    let pack = CompiledPack::compile(&VerifiedPack::accept_unsigned(files)).unwrap();
    PolicySet::new(vec![Arc::new(pack)], Duration::from_millis(5))
}

fn generated(n: usize, with_when: bool) -> PolicySet {
    let dir = tempfile::tempdir().unwrap();
    write_pack(dir.path(), n, with_when);
    set_from(dir.path())
}

fn bench(c: &mut Criterion) {
    let input = refund_input();
    let rego = generated(1000, true);
    let plain = generated(1000, false);
    assert_eq!(rego.evaluate(&input).matched_rules.len(), 3);
    assert_eq!(plain.evaluate(&input).matched_rules.len(), 3);
    let default = set_from(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/default"));
    let mut miss = input.clone();
    miss.action = "read_ticket".into();
    miss.agent.name = "support-bot".into();

    let mut g = c.benchmark_group("policy");
    g.bench_function("input_to_rego_generic", |b| {
        b.iter(|| regorus::Value::from(serde_json::to_value(black_box(&input)).unwrap()))
    });
    g.bench_function("1000_rules_3_match_no_rego", |b| {
        b.iter(|| plain.evaluate(black_box(&input)))
    });
    g.bench_function("1000_rules_3_match_rego", |b| {
        b.iter(|| rego.evaluate(black_box(&input)))
    });
    g.bench_function("1000_rules_0_match", |b| {
        b.iter(|| rego.evaluate(black_box(&miss)))
    });
    g.bench_function("default_pack_refund", |b| {
        b.iter(|| default.evaluate(black_box(&input)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
