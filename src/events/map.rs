//! Ledger entries to events: one pure function, so an event is the same whenever and by whoever it is computed
//! (the hub's follower, a subscriber catching up from disk, a test), and its id is stable across restarts.
//!
//! | entry kind | events (n) |
//! |---|---|
//! | `decision` | `decision.made` (0); with an `approval` object (a `require_approval` decision): `approval.required` (1) and, when the decision has an `executionId`, `execution.approval_required` (2) |
//! | `approval.voted` | `approval.voted` (0): data = the entry's body |
//! | `approval.resolved` | `approval.resolved`, or `approval.expired` when its status is `EXPIRED` (0): data = the body |
//! | `execution.transition` | one per status (0): `execution.created` (`PENDING`), `execution.queued`, `execution.started` (`RUNNING`), `execution.cancel_requested`, `execution.completed`, `execution.failed`, `execution.canceled`: data = the body |
//! | every other kind | none |
//!
//! A `require_approval` decision recorded without an `approval` object (before approvals existed) has no approval
//! to announce: it gives `decision.made` only. Every body is read through its kind's typed body
//! (`recorder::body`); an entry whose body does not read as one gives none.

use super::event::{Event, EventId, EventType};
use crate::approvals::ApprovalStatus;
use crate::ledger::Entry;
use crate::policy::Outcome;
use crate::recorder::body::{self, ApprovalChangeBody, RecordBody};
use crate::recorder::{Kind, kind};
use serde_json::{Map, Value, json};

use crate::executions::ExecutionStatus;
use kind::{APPROVAL_RESOLVED, APPROVAL_VOTED, EXECUTION_TRANSITION};

/// The entry kinds that give events, and which event types each can give: what a subscriber catching up from
/// disk asks the index for. A kind not listed gives none (a test checks every [`Kind`] against this list).
pub(super) const EVENT_KINDS: &[(&str, &[EventType])] = &[
    (
        kind::DECISION,
        &[
            EventType::DecisionMade,
            EventType::ApprovalRequired,
            EventType::ExecutionApprovalRequired,
        ],
    ),
    (APPROVAL_VOTED, &[EventType::ApprovalVoted]),
    (
        APPROVAL_RESOLVED,
        &[EventType::ApprovalResolved, EventType::ApprovalExpired],
    ),
    (
        EXECUTION_TRANSITION,
        &[
            EventType::ExecutionCreated,
            EventType::ExecutionQueued,
            EventType::ExecutionStarted,
            EventType::ExecutionCancelRequested,
            EventType::ExecutionCompleted,
            EventType::ExecutionFailed,
            EventType::ExecutionCanceled,
        ],
    ),
];

/// The event an execution's move to `status` gives.
fn execution_event(status: ExecutionStatus) -> EventType {
    match status {
        ExecutionStatus::Pending => EventType::ExecutionCreated,
        ExecutionStatus::Queued => EventType::ExecutionQueued,
        ExecutionStatus::Running => EventType::ExecutionStarted,
        ExecutionStatus::CancelRequested => EventType::ExecutionCancelRequested,
        ExecutionStatus::Completed => EventType::ExecutionCompleted,
        ExecutionStatus::Failed => EventType::ExecutionFailed,
        ExecutionStatus::Canceled => EventType::ExecutionCanceled,
    }
}

