//! The tool-call proxy: agents point their tool base URLs at kla, and each call becomes an action decided by the
//! same pipeline as `decisions.evaluate` (`crate::decide`) before it may reach its upstream. This module owns the
//! `proxy:` config section ([`config`]), how a request finds its route and action ([`Routes`]), and the listener's
//! handler with its pooled upstream clients ([`Proxy`]); routes of `kind: mcp` are handled by `mcp`. It runs no SQL
//! and never writes the ledger itself: recording is `decide`'s.

pub mod config;
mod forward;
mod hold;
pub(crate) mod mcp;

pub use config::{
    ActionRoute, Audit, FileAction, FileProxy, FileRoute, ProxyConfig, Route, RouteKind, Segment,
};
pub use forward::{Proxy, X_KLA_DECISION, X_KLA_DECISION_ID, X_KLA_REASON_CODES};
use serde_json::{Map, Value};

/// The action of a request that matches no named action of its route.
pub const HTTP_REQUEST: &str = "http.request";

/// The routes of a proxy, looked up by longest prefix.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Longest prefix first, so the first match is the longest.
    routes: Vec<Route>,
}

/// What a request is, once its route is found.
#[derive(Debug)]
pub struct Matched<'a> {
    /// Its route.
    pub route: &'a Route,
    /// The path below the route's prefix (always starting with `/`).
    pub rest: &'a str,
    /// Its named action, if one matched.
    pub action: Option<&'a ActionRoute>,
    /// The action name and the context known before reading the body.
    pub name: String,
    /// `{param}` values, or `{method, path}` for `http.request`.
    pub context: Map<String, Value>,
}

impl Routes {
    /// The routes of a validated config.
    pub fn new(mut routes: Vec<Route>) -> Routes {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Routes { routes }
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route owning `path` (longest prefix on a segment boundary) and the path below it.
    pub fn route<'a>(&'a self, path: &'a str) -> Option<(&'a Route, &'a str)> {
        self.routes.iter().find_map(|r| {
            if r.prefix == "/" {
                return Some((r, path));
            }
            let rest = path.strip_prefix(r.prefix.as_str())?;
            if rest.is_empty() {
                Some((r, "/"))
            } else if rest.starts_with('/') {
                Some((r, rest))
            } else {
                None
            }
        })
    }

    /// The route and action of a request; `None` when it is outside every route.
    pub fn resolve<'a>(&'a self, method: &http::Method, path: &'a str) -> Option<Matched<'a>> {
        let (route, rest) = self.route(path)?;
        for a in &route.actions {
            if a.method != *method {
                continue;
            }
            if let Some(params) = match_template(&a.path, rest) {
                return Some(Matched {
                    route,
                    rest,
                    action: Some(a),
                    name: a.action.clone(),
                    context: params,
                });
            }
        }
        let mut context = Map::new();
        context.insert("method".into(), method.as_str().into());
        context.insert("path".into(), path.into());
        Some(Matched {
            route,
            rest,
            action: None,
            name: HTTP_REQUEST.into(),
            context,
        })
    }
}

/// `{param}` values when `path` matches `template` segment by segment (a trailing `/` is not ignored).
fn match_template(template: &[Segment], path: &str) -> Option<Map<String, Value>> {
    let rest = path.strip_prefix('/')?;
    let segs: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    if segs.len() != template.len() {
        return None;
    }
    let mut params = Map::new();
    for (t, s) in template.iter().zip(segs) {
        match t {
            Segment::Literal(l) if l == s => {}
            Segment::Param(name) if !s.is_empty() => {
                params.insert(name.clone(), s.into());
            }
            _ => return None,
        }
    }
    Some(params)
}

/// Adds the action's body context (each JSON pointer's value; a pointer that finds nothing is left out, so a rule
/// sees the key as absent) to `context`. `Err`: the body is not a JSON document.
pub fn body_context(
    action: &ActionRoute,
    body: &[u8],
    context: &mut Map<String, Value>,
) -> Result<(), String> {
    let doc: Value = crate::json::from_slice_unique(body).map_err(|e| {
        format!(
            "the request body is not JSON ({e}), and action {} reads its context from it",
            action.action
        )
    })?;
    for (key, ptr) in &action.context {
        if let Some(v) = doc.pointer(ptr) {
            context.insert(key.clone(), v.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
