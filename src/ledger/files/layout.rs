//! The on-disk layout of the ledger directory: file names, the record framing of
//! `entries.log`, the limits, the `synced` marker's encoding, and the two ways files are
//! written outside the log itself (atomic replace, directory fsync). No state: everything
//! here is a constant or a function of its arguments. The format is in
//! `docs/ledger-format.md`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::ledger::LedgerError;

pub(crate) const ENTRIES: &str = "entries.log";
pub(crate) const OFFSETS: &str = "offsets.idx";
pub(crate) const SYNCED: &str = "synced";
pub(crate) const CHECKPOINT: &str = "checkpoint";
pub(crate) const KEY: &str = "ledger.key";
pub(crate) const ORIGIN: &str = "origin";
pub(crate) const LOCK: &str = "LOCK";
/// Record header: u32 LE length, u32 LE CRC-32 of the entry bytes.
pub(crate) const HEADER: u64 = 8;
pub(crate) const MAX_ENTRY: usize = 16 << 20;
pub(super) const MAX_LEVELS: usize = 64;

/// Read size when checking that a tail holds only zeros.
pub(super) const ZERO_SCAN: usize = 1 << 20;

pub(super) fn level_name(level: usize) -> String {
    format!("level-{level:02}.hash")
}

pub(super) fn io_err(ctx: impl Into<String>) -> impl FnOnce(std::io::Error) -> LedgerError {
    LedgerError::io(ctx)
}

