//! A direct RFC 8785 (JCS) encoder for ledger entries, on the decision hot path.
//!
//! `serde_json_canonicalizer` is the reference: it buffers and re-sorts every object, which cost ~15% of a
//! decision's CPU. This encoder walks the `serde_json::Value` once, sorts object keys by UTF-16 code units (as
//! RFC 8785 section 3.2.3 requires), formats numbers as ECMAScript does (`ryu-js`), and escapes strings as
//! serde_json does (which matches RFC 8785 section 3.2.2.2). Where it cannot be sure of the canonical form (an
//! integer beyond +-2^53, which ECMAScript would round) it returns `None` and the caller uses the reference
//! encoder. A property test checks both agree on random documents.

use serde_json::Value;

/// Largest integer magnitude an IEEE double holds exactly.
const MAX_SAFE: u64 = 1 << 53;

/// Appends the canonical form of `v` to `out`, or returns `None` (with `out` in an unspecified state).
pub(crate) fn write_value(v: &Value, out: &mut Vec<u8>) -> Option<()> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_str(s, out),
        Value::Array(a) => write_array(out, a, write_value)?,
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            if keys.iter().all(|k| k.is_ascii()) {
                keys.sort_unstable();
            } else {
                keys.sort_unstable_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            }
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                write_value(&m[k.as_str()], out)?;
            }
            out.push(b'}');
        }
    }
    Some(())
}

/// Writes a JSON array, each item with `item`; `None` as soon as an item declines.
pub(crate) fn write_array<T>(
    out: &mut Vec<u8>,
    items: impl IntoIterator<Item = T>,
    mut item: impl FnMut(T, &mut Vec<u8>) -> Option<()>,
) -> Option<()> {
    out.push(b'[');
    for (i, x) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item(x, out)?;
    }
    out.push(b']');
    Some(())
}

/// A JSON string with serde_json's escaping: `"`, `\` and U+0000-U+001F only (short forms where JSON has them,
/// else `\u00xx` in lowercase hex), everything else literal: exactly RFC 8785's rule.
pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail, and a &str always serializes.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes one JSON object in canonical form from typed parts, without building a `serde_json::Value`: the caller
/// adds members in RFC 8785 key order (ASCII keys, so byte order; checked in debug builds) and nests objects and
/// arrays by writing into [`Obj::raw`].
pub struct Obj<'a> {
    out: &'a mut Vec<u8>,
    members: usize,
    #[cfg(debug_assertions)]
    last: Option<&'static str>,
}

