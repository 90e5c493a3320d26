//! The durable ledger: group-committed appends, proofs over the stored tree, and
//! signed checkpoints. The only part of the ledger that does IO.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::LedgerError;
use super::files::{self, Appender, LogFiles, LogView, MAX_ENTRY};
pub use super::files::{RepairMode, VerifySummary};
use super::note::{NoteSigner, NoteVerifier, SignedCheckpoint};
use super::tree::{self, Hash};

/// Most entries one group commit writes.
const MAX_BATCH: usize = 4096;
/// Longest the writer waits for more requests to join a batch.
const GATHER_WAIT: Duration = Duration::from_micros(250);
/// How often an idle writer retries opening a node level file it could not open ahead.
const LEVEL_RETRY: Duration = Duration::from_millis(100);
/// Bound of the append queue (backpressure beyond it).
const QUEUE: usize = 8192;
/// Most entries returned by one [`Ledger::entries`] call.
pub const MAX_ENTRIES_PER_READ: u64 = 10_000;
/// Name of the entries file (the source of truth) inside the ledger directory.
pub const ENTRIES_FILE: &str = files::ENTRIES;

/// Where and how the ledger runs.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// The ledger directory (`<data-dir>/ledger`).
    pub dir: PathBuf,
    /// Checkpoint origin line, also the signing key's name.
    pub origin: String,
    /// What to do about damaged records found on open.
    pub repair: RepairMode,
    /// How often the checkpointer signs a new checkpoint while entries arrive.
    pub checkpoint_interval: Duration,
    /// Bytes of zeros kept written ahead of the logical end of `entries.log` (see "Preallocation" in
    /// `docs/ledger-format.md`); 0 turns preallocation off.
    pub preallocate: u64,
}

/// The default of [`LedgerConfig::preallocate`] (`--ledger-preallocate`): 64 MiB.
pub const DEFAULT_PREALLOCATE: u64 = 64 << 20;

impl LedgerConfig {
    /// Defaults (`kla.local/ledger`, refuse damage, 1 s checkpoints, 64 MiB preallocated; 4 KiB in unit tests) for
    /// `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            origin: "kla.local/ledger".to_owned(),
            repair: RepairMode::Refuse,
            checkpoint_interval: Duration::from_secs(1),
            preallocate: files::PREALLOC_CHUNK,
        }
    }
}

type Ack = oneshot::Sender<Result<u64, LedgerError>>;

/// Whether the ledger takes appends, as its writer last found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerHealth {
    /// Appends are taken.
    Healthy,
    /// Appends are refused (every one is answered with an IO error) since `since`. `reason`
    /// says why and whether it lasts until restart; it names no file path.
    Refusing {
        /// When the first append was refused.
        since: SystemTime,
        /// What failed.
        reason: String,
    },
}

#[derive(Clone, Copy)]
struct Head {
    size: u64,
    root: Hash,
}

struct Shared {
    files: LogFiles,
    head: RwLock<Head>,
    /// The durable size, published after each batch so followers of the log wake without polling.
    size_tx: watch::Sender<u64>,
    /// Written by the writer thread when it starts or stops refusing appends.
    health: RwLock<LedgerHealth>,
}

impl Shared {
    /// Records that appends are refused for `reason` (keeping the time of the first refusal).
    fn refuse(&self, reason: String) {
        let mut h = self.health.write();
        let since = match &*h {
            LedgerHealth::Refusing { since, .. } => *since,
            LedgerHealth::Healthy => SystemTime::now(),
        };
        *h = LedgerHealth::Refusing { since, reason };
    }

    fn healthy(&self) {
        *self.health.write() = LedgerHealth::Healthy;
    }
}

/// Marks the ledger as refusing appends when the writer thread ends, normally (no handle is
/// left to see it) or by a panic (every handle's appends now fail with `Closed`).
struct WriterGone(Arc<Shared>);

impl Drop for WriterGone {
    fn drop(&mut self) {
        self.0
            .refuse("the ledger writer thread has stopped; restart kla".to_owned());
    }
}

