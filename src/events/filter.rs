//! Which events a subscriber gets: always its tenant's only, only its agent's for a token bound to one agent, and
//! then what it asked for (SSE: types and an execution; WebSocket: executions and topics).

use super::event::{Event, EventType, TypeSet};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A WebSocket topic: a group of event types of the whole tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    /// `approval.required`, `approval.voted`, `approval.resolved`, `approval.expired`.
    Approvals,
    /// `decision.made`.
    Decisions,
}

impl Topic {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Topic::Approvals => "approvals",
            Topic::Decisions => "decisions",
        }
    }

    /// The topic a wire name names.
    pub fn parse(s: &str) -> Option<Topic> {
        [Topic::Approvals, Topic::Decisions]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    /// The event types it carries.
    pub fn types(self) -> TypeSet {
        match self {
            Topic::Approvals => TypeSet::of(&[
                EventType::ApprovalRequired,
                EventType::ApprovalVoted,
                EventType::ApprovalResolved,
                EventType::ApprovalExpired,
            ]),
            Topic::Decisions => TypeSet::of(&[EventType::DecisionMade]),
        }
    }
}

/// The event types an execution subscription (the KLA Execution API's `{"type":"subscribe","executionId"}`)
/// carries: everything about the execution, with its approvals in the Execution API's shape
/// (`execution.approval_required`) rather than the Desk's (`approval.required`, the same approval).
pub fn execution_types() -> TypeSet {
    TypeSet::all().without(TypeSet::of(&[EventType::ApprovalRequired]))
}

/// What a subscriber asked for.
#[derive(Debug, Clone)]
pub enum Interest {
    /// An SSE stream: these types, of one execution when given.
    Stream {
        types: TypeSet,
        execution_id: Option<String>,
    },
    /// A WebSocket connection's subscriptions (none at first).
    Subscriptions {
        executions: BTreeSet<String>,
        topics: BTreeSet<Topic>,
    },
}

impl Interest {
    /// No subscription yet (a new WebSocket connection).
    pub fn none() -> Interest {
        Interest::Subscriptions {
            executions: BTreeSet::new(),
            topics: BTreeSet::new(),
        }
    }

    /// Every type an event must have to be wanted at all (the entry kinds a subscriber catching up from disk asks
    /// the index for).
    pub fn types(&self) -> TypeSet {
        match self {
            Interest::Stream { types, .. } => *types,
            Interest::Subscriptions { executions, topics } => {
                let t = topics
                    .iter()
                    .fold(TypeSet::NONE, |t, topic| t.with(topic.types()));
                if executions.is_empty() {
                    t
                } else {
                    t.with(execution_types())
                }
            }
        }
    }

    fn wants(&self, e: &Event) -> bool {
        match self {
            Interest::Stream { types, execution_id } => {
                types.contains(e.kind)
                    && execution_id
                        .as_deref()
                        .is_none_or(|x| e.execution_id.as_deref() == Some(x))
            }
            Interest::Subscriptions { executions, topics } => {
                topics.iter().any(|t| t.types().contains(e.kind))
                    || (execution_types().contains(e.kind)
                        && e.execution_id.as_deref().is_some_and(|x| executions.contains(x)))
            }
        }
    }
}

/// A subscriber's filter.
#[derive(Debug, Clone)]
pub struct Filter {
    tenant: Arc<str>,
    bound: Option<Bound>,
    /// What the subscriber asked for (a WebSocket connection changes it as it subscribes).
    pub interest: Interest,
}

/// A token bound to one agent (its `agent` claim: a name or an id), and the ids that agent is known by.
#[derive(Debug, Clone)]
struct Bound {
    agent: Arc<str>,
    ids: Vec<String>,
}

/// At most this many agent ids are remembered for a bound token (one agent has one id; this only bounds memory).
const KNOWN_IDS: usize = 8;

impl Filter {
    /// Events of `tenant` that `interest` wants; with `agent` (a bound token's claim) only that agent's, where
    /// `agent_id` is its id when the directory knows it already.
    pub fn new(
        tenant: Arc<str>,
        agent: Option<Arc<str>>,
        agent_id: Option<String>,
        interest: Interest,
    ) -> Filter {
        Filter {
            tenant,
            bound: agent.map(|agent| Bound {
                agent,
                ids: agent_id.into_iter().collect(),
            }),
            interest,
        }
    }

    /// The subscriber's tenant.
    pub fn tenant(&self) -> &Arc<str> {
        &self.tenant
    }

