//! The policy workload shared by `benches/policy.rs` (criterion) and `examples/policy_latency.rs` (latency
//! percentiles and thread scaling), so both measure exactly the same pack and input.
#![allow(dead_code, clippy::unwrap_used)] // each includer uses what it needs; benchmark setup may panic

use kla::policy::{AgentRef, EvalInput};
use std::path::Path;

/// Writes a pack with `n` rules: `n - 3` rules on other actions (exact names and globs) and
/// 3 rules matching `execute_refund` (exact, glob, match-all-with-agent-filter).
pub fn write_pack(dir: &Path, n: usize, with_when: bool) {
    let when = |expr: &str| {
        if with_when {
            format!("      when: {expr:?}\n")
        } else {
            String::new()
        }
    };
    let mut rules = String::new();
    for i in 0..n - 3 {
        let action = if i % 10 == 0 {
            format!("tool_{i}_*")
        } else {
            format!("action_{i}")
        };
        rules.push_str(&format!(
            "    - id: r{i}\n      match: {{actions: [{action:?}]}}\n{}      decision: warn\n",
            when(&format!("input.context.amount > {i}"))
        ));
    }
    rules.push_str(&format!(
        "    - id: m1\n      match: {{actions: [execute_refund]}}\n{}      decision: require_approval\n      approval: {{timeout: 15m}}\n",
        when("input.context.amount > 1000")
    ));
    rules.push_str(&format!(
        "    - id: m2\n      match: {{actions: [\"execute_*\"]}}\n{}      decision: warn\n",
        when("input.agent.name == \"billing-bot\"")
    ));
    rules.push_str(&format!(
        "    - id: m3\n      match: {{agents: [\"billing-*\"]}}\n{}      decision: warn\n",
        when("count(input.context.items) < 5")
    ));
    let pack = format!(
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: bench, version: 1.0.0}}\nspec:\n  rules:\n{rules}"
    );
    std::fs::write(dir.join("pack.yaml"), pack).unwrap();
}

/// The measured input: a large refund by `billing-bot`.
pub fn refund_input() -> EvalInput {
    EvalInput {
        agent: AgentRef {
            id: "agent-7".into(),
            name: "billing-bot".into(),
            version: Some("2.1.0".into()),
            manifest_hash: Some("sha256:0f1e".into()),
        },
        action: "execute_refund".into(),
        context: serde_json::json!({"amount": 5000, "currency": "EUR", "items": [1, 2]}),
        tool: None,
        execution: Some(serde_json::json!({"id": "ex-42", "steps": 3, "cost": 0.12})),
        principal: serde_json::json!({"id": "u-7"}),
        tenant: "acme".into(),
        now: "2026-01-01T00:00:00Z".into(),
    }
}
