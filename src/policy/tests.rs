//! Unit tests of the policy module (packs are written to temp dirs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn pack_yaml(name: &str, default: &str, mode: &str, rules: &str) -> String {
    format!(
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: {name}, version: 1.0.0}}\nspec:\n  defaultDecision: {default}\n  mode: {mode}\n  rules:\n{rules}"
    )
}

/// A pack named `name` that allows by default, in enforce mode, with these rules.
fn enforcing(name: &str, rules: &str) -> String {
    pack_yaml(name, "allow", "enforce", rules)
}

const PAYMENTS: &str = r#"apiVersion: kla.dev/v1
kind: PolicyPack
metadata: {name: payments-guardrails, version: 1.0.0}
spec:
  defaultDecision: allow        # when no rule matches: allow | warn | require_approval | block
  mode: enforce                 # or shadow: evaluate and record, but answer allow
  rules:
    - id: refund-over-threshold
      description: Refunds above 1000 need a human
      match: {actions: ["execute_refund"], agents: ["*"]}   # globs over action names and agent ids or names
      when: "input.context.amount > 1000"                   # Rego expression(s); a list means all must hold
      decision: require_approval
      reasonCode: AMOUNT_OVER_THRESHOLD
      message: Refunds over 1000 need approval
      approval: {timeout: 15m, onTimeout: block}
    - id: no-deletes
      match: {actions: ["delete_*"]}
      decision: block
      reasonCode: DESTRUCTIVE_ACTION
"#;

/// A temp pack dir holding `pack.yaml` plus extra files.
fn pack_dir(pack: &str, extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pack.yaml", pack);
    for (rel, text) in extra {
        write(dir.path(), rel, text);
    }
    dir
}

fn unsigned(dir: &Path) -> Result<CompiledPack, PolicyError> {
    CompiledPack::compile(&VerifiedPack::accept_unsigned(PackFiles::read_dir(dir)?))
}

fn set_of(dirs: &[&Path]) -> PolicySet {
    let packs = dirs.iter().map(|d| Arc::new(unsigned(d).unwrap())).collect();
    PolicySet::new(packs, Duration::from_secs(1))
}

fn input(action: &str, agent: &str, context: serde_json::Value) -> EvalInput {
    EvalInput {
        agent: AgentRef {
            id: agent.into(),
            name: format!("{agent}-name"),
            ..Default::default()
        },
        action: action.into(),
        context,
        now: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    }
}

fn act(action: &str) -> EvalInput {
    input(action, "agent-1", serde_json::json!({}))
}

