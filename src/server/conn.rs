//! One connection's limits: the deadlines that close idle, slow or stalled connections, the request body's read
//! deadline, and the early refusal of a body declared larger than the listener takes.
//!
//! hyper's own HTTP/1 header timer also runs while a keep-alive connection waits for its next request, so it cannot
//! tell "idle" from "slow headers", and before hyper-util has seen enough bytes to choose HTTP/1 or HTTP/2 no timer
//! runs at all (a client that connects and sends nothing was never closed). So one small watchdog per connection
//! keeps the deadlines instead, from what the connection's IO and its requests report (a few relaxed atomics per
//! request; the timer is reset only when a deadline moves earlier):
//!
//! - until the first request's headers are in: `header-timeout` from accept (TLS handshake included);
//! - HTTP/1, between requests: `idle-timeout` from the end of the last response, or `header-timeout` from the first
//!   byte of the next request;
//! - HTTP/2, while no stream is open: `idle-timeout` from the end of the last one (pings do not count);
//! - any time the socket stops taking the response (the client does not read): `idle-timeout` from the first write
//!   that could not proceed.
//!
//! A request body must arrive within `body-timeout` of the handler's first wait for it.

use super::errors;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; at the cap the listener stops accepting until one closes (new clients wait in the
    /// kernel's listen backlog, which holds none of kla's file descriptors).
    pub max_connections: usize,
    /// How long a connection may stay open with no request in progress (HTTP/1 keep-alive, HTTP/2 with no stream),
    /// and how long a response may wait for a client that does not read it.
    pub idle_timeout: Duration,
    /// How long a client has from connecting (TLS handshake included) to the end of its first request's headers,
    /// and on HTTP/1 from the first byte of each later request to the end of its headers.
    pub header_timeout: Duration,
    /// How long a request body may take to arrive, from the handler's first wait for it.
    pub body_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval (`None`: no pings).
    pub h2_keepalive_interval: Option<Duration>,
    /// How long an HTTP/2 ping may go unanswered before the connection is closed.
    pub h2_keepalive_timeout: Duration,
    /// Largest request header block (each header's name and value plus 4 bytes), answered 431 over it.
    pub max_header_bytes: usize,
    /// Longest request target (path and query, and authority when sent), answered 414 over it.
    pub max_uri_bytes: usize,
}

/// The largest `max_header_bytes`: with the longest target it stays under hyper's own HTTP/1 limit on a request
/// head (about 408 KiB), so kla's limit is the one a client meets and its answer is kla's JSON.
pub const MAX_HEADER_BYTES: usize = 256 * 1024;

/// The largest `max_uri_bytes`: hyper's own HTTP/1 limit.
pub const MAX_URI_BYTES: usize = 65534;

impl Default for Limits {
    /// Sized for a sidecar: a few agents on loopback or a pod network, not the open internet.
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            h2_max_concurrent_streams: 100,
            h2_keepalive_interval: Some(Duration::from_secs(20)),
            h2_keepalive_timeout: Duration::from_secs(20),
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

const NONE: u64 = u64::MAX;

/// What a connection's IO and requests report to its watchdog. Times are milliseconds since the accept.
pub(super) struct Activity {
    base: Instant,
    idle_ms: u64,
    header_ms: u64,
    in_flight: AtomicU32,
    served: AtomicBool,
    h2: AtomicBool,
    idle_since: AtomicU64,
    first_read: AtomicU64,
    write_blocked: AtomicU64,
}

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No request headers in time.
    Header,
    /// No request for the idle timeout.
    Idle,
    /// The client stopped reading its response.
    WriteStalled,
}

impl Activity {
    pub(super) fn new(base: Instant, limits: &Limits) -> Arc<Activity> {
        Arc::new(Activity {
            base,
            idle_ms: ms(limits.idle_timeout),
            header_ms: ms(limits.header_timeout),
            in_flight: AtomicU32::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            first_read: AtomicU64::new(NONE),
            write_blocked: AtomicU64::new(NONE),
        })
    }

    fn now_ms(&self) -> u64 {
        ms(self.base.elapsed())
    }

    pub(super) fn at(&self, ms: u64) -> Instant {
        // `Limits` built in code may hold any duration; a year is as good as never.
        let far = Duration::from_secs(365 * 24 * 3600);
        self.base
            .checked_add(Duration::from_millis(ms).min(far))
            .unwrap_or(self.base)
    }

