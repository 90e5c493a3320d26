//! Recovery on open ([`open_log_files`]): opens the files of a ledger directory, trusts the
//! derived data up to the `synced` marker and the signed checkpoint, re-reads and re-hashes
//! everything after it, and applies the end-of-log rules (zero tail, incomplete or torn final
//! record, damage, lost acknowledged entries) with the operator's [`RepairMode`]. The rules
//! are "Recovery on open" in `docs/ledger-format.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use parking_lot::{Mutex, RwLock};

use super::append::{Appender, levels_for};
use super::layout::{
    ENTRIES, HEADER, MAX_ENTRY, MAX_LEVELS, Marker, OFFSETS, ZERO_SCAN, crc, io_err, level_name, open_rw,
    split_header,
};
use super::read::{LogFiles, UpperCache, load_upper_cache};
use crate::ledger::LedgerError;
use crate::ledger::tree::{self, Frontier};

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

/// Result of recovery: the open files and the writer state.
pub(crate) struct Opened {
    pub(crate) files: LogFiles,
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
pub(crate) fn open_log_files(
    dir: &Path,
    repair: RepairMode,
    checkpoint_size: u64,
) -> Result<Opened, LedgerError> {
    let entries = open_rw(&dir.join(ENTRIES))?;
    let offsets = open_rw(&dir.join(OFFSETS))?;
    let entries_len = entries.metadata().map_err(io_err("stat entries"))?.len();
    let synced = Marker::open(dir)?;
    let marker = synced.size();
    let files = LogFiles {
        dir: dir.to_owned(),
        entries,
        offsets,
        levels: RwLock::new(Vec::new()),
        marker: Mutex::new(synced),
        upper: RwLock::new(UpperCache::empty()),
    };
    for l in 0..MAX_LEVELS {
        if !dir.join(level_name(l)).exists() {
            break;
        }
        files.level_file(l)?;
    }
    let file_len = |f: &File| f.metadata().map(|m| m.len()).map_err(io_err("stat"));
    let n_off = file_len(&files.offsets)? / 8;
    let n_leaf = file_len(&*files.level_file(0)?)? / 32;
    // Derived data durable and consistent up to `verify_until`; trusted without
    // re-hashing up to `trusted` (everything after the checkpoint is re-verified).
    let verify_until = marker.min(n_off).min(n_leaf);
    let mut trusted = verify_until.min(checkpoint_size);

    // Check the last trusted record against its stored offset and leaf hash.
    let scan = Scan {
        file: &files.entries,
        len: entries_len,
    };
    let mut pos = 0u64;
    if trusted > 0 {
        let i = trusted - 1;
        let off = files.offset(i)?;
        match scan.read(off)? {
            Rec::Good(body, next) => {
                if tree::leaf_hash(&body) != files.node(0, i)? {
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
        let f = files.level_file(l)?;
        let have = file_len(&f)? / 32;
        if have < need {
            tracing::warn!(level = l, have, need, "rebuilding ledger node level");
            let mut buf = Vec::with_capacity(((need - have) * 32) as usize);
            for j in have..need {
                let a = files.node(l as u32 - 1, 2 * j)?;
                let b = files.node(l as u32 - 1, 2 * j + 1)?;
                buf.extend_from_slice(&tree::node_hash(&a, &b));
            }
            f.write_all_at(&buf, have * 32)
                .map_err(io_err("rebuild node level"))?;
        }
    }
    let nodes = tree::frontier_positions(trusted)
        .into_iter()
        .map(|(l, i)| files.node(l, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut appender = Appender {
        frontier: Frontier::from_nodes(trusted, nodes)?,
        end_offset: pos,
        file_len: entries_len,
        zero_target: 0,
        chunk: super::PREALLOC_CHUNK,
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
        files: &files,
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
                if index < verify_until && files.node(0, index)? != leaf {
                    return Err(LedgerError::Corrupt {
                        index,
                        detail: "entry does not match its stored leaf hash".to_owned(),
                    });
                }
                appender.stage(leaf, pos);
                if appender.offsets.len() >= 1 << 20 {
                    files.open_levels(levels_for(appender.size()))?;
                    appender.flush_derived(&files)?;
                }
                index += 1;
                pos = next;
            }
            Rec::Torn => {
                lost_acked(index)?;
                let why = "cutting off an incomplete final record (never acknowledged)";
                cut(&files, index, pos, entries_len, why)?;
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
                repair_tail(&files, repair, index, pos, entries_len, detail)?;
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
                    let why = "cutting off a torn final record in preallocated space (never acknowledged)";
                    cut(&files, index, pos, next, why)?;
                } else {
                    repair_tail(&files, repair, index, pos, entries_len, &detail)?;
                }
                break;
            }
        }
    }
    appender.end_offset = pos;
    appender.file_len = file_len(&files.entries)?;
    if appender.file_len > pos {
        // A zero tail left by a process that died: make sure it is durable before
        // records are written into it (one fdatasync; normally a no-op).
        files.entries.sync_data().map_err(io_err("fdatasync entries"))?;
    }
    files.open_levels(levels_for(appender.size()))?;
    appender.flush_derived(&files)?;
    if index < checkpoint_size {
        return Err(LedgerError::Corrupt {
            index,
            detail: format!("log has {index} entries but the signed checkpoint covers {checkpoint_size}"),
        });
    }
    // Trim derived files to the recovered size and mark them durable.
    let size = index;
    files.offsets.set_len(size * 8).map_err(io_err("trim offsets"))?;
    for l in 0..MAX_LEVELS {
        if !dir.join(level_name(l)).exists() {
            break;
        }
        files
            .level_file(l)?
            .set_len((size >> l) * 32)
            .map_err(io_err("trim node level"))?;
    }
    if size != marker || trusted != size {
        files.force_marker(size)?;
    }
    trusted = size;
    debug_assert_eq!(appender.size(), trusted);
    load_upper_cache(&files, size)?;
    Ok(Opened { files, appender })
}

/// What recovery knows about the log while it scans the tail after the trusted prefix.
struct TailRules<'a> {
    files: &'a LogFiles,
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
            files,
            scan,
            checkpoint_size,
            n_off,
            repair,
            acked,
        } = *self;
        let indexed_later = n_off > index + 1
            && files
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
    files: &LogFiles,
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
    cut(
        files,
        index,
        pos,
        entries_len,
        "repair=truncate cutting off a damaged tail",
    )
}

/// Cuts `entries.log` at `pos`, the start of record `index`, dropping the bytes up to `end` (`why`, for the log):
/// truncates (which also drops any preallocated zero tail, so only zeros, i.e. nothing, follow the logical end; the
/// writer re-extends it) and syncs.
fn cut(files: &LogFiles, index: u64, pos: u64, end: u64, why: &str) -> Result<(), LedgerError> {
    tracing::warn!(index, offset = pos, dropped_bytes = end - pos, "ledger: {why}");
    files.entries.set_len(pos).map_err(io_err("truncate entries"))?;
    files.entries.sync_all().map_err(io_err("fsync entries"))
}
