//! Per-tenant token buckets, shared by the listeners that limit tenants (the REST API, the OTLP receivers). Sharded so tenants rarely contend; no lock is held across an await.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

const SHARDS: usize = 16;

/// Per-tenant token bucket (`rate-limit-rps`, `rate-limit-burst`; OTLP's `otlp.quota`).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// Refill rate.
    pub rps: f64,
    /// Bucket size.
    pub burst: u32,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// A token bucket per tenant.
pub struct RateLimiter {
    cfg: RateLimitConfig,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<Box<str>, Bucket>>>,
}

impl RateLimiter {
    /// A limiter with `cfg.rps` refill and `cfg.burst` capacity per tenant.
    pub fn new(cfg: RateLimitConfig) -> Self {
        RateLimiter {
            cfg,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `tenant`; on refusal returns the seconds until one is available (at least 1).
    pub fn check(&self, tenant: &str) -> Result<(), u64> {
        self.take_at(tenant, 1, Instant::now())
    }

    /// Takes `n` tokens for `tenant` (a weighted request, e.g. an export's spans); on refusal returns the seconds
    /// until they are available (at least 1). `n` over the burst passes only on a full bucket and leaves it in
    /// debt, so a large request is never refused forever and still pays for all it takes.
    pub fn take(&self, tenant: &str, n: u64) -> Result<(), u64> {
        self.take_at(tenant, n, Instant::now())
    }

    #[cfg(test)]
    fn check_at(&self, tenant: &str, now: Instant) -> Result<(), u64> {
        self.take_at(tenant, 1, now)
    }

    fn take_at(&self, tenant: &str, n: u64, now: Instant) -> Result<(), u64> {
        let shard = &self.shards[(self.hasher.hash_one(tenant) as usize) % SHARDS];
        let mut map = shard.lock();
        let burst = f64::from(self.cfg.burst);
        let b = match map.get_mut(tenant) {
            Some(b) => b,
            None => map.entry(tenant.into()).or_insert(Bucket {
                tokens: burst,
                last: now,
            }),
        };
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.cfg.rps).min(burst);
        b.last = now;
        let need = (n as f64).min(burst);
        if b.tokens >= need {
            b.tokens -= n as f64;
            Ok(())
        } else {
            Err(((need - b.tokens) / self.cfg.rps).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_rate_and_isolates_tenants() {
        let l = RateLimiter::new(RateLimitConfig { rps: 2.0, burst: 2 });
        let t0 = Instant::now();
        assert!(l.check_at("a", t0).is_ok());
        assert!(l.check_at("a", t0).is_ok());
        assert_eq!(l.check_at("a", t0), Err(1));
        assert!(l.check_at("b", t0).is_ok(), "tenant b has its own bucket");
        assert!(l.check_at("a", t0 + Duration::from_millis(500)).is_ok());
        assert!(l.check_at("a", t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn weighted_takes_wait_for_their_tokens_and_a_take_over_the_burst_leaves_debt() {
        let l = RateLimiter::new(RateLimitConfig { rps: 10.0, burst: 20 });
        let t0 = Instant::now();
        assert!(l.take_at("a", 15, t0).is_ok());
        assert_eq!(l.take_at("a", 15, t0), Err(1), "10 missing at 10/s");
        assert!(l.take_at("a", 5, t0).is_ok());
        // Over the burst: only on a full bucket, then 30 in debt (3 s at 10/s before one token).
        assert_eq!(l.take_at("a", 50, t0 + Duration::from_secs(1)), Err(1));
        assert!(l.take_at("a", 50, t0 + Duration::from_secs(2)).is_ok());
        assert_eq!(l.take_at("a", 1, t0 + Duration::from_secs(2)), Err(4));
        assert!(l.take_at("a", 1, t0 + Duration::from_millis(5100)).is_ok());
    }
}
