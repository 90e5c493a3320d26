//! kla's own spans over OTLP: one per decision, one per proxied tool call, and a span per approval vote.
//! Owns the tracer provider and the hooks the decider, the proxy and the approvals call; touches nothing else.
//! Off unless `--otel-endpoint` is set, and then every hook is a check of one `OnceLock` (no cost when off).
//! Export runs on the batch processor's own thread: failures are logged by the SDK, never seen by a decision.
//! Attributes are bounded in cardinality: names from config or policy (action, tool, route, pack, agent, tenant)
//! and outcomes; never context values, and no per-call ids (the ledger entry carries the trace id instead).

use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Where kla's own spans go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// `http://host:port` of an OTLP/gRPC receiver.
    pub endpoint: String,
    /// `service.name` of the spans' resource.
    pub service_name: String,
}

/// Validates `--otel-endpoint`, `--otel-protocol`, `--otel-service-name`; `None` when no endpoint is set.
/// The error names the flag.
pub fn validate(
    endpoint: Option<String>,
    protocol: Option<String>,
    service_name: Option<String>,
) -> Result<Option<OtelConfig>, (&'static str, String)> {
    let Some(endpoint) = endpoint.filter(|e| !e.trim().is_empty()) else {
        return Ok(None);
    };
    match protocol.as_deref() {
        None | Some("grpc") => {}
        // OTLP/HTTP would need a second HTTP client stack in the binary; kla exports over gRPC only.
        Some("http") => {
            return Err((
                "otel-protocol",
                "`http` is not supported yet; use `grpc` (kla's own OTLP/gRPC receiver accepts it)".into(),
            ));
        }
        Some(p) => return Err(("otel-protocol", format!("{p:?}: expected `grpc`"))),
    }
    let uri = endpoint
        .parse::<http::Uri>()
        .map_err(|e| ("otel-endpoint", format!("{endpoint:?}: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err((
            "otel-endpoint",
            format!("{endpoint:?}: expected http://host:port or https://host:port"),
        ));
    }
    let service_name = service_name.unwrap_or_else(|| "kla".into());
    if service_name.is_empty() || service_name.len() > 256 {
        return Err(("otel-service-name", "must be 1-256 characters".into()));
    }
    Ok(Some(OtelConfig {
        endpoint,
        service_name,
    }))
}

struct Otel {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static OTEL: OnceLock<Otel> = OnceLock::new();

/// One export's time limit: a slow collector delays only the batch thread.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts exporting kla's spans. Must run inside the Tokio runtime (the gRPC channel lives on it). A second call
/// in one process keeps the first provider.
pub fn init(cfg: &OtelConfig) -> anyhow::Result<()> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(cfg.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("kla");
    if OTEL.set(Otel { provider, tracer }).is_err() {
        tracing::warn!("kla's telemetry was already started in this process; keeping the first");
    }
    Ok(())
}

/// Exports what is buffered and stops the provider (at shutdown).
pub fn shutdown() {
    if let Some(o) = OTEL.get() {
        if let Err(e) = o.provider.force_flush() {
            tracing::warn!(error = %e, "flushing kla's own spans failed");
        }
        if let Err(e) = o.provider.shutdown() {
            tracing::warn!(error = %e, "stopping kla's telemetry failed");
        }
    }
}

/// The parent of a W3C `traceparent` (already checked by the caller's parser or not: malformed gives `None`).
fn remote_parent(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (_, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let cx = SpanContext::new(trace, span, TraceFlags::new(flags), true, TraceState::default());
    cx.is_valid().then_some(cx)
}

/// Opens the `execute_tool <tool>` span of a proxied call, child of the caller's `traceparent` when valid. The
/// returned context carries it: run the decision in it (`FutureExt::with_context`) so the decision span is its
/// child; the span ends when the last clone of the context drops. `None` when telemetry is off.
pub fn tool_call(tool: &str, route: &str, traceparent: Option<&str>) -> Option<Context> {
    let o = OTEL.get()?;
    let parent = match traceparent.and_then(remote_parent) {
        Some(sc) => Context::new().with_remote_span_context(sc),
        None => Context::new(),
    };
    let span = o
        .tracer
        .span_builder(format!("execute_tool {tool}"))
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", tool.to_owned()),
            KeyValue::new("gen_ai.tool.type", "extension"),
            KeyValue::new("kla.proxy.route", route.to_owned()),
        ])
        .start_with_context(&o.tracer, &parent);
    Some(parent.with_span(span))
}

