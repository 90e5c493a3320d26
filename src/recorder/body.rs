//! The typed body of every record kind: one struct (or, for policy events, `policy::PolicyEvent`) per kind, with
//! the exact field names and spellings the ledger holds, used by the kind's writer and by every reader (re-index
//! and index rows, approvals, events, the API's decision, ledger, evidence and trace reads, OTLP's dedup).
//!
//! **Versioning.** Every entry carries the envelope's version `v` (`ledger::entry::ENTRY_VERSION`, 1 today), and
//! a body is part of the entry it is hashed in, so a body is versioned by its entry: [`RecordBody::VERSION`] is
//! the entry version whose body a type reads and writes, and [`RecordBody::of_entry`] refuses an entry of any
//! other version with a message naming both (a newer kla's entries are never read as a guess). No `v` field is
//! added inside bodies: that would change the bytes of the kinds the ledger already holds. A kind whose body
//! changes shape in a way old readers cannot read bumps its `VERSION` together with the entry version it is
//! written under; a new field that old readers may ignore is added as optional (`serde(default)`), since readers
//! do not refuse fields they do not know.
//!
//! These types live in the recorder, not beside the rules of their domain (`approvals`, `decide`, `registry`,
//! `otlp`), because the recorder indexes every kind from its decoded entry at re-index time and sits below those
//! modules (they record through it); the domain modules build and read them from here. Decisions are written on
//! the hot path by the direct RFC 8785 writer (`decision_body.rs`); [`Decision`] reads exactly what it writes
//! (property-tested both ways).

use super::record::Kind;
use super::{ApprovalTerms, RecordError};
use crate::ledger::{Entry, LedgerError};
use crate::policy::{AgentRef, MatchedRule, Outcome, PackRef, PolicyEvent};
use crate::store::{ApprovalStatus, ExecutionStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Why an entry's body does not read as its kind's typed body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The entry is of another kind than the body asked for.
    #[error("a {found} entry is not a {wanted} entry")]
    Kind { found: String, wanted: &'static str },
    /// The entry was written under an entry version this kla does not read for its kind.
    #[error("a {kind} entry of version {found}: this kla reads version {known} of its body")]
    Version { kind: String, found: u32, known: u32 },
    /// The body lacks a field its kind needs, or holds a value its kind does not allow.
    #[error("{kind} body: {message}")]
    Shape { kind: String, message: String },
}

impl From<BodyError> for LedgerError {
    fn from(e: BodyError) -> LedgerError {
        LedgerError::InvalidEntry(e.to_string())
    }
}

impl From<BodyError> for RecordError {
    fn from(e: BodyError) -> RecordError {
        RecordError::Ledger(e.into())
    }
}

/// A typed entry body.
pub trait RecordBody: Serialize + DeserializeOwned {
    /// The kinds whose entries hold this body.
    const KINDS: &'static [Kind];
    /// The entry version (`v`) whose body this type reads and writes.
    const VERSION: u32 = 1;

    /// The body of `e`, refused when `e` is of another kind or version, or does not have this body's shape.
    fn of_entry(e: &Entry) -> Result<Self, BodyError> {
        let wanted = Self::KINDS.first().map_or("", |k| k.as_str());
        if !Self::KINDS.iter().any(|k| k.as_str() == e.kind) {
            return Err(BodyError::Kind {
                found: e.kind.clone(),
                wanted,
            });
        }
        if e.v != Self::VERSION {
            return Err(BodyError::Version {
                kind: e.kind.clone(),
                found: e.v,
                known: Self::VERSION,
            });
        }
        Self::deserialize(&e.body).map_err(|err| BodyError::Shape {
            kind: e.kind.clone(),
            message: err.to_string(),
        })
    }

    /// The body in canonical (RFC 8785) form, as the ledger holds it.
    fn canonical(&self) -> Result<Vec<u8>, RecordError> {
        serde_json_canonicalizer::to_vec(self)
            .map_err(|e| RecordError::Ledger(LedgerError::InvalidEntry(e.to_string())))
    }
}

/// Who asked for a decision, or voted on or resolved an approval (a token's subject and role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub role: String,
    pub subject: String,
}

