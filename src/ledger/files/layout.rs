//! The on-disk layout of the ledger directory: file names, the record framing of
//! `entries.log`, the limits, the `synced` marker's encoding, and the two ways files are
//! written outside the log itself (atomic replace, directory fsync). No state: everything
//! here is a constant or a function of its arguments. The format is in
//! `docs/ledger-format.md`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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

/// The `synced` marker: how many entries' derived data (offsets, node levels) is durable,
/// followed by the first 8 bytes of the SHA-256 of that number.
pub(super) fn encode_marker(size: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&size.to_le_bytes());
    let d = Sha256::digest(&b[..8]);
    b[8..].copy_from_slice(&d[..8]);
    b
}

/// The size a `synced` marker records, if its checksum holds.
pub(super) fn decode_marker(b: &[u8]) -> Option<u64> {
    if b.len() != 16 {
        return None;
    }
    let d = Sha256::digest(&b[..8]);
    if b[8..] != d[..8] {
        return None;
    }
    Some(u64::from_le_bytes(b[..8].try_into().ok()?))
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
