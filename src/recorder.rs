//! The one path by which kla writes its tamper-evident record, and the one way the API reads its index.
//!
//! The recorder turns what happened (a decision, an agent registration, a policy activation or refusal) into a
//! versioned ledger [`Entry`], appends it durably (the ledger acknowledges only after fsync), and then indexes it
//! in the store so it can be found by lineage, decision, trace or execution id. The ledger is the source of
//! truth; the store's index is derived from it: index writes are group-committed by one task, and on startup
//! [`Recorder::reindex`] replays whatever part of the ledger the index has not seen (a crash between the two
//! writes loses nothing).
//!
//! Decisions are answered once their entry is durable, without waiting for the index commit (that wait was a
//! second group commit on every decision's latency). Reads stay read-your-writes: every index read goes through
//! [`Recorder::lineage`], [`Recorder::find_lineage`] or [`Recorder::decision_record`], which first wait until
//! every index job queued before the read began is committed (an index barrier). The recorder knows no HTTP.

use crate::ledger::jcs::{Obj, write_array};
use crate::ledger::{Entry, Ledger, LedgerError, new_lineage_id};
use crate::policy::{AgentRef, Decision, Outcome};
use crate::store::{DecisionRecord, LineageRecord, Store, StoreError};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

/// Tenant recorded on entries that belong to no tenant (policy activations and refusals).
pub const SYSTEM_TENANT: &str = "_system";
const INDEX_QUEUE: usize = 8192;
const INDEX_BATCH: usize = 1024;
/// How long the index writer gathers jobs after the first one before committing, when nobody waits for them: the
/// index is off the decisions' answer path, so a few milliseconds buy transactions of hundreds of rows (each commit
/// rewrites the B-tree pages it dirtied into the WAL, the partly filled last leaf of each tree included; small
/// transactions wrote ~0.5 pages per decision). A read at the barrier, or a job whose caller waits for its commit,
/// ends the gathering at once. Not longer: 50 ms cut the index's page writes by 30% but each transaction became a
/// CPU burst of a few ms, and on a shared core p90 at half load went from 1.2-1.4 ms to 2.1-2.6 ms.
#[cfg(not(test))]
const INDEX_LINGER: Duration = Duration::from_millis(5);
/// Longer than [`BARRIER_WAIT`] in unit tests: a read that the barrier's nudge did not hurry would miss its rows.
#[cfg(test)]
const INDEX_LINGER: Duration = Duration::from_secs(60);
/// How long an index read waits for queued index writes before reading what is committed (the writer is stuck or
/// failing; the read may then miss the newest entries, which are in the ledger and re-indexed at restart).
const BARRIER_WAIT: Duration = Duration::from_secs(2);

/// Errors of recording: the ledger or the store failed (kla's side; a retry may help).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The ledger refused or failed the append.
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// The store failed to index the entry (it is in the ledger and will be re-indexed on restart).
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The index writer failed this batch (the entry is in the ledger and is re-indexed on restart).
    #[error("index: {0}")]
    Index(String),
    /// The index writer has stopped.
    #[error("index writer stopped")]
    Closed,
}

/// Where an entry landed.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `lr_...`.
    pub lineage_id: String,
    /// Position in the ledger.
    pub ledger_index: u64,
}

/// A decision to record: its index keys and its canonical ledger body ([`DecisionBody::encode`]).
pub struct DecisionToRecord {
    /// Tenant.
    pub tenant: String,
    /// `dec_...`.
    pub decision_id: String,
    /// Agent id.
    pub agent_id: String,
    /// Action evaluated.
    pub action: String,
    /// Outcome string.
    pub decision: String,
    /// Optional trace id.
    pub trace_id: Option<String>,
    /// Optional execution id.
    pub execution_id: Option<String>,
    /// The canonical ledger body: input, matched rules, pack digests, outcome (moved into the entry).
    pub body: Vec<u8>,
}

