//! The REST API: router, the per-request pipeline (request id → auth → rate limit → idempotency → handler),
//! error mapping, and one file per resource. Handlers translate between wire types (DTOs defined here) and the
//! core modules; they hold no business rules of their own and never touch SQL directly.

mod agents;
mod approvals;
pub mod auth;
mod decisions;
mod events;
mod executions;
mod health;
mod idempotency;
mod ledger;
mod page;
mod policies;
mod traces;
mod ws;

// For the fuzz targets (`crate::fuzzing`): the body parser exactly as the handler calls it.
#[cfg(feature = "fuzzing")]
pub(crate) use decisions::parse_evaluate;

use crate::auth::{Authenticator, Caller};
use crate::decide::Decider;
use crate::policy::PolicyManager;
use crate::recorder::Recorder;
use crate::registry::Agents;
use crate::server::json::BodyLimit;
use crate::server::{RateLimiter, request_id};
// The error type of every HTTP edge lives with the server; handlers here name it as before.
use crate::server::{ApiError, ApiResult, Code};
use crate::store::Store;
use axum::Router;
use axum::extract::FromRef;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;

/// What the REST API's handlers use: the domain's handles, built once by `app` (the composition root) and shared
/// behind an `Arc`. Only this module's handlers see it; the other edges (proxy, OTLP, the Desk, webhooks) receive
/// their own handles from `app`.
pub struct ApiState {
    /// The embedded store (idempotency keys; everything else through the domain modules).
    pub store: Store,
    /// Token verification.
    pub auth: Arc<Authenticator>,
    /// Per-tenant rate limiter, when on.
    pub limiter: Option<RateLimiter>,
    /// Largest accepted body.
    pub body_limit: usize,
    /// When the server started.
    pub started: Instant,
    /// Writes the ledger and reads its index.
    pub recorder: Recorder,
    /// The active policy set.
    pub policy: Arc<PolicyManager>,
    /// Registers and looks up agents.
    pub agents: Arc<Agents>,
    /// Decides actions (the governed action's phases).
    pub decider: Decider,
    /// The Decision Desk's approvals.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Governed agent runs (the KLA Execution API).
    pub executions: Arc<crate::executions::Executions>,
    /// The event stream (SSE and WebSocket).
    pub events: crate::events::Hub,
}

/// Shared state handle.
pub type SharedState = Arc<ApiState>;

impl FromRef<SharedState> for BodyLimit {
    fn from_ref(s: &SharedState) -> BodyLimit {
        BodyLimit(s.body_limit)
    }
}

/// Builds the whole router of the API listener; `beside` (the Desk's page and sign-in) is mounted next to `/v1`,
/// outside its pipeline, under the same request-id layer and fallbacks.
pub fn router(state: SharedState, beside: Router) -> Router {
    let v1 = Router::new()
        .merge(agents::routes())
        .merge(approvals::routes())
        .merge(decisions::routes())
        .merge(events::routes())
        .merge(executions::routes())
        .merge(ledger::routes())
        .merge(policies::routes())
        .merge(traces::routes())
        .layer(from_fn_with_state(state.clone(), v1_pipeline));
    Router::new()
        .nest("/v1", v1)
        .route("/admin/health", get(health::admin_health))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/ws", get(ws::upgrade))
        .with_state(state)
        .merge(beside)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_id::layer))
}

/// The `/v1` pipeline as one layer: authenticate, then the tenant's rate limit, then idempotency (which runs every
/// POST in its own task). One layer instead of three: axum's `from_fn` clones and boxes the inner service for every
/// request, and `perf` showed those clones on the decision path.
async fn v1_pipeline(State(state): State<SharedState>, mut req: Request, next: Next) -> Response {
    let caller = match auth::authenticate(&state, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = check_rate(&state, &caller) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    idempotency::layer(State(state), req, next).await
}

/// `Err` with a 429 (and `Retry-After`) when the caller's tenant has no token left.
fn check_rate(state: &ApiState, caller: &Caller) -> Result<(), ApiError> {
    if let Some(limiter) = &state.limiter
        && let Err(secs) = limiter.check(&caller.tenant)
    {
        let msg = format!(
            "rate limit for tenant '{}' exceeded; retry after {secs}s",
            caller.tenant
        );
        return Err(ApiError::new(Code::RateLimited, msg).with_retry_after(secs));
    }
    Ok(())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        Code::MethodNotAllowed,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}