fn codes(d: &Decision) -> Vec<&str> {
    d.reason_codes.iter().map(String::as_str).collect()
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn brief_example_pack_works_as_written() {
    let dir = pack_dir(PAYMENTS, &[]);
    let set = set_of(&[dir.path()]);
    let d = set.evaluate(&input("execute_refund", "a", serde_json::json!({"amount": 5000})));
    assert_eq!(d.outcome, Outcome::RequireApproval);
    assert_eq!(codes(&d), ["AMOUNT_OVER_THRESHOLD"]);
    let approval = d.matched_rules[0].approval.clone().unwrap();
    assert_eq!(approval.timeout_seconds, 900);
    assert_eq!(approval.on_timeout, OnTimeout::Block);
    let d = set.evaluate(&input("execute_refund", "a", serde_json::json!({"amount": 10})));
    assert_eq!((d.outcome, d.reason_codes.len()), (Outcome::Allow, 0));
    let d = set.evaluate(&act("delete_user"));
    assert_eq!(d.outcome, Outcome::Block);
    assert_eq!(codes(&d), ["DESTRUCTIVE_ACTION"]);
    assert_eq!(d.policy[0].name, "payments-guardrails");
    let json = serde_json::to_value(&d).unwrap();
    assert_eq!(json["matchedRules"][0]["reasonCode"], "DESTRUCTIVE_ACTION");
    assert_eq!(json["outcome"], "block");
}

#[test]
fn each_outcome_and_message() {
    let rules = "    - {id: r-allow, match: {actions: [a_allow]}, decision: allow, reasonCode: OK_RULE}\n    - {id: r-warn, match: {actions: [a_warn]}, decision: warn, message: careful}\n    - {id: r-appr, match: {actions: [a_appr]}, decision: require_approval, approval: {timeout: 1h 30m}}\n    - {id: r-block, match: {actions: [a_block]}, decision: block}\n";
    let dir = pack_dir(&enforcing("p", rules), &[]);
    let set = set_of(&[dir.path()]);
    let d = set.evaluate(&act("a_allow"));
    assert_eq!((d.outcome, codes(&d)), (Outcome::Allow, vec!["OK_RULE"]));
    let d = set.evaluate(&act("a_warn"));
    assert_eq!((d.outcome, codes(&d)), (Outcome::Warn, vec!["R_WARN"]));
    assert_eq!(d.matched_rules[0].message.as_deref(), Some("careful"));
    let d = set.evaluate(&act("a_appr"));
    assert_eq!(d.outcome, Outcome::RequireApproval);
    let a = d.matched_rules[0].approval.clone().unwrap();
    assert_eq!((a.timeout_seconds, a.on_timeout), (5400, OnTimeout::Block));
    let d = set.evaluate(&act("a_block"));
    assert_eq!((d.outcome, codes(&d)), (Outcome::Block, vec!["R_BLOCK"]));
    let d = set.evaluate(&act("other"));
    assert_eq!((d.outcome, d.matched_rules.len()), (Outcome::Allow, 0));
}

#[test]
fn most_restrictive_wins_across_two_packs_and_all_matches_reported() {
    let a = pack_dir(
        &enforcing("a", "    - {id: w, match: {actions: [pay]}, decision: warn}\n"),
        &[],
    );
    let b = pack_dir(
        &enforcing(
            "b",
            "    - {id: x, match: {actions: [\"pa*\"]}, decision: require_approval}\n    - {id: y, decision: allow}\n",
        ),
        &[],
    );
    for order in [[a.path(), b.path()], [b.path(), a.path()]] {
        let d = set_of(&order).evaluate(&act("pay"));
        assert_eq!(d.outcome, Outcome::RequireApproval);
        assert_eq!(codes(&d), ["X"]);
        let mut ids: Vec<_> = d.matched_rules.iter().map(|m| m.id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["w", "x", "y"]);
        assert_eq!(d.policy.len(), 2);
    }
}

#[test]
fn shadow_rule_and_shadow_pack_never_change_the_answer() {
    let enforce = pack_dir(
        &enforcing(
            "e",
            "    - {id: s, match: {actions: [go]}, decision: block, mode: shadow}\n    - {id: w, match: {actions: [go]}, decision: warn}\n",
        ),
        &[],
    );
    let shadow = pack_dir(
        &pack_yaml(
            "sp",
            "block",
            "shadow",
            "    - {id: t, match: {actions: [go, stop]}, decision: require_approval}\n",
        ),
        &[],
    );
    let set = set_of(&[enforce.path(), shadow.path()]);
    let d = set.evaluate(&act("go"));
    assert_eq!(d.outcome, Outcome::Warn);
    assert_eq!(codes(&d), ["W"]);
    assert_eq!(d.would_decide, Outcome::Block);
    let s = d.matched_rules.iter().find(|m| m.id == "s").unwrap();
    assert!(s.shadow);
    let t = d.matched_rules.iter().find(|m| m.id == "t").unwrap();
    assert!(t.shadow && t.pack == "sp");
    // A set of only shadow packs answers allow, even with a block default.
    let only = set_of(&[shadow.path()]);
    let d = only.evaluate(&act("anything"));
    assert_eq!((d.outcome, d.would_decide), (Outcome::Allow, Outcome::Block));
}

#[test]
fn default_decision_per_pack_max_over_packs() {
    let deny = pack_dir(
        &pack_yaml(
            "deny",
            "block",
            "enforce",
            "    - {id: ok, match: {actions: [read]}, decision: allow, reasonCode: READ_OK}\n",
        ),
        &[],
    );
    let warn = pack_dir(&pack_yaml("warn", "warn", "enforce", "    []\n"), &[]);
    let set = set_of(&[deny.path()]);
    let d = set.evaluate(&act("write"));
    assert_eq!((d.outcome, codes(&d)), (Outcome::Block, vec![DEFAULT_DECISION]));
    let d = set.evaluate(&act("read"));
    assert_eq!((d.outcome, codes(&d)), (Outcome::Allow, vec!["READ_OK"]));
    let both = set_of(&[deny.path(), warn.path()]);
    let d = both.evaluate(&act("read"));
    assert_eq!((d.outcome, codes(&d)), (Outcome::Warn, vec![DEFAULT_DECISION]));
}

#[test]
fn globs_over_actions_and_agent_ids_or_names() {
    let rules = "    - {id: g, match: {actions: [\"db.*.drop\", \"rm_?\", \"{get,put}_secret\"], agents: [\"ops-*\"]}, decision: block}\n";
    let dir = pack_dir(&enforcing("p", rules), &[]);
    let set = set_of(&[dir.path()]);
    let b = |action: &str, agent: &str| set.evaluate(&input(action, agent, serde_json::json!({}))).outcome;
    assert_eq!(b("db.users.drop", "ops-1"), Outcome::Block);
    assert_eq!(b("rm_x", "ops-2"), Outcome::Block);
    assert_eq!(b("rm_xy", "ops-2"), Outcome::Allow);
    assert_eq!(b("put_secret", "ops-2"), Outcome::Block);
    assert_eq!(b("db.users.drop", "dev-1"), Outcome::Allow);
    // Agent name matches too: input() names agents "<id>-name".
    let by_name = pack_dir(
        &enforcing(
            "n",
            "    - {id: n, match: {agents: [\"bot-name\"]}, decision: warn}\n",
        ),
        &[],
    );
    let set = set_of(&[by_name.path()]);
    assert_eq!(
        set.evaluate(&input("x", "bot", serde_json::json!({}))).outcome,
        Outcome::Warn
    );
    assert_eq!(
        set.evaluate(&input("x", "other", serde_json::json!({}))).outcome,
        Outcome::Allow
    );
}

#[test]
fn when_list_means_all_must_hold_and_rego_modules_are_visible() {
    let rules = "    - id: both\n      match: {actions: [pay]}\n      when:\n        - input.context.amount > 10\n        - data.lib.is_vip(input.principal)\n      decision: block\n";
    let lib = "package lib\n\nis_vip(p) if p.tier == \"gold\"\n";
    let dir = pack_dir(&enforcing("p", rules), &[("lib.rego", lib)]);
    let set = set_of(&[dir.path()]);
    let mut i = input("pay", "a", serde_json::json!({"amount": 50}));
    i.principal = serde_json::json!({"tier": "gold"});
    assert_eq!(set.evaluate(&i).outcome, Outcome::Block);
    i.principal = serde_json::json!({"tier": "silver"});
    assert_eq!(set.evaluate(&i).outcome, Outcome::Allow);
    i.context = serde_json::json!({"amount": 5});
    i.principal = serde_json::json!({"tier": "gold"});
    assert_eq!(set.evaluate(&i).outcome, Outcome::Allow);
}

fn refusal(pack: &str, extra: &[(&str, &str)]) -> String {
    let dir = pack_dir(pack, extra);
    unsigned(dir.path()).unwrap_err().to_string()
}

/// A pack's files besides `pack.yaml`: (path, text).
type Extra<'a> = &'a [(&'a str, &'a str)];

/// The pack is refused with a message that contains every one of `needles`.
fn assert_refused(pack: &str, extra: &[(&str, &str)], needles: &[&str]) {
    let e = refusal(pack, extra);
    assert!(needles.iter().all(|n| e.contains(n)), "{e}");
}

#[test]
fn invalid_packs_are_refused_naming_file_rule_and_line() {
    // (the rules of pack.yaml, other files, what the refusal names)
    let cases: &[(&str, Extra, &[&str])] = &[
        // Unknown key on a rule (line 9 of the generated pack.yaml).
        (
            "    - id: r1\n      decison: block\n",
            &[],
            &["pack.yaml:9", "rule 'r1'", "decison"],
        ),
        // Bad glob.
        (
            "    - id: ok\n      decision: warn\n    - id: globby\n      match: {actions: [\"del_[\"]}\n      decision: block\n",
            &[],
            &["pack.yaml:10", "rule 'globby'", "bad glob"],
        ),
        // Rego that does not compile, in a rules/ file.
        (
            "    []\n",
            &[(
                "rules/x.yaml",
                "rules:\n  - id: first\n    decision: warn\n  - id: bad-rego\n    when: \"input.x >>> 3\"\n    decision: block\n",
            )],
            &["rules/x.yaml:4", "rule 'bad-rego'", "Rego"],
        ),
        // Duplicate id across pack.yaml and a rules file.
        (
            "    - {id: dup, decision: warn}\n",
            &[(
                "rules/y.yaml",
                "rules:\n  - id: other\n    decision: warn\n  - id: dup\n    decision: block\n",
            )],
            &["rules/y.yaml:4", "rule 'dup'", "duplicate"],
        ),
        // Duplicate id within one file: the second occurrence's line.
        (
            "    - {id: twice, decision: warn}\n    - {id: twice, decision: block}\n",
            &[],
            &["pack.yaml:9", "rule 'twice'", "duplicate"],
        ),
        // Bad pack-level Rego module.
        (
            "    []\n",
            &[("lib.rego", "package x\nthis is not rego\n")],
            &["lib.rego", "Rego"],
        ),
        // Approval on a non-approval rule.
        (
            "    - {id: ap, decision: block, approval: {timeout: 5m}}\n",
            &[],
            &["rule 'ap'", "approval"],
        ),
    ];
    for (rules, extra, needles) in cases {
        assert_refused(&enforcing("p", rules), extra, needles);
    }
    // Unknown top-level key.
    let extra_key = format!("{}extra: 1\n", enforcing("p", "    []\n"));
    assert_refused(&extra_key, &[], &["pack.yaml:", "extra"]);
}

#[test]
fn a_rego_module_may_not_declare_the_reserved_when_package() {
    // Every rule's `when` is compiled as `data.kla_when.holds` next to the pack's own modules: a
    // module in that package made a rule whose `when` is false match anyway.
    let rules = "    - {id: r, match: {actions: [x]}, when: \"input.context.n > 1000\", decision: block}\n";
    for lib in [
        "package kla_when\n\ndefault holds := true\n",
        "package kla_when\n\nholds if true\n",
        "package kla_when.holds\n\nx := 1\n",
    ] {
        assert_refused(
            &enforcing("p", rules),
            &[("lib/helpers.rego", lib)],
            &["lib/helpers.rego", "kla_when", "reserved"],
        );
    }
    // A package that merely starts with the same letters is fine.
    let dir = pack_dir(
        &enforcing("p", rules),
        &[("lib.rego", "package kla_whenever\n\nx := 1\n")],
    );
    assert_eq!(set_of(&[dir.path()]).evaluate(&act("x")).outcome, Outcome::Allow);
}

#[test]
fn a_rego_module_may_not_declare_the_reserved_library_package() {
    // kla's library is compiled into every pack: a module of the pack in its package would add
    // cases to a helper (say, make `number` defined for strings) that every rule relies on.
    let rules = "    - {id: r, match: {actions: [x]}, when: \"not kla_lib.number(input.context.n)\", decision: block}\n";
    for lib in [
        "package kla_lib\n\nnumber(x) := x if is_string(x)\n",
        "package kla_lib.extra\n\nx := 1\n",
    ] {
        assert_refused(
            &enforcing("p", rules),
            &[("lib/helpers.rego", lib)],
            &["lib/helpers.rego", "kla_lib", "reserved"],
        );
    }
}

/// One rule per probe; `input.context.v` is the value under test. A probe holds when the
/// helper is defined on `v` (or, for the value probes, returns `input.context.want`).
const LIB_PROBES: &str = r#"    - {id: has, match: {actions: [has]}, when: 'kla_lib.has(input.context, "v")', decision: block}
    - {id: string, match: {actions: [string]}, when: '_ = kla_lib.string(input.context.v)', decision: block}
    - {id: number, match: {actions: [number]}, when: '_ = kla_lib.number(input.context.v)', decision: block}
    - {id: nonneg, match: {actions: [nonneg]}, when: '_ = kla_lib.nonneg_number(input.context.v)', decision: block}
    - {id: list, match: {actions: [list]}, when: '_ = kla_lib.string_list(input.context.v)', decision: block}
    - {id: domain, match: {actions: [domain]}, when: 'kla_lib.email_domain(input.context.v) == input.context.want', decision: block}
    - {id: rcpt, match: {actions: [rcpt]}, when: 'kla_lib.email_recipients(input.context.v) == {x | some x in input.context.want}', decision: block}
    - {id: guard, match: {actions: [guard]}, when: 'not kla_lib.nonneg_number(input.context.v)', decision: block}
"#;

#[test]
fn kla_lib_helpers_are_defined_only_on_well_typed_values() {
    use serde_json::json;
    let dir = pack_dir(&enforcing("p", LIB_PROBES), &[]);
    let set = set_of(&[dir.path()]);
    let holds = |probe: &str, context: serde_json::Value| {
        let d = set.evaluate(&input(probe, "a", context.clone()));
        assert!(d.error.is_none(), "{probe} {context}: {d:?}");
        d.outcome == Outcome::Block
    };
    let absent = json!({});
    // (probe, v, holds); `None` for v means the field is absent.
    let cases: &[(&str, Option<serde_json::Value>, bool)] = &[
        ("has", Some(json!(null)), true),
        ("has", Some(json!(false)), true),
        ("has", None, false),
        ("string", Some(json!("")), true),
        ("string", Some(json!(5)), false),
        ("string", Some(json!(["a"])), false),
        ("string", Some(json!(null)), false),
        ("string", None, false),
        ("number", Some(json!(-2.5)), true),
        ("number", Some(json!(0)), true),
        ("number", Some(json!(u64::MAX)), true),
        ("number", Some(json!(1e308)), true),
        ("number", Some(json!("5")), false),
        ("number", Some(json!(true)), false),
        ("number", Some(json!(null)), false),
        ("number", Some(json!({"v": 1})), false),
        ("number", Some(json!([1])), false),
        ("number", None, false),
        ("nonneg", Some(json!(0)), true),
        ("nonneg", Some(json!(0.5)), true),
        ("nonneg", Some(json!(-0.0001)), false),
        ("nonneg", Some(json!(i64::MIN)), false),
        ("nonneg", Some(json!("1")), false),
        ("list", Some(json!([])), true),
        ("list", Some(json!(["a", "b"])), true),
        ("list", Some(json!("a")), false),
        ("list", Some(json!(["a", 1])), false),
        ("list", Some(json!([["a"]])), false),
        ("list", Some(json!({"0": "a"})), false),
        ("list", Some(json!(null)), false),
        ("list", None, false),
        // The guard is what a pack pairs with a typed comparison: it holds on every bad value.
        ("guard", Some(json!(3)), false),
        ("guard", Some(json!("3")), true),
        ("guard", Some(json!(-3)), true),
        ("guard", Some(json!(null)), true),
        ("guard", None, true),
    ];
    for (probe, v, want) in cases {
        let context = match v {
            Some(v) => json!({ "v": v }),
            None => absent.clone(),
        };
        assert_eq!(holds(probe, context.clone()), *want, "{probe} on {context}");
    }
    // The probe also holds when the context is not an object at all.
    assert!(!holds("has", json!("v")));
    assert!(holds("guard", json!(5)));

    let domain = |v: serde_json::Value, want: &str| holds("domain", json!({"v": v, "want": want}));
    assert!(domain(json!("a@acme.com"), "acme.com"));
    assert!(domain(json!("A.B+tag@Mail.ACME-corp.com"), "mail.acme-corp.com"));
    assert!(domain(json!("a@xn--bcher-kva.example"), "xn--bcher-kva.example"));
    for bad in [
        json!("acme.com"),
        json!("a@"),
        json!("@acme.com"),
        json!("a@b@acme.com"),
        json!("Alice <a@acme.com>"),
        json!("a@acme.com, b@evil.com"),
        json!("a b@acme.com"),
        json!("a\u{0}@acme.com"),
        json!("a@acme.com."),
        json!("a@acme..com"),
        json!("a@bücher.example"),
        json!(["a@acme.com"]),
        json!(5),
    ] {
        assert!(!domain(bad.clone(), "acme.com"), "{bad}");
        assert!(!holds("domain", json!({"v": bad, "want": null})));
    }

    let rcpt = |v: serde_json::Value, want: serde_json::Value| holds("rcpt", json!({"v": v, "want": want}));
    assert!(rcpt(
        json!({"to": ["a@x.com"], "cc": ["b@y.com", "a@x.com"], "bcc": ["c@z.com"], "from": 5}),
        json!(["a@x.com", "b@y.com", "c@z.com"])
    ));
    assert!(rcpt(json!({"bcc": ["c@z.com"]}), json!(["c@z.com"])));
    assert!(rcpt(json!({}), json!([])));
    assert!(rcpt(json!({"to": [], "cc": []}), json!([])));
    for bad in [
        json!({"to": "a@x.com"}),
        json!({"to": ["a@x.com"], "cc": "b@y.com"}),
        json!({"to": ["a@x.com"], "bcc": null}),
        json!({"to": ["a@x.com", 5]}),
        json!({"to": ["a@x.com", "not an address"]}),
        json!({"cc": {"0": "a@x.com"}}),
        json!(["a@x.com"]),
    ] {
        for want in [json!([]), json!(["a@x.com"])] {
            assert!(!rcpt(bad.clone(), want), "{bad}");
        }
    }
}

#[test]
fn kla_lib_is_importable_from_a_packs_rego_modules() {
    let lib =
        "package helpers\n\nimport data.kla_lib\n\nbig if kla_lib.nonneg_number(input.context.amount) > 10\n";
    let rules = "    - {id: big, match: {actions: [pay]}, when: data.helpers.big, decision: block}\n";
    let dir = pack_dir(&enforcing("p", rules), &[("lib.rego", lib)]);
    let set = set_of(&[dir.path()]);
    let pay = |amount: serde_json::Value| {
        set.evaluate(&input("pay", "a", serde_json::json!({ "amount": amount })))
            .outcome
    };
    assert_eq!(pay(serde_json::json!(11)), Outcome::Block);
    assert_eq!(pay(serde_json::json!(10)), Outcome::Allow);
    assert_eq!(
        pay(serde_json::json!("11")),
        Outcome::Allow,
        "a string is not converted"
    );
}

#[test]
fn kla_lib_number_refuses_a_non_finite_value() {
    // `number` promises a finite number and relies on regorus storing NaN and infinity as null
    // (JSON cannot carry them, and overflowing arithmetic is an error): this pins that premise.
    let mut engine = regorus::Engine::new();
    engine
        .add_policy("kla_lib.rego".into(), include_str!("kla_lib.rego").into())
        .unwrap();
    for (v, want) in [
        (f64::INFINITY, false),
        (f64::NEG_INFINITY, false),
        (f64::NAN, false),
        (1.5, true),
    ] {
        engine.set_input(regorus::Value::from(v));
        let defined = engine
            .eval_query("x := data.kla_lib.number(input)".into(), false)
            .map(|r| !r.result.is_empty())
            .unwrap_or(false);
        assert_eq!(defined, want, "{v}");
    }
}

/// Refusal of a pack whose second rule (`bad`, at pack.yaml line 11) has `when`, with an optional
/// `lib.rego`: the message must name file, line and rule, and contain `why`.
fn assert_when_refused(when: &str, lib: Option<&str>, why: &str) {
    let rules = format!(
        "    - id: ok\n      when: input.context.n > 1\n      decision: warn\n    - id: bad\n      match: {{actions: [x]}}\n      when: \"{when}\"\n      decision: block\n"
    );
    let extra: Vec<(&str, &str)> = lib.map(|l| ("lib.rego", l)).into_iter().collect();
    let e = refusal(&enforcing("p", &rules), &extra);
    assert!(
        e.contains("pack.yaml:11") && e.contains("rule 'bad'") && e.contains(why),
        "{when}: {e}"
    );
}

#[test]
fn non_deterministic_builtins_are_refused() {
    // `rand.intn` made the same input against the same pack a coin toss (a pack test suite passed
    // or failed by chance); `time.now_ns` made decisions depend on the server's clock instead of
    // `input.now`, so a recorded decision could not be reproduced from its input.
    assert_when_refused("rand.intn(\\\"k\\\", 2) == 0", None, "non-deterministic");
    assert_when_refused("time.now_ns() > 0", None, "non-deterministic");
    let lib = "package lib\n\nlate if time.now_ns() > 0\n";
    assert_when_refused("data.lib.late", Some(lib), "non-deterministic");
    // Time from the input is the deterministic way.
    let rules = "    - {id: late, when: \"time.parse_rfc3339_ns(input.now) > 0\", decision: warn}\n";
    let dir = pack_dir(&enforcing("p", rules), &[]);
    assert_eq!(set_of(&[dir.path()]).evaluate(&act("x")).outcome, Outcome::Warn);
}

#[test]
fn builtins_whose_cost_an_argument_sets_are_refused() {
    // `numbers.range(1, 1e11)` ran for over a minute with growing memory: a
    // running builtin is past the deadline's and the instruction cap's reach.
    assert_when_refused(
        "count(numbers.range(1, input.context.n)) > 3",
        None,
        "numbers.range",
    );
    assert_when_refused(
        "count(numbers.range_step(1, input.context.n, 1)) > 3",
        None,
        "numbers.range_step",
    );
    let lib = "package lib\n\nmany if count(numbers.range(1, input.context.n)) > 3\n";
    assert_when_refused("data.lib.many", Some(lib), "numbers.range");
}

#[test]
fn a_when_that_could_suspend_the_vm_is_refused() {
    // Rules that may recurse run in the VM's suspendable mode; a host await there would end the
    // run suspended, not with an answer.
    let rules = "    - {id: waits, when: \"__builtin_host_await(1, 2) == 1\", decision: block}\n";
    assert_refused(&enforcing("p", rules), &[], &["rule 'waits'", "without a host"]);
}

/// A pack with no rules of its own and the Rego `module` in `file` is refused naming `needles`.
fn assert_module_refused(file: &str, module: &str, needles: &[&str]) {
    assert_refused(&enforcing("p", "    []\n"), &[(file, module)], needles);
}

/// A refusal that must come before regorus parses anything: well under the seconds a parse takes.
fn assert_quick(started: std::time::Instant) {
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A `when` whose `[` nest `depth` deep around `input.context.n` (one more level with the rule body).
fn nested_when(depth: usize) -> String {
    format!(
        "count({}input.context.n{}) == 1",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn deeply_nested_rego_is_refused_before_it_reaches_the_parser() {
    // regorus parses each level twice (as a possible comprehension, then as an array): 24 levels would take over
    // 15 minutes and stall the pack load. The check refuses it at once, naming the rule or the module.
    let started = std::time::Instant::now();
    assert_when_refused(
        &nested_when(24),
        None,
        "brackets ('[', '{') nest more than 10 deep at line 1",
    );
    let module = format!("package deep\n\nx := {}1{}\n", "{".repeat(30), "}".repeat(30));
    assert_module_refused(
        "deep.rego",
        &module,
        &["deep.rego", "nest more than 10 deep at line 3"],
    );
    assert_quick(started);

    // At the limit it compiles and decides.
    let rules = format!(
        "    - id: deep\n      when: \"{}\"\n      decision: block\n",
        nested_when(MAX_REGO_NESTING - 1)
    );
    let dir = pack_dir(&enforcing("p", &rules), &[]);
    let set = set_of(&[dir.path()]);
    assert_eq!(
        set.evaluate(&input("x", "a", serde_json::json!({"n": 1})))
            .outcome,
        Outcome::Block
    );
}

#[test]
fn many_deep_nests_together_are_refused_by_the_packs_budget() {
    // Each `when` is within the depth limit, but parsing 40 of them would take seconds: the pack's budget is spent
    // at the 29th, before regorus parses any.
    let started = std::time::Instant::now();
    let rules: String = (0..40)
        .map(|i| {
            format!(
                "    - id: r{i}\n      when: \"{}\"\n      decision: block\n",
                nested_when(8)
            )
        })
        .collect();
    assert_refused(
        &enforcing("p", &rules),
        &[],
        &["rule 'r28'", "nests brackets more than 4 deep too often"],
    );
    assert_quick(started);
    // Modules and `when`s share the one budget.
    let module = format!(
        "package lib\n\n{}",
        (0..150)
            .map(|i| format!("x{i} := {}1{}\n", "[".repeat(9), "]".repeat(9)))
            .collect::<String>()
    );
    assert_module_refused("lib.rego", &module, &["lib.rego", "too often"]);
}

#[test]
fn nesting_is_counted_outside_strings_raw_strings_and_comments() {
    use super::pack::rego_nesting_cost as cost;
    let deep = "[".repeat(11);
    assert_eq!(cost(&format!("x == \"{deep}\""), 0), Ok(0));
    assert_eq!(
        cost(&format!("x == \"\\\"{deep}\""), 0),
        Ok(0),
        "an escaped quote stays in the string"
    );
    assert_eq!(cost(&format!("x == `{deep}`"), 0), Ok(0));
    assert_eq!(cost(&format!("x == 1 # {deep}\ny == 2"), 0), Ok(0));
    assert!(
        cost(&format!("x == `\\` {deep}"), 0).is_err(),
        "no escapes in raw strings"
    );
    // Parentheses do not double the parse time and are not counted; siblings do not add depth.
    assert_eq!(cost(&"(".repeat(40), 0), Ok(0));
    assert_eq!(cost(&"[[[[1]]]], {{{{2}}}}".repeat(50), 0), Ok(0));
    // Past the free depth every byte costs 2^(d - 4).
    assert_eq!(cost("[[[[[1]]]]]", 0), Ok(2 + 2));
    assert_eq!(cost("[[[[[[1]]]]]]", 0), Ok(2 + 4 + 4 + 2));
    assert_eq!(cost("[1]", 4), Ok(2 + 2));
    let e = cost(&format!("a\nb\n{}", "[{".repeat(6)), 0).unwrap_err();
    assert!(e.contains("at line 3"), "{e}");
    assert!(cost(&"[{".repeat(5), 0).is_ok());
    assert!(
        cost(&"[{".repeat(5), 1).is_err(),
        "a `when` starts inside a rule body"
    );
    // The shipped packs cost nothing.
    for pack in ["policies/default", "examples/packs/payments"] {
        let files = PackFiles::read_dir(&repo_path(pack)).unwrap();
        for (path, bytes) in files.files.iter().filter(|(p, _)| p.ends_with(".rego")) {
            assert_eq!(
                cost(std::str::from_utf8(bytes).unwrap(), 0),
                Ok(0),
                "{pack}/{path}"
            );
        }
    }
}

#[test]
fn a_pack_too_large_in_total_is_refused_before_it_is_read() {
    // Every file is under the per-file limit, but anyone able to write into a pack directory (who
    // cannot sign) could make the next reload read 10,000 x 8 MiB into memory before the signature
    // is checked. Sparse files: the test itself writes nothing to disk.
    let dir = pack_dir(PAYMENTS, &[]);
    for i in 0..9 {
        let f = std::fs::File::create(dir.path().join(format!("blob{i}.bin"))).unwrap();
        f.set_len(8 * 1024 * 1024).unwrap();
    }
    let Err(e) = PackFiles::read_dir(dir.path()) else {
        panic!("72 MiB of pack files were read into memory");
    };
    assert!(e.to_string().contains("pack is larger than"), "{e}");
}

// ----- signing -----------------------------------------------------------------------------

fn signed_pack() -> (tempfile::TempDir, PackSigner) {
    let dir = pack_dir(
        PAYMENTS,
        &[(
            "rules/more.yaml",
            "rules:\n  - {id: m, decision: warn, match: {actions: [m]}}\n",
        )],
    );
    let signer = PackSigner::generate();
    sign_pack_dir(dir.path(), &signer).unwrap();
    (dir, signer)
}

fn verify(dir: &Path, key: &TrustedKey) -> Result<CompiledPack, PolicyError> {
    load_pack(dir, std::slice::from_ref(key), false)
}

/// The pack in `dir` is refused under `key` with a message that contains `needle`.
fn assert_unverified(dir: &Path, key: &TrustedKey, needle: &str) {
    let e = verify(dir, key).unwrap_err().to_string();
    assert!(e.contains(needle), "{e}");
}

#[test]
fn signed_pack_loads_and_reports_signer_and_digest() {
    let (dir, signer) = signed_pack();
    let pack = verify(dir.path(), &signer.public()).unwrap();
    assert_eq!(
        pack.pack_ref().signer_key_id.as_deref(),
        Some(signer.public().id())
    );
    assert_eq!(pack.pack_ref().digest.len(), 64);
    // The public key round-trips through its text form.
    let parsed = TrustedKey::parse(&format!("# comment\n{}\n", signer.public().to_text())).unwrap();
    assert_eq!(parsed, signer.public());
}

#[test]
fn tampered_added_removed_unsigned_and_wrong_key_are_refused() {
    let (dir, signer) = signed_pack();
    let key = signer.public();
    // Tampered.
    let p = dir.path().join("rules/more.yaml");
    let original = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, original.replace("warn", "allow")).unwrap();
    assert_unverified(dir.path(), &key, "rules/more.yaml was changed");
    std::fs::write(&p, &original).unwrap();
    verify(dir.path(), &key).unwrap();
    // Added.
    write(dir.path(), "rules/evil.yaml", "rules: []\n");
    assert_unverified(dir.path(), &key, "rules/evil.yaml was added");
    std::fs::remove_file(dir.path().join("rules/evil.yaml")).unwrap();
    // Removed.
    std::fs::remove_file(&p).unwrap();
    assert_unverified(dir.path(), &key, "rules/more.yaml was removed");
    std::fs::write(&p, &original).unwrap();
    // Wrong key.
    let other = PackSigner::generate().public();
    assert_unverified(dir.path(), &other, "not trusted");
    // Signature bytes forged (valid base64, wrong signature).
    let sig_path = dir.path().join(SIGNATURE_FILE);
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&sig).unwrap();
    let mut forged = doc.clone();
    forged["manifest"]["version"] = "9.9.9".into();
    std::fs::write(&sig_path, serde_json::to_string(&forged).unwrap()).unwrap();
    assert_unverified(dir.path(), &key, "does not verify");
    // Unsigned.
    std::fs::remove_file(&sig_path).unwrap();
    assert_unverified(dir.path(), &key, "unsigned");
    // allow_unsigned accepts it (dev only).
    let p = load_pack(dir.path(), &[key], true).unwrap();
    assert_eq!(p.pack_ref().signer_key_id, None);
}

#[cfg(unix)]
#[test]
fn manifest_and_path_tricks_are_refused() {
    let (dir, signer) = signed_pack();
    let key = signer.public();
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "x.yaml", "rules: []\n");
    // A symlink to a file outside the pack, and a symlinked rules/ directory.
    let link = dir.path().join("rules/link.yaml");
    std::os::unix::fs::symlink(outside.path().join("x.yaml"), &link).unwrap();
    assert_unverified(dir.path(), &key, "symlinks are not allowed");
    std::fs::remove_file(&link).unwrap();
    let rules = dir.path().join("rules");
    std::fs::rename(&rules, outside.path().join("rules")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("rules"), &rules).unwrap();
    assert_unverified(dir.path(), &key, "symlinks are not allowed");
    std::fs::remove_file(&rules).unwrap();
    std::fs::rename(outside.path().join("rules"), &rules).unwrap();
    verify(dir.path(), &key).unwrap();
    // Hidden and nested files are covered by the manifest like any other.
    write(dir.path(), "docs/.hidden/notes.txt", "x");
    assert_unverified(dir.path(), &key, "docs/.hidden/notes.txt was added");
    std::fs::remove_dir_all(dir.path().join("docs")).unwrap();
    // Validly signed manifests that do not describe this pack: another name, a path outside it.
    let files = PackFiles::read_dir(dir.path()).unwrap();
    let sig = sign_files(&files, "other-pack", "1.0.0", &signer).unwrap();
    std::fs::write(dir.path().join(SIGNATURE_FILE), sig).unwrap();
    assert_unverified(dir.path(), &key, "manifest names other-pack@1.0.0");
    let mut escaped = files.clone();
    escaped.files.insert("../x.yaml".into(), b"rules: []\n".to_vec());
    let sig = sign_files(&escaped, "payments-guardrails", "1.0.0", &signer).unwrap();
    std::fs::write(dir.path().join(SIGNATURE_FILE), sig).unwrap();
    assert_unverified(dir.path(), &key, "file ../x.yaml was removed");
}

#[test]
fn shipped_default_and_example_packs_verify_with_committed_keys() {
    for (dir, key) in [
        ("policies/default", "policies/kla-default.pub"),
        ("examples/packs/payments", "examples/packs/example.pub"),
    ] {
        let key = TrustedKey::read(&repo_path(key)).unwrap();
        let pack = load_pack(&repo_path(dir), &[key], false).unwrap();
        assert!(pack.rule_count() > 0);
    }
}

// ----- manager -----------------------------------------------------------------------------

/// Pack `name` with one rule `r` that gives `action` the `decision`.
fn rule_pack(name: &str, action: &str, decision: &str) -> String {
    enforcing(
        name,
        &format!("    - {{id: r, match: {{actions: [{action}]}}, decision: {decision}}}\n"),
    )
}

/// Writes `rule_pack(name, action, decision)` as `dir/pack.yaml`.
fn write_rule_pack(dir: &Path, name: &str, action: &str, decision: &str) {
    write(dir, "pack.yaml", &rule_pack(name, action, decision));
}

#[test]
fn reload_keeps_last_good_pack_when_new_version_is_refused_and_emits_events() {
    let root = tempfile::tempdir().unwrap();
    let signer = PackSigner::generate();
    let a = root.path().join("a");
    let b = root.path().join("b");
    write_rule_pack(&a, "a", "x", "warn");
    write_rule_pack(&b, "b", "y", "warn");
    sign_pack_dir(&a, &signer).unwrap();
    sign_pack_dir(&b, &signer).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let m = PolicyManager::new(PolicyConfig::new(root.path(), vec![signer.public()]), Some(tx));
    assert_eq!(m.status().packs.len(), 2);
    assert!(matches!(rx.try_recv().unwrap(), PolicyEvent::Activated { packs } if packs.len() == 2));
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Warn);

    // New version of `a`: valid and signed, makes x a block.
    write_rule_pack(&a, "a", "x", "block");
    sign_pack_dir(&a, &signer).unwrap();
    // `b` gets tampered after signing: refused, last good `b` stays.
    write_rule_pack(&b, "b", "y", "allow");
    let st = m.reload();
    assert_eq!(st.packs.len(), 2);
    assert_eq!(st.refused.len(), 1);
    assert!(st.last_refusal.unwrap().reason.contains("pack.yaml was changed"));
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Block);
    assert_eq!(m.evaluate(&act("y")).outcome, Outcome::Warn);
    assert!(
        matches!(rx.try_recv().unwrap(), PolicyEvent::Refused { reason, .. } if reason.contains("keeping last good"))
    );
    assert!(matches!(rx.try_recv().unwrap(), PolicyEvent::Activated { .. }));

    // Everything refused: the whole last good set stays active.
    write(&a, "pack.yaml", "garbage: [\n");
    let st = m.reload();
    assert_eq!(st.packs.len(), 2);
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Block);
}

