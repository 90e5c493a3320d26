//! OTLP: the export decoders, validation, redaction and sealing, and the target's seeds.

use serde_json::{Value, json};

use crate::error::{Class, Classify};

use super::Verdict;

/// The OTLP export decoders as the receivers call them. The first byte picks the encoding (`0` protobuf, `1` JSON,
/// `2` gzip-compressed protobuf, inflated under a 1 MiB limit); the rest is the body. An accepted export
/// re-encodes to the same protobuf bytes; after validation every span left has valid ids; redaction with an
/// identity function changes nothing but kla's own summary attributes; sealing keeps every span (none is too large
/// under the limit), each hash recomputes from the body, and every body has a canonical encoding.
pub fn otlp(data: &[u8]) -> Verdict {
    use crate::otlp::{Encoding, seal, walk};
    use prost::Message as _;
    let Some((&mode, body)) = data.split_first() else {
        return Verdict::Refused;
    };
    let inflated;
    let (encoding, body) = match mode {
        0 => (Encoding::Protobuf, body),
        1 => (Encoding::Json, body),
        2 => match crate::otlp::gunzip(body, 1 << 20) {
            Ok(b) => {
                inflated = b;
                (Encoding::Protobuf, inflated.as_slice())
            }
            Err(e) => {
                assert!(matches!(e.class(), Class::Invalid | Class::TooLarge), "{e}");
                return Verdict::Refused;
            }
        },
        _ => return Verdict::Refused,
    };
    let mut req = match crate::otlp::decode(encoding, body) {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e.class(), Class::Invalid, "{e}");
            assert!(!e.to_string().is_empty());
            return Verdict::Refused;
        }
    };
    let bytes = req.encode_to_vec();
    let again = crate::otlp::decode(Encoding::Protobuf, &bytes).expect("an accepted export re-decodes");
    assert_eq!(again.encode_to_vec(), bytes, "protobuf round trip");
    let total: usize = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let (rejected, reasons) = walk::reject_invalid(&mut req);
    assert_eq!(rejected > 0, !reasons.is_empty());
    let kept: Vec<_> = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    assert_eq!(kept.len() as u64 + rejected, total as u64);
    assert!(kept.iter().all(|s| walk::invalid_reason(s).is_none()));
    let kept = kept.len() as u64;
    let mut strip = req.clone();
    let mut keep =
        walk::redact_fn(|_: &str, s: &str, _: &mut crate::redact::Report| std::borrow::Cow::Borrowed(s));
    let redacted = walk::redact_export(&mut keep, &mut req);
    for m in [&mut strip, &mut req] {
        for sp in m
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
        {
            sp.attributes
                .retain(|kv| !kv.key.starts_with(walk::SUMMARY_PREFIX));
        }
    }
    // Deeply nested values are cut by the walk; below that depth nothing changes.
    let deep = format!("{strip:?}").matches("ArrayValue").count()
        + format!("{strip:?}").matches("KvlistValue").count();
    if deep < walk::MAX_VALUE_DEPTH {
        assert_eq!(
            strip.encode_to_vec(),
            req.encode_to_vec(),
            "identity redaction changed the export"
        );
    }
    let sealed = seal::seal("fuzz", req, &redacted, &[]);
    assert_eq!(sealed.spans + sealed.rejected, kept);
    for b in &sealed.batches {
        let body = serde_json_canonicalizer::to_vec(&b.body).expect("a sealed body has a canonical form");
        assert!(!body.is_empty());
        let spans: Vec<&Value> = b
            .body
            .resource_spans
            .iter()
            .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
            .flat_map(|s| s["spans"].as_array().into_iter().flatten())
            .collect();
        let hashes = &b.body.span_hashes;
        assert_eq!(spans.len(), hashes.len());
        for (sp, h) in spans.iter().zip(hashes) {
            assert_eq!(h.hash, seal::span_hash(sp), "a span hash does not recompute");
            assert_eq!(sp["traceId"], b.trace_id.as_str());
        }
    }
    Verdict::Accepted
}

/// OTLP seeds: an export in each encoding (attributes of every kind, an event, a link, a rejected span), and
/// refusals.
pub(super) fn otlp_seeds() -> Vec<(&'static str, Vec<u8>, Verdict)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    use std::io::Write as _;
    let json_body = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent"}}]},
    "scopeSpans": [{"scope": {"name": "lib", "version": "1"}, "spans": [
      {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "parentSpanId": "eee19b7ec3c1b173",
       "name": "execute_tool refund", "kind": 3, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
       "attributes": [{"key": "s", "value": {"stringValue": "user@example.com"}}, {"key": "i", "value": {"intValue": "42"}},
         {"key": "d", "value": {"doubleValue": 0.5}}, {"key": "b", "value": {"boolValue": true}},
         {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": 1}]}}},
         {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}},
         {"key": "bytes", "value": {"bytesValue": "AQI="}}],
       "events": [{"timeUnixNano": "1544712660500000000", "name": "message", "attributes": [{"key": "content", "value": {"stringValue": "hi"}}]}],
       "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "attributes": []}],
       "status": {"code": 2, "message": "failed"}},
      {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "00", "name": "bad id"}
    ]}]}]});
    let json_bytes = serde_json::to_vec(&json_body).unwrap_or_default();
    let req: ExportTraceServiceRequest = serde_json::from_slice(&json_bytes).unwrap_or_default();
    let proto = req.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(&proto);
    let gz = gz.finish().unwrap_or_default();
    let with = |mode: u8, body: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(body);
        v
    };
    vec![
        ("protobuf", with(0, &proto), Verdict::Accepted),
        ("json", with(1, &json_bytes), Verdict::Accepted),
        ("gzip", with(2, &gz), Verdict::Accepted),
        (
            "json-repeated-key",
            with(1, br#"{"resourceSpans":[],"resourceSpans":[]}"#),
            Verdict::Refused,
        ),
        (
            "protobuf-truncated",
            with(0, &proto[..proto.len() / 2]),
            Verdict::Refused,
        ),
        ("not-gzip", with(2, b"plain"), Verdict::Refused),
    ]
}
