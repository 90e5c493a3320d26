//! `/v1/approvals`: the Decision Desk's approvals (the KLA Execution API's `POST /v1/approvals/{id}/decision`, and
//! the reads a Desk needs). Parse, call [`crate::approvals::Approvals`], render; the rules live there.

use super::auth::Caller;
use super::{ApiError, ApiResult, SharedState, page};
use crate::approvals::{ApprovalStatus, ListQuery, Verdict};
use crate::server::json::{ApiPath, ApiQuery, RawJson};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/approvals", get(list))
        .route("/approvals/{approval_id}", get(get_one))
        .route("/approvals/{approval_id}/decision", post(decide))
}

/// Scope of approval-list cursors (a cursor names the ledger index of its page's last decision).
const APPROVALS_CURSOR: &str = "approvals";

/// The tenant's approvals, oldest first, with counts per status.
async fn list(
    State(s): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<page::StatusAgentQuery>,
) -> ApiResult<Json<Value>> {
    let (limit, cursor) = q.page(APPROVALS_CURSOR)?;
    let p = s
        .approvals
        .list(
            &caller,
            ListQuery {
                status: q.status,
                agent_id: q.agent_id,
                limit,
                cursor,
            },
        )
        .await?;
    let mut counts: Map<String, Value> = ApprovalStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), json!(0)))
        .collect();
    for (status, n) in p.counts {
        counts.insert(status.as_str().to_owned(), n.into());
    }
    Ok(Json(json!({
        "approvals": p.approvals,
        "counts": counts,
        "nextCursor": p.next_cursor.map(|c| page::cursor(APPROVALS_CURSOR, &c)),
    })))
}

async fn get_one(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(approval_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(s.approvals.get(&caller, &approval_id).await?))
}

/// The KLA Execution API's decision body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    decision: String,
    #[serde(default)]
    comment: Option<String>,
}

async fn decide(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(approval_id): ApiPath<String>,
    body: RawJson,
) -> ApiResult<Json<Value>> {
    let b: DecisionBody = body.parse()?;
    let verdict = Verdict::parse(&b.decision)
        .ok_or_else(|| ApiError::invalid("field 'decision' must be \"APPROVED\" or \"DENIED\""))?;
    Ok(Json(
        s.approvals
            .decide(&caller, &approval_id, verdict, b.comment)
            .await?,
    ))
}
