//! Builds every part of kla from the validated config, serves the API (HTTP or HTTPS via rustls), and owns
//! shutdown: on SIGINT/SIGTERM (or the handle's trigger) it stops accepting, drains in-flight requests, stops the
//! background services in reverse start order, runs the final steps (index flush, final checkpoint), and returns.

use crate::api::{self, ApiState};
use crate::approvals::{Approvals, DigestKey};
use crate::auth::{Authenticator, ExternalIssuer, keys};
use crate::config::{Config, EventsSection, LedgerSection, PolicySection};
use crate::decide::Decider;
use crate::events::{Hub, HubConfig};
use crate::ledger::{Ledger, LedgerConfig, RepairMode};
use crate::policy::{HookError, PackFloors, PolicyConfig, PolicyEvent, PolicyManager, TrustedKey};
use crate::recorder::{Record, Recorder};
use crate::redact::Redaction;
use crate::registry::Agents;
use crate::server::{self, Listener, Services};
use crate::store::Store;
use anyhow::Context;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown gives each background service to stop, and each final step to finish.
const SERVICE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often expired idempotency keys are purged.
const IDEMPOTENCY_PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// A running server.
pub struct Running {
    /// The bound API address (useful with port 0); also `listeners["api"]`.
    pub api_addr: SocketAddr,
    /// Every bound address by listener name.
    pub listeners: BTreeMap<String, SocketAddr>,
    /// Cancel to shut down.
    pub shutdown: CancellationToken,
    /// Completes when the server has drained and stopped.
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The tool-call proxy, when its listener runs (a reload hands it new routes). Weak: the proxy holds the
    /// app's state and with it the ledger, so a strong handle here (kept by `kla serve` until `done`) would keep the
    /// ledger open past shutdown; the listener's router owns the proxy and drops it when it has drained.
    proxy: Option<std::sync::Weak<crate::proxy::Proxy>>,
}

impl Running {
    /// Applies what of a reloaded config takes effect without a restart: the proxy's routes. Returns what was
    /// done, for the log; `Err` when the new config cannot be applied (the running one stays).
    pub fn reload(&self, cfg: &Config) -> anyhow::Result<String> {
        match (&self.proxy, &cfg.proxy) {
            (Some(p), Some(pc)) => {
                let p = p
                    .upgrade()
                    .ok_or_else(|| anyhow::anyhow!("the proxy has stopped (kla is shutting down)"))?;
                let n = p.reload(pc)?;
                Ok(format!("proxy routes reloaded ({n})"))
            }
            (Some(_), None) => anyhow::bail!(
                "the reloaded config has no proxy routes; the proxy keeps its routes until a restart stops it"
            ),
            (None, Some(_)) => anyhow::bail!("the proxy listener starts only with a restart"),
            (None, None) => Ok("nothing to reload".into()),
        }
    }
}

