//! What kla records: one [`Record`] variant per entry kind, each knowing its kind string, its tenant, its canonical
//! body, the index rows it produces and whether its caller waits for them. Kind strings live here and nowhere else.
//!
//! Index rows come from two places that must agree: the typed record on the live path (no decoding on a
//! decision's hot path) and the decoded ledger entry when re-indexing ([`keys_of_entry`]). A test checks that
//! both give the same rows for every kind.

use super::RecordError;
use super::body::{self, ApprovalChangeBody, RecordBody};
use crate::ledger::{Entry, LedgerError};
use crate::policy::{Outcome, PolicyEvent};
use crate::store::{
    AgentVersionRow, ApprovalRow, ApprovalStatus, ApprovalUpdate, ApprovalUse, DecisionRecord, ExecutionRow,
    ExecutionStatus, ExecutionUpdate, IndexRows, LineageRecord,
};
use serde_json::Value;

/// Entry kind strings, as they appear in the ledger (each is [`Kind::as_str`] of its kind).
pub mod kind {
    use super::Kind;
    /// A policy decision.
    pub const DECISION: &str = Kind::Decision.as_str();
    /// A new agent or a new version of one.
    pub const AGENT_REGISTERED: &str = Kind::AgentRegistered.as_str();
    /// A policy set became active.
    pub const POLICY_ACTIVATED: &str = Kind::PolicyActivated.as_str();
    /// A pack was refused (the previous set stays active).
    pub const POLICY_REFUSED: &str = Kind::PolicyRefused.as_str();
    /// An approver's vote that did not yet reach the approval's quorum.
    pub const APPROVAL_VOTED: &str = Kind::ApprovalVoted.as_str();
    /// An approval's final state: approved, denied, expired or canceled.
    pub const APPROVAL_RESOLVED: &str = Kind::ApprovalResolved.as_str();
    /// The redacted spans of one trace from one OTLP export.
    pub const TRACE_SPANS: &str = Kind::TraceSpans.as_str();
    /// One move of an execution's lifecycle.
    pub const EXECUTION_TRANSITION: &str = Kind::ExecutionTransition.as_str();
}

/// The kinds of entry kla records. Every `match` over it is exhaustive (the body type in `body.rs`, the index
/// keys here, the events in `events::map`), so a new kind does not compile until each place handles it; see
/// ARCHITECTURE.md's "Adding a record kind".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Decision,
    AgentRegistered,
    PolicyActivated,
    PolicyRefused,
    ApprovalVoted,
    ApprovalResolved,
    TraceSpans,
    ExecutionTransition,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Decision,
        Kind::AgentRegistered,
        Kind::PolicyActivated,
        Kind::PolicyRefused,
        Kind::ApprovalVoted,
        Kind::ApprovalResolved,
        Kind::TraceSpans,
        Kind::ExecutionTransition,
    ];

    /// The kind string, as entries hold it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Decision => "decision",
            Kind::AgentRegistered => "agent.registered",
            Kind::PolicyActivated => "policy.activated",
            Kind::PolicyRefused => "policy.refused",
            Kind::ApprovalVoted => "approval.voted",
            Kind::ApprovalResolved => "approval.resolved",
            Kind::TraceSpans => "trace.spans",
            Kind::ExecutionTransition => "execution.transition",
        }
    }

    /// The kind spelled `s` exactly; `None` for a kind this kla does not know.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tenant recorded on entries that belong to no tenant (policy activations and refusals).
pub const SYSTEM_TENANT: &str = "_system";

/// A decision to record: its index keys and its canonical ledger body ([`super::DecisionBody::encode`]).
pub struct DecisionEntry {
    pub tenant: String,
    /// `dec_...`.
    pub decision_id: String,
    pub agent_id: String,
    pub action: String,
    pub outcome: Outcome,
    pub trace_id: Option<String>,
    pub execution_id: Option<String>,
    /// The approval a `require_approval` decision opens (its terms are in `body`).
    pub approval: Option<OpenedApproval>,
    /// The approved approval of this exact action that the decision uses up (a held or retried tool call going
    /// through); its index marks the approval used, so it lets no second call through.
    pub uses_approval: Option<String>,
    /// The canonical ledger body: input, matched rules, pack digests, outcome (moved into the entry).
    pub body: Vec<u8>,
}

