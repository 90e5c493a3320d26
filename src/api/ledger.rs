//! The ledger's HTTP face: lineage entries and their proofs (the KLA Control Plane API's "Retrieve an Audit Proof"), signed
//! checkpoints, the verifier key, consistency proofs, the raw entry stream for monitors, and evidence bundles.

use super::auth::Caller;
use super::json::{ApiPath, ApiQuery};
use super::{ApiError, ApiResult, SharedState};
use crate::auth::Role;
use crate::ledger::{Entry, Hash};
use crate::recorder::SYSTEM_TENANT;
use crate::store::{LineageKey, LineageRecord};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

pub(super) fn routes() -> Router<SharedState> {
    Router::new()
        .route("/lineage/{lineage_id}", get(lineage_entry))
        .route("/lineage/{lineage_id}/verify", get(lineage_verify))
        .route("/ledger/checkpoint", get(checkpoint))
        .route("/ledger/key", get(key))
        .route("/ledger/consistency", get(consistency))
        .route("/ledger/entries", get(entries))
        .route("/evidence", get(evidence))
}

fn h(x: &Hash) -> String {
    format!("sha256:{}", hex::encode(x))
}

/// A lineage entry visible to the caller: the tenant's own, or a system entry (policy activations).
async fn find(s: &SharedState, caller: &Caller, lineage_id: &str) -> ApiResult<LineageRecord> {
    for tenant in [&*caller.tenant, SYSTEM_TENANT] {
        if let Some(r) = s.recorder.lineage(tenant, lineage_id).await? {
            return Ok(r);
        }
    }
    Err(ApiError::not_found(format!("unknown lineageId '{lineage_id}'")))
}

