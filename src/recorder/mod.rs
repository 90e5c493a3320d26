//! The one path by which kla writes its tamper-evident record, and the one way the rest of kla reads its index.
//!
//! The recorder turns a [`Record`] (a decision, an agent registration, a policy activation or refusal, an
//! approval change, a span batch, an execution's transition) into a versioned ledger [`Entry`] whose body is its kind's
//! typed body ([`body`]), appends it durably (the ledger acknowledges only
//! after fsync), and then queues its index rows so it can be found by lineage, decision, trace or execution id.
//!
//! **One write order for every kind: ledger first, index second.** The ledger is the source of truth and the
//! store's index is derived from it; re-indexing at startup ([`Recorder::reindex`]) replays whatever the index has
//! not seen, so a crash between the two writes, or a lost `kla.db`, loses nothing that was acknowledged. Nothing is
//! ever written to the index that the ledger does not hold, so there is nothing to reconcile the other way.
//!
//! Decisions are answered once their entry is durable, without waiting for the index commit; reads stay
//! read-your-writes because every index read here first passes the index barrier (`index.rs`). Records that must
//! be visible to the next write of their kind (registrations) wait for their index rows. [`Recorder::follow`]
//! follows recorded entries in ledger order (`follow.rs`). The recorder knows no HTTP.

pub mod body;
mod decision_body;
mod follow;
mod index;
mod record;
mod reindex;

pub use decision_body::{ApprovalTerms, DecisionBody};
pub use follow::{FollowError, Followed, Follower};
pub use record::{
    ApprovalChange, DecisionEntry, ExecutionChange, Kind, OpenedApproval, Record, Registration,
    SYSTEM_TENANT, SpanBatch, kind,
};

use crate::ledger::{Entry, Ledger, LedgerError, new_lineage_id};
use crate::store::{AgentRecord, DecisionRecord, LineageKey, LineagePage, LineageRecord, Store, StoreError};
use index::Index;
use record::{Header, index_rows};

/// Errors of recording and of index reads: the ledger or the store failed (kla's side).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl crate::error::Classify for RecordError {
    fn class(&self) -> crate::error::Class {
        use crate::error::Class;
        match self {
            // An entry kla built was refused or the ledger failed: never the caller's input at this point.
            RecordError::Ledger(LedgerError::Io { .. } | LedgerError::Closed) => Class::Unavailable,
            RecordError::Ledger(_) => Class::Internal,
            RecordError::Store(e) => e.class(),
        }
    }
}

/// Where an entry landed.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `lr_...`.
    pub lineage_id: String,
    pub ledger_index: u64,
    /// The entry's time (RFC 3339, milliseconds).
    pub time: String,
}

/// Records entries. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    ledger: Ledger,
    store: Store,
    index: Index,
}