/// The index keys of the approval a decision opens.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedApproval {
    /// `appr_...`.
    pub approval_id: String,
    /// RFC 3339.
    pub expires_at: String,
    /// The keyed digest of the action it is bound to.
    pub action_digest: Option<String>,
}

/// A change of an approval's state: a vote short of the quorum (an `approval.voted` entry, the status still
/// [`ApprovalStatus::Pending`]) or its resolution (`approval.resolved`).
pub struct ApprovalChange {
    pub tenant: String,
    /// The approval's whole state after the change (it becomes the entry's body).
    pub body: ApprovalChangeBody,
}

/// An agent version to record. The registrar assigns the id and version number before the entry is written.
pub struct Registration {
    pub tenant: String,
    pub agent_id: String,
    pub name: String,
    pub version: i64,
    /// The manifest in canonical (RFC 8785) form.
    pub manifest: String,
    pub manifest_hash: String,
    pub signature: String,
    pub signature_key_id: String,
}

/// The redacted spans of one trace from one OTLP export, sealed as one entry (`src/otlp/seal.rs` builds the body).
#[derive(Debug, Clone)]
pub struct SpanBatch {
    pub tenant: String,
    /// Lowercase hex, 32 digits.
    pub trace_id: String,
    /// The entry body.
    pub body: body::TraceSpans,
}

/// One move of an execution's lifecycle (`executions` checks it is allowed and builds the body).
#[derive(Debug, Clone)]
pub struct ExecutionChange {
    pub tenant: String,
    /// The entry body.
    pub body: body::ExecutionTransition,
}

/// One thing to record.
pub enum Record {
    /// A decision; answered once durable, without waiting for its index rows.
    Decision(DecisionEntry),
    /// An agent registration; its caller waits for the index, so the next registration sees it.
    AgentRegistered(Registration),
    /// A policy activation or refusal (the manager's audit hook); a system entry.
    Policy(PolicyEvent),
    /// A change of an approval; its caller waits for the index, so the next change sees it.
    Approval(ApprovalChange),
    /// Spans of one trace; acknowledged once durable, without waiting for the index (reads pass the barrier).
    Spans(SpanBatch),
    /// A transition of an execution; its caller waits for the index, so the next transition sees it.
    Execution(ExecutionChange),
}

/// An entry body in canonical (RFC 8785) form.
pub(super) struct Body(pub Vec<u8>);

/// What an entry's index rows need beyond its header (lineage id, tenant, kind, time, position).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Keys {
    None,
    Decision {
        decision_id: String,
        agent_id: String,
        action: String,
        outcome: Outcome,
        trace_id: Option<String>,
        execution_id: Option<String>,
        approval: Option<OpenedApproval>,
        uses_approval: Option<String>,
    },
    Approval {
        approval_id: String,
        decision_id: Option<String>,
        status: ApprovalStatus,
        state: String,
    },
    Spans {
        trace_id: String,
    },
    Execution(Box<ExecutionKeys>),
    Agent {
        agent_id: String,
        name: String,
        version: i64,
        manifest: String,
        manifest_hash: String,
        signature: String,
        key_id: String,
    },
}

/// What an `execution.transition` entry's index rows need: the store's row for the first transition, the change
/// for every one.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ExecutionKeys {
    execution_id: String,
    agent_id: String,
    agent_name: String,
    status: ExecutionStatus,
    /// Priority, budgets and the run it retries: the first transition only.
    start: Option<(i64, body::Budgets, Option<String>)>,
    /// Canonical JSON.
    final_result: Option<String>,
    error_log: Option<String>,
}

impl ExecutionKeys {
    /// The keys of `b`; `None` when its result has no canonical form (it then has none on the live path either).
    fn of(b: &body::ExecutionTransition) -> Option<ExecutionKeys> {
        let final_result = match &b.final_result {
            Some(v) => Some(serde_json_canonicalizer::to_string(v).ok()?),
            None => None,
        };
        Some(ExecutionKeys {
            execution_id: b.execution_id.clone(),
            agent_id: b.agent_id.clone(),
            agent_name: b.agent_name.clone(),
            status: b.status,
            start: b
                .start
                .as_ref()
                .map(|s| (s.priority, s.budgets, s.retry_of.clone())),
            final_result,
            error_log: b.error_log.clone(),
        })
    }
}