/// Sets the outcome of a proxied call on its span.
pub fn tool_outcome(cx: Option<&Context>, outcome: &str) {
    if let Some(cx) = cx {
        cx.span()
            .set_attribute(KeyValue::new("kla.decision.outcome", outcome.to_owned()));
    }
}

/// The start of a decision, when telemetry is on.
pub fn start() -> Option<SystemTime> {
    OTEL.get().map(|_| SystemTime::now())
}

/// What a decision span says: names and outcomes only.
pub struct DecisionSpan<'a> {
    pub outcome: &'a str,
    pub action: &'a str,
    pub agent_id: &'a str,
    pub tenant: &'a str,
    pub packs: Vec<String>,
    /// The decision opened an approval.
    pub approval_opened: bool,
}

/// Records a decision made since `started`, as a child of the current context's span (the proxied call's, or
/// none).
pub fn decision(started: Option<SystemTime>, d: DecisionSpan<'_>) {
    let (Some(o), Some(started)) = (OTEL.get(), started) else {
        return;
    };
    let mut span = o
        .tracer
        .span_builder("kla.decision")
        .with_kind(SpanKind::Internal)
        .with_start_time(started)
        .with_attributes([
            KeyValue::new("kla.decision.outcome", d.outcome.to_owned()),
            KeyValue::new("kla.action", d.action.to_owned()),
            KeyValue::new("kla.agent.id", d.agent_id.to_owned()),
            KeyValue::new("kla.tenant", d.tenant.to_owned()),
            KeyValue::new(
                "kla.policy.packs",
                opentelemetry::Value::Array(
                    d.packs
                        .into_iter()
                        .map(opentelemetry::StringValue::from)
                        .collect::<Vec<_>>()
                        .into(),
                ),
            ),
        ])
        .start_with_context(&o.tracer, &Context::current());
    if d.approval_opened {
        span.add_event("kla.approval.opened", vec![]);
    }
    span.end();
}

/// Records one vote on an approval (`status` after it: `pending`, `approved`, `denied`) as its own span.
pub fn approval_vote(tenant: &str, vote: &str, status: &str) {
    let Some(o) = OTEL.get() else {
        return;
    };
    let mut span = o
        .tracer
        .span_builder("kla.approval.decide")
        .with_kind(SpanKind::Internal)
        .with_attributes([
            KeyValue::new("kla.tenant", tenant.to_owned()),
            KeyValue::new("kla.approval.vote", vote.to_owned()),
            KeyValue::new("kla.approval.status", status.to_owned()),
        ])
        .start(&o.tracer);
    if status != "pending" {
        span.add_event("kla.approval.resolved", vec![]);
    }
    span.end();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn validate_flags() {
        assert_eq!(validate(None, Some("grpc".into()), None), Ok(None));
        let c = validate(Some("http://127.0.0.1:4317".into()), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(c.service_name, "kla");
        assert_eq!(
            validate(Some("ftp://x".into()), None, None).unwrap_err().0,
            "otel-endpoint"
        );
        assert_eq!(
            validate(Some("http://x:1".into()), Some("udp".into()), None)
                .unwrap_err()
                .0,
            "otel-protocol"
        );
    }

    #[test]
    fn traceparent_parent() {
        let sc = remote_parent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(sc.is_remote() && sc.is_sampled());
        assert!(remote_parent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(remote_parent("garbage").is_none());
    }
}
