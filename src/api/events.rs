//! `GET /v1/events?types=&executionId=&lastEventId=`: the Decision Desk's event stream as Server-Sent Events (see
//! docs/events.md). Each message has `id:` (its position, `"<ledgerIndex>.<n>"`), `event:` (its type) and one
//! `data:` line (the JSON envelope); a resume from `Last-Event-ID` (or `?lastEventId=` for a first connection)
//! continues right after that position; idle streams get a heartbeat comment. The stream itself is
//! `crate::events`; this file parses, checks and frames.

use super::auth::Caller;
use super::{ApiError, ApiResult, Code, SharedState};
use crate::auth::Role;
use crate::events::{EventId, Filter, Interest, Step, SubscribeError, TypeSet, sse_heartbeat};
use crate::server::json::ApiQuery;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

pub(super) fn routes() -> Router<SharedState> {
    Router::new().route("/events", get(stream))
}

/// The roles that may subscribe (every role of a tenant).
pub(super) const SUBSCRIBERS: [Role; 4] = [Role::Agent, Role::Approver, Role::Admin, Role::Auditor];

/// How long an `EventSource` waits before it reconnects (the stream's first message says so).
const RETRY_MS: u32 = 2000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EventsQuery {
    #[serde(default)]
    types: Option<String>,
    #[serde(default)]
    execution_id: Option<String>,
    #[serde(default)]
    last_event_id: Option<String>,
}

/// An execution id as the decision path accepts it: 1-256 printable characters.
pub(super) fn check_execution_id(field: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "{field} must be 1-256 printable characters"
        )));
    }
    Ok(())
}

/// The position to resume after: the `Last-Event-ID` header (what an `EventSource` sends when it reconnects)
/// over `?lastEventId=` (what a page gives for its first connection).
fn resume_position(headers: &HeaderMap, query: Option<&str>) -> ApiResult<Option<EventId>> {
    let given = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::invalid("Last-Event-ID must be an event id '<ledgerIndex>.<n>'"))?,
        ),
        None => query,
    };
    match given.map(str::trim) {
        None | Some("") => Ok(None),
        Some(id) => id
            .parse()
            .map(Some)
            .map_err(|e: crate::events::ParseIdError| ApiError::invalid(format!("Last-Event-ID: {e}"))),
    }
}

/// The filter every subscriber of `caller` starts from: its tenant, and for a token bound to one agent that agent
/// (its id looked up now, so approval events, which name the agent by id only, reach it from the first one).
pub(super) async fn filter_for(s: &SharedState, caller: &Caller, interest: Interest) -> ApiResult<Filter> {
    let bound = caller.principal.agent.clone();
    let agent_id = match &bound {
        Some(agent) => s
            .recorder
            .agents_page(&caller.tenant, Some(&**agent), None, 1)
            .await?
            .into_iter()
            .next()
            .map(|a| a.agent_id),
        None => None,
    };
    Ok(Filter::new(caller.tenant.clone(), bound, agent_id, interest))
}

/// A refused subscription in the API's terms: the caps with their own clear messages (429, 503 with
/// `Retry-After`), everything else as classified.
pub(super) fn refused(e: SubscribeError) -> ApiError {
    match e {
        SubscribeError::TenantFull { .. } => {
            ApiError::new(Code::RateLimited, e.to_string()).with_retry_after(5)
        }
        SubscribeError::Full { .. } | SubscribeError::Closing => {
            ApiError::new(Code::Unavailable, e.to_string()).with_retry_after(5)
        }
        SubscribeError::Read(e) => ApiError::from(e),
    }
}

async fn stream(
    State(s): State<SharedState>,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Response> {
    caller.require(&SUBSCRIBERS)?;
    let types = match q.types.as_deref() {
        None => TypeSet::all(),
        Some(list) => TypeSet::parse_list(list).map_err(ApiError::invalid)?,
    };
    if let Some(x) = &q.execution_id {
        check_execution_id("executionId", x)?;
    }
    let from = resume_position(&headers, q.last_event_id.as_deref())?;
    let interest = Interest::Stream {
        types,
        execution_id: q.execution_id,
    };
    let filter = filter_for(&s, &caller, interest).await?;
    let (sub, resync) = s.events.subscribe(filter, from).await.map_err(refused)?;
    let mut first = VecDeque::from([Bytes::from(format!("retry: {RETRY_MS}\n\n"))]);
    // After a resync the client's last id is the restart position.
    let sent = match &resync {
        Some(r) => r.restart_after,
        None => from,
    };
    first.extend(resync.map(|r| r.sse()));
    let state = Sse {
        sub,
        first,
        heartbeat: s.events.config().heartbeat,
        sent,
        tenant: caller.tenant.clone(),
    };
    let body = futures_util::stream::unfold(state, |mut st| async move {
        let frame = st.step().await?;
        Some((Ok::<_, Infallible>(frame), st))
    });
    let mut resp = crate::server::sse::response(Body::from_stream(body));
    // Proxies that buffer responses (nginx) would hold events back.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// One SSE response's state.
struct Sse {
    sub: crate::events::Subscription,
    /// Sent before any event: the reconnect delay, then a `resync_required` when the resume position was stale.
    first: VecDeque<Bytes>,
    heartbeat: std::time::Duration,
    /// The last id the client was given (what its `Last-Event-ID` is now).
    sent: Option<EventId>,
    tenant: Arc<str>,
}

impl Sse {
    /// The next message, or `None` when the stream ends (shutdown, or a read failure, which is logged; the client
    /// reconnects with its last id and loses nothing).
    async fn step(&mut self) -> Option<Bytes> {
        if let Some(f) = self.first.pop_front() {
            return Some(f);
        }
        let deadline = tokio::time::Instant::now() + self.heartbeat;
        match self.sub.next(deadline).await {
            Ok(Step::Event(p)) => {
                self.sent = Some(p.event.id);
                Some(p.sse.clone())
            }
            Ok(Step::Idle) => {
                let cursor = self.sub.cursor();
                let moved = cursor.filter(|c| Some(*c) != self.sent);
                if moved.is_some() {
                    self.sent = moved;
                }
                Some(sse_heartbeat(moved))
            }
            Ok(Step::Closed) => None,
            Err(e) => {
                tracing::warn!(error = %e, tenant = %self.tenant, "event stream ended: reading the ledger failed");
                None
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_header_wins_over_the_query_and_bad_ids_are_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(resume_position(&h, None).unwrap(), None);
        assert_eq!(
            resume_position(&h, Some("4.1")).unwrap(),
            Some(EventId::new(4, 1))
        );
        h.insert("last-event-id", HeaderValue::from_static("9.0"));
        assert_eq!(
            resume_position(&h, Some("4.1")).unwrap(),
            Some(EventId::new(9, 0))
        );
        h.insert("last-event-id", HeaderValue::from_static(""));
        assert_eq!(
            resume_position(&h, Some("4.1")).unwrap(),
            None,
            "an empty id is a fresh start"
        );
        h.insert("last-event-id", HeaderValue::from_static("nine"));
        assert_eq!(resume_position(&h, None).unwrap_err().code, Code::InvalidRequest);
        assert!(resume_position(&HeaderMap::new(), Some("1.x")).is_err());
    }
}
