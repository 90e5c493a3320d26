//! Request authentication: `Authorization: Bearer <jwt>` and `x-tenant-id` on every `/v1` request, checked
//! before anything else runs. Handlers receive a [`Caller`] and ask it for the roles they need.
//!
//! A request without `Authorization` may instead carry the Decision Desk's session cookie ([`DESK_COOKIE`], set by
//! `POST /desk/session`). Browsers attach cookies to requests that other sites make them send, so such a request
//! that may change state (any method but GET and HEAD) must also carry [`X_KLA_DESK`]`: 1`: a custom header
//! cannot be sent across sites without a CORS preflight, which kla never answers. `x-tenant-id` defaults to the
//! session's one tenant (`EventSource` cannot set headers).

use super::{ApiError, SharedState};
pub use crate::auth::Caller;
use axum::extract::{FromRequestParts, Request};
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::desk::{DESK_COOKIE, X_KLA_DESK, desk_cookie};
pub use crate::server::X_TENANT_ID;
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        // The operator belongs to no tenant: refused by every handler but the ledger's monitor reads, which
        // extract the caller without this check.
        if caller.is_operator() {
            return Err(ApiError::forbidden(
                "the operator role may read only /v1/ledger/entries, checkpoint, key and consistency",
            ));
        }
        Ok(caller)
    }
}

/// The token of a `Bearer` credential; the scheme name is case-insensitive (RFC 9110 section 11.1).
pub(super) fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a request may change state, so that a cookie-authenticated one needs [`X_KLA_DESK`].
fn unsafe_method(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD)
}

/// Checks the bearer token (or the Desk's session cookie) and the tenant header (the first step of the `/v1`
/// pipeline in `api::v1_pipeline`).
pub(super) fn authenticate(state: &SharedState, req: &Request) -> Result<Caller, ApiError> {
    let headers = req.headers();
    let principal = match headers.get(AUTHORIZATION) {
        Some(header) => {
            let token = header
                .to_str()
                .ok()
                .and_then(bearer_token)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| ApiError::unauthorized("Authorization header must be 'Bearer <token>'"))?;
            // `auth` logs the verifier's own detail at debug; the caller gets the reason in its terms.
            let p = state
                .auth
                .verify(token)
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            if p.desk_session {
                return Err(ApiError::unauthorized(
                    "a Decision Desk session is accepted only as its cookie, not as a bearer token",
                ));
            }
            p
        }
        None => {
            let token = desk_cookie(headers)
                .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
            let p = state.auth.verify(token).map_err(|e| {
                ApiError::unauthorized(format!(
                    "the Decision Desk session is not valid ({e}); sign in again"
                ))
            })?;
            if !p.desk_session {
                return Err(ApiError::unauthorized(format!(
                    "the {DESK_COOKIE} cookie holds no Decision Desk session; sign in again"
                )));
            }
            if unsafe_method(req.method()) && headers.get(X_KLA_DESK).is_none_or(|v| v != "1") {
                return Err(ApiError::forbidden(format!(
                    "a request signed in with the Decision Desk cookie that may change state must carry the \
                     header '{X_KLA_DESK}: 1'"
                )));
            }
            p
        }
    };
    let tenant: std::sync::Arc<str> = match headers.get(X_TENANT_ID) {
        Some(t) => t
            .to_str()
            .ok()
            .filter(|t| crate::auth::tenant_name_ok(t))
            .ok_or_else(|| ApiError::invalid("x-tenant-id header must be 1-128 visible ASCII characters"))?
            .into(),
        // A Desk session lists exactly one tenant (`auth::read_claims`).
        None if principal.desk_session => principal
            .tenants
            .first()
            .map(|t| t.as_str().into())
            .ok_or_else(|| ApiError::unauthorized("the Decision Desk session names no tenant"))?,
        None => return Err(ApiError::invalid("missing x-tenant-id header")),
    };
    let tenant_ref: &str = &tenant;
    if tenant_ref.starts_with('_') && !principal.allows_tenant(tenant_ref) {
        return Err(ApiError::forbidden(format!(
            "tenant '{tenant_ref}' is reserved for kla's own entries"
        )));
    }
    if !principal.allows_tenant(tenant_ref) {
        return Err(ApiError::forbidden(format!(
            "token is not valid for tenant '{tenant_ref}'"
        )));
    }
    Ok(Caller { tenant, principal })
}