/// The ledger body of a decision, from borrowed parts (the API keeps them for its response).
pub struct DecisionBody<'a> {
    /// `dec_...`.
    pub decision_id: &'a str,
    /// The agent as the policy saw it.
    pub agent: &'a AgentRef,
    /// Action evaluated.
    pub action: &'a str,
    /// The caller's context object.
    pub context: &'a Value,
    /// The caller's tool description, if any.
    pub tool: Option<&'a Value>,
    /// Optional execution id.
    pub execution_id: Option<&'a str>,
    /// Optional trace id.
    pub trace_id: Option<&'a str>,
    /// Token subject of the caller.
    pub subject: &'a str,
    /// Role of the caller.
    pub role: &'a str,
    /// What the policy decided.
    pub decision: &'a Decision,
}

impl DecisionBody<'_> {
    /// The canonical (RFC 8785) body, written directly: building a `serde_json::Value` first and sorting its keys
    /// was a visible share of a decision's CPU. Falls back to the reference encoder where the direct one declines
    /// (integers beyond 2^53 in the caller's context). Equal to the reference encoding of [`Self::to_value`]
    /// (property-tested).
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        match self.encode_direct() {
            Some(b) => Ok(b),
            None => serde_json_canonicalizer::to_vec(&self.to_value())
                .map_err(|e| RecordError::Ledger(LedgerError::InvalidEntry(e.to_string()))),
        }
    }

    fn encode_direct(&self) -> Option<Vec<u8>> {
        let d = self.decision;
        let mut out = Vec::with_capacity(1024);
        let mut o = Obj::begin(&mut out);
        o.str("action", self.action);
        let mut a = Obj::begin(o.raw("agent"));
        a.str("id", &self.agent.id);
        if let Some(h) = &self.agent.manifest_hash {
            a.str("manifestHash", h);
        }
        a.str("name", &self.agent.name);
        if let Some(v) = &self.agent.version {
            a.str("version", v);
        }
        a.end();
        o.value("context", self.context)?;
        o.str("decision", d.outcome.as_str());
        o.str("decisionId", self.decision_id);
        o.opt_str("error", d.error.as_deref());
        o.uint("evaluationMicros", d.evaluation_micros)?;
        o.opt_str("executionId", self.execution_id);
        write_array(o.raw("matchedRules"), &d.matched_rules, |m, buf| {
            let mut r = Obj::begin(buf);
            if let Some(ap) = &m.approval {
                let mut x = Obj::begin(r.raw("approval"));
                x.str("onTimeout", ap.on_timeout.as_str());
                x.str("timeout", &ap.timeout);
                x.uint("timeoutSeconds", ap.timeout_seconds)?;
                x.end();
            }
            r.str("decision", m.decision.as_str());
            r.str("id", &m.id);
            if let Some(msg) = &m.message {
                r.str("message", msg);
            }
            r.str("pack", &m.pack);
            r.str("reasonCode", &m.reason_code);
            r.bool("shadow", m.shadow);
            r.end();
            Some(())
        })?;
        write_array(o.raw("policy"), &d.policy, |p, buf| {
            let mut x = Obj::begin(buf);
            x.str("digest", &p.digest);
            x.str("name", &p.name);
            x.opt_str("signerKeyId", p.signer_key_id.as_deref());
            x.str("version", &p.version);
            x.end();
            Some(())
        })?;
        let mut p = Obj::begin(o.raw("principal"));
        p.str("role", self.role);
        p.str("subject", self.subject);
        p.end();
        o.strs("reasonCodes", &d.reason_codes);
        o.bool("requiresDeskApproval", d.outcome == Outcome::RequireApproval);
        match self.tool {
            Some(t) => o.value("tool", t)?,
            None => o.raw("tool").extend_from_slice(b"null"),
        }
        o.opt_str("traceId", self.trace_id);
        o.str("wouldDecide", d.would_decide.as_str());
        o.end();
        Some(out)
    }

    /// The same body as a JSON value (the fallback's input, and the tests' oracle).
    pub fn to_value(&self) -> Value {
        let d = self.decision;
        json!({
            "decisionId": self.decision_id,
            "agent": self.agent,
            "action": self.action,
            "context": self.context,
            "tool": self.tool,
            "executionId": self.execution_id,
            "traceId": self.trace_id,
            "principal": {"subject": self.subject, "role": self.role},
            "decision": d.outcome,
            "reasonCodes": d.reason_codes,
            "requiresDeskApproval": d.outcome == Outcome::RequireApproval,
            "wouldDecide": d.would_decide,
            "matchedRules": d.matched_rules,
            "policy": d.policy,
            "evaluationMicros": d.evaluation_micros,
            "error": d.error,
        })
    }
}