impl Recorder {
    /// A recorder over `ledger` and `store`; spawns the index writer on the current runtime.
    pub fn new(ledger: Ledger, store: Store) -> Recorder {
        let index = Index::spawn(ledger.clone(), store.clone());
        Recorder { ledger, store, index }
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Appends one entry (durable: fsynced before the ledger acknowledges) and queues its index rows; waits for
    /// their commit when the record asks for it ([`Record::waits_for_index`]).
    pub async fn record(&self, record: Record) -> Result<Recorded, RecordError> {
        self.record_then(record, |_| {}).await
    }

    /// As [`Recorder::record`], and calls `durable` as soon as the entry is durable, before its index rows are
    /// committed (whoever waits for the outcome can be told while the index catches up).
    pub async fn record_then(
        &self,
        record: Record,
        durable: impl FnOnce(&Recorded) + Send,
    ) -> Result<Recorded, RecordError> {
        let kind = record.kind();
        let tenant = record.tenant().to_owned();
        let wait = record.waits_for_index();
        let (body, keys) = record.into_parts()?;
        let lineage_id = new_lineage_id();
        let time = crate::time::now_rfc3339();
        let v = crate::ledger::entry::ENTRY_VERSION;
        let bytes = Entry::encode_with_body(v, kind, &lineage_id, &tenant, &time, &body.0);
        let ledger_index = self.ledger.append(bytes).await?;
        let recorded = Recorded {
            lineage_id,
            ledger_index,
            time,
        };
        durable(&recorded);
        let Recorded {
            lineage_id,
            ledger_index,
            time,
        } = recorded;
        // The entry is durable: from here on the answer is success, or a retry would record it twice. An index
        // failure is retried in the background by the writer (and replayed from the ledger at the next start).
        let header = Header {
            lineage_id: &lineage_id,
            tenant: &tenant,
            kind,
            time: &time,
        };
        let rows = index_rows(&header, ledger_index, keys);
        if let Some(done) = self.index.queue(rows, wait).await {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, ledger_index, "index commit failed; retried in the background");
                }
                Err(_) => tracing::error!(
                    ledger_index,
                    "index writer stopped; the entry is re-indexed at the next start"
                ),
            }
        }
        Ok(Recorded {
            lineage_id,
            ledger_index,
            time,
        })
    }

    /// Follows recorded entries in ledger order from position `from` (see `follow.rs`).
    pub fn follow(&self, from: u64) -> Result<Follower, FollowError> {
        Follower::new(self.ledger.clone(), from)
    }

    /// Waits (bounded like a read) until every queued index job is committed. Shutdown calls it after the last
    /// request, so the process does not exit with index rows still queued (the next start would re-index them).
    pub async fn flush_index(&self) {
        self.index.barrier().await;
    }

    /// A lineage entry of a tenant (read-your-writes, see the module docs).
    pub async fn lineage(
        &self,
        tenant: &str,
        lineage_id: &str,
    ) -> Result<Option<LineageRecord>, RecordError> {
        self.index.barrier().await;
        Ok(self.store.get_lineage(tenant, lineage_id).await?)
    }

    /// Lineage entries of a tenant selected by `key`, at most `limit` (read-your-writes).
    pub async fn find_lineage(
        &self,
        tenant: &str,
        key: &LineageKey,
        limit: usize,
    ) -> Result<Vec<LineageRecord>, RecordError> {
        self.index.barrier().await;
        Ok(self.store.find_lineage(tenant, key, limit).await?)
    }

    /// One page of a tenant's lineage entries (see [`LineagePage`]), once the index holds every recorded entry
    /// (read-your-writes).
    pub async fn find_lineage_page(
        &self,
        tenant: &str,
        page: LineagePage<'_>,
    ) -> Result<Vec<LineageRecord>, RecordError> {
        self.index.barrier().await;
        Ok(self.store.find_lineage_page(tenant, page).await?)
    }

    /// One page of a tenant's agents by name, each with its latest version only: named after `after`, at most
    /// `limit`; with `agent` (an id or name) only that agent (read-your-writes).
    pub async fn agents_page(
        &self,
        tenant: &str,
        agent: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AgentRecord>, RecordError> {
        self.index.barrier().await;
        Ok(self.store.list_agents_page(tenant, agent, after, limit).await?)
    }

    /// The index row of a tenant's decision (read-your-writes).
    pub async fn decision_record(
        &self,
        tenant: &str,
        decision_id: &str,
    ) -> Result<Option<DecisionRecord>, RecordError> {
        self.index.barrier().await;
        Ok(self.store.get_decision(tenant, decision_id).await?)
    }

    /// The decoded ledger entry of a tenant's decision, with its index row (read-your-writes).
    pub async fn decision_entry(
        &self,
        tenant: &str,
        decision_id: &str,
    ) -> Result<Option<(DecisionRecord, Entry)>, RecordError> {
        let Some(rec) = self.decision_record(tenant, decision_id).await? else {
            return Ok(None);
        };
        let entry = Entry::decode(&self.ledger.entry(rec.ledger_index)?)?;
        Ok(Some((rec, entry)))
    }

    /// Waits until the index holds every entry recorded before this call. For readers that go through this
    /// recorder's own read methods (the event stream); modules that read the store's index take [`Recorder::indexed`].
    pub async fn index_barrier(&self) {
        self.index.barrier().await;
    }

    /// The index past the barrier: it holds every entry recorded before this call (read-your-writes). The domain
    /// modules that read index rows themselves (approvals, registrations) hold no `Store` and read only through
    /// this, so a read that forgot the barrier does not compile.
    pub async fn indexed(&self) -> Indexed<'_> {
        self.index.barrier().await;
        Indexed { store: &self.store }
    }

    /// The index as it is now, possibly a batch behind the ledger: for readers whose rows were indexed long ago
    /// (the approval expiry service's due approvals), each call saying why.
    pub fn index_as_is(&self) -> Indexed<'_> {
        Indexed { store: &self.store }
    }
}

