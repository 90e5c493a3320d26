//! What a span carries, visited: validation of ids (the spans OTLP calls invalid are rejected, the rest kept) and
//! the redaction walk, which hands every string of an export to one function with the key it sits under: resource
//! and scope attributes, the resource's entity references (type, schema URL, id and description keys), scope name
//! and version, schema URLs, span name, trace state, status message, attributes, events and links with their
//! attributes, nested arrays and kv-lists, and every attribute key itself. Never ids, timestamps, kinds, flags,
//! numbers or bytes (they are not strings).
//!
//! An attribute key is text a sender chooses like any value, so it is redacted too (with no key of its own, so key
//! rules never apply to it, only the detectors). A key that redaction changed is kept unique within its list
//! (`~2`, `~3`, ... appended), so the list stays a valid OTLP attribute map; an entity reference's id or
//! description key that named a renamed resource attribute names its new key.
//!
//! Generic over that function, so the walk is tested with a closure that plants a marker, and the receivers call
//! it with the tenant's [`crate::redact::Redactor`].

use crate::redact::Report;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::borrow::Cow;
use std::collections::HashSet;

/// Attribute prefix of a span's redaction summary: `kla.redaction.<detector>` = number of values replaced.
pub const SUMMARY_PREFIX: &str = "kla.redaction.";

/// Nesting depth of attribute values walked; deeper values are replaced by an empty value (protobuf allows
/// deeper nesting than a ledger entry should hold, and recursion must stay bounded).
pub const MAX_VALUE_DEPTH: usize = 32;

/// The key a string is redacted under when it is itself a key (an attribute key, an entity reference's id or
/// description key): none, so only the detectors run on it.
const NO_KEY: &str = "";

/// The redaction function: `(key, string, report)` to the string to keep.
pub trait RedactFn: for<'a> FnMut(&str, &'a str, &mut Report) -> Cow<'a, str> {}
impl<F: for<'a> FnMut(&str, &'a str, &mut Report) -> Cow<'a, str>> RedactFn for F {}

/// `f` as a [`RedactFn`]: a closure passed here gets the signature that ties its output to its input string.
pub fn redact_fn<F>(f: F) -> F
where
    F: for<'a> FnMut(&str, &'a str, &mut Report) -> Cow<'a, str>,
{
    f
}

fn string<F: RedactFn>(f: &mut F, key: &str, s: &mut String, report: &mut Report) {
    let replaced = match f(key, s, report) {
        Cow::Borrowed(_) => None,
        Cow::Owned(o) => Some(o),
    };
    if let Some(o) = replaced {
        *s = o;
    }
}

fn value<F: RedactFn>(f: &mut F, key: &str, v: &mut AnyValue, report: &mut Report, depth: usize) {
    if depth >= MAX_VALUE_DEPTH {
        v.value = None;
        return;
    }
    match &mut v.value {
        Some(any_value::Value::StringValue(s)) => string(f, key, s, report),
        Some(any_value::Value::ArrayValue(a)) => {
            for item in &mut a.values {
                value(f, key, item, report, depth + 1);
            }
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            attributes(f, &mut kv.values, report, depth + 1);
        }
        // Booleans, numbers and bytes carry no text to redact.
        _ => {}
    }
}

/// Redacts a list of attributes: each value under its key as sent (so key rules see what the sender named), then
/// the key itself. Keys that changed are made unique in the list; returns them as (as sent, as kept).
fn attributes<F: RedactFn>(
    f: &mut F,
    attrs: &mut [KeyValue],
    report: &mut Report,
    depth: usize,
) -> Vec<(String, String)> {
    let mut changed: Vec<(usize, String)> = Vec::new();
    for (i, kv) in attrs.iter_mut().enumerate() {
        if let Some(v) = &mut kv.value {
            value(f, &kv.key, v, report, depth);
        }
        if let Cow::Owned(k) = f(NO_KEY, &kv.key, report) {
            changed.push((i, k));
        }
    }
    if changed.is_empty() {
        return Vec::new();
    }
    // A changed key never takes the name of a key kept as sent, nor of another changed key.
    let mut taken: HashSet<String> = attrs
        .iter()
        .enumerate()
        .filter(|(i, _)| !changed.iter().any(|(c, _)| c == i))
        .map(|(_, kv)| kv.key.clone())
        .collect();
    let mut renames = Vec::with_capacity(changed.len());
    for (i, new) in changed {
        let mut k = new.clone();
        let mut n = 2u32;
        while taken.contains(&k) {
            k = format!("{new}~{n}");
            n += 1;
        }
        taken.insert(k.clone());
        let old = std::mem::replace(&mut attrs[i].key, k.clone());
        renames.push((old, k));
    }
    renames
}

