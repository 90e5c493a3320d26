//! The hub: one follower of the ledger for every subscriber of a server, a bounded ring of recent events, the
//! subscriber caps, and where a new subscription starts (or why it must resync).
//!
//! The follower runs only while someone listens (and for a short linger after the last one leaves, so a client
//! that reconnects at once is served from memory). It decodes each entry once and renders its events once; a
//! thousand subscribers then cost a thousand wake-ups and reference-count increments per event, not a thousand
//! decodes. The ring is complete for the ledger range `[first, next)`: every event of every entry in that range is
//! in it (entries without events leave nothing). A subscriber positioned before `first` catches up from disk.

use super::event::{EventId, Published};
use super::filter::Filter;
use super::map::events_of_entry;
use super::subscription::{Slot, Subscription};
use crate::error::{Class, Classify};
use crate::ledger::Entry;
use crate::recorder::{FollowError, Followed, RecordError, Recorder};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// What the hub and its subscribers are allowed.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How far back a resume may start: an older `Last-Event-ID` gets `resync_required`.
    pub retention: Duration,
    /// How often an idle stream sends a heartbeat (SSE comment, WebSocket ping).
    pub heartbeat: Duration,
    /// Subscribers of the whole server at most (beyond: 503).
    pub max_subscribers: usize,
    /// Subscribers of one tenant at most (beyond: 429).
    pub max_subscribers_per_tenant: usize,
    /// Recent events kept in memory.
    pub ring_events: usize,
    /// How long the follower keeps running after the last subscriber left.
    pub linger: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            retention: Duration::from_secs(7 * 24 * 3600),
            heartbeat: Duration::from_secs(15),
            max_subscribers: 4096,
            max_subscribers_per_tenant: 1024,
            ring_events: 4096,
            linger: Duration::from_secs(30),
        }
    }
}

/// Entries handed from the follower to the ring at once (one wake-up of every subscriber per batch).
const PUBLISH_BATCH: usize = 256;

/// The event stream of one server. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) recorder: Recorder,
    pub(super) cfg: HubConfig,
    pub(super) ring: RwLock<Ring>,
    /// `ring.next`, published after every change of the ring.
    pub(super) head: watch::Sender<u64>,
    counts: Mutex<Counts>,
    /// A subscriber arrived: the follower starts if it is not running.
    wake: Notify,
    /// The server is shutting down: every stream ends.
    pub(super) closing: CancellationToken,
}

/// Recent events: complete for the ledger range `[first, next)`, in id order.
pub(super) struct Ring {
    pub(super) first: u64,
    pub(super) next: u64,
    pub(super) events: VecDeque<Arc<Published>>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    tenants: HashMap<Arc<str>, usize>,
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// The tenant's cap.
    #[error(
        "tenant '{tenant}' already has {limit} event subscribers (events.max-subscribers-per-tenant); close one or retry later"
    )]
    TenantFull { tenant: String, limit: usize },
    /// The server's cap.
    #[error("kla already serves {limit} event subscribers (events.max-subscribers); retry later")]
    Full { limit: usize },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Closing,
    /// The resume position could not be read.
    #[error(transparent)]
    Read(#[from] RecordError),
}

impl Classify for SubscribeError {
    fn class(&self) -> Class {
        match self {
            SubscribeError::TenantFull { .. } => Class::RateLimited,
            SubscribeError::Full { .. } | SubscribeError::Closing => Class::Unavailable,
            SubscribeError::Read(e) => e.class(),
        }
    }
}

/// Why a resume position cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// Its entry is older than the retention.
    Expired,
    /// It is beyond the end of the ledger (another ledger's position, or a made-up one).
    Ahead,
}

impl ResyncReason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncReason::Expired => "expired",
            ResyncReason::Ahead => "ahead",
        }
    }
}

/// A resume position that cannot be served: the stream restarts at the head of the ledger instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    pub reason: ResyncReason,
    /// The position asked for.
    pub last_event_id: EventId,
    /// Where the stream restarts: the id just before the head (`None` for an empty ledger).
    pub restart_after: Option<EventId>,
}

