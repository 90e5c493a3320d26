//! How packs match names (`crate::names`): patterns compiled against canonical names, case-insensitively, patterns
//! that could never match refused at load, and a non-canonical action failing closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::names;

/// Compiles an unsigned pack held in memory.
fn compile(rules: &str) -> Result<CompiledPack, PolicyError> {
    let yaml = format!(
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: n, version: 1.0.0}}\nspec:\n  rules:\n{rules}"
    );
    let files = PackFiles {
        root: PathBuf::from("mem"),
        files: BTreeMap::from([(PACK_FILE.to_string(), yaml.into_bytes())]),
        signature: None,
    };
    CompiledPack::compile(&VerifiedPack::accept_unsigned(files))
}

fn set(rules: &str) -> PolicySet {
    PolicySet::new(vec![Arc::new(compile(rules).unwrap())], Duration::from_secs(1))
}

fn input(action: &str, agent_name: &str) -> EvalInput {
    EvalInput {
        agent: AgentRef {
            id: "agt_0123456789ab".into(),
            name: agent_name.into(),
            ..Default::default()
        },
        action: action.into(),
        now: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    }
}

/// The decision for a raw action, canonicalised as every entry point does.
fn decide(set: &PolicySet, raw: &str, agent: &str) -> Decision {
    let action = names::action(raw).unwrap();
    set.evaluate(&input(&action, agent))
}

const RULES: &str = r#"    - {id: no-delete, match: {actions: [delete_customer]}, decision: block, reasonCode: NO_DELETE}
    - {id: big-refund, match: {actions: [execute_refund]}, decision: require_approval, reasonCode: REFUND}
    - {id: mail, match: {actions: ["Email_*"]}, decision: warn, reasonCode: MAIL}
    - {id: gh, match: {actions: ["GitHub/*"]}, decision: require_approval, reasonCode: GH}
    - {id: ops, match: {actions: [restart], agents: ["Ops-*", "Claims-Triage"]}, decision: block, reasonCode: OPS}
"#;

#[test]
fn every_spelling_of_a_rule_name_is_decided_by_that_rule() {
    let set = set(RULES);
    let outcome = |raw: &str, agent: &str| decide(&set, raw, agent).outcome;
    for raw in [
        "delete_customer",
        "DELETE_CUSTOMER",
        "Delete_Customer",
        "dElEtE_cUsToMeR",
    ] {
        assert_eq!(outcome(raw, "x"), Outcome::Block, "{raw}");
    }
    for raw in ["execute_refund", "EXECUTE_REFUND", "Execute_Refund"] {
        assert_eq!(outcome(raw, "x"), Outcome::RequireApproval, "{raw}");
    }
    // Globs written in any case match every spelling.
    for raw in ["email_send", "EMAIL_SEND", "Email_Send"] {
        assert_eq!(outcome(raw, "x"), Outcome::Warn, "{raw}");
    }
    for raw in ["github/create_issue", "GITHUB/CREATE_ISSUE", "github/a/b"] {
        assert_eq!(outcome(raw, "x"), Outcome::RequireApproval, "{raw}");
    }
    // Agent patterns too, against canonical and (from older records) mixed-case names.
    for agent in ["ops-1", "OPS-1", "claims-triage", "Claims-Triage"] {
        assert_eq!(outcome("Restart", agent), Outcome::Block, "{agent}");
    }
    assert_eq!(outcome("restart", "claims-triage-2"), Outcome::Allow);
    assert_eq!(outcome("lookup_policy", "x"), Outcome::Allow);
}

#[test]
fn a_non_canonical_action_fails_closed() {
    let set = set(RULES);
    for raw in [
        "DELETE_CUSTOMER",
        "delete_customer ",
        "delete_customer\0",
        "ｄｅｌｅｔｅ_customer",
        "d\u{435}lete_customer",
        "",
        "lookup policy",
    ] {
        let d = set.evaluate(&input(raw, "x"));
        assert_eq!(d.outcome, Outcome::Block, "{raw:?}");
        assert_eq!(d.reason_codes, vec![POLICY_ERROR.to_string()], "{raw:?}");
        assert!(d.error.unwrap().contains("not a canonical action name"));
    }
}

#[test]
fn the_policy_sees_the_canonical_action() {
    let set = set(
        "    - {id: r, when: \"input.action == \\\"delete_customer\\\"\", decision: block, reasonCode: SEEN}\n",
    );
    assert_eq!(decide(&set, "DELETE_Customer", "x").outcome, Outcome::Block);
}

