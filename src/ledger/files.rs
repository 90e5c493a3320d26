//! On-disk layout of the ledger directory and the synchronous file operations on it:
//! record framing, derived offset/node-level files, recovery on open and the full
//! verification pass. See `docs/ledger-format.md`.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use super::LedgerError;
use super::tree::{self, Frontier, Hash, NodeSource};

pub(crate) const ENTRIES: &str = "entries.log";
pub(crate) const OFFSETS: &str = "offsets.idx";
pub(crate) const SYNCED: &str = "synced";
pub(crate) const CHECKPOINT: &str = "checkpoint";
pub(crate) const KEY: &str = "ledger.key";
pub(crate) const ORIGIN: &str = "origin";
pub(crate) const LOCK: &str = "LOCK";
/// Record header: u32 LE length, u32 LE CRC-32 of the entry bytes.
pub(crate) const HEADER: u64 = 8;
/// Largest accepted entry.
pub(crate) const MAX_ENTRY: usize = 16 << 20;
const MAX_LEVELS: usize = 64;

/// Size of the zero-filled region the writer keeps ahead of the logical end of
/// `entries.log` (see "Preallocation" in `docs/ledger-format.md`). When less than half of
/// it remains, the writer zero-fills up to `end + PREALLOC_CHUNK`, one [`ZERO_SLICE`] per
/// idle moment.
#[cfg(not(test))]
pub(crate) const PREALLOC_CHUNK: u64 = 64 << 20;
/// Tiny in tests so that appends cross many chunk boundaries.
#[cfg(test)]
pub(crate) const PREALLOC_CHUNK: u64 = 4096;
/// Zero bytes written (and fdatasynced) per step of the extension; one step delays a
/// request that arrives during it by at most one such write + sync. 256 KiB: under HTTP load
/// with 32 connections the queue is briefly empty between batches, and a 1 MiB step (~1.5 ms
/// on this disk) held every connection; 256 KiB gave +6% evaluate throughput (3 alternating
/// runs each, one pinned core, within this machine's noise but never worse).
#[cfg(not(test))]
const ZERO_SLICE: u64 = 256 << 10;
#[cfg(test)]
const ZERO_SLICE: u64 = 1024;
/// Buffer size for scanning a zero tail.
const ZERO_SCAN: usize = 1 << 20;

fn level_name(level: usize) -> String {
    format!("level-{level:02}.hash")
}

fn io_err(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> LedgerError {
    LedgerError::io(ctx)
}

fn open_rw(path: &Path) -> Result<File, LedgerError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))
}

/// fsync a directory so renames and new files in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync dir {}", dir.display())))
}

/// Atomically replaces `name` in `dir`: temp file, fsync, rename, fsync dir.
pub(crate) fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), LedgerError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let ctx = format!("write {}", tmp.display());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(ctx.clone()))?;
    f.write_all(data).map_err(io_err(ctx.clone()))?;
    f.sync_all().map_err(io_err(ctx))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io_err(format!("rename {name}")))?;
    sync_dir(dir)
}

pub(crate) fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The marker file records how many entries' derived data (offsets, node levels) is durable.
fn encode_marker(size: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&size.to_le_bytes());
    let d = Sha256::digest(&b[..8]);
    b[8..].copy_from_slice(&d[..8]);
    b
}

fn decode_marker(b: &[u8]) -> Option<u64> {
    if b.len() != 16 {
        return None;
    }
    let d = Sha256::digest(&b[..8]);
    if b[8..] != d[..8] {
        return None;
    }
    Some(u64::from_le_bytes(b[..8].try_into().ok()?))
}

/// Open files of one ledger directory. Reads are positional and lock-free.
pub(crate) struct Store {
    dir: PathBuf,
    entries: File,
    offsets: File,
    levels: RwLock<Vec<Arc<File>>>,
    synced: Mutex<u64>,
    upper: RwLock<UpperCache>,
}

/// Most nodes per level kept in the in-memory cache of the upper levels. The cache holds
/// only levels with at most this many nodes, so it is bounded (< 2 x 2^16 x 32 B = 4 MiB)
/// whatever the log size; it saves the positional reads of the top of every proof.
#[cfg(not(test))]
const CACHE_MAX_NODES: usize = 1 << 16;
/// Tiny in tests so that proofs exercise both the cache and the file reads.
#[cfg(test)]
const CACHE_MAX_NODES: usize = 4;

/// Complete copies of the levels `from..` (each level's nodes in index order).
struct UpperCache {
    from: u32,
    levels: Vec<Vec<Hash>>,
}

