//! Holding a call until a person decides: a `require_approval` call waits for its approval (within a budget),
//! and once approved is decided again (the re-check), using the approval up, so exactly one call goes through on
//! it. Shared by plain HTTP routes and MCP `tools/call`.
//!
//! Cancel-safe by construction: the hold is a future. A client that goes away drops it, and nothing is forwarded
//! on its behalf; the approval stays, and the agent's retry of the same call is decided with it.

use super::Proxy;
use crate::approvals::ApprovalStatus;
use crate::auth::Caller;
use crate::decide::{ActionRequest, Decided};
use crate::policy::Outcome;
use crate::recorder::ApprovalTerms;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// How a hold ended.
#[derive(Debug)]
pub(crate) enum HoldEnd {
    /// Approved and decided again: forward now under this decision (it used the approval up, or the policy now
    /// allows the call outright).
    Go(Box<Decided>),
    /// Not to be forwarded: denied, expired as blocked, blocked by the re-check, or the decision failed.
    Refused(Refusal),
    /// The budget ran out while the approval is still pending.
    Pending {
        approval_id: String,
        /// When the approval expires (RFC 3339).
        expires_at: String,
    },
}

/// Why a held call is not forwarded.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The decision that refused it (the held call's own, or the re-check's).
    pub decision_id: String,
    pub approval_id: String,
    /// The approval's status: `DENIED`, `EXPIRED`, `APPROVED` (blocked by the re-check); empty when the approval
    /// could not be read.
    pub status: String,
    pub reason_codes: Vec<String>,
    /// A sentence for the agent (and the model behind it).
    pub message: String,
}

impl Proxy {
    /// Holds the call `req` (decided `require_approval` as `decision_id`, with the approval `terms`) until its
    /// approval ends or `budget` passes. On approval the call is decided again with reuse of earlier approvals, so
    /// the decision that lets it through is the one that uses the approval up.
    pub(crate) async fn hold(
        &self,
        caller: &Caller,
        mut req: ActionRequest,
        decision_id: &str,
        terms: &ApprovalTerms,
        budget: Duration,
    ) -> HoldEnd {
        req.reuse_approval = true;
        let deadline = Instant::now() + budget;
        let mut decision_id = decision_id.to_owned();
        let mut terms = terms.clone();
        let approvals = &self.core.approvals;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return HoldEnd::Pending {
                    approval_id: terms.approval_id,
                    expires_at: terms.expires_at,
                };
            }
            let refused =
                |decision_id: &str, status: Option<ApprovalStatus>, codes: Vec<String>, message: String| {
                    HoldEnd::Refused(Refusal {
                        decision_id: decision_id.to_owned(),
                        approval_id: terms.approval_id.clone(),
                        status: status.map_or("", ApprovalStatus::as_str).to_owned(),
                        reason_codes: codes,
                        message,
                    })
                };
            // kla could not go on with the approval (`step` failed with `e`): the call is refused (fail closed).
            let failed = |decision_id: &str, status, step: &str, message: &str, e: &dyn std::fmt::Display| {
                tracing::warn!(error = %e, approval = %terms.approval_id, "proxy hold: {step} failed; refusing");
                refused(decision_id, status, Vec::new(), format!("{message}: {e}"))
            };
            if let Err(e) = approvals
                .wait(&caller.tenant, &terms.approval_id, remaining)
                .await
            {
                return failed(
                    &decision_id,
                    None,
                    "waiting",
                    "the approval could not be followed",
                    &e,
                );
            }
            let approval = match approvals.get(caller, &terms.approval_id).await {
                Ok(a) => a,
                Err(e) => {
                    return failed(
                        &decision_id,
                        None,
                        "reading",
                        "the approval could not be read",
                        &e,
                    );
                }
            };
            // Read once into kla's types; a status or outcome that does not read refuses the call (fail closed).
            let status = approval["status"].as_str().and_then(ApprovalStatus::parse);
            if status == Some(ApprovalStatus::Pending) {
                continue;
            }
            let final_decision = Outcome::deserialize(&approval["finalDecision"]).ok();
            if !matches!(final_decision, Some(Outcome::Allow | Outcome::Warn)) {
                let codes = approval["reasonCodes"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                    .unwrap_or_default();
                let by = approval["resolvedBy"]["subject"]
                    .as_str()
                    .map(|s| format!(" by {s}"))
                    .unwrap_or_default();
                let comment = approval["comment"]
                    .as_str()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                let message = match status {
                    Some(ApprovalStatus::Denied) => {
                        format!("approval {} was denied{by}{comment}", terms.approval_id)
                    }
                    Some(ApprovalStatus::Expired) => {
                        format!("approval {} expired unanswered", terms.approval_id)
                    }
                    _ => format!(
                        "approval {} is {}, and the policy now blocks the call",
                        terms.approval_id,
                        status.map_or("", ApprovalStatus::as_str)
                    ),
                };
                return refused(&decision_id, status, codes, message);
            }
            // Approved: decide again. The policy active now has the last word, and the decision that lets the call
            // through is the one that uses this approval up.
            let decided = match self.core.decider.accept(caller) {
                Ok(a) => self.core.decider.decide(a, req.clone()).await,
                Err(e) => Err(e),
            };
            let d = match decided {
                Ok(d) => d,
                Err(e) => {
                    let message = "the approved call could not be decided";
                    return failed(&decision_id, status, "re-decision", message, &e);
                }
            };
            decision_id = d.decision_id.clone();
            match d.decision.outcome {
                Outcome::Allow | Outcome::Warn => return HoldEnd::Go(Box::new(d)),
                Outcome::RequireApproval if d.used_approval.is_some() => return HoldEnd::Go(Box::new(d)),
                Outcome::RequireApproval => match d.approval {
                    // Another call of the same action used this approval first; this one waits for its own.
                    Some(t) => {
                        terms = t;
                        continue;
                    }
                    None => {
                        return refused(
                            &decision_id,
                            status,
                            d.decision.reason_codes,
                            "no approval to wait for".into(),
                        );
                    }
                },
                Outcome::Block => {
                    let codes = d.decision.reason_codes.clone();
                    return refused(
                        &decision_id,
                        status,
                        codes,
                        format!(
                            "approval {} was given, but the policy now blocks the call",
                            terms.approval_id
                        ),
                    );
                }
            }
        }
    }
}
