//! Sign-in: `POST /desk/session` exchanges a one-time link's code for the `kla_desk` session cookie,
//! `GET /desk/session` says who is signed in, `POST /desk/logout` clears the cookie.
//!
//! The POSTs need `x-kla-desk: 1`, as cookie-authenticated `/v1` writes do: a page of another site can make a
//! browser post a form here (signing it in as someone else), but not with a custom header.

use super::SharedDesk;
use crate::auth::{self, Principal};
use crate::server::json::RawJson;
use crate::server::{ApiError, ApiResult};
use axum::Json;
use axum::extract::State;
use axum::http::header::COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The Decision Desk's session cookie (`HttpOnly`, `SameSite=Strict`).
pub const DESK_COOKIE: &str = "kla_desk";
/// The header (value `1`) that every state-changing request authenticated by [`DESK_COOKIE`] must carry.
pub const X_KLA_DESK: &str = "x-kla-desk";

/// The value of the Desk's session cookie among the request's `Cookie` headers, if any.
pub fn desk_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name.trim() == DESK_COOKIE).then(|| value.trim())
        })
        .filter(|v| !v.is_empty())
}

/// How long a Desk session lasts (the cookie's `Max-Age` and the session token's `exp`).
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExchangeRequest {
    code: String,
}

/// Who is signed in, as the page shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionInfo<'a> {
    subject: &'a str,
    role: &'a str,
    tenant: &'a str,
    expires_at: String,
}

impl<'a> SessionInfo<'a> {
    fn of(p: &'a Principal) -> SessionInfo<'a> {
        let expires_at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(p.exp).unwrap_or(i64::MAX))
            .map(crate::time::format_rfc3339)
            .unwrap_or_default();
        SessionInfo {
            subject: &p.subject,
            role: p.role.as_str(),
            tenant: p.tenants.first().map_or("", String::as_str),
            expires_at,
        }
    }
}

fn require_desk_header(headers: &HeaderMap) -> ApiResult<()> {
    match headers.get(X_KLA_DESK) {
        Some(v) if v == "1" => Ok(()),
        _ => Err(ApiError::forbidden(format!(
            "this request must carry the header '{X_KLA_DESK}: 1' (the Decision Desk page sends it)"
        ))),
    }
}

/// `Set-Cookie` for the session `token` (or, with `None`, a cookie that clears it).
fn cookie(token: Option<&str>, secure: bool) -> ApiResult<HeaderValue> {
    let (value, max_age) = match token {
        Some(t) => (t, SESSION_TTL.as_secs()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{DESK_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .map_err(ApiError::internal)
}

fn no_store(resp: &mut Response) {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `POST /desk/session {"code"}`: a valid, unused link's code becomes a session for its tenant, subject and role.
pub(super) async fn exchange(
    State(s): State<SharedDesk>,
    headers: HeaderMap,
    body: RawJson,
) -> ApiResult<Response> {
    require_desk_header(&headers)?;
    let req: ExchangeRequest = body.parse()?;
    let link = s
        .auth
        .verify_desk_link(req.code.trim())
        .map_err(|e| ApiError::unauthorized(format!("the sign-in link is not valid: {e}")))?;
    let p = &link.principal;
    let tenant = p.tenants.first().map_or("", String::as_str);
    let first = s
        .store
        .desk_link_use(&link.jti, tenant, &p.subject, p.exp, &crate::time::now_rfc3339())
        .await?;
    if !first {
        tracing::warn!(tenant, subject = %p.subject, "Decision Desk sign-in link used again; refused");
        return Err(ApiError::unauthorized(
            "this sign-in link has already been used; ask for a new one (kla token --desk)",
        ));
    }
    let token = auth::mint_desk_session(s.signing_pem.as_bytes(), &link, SESSION_TTL)?;
    let session = s.auth.verify(&token)?;
    tracing::info!(tenant, subject = %p.subject, role = p.role.as_str(), "Decision Desk sign-in");
    let mut resp = Json(SessionInfo::of(&session)).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(Some(&token), s.secure_cookie)?);
    no_store(&mut resp);
    Ok(resp)
}

/// `GET /desk/session`: who the session cookie signs in, or 401.
pub(super) async fn current(State(s): State<SharedDesk>, headers: HeaderMap) -> ApiResult<Response> {
    let token =
        desk_cookie(&headers).ok_or_else(|| ApiError::unauthorized("not signed in to the Decision Desk"))?;
    let p = s
        .auth
        .verify(token)
        .ok()
        .filter(|p| p.desk_session)
        .ok_or_else(|| ApiError::unauthorized("the Decision Desk session has ended; sign in again"))?;
    let mut resp = Json(SessionInfo::of(&p)).into_response();
    no_store(&mut resp);
    Ok(resp)
}

/// `POST /desk/logout`: clears the cookie in this browser. The session token itself stays valid until it
/// expires, but nothing can read it: it lived only in the `HttpOnly` cookie.
pub(super) async fn logout(State(s): State<SharedDesk>, headers: HeaderMap) -> ApiResult<Response> {
    require_desk_header(&headers)?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, cookie(None, s.secure_cookie)?);
    no_store(&mut resp);
    Ok(resp)
}
