//! `GET /ws`: the event stream over WebSocket, at the KLA Execution API's path and in its protocol (see
//! docs/events.md).
//!
//! Credentials as that API takes them: `Authorization: Bearer` or, for browsers (which cannot set headers on a
//! WebSocket), `?token=`; the tenant from `x-tenant-id`, `?tenant=`, or the token's only tenant. They pass the same
//! checks as every `/v1` request, and the rate limit, before the upgrade; the query string is never logged (the
//! request span records the path only, and nothing here echoes a value from it).
//!
//! After the upgrade the client sends `{"type":"subscribe","executionId":...}` (the Execution API's message) or
//! `{"type":"subscribe","topic":"approvals"|"decisions"}`, `{"type":"unsubscribe",...}` with the same fields, or
//! `{"type":"ping"}`; kla answers `{"type":"subscribed",...}`, `{"type":"unsubscribed",...}`, `{"type":"pong"}`,
//! and `{"type":"error","code","message"}` for a message it cannot take (the connection and its other
//! subscriptions stay). Events arrive as text frames with the envelope of SSE's `data:`. kla pings every heartbeat
//! and closes a connection that has sent nothing (pongs count) for three, or that does not take a message within
//! that time.

use super::events::{SUBSCRIBERS, check_execution_id, filter_for, refused};
use super::{ApiError, ApiResult, SharedState};
use crate::events::{Interest, Step, Subscription, Topic};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, Request};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

/// Executions one connection may subscribe to at once.
const MAX_EXECUTIONS: usize = 64;
/// The largest message a client may send.
const MAX_MESSAGE: usize = 16 * 1024;
/// Heartbeats without a word from the client (a pong answers each ping) before the connection is closed.
const SILENT_HEARTBEATS: u32 = 3;

/// The query parameter that carries the token (browsers).
const TOKEN: &str = "token";
/// The query parameter that names the tenant.
const TENANT: &str = "tenant";

/// Checks the credentials, then upgrades.
pub(super) async fn upgrade(
    State(s): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match accept(s, headers, query, ws).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn accept(
    s: SharedState,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    // The query may hold a token: its parser's message is not passed on, it could quote it.
    let Query(params) = query.map_err(|_| ApiError::invalid("the query string of /ws is malformed"))?;
    let mut token = None;
    let mut tenant = None;
    for (k, v) in params {
        let slot = match k.as_str() {
            TOKEN => &mut token,
            TENANT => &mut tenant,
            // Not echoed: a misnamed parameter may hold a token.
            _ => {
                return Err(ApiError::invalid(
                    "unknown query parameter; /ws takes only `token` and `tenant`",
                ));
            }
        };
        if slot.replace(v).is_some() {
            return Err(ApiError::invalid(format!("query parameter `{k}` is given twice")));
        }
    }
    let bearer = match (headers.get(AUTHORIZATION), token) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "give the token in the Authorization header or in ?token=, not both",
            ));
        }
        (Some(h), None) => h
            .to_str()
            .ok()
            .and_then(super::auth::bearer_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization header must be 'Bearer <token>'"))?
            .to_owned(),
        (None, Some(t)) => t,
        (None, None) => {
            return Err(ApiError::unauthorized(
                "missing Authorization: Bearer <token> header (or ?token=)",
            ));
        }
    };
    let tenant = match (headers.get(super::auth::X_TENANT_ID), tenant) {
        (Some(h), Some(q)) if h.as_bytes() != q.as_bytes() => {
            return Err(ApiError::invalid(
                "x-tenant-id and ?tenant= name different tenants",
            ));
        }
        (Some(h), _) => h.clone(),
        (None, Some(q)) => HeaderValue::from_str(&q)
            .map_err(|_| ApiError::invalid("?tenant= must be 1-128 visible ASCII characters"))?,
        (None, None) => {
            // No tenant named: the token's own, when it lists exactly one.
            let principal = s
                .auth
                .verify(&bearer)
                .map_err(|e| ApiError::unauthorized(e.to_string()))?;
            match &principal.tenants[..] {
                [only] => HeaderValue::from_str(only)
                    .map_err(|_| ApiError::invalid("the token's tenant is not a valid tenant name"))?,
                _ => {
                    return Err(ApiError::invalid(
                        "missing x-tenant-id header or ?tenant= (the token does not name exactly one tenant)",
                    ));
                }
            }
        }
    };
    // The same checks as every /v1 request (`auth::authenticate`), on the credentials this request gave.
    let mut probe = Request::new(axum::body::Body::empty());
    let authorization = HeaderValue::from_str(&format!("Bearer {bearer}"))
        .map_err(|_| ApiError::unauthorized("the token is not a well-formed token"))?;
    probe.headers_mut().insert(AUTHORIZATION, authorization);
    probe.headers_mut().insert(super::auth::X_TENANT_ID, tenant);
    let caller = super::auth::authenticate(&s, &probe)?;
    if caller.is_operator() {
        return Err(ApiError::forbidden(
            "the operator role may read only /v1/ledger/entries, checkpoint, key and consistency",
        ));
    }
    super::check_rate(&s, &caller)?;
    caller.require(&SUBSCRIBERS)?;
    let ws = ws.map_err(|e| {
        ApiError::invalid(format!(
            "/ws speaks WebSocket: send GET with `Connection: Upgrade` and `Upgrade: websocket` ({})",
            e.body_text()
        ))
    })?;
    let filter = filter_for(&s, &caller, Interest::none()).await?;
    let (sub, _) = s.events.subscribe(filter, None).await.map_err(refused)?;
    let heartbeat = s.events.config().heartbeat;
    tracing::debug!(tenant = %caller.tenant, role = caller.principal.role.as_str(), "websocket subscriber connected");
    Ok(ws
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| session(socket, sub, heartbeat)))
}