impl UpperCache {
    fn empty() -> Self {
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
    fn extend(&mut self, level: u32, hashes: &[u8]) {
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
    fn trim(&mut self) {
        while self.levels.first().is_some_and(|l| l.len() > CACHE_MAX_NODES) {
            self.levels.remove(0);
            self.from += 1;
        }
    }
}

impl Store {
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn level_file(&self, level: usize) -> Result<Arc<File>, LedgerError> {
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

    fn read_at(&self, f: &File, buf: &mut [u8], pos: u64, what: &str) -> Result<(), LedgerError> {
        f.read_exact_at(buf, pos).map_err(io_err(what.to_owned()))
    }

    /// Stored hash of node `(level, index)`; caller checks bounds.
    pub(crate) fn node(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        if let Some(h) = self.upper.read().get(level, index) {
            return Ok(h);
        }
        let f = self.level_file(level as usize)?;
        let mut h = [0u8; 32];
        self.read_at(&f, &mut h, index * 32, "read node")?;
        Ok(h)
    }

    fn offset(&self, index: u64) -> Result<u64, LedgerError> {
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

    /// fdatasync the derived files and record that the first `size` entries' derived
    /// data is durable (never moves the marker backwards).
    pub(crate) fn sync_derived(&self, size: u64) -> Result<(), LedgerError> {
        let mut synced = self.synced.lock();
        if size <= *synced {
            return Ok(());
        }
        self.offsets.sync_data().map_err(io_err("fdatasync offsets"))?;
        let levels: Vec<Arc<File>> = self.levels.read().clone();
        for f in levels {
            f.sync_data().map_err(io_err("fdatasync node level"))?;
        }
        write_atomic(&self.dir, SYNCED, &encode_marker(size))?;
        *synced = size;
        Ok(())
    }

    /// Sets the marker to exactly `size` (used by recovery after rebuilding).
    fn force_marker(&self, size: u64) -> Result<(), LedgerError> {
        self.offsets.sync_data().map_err(io_err("fdatasync offsets"))?;
        let levels: Vec<Arc<File>> = self.levels.read().clone();
        for f in levels {
            f.sync_data().map_err(io_err("fdatasync node level"))?;
        }
        write_atomic(&self.dir, SYNCED, &encode_marker(size))?;
        *self.synced.lock() = size;
        Ok(())
    }
}

fn split_header(h: &[u8; HEADER as usize]) -> (u32, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, sum)
}

/// A view of the store at a fixed size, for the pure proof code.
pub(crate) struct StoreView<'a> {
    pub(crate) store: &'a Store,
    pub(crate) size: u64,
}

impl NodeSource for StoreView<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash, LedgerError> {
        if level >= 64 || index >= self.size >> level {
            return Err(LedgerError::NotFound(format!("node level {level} index {index}")));
        }
        self.store.node(level, index)
    }
}

/// The single writer's state: the frontier plus staging buffers for one batch.
pub(crate) struct Appender {
    frontier: Frontier,
    /// Logical end of the log: where the next record goes.
    end_offset: u64,
    /// Physical length of `entries.log` as far as the writer knows; everything in
    /// `end_offset..file_len` is zero.
    file_len: u64,
    /// Zero-fill the file up to here (set when less than half a chunk remains).
    zero_target: u64,
    /// Cleared after a failed zero-fill: the writer then only grows the file.
    prealloc: bool,
    batch_start: u64,
    records: Vec<u8>,
    offsets: Vec<u8>,
    levels: Vec<Vec<u8>>,
}

impl Appender {
    pub(crate) fn size(&self) -> u64 {
        self.frontier.size()
    }