#[test]
fn a_pack_name_clash_keeps_the_active_packs() {
    // Two directories declaring the same pack name: the second is refused, and like any refused
    // pack it keeps its own last good version; a new directory never displaces an active pack.
    let root = tempfile::tempdir().unwrap();
    let signer = PackSigner::generate();
    let pack = |dir: &str, name: &str, action: &str| {
        let d = root.path().join(dir);
        write_rule_pack(&d, name, action, "block");
        sign_pack_dir(&d, &signer).unwrap();
    };
    pack("b", "bee", "x");
    pack("c", "sea", "y");
    let m = PolicyManager::new(PolicyConfig::new(root.path(), vec![signer.public()]), None);
    assert_eq!(m.status().packs.len(), 2);
    assert_eq!(m.evaluate(&act("y")).outcome, Outcome::Block);

    // `c` is re-signed under the name `bee`: refused, and `sea` (its last good) stays.
    pack("c", "bee", "z");
    let st = m.reload();
    assert_eq!(st.refused.len(), 1, "{st:?}");
    assert!(st.refused[0].source.ends_with("c"), "{st:?}");
    assert_eq!(m.evaluate(&act("y")).outcome, Outcome::Block, "{st:?}");
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Block);
    assert_eq!(m.evaluate(&act("z")).outcome, Outcome::Allow);

    // A new directory `a` (sorting first) with another signed `bee`: refused, `b` stays.
    pack("a", "bee", "w");
    let st = m.reload();
    assert!(st.refused.iter().any(|r| r.source.ends_with("a")), "{st:?}");
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Block, "{st:?}");
    assert_eq!(m.evaluate(&act("w")).outcome, Outcome::Allow);
    assert_eq!(m.evaluate(&act("y")).outcome, Outcome::Block);
}