/// An entry body: a JSON value (encoded by the ledger), or bytes already in canonical form.
enum Body {
    Value(Value),
    Canonical(Vec<u8>),
}

struct IndexJob {
    lineage: LineageRecord,
    decision: Option<DecisionRecord>,
    /// Told the outcome when the caller waits for the index (registrations, policy events); decisions do not.
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// Records entries. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    ledger: Ledger,
    store: Store,
    index_tx: mpsc::Sender<IndexJob>,
    /// Index jobs queued so far (a job's sequence number is the value after its increment).
    queued: Arc<AtomicU64>,
    /// Index jobs the writer has finished (committed, or failed and handed to a retry), in queue order.
    finished: watch::Receiver<u64>,
    /// Background per-entry retries still running after a failed index transaction; the barrier waits for them
    /// too, so a read racing an index failure does not miss entries answered before it.
    retrying: Arc<AtomicU64>,
    /// How the barrier hurries the index writer (shared with it).
    flush: Arc<Flush>,
}

impl Recorder {
    /// A recorder over `ledger` and `store`; spawns the index writer on the current runtime.
    pub fn new(ledger: Ledger, store: Store) -> Recorder {
        let (index_tx, rx) = mpsc::channel(INDEX_QUEUE);
        let (finished_tx, finished) = watch::channel(0u64);
        let recorder = Recorder {
            ledger,
            store,
            index_tx,
            queued: Arc::new(AtomicU64::new(0)),
            finished,
            retrying: Arc::new(AtomicU64::new(0)),
            flush: Arc::new(Flush {
                wanted: AtomicU64::new(0),
                nudge: Notify::new(),
            }),
        };
        // The writer holds the ledger and the store, not a recorder: when the last recorder is dropped the queue
        // closes, and the writer commits what is left and ends.
        tokio::spawn(index_writer(
            recorder.ledger.clone(),
            recorder.store.clone(),
            rx,
            Arc::new(finished_tx),
            recorder.retrying.clone(),
            recorder.flush.clone(),
        ));
        recorder
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Appends one entry (durable: fsynced before the ledger acknowledges) and queues its index rows; with
    /// `wait_index` it also waits for their commit (the index is rebuilt from the ledger if a crash loses it).
    async fn record(
        &self,
        kind: &str,
        tenant: &str,
        body: Body,
        decision: Option<DecisionToRecord>,
        wait_index: bool,
    ) -> Result<(Recorded, String), RecordError> {
        let lineage_id = new_lineage_id();
        let time = crate::time::now_rfc3339();
        let mut entry = Entry {
            v: crate::ledger::entry::ENTRY_VERSION,
            kind: kind.to_owned(),
            lineage_id: lineage_id.clone(),
            tenant: tenant.to_owned(),
            time: time.clone(),
            body: Value::Null,
        };
        let bytes = match body {
            Body::Value(v) => {
                entry.body = v;
                entry.encode()?
            }
            Body::Canonical(b) => Entry::encode_with_body(
                entry.v,
                &entry.kind,
                &entry.lineage_id,
                &entry.tenant,
                &entry.time,
                &b,
            ),
        };
        let ledger_index = self.ledger.append(bytes).await?;
        let (lineage, decision) = index_records(&entry, ledger_index, decision);
        let (done, wait) = if wait_index {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // The entry is durable: from here on the answer is success, or a retry would record it twice. An index
        // failure is retried in the background by the writer (and replayed from the ledger at the next start).
        // Why the barrier holds: the count is raised with the permit in hand and the job sent with no await in
        // between, so a reader that loads N has seen the count of every job sent before its load; queue
        // positions are given at send, so each of those jobs sits at a position <= N, and `finished >= N` covers
        // it. (Counts and positions may differ in order between two concurrent senders; that does not matter.)
        match self.index_tx.reserve().await {
            Ok(permit) => {
                self.queued.fetch_add(1, Ordering::SeqCst);
                permit.send(IndexJob {
                    lineage,
                    decision,
                    done,
                });
            }
            Err(_) => {
                tracing::error!(
                    ledger_index,
                    "index writer stopped; the entry is re-indexed at the next start"
                );
            }
        }
        if let Some(wait) = wait
            && wait.await.is_err()
        {
            tracing::error!(
                ledger_index,
                "index writer stopped; the entry is re-indexed at the next start"
            );
        }
        Ok((
            Recorded {
                lineage_id,
                ledger_index,
            },
            time,
        ))
    }

    /// Records a decision.
    pub async fn decision(&self, mut d: DecisionToRecord) -> Result<Recorded, RecordError> {
        let tenant = d.tenant.clone();
        let body = Body::Canonical(std::mem::take(&mut d.body));
        Ok(self.record("decision", &tenant, body, Some(d), false).await?.0)
    }

    /// Records an agent registration (a new agent or a new version).
    pub async fn agent_registered(&self, tenant: &str, body: Value) -> Result<Recorded, RecordError> {
        Ok(self
            .record("agent.registered", tenant, Body::Value(body), None, true)
            .await?
            .0)
    }

    /// Records a policy activation or refusal (`kind` is `policy.activated` or `policy.refused`).
    pub async fn policy_event(&self, kind: &str, body: Value) -> Result<Recorded, RecordError> {
        Ok(self
            .record(kind, SYSTEM_TENANT, Body::Value(body), None, true)
            .await?
            .0)
    }

    /// Indexes every ledger entry the store has not seen (after a crash between append and index).
    /// Returns how many entries were indexed.
    pub async fn reindex(&self) -> Result<u64, RecordError> {
        let size = self.ledger.size();
        let stale = self.store.truncate_index(size).await?;
        if stale > 0 {
            tracing::warn!(
                rows = stale,
                size,
                "dropped index rows for ledger entries that no longer exist"
            );
        }
        let (count, max) = self.store.lineage_count_and_max().await?;
        // Contiguous index: resume after it. A gap (only after a crash) means one full, idempotent pass.
        let start = match max {
            Some(m) if count == m + 1 => m + 1,
            None => 0,
            Some(_) => 0,
        };
        let mut done = 0u64;
        let mut i = start;
        while i < size {
            let end = (i + crate::ledger::log::MAX_ENTRIES_PER_READ).min(size);
            let entries = self.ledger.entries(i, end)?;
            let mut lineage = Vec::with_capacity(entries.len());
            let mut decisions = Vec::new();
            for (k, bytes) in entries.iter().enumerate() {
                let entry = Entry::decode(bytes)?;
                let (l, d) = index_records(&entry, i + k as u64, decision_from_entry(&entry));
                lineage.push(l);
                decisions.extend(d);
            }
            done += lineage.len() as u64;
            self.store.index_entries(lineage, decisions).await?;
            i = end;
        }
        if done > 0 && start > 0 {
            tracing::warn!(
                from = start,
                count = done,
                "re-indexed ledger entries missing from the store"
            );
        }
        Ok(done)
    }
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

/// Rebuilds the decision row from a decision entry (used by re-indexing).
fn decision_from_entry(e: &Entry) -> Option<DecisionToRecord> {
    if e.kind != "decision" {
        return None;
    }
    let b = &e.body;
    Some(DecisionToRecord {
        tenant: e.tenant.clone(),
        decision_id: str_field(b, "decisionId")?,
        agent_id: b
            .get("agent")
            .and_then(|a| str_field(a, "id"))
            .unwrap_or_default(),
        action: str_field(b, "action").unwrap_or_default(),
        decision: str_field(b, "decision").unwrap_or_default(),
        trace_id: str_field(b, "traceId"),
        execution_id: str_field(b, "executionId"),
        body: Vec::new(),
    })
}

/// The index rows of one entry (the entry itself stays in the ledger).
fn index_records(
    e: &Entry,
    ledger_index: u64,
    d: Option<DecisionToRecord>,
) -> (LineageRecord, Option<DecisionRecord>) {
    let lineage = LineageRecord {
        lineage_id: e.lineage_id.clone(),
        tenant: e.tenant.clone(),
        ledger_index,
        kind: e.kind.clone(),
        decision_id: d.as_ref().map(|d| d.decision_id.clone()),
        trace_id: d.as_ref().and_then(|d| d.trace_id.clone()),
        execution_id: d.as_ref().and_then(|d| d.execution_id.clone()),
        created_at: e.time.clone(),
        agent_version: (e.kind == "agent.registered")
            .then(|| Some((str_field(&e.body, "agentId")?, e.body.get("version")?.as_i64()?)))
            .flatten(),
    };
    let decision = d.map(|d| DecisionRecord {
        decision_id: d.decision_id,
        tenant: d.tenant,
        agent_id: d.agent_id,
        action: d.action,
        decision: d.decision,
        lineage_id: e.lineage_id.clone(),
        ledger_index,
        created_at: e.time.clone(),
    });
    (lineage, decision)
}

/// Re-indexes one entry in the background, rebuilding its rows from the ledger (the same path as
/// [`Recorder::reindex`]), so the hot path keeps no copy of them for this rare case.
fn retry_index(ledger: &Ledger, store: &Store, ledger_index: u64, barrier: &Barrier) {
    let (ledger, store) = (ledger.clone(), store.clone());
    let barrier = barrier.clone();
    barrier.retrying.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        // Counted down however the task ends (success, giving up, or the runtime dropping it).
        let _done = RetryDone(barrier);
        for attempt in 1..=8u32 {
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt.min(6))).await;
            let rows = ledger
                .entry(ledger_index)
                .map_err(RecordError::from)
                .and_then(|bytes| {
                    let entry = Entry::decode(&bytes)?;
                    Ok(index_records(&entry, ledger_index, decision_from_entry(&entry)))
                });
            let result = match rows {
                Ok((l, d)) => store
                    .index_entries(vec![l], d.into_iter().collect())
                    .await
                    .map_err(RecordError::from),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, attempt, ledger_index, "index retry failed"),
            }
        }
        tracing::error!(ledger_index, "giving up indexing; the next start re-indexes it");
    });
}