    /// Whether the subscriber gets `e`. Takes `&mut self` because a bound token learns its agent's id from the
    /// agent's decisions (which carry id and name), for approval entries that name the agent by id only.
    pub fn matches(&mut self, e: &Event) -> bool {
        if *e.tenant != *self.tenant {
            return false;
        }
        if let Some(b) = &mut self.bound {
            let id = e.agent_id.as_deref();
            let by_name = e
                .agent_name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(&b.agent));
            let by_id = id.is_some_and(|id| id == &*b.agent || b.ids.iter().any(|k| k == id));
            if by_name
                && let Some(id) = id
                && !b.ids.iter().any(|k| k == id)
                && b.ids.len() < KNOWN_IDS
            {
                b.ids.push(id.to_owned());
            }
            if !(by_name || by_id) {
                return false;
            }
        }
        self.interest.wants(e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::events::event::EventId;
    use serde_json::json;

    /// A `decision.made` event of `tenant` for `agent` (id, name), of no execution.
    fn made(tenant: &str, agent: (Option<&str>, Option<&str>)) -> Event {
        ev(EventType::DecisionMade, tenant, agent, None)
    }

    fn ev(kind: EventType, tenant: &str, agent: (Option<&str>, Option<&str>), exec: Option<&str>) -> Event {
        Event {
            id: EventId::new(1, 0),
            kind,
            tenant: tenant.into(),
            agent_id: agent.0.map(Into::into),
            agent_name: agent.1.map(Into::into),
            execution_id: exec.map(Into::into),
            created_at: "2026-12-01T10:00:00.000Z".into(),
            data: json!({}),
        }
    }

    fn all() -> Interest {
        Interest::Stream {
            types: TypeSet::all(),
            execution_id: None,
        }
    }

    #[test]
    fn other_tenants_events_never_match() {
        let mut f = Filter::new("acme".into(), None, None, all());
        assert!(f.matches(&made("acme", (Some("a"), Some("n")))));
        assert!(!f.matches(&made("acme2", (Some("a"), Some("n")))));
        assert!(!f.matches(&made("_system", (None, None))));
    }

    #[test]
    fn a_bound_token_sees_its_agent_by_name_or_id_and_learns_the_id_from_decisions() {
        let mut f = Filter::new("acme".into(), Some("Claims-Bot".into()), None, all());
        let voted = ev(EventType::ApprovalVoted, "acme", (Some("agt_1"), None), None);
        assert!(!f.matches(&voted), "the id is not known yet");
        assert!(f.matches(&made("acme", (Some("agt_1"), Some("claims-bot")))));
        assert!(f.matches(&voted), "learned from the decision");
        assert!(!f.matches(&ev(EventType::ApprovalVoted, "acme", (Some("agt_2"), None), None)));
        assert!(!f.matches(&made("acme", (Some("agt_2"), Some("other")))));
        assert!(!f.matches(&ev(EventType::ApprovalResolved, "acme", (None, None), None)));
        // Bound by id, or with the id resolved up front.
        let mut by_id = Filter::new("acme".into(), Some("agt_9".into()), None, all());
        assert!(by_id.matches(&ev(
            EventType::ApprovalResolved,
            "acme",
            (Some("agt_9"), None),
            None
        )));
        let mut resolved = Filter::new("acme".into(), Some("bot".into()), Some("agt_5".into()), all());
        assert!(resolved.matches(&ev(
            EventType::ApprovalResolved,
            "acme",
            (Some("agt_5"), None),
            None
        )));
    }

    #[test]
    fn stream_interest_filters_types_and_execution() {
        let mut f = Filter::new(
            "acme".into(),
            None,
            None,
            Interest::Stream {
                types: TypeSet::of(&[EventType::DecisionMade, EventType::ApprovalResolved]),
                execution_id: Some("exec-1".into()),
            },
        );
        let a = (Some("a"), Some("n"));
        assert!(f.matches(&ev(EventType::DecisionMade, "acme", a, Some("exec-1"))));
        assert!(!f.matches(&ev(EventType::DecisionMade, "acme", a, Some("exec-2"))));
        assert!(!f.matches(&ev(EventType::DecisionMade, "acme", a, None)));
        assert!(!f.matches(&ev(EventType::ApprovalRequired, "acme", a, Some("exec-1"))));
        assert!(f.matches(&ev(EventType::ApprovalResolved, "acme", a, Some("exec-1"))));
    }

    #[test]
    fn websocket_subscriptions_by_execution_and_topic() {
        let mut f = Filter::new("acme".into(), None, None, Interest::none());
        let a = (Some("a"), Some("n"));
        let required = ev(EventType::ApprovalRequired, "acme", a, Some("exec-1"));
        let exec_required = ev(EventType::ExecutionApprovalRequired, "acme", a, Some("exec-1"));
        let made = ev(EventType::DecisionMade, "acme", a, Some("exec-1"));
        assert!(!f.matches(&made) && !f.matches(&required), "nothing subscribed");
        assert!(f.interest.types().is_empty());
        if let Interest::Subscriptions { executions, .. } = &mut f.interest {
            executions.insert("exec-1".into());
        }
        assert!(f.matches(&made) && f.matches(&exec_required));
        assert!(
            !f.matches(&required),
            "an execution gets its approvals in the Execution API's shape"
        );
        assert!(!f.matches(&ev(EventType::DecisionMade, "acme", a, Some("exec-2"))));
        if let Interest::Subscriptions { topics, .. } = &mut f.interest {
            topics.insert(Topic::Approvals);
        }
        assert!(f.matches(&required));
        assert!(f.matches(&ev(EventType::ApprovalExpired, "acme", a, None)));
        assert!(!f.matches(&ev(EventType::DecisionMade, "acme", a, None)));
        assert_eq!(Topic::parse("approvals"), Some(Topic::Approvals));
        assert_eq!(Topic::parse("nope"), None);
    }
}