/// A `decision` entry's body, as `recorder::DecisionBody` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    pub action: String,
    /// The agent as the policy saw it.
    pub agent: AgentRef,
    /// The approval a `require_approval` decision opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalTerms>,
    /// The pending approval of this exact action that the decision waited for instead of opening one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaits_approval: Option<String>,
    /// The caller's context, redacted.
    pub context: Value,
    pub decision: Outcome,
    /// `dec_...`.
    pub decision_id: String,
    /// The policy error a fail-closed decision names.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub evaluation_micros: u64,
    #[serde(default)]
    pub execution_id: Option<String>,
    #[serde(default)]
    pub matched_rules: Vec<MatchedRule>,
    #[serde(default)]
    pub policy: Vec<PackRef>,
    pub principal: Principal,
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// Detector (or key rule) to the number of values it replaced; left out when nothing was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub requires_desk_approval: bool,
    /// The caller's tool description, redacted.
    #[serde(default)]
    pub tool: Option<Value>,
    #[serde(default)]
    pub trace_id: Option<String>,
    /// The approved approval of this exact action that the decision used up (`appr_...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_approval: Option<String>,
    pub would_decide: Outcome,
}

impl RecordBody for Decision {
    const KINDS: &'static [Kind] = &[Kind::Decision];
}

/// An `agent.registered` entry's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRegistered {
    /// `agt_...`.
    pub agent_id: String,
    pub version: i64,
    /// The manifest (its canonical form is what `manifestHash` covers and `signature` signs); its shape is the
    /// registry's (`registry::Manifest`), which sits above the recorder.
    pub manifest: Value,
    pub manifest_hash: String,
    pub signature: String,
    pub signature_key_id: String,
}

impl AgentRegistered {
    /// The agent's name (the manifest's `name`).
    pub fn name(&self) -> Option<&str> {
        self.manifest.get("name").and_then(Value::as_str)
    }
}

impl RecordBody for AgentRegistered {
    const KINDS: &'static [Kind] = &[Kind::AgentRegistered];
}

impl RecordBody for PolicyEvent {
    const KINDS: &'static [Kind] = &[Kind::PolicyActivated, Kind::PolicyRefused];
}

/// One vote on an approval, as every later `approval.*` entry of it lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub subject: String,
    pub role: String,
    /// `APPROVED` or `DENIED`.
    pub decision: ApprovalStatus,
    pub comment: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// The approval's action as every `approval.*` entry repeats it, so each stands on its own in the ledger and the
/// event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalOf {
    /// `appr_...`.
    pub approval_id: String,
    /// The decision that opened it.
    pub decision_id: String,
    pub agent_id: String,
    pub agent_name: Option<String>,
    pub action: String,
    pub execution_id: Option<String>,
}

/// An `approval.voted` entry's body: a vote short of the approval's quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalVoted {
    #[serde(flatten)]
    pub of: ApprovalOf,
    /// Always [`ApprovalStatus::Pending`].
    pub status: ApprovalStatus,
    /// Who voted.
    pub by: Principal,
    /// `APPROVED` (a denial resolves the approval at once).
    pub vote: ApprovalStatus,
    pub comment: Option<String>,
    /// Every vote so far, this one last.
    pub votes: Vec<Vote>,
    /// Distinct approvers needed.
    pub approvers: u32,
}

impl RecordBody for ApprovalVoted {
    const KINDS: &'static [Kind] = &[Kind::ApprovalVoted];
}

/// What the policy active when an approval reached its quorum decided of the action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recheck {
    pub decision: Outcome,
    pub reason_codes: Vec<String>,
}

/// An `approval.resolved` entry's body: the approval's final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalResolved {
    #[serde(flatten)]
    pub of: ApprovalOf,
    /// `APPROVED`, `DENIED`, `EXPIRED` or `CANCELED`.
    pub status: ApprovalStatus,
    /// Who resolved it; `null` when it expired.
    pub resolved_by: Option<Principal>,
    /// RFC 3339.
    pub resolved_at: String,
    pub comment: Option<String>,
    pub votes: Vec<Vote>,
    /// What the asker may do now.
    pub final_decision: Outcome,
    /// The re-check against the active policy, for an approval that reached its quorum.
    pub recheck: Option<Recheck>,
}

