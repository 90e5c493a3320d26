//! How a request finds its route and action (the **route** phase): the routes of one config by longest prefix,
//! and a canonical request target matched against a route's action templates. Pure: no IO, no hyper bodies.

use super::config::{ActionRoute, Route, Segment};
use super::target;
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
    /// The canonical path below the route's prefix (always starting with `/`): what the upstream receives below
    /// its base path.
    pub rest: &'a str,
    /// The canonical path as kla's clients see it (prefix and `rest`).
    pub path: String,
    /// Its named action, if one matched.
    pub action: Option<&'a ActionRoute>,
    /// The action name and the context known before reading the body.
    pub name: String,
    /// `{param}` values (decoded), or `{method, path}` for `http.request`.
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

    /// The route and action of a request whose method and path are canonical ([`target`]); `Ok(None)` when it is
    /// outside every route. `Err`: the call differs from a declared action only in letter case or a trailing `/`
    /// that the route does not say its upstream ignores, or a path parameter does not decode to UTF-8; deciding it
    /// as `http.request` could let the upstream run the action under another name.
    pub fn resolve<'a>(
        &'a self,
        method: &http::Method,
        path: &'a str,
    ) -> Result<Option<Matched<'a>>, target::Ambiguous> {
        let Some((route, mut rest)) = self.route(path) else {
            return Ok(None);
        };
        if route.ignore_trailing_slash && rest.len() > 1 {
            rest = rest.strip_suffix('/').unwrap_or(rest);
        }
        let full = if route.prefix == "/" {
            rest.to_owned()
        } else if rest == "/" && !path.ends_with('/') {
            route.prefix.clone()
        } else {
            format!("{}{rest}", route.prefix)
        };
        for a in &route.actions {
            if a.method != *method {
                continue;
            }
            if let Some(params) = match_template(&a.path, rest, route.case_insensitive)? {
                return Ok(Some(Matched {
                    route,
                    rest,
                    path: full,
                    action: Some(a),
                    name: a.action.clone(),
                    context: params,
                }));
            }
        }
        let loose = rest.strip_suffix('/').filter(|r| !r.is_empty()).unwrap_or(rest);
        for a in route.actions.iter().filter(|a| a.method == *method) {
            if let Ok(Some(_)) = match_template(&a.path, loose, true) {
                return Err(target::Ambiguous(format!(
                    "{method} {full} differs from action {} of route {} only in letter case or a trailing '/'; \
                     if the upstream ignores them, say so in the route (case-insensitive, ignore-trailing-slash)",
                    a.action, route.name
                )));
            }
        }
        let mut context = Map::new();
        context.insert("method".into(), method.as_str().into());
        context.insert("path".into(), full.clone().into());
        Ok(Some(Matched {
            route,
            rest,
            path: full,
            action: None,
            name: HTTP_REQUEST.into(),
            context,
        }))
    }
}

/// `{param}` values (percent-decoded) when `path` matches `template` segment by segment (a trailing `/` is not
/// ignored).
fn match_template(
    template: &[Segment],
    path: &str,
    case_insensitive: bool,
) -> Result<Option<Map<String, Value>>, target::Ambiguous> {
    let Some(rest) = path.strip_prefix('/') else {
        return Ok(None);
    };
    let segs: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split('/').collect()
    };
    if segs.len() != template.len() {
        return Ok(None);
    }
    let mut params = Map::new();
    for (t, s) in template.iter().zip(segs) {
        match t {
            Segment::Literal(l) if l == s || (case_insensitive && l.eq_ignore_ascii_case(s)) => {}
            Segment::Param(name) if !s.is_empty() => {
                params.insert(name.clone(), target::decoded_segment(s)?.into());
            }
            _ => return Ok(None),
        }
    }
    Ok(Some(params))
}
