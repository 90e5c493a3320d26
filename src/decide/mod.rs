//! The governed action: one function that every entry point calls to decide an agent's action (the REST API's
//! `decisions.evaluate` now; the tool-call proxy and executions next), so the rules of deciding live in one place.
//!
//! A call runs through named phases over one per-call context ([`Call`]):
//!
//! 1. **accept**: the caller may ask for decisions (role) and the request is well formed ([`Decider::accept`],
//!    before the body is read, so a caller without permission learns nothing from its body); the action name
//!    follows [`crate::names`] and is carried on in its canonical form (a name outside the grammar is refused,
//!    never guessed at); trace and execution ids, recorded as given, must have their exact form
//!    ([`crate::names::ids`]);
//! 2. **classify**: the agent is looked up in the caller's tenant, a token bound to an agent acts only as that
//!    agent, and the policy input document is built;
//! 3. **evaluate**: the active policy set decides (pure; every failure is a fail-closed `block`);
//! 4. **hold**: a `require_approval` decision opens an approval on the Decision Desk, bound to this exact action
//!    (its terms go into the decision's own entry, so decision and approval are one durable write). A caller that
//!    retries held calls (the tool-call proxy) asks for earlier approvals of the same action first: an approved,
//!    unused one is used up by this decision (the call goes through once), a pending one is waited for rather
//!    than opened twice;
//! 5. **redact**: what will be recorded passes the tenant's [`crate::redact::Redactor`] (the policy saw the values as given);
//! 6. **record**: the decision entry is appended to the ledger and is durable before anyone is answered.
//!
//! This module knows no HTTP: entry points parse their own wire format into an [`ActionRequest`] and render
//! [`Decided`] or a classified [`DecideError`] in their own.

use crate::approvals::{ApprovalError, Approvals, Earlier};
use crate::auth::{AuthError, Caller, Role};
use crate::error::{Class, Classify};
use crate::names::{self, ActionName};
use crate::policy::{AgentRef, Decision, EvalInput, Outcome, PolicyManager};
use crate::recorder::{
    ApprovalTerms, DecisionBody, DecisionEntry, OpenedApproval, Record, RecordError, Recorder,
};
use crate::redact::Redaction;
use crate::registry::{Agents, RegistryError};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Why a decision could not be made. Whatever the class, the caller must treat it as `block`.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// A request field is malformed; the message names it.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The decision could not be made durable, so it was not made.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Earlier approvals of the action could not be read.
    #[error(transparent)]
    Approval(#[from] ApprovalError),
}

impl Classify for DecideError {
    fn class(&self) -> Class {
        match self {
            DecideError::Invalid(_) => Class::Invalid,
            DecideError::Auth(e) => e.class(),
            DecideError::Registry(e) => e.class(),
            DecideError::Approval(e) => match e.class() {
                Class::Internal => Class::Unavailable,
                c => c,
            },
            DecideError::Record(e) => match e.class() {
                // Whatever failed, no decision exists: the client may retry (an idempotency key makes that safe).
                Class::Internal => Class::Unavailable,
                c => c,
            },
        }
    }
}

/// An action an agent asks to perform, as every entry point hands it in.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    pub agent_id: String,
    /// As given; the accept phase checks it against [`crate::names`] and replaces it with its canonical form.
    pub action: String,
    pub context: Map<String, Value>,
    /// The tool description, when the action is a tool call.
    pub tool: Option<Value>,
    /// `exec_` and lowercase hex ([`crate::names::ids`]); anything else is refused by the accept phase.
    pub execution_id: Option<String>,
    /// A W3C trace id ([`crate::names::ids`]); anything else is refused by the accept phase.
    pub trace_id: Option<String>,
    /// Whether an earlier approval of this exact action may be used or waited for (see the hold phase): set by
    /// entry points that hold and retry calls, where a person's one approval must let one call through.
    pub reuse_approval: bool,
}

/// Proof that the accept phase passed for this caller.
pub struct Accepted<'a> {
    caller: &'a Caller,
}

/// A decision made and recorded.
#[derive(Debug)]
pub struct Decided {
    /// `dec_...`.
    pub decision_id: String,
    pub decision: Decision,
    /// The agent as the policy saw it.
    pub agent: Arc<AgentRef>,
    /// Of the decision's ledger entry.
    pub lineage_id: String,
    pub ledger_index: u64,
    /// The approval a `require_approval` decision opened, or the pending one of the same action it waits for.
    pub approval: Option<ApprovalTerms>,
    /// The earlier approval of this exact action that this `require_approval` decision used up: the action may
    /// proceed (once).
    pub used_approval: Option<String>,
}

/// The per-call context, built by classify and read by every later phase.
struct Call<'a> {
    caller: &'a Caller,
    agent: Arc<AgentRef>,
    input: EvalInput,
    execution_id: Option<String>,
    trace_id: Option<String>,
}

/// Decides actions. Built once by `app`, shared by every entry point (a clone shares the same parts).
#[derive(Clone)]
pub struct Decider {
    policy: Arc<PolicyManager>,
    recorder: Recorder,
    agents: Arc<Agents>,
    redaction: Arc<Redaction>,
    approvals: Arc<Approvals>,
}

