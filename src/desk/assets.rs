//! The page's files, compiled in, each with a strong ETag computed once. Browsers revalidate on every load
//! (`Cache-Control: no-cache`) and get `304 Not Modified` while the binary is the same, so an upgraded kla never
//! serves a stale script beside a new page.

use crate::server::ApiError;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// One compiled-in file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let etag = format!("\"{}\"", hex::encode(&digest[..16]));
        Asset {
            body,
            content_type,
            etag: HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"desk\"")),
        }
    }

    /// The file, or `304` when the client's `If-None-Match` names its ETag.
    fn serve(&self, req: &HeaderMap) -> Response {
        let cache = [
            (header::ETAG, self.etag.clone()),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ];
        if matches_etag(req, &self.etag) {
            return (StatusCode::NOT_MODIFIED, cache).into_response();
        }
        let ct = [(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type))];
        (StatusCode::OK, cache, ct, self.body).into_response()
    }
}

/// Whether `If-None-Match` lists `etag` (or is `*`); weak comparison, as RFC 9110 section 13.1.2 asks.
fn matches_etag(req: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(ours) = etag.to_str() else {
        return false;
    };
    req.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == ours)
}

static PAGE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("page/desk.html"), "text/html; charset=utf-8"));
static SCRIPT: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("page/desk.js"), "text/javascript; charset=utf-8"));
static STYLE: LazyLock<Asset> =
    LazyLock::new(|| Asset::new(include_str!("page/desk.css"), "text/css; charset=utf-8"));

/// `GET /desk`.
pub(super) async fn page(headers: HeaderMap) -> Response {
    PAGE.serve(&headers)
}

/// `GET /desk/assets/{name}`.
pub(super) async fn asset(
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    match name.as_str() {
        "desk.js" => SCRIPT.serve(&headers),
        "desk.css" => STYLE.serve(&headers),
        _ => ApiError::not_found(format!("no Desk asset '{}'", name.escape_debug())).into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_is_compared_weakly_and_in_lists() {
        let etag = HeaderValue::from_static("\"abc\"");
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            matches_etag(&h, &etag)
        };
        assert!(with("\"abc\""));
        assert!(with("W/\"abc\""));
        assert!(with("\"x\", \"abc\""));
        assert!(with("*"));
        assert!(!with("\"abd\""));
        assert!(!with("abc"));
        assert!(!matches_etag(&HeaderMap::new(), &etag));
    }

    /// The page works under [`super::super::CSP`]: no inline script, event handler attribute or inline style, and
    /// nothing loaded from another origin.
    #[test]
    fn the_page_has_nothing_inline_and_nothing_from_elsewhere() {
        let html = PAGE.body.to_ascii_lowercase();
        for (i, _) in html.match_indices("<script") {
            let tag = &html[i..i + html[i..].find('>').unwrap()];
            assert!(
                tag.contains(" src=\"/desk/assets/"),
                "inline or foreign script: {tag}"
            );
        }
        assert!(!html.contains("<style"), "inline style element");
        assert!(!html.contains(" style="), "inline style attribute");
        assert!(!html.contains("javascript:"));
        for attr in [
            " onclick=",
            " onload=",
            " onsubmit=",
            " onerror=",
            " onchange=",
            " oninput=",
        ] {
            assert!(!html.contains(attr), "inline handler {attr}");
        }
        for text in [
            &html,
            &SCRIPT.body.to_ascii_lowercase(),
            &STYLE.body.to_ascii_lowercase(),
        ] {
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "a foreign origin"
            );
        }
        assert!(!SCRIPT.body.contains("eval(") && !SCRIPT.body.contains("new Function"));
        assert!(
            !SCRIPT.body.contains("innerHTML"),
            "the script builds the DOM with text nodes only"
        );
    }
}
