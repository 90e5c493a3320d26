//! `POST /v1/decisions.evaluate` (the KLA Control Plane API's "Evaluate a Policy Decision") and `GET /v1/decisions/{id}`.
//!
//! Parse, call, render: the body becomes an [`ActionRequest`], `decide` runs the governed action's phases (see
//! `crate::decide`), and the answer is rendered from what it returns. A decision is answered only after it is in
//! the ledger; if it cannot be recorded the answer is an error, which callers must treat as `block`.

use super::auth::Caller;
use super::json::{ApiPath, RawJson};
use super::{ApiError, ApiResult, SharedState};
use crate::decide::ActionRequest;
use crate::policy::{MatchedRule, Outcome, PackRef};
use crate::recorder::entry_agent;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    })
    .into_response())
}

/// The body of `decisions.evaluate` as the governed action takes it (its fields are checked by `decide`'s accept
/// phase). Also the request-body fuzz target's entry point.
pub(crate) fn parse_evaluate(body: &[u8]) -> Result<ActionRequest, ApiError> {
    let req: EvaluateRequest = super::json::parse(body)?;
    Ok(ActionRequest {
        agent_id: req.agent_id,
        action: req.action,
        context: req.context.unwrap_or_default(),
        tool: req.tool,
        execution_id: req.execution_id,
        trace_id: req.trace_id,
    })
}

async fn get_one(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(decision_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    // Another agent's decision, for a token bound to one agent, is the same 404 as an unknown id.
    let (rec, entry) = s
        .recorder
        .decision_entry(&caller.tenant, &decision_id)
        .await?
        .filter(|(_, e)| caller.may_read(&e.tenant, entry_agent(e)))
        .ok_or_else(|| ApiError::not_found(format!("unknown decisionId '{decision_id}'")))?;
    let mut body = entry.body;
    if let Some(o) = body.as_object_mut() {
        o.insert("lineageId".into(), rec.lineage_id.into());
        o.insert("ledgerIndex".into(), rec.ledger_index.into());
        o.insert("createdAt".into(), rec.created_at.into());
    }
    Ok(Json(body))
}