    pub(crate) fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// Stages one record's derived data (the record is at `offset`).
    fn stage(&mut self, leaf: Hash, offset: u64) {
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
    fn flush_derived(&mut self, store: &Store) -> Result<(), LedgerError> {
        let start = self.batch_start;
        if !self.offsets.is_empty() {
            store
                .offsets
                .write_all_at(&self.offsets, start * 8)
                .map_err(io_err("write offsets"))?;
            self.offsets.clear();
        }
        for l in 0..self.levels.len() {
            if self.levels[l].is_empty() {
                continue;
            }
            let f = store.level_file(l)?;
            f.write_all_at(&self.levels[l], (start >> l) * 32)
                .map_err(io_err("write node level"))?;
        }
        {
            let mut upper = store.upper.write();
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
    pub(crate) fn append_batch(&mut self, store: &Store, batch: &[Vec<u8>]) -> Result<u64, LedgerError> {
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
            store
                .entries
                .write_all_at(&self.records, self.end_offset)
                .map_err(io_err("write entries"))?;
            store.entries.sync_data().map_err(io_err("fdatasync entries"))?;
            self.flush_derived(store)
        })();
        self.end_offset += self.records.len() as u64;
        self.file_len = self.file_len.max(self.end_offset);
        res.map(|()| first)
    }

    /// The next zero-fill step `(offset, length)`, if the preallocated region needs one.
    fn zero_step(&mut self) -> Option<(u64, u64)> {
        if !self.prealloc {
            return None;
        }
        if self.file_len.saturating_sub(self.end_offset) < PREALLOC_CHUNK / 2
            && self.zero_target <= self.file_len
        {
            self.zero_target = self.end_offset + PREALLOC_CHUNK;
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
    /// whether a slice was written. A failure is an error the writer treats like a failed
    /// batch.
    pub(crate) fn extend_zeros(&mut self, store: &Store) -> Result<bool, LedgerError> {
        let Some((at, len)) = self.zero_step() else {
            return Ok(false);
        };
        let zeros = vec![0u8; len as usize];
        // A failure here is treated like a failed batch (the writer refuses appends until restart): the first
        // slice after a growing append starts inside the page that holds the last acknowledged record, so after
        // a failed write or sync the state of acknowledged bytes is unknown.
        store
            .entries
            .write_all_at(&zeros, at)
            .map_err(io_err("zero-fill entries"))?;
        store
            .entries
            .sync_data()
            .map_err(io_err("fdatasync zero-filled entries"))?;
        self.file_len = at + len;
        Ok(true)
    }

    /// Cuts the preallocated zero tail off (clean shutdown), so that a cleanly closed
    /// `entries.log` is exactly the log, as written by versions without preallocation.
    pub(crate) fn release_tail(&mut self, store: &Store) -> Result<(), LedgerError> {
        if self.file_len <= self.end_offset {
            return Ok(());
        }
        store
            .entries
            .set_len(self.end_offset)
            .map_err(io_err("truncate preallocated tail"))?;
        store.entries.sync_data().map_err(io_err("fdatasync entries"))?;
        self.file_len = self.end_offset;
        self.prealloc = false;
        Ok(())
    }
}

/// How damage found on open is handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RepairMode {
    /// Refuse to open on any damage except an incomplete (never acknowledged) final record.
    #[default]
    Refuse,
    /// Also cut off damaged records at the tail, if none of them is covered by the
    /// latest signed checkpoint.
    Truncate,
}

impl std::str::FromStr for RepairMode {
    type Err = LedgerError;

    /// Parses `refuse` or `truncate` (the values of `kla serve --ledger-repair`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refuse" => Ok(RepairMode::Refuse),
            "truncate" => Ok(RepairMode::Truncate),
            other => Err(LedgerError::Config(format!(
                "ledger repair mode must be refuse or truncate, got {other:?}"
            ))),
        }
    }
}

/// Result of recovery: the open store and the writer state.
pub(crate) struct Opened {
    pub(crate) store: Store,
    pub(crate) appender: Appender,
}

struct Scan<'a> {
    file: &'a File,
    len: u64,
}

enum Rec {
    Good(Vec<u8>, u64),
    /// Fewer bytes than the header announces: an unacknowledged torn write.
    Torn,
    /// A complete record whose length or checksum is wrong; `checksum` says it is the
    /// checksum (the length is plausible and the next record starts at `next`).
    Bad {
        detail: String,
        next: u64,
        checksum: bool,
    },
    /// An all-zero record header: the end of the log if only zeros follow.
    Zero,
    End,
}

/// Offset of the first non-zero byte of `file` in `from..len`, if any (read in chunks).
fn first_nonzero(file: &File, from: u64, len: u64) -> Result<Option<u64>, LedgerError> {
    let mut buf = vec![0u8; ZERO_SCAN];
    let mut pos = from;
    while pos < len {
        let n = (len - pos).min(ZERO_SCAN as u64) as usize;
        let chunk = &mut buf[..n];
        file.read_exact_at(chunk, pos)
            .map_err(io_err("read preallocated tail"))?;
        if let Some(i) = chunk.iter().position(|&b| b != 0) {
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    Ok(None)
}

impl Scan<'_> {
    fn read(&self, pos: u64) -> Result<Rec, LedgerError> {
        if pos >= self.len {
            return Ok(Rec::End);
        }
        if self.len - pos < HEADER {
            return Ok(match first_nonzero(self.file, pos, self.len)? {
                None => Rec::Zero,
                Some(_) => Rec::Torn,
            });
        }
        let mut h = [0u8; HEADER as usize];
        self.file
            .read_exact_at(&mut h, pos)
            .map_err(io_err("read record header"))?;
        if h == [0u8; HEADER as usize] {
            return Ok(Rec::Zero);
        }
        let (len, sum) = split_header(&h);
        if len == 0 || len as usize > MAX_ENTRY {
            return Ok(Rec::Bad {
                detail: format!("implausible record length {len}"),
                next: pos,
                checksum: false,
            });
        }
        let next = pos + HEADER + u64::from(len);
        if next > self.len {
            return Ok(Rec::Torn);
        }
        let mut body = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut body, pos + HEADER)
            .map_err(io_err("read record"))?;
        if crc(&body) != sum {
            return Ok(Rec::Bad {
                detail: "record checksum mismatch".to_owned(),
                next,
                checksum: true,
            });
        }
        Ok(Rec::Good(body, next))
    }

    /// Whether any intact record follows `pos` (following the framing).
    fn intact_after(&self, mut pos: u64) -> Result<bool, LedgerError> {
        loop {
            match self.read(pos)? {
                Rec::Good(..) => return Ok(true),
                Rec::Bad { next, .. } if next > pos + HEADER => pos = next,
                _ => return Ok(false),
            }
        }
    }

    /// Whether every byte from `pos` to the end of the file is zero.
    fn zeros_from(&self, pos: u64) -> Result<bool, LedgerError> {
        Ok(first_nonzero(self.file, pos, self.len)?.is_none())
    }
}

