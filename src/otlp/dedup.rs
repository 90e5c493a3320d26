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
//! claim becomes remembered only once its entries are durable; dropped without [`Claim::commit`] (refusal,
//! ledger failure) it is released, so the retry seals the spans.
//!
//! A restart forgets the memory. For one `window` after start, the spans of a trace not seen since are looked up in
//! the entries the ledger held at start (by the trace index), by the receivers: see [`Seen::recovering`].

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
    /// Entries below this ledger index were written before this process started.
    start_size: u64,
    /// Until when the entries written before start are looked up.
    recover_until: Instant,
    /// Traces already looked up in the entries written before start (cleared when it reaches `half`).
    recovered: Mutex<HashSet<(u64, [u8; 16])>>,
}

/// An export's spans are held by another export that is still sealing.
#[derive(Debug, PartialEq, Eq)]
pub struct InFlight;

/// The spans an export claimed: released when dropped, remembered once committed.
pub struct Claim {
    seen: Arc<Seen>,
    keys: Vec<Key>,
}

impl Seen {
    /// Remembers sealed spans for at least `window` or `spans / 2` further spans; `start_size` is the ledger's size
    /// when the process started.
    pub fn new(window: Duration, spans: usize, start_size: u64) -> Seen {
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
            start_size,
            recover_until: now + window,
            recovered: Mutex::new(HashSet::new()),
        }
    }

    fn tenant_hash(&self, tenant: &str) -> u64 {
        self.hasher.hash_one(tenant)
    }

    fn key(&self, tenant: u64, trace: &[u8], span: &[u8]) -> Option<Key> {
        Some((tenant, trace.try_into().ok()?, span.try_into().ok()?))
    }

    /// While within `window` of the start and the ledger held entries then: the ledger size at start, below
    /// which the entries of the traces that [`Seen::to_recover`] names are to be read with [`Seen::remember`].
    pub fn recovering(&self) -> Option<u64> {
        (self.start_size > 0 && Instant::now() < self.recover_until).then_some(self.start_size)
    }

    /// The trace ids of `req` not looked up yet since start (each named once).
    pub fn to_recover(&self, tenant: &str, req: &ExportTraceServiceRequest) -> Vec<[u8; 16]> {
        let t = self.tenant_hash(tenant);
        let mut done = self.recovered.lock();
        if done.len() >= self.half {
            done.clear();
        }
        let mut out = Vec::new();
        for sp in req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            if let Ok(trace) = <[u8; 16]>::try_from(sp.trace_id.as_slice())
                && done.insert((t, trace))
            {
                out.push(trace);
            }
        }
        out
    }

    /// Names `traces` again for lookup (theirs failed).
    pub fn unmark(&self, tenant: &str, traces: &[[u8; 16]]) {
        let t = self.tenant_hash(tenant);
        let mut done = self.recovered.lock();
        for trace in traces {
            done.remove(&(t, *trace));
        }
    }

    /// Remembers spans found sealed (by entries written before start) as sealed.
    pub fn remember(&self, tenant: &str, spans: impl IntoIterator<Item = ([u8; 16], [u8; 8])>) {
        let t = self.tenant_hash(tenant);
        let mut g = self.gens.lock();
        for (trace, span) in spans {
            self.insert(&mut g, (t, trace, span));
        }
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
        let mut keys = Vec::new();
        {
            let mut g = self.gens.lock();
            let mut mine = HashSet::new();
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
                if g.cur.contains(&k) || g.prev.contains(&k) || mine.contains(&k) {
                    keep.push(false);
                } else if g.pending.contains(&k) {
                    for k in &keys {
                        g.pending.remove(k);
                    }
                    return Err(InFlight);
                } else {
                    g.pending.insert(k);
                    mine.insert(k);
                    keys.push(k);
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
                keys,
            },
            dropped,
        ))
    }
}

impl Claim {
    /// The claimed spans are durable: remember them as sealed.
    pub fn commit(mut self) {
        let keys = std::mem::take(&mut self.keys);
        let mut g = self.seen.gens.lock();
        for k in keys {
            g.pending.remove(&k);
            self.seen.insert(&mut g, k);
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
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    fn export(ids: &[(u8, u8)]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: ids
                        .iter()
                        .map(|(t, s)| Span {
                            trace_id: vec![*t; 16],
                            span_id: vec![*s; 8],
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
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
        let seen = Arc::new(Seen::new(Duration::from_secs(60), 100, 0));
        let mut a = export(&[(1, 1), (1, 2), (1, 2)]);
        let (claim, dropped) = seen.claim("t", &mut a).unwrap();
        assert_eq!(
            (dropped, span_ids(&a)),
            (1, vec![1, 2]),
            "a repeat within one export"
        );
        claim.commit();
        let mut retry = export(&[(1, 1), (1, 2), (1, 3)]);
        let (claim, dropped) = seen.claim("t", &mut retry).unwrap();
        assert_eq!((dropped, span_ids(&retry)), (2, vec![3]));
        drop(claim);
        let mut other = export(&[(1, 1)]);
        assert_eq!(seen.claim("u", &mut other).unwrap().1, 0, "another tenant's span");
        assert_eq!(
            seen.recovering(),
            None,
            "an empty ledger at start has nothing to recover"
        );
    }

    #[test]
    fn a_span_being_sealed_refuses_a_concurrent_export_and_a_released_claim_is_sealed_again() {
        let seen = Arc::new(Seen::new(Duration::from_secs(60), 100, 0));
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
        claim.commit();
    }

    #[test]
    fn memory_is_two_generations_of_at_most_half_the_spans() {
        let seen = Arc::new(Seen::new(Duration::from_secs(3600), 4, 0));
        for s in 1..=6u8 {
            let mut e = export(&[(1, s)]);
            seen.claim("t", &mut e).unwrap().0.commit();
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

    #[test]
    fn after_a_restart_traces_are_named_once_for_lookup_and_found_spans_drop() {
        let seen = Arc::new(Seen::new(Duration::from_secs(60), 100, 7));
        assert_eq!(seen.recovering(), Some(7));
        let mut e = export(&[(1, 1), (2, 1), (1, 2)]);
        assert_eq!(seen.to_recover("t", &e), vec![[1; 16], [2; 16]]);
        assert!(
            seen.to_recover("t", &e).is_empty(),
            "each trace is looked up once"
        );
        seen.remember("t", [([1; 16], [1; 8])]);
        let (_, dropped) = seen.claim("t", &mut e).unwrap();
        assert_eq!((dropped, e.resource_spans[0].scope_spans[0].spans.len()), (1, 2));
    }
}