/// What the index writer publishes for the read barrier.
#[derive(Clone)]
struct Barrier {
    finished: Arc<watch::Sender<u64>>,
    retrying: Arc<AtomicU64>,
}

/// Ends one background retry: counts it down and wakes barrier waiters.
struct RetryDone(Barrier);

impl Drop for RetryDone {
    fn drop(&mut self) {
        self.0.retrying.fetch_sub(1, Ordering::SeqCst);
        self.0.finished.send_modify(|_| {});
    }
}

/// Group-commits index writes: takes everything queued (up to a batch), writes one transaction, then publishes
/// how many jobs are finished (for the read barrier) and tells the jobs that wait. A failed batch is retried
/// entry by entry in the background, rebuilt from the ledger.
/// How readers hurry the index writer (see [`Recorder::index_barrier`]): the highest job sequence number a reader
/// waits for, and the nudge that makes the writer commit now instead of gathering more.
struct Flush {
    wanted: AtomicU64,
    nudge: Notify,
}

async fn index_writer(
    ledger: Ledger,
    store: Store,
    mut rx: mpsc::Receiver<IndexJob>,
    finished: Arc<watch::Sender<u64>>,
    retrying: Arc<AtomicU64>,
    flush: Arc<Flush>,
) {
    let barrier = Barrier { finished, retrying };
    let mut batch: Vec<IndexJob> = Vec::with_capacity(INDEX_BATCH);
    let mut done = 0u64;
    while rx.recv_many(&mut batch, INDEX_BATCH).await > 0 {
        let linger = tokio::time::sleep(INDEX_LINGER);
        tokio::pin!(linger);
        // Someone waits for these rows: a caller for its job's commit, or a reader at the barrier for every job
        // up to `wanted` (jobs are numbered in queue order, so the batch covers them once it is long enough).
        let mut urgent = batch.iter().any(|j| j.done.is_some());
        while batch.len() < INDEX_BATCH && !urgent {
            let wanted = flush.wanted.load(Ordering::SeqCst);
            if wanted > done && done + batch.len() as u64 >= wanted {
                break;
            }
            let (room, before) = (INDEX_BATCH - batch.len(), batch.len());
            tokio::select! {
                _ = &mut linger => break,
                () = flush.nudge.notified() => {}
                got = rx.recv_many(&mut batch, room) => {
                    if got == 0 {
                        break;
                    }
                    urgent = batch[before..].iter().any(|j| j.done.is_some());
                }
            }
        }
        let n = batch.len() as u64;
        let mut lineage = Vec::with_capacity(batch.len());
        let mut decisions = Vec::new();
        let mut waiting = Vec::new();
        for j in batch.drain(..) {
            lineage.push(j.lineage);
            decisions.extend(j.decision);
            waiting.extend(j.done);
        }
        let indices: Vec<u64> = lineage.iter().map(|l| l.ledger_index).collect();
        let result = store
            .index_entries(lineage, decisions)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = indices.len(), "indexing failed; retrying in the background");
            for i in indices {
                retry_index(&ledger, &store, i, &barrier);
            }
        }
        done += n;
        barrier.finished.send_replace(done);
        for tx in waiting {
            let _ = tx.send(result.clone());
        }
    }
}

