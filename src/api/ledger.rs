//! The ledger's HTTP face: lineage entries and their proofs (the KLA Control Plane API's "Retrieve an Audit Proof"), signed
//! checkpoints, the verifier key, consistency proofs, the raw entry stream for monitors, and evidence bundles.
//!
//! Who reads what: a caller reads its request's tenant's entries (only its agent's, for a token bound to one agent)
//! and the system entries every tenant shares (policy events). The entry stream covers the whole log, because a
//! monitor needs every leaf to rebuild the tree, but serves an entry the caller may not read as its leaf hash only.
//! The operator (no tenant) reads the whole stream in full, and the other monitor routes, and nothing else: those
//! routes take [`Monitor`], every other handler the plain [`Caller`], which refuses the operator.

use super::auth::Caller;
use super::{ApiError, ApiResult, SharedState, page};
use crate::auth::Role;
use crate::ledger::{Entry, Hash, Ledger, LedgerError};
use crate::recorder::{SYSTEM_TENANT, entry_agent};
use crate::server::json::{ApiPath, ApiQuery};
use crate::store::{LineageKey, LineagePage, LineageRecord};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
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

/// The caller of a monitor-facing read (entries, checkpoint, key, consistency): any caller the `/v1` pipeline
/// accepted, the operator included.
struct Monitor(Caller);

impl<S: Send + Sync> FromRequestParts<S> for Monitor {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Monitor)
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))
    }
}

/// Whether the caller may read this entry: a system entry, or one [`Caller::may_read`] allows.
fn readable(caller: &Caller, e: &Entry) -> bool {
    if e.tenant == SYSTEM_TENANT {
        return true;
    }
    let agent = entry_agent(e);
    caller.may_read(
        &e.tenant,
        agent.as_ref().map(|(id, name)| (id.as_str(), name.as_str())),
    )
}