impl<'a> Obj<'a> {
    /// Starts an object.
    pub fn begin(out: &'a mut Vec<u8>) -> Obj<'a> {
        out.push(b'{');
        Obj {
            out,
            members: 0,
            #[cfg(debug_assertions)]
            last: None,
        }
    }

    /// Writes `"key":` and hands out the buffer for the value.
    pub fn raw(&mut self, key: &'static str) -> &mut Vec<u8> {
        debug_assert!(key.is_ascii(), "key {key} must be ASCII");
        #[cfg(debug_assertions)]
        {
            debug_assert!(
                self.last.is_none_or(|l| l < key),
                "key {key} after {:?}: not in RFC 8785 order",
                self.last
            );
            self.last = Some(key);
        }
        if self.members > 0 {
            self.out.push(b',');
        }
        self.members += 1;
        write_str(key, self.out);
        self.out.push(b':');
        self.out
    }

    /// A string member.
    pub fn str(&mut self, key: &'static str, v: &str) {
        write_str(v, self.raw(key));
    }

    /// A string member, or `null`.
    pub fn opt_str(&mut self, key: &'static str, v: Option<&str>) {
        match v {
            Some(v) => self.str(key, v),
            None => self.raw(key).extend_from_slice(b"null"),
        }
    }

    /// A boolean member.
    pub fn bool(&mut self, key: &'static str, v: bool) {
        self.raw(key)
            .extend_from_slice(if v { b"true" } else { b"false" });
    }

    /// An integer member; `None` beyond 2^53 (where ECMAScript would round it).
    pub fn uint(&mut self, key: &'static str, v: u64) -> Option<()> {
        if v > MAX_SAFE {
            return None;
        }
        self.raw(key).extend_from_slice(v.to_string().as_bytes());
        Some(())
    }

    /// A member holding any JSON value (written canonically); `None` where [`write_value`] declines.
    pub fn value(&mut self, key: &'static str, v: &Value) -> Option<()> {
        write_value(v, self.raw(key))
    }

    /// An array of strings.
    pub fn strs(&mut self, key: &'static str, v: &[String]) {
        let _ = write_array(self.raw(key), v, |s, out| {
            write_str(s, out);
            Some(())
        });
    }

    /// Ends the object.
    pub fn end(self) {
        self.out.push(b'}');
    }
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) -> Option<()> {
    if let Some(u) = n.as_u64() {
        if u > MAX_SAFE {
            return None;
        }
        out.extend_from_slice(itoa_buf(u as i128).as_bytes());
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() > MAX_SAFE {
            return None;
        }
        out.extend_from_slice(itoa_buf(i as i128).as_bytes());
    } else {
        let f = n.as_f64()?;
        if !f.is_finite() {
            return None;
        }
        if f == 0.0 {
            out.push(b'0'); // -0 is written as 0
        } else {
            out.extend_from_slice(ryu_js::Buffer::new().format_finite(f).as_bytes());
        }
    }
    Some(())
}

fn itoa_buf(i: i128) -> String {
    i.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(v: &Value) -> Vec<u8> {
        serde_json_canonicalizer::to_vec(v).expect("reference encoder")
    }

    fn check(v: &Value) {
        let mut out = Vec::new();
        if write_value(v, &mut out).is_some() {
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&reference(v)),
                "input {v}"
            );
        }
    }

    #[test]
    fn rfc8785_examples_and_edges() {
        for text in [
            r#"{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}"#,
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
            r#"{"a":-0.0,"b":1250.00,"c":-1,"d":9007199254740992,"e":1e21,"f":1e-7,"g":123456789012345680000}"#,
            r#"{"x":"\u2028\u2029\u007f\u0000\u001f"}"#,
        ] {
            let v: Value = serde_json::from_str(text).expect("json");
            let mut out = Vec::new();
            assert!(write_value(&v, &mut out).is_some(), "{text}");
            assert_eq!(out, reference(&v), "{text}");
        }
        // Beyond 2^53 the fast path declines rather than guess.
        let big: Value = serde_json::from_str(r#"{"n":9007199254740993}"#).expect("json");
        assert!(write_value(&big, &mut Vec::new()).is_none());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\u{0}-\\u{1f}\"\\\\\\u{e000}-\\u{ffff}\\u{10000}-\\u{10ffff}a-z]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    "[a-z\\u{80}-\\u{ff}\\u{e000}-\\u{ffff}\\u{10000}-\\u{10ffff}]{0,4}",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn agrees_with_the_reference_encoder(v in arb_json()) {
            check(&v);
        }

        #[test]
        fn whole_entries_agree_with_the_reference_encoder(body in arb_json(), tenant in "\\PC{0,8}") {
            let e = crate::ledger::Entry {
                v: 1,
                kind: "decision".into(),
                lineage_id: crate::ledger::new_lineage_id(),
                tenant,
                time: "2026-11-23T16:00:00.000Z".into(),
                body,
            };
            let fast = e.encode().expect("encodes");
            prop_assert_eq!(&fast, &serde_json_canonicalizer::to_vec(&e).expect("reference"));
            // Canonical bytes decode (values past 2^53 are rounded as I-JSON numbers, so compare bytes, not values).
            let back = crate::ledger::Entry::decode(&fast).expect("decodes");
            prop_assert_eq!(back.encode().expect("re-encodes"), fast);
        }
    }
}