/// Opens (creating if needed) the files in `dir` and recovers them to a consistent state.
/// `checkpoint_size` is the size of the latest signed checkpoint (never rolled back).
pub(crate) fn open_store(
    dir: &Path,
    repair: RepairMode,
    checkpoint_size: u64,
) -> Result<Opened, LedgerError> {
    let entries = open_rw(&dir.join(ENTRIES))?;
    let offsets = open_rw(&dir.join(OFFSETS))?;
    let entries_len = entries.metadata().map_err(io_err("stat entries"))?.len();
    let marker = std::fs::read(dir.join(SYNCED))
        .ok()
        .and_then(|b| decode_marker(&b))
        .unwrap_or(0);
    let store = Store {
        dir: dir.to_owned(),
        entries,
        offsets,
        levels: RwLock::new(Vec::new()),
        synced: Mutex::new(0),
        upper: RwLock::new(UpperCache::empty()),
    };
    // Open every existing level file.
    for l in 0..MAX_LEVELS {
        if !dir.join(level_name(l)).exists() {
            break;
        }
        store.level_file(l)?;
    }
    let file_len = |f: &File| f.metadata().map(|m| m.len()).map_err(io_err("stat"));
    let n_off = file_len(&store.offsets)? / 8;
    let n_leaf = file_len(&*store.level_file(0)?)? / 32;
    // Derived data durable and consistent up to `verify_until`; trusted without
    // re-hashing up to `trusted` (everything after the checkpoint is re-verified).
    let verify_until = marker.min(n_off).min(n_leaf);
    let mut trusted = verify_until.min(checkpoint_size);

    // Check the last trusted record against its stored offset and leaf hash.
    let scan = Scan {
        file: &store.entries,
        len: entries_len,
    };
    let mut pos = 0u64;
    if trusted > 0 {
        let i = trusted - 1;
        let off = store.offset(i)?;
        match scan.read(off)? {
            Rec::Good(body, next) => {
                if tree::leaf_hash(&body) != store.node(0, i)? {
                    return Err(LedgerError::Corrupt {
                        index: i,
                        detail: "entry does not match its stored leaf hash".to_owned(),
                    });
                }
                pos = next;
            }
            Rec::Bad { detail: d, .. } => {
                return Err(LedgerError::Corrupt {
                    index: i,
                    detail: format!(
                        "{d} inside the prefix covered by the signed checkpoint of size \
                         {checkpoint_size}; refusing to roll back"
                    ),
                });
            }
            Rec::Torn | Rec::End | Rec::Zero => {
                return Err(LedgerError::Corrupt {
                    index: i,
                    detail: "entries file is shorter than its index".to_owned(),
                });
            }
        }
    }
    // Make sure every level holds the complete nodes of the trusted prefix.
    for l in 1..MAX_LEVELS {
        let need = trusted >> l;
        if need == 0 {
            break;
        }
        let f = store.level_file(l)?;
        let have = file_len(&f)? / 32;
        if have < need {
            tracing::warn!(level = l, have, need, "rebuilding ledger node level");
            let mut buf = Vec::with_capacity(((need - have) * 32) as usize);
            for j in have..need {
                let a = store.node(l as u32 - 1, 2 * j)?;
                let b = store.node(l as u32 - 1, 2 * j + 1)?;
                buf.extend_from_slice(&tree::node_hash(&a, &b));
            }
            f.write_all_at(&buf, have * 32)
                .map_err(io_err("rebuild node level"))?;
        }
    }
    let nodes = tree::frontier_positions(trusted)
        .into_iter()
        .map(|(l, i)| store.node(l, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut appender = Appender {
        frontier: Frontier::from_nodes(trusted, nodes)?,
        end_offset: pos,
        file_len: entries_len,
        zero_target: 0,
        prealloc: true,
        batch_start: trusted,
        records: Vec::new(),
        offsets: Vec::new(),
        levels: Vec::new(),
    };

    // Entries known to have been acknowledged: indexed in `offsets.idx` (written only after their
    // batch's fdatasync) or covered by the `synced` marker. Wherever the log ends, it must still hold
    // them all: a log that ends early lost acknowledged entries, which is refused unless the operator
    // accepts the loss with `RepairMode::Truncate` (never below the checkpoint).
    let acked = n_off.max(marker);
    let lost_acked = |index: u64| -> Result<(), LedgerError> {
        if index >= acked {
            return Ok(());
        }
        let detail = format!(
            "the log ends after {index} entries but {acked} were acknowledged (offsets.idx, \
             synced marker): acknowledged entries are missing"
        );
        if repair == RepairMode::Truncate && index >= checkpoint_size {
            tracing::warn!(
                index,
                acked,
                "ledger: {detail}; accepting the loss (repair mode truncate)"
            );
            Ok(())
        } else {
            Err(LedgerError::Corrupt { index, detail })
        }
    };
    let rules = TailRules {
        store: &store,
        scan: &scan,
        checkpoint_size,
        n_off,
        repair,
        acked,
    };
    // Re-verify and re-index everything after the trusted prefix.
    let mut index = trusted;
    loop {
        match scan.read(pos)? {
            Rec::End => {
                lost_acked(index)?;
                break;
            }
            Rec::Good(body, next) => {
                let leaf = tree::leaf_hash(&body);
                if index < verify_until && store.node(0, index)? != leaf {
                    return Err(LedgerError::Corrupt {
                        index,
                        detail: "entry does not match its stored leaf hash".to_owned(),
                    });
                }
                appender.stage(leaf, pos);
                if appender.offsets.len() >= 1 << 20 {
                    appender.flush_derived(&store)?;
                }
                index += 1;
                pos = next;
            }
            Rec::Torn => {
                lost_acked(index)?;
                tracing::warn!(
                    index,
                    offset = pos,
                    dropped_bytes = entries_len - pos,
                    "ledger: cutting off an incomplete final record (never acknowledged)"
                );
                cut(&store, pos)?;
                break;
            }
            Rec::Zero => {
                // The logical end, if only (preallocated) zeros follow.
                if scan.zeros_from(pos)? {
                    lost_acked(index)?;
                    break;
                }
                let detail = "non-zero bytes after a zero record header (the end of the log)";
                rules.refuse_unless_tail(index, pos, detail, false)?;
                repair_tail(&store, repair, index, pos, entries_len, detail)?;
                break;
            }
            Rec::Bad {
                detail,
                next,
                checksum,
            } => {
                let follows = scan.intact_after(next)?;
                rules.refuse_unless_tail(index, pos, &detail, follows)?;
                // A full-length final record with a bad checksum followed only by
                // preallocated zeros is what a torn write into the zero-filled region
                // looks like: never acknowledged (its offset is not in `offsets.idx`,
                // which is written only after the batch's fdatasync), cut like an
                // incomplete record.
                if checksum && acked <= index && next < scan.len && scan.zeros_from(next)? {
                    tracing::warn!(
                        index,
                        offset = pos,
                        dropped_bytes = next - pos,
                        "ledger: cutting off a torn final record in preallocated space (never acknowledged)"
                    );
                    cut(&store, pos)?;
                } else {
                    repair_tail(&store, repair, index, pos, entries_len, &detail)?;
                }
                break;
            }
        }
    }
    appender.end_offset = pos;
    appender.file_len = file_len(&store.entries)?;
    if appender.file_len > pos {
        // A zero tail left by a process that died: make sure it is durable before
        // records are written into it (one fdatasync; normally a no-op).
        store.entries.sync_data().map_err(io_err("fdatasync entries"))?;
    }
    appender.flush_derived(&store)?;
    if index < checkpoint_size {
        return Err(LedgerError::Corrupt {
            index,
            detail: format!("log has {index} entries but the signed checkpoint covers {checkpoint_size}"),
        });
    }
    // Trim derived files to the recovered size and mark them durable.
    let size = index;
    store.offsets.set_len(size * 8).map_err(io_err("trim offsets"))?;
    for l in 0..MAX_LEVELS {
        if !dir.join(level_name(l)).exists() {
            break;
        }
        store
            .level_file(l)?
            .set_len((size >> l) * 32)
            .map_err(io_err("trim node level"))?;
    }
    if size != marker || trusted != size {
        store.force_marker(size)?;
    } else {
        *store.synced.lock() = size;
    }
    trusted = size;
    debug_assert_eq!(appender.size(), trusted);
    load_upper_cache(&store, size)?;
    Ok(Opened { store, appender })
}

/// What recovery knows about the log while it scans the tail after the trusted prefix.
struct TailRules<'a> {
    store: &'a Store,
    scan: &'a Scan<'a>,
    checkpoint_size: u64,
    /// Records in `offsets.idx`.
    n_off: u64,
    repair: RepairMode,
    /// Entries known to have been acknowledged: max(`offsets.idx`, `synced`).
    acked: u64,
}

impl TailRules<'_> {
    /// Refuses damage found at record `index` (offset `pos`) on open unless it is a tail
    /// after the checkpoint: no intact record follows it (`follows`, by framing, or at the last
    /// offset in `offsets.idx`) and `index >= checkpoint_size`.
    fn refuse_unless_tail(
        &self,
        index: u64,
        pos: u64,
        detail: &str,
        follows: bool,
    ) -> Result<(), LedgerError> {
        let TailRules {
            store,
            scan,
            checkpoint_size,
            n_off,
            repair,
            acked,
        } = *self;
        let indexed_later = n_off > index + 1
            && store
                .offset(n_off - 1)
                .ok()
                .filter(|&o| o > pos)
                .map(|o| matches!(scan.read(o), Ok(Rec::Good(..))))
                .unwrap_or(false);
        // Intact records after the damage are mid-log damage, except when the damage and everything after it
        // were never acknowledged (at or past every acknowledged index, nothing after it indexed): a power loss
        // during one batch's fdatasync can persist that batch's blocks in any order. Only an operator's
        // `RepairMode::Truncate` cuts there; the default refuses and names it.
        let unacknowledged_batch = repair == RepairMode::Truncate && index >= acked && !indexed_later;
        if indexed_later || (follows && !unacknowledged_batch) {
            return Err(LedgerError::Corrupt {
                index,
                detail: format!(
                    "{detail}; intact records follow (damage mid-log{})",
                    if indexed_later || index < acked {
                        ""
                    } else {
                        "; if no entry from here on was acknowledged, a torn final batch: repair mode truncate cuts it"
                    }
                ),
            });
        }
        if index < checkpoint_size {
            return Err(LedgerError::Corrupt {
                index,
                detail: format!(
                    "{detail}; damaged tail is covered by the signed checkpoint of size {checkpoint_size}, refusing to roll back"
                ),
            });
        }
        Ok(())
    }
}

