//! The full verification pass ([`verify_all`], behind `kla ledger verify` and the startup
//! check): every record's checksum, offset, leaf hash and stored node, the root at the
//! signed checkpoint, and every byte after the logical end. One thread reads, checksums and
//! leaf-hashes records; the calling thread rebuilds the tree and compares. Read-only: it
//! takes no lock and writes nothing.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::layout::{
    ENTRIES, HEADER, MAX_ENTRY, MAX_LEVELS, OFFSETS, ZERO_SCAN, crc, io_err, level_name, split_header,
};
use crate::ledger::LedgerError;
use crate::ledger::tree::{self, Frontier, Hash};

/// Outcome of a full verification pass.
#[derive(Clone, Debug)]
pub struct VerifySummary {
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
