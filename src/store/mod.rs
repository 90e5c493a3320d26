//! The embedded store: the only module that knows SQL.
//!
//! It owns the SQLite database in the data dir (WAL mode, migrations embedded in the binary, schema version in
//! `PRAGMA user_version`) and exposes typed async functions: callers never see a `Connection`, a row or a SQL string,
//! so a PostgreSQL backend can replace it for multi-replica deployments without touching the rest of kla.
//! It must not know HTTP, policy or ledger internals: it stores and returns plain records.
//!
//! Blocking SQLite calls run on tokio's blocking pool. Writes go through one connection (SQLite allows one writer
//! at a time anyway); reads use a small pool of read-only connections that WAL lets run beside the writer.

mod agents;
mod approvals;
mod decisions;
mod desk;
mod events;
mod executions;
mod idempotency;
mod migrations;
mod packs;
mod spelled;
mod webhooks;

pub use agents::{AgentRecord, AgentVersionRecord, AgentVersionRow};
pub use approvals::{
    ApprovalFilter, ApprovalRecord, ApprovalRow, ApprovalStatus, ApprovalUpdate, ApprovalUse,
};
pub use decisions::{DecisionRecord, IndexRows, LineageKey, LineagePage, LineageRecord};
pub use events::{EventPositions, EventWindow};
pub use executions::{ExecutionFilter, ExecutionRecord, ExecutionRow, ExecutionStatus, ExecutionUpdate};
pub use idempotency::{IN_FLIGHT_LEASE_SECS, IdempotencyBegin, StoredResponse};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Errors of the store. All of them are kla's (or the disk's) fault, never the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite returned an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The blocking task running the query failed.
    #[error("store task failed: {0}")]
    Task(String),
    /// A stored value could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The database was written by a newer kla.
    #[error("database schema version {found} is newer than this kla supports ({supported})")]
    TooNew {
        /// Version found in the file.
        found: i64,
        /// Highest version this binary knows.
        supported: i64,
    },
}

impl crate::error::Classify for StoreError {
    fn class(&self) -> crate::error::Class {
        match self {
            StoreError::Sqlite(_) | StoreError::Task(_) => crate::error::Class::Unavailable,
            StoreError::Corrupt(_) | StoreError::TooNew { .. } => crate::error::Class::Internal,
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

const READERS: usize = 4;

/// Handle to the embedded store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    /// A second write connection for the ledger index only: `synchronous=NORMAL`, because the index is derived
    /// from the (already fsynced) ledger and rebuilt from it after a crash. SQLite serialises it with `writer`.
    index_writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

impl Store {
    /// Opens (creating if needed) `kla.db` in `data_dir`, applies pending migrations, and clears idempotency
    /// reservations left in flight by a previous process (nothing can still be running them).
    pub fn open(data_dir: &Path) -> Result<Store> {
        let path = data_dir.join("kla.db");
        let mut writer = Connection::open(&path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.pragma_update(None, "foreign_keys", "ON")?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::apply(&mut writer)?;
        idempotency::clear_in_flight(&writer)?;
        let index_writer = Connection::open(&path)?;
        index_writer.pragma_update(None, "synchronous", "NORMAL")?;
        index_writer.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let c = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            readers.push(Mutex::new(c));
        }
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(writer),
                index_writer: Mutex::new(index_writer),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool with the connection `pick` selects, holding its lock for the call.
    async fn on<R, F>(&self, pick: fn(&Inner) -> &Mutex<Connection>, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut pick(&inner).lock()))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` with the write connection (`synchronous=FULL`).
    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        self.on(|i| &i.writer, f).await
    }

    /// Runs `f` with the index write connection (`synchronous=NORMAL`).
    async fn write_index<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        self.on(|i| &i.index_writer, f).await
    }

    /// Runs `f` with one of the read connections (round robin).
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        self.on(
            |i| &i.readers[i.next_reader.fetch_add(1, Ordering::Relaxed) % i.readers.len()],
            move |c| f(c),
        )
        .await
    }

    /// The SQLite library version, e.g. `3.50.2`.
    pub fn sqlite_version() -> &'static str {
        rusqlite::version()
    }

    /// Proves the store can take a write right now (used by `/readyz`).
    pub async fn check_writable(&self) -> Result<()> {
        // Takes the write lock and gives it back: proves writability without a write or an fsync, so probing
        // `/readyz` costs the real writers nothing.
        self.write(|c| {
            c.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
impl Store {
    /// Makes every insert into `decisions` fail (`true`) or succeed again (`false`) through a trigger, so tests
    /// of the index's failure path stay without SQL of their own.
    pub(crate) async fn fail_decision_inserts(&self, fail: bool) -> Result<()> {
        self.write(move |c| {
            c.execute_batch(if fail {
                "CREATE TRIGGER injected_fault BEFORE INSERT ON decisions BEGIN SELECT RAISE(ABORT, 'injected'); END;"
            } else {
                "DROP TRIGGER injected_fault;"
            })?;
            Ok(())
        })
        .await
    }
}
