//! Re-indexing at startup: the store's index is derived from the ledger, so whatever part of the ledger the index
//! has not seen (a crash between append and index commit, a lost or deleted `kla.db`) is replayed from it. Agents
//! are rebuilt the same way as decisions: their registrations are ledger entries like any other.

use super::record::rows_of_entry;
use super::{RecordError, Recorder};

impl Recorder {
    /// Indexes every ledger entry the store has not seen. Returns how many entries were indexed.
    pub async fn reindex(&self) -> Result<u64, RecordError> {
        let size = self.ledger.size();
        let stale = self.store.truncate_index(size).await?;
        if stale > 0 {
            tracing::warn!(
                rows = stale,
                size,
                "dropped index rows for ledger entries that no longer exist"
            );
        }
        let (count, max) = self.store.lineage_count_and_max().await?;
        // Contiguous index: resume after it. A gap (only after a crash) means one full, idempotent pass.
        let start = match max {
            Some(m) if count == m + 1 => m + 1,
            _ => 0,
        };
        let mut done = 0u64;
        let mut i = start;
        while i < size {
            let end = (i + crate::ledger::log::MAX_ENTRIES_PER_READ).min(size);
            let entries = self.ledger.entries(i, end)?;
            let rows = entries
                .iter()
                .zip(i..)
                .map(|(bytes, index)| rows_of_entry(bytes, index))
                .collect::<Result<Vec<_>, _>>()?;
            done += rows.len() as u64;
            self.store.index_entries(rows).await?;
            i = end;
        }
        if done > 0 && start > 0 {
            tracing::warn!(
                from = start,
                count = done,
                "re-indexed ledger entries missing from the store"
            );
        }
        Ok(done)
    }
}
