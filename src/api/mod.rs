//! The REST API: router, the per-request pipeline (request id → auth → rate limit → idempotency → handler),
//! error mapping, and one file per resource. Handlers translate between wire types (DTOs defined here) and the
//! core modules; they hold no business rules of their own and never touch SQL directly.

mod agents;
mod approvals;
pub mod auth;
mod decisions;
mod error;
mod events;
mod health;
mod idempotency;
pub(crate) mod json;
mod ledger;
mod page;
mod policies;
pub mod ratelimit;
pub(crate) mod request_id;
mod traces;
mod ws;

pub use error::{ApiError, ApiResult, Code};
// For the fuzz targets (`crate::fuzzing`): the body parsers exactly as the handlers call them.
#[cfg(feature = "fuzzing")]
pub(crate) use decisions::parse_evaluate;
#[cfg(feature = "fuzzing")]
pub(crate) use json::parse as parse_body;

use crate::auth::Authenticator;
use crate::decide::Decider;
use crate::policy::PolicyManager;
use crate::recorder::Recorder;
use crate::registry::Agents;
use crate::store::Store;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::time::Instant;

/// Everything a handler may use. Built once by `app`, shared behind an `Arc`.
pub struct AppState {
    /// The embedded store.
    pub store: Store,
    /// Token verification.
    pub auth: Authenticator,
    /// Per-tenant rate limiter, when on.
    pub limiter: Option<ratelimit::RateLimiter>,
    /// Largest accepted body.
    pub body_limit: usize,
    /// When the server started.
    pub started: Instant,
    /// Writes the ledger and its index.
    pub recorder: Recorder,
    /// The active policy set.
    pub policy: Arc<PolicyManager>,
    /// Registers and looks up agents.
    pub agents: Arc<Agents>,
    /// Decides actions (the governed action's phases).
    pub decider: Decider,
    /// The Decision Desk's approvals.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Redactors for everything recorded (decision contexts, spans).
    pub redaction: Arc<crate::redact::Redaction>,
    /// The event stream (SSE and WebSocket).
    pub events: crate::events::Hub,
    /// The Decision Desk page's sign-in.
    pub desk: crate::desk::Desk,
}

/// Shared state handle.
pub type SharedState = Arc<AppState>;

/// Builds the whole router.
pub fn router(state: SharedState) -> Router {
    let v1 = Router::new()
        .merge(agents::routes())
        .merge(approvals::routes())
        .merge(decisions::routes())
        .merge(events::routes())
        .merge(ledger::routes())
        .merge(policies::routes())
        .merge(traces::routes())
        .layer(from_fn_with_state(state.clone(), v1_pipeline));
    Router::new()
        .nest("/v1", v1)
        .merge(crate::desk::routes())
        .route("/admin/health", get(health::admin_health))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/ws", get(ws::upgrade))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request_id::layer))
        .with_state(state)
}

/// The `/v1` pipeline as one layer: authenticate, then the tenant's rate limit, then idempotency (which runs every
/// POST in its own task). One layer instead of three: axum's `from_fn` clones and boxes the inner service for every
/// request, and `perf` showed those clones on the decision path.
async fn v1_pipeline(State(state): State<SharedState>, mut req: Request, next: Next) -> Response {
    let caller = match auth::authenticate(&state, &req) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = ratelimit::check(&state, &caller) {
        return e.into_response();
    }
    req.extensions_mut().insert(caller);
    idempotency::layer(State(state), req, next).await
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
