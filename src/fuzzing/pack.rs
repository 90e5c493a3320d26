//! Policy packs and `when` expressions (the `pack` and `when_expr` targets).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::policy::{
    AgentRef, CompiledPack, Decision, EvalInput, Outcome, POLICY_ERROR, POLICY_UNAVAILABLE, PackFiles,
    PolicyError, PolicySet, SIGNATURE_FILE, TrustedKey, VerifiedPack,
};

use super::{Verdict, verdict};

/// In a pack input, a line starting with this names the next file (`==> rules/x.yaml`); the text before the first
/// such line is `pack.yaml`.
pub const FILE_MARK: &str = "==> ";

/// One input holding the files of a pack ([`FILE_MARK`]); `pack.sig.json` is its signature.
pub fn pack_input(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = files.get(crate::policy::PACK_FILE).cloned().unwrap_or_default();
    for (path, bytes) in files.iter().filter(|(p, _)| *p != crate::policy::PACK_FILE) {
        out.extend_from_slice(format!("\n{FILE_MARK}{path}\n").as_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The files of a pack input (see [`pack_input`]), read into memory as `PackFiles::read_dir` would.
fn pack_files(data: &[u8]) -> PackFiles {
    let mark = format!("\n{FILE_MARK}");
    let mark = mark.as_bytes();
    let mut files = BTreeMap::new();
    let mut signature = None;
    let mut name = crate::policy::PACK_FILE.to_owned();
    let mut rest = data;
    loop {
        let at = rest.windows(mark.len()).position(|w| w == mark);
        let (bytes, next) = match at {
            Some(i) => (&rest[..i], Some(&rest[i + mark.len()..])),
            None => (rest, None),
        };
        if name == SIGNATURE_FILE {
            signature = Some(bytes.to_vec());
        } else if !name.is_empty() {
            files.insert(name.clone(), bytes.to_vec());
        }
        let Some(next) = next else {
            break;
        };
        let end = next.iter().position(|&b| b == b'\n').unwrap_or(next.len());
        name = String::from_utf8_lossy(&next[..end]).trim().to_owned();
        rest = next.get(end + 1..).unwrap_or_default();
    }
    PackFiles {
        root: PathBuf::from("fuzz-pack"),
        files,
        signature,
    }
}

/// Evaluation deadline of the targets: long enough that a debug build decides, short enough to stop slow Rego.
const EVAL_DEADLINE: Duration = Duration::from_millis(50);

fn default_key() -> TrustedKey {
    TrustedKey::parse(crate::app::DEFAULT_PACK_KEY)
        .unwrap_or_else(|e| panic!("the embedded default-pack key does not parse: {e}"))
}

/// Inputs every compiled pack decides (actions and contexts of the shipped packs' rules, and a few besides).
fn eval_inputs() -> Vec<EvalInput> {
    let agent = AgentRef {
        id: "agt_000000000001".into(),
        name: "billing-bot".into(),
        ..Default::default()
    };
    [
        ("execute_refund", json!({"amount": 5000, "currency": "EUR"})),
        (
            "send_email",
            json!({"to": ["a@example.com", "b@other.example"], "amount": "12"}),
        ),
        ("delete_customer", json!({})),
        (
            "github/create_issue",
            json!({"amount": -1, "nested": {"a": [1, 2, {"b": null}]}}),
        ),
    ]
    .into_iter()
    .map(|(action, context)| EvalInput {
        agent: agent.clone(),
        action: action.into(),
        context,
        principal: json!({"subject": "fuzz", "role": "agent"}),
        tenant: "acme".into(),
        now: "2026-01-01T00:00:00.000Z".into(),
        ..Default::default()
    })
    .collect()
}

/// What every decision must satisfy, whatever the pack: failures are a fail-closed `block`, anything but `allow`
/// says why, and no enforced matching rule asks for more than the outcome.
fn check_decision(d: &Decision) {
    if let Some(err) = &d.error {
        assert_eq!(
            d.outcome,
            Outcome::Block,
            "a failed evaluation did not block: {err}"
        );
        assert!(
            d.reason_codes == [POLICY_ERROR] || d.reason_codes == [POLICY_UNAVAILABLE],
            "a failed evaluation has reasons {:?}",
            d.reason_codes
        );
    }
    if d.outcome != Outcome::Allow {
        assert!(
            !d.reason_codes.is_empty(),
            "a {} decision gives no reason",
            d.outcome
        );
    }
    for m in d.matched_rules.iter().filter(|m| !m.shadow) {
        assert!(
            m.decision <= d.outcome,
            "rule {} asks for more than the outcome",
            m.id
        );
    }
}

/// Compiles `files` as `--allow-unsigned` would and decides [`eval_inputs`]; a refusal must be the pack author's
/// (`PolicyError::Invalid`).
fn compile_and_decide(files: &PackFiles) -> Result<(), PolicyError> {
    let unsigned = VerifiedPack {
        files: files.clone(),
        signed_header: None,
        digest: String::new(),
        signer_key_id: None,
    };
    let compiled = match CompiledPack::compile(&unsigned) {
        Ok(c) => c,
        Err(e @ PolicyError::Invalid { .. }) => return Err(e),
        Err(e) => panic!("a pack's content was refused as something else than invalid: {e}"),
    };
    let again =
        CompiledPack::compile(&unsigned).unwrap_or_else(|e| panic!("a pack compiled once, not twice: {e}"));
    assert_eq!(
        (compiled.pack_ref(), compiled.rule_count()),
        (again.pack_ref(), again.rule_count())
    );
    let set = PolicySet::new(vec![Arc::new(compiled)], EVAL_DEADLINE);
    for input in eval_inputs() {
        check_decision(&set.evaluate(&input));
    }
    match crate::policy::run_suites(files, &set) {
        Ok(_) | Err(PolicyError::Invalid { .. }) => Ok(()),
        Err(e) => panic!("a pack's test suite failed with a non-input error: {e}"),
    }
}

/// A pack's files ([`FILE_MARK`] format). Against the shipped pack key only the shipped bytes verify, and any change
/// to one of them is refused; compiled unsigned, the pack is refused as invalid or decides every input within the
/// engine's promises, and its test suites run.
pub fn pack(data: &[u8]) -> Verdict {
    let files = pack_files(data);
    let key = default_key();
    match crate::policy::verify_pack(files.clone(), std::slice::from_ref(&key)) {
        Ok(verified) => {
            CompiledPack::compile(&verified)
                .unwrap_or_else(|e| panic!("a pack signed with the shipped key does not compile: {e}"));
            let mut tampered = files.clone();
            if let Some(bytes) = tampered.files.values_mut().next() {
                bytes.push(b'\n');
                assert!(
                    crate::policy::verify_pack(tampered, std::slice::from_ref(&key)).is_err(),
                    "a changed file still verifies"
                );
            }
        }
        Err(PolicyError::Signature { .. }) => {}
        Err(e) => panic!("a signature was refused as something else than a signature problem: {e}"),
    }
    verdict(compile_and_decide(&files).is_ok())
}

/// A string as a YAML double-quoted scalar: printable ASCII as itself, everything else escaped, so any text reaches
/// the pack parser unchanged.
fn yaml_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// The id of the rule [`when_expr`] puts the expression in.
const WHEN_RULE: &str = "fuzz-when";

/// A `when` expression, optionally followed by further pack files ([`FILE_MARK`] format, e.g. a `.rego` module it
/// calls), compiled through the real pack path into one rule. A refusal is the pack author's and names the rule (or
/// the module at fault); a rule that compiles decides every input within the engine's promises.
pub fn when_expr(data: &[u8]) -> Verdict {
    let mut files = pack_files(data);
    let Some(expr) = files
        .files
        .remove(crate::policy::PACK_FILE)
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return Verdict::Refused;
    };
    let extra = !files.files.is_empty() || files.signature.is_some();
    let yaml = format!(
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: fuzz-when, version: 1.0.0}}\nspec:\n  rules:\n    - id: {WHEN_RULE}\n      when: {}\n      decision: block\n",
        yaml_quoted(&expr)
    );
    files
        .files
        .insert(crate::policy::PACK_FILE.to_owned(), yaml.into_bytes());
    match compile_and_decide(&files) {
        Ok(()) => Verdict::Accepted,
        Err(PolicyError::Invalid { rule, reason, .. }) => {
            if !extra {
                assert_eq!(
                    rule.as_deref(),
                    Some(WHEN_RULE),
                    "a `when` refusal names no rule: {reason}"
                );
            }
            Verdict::Refused
        }
        Err(e) => panic!("unexpected refusal: {e}"),
    }
}
