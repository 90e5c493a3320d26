//! Idempotent exports: the spans already sealed, by identity (tenant, trace id, span id), so a retried export
//! (after a timeout, or after a ledger failure that left part of it written) seals each span once. A span already
//! sealed is dropped from the export and the export is acknowledged as usual.
//!
//! Memory is bounded by two generations of identities: new identities go into the current one, which becomes the
//! previous one when it is `window` old or holds half the configured spans, and the previous one is then
//! forgotten. So a sealed span is remembered for at least `window`, unless more than half the configured spans
//! are sealed in the meantime (then for at least that many spans).
//!
//! While an export is sealing, its spans are claimed: another export holding one of them (a retry sent before the
//! first answer) is refused as busy rather than sealed beside it or acknowledged before the first is durable. A
//! claimed span is remembered only once the entry holding it is durable ([`Claim::sealed`], per entry, so the
//! entries of an export that were written before a ledger failure count as sealed); the rest of the claim is
//! released when it is dropped (refusal, ledger failure, a span too large to seal), so a retry seals them.
//!
//! A restart would forget the memory, so at start [`Seen::recover`] reads the ledger backwards from its last entry
//! and remembers the spans of the `trace.spans` entries written within `window` of now (at most half the
//! configured spans, the newest first); exports wait until it is done. A restart therefore forgets only what the
//! running process would have forgotten too.

use crate::recorder::body::{RecordBody, TraceSpans};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A span's identity: the tenant's hash (keyed per process), its trace id and its span id.
type Key = (u64, [u8; 16], [u8; 8]);

struct Gens {
    cur: HashSet<Key>,
    prev: HashSet<Key>,
    since: Instant,
    /// Identities of exports now sealing.
    pending: HashSet<Key>,
}

/// The sealed spans remembered; shared by both receivers.
pub struct Seen {
    window: Duration,
    /// Identities per generation at most.
    half: usize,
    hasher: RandomState,
    gens: Mutex<Gens>,
}

/// An export's spans are held by another export that is still sealing.
#[derive(Debug, PartialEq, Eq)]
pub struct InFlight;

/// The spans an export claimed: remembered as each is sealed, the rest released when dropped.
pub struct Claim {
    seen: Arc<Seen>,
    tenant: u64,
    keys: HashSet<Key>,
}

impl Seen {
    /// Remembers sealed spans for at least `window` or `spans / 2` further spans.
    pub fn new(window: Duration, spans: usize) -> Seen {
        let now = Instant::now();
        Seen {
            window,
            half: (spans / 2).max(1),
            hasher: RandomState::new(),
            gens: Mutex::new(Gens {
                cur: HashSet::new(),
                prev: HashSet::new(),
                since: now,
                pending: HashSet::new(),
            }),
        }
    }

    fn tenant_hash(&self, tenant: &str) -> u64 {
        self.hasher.hash_one(tenant)
    }

    fn key(&self, tenant: u64, trace: &[u8], span: &[u8]) -> Option<Key> {
        Some((tenant, trace.try_into().ok()?, span.try_into().ok()?))
    }

    /// Remembers the spans of the `trace.spans` entries among the first `size` entries of `ledger` written within
    /// `window` of now, reading backwards from the newest, at most `spans / 2` of them. Returns how many. Blocking
    /// (file reads): run it off the runtime's workers.
    pub fn recover(&self, ledger: &crate::ledger::Ledger, size: u64) -> Result<usize, String> {
        let since = std::time::SystemTime::now()
            .checked_sub(self.window)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut found = 0usize;
        let mut g = self.gens.lock();
        for index in (0..size).rev() {
            let bytes = ledger.entry(index).map_err(|e| e.to_string())?;
            let e = crate::ledger::Entry::decode(&bytes).map_err(|e| e.to_string())?;
            match humantime::parse_rfc3339_weak(&e.time) {
                Ok(t) if t >= since => {}
                // Older than the window (entries are appended in time order), or a time kla never writes.
                _ => break,
            }
            if e.kind != crate::recorder::kind::TRACE_SPANS {
                continue;
            }
            let Ok(body) = <TraceSpans as RecordBody>::of_entry(&e) else {
                continue;
            };
            let Some(trace) = hex::decode(&body.trace_id)
                .ok()
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
            else {
                continue;
            };
            let t = self.tenant_hash(&e.tenant);
            for h in &body.span_hashes {
                if let Some(span) = hex::decode(&h.span_id)
                    .ok()
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                {
                    g.cur.insert((t, trace, span));
                    found += 1;
                }
            }
            if g.cur.len() >= self.half {
                break;
            }
        }
        g.since = Instant::now();
        Ok(found)
    }

    fn insert(&self, g: &mut Gens, k: Key) {
        if g.cur.len() >= self.half || g.since.elapsed() >= self.window {
            g.prev = std::mem::take(&mut g.cur);
            g.since = Instant::now();
        }
        g.cur.insert(k);
    }

