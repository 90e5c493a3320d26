//! Sealing: the redacted spans of one export grouped by trace, each group one ledger body (`trace.spans`) with the
//! spans in the OTLP JSON mapping under their resource and scope, each span's hash, what redaction replaced and the
//! active packs. A trace whose spans would make an entry over [`ENTRY_BUDGET`] is sealed as several entries
//! (`part` 0, 1, ...), so an entry stays well under the ledger's 16 MiB; a single span over [`MAX_SPAN_BYTES`]
//! is rejected. Pure: the receivers append what this returns.
//!
//! A span's hash is `sha256:` + hex SHA-256 of the RFC 8785 form of its JSON object exactly as the entry holds it,
//! so anyone holding the entry can recompute it.

use super::walk::Redacted;
use crate::policy::PackRef;
use crate::recorder::SpanBatch;
use crate::recorder::body::{SealPack, SpanHash, TraceSpans};
use crate::redact::Report;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Span bytes (canonical JSON) per entry before a trace continues in another entry.
pub const ENTRY_BUDGET: usize = 4 << 20;

/// The largest span (canonical JSON) sealed; a larger one is rejected as a partial success.
pub const MAX_SPAN_BYTES: usize = 8 << 20;

/// What an export becomes.
#[derive(Debug, Default)]
pub struct Sealed {
    /// One record per trace (or part of a trace), in the order the traces first appear.
    pub batches: Vec<SpanBatch>,
    /// The same redacted spans as one export, for forwarding.
    pub forward: ExportTraceServiceRequest,
    /// Per record in `batches`: its trace id and the ids of its spans (what becomes sealed when it is durable).
    pub ids: Vec<([u8; 16], Vec<[u8; 8]>)>,
    /// Spans rejected as too large to seal, and why (the first few).
    pub rejected: u64,
    pub reasons: Vec<String>,
    /// Spans sealed.
    pub spans: u64,
}

struct Chunk {
    trace: String,
    trace_id: [u8; 16],
    span_ids: Vec<[u8; 8]>,
    part: usize,
    proto: Vec<ResourceSpans>,
    json: Vec<Value>,
    hashes: Vec<SpanHash>,
    report: Report,
    size: usize,
    last: Option<(usize, Option<usize>)>,
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    // The OTLP types serialize to plain JSON (no maps with non-string keys), so this cannot fail; a failure would
    // be a bug in the mapping and seals an empty object rather than panic on input.
    serde_json::to_value(v).unwrap_or_else(|_| Value::Object(Map::new()))
}

fn canonical(v: &Value) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(v).unwrap_or_default()
}

