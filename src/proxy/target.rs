//! The one canonical form of a proxied call's request target: what routes and actions are matched on, what the
//! policy decides on, and exactly what the upstream receives. Upstreams decode and normalise paths in many ways
//! (percent-decoding before routing, dot-segment removal, merged slashes, `;` path parameters, method-override
//! headers); kla either maps each spelling onto one form that every reading agrees on, or refuses it.
//!
//! The rules (docs/proxy.md, "One canonical request"):
//! - the method is an upper-case token; a lower- or mixed-case spelling of any method is refused, as is `CONNECT`;
//! - percent-encoded unreserved characters (RFC 3986 section 2.3) are decoded, other escapes keep upper-case hex;
//! - `.` and `..` segments are removed (RFC 3986 section 5.2.4), and empty segments (`//`) merged;
//! - refused as ambiguous: an encoded `/`, `\` or NUL, a raw `\`, an encoded `%` before two hex digits (double
//!   encoding), a dot segment spelled with escapes, a `..` above the root, a `;` (path parameters), a malformed
//!   escape, a path that does not start with `/`;
//! - method- and URL-override headers (`X-HTTP-Method-Override` and kin) are refused.
//!
//! Pure functions over strings: no IO, no state.

use http::{HeaderMap, Method};

/// Why a request target was refused; the message names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Ambiguous(pub String);

/// Headers by which some frameworks let a request change its method or URL after kla has read them.
pub const OVERRIDE_HEADERS: [&str; 8] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-override-url",
];

/// The method as the upstream will act on it: an upper-case token (`CONNECT` is refused: the proxy tunnels
/// nothing).
pub fn method(m: &Method) -> Result<(), Ambiguous> {
    let s = m.as_str();
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Ambiguous(format!(
            "method {s:?} is not in its canonical upper-case spelling ({:?})",
            s.to_ascii_uppercase()
        )));
    }
    if *m == Method::CONNECT {
        return Err(Ambiguous("method CONNECT is not proxied".into()));
    }
    Ok(())
}

