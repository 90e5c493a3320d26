//! `POST /v1/decisions.evaluate` (the KLA Control Plane API's "Evaluate a Policy Decision") and `GET /v1/decisions/{id}`.
//!
//! Parse, call, render: the body becomes an [`ActionRequest`], `decide` runs the governed action's phases (see
//! `crate::decide`), and the answer is rendered from what it returns. A decision is answered only after it is in
//! the ledger; if it cannot be recorded the answer is an error, which callers must treat as `block`.

use super::auth::Caller;
use super::{ApiError, ApiResult, SharedState};
use crate::decide::ActionRequest;
use crate::policy::{MatchedRule, Outcome, PackRef};
use crate::recorder::body::{self, RecordBody};
use crate::server::json::{ApiPath, ApiQuery, RawJson};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/decisions.evaluate", post(evaluate))
        .route("/decisions/{decision_id}", get(get_one))
}

/// The KLA Control Plane API's request body plus optional `tool`, `executionId`, `traceId`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EvaluateRequest {
    agent_id: String,
    action: String,
    #[serde(default)]
    context: Option<Map<String, Value>>,
    #[serde(default)]
    tool: Option<Value>,
    #[serde(default)]
    execution_id: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
}

/// The KLA Control Plane API's answer plus kla's additions; serialized straight from the decision's parts.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EvaluateResponse<'a> {
    decision: Outcome,
    reason_codes: &'a [String],
    requires_desk_approval: bool,
    decision_id: &'a str,
    would_decide: Outcome,
    matched_rules: &'a [MatchedRule],
    policy: &'a [PackRef],
    evaluation_micros: u64,
    lineage_id: &'a str,
    ledger_index: u64,
    /// The approval a `require_approval` decision opened (`GET /v1/approvals/{approvalId}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<&'a str>,
}

async fn evaluate(State(s): State<SharedState>, caller: Caller, body: RawJson) -> ApiResult<Response> {
    let accepted = s.decider.accept(&caller)?;
    let req = parse_evaluate(&body.0)?;
    let d = s.decider.decide(accepted, req).await?;
    let dec = &d.decision;
    Ok(Json(EvaluateResponse {
        decision: dec.outcome,
        reason_codes: &dec.reason_codes,
        requires_desk_approval: dec.outcome == Outcome::RequireApproval,
        decision_id: &d.decision_id,
        would_decide: dec.would_decide,
        matched_rules: &dec.matched_rules,
        policy: &dec.policy,
        evaluation_micros: dec.evaluation_micros,
        lineage_id: &d.lineage_id,
        ledger_index: d.ledger_index,
        approval_id: d.approval.as_ref().map(|a| a.approval_id.as_str()),
    })
    .into_response())
}

/// The body of `decisions.evaluate` as the governed action takes it (its fields are checked by `decide`'s accept
/// phase). Also the request-body fuzz target's entry point.
pub(crate) fn parse_evaluate(body: &[u8]) -> Result<ActionRequest, ApiError> {
    let req: EvaluateRequest = crate::server::json::parse(body)?;
    Ok(ActionRequest {
        agent_id: req.agent_id,
        action: req.action,
        context: req.context.unwrap_or_default(),
        tool: req.tool,
        execution_id: req.execution_id,
        trace_id: req.trace_id,
        reuse_approval: false,
    })
}

/// The longest `wait` a long-poll may ask for.
const MAX_WAIT: Duration = Duration::from_secs(120);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    /// Long-poll: wait up to this long (e.g. `30s`) for a pending approval to end before answering.
    wait: Option<String>,
}

/// A decision as recorded, with `finalDecision` (what the caller may do now: `null` while its approval is pending)
/// and, when it opened one, its `approval`. With `wait`, answers as soon as the approval ends or the wait is over.
async fn get_one(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(decision_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetParams>,
) -> ApiResult<Json<Value>> {
    let wait = match q.wait.as_deref() {
        None => Duration::ZERO,
        Some(w) => humantime::parse_duration(w)
            .ok()
            .filter(|d| *d <= MAX_WAIT)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "wait must be a duration of at most {}s, like 30s",
                    MAX_WAIT.as_secs()
                ))
            })?,
    };
    // Another agent's decision, for a token bound to one agent, is the same 404 as an unknown id.
    let not_found = || ApiError::not_found(format!("unknown decisionId '{decision_id}'"));
    let (rec, entry) = s
        .recorder
        .decision_entry(&caller.tenant, &decision_id)
        .await?
        .ok_or_else(not_found)?;
    // A stored decision that does not read as one is damage (kla's fault), not the caller's.
    let decision = body::Decision::of_entry(&entry).map_err(ApiError::internal)?;
    if !caller.may_read(&entry.tenant, Some((&decision.agent.id, &decision.agent.name))) {
        return Err(not_found());
    }
    let opened = decision.approval.map(|a| a.approval_id);
    let (final_decision, approval) = match opened {
        None => (
            serde_json::to_value(decision.decision).unwrap_or(Value::Null),
            Value::Null,
        ),
        Some(approval_id) => {
            let ended = if wait.is_zero() {
                None
            } else {
                s.approvals.wait(&caller.tenant, &approval_id, wait).await?
            };
            let approval = match ended {
                Some(a) => Some(Value::clone(&a)),
                None => s
                    .approvals
                    .of_decision(&caller.tenant, &decision_id)
                    .await?
                    .map(|(_, a)| a),
            };
            match approval {
                Some(a) => (a.get("finalDecision").cloned().unwrap_or(Value::Null), a),
                None => (Value::Null, Value::Null),
            }
        }
    };
    // The body as recorded (every field it holds), with the index's and the approval's additions.
    let mut body = entry.body;
    if let Some(o) = body.as_object_mut() {
        o.insert("lineageId".into(), rec.lineage_id.into());
        o.insert("ledgerIndex".into(), rec.ledger_index.into());
        o.insert("createdAt".into(), rec.created_at.into());
        o.insert("finalDecision".into(), final_decision);
        o.insert("approval".into(), approval);
    }
    Ok(Json(body))
}
