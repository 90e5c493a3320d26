//! OTLP trace export requests for the unit tests of `otlp/` (dedup, seal, walk): spans with given ids, string
//! values and attributes, and resources each holding one scope of spans.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// A string value.
pub(crate) fn string(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

/// An attribute.
pub(crate) fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// A span of trace `[trace; 16]` with id `[id; 8]` and nothing else set.
pub(crate) fn span(trace: u8, id: u8) -> Span {
    Span {
        trace_id: vec![trace; 16],
        span_id: vec![id; 8],
        ..Default::default()
    }
}

/// A resource that names its service.
pub(crate) fn service(name: &str) -> Resource {
    Resource {
        attributes: vec![kv("service.name", string(name))],
        ..Default::default()
    }
}

/// An export with one `ResourceSpans` per item, in order, each holding its spans in one scope without a name.
pub(crate) fn export(
    resources: impl IntoIterator<Item = (Option<Resource>, Vec<Span>)>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: resources
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource,
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}
