//! The appender: the single writer's state ([`Appender`]) and every write into the log
//! directory while it is open. A batch is framed into one buffer, `pwrite` at the logical
//! end of `entries.log` and made durable with one `fdatasync`; then its offsets and newly
//! completed tree nodes are written to the derived files, which [`LogFiles::sync_derived`]
//! makes durable later and records in the `synced` marker. The appender also keeps the
//! zero-filled region ahead of the logical end ("Preallocation" in `docs/ledger-format.md`)
//! and cuts it off on a clean shutdown.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::layout::{MAX_LEVELS, crc, io_err};
use super::read::LogFiles;
use crate::ledger::LedgerError;
use crate::ledger::tree::{self, Frontier, Hash};

/// Default size of the zero-filled region the writer keeps ahead of the logical end of
/// `entries.log` (see "Preallocation" in `docs/ledger-format.md`; configured by
/// `LedgerConfig::preallocate`). When less than half of it remains, the writer zero-fills up
/// to `end + chunk`, one [`ZERO_SLICE`] per idle moment.
#[cfg(not(test))]
pub(crate) const PREALLOC_CHUNK: u64 = crate::ledger::log::DEFAULT_PREALLOCATE;
/// Tiny in tests so that appends cross many chunk boundaries.
#[cfg(test)]
pub(crate) const PREALLOC_CHUNK: u64 = 4096;
/// Zero bytes written (and fdatasynced) per step of the extension; one step delays a
/// request that arrives during it by at most one such write + sync (the size is chosen in
/// BENCHMARKS.md).
#[cfg(not(test))]
const ZERO_SLICE: u64 = 256 << 10;
#[cfg(test)]
const ZERO_SLICE: u64 = 1024;

/// How many node levels a tree of `size` leaves has: level `L` holds `floor(size / 2^L)`
/// nodes, so levels `0..levels_for(size)` are non-empty.
pub(super) fn levels_for(size: u64) -> usize {
    (u64::BITS - size.leading_zeros()) as usize
}

/// The single writer's state: the frontier plus staging buffers for one batch.
pub(crate) struct Appender {
    pub(super) frontier: Frontier,
    /// Logical end of the log: where the next record goes.
    pub(super) end_offset: u64,
    /// Physical length of `entries.log` as far as the writer knows; everything in
    /// `end_offset..file_len` is zero.
    pub(super) file_len: u64,
    /// Zero-fill the file up to here (set when less than half a chunk remains).
    pub(super) zero_target: u64,
    /// Bytes kept zero-filled ahead of the logical end; 0: none (configured off, after a
    /// failed zero-fill, or after the tail was released): the writer then only grows the file.
    pub(super) chunk: u64,
    pub(super) batch_start: u64,
    pub(super) records: Vec<u8>,
    pub(super) offsets: Vec<u8>,
    pub(super) levels: Vec<Vec<u8>>,
}

impl Appender {
    pub(crate) fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub(crate) fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Sets how many bytes to keep zero-filled ahead of the logical end (0: none).
    pub(crate) fn preallocate(&mut self, chunk: u64) {
        self.chunk = chunk;
    }

    /// Opens the node level files that the next batch (at most `max_batch` entries) can write
    /// to, and always the level above the current top one, before any append needs them, so
    /// that no append opens a file: out of file descriptors (`open` fails with EMFILE), appends
    /// still find their files open. Creates empty files for levels that have no node yet.
    pub(crate) fn open_levels_ahead(&self, files: &LogFiles, max_batch: u64) -> Result<(), LedgerError> {
        let size = self.size();
        let ahead = size.saturating_mul(2).max(size.saturating_add(max_batch));
        files.open_levels(levels_for(ahead).min(MAX_LEVELS))
    }

    /// Refuses (before anything is written) a batch of `n` entries that would write to a node
    /// level whose file is not open, which happens only when opening it ahead failed.
    pub(crate) fn check_levels(&self, files: &LogFiles, n: usize) -> Result<(), LedgerError> {
        let need = levels_for(self.size().saturating_add(n as u64));
        let open = files.levels_open();
        if open >= need {
            return Ok(());
        }
        Err(LedgerError::Io {
            context: "append".to_owned(),
            source: std::io::Error::other(format!(
                "the file of node level {open} could not be opened ahead of this batch"
            )),
        })
    }

    /// Stages one record's derived data (the record is at `offset`).
    pub(super) fn stage(&mut self, leaf: Hash, offset: u64) {
        self.offsets.extend_from_slice(&offset.to_le_bytes());
        let levels = &mut self.levels;
        self.frontier.push(leaf, |level, _idx, h| {
            let l = level as usize;
            while levels.len() <= l {
                levels.push(Vec::new());
            }
            levels[l].extend_from_slice(h);
        });
    }

    /// Writes staged derived data (no fsync: derived files are synced lazily).
    pub(super) fn flush_derived(&mut self, files: &LogFiles) -> Result<(), LedgerError> {
        let start = self.batch_start;
        if !self.offsets.is_empty() {
            files
                .offsets
                .write_all_at(&self.offsets, start * 8)
                .map_err(io_err("write offsets"))?;
            self.offsets.clear();
        }
        for l in 0..self.levels.len() {
            if self.levels[l].is_empty() {
                continue;
            }
            let f = files.open_level(l)?;
            f.write_all_at(&self.levels[l], (start >> l) * 32)
                .map_err(io_err("write node level"))?;
        }
        {
            let mut upper = files.upper.write();
            for (l, buf) in self.levels.iter().enumerate() {
                if !buf.is_empty() {
                    upper.extend(l as u32, buf);
                }
            }
            upper.trim();
        }
        for buf in &mut self.levels {
            buf.clear();
        }
        self.batch_start = self.frontier.size();
        Ok(())
    }

