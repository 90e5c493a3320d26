//! Webhooks: the Decision Desk's events pushed to URLs in the config, signed the Standard Webhooks way.
//!
//! Each webhook is a named service that follows the event stream ([`crate::events::Hub`]) for its tenant and
//! event types and POSTs every event to its URL, in stream order, one at a time. A delivery that fails (no
//! answer within the timeout, or any status but 2xx) is retried with exponential backoff; after the last attempt
//! it is given up (logged as an error) and delivery goes on. After each event it is done with, the webhook's
//! position is stored (`store::webhook_cursor`), so a restart resumes where delivery stood: the queue is the
//! ledger itself, bounded by nothing kla holds in memory, and survives restarts with nothing skipped (an event in
//! flight at a crash is sent again, with the same `webhook-id`, so receivers can drop the duplicate).
//!
//! Webhooks never sit on the decision path: a decision is answered once its entry is durable, and the webhook
//! services read the ledger after that, like any other subscriber. This module knows no routing and no SQL.

mod sign;

pub use sign::{SECRET_PREFIX, Secret};

use crate::events::{EventId, Filter, Hub, Interest, Step, TypeSet};
use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One webhook, validated.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Names the webhook in logs and in the store (its delivery position).
    pub name: String,
    pub url: reqwest::Url,
    /// Only this tenant's events are sent.
    pub tenant: String,
    pub secret: Secret,
    pub types: TypeSet,
    /// How long one delivery may take.
    pub timeout: Duration,
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles after each, up to [`MAX_BACKOFF`].
    pub retry_initial: Duration,
}

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Runs every webhook until `stop`; one that fails is logged and started again after a pause, the others go on.
pub async fn run_all(
    endpoints: Vec<Endpoint>,
    hub: Hub,
    store: Store,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for ep in endpoints {
        let (ep, hub, store, stop) = (Arc::new(ep), hub.clone(), store.clone(), stop.clone());
        set.spawn(async move {
            loop {
                match run(ep.clone(), hub.clone(), store.clone(), stop.clone()).await {
                    Ok(()) => return,
                    Err(e) => tracing::error!(webhook = %ep.name, error = format!("{e:#}"), "webhook failed; restarting"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    Ok(())
}

/// Runs one webhook until `stop`.
pub async fn run(ep: Arc<Endpoint>, hub: Hub, store: Store, stop: CancellationToken) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(ep.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kla-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let from = match store.webhook_cursor(&ep.name).await? {
        Some(c) => Some(
            c.parse::<EventId>()
                .map_err(|e| anyhow::anyhow!("webhook {}: stored position {c:?}: {e}", ep.name))?,
        ),
        None => None,
    };
    let filter = Filter::new(
        ep.tenant.as_str().into(),
        None,
        None,
        Interest::Stream {
            types: ep.types,
            execution_id: None,
        },
    );
    let (mut sub, resync) = hub.subscribe(filter, from).await?;
    if let Some(r) = &resync {
        tracing::warn!(
            webhook = %ep.name,
            reason = r.reason.as_str(),
            last = %r.last_event_id,
            "webhook position cannot be resumed; delivery restarts at the head of the stream"
        );
    }
    if from.is_none() || resync.is_some() {
        // A new webhook starts at the head: it is sent what happens from now on, not the ledger's history.
        if let Some(c) = sub.cursor() {
            store
                .set_webhook_cursor(&ep.name, &c.to_string(), &crate::time::now_rfc3339())
                .await?;
        }
    }
    tracing::info!(webhook = %ep.name, url = %ep.url, "webhook delivering");
    loop {
        let step = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            s = sub.next(tokio::time::Instant::now() + Duration::from_secs(60)) => s,
        };
        let published = match step {
            Ok(Step::Event(p)) => p,
            Ok(Step::Idle) => continue,
            Ok(Step::Closed) => return Ok(()),
            Err(e) => {
                tracing::warn!(webhook = %ep.name, error = %e, "reading the event stream failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let id = published.event.id;
        if !deliver(&client, &ep, &id.to_string(), &published.json, &stop).await {
            return Ok(());
        }
        store
            .set_webhook_cursor(&ep.name, &id.to_string(), &crate::time::now_rfc3339())
            .await?;
    }
}

/// Delivers one event with retries; false when `stop` came first.
async fn deliver(
    client: &reqwest::Client,
    ep: &Endpoint,
    id: &str,
    body: &[u8],
    stop: &CancellationToken,
) -> bool {
    let msg_id = format!("evt_{id}");
    let mut wait = ep.retry_initial;
    for attempt in 1..=ep.max_attempts {
        let ts = crate::time::now_ms() / 1000;
        let sent = client
            .post(ep.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", ep.secret.sign(&msg_id, ts, body))
            .body(body.to_vec())
            .send();
        let outcome = tokio::select! {
            _ = stop.cancelled() => return false,
            r = sent => r,
        };
        let why = match outcome {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(webhook = %ep.name, event = id, attempt, "webhook delivered");
                return true;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("failed: {e}"),
        };
        if attempt == ep.max_attempts {
            tracing::error!(webhook = %ep.name, event = id, attempts = attempt, reason = %why, "webhook delivery given up");
            return true;
        }
        tracing::warn!(webhook = %ep.name, event = id, attempt, reason = %why, retry_in = ?wait, "webhook delivery failed");
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(MAX_BACKOFF);
    }
    true
}
