//! Following what was recorded, in ledger order: the seam the event stream, webhooks and other consumers of
//! "what just happened" build on.
//!
//! A [`Follower`] reads durable entries from the ledger itself, from any position, and then waits for the log to
//! grow. Position = ledger index, so a consumer that stores the last position it handled resumes exactly there
//! after a restart. It holds at most one read batch in memory, and a follower that falls behind loses nothing:
//! it keeps reading from disk until it has caught up (its distance is [`Follower::behind`]); no producer ever
//! waits for a follower. A consumer that needs one tenant's entries from far back asks the index where they are
//! ([`Recorder::event_positions`], which also says whether the index holds every entry of the window yet) and
//! reads only those.

use super::{RecordError, Recorder};
use crate::ledger::{Entry, Ledger, LedgerError};
use crate::store::{EventPositions, EventWindow};
use std::collections::VecDeque;
use tokio::sync::watch;

/// Entries read from the ledger per batch.
const BATCH: u64 = 256;

/// One recorded entry, at its ledger position.
#[derive(Debug, Clone)]
pub struct Followed {
    pub ledger_index: u64,
    pub entry: Entry,
}

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The requested start is beyond the end of the log (a position from another ledger, or a typo).
    #[error("position {from} is beyond the end of the ledger ({size} entries)")]
    Ahead {
        /// The requested position.
        from: u64,
        /// Entries in the ledger.
        size: u64,
    },
    /// The ledger has shut down.
    #[error("the ledger has shut down")]
    Closed,
    /// An entry could not be read or decoded.
    #[error(transparent)]
    Read(#[from] RecordError),
}

impl crate::error::Classify for FollowError {
    fn class(&self) -> crate::error::Class {
        match self {
            FollowError::Ahead { .. } => crate::error::Class::Invalid,
            FollowError::Closed => crate::error::Class::Unavailable,
            FollowError::Read(e) => e.class(),
        }
    }
}

/// Reads recorded entries in order from a position, then follows the log as it grows.
pub struct Follower {
    ledger: Ledger,
    size: watch::Receiver<u64>,
    next: u64,
    buf: VecDeque<Followed>,
}

impl Follower {
    pub(super) fn new(ledger: Ledger, from: u64) -> Result<Follower, FollowError> {
        // Subscribe before reading the size, so no growth between the two is missed.
        let size = ledger.watch_size();
        let now = ledger.size();
        if from > now {
            return Err(FollowError::Ahead { from, size: now });
        }
        Ok(Follower {
            ledger,
            size,
            next: from,
            buf: VecDeque::new(),
        })
    }

    /// The position of the next entry [`Self::next`] returns.
    pub fn position(&self) -> u64 {
        self.next - self.buf.len() as u64
    }

    /// How many durable entries are not yet returned.
    pub fn behind(&self) -> u64 {
        self.ledger.size().saturating_sub(self.position())
    }

    /// The next entry if it is already read (no wait, no disk read): lets a consumer take a batch at once.
    pub fn next_buffered(&mut self) -> Option<Followed> {
        self.buf.pop_front()
    }

    /// The next entry, waiting for one to be recorded if the follower has caught up.
    pub async fn next(&mut self) -> Result<Followed, FollowError> {
        loop {
            if let Some(f) = self.buf.pop_front() {
                return Ok(f);
            }
            let size = *self.size.borrow_and_update();
            let size = size.max(self.ledger.size());
            if size > self.next {
                let (ledger, start) = (self.ledger.clone(), self.next);
                let end = size.min(start + BATCH);
                let read = tokio::task::spawn_blocking(move || -> Result<Vec<Followed>, RecordError> {
                    let bytes = ledger.entries(start, end)?;
                    bytes
                        .iter()
                        .zip(start..)
                        .map(|(b, ledger_index)| {
                            Ok(Followed {
                                ledger_index,
                                entry: Entry::decode(b)?,
                            })
                        })
                        .collect()
                })
                .await
                .map_err(|_| FollowError::Closed)??;
                self.next = end;
                self.buf.extend(read);
                continue;
            }
            if self.size.changed().await.is_err() {
                return Err(FollowError::Closed);
            }
        }
    }
}

impl Recorder {
    /// Where `tenant`'s entries of the `window` are, for a
    /// consumer that catches up from disk (see [`EventPositions`]: the answer says whether the index holds every
    /// entry of the window yet). Does not pass the index barrier: callers pass it once ([`Recorder::index_barrier`])
    /// and rely on `complete` after that.
    pub async fn event_positions(
        &self,
        tenant: &str,
        window: EventWindow<'_>,
    ) -> Result<EventPositions, RecordError> {
        Ok(self.store.event_positions(tenant, window).await?)
    }
}

impl From<LedgerError> for FollowError {
    fn from(e: LedgerError) -> Self {
        FollowError::Read(RecordError::Ledger(e))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::Record;
    use super::*;
    use crate::policy::PolicyEvent;
    use crate::test_support::recorder::TempRecorder;
    use std::time::Duration;

    fn event(i: usize) -> Record {
        Record::Policy(PolicyEvent::Refused {
            source: format!("pack-{i}"),
            reason: "test".into(),
        })
    }

    /// A follower started at 0 sees every entry in ledger order, those recorded before it started and after,
    /// including more than one read batch while it was not reading, and a follower from a later position starts
    /// exactly there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_see_every_entry_in_order_from_their_position() {
        let t = TempRecorder::new();
        let rec = &t.recorder;
        for i in 0..3 {
            rec.record(event(i)).await.expect("record");
        }
        let mut from_start = rec.follow(0).expect("follow");
        let mut from_two = rec.follow(2).expect("follow");
        let total = 3 + BATCH as usize + 10;
        for i in 3..total {
            rec.record(event(i)).await.expect("record");
        }
        assert_eq!(from_start.behind(), total as u64);
        for i in 0..total {
            let f = tokio::time::timeout(Duration::from_secs(10), from_start.next())
                .await
                .expect("no stall")
                .expect("entry");
            assert_eq!(f.ledger_index, i as u64);
            assert_eq!(f.entry.body["source"], format!("pack-{i}"));
        }
        assert_eq!(from_two.next().await.expect("entry").ledger_index, 2);
        // Caught up: the next entry arrives when it is recorded.
        let waiting = tokio::spawn(async move { from_start.next().await.map(|f| f.ledger_index) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing new was recorded yet");
        rec.record(event(total)).await.expect("record");
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken");
        assert_eq!(got.expect("task").expect("entry"), total as u64);
    }

    #[tokio::test]
    async fn a_position_beyond_the_log_is_refused() {
        let t = TempRecorder::new();
        let rec = &t.recorder;
        rec.record(event(0)).await.expect("record");
        assert!(rec.follow(1).is_ok(), "the end of the log is a valid position");
        assert!(matches!(
            rec.follow(2),
            Err(FollowError::Ahead { from: 2, size: 1 })
        ));
    }
}
