//! One subscriber's position in the stream and how it moves: from the hub's ring while it is inside it, from disk
//! (the lineage index finds the tenant's entries, the ledger gives their bytes) while it is behind it, and waiting
//! for the hub while it is at the head. Memory per subscriber is bounded: a few pages of events at most.

use super::event::{EventId, EventType, Published, TypeSet};
use super::filter::Filter;
use super::hub::Inner;
use super::map::{EVENT_KINDS, events_of_entry};
use crate::ledger::Entry;
use crate::recorder::RecordError;
use crate::store::EventWindow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Events taken from the ring per look (the rest stay for the next).
const RING_BATCH: usize = 64;
/// Ledger positions one disk page spans at most (the index is asked about this window).
const WINDOW: u64 = 4096;
/// The tenant's entries read per disk page at most.
const PAGE: usize = 64;
/// Entries read per page when the index does not hold the whole window yet (its writer is behind or failing):
/// the ledger itself is read, every tenant's entries, so the window is smaller.
const FALLBACK_WINDOW: u64 = 256;
/// How often the index is asked again, after its barrier, before the ledger is read instead.
const INDEX_TRIES: u32 = 3;

/// What [`Subscription::next`] found.
#[derive(Debug)]
pub enum Step {
    /// The next event.
    Event(Arc<Published>),
    /// Nothing before the deadline: time for a heartbeat.
    Idle,
    /// The server is shutting down.
    Closed,
}

/// Counts a subscriber against the caps while it lives.
pub(super) struct Slot {
    pub(super) hub: Arc<Inner>,
    pub(super) tenant: Arc<str>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.release(&self.tenant);
    }
}

/// One subscriber. Dropping it unsubscribes.
pub struct Subscription {
    hub: Arc<Inner>,
    filter: Filter,
    /// The first position not yet looked at.
    next: EventId,
    pending: VecDeque<Arc<Published>>,
    head: watch::Receiver<u64>,
    /// Whether the index barrier was passed since this subscriber started reading from disk.
    barrier_passed: bool,
    _slot: Slot,
}

enum Look {
    /// Behind the ring: read the disk up to its start.
    Disk { to: u64 },
    /// Looked at the ring.
    Ring,
    /// At the head.
    Wait,
}

impl Subscription {
    pub(super) fn new(hub: Arc<Inner>, filter: Filter, next: EventId, slot: Slot) -> Subscription {
        let head = hub.head.subscribe();
        Subscription {
            hub,
            filter,
            next,
            pending: VecDeque::new(),
            head,
            barrier_passed: false,
            _slot: slot,
        }
    }

    /// The subscriber's filter (a WebSocket connection changes its interest as it subscribes).
    pub fn filter_mut(&mut self) -> &mut Filter {
        &mut self.filter
    }

    /// The id of the last position this subscriber has been given everything up to (what a client resumes
    /// from); meaningful while nothing is pending, which is when [`Step::Idle`] is returned.
    pub fn cursor(&self) -> Option<EventId> {
        match self.pending.front() {
            Some(p) => EventId::before(p.event.id),
            None => EventId::before(self.next),
        }
    }

    /// The next event for this subscriber, [`Step::Idle`] if none came by `deadline`, or [`Step::Closed`] on
    /// shutdown. Cancel-safe: the position moves only together with what it found, after every await.
    pub async fn next(&mut self, deadline: Instant) -> Result<Step, RecordError> {
        loop {
            if self.hub.closing.is_cancelled() {
                return Ok(Step::Closed);
            }
            if let Some(p) = self.pending.pop_front() {
                return Ok(Step::Event(p));
            }
            // Marked seen before the ring is read, so a publish after the read wakes the wait below.
            self.head.borrow_and_update();
            match self.look() {
                Look::Ring => {}
                Look::Disk { to } => self.catch_up(to).await?,
                Look::Wait => {
                    let closing = self.hub.closing.clone();
                    tokio::select! {
                        _ = closing.cancelled() => return Ok(Step::Closed),
                        _ = tokio::time::sleep_until(deadline) => return Ok(Step::Idle),
                        r = self.head.changed() => if r.is_err() {
                            return Ok(Step::Closed);
                        },
                    }
                }
            }
        }
    }

