//! Export bodies from outside: the encoding named by `Content-Type`, gzip inflated under the size limit (the
//! inflater is cut off one byte past it, so a small bomb never inflates fully), protobuf or the OTLP JSON mapping
//! (hex ids, 64-bit integers as strings or numbers, enums as numbers, unknown fields ignored; a repeated key is
//! refused, as for every JSON kla reads).

use super::OtlpError;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::io::Read;

/// How an export (and its answer) is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl Encoding {
    /// The encoding of a `Content-Type` value (parameters ignored, case-insensitive); `None`: unsupported.
    pub fn of_content_type(ct: &str) -> Option<Encoding> {
        let media = ct.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/x-protobuf")
            || media.eq_ignore_ascii_case("application/protobuf")
        {
            Some(Encoding::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    /// The `Content-Type` of answers in this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// `body` inflated (gzip, possibly several members), or refused once the output passes `limit` bytes.
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, OtlpError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::MultiGzDecoder::new(body)
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| OtlpError::Invalid(format!("the gzip body does not inflate: {e}")))?;
    if out.len() > limit {
        return Err(OtlpError::TooLarge(format!(
            "the export is over {limit} bytes once inflated"
        )));
    }
    Ok(out)
}

/// Decodes an export in `encoding`.
pub fn decode(encoding: Encoding, body: &[u8]) -> Result<ExportTraceServiceRequest, OtlpError> {
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)
            .map_err(|e| OtlpError::Invalid(format!("the protobuf body does not decode: {e}"))),
        Encoding::Json => {
            let bad = |e: &dyn std::fmt::Display| {
                OtlpError::Invalid(format!("the JSON body is not an OTLP export: {e}"))
            };
            let mut v: serde_json::Value = crate::json::from_slice_unique(body).map_err(|e| bad(&e))?;
            fill_omitted(&mut v, None);
            serde_json::from_value(v).map_err(|e| bad(&e))
        }
    }
}

