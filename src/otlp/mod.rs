//! OTLP trace ingest (docs/otlp.md): the OTLP/HTTP (`http.rs`) and OTLP/gRPC (`grpc.rs`) receivers, the decoders of
//! export bodies (`decode.rs`), the walk that validates ids and hands every string of a span to the tenant's
//! redactor (`walk.rs`), sealing into `trace.spans` ledger entries grouped by trace (`seal.rs`) and forwarding of
//! the redacted spans to a downstream collector from a bounded queue (`forward.rs`).
//!
//! One path for both receivers ([`Otlp::ingest`]): authenticate (a kla agent token with `x-tenant-id`, or the
//! listener's fixed tenant), take a token of the tenant's export rate (the API's `rate-limit`, a bucket of its
//! own; none left: 429 / RESOURCE_EXHAUSTED with the retry delay), take an in-flight slot (none free: 503 /
//! UNAVAILABLE with a retry hint), reject spans with invalid ids (partial success), drop the spans already sealed
//! (`dedup.rs`: idempotent exports by span identity), take the remaining spans from the tenant's span quota
//! (`otlp.quota`; 429 / RESOURCE_EXHAUSTED), redact, seal, append every entry (durable), then acknowledge and queue
//! the redacted copy for forwarding. If anything before the append fails nothing is sealed or forwarded; unredacted
//! data is never stored, forwarded or logged. Owns no SQL and no ledger format: it records through
//! [`crate::recorder::Recorder`] and redacts through [`crate::redact::Redactor`] only.

mod config;
mod decode;
mod dedup;
mod forward;
mod grpc;
mod http;
pub mod seal;
mod status;
pub mod walk;

pub use config::{
    FileForward, FileIdempotency, FileOtlp, FileQuota, ForwardConfig, ForwardProtocol, OtlpConfig, validate,
};
pub use decode::{Encoding, decode, gunzip};
pub use forward::Forwarder;

use crate::auth::Role;
use crate::recorder::Record;
use crate::redact::Report;
use crate::server::{RateLimitConfig, RateLimiter};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Seconds a client is told to wait (`Retry-After`, gRPC retry hint) when kla is busy or its ledger fails.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Exports with more spans than this are redacted and sealed on a blocking thread, off the runtime's workers.
const BLOCKING_SPANS: usize = 2048;

/// Errors of OTLP ingest.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The body does not decode, or a header is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The body (inflated) is over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// No or a bad credential.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential without the right (role, tenant).
    #[error("{0}")]
    Forbidden(String),
    /// Every in-flight slot is taken; retry later.
    #[error("too many exports in flight; retry after {RETRY_AFTER_SECS}s")]
    Busy,
    /// Spans of this export are being sealed by another export (an earlier try still in flight); retry later.
    #[error("spans of this export are being sealed by another export; retry after {RETRY_AFTER_SECS}s")]
    Sealing,
    /// Over the tenant's export rate or span quota; retry after `retry_after` seconds.
    #[error("{message}")]
    RateLimited {
        /// What was exceeded.
        message: String,
        /// Seconds until the export would be taken.
        retry_after: u64,
    },
    /// The ledger could not take the spans; nothing was sealed or forwarded.
    #[error("the spans could not be sealed: {0}")]
    Unavailable(String),
}

impl crate::error::Classify for OtlpError {
    fn class(&self) -> crate::error::Class {
        use crate::error::Class;
        match self {
            OtlpError::Invalid(_) => Class::Invalid,
            OtlpError::TooLarge(_) => Class::TooLarge,
            OtlpError::Unauthenticated(_) => Class::Unauthenticated,
            OtlpError::Forbidden(_) => Class::Forbidden,
            OtlpError::RateLimited { .. } => Class::RateLimited,
            OtlpError::Busy | OtlpError::Sealing | OtlpError::Unavailable(_) => Class::Unavailable,
        }
    }
}

impl OtlpError {
    /// Seconds a client should wait before retrying (`Retry-After`, gRPC `RetryInfo`), when a retry can succeed.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            OtlpError::RateLimited { retry_after, .. } => Some(*retry_after),
            OtlpError::Busy | OtlpError::Sealing | OtlpError::Unavailable(_) => Some(RETRY_AFTER_SECS),
            _ => None,
        }
    }
}

/// What an accepted export came to: spans rejected (with a message for the partial success) and sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans rejected (invalid ids, too large).
    pub rejected: u64,
    /// Why, when any was rejected.
    pub message: String,
    /// Spans sealed.
    pub sealed: u64,
    /// Spans not sealed because they already were (a retried export).
    pub duplicates: u64,
    /// The `lr_...` ids of the entries written, in trace order.
    pub lineage_ids: Vec<String>,
}

/// What the receivers use of the core, built by `app`: token verification, the redactors, the active packs (whose
/// digests each sealed batch names) and the recorder that seals.
#[derive(Clone)]
pub struct Handles {
    /// Token verification (agent tokens).
    pub auth: Arc<crate::auth::Authenticator>,
    /// The tenants' redactors.
    pub redaction: Arc<crate::redact::Redaction>,
    /// The active policy set.
    pub policy: Arc<crate::policy::PolicyManager>,
    /// Seals span batches into the ledger.
    pub recorder: crate::recorder::Recorder,
}