pub(super) fn open_rw(path: &Path) -> Result<File, LedgerError> {
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

/// The record checksum (CRC-32 of the entry bytes).
pub(crate) fn crc(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Bytes of one `synced` marker record: `u64 LE` size, then the first 8 bytes of the SHA-256
/// of those 8 bytes.
const MARKER_RECORD: usize = 16;

fn encode_marker(size: u64) -> [u8; MARKER_RECORD] {
    let mut b = [0u8; MARKER_RECORD];
    b[..8].copy_from_slice(&size.to_le_bytes());
    let d = Sha256::digest(&b[..8]);
    b[8..].copy_from_slice(&d[..8]);
    b
}

fn decode_marker(b: &[u8]) -> Option<u64> {
    if b.len() != MARKER_RECORD {
        return None;
    }
    let d = Sha256::digest(&b[..8]);
    if b[8..] != d[..8] {
        return None;
    }
    Some(u64::from_le_bytes(b[..8].try_into().ok()?))
}

/// The larger size recorded by an intact slot of a `synced` file's contents and that slot's
/// number, if any slot is intact. A torn write damages only the slot it wrote, so the other
/// one still holds the previous size.
fn decode_marker_slots(b: &[u8]) -> Option<(u64, usize)> {
    b.chunks(MARKER_RECORD)
        .take(2)
        .enumerate()
        .filter_map(|(slot, c)| decode_marker(c).map(|size| (size, slot)))
        .max()
}

/// The size a `synced` file's contents record (0 when no slot is intact).
#[cfg(test)]
pub(crate) fn marker_size(b: &[u8]) -> u64 {
    decode_marker_slots(b).map_or(0, |(size, _)| size)
}

/// The `synced` marker, kept open so that advancing it creates no file: how many entries'
/// derived data (offsets, node levels) is durable. Two fixed-size slots at offsets 0 and 16;
/// each update overwrites (`pwrite` + `fdatasync`) the slot that does not hold the current
/// size, so a crash during the write leaves the previous size intact in the other slot.
pub(super) struct Marker {
    file: File,
    /// The size the marker records.
    size: u64,
    /// The slot that holds `size` (durably); the next update goes to the other one.
    slot: usize,
}

impl Marker {
    /// Opens (creating if needed) the `synced` file in `dir` and reads it; a missing file or
    /// one without an intact slot records 0 (nothing trusted, everything re-verified).
    pub(super) fn open(dir: &Path) -> Result<Marker, LedgerError> {
        let path = dir.join(SYNCED);
        let existed = path.exists();
        let file = open_rw(&path)?;
        if !existed {
            sync_dir(dir)?;
        }
        let mut b = Vec::with_capacity(2 * MARKER_RECORD);
        (&file)
            .take(2 * MARKER_RECORD as u64)
            .read_to_end(&mut b)
            .map_err(io_err("read synced marker"))?;
        let (size, slot) = decode_marker_slots(&b).unwrap_or((0, 1));
        Ok(Marker { file, size, slot })
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    fn write_slot(&self, slot: usize, size: u64) -> Result<(), LedgerError> {
        self.file
            .write_all_at(&encode_marker(size), (slot * MARKER_RECORD) as u64)
            .map_err(io_err("write synced marker"))?;
        self.file.sync_data().map_err(io_err("fdatasync synced marker"))
    }

    /// Records `size`; the caller has made the derived data up to it durable. A size below the
    /// current one (recovery after a cut) goes to both slots, the spare one first: a crash in
    /// between still reads the larger size, as if the cut had not been recorded, and the next
    /// recovery does it again.
    pub(super) fn set(&mut self, size: u64) -> Result<(), LedgerError> {
        let spare = 1 - self.slot;
        self.write_slot(spare, size)?;
        if size < self.size {
            self.write_slot(self.slot, size)?;
        }
        (self.size, self.slot) = (size, spare);
        Ok(())
    }
}

/// The `(length, CRC-32)` of a record header.
pub(super) fn split_header(h: &[u8; HEADER as usize]) -> (u32, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, sum)
}

/// Reads a file in `dir` if it exists.
pub(crate) fn read_optional(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, LedgerError> {
    match std::fs::read(dir.join(name)) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LedgerError::io(format!("read {name}"))(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn on_disk(dir: &Path) -> Vec<u8> {
        std::fs::read(dir.join(SYNCED)).expect("marker")
    }

    #[test]
    fn a_torn_marker_write_leaves_the_previous_size() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut m = Marker::open(tmp.path()).expect("open");
        assert_eq!(m.size(), 0);
        for size in [10, 20, 30] {
            m.set(size).expect("set");
            assert_eq!(marker_size(&on_disk(tmp.path())), size);
        }
        // The next write goes to the slot that does not hold 30; tear it half-way.
        let spare = 1 - m.slot;
        let half = &encode_marker(40)[..MARKER_RECORD / 2];
        m.file
            .write_all_at(half, (spare * MARKER_RECORD) as u64)
            .expect("tear");
        assert_eq!(marker_size(&on_disk(tmp.path())), 30);
        drop(m);
        let mut m = Marker::open(tmp.path()).expect("reopen");
        assert_eq!(m.size(), 30);
        // The torn slot is the one written next, so the intact 30 survives another tear.
        m.set(40).expect("set");
        assert_eq!(marker_size(&on_disk(tmp.path())), 40);
        // Both slots damaged: no marker (nothing trusted).
        std::fs::write(tmp.path().join(SYNCED), [0xffu8; 2 * MARKER_RECORD]).expect("damage");
        assert_eq!(Marker::open(tmp.path()).expect("reopen").size(), 0);
    }

    #[test]
    fn a_single_record_marker_reads_and_advances_in_place() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join(SYNCED), encode_marker(7)).expect("one record");
        let mut m = Marker::open(tmp.path()).expect("open");
        assert_eq!(m.size(), 7);
        m.set(9).expect("set");
        let b = on_disk(tmp.path());
        assert_eq!(b.len(), 2 * MARKER_RECORD);
        assert_eq!(decode_marker(&b[..MARKER_RECORD]), Some(7));
        assert_eq!(decode_marker(&b[MARKER_RECORD..]), Some(9));
    }

    #[test]
    fn lowering_the_marker_writes_both_slots() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut m = Marker::open(tmp.path()).expect("open");
        m.set(50).expect("set");
        m.set(60).expect("set");
        m.set(5).expect("lower");
        let b = on_disk(tmp.path());
        assert_eq!(decode_marker(&b[..MARKER_RECORD]), Some(5));
        assert_eq!(decode_marker(&b[MARKER_RECORD..]), Some(5));
        assert_eq!(Marker::open(tmp.path()).expect("reopen").size(), 5);
    }
}