/// One connection: client messages, events, heartbeats, until either side closes or the server shuts down.
///
/// After the upgrade the listener's watchdog no longer sees the connection, so the session keeps its own
/// deadlines: a ping every heartbeat whatever the traffic, a close after [`SILENT_HEARTBEATS`] without a word from
/// the client, and the same bound on every send (a client that stops reading is dropped, not waited for).
async fn session(mut socket: WebSocket, mut sub: Subscription, heartbeat: Duration) {
    let bound = heartbeat * SILENT_HEARTBEATS;
    let mut heard = Instant::now();
    let mut ping_at = Instant::now() + heartbeat;
    loop {
        if Instant::now() >= ping_at {
            if heard.elapsed() >= bound {
                close(&mut socket, 1001, "no answer to pings", bound).await;
                break;
            }
            ping_at = Instant::now() + heartbeat;
            if !send(&mut socket, Message::Ping(bytes::Bytes::new()), bound).await {
                break;
            }
        }
        tokio::select! {
            msg = socket.recv() => {
                let Some(Ok(msg)) = msg else { break };
                heard = Instant::now();
                let reply = match msg {
                    Message::Text(t) => Some(handle(&mut sub, t.as_str())),
                    Message::Binary(_) => Some(error(
                        "invalid_request",
                        "messages are JSON text frames; binary frames are not accepted",
                    )),
                    // Pings are answered by the WebSocket layer; a pong is the client being there.
                    Message::Ping(_) | Message::Pong(_) => None,
                    Message::Close(_) => break,
                };
                if let Some(r) = reply
                    && !send(&mut socket, Message::Text(r.into()), bound).await
                {
                    break;
                }
            }
            step = sub.next(ping_at) => match step {
                Ok(Step::Event(p)) => {
                    let Ok(text) = Utf8Bytes::try_from(p.json.clone()) else { continue };
                    if !send(&mut socket, Message::Text(text), bound).await {
                        break;
                    }
                }
                // Time for a ping: the top of the loop sends it.
                Ok(Step::Idle) => {}
                Ok(Step::Closed) => {
                    close(&mut socket, 1001, "server shutting down", bound).await;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "websocket event stream ended: reading the ledger failed");
                    close(&mut socket, 1011, "event stream failed; reconnect", bound).await;
                    break;
                }
            }
        }
    }
}

/// Sends within `bound`; `false` when the connection is gone or the client does not take it in time.
async fn send(socket: &mut WebSocket, msg: Message, bound: Duration) -> bool {
    matches!(tokio::time::timeout(bound, socket.send(msg)).await, Ok(Ok(())))
}

async fn close(socket: &mut WebSocket, code: u16, reason: &'static str, bound: Duration) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    send(socket, Message::Close(Some(frame)), bound).await;
}

fn error(code: &str, message: &str) -> String {
    json!({"type": "error", "code": code, "message": message}).to_string()
}

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    execution_id: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

/// What one subscription names.
enum Target {
    Execution(String),
    Topic(Topic),
}

/// The answer to one client message (an error for a message that cannot be taken; nothing else changes then).
fn handle(sub: &mut Subscription, text: &str) -> String {
    match answer(sub, text) {
        Ok(reply) => reply,
        Err(e) => error(e.code.as_str(), &e.message),
    }
}

fn answer(sub: &mut Subscription, text: &str) -> ApiResult<String> {
    let m: ClientMessage = crate::server::json::parse(text.as_bytes())?;
    let target = || -> ApiResult<Target> {
        match (&m.execution_id, &m.topic) {
            (Some(x), None) => {
                check_execution_id("executionId", x)?;
                Ok(Target::Execution(x.clone()))
            }
            (None, Some(t)) => Topic::parse(t).map(Target::Topic).ok_or_else(|| {
                ApiError::invalid(format!(
                    "unknown topic {:?}; topics: approvals, decisions",
                    t.chars().take(64).collect::<String>()
                ))
            }),
            _ => Err(ApiError::invalid(format!(
                "{} names exactly one of executionId and topic",
                m.kind
            ))),
        }
    };
    let Interest::Subscriptions { executions, topics } = &mut sub.filter_mut().interest else {
        return Err(ApiError::internal("a WebSocket subscriber without subscriptions"));
    };
    let reply = |kind: &str, t: &Target| match t {
        Target::Execution(x) => json!({"type": kind, "executionId": x}),
        Target::Topic(t) => json!({"type": kind, "topic": t.as_str()}),
    };
    match m.kind.as_str() {
        "subscribe" => {
            let t = target()?;
            match &t {
                Target::Execution(x) => {
                    if !executions.contains(x) && executions.len() >= MAX_EXECUTIONS {
                        return Err(ApiError::invalid(format!(
                            "a connection subscribes to at most {MAX_EXECUTIONS} executions; unsubscribe one first"
                        )));
                    }
                    executions.insert(x.clone());
                }
                Target::Topic(topic) => {
                    topics.insert(*topic);
                }
            }
            Ok(reply("subscribed", &t).to_string())
        }
        "unsubscribe" => {
            let t = target()?;
            match &t {
                Target::Execution(x) => {
                    executions.remove(x);
                }
                Target::Topic(topic) => {
                    topics.remove(topic);
                }
            }
            Ok(reply("unsubscribed", &t).to_string())
        }
        "ping" if m.execution_id.is_none() && m.topic.is_none() => Ok(json!({"type": "pong"}).to_string()),
        "ping" => Err(ApiError::invalid("ping takes no other field")),
        other => Err(ApiError::invalid(format!(
            "unknown message type {:?}; types: subscribe, unsubscribe, ping",
            other.chars().take(64).collect::<String>()
        ))),
    }
}