    /// The accept time plus the header timeout: the end of the TLS handshake and the first request's headers.
    pub(super) fn first_deadline(&self) -> Instant {
        self.at(self.header_ms)
    }

    /// A request's headers are in. The returned guard ends the request when dropped (with its response body).
    fn start(self: &Arc<Self>, h2: bool) -> Guard {
        self.in_flight.fetch_add(1, Relaxed);
        if !self.served.load(Relaxed) {
            self.served.store(true, Relaxed);
        }
        if h2 && !self.h2.load(Relaxed) {
            self.h2.store(true, Relaxed);
        }
        if self.first_read.load(Relaxed) != NONE {
            self.first_read.store(NONE, Relaxed);
        }
        Guard(self.clone())
    }

    /// No request in progress, and none started since bytes were last read while idle.
    fn between_requests(&self) -> bool {
        self.in_flight.load(Relaxed) == 0 && self.first_read.load(Relaxed) != NONE
    }

    fn read(&self) {
        if self.in_flight.load(Relaxed) == 0 && self.first_read.load(Relaxed) == NONE {
            self.first_read.store(self.now_ms(), Relaxed);
        }
    }

    /// The next deadline and what expires then; `None` while a request is in progress and the socket takes writes.
    pub(super) fn deadline(&self) -> Option<(u64, Expiry)> {
        let blocked = self.write_blocked.load(Relaxed);
        let stalled = (blocked != NONE).then(|| (blocked.saturating_add(self.idle_ms), Expiry::WriteStalled));
        if self.in_flight.load(Relaxed) > 0 {
            return stalled;
        }
        let waiting = if !self.served.load(Relaxed) {
            (self.header_ms, Expiry::Header)
        } else {
            let first = self.first_read.load(Relaxed);
            if first != NONE && !self.h2.load(Relaxed) {
                (first.saturating_add(self.header_ms), Expiry::Header)
            } else {
                (
                    self.idle_since.load(Relaxed).saturating_add(self.idle_ms),
                    Expiry::Idle,
                )
            }
        };
        Some(match stalled {
            Some(s) if s.0 < waiting.0 => s,
            _ => waiting,
        })
    }

    /// When the watchdog wakes: `Err` if the deadline has passed, else when to look again.
    pub(super) fn check(&self) -> Result<u64, Expiry> {
        let now = self.now_ms();
        match self.deadline() {
            Some((at, why)) if at <= now => Err(why),
            Some((at, _)) => Ok(at),
            None => Ok(now.saturating_add(self.idle_ms)),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(NONE - 1)
}

/// One request in progress; dropped with its response body (or with the request, if no response was made).
struct Guard(Arc<Activity>);

impl Drop for Guard {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Relaxed) == 1 {
            a.idle_since.store(a.now_ms(), Relaxed);
            a.first_read.store(NONE, Relaxed);
        }
    }
}

/// A connection's IO, reporting reads and stalled writes to its [`Activity`], and putting kla's JSON error in
/// place of hyper's empty HTTP/1 answer to a request it could not parse (see [`errors::rewrite_canned`]).
pub(super) struct Tracked<I> {
    io: I,
    activity: Arc<Activity>,
    blocked: bool,
    // kla's answer in place of hyper's, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl<I> Tracked<I> {
    pub(super) fn new(io: I, activity: Arc<Activity>) -> Self {
        Tracked {
            io,
            activity,
            blocked: false,
            replacement: None,
        }
    }

    /// kla's answer if `buf` is hyper's answer to a request it could not parse: written while no request is in
    /// progress and none has started since the connection last read, which is when hyper writes one (a response of
    /// the router is written while its request is in progress, or after it without a read in between).
    fn canned(&self, buf: &[u8]) -> Option<Vec<u8>> {
        if !errors::may_be_canned(buf) || !self.activity.between_requests() {
            return None;
        }
        errors::rewrite_canned(buf)
    }