/// What the OTLP JSON mapping lets a sender omit and `opentelemetry-proto`'s serde mapping still requires: an
/// empty `arrayValue` / `kvlistValue` (`{}`, no `values`), a key-value without `key` (the empty key), and the
/// protobuf JSON spellings of non-finite doubles (`"NaN"`, `"Infinity"`, `"-Infinity"`, which JSON numbers cannot
/// hold: such a value is kept as an empty value).
fn fill_omitted(v: &mut serde_json::Value, parent: Option<&str>) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            if matches!(parent, Some("arrayValue" | "kvlistValue")) && !o.contains_key("values") {
                o.insert("values".into(), Value::Array(Vec::new()));
            }
            if matches!(parent, Some("attributes" | "kvlistValues")) && !o.contains_key("key") {
                o.insert("key".into(), Value::String(String::new()));
            }
            if let Some(Value::String(d)) = o.get("doubleValue")
                && matches!(d.as_str(), "NaN" | "Infinity" | "-Infinity")
            {
                o.insert("doubleValue".into(), Value::Null);
            }
            let in_kvlist = parent == Some("kvlistValue");
            for (k, child) in o.iter_mut() {
                let key = if in_kvlist && k == "values" {
                    "kvlistValues"
                } else {
                    k.as_str()
                };
                fill_omitted(child, Some(key));
            }
        }
        Value::Array(items) => {
            for item in items {
                fill_omitted(item, parent);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn content_types() {
        for (ct, want) in [
            ("application/x-protobuf", Some(Encoding::Protobuf)),
            ("Application/JSON; charset=utf-8", Some(Encoding::Json)),
            ("application/protobuf", Some(Encoding::Protobuf)),
            ("text/plain", None),
            ("", None),
        ] {
            assert_eq!(Encoding::of_content_type(ct), want, "{ct}");
        }
    }

    #[test]
    fn gzip_is_inflated_up_to_the_limit_and_a_bomb_is_cut_off() {
        assert_eq!(gunzip(&gz(b"hello"), 5).unwrap(), b"hello");
        let bomb = gz(&vec![0u8; 8 << 20]);
        assert!(
            bomb.len() < 64 << 10,
            "8 MiB of zeroes compress to {} bytes",
            bomb.len()
        );
        assert!(matches!(gunzip(&bomb, 1 << 20), Err(OtlpError::TooLarge(_))));
        assert!(matches!(gunzip(b"not gzip", 1 << 20), Err(OtlpError::Invalid(_))));
        let mut two = gz(b"ab");
        two.extend(gz(b"cd"));
        assert_eq!(gunzip(&two, 10).unwrap(), b"abcd", "concatenated members");
    }

    /// The OTLP JSON mapping as the specification writes it: hex ids (either case), int64 as strings or numbers,
    /// enums as numbers, unknown fields ignored, a repeated key refused.
    #[test]
    fn the_otlp_json_mapping() {
        let body = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"svc"}}]},
          "futureField":{"x":1},
          "scopeSpans":[{"scope":{"name":"lib"},"spans":[{
            "traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174","parentSpanId":"",
            "name":"op","kind":2,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "attributes":[{"key":"n","value":{"intValue":"9007199254740993"}},{"key":"m","value":{"intValue":3}},
              {"key":"d","value":{"doubleValue":1.5}},{"key":"b","value":{"boolValue":true}},
              {"key":"a","value":{"arrayValue":{"values":[{"stringValue":"x"}]}}},
              {"key":"bytes","value":{"bytesValue":"AQI="}}],
            "status":{"code":2,"message":"boom"},"unknown":true}]}]}]}"#;
        let req = decode(Encoding::Json, body).unwrap();
        let sp = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(hex::encode(&sp.trace_id), "5b8efff798038103d269b633813fc60c");
        assert_eq!(hex::encode(&sp.span_id), "eee19b7ec3c1b174");
        assert!(sp.parent_span_id.is_empty());
        assert_eq!((sp.kind, sp.start_time_unix_nano), (2, 1_544_712_660_000_000_000));
        assert_eq!(sp.end_time_unix_nano, 1_544_712_661_000_000_000);
        let vals: Vec<_> = sp
            .attributes
            .iter()
            .map(|kv| kv.value.clone().unwrap().value.unwrap())
            .collect();
        assert_eq!(
            vals[0],
            Value::IntValue(9_007_199_254_740_993),
            "beyond 2^53, exact"
        );
        assert_eq!(vals[1], Value::IntValue(3));
        assert_eq!(vals[2], Value::DoubleValue(1.5));
        assert_eq!(vals[3], Value::BoolValue(true));
        assert_eq!(vals[5], Value::BytesValue(vec![1, 2]));
        assert_eq!(
            sp.status.as_ref().map(|s| (s.code, s.message.as_str())),
            Some((2, "boom"))
        );
        // The same export through protobuf decodes to the same message.
        let proto = prost::Message::encode_to_vec(&req);
        assert_eq!(decode(Encoding::Protobuf, &proto).unwrap(), req);
        let dup = br#"{"resourceSpans":[],"resourceSpans":[]}"#;
        assert!(matches!(decode(Encoding::Json, dup), Err(OtlpError::Invalid(_))));
        assert!(matches!(
            decode(Encoding::Json, b"{\"resourceSpans\":7}"),
            Err(OtlpError::Invalid(_))
        ));
        assert!(matches!(
            decode(Encoding::Protobuf, b"\xff\xff\xff"),
            Err(OtlpError::Invalid(_))
        ));
        assert_eq!(
            decode(Encoding::Json, b"{}").unwrap(),
            ExportTraceServiceRequest::default()
        );
    }

    /// What the mapping lets a sender omit: empty arrays and kv-lists without `values`, a key-value without `key`;
    /// and non-finite doubles as strings.
    #[test]
    fn omitted_fields_and_non_finite_doubles_are_accepted() {
        let span = |attrs: &str| {
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"5b8efff798038103d269b633813fc60c",
                   "spanId":"eee19b7ec3c1b174","attributes":{attrs}}}]}}]}}]}}"#
            )
        };
        let first = |body: String| {
            let req = decode(Encoding::Json, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            req.resource_spans[0].scope_spans[0].spans[0].attributes.clone()
        };
        let got = first(span(r#"[{"key":"a","value":{"arrayValue":{}}}]"#));
        assert_eq!(
            got[0].value.clone().and_then(|v| v.value),
            Some(Value::ArrayValue(Default::default()))
        );
        let got = first(span(r#"[{"key":"a","value":{"kvlistValue":{}}}]"#));
        assert_eq!(
            got[0].value.clone().and_then(|v| v.value),
            Some(Value::KvlistValue(Default::default()))
        );
        let got = first(span(r#"[{"key":"a","value":{"doubleValue":"NaN"}}]"#));
        assert_eq!(
            got[0].value.clone().and_then(|v| v.value),
            None,
            "kept as an empty value"
        );
        let got = first(span(
            r#"[{"key":"kv","value":{"kvlistValue":{"values":[{"value":{"intValue":"1"}}]}}},{"value":{"stringValue":"x"}}]"#,
        ));
        assert_eq!(got[1].key, "", "a key-value without key has the empty key");
        let Some(Value::KvlistValue(kv)) = got[0].value.clone().and_then(|v| v.value) else {
            panic!("a kv-list: {got:?}")
        };
        assert_eq!(kv.values[0].key, "");
        assert_eq!(
            kv.values[0].value.clone().and_then(|v| v.value),
            Some(Value::IntValue(1))
        );
    }
}
