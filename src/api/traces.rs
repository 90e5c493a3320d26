//! `GET /v1/traces/{traceId}`: what kla holds of one trace in the caller's tenant, in ledger order: the redacted
//! spans sealed from OTLP exports (each with the `lineageId` of its entry and its hash) and the decisions made
//! with that `traceId`. Paged by entries (`limit`, `cursor`; `nextCursor` names the next page). A token bound to
//! one agent sees only that agent's decisions (spans belong to no agent).

use super::auth::Caller;
use super::{ApiError, ApiResult, SharedState, page};
use crate::auth::Role;
use crate::ledger::Entry;
use crate::recorder::Kind;
use crate::recorder::body::{self, RecordBody};
use crate::server::json::{ApiPath, ApiQuery};
use crate::store::LineageKey;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub(super) fn routes() -> Router<SharedState> {
    Router::new().route("/traces/{trace_id}", get(trace))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceQuery {
    limit: Option<u64>,
    cursor: Option<String>,
}

const TRACE_CURSOR: &str = "trace";

/// The form trace ids are indexed under: an OTLP id (32 hex digits) in lowercase, any other id as given.
fn normalize(id: &str) -> ApiResult<String> {
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid(
            "traceId must be 1-128 visible ASCII characters",
        ));
    }
    Ok(if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        id.to_ascii_lowercase()
    } else {
        id.to_owned()
    })
}

async fn trace(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(trace_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TraceQuery>,
) -> ApiResult<Json<Value>> {
    caller.require(&[Role::Agent, Role::Admin, Role::Auditor, Role::Approver])?;
    let trace_id = normalize(&trace_id)?;
    let limit = page::limit(q.limit)?;
    let after = page::after_index(TRACE_CURSOR, q.cursor.as_deref())?;
    let key = LineageKey::Trace(trace_id.clone());
    let mut records = super::ledger::lineage_page(&s, &caller, &key, after, limit).await?;
    if records.is_empty() && after.is_none() {
        return Err(ApiError::not_found(format!("unknown traceId '{trace_id}'")));
    }
    let mut more = records.len() > limit;
    records.truncate(limit);
    let ledger = s.recorder.ledger();
    let entries = records
        .iter()
        .map(|r| ledger.entry(r.ledger_index))
        .collect::<Result<Vec<_>, _>>()?;
    let fits = page::fit(entries.iter().map(Vec::len));
    more |= fits < records.len();
    records.truncate(fits);
    let (mut spans, mut decisions) = (Vec::new(), Vec::new());
    for (r, bytes) in records.iter().zip(&entries) {
        // A stored entry that does not decode is damage (kla's fault).
        let e = Entry::decode(bytes).map_err(ApiError::internal)?;
        match Kind::parse(&e.kind) {
            Some(Kind::TraceSpans) => {
                let b = body::TraceSpans::of_entry(&e).map_err(ApiError::internal)?;
                let mut n = 0usize;
                for rs in &b.resource_spans {
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for span in ss["spans"].as_array().into_iter().flatten() {
                            spans.push(json!({
                                "lineageId": r.lineage_id,
                                "ledgerIndex": r.ledger_index,
                                "hash": b.span_hashes.get(n).map(|h| &h.hash),
                                "resource": rs["resource"],
                                "scope": ss["scope"],
                                "span": span,
                            }));
                            n += 1;
                        }
                    }
                }
            }
            Some(Kind::Decision) => {
                let b = body::Decision::of_entry(&e).map_err(ApiError::internal)?;
                decisions.push(json!({
                    "lineageId": r.lineage_id,
                    "ledgerIndex": r.ledger_index,
                    "decisionId": b.decision_id,
                    "action": b.action,
                    "decision": b.decision,
                    "agentId": b.agent.id,
                    "time": e.time,
                }));
            }
            _ => {}
        }
    }
    let next = match records.last() {
        Some(last) if more => Value::String(page::cursor(TRACE_CURSOR, &last.ledger_index.to_string())),
        _ => Value::Null,
    };
    Ok(Json(json!({
        "traceId": trace_id,
        "spans": spans,
        "decisions": decisions,
        "nextCursor": next,
    })))
}