impl Record {
    /// The entry kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Decision(_) => kind::DECISION,
            Record::AgentRegistered(_) => kind::AGENT_REGISTERED,
            Record::Policy(PolicyEvent::Activated { .. }) => kind::POLICY_ACTIVATED,
            Record::Policy(PolicyEvent::Refused { .. }) => kind::POLICY_REFUSED,
            Record::Approval(a) => a.body.kind().as_str(),
            Record::Spans(_) => kind::TRACE_SPANS,
            Record::Execution(_) => kind::EXECUTION_TRANSITION,
        }
    }

    /// The tenant the entry belongs to ([`SYSTEM_TENANT`] for policy events).
    pub fn tenant(&self) -> &str {
        match self {
            Record::Decision(d) => &d.tenant,
            Record::AgentRegistered(r) => &r.tenant,
            Record::Policy(_) => SYSTEM_TENANT,
            Record::Approval(a) => &a.tenant,
            Record::Spans(b) => &b.tenant,
            Record::Execution(x) => &x.tenant,
        }
    }

    /// Whether recording waits until the entry's index rows are committed. Decisions do not (the index is off
    /// their answer path; reads pass the index barrier instead); registrations do, because the next
    /// registration of the same name reads the newest version from the index.
    pub fn waits_for_index(&self) -> bool {
        // A decision that uses an approval up waits too: the next call of the same action must see it used.
        !matches!(self, Record::Spans(_)) && !matches!(self, Record::Decision(d) if d.uses_approval.is_none())
    }

    /// The body and index keys.
    pub(super) fn into_parts(self) -> Result<(Body, Keys), RecordError> {
        Ok(match self {
            Record::Decision(d) => (
                Body(d.body),
                Keys::Decision {
                    decision_id: d.decision_id,
                    agent_id: d.agent_id,
                    action: d.action,
                    outcome: d.outcome,
                    trace_id: d.trace_id,
                    execution_id: d.execution_id,
                    approval: d.approval,
                    uses_approval: d.uses_approval,
                },
            ),
            Record::Approval(a) => {
                let bytes = a.body.canonical()?;
                let state = String::from_utf8(bytes.clone())
                    .map_err(|e| LedgerError::InvalidEntry(format!("approval: {e}")))?;
                let keys = approval_keys(&a.body, state);
                (Body(bytes), keys)
            }
            Record::AgentRegistered(r) => {
                let manifest: Value = serde_json::from_str(&r.manifest)
                    .map_err(|e| LedgerError::InvalidEntry(format!("manifest: {e}")))?;
                let body = body::AgentRegistered {
                    agent_id: r.agent_id.clone(),
                    version: r.version,
                    manifest,
                    manifest_hash: r.manifest_hash.clone(),
                    signature: r.signature.clone(),
                    signature_key_id: r.signature_key_id.clone(),
                };
                (
                    Body(body.canonical()?),
                    Keys::Agent {
                        agent_id: r.agent_id,
                        name: r.name,
                        version: r.version,
                        manifest: r.manifest,
                        manifest_hash: r.manifest_hash,
                        signature: r.signature,
                        key_id: r.signature_key_id,
                    },
                )
            }
            Record::Spans(b) => (Body(b.body.canonical()?), Keys::Spans { trace_id: b.trace_id }),
            Record::Execution(x) => {
                let bytes = x.body.canonical()?;
                let keys = ExecutionKeys::of(&x.body)
                    .ok_or_else(|| LedgerError::InvalidEntry("execution: final result".into()))?;
                (Body(bytes), Keys::Execution(Box::new(keys)))
            }
            Record::Policy(ev) => (Body(ev.canonical()?), Keys::None),
        })
    }
}

/// An approval change's index keys; `state` is its canonical body.
fn approval_keys(b: &ApprovalChangeBody, state: String) -> Keys {
    Keys::Approval {
        approval_id: b.of().approval_id.clone(),
        decision_id: Some(b.of().decision_id.clone()),
        status: b.status(),
        state,
    }
}