/// The receivers' shared state. Cheap to clone.
#[derive(Clone)]
pub struct Otlp {
    inner: Arc<Inner>,
}

struct Inner {
    state: Handles,
    tenant: Option<Arc<str>>,
    max_body: usize,
    in_flight: Arc<Semaphore>,
    forward: Option<forward::Queue>,
    /// The tenant's export rate: the API's rate limit, in a bucket of its own so exports never take the
    /// tenant's API tokens.
    exports: Option<RateLimiter>,
    /// The tenant's span quota.
    spans: Option<RateLimiter>,
    seen: Arc<dedup::Seen>,
    /// True once `seen` holds what the ledger held at start.
    seen_ready: tokio::sync::watch::Receiver<bool>,
}

impl Otlp {
    /// The receivers for `cfg`, recording through `state`, limiting each tenant's exports to `rate` (the API's
    /// rate limit, when set), and the forwarder to run as a service (when `otlp.forward` is configured).
    pub fn new(cfg: &OtlpConfig, rate: Option<RateLimitConfig>, state: Handles) -> (Otlp, Option<Forwarder>) {
        let (queue, forwarder) = match &cfg.forward {
            Some(f) => {
                let (q, fw) = forward::channel(f.clone());
                (Some(q), Some(fw))
            }
            None => (None, None),
        };
        let seen = Arc::new(dedup::Seen::new(cfg.idempotency_window, cfg.idempotency_spans));
        let (ready_tx, seen_ready) = tokio::sync::watch::channel(false);
        let (recovering, recorder) = (seen.clone(), state.recorder.clone());
        tokio::task::spawn_blocking(move || {
            let ledger = recorder.ledger();
            match recovering.recover(ledger, ledger.size()) {
                Ok(n) => tracing::debug!(spans = n, "OTLP spans sealed before start remembered"),
                Err(e) => tracing::error!(
                    error = %e,
                    "reading the spans sealed before start failed; a retried export may seal them again"
                ),
            }
            let _ = ready_tx.send(true);
        });
        let otlp = Otlp {
            inner: Arc::new(Inner {
                state,
                tenant: cfg.tenant.as_deref().map(Arc::from),
                max_body: cfg.max_body,
                in_flight: Arc::new(Semaphore::new(cfg.max_in_flight)),
                forward: queue,
                exports: rate.map(RateLimiter::new),
                spans: cfg.quota.map(RateLimiter::new),
                seen,
                seen_ready,
            }),
        };
        (otlp, forwarder)
    }

    /// The OTLP/HTTP listener's router (`POST /v1/traces`).
    pub fn http_router(&self) -> axum::Router {
        http::router(self.clone())
    }

    /// The OTLP/gRPC listener's router (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
    pub fn grpc_router(&self) -> axum::Router {
        grpc::router(self.clone())
    }

    /// Largest export accepted, after decompression.
    pub fn max_body(&self) -> usize {
        self.inner.max_body
    }

    /// The tenant of an export: from a kla bearer token (role `agent`) and `x-tenant-id` (or the listener's fixed
    /// tenant when the header is absent), or the fixed tenant alone when no `Authorization` is sent.
    fn authorize(&self, authorization: Option<&[u8]>, tenant: Option<&[u8]>) -> Result<Arc<str>, OtlpError> {
        let fixed = self.inner.tenant.clone();
        let named = match tenant {
            Some(t) => Some(
                std::str::from_utf8(t)
                    .ok()
                    .filter(|t| crate::auth::tenant_name_ok(t))
                    .ok_or_else(|| {
                        OtlpError::Invalid("x-tenant-id must be 1-128 visible ASCII characters".into())
                    })?,
            ),
            None => None,
        };
        let Some(header) = authorization else {
            return match fixed {
                Some(f) if named.is_none_or(|n| n == &*f) => Ok(f),
                Some(f) => Err(OtlpError::Forbidden(format!(
                    "this listener takes spans for tenant '{f}' only"
                ))),
                None => Err(OtlpError::Unauthenticated(
                    "missing Authorization: Bearer <token> header".into(),
                )),
            };
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
            .map(|(_, t)| t.trim())
            .ok_or_else(|| {
                OtlpError::Unauthenticated("Authorization header must be 'Bearer <token>'".into())
            })?;
        let p = self
            .inner
            .state
            .auth
            .verify(token)
            .map_err(|e| OtlpError::Unauthenticated(e.to_string()))?;
        if p.desk_session {
            return Err(OtlpError::Unauthenticated(
                "a Decision Desk session is not an export credential".into(),
            ));
        }
        if p.role != Role::Agent {
            return Err(OtlpError::Forbidden(format!(
                "role '{}' may not export spans (needs: agent)",
                p.role.as_str()
            )));
        }
        let tenant: Arc<str> = match (named, fixed) {
            (Some(n), Some(f)) if n != &*f => {
                return Err(OtlpError::Forbidden(format!(
                    "this listener takes spans for tenant '{f}' only"
                )));
            }
            (Some(n), _) => n.into(),
            (None, Some(f)) => f,
            (None, None) => return Err(OtlpError::Invalid("missing x-tenant-id header".into())),
        };
        if tenant.starts_with('_') || !p.allows_tenant(&tenant) {
            return Err(OtlpError::Forbidden(format!(
                "token is not valid for tenant '{tenant}'"
            )));
        }
        Ok(tenant)
    }

    /// One token of `tenant`'s export rate, or [`OtlpError::RateLimited`].
    fn rate(&self, tenant: &str) -> Result<(), OtlpError> {
        match &self.inner.exports {
            Some(l) => l.check(tenant).map_err(|secs| OtlpError::RateLimited {
                message: format!("export rate limit for tenant '{tenant}' exceeded; retry after {secs}s"),
                retry_after: secs,
            }),
            None => Ok(()),
        }
    }

    /// One in-flight slot, or [`OtlpError::Busy`].
    fn slot(&self) -> Result<OwnedSemaphorePermit, OtlpError> {
        self.inner
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| OtlpError::Busy)
    }

