//! [`PolicyManager`]: the runtime holder of the active [`PolicySet`].
//!
//! Reload policy: every pack directory is loaded independently. A pack that is refused keeps
//! its last good version active (if there was one) and a [`PolicyEvent::Refused`] is sent; the
//! other packs still update. A pack directory that disappears keeps its last good version too
//! (removing a pack takes a restart). The new set is swapped in atomically (`ArcSwap`); in-flight
//! decisions finish on the old set.
//!
//! Rollback protection: a signed pack older (SemVer) than the newest version of its name this kla
//! has activated is refused, unless `allow_rollback`. The newest versions ("floors") are kept in
//! memory and, through [`PackFloors`], across restarts in kla's store. Unsigned packs are exempt.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::mpsc::UnboundedSender;

use super::engine::{CompiledPack, DEFAULT_DEADLINE, PolicySet};
use super::pack::PACK_FILE;
use super::signing::TrustedKey;
use super::types::{Decision, EvalInput, Mode};
use super::{PolicyError, load_pack};

/// How the manager finds and trusts packs.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// A pack directory (holding `pack.yaml`) or a folder whose subdirectories are packs
    /// (loaded in sorted directory-name order).
    pub policies_dir: PathBuf,
    /// Keys allowed to sign packs.
    pub trusted_keys: Vec<TrustedKey>,
    /// Accept packs without `pack.sig.json` (local development only; logs a warning). A pack
    /// that has a signature file must still verify.
    pub allow_unsigned: bool,
    /// Per-decision evaluation deadline (default 5 ms).
    pub deadline: Duration,
    /// Accept a signed pack older than the newest version of its name activated before (logs a warning and
    /// lowers the floor to it).
    pub allow_rollback: bool,
}

impl PolicyConfig {
    /// A config with the default deadline and `allow_unsigned = false`.
    pub fn new(policies_dir: impl Into<PathBuf>, trusted_keys: Vec<TrustedKey>) -> Self {
        PolicyConfig {
            policies_dir: policies_dir.into(),
            trusted_keys,
            allow_unsigned: false,
            deadline: DEFAULT_DEADLINE,
            allow_rollback: false,
        }
    }
}

/// Events for the tamper-evident ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PolicyEvent {
    /// A new set became active (also sent at startup).
    Activated {
        /// The packs now active.
        packs: Vec<PackStatus>,
    },
    /// A pack (or the whole policies directory) was refused.
    Refused {
        /// Pack directory (or policies dir).
        source: String,
        /// Why, naming file/rule/line where possible.
        reason: String,
    },
}

/// One active pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PackStatus {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.version`.
    pub version: String,
    /// SHA-256 over the signed manifest.
    pub digest: String,
    /// Signer key id (None when loaded unsigned).
    pub signer_key_id: Option<String>,
    /// Pack mode.
    pub mode: Mode,
    /// Number of rules.
    pub rules: usize,
    /// Directory it was loaded from.
    pub source: String,
    /// When this version was loaded.
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: OffsetDateTime,
}

/// The last refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// Pack directory (or policies dir).
    pub source: String,
    /// Why.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// What `GET /v1/policies` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Increments on every swap.
    pub generation: u64,
    /// Active packs in evaluation order.
    pub packs: Vec<PackStatus>,
    /// Refusals of the most recent reload (empty when all packs loaded).
    pub refused: Vec<Refusal>,
    /// The most recent refusal ever seen.
    pub last_refusal: Option<Refusal>,
}

struct Loaded {
    pack: Arc<CompiledPack>,
    status: PackStatus,
}

struct State {
    /// Last good version of each pack, by directory.
    last_good: BTreeMap<PathBuf, Loaded>,
    generation: u64,
    refused: Vec<Refusal>,
    last_refusal: Option<Refusal>,
    /// Newest activated version of each signed pack name (this process; the store has the durable copy).
    floors: std::collections::HashMap<String, semver::Version>,
}