/// The index keys of a decoded entry (re-indexing and index retries): the same as its record gave when it was
/// written. An entry whose body does not read as its kind's typed body (`body.rs`), or of a kind this kla does not
/// know, is indexed by its lineage row only.
pub(super) fn keys_of_entry(e: &Entry) -> Keys {
    let Some(kind) = Kind::parse(&e.kind) else {
        return Keys::None;
    };
    let keys = match kind {
        Kind::Decision => body::Decision::of_entry(e).ok().map(|b| Keys::Decision {
            decision_id: b.decision_id,
            agent_id: b.agent.id,
            action: b.action,
            outcome: b.decision,
            trace_id: b.trace_id,
            execution_id: b.execution_id,
            approval: b.approval.map(|t| OpenedApproval {
                approval_id: t.approval_id,
                expires_at: t.expires_at,
                action_digest: Some(t.action_digest),
            }),
            uses_approval: b.uses_approval,
        }),
        Kind::ApprovalVoted | Kind::ApprovalResolved => ApprovalChangeBody::of_entry(e).ok().and_then(|b| {
            Some(approval_keys(
                &b,
                serde_json_canonicalizer::to_string(&e.body).ok()?,
            ))
        }),
        Kind::TraceSpans => body::TraceSpans::of_entry(e)
            .ok()
            .map(|b| Keys::Spans { trace_id: b.trace_id }),
        Kind::AgentRegistered => body::AgentRegistered::of_entry(e).ok().and_then(|b| {
            Some(Keys::Agent {
                name: b.name()?.to_owned(),
                manifest: serde_json_canonicalizer::to_string(&b.manifest).ok()?,
                agent_id: b.agent_id,
                version: b.version,
                manifest_hash: b.manifest_hash,
                signature: b.signature,
                key_id: b.signature_key_id,
            })
        }),
        Kind::ExecutionTransition => body::ExecutionTransition::of_entry(e)
            .ok()
            .and_then(|b| ExecutionKeys::of(&b))
            .map(|k| Keys::Execution(Box::new(k))),
        // Policy events have no index rows beyond their lineage row.
        Kind::PolicyActivated | Kind::PolicyRefused => None,
    };
    keys.unwrap_or(Keys::None)
}

/// The header fields of an entry that its index rows repeat.
pub(super) struct Header<'a> {
    pub lineage_id: &'a str,
    pub tenant: &'a str,
    pub kind: &'a str,
    pub time: &'a str,
}

