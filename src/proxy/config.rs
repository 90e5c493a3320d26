//! The `proxy:` section of the config file: as written ([`FileProxy`]) and validated ([`ProxyConfig`]). Validation
//! refuses anything the proxy could only fail on later (a bad upstream, an action name outside the grammar, a path
//! template with a malformed `{param}`, a JSON pointer that is not one), so a running proxy never guesses.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How long a call waiting for approval is held by default: under the 60 s that MCP's TypeScript SDK waits.
pub const DEFAULT_HOLD_BUDGET: Duration = Duration::from_secs(50);

/// The default address of the proxy listener.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8701";

/// `proxy:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileProxy {
    /// Listener address (flag `--proxy-addr`); default `127.0.0.1:8701`.
    pub addr: Option<String>,
    /// The tenant every proxied call is decided in.
    pub tenant: Option<String>,
    /// Sidecar mode: the registered agent (name or id) every call is made as. Without it, each call names its
    /// agent with `Proxy-Authorization: Bearer <token>`.
    pub agent: Option<String>,
    /// Time to connect to an upstream; default 5s.
    pub connect_timeout: Option<String>,
    /// Time from sending a request upstream to its response headers; default 30s.
    pub timeout: Option<String>,
    /// How long a call that needs approval is held open waiting for a person before it is answered as pending
    /// (the agent's retry after approval goes through once); default 50s, `0s` answers at once.
    pub hold_budget: Option<String>,
    /// `strict` (default): a call is forwarded once its decision is durable. `overlap`: forwarded while the decision
    /// is being made durable, and the upstream's answer released only once it is.
    pub audit: Option<String>,
    /// HTTPS for the proxy listener (agents that reach kla over a network).
    pub tls: Option<crate::server::FileTls>,
    /// The routes; the listener only starts when there is at least one.
    pub routes: Option<Vec<FileRoute>>,
}

impl FileProxy {
    /// Whether nothing but (at most) `addr` is set.
    pub fn is_empty(&self) -> bool {
        self.tenant.is_none()
            && self.agent.is_none()
            && self.connect_timeout.is_none()
            && self.timeout.is_none()
            && self.hold_budget.is_none()
            && self.audit.is_none()
            && self.tls.is_none()
            && self.routes.is_none()
    }
}

/// One entry of `proxy.routes`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileRoute {
    /// Unique; names the route in errors and logs.
    pub name: String,
    /// The path prefix this route owns, e.g. `/billing`.
    pub prefix: String,
    /// `http` or `https` base URL the rest of the path is appended to.
    pub upstream: String,
    /// PEM CA bundle trusted for an https upstream, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Requests that are named actions; every other request is `http.request`.
    pub actions: Option<Vec<FileAction>>,
    /// `http` (the default) or `mcp`: an MCP server over Streamable HTTP, whose `tools/call`s are the actions.
    pub kind: Option<String>,
    /// `mcp` routes: whether `tools/list` hides the tools the policy always blocks for the caller (default true).
    pub hide_blocked_tools: Option<bool>,
    /// The upstream matches paths without regard to letter case: so are the route's action paths (default false).
    pub case_insensitive: Option<bool>,
    /// The upstream treats `/a/` as `/a`: a trailing `/` is dropped before matching and forwarding (default false).
    pub ignore_trailing_slash: Option<bool>,
    /// `decide` (default): a call that matches none of the route's actions is the action `http.request`, decided by
    /// policy. `block`: it is refused.
    pub unmatched: Option<String>,
    /// Request headers that can change what a call does (for example `x-account`): they are part of the call an
    /// approval binds and are shown to the approver.
    pub significant_headers: Option<Vec<String>>,
}

/// One entry of a route's `actions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileAction {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path below the route's prefix, with `{param}` segments, e.g. `/customers/{id}`.
    pub path: String,
    /// The action name policy decides on.
    pub action: String,
    /// Context keys: `/pointer` takes a value from the JSON request body (RFC 6901), `?name` a query parameter.
    pub context: Option<BTreeMap<String, String>>,
}