impl RecordBody for ApprovalResolved {
    const KINDS: &'static [Kind] = &[Kind::ApprovalResolved];
}

/// A change of an approval: the body of an `approval.voted` or `approval.resolved` entry, and the approval's
/// state as the store keeps it (the body of the last change applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalChangeBody {
    Voted(ApprovalVoted),
    Resolved(ApprovalResolved),
}

impl ApprovalChangeBody {
    /// The kind of entry that records it.
    pub fn kind(&self) -> Kind {
        match self {
            ApprovalChangeBody::Voted(_) => Kind::ApprovalVoted,
            ApprovalChangeBody::Resolved(_) => Kind::ApprovalResolved,
        }
    }

    /// The approval and its action.
    pub fn of(&self) -> &ApprovalOf {
        match self {
            ApprovalChangeBody::Voted(b) => &b.of,
            ApprovalChangeBody::Resolved(b) => &b.of,
        }
    }

    /// The approval's status after the change.
    pub fn status(&self) -> ApprovalStatus {
        match self {
            ApprovalChangeBody::Voted(b) => b.status,
            ApprovalChangeBody::Resolved(b) => b.status,
        }
    }

    /// Every vote so far.
    pub fn votes(&self) -> &[Vote] {
        match self {
            ApprovalChangeBody::Voted(b) => &b.votes,
            ApprovalChangeBody::Resolved(b) => &b.votes,
        }
    }

    /// The resolution, once there is one.
    pub fn resolved(&self) -> Option<&ApprovalResolved> {
        match self {
            ApprovalChangeBody::Voted(_) => None,
            ApprovalChangeBody::Resolved(b) => Some(b),
        }
    }

    /// The body of an `approval.*` entry.
    pub fn of_entry(e: &Entry) -> Result<ApprovalChangeBody, BodyError> {
        if e.kind == Kind::ApprovalVoted.as_str() {
            ApprovalVoted::of_entry(e).map(ApprovalChangeBody::Voted)
        } else {
            ApprovalResolved::of_entry(e).map(ApprovalChangeBody::Resolved)
        }
    }

    /// The approval's state as the store keeps it (the canonical body of its last change), read as the change
    /// whose status the store's row holds: a pending approval's last change was a vote.
    pub fn of_state(status: ApprovalStatus, state: &str) -> Result<ApprovalChangeBody, serde_json::Error> {
        if status == ApprovalStatus::Pending {
            serde_json::from_str(state).map(ApprovalChangeBody::Voted)
        } else {
            serde_json::from_str(state).map(ApprovalChangeBody::Resolved)
        }
    }

    /// The canonical (RFC 8785) body.
    pub fn canonical(&self) -> Result<Vec<u8>, RecordError> {
        match self {
            ApprovalChangeBody::Voted(b) => b.canonical(),
            ApprovalChangeBody::Resolved(b) => b.canonical(),
        }
    }

    /// The body as a JSON value (the event stream's data).
    pub fn to_value(&self) -> Value {
        match self {
            ApprovalChangeBody::Voted(b) => serde_json::to_value(b),
            ApprovalChangeBody::Resolved(b) => serde_json::to_value(b),
        }
        .unwrap_or(Value::Null)
    }
}

/// An execution's budgets as it was started with them (the KLA Execution API's `budgets`); a missing one is no
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Budgets {
    /// Most governed tool calls the run may make.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Most the run may cost, in US dollars (finite, not negative).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

/// What an execution was started with: held by its first (`PENDING`) transition only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStart {
    /// The run's input (a JSON object), redacted like a decision's context.
    pub input: Value,
    pub budgets: Budgets,
    /// Higher runs first; equal priorities run oldest first.
    pub priority: i64,
    /// The execution this one retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

/// An `execution.transition` entry's body: one move of an execution's lifecycle (`executions` owns which moves
/// are allowed). Every transition names its execution and agent, so each stands on its own in the ledger and
/// the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionTransition {
    /// `exec_...`.
    pub execution_id: String,
    pub agent_id: String,
    pub agent_name: String,
    /// The status before; left out for the first transition (to `PENDING`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ExecutionStatus>,
    /// The status after.
    pub status: ExecutionStatus,
    /// Who asked for it; left out when kla itself moved the run (queue, runner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Principal>,
    /// What the run was started with (the first transition only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<ExecutionStart>,
    /// Why, in a few words (`cancel requested`, a budget reason code, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The run's result (`COMPLETED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_result: Option<Value>,
    /// What went wrong (`FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_log: Option<String>,
}