    /// Takes what the ring holds for this subscriber, or says where else to look.
    fn look(&mut self) -> Look {
        let r = self.hub.ring.read();
        if self.next.index < r.first {
            return Look::Disk { to: r.first };
        }
        if self.next.index >= r.next {
            return Look::Wait;
        }
        let start = r.events.partition_point(|p| p.event.id < self.next);
        let mut scanned = 0;
        for p in r.events.range(start..) {
            scanned += 1;
            if self.filter.matches(&p.event) {
                self.pending.push_back(p.clone());
            }
            if scanned == RING_BATCH {
                self.next = p.event.id.successor();
                return Look::Ring;
            }
        }
        // Everything up to the ring's end is seen (entries without events included).
        self.next = EventId::new(r.next, 0);
        Look::Ring
    }

    /// Reads the next page from disk, up to ledger position `to` (the ring's start).
    async fn catch_up(&mut self, to: u64) -> Result<(), RecordError> {
        let from = self.next.index;
        let wanted = self.filter.interest.types();
        let kinds = kinds_of(wanted);
        if kinds.is_empty() {
            // Nothing this subscriber wants can be on disk: skip to the ring.
            self.next = EventId::new(to, 0);
            return Ok(());
        }
        let recorder = self.hub.recorder.clone();
        if !self.barrier_passed {
            // Entries recorded before now are in the index (or being retried) once the barrier is passed.
            recorder.index_barrier().await;
            self.barrier_passed = true;
        }
        let window_end = to.min(from.saturating_add(WINDOW));
        let mut found = None;
        for attempt in 0..INDEX_TRIES {
            let p = recorder
                .event_positions(
                    self.filter.tenant(),
                    EventWindow {
                        kinds: &kinds,
                        from,
                        to: window_end,
                        limit: PAGE,
                    },
                )
                .await?;
            if p.complete {
                found = Some((Some(p.indices), p.end));
                break;
            }
            // An entry of the window is in the ledger but not yet in the index (its rows are still queued).
            recorder.index_barrier().await;
            tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
        }
        let (indices, end) = found.unwrap_or((None, to.min(from.saturating_add(FALLBACK_WINDOW))));
        let ledger = recorder.ledger().clone();
        let tenant = self.filter.tenant().clone();
        let entries = tokio::task::spawn_blocking(move || -> Result<Vec<(u64, Entry)>, RecordError> {
            let mut out = Vec::new();
            match indices {
                Some(indices) => {
                    for i in indices {
                        out.push((i, Entry::decode(&ledger.entry(i)?)?));
                    }
                }
                None => {
                    let mut i = from;
                    while i < end {
                        let stop = end.min(i + crate::ledger::log::MAX_ENTRIES_PER_READ);
                        for (bytes, at) in ledger.entries(i, stop)?.iter().zip(i..) {
                            let e = Entry::decode(bytes)?;
                            if *e.tenant == *tenant {
                                out.push((at, e));
                            }
                        }
                        i = stop;
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|_| RecordError::Ledger(crate::ledger::LedgerError::Closed))??;
        for (i, e) in &entries {
            for ev in events_of_entry(*i, e) {
                if ev.id >= self.next && self.filter.matches(&ev) {
                    self.pending.push_back(Arc::new(Published::new(ev)));
                }
            }
        }
        self.next = EventId::new(end, 0);
        Ok(())
    }
}

/// The entry kinds that can give any of `types`.
fn kinds_of(types: TypeSet) -> Vec<&'static str> {
    EVENT_KINDS
        .iter()
        .filter(|(_, gives)| gives.iter().any(|t: &EventType| types.contains(*t)))
        .map(|(k, _)| *k)
        .collect()
}