/// Opens every part and starts serving. Returns once every listener is bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    tracing::info!(data_dir = %cfg.data_dir.display(), "kla starting");
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // One kla per data dir: taken before anything else touches the dir (the store clears in-flight idempotency
    // reservations on open, which would break a running server's guarantees).
    let dir_lock = lock_data_dir(&cfg.data_dir).await?;
    let store = Store::open(&cfg.store.dir).context("opening the store")?;
    let token_key = keys::load_or_create(&keys::token_key_path(&cfg.data_dir))?;
    let registry_key = keys::load_or_create(&keys::registry_key_path(&cfg.data_dir))?;
    let external = match &cfg.auth.external_issuer {
        Some(j) => Some(ExternalIssuer::load(
            &j.jwks,
            j.issuer.clone(),
            j.audience.clone(),
        )?),
        None => None,
    };
    let auth = Arc::new(Authenticator::new(token_key.public_pem.as_bytes(), external)?);
    let shutdown = CancellationToken::new();
    // Dropped on an early return below, which stops whatever was already spawned.
    let mut services = Services::new();
    // kla's own spans (off unless `--otel-endpoint`): started before anything decides, flushed last.
    if let Some(oc) = &cfg.telemetry {
        crate::telemetry::otel::init(oc).context("starting kla's telemetry")?;
        tracing::info!(endpoint = %oc.endpoint, "exporting kla's own spans over OTLP/gRPC");
    }

    // The ledger first: nothing may be decided that cannot be recorded.
    let lcfg = ledger_config(&cfg.ledger);
    let fast = cfg.ledger.fast_start;
    let ledger = tokio::task::spawn_blocking(move || open_ledger(lcfg, fast))
        .await?
        .context("opening the ledger (run `kla ledger verify --data-dir DIR` for details)")?;
    let recorder = Recorder::new(ledger.clone(), store.clone());
    let reindexed = recorder.reindex().await.context("indexing the ledger")?;
    if reindexed > 0 {
        tracing::info!(entries = reindexed, "ledger index rebuilt");
    }
    let checkpointed = ledger.clone();
    services.spawn("ledger-checkpointer", move |stop| async move {
        checkpointed
            .spawn_checkpointer(stop)
            .await
            .context("the checkpointer task")
    });

    // Policies: every activation and refusal is recorded in the ledger before it takes effect.
    let policy = {
        let pcfg = policy_config(&cfg.policy)?;
        let hook = policy_audit_hook(recorder.clone());
        let floors: Box<dyn PackFloors> = Box::new(StoreFloors {
            store: store.clone(),
            handle: tokio::runtime::Handle::current(),
        });
        Arc::new(
            tokio::task::spawn_blocking(move || PolicyManager::with_audit(pcfg, hook, Some(floors))).await?,
        )
    };
    match policy.watch() {
        // The watch lasts as long as its handle: the service holds it until told to stop.
        Ok(watch) => services.spawn("policy-watcher", move |stop| async move {
            stop.cancelled().await;
            drop(watch);
            Ok(())
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the policies directory; use POST /v1/policies/reload");
        }
    }
    if policy.status().packs.is_empty() {
        tracing::error!(
            dir = %cfg.policy.dir.display(),
            "no valid policy pack is loaded: every decision will be `block` (POLICY_UNAVAILABLE)"
        );
    }

    // The event stream: its follower runs as a service; its streams end when shutdown begins, so draining the
    // listeners does not wait for them.
    let events = Hub::new(recorder.clone(), hub_config(&cfg.events), shutdown.clone());
    let hub = events.clone();
    services.spawn("event-hub", move |stop| hub.run(stop));
    if !cfg.webhooks.is_empty() {
        let (endpoints, hub, store) = (cfg.webhooks.clone(), events.clone(), store.clone());
        services.spawn("webhooks", move |stop| {
            crate::webhooks::run_all(endpoints, hub, store, stop)
        });
    }

    // Everything a caller writes that is recorded (decision contexts, manifests' free text, vote comments) passes
    // the tenant's redactor first.
    let redaction = Arc::new(Redaction::new(policy.clone(), &cfg.data_dir));
    let agents = Arc::new(Agents::new(recorder.clone(), registry_key, redaction.clone()));
    let digest_key = DigestKey::load_or_create(&DigestKey::path(&cfg.data_dir))?;
    let approvals = Arc::new(Approvals::new(
        recorder.clone(),
        policy.clone(),
        digest_key,
        redaction.clone(),
    ));
    let executions = Arc::new(crate::executions::Executions::new(
        recorder.clone(),
        agents.clone(),
        redaction.clone(),
    ));
    let expiring = approvals.clone();
    services.spawn("approval-expiry", move |stop| expiring.run_expiry(stop));
    let decider = Decider::new(
        policy.clone(),
        recorder.clone(),
        agents.clone(),
        redaction.clone(),
        approvals.clone(),
    );
    // Each edge receives only the handles it uses; nothing outside `api/` sees the API's state.
    let otlp = cfg.otlp.as_ref().map(|oc| {
        let handles = crate::otlp::Handles {
            auth: auth.clone(),
            redaction: redaction.clone(),
            policy: policy.clone(),
            recorder: recorder.clone(),
        };
        (
            oc.clone(),
            crate::otlp::Otlp::new(oc, cfg.api.rate_limit, handles),
        )
    });
    let desk = crate::desk::Desk::new(
        auth.clone(),
        store.clone(),
        token_key.private_pem.clone(),
        cfg.api.listener.tls.is_some(),
        cfg.api.body_limit,
    );
    let proxy = match &cfg.proxy {
        Some(pc) => {
            let handles = crate::proxy::Handles {
                decider: decider.clone(),
                auth: auth.clone(),
                agents: agents.clone(),
                approvals: approvals.clone(),
                policy: policy.clone(),
                body_limit: cfg.api.body_limit,
            };
            Some((pc.addr, crate::proxy::Proxy::new(pc, handles)?))
        }
        None => None,
    };
    let state = Arc::new(ApiState {
        store: store.clone(),
        auth,
        limiter: cfg.api.rate_limit.map(crate::server::RateLimiter::new),
        body_limit: cfg.api.body_limit,
        started: Instant::now(),
        recorder: recorder.clone(),
        policy: policy.clone(),
        agents,
        decider,
        approvals,
        executions,
        events,
    });
    let router = api::router(state, crate::desk::routes(desk));

    let mut to_bind = vec![
        Listener::from_config("api", &cfg.api.listener, router)
            .title("kla API")
            .body_limit(cfg.api.body_limit),
    ];
    if let Some((addr, proxy)) = &proxy {
        // The API's limits and timeouts; no declared-length limit: bodies are streamed unless an action reads one.
        to_bind.push(
            Listener::new("proxy", *addr, proxy.router())
                .title("kla proxy")
                .limits(cfg.api.listener.limits)
                .tls(cfg.proxy.as_ref().and_then(|p| p.tls.clone())),
        );
    }
    if let Some((oc, (otlp, forwarder))) = otlp {
        if oc.tenant.is_some()
            && [oc.http_addr, oc.grpc_addr]
                .iter()
                .flatten()
                .any(|a| !a.ip().is_loopback())
        {
            tracing::warn!(
                "otlp.tenant is set on a non-loopback address: anyone who reaches it can add spans to that tenant"
            );
        }
        // The API's connection limits and timeouts; the export size limit is the receivers' own (inflated bytes).
        if let Some(addr) = oc.http_addr {
            to_bind.push(
                Listener::new("otlp-http", addr, otlp.http_router())
                    .title("kla OTLP/HTTP receiver")
                    .limits(cfg.api.listener.limits)
                    .body_limit(oc.max_body),
            );
        }
        if let Some(addr) = oc.grpc_addr {
            to_bind.push(
                Listener::new("otlp-grpc", addr, otlp.grpc_router())
                    .title("kla OTLP/gRPC receiver")
                    .limits(cfg.api.listener.limits),
            );
        }
        if let Some(fw) = forwarder {
            services.spawn("otlp-forward", move |stop| fw.run(stop));
        }
    }
    let listeners = server::bind(to_bind).await?;
    let addrs = listeners.addrs();
    let api_addr = addrs.get("api").copied().context("the API listener is bound")?;
    if let Some((_, proxy)) = &proxy {
        let scheme = if cfg.api.listener.tls.is_some() {
            "https"
        } else {
            "http"
        };
        proxy.set_api_base(format!("{scheme}://{api_addr}"));
    }

    let purge_store = store.clone();
    services.spawn("idempotency-purge", move |stop| async move {
        let mut tick = tokio::time::interval(IDEMPOTENCY_PURGE_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    if let Err(e) = purge_store.idempotency_purge().await {
                        tracing::warn!(error = %e, "idempotency purge failed");
                    }
                }
            }
        }
    });
    // After the last request and the last policy reload: commit the index rows still queued (otherwise the next
    // start re-indexes them), then sign a final checkpoint so everything acknowledged is anchored before exit.
    let final_recorder = recorder.clone();
    services.on_shutdown("index-flush", async move {
        final_recorder.flush_index().await;
        Ok(())
    });
    let released = ledger.released();
    services.on_shutdown("final-checkpoint", async move {
        ledger
            .checkpoint_now()
            .await
            .map(|_| ())
            .context("final checkpoint")
    });
    if cfg.telemetry.is_some() {
        // Flushing blocks on the batch processor's thread: off the runtime's workers.
        services.on_shutdown("otel-flush", async move {
            tokio::task::spawn_blocking(crate::telemetry::otel::shutdown).await?;
            Ok(())
        });
    }

    let shutdown_serve = shutdown.clone();
    let done = tokio::spawn(async move {
        let r = listeners.serve(shutdown_serve, DRAIN_TIMEOUT).await;
        services.shutdown(SERVICE_STOP_TIMEOUT).await;
        // Done means the data dir is free: a restart in the same process (an embedding, the tests) can open it at
        // once. Tasks that held a handle (connection tasks, the index writer) end shortly after the drain.
        if !released.wait(SERVICE_STOP_TIMEOUT).await {
            tracing::warn!("the ledger is still held after shutdown; its directory stays locked until exit");
        }
        drop(dir_lock);
        tracing::info!("stopped");
        r
    });
    Ok(Running {
        api_addr,
        listeners: addrs,
        shutdown,
        done,
        proxy: proxy.map(|(_, p)| Arc::downgrade(&p)),
    })
}

