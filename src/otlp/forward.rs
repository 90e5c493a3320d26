//! Forwarding: the redacted spans of each sealed export, passed on to a downstream OTLP endpoint (HTTP protobuf or
//! gRPC) by one background service, never on the acknowledgement path. The queue is bounded: when it is full the
//! oldest export is dropped with a warning. Each export is tried up to `max-attempts` times with doubling backoff
//! (retryable answers: connection failures, timeouts, 429, 502-504, gRPC UNAVAILABLE / RESOURCE_EXHAUSTED /
//! DEADLINE_EXCEEDED / ABORTED); any other refusal drops it at once, with a warning.

use super::config::{ForwardConfig, ForwardProtocol};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use parking_lot::Mutex;
use prost::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The receivers' end: pushes never wait.
#[derive(Clone)]
pub(super) struct Queue {
    shared: Arc<Shared>,
}

struct Shared {
    items: Mutex<VecDeque<ExportTraceServiceRequest>>,
    cap: usize,
    wake: Notify,
    dropped: std::sync::atomic::AtomicU64,
    warned: Mutex<Option<Instant>>,
}

/// The service's end: sends what is queued.
pub struct Forwarder {
    shared: Arc<Shared>,
    cfg: ForwardConfig,
}

pub(super) fn channel(cfg: ForwardConfig) -> (Queue, Forwarder) {
    let shared = Arc::new(Shared {
        items: Mutex::new(VecDeque::new()),
        cap: cfg.queue,
        wake: Notify::new(),
        dropped: Default::default(),
        warned: Mutex::new(None),
    });
    (
        Queue {
            shared: shared.clone(),
        },
        Forwarder { shared, cfg },
    )
}

impl Queue {
    /// Queues one redacted export; drops the oldest when full.
    pub(super) fn push(&self, req: ExportTraceServiceRequest) {
        let full = {
            let mut q = self.shared.items.lock();
            let full = q.len() >= self.shared.cap;
            if full {
                q.pop_front();
            }
            q.push_back(req);
            full
        };
        if full {
            let n = self
                .shared
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            let mut warned = self.shared.warned.lock();
            // One warning per 10 s at most: a full queue under load would otherwise log per export.
            if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                *warned = Some(Instant::now());
                tracing::warn!(
                    dropped_total = n,
                    "OTLP forward queue full: the oldest export was dropped"
                );
            }
        }
        self.shared.wake.notify_one();
    }
}

enum Sent {
    Ok,
    Retry(String),
    Refused(String),
}

enum Client {
    Http(reqwest::Client),
    Grpc(TraceServiceClient<tonic::transport::Channel>),
}

impl Forwarder {
    /// Sends queued exports until `stop`; what is still queued then is dropped (it is sealed in the ledger).
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut client = match self.cfg.protocol {
            ForwardProtocol::Http => Client::Http(
                reqwest::Client::builder()
                    .timeout(self.cfg.timeout)
                    .build()
                    .map_err(|e| anyhow::anyhow!("the OTLP forward client: {e}"))?,
            ),
            ForwardProtocol::Grpc => {
                let channel = tonic::transport::Endpoint::from(self.cfg.endpoint.clone())
                    .timeout(self.cfg.timeout)
                    .connect_timeout(self.cfg.timeout)
                    .connect_lazy();
                Client::Grpc(TraceServiceClient::new(channel))
            }
        };
        loop {
            let next = self.shared.items.lock().pop_front();
            let Some(req) = next else {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = self.shared.wake.notified() => continue,
                }
            };
            let mut backoff = Duration::from_millis(100);
            for attempt in 1..=self.cfg.max_attempts {
                match self.send(&mut client, &req).await {
                    Sent::Ok => break,
                    Sent::Refused(why) => {
                        tracing::warn!(reason = %why, "the OTLP forward endpoint refused an export; dropped");
                        break;
                    }
                    Sent::Retry(why) if attempt == self.cfg.max_attempts => {
                        tracing::warn!(reason = %why, attempts = attempt, "OTLP forwarding failed; export dropped");
                    }
                    Sent::Retry(why) => {
                        tracing::debug!(reason = %why, attempt, "OTLP forwarding failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        let left = self.shared.items.lock().len();
        if left > 0 {
            tracing::info!(
                exports = left,
                "stopping with OTLP exports not forwarded (they are sealed)"
            );
        }
        Ok(())
    }

    async fn send(&self, client: &mut Client, req: &ExportTraceServiceRequest) -> Sent {
        match client {
            Client::Http(c) => {
                let r = c
                    .post(self.cfg.endpoint.to_string())
                    .header("content-type", "application/x-protobuf")
                    .body(req.encode_to_vec())
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().is_success() => Sent::Ok,
                    Ok(resp) if matches!(resp.status().as_u16(), 429 | 502 | 503 | 504) => {
                        Sent::Retry(format!("HTTP {}", resp.status()))
                    }
                    Ok(resp) => Sent::Refused(format!("HTTP {}", resp.status())),
                    Err(e) => Sent::Retry(e.to_string()),
                }
            }
            Client::Grpc(c) => match c.export(req.clone()).await {
                Ok(_) => Sent::Ok,
                Err(s) => match s.code() {
                    tonic::Code::Unavailable
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown => Sent::Retry(format!("{:?}: {}", s.code(), s.message())),
                    code => Sent::Refused(format!("{code:?}: {}", s.message())),
                },
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let cfg = ForwardConfig {
            endpoint: "http://127.0.0.1:9".parse().unwrap(),
            protocol: ForwardProtocol::Http,
            queue: 2,
            timeout: Duration::from_secs(1),
            max_attempts: 1,
        };
        let (q, fw) = channel(cfg);
        for n in 0..3 {
            let mut r = ExportTraceServiceRequest::default();
            r.resource_spans.resize(n + 1, Default::default());
            q.push(r);
        }
        let left: Vec<usize> = fw
            .shared
            .items
            .lock()
            .iter()
            .map(|r| r.resource_spans.len())
            .collect();
        assert_eq!(left, [2, 3]);
        assert_eq!(fw.shared.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
