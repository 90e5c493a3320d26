//! The **identify** phase of a tool call, the same for every route kind: who calls (the agent configured for a
//! sidecar, or the agent-bound token in `Proxy-Authorization` in shared mode, never the request body), whether the
//! agent's name is in the grammar, whether the `X-KLA-Execution-Id` header is one value in its exact form, and the
//! agent's name resolved to its id in the tenant (cached) for the decide phase. Every failure refuses the request
//! before anything is decided or forwarded.

use super::respond::{self, Code, X_KLA_EXECUTION_ID};
use crate::auth::{Authenticator, Caller, Principal, Role};
use crate::registry::{Agents, RegistryError};
use axum::response::Response;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;

/// The most agent names [`Identity`] keeps resolved.
const AGENT_ID_CACHE: usize = 4096;

/// Who a proxy's calls are made as, and how a caller is found.
pub(crate) struct Identity {
    tenant: Arc<str>,
    /// The agent of a sidecar; `None` in shared mode (each call names its agent by its token).
    agent: Option<Arc<str>>,
    auth: Arc<Authenticator>,
    agents: Arc<Agents>,
    /// Agent names resolved to ids (a registered name keeps its id: agents are never renamed or removed), so a
    /// call does not list the tenant's agents. Bounded; cleared when full.
    ids: parking_lot::Mutex<HashMap<String, String>>,
}

/// The caller of a request and its agent (a name or an id, as the caller named it).
pub(crate) struct Identified {
    pub caller: Caller,
    pub agent: String,
}

impl Identity {
    /// Calls made in `tenant`, as `agent` (sidecar) or as each token's agent (shared mode).
    pub(crate) fn new(
        tenant: Arc<str>,
        agent: Option<Arc<str>>,
        auth: Arc<Authenticator>,
        agents: Arc<Agents>,
    ) -> Identity {
        Identity {
            tenant,
            agent,
            auth,
            agents,
            ids: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// The tenant every call is made in.
    pub(crate) fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// The sidecar's agent, if any.
    pub(crate) fn agent(&self) -> Option<&str> {
        self.agent.as_deref()
    }

    /// The agents directory (the decide phase and `tools/list` filtering read agents from it).
    pub(crate) fn agents(&self) -> &Agents {
        &self.agents
    }

    /// Phase **identify**: the caller, its agent's name checked, the execution header checked. `Err`: the answer
    /// (`407` without a usable `Proxy-Authorization`, `403` for a token that may not call, `400` for a bad header).
    pub(crate) fn identify(&self, headers: &HeaderMap) -> Result<Identified, Box<Response>> {
        let id = self.caller(headers)?;
        // A name outside the grammar is refused here, before anything is decided or forwarded.
        if let Err(e) = crate::names::agent(&id.agent) {
            return Err(Box::new(respond::error(
                Code::Forbidden,
                format!("agent '{}': {e}", id.agent),
            )));
        }
        if let Err(e) = crate::names::ids::execution_header(
            headers.get_all(X_KLA_EXECUTION_ID).iter().map(|v| v.as_bytes()),
        ) {
            return Err(Box::new(respond::error(
                Code::InvalidRequest,
                format!("header '{X_KLA_EXECUTION_ID}' {e}"),
            )));
        }
        Ok(id)
    }

    /// The caller of this request: the configured agent (sidecar mode) or the agent-bound token in
    /// `Proxy-Authorization` (shared mode).
    fn caller(&self, headers: &HeaderMap) -> Result<Identified, Box<Response>> {
        if let Some(agent) = &self.agent {
            let principal = Principal {
                issuer: "kla".into(),
                subject: format!("proxy:{agent}").into(),
                role: Role::Agent,
                tenants: Arc::from(vec![self.tenant.to_string()]),
                exp: u64::MAX,
                agent: Some(agent.clone()),
                desk_session: false,
            };
            return Ok(Identified {
                caller: Caller {
                    principal,
                    tenant: self.tenant.clone(),
                },
                agent: agent.to_string(),
            });
        }
        let unauthenticated = |message: String| {
            let mut r =
                respond::json_error(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "unauthorized", message);
            r.headers_mut()
                .insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Box::new(r)
        };
        let token = headers
            .get(header::PROXY_AUTHORIZATION)
            .ok_or_else(|| unauthenticated("missing Proxy-Authorization: Bearer <kla agent token>".into()))?
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthenticated("Proxy-Authorization must be 'Bearer <kla agent token>'".into())
            })?;
        let principal = self
            .auth
            .verify(token)
            .map_err(|e| unauthenticated(format!("Proxy-Authorization: {e}")))?;
        if principal.desk_session {
            return Err(unauthenticated(
                "a Decision Desk session cannot make tool calls".into(),
            ));
        }
        let Some(agent) = principal.agent.clone() else {
            return Err(Box::new(respond::error(
                Code::Forbidden,
                "the proxy accepts only tokens bound to an agent (an `agent` claim)",
            )));
        };
        if !principal.allows_tenant(&self.tenant) {
            return Err(Box::new(respond::error(
                Code::Forbidden,
                format!("this token may not act in tenant '{}'", self.tenant),
            )));
        }
        Ok(Identified {
            caller: Caller {
                principal,
                tenant: self.tenant.clone(),
            },
            agent: agent.to_string(),
        })
    }

    /// The agent's id: `decide` looks agents up by id, and a name (sidecar config, or a token's `agent` claim) is
    /// resolved in the tenant first. An unknown agent stays as given, so `decide` refuses it.
    pub(crate) async fn resolve(&self, agent: String) -> Result<String, RegistryError> {
        if agent.starts_with("agt_") {
            return Ok(agent);
        }
        let key = agent.to_ascii_lowercase();
        if let Some(id) = self.ids.lock().get(&key) {
            return Ok(id.clone());
        }
        let found = self
            .agents
            .list(&self.tenant)
            .await?
            .into_iter()
            .find(|a| a.name.eq_ignore_ascii_case(&agent))
            .map(|a| a.agent_id);
        // Only found names are kept: an agent registered later is found by its next call.
        let Some(id) = found else {
            return Ok(agent);
        };
        let mut ids = self.ids.lock();
        if ids.len() >= AGENT_ID_CACHE {
            ids.clear();
        }
        ids.insert(key, id.clone());
        Ok(id)
    }
}
