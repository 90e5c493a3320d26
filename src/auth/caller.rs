//! The accepted caller of one request: a verified [`Principal`] acting in one tenant, and the checks every entry
//! point (the REST API now; the proxy and executions next) asks of it before it acts. Knows no HTTP: the edges
//! build a `Caller` from their own credentials and render its [`AuthError`]s in their protocol.

use super::{AuthError, Principal, Role};
use std::sync::Arc;

/// An authenticated caller acting in one tenant.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who the token names.
    pub principal: Principal,
    /// The tenant of this request (listed in the token).
    pub tenant: Arc<str>,
}

impl Caller {
    /// Refused unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), AuthError> {
        if roles.contains(&self.principal.role) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "role '{}' may not do this (needs one of: {})",
                self.principal.role.as_str(),
                roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
    }

    /// Whether this is the operator, who belongs to no tenant (see [`Role::Operator`]).
    pub fn is_operator(&self) -> bool {
        self.principal.role == Role::Operator
    }

    /// Whether the caller may read a record of `tenant` that belongs to the agent `agent` (id, name), or to no
    /// agent (`None`). The operator reads every record; everyone else only their request's tenant's, and a token
    /// bound to one agent only that agent's (a record of no agent is not its agent's, so it is refused). Records
    /// kla keeps for every tenant (policy activations) are the caller's business to allow before asking this.
    pub fn may_read(&self, tenant: &str, agent: Option<(&str, &str)>) -> bool {
        if self.is_operator() {
            return true;
        }
        if tenant != &*self.tenant {
            return false;
        }
        match self.principal.agent {
            None => true,
            Some(_) => agent.is_some_and(|(id, name)| self.principal.may_act_as(Some(id), name)),
        }
    }

    /// Refused unless the token may act as this agent (`id` is `None` for an agent not registered yet): a token
    /// bound to one agent (`agent` claim) acts only as that agent.
    pub fn require_agent(&self, id: Option<&str>, name: &str) -> Result<(), AuthError> {
        match self.principal.agent.as_deref() {
            Some(bound) if !self.principal.may_act_as(id, name) => Err(AuthError::Forbidden(format!(
                "this token acts only for agent '{bound}', not '{name}'"
            ))),
            _ => Ok(()),
        }
    }
}
