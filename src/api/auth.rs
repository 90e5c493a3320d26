//! Request authentication: `Authorization: Bearer <jwt>` and `x-tenant-id` on every `/v1` request, checked
//! before anything else runs. Handlers receive a [`Caller`] and ask it for the roles they need.

use super::{ApiError, SharedState};
pub use crate::auth::Caller;
use axum::extract::{FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

/// Tenant header of the KLA Control Plane API.
pub const X_TENANT_ID: &str = "x-tenant-id";

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

/// Checks the bearer token and the tenant header (the first step of the `/v1` pipeline in `api::v1_pipeline`).
pub(super) fn authenticate(state: &SharedState, req: &Request) -> Result<Caller, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(bearer_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization header must be 'Bearer <token>'"))?;
    // `auth` logs the verifier's own detail at debug; the caller gets the reason in its terms.
    let principal = state
        .auth
        .verify(token)
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let tenant = req
        .headers()
        .get(X_TENANT_ID)
        .ok_or_else(|| ApiError::invalid("missing x-tenant-id header"))?
        .to_str()
        .ok()
        .filter(|t| crate::auth::tenant_name_ok(t))
        .ok_or_else(|| ApiError::invalid("x-tenant-id header must be 1-128 visible ASCII characters"))?;
    if tenant.starts_with('_') && !principal.allows_tenant(tenant) {
        return Err(ApiError::forbidden(format!(
            "tenant '{tenant}' is reserved for kla's own entries"
        )));
    }
    if !principal.allows_tenant(tenant) {
        return Err(ApiError::forbidden(format!(
            "token is not valid for tenant '{tenant}'"
        )));
    }
    Ok(Caller {
        tenant: tenant.into(),
        principal,
    })
}