#[test]
fn patterns_that_can_never_match_a_canonical_name_refuse_the_pack() {
    for (pattern, why) in [
        ("\"ｄｅｌｅｔｅ_*\"", "U+FF44"),
        ("\"d\u{435}lete_customer\"", "U+0435"),
        ("\"delete_customer \"", "a space"),
        ("\"delete\u{200d}_customer\"", "U+200D"),
        ("\"delete_customer_\"", "'_' at character 16"),
        ("\"_*\"", "can never match"),
        ("\"\\\\*\"", "backslash"),
    ] {
        let rules = format!("    - {{id: bad, match: {{actions: [{pattern}]}}, decision: block}}\n");
        let e = compile(&rules).unwrap_err().to_string();
        assert!(e.contains("rule 'bad'") && e.contains("match.actions[0]"), "{e}");
        assert!(e.contains(why), "{pattern}: {e}");
        assert!(e.contains("an action name is"), "{e}");
    }
    let e = compile("    - {id: bad, match: {agents: [ok, \"team/*\"]}, decision: block}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("match.agents[1]") && e.contains("an agent name is"),
        "{e}"
    );
    // Globs keep working.
    compile("    - {id: ok, match: {actions: [\"email_*\", \"*\", \"github/*\", \"{get,put}_x\"]}, decision: warn}\n")
        .unwrap();
}

#[test]
fn suites_decide_canonical_names_as_the_server_does() {
    let pack = |suite: &str| {
        let yaml = format!(
            "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: n, version: 1.0.0}}\nspec:\n  rules:\n{RULES}"
        );
        PackFiles {
            root: PathBuf::from("mem"),
            files: BTreeMap::from([
                (PACK_FILE.to_string(), yaml.into_bytes()),
                ("tests/t.yaml".to_string(), suite.as_bytes().to_vec()),
            ]),
            signature: None,
        }
    };
    let files = pack(
        "cases:\n  - {name: upper, input: {agent: {id: a, name: Ops-1}, action: DELETE_CUSTOMER}, expect: {decision: block, reasonCodes: [NO_DELETE]}}\n  - {name: agent, input: {agent: {id: a, name: Claims-Triage}, action: Restart}, expect: {decision: block, reasonCodes: [OPS]}}\n",
    );
    let set = set(RULES);
    let report = run_suites(&files, &set).unwrap();
    assert_eq!(report.failed(), 0, "{:?}", report.cases);
    let files = pack(
        "cases:\n  - {name: spaced, input: {agent: {id: a}, action: \"delete customer\"}, expect: {decision: allow}}\n",
    );
    let e = run_suites(&files, &set).unwrap_err().to_string();
    assert!(e.contains("case 'spaced': input.action has a space"), "{e}");
    let mut input = input("Delete_Customer", "Claims-Triage");
    canonical_input(&mut input).unwrap();
    assert_eq!(
        (input.action.as_str(), input.agent.name.as_str()),
        ("delete_customer", "claims-triage")
    );
}

/// Patterns a property case draws from (each written in a random case in the pack).
const PATTERNS: [&str; 6] = [
    "delete_customer",
    "delete_*",
    "*_refund",
    "github/*",
    "mcp:tools.call",
    "e?port",
];
/// Names a property case asks about (each spelt in a random case).
const ACTIONS: [&str; 8] = [
    "delete_customer",
    "delete_x",
    "execute_refund",
    "github/create_issue",
    "mcp:tools.call",
    "export",
    "lookup",
    "gitlab/x",
];
const OUTCOMES: [&str; 4] = ["allow", "warn", "require_approval", "block"];

fn recase(s: &str, mask: &[bool]) -> String {
    s.chars()
        .zip(mask.iter().cycle())
        .map(|(c, &up)| if up { c.to_ascii_uppercase() } else { c })
        .collect()
}

fn rules_of(rules: &[(usize, usize)], mask: &[bool]) -> String {
    rules
        .iter()
        .enumerate()
        .map(|(i, &(p, d))| {
            format!(
                "    - {{id: r{i}, match: {{actions: [\"{}\"]}}, decision: {}}}\n",
                recase(PATTERNS[p], mask),
                OUTCOMES[d]
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any two spellings with the same canonical form are decided the same, whatever case the pack's patterns
    /// are written in.
    #[test]
    fn same_canonical_form_same_decision(
        rules in proptest::collection::vec((0..PATTERNS.len(), 0..OUTCOMES.len()), 1..6),
        pack_case in proptest::collection::vec(any::<bool>(), 1..6),
        a in proptest::collection::vec(any::<bool>(), 1..6),
        b in proptest::collection::vec(any::<bool>(), 1..6),
    ) {
        let lower = set(&rules_of(&rules, &[false]));
        let mixed = set(&rules_of(&rules, &pack_case));
        for name in ACTIONS {
            let (x, y) = (recase(name, &a), recase(name, &b));
            prop_assert_eq!(names::action(&x), names::action(&y));
            let want = decide(&lower, name, "x");
            for (s, raw) in [(&lower, &x), (&lower, &y), (&mixed, &x), (&mixed, &y)] {
                let got = decide(s, raw, "x");
                prop_assert_eq!(got.outcome, want.outcome, "{} as {}", name, raw);
                prop_assert_eq!(&got.reason_codes, &want.reason_codes);
            }
        }
    }
}
