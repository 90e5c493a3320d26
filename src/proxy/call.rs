//! One reading of a plain HTTP call: the context its action takes from the query and the body, and the `tool`
//! value that describes the whole call as it will be forwarded (method, canonical path, query, the headers the
//! route declares significant, the body's bytes). The decision reads the call only through these, and an approval
//! is bound to the `tool` value (its action digest covers it), so an approved call cannot come back with another
//! query, body or significant header.
//!
//! The reading refuses what two readers could understand differently: a body whose declared type is not JSON when
//! the action reads JSON pointers from it (415), a compressed body, object keys that differ only by letter case
//! (a case-insensitive binder would merge them), a query parameter named twice, or named like a value the decision
//! reads from the body.

use super::config::{ActionRoute, Route, Source};
use super::target;
use http::request::Parts;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The most body bytes shown to an approver (as JSON or text); a larger body is bound by its hash alone.
const SHOWN_BODY: usize = 64 * 1024;

/// Why a call cannot be decided as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed or ambiguous.
    Invalid(String),
    /// 415: a body the action's context cannot be read from.
    Unsupported(String),
}

impl From<target::Ambiguous> for Refusal {
    fn from(a: target::Ambiguous) -> Self {
        Refusal::Invalid(a.0)
    }
}

/// Whether a message's body is encoded (any `Content-Encoding` but `identity`, on any of its header lines): kla
/// decides on the bytes it reads, and an encoded body would be read one way by kla and another by the upstream.
pub(crate) fn compressed(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
}

/// The call's declared media type, lower-cased, without parameters; and whether its charset (if any) is UTF-8.
fn media_type(parts: &Parts) -> Option<(String, bool)> {
    let v = parts.headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let mut it = v.split(';');
    let essence = it.next()?.trim().to_ascii_lowercase();
    let utf8 = it.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    Some((essence, utf8))
}

fn is_json(essence: &str) -> bool {
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads the action's context from the call's query and body into `context`, and returns the `tool` value of the
/// whole call (see the module doc).
pub fn read(
    route: &Route,
    action: Option<&ActionRoute>,
    path: &str,
    parts: &Parts,
    body: &[u8],
    context: &mut Map<String, Value>,
) -> Result<Value, Refusal> {
    let query = parts.uri.query().filter(|q| !q.is_empty());
    let sources: &[(String, Source)] = action.map_or(&[], |a| a.context.as_slice());
    let media = media_type(parts);
    let mut doc: Option<Value> = None;
    if let Some(a) = action.filter(|a| a.needs_body()) {
        doc = Some(body_doc(a, parts, media.as_ref(), body)?);
    }
    if !sources.is_empty() {
        let pairs = match query {
            Some(q) => target::query_pairs(q)?,
            None => Vec::new(),
        };
        for (key, source) in sources {
            match source {
                Source::Query(name) => {
                    let mut found = pairs.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
                    let (first, second) = (found.next(), found.next());
                    if second.is_some() || first.is_some_and(|(k, _)| k != name) {
                        return Err(Refusal::Invalid(format!(
                            "the query parameter {name:?} appears more than once or in another letter case; \
                             upstreams pick one of them in different ways"
                        )));
                    }
                    if let Some((_, v)) = first {
                        context.insert(key.clone(), query_value(v));
                    }
                }
                Source::Body(ptr) => {
                    let top = ptr
                        .split('/')
                        .nth(1)
                        .unwrap_or_default()
                        .replace("~1", "/")
                        .replace("~0", "~");
                    if let Some((k, _)) = pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(&top)) {
                        return Err(Refusal::Invalid(format!(
                            "the query parameter {k:?} names a value the decision reads from the body ({ptr}); \
                             send it in one place"
                        )));
                    }
                    if let Some(v) = doc.as_ref().and_then(|d| d.pointer(ptr)) {
                        context.insert(key.clone(), v.clone());
                    }
                }
            }
        }
    }
    let mut tool = Map::new();
    tool.insert("route".into(), route.name.clone().into());
    tool.insert("method".into(), parts.method.as_str().into());
    tool.insert("path".into(), path.into());
    if let Some(q) = query {
        tool.insert("query".into(), q.into());
    }
    if !route.significant_headers.is_empty() {
        let mut hs = Map::new();
        for name in &route.significant_headers {
            let mut values = Vec::new();
            for v in parts.headers.get_all(name) {
                let v = v.to_str().map_err(|_| {
                    Refusal::Invalid(format!(
                        "the header {name} is not visible ASCII, and an approval binds it"
                    ))
                })?;
                values.push(v);
            }
            if !values.is_empty() {
                hs.insert(name.as_str().into(), values.join(", ").into());
            }
        }
        if !hs.is_empty() {
            tool.insert("headers".into(), Value::Object(hs));
        }
    }
    if !body.is_empty() || doc.is_some() {
        let mut b = Map::new();
        if let Some(ct) = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            b.insert("contentType".into(), ct.into());
        }
        b.insert("bytes".into(), body.len().into());
        b.insert("sha256".into(), hex::encode(Sha256::digest(body)).into());
        if body.len() <= SHOWN_BODY {
            match (&doc, &media) {
                (Some(d), _) => {
                    b.insert("json".into(), d.clone());
                }
                (None, Some((m, true))) if is_json(m) => {
                    if let Ok(d) = crate::json::from_slice_unique::<Value>(body) {
                        b.insert("json".into(), d);
                    }
                }
                (None, Some((m, true)))
                    if m.starts_with("text/") || m == "application/x-www-form-urlencoded" =>
                {
                    if let Ok(t) = std::str::from_utf8(body) {
                        b.insert("text".into(), t.into());
                    }
                }
                _ => {}
            }
        }
        tool.insert("body".into(), Value::Object(b));
    }
    Ok(Value::Object(tool))
}

