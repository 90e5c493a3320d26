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

use crate::ledger::{Entry, Ledger, LedgerError, new_lineage_id};
use crate::store::{DecisionRecord, LineageRecord, Store, StoreError};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Tenant recorded on entries that belong to no tenant (policy activations and refusals).
pub const SYSTEM_TENANT: &str = "_system";
const INDEX_QUEUE: usize = 8192;
const INDEX_BATCH: usize = 1024;
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

/// A decision to record, with its full API response body.
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
    /// The ledger body: input, matched rules, pack digests, outcome (moved into the entry).
    pub body: Value,
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
        };
        tokio::spawn(index_writer(recorder.clone(), rx, finished_tx));
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
        body: Value,
        decision: Option<DecisionToRecord>,
        wait_index: bool,
    ) -> Result<(Recorded, String), RecordError> {
        let lineage_id = new_lineage_id();
        let time = crate::time::now_rfc3339();
        let entry = Entry {
            v: 1,
            kind: kind.to_owned(),
            lineage_id: lineage_id.clone(),
            tenant: tenant.to_owned(),
            time: time.clone(),
            body,
        };
        let ledger_index = self.ledger.append(entry.encode()?).await?;
        let (lineage, decision) = index_records(&entry, ledger_index, decision);
        let (done, wait) = if wait_index {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // The entry is durable: from here on the answer is success, or a retry would record it twice. An index
        // failure is retried in the background by the writer (and replayed from the ledger at the next start).
        // The sequence number is taken with the queue's permit in hand, so queue order = sequence order.
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

    /// Re-indexes one entry in the background, rebuilding its rows from the ledger (the same path as
    /// [`Recorder::reindex`]), so the hot path keeps no copy of them for this rare case.
    fn retry_index(&self, ledger_index: u64) {
        let (ledger, store) = (self.ledger.clone(), self.store.clone());
        tokio::spawn(async move {
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

    /// Records a decision.
    pub async fn decision(&self, mut d: DecisionToRecord) -> Result<Recorded, RecordError> {
        let tenant = d.tenant.clone();
        let body = std::mem::take(&mut d.body);
        Ok(self.record("decision", &tenant, body, Some(d), false).await?.0)
    }

    /// Records an agent registration (a new agent or a new version).
    pub async fn agent_registered(&self, tenant: &str, body: Value) -> Result<Recorded, RecordError> {
        Ok(self.record("agent.registered", tenant, body, None, true).await?.0)
    }

    /// Records a policy activation or refusal (`kind` is `policy.activated` or `policy.refused`).
    pub async fn policy_event(&self, kind: &str, body: Value) -> Result<Recorded, RecordError> {
        Ok(self.record(kind, SYSTEM_TENANT, body, None, true).await?.0)
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
        body: Value::Null,
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

/// Group-commits index writes: takes everything queued (up to a batch), writes one transaction, then publishes
/// how many jobs are finished (for the read barrier) and tells the jobs that wait. A failed batch is retried
/// entry by entry in the background, rebuilt from the ledger.
async fn index_writer(rec: Recorder, mut rx: mpsc::Receiver<IndexJob>, finished: watch::Sender<u64>) {
    let mut batch: Vec<IndexJob> = Vec::with_capacity(INDEX_BATCH);
    let mut done = 0u64;
    while rx.recv_many(&mut batch, INDEX_BATCH).await > 0 {
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
        let result = rec
            .store
            .index_entries(lineage, decisions)
            .await
            .map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = indices.len(), "indexing failed; retrying in the background");
            for i in indices {
                rec.retry_index(i);
            }
        }
        done += n;
        finished.send_replace(done);
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
        let mut finished = self.finished.clone();
        if *finished.borrow() >= target {
            return;
        }
        let wait = finished.wait_for(|&n| n >= target);
        if tokio::time::timeout(BARRIER_WAIT, wait).await.is_err() {
            tracing::warn!(target, "index writer is behind; reading the committed index");
        }
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