impl Recorder {
    /// Waits until every index job queued before this call is finished, so a read sees every entry whose
    /// recording completed before it (read-your-writes). Bounded by [`BARRIER_WAIT`].
    async fn index_barrier(&self) {
        let target = self.queued.load(Ordering::SeqCst);
        let retrying = &self.retrying;
        let ready = |n: &u64| *n >= target && retrying.load(Ordering::SeqCst) == 0;
        let mut finished = self.finished.clone();
        if ready(&finished.borrow()) {
            return;
        }
        self.hurry_index(target);
        let wait = finished.wait_for(ready);
        if tokio::time::timeout(BARRIER_WAIT, wait).await.is_err() {
            tracing::warn!(target, "index writer is behind; reading the committed index");
        }
    }

    /// Makes the index writer commit what it is gathering now, up to job `target`, rather than at the end of its
    /// linger.
    fn hurry_index(&self, target: u64) {
        self.flush.wanted.fetch_max(target, Ordering::SeqCst);
        self.flush.nudge.notify_one();
    }

    /// Waits (bounded like a read) until every queued index job is committed. Shutdown calls it after the last
    /// request, so the process does not exit with index rows still queued (the next start would re-index them).
    pub async fn flush_index(&self) {
        self.index_barrier().await;
    }

    /// A lineage entry of a tenant (read-your-writes, see the module docs).
    pub async fn lineage(
        &self,
        tenant: &str,
        lineage_id: &str,
    ) -> Result<Option<LineageRecord>, RecordError> {
        self.index_barrier().await;
        Ok(self.store.get_lineage(tenant, lineage_id).await?)
    }

