//! Public value types of the decision engine: what goes in ([`EvalInput`]) and what comes
//! out ([`Decision`]). Pure data, no behaviour beyond ordering and (de)serialisation.

use serde::{Deserialize, Serialize};

/// A decision outcome. Ordered by restrictiveness: `Allow < Warn < RequireApproval < Block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The action may proceed.
    #[default]
    Allow,
    /// The action may proceed; the caller should surface a warning.
    Warn,
    /// The action must wait for a human approval.
    RequireApproval,
    /// The action must not proceed.
    Block,
}

impl Outcome {
    /// Every outcome, least restrictive first.
    pub const ALL: [Outcome; 4] = [
        Outcome::Allow,
        Outcome::Warn,
        Outcome::RequireApproval,
        Outcome::Block,
    ];

    /// The outcome spelled `s` exactly (`allow`, `warn`, `require_approval`, `block`); `None` for anything else.
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The snake_case name used in packs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Warn => "warn",
            Outcome::RequireApproval => "require_approval",
            Outcome::Block => "block",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a pack or rule changes the answer (`enforce`) or is only evaluated and reported
/// (`shadow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Matching rules decide the answer.
    #[default]
    Enforce,
    /// Matching rules are reported (`shadow: true`, `wouldDecide`) but never change the answer.
    Shadow,
}

/// What happens when an approval is not given in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// Let the action proceed.
    Allow,
    /// Refuse the action (the default).
    #[default]
    Block,
}

impl OnTimeout {
    /// The wire name (`allow`, `block`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Allow => "allow",
            OnTimeout::Block => "block",
        }
    }
}

/// Approval parameters carried by a `require_approval` rule into the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// The timeout as written in the pack (humantime syntax, e.g. `15m`, `1h 30m`).
    pub timeout: String,
    /// The same timeout in whole seconds.
    pub timeout_seconds: u64,
    /// Outcome applied when the timeout expires.
    pub on_timeout: OnTimeout,
    /// Distinct approvers needed; any denial denies. Left out of the wire form when one.
    #[serde(skip_serializing_if = "is_one", default = "one")]
    pub approvers: u32,
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn one() -> u32 {
    1
}

/// The agent asking for a decision (`input.agent`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRef {
    /// Stable agent id.
    pub id: String,
    /// Human-readable agent name.
    #[serde(default)]
    pub name: String,
    /// Agent version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Hash of the agent's manifest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_hash: Option<String>,
}

/// Everything a rule can see, serialised as the Rego `input` document.
///
/// `None` fields are omitted (undefined in Rego), so `input.execution.steps > 10` simply does not
/// hold when no execution is known.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvalInput {
    /// The calling agent.
    pub agent: AgentRef,
    /// The action name the agent wants to perform (matched by `match.actions`).
    pub action: String,
    /// Free-form action arguments.
    #[serde(default = "empty_object")]
    pub context: serde_json::Value,
    /// Tool description, when the action is a tool call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<serde_json::Value>,
    /// Execution facts (id, steps so far, cost so far, budgets), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<serde_json::Value>,
    /// The human or service on whose behalf the agent acts.
    #[serde(default)]
    pub principal: serde_json::Value,
    /// Tenant id.
    #[serde(default)]
    pub tenant: String,
    /// Evaluation time (RFC 3339): the server clock for API decisions, a fixed value in pack test suites.
    #[serde(default)]
    pub now: String,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// One rule that matched, as reported in a [`Decision`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchedRule {
    /// Rule id (unique within its pack).
    pub id: String,
    /// Name of the pack that holds the rule.
    pub pack: String,
    /// The rule's decision (for shadow rules: what it would have decided).
    pub decision: Outcome,
    /// The rule's reason code.
    pub reason_code: String,
    /// The rule's message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// True when the rule (or its pack) is in shadow mode and did not affect the outcome.
    pub shadow: bool,
    /// Approval parameters of a `require_approval` rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSpec>,
}

/// Identity of a loaded pack, as reported in every decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackRef {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: String,
    /// Hex SHA-256 over the canonical signed manifest (or over the file list when unsigned).
    pub digest: String,
    /// Key id of the signer; `None` for a pack loaded with `allow_unsigned`.
    pub signer_key_id: Option<String>,
}

/// Reason code when no pack is loaded (fail closed).
pub const POLICY_UNAVAILABLE: &str = "POLICY_UNAVAILABLE";
/// Reason code when evaluation failed or ran past its deadline (fail closed).
pub const POLICY_ERROR: &str = "POLICY_ERROR";
/// Reason code when a pack's non-allow `defaultDecision` decided the outcome.
pub const DEFAULT_DECISION: &str = "DEFAULT_DECISION";

/// The answer to "may this agent do this?". Never an error: failures are `block` decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The enforced outcome.
    pub outcome: Outcome,
    /// Reason codes of the enforced rules (and defaults) that produced `outcome`, deduplicated,
    /// in pack then rule order. Empty for a plain allow.
    pub reason_codes: Vec<String>,
    /// The outcome if every shadow rule and shadow pack were enforced.
    pub would_decide: Outcome,
    /// Every rule that matched, enforced and shadow.
    pub matched_rules: Vec<MatchedRule>,
    /// The packs that took part in the decision.
    pub policy: Vec<PackRef>,
    /// Wall time spent in the engine, in microseconds.
    pub evaluation_micros: u64,
    /// Why the engine failed closed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Decision {
    /// A fail-closed `block` decision with a single reason code.
    pub(crate) fn fail_closed(code: &str, error: Option<String>, policy: Vec<PackRef>) -> Self {
        Decision {
            outcome: Outcome::Block,
            reason_codes: vec![code.to_string()],
            would_decide: Outcome::Block,
            matched_rules: Vec::new(),
            policy,
            evaluation_micros: 0,
            error,
        }
    }
}