/// Takes an exclusive lock on `<data-dir>/kla.lock` for the life of the server. A lock that frees within a moment
/// is waited for: a child process spawned by the same program (a test's peer, an embedding's helper) briefly
/// shares every descriptor between its fork and its exec, so a lock just released by a stopped server can still
/// be held for that instant. Another kla keeps it, and is refused.
async fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("kla.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        if f.try_lock().is_ok() {
            return Ok(f);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("data dir {} is in use by another kla process", dir.display());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Checks the whole log (checksums, leaf and node hashes, checkpoint root and signature) and then opens it.
///
/// `Ledger::open` alone checks only what follows the last signed checkpoint, which keeps restarts of huge logs
/// fast; the full check here makes a byte changed anywhere refuse startup. With `--ledger-repair=truncate`, damage
/// is cut only when it is a tail after the last checkpoint: if the damaged index survives the open, the damage is
/// inside published state and kla refuses rather than roll it back.
fn open_ledger(cfg: LedgerConfig, fast_start: bool) -> anyhow::Result<Ledger> {
    let has_log = cfg.dir.join(crate::ledger::log::ENTRIES_FILE).exists();
    let damaged = if has_log && !fast_start {
        let started = Instant::now();
        match crate::ledger::verify_ledger_dir(&cfg.dir, &mut |_, _| {}) {
            Ok(summary) => {
                tracing::info!(
                    entries = summary.entries,
                    ms = started.elapsed().as_millis() as u64,
                    "ledger verified"
                );
                None
            }
            Err(crate::ledger::LedgerError::Corrupt { index, detail }) => Some((index, detail)),
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let truncate = cfg.repair == RepairMode::Truncate;
    match damaged {
        None => Ok(Ledger::open(cfg)?),
        Some((index, detail)) if !truncate => anyhow::bail!(
            "ledger damaged at index {index}: {detail}; refusing to start (see `kla ledger verify`; \
             --ledger-repair=truncate cuts a damaged tail that no signed checkpoint covers)"
        ),
        Some((index, detail)) => {
            let ledger = Ledger::open(cfg)?;
            if ledger.size() > index {
                anyhow::bail!(
                    "ledger damaged at index {index}: {detail}; the damage is inside the signed checkpoint or \
                     followed by good entries, so truncating would roll back published state; refusing to start"
                );
            }
            tracing::warn!(index, %detail, size = ledger.size(), "ledger tail truncated by --ledger-repair=truncate");
            Ok(ledger)
        }
    }
}

/// The ledger's config from its section.
fn ledger_config(cfg: &LedgerSection) -> LedgerConfig {
    let mut lcfg = LedgerConfig::new(cfg.dir.clone());
    lcfg.origin = cfg.origin.clone();
    lcfg.repair = cfg.repair;
    lcfg.preallocate = cfg.preallocate;
    lcfg
}

/// The event hub's config from its section.
fn hub_config(cfg: &EventsSection) -> HubConfig {
    HubConfig {
        retention: cfg.retention,
        heartbeat: cfg.heartbeat,
        max_subscribers: cfg.max_subscribers,
        max_subscribers_per_tenant: cfg.max_subscribers_per_tenant,
        ..HubConfig::default()
    }
}

/// The policy manager's config from its section: the embedded default key when none is given.
fn policy_config(cfg: &PolicySection) -> anyhow::Result<PolicyConfig> {
    let trusted = if cfg.trusted_keys.is_empty() {
        vec![TrustedKey::parse(DEFAULT_PACK_KEY).context("embedded default pack key")?]
    } else {
        cfg.trusted_keys
            .iter()
            .map(|p| TrustedKey::read(p).with_context(|| format!("trusted key {}", p.display())))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if cfg.allow_unsigned {
        tracing::warn!("--allow-unsigned: unsigned policy packs will be loaded (local development only)");
    }
    let mut pcfg = PolicyConfig::new(cfg.dir.clone(), trusted);
    pcfg.allow_unsigned = cfg.allow_unsigned;
    if cfg.allow_rollback {
        tracing::warn!("--allow-pack-rollback: a signed pack older than one activated before will be loaded");
    }
    pcfg.allow_rollback = cfg.allow_rollback;
    pcfg.deadline = cfg.deadline;
    Ok(pcfg)
}

/// The public key of kla's default pack (`policies/kla-default.pub`), trusted when no `--trusted-key` is given.
pub const DEFAULT_PACK_KEY: &str = include_str!("../policies/kla-default.pub");

/// The policy packs' rollback floors, kept in the store. Called from reload threads (blocking), like the audit hook.
struct StoreFloors {
    store: Store,
    handle: tokio::runtime::Handle,
}

impl PackFloors for StoreFloors {
    fn floor(&self, name: &str) -> Result<Option<String>, HookError> {
        self.handle
            .block_on(self.store.pack_floor(name))
            .map(|f| f.map(|(version, _digest)| version))
            .map_err(HookError::new)
    }

    fn set_floor(&self, name: &str, version: &str, digest: &str) -> Result<(), HookError> {
        let at = crate::time::now_rfc3339();
        self.handle
            .block_on(self.store.set_pack_floor(name, version, digest, &at))
            .map_err(HookError::new)
    }
}

/// The policy manager's audit hook: records each event in the ledger and waits until it is durable. Reloads run on
/// blocking threads (startup, `spawn_blocking`, the file watcher), where waiting on the runtime is allowed.
fn policy_audit_hook(recorder: Recorder) -> crate::policy::AuditHook {
    let handle = tokio::runtime::Handle::current();
    Box::new(move |ev: &PolicyEvent| {
        if let PolicyEvent::Refused { source, reason } = ev {
            tracing::warn!(%source, %reason, "policy pack refused");
        }
        handle
            .block_on(recorder.record(Record::Policy(ev.clone())))
            .map(|_| ())
            .map_err(HookError::new)
    })
}

/// SIGHUPs, the reload signal (none where the platform has none).
pub struct Hangups {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Starts listening; a failure is logged and leaves reloads to a restart.
    pub fn new() -> Hangups {
        #[cfg(unix)]
        {
            let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(
                    |e| tracing::warn!(error = %e, "cannot listen for SIGHUP; config reloads need a restart"),
                )
                .ok();
            Hangups { signal }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// Resolves on the next SIGHUP.
    pub async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.signal
            && s.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

impl Default for Hangups {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