/// Redacts a resource's strings: its attributes and its entity references.
pub fn resource<F: RedactFn>(f: &mut F, r: &mut Resource, report: &mut Report) {
    let renames = attributes(f, &mut r.attributes, report, 0);
    for e in &mut r.entity_refs {
        string(f, "otel.entity_ref.type", &mut e.r#type, report);
        string(f, "otel.entity_ref.schema_url", &mut e.schema_url, report);
        for k in e.id_keys.iter_mut().chain(e.description_keys.iter_mut()) {
            // A reference to a renamed attribute follows it; any other is text like the rest.
            match renames.iter().find(|(old, _)| old == k) {
                Some((_, new)) => k.clone_from(new),
                None => string(f, NO_KEY, k, report),
            }
        }
    }
}

/// Redacts an instrumentation scope's strings.
pub fn scope<F: RedactFn>(f: &mut F, s: &mut InstrumentationScope, report: &mut Report) {
    string(f, "otel.scope.name", &mut s.name, report);
    string(f, "otel.scope.version", &mut s.version, report);
    attributes(f, &mut s.attributes, report, 0);
}

/// Redacts a span's strings (ids, times, kind and flags are never passed).
pub fn span<F: RedactFn>(f: &mut F, s: &mut Span, report: &mut Report) {
    string(f, "span.name", &mut s.name, report);
    string(f, "span.trace_state", &mut s.trace_state, report);
    attributes(f, &mut s.attributes, report, 0);
    for e in &mut s.events {
        string(f, "event.name", &mut e.name, report);
        attributes(f, &mut e.attributes, report, 0);
    }
    for l in &mut s.links {
        string(f, "link.trace_state", &mut l.trace_state, report);
        attributes(f, &mut l.attributes, report, 0);
    }
    if let Some(st) = &mut s.status {
        string(f, "status.message", &mut st.message, report);
    }
}

/// The span attributes that summarise `report`: `kla.redaction.<detector>` with its count, in detector order.
pub fn summary_attributes(report: &Report) -> Vec<KeyValue> {
    report
        .counts
        .iter()
        .map(|(detector, n)| KeyValue {
            key: format!("{SUMMARY_PREFIX}{detector}"),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i64::try_from(*n).unwrap_or(i64::MAX))),
            }),
            ..Default::default()
        })
        .collect()
}

/// Redacts a whole (validated) export in place: every resource, scope and span, each span getting its summary
/// attributes. Returns, per resource and scope, what their own strings fired (spans' counts are in their
/// summaries and in the returned per-span reports, in export order).
pub fn redact_export<F: RedactFn>(f: &mut F, req: &mut ExportTraceServiceRequest) -> Redacted {
    let mut out = Redacted::default();
    for rs in &mut req.resource_spans {
        let mut r_report = Report::default();
        if let Some(r) = &mut rs.resource {
            resource(f, r, &mut r_report);
        }
        string(f, "otel.schema_url", &mut rs.schema_url, &mut r_report);
        let mut scopes = Vec::with_capacity(rs.scope_spans.len());
        for ss in &mut rs.scope_spans {
            let mut s_report = Report::default();
            if let Some(s) = &mut ss.scope {
                scope(f, s, &mut s_report);
            }
            string(f, "otel.schema_url", &mut ss.schema_url, &mut s_report);
            let mut spans = Vec::with_capacity(ss.spans.len());
            for sp in &mut ss.spans {
                let mut report = Report::default();
                // Summary keys are kla's: one the sender set would pass for a count kla never made.
                sp.attributes.retain(|kv| !kv.key.starts_with(SUMMARY_PREFIX));
                span(f, sp, &mut report);
                sp.attributes.extend(summary_attributes(&report));
                spans.push(report);
            }
            scopes.push((s_report, spans));
        }
        out.resources.push((r_report, scopes));
    }
    out
}

/// What [`redact_export`] found, shaped like the export: per resource its report and, per scope, its report and
/// its spans' reports.
#[derive(Debug, Default)]
pub struct Redacted {
    /// Per resource: (its report, its scopes).
    pub resources: Vec<(Report, Vec<ScopeReports>)>,
}