/// The index rows of one entry at `ledger_index`.
pub(super) fn index_rows(h: &Header<'_>, ledger_index: u64, keys: Keys) -> IndexRows {
    let mut lineage = LineageRecord {
        lineage_id: h.lineage_id.to_owned(),
        tenant: h.tenant.to_owned(),
        ledger_index,
        kind: h.kind.to_owned(),
        decision_id: None,
        trace_id: None,
        execution_id: None,
        created_at: h.time.to_owned(),
    };
    let (mut decision, mut agent, mut approval, mut approval_update) = (None, None, None, None);
    let mut approval_used = None;
    let (mut execution, mut execution_update) = (None, None);
    match keys {
        Keys::None => {}
        Keys::Spans { trace_id } => lineage.trace_id = Some(trace_id),
        Keys::Execution(k) => {
            let k = *k;
            lineage.execution_id = Some(k.execution_id.clone());
            execution = k.start.map(|(priority, budgets, retry_of)| ExecutionRow {
                execution_id: k.execution_id.clone(),
                tenant: h.tenant.to_owned(),
                agent_id: k.agent_id,
                agent_name: k.agent_name,
                priority,
                max_steps: budgets.max_steps,
                max_cost_usd: budgets.max_cost_usd,
                retry_of,
                created_at: h.time.to_owned(),
                created_index: ledger_index,
            });
            execution_update = Some(ExecutionUpdate {
                execution_id: k.execution_id,
                tenant: h.tenant.to_owned(),
                status: k.status,
                at: h.time.to_owned(),
                final_result: k.final_result,
                error_log: k.error_log,
                ledger_index,
            });
        }
        Keys::Approval {
            approval_id,
            decision_id,
            status,
            state,
        } => {
            // An approval's changes are found with its decision (the evidence of a decision carries its chain).
            lineage.decision_id = decision_id;
            approval_update = Some(ApprovalUpdate {
                approval_id,
                tenant: h.tenant.to_owned(),
                status,
                state,
                ledger_index,
            });
        }
        Keys::Decision {
            decision_id,
            agent_id,
            action,
            outcome,
            trace_id,
            execution_id,
            approval: opened,
            uses_approval,
        } => {
            lineage.decision_id = Some(decision_id.clone());
            approval_used = uses_approval.map(|approval_id| ApprovalUse {
                approval_id,
                tenant: h.tenant.to_owned(),
                decision_id: decision_id.clone(),
            });
            if let Some(o) = opened {
                approval = Some(ApprovalRow {
                    expires_ms: crate::time::parse_rfc3339_ms(&o.expires_at).unwrap_or(0),
                    approval_id: o.approval_id,
                    tenant: h.tenant.to_owned(),
                    decision_id: decision_id.clone(),
                    agent_id: agent_id.clone(),
                    action: action.clone(),
                    execution_id: execution_id.clone(),
                    created_at: h.time.to_owned(),
                    expires_at: o.expires_at,
                    decision_index: ledger_index,
                    action_digest: o.action_digest,
                });
            }
            lineage.trace_id = trace_id;
            lineage.execution_id = execution_id;
            decision = Some(DecisionRecord {
                decision_id,
                tenant: h.tenant.to_owned(),
                agent_id,
                action,
                decision: outcome,
                lineage_id: h.lineage_id.to_owned(),
                ledger_index,
                created_at: h.time.to_owned(),
            });
        }
        Keys::Agent {
            agent_id,
            name,
            version,
            manifest,
            manifest_hash,
            signature,
            key_id,
        } => {
            agent = Some(AgentVersionRow {
                tenant: h.tenant.to_owned(),
                agent_id,
                name,
                version,
                manifest,
                manifest_hash,
                signature,
                key_id,
                registered_at: h.time.to_owned(),
            });
        }
    }
    IndexRows {
        lineage,
        decision,
        agent,
        approval,
        approval_update,
        approval_used,
        execution,
        execution_update,
    }
}

