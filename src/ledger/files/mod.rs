//! All file IO of the ledger directory, synchronous and called from the writer thread, the
//! checkpointer's blocking task or `kla ledger verify`. One idea per file: [`layout`] (names,
//! framing, markers, atomic writes), [`read`] (the open files and positional reads of records
//! and nodes), [`append`] (the writer's batches and the zero-filled tail), [`recover`]
//! (recovery on open) and [`verify`] (the full check). The format is in
//! `docs/ledger-format.md`.

mod append;
mod layout;
mod read;
mod recover;
mod verify;

pub(crate) use append::{Appender, PREALLOC_CHUNK};
pub(crate) use layout::{CHECKPOINT, ENTRIES, KEY, LOCK, MAX_ENTRY, ORIGIN, read_optional, write_atomic};
#[cfg(test)]
pub(crate) use layout::{OFFSETS, SYNCED, crc, marker_size};
pub(crate) use read::{LogFiles, LogView};
pub use recover::RepairMode;
pub(crate) use recover::open_log_files;
pub use verify::VerifySummary;
pub(crate) use verify::verify_all;