    fn wrote<T>(&mut self, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match &r {
            Poll::Pending if !self.blocked => {
                self.blocked = true;
                self.activity.write_blocked.store(self.activity.now_ms(), Relaxed);
            }
            Poll::Ready(_) if self.blocked => {
                self.blocked = false;
                self.activity.write_blocked.store(NONE, Relaxed);
            }
            _ => {}
        }
        r
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> Tracked<I> {
    /// Writes what is left of the replacement answer.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, done)) = &mut self.replacement {
            if *done == bytes.len() {
                self.replacement = None;
                break;
            }
            let r = Pin::new(&mut self.io).poll_write(cx, &bytes[*done..]);
            match ready!(r) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => *done += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes hyper's canned answer in `buf` as written, and queues kla's instead.
    fn replace(&mut self, cx: &mut Context<'_>, len: usize, with: Vec<u8>) -> Poll<std::io::Result<usize>> {
        self.replacement = Some((with, 0));
        // What does not fit now is written by the flush that follows.
        if let Poll::Ready(Err(e)) = self.poll_replacement(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(len))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        if let Some(with) = self.canned(buf) {
            return self.replace(cx, buf.len(), with);
        }
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        // hyper writes its canned answer as one buffer.
        if let [buf] = bufs
            && let Some(with) = self.canned(buf)
        {
            return self.replace(cx, buf.len(), with);
        }
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.wrote(r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The router behind a connection: counts requests in progress, refuses a body declared over the limit before
/// reading it, and puts the body read deadline on the request.
#[derive(Clone)]
pub(super) struct Service {
    pub(super) router: axum::Router,
    pub(super) activity: Arc<Activity>,
    pub(super) body_limit: Option<u64>,
    pub(super) body_timeout: Duration,
    pub(super) max_header_bytes: usize,
    pub(super) max_uri_bytes: usize,
    /// The client's address, handed to handlers as `ConnectInfo` (the proxy's `x-forwarded-for`).
    pub(super) peer: std::net::SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<GuardedBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> ResponseFuture {
        let guard = Some(self.activity.start(req.version() == http::Version::HTTP_2));
        if let Some(early) = self.refuse(&req) {
            return ResponseFuture {
                state: State::Early(Some(early)),
                guard,
            };
        }
        let timeout = self.body_timeout;
        let mut req = req;
        req.extensions_mut().insert(axum::extract::ConnectInfo(self.peer));
        let req = req.map(|inner| TimedBody {
            inner,
            timeout,
            sleep: None,
        });
        let mut router = self.router.clone();
        ResponseFuture {
            state: State::Route(tower::Service::call(&mut router, req)),
            guard,
        }
    }
}

impl Service {
    /// The answer to a request refused before the router: a target or headers over the limits, a declared body
    /// over the body limit.
    fn refuse(&self, req: &Request<Incoming>) -> Option<Response<Body>> {
        let uri = req.uri();
        let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len());
        let (status, message) = if target > self.max_uri_bytes {
            (
                StatusCode::URI_TOO_LONG,
                format!("the request target is longer than {} bytes", self.max_uri_bytes),
            )
        } else if header_bytes(req.headers()) > self.max_header_bytes {
            (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "the request headers are larger than {} bytes",
                    self.max_header_bytes
                ),
            )
        } else if let Some(limit) = self.body_limit
            && req.body().size_hint().lower() > limit
        {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {limit} bytes"),
            )
        } else {
            return None;
        };
        Some(errors::response(status, &message, Some(req.headers())))
    }
}

/// A header block's size as HTTP/1 sends it (`name: value\r\n`).
fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum()
}

/// The response of [`Service`].
pub(super) struct ResponseFuture {
    state: State,
    guard: Option<Guard>,
}

enum State {
    Route(axum::routing::future::RouteFuture<Infallible>),
    Early(Option<Response<Body>>),
}

impl Future for ResponseFuture {
    type Output = Result<Response<GuardedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = match &mut self.state {
            State::Route(fut) => match ready!(Pin::new(fut).poll(cx)) {
                Ok(resp) => resp,
                Err(never) => match never {},
            },
            State::Early(resp) => resp.take().unwrap_or_default(),
        };
        let guard = self.guard.take();
        Poll::Ready(Ok(resp.map(|inner| GuardedBody { inner, _guard: guard })))
    }
}

/// A response body that ends its request when dropped.
pub(super) struct GuardedBody {
    inner: Body,
    _guard: Option<Guard>,
}

impl hyper::body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails once it has waited `timeout` for data.
pub(super) struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    // Armed at the first wait only: a body that came with its headers costs no timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(Duration);

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyTimeout(timeout).into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