/// A scope's report and its spans' reports, in order.
pub type ScopeReports = (Report, Vec<Report>);

/// Why a span is rejected, or `None` when its ids are valid (OTLP: a trace id is 16 bytes, a span id 8, neither
/// all zeroes; a parent id is empty or 8 bytes; each link names a valid trace and span).
pub fn invalid_reason(s: &Span) -> Option<String> {
    fn id(bytes: &[u8], len: usize, what: &str) -> Option<String> {
        if bytes.len() != len {
            Some(format!("{what} must be {len} bytes, got {}", bytes.len()))
        } else if bytes.iter().all(|b| *b == 0) {
            Some(format!("{what} is all zeroes"))
        } else {
            None
        }
    }
    id(&s.trace_id, 16, "traceId")
        .or_else(|| id(&s.span_id, 8, "spanId"))
        .or_else(|| {
            (!s.parent_span_id.is_empty())
                .then(|| id(&s.parent_span_id, 8, "parentSpanId"))
                .flatten()
        })
        .or_else(|| {
            s.links.iter().enumerate().find_map(|(i, l)| {
                id(&l.trace_id, 16, &format!("links[{i}].traceId"))
                    .or_else(|| id(&l.span_id, 8, &format!("links[{i}].spanId")))
            })
        })
}