/// Groups a validated, redacted export (with what redaction found, from [`super::walk::redact_export`]) into
/// records for `tenant`, naming the active `packs`.
pub fn seal(
    tenant: &str,
    mut req: ExportTraceServiceRequest,
    redacted: &Redacted,
    packs: &[&PackRef],
) -> Sealed {
    let packs: Vec<SealPack> = packs
        .iter()
        .map(|p| SealPack {
            name: p.name.clone(),
            version: p.version.clone(),
            digest: p.digest.clone(),
        })
        .collect();
    let mut out = Sealed::default();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut open: HashMap<Vec<u8>, usize> = HashMap::new();
    let empty = Report::default();
    for (ri, rs) in req.resource_spans.iter_mut().enumerate() {
        let (r_report, scopes) = redacted
            .resources
            .get(ri)
            .map(|(r, s)| (r, s.as_slice()))
            .unwrap_or((&empty, &[]));
        let r_json = json!({
            "resource": rs.resource.as_ref().map(to_json),
            "schemaUrl": rs.schema_url,
        });
        let r_size = canonical(&r_json).len();
        for (si, ss) in rs.scope_spans.iter_mut().enumerate() {
            let (s_report, span_reports) = scopes
                .get(si)
                .map(|(r, s)| (r, s.as_slice()))
                .unwrap_or((&empty, &[]));
            let s_json = json!({
                "scope": ss.scope.as_ref().map(to_json),
                "schemaUrl": ss.schema_url,
            });
            let s_size = canonical(&s_json).len();
            for (pi, span) in std::mem::take(&mut ss.spans).into_iter().enumerate() {
                let span_json = to_json(&span);
                let bytes = canonical(&span_json);
                if bytes.len() > MAX_SPAN_BYTES {
                    out.rejected += 1;
                    if out.reasons.len() < 5 {
                        out.reasons.push(format!(
                            "resourceSpans[{ri}].scopeSpans[{si}].spans[{pi}]: over {MAX_SPAN_BYTES} bytes once \
                             encoded, too large to seal"
                        ));
                    }
                    continue;
                }
                let hash = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
                let need = bytes.len() + r_size + s_size;
                let idx = match open.get(&span.trace_id) {
                    Some(&i) if chunks[i].size + need <= ENTRY_BUDGET || chunks[i].hashes.is_empty() => i,
                    other => {
                        let part = other.map_or(0, |&i| chunks[i].part + 1);
                        chunks.push(Chunk {
                            trace: hex::encode(&span.trace_id),
                            // Ids were validated before sealing (16 and 8 bytes).
                            trace_id: span.trace_id.as_slice().try_into().unwrap_or_default(),
                            span_ids: Vec::new(),
                            part,
                            proto: Vec::new(),
                            json: Vec::new(),
                            hashes: Vec::new(),
                            report: Report::default(),
                            size: 0,
                            last: None,
                        });
                        open.insert(span.trace_id.clone(), chunks.len() - 1);
                        chunks.len() - 1
                    }
                };
                let c = &mut chunks[idx];
                if c.last.map(|(r, _)| r) != Some(ri) {
                    c.proto.push(ResourceSpans {
                        resource: rs.resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: rs.schema_url.clone(),
                    });
                    let mut j = r_json.clone();
                    j["scopeSpans"] = Value::Array(Vec::new());
                    c.json.push(j);
                    c.report.merge(r_report);
                    c.size += r_size;
                    c.last = Some((ri, None));
                }
                if c.last.and_then(|(_, s)| s) != Some(si) {
                    if let Some(r) = c.proto.last_mut() {
                        r.scope_spans.push(ScopeSpans {
                            scope: ss.scope.clone(),
                            spans: Vec::new(),
                            schema_url: ss.schema_url.clone(),
                        });
                    }
                    if let Some(Value::Array(scopes)) =
                        c.json.last_mut().and_then(|r| r.get_mut("scopeSpans"))
                    {
                        let mut j = s_json.clone();
                        j["spans"] = Value::Array(Vec::new());
                        scopes.push(j);
                    }
                    c.report.merge(s_report);
                    c.size += s_size;
                    c.last = Some((ri, Some(si)));
                }
                if let Some(report) = span_reports.get(pi) {
                    c.report.merge(report);
                }
                c.hashes.push(SpanHash {
                    span_id: hex::encode(&span.span_id),
                    hash,
                });
                c.span_ids
                    .push(span.span_id.as_slice().try_into().unwrap_or_default());
                c.size += bytes.len();
                if let Some(Value::Array(spans)) = c
                    .json
                    .last_mut()
                    .and_then(|r| r.get_mut("scopeSpans"))
                    .and_then(|s| s.as_array_mut())
                    .and_then(|s| s.last_mut())
                    .and_then(|s| s.get_mut("spans"))
                {
                    spans.push(span_json);
                }
                if let Some(scope) = c.proto.last_mut().and_then(|r| r.scope_spans.last_mut()) {
                    scope.spans.push(span);
                }
                out.spans += 1;
            }
        }
    }
    for c in chunks {
        let body = TraceSpans {
            trace_id: c.trace.clone(),
            resource_spans: c.json,
            span_hashes: c.hashes,
            redaction: c.report.counts,
            packs: packs.clone(),
            part: (c.part > 0).then_some(c.part as u64),
        };
        out.forward.resource_spans.extend(c.proto);
        out.ids.push((c.trace_id, c.span_ids));
        out.batches.push(SpanBatch {
            tenant: tenant.to_owned(),
            trace_id: c.trace,
            body,
        });
    }
    out
}