/// Holds the active policy set; cheap to share (`Arc<PolicyManager>`).
pub struct PolicyManager {
    config: PolicyConfig,
    active: ArcSwap<PolicySet>,
    state: Mutex<State>,
    events: Option<UnboundedSender<PolicyEvent>>,
    audit: Option<AuditHook>,
    floors: Option<Box<dyn PackFloors>>,
}

/// Why a hook failed (the ledger or store behind it). The manager refuses what the hook guarded and reports the
/// error; the source error is kept for the log.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HookError(Box<dyn std::error::Error + Send + Sync>);

impl HookError {
    /// Wraps the error of whatever the hook writes to.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> HookError {
        HookError(Box::new(e))
    }
}

impl From<&str> for HookError {
    fn from(m: &str) -> HookError {
        HookError(m.into())
    }
}

impl crate::error::Classify for HookError {
    fn class(&self) -> crate::error::Class {
        crate::error::Class::Unavailable
    }
}

/// Keeps the newest activated version of each signed pack across restarts (kla's store). Called from the
/// reloading thread (blocking).
pub trait PackFloors: Send + Sync {
    /// The recorded floor of pack `name`.
    fn floor(&self, name: &str) -> Result<Option<String>, HookError>;
    /// Records `version` (with the pack's digest) as the floor of `name`; durable on return.
    fn set_floor(&self, name: &str, version: &str, digest: &str) -> Result<(), HookError>;
}

/// Records a policy event durably before it takes effect (kla's ledger). An error vetoes an activation: a set
/// that could not be recorded is not activated, so every decision names a pack state the ledger already holds.
pub type AuditHook = Box<dyn Fn(&PolicyEvent) -> Result<(), HookError> + Send + Sync>;

impl std::fmt::Debug for PolicyManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PolicyManager {
    /// Loads every pack once (exactly like [`reload`](Self::reload)) and returns the manager.
    /// Never fails: refused packs are reported through [`status`](Self::status) and events,
    /// and with no valid pack every decision fails closed (`block` / `POLICY_UNAVAILABLE`).
    pub fn new(config: PolicyConfig, events: Option<UnboundedSender<PolicyEvent>>) -> Self {
        Self::build(config, events, None, None)
    }

    /// Like [`new`](Self::new), but every event goes through `audit` first, synchronously, and an activation
    /// happens only once `audit` has recorded it. Reloads block on the hook: call from blocking threads.
    /// `floors`, when given, keeps the rollback floors across restarts.
    pub fn with_audit(config: PolicyConfig, audit: AuditHook, floors: Option<Box<dyn PackFloors>>) -> Self {
        Self::build(config, None, Some(audit), floors)
    }

    fn build(
        config: PolicyConfig,
        events: Option<UnboundedSender<PolicyEvent>>,
        audit: Option<AuditHook>,
        floors: Option<Box<dyn PackFloors>>,
    ) -> Self {
        let manager = PolicyManager {
            active: ArcSwap::from_pointee(PolicySet::new(Vec::new(), config.deadline)),
            config,
            state: Mutex::new(State {
                last_good: BTreeMap::new(),
                generation: 0,
                refused: Vec::new(),
                last_refusal: None,
                floors: Default::default(),
            }),
            events,
            audit,
            floors,
        };
        manager.reload();
        manager
    }

    /// The config the manager was built with.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Evaluates against the active set (lock-free load). Never fails: see
    /// [`PolicySet::evaluate`].
    pub fn evaluate(&self, input: &EvalInput) -> Decision {
        self.active.load().evaluate(input)
    }

    /// The active set (e.g. to evaluate many inputs against one generation).
    pub fn active(&self) -> Arc<PolicySet> {
        self.active.load_full()
    }

