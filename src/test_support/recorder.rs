//! A recorder over a fresh ledger and store in a temporary directory, as `app` builds one (the ledger in
//! `<data>/ledger`, the store in `<data>`), for the unit tests of the recorder and of what follows it.
#![allow(clippy::expect_used)] // Test set-up: a temporary directory that cannot be made is a failed test.

use crate::ledger::{Ledger, LedgerConfig, LedgerError};
use crate::recorder::Recorder;
use crate::store::Store;
use std::path::Path;
use tempfile::TempDir;

/// A recorder, a handle on its store, and the directory both live in (removed when this is dropped, after the
/// recorder and store fields, which are declared first and so dropped first).
pub(crate) struct TempRecorder {
    pub(crate) recorder: Recorder,
    /// The recorder's store, for tests that read the index or break it on purpose.
    pub(crate) store: Store,
    pub(crate) dir: TempDir,
}

impl TempRecorder {
    /// Opens a ledger and a store in a new temporary directory and a recorder over them; spawns the index writer
    /// on the current runtime, so call it inside one.
    pub(crate) fn new() -> TempRecorder {
        let dir = tempfile::tempdir().expect("tmp");
        let ledger = open_ledger(dir.path()).expect("ledger");
        let store = Store::open(dir.path()).expect("store");
        let recorder = Recorder::new(ledger, store.clone());
        TempRecorder { recorder, store, dir }
    }
}

/// Opens the ledger of data directory `dir` again (it fails while another handle still holds its lock).
pub(crate) fn open_ledger(dir: &Path) -> Result<Ledger, LedgerError> {
    Ledger::open(LedgerConfig::new(dir.join("ledger")))
}