/// A lineage entry visible to the caller: the tenant's own (only its agent's, for a bound token), or a system entry
/// (policy activations). Anything else is the same 404 as an unknown id, so existence is not revealed.
async fn find(s: &SharedState, caller: &Caller, lineage_id: &str) -> ApiResult<LineageRecord> {
    for tenant in [&*caller.tenant, SYSTEM_TENANT] {
        if let Some(r) = s.recorder.lineage(tenant, lineage_id).await? {
            let visible = tenant == SYSTEM_TENANT
                || caller.principal.agent.is_none()
                || Entry::decode(&s.recorder.ledger().entry(r.ledger_index)?)
                    .is_ok_and(|e| readable(caller, &e));
            if visible {
                return Ok(r);
            }
            break;
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
async fn checkpoint(State(s): State<SharedState>, _caller: Monitor) -> ApiResult<Response> {
    let ledger = s.recorder.ledger();
    let cp = match ledger.latest_checkpoint() {
        Some(c) if c.size == ledger.size() => c,
        _ => ledger.checkpoint_now().await?,
    };
    Ok(text(cp.text().to_owned()))
}

/// The verifier key (`<name>+<hex id>+<base64 key>`), exactly what `kla verify --key` takes.
async fn key(State(s): State<SharedState>, _caller: Monitor) -> Response {
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
    _caller: Monitor,
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

/// Entries `[start, end)` as NDJSON, one line per entry in ledger order: the entry's canonical bytes when the caller
/// may read it, otherwise `{"leafHash":"sha256:<hex>"}` (its leaf, enough to rebuild the tree). At most
/// 10,000 lines and [`page::PAGE_BYTES`] of covered entries per response; `x-kla-next` gives the next start.
async fn entries(
    State(s): State<SharedState>,
    Monitor(caller): Monitor,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> ApiResult<Response> {
    caller.require(&[Role::Auditor, Role::Admin, Role::Operator])?;
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
    let page = tokio::task::spawn_blocking(move || entry_lines(&ledger, &caller, start, end))
        .await
        .map_err(ApiError::internal)??;
    let mut resp = page.body.into_response();
    let hd = resp.headers_mut();
    hd.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    hd.insert("x-kla-start", HeaderValue::from(start));
    hd.insert("x-kla-next", HeaderValue::from(page.next));
    hd.insert("x-kla-tree-size", HeaderValue::from(size));
    hd.insert("x-kla-withheld", HeaderValue::from(page.withheld));
    Ok(resp)
}

/// One response of the entry stream.
struct EntryLines {
    body: Vec<u8>,
    /// The first index not in `body`.
    next: u64,
    /// Lines that are leaf hashes.
    withheld: u64,
}

/// The lines for `[start, end)`, stopping early once the entries covered would pass [`page::PAGE_BYTES`] (the
/// same cut for every caller, so `x-kla-next` does not depend on what the caller may read). An entry that does
/// not decode is withheld from everyone but the operator: whose it is cannot be told.
fn entry_lines(ledger: &Ledger, caller: &Caller, start: u64, end: u64) -> Result<EntryLines, LedgerError> {
    let mut out = EntryLines {
        body: Vec::new(),
        next: start,
        withheld: 0,
    };
    let mut covered = 0usize;
    while out.next < end {
        let bytes = ledger.entry(out.next)?;
        covered = covered.saturating_add(bytes.len());
        if out.next > start && covered > page::PAGE_BYTES {
            break;
        }
        if caller.is_operator() || Entry::decode(&bytes).is_ok_and(|e| readable(caller, &e)) {
            out.body.extend_from_slice(&bytes);
        } else {
            let leaf = crate::ledger::tree::leaf_hash(&bytes);
            out.body
                .extend_from_slice(format!(r#"{{"leafHash":"{}"}}"#, h(&leaf)).as_bytes());
            out.withheld += 1;
        }
        out.body.push(b'\n');
        out.next += 1;
    }
    Ok(out)
}

/// The page of the entries selected by `key` that `caller` may read, after ledger index `after`, with one entry more
/// than `limit` when another page follows.
pub(super) async fn lineage_page(
    s: &SharedState,
    caller: &Caller,
    key: &LineageKey,
    after: Option<u64>,
    limit: usize,
) -> ApiResult<Vec<LineageRecord>> {
    let page = LineagePage {
        key,
        agent: caller.principal.agent.as_deref(),
        after,
        limit: limit + 1,
    };
    Ok(s.recorder.find_lineage_page(&caller.tenant, page).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EvidenceQuery {
    lineage_id: Option<String>,
    decision_id: Option<String>,
    trace_id: Option<String>,
    execution_id: Option<String>,
    limit: Option<u64>,
    cursor: Option<String>,
}

/// Scope of evidence cursors (a cursor names the last ledger index of its page).
const EVIDENCE_CURSOR: &str = "evidence";

/// A sealed evidence bundle for the entries selected by exactly one of the query parameters, one page at a time:
/// at most `limit` entries and [`page::PAGE_BYTES`] of entry bytes; `x-kla-next-cursor` names the next page.
/// The cursor travels in a header so that the body stays exactly a `kla-evidence/v1` bundle, which
/// `kla verify` checks as it is.
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
    let limit = page::limit(q.limit)?;
    let after = page::after_index(EVIDENCE_CURSOR, q.cursor.as_deref())?;
    let mut records = match &q.lineage_id {
        Some(l) => {
            let r = find(&s, &caller, l).await?;
            if after.is_none_or(|a| r.ledger_index > a) {
                vec![r]
            } else {
                Vec::new()
            }
        }
        None => {
            let key = match (q.decision_id, q.trace_id, q.execution_id) {
                (Some(d), _, _) => LineageKey::Decision(d),
                (_, Some(t), _) => LineageKey::Trace(t),
                (_, _, Some(e)) => LineageKey::Execution(e),
                (None, None, None) => return Err(ApiError::invalid("no selector given")),
            };
            let agent = caller.principal.agent.as_deref();
            let mut found = lineage_page(&s, &caller, &key, after, limit).await?;
            if let (LineageKey::Decision(_), None) = (&key, after) {
                // A decision that went through on an earlier approval is evidenced with that approval's chain.
                found = s
                    .approvals
                    .with_used_approval(&caller.tenant, agent, found, limit + 1)
                    .await?;
            }
            found
        }
    };
    if records.is_empty() {
        return Err(ApiError::not_found("no ledger entries match"));
    }
    let mut more = records.len() > limit;
    records.truncate(limit);
    let ledger = s.recorder.ledger();
    let sizes = records
        .iter()
        .map(|r| ledger.entry(r.ledger_index).map(|b| b.len()))
        .collect::<Result<Vec<_>, _>>()?;
    let fits = page::fit(sizes);
    more |= fits < records.len();
    records.truncate(fits);
    let indices: Vec<u64> = records.iter().map(|r| r.ledger_index).collect();
    let bundle = ledger.build_evidence(&indices).await?;
    let name = format!("evidence-{}.json", records[0].lineage_id);
    let mut resp = Json(bundle).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    if more && let Some(last) = indices.last() {
        let next = page::cursor(EVIDENCE_CURSOR, &last.to_string());
        if let Ok(v) = HeaderValue::from_str(&next) {
            resp.headers_mut().insert("x-kla-next-cursor", v);
        }
    }
    Ok(resp)
}