/// The validated proxy section.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Listener address.
    pub addr: SocketAddr,
    /// Tenant of every decision.
    pub tenant: String,
    /// Sidecar mode's agent (name or id); `None`: shared mode.
    pub agent: Option<String>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Upstream response-headers timeout.
    pub timeout: Duration,
    /// How long a call waiting for approval is held.
    pub hold_budget: Duration,
    /// When a call may reach its upstream, relative to its decision's durability.
    pub audit: Audit,
    /// HTTPS for the listener.
    pub tls: Option<crate::server::TlsConfig>,
    /// Routes, in config order.
    pub routes: Vec<Route>,
}

/// When a forwarded call may reach its upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Audit {
    /// Only once its decision is durable: after a crash, every call any upstream saw is in the ledger.
    #[default]
    Strict,
    /// While its decision is being made durable (hiding the sync behind the upstream's own time); the upstream's
    /// answer is released only once the decision is durable. After a crash, an upstream may have seen a call whose
    /// decision is not in the ledger, but no agent received the answer to such a call.
    Overlap,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// `/` or a prefix without a trailing `/`.
    pub prefix: String,
    /// The upstream base URL (no query, no fragment).
    pub upstream: http::Uri,
    /// Extra CA bundle for an https upstream.
    pub ca_file: Option<PathBuf>,
    /// Its named actions.
    pub actions: Vec<ActionRoute>,
    /// What speaks behind it.
    pub kind: RouteKind,
    /// Action paths match without regard to letter case.
    pub case_insensitive: bool,
    /// A trailing `/` is dropped before matching and forwarding.
    pub ignore_trailing_slash: bool,
    /// What a call that matches none of the actions is.
    pub unmatched: Unmatched,
    /// Lower-case names of the headers an approval binds.
    pub significant_headers: Vec<http::HeaderName>,
}

/// What a call that matches none of its route's declared actions becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// The action `http.request`, decided by policy.
    #[default]
    Decide,
    /// Refused without a decision.
    Block,
}

/// Where a context value of an action comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A JSON pointer into the request body.
    Body(String),
    /// A query parameter, by name.
    Query(String),
}

/// What a route's upstream speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// Plain HTTP: each request is an action (named, or `http.request`).
    Http,
    /// An MCP server over Streamable HTTP: each `tools/call` is an action, the rest passes through.
    Mcp {
        /// Whether `tools/list` hides the tools the policy always blocks for the caller.
        hide_blocked_tools: bool,
    },
}

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this segment.
    Literal(String),
    /// Matches any one non-empty segment; lands in the context under this key.
    Param(String),
}

/// A validated named action of a route.
#[derive(Debug, Clone)]
pub struct ActionRoute {
    /// Method it matches.
    pub method: http::Method,
    /// Path template below the prefix.
    pub path: Vec<Segment>,
    /// Canonical action name.
    pub action: String,
    /// Context key and where its value comes from.
    pub context: Vec<(String, Source)>,
}

impl ActionRoute {
    /// Whether deciding this action reads the request body.
    pub fn needs_body(&self) -> bool {
        self.context.iter().any(|(_, s)| matches!(s, Source::Body(_)))
    }
}

fn duration(v: &Option<String>, default: Duration, key: &str) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(3600) => Ok(d),
            Ok(_) => Err(format!("proxy.{key} {s:?} must be 10ms to 1h")),
            Err(e) => Err(format!("proxy.{key} {s:?}: {e}")),
        },
    }
}

