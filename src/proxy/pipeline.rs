//! One tool call, whatever it arrived over: the context it carries through the phases ([`ToolCall`]), the phases
//! that decide it, and the [`Adapter`] a protocol implements to parse its request and render its answers (pingora's
//! `ProxyHttp`: phases as methods, each with a documented default and failure behaviour).
//!
//! The phases, in order (docs/request-lifecycle.md charts them):
//!
//! 1. **route** (`super::routes`, run by the dispatcher): the route and action of the canonical target.
//! 2. **identify** (`super::identity`, run by the dispatcher): the caller, its agent, the execution header.
//! 3. **read context** (the adapter): the request parsed into a [`ToolCall`] (action, context, the `tool` value an
//!    approval binds). A request that cannot be read is refused by the adapter; nothing is decided.
//! 4. **decide** ([`Proxy::run`]): the agent resolved, the caller accepted, then the decision made and recorded
//!    inside kla's `execute_tool` span, strict (forward only once durable) or under `audit: overlap` (an allowed
//!    call is sent while its record is made durable; the answer still waits for it). No decision, no forward.
//! 5. **hold** ([`Adapter::hold`], the loop in `super::hold`): a `require_approval` call waits for its approval.
//! 6. **forward** ([`Adapter::forward`], the transport in `super::upstream`).
//! 7. **respond** ([`Adapter::respond`], headers in `super::respond`): the decision's id and `warn` flag on the
//!    answer.
//!
//! Executions add a **budget** phase between accept and decide (marked in [`Proxy::run`]): once here, it applies to
//! plain HTTP and MCP routes alike.

use super::Proxy;
use super::config::{Audit, Route};
use super::hold::{HoldEnd, Refusal};
use crate::auth::Caller;
use crate::decide::{ActionRequest, Decided};
use crate::error::Classify;
use crate::policy::Outcome;
use crate::recorder::ApprovalTerms;

/// One tool call between the read-context phase and its answer.
pub(crate) struct ToolCall<'a> {
    /// Who calls (identify).
    pub caller: &'a Caller,
    /// Its route (route).
    pub route: &'a Route,
    /// The tool as the caller named it: the span's name, and what kla's answers call it.
    pub tool: &'a str,
    /// What is decided (read context); its agent is resolved to an id by the decide phase.
    pub req: ActionRequest,
}

/// A protocol's side of a tool call: it parses its request into a [`ToolCall`] beforehand and renders every answer.
/// The phases call these methods; none of them decides anything.
pub(crate) trait Adapter {
    /// What the adapter answers with.
    type Answer;

    /// The caller's `traceparent`, parent of kla's `execute_tool` span. Default: none (a root span).
    fn traceparent(&self) -> Option<&str> {
        None
    }

    /// Whether the call may be forwarded while its decision is being recorded (`audit: overlap`). Default: yes,
    /// when the route's proxy is configured so; an adapter that cannot withhold what it sent says no.
    fn overlaps(&self) -> bool {
        true
    }

    /// Phase **forward**: sends the call upstream and renders the upstream's answer (or why there is none). Called
    /// at most once per call, only for an `allow`/`warn` decision or an approval used up.
    async fn forward(&mut self) -> Self::Answer;

    /// Phase **respond**: the decision `d` on the forwarded call's `answer` (its id, the `warn` flag).
    fn respond(&mut self, answer: Self::Answer, d: &Decided) -> Self::Answer;

    /// No decision could be made (the agent not resolved, the caller not accepted, the decision or its record
    /// failed): a refusal, never a forward. `sent`: the call went upstream under overlap and its answer is
    /// withheld.
    fn undecided(&mut self, e: &dyn Classify, sent: bool) -> Self::Answer;