/// Cuts a damaged tail at `pos` with `RepairMode::Truncate`; refuses otherwise.
fn repair_tail(
    store: &Store,
    repair: RepairMode,
    index: u64,
    pos: u64,
    entries_len: u64,
    detail: &str,
) -> Result<(), LedgerError> {
    if repair != RepairMode::Truncate {
        return Err(LedgerError::Corrupt {
            index,
            detail: format!("{detail} in the tail; open with repair mode truncate to cut it off"),
        });
    }
    tracing::warn!(
        index,
        offset = pos,
        dropped_bytes = entries_len - pos,
        "ledger: repair=truncate cutting off a damaged tail"
    );
    cut(store, pos)
}

/// Loads the bounded cache of upper levels for a tree of `size` leaves.
fn load_upper_cache(store: &Store, size: u64) -> Result<(), LedgerError> {
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
        let f = store.level_file(l as usize)?;
        let mut buf = vec![0u8; count as usize * 32];
        f.read_exact_at(&mut buf, 0).map_err(io_err("load node level"))?;
        cache.extend(l, &buf);
    }
    *store.upper.write() = cache;
    Ok(())
}

/// Cuts `entries.log` at `pos`: truncates (which also drops any preallocated zero tail, so
/// only zeros, i.e. nothing, follow the logical end; the writer re-extends it) and syncs.
fn cut(store: &Store, pos: u64) -> Result<(), LedgerError> {
    store.entries.set_len(pos).map_err(io_err("truncate entries"))?;
    store.entries.sync_all().map_err(io_err("fsync entries"))
}