/// The events of the entry at `ledger_index`, in id order.
pub fn events_of_entry(ledger_index: u64, e: &Entry) -> Vec<Event> {
    let made =
        |n: u32, kind: EventType, agent: (Option<&str>, Option<&str>), exec: Option<&str>, data: Value| {
            Event {
                id: EventId::new(ledger_index, n),
                kind,
                tenant: e.tenant.clone(),
                agent_id: agent.0.map(str::to_owned),
                agent_name: agent.1.map(str::to_owned),
                execution_id: exec.map(str::to_owned),
                created_at: e.time.clone(),
                data,
            }
        };
    let Some(kind) = Kind::parse(&e.kind) else {
        return Vec::new();
    };
    match kind {
        Kind::Decision => body::Decision::of_entry(e).map_or_else(
            |_| Vec::new(),
            |b| {
                let d = decision_events(&b);
                let agent = (Some(b.agent.id.as_str()), Some(b.agent.name.as_str()));
                let exec = b.execution_id.as_deref();
                let mut out = vec![made(0, EventType::DecisionMade, agent, exec, d.made)];
                if let Some((required, execution)) = d.approval {
                    out.push(made(1, EventType::ApprovalRequired, agent, exec, required));
                    if let Some(x) = execution {
                        out.push(made(2, EventType::ExecutionApprovalRequired, agent, exec, x));
                    }
                }
                out
            },
        ),
        Kind::ApprovalVoted | Kind::ApprovalResolved => {
            let Ok(change) = ApprovalChangeBody::of_entry(e) else {
                return Vec::new();
            };
            let kind = match &change {
                ApprovalChangeBody::Voted(_) => EventType::ApprovalVoted,
                ApprovalChangeBody::Resolved(r) if r.status == ApprovalStatus::Expired => {
                    EventType::ApprovalExpired
                }
                ApprovalChangeBody::Resolved(_) => EventType::ApprovalResolved,
            };
            let of = change.of();
            // The data is the body as recorded.
            vec![made(
                0,
                kind,
                (Some(&of.agent_id), of.agent_name.as_deref()),
                of.execution_id.as_deref(),
                e.body.clone(),
            )]
        }
        Kind::ExecutionTransition => body::ExecutionTransition::of_entry(e).map_or_else(
            |_| Vec::new(),
            |b| {
                let agent = (Some(b.agent_id.as_str()), Some(b.agent_name.as_str()));
                let exec = Some(b.execution_id.as_str());
                vec![made(0, execution_event(b.status), agent, exec, e.body.clone())]
            },
        ),
        Kind::AgentRegistered | Kind::PolicyActivated | Kind::PolicyRefused | Kind::TraceSpans => Vec::new(),
    }
}

/// What a decision entry gives.
struct DecisionEvents {
    made: Value,
    /// `approval.required`'s data, and `execution.approval_required`'s data when the decision has an execution.
    approval: Option<(Value, Option<Value>)>,
}

fn decision_events(b: &body::Decision) -> DecisionEvents {
    let (agent_id, agent_name) = (b.agent.id.as_str(), b.agent.name.as_str());
    let execution_id = b.execution_id.as_deref();
    let mut made = Map::new();
    made.insert("decisionId".into(), b.decision_id.as_str().into());
    made.insert("agentId".into(), agent_id.into());
    made.insert("agentName".into(), agent_name.into());
    made.insert("action".into(), b.action.as_str().into());
    made.insert("decision".into(), b.decision.as_str().into());
    made.insert("reasonCodes".into(), json!(b.reason_codes));
    made.insert("requiresDeskApproval".into(), b.requires_desk_approval.into());
    if let Some(x) = execution_id {
        made.insert("executionId".into(), x.into());
    }
    let approval = b
        .approval
        .as_ref()
        .filter(|_| b.decision == Outcome::RequireApproval)
        .map(|a| {
            let reason = reason(b);
            let mut required = Map::new();
            required.insert("approvalId".into(), a.approval_id.as_str().into());
            required.insert("decisionId".into(), b.decision_id.as_str().into());
            required.insert("agentId".into(), agent_id.into());
            required.insert("agentName".into(), agent_name.into());
            required.insert("action".into(), b.action.as_str().into());
            required.insert("reason".into(), reason.clone().into());
            required.insert("reasonCodes".into(), json!(b.reason_codes));
            required.insert("expiresAt".into(), a.expires_at.as_str().into());
            if let Some(x) = execution_id {
                required.insert("executionId".into(), x.into());
            }
            let execution = execution_id
                .map(|_| json!({"approvalId": a.approval_id, "action": b.action, "reason": reason}));
            (Value::Object(required), execution)
        });
    DecisionEvents {
        made: Value::Object(made),
        approval,
    }
}