    /// Lineage entries of a tenant by decision, trace or execution id, at most `limit` (read-your-writes).
    pub async fn find_lineage(
        &self,
        tenant: &str,
        decision_id: Option<&str>,
        trace_id: Option<&str>,
        execution_id: Option<&str>,
        limit: usize,
    ) -> Result<Vec<LineageRecord>, RecordError> {
        self.index_barrier().await;
        Ok(self
            .store
            .find_lineage(tenant, decision_id, trace_id, execution_id, limit)
            .await?)
    }

    /// The index row of a tenant's decision (read-your-writes).
    pub async fn decision_record(
        &self,
        tenant: &str,
        decision_id: &str,
    ) -> Result<Option<DecisionRecord>, RecordError> {
        self.index_barrier().await;
        Ok(self.store.get_decision(tenant, decision_id).await?)
    }
}

/// Shared recorder handle type.
pub type SharedRecorder = Arc<Recorder>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::policy::{ApprovalSpec, MatchedRule, OnTimeout, PackRef};
    use proptest::prelude::*;

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Allow),
            Just(Outcome::Warn),
            Just(Outcome::RequireApproval),
            Just(Outcome::Block)
        ]
    }

    /// Strings with the characters JCS treats specially (escapes, non-ASCII, astral).
    fn text() -> impl Strategy<Value = String> {
        "[a-z\"\\\\\\u{0}-\\u{1f}\\u{7f}\\u{e9}\\u{2028}\\u{ffff}\\u{1f600}]{0,8}"
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn matched_rule() -> impl Strategy<Value = MatchedRule> {
        (
            text(),
            text(),
            outcome(),
            text(),
            proptest::option::of(text()),
            any::<bool>(),
            proptest::option::of((text(), 0u64..1 << 40, any::<bool>())),
        )
            .prop_map(
                |(id, pack, decision, reason_code, message, shadow, ap)| MatchedRule {
                    id,
                    pack,
                    decision,
                    reason_code,
                    message,
                    shadow,
                    approval: ap.map(|(timeout, timeout_seconds, allow)| ApprovalSpec {
                        timeout,
                        timeout_seconds,
                        on_timeout: if allow { OnTimeout::Allow } else { OnTimeout::Block },
                    }),
                },
            )
    }

    fn decision() -> impl Strategy<Value = Decision> {
        (
            outcome(),
            prop::collection::vec(text(), 0..3),
            outcome(),
            prop::collection::vec(matched_rule(), 0..3),
            prop::collection::vec((text(), text(), text(), proptest::option::of(text())), 0..3),
            0u64..1 << 40,
            proptest::option::of(text()),
        )
            .prop_map(
                |(outcome, reason_codes, would_decide, matched_rules, packs, micros, error)| Decision {
                    outcome,
                    reason_codes,
                    would_decide,
                    matched_rules,
                    policy: packs
                        .into_iter()
                        .map(|(name, version, digest, signer_key_id)| PackRef {
                            name,
                            version,
                            digest,
                            signer_key_id,
                        })
                        .collect(),
                    evaluation_micros: micros,
                    error,
                },
            )
    }

    fn agent() -> impl Strategy<Value = AgentRef> {
        (
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
        )
            .prop_map(|(id, name, version, manifest_hash)| AgentRef {
                id,
                name,
                version,
                manifest_hash,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// The direct writer is byte-for-byte the reference RFC 8785 encoding of the body as a JSON value, and
        /// the entry around it decodes (which checks the canonical form again).
        #[test]
        fn decision_bodies_are_the_reference_encoding(
            d in decision(),
            a in agent(),
            context in json_value(),
            tool in proptest::option::of(json_value()),
            ids in (text(), text(), proptest::option::of(text()), proptest::option::of(text())),
            role in text(),
        ) {
            let body = DecisionBody {
                decision_id: &ids.0,
                agent: &a,
                action: &ids.1,
                context: &context,
                tool: tool.as_ref(),
                execution_id: ids.2.as_deref(),
                trace_id: ids.3.as_deref(),
                subject: "sub",
                role: &role,
                decision: &d,
            };
            let reference = serde_json_canonicalizer::to_vec(&body.to_value()).expect("reference");
            let bytes = body.encode().expect("encodes");
            prop_assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&reference));
            let entry = Entry::encode_with_body(1, "decision", "lr_00", "acme", "2026-11-23T00:00:00.000Z", &bytes);
            let back = Entry::decode(&entry).expect("canonical entry decodes");
            prop_assert_eq!(back.body["decisionId"].as_str(), Some(ids.0.as_str()));
        }
    }

    /// The index writer holds no recorder, so dropping the last recorder ends it and releases the ledger (whose
    /// directory lock a restart in the same process needs), after committing what was queued.
    #[tokio::test]
    async fn dropping_the_last_recorder_ends_the_index_writer_and_releases_the_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger_dir = dir.path().join("ledger");
        let open = || Ledger::open(crate::ledger::LedgerConfig::new(ledger_dir.clone()));
        let store = Store::open(dir.path()).expect("store");
        let rec = Recorder::new(open().expect("ledger"), store.clone());
        let r = rec
            .policy_event("policy.activated", json!({"packs": []}))
            .await
            .expect("recorded");
        drop(rec);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let reopened = loop {
            match open() {
                Ok(l) => break l,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("the ledger is still held after the recorder was dropped: {e}"),
            }
        };
        assert_eq!(reopened.size(), r.ledger_index + 1);
        let rows = store
            .get_lineage(SYSTEM_TENANT, &r.lineage_id)
            .await
            .expect("store read");
        assert!(
            rows.is_some(),
            "the queued index row was committed before the writer ended"
        );
    }

    /// A failed index transaction (a trigger aborts inserts into `decisions`) hands its entries to background
    /// retries; the barrier waits for those too, so a read that starts after the answer (with the store healthy
    /// again) finds the decision. Found by the second review: the barrier used to release at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_after_a_failed_index_transaction_wait_for_its_retry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ledger =
            Ledger::open(crate::ledger::LedgerConfig::new(tmp.path().join("ledger"))).expect("ledger");
        let store = Store::open(tmp.path()).expect("store");
        let rec = Recorder::new(ledger, store);
        let c = rusqlite::Connection::open(tmp.path().join("kla.db")).expect("db");
        c.execute_batch(
            "CREATE TRIGGER injected_fault BEFORE INSERT ON decisions BEGIN SELECT RAISE(ABORT, 'injected'); END;",
        )
        .expect("trigger");
        let r = rec
            .decision(DecisionToRecord {
                tenant: "acme".into(),
                decision_id: "dec_retry".into(),
                agent_id: "a".into(),
                action: "x".into(),
                decision: "allow".into(),
                trace_id: None,
                execution_id: None,
                body: br#"{"decisionId":"dec_retry"}"#.to_vec(),
            })
            .await
            .expect("answered once durable");
        // Let the transaction fail (commit it now instead of after the linger), then heal the store before reading.
        rec.hurry_index(rec.queued.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.execute_batch("DROP TRIGGER injected_fault;").expect("drop");
        let got = rec.decision_record("acme", "dec_retry").await.expect("read");
        assert_eq!(
            got.map(|d| d.ledger_index),
            Some(r.ledger_index),
            "read-your-writes on the index failure path"
        );
    }

    /// The index writer gathers rows for [`INDEX_LINGER`] (60 s in unit tests, beyond the barrier's 2 s): a read
    /// finds a fresh decision only because the barrier hurries the writer, and a caller that waits for its rows'
    /// commit (agent registrations, policy events) gets it at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_waiting_callers_do_not_wait_for_the_index_linger() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ledger =
            Ledger::open(crate::ledger::LedgerConfig::new(tmp.path().join("ledger"))).expect("ledger");
        let rec = Recorder::new(ledger, Store::open(tmp.path()).expect("store"));
        for i in 0..3 {
            let id = format!("dec_{i}");
            let r = rec
                .decision(DecisionToRecord {
                    tenant: "acme".into(),
                    decision_id: id.clone(),
                    agent_id: "a".into(),
                    action: "x".into(),
                    decision: "allow".into(),
                    trace_id: None,
                    execution_id: None,
                    body: format!(r#"{{"decisionId":"{id}"}}"#).into_bytes(),
                })
                .await
                .expect("answered once durable");
            let got = rec.decision_record("acme", &id).await.expect("read");
            assert_eq!(got.map(|d| d.ledger_index), Some(r.ledger_index), "read {i}");
        }
        let waited = tokio::time::timeout(
            Duration::from_secs(10),
            rec.policy_event("policy.activated", json!({"packs": []})),
        )
        .await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "a waiting caller's rows are committed at once"
        );
    }

    #[test]
    fn a_context_beyond_two_to_the_53_falls_back_to_the_reference_encoder() {
        let d = Decision::fail_closed("POLICY_ERROR", None, Vec::new());
        let a = AgentRef::default();
        let context: Value = serde_json::from_str(r#"{"n":9007199254740993,"m":1.5}"#).expect("json");
        let body = DecisionBody {
            decision_id: "dec_1",
            agent: &a,
            action: "pay",
            context: &context,
            tool: None,
            execution_id: None,
            trace_id: None,
            subject: "s",
            role: "agent",
            decision: &d,
        };
        assert!(body.encode_direct().is_none(), "the direct writer declines");
        assert_eq!(
            body.encode().expect("fallback"),
            serde_json_canonicalizer::to_vec(&body.to_value()).expect("reference")
        );
    }
}