    /// Appends a batch durably: write records, fdatasync the entries file, then write
    /// derived data. Returns the index of the first entry.
    pub(crate) fn append_batch(&mut self, files: &LogFiles, batch: &[Vec<u8>]) -> Result<u64, LedgerError> {
        let first = self.frontier.size();
        self.records.clear();
        for e in batch {
            let off = self.end_offset + self.records.len() as u64;
            let len = u32::try_from(e.len())
                .map_err(|_| LedgerError::InvalidEntry("entry too large".to_owned()))?;
            self.records.extend_from_slice(&len.to_le_bytes());
            self.records.extend_from_slice(&crc(e).to_le_bytes());
            self.records.extend_from_slice(e);
            self.stage(tree::leaf_hash(e), off);
        }
        let res = (|| {
            files
                .entries
                .write_all_at(&self.records, self.end_offset)
                .map_err(io_err("write entries"))?;
            files.entries.sync_data().map_err(io_err("fdatasync entries"))?;
            self.flush_derived(files)
        })();
        self.end_offset += self.records.len() as u64;
        self.file_len = self.file_len.max(self.end_offset);
        res.map(|()| first)
    }

    /// The next zero-fill step `(offset, length)`, if the preallocated region needs one.
    fn zero_step(&mut self) -> Option<(u64, u64)> {
        if self.chunk == 0 {
            return None;
        }
        if self.file_len.saturating_sub(self.end_offset) < self.chunk / 2 && self.zero_target <= self.file_len
        {
            self.zero_target = self.end_offset + self.chunk;
        }
        (self.zero_target > self.file_len)
            .then(|| (self.file_len, (self.zero_target - self.file_len).min(ZERO_SLICE)))
    }

    /// Whether [`Appender::extend_zeros`] has work to do.
    pub(crate) fn wants_zeros(&mut self) -> bool {
        self.zero_step().is_some()
    }

    /// Extends the zero-filled region after the logical end by one slice: `pwrite` of zeros
    /// at the physical end, then `fdatasync`, so that later batches written into it do not
    /// change the file size. Called by the writer only when no request is waiting. Returns
    /// whether a slice was written. A failure (typically ENOSPC: the disk has less free space
    /// than the chunk) turns preallocation off until restart, cuts the zero tail off again
    /// (giving its space back) and is returned for the log; appends go on, growing the file.
    ///
    /// Why a failure cannot harm acknowledged records: the slice starts at or after the
    /// logical end, so no byte of a record is written (a failed or partial `pwrite` leaves the
    /// region after the end zero or absent). A failed `fdatasync` leaves the page shared with
    /// the last record in the cache with the right bytes (that record was synced before its
    /// ack, and its bytes on disk are not rewritten with other values); the next batch writes
    /// into that page and its own `fdatasync` reports any failure of its own, which refuses
    /// appends as always.
    pub(crate) fn extend_zeros(&mut self, files: &LogFiles) -> Result<bool, LedgerError> {
        let Some((at, len)) = self.zero_step() else {
            return Ok(false);
        };
        let zeros = vec![0u8; len as usize];
        let res = files
            .entries
            .write_all_at(&zeros, at)
            .map_err(io_err("zero-fill entries"))
            .and_then(|()| {
                files
                    .entries
                    .sync_data()
                    .map_err(io_err("fdatasync zero-filled entries"))
            });
        match res {
            Ok(()) => {
                self.file_len = at + len;
                Ok(true)
            }
            Err(e) => {
                // Off until restart, and the zero tail is given back: on a full disk the space it
                // took is what the log's next records and the store need.
                self.chunk = 0;
                match files.entries.set_len(self.end_offset) {
                    Ok(()) => self.file_len = self.end_offset,
                    // A partial write may have grown the file (with zeros): know its length, so
                    // a clean shutdown still cuts the tail.
                    Err(_) => {
                        if let Ok(m) = files.entries.metadata() {
                            self.file_len = self.file_len.max(m.len());
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Cuts the preallocated zero tail off (clean shutdown), so that a cleanly closed
    /// `entries.log` is exactly the log, as written by versions without preallocation.
    pub(crate) fn release_tail(&mut self, files: &LogFiles) -> Result<(), LedgerError> {
        if self.file_len <= self.end_offset {
            return Ok(());
        }
        files
            .entries
            .set_len(self.end_offset)
            .map_err(io_err("truncate preallocated tail"))?;
        files.entries.sync_data().map_err(io_err("fdatasync entries"))?;
        self.file_len = self.end_offset;
        self.chunk = 0;
        Ok(())
    }
}

impl LogFiles {
    /// fdatasync the derived files and record that the first `size` entries' derived
    /// data is durable (never moves the marker backwards).
    pub(crate) fn sync_derived(&self, size: u64) -> Result<(), LedgerError> {
        let mut marker = self.marker.lock();
        if size <= marker.size() {
            return Ok(());
        }
        self.sync_levels_and_offsets()?;
        marker.set(size)
    }

    /// Sets the marker to exactly `size` (used by recovery after rebuilding).
    pub(super) fn force_marker(&self, size: u64) -> Result<(), LedgerError> {
        let mut marker = self.marker.lock();
        self.sync_levels_and_offsets()?;
        marker.set(size)
    }

    fn sync_levels_and_offsets(&self) -> Result<(), LedgerError> {
        self.offsets.sync_data().map_err(io_err("fdatasync offsets"))?;
        let levels: Vec<Arc<File>> = self.levels.read().clone();
        for f in levels {
            f.sync_data().map_err(io_err("fdatasync node level"))?;
        }
        Ok(())
    }
}