/// Validates `proxy:` (with `--proxy-addr` folded into `addr`). `None`: no routes, so no proxy listener.
pub fn validate(file: Option<FileProxy>, addr_flag: Option<String>) -> Result<Option<ProxyConfig>, String> {
    let file = file.unwrap_or_default();
    let addr_text = addr_flag.or(file.addr.clone());
    let routes_in = file.routes.clone().unwrap_or_default();
    if routes_in.is_empty() {
        return Ok(None);
    }
    let addr = addr_text
        .as_deref()
        .unwrap_or(DEFAULT_ADDR)
        .parse()
        .map_err(|e| format!("proxy.addr (--proxy-addr): {e}"))?;
    let tenant = file
        .tenant
        .clone()
        .ok_or_else(|| "proxy.tenant is required when proxy has routes".to_owned())?;
    if !crate::auth::tenant_name_ok(&tenant) || tenant.starts_with('_') {
        return Err(format!("proxy.tenant {tenant:?} is not a tenant name"));
    }
    if let Some(a) = &file.agent
        && a.trim().is_empty()
    {
        return Err("proxy.agent must name an agent (or be left out)".into());
    }
    let mut routes: Vec<Route> = Vec::with_capacity(routes_in.len());
    for (i, r) in routes_in.into_iter().enumerate() {
        routes.push(route(i, r, &routes)?);
    }
    Ok(Some(ProxyConfig {
        addr,
        tenant,
        agent: file.agent,
        connect_timeout: duration(&file.connect_timeout, Duration::from_secs(5), "connect-timeout")?,
        timeout: duration(&file.timeout, Duration::from_secs(30), "timeout")?,
        tls: match file.tls {
            None => None,
            Some(crate::server::FileTls {
                cert: Some(cert),
                key: Some(key),
            }) => Some(crate::server::TlsConfig { cert, key }),
            Some(_) => {
                return Err("proxy.tls needs both cert and key".into());
            }
        },
        audit: match file.audit.as_deref() {
            None | Some("strict") => Audit::Strict,
            Some("overlap") => Audit::Overlap,
            Some(other) => {
                return Err(format!("proxy.audit {other:?} must be strict or overlap"));
            }
        },
        hold_budget: match file.hold_budget.as_deref().map(humantime::parse_duration) {
            // `0s`: never hold; answer at once with the approval.
            Some(Ok(d)) if d.is_zero() => Duration::ZERO,
            _ => duration(&file.hold_budget, DEFAULT_HOLD_BUDGET, "hold-budget")?,
        },
        routes,
    }))
}