#[test]
fn fail_closed_with_no_pack() {
    let d = PolicySet::empty().evaluate(&act("x"));
    assert_eq!((d.outcome, codes(&d)), (Outcome::Block, vec![POLICY_UNAVAILABLE]));
    let root = tempfile::tempdir().unwrap();
    let m = PolicyManager::new(PolicyConfig::new(root.path(), vec![]), None);
    assert_eq!(m.evaluate(&act("x")).reason_codes, [POLICY_UNAVAILABLE]);
    assert!(m.status().last_refusal.is_some());
    // A present but unsigned pack without allow_unsigned: also unavailable.
    write(root.path(), "pack.yaml", PAYMENTS);
    let m = PolicyManager::new(PolicyConfig::new(root.path(), vec![]), None);
    assert_eq!(m.evaluate(&act("x")).reason_codes, [POLICY_UNAVAILABLE]);
}

/// About 2.6 million iterations of a comprehension: past both the 5 ms deadline and the VM's instruction cap.
/// (Built from an array literal, under Rego's 1,024-column line limit: `numbers.range` is refused in packs.)
fn slow_when() -> String {
    let a = (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    format!(
        "count([1 | some i in [{a}]; some j in [{a}]; some k in [{a}]; some l in [{a}]; i + j + k + l > 0]) > 0"
    )
}

#[test]
fn fail_closed_on_engine_error() {
    // With a generous deadline the VM's instruction cap stops the rule: an engine error.
    let slow = slow_when();
    let rules = format!(
        "    - {{id: spin, match: {{actions: [x]}}, when: \"{slow}\", decision: allow}}\n    - {{id: ok, match: {{actions: [y]}}, when: \"input.context.n > 1\", decision: warn}}\n"
    );
    let dir = pack_dir(&enforcing("p", &rules), &[]);
    let set = PolicySet::new(
        vec![Arc::new(unsigned(dir.path()).unwrap())],
        Duration::from_secs(120),
    );
    let d = set.evaluate(&act("x"));
    assert_eq!(
        (d.outcome, codes(&d)),
        (Outcome::Block, vec![POLICY_ERROR]),
        "{d:?}"
    );
    let err = d.error.unwrap();
    assert!(err.contains("evaluation error in pack p rule spin"), "{err}");
    // The same thread's VM is fine afterwards.
    let d = set.evaluate(&input("y", "a", serde_json::json!({"n": 2})));
    assert_eq!(d.outcome, Outcome::Warn);
}

#[test]
fn fail_closed_on_deadline_overrun() {
    let slow = slow_when();
    let rules = format!("    - {{id: slow, match: {{actions: [x]}}, when: \"{slow}\", decision: allow}}\n");
    let dir = pack_dir(&enforcing("p", &rules), &[]);
    let pack = Arc::new(unsigned(dir.path()).unwrap());
    let set = PolicySet::new(vec![pack.clone()], Duration::from_millis(5));
    let d = set.evaluate(&act("x"));
    assert_eq!(
        (d.outcome, codes(&d)),
        (Outcome::Block, vec![POLICY_ERROR]),
        "{d:?}"
    );
    assert!(d.error.as_deref().unwrap().contains("deadline"), "{d:?}");
    assert!(d.evaluation_micros < 200_000, "{}", d.evaluation_micros);
    // Deadline zero: any Rego rule fails closed; decisions that need no Rego still decide.
    let set = PolicySet::new(vec![pack], Duration::ZERO);
    assert_eq!(set.evaluate(&act("x")).reason_codes, [POLICY_ERROR]);
    assert_eq!(set.evaluate(&act("other")).outcome, Outcome::Allow);
}

#[test]
fn a_preempted_evaluation_is_not_failed_for_the_deadline_but_a_second_overrun_is() {
    // The thread sleeps (as when the OS preempts it) past the deadline while using no CPU: the
    // evaluation runs again and decides. If it overruns again, it fails closed.
    let rules = "    - {id: big, match: {actions: [x]}, when: \"input.context.n > 1\", decision: warn, reasonCode: BIG}\n";
    let dir = pack_dir(&enforcing("p", rules), &[]);
    let set = PolicySet::new(
        vec![Arc::new(unsigned(dir.path()).unwrap())],
        Duration::from_millis(20),
    );
    let x = input("x", "a", serde_json::json!({"n": 2}));
    crate::policy::engine::test_stall::set(1, Duration::from_millis(60));
    let d = set.evaluate(&x);
    assert_eq!((d.outcome, codes(&d)), (Outcome::Warn, vec!["BIG"]), "{d:?}");
    assert!(
        d.evaluation_micros >= 60_000,
        "the stall is in the reported time: {d:?}"
    );
    crate::policy::engine::test_stall::set(2, Duration::from_millis(60));
    let d = set.evaluate(&x);
    assert_eq!(
        (d.outcome, codes(&d)),
        (Outcome::Block, vec![POLICY_ERROR]),
        "{d:?}"
    );
    assert!(d.error.as_deref().unwrap().contains("deadline"), "{d:?}");
    crate::policy::engine::test_stall::set(0, Duration::ZERO);
}

// ----- suites ------------------------------------------------------------------------------

#[test]
fn default_policy_suite_passes_and_failing_suite_fails() {
    let dir = repo_path("policies/default");
    let files = PackFiles::read_dir(&dir).unwrap();
    let pack = CompiledPack::compile(&VerifiedPack::accept_unsigned(files.clone())).unwrap();
    let set = PolicySet::new(vec![Arc::new(pack)], Duration::from_secs(1));
    let report = run_suites(&files, &set).unwrap();
    assert!(report.cases.len() >= 10);
    assert_eq!(report.failed(), 0, "{report:#?}");

    let bad = pack_dir(
        PAYMENTS,
        &[(
            "tests/t.yaml",
            "cases:\n  - name: wrong\n    input: {agent: {id: a}, action: delete_x}\n    expect: {decision: allow, reasonCodes: []}\n  - name: right\n    input: {agent: {id: a}, action: delete_x}\n    expect: {decision: block}\n",
        )],
    );
    let files = PackFiles::read_dir(bad.path()).unwrap();
    let set = set_of(&[bad.path()]);
    let report = run_suites(&files, &set).unwrap();
    assert_eq!(report.failed(), 1);
    assert!(report.cases[0].detail.contains("expected allow, got block"));
    assert!(report.cases[1].passed);
}

// ----- property: monotone precedence -------------------------------------------------------

mod prop {
    use super::*;
    use proptest::prelude::*;

    const ACTIONS: [&str; 4] = ["read", "write", "delete_x", "pay"];
    const PATTERNS: [&str; 5] = ["read", "write", "delete_*", "*", "p?y"];
    const OUTCOMES: [&str; 4] = ["allow", "warn", "require_approval", "block"];

    #[derive(Debug, Clone)]
    struct R {
        pattern: usize,
        decision: usize,
        shadow: bool,
        when: bool,
    }

    fn rule_strategy() -> impl Strategy<Value = R> {
        (0..PATTERNS.len(), 0..OUTCOMES.len(), any::<bool>(), any::<bool>()).prop_map(
            |(pattern, decision, shadow, when)| R {
                pattern,
                decision,
                shadow,
                when,
            },
        )
    }

    fn render(rules: &[R]) -> String {
        if rules.is_empty() {
            return "    []\n".into();
        }
        rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                format!(
                    "    - {{id: r{i}, match: {{actions: [\"{}\"]}}, decision: {}{}{}}}\n",
                    PATTERNS[r.pattern],
                    OUTCOMES[r.decision],
                    if r.shadow { ", mode: shadow" } else { "" },
                    if r.when {
                        ", when: \"input.context.n > 5\""
                    } else {
                        ""
                    },
                )
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Adding a rule (whose decision is at least the pack's default, so it cannot serve as
        /// an allowlist exception) never makes any decision less restrictive; with the default
        /// `allow` that is every rule. Checked for every action, two packs.
        #[test]
        fn adding_a_rule_never_lowers_the_outcome(
            base in proptest::collection::vec(rule_strategy(), 0..6),
            other in proptest::collection::vec(rule_strategy(), 0..4),
            extra in rule_strategy(),
            default in 0..OUTCOMES.len(),
            n in 0..10i64,
        ) {
            prop_assume!(extra.decision >= default);
            let other_dir = pack_dir(&enforcing("other", &render(&other)), &[]);
            let before = pack_dir(&pack_yaml("p", OUTCOMES[default], "enforce", &render(&base)), &[]);
            let mut more = base.clone();
            more.push(extra);
            let after = pack_dir(&pack_yaml("p", OUTCOMES[default], "enforce", &render(&more)), &[]);
            let s1 = set_of(&[before.path(), other_dir.path()]);
            let s2 = set_of(&[after.path(), other_dir.path()]);
            for a in ACTIONS {
                let i = input(a, "agent", serde_json::json!({"n": n}));
                let (d1, d2) = (s1.evaluate(&i), s2.evaluate(&i));
                prop_assert!(d2.outcome >= d1.outcome, "{a}: {:?} -> {:?}", d1.outcome, d2.outcome);
                prop_assert!(d2.would_decide >= d1.would_decide);
            }
        }
    }
}

#[test]
fn watcher_reloads_after_a_change() {
    let root = tempfile::tempdir().unwrap();
    let signer = PackSigner::generate();
    let a = root.path().join("a");
    write_rule_pack(&a, "a", "x", "warn");
    sign_pack_dir(&a, &signer).unwrap();
    let m = Arc::new(PolicyManager::new(
        PolicyConfig::new(root.path(), vec![signer.public()]),
        None,
    ));
    let _watch = m.watch().unwrap();
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Warn);
    write_rule_pack(&a, "a", "x", "block");
    sign_pack_dir(&a, &signer).unwrap();
    let start = std::time::Instant::now();
    while m.evaluate(&act("x")).outcome != Outcome::Block {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "watcher did not reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(m.status().generation >= 2);
}

#[test]
fn direct_rego_input_equals_the_serde_form() {
    let mut i = input(
        "pay",
        "a",
        serde_json::json!({"amount": 5000, "n": [1, 2.5, -3], "s": {"x": null}}),
    );
    assert_eq!(
        engine::rego_input_of(&i).unwrap(),
        regorus::Value::from(serde_json::to_value(&i).unwrap())
    );
    i.agent.version = Some("1".into());
    i.agent.manifest_hash = Some("sha256:00".into());
    i.tool = Some(serde_json::json!({"name": "t"}));
    i.execution = Some(serde_json::json!({"id": "e", "steps": 3, "cost": 0.5}));
    i.principal = serde_json::json!({"id": "u"});
    i.tenant = "acme".into();
    assert_eq!(
        engine::rego_input_of(&i).unwrap(),
        regorus::Value::from(serde_json::to_value(&i).unwrap())
    );
}

#[test]
fn an_activation_the_audit_hook_cannot_record_does_not_happen() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("p");
    write(
        &dir,
        "pack.yaml",
        &enforcing(
            "p",
            "    - {id: r, match: {actions: [x]}, decision: warn, reasonCode: V1}\n",
        ),
    );
    let mut cfg = PolicyConfig::new(root.path(), vec![]);
    cfg.allow_unsigned = true;
    let fail = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (f, s2) = (fail.clone(), seen.clone());
    let hook: AuditHook = Box::new(move |ev: &PolicyEvent| {
        if f.load(Ordering::SeqCst) {
            return Err("ledger unavailable".into());
        }
        s2.lock().push(ev.clone());
        Ok(())
    });
    // The first activation cannot be recorded: nothing is active, decisions fail closed.
    let m = PolicyManager::with_audit(cfg, hook, None);
    assert_eq!(m.evaluate(&act("x")).reason_codes, [POLICY_UNAVAILABLE]);
    let st = m.status();
    assert!(st.packs.is_empty());
    assert!(st.last_refusal.unwrap().reason.contains("could not be recorded"));
    // Once the ledger takes it, the same reload activates the set, and the event was recorded first.
    fail.store(false, Ordering::SeqCst);
    let st = m.reload();
    assert_eq!(st.packs.len(), 1);
    assert_eq!(m.evaluate(&act("x")).reason_codes, ["V1"]);
    assert!(matches!(seen.lock().last(), Some(PolicyEvent::Activated { packs }) if packs.len() == 1));
}

#[test]
fn the_watcher_follows_a_policies_directory_that_is_replaced() {
    // A deploy that replaces the whole policies directory (here a single pack: rm -rf, then a
    // fresh copy) takes the directory's own watch with it: before, the first replacement was
    // picked up and every later edit was silently ignored until a restart or a manual reload.
    let root = tempfile::tempdir().unwrap();
    let signer = PackSigner::generate();
    let a = root.path().join("a");
    let mk = |dir: &Path, d: &str| {
        write_rule_pack(dir, "a", "x", d);
        sign_pack_dir(dir, &signer).unwrap();
    };
    mk(&a, "warn");
    let m = Arc::new(PolicyManager::new(
        PolicyConfig::new(&a, vec![signer.public()]),
        None,
    ));
    let _watch = m.watch().unwrap();
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Warn);
    let staging = tempfile::tempdir().unwrap();
    let s = staging.path().join("a");
    for (d, want) in [
        ("block", Outcome::Block),
        ("require_approval", Outcome::RequireApproval),
        ("allow", Outcome::Allow),
    ] {
        mk(&s, d);
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::create_dir_all(&a).unwrap();
        for f in [PACK_FILE, SIGNATURE_FILE] {
            std::fs::copy(s.join(f), a.join(f)).unwrap();
        }
        let start = std::time::Instant::now();
        while m.evaluate(&act("x")).outcome != want {
            assert!(
                start.elapsed() < Duration::from_secs(8),
                "the watcher did not reload {d}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_file_swapped_for_a_fifo_or_symlink_after_listing_is_refused_without_blocking() {
    // The listing refuses both; this is the read that follows it, racing a swap.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rules.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(pack::read_at_most(&path, 10).map_err(|e| e.to_string()));
    });
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the read returns at once instead of waiting for a writer");
    let e = got.expect_err("a FIFO is refused");
    assert!(e.contains("not a regular file"), "{e}");

    let target = dir.path().join("real.yaml");
    std::fs::write(&target, "x: 1\n").unwrap();
    let link = dir.path().join("link.yaml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(
        pack::read_at_most(&link, 10).is_err(),
        "a symlink is not followed"
    );
    assert_eq!(pack::read_at_most(&target, 10).unwrap(), b"x: 1\n");
}

fn versioned_pack(dir: &Path, version: &str, decision: &str) {
    let yaml = rule_pack("p", "x", decision).replace("version: 1.0.0", &format!("version: {version}"));
    write(dir, "pack.yaml", &yaml);
}

#[test]
fn a_pack_version_must_be_semver() {
    let root = tempfile::tempdir().unwrap();
    versioned_pack(root.path(), "v1", "block");
    let files = PackFiles::read_dir(root.path()).unwrap();
    let err = CompiledPack::compile(&VerifiedPack::accept_unsigned(files))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pack.yaml") && err.contains("\"v1\" is not a semantic version"),
        "{err}"
    );
    // `kla pack sign` validates before signing, so it refuses the same pack.
    let err = sign_pack_dir(root.path(), &PackSigner::generate())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a semantic version"), "{err}");
    assert!(!root.path().join(SIGNATURE_FILE).exists());
}