impl RecordBody for ExecutionTransition {
    const KINDS: &'static [Kind] = &[Kind::ExecutionTransition];
}

/// One span's hash in a `trace.spans` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpanHash {
    /// Lowercase hex, 16 digits.
    pub span_id: String,
    /// `sha256:` over the span's canonical OTLP JSON.
    pub hash: String,
}

/// A pack active when spans were sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealPack {
    pub name: String,
    pub version: String,
    pub digest: String,
}

/// A `trace.spans` entry's body: the redacted spans of one trace from one OTLP export (`otlp::seal` builds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSpans {
    /// Lowercase hex, 32 digits.
    pub trace_id: String,
    /// The spans in the OTLP JSON mapping (`resourceSpans` of an export request), redacted; OTLP's own shape.
    pub resource_spans: Vec<Value>,
    /// One per span, in the order the spans appear.
    pub span_hashes: Vec<SpanHash>,
    /// Detector (or key rule) to the number of values it replaced.
    pub redaction: BTreeMap<String, u64>,
    /// The packs active when the spans were sealed.
    pub packs: Vec<SealPack>,
    /// The part's number when one trace's spans were split over several entries (left out for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<u64>,
}

impl RecordBody for TraceSpans {
    const KINDS: &'static [Kind] = &[Kind::TraceSpans];

    /// Written directly in RFC 8785 form (OTLP ingest's hot path: `serde_json_canonicalizer` buffers and re-sorts
    /// every object of every span); the reference encoder only where the direct one cannot be sure (a non-ASCII
    /// detector name, an integer beyond 2^53). `canonical_spans_match_the_reference_encoder` checks both agree.
    fn canonical(&self) -> Result<Vec<u8>, RecordError> {
        match self.write_canonical() {
            Some(out) => Ok(out),
            None => serde_json_canonicalizer::to_vec(self)
                .map_err(|e| RecordError::Ledger(LedgerError::InvalidEntry(e.to_string()))),
        }
    }
}

impl TraceSpans {
    fn write_canonical(&self) -> Option<Vec<u8>> {
        use crate::ledger::jcs::{Obj, write_array, write_value};
        if !self.redaction.keys().all(|k| k.is_ascii()) {
            return None;
        }
        let size: usize = self.span_hashes.len() * 128 + 1024;
        let mut out = Vec::with_capacity(size);
        let mut o = Obj::begin(&mut out);
        write_array(o.raw("packs"), &self.packs, |p, buf| {
            let mut x = Obj::begin(buf);
            x.str("digest", &p.digest);
            x.str("name", &p.name);
            x.str("version", &p.version);
            x.end();
            Some(())
        })?;
        if let Some(part) = self.part {
            o.uint("part", part)?;
        }
        {
            // ASCII keys in a BTreeMap: byte order is RFC 8785's order.
            let buf = o.raw("redaction");
            buf.push(b'{');
            for (i, (k, n)) in self.redaction.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                crate::ledger::jcs::write_str(k, buf);
                buf.push(b':');
                write_value(&Value::from(*n), buf)?;
            }
            buf.push(b'}');
        }
        write_array(o.raw("resourceSpans"), &self.resource_spans, write_value)?;
        write_array(o.raw("spanHashes"), &self.span_hashes, |h, buf| {
            let mut x = Obj::begin(buf);
            x.str("hash", &h.hash);
            x.str("spanId", &h.span_id);
            x.end();
            Some(())
        })?;
        o.str("traceId", &self.trace_id);
        o.end();
        Some(out)
    }
}

/// A real body of every kind, written by its writer (test support for the checks that every kind is handled
/// everywhere: here, in `record.rs` and in `events::map`).
#[cfg(test)]
#[allow(clippy::expect_used)]
pub(crate) mod samples {
    use super::*;
    use crate::ledger::entry::ENTRY_VERSION;
    use crate::policy::{ApprovalSpec, OnTimeout};

