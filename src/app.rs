//! Builds every part of kla from the validated config, serves the API (HTTP or HTTPS via rustls), and owns
//! shutdown: on SIGINT/SIGTERM (or the handle's trigger) it stops accepting, drains in-flight requests, stops the
//! background services in reverse start order, runs the final steps (index flush, final checkpoint), and returns.

use crate::api::{self, AppState};
use crate::auth::{Authenticator, ExternalIssuer, keys};
use crate::config::{Config, LedgerSection, PolicySection};
use crate::ledger::{Ledger, LedgerConfig, RepairMode};
use crate::policy::{PackFloors, PolicyConfig, PolicyEvent, PolicyManager, TrustedKey};
use crate::recorder::Recorder;
use crate::server::Services;
use crate::store::Store;
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long shutdown gives each background service to stop, and each final step to finish.
const SERVICE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often expired idempotency keys are purged.
const IDEMPOTENCY_PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// A running server.
pub struct Running {
    /// The bound API address (useful with port 0).
    pub api_addr: SocketAddr,
    /// Cancel to shut down.
    pub shutdown: CancellationToken,
    /// Completes when the server has drained and stopped.
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens every part and starts serving. Returns once the listener is bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    // One kla per data dir: taken before anything else touches the dir (the store clears in-flight idempotency
    // reservations on open, which would break a running server's guarantees).
    let dir_lock = lock_data_dir(&cfg.data_dir)?;
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
    let auth = Authenticator::new(token_key.public_pem.as_bytes(), external)?;
    let shutdown = CancellationToken::new();
    // Dropped on an early return below, which stops whatever was already spawned.
    let mut services = Services::new();

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

    let state = Arc::new(AppState {
        store: store.clone(),
        auth,
        limiter: cfg.api.rate_limit.map(api::ratelimit::RateLimiter::new),
        body_limit: cfg.api.body_limit,
        registry_key,
        started: Instant::now(),
        recorder: recorder.clone(),
        policy: policy.clone(),
        agents: api::AgentCache::default(),
    });
    api::reconcile_registrations(&state).await?;
    let router = api::router(state);

    let tls = match &cfg.api.listener.tls {
        Some(t) => Some(tls_acceptor(&t.cert, &t.key)?),
        None => None,
    };
    let listener = TcpListener::bind(cfg.api.listener.addr)
        .await
        .with_context(|| format!("binding API address {}", cfg.api.listener.addr))?;
    let api_addr = listener.local_addr()?;
    tracing::info!(addr = %api_addr, tls = tls.is_some(), data_dir = %cfg.data_dir.display(), "kla API listening");

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
    services.on_shutdown("final-checkpoint", async move {
        ledger
            .checkpoint_now()
            .await
            .map(|_| ())
            .context("final checkpoint")
    });

    let shutdown_serve = shutdown.clone();
    let done = tokio::spawn(async move {
        let r = serve(listener, tls, router, shutdown_serve).await;
        services.shutdown(SERVICE_STOP_TIMEOUT).await;
        drop(dir_lock);
        tracing::info!("stopped");
        r
    });
    Ok(Running {
        api_addr,
        shutdown,
        done,
    })
}

/// Takes an exclusive lock on `<data-dir>/kla.lock` for the life of the server.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("kla.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.try_lock()
        .map_err(|_| anyhow::anyhow!("data dir {} is in use by another kla process", dir.display()))?;
    Ok(f)
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
    lcfg
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
    fn floor(&self, name: &str) -> Result<Option<String>, String> {
        self.handle
            .block_on(self.store.pack_floor(name))
            .map(|f| f.map(|(version, _digest)| version))
            .map_err(|e| e.to_string())
    }

    fn set_floor(&self, name: &str, version: &str, digest: &str) -> Result<(), String> {
        let at = crate::time::now_rfc3339();
        self.handle
            .block_on(self.store.set_pack_floor(name, version, digest, &at))
            .map_err(|e| e.to_string())
    }
}

/// The policy manager's audit hook: records each event in the ledger and waits until it is durable. Reloads run on
/// blocking threads (startup, `spawn_blocking`, the file watcher), where waiting on the runtime is allowed.
fn policy_audit_hook(recorder: Recorder) -> crate::policy::AuditHook {
    let handle = tokio::runtime::Handle::current();
    Box::new(move |ev: &PolicyEvent| {
        let kind = match ev {
            PolicyEvent::Activated { .. } => "policy.activated",
            PolicyEvent::Refused { source, reason } => {
                tracing::warn!(%source, %reason, "policy pack refused");
                "policy.refused"
            }
        };
        let body = serde_json::to_value(ev).map_err(|e| e.to_string())?;
        handle
            .block_on(recorder.policy_event(kind, body))
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Connection tasks, so the ones still open after the drain timeout can be closed for real.
    let mut conns = tokio::task::JoinSet::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper ignores its header-read timeout: slow-header clients could hold connections forever.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                let conn = graceful.watch(conn);
                conns.spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                conns.spawn(async move {
                    let tls_stream =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, %peer, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, %peer, "connection ended with error");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
    Ok(())
}

fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("parsing certificates in {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cert.display());
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?,
    ))
    .with_context(|| format!("parsing private key in {}", key.display()))?
    .with_context(|| format!("no private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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
