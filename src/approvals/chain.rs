//! The approval chain of a decision's evidence: a decision that went through on an earlier approval (a held or
//! retried tool call) is evidenced with that approval's entries.

use super::{ApprovalError, Approvals};
use crate::ledger::{Entry, LedgerError};
use crate::recorder::body::{self, RecordBody};
use crate::store::{LineageKey, LineagePage, LineageRecord};

impl Approvals {
    /// A decision's lineage entries `records` (a page of them, read through the index barrier) with, when one of
    /// them went through on an earlier approval (a held or retried tool call: its body names `usesApproval`), that
    /// approval's chain: the decision that opened it and its `approval.*` entries (at most `limit`, only `agent`'s
    /// for an agent-bound reader). In ledger order, without duplicates: the evidence of such a decision.
    pub async fn with_used_approval(
        &self,
        tenant: &str,
        agent: Option<&str>,
        mut records: Vec<LineageRecord>,
        limit: usize,
    ) -> Result<Vec<LineageRecord>, ApprovalError> {
        let ledger = self.recorder.ledger();
        let mut used = None;
        for r in records
            .iter()
            .filter(|r| r.kind == crate::recorder::kind::DECISION)
        {
            let e = Entry::decode(&ledger.entry(r.ledger_index)?)?;
            let d = body::Decision::of_entry(&e).map_err(LedgerError::from)?;
            if let Some(a) = d.uses_approval {
                used = Some(a);
            }
        }
        let Some(approval) = used else {
            return Ok(records);
        };
        let Some(opened) = self
            .recorder
            .indexed()
            .await
            .get_approval(tenant, &approval)
            .await?
        else {
            return Ok(records);
        };
        let chain = self
            .recorder
            .find_lineage_page(
                tenant,
                LineagePage {
                    key: &LineageKey::Decision(opened.row.decision_id),
                    agent,
                    after: None,
                    limit,
                },
            )
            .await?;
        records.extend(chain);
        records.sort_by_key(|r| r.ledger_index);
        records.dedup_by_key(|r| r.ledger_index);
        Ok(records)
    }
}
