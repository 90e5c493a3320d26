//! Listeners: a name, an address, optional TLS and an axum router each; bound together, served together, and on
//! shutdown stopped and drained together.

use crate::config::{ListenerConfig, TlsConfig};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One listener to bind. Any tower service can be served by mounting it in a router
/// (`Router::new().fallback_service(svc)`).
pub struct Listener {
    name: String,
    title: String,
    addr: SocketAddr,
    tls: Option<TlsConfig>,
    router: axum::Router,
}

impl Listener {
    /// A plaintext listener `name` on `addr` serving `router`. It logs `"<name> listening"` once bound.
    pub fn new(name: impl Into<String>, addr: SocketAddr, router: axum::Router) -> Listener {
        let name = name.into();
        Listener {
            title: name.clone(),
            name,
            addr,
            tls: None,
            router,
        }
    }

    /// A listener `name` with the address and TLS of its config section.
    pub fn from_config(name: impl Into<String>, cfg: &ListenerConfig, router: axum::Router) -> Listener {
        Listener::new(name, cfg.addr, router).tls(cfg.tls.clone())
    }

    /// Serves HTTPS with these files (`None`: plaintext).
    pub fn tls(mut self, tls: Option<TlsConfig>) -> Listener {
        self.tls = tls;
        self
    }

    /// What the "listening" log line calls it (default: its name): the line is `"<title> listening"`.
    pub fn title(mut self, title: impl Into<String>) -> Listener {
        self.title = title.into();
        self
    }
}

/// Bound listeners, not yet accepting.
pub struct Bound {
    listeners: Vec<BoundListener>,
}

struct BoundListener {
    name: String,
    addr: SocketAddr,
    socket: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
}

/// Loads each listener's TLS files and binds its address, in order; fails on the first that cannot (nothing is
/// served then). Logs one `"<title> listening"` line per listener, with its `addr` and whether it is `tls`.
pub async fn bind(listeners: Vec<Listener>) -> anyhow::Result<Bound> {
    let mut bound = Vec::with_capacity(listeners.len());
    for l in listeners {
        anyhow::ensure!(
            bound.iter().all(|b: &BoundListener| b.name != l.name),
            "two listeners are named {:?}",
            l.name
        );
        let tls = match &l.tls {
            Some(t) => {
                Some(tls_acceptor(&t.cert, &t.key).with_context(|| format!("{} listener TLS", l.name))?)
            }
            None => None,
        };
        let socket = TcpListener::bind(l.addr)
            .await
            .with_context(|| format!("binding the {} listener to {}", l.name, l.addr))?;
        let addr = socket.local_addr()?;
        tracing::info!(listener = %l.name, addr = %addr, tls = tls.is_some(), "{} listening", l.title);
        bound.push(BoundListener {
            name: l.name,
            addr,
            socket,
            tls,
            router: l.router,
        });
    }
    Ok(Bound { listeners: bound })
}

impl Bound {
    /// Every bound address by listener name (the real port when the config asked for port 0).
    pub fn addrs(&self) -> BTreeMap<String, SocketAddr> {
        self.listeners.iter().map(|l| (l.name.clone(), l.addr)).collect()
    }

    /// Accepts on every listener until `shutdown`, then stops accepting everywhere, lets open connections finish
    /// their requests for up to `drain`, and closes whatever is still open.
    pub async fn serve(self, shutdown: CancellationToken, drain: Duration) -> anyhow::Result<()> {
        // Told to finish the request in progress and close.
        let graceful = CancellationToken::new();
        // Told to close now.
        let kill = CancellationToken::new();
        // Every connection task holds a sender; `recv` returns `None` once the last one ended.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        let mut acceptors = tokio::task::JoinSet::new();
        for l in self.listeners {
            let conns = Conns {
                graceful: graceful.clone(),
                kill: kill.clone(),
                open: open_tx.clone(),
            };
            acceptors.spawn(accept_loop(l, shutdown.clone(), conns));
        }
        drop(open_tx);
        while let Some(r) = acceptors.join_next().await {
            r.context("an accept loop")?;
        }
        tracing::info!("shutting down: draining in-flight requests");
        graceful.cancel();
        if tokio::time::timeout(drain, open_rx.recv()).await.is_err() {
            tracing::warn!("drain timed out; closing remaining connections");
            kill.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), open_rx.recv()).await;
        }
        Ok(())
    }
}

/// What every connection task of a server shares.
#[derive(Clone)]
struct Conns {
    graceful: CancellationToken,
    kill: CancellationToken,
    open: mpsc::Sender<()>,
}

async fn accept_loop(l: BoundListener, shutdown: CancellationToken, conns: Conns) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper ignores its header-read timeout: slow-header clients could hold connections forever.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = l.socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = %l.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            stream,
            peer,
            l.tls.clone(),
            builder.clone(),
            l.router.clone(),
            conns.clone(),
        ));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    router: axum::Router,
    conns: Conns,
) {
    let Conns { graceful, kill, open } = conns;
    let svc = hyper_util::service::TowerToHyperService::new(router);
    let result = match tls {
        None => {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            drive(conn, &graceful, &kill).await
        }
        Some(acceptor) => {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            drive(conn, &graceful, &kill).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with error");
    }
    drop(open);
}

/// Runs a connection to its end; on `graceful` it finishes the request in progress and closes, on `kill` it is
/// dropped at once.
async fn drive<C: GracefulConnection>(
    conn: C,
    graceful: &CancellationToken,
    kill: &CancellationToken,
) -> Result<(), C::Error> {
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = graceful.cancelled() => conn.as_mut().graceful_shutdown(),
        _ = kill.cancelled() => return Ok(()),
    }
    tokio::select! {
        r = conn => r,
        _ = kill.cancelled() => Ok(()),
    }
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