    fn of() -> ApprovalOf {
        ApprovalOf {
            approval_id: "appr_1".into(),
            decision_id: "dec_1".into(),
            agent_id: "agt_1".into(),
            agent_name: Some("claims".into()),
            action: "pay".into(),
            execution_id: Some("exec_1".into()),
        }
    }

    fn vote(subject: &str, decision: ApprovalStatus) -> Vote {
        Vote {
            subject: subject.into(),
            role: "approver".into(),
            decision,
            comment: None,
            at: "2026-12-01T00:01:00.000Z".into(),
        }
    }

    /// A vote short of a quorum of two.
    pub(crate) fn voted() -> ApprovalChangeBody {
        ApprovalChangeBody::Voted(ApprovalVoted {
            of: of(),
            status: ApprovalStatus::Pending,
            by: Principal {
                role: "approver".into(),
                subject: "alice".into(),
            },
            vote: ApprovalStatus::Approved,
            comment: Some("ok".into()),
            votes: vec![vote("alice", ApprovalStatus::Approved)],
            approvers: 2,
        })
    }

    /// The quorum reached.
    pub(crate) fn resolved() -> ApprovalChangeBody {
        ApprovalChangeBody::Resolved(ApprovalResolved {
            of: of(),
            status: ApprovalStatus::Approved,
            resolved_by: Some(Principal {
                role: "approver".into(),
                subject: "bob".into(),
            }),
            resolved_at: "2026-12-01T00:02:00.000Z".into(),
            comment: None,
            votes: vec![
                vote("alice", ApprovalStatus::Approved),
                vote("bob", ApprovalStatus::Approved),
            ],
            final_decision: Outcome::Allow,
            recheck: Some(Recheck {
                decision: Outcome::RequireApproval,
                reason_codes: vec!["AMOUNT_OVER_THRESHOLD".into()],
            }),
        })
    }

    /// One span of one trace.
    pub(crate) fn spans() -> TraceSpans {
        TraceSpans {
            trace_id: "5b8efff798038103d269b633813fc60c".into(),
            resource_spans: vec![serde_json::json!({"resource": null, "schemaUrl": "", "scopeSpans": []})],
            span_hashes: vec![SpanHash {
                span_id: "eee19b7ec3c1b174".into(),
                hash: "sha256:00".into(),
            }],
            redaction: BTreeMap::from([("email".to_owned(), 1)]),
            packs: vec![SealPack {
                name: "default".into(),
                version: "1.0.0".into(),
                digest: "sha256:11".into(),
            }],
            part: Some(1),
        }
    }

    /// The first transition of an execution (to `PENDING`, with what it was started with).
    pub(crate) fn execution_started() -> ExecutionTransition {
        ExecutionTransition {
            execution_id: "exec_0123456789abcdef0123456789abcdef".into(),
            agent_id: "agt_1".into(),
            agent_name: "claims".into(),
            from: None,
            status: ExecutionStatus::Pending,
            by: Some(Principal {
                role: "agent".into(),
                subject: "agent-1".into(),
            }),
            start: Some(ExecutionStart {
                input: serde_json::json!({"prompt": "triage", "n": 1.5}),
                budgets: Budgets {
                    max_steps: Some(50),
                    max_cost_usd: Some(5.0),
                },
                priority: 3,
                retry_of: Some("exec_00".into()),
            }),
            reason: None,
            final_result: None,
            error_log: None,
        }
    }

    /// A later transition of the same execution: its completion with a result.
    pub(crate) fn execution_completed() -> ExecutionTransition {
        ExecutionTransition {
            from: Some(ExecutionStatus::Running),
            status: ExecutionStatus::Completed,
            by: None,
            start: None,
            final_result: Some(serde_json::json!({"answer": 42, "ratio": 0.5})),
            ..execution_started()
        }
    }

    /// A `require_approval` decision that opens an approval, or (`uses`) one that uses an earlier approval up.
    pub(crate) fn decision(uses: bool) -> Vec<u8> {
        decision_with_id("dec_1", uses)
    }

