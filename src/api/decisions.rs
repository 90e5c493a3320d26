//! `POST /v1/decisions.evaluate` (seed 001 "Evaluate a Policy Decision") and `GET /v1/decisions/{id}`.
//!
//! Phases: accept (auth, body) → classify (agent lookup, input document) → evaluate (pure, fail-closed policy
//! set) → record (ledger append, durable, then index) → respond. A decision is answered only after it is in the
//! ledger; if it cannot be recorded the answer is an error, which callers must treat as `block`.

use super::auth::Caller;
use super::json::{ApiPath, RawJson};
use super::{ApiError, ApiResult, SharedState};
use crate::auth::Role;
use crate::policy::{AgentRef, EvalInput, MatchedRule, Outcome, PackRef};
use crate::recorder::{DecisionBody, DecisionToRecord};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/decisions.evaluate", post(evaluate))
        .route("/decisions/{decision_id}", get(get_one))
}

/// The seed's request body plus optional `tool`, `executionId`, `traceId`.
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

fn check_id(field: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "field '{field}' must be 1-256 printable characters"
        )));
    }
    Ok(())
}

/// The seed's answer plus kla's additions; serialized straight from the decision's parts.
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
    caller.require(&[Role::Agent, Role::Admin])?;
    let req: EvaluateRequest = body.parse()?;
    check_id("agentId", &req.agent_id)?;
    check_id("action", &req.action)?;
    if let Some(e) = &req.execution_id {
        check_id("executionId", e)?;
    }
    if let Some(t) = &req.trace_id {
        check_id("traceId", t)?;
    }
    let agent = s.agents.get(&s, &caller.tenant, &req.agent_id).await?;
    caller.require_agent(Some(&agent.id), &agent.name)?;
    let now = crate::time::now_rfc3339();
    let role = caller.principal.role.as_str();
    let principal = json!({"subject": &*caller.principal.subject, "role": role});
    let input = EvalInput {
        agent: AgentRef::clone(&agent),
        action: req.action,
        context: Value::Object(req.context.unwrap_or_default()),
        tool: req.tool,
        execution: req.execution_id.as_ref().map(|id| json!({ "id": id })),
        principal,
        tenant: caller.tenant.to_string(),
        now,
    };
    let d = s.policy.evaluate(&input);
    if let Some(err) = &d.error {
        tracing::warn!(error = %err, reason = ?d.reason_codes, action = %input.action, "policy failed closed");
    }
    let decision_id = crate::time::sortable_id("dec_");
    let body = DecisionBody {
        decision_id: &decision_id,
        agent: &input.agent,
        action: &input.action,
        context: &input.context,
        tool: input.tool.as_ref(),
        execution_id: req.execution_id.as_deref(),
        trace_id: req.trace_id.as_deref(),
        subject: &caller.principal.subject,
        role,
        decision: &d,
    }
    .encode()
    .map_err(ApiError::internal)?;
    let record = DecisionToRecord {
        tenant: caller.tenant.to_string(),
        decision_id: decision_id.clone(),
        agent_id: agent.id.clone(),
        action: input.action,
        decision: d.outcome.as_str().to_owned(),
        trace_id: req.trace_id,
        execution_id: req.execution_id,
        body,
    };
    let rec = s.recorder.decision(record).await.map_err(ApiError::unavailable)?;
    Ok(Json(EvaluateResponse {
        decision: d.outcome,
        reason_codes: &d.reason_codes,
        requires_desk_approval: d.outcome == Outcome::RequireApproval,
        decision_id: &decision_id,
        would_decide: d.would_decide,
        matched_rules: &d.matched_rules,
        policy: &d.policy,
        evaluation_micros: d.evaluation_micros,
        lineage_id: &rec.lineage_id,
        ledger_index: rec.ledger_index,
    })
    .into_response())
}

async fn get_one(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(decision_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let rec = s
        .recorder
        .decision_record(&caller.tenant, &decision_id)
        .await
        .map_err(ApiError::unavailable)?
        .ok_or_else(|| ApiError::not_found(format!("unknown decisionId '{decision_id}'")))?;
    let bytes = s
        .recorder
        .ledger()
        .entry(rec.ledger_index)
        .map_err(ApiError::internal)?;
    let entry = crate::ledger::Entry::decode(&bytes).map_err(ApiError::internal)?;
    let mut body = entry.body;
    if let Some(o) = body.as_object_mut() {
        o.insert("lineageId".into(), rec.lineage_id.into());
        o.insert("ledgerIndex".into(), rec.ledger_index.into());
        o.insert("createdAt".into(), rec.created_at.into());
    }
    Ok(Json(body))
}