#[test]
fn an_older_signed_version_is_refused_and_an_equal_one_loads() {
    let root = tempfile::tempdir().unwrap();
    let signer = PackSigner::generate();
    let dir = root.path().join("p");
    let put = |version: &str, decision: &str| {
        versioned_pack(&dir, version, decision);
        sign_pack_dir(&dir, &signer).unwrap();
    };
    put("1.1.0", "block");
    let m = PolicyManager::new(PolicyConfig::new(root.path(), vec![signer.public()]), None);
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Block);

    // The older version, validly signed by the same key: a rollback, refused; 1.1.0 keeps serving.
    put("1.0.0", "allow");
    let st = m.reload();
    let reason = &st.refused.first().expect("refused").reason;
    assert!(
        reason.contains("rollback refused: p 1.0.0 is older than 1.1.0"),
        "{reason}"
    );
    assert_eq!(st.packs[0].version, "1.1.0");
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Block);

    // The same version re-signed with other rules (development): loads.
    put("1.1.0", "warn");
    let st = m.reload();
    assert!(st.refused.is_empty(), "{st:?}");
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Warn);

    // With allow_rollback the older version loads.
    put("1.0.0", "allow");
    let mut cfg = PolicyConfig::new(root.path(), vec![signer.public()]);
    cfg.allow_rollback = true;
    let floors = MemFloors::default();
    floors.0.lock().insert("p".into(), "1.1.0".into());
    let m = PolicyManager::with_audit(
        cfg,
        Box::new(|_: &PolicyEvent| Ok(())),
        Some(Box::new(floors.clone())),
    );
    assert_eq!(m.status().packs[0].version, "1.0.0");
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Allow);
    // ... and the floor follows it down, so a restart without the flag keeps loading it.
    assert_eq!(floors.0.lock().get("p").map(String::as_str), Some("1.0.0"));
}