fn check_id(field: &str, v: &str) -> Result<(), DecideError> {
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(DecideError::Invalid(format!(
            "field '{field}' must be 1-256 printable characters"
        )));
    }
    Ok(())
}

impl Decider {
    /// A decider over the active policy, the recorder, the agent directory and the Desk's approvals.
    pub fn new(
        policy: Arc<PolicyManager>,
        recorder: Recorder,
        agents: Arc<Agents>,
        redaction: Arc<Redaction>,
        approvals: Arc<Approvals>,
    ) -> Self {
        Decider {
            policy,
            recorder,
            agents,
            redaction,
            approvals,
        }
    }

    /// Phase **accept**, part one: whether this caller may ask for decisions at all.
    pub fn accept<'a>(&self, caller: &'a Caller) -> Result<Accepted<'a>, DecideError> {
        caller.require(&[Role::Agent, Role::Admin])?;
        Ok(Accepted { caller })
    }

    /// Decides and records one action for an accepted caller.
    pub async fn decide(&self, accepted: Accepted<'_>, req: ActionRequest) -> Result<Decided, DecideError> {
        let (d, _) = self
            .decide_overlapped(accepted, req, |_| None::<std::future::Ready<()>>)
            .await?;
        Ok(d)
    }

    /// As [`Decider::decide`], and runs the caller's `effect` for an `allow` or `warn` decision while the decision's
    /// entry is being made durable (the tool-call proxy's `audit: overlap`): `effect` sees the decision and returns
    /// the future to run, or `None`. Returns only once the entry is durable; if recording fails, the effect's output
    /// is dropped with the error, so whoever waits for it never sees an effect without its record.
    pub async fn decide_overlapped<F, T>(
        &self,
        accepted: Accepted<'_>,
        req: ActionRequest,
        effect: impl FnOnce(&Decision) -> Option<F>,
    ) -> Result<(Decided, Option<T>), DecideError>
    where
        F: Future<Output = T>,
    {
        let started = crate::telemetry::otel::start();
        let action = validate(&req)?;
        let reuse = req.reuse_approval;
        let call = self.classify(accepted.caller, req, action).await?;
        let decision = self.evaluate(&call);
        let held = self.hold(&call, &decision, reuse).await?;
        let effect = match decision.outcome {
            Outcome::Allow | Outcome::Warn => effect(&decision),
            Outcome::RequireApproval | Outcome::Block => None,
        };
        let (recorded, out) = match effect {
            None => (self.record(&call, &decision, &held).await, None),
            Some(f) => {
                let (r, out) = tokio::join!(self.record(&call, &decision, &held), f);
                (r, Some(out))
            }
        };
        let recorded = recorded?;
        if started.is_some() {
            crate::telemetry::otel::decision(
                started,
                crate::telemetry::otel::DecisionSpan {
                    outcome: decision.outcome.as_str(),
                    action: &call.input.action,
                    agent_id: &call.agent.id,
                    tenant: &call.caller.tenant,
                    packs: decision.policy.iter().map(|p| p.name.clone()).collect(),
                    approval_opened: matches!(held, Held::Opened(_)),
                },
            );
        }
        let (approval, used_approval) = match held {
            Held::Opened(t) | Held::Awaits(t) => (Some(t), None),
            Held::Uses { approval_id, turn } => {
                // The use is durable and indexed: the next call of this action sees it used.
                drop(turn);
                (None, Some(approval_id))
            }
            Held::Nothing => (None, None),
        };
        Ok((
            Decided {
                decision_id: recorded.decision_id,
                decision,
                agent: call.agent,
                lineage_id: recorded.lineage_id,
                ledger_index: recorded.ledger_index,
                approval,
                used_approval,
            },
            out,
        ))
    }

    /// Phase **classify**: the agent in the caller's tenant, the caller's binding to it, and the policy input (with
    /// the action in canonical form, so the policy and the record see one spelling).
    async fn classify<'a>(
        &self,
        caller: &'a Caller,
        r: ActionRequest,
        action: ActionName,
    ) -> Result<Call<'a>, DecideError> {
        let agent = self.agents.get(&caller.tenant, &r.agent_id).await?;
        caller.require_agent(Some(&agent.id), &agent.name)?;
        let input = EvalInput {
            agent: AgentRef::clone(&agent),
            action: action.into_string(),
            context: Value::Object(r.context),
            tool: r.tool,
            execution: r.execution_id.as_ref().map(|id| json!({ "id": id })),
            principal: json!({"subject": &*caller.principal.subject, "role": caller.principal.role.as_str()}),
            tenant: caller.tenant.to_string(),
            now: crate::time::now_rfc3339(),
        };
        Ok(Call {
            caller,
            agent,
            input,
            execution_id: r.execution_id,
            trace_id: r.trace_id,
        })
    }

    /// Phase **evaluate**: pure, never fails (failures are a fail-closed `block` with the reason in `error`).
    fn evaluate(&self, call: &Call<'_>) -> Decision {
        let d = self.policy.evaluate(&call.input);
        if let Some(err) = &d.error {
            tracing::warn!(error = %err, reason = ?d.reason_codes, action = %call.input.action, "policy failed closed");
        }
        d
    }

    /// Phase **hold**: for a `require_approval` decision, the earlier approval of the same action it uses or waits
    /// for (when the caller asked for reuse), else the terms of the approval it opens (bound to the action as given,
    /// before redaction). Nothing for every other outcome.
    async fn hold(&self, call: &Call<'_>, d: &Decision, reuse: bool) -> Result<Held<'_>, DecideError> {
        if d.outcome != Outcome::RequireApproval {
            return Ok(Held::Nothing);
        }
        if reuse {
            match self.approvals.earlier(&call.input).await? {
                Earlier::Approved { approval_id, turn } => return Ok(Held::Uses { approval_id, turn }),
                Earlier::Pending(t) => return Ok(Held::Awaits(t)),
                Earlier::None => {}
            }
        }
        Ok(self
            .approvals
            .terms(&call.input, d)
            .map_or(Held::Nothing, Held::Opened))
    }

    /// Phases **redact** and **record**: the entry holds the redacted context and tool (and the approval's terms),
    /// and is durable on return.
    async fn record(&self, call: &Call<'_>, d: &Decision, held: &Held<'_>) -> Result<Recorded, DecideError> {
        let (approval, awaits, uses) = match held {
            Held::Opened(t) => (Some(t), None, None),
            Held::Awaits(t) => (None, Some(t.approval_id.as_str()), None),
            Held::Uses { approval_id, .. } => (None, None, Some(approval_id.as_str())),
            Held::Nothing => (None, None, None),
        };
        let input = &call.input;
        let redactor = self.redaction.redactor(&call.caller.tenant);
        let mut report = crate::redact::Report::default();
        let context = redactor.value_report(&input.context, &mut report);
        let tool = input.tool.as_ref().map(|t| redactor.value_report(t, &mut report));
        // A policy error's message may quote the input it failed on.
        let error = d.error.as_deref().map(|e| redactor.text("", e, &mut report));
        let recorded_decision;
        let d_rec = match &error {
            Some(std::borrow::Cow::Owned(e)) => {
                recorded_decision = Decision {
                    error: Some(e.clone()),
                    ..d.clone()
                };
                &recorded_decision
            }
            _ => d,
        };
        let decision_id = crate::time::sortable_id("dec_");
        let caller = call.caller;
        let body = DecisionBody {
            decision_id: &decision_id,
            agent: &input.agent,
            action: &input.action,
            context: &context,
            tool: tool.as_deref(),
            execution_id: call.execution_id.as_deref(),
            trace_id: call.trace_id.as_deref(),
            subject: &caller.principal.subject,
            role: caller.principal.role.as_str(),
            decision: d_rec,
            approval,
            awaits_approval: awaits,
            uses_approval: uses,
            redaction: Some(&report),
        }
        .encode()?;
        let rec = self
            .recorder
            .record(Record::Decision(DecisionEntry {
                tenant: caller.tenant.to_string(),
                decision_id: decision_id.clone(),
                agent_id: call.agent.id.clone(),
                action: input.action.clone(),
                outcome: d.outcome,
                trace_id: call.trace_id.clone(),
                execution_id: call.execution_id.clone(),
                approval: approval.map(|t| OpenedApproval {
                    approval_id: t.approval_id.clone(),
                    expires_at: t.expires_at.clone(),
                    action_digest: Some(t.action_digest.clone()),
                }),
                uses_approval: uses.map(str::to_owned),
                body,
            }))
            .await?;
        Ok(Recorded {
            decision_id,
            lineage_id: rec.lineage_id,
            ledger_index: rec.ledger_index,
        })
    }
}

