//! `Idempotency-Key` on every POST: same key and same request (same caller, route and JSON payload, however it is
//! formatted) → the stored response with `Idempotent-Replayed: true`; same key, different request → 409; a retry while the first is running → 409 with
//! `Retry-After: 1`. Keys are durable per tenant for 24 h (in the store). A 5xx answer releases the key so a retry
//! can succeed; any other answer is recorded.

use super::auth::Caller;
use super::{ApiError, SharedState};
use crate::server::json::read_body;
use crate::store::{IdempotencyBegin, StoredResponse};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

/// Request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header on replays.
pub const REPLAYED: &str = "idempotent-replayed";
/// Largest response body kept for replay.
const MAX_STORED: usize = 4 * 1024 * 1024;

pub(super) async fn layer(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    // A POST changes state (a ledger append, a registration, an idempotency record). It runs in its own task so a
    // client that hangs up cannot cancel it halfway: the work and its bookkeeping always finish together.
    let task = tokio::spawn(async move {
        match run(state, req, next).await {
            Ok(r) => r,
            Err(e) => e.into_response(),
        }
    });
    match task.await {
        Ok(r) => r,
        Err(e) => ApiError::internal(format!("request task failed: {e}")).into_response(),
    }
}

async fn run(state: SharedState, req: Request, next: Next) -> Result<Response, ApiError> {
    if req.method() != Method::POST {
        return Ok(next.run(req).await);
    }
    let Some(key) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(next.run(req).await);
    };
    let key = key_text(key.as_bytes())?;
    let caller = req
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
    let (parts, body) = req.into_parts();
    let bytes = read_body(body, state.body_limit).await?;
    // The fingerprint binds the key to who asked and what: another caller (or role) reusing the key and body
    // gets a conflict, never someone else's stored response. The body counts as the payload kla reads, not its
    // bytes (see `payload_form`).
    // Every field is length-prefixed, so no two different field lists hash alike. The issuer and the agent
    // binding count too: an external token and a kla token may share a subject, and `kla token` gives every
    // token of a role the same default subject, so tokens bound to different agents would otherwise replay each
    // other's answers.
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let p = &caller.principal;
    field(p.issuer.as_bytes());
    field(p.subject.as_bytes());
    field(p.role.as_str().as_bytes());
    match p.agent.as_deref() {
        Some(a) => {
            field(b"bound");
            field(a.as_bytes());
        }
        None => field(b"unbound"),
    }
    field(parts.method.as_str().as_bytes());
    field(parts.uri.path().as_bytes());
    field(&payload_form(&bytes));
    let fingerprint = hex::encode(h.finalize());

    let begin = state
        .store
        .idempotency_begin(&caller.tenant, &key, &fingerprint)
        .await
        .map_err(ApiError::unavailable)?;
    match begin {
        IdempotencyBegin::Replay(stored) => return Ok(replay(stored)),
        IdempotencyBegin::Mismatch => {
            return Err(ApiError::conflict(
                "Idempotency-Key was already used with a different request",
            ));
        }
        IdempotencyBegin::InFlight => {
            return Err(
                ApiError::conflict("a request with this Idempotency-Key is still in progress")
                    .with_retry_after(1),
            );
        }
        IdempotencyBegin::Reserved => {}
    }

    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let status = resp.status();
    if status.is_server_error() {
        release(&state, &caller, &key).await;
        return Ok(resp);
    }
    let (rparts, rbody) = resp.into_parts();
    let rbytes = match axum::body::to_bytes(rbody, MAX_STORED).await {
        Ok(b) => b,
        Err(e) => {
            release(&state, &caller, &key).await;
            return Err(ApiError::internal(format!(
                "buffering response for idempotency: {e}"
            )));
        }
    };
    let stored = StoredResponse {
        status: status.as_u16(),
        body: rbytes.to_vec(),
        content_type: rparts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    if let Err(e) = state
        .store
        .idempotency_finish(&caller.tenant, &key, stored.clone())
        .await
    {
        // The action happened; failing the response now would invite a retry that repeats it. Answer, and keep
        // trying to record the key in the background: until then a retry gets 409 + Retry-After (the key stays
        // reserved), and after the reservation's expiry it would run the action again.
        tracing::error!(error = %e, "could not record idempotency key; retrying in the background");
        tokio::spawn(finish_later(state.clone(), caller.tenant.clone(), key, stored));
    }
    Ok(Response::from_parts(rparts, Body::from(rbytes)))
}

