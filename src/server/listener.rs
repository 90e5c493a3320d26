//! Listeners: a name, an address, optional TLS and an axum router each; bound together, served together, and on
//! shutdown stopped and drained together.

use super::conn::{self, Activity, Expiry, Limits, Tracked};
use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// One listener's validated settings: address, optional TLS, connection limits.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Bind address (port 0 picks a free port).
    pub addr: SocketAddr,
    /// HTTPS, when set.
    pub tls: Option<TlsConfig>,
    /// Connection cap and timeouts.
    pub limits: Limits,
}

/// TLS files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `tls:` of a listener in the config file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileTls {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// One listener to bind. Any tower service can be served by mounting it in a router
/// (`Router::new().fallback_service(svc)`).
pub struct Listener {
    name: String,
    title: String,
    addr: SocketAddr,
    tls: Option<TlsConfig>,
    limits: Limits,
    body_limit: Option<usize>,
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
            limits: Limits::default(),
            body_limit: None,
            router,
        }
    }

    /// A listener `name` with the address, TLS and limits of its config section.
    pub fn from_config(name: impl Into<String>, cfg: &ListenerConfig, router: axum::Router) -> Listener {
        Listener::new(name, cfg.addr, router)
            .tls(cfg.tls.clone())
            .limits(cfg.limits)
    }

    /// Connection limits and timeouts (default: [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Listener {
        self.limits = limits;
        self
    }

    /// Refuses a request whose declared body (`Content-Length`) is over `bytes` with 413 before reading any of it.
    /// The router must still bound what it reads: a chunked body declares no length.
    pub fn body_limit(mut self, bytes: usize) -> Listener {
        self.body_limit = Some(bytes);
        self
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
    limits: Limits,
    body_limit: Option<usize>,
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
            limits: l.limits,
            body_limit: l.body_limit,
        });
    }
    let wanted: usize = bound.iter().map(|l| l.limits.max_connections).sum();
    if let Some(limit) = open_file_limit()
        && (wanted as u64).saturating_add(FILES_OF_OUR_OWN) > limit
    {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = limit,
            "the listeners' connection caps and kla's own files exceed the open-file limit; raise `ulimit -n` or \
             lower max-connections, else accepts fail when descriptors run out"
        );
    }
    Ok(Bound { listeners: bound })
}

/// Descriptors kla needs besides its connections (store, ledger, watcher, runtime), with room to spare.
const FILES_OF_OUR_OWN: u64 = 128;

/// The soft limit on open files, where the platform shows it.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
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
                _open: open_tx.clone(),
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
    // Held, never sent on: the drain waits until every clone is dropped.
    _open: mpsc::Sender<()>,
}

/// What every connection of one listener shares.
struct Shared {
    name: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    limits: Limits,
    body_limit: Option<u64>,
    builder: auto::Builder<TokioExecutor>,
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header timer would also close idle keep-alive connections at the header timeout; the connection's
    // watchdog keeps both deadlines instead (`conn.rs`).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout)
        // Above kla's limits (the pseudo-headers count here, and 32 bytes per field), so that kla, not h2's empty
        // 431, answers a header block over them.
        .max_header_list_size(h2_header_list_size(limits));
    builder
}

fn h2_header_list_size(limits: &Limits) -> u32 {
    let size = 2 * (limits.max_header_bytes + limits.max_uri_bytes);
    u32::try_from(size).unwrap_or(u32::MAX)
}

async fn accept_loop(l: BoundListener, shutdown: CancellationToken, conns: Conns) {
    let BoundListener {
        name,
        addr: _,
        socket,
        tls,
        router,
        limits,
        body_limit,
    } = l;
    let shared = Arc::new(Shared {
        builder: builder(&limits),
        name,
        tls,
        router,
        limits,
        body_limit: body_limit.map(|b| b as u64),
    });
    // At the cap the loop does not accept: new connections wait in the kernel's listen backlog (bounded, and
    // holding none of kla's descriptors) and are taken in arrival order as slots free, instead of being accepted
    // only to be closed, which would fail a real client as readily as an attacker's.
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned: Option<Instant> = None;
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = socket.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = %shared.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if slots.available_permits() == 0 && warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            warned = Some(Instant::now());
            tracing::warn!(
                listener = %shared.name,
                max_connections = limits.max_connections,
                "connection cap reached: new connections wait until one closes"
            );
        }
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, peer, shared.clone(), conns.clone(), slot));
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    conns: Conns,
    slot: OwnedSemaphorePermit,
) {
    let accepted = tokio::time::Instant::now();
    let activity = Activity::new(accepted, &shared.limits);
    let svc = conn::Service {
        router: shared.router.clone(),
        activity: activity.clone(),
        body_limit: shared.body_limit,
        body_timeout: shared.limits.body_timeout,
        max_header_bytes: shared.limits.max_header_bytes,
        max_uri_bytes: shared.limits.max_uri_bytes,
        peer,
    };
    let end = match &shared.tls {
        None => {
            let io = TokioIo::new(Tracked::new(stream, activity.clone()));
            let conn = shared.builder.serve_connection_with_upgrades(io, svc);
            drive(conn, &activity, &conns).await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout_at(activity.first_deadline(), acceptor.accept(stream));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = %shared.name, error = %e, %peer, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = %shared.name, %peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = conns.graceful.cancelled() => return,
            };
            let io = TokioIo::new(Tracked::new(stream, activity.clone()));
            let conn = shared.builder.serve_connection_with_upgrades(io, svc);
            drive(conn, &activity, &conns).await
        }
    };
    match end {
        End::Closed(Ok(())) | End::Killed => {}
        End::Closed(Err(e)) => {
            tracing::debug!(listener = %shared.name, error = %e, %peer, "connection ended with error")
        }
        End::Expired(why) => {
            tracing::debug!(listener = %shared.name, %peer, reason = ?why, "connection closed by its deadline")
        }
    }
    drop(slot);
    drop(conns);
}

enum End<E> {
    Closed(Result<(), E>),
    Expired(Expiry),
    Killed,
}

/// Runs a connection to its end under its watchdog: closed when a deadline of `activity` passes; on `graceful` it
/// finishes the request in progress and closes; on `kill` it is dropped at once.
async fn drive<C: GracefulConnection>(conn: C, activity: &Activity, conns: &Conns) -> End<C::Error> {
    let mut conn = std::pin::pin!(conn);
    let mut armed = activity.first_deadline();
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(armed));
    let mut graceful = std::pin::pin!(conns.graceful.cancelled());
    let mut kill = std::pin::pin!(conns.kill.cancelled());
    let mut closing = false;
    std::future::poll_fn(|cx| {
        if kill.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Killed);
        }
        if !closing && graceful.as_mut().poll(cx).is_ready() {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(End::Closed(r));
        }
        // The connection's poll may have moved a deadline earlier (a request's first byte, a blocked write).
        if let Some((ms, _)) = activity.deadline() {
            let at = activity.at(ms);
            if at < armed {
                armed = at;
                sleep.as_mut().reset(at);
            }
        }
        while sleep.as_mut().poll(cx).is_ready() {
            match activity.check() {
                Err(why) => return Poll::Ready(End::Expired(why)),
                Ok(ms) => {
                    armed = activity.at(ms);
                    sleep.as_mut().reset(armed);
                }
            }
        }
        Poll::Pending
    })
    .await
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
