//! The open files of one ledger directory ([`LogFiles`]) and the reads over them:
//! records of `entries.log` by index (through `offsets.idx`), stored tree nodes from the
//! per-level files, the bounded in-memory cache of the upper levels, and [`LogView`], the
//! fixed-size view the pure proof code reads through. Reads are positional (`pread`) and
//! take no lock on the files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::layout::{HEADER, MAX_ENTRY, MAX_LEVELS, Marker, crc, io_err, level_name, open_rw, split_header};
use crate::ledger::LedgerError;
use crate::ledger::tree::{Hash, NodeSource};

/// Open files of one ledger directory. Reads are positional and lock-free.
pub(crate) struct LogFiles {
    pub(super) dir: PathBuf,
    pub(super) entries: File,
    pub(super) offsets: File,
    /// One file per node level, index = level.
    pub(super) levels: RwLock<Vec<Arc<File>>>,
    pub(super) marker: Mutex<Marker>,
    pub(super) upper: RwLock<UpperCache>,
}

/// Most nodes per level kept in the in-memory cache of the upper levels. The cache holds
/// only levels with at most this many nodes, so it is bounded (< 2 x 2^16 x 32 B = 4 MiB)
/// whatever the log size; it saves the positional reads of the top of every proof.
#[cfg(not(test))]
pub(super) const CACHE_MAX_NODES: usize = 1 << 16;
/// Tiny in tests so that proofs exercise both the cache and the file reads.
#[cfg(test)]
pub(super) const CACHE_MAX_NODES: usize = 4;

/// Complete copies of the levels `from..` (each level's nodes in index order).
pub(super) struct UpperCache {
    pub(super) from: u32,
    pub(super) levels: Vec<Vec<Hash>>,
}

impl UpperCache {
    pub(super) fn empty() -> Self {
        Self {
            from: 64,
            levels: Vec::new(),
        }
    }

    fn get(&self, level: u32, index: u64) -> Option<Hash> {
        let l = level.checked_sub(self.from)? as usize;
        self.levels.get(l)?.get(usize::try_from(index).ok()?).copied()
    }

    /// Appends nodes of `level` (the next ones in index order) if that level is cached.
    pub(super) fn extend(&mut self, level: u32, hashes: &[u8]) {
        let Some(l) = level.checked_sub(self.from) else {
            return;
        };
        let l = l as usize;
        while self.levels.len() <= l {
            self.levels.push(Vec::new());
        }
        self.levels[l].extend(hashes.chunks_exact(32).filter_map(|c| <Hash>::try_from(c).ok()));
    }

    /// Drops the lowest cached levels once they exceed the bound.
    pub(super) fn trim(&mut self) {
        while self.levels.first().is_some_and(|l| l.len() > CACHE_MAX_NODES) {
            self.levels.remove(0);
            self.from += 1;
        }
    }
}

impl LogFiles {
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of node level `level`, opening it (and every level below) if needed. Only for
    /// open time: the writer opens levels ahead with [`LogFiles::open_levels`], and reads and
    /// appends use [`LogFiles::open_level`], which never opens a file.
    pub(super) fn level_file(&self, level: usize) -> Result<Arc<File>, LedgerError> {
        if let Some(f) = self.levels.read().get(level) {
            return Ok(f.clone());
        }
        let mut w = self.levels.write();
        while w.len() <= level {
            if w.len() >= MAX_LEVELS {
                return Err(LedgerError::InvalidRange(format!("level {level}")));
            }
            let f = open_rw(&self.dir.join(level_name(w.len())))?;
            w.push(Arc::new(f));
        }
        Ok(w[level].clone())
    }

    /// Makes sure the files of levels `0..count` are open (creating empty ones as needed).
    pub(super) fn open_levels(&self, count: usize) -> Result<(), LedgerError> {
        if count == 0 || self.levels.read().len() >= count {
            return Ok(());
        }
        self.level_file(count - 1).map(|_| ())
    }

    /// How many node level files are open (levels `0..n`).
    pub(super) fn levels_open(&self) -> usize {
        self.levels.read().len()
    }

    /// The file of node level `level` if it is open; never opens one.
    pub(super) fn open_level(&self, level: usize) -> Result<Arc<File>, LedgerError> {
        self.levels
            .read()
            .get(level)
            .cloned()
            .ok_or_else(|| LedgerError::Io {
                context: format!("node level {level}"),
                source: std::io::Error::other("the level file is not open"),
            })
    }

    fn read_at(&self, f: &File, buf: &mut [u8], pos: u64, what: &str) -> Result<(), LedgerError> {
        f.read_exact_at(buf, pos).map_err(io_err(what.to_owned()))
    }

    /// Stored hash of node `(level, index)`; caller checks bounds.
    pub(crate) fn node(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        if let Some(h) = self.upper.read().get(level, index) {
            return Ok(h);
        }
        let f = self.open_level(level as usize)?;
        let mut h = [0u8; 32];
        self.read_at(&f, &mut h, index * 32, "read node")?;
        Ok(h)
    }

    pub(super) fn offset(&self, index: u64) -> Result<u64, LedgerError> {
        let mut b = [0u8; 8];
        self.read_at(&self.offsets, &mut b, index * 8, "read offset")?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads and checksums the entry at `index`; caller checks bounds.
    pub(crate) fn record(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let off = self.offset(index)?;
        let mut h = [0u8; HEADER as usize];
        self.read_at(&self.entries, &mut h, off, "read record header")?;
        let (len, sum) = split_header(&h);
        if len == 0 || len as usize > MAX_ENTRY {
            return Err(LedgerError::Corrupt {
                index,
                detail: format!("implausible record length {len}"),
            });
        }
        let mut body = vec![0u8; len as usize];
        self.read_at(&self.entries, &mut body, off + HEADER, "read record")?;
        if crc(&body) != sum {
            return Err(LedgerError::Corrupt {
                index,
                detail: "record checksum mismatch".to_owned(),
            });
        }
        Ok(body)
    }
}

/// A view of the files at a fixed size, for the pure proof code.
pub(crate) struct LogView<'a> {
    pub(crate) files: &'a LogFiles,
    pub(crate) size: u64,
}

impl NodeSource for LogView<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        if level >= 64 || index >= self.size >> level {
            return Err(LedgerError::NotFound(format!("node level {level} index {index}")));
        }
        self.files.node(level, index)
    }
}

/// Loads the bounded cache of upper levels for a tree of `size` leaves.
pub(super) fn load_upper_cache(files: &LogFiles, size: u64) -> Result<(), LedgerError> {
    let mut from = 0u32;
    while from < 63 && (size >> from) > CACHE_MAX_NODES as u64 {
        from += 1;
    }
    let mut cache = UpperCache {
        from,
        levels: Vec::new(),
    };
    for l in from..64 {
        let count = size >> l;
        if count == 0 {
            break;
        }
        let f = files.level_file(l as usize)?;
        let mut buf = vec![0u8; count as usize * 32];
        f.read_exact_at(&mut buf, 0).map_err(io_err("load node level"))?;
        cache.extend(l, &buf);
    }
    *files.upper.write() = cache;
    Ok(())
}