#[test]
fn the_stored_floor_refuses_an_older_pack_at_startup_and_a_failing_store_fails_closed() {
    let root = tempfile::tempdir().unwrap();
    let signer = PackSigner::generate();
    versioned_pack(root.path(), "2.0.0", "block");
    sign_pack_dir(root.path(), &signer).unwrap();
    let audit = || Box::new(|_: &PolicyEvent| Ok(())) as crate::policy::AuditHook;
    let cfg = || PolicyConfig::new(root.path(), vec![signer.public()]);

    // A fresh manager (a restart) whose store remembers 2.1.0: nothing loads, every decision blocks.
    let floors = MemFloors::default();
    floors.0.lock().insert("p".into(), "2.1.0".into());
    let m = PolicyManager::with_audit(cfg(), audit(), Some(Box::new(floors.clone())));
    assert!(m.status().packs.is_empty());
    assert!(m.status().refused[0].reason.contains("older than 2.1.0"));
    assert_eq!(m.evaluate(&act("x")).outcome, Outcome::Block);
    assert_eq!(
        m.evaluate(&act("x")).reason_codes,
        vec![POLICY_UNAVAILABLE.to_string()]
    );

    // Activation records the floor.
    let floors = MemFloors::default();
    let m = PolicyManager::with_audit(cfg(), audit(), Some(Box::new(floors.clone())));
    assert_eq!(m.status().packs.len(), 1);
    assert_eq!(floors.0.lock().get("p").map(String::as_str), Some("2.0.0"));

    // A damaged stored floor: refused too.
    let floors = MemFloors::default();
    floors.0.lock().insert("p".into(), "not-a-version".into());
    let m = PolicyManager::with_audit(cfg(), audit(), Some(Box::new(floors)));
    assert!(m.status().packs.is_empty());
    assert!(
        m.status().refused[0].reason.contains("is not a version"),
        "{:?}",
        m.status()
    );

    // A store that cannot be read: the pack is refused, not loaded unchecked.
    let m = PolicyManager::with_audit(cfg(), audit(), Some(Box::new(BrokenFloors)));
    assert!(m.status().packs.is_empty());
    assert!(
        m.status().refused[0].reason.contains("could not be read"),
        "{:?}",
        m.status()
    );
}