impl Resync {
    /// The `resync_required` message as one line of JSON, in the envelope of events:
    /// `{"id","type":"resync_required","createdAt","data":{"reason","lastEventId","restartAfter"}}`, where `id`
    /// and `restartAfter` are where the stream restarts (`null` for an empty ledger).
    pub fn json(&self) -> String {
        let restart = self.restart_after.map(|id| id.to_string());
        let data = serde_json::json!({
            "reason": self.reason.as_str(),
            "lastEventId": self.last_event_id.to_string(),
            "restartAfter": restart,
        });
        let env = serde_json::json!({
            "id": restart,
            "type": RESYNC_REQUIRED,
            "createdAt": crate::time::now_rfc3339(),
            "data": data,
        });
        env.to_string()
    }

    /// The SSE message: with the restart position as its `id:`, so a client that reconnects after it resumes from
    /// there and is not sent the resync again.
    pub fn sse(&self) -> bytes::Bytes {
        super::event::sse_frame(self.restart_after, RESYNC_REQUIRED, &self.json())
    }
}

/// The `type` (SSE `event:`) of the resync message.
pub const RESYNC_REQUIRED: &str = "resync_required";

impl Hub {
    /// A hub over `recorder`'s ledger. Streams end when `closing` is cancelled (the server's shutdown); the
    /// follower runs in [`Hub::run`], which the server supervises as a service.
    pub fn new(recorder: Recorder, cfg: HubConfig, closing: CancellationToken) -> Hub {
        let size = recorder.ledger().size();
        let (head, _) = watch::channel(size);
        Hub {
            inner: Arc::new(Inner {
                recorder,
                cfg,
                ring: RwLock::new(Ring {
                    first: size,
                    next: size,
                    events: VecDeque::new(),
                }),
                head,
                counts: Mutex::new(Counts::default()),
                wake: Notify::new(),
                closing,
            }),
        }
    }

    /// The hub's limits.
    pub fn config(&self) -> &HubConfig {
        &self.inner.cfg
    }

    /// Subscribers right now.
    pub fn subscribers(&self) -> usize {
        self.inner.counts.lock().total
    }

    /// A new subscription with `filter`, after `from` (a `Last-Event-ID`) or at the head of the ledger. A `from`
    /// beyond the ledger, or one whose catch-up would start at an entry older than the retention, starts at the
    /// head instead, with the [`Resync`] to announce first. (A position at the head is never stale: a client whose
    /// last id is the last entry's resumes however long the ledger was quiet.)
    pub async fn subscribe(
        &self,
        filter: Filter,
        from: Option<EventId>,
    ) -> Result<(Subscription, Option<Resync>), SubscribeError> {
        if self.inner.closing.is_cancelled() {
            return Err(SubscribeError::Closing);
        }
        let slot = self.take_slot(filter.tenant())?;
        let ledger = self.inner.recorder.ledger().clone();
        let size = ledger.size();
        let head = EventId::new(size, 0);
        let resync = |reason| Resync {
            reason,
            last_event_id: from.unwrap_or(head),
            restart_after: EventId::before(head),
        };
        let (next, resync) = match from {
            None => (head, None),
            Some(id) if id.index >= size => (head, Some(resync(ResyncReason::Ahead))),
            // After the last entry: nothing to catch up, however old that entry is.
            Some(id) if id.successor().index >= size => (id.successor(), None),
            Some(id) => {
                // Stale when the first entry to deliver from is older than the retention.
                let next = id.successor();
                let index = next.index;
                let time = tokio::task::spawn_blocking(move || -> Result<String, RecordError> {
                    Ok(Entry::decode(&ledger.entry(index)?)?.time)
                })
                .await
                .map_err(|_| SubscribeError::Closing)??;
                if self.expired(&time) {
                    (head, Some(resync(ResyncReason::Expired)))
                } else {
                    (next, None)
                }
            }
        };
        Ok((Subscription::new(self.inner.clone(), filter, next, slot), resync))
    }

    /// Whether an entry written at `time` is older than the retention (an unreadable time is: resyncing is safe).
    fn expired(&self, time: &str) -> bool {
        let Ok(at) = OffsetDateTime::parse(time, &Rfc3339) else {
            return true;
        };
        let age = OffsetDateTime::now_utc() - at;
        age > self.inner.cfg.retention
    }