/// The index rows of a stored entry (re-indexing and retries).
pub(super) fn rows_of_entry(bytes: &[u8], ledger_index: u64) -> Result<IndexRows, RecordError> {
    let e = Entry::decode(bytes)?;
    let header = Header {
        lineage_id: &e.lineage_id,
        tenant: &e.tenant,
        kind: &e.kind,
        time: &e.time,
    };
    Ok(index_rows(&header, ledger_index, keys_of_entry(&e)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ledger::entry::ENTRY_VERSION;
    use crate::policy::{Outcome, PolicyEvent};
    use crate::recorder::DecisionBody;
    use crate::recorder::body::samples;
    use serde_json::json;

    /// The list test of "Adding a record kind" for the index: a real entry of every kind gives the index keys
    /// its kind needs (a kind added to `Kind` fails to compile here until it says which).
    #[test]
    fn every_kind_has_its_index_keys() {
        for kind in Kind::ALL {
            let keys = keys_of_entry(&samples::entry(kind));
            let expected = match kind {
                Kind::Decision => matches!(
                    keys,
                    Keys::Decision {
                        approval: Some(_),
                        ..
                    }
                ),
                Kind::AgentRegistered => matches!(keys, Keys::Agent { .. }),
                Kind::ApprovalVoted => matches!(
                    keys,
                    Keys::Approval {
                        status: ApprovalStatus::Pending,
                        ..
                    }
                ),
                Kind::ApprovalResolved => matches!(
                    keys,
                    Keys::Approval {
                        status: ApprovalStatus::Approved,
                        ..
                    }
                ),
                Kind::TraceSpans => matches!(keys, Keys::Spans { .. }),
                Kind::ExecutionTransition => {
                    matches!(&keys, Keys::Execution(k) if k.start.is_some() && k.status == ExecutionStatus::Pending)
                }
                Kind::PolicyActivated | Kind::PolicyRefused => keys == Keys::None,
            };
            assert!(expected, "{kind}: {keys:?}");
        }
    }

    /// Encodes a record as the recorder does and decodes it as re-indexing does.
    fn round_trip(r: Record) -> (Keys, Keys, &'static str) {
        let kind = r.kind();
        let tenant = r.tenant().to_owned();
        let (body, keys) = r.into_parts().expect("parts");
        let bytes = Entry::encode_with_body(
            ENTRY_VERSION,
            kind,
            "lr_1",
            &tenant,
            "2026-12-01T00:00:00.000Z",
            &body.0,
        );
        let back = keys_of_entry(&Entry::decode(&bytes).expect("decode"));
        (keys, back, kind)
    }

    #[test]
    fn every_kind_indexes_the_same_from_its_record_and_from_its_ledger_entry() {
        let agent = crate::policy::AgentRef {
            id: "agt_1".into(),
            name: "claims".into(),
            version: Some("2".into()),
            manifest_hash: Some("sha256:00".into()),
        };
        let decision = crate::policy::Decision::fail_closed("POLICY_ERROR", None, Vec::new());
        let context = json!({"amount": 5});
        let terms = crate::recorder::ApprovalTerms {
            approval_id: "appr_1".into(),
            action_digest: "hmac-sha256:00".into(),
            expires_at: "2026-12-01T00:15:00.000Z".into(),
            on_timeout: crate::policy::OnTimeout::Block,
            approvers: 2,
            timeout_seconds: 900,
        };
        let body = DecisionBody {
            decision_id: "dec_1",
            agent: &agent,
            action: "pay",
            context: &context,
            tool: None,
            execution_id: Some("exec_1"),
            trace_id: Some("trace_1"),
            subject: "s",
            role: "agent",
            decision: &decision,
            approval: Some(&terms),
            uses_approval: None,
            awaits_approval: None,
            redaction: None,
        }
        .encode()
        .expect("body");
        let records = [
            Record::Decision(DecisionEntry {
                tenant: "acme".into(),
                decision_id: "dec_1".into(),
                agent_id: "agt_1".into(),
                action: "pay".into(),
                outcome: Outcome::Block,
                trace_id: Some("trace_1".into()),
                execution_id: Some("exec_1".into()),
                approval: Some(OpenedApproval {
                    approval_id: "appr_1".into(),
                    expires_at: "2026-12-01T00:15:00.000Z".into(),
                    action_digest: Some("hmac-sha256:00".into()),
                }),
                uses_approval: None,
                body,
            }),
            Record::Approval(ApprovalChange {
                tenant: "acme".into(),
                body: samples::voted(),
            }),
            Record::Approval(ApprovalChange {
                tenant: "acme".into(),
                body: samples::resolved(),
            }),
            Record::AgentRegistered(Registration {
                tenant: "acme".into(),
                agent_id: "agt_1".into(),
                name: "claims".into(),
                version: 2,
                manifest: r#"{"name":"claims","tools":["a","b"]}"#.into(),
                manifest_hash: "sha256:00".into(),
                signature: "ed25519:x".into(),
                signature_key_id: "ed25519:k".into(),
            }),
            Record::Policy(PolicyEvent::Activated { packs: Vec::new() }),
            Record::Policy(PolicyEvent::Refused {
                source: "p".into(),
                reason: "r".into(),
            }),
            Record::Spans(SpanBatch {
                tenant: "acme".into(),
                trace_id: "5b8efff798038103d269b633813fc60c".into(),
                body: samples::spans(),
            }),
            Record::Execution(ExecutionChange {
                tenant: "acme".into(),
                body: samples::execution_started(),
            }),
            Record::Execution(ExecutionChange {
                tenant: "acme".into(),
                body: samples::execution_completed(),
            }),
        ];
        let mut kinds = Vec::new();
        for r in records {
            let (live, replayed, kind) = round_trip(r);
            assert_eq!(live, replayed, "{kind}");
            kinds.push(kind);
        }
        assert_eq!(
            kinds,
            [
                kind::DECISION,
                kind::APPROVAL_VOTED,
                kind::APPROVAL_RESOLVED,
                kind::AGENT_REGISTERED,
                kind::POLICY_ACTIVATED,
                kind::POLICY_REFUSED,
                kind::TRACE_SPANS,
                kind::EXECUTION_TRANSITION,
                kind::EXECUTION_TRANSITION
            ]
        );
    }
}