    /// Re-reads the policies directory exactly as at startup. Each refused pack keeps its last
    /// good version; the resulting set is swapped in and an `Activated` event sent. Blocking
    /// (file IO + compilation): call from `spawn_blocking` in async code.
    pub fn reload(&self) -> PolicyStatus {
        let mut state = self.state.lock();
        let now = OffsetDateTime::now_utc();
        let mut refused = Vec::new();
        let mut next: BTreeMap<PathBuf, Loaded> = BTreeMap::new();
        match discover(&self.config.policies_dir) {
            Err(e) => {
                // Whole directory unreadable: keep everything as it was.
                refused.push(Refusal {
                    source: self.config.policies_dir.display().to_string(),
                    reason: e.to_string(),
                    at: now,
                });
                for (dir, l) in &state.last_good {
                    next.insert(
                        dir.clone(),
                        Loaded {
                            pack: l.pack.clone(),
                            status: l.status.clone(),
                        },
                    );
                }
            }
            Ok(dirs) => {
                let seen: std::collections::HashSet<PathBuf> = dirs.iter().cloned().collect();
                // A pack directory that vanished keeps its last good version: a deploy that replaces a pack
                // with `rm -rf` + copy must not open a window in which its block rules are gone (fail closed).
                // Removing a pack for good takes a restart.
                for (dir, k) in &state.last_good {
                    if !seen.contains(dir) {
                        let reason = format!(
                            "pack directory is missing (keeping last good version {}@{}; restart kla to remove a pack)",
                            k.status.name, k.status.version
                        );
                        tracing::error!(pack = %dir.display(), %reason, "policy pack refused");
                        refused.push(Refusal {
                            source: dir.display().to_string(),
                            reason,
                            at: now,
                        });
                        next.insert(
                            dir.clone(),
                            Loaded {
                                pack: k.pack.clone(),
                                status: k.status.clone(),
                            },
                        );
                    }
                }
                for dir in dirs {
                    let loaded = load_pack(&dir, &self.config.trusted_keys, self.config.allow_unsigned)
                        .map_err(|e| e.to_string())
                        .and_then(|pack| self.check_floor(&state, &pack).map(|()| pack));
                    match loaded {
                        Ok(pack) => {
                            let prev = state.last_good.get(&dir);
                            let loaded_at = match prev {
                                Some(p) if p.status.digest == pack.pack_ref().digest => p.status.loaded_at,
                                _ => now,
                            };
                            let status = status_of(&pack, &dir, loaded_at);
                            next.insert(
                                dir,
                                Loaded {
                                    pack: Arc::new(pack),
                                    status,
                                },
                            );
                        }
                        Err(e) => {
                            let kept = state.last_good.get(&dir);
                            let reason = match kept {
                                Some(k) => format!(
                                    "{e} (keeping last good version {}@{})",
                                    k.status.name, k.status.version
                                ),
                                None => e.to_string(),
                            };
                            tracing::error!(pack = %dir.display(), %reason, "policy pack refused");
                            refused.push(Refusal {
                                source: dir.display().to_string(),
                                reason,
                                at: now,
                            });
                            if let Some(k) = kept {
                                next.insert(
                                    dir.clone(),
                                    Loaded {
                                        pack: k.pack.clone(),
                                        status: k.status.clone(),
                                    },
                                );
                            }
                        }
                    }
                }
            }
        }
        // Two directories declaring the same pack name: the directory that already serves that name keeps
        // it (otherwise the first in sorted order). The other is refused and, like any refused pack, keeps
        // its own last good version if that does not clash too: a new or renamed directory never displaces
        // an active pack, nor takes its own last good version's rules away.
        let mut owners: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
        for (dir, l) in &next {
            if state
                .last_good
                .get(dir)
                .is_some_and(|k| k.status.name == l.status.name)
            {
                owners.insert(l.status.name.clone(), dir.clone());
            }
        }
        let mut clashes = Vec::new();
        for (dir, l) in &next {
            match owners.get(&l.status.name) {
                Some(owner) if owner != dir => clashes.push(dir.clone()),
                Some(_) => {}
                None => {
                    owners.insert(l.status.name.clone(), dir.clone());
                }
            }
        }
        for dir in clashes {
            let name = next.remove(&dir).map(|l| l.status.name).unwrap_or_default();
            let mut reason = format!("another pack directory already provides pack {name:?}");
            if let Some(k) = state.last_good.get(&dir)
                && !owners.contains_key(&k.status.name)
            {
                reason.push_str(&format!(
                    " (keeping last good version {}@{})",
                    k.status.name, k.status.version
                ));
                owners.insert(k.status.name.clone(), dir.clone());
                next.insert(
                    dir.clone(),
                    Loaded {
                        pack: k.pack.clone(),
                        status: k.status.clone(),
                    },
                );
            }
            tracing::error!(pack = %dir.display(), %reason, "policy pack refused");
            refused.push(Refusal {
                source: dir.display().to_string(),
                reason,
                at: now,
            });
        }

        let packs: Vec<Arc<CompiledPack>> = next.values().map(|l| l.pack.clone()).collect();
        let statuses: Vec<PackStatus> = next.values().map(|l| l.status.clone()).collect();
        if packs.is_empty() {
            tracing::warn!(
                dir = %self.config.policies_dir.display(),
                "no valid policy pack loaded: every decision will be block/POLICY_UNAVAILABLE"
            );
        }
        let fingerprint = |m: &BTreeMap<PathBuf, Loaded>| -> Vec<(PathBuf, String)> {
            m.iter()
                .map(|(d, l)| (d.clone(), l.status.digest.clone()))
                .collect()
        };
        let changed = state.generation == 0 || fingerprint(&state.last_good) != fingerprint(&next);
        for r in &refused {
            let ev = PolicyEvent::Refused {
                source: r.source.clone(),
                reason: r.reason.clone(),
            };
            if let Err(e) = self.audit(&ev) {
                tracing::error!(error = %e, "could not record a policy refusal");
            }
            self.send(ev);
        }
        if changed
            && let Err(e) = self.audit(&PolicyEvent::Activated {
                packs: statuses.clone(),
            })
        {
            tracing::error!(error = %e, "policy activation could not be recorded; keeping the previous set");
            refused.push(Refusal {
                source: self.config.policies_dir.display().to_string(),
                reason: format!(
                    "activation could not be recorded in the ledger ({e}); keeping the previous set"
                ),
                at: now,
            });
            state.last_refusal = refused.last().cloned();
            state.refused = refused;
            let previous = state.last_good.values().map(|l| l.status.clone()).collect();
            return status_from(&state, previous);
        }
        if changed {
            self.raise_floors(&mut state, &next);
            self.active
                .store(Arc::new(PolicySet::new(packs, self.config.deadline)));
            state.generation += 1;
            tracing::info!(
                generation = state.generation,
                packs = statuses.len(),
                "policy set activated"
            );
            self.send(PolicyEvent::Activated {
                packs: statuses.clone(),
            });
        }
        state.last_good = next;
        if let Some(last) = refused.last() {
            state.last_refusal = Some(last.clone());
        }
        state.refused = refused;
        status_from(&state, statuses)
    }