    fn take_slot(&self, tenant: &Arc<str>) -> Result<Slot, SubscribeError> {
        let cfg = &self.inner.cfg;
        {
            let mut c = self.inner.counts.lock();
            if c.total >= cfg.max_subscribers {
                return Err(SubscribeError::Full {
                    limit: cfg.max_subscribers,
                });
            }
            let n = c.tenants.entry(tenant.clone()).or_insert(0);
            if *n >= cfg.max_subscribers_per_tenant {
                return Err(SubscribeError::TenantFull {
                    tenant: tenant.to_string(),
                    limit: cfg.max_subscribers_per_tenant,
                });
            }
            *n += 1;
            c.total += 1;
        }
        self.inner.wake.notify_one();
        Ok(Slot {
            hub: self.inner.clone(),
            tenant: tenant.clone(),
        })
    }

    /// The follower: waits for a subscriber, then follows the ledger into the ring until `stop`, pausing when no
    /// one has listened for the linger. The server runs it as a supervised service.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let inner = &self.inner;
        loop {
            while inner.counts.lock().total == 0 {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    () = inner.wake.notified() => {}
                }
            }
            let start = inner.recorder.ledger().size();
            inner.restart_at(start);
            let mut follower = match inner.recorder.follow(start) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: cannot follow the ledger; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            tracing::debug!(from = start, "event stream: following the ledger");
            let mut tick = tokio::time::interval(
                inner
                    .cfg
                    .linger
                    .clamp(Duration::from_millis(10), Duration::from_secs(1)),
            );
            let mut idle_since: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    r = follower.next() => match r {
                        Ok(first) => {
                            let mut batch = vec![first];
                            while batch.len() < PUBLISH_BATCH
                                && let Some(f) = follower.next_buffered()
                            {
                                batch.push(f);
                            }
                            inner.publish(batch);
                        }
                        Err(FollowError::Closed) => return Ok(()),
                        Err(e) => {
                            // Subscribers behind the new start read the gap from disk, where the same failure
                            // ends their streams with an error instead of a silent gap.
                            tracing::warn!(error = %e, "event stream: reading the ledger failed; restarting");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    },
                    _ = tick.tick() => {
                        if inner.counts.lock().total > 0 {
                            idle_since = None;
                        } else if idle_since.get_or_insert_with(tokio::time::Instant::now).elapsed() >= inner.cfg.linger {
                            tracing::debug!("event stream: no subscriber; pausing");
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Inner {
    /// Makes the ring start at `start` (where the follower starts): kept as it is when nothing was recorded while
    /// the follower was paused, emptied otherwise.
    fn restart_at(&self, start: u64) {
        let mut r = self.ring.write();
        if r.next == start {
            return;
        }
        r.events.clear();
        r.first = start;
        r.next = start;
        drop(r);
        self.head.send_replace(start);
    }

    /// Adds the events of `batch` (consecutive entries from the ring's end) and wakes the subscribers.
    fn publish(&self, batch: Vec<Followed>) {
        let Some(next) = batch.last().map(|f| f.ledger_index + 1) else {
            return;
        };
        // Rendered before the lock: subscribers read the ring meanwhile.
        let events: Vec<Arc<Published>> = batch
            .iter()
            .flat_map(|f| events_of_entry(f.ledger_index, &f.entry))
            .map(|e| Arc::new(Published::new(e)))
            .collect();
        let mut r = self.ring.write();
        r.events.extend(events);
        r.next = next;
        let mut dropped = None;
        while r.events.len() > self.cfg.ring_events {
            dropped = r.events.pop_front().map(|p| p.event.id.index);
        }
        // An entry any of whose events left the ring is no longer complete in it.
        if let Some(i) = dropped {
            r.first = r.first.max(i + 1);
        }
        drop(r);
        self.head.send_replace(next);
    }

    pub(super) fn release(&self, tenant: &Arc<str>) {
        let mut c = self.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.tenants.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                c.tenants.remove(tenant);
            }
        }
    }
}
