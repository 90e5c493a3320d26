//! Refusing JSON objects that repeat a key, at any depth.
//!
//! RFC 8259 leaves duplicate names undefined: one parser keeps the first, another the last. serde's derive
//! refuses a repeated struct field, but a `serde_json::Value` or `Map` (a decision's `context`, a token's unread
//! claims) silently keeps the last, so a policy engine and a downstream tool could read two different requests
//! from one body. kla therefore checks every JSON document it accepts from outside with [`check_unique_keys`]
//! before parsing it: one pass over the bytes that builds no values and holds, per open object, only the keys
//! seen so far (borrowed from the input unless they contain escapes).

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Why [`check_unique_keys`] refused a document.
#[derive(Debug)]
pub enum CheckError {
    /// An object repeats a key.
    Duplicate(DuplicateKey),
    /// Not JSON (the parser's message).
    Malformed(serde_json::Error),
    /// A JSON value followed by more than whitespace.
    Trailing(serde_json::Error),
    /// Well-formed JSON without repeats that does not fit the type asked for ([`from_slice_unique`]).
    Invalid(serde_json::Error),
}

/// A repeated key and where its object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// The repeated key (escaped and shortened for messages).
    pub key: String,
    /// The object's place in the document, e.g. `context.items[2]`; empty for the top-level object.
    pub path: String,
}

impl fmt::Display for DuplicateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "duplicate key '{}'", self.key)
        } else {
            write!(f, "duplicate key '{}' in field '{}'", self.key, self.path)
        }
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Duplicate(d) => d.fmt(f),
            CheckError::Malformed(e) => write!(f, "malformed JSON: {e}"),
            CheckError::Trailing(e) => write!(f, "malformed JSON: trailing characters ({e})"),
            CheckError::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks that `bytes` are one JSON value (plus whitespace) in which no object repeats a key. Nesting is bounded
/// by serde_json's recursion limit (128), so hostile input cannot exhaust the stack.
pub fn check_unique_keys(bytes: &[u8]) -> Result<(), CheckError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let mut found = None;
    let mut keys = Vec::new();
    let check = Check {
        found: &mut found,
        keys: &mut keys,
    };
    if let Err(e) = de::Deserializer::deserialize_any(&mut de, check) {
        return Err(match found {
            Some(f) => CheckError::Duplicate(f.into_key()),
            None => CheckError::Malformed(e),
        });
    }
    de.end().map_err(CheckError::Trailing)
}

/// Parses `bytes` into `T` after [`check_unique_keys`]; for callers that need no field paths in their errors.
pub fn from_slice_unique<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CheckError> {
    check_unique_keys(bytes)?;
    serde_json::from_slice(bytes).map_err(CheckError::Invalid)
}

/// The duplicate, with the path to its object gathered innermost first as the error unwinds (so the common case,
/// no duplicate, keeps no path at all).
struct Found {
    key: String,
    path: Vec<Segment>,
}

enum Segment {
    Key(String),
    Index(usize),
}

