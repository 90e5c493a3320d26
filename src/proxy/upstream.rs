//! The **forward** phase's transport, shared by both adapters: the route table with one pooled client per route
//! (swapped whole by a reload), the request head as an upstream receives it (its URI, `x-forwarded-*`, no
//! hop-by-hop headers, HTTP/1.1), the upstream's timeout, and the `Location` of an answer mapped back onto kla.
//! A failure is an [`UpstreamError`] that each adapter renders its own way (`{"code","message"}` or JSON-RPC).

use super::ProxyConfig;
use super::config::Route;
use super::routes::Routes;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type Pooled = Client<HttpsConnector<HttpConnector>, Body>;

/// The routes of one config and a pooled client per route.
pub(crate) struct Table {
    pub(crate) routes: Routes,
    clients: HashMap<String, Pooled>,
}

impl Table {
    /// The routes of `cfg` and their clients (reading each route's `ca-file`).
    pub(crate) fn new(cfg: &ProxyConfig) -> anyhow::Result<Table> {
        let mut clients = HashMap::new();
        for r in &cfg.routes {
            clients.insert(
                r.name.clone(),
                client(r.ca_file.as_deref(), cfg.connect_timeout, &r.name)?,
            );
        }
        Ok(Table {
            routes: Routes::new(cfg.routes.clone()),
            clients,
        })
    }
}

/// Why an upstream gave no answer kla passes on.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// The route has no client (a bug: every route of a table gets one).
    NoClient,
    /// The upstream URL could not be built (`502`).
    Uri(String),
    /// Connecting or sending failed (`502`).
    Failed(String),
    /// No answer within the proxy's timeout (`504`).
    Timeout(String),
    /// The answer redirected outside the route, which would lead the client around kla (`502`).
    Outside(String),
}

impl UpstreamError {
    /// The status of the answer that stands for it.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            UpstreamError::NoClient => StatusCode::INTERNAL_SERVER_ERROR,
            UpstreamError::Uri(_) | UpstreamError::Failed(_) | UpstreamError::Outside(_) => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A sentence for the caller.
    pub(crate) fn message(&self, route: &str) -> String {
        match self {
            UpstreamError::NoClient => format!("route {route} has no client"),
            UpstreamError::Uri(m)
            | UpstreamError::Failed(m)
            | UpstreamError::Timeout(m)
            | UpstreamError::Outside(m) => m.clone(),
        }
    }
}

/// The routes and their clients, and how calls reach them.
pub(crate) struct Upstreams {
    /// Swapped whole by a reload, so a call in flight keeps the table it started with.
    table: arc_swap::ArcSwap<Table>,
    timeout: Duration,
    /// `https` when the listener has TLS (for `x-forwarded-proto`).
    scheme: &'static str,
}

impl Upstreams {
    /// The upstreams of `cfg`.
    pub(crate) fn new(cfg: &ProxyConfig) -> anyhow::Result<Upstreams> {
        Ok(Upstreams {
            table: arc_swap::ArcSwap::from_pointee(Table::new(cfg)?),
            timeout: cfg.timeout,
            scheme: if cfg.tls.is_some() { "https" } else { "http" },
        })
    }

    /// The table calls starting now use.
    pub(crate) fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Takes a new table (calls in flight keep theirs).
    pub(crate) fn store(&self, table: Table) {
        self.table.store(Arc::new(table));
    }

