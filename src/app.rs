//! Builds every part of kla from the validated config, serves the API (HTTP or HTTPS via rustls), and owns
//! shutdown: on SIGINT/SIGTERM (or the handle's trigger) it stops accepting, drains in-flight requests, and
//! returns.

use crate::api::{self, AppState};
use crate::auth::{Authenticator, ExternalIssuer, keys};
use crate::config::Config;
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
    let store = Store::open(&cfg.data_dir).context("opening the store")?;
    let token_key = keys::load_or_create(&keys::token_key_path(&cfg.data_dir))?;
    let registry_key = keys::load_or_create(&keys::registry_key_path(&cfg.data_dir))?;
    let external = match &cfg.external_issuer {
        Some(j) => Some(ExternalIssuer::load(
            &j.jwks,
            j.issuer.clone(),
            j.audience.clone(),
        )?),
        None => None,
    };
    let auth = Authenticator::new(token_key.public_pem.as_bytes(), external)?;
    let state = Arc::new(AppState {
        store: store.clone(),
        auth,
        limiter: cfg.rate_limit.map(api::ratelimit::RateLimiter::new),
        body_limit: cfg.body_limit,
        registry_key,
        started: Instant::now(),
    });
    let router = api::router(state);

    let tls = match &cfg.tls {
        Some(t) => Some(tls_acceptor(&t.cert, &t.key)?),
        None => None,
    };
    let listener = TcpListener::bind(cfg.api_addr)
        .await
        .with_context(|| format!("binding API address {}", cfg.api_addr))?;
    let api_addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tracing::info!(addr = %api_addr, tls = tls.is_some(), data_dir = %cfg.data_dir.display(), "kla API listening");

    let purge_store = store.clone();
    let purge_stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = purge_stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = purge_store.idempotency_purge().await {
                        tracing::warn!(error = %e, "idempotency purge failed");
                    }
                }
            }
        }
    });

    let done = tokio::spawn(serve(listener, tls, router, shutdown.clone()));
    Ok(Running {
        api_addr,
        shutdown,
        done,
    })
}

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
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
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(router.clone());
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, %peer, "connection ended with error");
                    }
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
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
    tracing::info!("stopped");
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
