//! The index writer and its read barrier. Index rows of recorded entries are group-committed by one task; a read
//! first waits until every job queued before it is finished (committed, or failed and handed to a background
//! retry that the barrier also waits for), which makes index reads read-your-writes without putting the index
//! commit on a decision's answer path.
//!
//! Why the barrier holds: a job's sequence number is raised with the queue permit in hand and the job is sent
//! with no await in between, so a reader that loads N has seen the count of every job sent before its load;
//! queue positions are given at send, so each of those jobs sits at a position <= N, and `finished >= N` covers
//! it. (Counts and positions may differ in order between two concurrent senders; that does not matter.)

use super::RecordError;
use super::record::rows_of_entry;
use crate::ledger::Ledger;
use crate::store::{IndexRows, Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot, watch};

const QUEUE: usize = 8192;
const BATCH: usize = 1024;
/// How long the writer gathers jobs after the first one before committing when nobody waits for them: larger
/// transactions rewrite fewer partly filled B-tree pages. A read at the barrier, or a job whose caller waits for
/// its commit, ends the gathering at once. (BENCHMARKS.md has the figures behind the value.)
#[cfg(not(test))]
const LINGER: Duration = Duration::from_millis(5);
/// Longer than [`BARRIER_WAIT`] in unit tests: a read that the barrier's nudge did not hurry would miss its rows.
#[cfg(test)]
const LINGER: Duration = Duration::from_secs(60);
/// How long an index read waits for queued index writes before reading what is committed (the writer is stuck or
/// failing; the read may then miss the newest entries, which are in the ledger and re-indexed at restart).
const BARRIER_WAIT: Duration = Duration::from_secs(2);

pub(super) struct Job {
    pub rows: IndexRows,
    /// Told the outcome when the caller waits for the index.
    pub done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
}

/// The queue into the index writer and the barrier over it. Cheap to clone.
#[derive(Clone)]
pub(super) struct Index {
    tx: mpsc::Sender<Job>,
    /// Jobs queued so far (a job's sequence number is the value after its increment).
    queued: Arc<AtomicU64>,
    /// Jobs the writer has finished, in queue order.
    finished: watch::Receiver<u64>,
    /// Background per-entry retries still running after a failed transaction.
    retrying: Arc<AtomicU64>,
    flush: Arc<Flush>,
}

/// How readers hurry the writer: the highest job sequence number a reader waits for, and the nudge that makes
/// the writer commit now instead of gathering more.
struct Flush {
    wanted: AtomicU64,
    nudge: Notify,
}

impl Index {
    /// Spawns the writer on the current runtime. The writer holds the ledger and the store, not an `Index`: when
    /// the last `Index` is dropped the queue closes, and the writer commits what is left and ends.
    pub fn spawn(ledger: Ledger, store: Store) -> Index {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (finished_tx, finished) = watch::channel(0u64);
        let index = Index {
            tx,
            queued: Arc::new(AtomicU64::new(0)),
            finished,
            retrying: Arc::new(AtomicU64::new(0)),
            flush: Arc::new(Flush {
                wanted: AtomicU64::new(0),
                nudge: Notify::new(),
            }),
        };
        let barrier = Barrier {
            finished: Arc::new(finished_tx),
            retrying: index.retrying.clone(),
        };
        tokio::spawn(writer(ledger, store, rx, barrier, index.flush.clone()));
        index
    }

    /// Queues the rows of the entry at `ledger_index`; returns a receiver when `wait` asks for the commit.
    pub async fn queue(
        &self,
        rows: IndexRows,
        wait: bool,
    ) -> Option<oneshot::Receiver<Result<(), Arc<StoreError>>>> {
        let ledger_index = rows.lineage.ledger_index;
        let (done, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        match self.tx.reserve().await {
            Ok(permit) => {
                self.queued.fetch_add(1, Ordering::SeqCst);
                permit.send(Job { rows, done });
                rx
            }
            Err(_) => {
                tracing::error!(
                    ledger_index,
                    "index writer stopped; the entry is re-indexed at the next start"
                );
                None
            }
        }
    }

    /// Waits until every job queued before this call is finished (bounded by [`BARRIER_WAIT`]).
    pub async fn barrier(&self) {
        let target = self.queued.load(Ordering::SeqCst);
        let retrying = &self.retrying;
        let ready = |n: &u64| *n >= target && retrying.load(Ordering::SeqCst) == 0;
        let mut finished = self.finished.clone();
        if ready(&finished.borrow()) {
            return;
        }
        self.hurry(target);
        let wait = finished.wait_for(ready);
        if tokio::time::timeout(BARRIER_WAIT, wait).await.is_err() {
            tracing::warn!(target, "index writer is behind; reading the committed index");
        }
    }

    /// Makes the writer commit what it is gathering now, up to job `target`, rather than at the end of its linger.
    fn hurry(&self, target: u64) {
        self.flush.wanted.fetch_max(target, Ordering::SeqCst);
        self.flush.nudge.notify_one();
    }

    /// Commits what is being gathered now (tests that must see a transaction fail before they go on).
    #[cfg(test)]
    pub fn hurry_all(&self) {
        self.hurry(self.queued.load(Ordering::SeqCst));
    }
}

/// What the writer publishes for the barrier.
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
/// how many jobs are finished and tells the jobs that wait. A failed batch is retried entry by entry in the
/// background, rebuilt from the ledger.
async fn writer(
    ledger: Ledger,
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    barrier: Barrier,
    flush: Arc<Flush>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    let mut done = 0u64;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        // Someone waits for these rows: a caller for its job's commit, or a reader at the barrier for every job
        // up to `wanted` (jobs are numbered in queue order, so the batch covers them once it is long enough).
        let mut urgent = batch.iter().any(|j| j.done.is_some());
        while batch.len() < BATCH && !urgent {
            let wanted = flush.wanted.load(Ordering::SeqCst);
            if wanted > done && done + batch.len() as u64 >= wanted {
                break;
            }
            let (room, before) = (BATCH - batch.len(), batch.len());
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
        let mut rows = Vec::with_capacity(batch.len());
        let mut waiting = Vec::new();
        for j in batch.drain(..) {
            rows.push(j.rows);
            waiting.extend(j.done);
        }
        let indices: Vec<u64> = rows.iter().map(|r| r.lineage.ledger_index).collect();
        let result = store.index_entries(rows).await.map_err(Arc::new);
        if let Err(e) = &result {
            tracing::error!(error = %e, entries = indices.len(), "indexing failed; retrying in the background");
            for i in indices {
                retry(&ledger, &store, i, &barrier);
            }
        }
        done += n;
        barrier.finished.send_replace(done);
        for tx in waiting {
            let _ = tx.send(result.clone());
        }
    }
}

/// Re-indexes one entry in the background, rebuilding its rows from the ledger (the same path as re-indexing at
/// startup), so the hot path keeps no copy of them for this rare case.
fn retry(ledger: &Ledger, store: &Store, ledger_index: u64, barrier: &Barrier) {
    let (ledger, store) = (ledger.clone(), store.clone());
    let barrier = barrier.clone();
    barrier.retrying.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(async move {
        // Counted down however the task ends (success, giving up, or the runtime dropping it).
        let _done = RetryDone(barrier);
        for attempt in 1..=8u32 {
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
            let result = match ledger
                .entry(ledger_index)
                .map_err(RecordError::from)
                .and_then(|bytes| rows_of_entry(&bytes, ledger_index))
            {
                Ok(rows) => store.index_entries(vec![rows]).await.map_err(RecordError::from),
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