/// Refuses a request that carries a method- or URL-override header.
pub fn no_overrides(headers: &HeaderMap) -> Result<(), Ambiguous> {
    match OVERRIDE_HEADERS.iter().find(|h| headers.contains_key(**h)) {
        Some(h) => Err(Ambiguous(format!(
            "the {h} header is refused: kla decides on the method and path the request carries"
        ))),
        None => Ok(()),
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// One segment in canonical form: unreserved escapes decoded, the rest kept with upper-case hex. Also says
/// whether the segment was spelled with any escape (so `%2e` cannot become a dot segment).
fn segment(raw: &str) -> Result<(String, bool), Ambiguous> {
    let b = raw.as_bytes();
    // Bytes, not chars: a raw non-ASCII byte is copied as is, and everything pushed besides is ASCII.
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut escaped = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(Ambiguous(format!(
                        "the path segment {raw:?} has a malformed escape"
                    )));
                };
                let v = h << 4 | l;
                escaped = true;
                match v {
                    b'/' | b'\\' | 0 => {
                        return Err(Ambiguous(format!(
                            "the path segment {raw:?} encodes {:?}, which upstreams read in different ways",
                            v as char
                        )));
                    }
                    b'%' if b.get(i + 3).copied().and_then(hex_val).is_some()
                        && b.get(i + 4).copied().and_then(hex_val).is_some() =>
                    {
                        return Err(Ambiguous(format!(
                            "the path segment {raw:?} is encoded twice (%25 before an escape)"
                        )));
                    }
                    v if unreserved(v) => out.push(v),
                    v => {
                        out.push(b'%');
                        out.push(b"0123456789ABCDEF"[usize::from(v >> 4)]);
                        out.push(b"0123456789ABCDEF"[usize::from(v & 15)]);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(Ambiguous(format!("the path segment {raw:?} holds a '\\'"))),
            b';' => {
                return Err(Ambiguous(format!(
                    "the path segment {raw:?} holds a ';' (path parameters, which some upstreams strip)"
                )));
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    let out =
        String::from_utf8(out).map_err(|_| Ambiguous(format!("the path segment {raw:?} is not UTF-8")))?;
    Ok((out, escaped))
}

/// The canonical form of a request path (see the module doc). The result starts with `/`; it ends with `/` only
/// when the request's path did (or is the root).
pub fn path(raw: &str) -> Result<String, Ambiguous> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(Ambiguous(format!("the path {raw:?} does not start with '/'")));
    };
    let mut segs: Vec<String> = Vec::new();
    let mut trailing = false;
    for s in rest.split('/') {
        trailing = false;
        let (seg, escaped) = segment(s)?;
        match seg.as_str() {
            "" => trailing = true,
            "." | ".." if escaped => {
                return Err(Ambiguous(format!(
                    "the path segment {s:?} is a dot segment spelled with escapes"
                )));
            }
            "." => trailing = true,
            ".." => {
                if segs.pop().is_none() {
                    return Err(Ambiguous(format!("the path {raw:?} climbs above the root")));
                }
                trailing = true;
            }
            _ => segs.push(seg),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// A path segment's value as the upstream's router sees it: every escape decoded. `Err`: not UTF-8.
pub fn decoded_segment(seg: &str) -> Result<String, Ambiguous> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex_val),
                b.get(i + 2).copied().and_then(hex_val),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| Ambiguous(format!("the path segment {seg:?} does not decode to UTF-8")))
}

/// The query's `name=value` pairs, form-decoded (`+` is a space), in order. `Err`: a malformed escape or a name or
/// value that is not UTF-8.
pub fn query_pairs(q: &str) -> Result<Vec<(String, String)>, Ambiguous> {
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((form_decode(k)?, form_decode(v)?));
    }
    Ok(out)
}

fn form_decode(s: &str) -> Result<String, Ambiguous> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(Ambiguous(format!("the query part {s:?} has a malformed escape")));
                };
                out.push(h << 4 | l);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Ambiguous(format!("the query part {s:?} does not decode to UTF-8")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths() {
        for (raw, want) in [
            ("/", "/"),
            ("/customers/c7", "/customers/c7"),
            ("/%63ustomers/c7", "/customers/c7"),
            ("/customers/%7Ex", "/customers/~x"),
            ("/a/./b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a//b", "/a/b"),
            ("//a", "/a"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/x%2a", "/x%2A"),
            ("/x%C3%A9", "/x%C3%A9"),
            ("/x%c3%a9", "/x%C3%A9"),
            ("/a%20b", "/a%20b"),
        ] {
            assert_eq!(path(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for raw in [
            "/customers%2Fc8",
            "/customers%2fc8",
            "/a%5Cb",
            "/a\\b",
            "/a%00",
            "/%2e%2e/x",
            "/a/%2E/b",
            "/a/.%2e/b",
            "/..",
            "/a/../..",
            "/a;b/c",
            "/a%zz",
            "/a%2",
            "/%2563ustomers",
            "customers",
            "",
        ] {
            assert!(path(raw).is_err(), "{raw} accepted as {:?}", path(raw));
        }
        // An encoded '%' that is not followed by an escape is a plain percent sign.
        assert_eq!(path("/100%25").as_deref(), Ok("/100%25"));
    }

    #[test]
    fn methods() {
        assert!(method(&Method::DELETE).is_ok());
        assert!(method(&Method::from_bytes(b"PROPFIND").unwrap()).is_ok());
        assert!(method(&Method::from_bytes(b"delete").unwrap()).is_err());
        assert!(method(&Method::from_bytes(b"Delete").unwrap()).is_err());
        assert!(method(&Method::CONNECT).is_err());
    }

    #[test]
    fn overrides_are_refused() {
        let mut h = HeaderMap::new();
        assert!(no_overrides(&h).is_ok());
        h.insert("X-HTTP-Method-Override", "DELETE".parse().unwrap());
        assert!(no_overrides(&h).is_err());
    }

    #[test]
    fn query_and_segments_decode() {
        assert_eq!(
            query_pairs("a=1&b=x+y&c=%41&&d").unwrap(),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y".into()),
                ("c".into(), "A".into()),
                ("d".into(), String::new())
            ]
        );
        assert!(query_pairs("a=%zz").is_err());
        assert!(query_pairs("a=%ff").is_err());
        assert_eq!(decoded_segment("c%207").unwrap(), "c 7");
        assert!(decoded_segment("%ff").is_err());
    }
}