#[derive(Clone, Default)]
struct MemFloors(Arc<parking_lot::Mutex<std::collections::HashMap<String, String>>>);

impl crate::policy::PackFloors for MemFloors {
    fn floor(&self, name: &str) -> Result<Option<String>, crate::policy::HookError> {
        Ok(self.0.lock().get(name).cloned())
    }
    fn set_floor(&self, name: &str, version: &str, _digest: &str) -> Result<(), crate::policy::HookError> {
        self.0.lock().insert(name.to_owned(), version.to_owned());
        Ok(())
    }
}

struct BrokenFloors;

impl crate::policy::PackFloors for BrokenFloors {
    fn floor(&self, _: &str) -> Result<Option<String>, crate::policy::HookError> {
        Err("disk on fire".into())
    }
    fn set_floor(&self, _: &str, _: &str, _: &str) -> Result<(), crate::policy::HookError> {
        Err("disk on fire".into())
    }
}

#[test]
fn always_blocks_only_for_unconditional_enforced_block_rules() {
    let p = pack_dir(
        &enforcing(
            "ab",
            "    - {id: never, match: {actions: [\"delete_*\"], agents: [bot-1]}, decision: block, reasonCode: NO}\n    - {id: big, match: {actions: [refund]}, when: \"input.context.amount > 10\", decision: block}\n    - {id: quiet, match: {actions: [wipe]}, decision: block, mode: shadow}\n    - {id: hold, match: {actions: [wire]}, decision: require_approval, approval: {timeout: 1m}}\n",
        ),
        &[],
    );
    let set = set_of(&[p.path()]);
    let agent = |id: &str| AgentRef {
        id: id.into(),
        name: format!("{id}-name"),
        ..Default::default()
    };
    assert_eq!(
        set.always_blocks(&agent("bot-1"), "delete_user").as_deref(),
        Some("ab/never (NO)")
    );
    // Another agent, a conditional rule, a shadow rule, an approval: not always blocked.
    assert_eq!(set.always_blocks(&agent("bot-2"), "delete_user"), None);
    assert_eq!(set.always_blocks(&agent("bot-1"), "refund"), None);
    assert_eq!(set.always_blocks(&agent("bot-1"), "wipe"), None);
    assert_eq!(set.always_blocks(&agent("bot-1"), "wire"), None);
    // No pack: every decision fails closed.
    assert!(
        PolicySet::empty()
            .always_blocks(&agent("bot-1"), "read")
            .is_some()
    );
}
