//! YAML test suites shipped inside a pack (`tests/*.yaml`), run by `kla pack test`.
//!
//! ```yaml
//! now: "2026-01-01T00:00:00Z"      # optional, default `now` for every case
//! cases:
//!   - name: large refund needs approval
//!     input: {agent: {id: a1, name: billing-bot}, action: execute_refund, context: {amount: 5000}}
//!     expect: {decision: require_approval, reasonCodes: [AMOUNT_OVER_THRESHOLD]}
//! ```

use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::engine::PolicySet;
use super::pack::{PackFiles, from_yaml};
use super::types::{EvalInput, Outcome};
use crate::names;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SuiteDoc {
    #[serde(default)]
    now: Option<String>,
    cases: Vec<CaseDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseDoc {
    name: String,
    #[serde(default)]
    now: Option<String>,
    input: EvalInput,
    expect: ExpectDoc,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ExpectDoc {
    decision: Outcome,
    /// When present, must equal the decision's reason codes (order-insensitive).
    #[serde(default)]
    reason_codes: Option<Vec<String>>,
    /// When present, must equal the ids of all matched rules (order-insensitive).
    #[serde(default)]
    matched_rules: Option<Vec<String>>,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseResult {
    /// Suite file.
    pub file: String,
    /// Case name.
    pub name: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// What differed (empty when passed).
    pub detail: String,
}

/// The results of every case of every suite, in file then case order.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    /// One entry per case.
    pub cases: Vec<CaseResult>,
}

impl SuiteReport {
    /// Number of failed cases.
    pub fn failed(&self) -> usize {
        self.cases.iter().filter(|c| !c.passed).count()
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Puts a hand-written input's `action` and (non-empty) `agent.name` in canonical form ([`crate::names`]), as the
/// server does before it evaluates, so a suite or `kla pack eval` decides what the server would. The error names the
/// field.
pub fn canonical_input(input: &mut EvalInput) -> Result<(), String> {
    input.action = names::action(&input.action)
        .map_err(|e| format!("input.action {e}"))?
        .into_string();
    if !input.agent.name.is_empty() {
        input.agent.name = names::agent(&input.agent.name)
            .map_err(|e| format!("input.agent.name {e}"))?
            .into_string();
    }
    Ok(())
}

/// Runs every `tests/*.yaml` suite of `files` against `set`. Errors only when a suite file is
/// malformed (the pack author's fault, with file and line).
pub fn run_suites(files: &PackFiles, set: &PolicySet) -> Result<SuiteReport, PolicyError> {
    let mut cases = Vec::new();
    for (rel, bytes) in &files.files {
        let Some(rest) = rel.strip_prefix("tests/") else {
            continue;
        };
        if !(rest.ends_with(".yaml") || rest.ends_with(".yml")) {
            continue;
        }
        let display = files.root().join(rel).display().to_string();
        let text = std::str::from_utf8(bytes)
            .map_err(|_| PolicyError::invalid(display.clone(), None, None, "not valid UTF-8"))?;
        let suite: SuiteDoc = from_yaml(&display, text)?;
        for case in suite.cases {
            let mut input = case.input;
            canonical_input(&mut input).map_err(|e| {
                PolicyError::invalid(display.clone(), None, None, format!("case '{}': {e}", case.name))
            })?;
            if let Some(now) = case.now.or_else(|| suite.now.clone()) {
                input.now = now;
            }
            let decision = set.evaluate(&input);
            let mut problems = Vec::new();
            if decision.outcome != case.expect.decision {
                problems.push(format!(
                    "decision: expected {}, got {}",
                    case.expect.decision, decision.outcome
                ));
            }
            if let Some(codes) = case.expect.reason_codes {
                let want = sorted(codes);
                let got = sorted(decision.reason_codes.clone());
                if want != got {
                    problems.push(format!("reasonCodes: expected {want:?}, got {got:?}"));
                }
            }
            if let Some(ids) = case.expect.matched_rules {
                let want = sorted(ids);
                let got = sorted(decision.matched_rules.iter().map(|m| m.id.clone()).collect());
                if want != got {
                    problems.push(format!("matchedRules: expected {want:?}, got {got:?}"));
                }
            }
            if let Some(err) = decision.error.as_ref().filter(|_| !problems.is_empty()) {
                problems.push(format!("engine error: {err}"));
            }
            cases.push(CaseResult {
                file: display.clone(),
                name: case.name,
                passed: problems.is_empty(),
                detail: problems.join("; "),
            });
        }
    }
    Ok(SuiteReport { cases })
}