/// Longest accepted `Idempotency-Key`, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// The key if it is 1-[`MAX_KEY_LEN`] visible ASCII characters (0x21-0x7E). `HeaderValue::to_str` also lets
/// spaces and tabs through, and a key that differs only in a tab from another would look the same in every log.
fn key_text(raw: &[u8]) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::invalid(format!(
            "header Idempotency-Key {why}; it must be 1-{MAX_KEY_LEN} visible ASCII characters (no spaces or tabs)"
        ))
    };
    if raw.is_empty() {
        return Err(bad("is empty"));
    }
    if raw.len() > MAX_KEY_LEN {
        return Err(bad(&format!("is {} bytes long", raw.len())));
    }
    if let Some(b) = raw.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(bad(&format!("contains the byte 0x{b:02X}")));
    }
    // Visible ASCII is UTF-8.
    String::from_utf8(raw.to_vec()).map_err(|_| bad("is not ASCII"))
}

/// Retries recording a finished key: 50 ms, doubling to 2 s, for at most [`FINISH_RETRY_FOR`], which stays well
/// inside the store's expiry of a reservation, so that a late success cannot mark a later request's fresh
/// reservation as done.
async fn finish_later(state: SharedState, tenant: Arc<str>, key: String, stored: StoredResponse) {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    while started.elapsed() + delay < FINISH_RETRY_FOR {
        tokio::time::sleep(delay).await;
        match state
            .store
            .idempotency_finish(&tenant, &key, stored.clone())
            .await
        {
            Ok(()) => {
                tracing::info!(tenant = %tenant, "idempotency key recorded after a retry");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "idempotency key still not recorded"),
        }
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    tracing::error!(tenant = %tenant, "gave up recording an idempotency key: a retry after its reservation expires repeats the action");
}

/// How long [`finish_later`] keeps trying: half the reservation lease.
const FINISH_RETRY_FOR: Duration = Duration::from_secs(crate::store::IN_FLIGHT_LEASE_SECS.unsigned_abs() / 2);

/// The payload as kla reads it, for the fingerprint. The KLA Control Plane API conflicts on "a different payload" and otherwise
/// replays, so a retry that re-serialises the same JSON (whitespace, key order, `1250.00` for `1250`) must be the
/// same request. A JSON body is taken in its RFC 8785 canonical form, the form the ledger records it in. Where that
/// form would merge two payloads kla keeps apart (an integer beyond 2^53, which RFC 8785 rounds), and for anything
/// that is not JSON (the handler refuses it anyway), the bytes are taken as they are.
fn payload_form(bytes: &[u8]) -> Cow<'_, [u8]> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Cow::Borrowed(bytes);
    };
    let mut out = Vec::with_capacity(bytes.len());
    match crate::ledger::jcs::write_value(&v, &mut out) {
        Some(()) => Cow::Owned(out),
        None => Cow::Borrowed(bytes),
    }
}

async fn release(state: &SharedState, caller: &Caller, key: &str) {
    if let Err(e) = state.store.idempotency_release(&caller.tenant, key).await {
        tracing::error!(error = %e, "could not release idempotency key");
    }
}

fn replay(stored: StoredResponse) -> Response {
    let mut resp = Response::new(Body::from(stored.body));
    *resp.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    if let Some(ct) = stored.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters() {
        assert_eq!(key_text(b"!").unwrap(), "!");
        assert_eq!(key_text(&[b'~'; MAX_KEY_LEN]).unwrap().len(), MAX_KEY_LEN);
        for (raw, says) in [
            (&b""[..], "is empty"),
            (&[b'k'; MAX_KEY_LEN + 1][..], "is 256 bytes long"),
            (b"a b", "contains the byte 0x20"),
            (b"a\tb", "contains the byte 0x09"),
            (b"a\x7fb", "contains the byte 0x7F"),
            (b"a\x00b", "contains the byte 0x00"),
            ("clé".as_bytes(), "contains the byte 0xC3"),
        ] {
            let e = key_text(raw).unwrap_err();
            assert!(e.message.starts_with("header Idempotency-Key "), "{}", e.message);
            assert!(e.message.contains(says), "{raw:?}: {}", e.message);
        }
    }
}