/// A read handle on the index, obtained from [`Recorder::indexed`] (past the barrier) or
/// [`Recorder::index_as_is`]. With several replicas on one sequenced ledger, passing the barrier becomes "the index
/// has integrated up to the sequence this replica has seen" (docs/replicas.md).
pub struct Indexed<'a> {
    store: &'a Store,
}

impl std::ops::Deref for Indexed<'_> {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.store
    }
}

/// The agent (id, name) an entry belongs to: a decision's `agent`, a registration's agent, an approval change's
/// agent, an execution's agent; `None` for every other kind (policy events and spans belong to no agent) and for a body that does not
/// read as its kind's.
pub fn entry_agent(e: &Entry) -> Option<(String, String)> {
    use body::RecordBody;
    match Kind::parse(&e.kind)? {
        Kind::Decision => body::Decision::of_entry(e)
            .ok()
            .map(|b| (b.agent.id, b.agent.name)),
        Kind::AgentRegistered => {
            let b = body::AgentRegistered::of_entry(e).ok()?;
            let name = b.name()?.to_owned();
            Some((b.agent_id, name))
        }
        Kind::ApprovalVoted | Kind::ApprovalResolved => {
            let of = body::ApprovalChangeBody::of_entry(e).ok()?.of().clone();
            Some((of.agent_id, of.agent_name?))
        }
        Kind::ExecutionTransition => body::ExecutionTransition::of_entry(e)
            .ok()
            .map(|b| (b.agent_id, b.agent_name)),
        Kind::PolicyActivated | Kind::PolicyRefused | Kind::TraceSpans => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::policy::{Outcome, PolicyEvent};
    use crate::test_support::recorder::{TempRecorder, open_ledger};
    use std::time::Duration;

    fn decision(id: &str) -> Record {
        Record::Decision(DecisionEntry {
            tenant: "acme".into(),
            decision_id: id.into(),
            agent_id: "a".into(),
            action: "x".into(),
            outcome: Outcome::Allow,
            trace_id: None,
            execution_id: None,
            approval: None,
            uses_approval: None,
            body: crate::recorder::body::samples::decision_with_id(id, false),
        })
    }

    fn activation() -> Record {
        Record::Policy(PolicyEvent::Activated { packs: Vec::new() })
    }

    /// The index writer holds no recorder, so dropping the last recorder ends it and releases the ledger (whose
    /// directory lock a restart in the same process needs), after committing what was queued.
    #[tokio::test]
    async fn dropping_the_last_recorder_ends_the_index_writer_and_releases_the_ledger() {
        let TempRecorder {
            recorder: rec,
            store,
            dir,
        } = TempRecorder::new();
        let r = rec.record(activation()).await.expect("recorded");
        drop(rec);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let reopened = loop {
            match open_ledger(dir.path()) {
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
    /// again) finds the decision.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_after_a_failed_index_transaction_wait_for_its_retry() {
        let TempRecorder {
            recorder: rec,
            store,
            dir: _dir,
        } = TempRecorder::new();
        store.fail_decision_inserts(true).await.expect("trigger");
        let r = rec
            .record(decision("dec_retry"))
            .await
            .expect("answered once durable");
        // Let the transaction fail (commit it now instead of after the linger), then heal the store before reading.
        rec.index.hurry_all();
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.fail_decision_inserts(false).await.expect("drop");
        let got = rec.decision_record("acme", "dec_retry").await.expect("read");
        assert_eq!(
            got.map(|d| d.ledger_index),
            Some(r.ledger_index),
            "read-your-writes on the index failure path"
        );
    }

    /// The index writer gathers rows for its linger (60 s in unit tests, beyond the barrier's 2 s): a read
    /// finds a fresh decision only because the barrier hurries the writer, and a caller that waits for its rows'
    /// commit (agent registrations, policy events) gets it at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_and_waiting_callers_do_not_wait_for_the_index_linger() {
        let t = TempRecorder::new();
        let rec = &t.recorder;
        for i in 0..3 {
            let id = format!("dec_{i}");
            let r = rec.record(decision(&id)).await.expect("answered once durable");
            let got = rec.decision_record("acme", &id).await.expect("read");
            assert_eq!(got.map(|d| d.ledger_index), Some(r.ledger_index), "read {i}");
        }
        let waited = tokio::time::timeout(Duration::from_secs(10), rec.record(activation())).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "a waiting caller's rows are committed at once"
        );
    }
}
