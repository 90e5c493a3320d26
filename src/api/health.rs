//! Health endpoints, without auth: `/admin/health` (status, build facts, ledger state), `/healthz` (live), `/readyz`
//! (store writable and ledger taking appends).

use super::{ApiError, Code, SharedState};
use crate::ledger::LedgerHealth;
use crate::store::Store;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

/// When appends were first refused, as RFC 3339.
fn since_rfc3339(since: std::time::SystemTime) -> String {
    crate::time::format_rfc3339(since.into())
}

pub(super) async fn admin_health(State(s): State<SharedState>) -> Json<Value> {
    let (status, ledger) = match s.recorder.ledger().health() {
        LedgerHealth::Healthy => ("ok", json!({"status": "ok"})),
        LedgerHealth::Refusing { since, reason } => (
            "degraded",
            json!({"status": "refusing_appends", "since": since_rfc3339(since), "reason": reason}),
        ),
    };
    Json(json!({
        "status": status,
        "sqlite_version": Store::sqlite_version(),
        "uptime_sec": s.started.elapsed().as_secs(),
        "ledger": ledger,
    }))
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub(super) async fn readyz(State(s): State<SharedState>) -> Result<Json<Value>, ApiError> {
    s.store.check_writable().await.map_err(ApiError::unavailable)?;
    // Not ready while decisions cannot be recorded (every one would be answered with an error). Not logged here:
    // the writer logged the failure once, and probes poll this route.
    if let LedgerHealth::Refusing { since, reason } = s.recorder.ledger().health() {
        return Err(ApiError::new(
            Code::Unavailable,
            format!(
                "the ledger refuses appends since {}: {reason}",
                since_rfc3339(since)
            ),
        )
        .with_retry_after(1));
    }
    Ok(Json(json!({"status": "ready"})))
}
