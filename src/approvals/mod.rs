//! The Decision Desk's approvals: what a `require_approval` decision opens, who may decide it, and how it ends.
//!
//! An approval is bound to one exact action: its terms (id, keyed action digest, expiry, quorum, timeout outcome)
//! are written into the decision's own ledger entry by the decision pipeline's hold phase ([`Approvals::terms`]),
//! so the decision and its approval are one durable write. Every later change is an `approval.voted` or
//! `approval.resolved` entry, recorded (durable and indexed) before anyone is answered or woken; the store's
//! `approvals` rows are derived from those entries like every other index row.
//!
//! Rules kept here and nowhere else:
//! - only `approver` and `admin` roles of the approval's tenant decide, and never the principal that asked;
//! - the first resolution wins: the same answer again returns the stored result, a different one is a conflict;
//! - a quorum counts distinct approvers, and any denial denies;
//! - at `expiresAt` a pending approval resolves as its `onTimeout` (block unless the rule says allow), also across
//!   restarts (the expiry service reads pending approvals from the store);
//! - an approval that reaches its quorum is evaluated once more against the policy active then: a `block` now
//!   wins over the person's approval;
//! - a vote's comment passes the tenant's redactor before it is recorded, like a decision's context.
//!
//! Changes of one approval are serialised by a striped lock in this process (a shared store for several replicas
//! will need a row lock instead). This module knows no HTTP.

mod chain;
mod digest;
mod view;

/// An approval's status. Defined beside the store's rows, which (with the recorder that fills them) sit below this
/// module; this is the name the rest of kla uses.
pub use crate::store::ApprovalStatus;
pub use digest::DigestKey;
use view::{Opened, approval_of, change_of, render, terms_of, votes_of};