struct Inner {
    cfg: LedgerConfig,
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<(Vec<u8>, Ack)>>,
    writer: Option<std::thread::JoinHandle<()>>,
    signer: NoteSigner,
    checkpoint: RwLock<Option<SignedCheckpoint>>,
    cp_lock: tokio::sync::Mutex<()>,
    /// The data dir's lock, closed by `drop` before `released` is set.
    lock: Option<File>,
    /// Set once the writer has stopped and the lock is closed, so a waiter may open the ledger again at once.
    released: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        drop(self.lock.take());
        self.released.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// A durable, append-only Merkle log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

/// Tells when every handle of a ledger is gone (and its directory lock with them).
pub struct Released(Arc<std::sync::atomic::AtomicBool>);

impl Released {
    /// Waits until no handle of the ledger is left and its writer and lock are closed, at most `within`; whether
    /// they are. (The last handle's count reaches zero before its drop has closed the lock, so the count alone
    /// would let a restart find the directory still locked.)
    pub async fn wait(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.0.load(std::sync::atomic::Ordering::Acquire) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

fn load_or_create_key(dir: &Path) -> Result<SigningKey, LedgerError> {
    let path = dir.join(files::KEY);
    if let Some(pem) = files::read_optional(dir, files::KEY)? {
        let mode = std::fs::metadata(&path)
            .map_err(LedgerError::io("stat ledger key"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "ledger key is readable by others");
        }
        let pem = String::from_utf8(pem).map_err(|_| LedgerError::Key("not UTF-8".into()))?;
        return SigningKey::from_pkcs8_pem(&pem)
            .map_err(|e| LedgerError::Key(format!("{}: {e}", path.display())));
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| LedgerError::Key(format!("encode: {e}")))?;
    // Owner-only (0600), and whole or absent after a crash.
    files::write_atomic(dir, files::KEY, pem.as_bytes())?;
    tracing::info!(path = %path.display(), "created ledger signing key");
    Ok(key)
}

fn read_origin(dir: &Path) -> Result<Option<String>, LedgerError> {
    Ok(files::read_optional(dir, files::ORIGIN)?.map(|b| String::from_utf8_lossy(&b).trim_end().to_owned()))
}

fn load_checkpoint(
    dir: &Path,
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Option<SignedCheckpoint>, LedgerError> {
    let Some(bytes) = files::read_optional(dir, files::CHECKPOINT)? else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|_| LedgerError::Corrupt {
        index: 0,
        detail: "checkpoint file is not UTF-8".into(),
    })?;
    let cp = SignedCheckpoint::parse_verified(&text, verifier).map_err(|e| LedgerError::Corrupt {
        index: 0,
        detail: format!("stored checkpoint does not verify with the ledger key: {e}"),
    })?;
    if cp.origin != origin {
        return Err(LedgerError::Config(format!(
            "stored checkpoint origin {:?} differs from configured origin {origin:?}",
            cp.origin
        )));
    }
    Ok(Some(cp))
}

/// The verifier key string of the ledger in `dir` (no files are created).
pub fn verifier_key_for_dir(dir: &Path) -> Result<String, LedgerError> {
    let origin =
        read_origin(dir)?.ok_or_else(|| LedgerError::NotFound(format!("no ledger at {}", dir.display())))?;
    let pem = files::read_optional(dir, files::KEY)?
        .ok_or_else(|| LedgerError::Key(format!("no key in {}", dir.display())))?;
    let pem = String::from_utf8(pem).map_err(|_| LedgerError::Key("not UTF-8".into()))?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| LedgerError::Key(e.to_string()))?;
    Ok(NoteVerifier::new(&origin, key.verifying_key())?.to_vkey())
}

/// Fully verifies the ledger in `dir` (read-only): every record checksum, leaf hash and
/// stored node, plus the latest checkpoint's signature and root.
/// `progress(bytes_done, bytes_total)` is called periodically.
pub fn verify_ledger_dir(
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifySummary, LedgerError> {
    let vkey = verifier_key_for_dir(dir)?;
    let verifier = NoteVerifier::parse(&vkey)?;
    let cp = load_checkpoint(dir, &verifier, verifier.name())?;
    files::verify_all(dir, cp.map(|c| (c.size, c.root)), progress)
}

fn writer_loop(shared: Arc<Shared>, mut appender: Appender, mut rx: mpsc::Receiver<(Vec<u8>, Ack)>) {
    let _gone = WriterGone(shared.clone());
    if let Err(e) = batch_scheduling() {
        tracing::debug!(error = %e, "ledger writer keeps the default scheduling policy");
    }
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(MAX_BATCH);
    let mut acks: Vec<Ack> = Vec::with_capacity(MAX_BATCH);
    let mut poisoned: Option<String> = None;
    // Why the node level files could not be opened ahead, while that lasts.
    let mut levels_behind: Option<String> = None;
    // Whether the last batch was refused (health says so until one succeeds).
    let mut refused = false;
    let (mut batches, mut entries, mut sync_time) = (0u64, 0u64, Duration::ZERO);
    let (mut zero_slices, mut zero_time) = (0u64, Duration::ZERO);
    let mut last_batch = 0usize;
    loop {
        // Between batches: open the level files the next batch may need, so that no append
        // opens a file. A failure (say, out of file descriptors) is retried here before every
        // batch; only a batch that reaches a level still not open is refused.
        if poisoned.is_none() {
            open_levels_ahead(&shared, &appender, &mut levels_behind);
        }
        // Idle (nothing queued): extend the zero-filled region ahead of the log by one
        // slice, then look at the queue again. Never while a request is waiting, so the
        // ack path's fdatasync never carries zero-fill writes.
        let (e, a) = match rx.try_recv() {
            Ok(req) => req,
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                if poisoned.is_none() && appender.wants_zeros() {
                    let started = std::time::Instant::now();
                    match appender.extend_zeros(&shared.files) {
                        Ok(true) => {
                            zero_slices += 1;
                            zero_time += started.elapsed();
                        }
                        Ok(false) => {}
                        // Only bytes after the logical end were involved (see `extend_zeros`): appends go on,
                        // without preallocation.
                        Err(e) => {
                            tracing::warn!(error = %e,
                                "ledger zero-fill failed; preallocation is off until restart, appends go on");
                        }
                    }
                    continue;
                }
                if levels_behind.is_some() {
                    // Retry the open while idle too: a ledger that refuses appends gets no traffic
                    // (readiness fails), so waiting for the next batch could wait forever.
                    std::thread::sleep(LEVEL_RETRY);
                    continue;
                }
                match rx.blocking_recv() {
                    Some(req) => req,
                    None => break,
                }
            }
        };
        batch.push(e);
        acks.push(a);
        // Gather: take what is queued; if fewer arrived than in the previous batch (the
        // writers we just acked are still coming back), wait a little for them so that
        // one fsync covers them too. Bounded by GATHER_WAIT.
        let gather_start = std::time::Instant::now();
        let target = (last_batch * 3 / 4).min(MAX_BATCH);
        loop {
            match rx.try_recv() {
                Ok((e, a)) => {
                    batch.push(e);
                    acks.push(a);
                    if batch.len() >= MAX_BATCH {
                        break;
                    }
                }
                Err(_) => {
                    if batch.len() >= target || gather_start.elapsed() >= GATHER_WAIT {
                        break;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
        last_batch = batch.len();
        let started = std::time::Instant::now();
        let res = if let Some(msg) = &poisoned {
            Err(msg.clone())
        } else {
            if levels_behind.is_some() {
                open_levels_ahead(&shared, &appender, &mut levels_behind);
            }
            match appender.check_levels(&shared.files, batch.len()) {
                // Nothing was written: the writer stays usable once the file opens.
                Err(e) => {
                    let msg = format!("{e}: {}", levels_behind.as_deref().unwrap_or("not opened"));
                    tracing::error!(error = %msg, "ledger batch refused: a node level file is not open");
                    shared.refuse(format!("{msg}; retried before every batch"));
                    Err(msg)
                }
                Ok(()) => appender.append_batch(&shared.files, &batch).map_err(|e| {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "ledger write failed; refusing further appends until restart");
                    shared.refuse(until_restart(&e));
                    poisoned = Some(msg.clone());
                    msg
                }),
            }
        };
        sync_time += started.elapsed();
        batches += 1;
        entries += batch.len() as u64;
        match res {
            Ok(first) => {
                if refused {
                    shared.healthy();
                    refused = false;
                }
                *shared.head.write() = Head {
                    size: appender.size(),
                    root: appender.root(),
                };
                shared.size_tx.send_replace(appender.size());
                for (i, a) in acks.drain(..).enumerate() {
                    let _ = a.send(Ok(first + i as u64));
                }
            }
            Err(msg) => {
                refused = true;
                for a in acks.drain(..) {
                    let _ = a.send(Err(LedgerError::Io {
                        context: "append".into(),
                        source: std::io::Error::other(msg.clone()),
                    }));
                }
            }
        }
        batch.clear();
    }
    tracing::info!(
        batches,
        entries,
        mean_batch = entries as f64 / batches.max(1) as f64,
        mean_commit_us = sync_time.as_micros() as f64 / batches.max(1) as f64,
        zero_slices,
        mean_zero_slice_us = zero_time.as_micros() as f64 / zero_slices.max(1) as f64,
        "ledger writer stopped"
    );
    if poisoned.is_none() {
        if let Err(e) = shared.files.sync_derived(appender.size()) {
            tracing::error!(error = %e, "ledger: syncing derived files at shutdown failed");
        }
        // A cleanly closed entries.log has no preallocated tail (readable by versions
        // without preallocation; the next open re-extends it).
        if let Err(e) = appender.release_tail(&shared.files) {
            tracing::error!(error = %e, "ledger: cutting the preallocated tail at shutdown failed");
        }
    }
}

/// The operating system's part of `e` (no file path), or all of it.
fn os_error(e: &LedgerError) -> String {
    match e {
        LedgerError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// The health reason for a write failure that stops the writer.
fn until_restart(e: &LedgerError) -> String {
    format!("{e}; appends are refused until restart")
}

/// Opens the node level files the next batch may write to (see [`Appender::open_levels_ahead`]);
/// `behind` holds the error while that fails, so it is logged once and retried.
fn open_levels_ahead(shared: &Shared, appender: &Appender, behind: &mut Option<String>) {
    match appender.open_levels_ahead(&shared.files, MAX_BATCH as u64) {
        Ok(()) => {
            if behind.take().is_some() {
                tracing::info!("ledger: node level files opened ahead again");
                shared.healthy();
            }
        }
        Err(e) => {
            if behind.is_none() {
                tracing::warn!(error = %e, "ledger: cannot open node level files ahead; retrying before each batch");
            }
            *behind = Some(os_error(&e));
        }
    }
}

/// Puts the calling thread under `SCHED_BATCH` (its nice value is kept).
///
/// Why: every append wakes the writer, and under the default policy a woken writer
/// preempts the request thread that woke it. On a busy core that hands the CPU back and
/// forth once or twice per decision, and each batch holds one or two entries. Under
/// `SCHED_BATCH` the wake-up does not preempt: the request thread finishes the requests
/// it has ready (queueing their entries), then the writer takes them in one batch and one
/// `fdatasync`. On an idle core the writer still runs at once, so latency is unchanged
/// when there is CPU to spare. Unprivileged threads may switch to `SCHED_BATCH`.
///
/// Public so that the durable load-test baseline (`examples/bare_hyper.rs`) schedules its
/// writer the same way.
#[allow(unsafe_code)]
pub fn batch_scheduling() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler(2) reads one `sched_param` through the pointer, which
    // points at the initialised local above, alive for the whole call; pid 0 names the
    // calling thread. The call writes no memory of this process.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Ledger {
    /// A watch on this ledger's release (shutdown waits on it, so the data dir is free when the server is done).
    pub fn released(&self) -> Released {
        Released(self.inner.released.clone())
    }

    /// Opens (creating if needed) the ledger in `cfg.dir`, recovering from a crash.
    /// Cost is O(entries after the latest checkpoint), not O(log size). Blocking: call it
    /// before serving or from `spawn_blocking`.
    pub fn open(cfg: LedgerConfig) -> Result<Ledger, LedgerError> {
        let dir = cfg.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(LedgerError::io(format!("create ledger dir {}", dir.display())))?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(files::LOCK))
            .map_err(LedgerError::io("open lock file"))?;
        // A lock that frees within a moment is waited for: a child process spawned by the same program briefly
        // shares every descriptor between its fork and its exec, so a just-closed ledger can still be locked.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while lock.try_lock().is_err() {
            if std::time::Instant::now() >= deadline {
                return Err(LedgerError::Locked(dir.display().to_string()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match read_origin(&dir)? {
            Some(o) if o != cfg.origin => {
                return Err(LedgerError::Config(format!(
                    "ledger was created with origin {o:?}, configured origin is {:?}",
                    cfg.origin
                )));
            }
            Some(_) => {}
            None => files::write_atomic(&dir, files::ORIGIN, format!("{}\n", cfg.origin).as_bytes())?,
        }
        let signer = NoteSigner::new(&cfg.origin, load_or_create_key(&dir)?)?;
        let checkpoint = load_checkpoint(&dir, signer.verifier(), &cfg.origin)?;
        let cp_size = checkpoint.as_ref().map_or(0, |c| c.size);
        let opened = files::open_log_files(&dir, cfg.repair, cp_size)?;
        opened
            .appender
            .open_levels_ahead(&opened.files, MAX_BATCH as u64)?;
        let view = LogView {
            files: &opened.files,
            size: opened.appender.size(),
        };
        if let Some(cp) = &checkpoint
            && tree::root(&view, cp.size)? != cp.root
        {
            return Err(LedgerError::Corrupt {
                index: cp.size.saturating_sub(1),
                detail: "stored tree does not match the signed checkpoint root".into(),
            });
        }
        let head = Head {
            size: opened.appender.size(),
            root: opened.appender.root(),
        };
        let shared = Arc::new(Shared {
            files: opened.files,
            head: RwLock::new(head),
            size_tx: watch::Sender::new(head.size),
            health: RwLock::new(LedgerHealth::Healthy),
        });
        let (tx, rx) = mpsc::channel(QUEUE);
        let w_shared = shared.clone();
        let mut appender = opened.appender;
        appender.preallocate(cfg.preallocate);
        let writer = std::thread::Builder::new()
            .name("kla-ledger-writer".into())
            .spawn(move || writer_loop(w_shared, appender, rx))
            .map_err(LedgerError::io("spawn ledger writer"))?;
        Ok(Ledger {
            inner: Arc::new(Inner {
                cfg,
                shared,
                tx: Some(tx),
                writer: Some(writer),
                signer,
                checkpoint: RwLock::new(checkpoint),
                cp_lock: tokio::sync::Mutex::new(()),
                lock: Some(lock),
                released: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            }),
        })
    }

    /// Appends canonical entry bytes (see [`super::Entry::encode`]); resolves with the
    /// entry's index once it is fsynced. Concurrent appends share one fsync.
    pub async fn append(&self, entry_bytes: Vec<u8>) -> Result<u64, LedgerError> {
        if entry_bytes.is_empty() || entry_bytes.len() > MAX_ENTRY {
            return Err(LedgerError::InvalidEntry(format!(
                "entry must be 1..={MAX_ENTRY} bytes, got {}",
                entry_bytes.len()
            )));
        }
        let tx = self.inner.tx.as_ref().ok_or(LedgerError::Closed)?;
        let (ack, rx) = oneshot::channel();
        tx.send((entry_bytes, ack))
            .await
            .map_err(|_| LedgerError::Closed)?;
        rx.await.map_err(|_| LedgerError::Closed)?
    }

    fn head(&self) -> Head {
        *self.inner.shared.head.read()
    }

    fn view(&self) -> LogView<'_> {
        LogView {
            files: &self.inner.shared.files,
            size: self.head().size,
        }
    }

    /// Number of durable entries.
    pub fn size(&self) -> u64 {
        self.head().size
    }

    /// Follows the durable size: the receiver sees every size the log reaches after its batch is fsynced (sizes
    /// of several batches may coalesce into the newest).
    pub fn watch_size(&self) -> watch::Receiver<u64> {
        self.inner.shared.size_tx.subscribe()
    }

    /// Whether appends are taken. A write or sync failure makes the writer refuse every later
    /// append until restart (the state of the files is unknown; open recovers them); a node
    /// level file that could not be opened ahead refuses batches only until it opens.
    pub fn health(&self) -> LedgerHealth {
        self.inner.shared.health.read().clone()
    }

    /// The canonical bytes of entry `index`.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let size = self.size();
        if index >= size {
            return Err(LedgerError::NotFound(format!(
                "no entry {index} (log size {size})"
            )));
        }
        self.inner.shared.files.record(index)
    }

    /// Entries `[start, end)`, at most [`MAX_ENTRIES_PER_READ`] of them.
    pub fn entries(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, LedgerError> {
        let size = self.size();
        if start > end || end > size {
            return Err(LedgerError::InvalidRange(format!(
                "entries [{start}, {end}) outside log of size {size}"
            )));
        }
        if end - start > MAX_ENTRIES_PER_READ {
            return Err(LedgerError::InvalidRange(format!(
                "at most {MAX_ENTRIES_PER_READ} entries per read"
            )));
        }
        (start..end).map(|i| self.inner.shared.files.record(i)).collect()
    }

    /// The stored RFC 6962 leaf hash of entry `index`.
    pub fn leaf_hash(&self, index: u64) -> Result<Hash, LedgerError> {
        let size = self.size();
        if index >= size {
            return Err(LedgerError::NotFound(format!(
                "no entry {index} (log size {size})"
            )));
        }
        self.inner.shared.files.node(0, index)
    }

    /// Root hash of the tree of the first `size` entries.
    pub fn root(&self, size: u64) -> Result<Hash, LedgerError> {
        let head = self.head();
        if size == head.size {
            return Ok(head.root);
        }
        tree::root(&self.view(), size)
    }

    /// RFC 9162 inclusion proof of entry `index` in the tree of `tree_size`.
    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<Vec<Hash>, LedgerError> {
        tree::inclusion_proof(&self.view(), index, tree_size)
    }

    /// RFC 9162 consistency proof between tree sizes `from` and `to`.
    pub fn consistency_proof(&self, from: u64, to: u64) -> Result<Vec<Hash>, LedgerError> {
        tree::consistency_proof(&self.view(), from, to)
    }

    /// The latest signed checkpoint, if one was ever issued.
    pub fn latest_checkpoint(&self) -> Option<SignedCheckpoint> {
        self.inner.checkpoint.read().clone()
    }

    /// Whether entry `index` is covered by the latest signed checkpoint.
    pub fn is_anchored(&self, index: u64) -> bool {
        self.inner
            .checkpoint
            .read()
            .as_ref()
            .is_some_and(|c| index < c.size)
    }

    /// Signs and persists a checkpoint over all durable entries (returns the latest one
    /// unchanged if nothing was appended since).
    pub async fn checkpoint_now(&self) -> Result<SignedCheckpoint, LedgerError> {
        let _guard = self.inner.cp_lock.lock().await;
        let head = self.head();
        if let Some(cp) = self.latest_checkpoint()
            && cp.size == head.size
        {
            return Ok(cp);
        }
        let cp = self
            .inner
            .signer
            .checkpoint(&self.inner.cfg.origin, head.size, head.root);
        let me = self.clone();
        let text = cp.text().to_owned();
        tokio::task::spawn_blocking(move || -> Result<(), LedgerError> {
            let log_files = &me.inner.shared.files;
            log_files.sync_derived(head.size)?;
            files::write_atomic(log_files.dir(), files::CHECKPOINT, text.as_bytes())
        })
        .await
        .map_err(|e| LedgerError::Io {
            context: "checkpoint task".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
        *self.inner.checkpoint.write() = Some(cp.clone());
        Ok(cp)
    }

    /// Spawns the checkpointer: signs a checkpoint every `checkpoint_interval` while
    /// entries arrive, and a final one when `shutdown` is cancelled.
    pub fn spawn_checkpointer(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.inner.cfg.checkpoint_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stop = tokio::select! {
                    () = shutdown.cancelled() => true,
                    _ = tick.tick() => false,
                };
                let behind = me.latest_checkpoint().is_none_or(|c| c.size != me.size());
                if behind && let Err(e) = me.checkpoint_now().await {
                    tracing::error!(error = %e, "ledger checkpoint failed");
                }
                if stop {
                    break;
                }
            }
        })
    }

    /// The verifier key string (`<name>+<hex id>+<base64 key>`) for checkpoints.
    pub fn verifier_key(&self) -> String {
        self.inner.signer.verifier().to_vkey()
    }

    /// The 4-byte key id of the ledger key, hex encoded.
    pub fn key_id(&self) -> String {
        hex::encode(self.inner.signer.verifier().key_id())
    }

    /// The checkpoint origin.
    pub fn origin(&self) -> &str {
        &self.inner.cfg.origin
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