    /// Validates, redacts and seals one export of `tenant`; returns once every entry is durable. Runs in its own
    /// task holding the export's in-flight `slot`, so a client that hangs up can neither leave an export half
    /// recorded nor free its slot before the work is done.
    async fn ingest(
        &self,
        tenant: Arc<str>,
        req: ExportTraceServiceRequest,
        slot: OwnedSemaphorePermit,
    ) -> Result<Accepted, OtlpError> {
        let this = self.clone();
        tokio::spawn(async move {
            let r = this.ingest_now(tenant, req).await;
            drop(slot);
            r
        })
        .await
        .map_err(|e| OtlpError::Unavailable(format!("the export task failed: {e}")))?
    }

    async fn ingest_now(
        &self,
        tenant: Arc<str>,
        mut req: ExportTraceServiceRequest,
    ) -> Result<Accepted, OtlpError> {
        let (mut rejected, mut reasons) = walk::reject_invalid(&mut req);
        // Until the spans sealed before start are remembered, a retry across the restart would not be recognised.
        let mut ready = self.inner.seen_ready.clone();
        if !*ready.borrow() {
            // An error means the recovery task is gone; it has logged why, and exports go on without it.
            let _ = ready.wait_for(|r| *r).await;
        }
        // Held until the entries are durable; dropped on any failure below, so a retry seals the spans.
        let (mut claim, duplicates) = self
            .inner
            .seen
            .claim(&tenant, &mut req)
            .map_err(|_| OtlpError::Sealing)?;
        let spans: usize = req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        if spans > 0
            && let Some(quota) = &self.inner.spans
        {
            quota
                .take(&tenant, spans as u64)
                .map_err(|secs| OtlpError::RateLimited {
                    message: format!(
                        "span quota for tenant '{tenant}' exceeded by {spans} span(s); retry after {secs}s"
                    ),
                    retry_after: secs,
                })?;
        }
        let state = self.inner.state.clone();
        let t = tenant.clone();
        let work = move || {
            let redactor = state.redaction.redactor(&t);
            let mut f = walk::redact_fn(|k: &str, s: &str, r: &mut Report| redactor.text(k, s, r));
            let redacted = walk::redact_export(&mut f, &mut req);
            let active = state.policy.active();
            let packs: Vec<_> = active.packs().iter().map(|p| p.pack_ref()).collect();
            seal::seal(&t, req, &redacted, &packs)
        };
        let sealed = if spans > BLOCKING_SPANS {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| OtlpError::Unavailable(format!("redaction failed: {e}")))?
        } else {
            work()
        };
        rejected += sealed.rejected;
        reasons.extend(sealed.reasons);
        let recorder = &self.inner.state.recorder;
        // Appended together so they share the ledger's group commit (one sync for the export).
        let results = futures_util::future::join_all(
            sealed
                .batches
                .into_iter()
                .map(|b| recorder.record(Record::Spans(b))),
        )
        .await;
        let mut lineage_ids = Vec::with_capacity(results.len());
        let mut failed = None;
        for (r, (trace, spans)) in results.into_iter().zip(&sealed.ids) {
            match r {
                Ok(rec) => {
                    // Durable: a retry of this export does not seal these spans again.
                    claim.sealed(*trace, spans);
                    lineage_ids.push(rec.lineage_id);
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            tracing::error!(error = %e, tenant = %tenant, "sealing spans failed; the export is refused");
            return Err(OtlpError::Unavailable("the ledger cannot take them now".into()));
        }
        // Spans claimed but not sealed (too large) are released with the claim.
        drop(claim);
        if sealed.spans > 0
            && let Some(q) = &self.inner.forward
        {
            q.push(sealed.forward);
        }
        let message = if rejected > 0 {
            format!("{rejected} span(s) rejected: {}", reasons.join("; "))
        } else {
            String::new()
        };
        Ok(Accepted {
            rejected,
            message,
            sealed: sealed.spans,
            duplicates,
            lineage_ids,
        })
    }
}