/// A query value as the policy sees it: a number when it is written as JSON writes numbers (so `amount=5000`
/// compares as 5000), else the string.
fn query_value(v: &str) -> Value {
    let numeric = v.starts_with(|c: char| c == '-' || c.is_ascii_digit()) && v.trim() == v;
    match numeric.then(|| serde_json::from_str::<serde_json::Number>(v)) {
        Some(Ok(n)) => Value::Number(n),
        _ => Value::String(v.to_owned()),
    }
}

/// The body as the JSON document an action reads its context from.
fn body_doc(
    a: &ActionRoute,
    parts: &Parts,
    media: Option<&(String, bool)>,
    body: &[u8],
) -> Result<Value, Refusal> {
    let ok = matches!(media, Some((m, true)) if is_json(m));
    if !ok {
        let declared = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        return Err(Refusal::Unsupported(format!(
            "action {} reads its context from a JSON body, and the call's Content-Type is {declared:?}: \
             send application/json (UTF-8)",
            a.action
        )));
    }
    if compressed(&parts.headers) {
        return Err(Refusal::Unsupported(format!(
            "action {} reads its context from the body, which kla does not decompress: send it without \
             Content-Encoding",
            a.action
        )));
    }
    let mut context = Map::new();
    body_context(a, body, &mut context).map_err(Refusal::Invalid)
}

/// Parses `body` as the JSON document of `action`, refusing duplicate keys and keys that differ only by letter
/// case, and adds each body pointer's value to `context` (a pointer that finds nothing is left out, so a rule sees
/// the key as absent). Returns the document. `Err`: the body is not such a document.
pub fn body_context(
    action: &ActionRoute,
    body: &[u8],
    context: &mut Map<String, Value>,
) -> Result<Value, String> {
    let doc: Value = crate::json::from_slice_unique(body).map_err(|e| {
        format!(
            "the request body is not JSON ({e}), and action {} reads its context from it",
            action.action
        )
    })?;
    if let Some(path) = case_twins(&doc, &mut String::new()) {
        return Err(format!(
            "the request body has keys that differ only by letter case ({path}); a case-insensitive reader \
             would take either"
        ));
    }
    for (key, source) in &action.context {
        if let Source::Body(ptr) = source
            && let Some(v) = doc.pointer(ptr)
        {
            context.insert(key.clone(), v.clone());
        }
    }
    Ok(doc)
}

/// The path of the first object holding two keys equal but for letter case.
fn case_twins(v: &Value, at: &mut String) -> Option<String> {
    match v {
        Value::Object(m) => {
            if m.len() > 1 {
                let mut seen = std::collections::HashSet::with_capacity(m.len());
                for k in m.keys() {
                    if !seen.insert(k.to_lowercase()) {
                        return Some(format!("{at}/{k}"));
                    }
                }
            }
            for (k, c) in m {
                let len = at.len();
                at.push('/');
                at.push_str(k);
                let found = case_twins(c, at);
                at.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                let found = case_twins(c, at);
                at.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoding_on_any_header_line_counts() {
        let mut h = http::HeaderMap::new();
        assert!(!compressed(&h));
        h.append(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        assert!(!compressed(&h));
        h.append(
            http::header::CONTENT_ENCODING,
            http::HeaderValue::from_static("gzip"),
        );
        assert!(compressed(&h));
    }

    #[test]
    fn query_values_are_numbers_only_when_written_as_json_numbers() {
        assert_eq!(query_value("5000"), Value::from(5000));
        assert_eq!(query_value("-2.5"), Value::from(-2.5));
        for s in ["007", "+5", " 5", "5 ", "5000abc", "NaN", "0x10", "", "1."] {
            assert_eq!(query_value(s), Value::from(s), "{s}");
        }
    }
}