    /// `https` when the listener has TLS.
    pub(crate) fn scheme(&self) -> &'static str {
        self.scheme
    }

    /// Sends a request to `route`'s upstream (at `rest` below its base URL, the query kept) and waits for the
    /// answer's head: the answer as the upstream gave it (hop-by-hop headers still in), or why there is none.
    pub(crate) async fn send(
        &self,
        table: &Table,
        route: &Route,
        rest: &str,
        mut parts: http::request::Parts,
        body: Body,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let Some(client) = table.clients.get(&route.name) else {
            return Err(UpstreamError::NoClient);
        };
        let uri = upstream_uri(&route.upstream, rest, parts.uri.query())
            .map_err(|e| UpstreamError::Uri(format!("route {}: {e}", route.name)))?;
        forwarded_head(self.scheme, &mut parts, uri);
        let out = http::Request::from_parts(parts, body);
        match tokio::time::timeout(self.timeout, client.request(out)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                tracing::warn!(route = %route.name, error = %e, "proxy upstream failed");
                Err(UpstreamError::Failed(format!(
                    "the upstream of route {} failed: {}",
                    route.name,
                    upstream_reason(&e)
                )))
            }
            Err(_) => Err(UpstreamError::Timeout(format!(
                "the upstream of route {} did not answer within {}",
                route.name,
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// An upstream's answer as a plain HTTP client gets it: hop-by-hop headers removed, a `Location` at the
    /// upstream mapped onto the route at kla (`client_host`: the `Host` the client reached kla at), the body
    /// streaming. `Err`: a redirect outside the route, withheld.
    pub(crate) fn answer(
        &self,
        resp: http::Response<Incoming>,
        route: &Route,
        client_host: Option<&str>,
    ) -> Result<Response, UpstreamError> {
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        if let Some(loc) = rparts.headers.get(header::LOCATION) {
            match location(loc, route, self.scheme, client_host) {
                Location::Keep => {}
                Location::Rewrite(v) => {
                    rparts.headers.insert(header::LOCATION, v);
                }
                Location::Outside => {
                    tracing::warn!(route = %route.name, "upstream redirected outside its route; answer withheld");
                    return Err(UpstreamError::Outside(format!(
                        "the upstream of route {} redirected to a path outside the route, which would bypass kla",
                        route.name
                    )));
                }
            }
        }
        Ok(Response::from_parts(rparts, Body::new(rbody)))
    }
}

fn client(
    ca_file: Option<&std::path::Path>,
    connect_timeout: Duration,
    route: &str,
) -> anyhow::Result<Pooled> {
    use anyhow::Context;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(f) = ca_file {
        let pem = std::fs::read(f)
            .with_context(|| format!("proxy route {route}: reading ca-file {}", f.display()))?;
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.with_context(|| format!("proxy route {route}: ca-file {}", f.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("proxy route {route}: ca-file {}", f.display()))?;
            n += 1;
        }
        anyhow::ensure!(
            n > 0,
            "proxy route {route}: ca-file {} holds no certificate",
            f.display()
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Removes the hop-by-hop headers, and those `Connection` names.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// What becomes of an upstream answer's `Location`.
#[derive(Debug, PartialEq)]
enum Location {
    /// It points elsewhere (another origin, or a relative reference that resolves through kla anyway).
    Keep,
    /// It pointed at the upstream itself: the same place, as reached through kla.
    Rewrite(HeaderValue),
    /// It points at the upstream's origin outside the route's base path: following it would bypass kla.
    Outside,
}

/// Maps a `Location` that points at the route's upstream (absolute, scheme-relative or an absolute path) onto the
/// route's prefix at kla, so clients are not redirected around kla.
fn location(v: &HeaderValue, route: &Route, scheme: &str, client_host: Option<&str>) -> Location {
    let Ok(text) = v.to_str() else {
        return Location::Outside;
    };
    let up = &route.upstream;
    let up_port = up
        .port_u16()
        .unwrap_or(if up.scheme_str() == Some("https") { 443 } else { 80 });
    let same_origin = |u: &Uri| {
        let port = u
            .port_u16()
            .unwrap_or(if u.scheme_str() == Some("https") { 443 } else { 80 });
        u.host()
            .is_some_and(|h| up.host().is_some_and(|uh| h.eq_ignore_ascii_case(uh)))
            && port == up_port
    };
    let (absolute, path_and_query) = if text.starts_with('/') && !text.starts_with("//") {
        (false, text.to_owned())
    } else {
        let full = match text.strip_prefix("//") {
            Some(rest) => format!("{}://{rest}", up.scheme_str().unwrap_or("http")),
            None => text.to_owned(),
        };
        let Ok(u) = full.parse::<Uri>() else {
            return Location::Keep;
        };
        if u.scheme().is_none() || !same_origin(&u) {
            return Location::Keep;
        }
        (
            true,
            u.path_and_query().map_or("/".into(), |pq| pq.as_str().to_owned()),
        )
    };
    let base = up.path().trim_end_matches('/');
    let below = path_and_query
        .strip_prefix(base)
        .filter(|b| b.is_empty() || b.starts_with(['/', '?', '#']));
    let Some(below) = below else {
        // An absolute path resolves against kla's own origin, so it cannot lead around kla.
        return if absolute {
            Location::Outside
        } else {
            Location::Keep
        };
    };
    let prefix = if route.prefix == "/" {
        ""
    } else {
        route.prefix.as_str()
    };
    let below = if below.is_empty() && prefix.is_empty() {
        "/"
    } else {
        below
    };
    let at_kla = match (absolute, client_host) {
        (true, Some(h)) => format!("{scheme}://{h}{prefix}{below}"),
        _ => format!("{prefix}{below}"),
    };
    HeaderValue::from_str(&at_kla).map_or(Location::Outside, Location::Rewrite)
}

/// The request head as the upstream gets it: hop-by-hop headers and `Host` removed, `x-forwarded-for` (appended),
/// `x-forwarded-proto` and `x-forwarded-host` set, the upstream's URI, HTTP/1.1 (the client negotiates up).
fn forwarded_head(scheme: &'static str, parts: &mut http::request::Parts, uri: Uri) {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let original_host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::HOST);
    if let Some(ip) = peer {
        let xff = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert("x-forwarded-for", v);
        }
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static(scheme));
    match original_host.or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    }) {
        Some(h) => {
            parts.headers.insert("x-forwarded-host", h);
        }
        None => {
            parts.headers.remove("x-forwarded-host");
        }
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
}

/// A connect error says little in its `Display`; its source chain says why.
fn upstream_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The upstream's base URL with the path below the route's prefix (and the query) appended.
fn upstream_uri(base: &Uri, rest: &str, query: Option<&str>) -> Result<Uri, String> {
    let base_path = base.path().trim_end_matches('/');
    let mut pq = format!("{base_path}{rest}");
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|e| format!("path {pq:?}: {e}"))?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}