impl Found {
    fn into_key(self) -> DuplicateKey {
        let mut path = String::new();
        for s in self.path.iter().rev() {
            match s {
                Segment::Key(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                }
                Segment::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        DuplicateKey { key: self.key, path }
    }
}

/// A key as a message shows it: control characters and quotes escaped, at most 64 characters.
fn shown(key: &str) -> String {
    const MAX: usize = 64;
    let mut out: String = key.chars().flat_map(char::escape_debug).take(MAX).collect();
    if key.chars().flat_map(char::escape_debug).nth(MAX).is_some() {
        out.push_str("...");
    }
    out
}

/// Visits one value; objects check their keys. `keys` is one stack for the whole document: an object's keys sit
/// above those of the objects that enclose it and are dropped when it closes, so a document costs one allocation
/// however many objects it holds.
struct Check<'s, 'de> {
    found: &'s mut Option<Found>,
    keys: &'s mut Vec<Cow<'de, str>>,
}

impl<'de> DeserializeSeed<'de> for Check<'_, 'de> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// Up to this many keys an object's keys are compared one by one; beyond it they go into a hash set of their
/// own, so an object with very many keys costs linear time, not quadratic.
const LINEAR_KEYS: usize = 16;

impl<'de> Visitor<'de> for Check<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        loop {
            match seq.next_element_seed(Check {
                found: &mut *self.found,
                keys: &mut *self.keys,
            }) {
                Ok(Some(())) => i += 1,
                Ok(None) => return Ok(()),
                Err(e) => {
                    if let Some(f) = self.found.as_mut() {
                        f.path.push(Segment::Index(i));
                    }
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let start = self.keys.len();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let seen = match &many {
                Some(set) => set.contains(&k),
                None => self.keys[start..].contains(&k),
            };
            if seen {
                *self.found = Some(Found {
                    key: shown(&k),
                    path: Vec::new(),
                });
                return Err(de::Error::custom("duplicate key"));
            }
            if let Err(e) = map.next_value_seed(Check {
                found: &mut *self.found,
                keys: &mut *self.keys,
            }) {
                if let Some(f) = self.found.as_mut() {
                    f.path.push(Segment::Key(shown(&k)));
                }
                return Err(e);
            }
            match &mut many {
                Some(set) => {
                    set.insert(k);
                }
                None if self.keys.len() - start < LINEAR_KEYS => self.keys.push(k),
                None => {
                    let mut set: HashSet<Cow<'de, str>> = self.keys.drain(start..).collect();
                    set.insert(k);
                    many = Some(set);
                }
            }
        }
        self.keys.truncate(start);
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn dup(text: &str) -> DuplicateKey {
        match check_unique_keys(text.as_bytes()) {
            Err(CheckError::Duplicate(d)) => d,
            other => panic!("{text}: expected a duplicate, got {other:?}"),
        }
    }

    #[test]
    fn accepts_documents_without_repeated_keys() {
        for text in [
            r#"{}"#,
            r#"[]"#,
            r#"1"#,
            r#""s""#,
            r#"null"#,
            r#" {"a":1,"b":{"a":1,"b":[{"a":1},{"a":2}]}} "#,
            r#"{"a":{"a":{"a":{}}}}"#,
            r#"[{"k":1},{"k":1}]"#,
            // Different keys that only look alike once unescaped differently.
            r#"{"a\u0062":1,"ab\u0000":2}"#,
        ] {
            check_unique_keys(text.as_bytes()).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn names_the_key_and_where_its_object_is() {
        assert_eq!(dup(r#"{"a":1,"a":2}"#).to_string(), "duplicate key 'a'");
        assert_eq!(
            dup(r#"{"agentId":"x","context":{"amount":1,"amount":99999}}"#).to_string(),
            "duplicate key 'amount' in field 'context'"
        );
        assert_eq!(
            dup(r#"{"context":{"items":[{"x":1},{"y":1,"y":2}]}}"#).to_string(),
            "duplicate key 'y' in field 'context.items[1]'"
        );
        assert_eq!(dup(r#"[[{"q":1,"q":1}]]"#).path, "[0][0]");
    }

    #[test]
    fn compares_keys_after_unescaping() {
        assert_eq!(dup(r#"{"amount":1,"\u0061mount":2}"#).key, "amount");
        assert_eq!(dup(r#"{"a\"b":1,"a\u0022b":2}"#).key, "a\\\"b");
    }

    #[test]
    fn finds_a_repeat_among_many_keys() {
        let mut text = String::from("{");
        for i in 0..5000 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        check_unique_keys(format!("{}}}", text.trim_end_matches(',')).as_bytes()).expect("unique");
        text.push_str("\"k4321\":0}");
        assert_eq!(dup(&text).key, "k4321");
        // The first key, kept from before the switch to a hash set, is still found.
        let mut early = String::from(r#"{"first":0,"#);
        for i in 0..20 {
            early.push_str(&format!("\"k{i}\":{i},"));
        }
        early.push_str(r#""first":1}"#);
        assert_eq!(dup(&early).key, "first");
    }

    #[test]
    fn shortens_and_escapes_long_or_odd_keys() {
        let long = "x".repeat(500);
        let d = dup(&format!(r#"{{"{long}":1,"{long}":2}}"#));
        assert_eq!(d.key, format!("{}...", "x".repeat(64)));
        assert_eq!(dup("{\"a\\tb\":1,\"a\\tb\":2}").key, "a\\tb");
    }

    #[test]
    fn reports_malformed_and_trailing_input() {
        assert!(matches!(
            check_unique_keys(b"{\"a\":"),
            Err(CheckError::Malformed(_))
        ));
        assert!(matches!(check_unique_keys(b""), Err(CheckError::Malformed(_))));
        assert!(matches!(
            check_unique_keys(b"{} {}"),
            Err(CheckError::Trailing(_))
        ));
        // A repeat after a syntax error cannot be reached; the syntax error is what is reported.
        assert!(matches!(
            check_unique_keys(b"{\"a\":1,,\"a\":2}"),
            Err(CheckError::Malformed(_))
        ));
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            check_unique_keys(deep.as_bytes()),
            Err(CheckError::Malformed(_))
        ));
    }

    #[test]
    fn from_slice_unique_parses_or_refuses() {
        let v: serde_json::Value = from_slice_unique(br#"{"a":{"b":1}}"#).unwrap();
        assert_eq!(v["a"]["b"], 1);
        assert!(matches!(
            from_slice_unique::<serde_json::Value>(br#"{"a":{"b":1,"b":2}}"#),
            Err(CheckError::Duplicate(_))
        ));
    }
}