    /// As [`decision`], with the decision id `id`.
    pub(crate) fn decision_with_id(id: &str, uses: bool) -> Vec<u8> {
        let agent = AgentRef {
            id: "agt_1".into(),
            name: "claims".into(),
            version: Some("2".into()),
            manifest_hash: Some("sha256:00".into()),
        };
        let mut d = crate::policy::Decision::fail_closed("POLICY_ERROR", None, Vec::new());
        d.outcome = if uses {
            Outcome::Allow
        } else {
            Outcome::RequireApproval
        };
        d.matched_rules = vec![MatchedRule {
            id: "big".into(),
            pack: "default".into(),
            decision: Outcome::RequireApproval,
            reason_code: "AMOUNT_OVER_THRESHOLD".into(),
            message: Some("over 1000".into()),
            shadow: false,
            approval: Some(ApprovalSpec {
                timeout: "15m".into(),
                timeout_seconds: 900,
                on_timeout: OnTimeout::Block,
                approvers: 2,
            }),
        }];
        d.policy = vec![PackRef {
            name: "default".into(),
            version: "1.0.0".into(),
            digest: "sha256:11".into(),
            signer_key_id: None,
        }];
        let terms = ApprovalTerms {
            approval_id: "appr_1".into(),
            action_digest: "hmac-sha256:00".into(),
            expires_at: "2026-12-01T00:15:00.000Z".into(),
            on_timeout: OnTimeout::Block,
            approvers: 2,
            timeout_seconds: 900,
        };
        let context = serde_json::json!({"amount": 1250.5, "user": "usr_22"});
        let tool = serde_json::json!({"name": "refund", "callId": "c1"});
        let report = crate::redact::Report {
            counts: BTreeMap::from([("email".to_owned(), 2)]),
        };
        super::super::DecisionBody {
            decision_id: id,
            agent: &agent,
            action: "pay",
            context: &context,
            tool: Some(&tool),
            execution_id: Some("exec_1"),
            trace_id: None,
            subject: "agent-1",
            role: "agent",
            decision: &d,
            approval: (!uses).then_some(&terms),
            uses_approval: uses.then_some("appr_0"),
            awaits_approval: None,
            redaction: Some(&report),
        }
        .encode()
        .expect("decision body")
    }

    /// The canonical body of a real entry of `kind`.
    pub(crate) fn body(kind: Kind) -> Vec<u8> {
        match kind {
            Kind::Decision => Ok(decision(false)),
            Kind::AgentRegistered => AgentRegistered {
                agent_id: "agt_1".into(),
                version: 2,
                manifest: serde_json::json!({"name": "claims", "tools": ["a", "b"]}),
                manifest_hash: "sha256:00".into(),
                signature: "ed25519:x".into(),
                signature_key_id: "ed25519:k".into(),
            }
            .canonical(),
            Kind::PolicyActivated => PolicyEvent::Activated { packs: Vec::new() }.canonical(),
            Kind::PolicyRefused => PolicyEvent::Refused {
                source: "p".into(),
                reason: "r".into(),
            }
            .canonical(),
            Kind::ApprovalVoted => voted().canonical(),
            Kind::ApprovalResolved => resolved().canonical(),
            Kind::TraceSpans => spans().canonical(),
            Kind::ExecutionTransition => execution_started().canonical(),
        }
        .expect("canonical body")
    }

    /// A decoded entry of `kind` with `body`.
    pub(crate) fn entry_with(kind: Kind, body: &[u8]) -> Entry {
        let bytes = Entry::encode_with_body(
            ENTRY_VERSION,
            kind.as_str(),
            "lr_000000000000000000000001",
            "acme",
            "2026-12-01T00:00:00.000Z",
            body,
        );
        Entry::decode(&bytes).expect("a written entry decodes")
    }

