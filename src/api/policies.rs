//! `GET /v1/policies` (active packs, last refusal) and `POST /v1/policies/reload` (admin).

use super::auth::Caller;
use super::{ApiError, ApiResult, SharedState};
use crate::auth::Role;
use crate::policy::PolicyStatus;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/policies", get(status))
        .route("/policies/reload", post(reload))
}

async fn status(State(s): State<SharedState>, caller: Caller) -> ApiResult<Json<PolicyStatus>> {
    caller.require(&[Role::Admin, Role::Auditor])?;
    Ok(Json(s.policy.status()))
}

async fn reload(State(s): State<SharedState>, caller: Caller) -> ApiResult<Json<PolicyStatus>> {
    caller.require(&[Role::Admin])?;
    let policy = s.policy.clone();
    let status = tokio::task::spawn_blocking(move || policy.reload())
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(subject = %caller.principal.subject, packs = status.packs.len(), refused = status.refused.len(), "policies reloaded on request");
    Ok(Json(status))
}
