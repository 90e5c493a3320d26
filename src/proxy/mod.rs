//! The tool-call proxy: agents point their tool base URLs at kla, and each call becomes an action decided by the
//! same pipeline as `decisions.evaluate` (`crate::decide`) before it may reach its upstream. This module owns the
//! `proxy:` config section ([`config`]), the listener's one handler and its dispatch of a request to its route's
//! adapter ([`Proxy`]), and the phases of a tool call, written once for every protocol (`pipeline`):
//!
//! - **route** (`routes`, on the canonical target of `target`) and **identify** (`identity`), for every request;
//! - **read context**, by the route's adapter: plain HTTP (`plain`, reading its call with `call`) or MCP (`mcp`);
//! - **decide** (strict, or `audit: overlap`), **hold** (`hold`), **forward** (`upstream`) and **respond**
//!   (`respond`), in `pipeline`, whose `Adapter` each protocol implements to render its answers.
//!
//! It runs no SQL and never writes the ledger itself: recording is `decide`'s. It receives only the handles it uses
//! ([`Handles`]), never the API's state.

mod call;
pub mod config;
mod hold;
mod identity;
pub(crate) mod mcp;
mod pipeline;
mod plain;
mod respond;
mod routes;
pub mod target;
mod upstream;

pub use call::{Refusal, body_context};
pub use config::{
    ActionRoute, Audit, FileAction, FileProxy, FileRoute, ProxyConfig, Route, RouteKind, Segment, Source,
    Unmatched,
};
pub use respond::{X_KLA_DECISION, X_KLA_DECISION_ID, X_KLA_EXECUTION_ID, X_KLA_REASON_CODES};
pub use routes::{HTTP_REQUEST, Matched, Routes};

use crate::approvals::Approvals;
use crate::auth::Authenticator;
use crate::decide::Decider;
use crate::policy::PolicyManager;
use crate::registry::Agents;
use axum::extract::{Request, State};
use axum::response::Response;
use identity::Identity;
use respond::Code;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use upstream::Upstreams;

/// What the proxy uses of the shared core, built by the composition root (`app`) from the parts it shares with the
/// API.
pub struct Handles {
    /// Decides and records every tool call.
    pub decider: Decider,
    /// Verifies the agent tokens of shared mode.
    pub auth: Arc<Authenticator>,
    /// Agent names to ids, and the agent a `tools/list` is filtered for.
    pub agents: Arc<Agents>,
    /// Approvals a held call follows.
    pub approvals: Arc<Approvals>,
    /// The active policy (`tools/list` filtering).
    pub policy: Arc<PolicyManager>,
    /// The most bytes of a body read before deciding.
    pub body_limit: usize,
}

/// The parts of [`Handles`] the phases read (token verification and the agents directory live in `identity`).
pub(crate) struct Core {
    pub(crate) decider: Decider,
    pub(crate) approvals: Arc<Approvals>,
    pub(crate) policy: Arc<PolicyManager>,
    pub(crate) body_limit: usize,
}

/// The proxy: its routes and their pooled clients, who calls are made as, and the core's handles.
pub struct Proxy {
    pub(crate) core: Core,
    pub(crate) identity: Identity,
    pub(crate) upstreams: Upstreams,
    pub(crate) audit: Audit,
    /// How long a call waiting for approval is held before it is answered as pending.
    pub(crate) hold_budget: Duration,
    /// The API's base URL (`http://host:port`), known once the API listener is bound; approval URLs point there.
    api_base: OnceLock<String>,
    /// MCP routes' state (kla's own tasks, held calls).
    pub(crate) mcp: mcp::McpState,
}

impl Proxy {
    /// Builds the proxy and its upstream clients (reading each route's `ca-file`).
    pub fn new(cfg: &ProxyConfig, h: Handles) -> anyhow::Result<Arc<Proxy>> {
        Ok(Arc::new(Proxy {
            upstreams: Upstreams::new(cfg)?,
            identity: Identity::new(
                cfg.tenant.as_str().into(),
                cfg.agent.as_deref().map(Into::into),
                h.auth,
                h.agents,
            ),
            core: Core {
                decider: h.decider,
                approvals: h.approvals,
                policy: h.policy,
                body_limit: h.body_limit,
            },
            hold_budget: cfg.hold_budget,
            audit: cfg.audit,
            api_base: OnceLock::new(),
            mcp: mcp::McpState::new(cfg),
        }))
    }

    /// Sets the API's base URL for approval links (once).
    pub fn set_api_base(&self, base: String) {
        let _ = self.api_base.set(base);
    }

    /// Takes the routes of a reloaded config: calls that start from now on use them; calls in flight finish with
    /// the table they started with, and no connection is dropped. What the listener itself was started with (its
    /// address and TLS) and who calls are made as (tenant, agent) need a restart: a reload that changes them is
    /// refused whole.
    pub fn reload(&self, cfg: &ProxyConfig) -> anyhow::Result<usize> {
        anyhow::ensure!(
            **self.identity.tenant() == *cfg.tenant && self.identity.agent() == cfg.agent.as_deref(),
            "proxy.tenant and proxy.agent change only with a restart"
        );
        anyhow::ensure!(
            (self.upstreams.scheme() == "https") == cfg.tls.is_some(),
            "proxy.tls changes only with a restart"
        );
        let table = upstream::Table::new(cfg)?;
        let n = table.routes.len();
        self.upstreams.store(table);
        Ok(n)
    }

    /// The API URL of an approval.
    pub(crate) fn approval_url(&self, approval_id: &str) -> String {
        format!(
            "{}/v1/approvals/{approval_id}",
            self.api_base.get().map(String::as_str).unwrap_or("")
        )
    }

    /// The proxy listener's router: every path goes to the one handler.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new().fallback(dispatch).with_state(self.clone())
    }
}

/// The one handler: the **route** and **identify** phases, then the route's adapter.
async fn dispatch(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // One canonical request target: routes and actions are matched on it, the policy decides on it, and it is
    // exactly what the upstream receives. What stays ambiguous is refused before anything else.
    let canonical = target::method(&parts.method)
        .and_then(|()| target::no_overrides(&parts.headers))
        .and_then(|()| target::path(parts.uri.path()));
    let path = match canonical {
        Ok(p) => p,
        Err(e) => return respond::error(Code::InvalidRequest, e.0),
    };
    let table = p.upstreams.table();
    let m = match table.routes.resolve(&parts.method, &path) {
        Ok(Some(m)) => m,
        Ok(None) => {
            return respond::error(Code::NotFound, format!("no proxy route owns the path '{path}'"));
        }
        Err(e) => return respond::error(Code::InvalidRequest, e.0),
    };
    let who = match p.identity.identify(&parts.headers) {
        Ok(who) => who,
        Err(r) => return *r,
    };
    match m.route.kind {
        RouteKind::Mcp { .. } => mcp::handle(&p, &table, m.route, m.rest, who, parts, body).await,
        RouteKind::Http => plain::handle(&p, &table, m, who, parts, body).await,
    }
}

#[cfg(test)]
mod tests;