    /// Refuses a signed pack older than the newest activated version of its name (unless `allow_rollback`).
    /// A floor that cannot be read refuses the pack too (fail closed).
    fn check_floor(&self, state: &State, pack: &CompiledPack) -> Result<(), String> {
        let r = pack.pack_ref();
        if r.signer_key_id.is_none() {
            return Ok(());
        }
        let version =
            semver::Version::parse(&r.version).map_err(|e| format!("pack version {:?}: {e}", r.version))?;
        let mut floor = state.floors.get(&r.name).cloned();
        if let Some(store) = &self.floors {
            let stored = store.floor(&r.name).map_err(|e| {
                format!(
                    "the rollback floor of pack {} could not be read ({e}); refusing it",
                    r.name
                )
            })?;
            if let Some(v) = stored {
                // kla writes only versions it parsed: anything else is damage, and damage fails closed.
                let v = semver::Version::parse(&v).map_err(|e| {
                    format!(
                        "the stored rollback floor of pack {} ({v:?}) is not a version ({e}); refusing it",
                        r.name
                    )
                })?;
                floor = floor.max(Some(v));
            }
        }
        match floor {
            Some(f) if version < f => {
                if self.config.allow_rollback {
                    tracing::warn!(pack = %r.name, from = %f, to = %version,
                        "--allow-pack-rollback: loading a signed pack older than one activated before");
                    Ok(())
                } else {
                    Err(format!(
                        "rollback refused: {} {version} is older than {f}, the newest version this kla has \
                         activated (start with --allow-pack-rollback to accept it)",
                        r.name
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// After an activation: every active signed pack's version becomes its name's floor if newer (or, with
    /// `allow_rollback`, whatever was activated). A floor that cannot be stored is logged; the in-memory floor
    /// still protects this process.
    fn raise_floors(&self, state: &mut State, active: &BTreeMap<PathBuf, Loaded>) {
        for l in active.values() {
            let st = &l.status;
            if st.signer_key_id.is_none() {
                continue;
            }
            let Ok(v) = semver::Version::parse(&st.version) else {
                continue;
            };
            let raise = match state.floors.get(&st.name) {
                None => true,
                Some(f) => v > *f || (self.config.allow_rollback && v != *f),
            };
            if !raise {
                continue;
            }
            if let Some(store) = &self.floors
                && let Err(e) = store.set_floor(&st.name, &st.version, &st.digest)
            {
                tracing::error!(pack = %st.name, error = %e, "could not record the pack's rollback floor");
            }
            state.floors.insert(st.name.clone(), v);
        }
    }

    /// Active packs and refusals.
    pub fn status(&self) -> PolicyStatus {
        let state = self.state.lock();
        let statuses = state.last_good.values().map(|l| l.status.clone()).collect();
        status_from(&state, statuses)
    }

    fn audit(&self, event: &PolicyEvent) -> Result<(), HookError> {
        match &self.audit {
            Some(hook) => hook(event),
            None => Ok(()),
        }
    }

    fn send(&self, event: PolicyEvent) {
        if let Some(tx) = &self.events
            && tx.send(event).is_err()
        {
            tracing::debug!("policy event receiver dropped");
        }
    }

    /// Watches the policies directory and reloads after ~200 ms of quiet following a change.
    /// Uses the OS notifier when available, otherwise polling every 2 s. The watch stops when
    /// the returned handle is dropped.
    ///
    /// The directory's entry in its parent is watched too: a policies directory that is deleted
    /// and created again (a deploy that replaces it whole) takes its own watch with it, and the
    /// parent's event is what re-arms the watch on the new directory before the reload.
    pub fn watch(self: &Arc<Self>) -> Result<WatchHandle, PolicyError> {
        use notify::Watcher;
        // `true`: the policies directory itself appeared or went: watch it again.
        let (tx, rx) = std::sync::mpsc::channel::<bool>();
        let dir = self.config.policies_dir.clone();
        let tx_parent = tx.clone();
        let handler = move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(false);
            }
        };
        let watcher: Box<dyn notify::Watcher + Send> =
            match notify::RecommendedWatcher::new(handler.clone(), notify::Config::default()) {
                Ok(mut w) => match w.watch(&dir, notify::RecursiveMode::Recursive) {
                    Ok(()) => Box::new(w),
                    Err(_) => Box::new(poll_watcher(&dir, handler)?),
                },
                Err(_) => Box::new(poll_watcher(&dir, handler)?),
            };
        let parent_watcher = dir.file_name().map(|name| name.to_owned()).and_then(|name| {
            let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
            let parent = parent.unwrap_or_else(|| Path::new("."));
            let handler = move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res
                    && !matches!(ev.kind, notify::EventKind::Access(_))
                    && ev.paths.iter().any(|p| p.file_name() == Some(name.as_os_str()))
                {
                    let _ = tx_parent.send(true);
                }
            };
            let watched = notify::RecommendedWatcher::new(handler, notify::Config::default())
                .and_then(|mut w| w.watch(parent, notify::RecursiveMode::NonRecursive).map(|()| w));
            match watched {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(dir = %parent.display(), error = %e,
                        "cannot watch the policies directory's parent: a replaced policies directory needs a reload");
                    None
                }
            }
        });
        let watcher = Arc::new(Mutex::new(watcher));
        let weak_watcher = Arc::downgrade(&watcher);
        let weak = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("kla-policy-watch".into())
            .spawn(move || {
                while let Ok(mut rearm) = rx.recv() {
                    // Debounce: wait until 200 ms pass without another event.
                    while let Ok(r) = rx.recv_timeout(Duration::from_millis(200)) {
                        rearm |= r;
                    }
                    let Some(manager) = weak.upgrade() else { break };
                    if rearm && let Some(w) = weak_watcher.upgrade() {
                        let mut w = w.lock();
                        let _ = w.unwatch(&dir);
                        if let Err(e) = w.watch(&dir, notify::RecursiveMode::Recursive) {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the policies directory");
                        }
                    }
                    tracing::info!("policy files changed; reloading");
                    manager.reload();
                }
            })
            .map_err(|e| PolicyError::io(&self.config.policies_dir, e))?;
        Ok(WatchHandle {
            _watcher: watcher,
            _parent_watcher: parent_watcher,
            _thread: thread,
        })
    }
}

fn poll_watcher<F: notify::EventHandler>(dir: &Path, handler: F) -> Result<notify::PollWatcher, PolicyError> {
    use notify::Watcher;
    let to_err = |e: notify::Error| PolicyError::Io {
        path: dir.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut w = notify::PollWatcher::new(
        handler,
        notify::Config::default().with_poll_interval(Duration::from_secs(2)),
    )
    .map_err(to_err)?;
    w.watch(dir, notify::RecursiveMode::Recursive).map_err(to_err)?;
    Ok(w)
}

/// Keeps a file watch alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: Arc<Mutex<Box<dyn notify::Watcher + Send>>>,
    _parent_watcher: Option<notify::RecommendedWatcher>,
    _thread: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for WatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchHandle")
    }
}

fn status_of(pack: &CompiledPack, dir: &Path, loaded_at: OffsetDateTime) -> PackStatus {
    let r = pack.pack_ref();
    PackStatus {
        name: r.name.clone(),
        version: r.version.clone(),
        digest: r.digest.clone(),
        signer_key_id: r.signer_key_id.clone(),
        mode: pack.mode(),
        rules: pack.rule_count(),
        source: dir.display().to_string(),
        loaded_at,
    }
}

fn status_from(state: &State, packs: Vec<PackStatus>) -> PolicyStatus {
    PolicyStatus {
        generation: state.generation,
        packs,
        refused: state.refused.clone(),
        last_refusal: state.last_refusal.clone(),
    }
}

/// The pack directories under `root`: `root` itself when it holds `pack.yaml`, otherwise its
/// subdirectories holding one, sorted.
fn discover(root: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    if root.join(PACK_FILE).is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let entries = std::fs::read_dir(root).map_err(|e| PolicyError::io(root, e))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PolicyError::io(root, e))?;
        let path = entry.path();
        if path.is_dir() && path.join(PACK_FILE).is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    if dirs.is_empty() {
        return Err(PolicyError::NoPacks {
            path: root.display().to_string(),
        });
    }
    Ok(dirs)
}

/// Redaction follows the active packs' `redaction:` sections through this handle (`policy` depends on `redact`,
/// never the other way).
impl crate::redact::RuleSource for PolicyManager {
    fn active_rules(&self) -> Arc<dyn crate::redact::ActiveRules> {
        self.active()
    }
}

impl crate::redact::ActiveRules for PolicySet {
    fn pack_rules(&self) -> Vec<Option<&crate::redact::PackRules>> {
        self.packs().iter().map(|p| p.redaction()).collect()
    }
}