    /// A decision the phases cannot act on (a bug): an internal error naming the decision.
    fn broken(&mut self, what: &'static str, decision_id: &str) -> Self::Answer;

    /// The policy blocked the call: a refusal naming the decision and its reasons.
    fn blocked(&mut self, tool: &str, d: &Decided) -> Self::Answer;

    /// The call waits for its approval: not forwarded (yet). `decision_id` is the held call's decision.
    fn pending(&mut self, tool: &str, decision_id: &str, approval_id: &str, expires_at: &str)
    -> Self::Answer;

    /// A held call ended refused (denied, expired, blocked by the re-check, or not followable).
    fn refused(&mut self, tool: &str, r: &Refusal) -> Self::Answer;

    /// Whether the client waits while its call is held (the default hold). Default: no.
    fn waits(&self) -> bool {
        false
    }

    /// Phase **hold**: a `require_approval` call that uses no approval. Default: when [`Adapter::waits`], the
    /// client waits up to the proxy's hold budget while the shared loop follows the approval; approved and decided
    /// again, the call is forwarded under the new decision, otherwise it is [`Adapter::refused`] or
    /// [`Adapter::pending`]. A client that goes away drops this future and nothing is forwarded for it.
    async fn hold(
        &mut self,
        p: &Proxy,
        call: ToolCall<'_>,
        d: Decided,
        terms: ApprovalTerms,
    ) -> Self::Answer {
        if !self.waits() {
            return self.pending(call.tool, &d.decision_id, &terms.approval_id, &terms.expires_at);
        }
        match p
            .hold(call.caller, call.req, &d.decision_id, &terms, p.hold_budget)
            .await
        {
            HoldEnd::Go(go) => {
                let answer = self.forward().await;
                self.respond(answer, &go)
            }
            HoldEnd::Refused(r) => self.refused(call.tool, &r),
            HoldEnd::Pending {
                approval_id,
                expires_at,
            } => self.pending(call.tool, &d.decision_id, &approval_id, &expires_at),
        }
    }
}

impl Proxy {
    /// The phases from **decide** on, for a call read into `call`; `a` renders every answer.
    pub(crate) async fn run<A: Adapter>(&self, mut call: ToolCall<'_>, a: &mut A) -> A::Answer {
        call.req.agent_id = match self
            .identity
            .resolve(std::mem::take(&mut call.req.agent_id))
            .await
        {
            Ok(id) => id,
            Err(e) => return a.undecided(&e, false),
        };
        let accepted = match self.core.decider.accept(call.caller) {
            Ok(accepted) => accepted,
            Err(e) => return a.undecided(&e, false),
        };
        // Phase budget (executions) goes here: after the caller is accepted, before anything is decided.
        let overlap = self.audit == Audit::Overlap && a.overlaps();
        // kla's own `execute_tool` span (telemetry on): the decision runs in its context, so it is the parent. It
        // ends when the call is answered.
        let tool_cx = crate::telemetry::otel::tool_call(call.tool, &call.route.name, a.traceparent());
        let mut sent = false;
        let deciding = self
            .core
            .decider
            .decide_overlapped(accepted, call.req.clone(), |_| {
                if !overlap {
                    return None;
                }
                sent = true;
                Some(a.forward())
            });
        let decided = match &tool_cx {
            Some(cx) => opentelemetry::context::FutureExt::with_context(deciding, cx.clone()).await,
            None => deciding.await,
        };
        let (d, early) = match decided {
            Ok(d) => d,
            Err(e) => {
                if sent {
                    tracing::error!(error = %e, route = %call.route.name,
                        "a call was sent upstream (audit: overlap) but its decision could not be recorded; its answer is withheld");
                }
                return a.undecided(&e, sent);
            }
        };
        crate::telemetry::otel::tool_outcome(tool_cx.as_ref(), d.decision.outcome.as_str());
        if let Some(answer) = early {
            return a.respond(answer, &d);
        }
        match d.decision.outcome {
            Outcome::Block => a.blocked(call.tool, &d),
            Outcome::RequireApproval if d.used_approval.is_none() => {
                let Some(terms) = d.approval.clone() else {
                    return a.broken("a require_approval decision without its approval", &d.decision_id);
                };
                a.hold(self, call, d, terms).await
            }
            // Allowed, or a retry that uses an approval already given.
            Outcome::RequireApproval | Outcome::Allow | Outcome::Warn => {
                let answer = a.forward().await;
                a.respond(answer, &d)
            }
        }
    }
}
