//! `/v1/executions`: the KLA Execution API's runs (start, status, list, cancel). Parse, call
//! [`crate::executions::Executions`], render; the rules live there. Field names and status spellings are the seed
//! API's (`executionId`, `currentStep`, `progressPercent`, `PENDING` ...).

use super::auth::Caller;
use super::{ApiResult, SharedState, page};
use crate::executions::{Execution, ListQuery, StartRequest};
use crate::recorder::body::Budgets;
use crate::server::json::{ApiPath, ApiQuery, RawJson};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/executions", get(list).post(start))
        .route("/executions/{execution_id}", get(get_one))
        .route("/executions/{execution_id}/cancel", post(cancel))
}

/// Scope of execution-list cursors (a cursor names the ledger index of its page's last run's start).
const EXECUTIONS_CURSOR: &str = "executions";

/// The KLA Execution API's start body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StartBody {
    agent_id: String,
    input: Value,
    #[serde(default)]
    budgets: Option<BudgetsBody>,
    #[serde(default)]
    priority: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BudgetsBody {
    #[serde(default)]
    max_steps: Option<u64>,
    #[serde(default)]
    max_cost_usd: Option<f64>,
}

async fn start(
    State(s): State<SharedState>,
    caller: Caller,
    body: RawJson,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let b: StartBody = body.parse()?;
    let budgets = b.budgets.map_or_else(Budgets::default, |b| Budgets {
        max_steps: b.max_steps,
        max_cost_usd: b.max_cost_usd,
    });
    let id = s
        .executions
        .start(
            &caller,
            StartRequest {
                agent_id: b.agent_id,
                input: b.input,
                budgets,
                priority: b.priority.unwrap_or(0),
            },
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "executionId": id,
            "status": "PENDING",
            "message": "Execution started successfully",
        })),
    ))
}

async fn get_one(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(execution_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(render(&s.executions.get(&caller, &execution_id).await?)))
}

/// The tenant's executions, oldest first.
async fn list(
    State(s): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<page::StatusAgentQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, after) = q.page(EXECUTIONS_CURSOR)?;
    let p = s
        .executions
        .list(
            &caller,
            ListQuery {
                status: q.status,
                agent_id: q.agent_id,
                limit,
                after,
            },
        )
        .await?;
    let executions: Vec<Value> = p.executions.iter().map(render).collect();
    Ok(Json(json!({
        "executions": executions,
        "nextCursor": p.next.map(|c| page::cursor(EXECUTIONS_CURSOR, &c)),
    })))
}

async fn cancel(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(execution_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(render(&s.executions.cancel(&caller, &execution_id).await?)))
}

/// An execution in the KLA Execution API's shape; `null` where nothing is known yet (no runner reports steps or
/// progress yet, and no tool call of a run is counted yet).
fn render(e: &Execution) -> Value {
    let r = &e.record;
    json!({
        "executionId": r.row.execution_id,
        "status": r.status.as_str(),
        "currentStep": null,
        "progressPercent": null,
        "agentId": r.row.agent_id,
        "priority": r.row.priority,
        "budgets": {"maxSteps": r.row.max_steps, "maxCostUsd": r.row.max_cost_usd},
        "usage": {"steps": 0, "costUsd": 0},
        "waitingFor": null,
        "finalResult": e.final_result,
        "errorLog": r.error_log,
        "retryOf": r.row.retry_of,
        "createdAt": r.row.created_at,
        "startedAt": r.started_at,
        "completedAt": r.completed_at,
    })
}
