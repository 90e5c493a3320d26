//! Health endpoints, without auth: `/admin/health` (seed 003 shape), `/healthz` (live), `/readyz` (store writable).

use super::{ApiError, SharedState};
use crate::store::Store;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

pub(super) async fn admin_health(State(s): State<SharedState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "sqlite_version": Store::sqlite_version(),
        "uptime_sec": s.started.elapsed().as_secs(),
    }))
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn readyz(State(s): State<SharedState>) -> Result<Json<Value>, ApiError> {
    s.store.check_writable().await.map_err(ApiError::unavailable)?;
    Ok(Json(json!({"status": "ready"})))
}