/// Why approval is needed, in a person's words: the message of the first enforced (not shadow) matched rule that
/// asked for approval, else of the first enforced rule, else that rule's reason code, else the decision's first
/// reason code.
fn reason(b: &body::Decision) -> String {
    let mut rules = b.matched_rules.iter().filter(|m| !m.shadow);
    let first = rules.clone().next();
    let rule = rules.find(|m| m.decision == Outcome::RequireApproval).or(first);
    rule.map(|m| m.message.as_deref().unwrap_or(&m.reason_code))
        .or_else(|| b.reason_codes.first().map(String::as_str))
        .unwrap_or("approval required")
        .to_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::events::event::Published;

    fn entry(kind: &str, tenant: &str, body: Value) -> Entry {
        Entry {
            v: 1,
            kind: kind.into(),
            lineage_id: "lr_000000000000000000000001".into(),
            tenant: tenant.into(),
            time: "2026-12-01T10:00:00.000Z".into(),
            body,
        }
    }

    /// A decision body as the recorder writes it, with the `approval` object of desk-spec.md when given.
    fn decision_body(outcome: &str, execution: Option<&str>, approval: Option<Value>) -> Value {
        let mut b = json!({
            "action": "execute_refund",
            "agent": {"id": "agt_1", "name": "claims-bot", "version": "1", "manifestHash": "sha256:00"},
            "context": {"amount": 5000},
            "decision": outcome,
            "decisionId": "dec_1",
            "evaluationMicros": 12,
            "executionId": execution,
            "matchedRules": [
                {"decision": "warn", "id": "watch", "pack": "p", "reasonCode": "WATCHED", "shadow": true,
                 "message": "shadow rule"},
                {"decision": "warn", "id": "note", "pack": "p", "reasonCode": "NOTED", "shadow": false},
                {"decision": "require_approval", "id": "big", "pack": "p", "reasonCode": "AMOUNT_OVER_THRESHOLD",
                 "shadow": false, "message": "Payments and refunds over 1000 need approval",
                 "approval": {"onTimeout": "block", "timeout": "15m", "timeoutSeconds": 900}}
            ],
            "policy": [{"digest": "sha256:11", "name": "p", "version": "1.0.0"}],
            "principal": {"role": "agent", "subject": "s"},
            "reasonCodes": ["AMOUNT_OVER_THRESHOLD", "NOTED"],
            "requiresDeskApproval": outcome == "require_approval",
            "tool": null,
            "traceId": null,
            "wouldDecide": outcome
        });
        if let Some(a) = approval {
            b["approval"] = a;
        }
        b
    }

    fn approval_object() -> Value {
        json!({"approvalId": "appr_1", "actionDigest": "sha256:ab", "expiresAt": "2026-12-01T10:15:00.000Z",
               "onTimeout": "block", "approvers": 1, "timeoutSeconds": 900})
    }

    fn wire(e: &Event) -> Value {
        serde_json::from_slice(&Published::new(e.clone()).json).unwrap()
    }

    #[test]
    fn an_allow_decision_gives_decision_made_only() {
        let e = entry("decision", "acme", decision_body("allow", None, None));
        let ev = events_of_entry(7, &e);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            wire(&ev[0]),
            json!({"id": "7.0", "type": "decision.made", "createdAt": "2026-12-01T10:00:00.000Z",
                   "data": {"decisionId": "dec_1", "agentId": "agt_1", "agentName": "claims-bot",
                            "action": "execute_refund", "decision": "allow",
                            "reasonCodes": ["AMOUNT_OVER_THRESHOLD", "NOTED"], "requiresDeskApproval": false}})
        );
        assert_eq!(ev[0].tenant, "acme");
        assert_eq!(ev[0].agent_id.as_deref(), Some("agt_1"));
        assert_eq!(ev[0].agent_name.as_deref(), Some("claims-bot"));
    }

    #[test]
    fn a_require_approval_decision_of_an_execution_gives_three_events() {
        let e = entry(
            "decision",
            "acme",
            decision_body("require_approval", Some("exec-456"), Some(approval_object())),
        );
        let ev = events_of_entry(41, &e);
        let w: Vec<Value> = ev.iter().map(wire).collect();
        assert_eq!(w.len(), 3);
        assert_eq!(w[0]["id"], "41.0");
        assert_eq!(w[0]["type"], "decision.made");
        assert_eq!(w[0]["executionId"], "exec-456");
        assert_eq!(w[0]["data"]["executionId"], "exec-456");
        assert_eq!(w[0]["data"]["requiresDeskApproval"], true);
        assert_eq!(
            w[1],
            json!({"id": "41.1", "type": "approval.required", "createdAt": "2026-12-01T10:00:00.000Z",
                   "executionId": "exec-456",
                   "data": {"approvalId": "appr_1", "decisionId": "dec_1", "agentId": "agt_1",
                            "agentName": "claims-bot", "action": "execute_refund",
                            "reason": "Payments and refunds over 1000 need approval",
                            "reasonCodes": ["AMOUNT_OVER_THRESHOLD", "NOTED"],
                            "expiresAt": "2026-12-01T10:15:00.000Z", "executionId": "exec-456"}})
        );
        // The KLA Execution API's approval event, plus the stream's id and time.
        assert_eq!(
            w[2],
            json!({"id": "41.2", "type": "execution.approval_required", "createdAt": "2026-12-01T10:00:00.000Z",
                   "executionId": "exec-456",
                   "data": {"approvalId": "appr_1", "action": "execute_refund",
                            "reason": "Payments and refunds over 1000 need approval"}})
        );
    }

    #[test]
    fn a_require_approval_decision_outside_an_execution_gives_no_execution_event() {
        let e = entry(
            "decision",
            "acme",
            decision_body("require_approval", None, Some(approval_object())),
        );
        let ev = events_of_entry(3, &e);
        let types: Vec<&str> = ev.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(types, ["decision.made", "approval.required"]);
        assert!(wire(&ev[1]).get("executionId").is_none());
        assert!(wire(&ev[1])["data"].get("executionId").is_none());
    }

    #[test]
    fn a_require_approval_decision_without_an_approval_object_gives_decision_made_only() {
        let e = entry(
            "decision",
            "acme",
            decision_body("require_approval", Some("x"), None),
        );
        let types: Vec<EventType> = events_of_entry(3, &e).iter().map(|e| e.kind).collect();
        assert_eq!(types, [EventType::DecisionMade]);
    }

    #[test]
    fn the_reason_falls_back_to_reason_codes() {
        let reason =
            |b: &Value| super::reason(&body::Decision::of_entry(&entry("decision", "t", b.clone())).unwrap());
        let mut b = decision_body("require_approval", None, Some(approval_object()));
        b["matchedRules"][2].as_object_mut().unwrap().remove("message");
        assert_eq!(reason(&b), "AMOUNT_OVER_THRESHOLD");
        b["matchedRules"] = json!([{"decision": "require_approval", "shadow": true, "message": "m",
                                     "reasonCode": "SHADOW", "id": "s", "pack": "p"}]);
        assert_eq!(reason(&b), "AMOUNT_OVER_THRESHOLD", "shadow rules give no reason");
        b["matchedRules"] = json!([]);
        b["reasonCodes"] = json!([]);
        assert_eq!(reason(&b), "approval required");
    }

    #[test]
    fn approval_entries_give_their_body_as_data() {
        let voted = json!({"approvalId": "appr_1", "decisionId": "dec_1", "agentId": "agt_1", "agentName": null,
                           "action": "execute_refund", "executionId": null, "status": "PENDING",
                           "by": {"subject": "alice", "role": "approver"}, "vote": "APPROVED", "comment": null,
                           "votes": [{"subject": "alice", "role": "approver", "decision": "APPROVED",
                                      "comment": null, "at": "2026-12-01T10:00:00.000Z"}],
                           "approvers": 2});
        let ev = events_of_entry(9, &entry("approval.voted", "acme", voted.clone()));
        assert_eq!(ev.len(), 1);
        assert_eq!(
            wire(&ev[0]),
            json!({"id": "9.0", "type": "approval.voted", "createdAt": "2026-12-01T10:00:00.000Z", "data": voted})
        );
        assert_eq!(ev[0].agent_id.as_deref(), Some("agt_1"));
        assert_eq!(ev[0].agent_name, None);

        let resolved = |status: &str, final_decision: &str, execution: Value| {
            json!({"approvalId": "appr_1", "decisionId": "dec_1", "agentId": "agt_1", "agentName": "claims-bot",
                   "action": "execute_refund", "status": status, "resolvedBy": {"subject": "alice", "role": "approver"}, "comment": "ok",
                   "resolvedAt": "2026-12-01T10:00:00.000Z", "votes": [],
                   "finalDecision": final_decision, "recheck": {"decision": "allow", "reasonCodes": []},
                   "executionId": execution})
        };
        for (status, fin, ty) in [
            ("APPROVED", "allow", "approval.resolved"),
            ("DENIED", "block", "approval.resolved"),
            ("CANCELED", "block", "approval.resolved"),
            ("EXPIRED", "block", "approval.expired"),
        ] {
            let body = resolved(status, fin, json!("exec-456"));
            let ev = events_of_entry(10, &entry("approval.resolved", "acme", body.clone()));
            assert_eq!(ev.len(), 1, "{status}");
            let w = wire(&ev[0]);
            assert_eq!(w["type"], ty);
            assert_eq!(w["id"], "10.0");
            assert_eq!(w["executionId"], "exec-456");
            assert_eq!(w["data"], body);
            assert_eq!(ev[0].agent_name.as_deref(), Some("claims-bot"));
        }
        let body = resolved("APPROVED", "allow", Value::Null);
        let w = wire(&events_of_entry(10, &entry("approval.resolved", "acme", body))[0]);
        assert!(w.get("executionId").is_none(), "{w}");
    }

    #[test]
    fn other_kinds_and_malformed_bodies_give_nothing() {
        for (kind, body) in [
            ("policy.activated", json!({"packs": []})),
            ("agent.registered", json!({"agentId": "agt_1"})),
            ("decision", json!({"decisionId": "dec_1"})),
            ("decision", json!("not an object")),
            ("approval.resolved", json!({"status": "APPROVED"})),
            ("approval.voted", json!(["appr_1"])),
        ] {
            assert!(
                events_of_entry(1, &entry(kind, "acme", body.clone())).is_empty(),
                "{kind} {body}"
            );
        }
    }

    /// The list test of "Adding a record kind" for events: a real entry of every kind gives only the event types
    /// listed for its kind (none when it is not listed), and every listed kind gives events.
    #[test]
    fn every_event_type_comes_from_the_kind_listed_for_it() {
        use crate::recorder::body::samples;
        let mut cases: Vec<Entry> = Kind::ALL.into_iter().map(samples::entry).collect();
        let mut expired = samples::entry(Kind::ApprovalResolved);
        expired.body["status"] = "EXPIRED".into();
        cases.push(expired);
        let mut in_execution = samples::entry(Kind::Decision);
        in_execution.body["decision"] = "require_approval".into();
        cases.push(in_execution);
        for status in ExecutionStatus::ALL {
            let mut moved = samples::entry(Kind::ExecutionTransition);
            moved.body["status"] = status.as_str().into();
            cases.push(moved);
        }
        let mut seen = std::collections::HashSet::new();
        for e in &cases {
            let listed = EVENT_KINDS
                .iter()
                .find(|(k, _)| *k == e.kind)
                .map_or(&[][..], |l| l.1);
            let events = events_of_entry(0, e);
            assert_eq!(events.is_empty(), listed.is_empty(), "{}", e.kind);
            for ev in events {
                assert!(listed.contains(&ev.kind), "{:?} from {}", ev.kind, e.kind);
                seen.insert(ev.kind);
            }
        }
        assert_eq!(
            seen.len(),
            EventType::ALL.len(),
            "every type is produced by some entry"
        );
    }
}