use crate::auth::{AuthError, Caller, Role};
use crate::coord::{Turn, Turns, Wakeups};
use crate::error::{Class, Classify};
use crate::ledger::{Entry, LedgerError};
use crate::policy::{Decision, EvalInput, OnTimeout, Outcome, PolicyManager};
use crate::recorder::body::{
    self, ApprovalChangeBody, ApprovalResolved, ApprovalVoted, Principal, Recheck, RecordBody, Vote,
};
use crate::recorder::{ApprovalChange, ApprovalTerms, Record, RecordError, Recorder};
use crate::redact::{Redaction, Report};
use crate::store::{ApprovalFilter, ApprovalRecord, StoreError};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long an approval waits when its rule gives no `approval.timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// The longest page of a list.
pub const MAX_PAGE: usize = 1000;
/// How often the expiry service looks for approvals whose time ran out, at the most.
const EXPIRY_TICK: Duration = Duration::from_millis(250);
/// How long after its resolution an approval still lets its action through once (a call held past its client's
/// patience is retried by the agent; a much later call of the same action asks again).
pub const REUSE_WINDOW: Duration = Duration::from_secs(60 * 60);

/// Why an approval could not be read or decided.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The approval is already resolved otherwise; carries it as stored.
    #[error("{message}")]
    Conflict { message: String, approval: Box<Value> },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A stored approval that does not read back (its decision entry lacks what the approval needs).
    #[error("approval {0} is damaged in the index")]
    Damaged(String),
}

impl Classify for ApprovalError {
    fn class(&self) -> Class {
        match self {
            ApprovalError::Invalid(_) => Class::Invalid,
            ApprovalError::NotFound(_) => Class::NotFound,
            ApprovalError::Auth(e) => e.class(),
            ApprovalError::Conflict { .. } => Class::Conflict,
            ApprovalError::Record(e) => e.class(),
            ApprovalError::Store(e) => e.class(),
            ApprovalError::Ledger(_) | ApprovalError::Damaged(_) => Class::Internal,
        }
    }
}

/// A person's answer to an approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    Denied,
}

impl Verdict {
    /// From the KLA Execution API's `decision` field (`APPROVED` or `DENIED`, spelled as the statuses they lead to).
    pub fn parse(s: &str) -> Option<Verdict> {
        match ApprovalStatus::parse(s)? {
            ApprovalStatus::Approved => Some(Verdict::Approved),
            ApprovalStatus::Denied => Some(Verdict::Denied),
            _ => None,
        }
    }

    /// The status this answer resolves an approval to (once the quorum is reached, for an approval).
    fn status(self) -> ApprovalStatus {
        match self {
            Verdict::Approved => ApprovalStatus::Approved,
            Verdict::Denied => ApprovalStatus::Denied,
        }
    }

    fn as_str(self) -> &'static str {
        self.status().as_str()
    }
}

/// One page of approvals.
pub struct Page {
    /// Approval objects, oldest first.
    pub approvals: Vec<Value>,
    /// Approvals per status (of the agent, when the list names one).
    pub counts: Vec<(ApprovalStatus, u64)>,
    /// Pass as `cursor` for the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// What a list asks for.
#[derive(Debug, Default)]
pub struct ListQuery {
    /// As the caller wrote it; checked against [`ApprovalStatus`]'s spellings (after the caller's role).
    pub status: Option<String>,
    pub agent_id: Option<String>,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// What an earlier approval of the same exact action (same tenant, agent, action, context and tool: the same
/// action digest) means for a new call of it.
pub enum Earlier<'a> {
    /// Approved (or expired as allowed), not used, resolved within [`REUSE_WINDOW`]: the call goes through on it.
    /// The guard keeps every other call of this action out until the use is durable and indexed.
    Approved { approval_id: String, turn: Turn<'a> },
    /// Still pending: the call waits for it rather than opening a second approval of the same action.
    Pending(ApprovalTerms),
    /// Nothing to use: the call opens its own approval.
    None,
}

/// The approvals of every tenant. Built once by `app`.
pub struct Approvals {
    /// Writes approval changes and reads the approvals index (only past its barrier).
    recorder: Recorder,
    policy: Arc<PolicyManager>,
    key: DigestKey,
    /// A vote's comment passes the tenant's redactor before it is recorded.
    redaction: Arc<Redaction>,
    /// One change of an approval at a time, by approval id.
    changes: Turns,
    /// One use of an approved action at a time, by action digest (held until the use is indexed).
    uses: Turns,
    /// Wakes callers waiting for an approval to end, by approval id, with the approval as it ended.
    ended: Wakeups<Arc<Value>>,
}

impl Approvals {
    pub fn new(
        recorder: Recorder,
        policy: Arc<PolicyManager>,
        key: DigestKey,
        redaction: Arc<Redaction>,
    ) -> Approvals {
        Approvals {
            recorder,
            policy,
            key,
            redaction,
            changes: Turns::new(),
            uses: Turns::new(),
            ended: Wakeups::new(),
        }
    }

    /// The decision pipeline's hold phase: the terms of the approval a `require_approval` decision opens, bound to
    /// this exact action; `None` for every other outcome. Several approval rules combine to the strictest terms:
    /// the shortest timeout, `block` on timeout if any says so, the largest quorum.
    pub fn terms(&self, input: &EvalInput, d: &Decision) -> Option<ApprovalTerms> {
        if d.outcome != Outcome::RequireApproval {
            return None;
        }
        let mut timeout: Option<u64> = None;
        let mut on_timeout = OnTimeout::Allow;
        let mut approvers = 1u32;
        let mut any_spec = false;
        for m in d
            .matched_rules
            .iter()
            .filter(|m| !m.shadow && m.decision == Outcome::RequireApproval)
        {
            match &m.approval {
                Some(a) => {
                    any_spec = true;
                    timeout = Some(timeout.map_or(a.timeout_seconds, |t| t.min(a.timeout_seconds)));
                    if a.on_timeout == OnTimeout::Block {
                        on_timeout = OnTimeout::Block;
                    }
                    approvers = approvers.max(a.approvers);
                }
                // A rule without terms takes the defaults, which are strict.
                None => {
                    timeout =
                        Some(timeout.map_or(DEFAULT_TIMEOUT.as_secs(), |t| t.min(DEFAULT_TIMEOUT.as_secs())));
                    on_timeout = OnTimeout::Block;
                }
            }
        }
        if !any_spec && timeout.is_none() {
            // The pack's defaultDecision asked for approval: no rule gave terms.
            on_timeout = OnTimeout::Block;
        }
        let timeout_seconds = timeout.unwrap_or(DEFAULT_TIMEOUT.as_secs());
        let expires_ms = crate::time::now_ms().saturating_add(
            i64::try_from(timeout_seconds)
                .unwrap_or(i64::MAX / 2)
                .saturating_mul(1000),
        );
        Some(ApprovalTerms {
            approval_id: crate::time::sortable_id("appr_"),
            action_digest: self.digest_of(input),
            expires_at: crate::time::ms_rfc3339(expires_ms),
            on_timeout,
            approvers,
            timeout_seconds,
        })
    }

    /// The keyed digest of the action in `input`, as the hold phase binds an approval to it.
    fn digest_of(&self, input: &EvalInput) -> String {
        self.key.action_digest(
            &input.tenant,
            &input.agent.id,
            &input.action,
            &input.context,
            input.tool.as_ref(),
        )
    }

    /// The earlier approval a new call of the action in `input` may use or wait for (see [`Earlier`]). The newest
    /// usable approval wins; the guard of [`Earlier::Approved`] must be held until the decision that uses it is
    /// recorded.
    pub async fn earlier(&self, input: &EvalInput) -> Result<Earlier<'_>, ApprovalError> {
        let digest = self.digest_of(input);
        let turn = self.uses.take(digest.as_str()).await;
        // Resolutions and uses are indexed before they are answered (a use before its guard is released), but an
        // approval just opened may still be on its way to the index: wait for what is queued.
        let found = self
            .recorder
            .indexed()
            .await
            .unused_approvals(&input.tenant, &digest)
            .await?;
        let now = crate::time::now_ms();
        let window = i64::try_from(REUSE_WINDOW.as_millis()).unwrap_or(i64::MAX);
        let mut pending = None;
        for rec in found {
            if rec.status == ApprovalStatus::Pending {
                if pending.is_none() && rec.row.expires_ms > now {
                    pending = Some(rec);
                }
                continue;
            }
            let state = change_of(&rec)?;
            let resolved = state.as_ref().and_then(ApprovalChangeBody::resolved);
            let resolved_ms = resolved
                .and_then(|r| crate::time::parse_rfc3339_ms(&r.resolved_at))
                .unwrap_or(0);
            let allowed = matches!(
                resolved.map(|r| r.final_decision),
                Some(Outcome::Allow | Outcome::Warn)
            );
            if allowed
                && matches!(rec.status, ApprovalStatus::Approved | ApprovalStatus::Expired)
                && now - resolved_ms <= window
            {
                return Ok(Earlier::Approved {
                    approval_id: rec.row.approval_id,
                    turn,
                });
            }
        }
        drop(turn);
        if let Some(rec) = pending {
            let decision = self.decision_entry(&rec)?;
            let terms =
                terms_of(&decision).ok_or_else(|| ApprovalError::Damaged(rec.row.approval_id.clone()))?;
            return Ok(Earlier::Pending(terms));
        }
        Ok(Earlier::None)
    }

    /// An approval of the caller's tenant (an agent-bound token reads only its agent's).
    pub async fn get(&self, caller: &Caller, approval_id: &str) -> Result<Value, ApprovalError> {
        let (rec, decision) = self.load(caller, approval_id).await?;
        Ok(render(&rec, &decision))
    }

    /// The approval a decision opened, if it opened one (the caller already may read the decision).
    pub async fn of_decision(
        &self,
        tenant: &str,
        decision_id: &str,
    ) -> Result<Option<(ApprovalStatus, Value)>, ApprovalError> {
        let Some(rec) = self
            .recorder
            .indexed()
            .await
            .approval_of_decision(tenant, decision_id)
            .await?
        else {
            return Ok(None);
        };
        let decision = self.decision_entry(&rec)?;
        Ok(Some((rec.status, render(&rec, &decision))))
    }

    /// One page of the caller's tenant's approvals, oldest first.
    pub async fn list(&self, caller: &Caller, q: ListQuery) -> Result<Page, ApprovalError> {
        caller.require(&[Role::Approver, Role::Admin, Role::Auditor])?;
        let status = match q.status.as_deref() {
            None => None,
            Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
                let all: Vec<&str> = ApprovalStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApprovalError::Invalid(format!("status must be one of {}", all.join(", ")))
            })?),
        };
        let after = match &q.cursor {
            None => None,
            Some(c) => Some(
                c.parse::<u64>()
                    .map_err(|_| ApprovalError::Invalid("cursor is not one this server gave".into()))?,
            ),
        };
        let limit = q.limit.clamp(1, MAX_PAGE);
        let filter = ApprovalFilter {
            status,
            agent_id: q.agent_id.clone(),
            after,
        };
        let index = self.recorder.indexed().await;
        let rows = index.list_approvals(&caller.tenant, &filter, limit + 1).await?;
        let more = rows.len() > limit;
        let mut approvals = Vec::with_capacity(rows.len().min(limit));
        let mut last = None;
        for rec in rows.into_iter().take(limit) {
            let decision = self.decision_entry(&rec)?;
            last = Some(rec.row.decision_index);
            approvals.push(render(&rec, &decision));
        }
        let counts = index
            .approval_counts(&caller.tenant, q.agent_id.as_deref())
            .await?;
        Ok(Page {
            approvals,
            counts,
            next_cursor: if more { last.map(|l| l.to_string()) } else { None },
        })
    }

    /// A person's answer. Recorded (durable, indexed) before it is returned or anyone waiting is woken.
    pub async fn decide(
        &self,
        caller: &Caller,
        approval_id: &str,
        verdict: Verdict,
        comment: Option<String>,
    ) -> Result<Value, ApprovalError> {
        caller.require(&[Role::Approver, Role::Admin])?;
        if let Some(c) = &comment
            && c.chars().count() > 2000
        {
            return Err(ApprovalError::Invalid(
                "comment must be at most 2000 characters".into(),
            ));
        }
        // Recorded for good and shown to every approver, in events and webhooks: a card number or a secret pasted
        // into a comment is redacted like a decision's context.
        let comment = comment.map(|c| {
            let redactor = self.redaction.redactor(&caller.tenant);
            match redactor.text("comment", &c, &mut Report::default()) {
                Cow::Borrowed(_) => c,
                Cow::Owned(r) => r,
            }
        });
        let _turn = self.changes.take(approval_id).await;
        let (rec, decision) = self.load(caller, approval_id).await?;
        if decision.body.principal.subject == *caller.principal.subject {
            return Err(AuthError::Forbidden(format!(
                "'{}' asked for this action and may not decide its approval",
                caller.principal.subject
            ))
            .into());
        }
        let votes = votes_of(&rec)?;
        if rec.status != ApprovalStatus::Pending {
            let stored = render(&rec, &decision);
            if rec.status == verdict.status() {
                return Ok(stored);
            }
            return Err(ApprovalError::Conflict {
                message: format!("approval {approval_id} is already {}", rec.status),
                approval: Box::new(stored),
            });
        }
        if crate::time::now_ms() >= rec.row.expires_ms {
            let rec = self.expire_locked(rec, &decision).await?;
            return Err(ApprovalError::Conflict {
                message: format!("approval {approval_id} expired at {}", rec.row.expires_at),
                approval: Box::new(render(&rec, &decision)),
            });
        }
        let subject = caller.principal.subject.to_string();
        let role = caller.principal.role.as_str();
        if verdict == Verdict::Approved && votes.iter().any(|v| v.subject == subject) {
            // The same person approving twice counts once.
            return Ok(render(&rec, &decision));
        }
        let now = crate::time::now_rfc3339();
        let mut votes = votes;
        votes.push(Vote {
            subject: subject.clone(),
            role: role.to_owned(),
            decision: verdict.status(),
            comment: comment.clone(),
            at: now,
        });
        let terms = terms_of(&decision).ok_or_else(|| ApprovalError::Damaged(approval_id.into()))?;
        let approvals = votes
            .iter()
            .filter(|v| v.decision == ApprovalStatus::Approved)
            .count() as u32;
        let by = Principal {
            subject,
            role: role.to_owned(),
        };
        let change = match verdict {
            Verdict::Denied => self.resolution(
                &rec,
                &decision,
                ApprovalStatus::Denied,
                Some(by),
                comment,
                votes,
                Outcome::Block,
                None,
            ),
            Verdict::Approved if approvals >= terms.approvers => {
                let recheck = self.recheck(&decision);
                let final_decision = match recheck.outcome {
                    Outcome::Block => Outcome::Block,
                    Outcome::Warn => Outcome::Warn,
                    Outcome::Allow | Outcome::RequireApproval => Outcome::Allow,
                };
                let recheck = Recheck {
                    decision: recheck.outcome,
                    reason_codes: recheck.reason_codes,
                };
                self.resolution(
                    &rec,
                    &decision,
                    ApprovalStatus::Approved,
                    Some(by),
                    comment,
                    votes,
                    final_decision,
                    Some(recheck),
                )
            }
            Verdict::Approved => ApprovalChange {
                tenant: rec.row.tenant.clone(),
                body: ApprovalChangeBody::Voted(ApprovalVoted {
                    of: approval_of(&rec, &decision),
                    status: ApprovalStatus::Pending,
                    by,
                    vote: verdict.status(),
                    comment,
                    votes,
                    approvers: terms.approvers,
                }),
            },
        };
        let rec = self.apply(rec, &decision, change).await?;
        crate::telemetry::otel::approval_vote(&rec.row.tenant, verdict.as_str(), rec.status.as_str());
        Ok(render(&rec, &decision))
    }

    /// Waits until the approval is no longer pending or `timeout` passes. Returns the approval as it ended when
    /// the wait saw it end (as soon as its resolution was durable, before the index has it); `None` when the wait
    /// ran out, or found the approval already ended (read it then).
    pub async fn wait(
        &self,
        tenant: &str,
        approval_id: &str,
        timeout: Duration,
    ) -> Result<Option<Arc<Value>>, ApprovalError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ended = None;
        loop {
            let mut waiter = self.ended.subscribe(approval_id);
            // Read after subscribing: a resolution between the read and the wait still wakes us.
            let pending = self
                .recorder
                .indexed()
                .await
                .get_approval(tenant, approval_id)
                .await?
                .is_some_and(|r| r.status == ApprovalStatus::Pending);
            if !pending {
                break;
            }
            match tokio::time::timeout_at(deadline, waiter.changed()).await {
                Err(_) => break,
                Ok(Some(a)) => {
                    ended = Some(a);
                    break;
                }
                Ok(None) => continue,
            }
        }
        Ok(ended)
    }

    /// The expiry service: resolves pending approvals whose time ran out as their `onTimeout`, soonest first,
    /// until `stop`. Reads the store, so approvals left pending by a previous process expire too.
    pub async fn run_expiry(self: Arc<Self>, stop: CancellationToken) -> anyhow::Result<()> {
        loop {
            // No index barrier: an approval not indexed yet has at least a second to go (timeouts are whole
            // seconds), and a barrier every tick would break up the index writer's batches under load.
            let mut next_ms = None;
            match self
                .recorder
                .index_as_is()
                .due_approvals(crate::time::now_ms(), 64)
                .await
            {
                Ok((due, next)) => {
                    next_ms = next;
                    for (tenant, id) in due {
                        if let Err(e) = self.expire(&tenant, &id).await {
                            tracing::warn!(error = %e, approval_id = %id, "approval expiry failed; retried");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading due approvals failed; retried"),
            }
            let wait = next_ms
                .map(|n| Duration::from_millis(u64::try_from(n - crate::time::now_ms()).unwrap_or(0)))
                .unwrap_or(EXPIRY_TICK)
                .min(EXPIRY_TICK);
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn expire(&self, tenant: &str, approval_id: &str) -> Result<(), ApprovalError> {
        let _turn = self.changes.take(approval_id).await;
        // Due approvals come from the index itself, so their rows are there; a change since is behind this turn.
        let Some(rec) = self
            .recorder
            .index_as_is()
            .get_approval(tenant, approval_id)
            .await?
        else {
            return Ok(());
        };
        if rec.status != ApprovalStatus::Pending || crate::time::now_ms() < rec.row.expires_ms {
            return Ok(());
        }
        let decision = self.decision_entry(&rec)?;
        self.expire_locked(rec, &decision).await?;
        Ok(())
    }

    /// Resolves a pending approval whose time ran out (its stripe is held).
    async fn expire_locked(
        &self,
        rec: ApprovalRecord,
        decision: &Opened,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let terms = terms_of(decision).ok_or_else(|| ApprovalError::Damaged(rec.row.approval_id.clone()))?;
        let outcome = match terms.on_timeout {
            OnTimeout::Allow => Outcome::Allow,
            OnTimeout::Block => Outcome::Block,
        };
        let votes = votes_of(&rec)?;
        let change = self.resolution(
            &rec,
            decision,
            ApprovalStatus::Expired,
            None,
            None,
            votes,
            outcome,
            None,
        );
        self.apply(rec, decision, change).await
    }

    /// Records a change; a final one wakes whoever waits for the approval as soon as it is durable, with the
    /// approval as it ended, while the index catches up (the stripe is held until the index has it, so the next
    /// change reads it from the store).
    async fn apply(
        &self,
        mut rec: ApprovalRecord,
        decision: &Opened,
        change: ApprovalChange,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let state = String::from_utf8(change.body.canonical()?)
            .map_err(|e| ApprovalError::Ledger(LedgerError::InvalidEntry(e.to_string())))?;
        rec.status = change.body.status();
        rec.state = Some(state);
        let ended = (rec.status != ApprovalStatus::Pending).then(|| Arc::new(render(&rec, decision)));
        let wakeups = &self.ended;
        let id = &rec.row.approval_id;
        self.recorder
            .record_then(Record::Approval(change), move |_| {
                if let Some(a) = ended {
                    wakeups.notify(id, a);
                }
            })
            .await?;
        Ok(rec)
    }

    #[allow(clippy::too_many_arguments)]
    fn resolution(
        &self,
        rec: &ApprovalRecord,
        decision: &Opened,
        status: ApprovalStatus,
        by: Option<Principal>,
        comment: Option<String>,
        votes: Vec<Vote>,
        final_decision: Outcome,
        recheck: Option<Recheck>,
    ) -> ApprovalChange {
        ApprovalChange {
            tenant: rec.row.tenant.clone(),
            body: ApprovalChangeBody::Resolved(ApprovalResolved {
                of: approval_of(rec, decision),
                status,
                resolved_by: by,
                resolved_at: crate::time::now_rfc3339(),
                comment,
                votes,
                final_decision,
                recheck,
            }),
        }
    }

    /// The recorded action evaluated against the policy active now.
    fn recheck(&self, decision: &Opened) -> Decision {
        let b = &decision.body;
        let input = EvalInput {
            agent: b.agent.clone(),
            action: b.action.clone(),
            context: b.context.clone(),
            tool: b.tool.clone().filter(|t| !t.is_null()),
            execution: b.execution_id.as_ref().map(|id| json!({ "id": id })),
            principal: serde_json::to_value(&b.principal).unwrap_or(Value::Null),
            tenant: decision.tenant.clone(),
            now: crate::time::now_rfc3339(),
        };
        let d = self.policy.evaluate(&input);
        if let Some(err) = &d.error {
            tracing::warn!(error = %err, action = %input.action, "policy failed closed on an approval's re-check");
        }
        d
    }

    async fn load(
        &self,
        caller: &Caller,
        approval_id: &str,
    ) -> Result<(ApprovalRecord, Opened), ApprovalError> {
        let not_found = || ApprovalError::NotFound(format!("unknown approvalId '{approval_id}'"));
        if !approval_id.starts_with("appr_") || approval_id.len() > 64 {
            return Err(not_found());
        }
        let rec = self
            .recorder
            .indexed()
            .await
            .get_approval(&caller.tenant, approval_id)
            .await?
            .ok_or_else(not_found)?;
        let decision = self.decision_entry(&rec)?;
        // Another agent's approval, for a token bound to one agent, is the same 404 as an unknown id.
        let agent = &decision.body.agent;
        if !caller.may_read(&decision.tenant, Some((&agent.id, &agent.name))) {
            return Err(not_found());
        }
        Ok((rec, decision))
    }

    fn decision_entry(&self, rec: &ApprovalRecord) -> Result<Opened, ApprovalError> {
        let bytes = self.recorder.ledger().entry(rec.row.decision_index)?;
        let e = Entry::decode(&bytes)?;
        let damaged = || ApprovalError::Damaged(rec.row.approval_id.clone());
        let body = body::Decision::of_entry(&e).map_err(|_| damaged())?;
        if body.decision_id != rec.row.decision_id {
            return Err(damaged());
        }
        Ok(Opened {
            tenant: e.tenant,
            lineage_id: e.lineage_id,
            body,
        })
    }
}