    /// A decoded real entry of `kind`.
    pub(crate) fn entry(kind: Kind) -> Entry {
        entry_with(kind, &body(kind))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Reads `e` as `B` and writes it back: the same canonical bytes as the entry's body.
    fn round_trips<B: RecordBody>(e: &Entry) {
        let typed = B::of_entry(e).unwrap_or_else(|err| panic!("{}: {err}", e.kind));
        let again = typed.canonical().expect("canonical");
        let stored = serde_json_canonicalizer::to_vec(&e.body).expect("stored");
        assert_eq!(
            String::from_utf8_lossy(&again),
            String::from_utf8_lossy(&stored),
            "{}",
            e.kind
        );
    }

    #[test]
    fn canonical_spans_match_the_reference_encoder() {
        use serde_json::json;
        let mut cases = vec![samples::spans()];
        let mut t = samples::spans();
        t.part = None;
        t.redaction.clear();
        t.packs.clear();
        t.span_hashes.clear();
        cases.push(t);
        let mut t = samples::spans();
        t.resource_spans = vec![json!({
            "resource": {"attributes": [{"key": "é\u{1F600}\"\n", "value": {"doubleValue": 1.5e300}}]},
            "scopeSpans": [{"spans": [{"name": "a\u{0}b", "z": [1, -2, 0.1, null, true], "\u{e000}": 1, "\u{10000}": 2}]}]
        })];
        t.redaction.insert("zz".into(), 7);
        cases.push(t);
        // Where the direct writer declines: a non-ASCII detector name, an integer beyond 2^53.
        let mut t = samples::spans();
        t.redaction.insert("détecteur".into(), 1);
        cases.push(t);
        let mut t = samples::spans();
        t.resource_spans = vec![json!({"n": u64::MAX})];
        cases.push(t);
        for t in cases {
            let reference = serde_json_canonicalizer::to_vec(&t).expect("reference");
            let direct = t.canonical().expect("canonical");
            assert_eq!(
                String::from_utf8_lossy(&direct),
                String::from_utf8_lossy(&reference)
            );
        }
    }

    /// The list test of "Adding a record kind": every kind has a typed body that reads what its writer writes and
    /// writes it back byte for byte (a kind added to `Kind` fails to compile here until it has one).
    #[test]
    fn every_kind_has_a_typed_body_that_round_trips_its_writer() {
        for kind in Kind::ALL {
            let e = samples::entry(kind);
            match kind {
                Kind::Decision => round_trips::<Decision>(&e),
                Kind::AgentRegistered => round_trips::<AgentRegistered>(&e),
                Kind::PolicyActivated | Kind::PolicyRefused => round_trips::<PolicyEvent>(&e),
                Kind::ApprovalVoted => round_trips::<ApprovalVoted>(&e),
                Kind::ApprovalResolved => round_trips::<ApprovalResolved>(&e),
                Kind::TraceSpans => round_trips::<TraceSpans>(&e),
                Kind::ExecutionTransition => round_trips::<ExecutionTransition>(&e),
            }
        }
    }

    #[test]
    fn decisions_with_an_approval_or_using_one_round_trip() {
        for uses in [false, true] {
            let e = samples::entry_with(Kind::Decision, &samples::decision(uses));
            round_trips::<Decision>(&e);
            let d = Decision::of_entry(&e).unwrap();
            assert_eq!(d.uses_approval.is_some(), uses);
            assert_eq!(d.approval.is_some(), !uses);
        }
    }

    #[test]
    fn another_version_or_kind_or_shape_is_refused_clearly() {
        let mut e = samples::entry(Kind::Decision);
        e.v = 2;
        let err = Decision::of_entry(&e).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a decision entry of version 2: this kla reads version 1 of its body"
        );
        let e = samples::entry(Kind::TraceSpans);
        assert!(matches!(Decision::of_entry(&e), Err(BodyError::Kind { .. })));
        let mut e = samples::entry(Kind::ApprovalResolved);
        e.body["status"] = "approved".into();
        assert!(matches!(
            ApprovalResolved::of_entry(&e),
            Err(BodyError::Shape { .. })
        ));
        let mut e = samples::entry(Kind::Decision);
        e.body["decision"] = "maybe".into();
        assert!(matches!(Decision::of_entry(&e), Err(BodyError::Shape { .. })));
    }

    #[test]
    fn an_approval_state_reads_as_the_change_its_status_names() {
        for change in [samples::voted(), samples::resolved()] {
            let state = String::from_utf8(change.canonical().unwrap()).unwrap();
            assert_eq!(
                ApprovalChangeBody::of_state(change.status(), &state).unwrap(),
                change
            );
        }
    }
}