async fn lineage_entry(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(lineage_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let rec = find(&s, &caller, &lineage_id).await?;
    let ledger = s.recorder.ledger();
    let bytes = ledger.entry(rec.ledger_index)?;
    // A stored entry that does not decode is damage (kla's fault), not the caller's invalid entry.
    let entry = Entry::decode(&bytes).map_err(ApiError::internal)?;
    Ok(Json(json!({
        "lineageId": entry.lineage_id,
        "ledgerIndex": rec.ledger_index,
        "kind": entry.kind,
        "tenant": entry.tenant,
        "time": entry.time,
        "v": entry.v,
        "body": entry.body,
        "leafHash": h(&ledger.leaf_hash(rec.ledger_index)?),
        "canonical": String::from_utf8_lossy(&bytes),
    })))
}

async fn lineage_verify(
    State(s): State<SharedState>,
    caller: Caller,
    ApiPath(lineage_id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let rec = find(&s, &caller, &lineage_id).await?;
    let ledger = s.recorder.ledger();
    let idx = rec.ledger_index;
    let cp = ledger.latest_checkpoint().filter(|c| c.size > idx);
    let (tree_size, root, checkpoint) = match &cp {
        Some(c) => (c.size, c.root, Value::String(c.text().to_owned())),
        None => {
            let size = ledger.size();
            (size, ledger.root(size)?, Value::Null)
        }
    };
    let path = ledger.inclusion_proof(idx, tree_size)?;
    // Prove the entry as stored now, not only its stored leaf hash: a damaged entry must not look anchored.
    let bytes = ledger.entry(idx)?;
    let leaf = ledger.leaf_hash(idx)?;
    if crate::ledger::tree::leaf_hash(&bytes) != leaf {
        return Err(ApiError::internal(format!(
            "ledger entry {idx} does not match its leaf hash"
        )));
    }
    Ok(Json(json!({
        "lineageId": rec.lineage_id,
        "anchored": cp.is_some(),
        "ledgerIndex": idx,
        "rootHash": h(&root),
        "merklePath": path.iter().map(h).collect::<Vec<_>>(),
        "leafHash": h(&leaf),
        "treeSize": tree_size,
        "checkpoint": checkpoint,
    })))
}

fn text(body: String) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The latest signed checkpoint (C2SP signed note), signing one now if none exists yet.
async fn checkpoint(State(s): State<SharedState>, _caller: Caller) -> ApiResult<Response> {
    let ledger = s.recorder.ledger();
    let cp = match ledger.latest_checkpoint() {
        Some(c) if c.size == ledger.size() => c,
        _ => ledger.checkpoint_now().await?,
    };
    Ok(text(cp.text().to_owned()))
}

/// The verifier key (`<name>+<hex id>+<base64 key>`), exactly what `kla verify --key` takes.
async fn key(State(s): State<SharedState>, _caller: Caller) -> Response {
    text(format!("{}\n", s.recorder.ledger().verifier_key()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn consistency(
    State(s): State<SharedState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<ConsistencyQuery>,
) -> ApiResult<Json<Value>> {
    let ledger = s.recorder.ledger();
    let size = ledger.size();
    if q.from == 0 || q.from > q.to || q.to > size {
        return Err(ApiError::invalid(format!(
            "need 1 <= from <= to <= tree size ({size}); got from={} to={}",
            q.from, q.to
        )));
    }
    let proof = ledger.consistency_proof(q.from, q.to)?;
    Ok(Json(json!({
        "from": q.from,
        "to": q.to,
        "fromRoot": h(&ledger.root(q.from)?),
        "toRoot": h(&ledger.root(q.to)?),
        "proof": proof.iter().map(h).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntriesQuery {
    start: u64,
    end: Option<u64>,
}

/// Raw entries `[start, end)` as NDJSON: each line is exactly one entry's canonical bytes (hash it with the
/// 0x00 prefix to get its leaf). At most 10,000 per request; `x-kla-next` gives the next start.
async fn entries(
    State(s): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> ApiResult<Response> {
    caller.require(&[Role::Auditor, Role::Admin])?;
    let ledger = s.recorder.ledger().clone();
    let size = ledger.size();
    let max = crate::ledger::log::MAX_ENTRIES_PER_READ;
    let asked_end = q.end.unwrap_or(size);
    if q.start > asked_end || asked_end > size {
        return Err(ApiError::invalid(format!(
            "need start <= end <= tree size ({size}); got start={} end={asked_end}",
            q.start
        )));
    }
    let end = asked_end.min(q.start.saturating_add(max));
    let start = q.start;
    let rows = tokio::task::spawn_blocking(move || ledger.entries(start, end))
        .await
        .map_err(ApiError::internal)??;
    let mut body = Vec::with_capacity(rows.iter().map(|r| r.len() + 1).sum());
    for r in rows {
        body.extend_from_slice(&r);
        body.push(b'\n');
    }
    let mut resp = body.into_response();
    let hd = resp.headers_mut();
    hd.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    hd.insert("x-kla-start", HeaderValue::from(start));
    hd.insert("x-kla-next", HeaderValue::from(end));
    hd.insert("x-kla-tree-size", HeaderValue::from(size));
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EvidenceQuery {
    lineage_id: Option<String>,
    decision_id: Option<String>,
    trace_id: Option<String>,
    execution_id: Option<String>,
}

/// A sealed evidence bundle for the entries selected by exactly one of the query parameters.
async fn evidence(
    State(s): State<SharedState>,
    caller: Caller,
    ApiQuery(q): ApiQuery<EvidenceQuery>,
) -> ApiResult<Response> {
    caller.require(&[Role::Auditor, Role::Admin, Role::Agent])?;
    let given = [&q.lineage_id, &q.decision_id, &q.trace_id, &q.execution_id]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if given != 1 {
        return Err(ApiError::invalid(
            "give exactly one of lineageId, decisionId, traceId, executionId",
        ));
    }
    let records = match &q.lineage_id {
        Some(l) => vec![find(&s, &caller, l).await?],
        None => {
            let key = match (q.decision_id, q.trace_id, q.execution_id) {
                (Some(d), _, _) => LineageKey::Decision(d),
                (_, Some(t), _) => LineageKey::Trace(t),
                (_, _, Some(e)) => LineageKey::Execution(e),
                (None, None, None) => return Err(ApiError::invalid("no selector given")),
            };
            s.recorder.find_lineage(&caller.tenant, &key, 10_000).await?
        }
    };
    if records.is_empty() {
        return Err(ApiError::not_found("no ledger entries match"));
    }
    let indices: Vec<u64> = records.iter().map(|r| r.ledger_index).collect();
    let bundle = s.recorder.ledger().build_evidence(&indices).await?;
    let name = format!("evidence-{}.json", records[0].lineage_id);
    let mut resp = Json(bundle).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