/// Phase **accept**, part two: the request's fields are well formed (the action name, and the trace and execution
/// ids in their exact forms); returns the action's canonical name.
pub(crate) fn validate(r: &ActionRequest) -> Result<ActionName, DecideError> {
    check_id("agentId", &r.agent_id)?;
    let action = names::action(&r.action).map_err(|e| DecideError::Invalid(format!("field 'action' {e}")))?;
    // Recorded as given (outside redaction, see `names::ids`): only their exact form is accepted.
    if let Some(e) = &r.execution_id {
        names::ids::execution_id(e).map_err(|e| DecideError::Invalid(format!("field 'executionId' {e}")))?;
    }
    if let Some(t) = &r.trace_id {
        names::ids::trace_id(t).map_err(|e| DecideError::Invalid(format!("field 'traceId' {e}")))?;
    }
    Ok(action)
}

/// What the hold phase hands to the record phase.
enum Held<'a> {
    Nothing,
    /// A new approval, opened by this decision's entry.
    Opened(ApprovalTerms),
    /// The pending approval of the same action this decision waits for.
    Awaits(ApprovalTerms),
    /// The approved approval this decision uses up; `turn` is held until the use is recorded.
    Uses {
        approval_id: String,
        turn: crate::coord::Turn<'a>,
    },
}

/// What the record phase hands back.
struct Recorded {
    decision_id: String,
    lineage_id: String,
    ledger_index: u64,
}