/// Outcome of a full verification pass.
#[derive(Clone, Debug)]
pub struct VerifySummary {
    /// Entries checked.
    pub entries: u64,
    /// Root hash over all entries.
    pub root: Hash,
    /// Size of the checkpoint whose root and signature were checked, if any.
    pub checkpoint_size: Option<u64>,
    /// Bytes of a torn (never acknowledged) final record that open would cut off: an
    /// incomplete record, or a full-length one with a bad checksum followed only by zeros.
    pub torn_tail_bytes: u64,
    /// Bytes of the zero-filled (preallocated) region after the logical end.
    pub preallocated_bytes: u64,
}

struct LevelReader {
    r: BufReader<File>,
    have: u64,
    read: u64,
}

/// One record as checked by the reader thread of [`verify_all`].
struct Checked {
    pos: u64,
    leaf: Hash,
}

enum Chunk {
    Records(Vec<Checked>),
    Failed(LedgerError),
    /// End of the log at byte `end`, followed by `torn` bytes of a torn final record and
    /// then `zeros` bytes of preallocated zeros.
    End {
        end: u64,
        torn: u64,
        zeros: u64,
    },
}

/// Offset of the first non-zero byte in the next `total - from` bytes of `r`, if any.
fn first_nonzero_in(r: &mut impl Read, from: u64, total: u64) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; ZERO_SCAN];
    let mut pos = from;
    while pos < total {
        let n = (total - pos).min(ZERO_SCAN as u64) as usize;
        r.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    Ok(None)
}