    /// Drops from `req` the spans of `tenant` already sealed (or repeated within `req`) and claims the rest.
    /// Returns the claim and how many spans were dropped, or [`InFlight`] (nothing claimed, `req` unchanged)
    /// when another export still sealing holds one of them.
    pub fn claim(
        self: &Arc<Self>,
        tenant: &str,
        req: &mut ExportTraceServiceRequest,
    ) -> Result<(Claim, u64), InFlight> {
        let t = self.tenant_hash(tenant);
        let mut keep = Vec::new();
        let mut keys = HashSet::new();
        {
            let mut g = self.gens.lock();
            for sp in req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                // Ids were validated before; a span without a valid identity is kept and claims nothing.
                let Some(k) = self.key(t, &sp.trace_id, &sp.span_id) else {
                    keep.push(true);
                    continue;
                };
                if g.cur.contains(&k) || g.prev.contains(&k) || keys.contains(&k) {
                    keep.push(false);
                } else if g.pending.contains(&k) {
                    for k in &keys {
                        g.pending.remove(k);
                    }
                    return Err(InFlight);
                } else {
                    g.pending.insert(k);
                    keys.insert(k);
                    keep.push(true);
                }
            }
        }
        let mut dropped = 0u64;
        let mut flags = keep.into_iter();
        for ss in req.resource_spans.iter_mut().flat_map(|r| &mut r.scope_spans) {
            ss.spans.retain(|_| {
                let k = flags.next().unwrap_or(true);
                dropped += u64::from(!k);
                k
            });
        }
        Ok((
            Claim {
                seen: self.clone(),
                tenant: t,
                keys,
            },
            dropped,
        ))
    }
}

impl Claim {
    /// The entry holding `spans` of `trace` is durable: remember those of them this claim holds as sealed.
    pub fn sealed(&mut self, trace: [u8; 16], spans: &[[u8; 8]]) {
        let mut g = self.seen.gens.lock();
        for span in spans {
            let k = (self.tenant, trace, *span);
            if self.keys.remove(&k) {
                g.pending.remove(&k);
                self.seen.insert(&mut g, k);
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut g = self.seen.gens.lock();
        for k in &self.keys {
            g.pending.remove(k);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::otlp::{self, span};

    /// One resource without attributes holding spans `(trace, id)`.
    fn export(ids: &[(u8, u8)]) -> ExportTraceServiceRequest {
        otlp::export([(None, ids.iter().map(|&(t, s)| span(t, s)).collect())])
    }

    fn span_ids(req: &ExportTraceServiceRequest) -> Vec<u8> {
        req.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.span_id[0])
            .collect()
    }

    #[test]
    fn a_committed_span_is_dropped_from_later_exports_of_its_tenant_only() {
        let seen = Arc::new(Seen::new(Duration::from_secs(60), 100));
        let mut a = export(&[(1, 1), (1, 2), (1, 2)]);
        let (mut claim, dropped) = seen.claim("t", &mut a).unwrap();
        assert_eq!(
            (dropped, span_ids(&a)),
            (1, vec![1, 2]),
            "a repeat within one export"
        );
        claim.sealed([1; 16], &[[1; 8], [2; 8]]);
        drop(claim);
        let mut retry = export(&[(1, 1), (1, 2), (1, 3)]);
        let (claim, dropped) = seen.claim("t", &mut retry).unwrap();
        assert_eq!((dropped, span_ids(&retry)), (2, vec![3]));
        drop(claim);
        let mut other = export(&[(1, 1)]);
        assert_eq!(seen.claim("u", &mut other).unwrap().1, 0, "another tenant's span");
    }

    #[test]
    fn a_span_being_sealed_refuses_a_concurrent_export_and_a_released_claim_is_sealed_again() {
        let seen = Arc::new(Seen::new(Duration::from_secs(60), 100));
        let mut first = export(&[(1, 1), (1, 2)]);
        let (claim, _) = seen.claim("t", &mut first).unwrap();
        let mut concurrent = export(&[(1, 3), (1, 2)]);
        assert!(seen.claim("t", &mut concurrent).is_err());
        assert_eq!(span_ids(&concurrent), vec![3, 2], "left unchanged");
        // The concurrent export claimed nothing: span 3 is free.
        let mut three = export(&[(1, 3)]);
        drop(seen.claim("t", &mut three).unwrap());
        // The first export failed (its claim dropped): the retry seals both.
        drop(claim);
        let mut retry = export(&[(1, 1), (1, 2)]);
        let (claim, dropped) = seen.claim("t", &mut retry).unwrap();
        assert_eq!(dropped, 0);
        drop(claim);
    }

    #[test]
    fn only_the_spans_of_durable_entries_are_remembered() {
        // An export of two traces whose second entry failed: the retry seals only the second trace's spans.
        let seen = Arc::new(Seen::new(Duration::from_secs(60), 100));
        let mut e = export(&[(1, 1), (2, 1), (2, 2)]);
        let (mut claim, _) = seen.claim("t", &mut e).unwrap();
        claim.sealed([1; 16], &[[1; 8]]);
        drop(claim);
        let mut retry = export(&[(1, 1), (2, 1), (2, 2)]);
        let (_, dropped) = seen.claim("t", &mut retry).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(retry.resource_spans[0].scope_spans[0].spans.len(), 2);
    }

    #[test]
    fn memory_is_two_generations_of_at_most_half_the_spans() {
        let seen = Arc::new(Seen::new(Duration::from_secs(3600), 4));
        for s in 1..=6u8 {
            let mut e = export(&[(1, s)]);
            seen.claim("t", &mut e).unwrap().0.sealed([1; 16], &[[s; 8]]);
        }
        {
            let g = seen.gens.lock();
            assert!(g.cur.len() <= 2 && g.prev.len() <= 2);
        }
        // The last half still drops; the oldest are forgotten.
        let mut again = export(&[(1, 1), (1, 5), (1, 6)]);
        let (_, dropped) = seen.claim("t", &mut again).unwrap();
        assert_eq!(span_ids(&again), vec![1]);
        assert_eq!(dropped, 2);
    }
}