/// Removes the invalid spans; returns how many were removed and the first few reasons.
pub fn reject_invalid(req: &mut ExportTraceServiceRequest) -> (u64, Vec<String>) {
    const REASONS: usize = 5;
    let (mut rejected, mut reasons) = (0u64, Vec::new());
    for (ri, rs) in req.resource_spans.iter_mut().enumerate() {
        for (si, ss) in rs.scope_spans.iter_mut().enumerate() {
            let mut n = 0usize;
            ss.spans.retain(|sp| {
                let at = n;
                n += 1;
                match invalid_reason(sp) {
                    None => true,
                    Some(why) => {
                        rejected += 1;
                        if reasons.len() < REASONS {
                            reasons.push(format!("resourceSpans[{ri}].scopeSpans[{si}].spans[{at}]: {why}"));
                        }
                        false
                    }
                }
            });
        }
    }
    (rejected, reasons)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::otlp::{self, kv, string as s};
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, EntityRef, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::Status;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};

    const MARK: &str = "PLANTED";

    fn planted(n: usize) -> String {
        format!("{MARK}-{n}")
    }

    /// An export with the marker in every string place a span can hold, numbered so each visit is accounted for.
    fn export() -> (ExportTraceServiceRequest, usize) {
        let mut n = 0;
        let mut next = || {
            n += 1;
            planted(n)
        };
        let nested = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![
                    kv("inner", s(&next())),
                    kv(&next(), s("clean")),
                    kv(
                        "list",
                        Some(AnyValue {
                            value: Some(any_value::Value::ArrayValue(ArrayValue {
                                values: vec![s(&next()).unwrap(), s(&next()).unwrap()],
                            })),
                        }),
                    ),
                ],
            })),
        };
        let span = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            parent_span_id: vec![3; 8],
            trace_state: next(),
            name: next(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_001,
            flags: 0x301,
            attributes: vec![
                kv("plain", s(&next())),
                kv(&next(), s("clean")),
                kv("nested", Some(nested)),
                kv(
                    "n",
                    Some(AnyValue {
                        value: Some(any_value::Value::IntValue(7)),
                    }),
                ),
            ],
            events: vec![Event {
                time_unix_nano: 5,
                name: next(),
                attributes: vec![kv("e", s(&next()))],
                ..Default::default()
            }],
            links: vec![Link {
                trace_id: vec![4; 16],
                span_id: vec![5; 8],
                trace_state: next(),
                attributes: vec![kv("l", s(&next()))],
                ..Default::default()
            }],
            status: Some(Status {
                message: next(),
                code: 2,
            }),
            ..Default::default()
        };
        let host_key = next();
        let resource = Resource {
            attributes: vec![kv("service.name", s(&next())), kv(&host_key, s(&next()))],
            entity_refs: vec![EntityRef {
                schema_url: next(),
                r#type: next(),
                // The first names the planted attribute key and follows its rename; the others are text.
                id_keys: vec![host_key.clone(), next()],
                description_keys: vec![next()],
            }],
            ..Default::default()
        };
        let mut req = otlp::export([(Some(resource), vec![span])]);
        // The scope and both schema URLs, numbered in the order they are written.
        let resource_spans = &mut req.resource_spans[0];
        let scope_spans = &mut resource_spans.scope_spans[0];
        scope_spans.scope = Some(InstrumentationScope {
            name: next(),
            version: next(),
            attributes: vec![kv("scope.attr", s(&next()))],
            ..Default::default()
        });
        scope_spans.schema_url = next();
        resource_spans.schema_url = next();
        (req, n)
    }

    /// Replaces the marker with `[R]`, counting each replacement as detector `marker`.
    fn replace_marker<'a>(_key: &str, s: &'a str, report: &mut Report) -> Cow<'a, str> {
        if s.contains(MARK) {
            *report.counts.entry("marker".into()).or_default() += 1;
            Cow::Owned(s.replace(MARK, "[R]"))
        } else {
            Cow::Borrowed(s)
        }
    }

    #[test]
    fn every_string_place_is_visited_and_nothing_else() {
        let (mut req, planted_count) = export();
        let before = req.clone();
        let mut seen = Vec::new();
        let mut f = redact_fn(|key: &str, v: &str, r: &mut Report| {
            seen.push((key.to_owned(), v.to_owned()));
            replace_marker(key, v, r)
        });
        let redacted = redact_export(&mut f, &mut req);
        // Every planted value was handed over exactly once, under its key where it has one.
        let mut visited: Vec<usize> = seen
            .iter()
            .filter_map(|(_, v)| v.strip_prefix(&format!("{MARK}-"))?.parse().ok())
            .collect();
        visited.sort_unstable();
        assert_eq!(visited, (1..=planted_count).collect::<Vec<_>>());
        for key in [
            "inner",
            "list",
            "plain",
            "e",
            "l",
            "service.name",
            "scope.attr",
            "span.name",
        ] {
            assert!(seen.iter().any(|(k, _)| k == key), "key {key} passed");
        }
        // Nothing planted survives anywhere in the message.
        let text = format!("{req:?}");
        assert!(!text.contains(MARK), "{text}");
        // Ids, times, kinds and flags are untouched.
        let (a, b) = (
            &before.resource_spans[0].scope_spans[0].spans[0],
            &req.resource_spans[0].scope_spans[0].spans[0],
        );
        assert_eq!(
            (&a.trace_id, &a.span_id, &a.parent_span_id, a.kind, a.flags),
            (&b.trace_id, &b.span_id, &b.parent_span_id, b.kind, b.flags)
        );
        assert_eq!(
            (
                a.start_time_unix_nano,
                a.end_time_unix_nano,
                a.events[0].time_unix_nano
            ),
            (
                b.start_time_unix_nano,
                b.end_time_unix_nano,
                b.events[0].time_unix_nano
            )
        );
        assert_eq!(
            (&a.links[0].trace_id, &a.links[0].span_id),
            (&b.links[0].trace_id, &b.links[0].span_id)
        );
        assert_eq!(b.status.as_ref().map(|s| s.code), Some(2));
        // The span's own strings (name, trace state, 4 attribute strings, event, link, status) became its
        // summary; the resource's and scope's counts are reported apart.
        let (r_report, scopes) = &redacted.resources[0];
        assert_eq!(
            r_report.counts.get("marker"),
            Some(&8),
            "2 attribute values, 1 attribute key, the entity reference's type, schema URL, id key and description \
             key, and the resource schema URL"
        );
        // The entity reference's id key that named the renamed attribute names its new key.
        let res = req.resource_spans[0].resource.as_ref().unwrap();
        assert_eq!(res.entity_refs[0].id_keys[0], res.attributes[1].key);
        assert!(res.attributes[1].key.starts_with("[R]"));
        assert_eq!(
            scopes[0].0.counts.get("marker"),
            Some(&4),
            "scope name, version, attribute, schema URL"
        );
        assert_eq!(scopes[0].1[0].counts.get("marker"), Some(&13));
        let summary: Vec<_> = b
            .attributes
            .iter()
            .filter(|kv| kv.key.starts_with(SUMMARY_PREFIX))
            .collect();
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].key, "kla.redaction.marker");
        assert_eq!(
            summary[0].value.as_ref().and_then(|v| v.value.clone()),
            Some(any_value::Value::IntValue(13))
        );
    }

    #[test]
    fn a_summary_that_arrives_with_a_span_is_replaced_by_kla_s_own() {
        let (mut req, _) = export();
        let mut f = redact_fn(replace_marker);
        redact_export(&mut f, &mut req);
        let once = req.clone();
        // A second pass where nothing fires drops the summary the first pass wrote (as it drops one a sender
        // forged) and leaves every other value as it was.
        let mut keep = redact_fn(|_: &str, v: &str, _: &mut Report| Cow::Borrowed(v));
        let redacted = redact_export(&mut keep, &mut req);
        assert!(redacted.resources[0].1[0].1[0].is_empty());
        let mut expected = once;
        for sp in &mut expected.resource_spans[0].scope_spans[0].spans {
            sp.attributes.retain(|kv| !kv.key.starts_with(SUMMARY_PREFIX));
        }
        assert_eq!(req, expected);
    }

    #[test]
    fn invalid_ids_are_rejected_with_a_reason() {
        let (req, _) = export();
        let good = req.resource_spans[0].scope_spans[0].spans[0].clone();
        assert_eq!(invalid_reason(&good), None);
        type Break = Box<dyn Fn(&mut Span)>;
        let cases: Vec<(Break, &str)> = vec![
            (
                Box::new(|s| s.trace_id = vec![1; 4]),
                "traceId must be 16 bytes, got 4",
            ),
            (Box::new(|s| s.trace_id = vec![0; 16]), "traceId is all zeroes"),
            (Box::new(|s| s.span_id.clear()), "spanId must be 8 bytes, got 0"),
            (
                Box::new(|s| s.parent_span_id = vec![1; 3]),
                "parentSpanId must be 8 bytes, got 3",
            ),
            (
                Box::new(|s| s.links[0].span_id = vec![0; 8]),
                "links[0].spanId is all zeroes",
            ),
        ];
        for (breaks, why) in cases {
            let mut bad = good.clone();
            breaks(&mut bad);
            assert_eq!(invalid_reason(&bad).as_deref(), Some(why));
        }
        let mut root = good.clone();
        root.parent_span_id.clear();
        assert_eq!(invalid_reason(&root), None, "a root span has no parent");
        let mut req = req;
        let mut bad = good.clone();
        bad.span_id = vec![9; 7];
        req.resource_spans[0].scope_spans[0].spans.push(bad);
        let (n, reasons) = reject_invalid(&mut req);
        assert_eq!(n, 1);
        assert_eq!(
            reasons,
            vec!["resourceSpans[0].scopeSpans[0].spans[1]: spanId must be 8 bytes, got 7"]
        );
        assert_eq!(req.resource_spans[0].scope_spans[0].spans, vec![good]);
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = s("leaf").unwrap();
        for _ in 0..(MAX_VALUE_DEPTH + 5) {
            v = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
            };
        }
        let mut attrs = vec![kv("deep", Some(v))];
        let mut visits = 0;
        let mut f = redact_fn(|_: &str, v: &str, _: &mut Report| {
            visits += usize::from(v == "leaf");
            Cow::Borrowed(v)
        });
        attributes(&mut f, &mut attrs, &mut Report::default(), 0);
        assert_eq!(
            visits, 0,
            "the leaf lies beyond the walked depth and is cut, not visited"
        );
        assert!(!format!("{attrs:?}").contains("leaf"));
    }

    #[test]
    fn redacted_keys_stay_unique_and_references_follow_them() {
        // "PLANTED" becomes "[R]", which a key kept as sent already holds; "PLANTED~2" becomes "[R]~2", which the
        // first rename took.
        let mut r = Resource {
            attributes: vec![
                kv("PLANTED", s("a")),
                kv("[R]", s("b")),
                kv("PLANTED~2", s("c")),
                kv("x", s("d")),
            ],
            entity_refs: vec![EntityRef {
                id_keys: vec!["PLANTED".into(), "x".into()],
                description_keys: vec!["PLANTED~2".into(), "PLANTED-free".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut f = redact_fn(replace_marker);
        let mut report = Report::default();
        resource(&mut f, &mut r, &mut report);
        let keys: Vec<&str> = r.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["[R]~2", "[R]", "[R]~2~2", "x"]);
        let values: Vec<_> = r.attributes.iter().map(|kv| kv.value.clone()).collect();
        assert_eq!(
            values,
            vec![s("a"), s("b"), s("c"), s("d")],
            "values stay with their keys"
        );
        assert_eq!(r.entity_refs[0].id_keys, ["[R]~2", "x"]);
        assert_eq!(r.entity_refs[0].description_keys, ["[R]~2~2", "[R]-free"]);
        assert_eq!(report.counts.get("marker"), Some(&3));
    }
}