fn route(i: usize, r: FileRoute, earlier: &[Route]) -> Result<Route, String> {
    let bad = |what: String| format!("proxy.routes[{i}] ({}): {what}", r.name);
    if r.name.is_empty()
        || r.name.len() > 64
        || !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(bad("name must be 1-64 of [A-Za-z0-9_-]".into()));
    }
    if earlier.iter().any(|e| e.name == r.name) {
        return Err(bad("name is used twice".into()));
    }
    let prefix = normal_prefix(&r.prefix).ok_or_else(|| {
        bad(format!(
            "prefix {:?} must start with '/' and hold only path segments (no '.', '..', '?', '#', '{{' or empty segments)",
            r.prefix
        ))
    })?;
    if let Some(e) = earlier.iter().find(|e| e.prefix == prefix) {
        return Err(bad(format!("prefix {prefix:?} is also route {:?}'s", e.name)));
    }
    let upstream: http::Uri = r
        .upstream
        .parse()
        .map_err(|e| bad(format!("upstream {:?}: {e}", r.upstream)))?;
    if !matches!(upstream.scheme_str(), Some("http" | "https"))
        || upstream.host().is_none()
        || upstream.query().is_some()
        || r.upstream.contains('#')
    {
        return Err(bad(format!(
            "upstream {:?} must be an http or https URL with a host and no query",
            r.upstream
        )));
    }
    if let Some(f) = &r.ca_file {
        if upstream.scheme_str() != Some("https") {
            return Err(bad("ca-file is only for an https upstream".into()));
        }
        if !f.is_file() {
            return Err(bad(format!("ca-file {} is not a readable file", f.display())));
        }
    }
    let kind = match r.kind.as_deref() {
        None | Some("http") => {
            if r.hide_blocked_tools.is_some() {
                return Err(bad("hide-blocked-tools is only for a route of kind mcp".into()));
            }
            RouteKind::Http
        }
        Some("mcp") => {
            // An MCP route's actions are its tool calls, named by the body; path actions would never match.
            if r.actions.as_ref().is_some_and(|a| !a.is_empty()) {
                return Err(bad(
                    "a route of kind mcp has no actions: each tools/call is the action named by its tool"
                        .into(),
                ));
            }
            RouteKind::Mcp {
                hide_blocked_tools: r.hide_blocked_tools.unwrap_or(true),
            }
        }
        Some(k) => return Err(bad(format!("kind {k:?} must be http or mcp"))),
    };
    let mut actions: Vec<ActionRoute> = Vec::new();
    for (j, a) in r.actions.clone().unwrap_or_default().into_iter().enumerate() {
        let bad = |what: String| bad(format!("actions[{j}]: {what}"));
        let method = http::Method::from_bytes(a.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad(format!("method {:?} is not an HTTP method", a.method)))?;
        let path = template(&a.path).map_err(|e| bad(format!("path {:?}: {e}", a.path)))?;
        let action = crate::names::action(&a.action)
            .map_err(|e| bad(format!("action {:?}: {e}", a.action)))?
            .into_string();
        let mut context = Vec::new();
        for (k, ptr) in a.context.unwrap_or_default() {
            if k.is_empty() || k.len() > 64 {
                return Err(bad(format!("context key {k:?} must be 1-64 characters")));
            }
            if path.iter().any(|s| matches!(s, Segment::Param(p) if *p == k)) {
                return Err(bad(format!("context key {k:?} is also a path parameter")));
            }
            let source = if ptr.starts_with('/') {
                Source::Body(ptr)
            } else if let Some(name) = ptr.strip_prefix('?').filter(|n| !n.is_empty()) {
                Source::Query(name.to_owned())
            } else {
                return Err(bad(format!(
                    "context {k:?}: {ptr:?} is neither a JSON pointer into the body (it starts with '/') nor a \
                     query parameter ('?name')"
                )));
            };
            context.push((k, source));
        }
        if actions.iter().any(|e| e.method == method && e.path == path) {
            return Err(bad(format!("{method} {:?} is matched twice", a.path)));
        }
        actions.push(ActionRoute {
            method,
            path,
            action,
            context,
        });
    }
    let unmatched = match r.unmatched.as_deref() {
        None | Some("decide") => Unmatched::Decide,
        Some("block") => Unmatched::Block,
        Some(o) => return Err(bad(format!("unmatched {o:?} must be decide or block"))),
    };
    let mut significant_headers = Vec::new();
    for h in r.significant_headers.unwrap_or_default() {
        let name = http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
            .map_err(|_| bad(format!("significant-headers: {h:?} is not a header name")))?;
        if !significant_headers.contains(&name) {
            significant_headers.push(name);
        }
    }
    Ok(Route {
        name: r.name,
        prefix,
        upstream,
        ca_file: r.ca_file,
        actions,
        kind,
        case_insensitive: r.case_insensitive.unwrap_or(false),
        ignore_trailing_slash: r.ignore_trailing_slash.unwrap_or(false),
        unmatched,
        significant_headers,
    })
}

/// `/` or `/a/b` (trailing `/` dropped); `None` when it is not a plain path.
fn normal_prefix(p: &str) -> Option<String> {
    let rest = p.strip_prefix('/')?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Some("/".into());
    }
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['?', '#', '{', '}', '%']) {
            return None;
        }
    }
    Some(format!("/{rest}"))
}

fn template(p: &str) -> Result<Vec<Segment>, String> {
    let rest = p.strip_prefix('/').ok_or("must start with '/'")?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for seg in rest.split('/') {
        if let Some(inner) = seg.strip_prefix('{') {
            let name = inner.strip_suffix('}').ok_or("a '{' segment must end with '}'")?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("parameter {{{name}}} must be 1 or more of [A-Za-z0-9_]"));
            }
            if out.iter().any(|s| matches!(s, Segment::Param(n) if n == name)) {
                return Err(format!("parameter {{{name}}} is used twice"));
            }
            out.push(Segment::Param(name.to_owned()));
        } else if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['{', '}', '?', '#']) {
            return Err(format!("segment {seg:?} is not allowed"));
        } else {
            out.push(Segment::Literal(seg.to_owned()));
        }
    }
    Ok(out)
}