/// Reader half of [`verify_all`]: frames records, checks CRCs and computes leaf hashes.
/// The log ends at the end of the file, at a partial final record, or at an all-zero
/// record header followed only by zeros (the preallocated tail). A full-length final record
/// with a bad checksum followed only by zeros, at an index neither the checkpoint nor
/// `offsets.idx` (`indexed` records) covers, is a torn write (reported like a partial
/// record); any other non-zero byte after the logical end is damage.
fn read_and_hash(file: File, total: u64, covered: u64, tx: &std::sync::mpsc::SyncSender<Chunk>) {
    let mut r = BufReader::with_capacity(4 << 20, file);
    let mut pos = 0u64;
    let mut index = 0u64;
    let mut body = Vec::new();
    let mut batch = Vec::with_capacity(8192);
    let fail = |e: LedgerError, batch: Vec<Checked>| {
        let _ = tx.send(Chunk::Records(batch));
        let _ = tx.send(Chunk::Failed(e));
    };
    let tail_damage = |index: u64, at: u64| LedgerError::Corrupt {
        index,
        detail: format!("non-zero byte at offset {at} after the end of the log"),
    };
    let (mut torn, mut zeros) = (0u64, 0u64);
    loop {
        if pos >= total {
            break;
        }
        if total - pos < HEADER {
            match first_nonzero_in(&mut r, pos, total) {
                Err(e) => return fail(LedgerError::io("read entries")(e), batch),
                Ok(None) => zeros = total - pos,
                Ok(Some(_)) => torn = total - pos,
            }
            break;
        }
        let mut h = [0u8; HEADER as usize];
        if let Err(e) = r.read_exact(&mut h) {
            return fail(LedgerError::io("read entries")(e), batch);
        }
        if h == [0u8; HEADER as usize] {
            match first_nonzero_in(&mut r, pos + HEADER, total) {
                Err(e) => return fail(LedgerError::io("read entries")(e), batch),
                Ok(Some(at)) => return fail(tail_damage(index, at), batch),
                Ok(None) => zeros = total - pos,
            }
            break;
        }
        let (len, sum) = split_header(&h);
        if len == 0 || len as usize > MAX_ENTRY {
            return fail(
                LedgerError::Corrupt {
                    index,
                    detail: format!("implausible record length {len}"),
                },
                batch,
            );
        }
        let next = pos + HEADER + u64::from(len);
        if next > total {
            torn = total - pos;
            break;
        }
        body.resize(len as usize, 0);
        if let Err(e) = r.read_exact(&mut body) {
            return fail(LedgerError::io("read entries")(e), batch);
        }
        if crc(&body) != sum {
            let mismatch = LedgerError::Corrupt {
                index,
                detail: "record checksum mismatch".to_owned(),
            };
            if index < covered || next >= total {
                return fail(mismatch, batch);
            }
            match first_nonzero_in(&mut r, next, total) {
                Err(e) => return fail(LedgerError::io("read entries")(e), batch),
                Ok(Some(_)) => return fail(mismatch, batch),
                Ok(None) => {
                    torn = next - pos;
                    zeros = total - next;
                }
            }
            break;
        }
        batch.push(Checked {
            pos,
            leaf: tree::leaf_hash(&body),
        });
        pos = next;
        index += 1;
        if batch.len() == 8192 {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(8192));
            if tx.send(Chunk::Records(full)).is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Chunk::Records(batch));
    let _ = tx.send(Chunk::End {
        end: pos,
        torn,
        zeros,
    });
}