/// The hash [`seal`] gives a span's JSON object (for verifiers and tests).
pub fn span_hash(span_json: &Value) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(canonical(span_json))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::otlp::{self, kv, service, string};
    use opentelemetry_proto::tonic::trace::v1::Span;

    /// Span `id` of trace `trace`, named `op<id>`, with attribute `a` = `attr`.
    fn span(trace: u8, id: u8, attr: &str) -> Span {
        Span {
            name: format!("op{id}"),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_000_500,
            attributes: vec![kv("a", string(attr))],
            ..otlp::span(trace, id)
        }
    }

    /// One resource per item, the `i`th of service `svc<i>`.
    fn export(spans: Vec<Vec<Span>>) -> ExportTraceServiceRequest {
        otlp::export(
            spans
                .into_iter()
                .enumerate()
                .map(|(i, spans)| (Some(service(&format!("svc{i}"))), spans)),
        )
    }

    fn pack() -> PackRef {
        PackRef {
            name: "p".into(),
            version: "1.0.0".into(),
            digest: "ab".into(),
            signer_key_id: None,
        }
    }

    #[test]
    fn spans_are_grouped_by_trace_under_their_resource_with_hashes_and_the_pack() {
        let req = export(vec![
            vec![span(1, 1, "x"), span(2, 2, "y")],
            vec![span(1, 3, "z")],
        ]);
        let mut redacted = Redacted::default();
        let mut fired = Report::default();
        fired.counts.insert("email".into(), 2);
        redacted.resources = vec![
            (
                Report::default(),
                vec![(Report::default(), vec![fired.clone(), Report::default()])],
            ),
            (fired.clone(), vec![(Report::default(), vec![Report::default()])]),
        ];
        let p = pack();
        let sealed = seal("acme", req, &redacted, &[&p]);
        assert_eq!((sealed.spans, sealed.rejected), (3, 0));
        assert_eq!(sealed.batches.len(), 2);
        let t1 = &sealed.batches[0];
        assert_eq!(t1.trace_id, hex::encode([1u8; 16]));
        assert_eq!(t1.tenant, "acme");
        let b = &serde_json::to_value(&t1.body).unwrap();
        assert_eq!(
            b["resourceSpans"].as_array().unwrap().len(),
            2,
            "both resources hold trace 1"
        );
        let names: Vec<_> = b["resourceSpans"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["scopeSpans"][0]["spans"].as_array().unwrap().clone())
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["op1", "op3"]);
        assert_eq!(
            b["resourceSpans"][1]["resource"]["attributes"][0]["value"]["stringValue"],
            "svc1"
        );
        assert_eq!(
            b["redaction"],
            json!({"email": 4}),
            "span 1's report and resource 1's"
        );
        assert_eq!(
            b["packs"],
            json!([{"name": "p", "version": "1.0.0", "digest": "ab"}])
        );
        let span0 = &b["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span0["traceId"], hex::encode([1u8; 16]));
        assert_eq!(
            span0["startTimeUnixNano"], "1700000000000000000",
            "int64 as a string"
        );
        assert_eq!(b["spanHashes"][0]["spanId"], hex::encode([1u8; 8]));
        assert_eq!(b["spanHashes"][0]["hash"], span_hash(span0));
        assert!(b.get("part").is_none());
        assert_eq!(
            serde_json::to_value(&sealed.batches[1].body).unwrap()["redaction"],
            json!({})
        );
        // The forward copy holds the same spans.
        let fwd: usize = sealed
            .forward
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        assert_eq!(fwd, 3);
    }

    #[test]
    fn a_trace_over_the_entry_budget_is_sealed_in_parts_and_a_huge_span_is_rejected() {
        let big = "x".repeat(ENTRY_BUDGET / 3);
        let huge = "y".repeat(MAX_SPAN_BYTES + 1);
        let req = export(vec![vec![
            span(1, 1, &big),
            span(1, 2, &big),
            span(1, 3, &big),
            span(1, 4, &huge),
        ]]);
        let sealed = seal("acme", req, &Redacted::default(), &[]);
        assert_eq!((sealed.spans, sealed.rejected), (3, 1));
        assert!(sealed.reasons[0].contains("spans[3]"), "{:?}", sealed.reasons);
        assert_eq!(sealed.batches.len(), 2);
        assert_eq!(sealed.batches[1].body.part, Some(1));
        for b in &sealed.batches {
            assert!(canonical(&serde_json::to_value(&b.body).unwrap()).len() < ENTRY_BUDGET + 1024);
        }
    }
}
