//! How an approval reads: the decision entry that opened it (its typed body), the last change the store keeps
//! (`approval.voted` / `approval.resolved` bodies), and the approval object of the API rendered from both.

use super::{ApprovalError, ApprovalStatus};
use crate::recorder::ApprovalTerms;
use crate::recorder::body::{self, ApprovalChangeBody, ApprovalOf, Vote};
use crate::store::ApprovalRecord;
use serde_json::{Value, json};

/// The decision entry that opened an approval.
pub(super) struct Opened {
    pub(super) tenant: String,
    pub(super) lineage_id: String,
    pub(super) body: body::Decision,
}

/// The approval's last change as the store keeps it; `None` while nothing has happened to it.
pub(super) fn change_of(rec: &ApprovalRecord) -> Result<Option<ApprovalChangeBody>, ApprovalError> {
    rec.state
        .as_deref()
        .map(|s| {
            ApprovalChangeBody::of_state(rec.status, s)
                .map_err(|_| ApprovalError::Damaged(rec.row.approval_id.clone()))
        })
        .transpose()
}

/// Every vote so far.
pub(super) fn votes_of(rec: &ApprovalRecord) -> Result<Vec<Vote>, ApprovalError> {
    Ok(change_of(rec)?.map(|c| c.votes().to_vec()).unwrap_or_default())
}

pub(super) fn terms_of(decision: &Opened) -> Option<ApprovalTerms> {
    decision.body.approval.clone()
}

/// The approval and its action, as every `approval.*` entry repeats them.
pub(super) fn approval_of(rec: &ApprovalRecord, decision: &Opened) -> ApprovalOf {
    ApprovalOf {
        approval_id: rec.row.approval_id.clone(),
        decision_id: rec.row.decision_id.clone(),
        agent_id: rec.row.agent_id.clone(),
        agent_name: Some(decision.body.agent.name.clone()),
        action: rec.row.action.clone(),
        execution_id: rec.row.execution_id.clone(),
    }
}

/// The approval object of the API: the decision entry's action and terms, and the last change's state.
pub(super) fn render(rec: &ApprovalRecord, decision: &Opened) -> Value {
    let b = &decision.body;
    // A state that does not read back shows as nothing having happened (reads stay available; changes refuse it).
    let change = change_of(rec).ok().flatten();
    let resolved = change.as_ref().and_then(ApprovalChangeBody::resolved);
    let votes = change.as_ref().map(ApprovalChangeBody::votes).unwrap_or_default();
    let terms = b.approval.as_ref();
    let policy: Vec<Value> = b
        .policy
        .iter()
        .map(|p| json!({"name": p.name, "version": p.version, "digest": p.digest}))
        .collect();
    let pending = rec.status == ApprovalStatus::Pending;
    json!({
        "approvalId": rec.row.approval_id,
        "decisionId": rec.row.decision_id,
        "lineageId": decision.lineage_id,
        "tenant": rec.row.tenant,
        "agentId": rec.row.agent_id,
        "agent": b.agent,
        "action": rec.row.action,
        "context": b.context,
        "tool": b.tool,
        "executionId": rec.row.execution_id,
        "toolCallId": b.tool.as_ref().and_then(|t| t.get("callId")).cloned().unwrap_or(Value::Null),
        "matchedRules": b.matched_rules,
        "reasonCodes": b.reason_codes,
        "policy": policy,
        "actionDigest": terms.map(|t| &t.action_digest),
        "status": rec.status,
        "createdAt": rec.row.created_at,
        "expiresAt": rec.row.expires_at,
        "resolvedAt": resolved.map(|r| &r.resolved_at),
        "resolvedBy": resolved.and_then(|r| r.resolved_by.as_ref()),
        "comment": if pending { None } else { resolved.and_then(|r| r.comment.as_ref()) },
        "approvers": terms.map(|t| t.approvers),
        "votes": votes,
        "onTimeout": terms.map(|t| t.on_timeout),
        "finalDecision": if pending { None } else { resolved.map(|r| r.final_decision) },
        "recheck": resolved.and_then(|r| r.recheck.as_ref()),
        "requestedBy": b.principal,
    })
}
