//! JSON: `crate::json::check_unique_keys`, the check in front of every JSON document kla accepts.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::json::CheckError;

use super::{Verdict, same_json};

/// A JSON document as written: objects keep every member in order, repeats included. The oracle for
/// [`crate::json::check_unique_keys`], read by serde_json's own parser.
enum Doc {
    Scalar,
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
        let mut items = Vec::new();
        while let Some(d) = a.next_element()? {
            items.push(d);
        }
        Ok(Doc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
        let mut members = Vec::new();
        while let Some(m) = a.next_entry::<String, Doc>()? {
            members.push(m);
        }
        Ok(Doc::Object(members))
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

/// The first repeated key in reading order and the path to its object, as a streaming reader meets it: a
/// member's key is compared before its value is read.
fn first_repeat(doc: &Doc, path: &mut Vec<Seg>) -> Option<(String, String, bool)> {
    match doc {
        Doc::Scalar => None,
        Doc::Array(items) => items.iter().enumerate().find_map(|(i, d)| {
            path.push(Seg::Index(i));
            let found = first_repeat(d, path);
            path.pop();
            found
        }),
        Doc::Object(members) => members.iter().enumerate().find_map(|(i, (k, v))| {
            if members[..i].iter().any(|(p, _)| p == k) {
                let all_plain = plain(k)
                    && path.iter().all(|s| match s {
                        Seg::Key(k) => plain(k),
                        Seg::Index(_) => true,
                    });
                return Some((k.clone(), path_text(path), all_plain));
            }
            path.push(Seg::Key(k.clone()));
            let found = first_repeat(v, path);
            path.pop();
            found
        }),
    }
}

/// A path as messages write it: `context.items[2]`.
fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Keys a message shows as written (no escaping, no shortening), so the oracle's key and path compare as text.
fn plain(k: &str) -> bool {
    k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `crate::json::check_unique_keys` against serde_json read into [`Doc`]: it accepts exactly the well-formed
/// documents without a repeated key, reports the first repeat and where its object is, and an accepted document
/// round-trips through `serde_json::Value` to one that is accepted again.
pub fn json(data: &[u8]) -> Verdict {
    let doc = serde_json::from_slice::<Doc>(data);
    match (crate::json::check_unique_keys(data), doc) {
        (Ok(()), Ok(doc)) => {
            assert!(
                first_repeat(&doc, &mut Vec::new()).is_none(),
                "a document that repeats a key was accepted"
            );
            let value: Value = serde_json::from_slice(data)
                .unwrap_or_else(|e| panic!("an accepted document is not a serde_json value: {e}"));
            let again =
                serde_json::to_vec(&value).unwrap_or_else(|e| panic!("a value does not serialise: {e}"));
            let back: Value = crate::json::from_slice_unique(&again)
                .unwrap_or_else(|e| panic!("a re-serialised accepted document is refused: {e}"));
            assert!(same_json(&value, &back), "a document does not round-trip");
            Verdict::Accepted
        }
        (Ok(()), Err(e)) => panic!("check_unique_keys accepted what serde_json refuses: {e}"),
        (Err(CheckError::Duplicate(d)), doc) => {
            if let Ok(doc) = doc {
                let Some((key, path, all_plain)) = first_repeat(&doc, &mut Vec::new()) else {
                    panic!("refused a document without repeated keys for a {d}");
                };
                // Other keys are escaped or shortened in messages.
                if all_plain {
                    assert_eq!((d.key.as_str(), d.path.as_str()), (key.as_str(), path.as_str()));
                }
            }
            Verdict::Refused
        }
        (Err(CheckError::Malformed(e) | CheckError::Trailing(e)), Ok(_)) => {
            panic!("refused well-formed JSON as malformed: {e}")
        }
        (Err(CheckError::Malformed(_) | CheckError::Trailing(_)), Err(_)) => Verdict::Refused,
        (Err(CheckError::Invalid(e)), _) => panic!("check_unique_keys reported a type error: {e}"),
    }
}