/// Recomputes and checks the whole log in `dir`: every record's checksum, every leaf
/// hash and stored node, and the root at `checkpoint` (if given). Two threads: one
/// reads, checksums and leaf-hashes records; the other builds and compares the tree.
pub(crate) fn verify_all(
    dir: &Path,
    checkpoint: Option<(u64, Hash)>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifySummary, LedgerError> {
    let open = |name: &str| -> Result<Option<File>, LedgerError> {
        match File::open(dir.join(name)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LedgerError::io(format!("open {name}"))(e)),
        }
    };
    let entries =
        open(ENTRIES)?.ok_or_else(|| LedgerError::NotFound(format!("no ledger at {}", dir.display())))?;
    let total = entries.metadata().map_err(io_err("stat"))?.len();
    let mut offsets = match open(OFFSETS)? {
        Some(f) => {
            let have = f.metadata().map_err(io_err("stat"))?.len() / 8;
            Some((BufReader::with_capacity(1 << 20, f), have))
        }
        None => None,
    };
    let mut levels: Vec<LevelReader> = Vec::new();
    for l in 0..MAX_LEVELS {
        let Some(f) = open(&level_name(l))? else {
            break;
        };
        let have = f.metadata().map_err(io_err("stat"))?.len() / 32;
        levels.push(LevelReader {
            r: BufReader::with_capacity(1 << 20, f),
            have,
            read: 0,
        });
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Chunk>(8);
    std::thread::scope(|scope| {
        // Records at indices below this were acknowledged: never treated as torn writes.
        let covered = checkpoint
            .map_or(0, |(size, _)| size)
            .max(offsets.as_ref().map_or(0, |(_, have)| *have));
        scope.spawn(move || read_and_hash(entries, total, covered, &tx));
        // Owned here so an early return drops it and unblocks the reader thread.
        let rx = rx;
        let mut frontier = Frontier::new();
        let mut cp_checked = None;
        let mut level_err: Option<LedgerError> = None;
        let (mut end, mut torn, mut zeros) = (0u64, 0u64, 0u64);
        let check_cp = |frontier: &Frontier, cp_checked: &mut Option<u64>| {
            if let Some((size, root)) = checkpoint
                && size == frontier.size()
            {
                if frontier.root() != root {
                    return Err(LedgerError::Corrupt {
                        index: size.saturating_sub(1),
                        detail: "root at the signed checkpoint size differs from the checkpoint".to_owned(),
                    });
                }
                *cp_checked = Some(size);
            }
            Ok(())
        };
        check_cp(&frontier, &mut cp_checked)?;
        for chunk in rx.iter() {
            let recs = match chunk {
                Chunk::Records(r) => r,
                Chunk::Failed(e) => return Err(e),
                Chunk::End {
                    end: e,
                    torn: t,
                    zeros: z,
                } => {
                    (end, torn, zeros) = (e, t, z);
                    break;
                }
            };
            for rec in recs {
                let index = frontier.size();
                if let Some((o, have)) = offsets.as_mut()
                    && index < *have
                {
                    let mut b = [0u8; 8];
                    o.read_exact(&mut b).map_err(io_err("read offsets"))?;
                    if u64::from_le_bytes(b) != rec.pos {
                        return Err(LedgerError::Corrupt {
                            index,
                            detail: "offset index does not match the entries file".to_owned(),
                        });
                    }
                }
                frontier.push(rec.leaf, |l, idx, hsh| {
                    if level_err.is_some() {
                        return;
                    }
                    let Some(lr) = levels.get_mut(l as usize) else {
                        return;
                    };
                    if idx >= lr.have || idx != lr.read {
                        return;
                    }
                    let mut stored = [0u8; 32];
                    if let Err(e) = lr.r.read_exact(&mut stored) {
                        level_err = Some(LedgerError::io("read node level")(e));
                        return;
                    }
                    lr.read += 1;
                    if &stored != hsh {
                        let detail = if l == 0 {
                            "entry does not match its stored leaf hash".to_owned()
                        } else {
                            format!("stored node at level {l} index {idx} is wrong")
                        };
                        level_err = Some(LedgerError::Corrupt {
                            index: idx << l,
                            detail,
                        });
                    }
                });
                if let Some(e) = level_err.take() {
                    return Err(e);
                }
                check_cp(&frontier, &mut cp_checked)?;
                if frontier.size().is_multiple_of(1 << 16) {
                    progress(rec.pos, total);
                }
            }
        }
        progress(end + torn + zeros, total);
        if let Some((size, _)) = checkpoint
            && cp_checked.is_none()
        {
            return Err(LedgerError::Corrupt {
                index: frontier.size(),
                detail: format!(
                    "signed checkpoint covers {size} entries but the log has only {}",
                    frontier.size()
                ),
            });
        }
        // `offsets.idx` and `level-00.hash` are written only after their entries' batch was
        // fdatasynced: entries they index but the log no longer holds were acknowledged and lost.
        let indexed = offsets
            .as_ref()
            .map_or(0, |(_, have)| *have)
            .max(levels.first().map_or(0, |l| l.have));
        if indexed > frontier.size() {
            return Err(LedgerError::Corrupt {
                index: frontier.size(),
                detail: format!(
                    "the log ends after {} entries but its index files hold {indexed}: acknowledged entries are missing",
                    frontier.size()
                ),
            });
        }
        Ok(VerifySummary {
            entries: frontier.size(),
            root: frontier.root(),
            checkpoint_size: cp_checked,
            torn_tail_bytes: torn,
            preallocated_bytes: zeros,
        })
    })
}

/// Reads a file in `dir` if it exists.
pub(crate) fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, LedgerError> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LedgerError::io(format!("read {name}"))(e)),
    }
}
