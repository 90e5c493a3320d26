//! Listeners: several served and drained together, their addresses read back by name, and (with lowered limits)
//! the connection cap, the idle, header and body timeouts, and the early 413, each against slow or idle raw TCP
//! clients.

use crate::harness::*;
use axum::routing::get;
use std::io::BufRead;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Two listeners with their own routers: both bound on port 0, both reachable by name, and one shutdown stops both
/// after letting a request in flight on each finish.
#[tokio::test]
async fn several_listeners_are_served_and_drained_together() {
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let slow = |name: &'static str| {
        let mut rx = release_rx.clone();
        axum::Router::new()
            .route("/", get(move || async move { name }))
            .route(
                "/slow",
                get(move || async move {
                    let _ = rx.wait_for(|go| *go).await;
                    name
                }),
            )
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let bound = kla::server::bind(vec![
        kla::server::Listener::new("one", any, slow("one")),
        kla::server::Listener::new("two", any, slow("two")),
    ])
    .await
    .expect("bind");
    let addrs = bound.addrs();
    assert_eq!(addrs.keys().collect::<Vec<_>>(), ["one", "two"]);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(bound.serve(shutdown.clone(), Duration::from_secs(10)));
    let client = reqwest::Client::new();
    for (name, addr) in &addrs {
        let body = client
            .get(format!("http://{addr}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(&body, name);
    }
    // One request in flight on each listener, then shut down.
    let in_flight: Vec<_> = addrs
        .values()
        .map(|addr| tokio::spawn(client.get(format!("http://{addr}/slow")).send()))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for addr in addrs.values() {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "{addr} stopped accepting"
        );
    }
    assert!(
        !served.is_finished(),
        "the drain waits for the requests in flight"
    );
    release_tx.send(true).unwrap();
    for (r, name) in in_flight.into_iter().zip(addrs.keys()) {
        let body = r.await.unwrap().expect("drained, not cut").text().await.unwrap();
        assert_eq!(&body, name);
    }
    tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("stopped once drained")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn two_listeners_may_not_share_a_name() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let err = kla::server::bind(vec![
        kla::server::Listener::new("api", any, axum::Router::new()),
        kla::server::Listener::new("api", any, axum::Router::new()),
    ])
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("\"api\""), "{err}");
}

/// `Running` names every bound address; `api_addr` is the API listener's.
#[tokio::test]
async fn the_running_server_exposes_its_addresses_by_listener_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = raw(tmp.path()).validate().unwrap();
    let running = kla::app::start(cfg).await.expect("starts");
    assert_eq!(running.listeners.get("api"), Some(&running.api_addr));
    assert_ne!(running.api_addr.port(), 0);
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}

/// The API listener's log line keeps its exact message and its `addr` field, which tools parse.
#[tokio::test]
async fn the_api_listener_logs_its_bound_address() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(kla_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(tmp.path())
        .args(["--api-addr", "127.0.0.1:0", "--log-format", "json"])
        .arg("--policies")
        .arg(repo_path("policies"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (printed, logged) = tokio::task::spawn_blocking(move || {
        let mut printed = String::new();
        std::io::BufReader::new(stdout).read_line(&mut printed).unwrap();
        let logged = std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("listening"))
            .unwrap();
        (printed, logged)
    })
    .await
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(line["fields"]["message"], "kla API listening", "{logged}");
    let addr = line["fields"]["addr"].as_str().unwrap();
    assert_eq!(printed.trim(), format!("kla listening on {addr}"));
}

// ---- limits and timeouts, against raw TCP clients ----

const TENANT: &str = "acme";

/// The `host:port` of a server's API.
fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection (EOF or reset) and returns how long that took; panics if it is
/// still open after `max`.
async fn closed_within(stream: &mut TcpStream, max: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t + max).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {max:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// A raw HTTP/1.1 response: status, lower-case headers, body.
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    #[track_caller]
    fn assert_error(&self, status: u16) {
        let body = self.json();
        assert_eq!(self.status, status, "{body}");
        assert_eq!(body["code"], "invalid_request", "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert!(
            self.header("x-request-id").is_some_and(|id| !id.is_empty()),
            "x-request-id"
        );
    }
}

/// Reads one response (with a `content-length` body) within `max`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, max: Duration) -> RawResp {
    tokio::time::timeout(max, async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed inside the body");
            body.extend_from_slice(&chunk[..n]);
        }
        RawResp {
            status,
            headers,
            body,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no response within {max:?}"))
}

/// An idle HTTP/1.1 keep-alive connection is closed after the idle timeout (counted from the last response, not
/// the header timeout), while one that keeps sending requests stays open.
#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let s = Server::start_with(|c| {
        c.api_idle_timeout = Some("1s".into());
        c.api_header_timeout = Some("3s".into());
    })
    .await;
    let mut conn = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    for _ in 0..4 {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: kla\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut conn, Duration::from_secs(2)).await.status, 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let idle = closed_within(&mut conn, Duration::from_secs(3)).await;
    assert!(
        idle < Duration::from_millis(1800),
        "closed about 1 s after the last response, before the 3 s header timeout: {idle:?}"
    );
    s.stop().await;
}

/// The same for an HTTP/2 (prior knowledge, h2c) connection with no stream open.
#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let s = Server::start_with(|c| {
        c.api_idle_timeout = Some("1s".into());
        c.api_header_timeout = Some("3s".into());
    })
    .await;
    let mut conn = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    // Preface, empty SETTINGS, then HEADERS (END_STREAM | END_HEADERS) on stream 1 for GET /healthz in HPACK:
    // :method GET (static 2), :scheme http (static 6), :path (static name 4) "/healthz", :authority (1) "kla".
    let mut hpack = vec![0x82, 0x86, 0x44, 8];
    hpack.extend_from_slice(b"/healthz");
    hpack.extend_from_slice(&[0x41, 3]);
    hpack.extend_from_slice(b"kla");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, hpack.len() as u8, 1, 0x5, 0, 0, 0, 1]);
    out.extend_from_slice(&hpack);
    conn.write_all(&out).await.unwrap();
    // Read frames until stream 1 ends (a frame on stream 1 with END_STREAM).
    let t = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    'frames: loop {
        let mut at = 0;
        while buf.len() >= at + 9 {
            let len =
                (usize::from(buf[at]) << 16) | (usize::from(buf[at + 1]) << 8) | usize::from(buf[at + 2]);
            let (kind, flags) = (buf[at + 3], buf[at + 4]);
            let stream =
                u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]) & 0x7fff_ffff;
            if buf.len() < at + 9 + len {
                break;
            }
            if stream == 1 && (kind == 0 || kind == 1) && flags & 0x1 != 0 {
                break 'frames;
            }
            at += 9 + len;
        }
        let n = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        assert!(n > 0, "closed before the response");
        buf.extend_from_slice(&chunk[..n]);
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    let answered = Instant::now();
    closed_within(&mut conn, Duration::from_secs(3)).await;
    let idle = answered.elapsed();
    assert!(
        idle > Duration::from_millis(700) && idle < Duration::from_millis(2500),
        "closed about 1 s after the last stream: {idle:?}"
    );
    s.stop().await;
}

/// A slow-loris client sending its headers byte by byte is cut off at the header timeout: on a new connection
/// (counted from the accept) and on a keep-alive one (counted from the request's first byte, not the idle timeout).
#[tokio::test]
async fn a_slow_loris_client_is_cut_off_at_the_header_timeout() {
    let s = Server::start_with(|c| {
        c.api_idle_timeout = Some("30s".into());
        c.api_header_timeout = Some("1s".into());
    })
    .await;
    let drip = |mut conn: TcpStream| async move {
        let t = Instant::now();
        let head = b"GET /healthz HTTP/1.1\r\nhost: kla\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head.iter() {
            if conn.write_all(&[*b]).await.is_err() {
                return t.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if t.elapsed() > Duration::from_secs(4) {
                panic!("still accepting header bytes after 4 s");
            }
        }
        panic!("the whole slow head was read");
    };
    let fresh = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    let cut = drip(fresh).await;
    assert!(cut < Duration::from_millis(2500), "{cut:?}");

    let mut kept = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: kla\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept, Duration::from_secs(2)).await.status, 200);
    let cut = drip(kept).await;
    assert!(cut < Duration::from_millis(2500), "{cut:?}");
    s.stop().await;
}

/// A request body that arrives too slowly is cut off at the body timeout with a 400 `invalid_request`.
#[tokio::test]
async fn a_slow_body_is_cut_off_at_the_body_timeout() {
    let s = Server::start_with(|c| c.api_body_timeout = Some("1s".into())).await;
    let tok = s.token(TENANT, kla::auth::Role::Admin);
    let body = serde_json::to_vec(&agent_body("slow")).unwrap();
    let mut conn = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    let head = format!(
        "POST /v1/agents HTTP/1.1\r\nhost: kla\r\nauthorization: Bearer {tok}\r\nx-tenant-id: {TENANT}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    let t = Instant::now();
    let (mut rd, mut wr) = conn.into_split();
    let dripping = tokio::spawn(async move {
        for b in &body[10..] {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(4), rd.read(&mut chunk)).await {
            Err(_) => panic!("the slow body was not cut off"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    dripping.abort();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(
        text.contains("\"code\":\"invalid_request\"") && text.contains("did not arrive within"),
        "{text}"
    );
    s.stop().await;
}

/// A Content-Length over the body limit is answered 413 at once, before any of the body is sent.
#[tokio::test]
async fn a_declared_oversized_body_gets_413_before_it_is_sent() {
    let s = Server::start_with(|c| c.body_limit = Some(1024)).await;
    let tok = s.token(TENANT, kla::auth::Role::Admin);
    for path in ["/v1/decisions.evaluate", "/v1/agents"] {
        let mut conn = TcpStream::connect(addr_of(&s.base)).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: kla\r\nauthorization: Bearer {tok}\r\nx-tenant-id: {TENANT}\r\n\
             content-type: application/json\r\nx-request-id: big-1\r\ncontent-length: 1000000\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let r = read_response(&mut conn, Duration::from_secs(2)).await;
        r.assert_error(413);
        assert_eq!(
            r.header("x-request-id"),
            Some("big-1"),
            "the client's request id is kept"
        );
        assert!(r.json()["message"].as_str().unwrap().contains("1024"));
    }
    s.stop().await;
}

/// A request in progress is not cut by the idle timeout, and a client that stops reading a long response is cut
/// after it.
#[tokio::test]
async fn the_idle_timeout_spares_requests_in_progress_but_not_stalled_readers() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let router = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                "done"
            }),
        )
        .route("/big", get(|| async { vec![b'x'; 64 << 20] }));
    let limits = kla::server::Limits {
        idle_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let bound = kla::server::bind(vec![kla::server::Listener::new("t", any, router).limits(limits)])
        .await
        .unwrap();
    let addr = bound.addrs()["t"];
    let shutdown = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(bound.serve(shutdown.clone(), Duration::from_secs(5)));

    let body = reqwest::get(format!("http://{addr}/slow"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "done", "a 2.5 s handler outlives a 1 s idle timeout");

    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /big HTTP/1.1\r\nhost: kla\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut total = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), conn.read(&mut chunk)).await {
            Err(_) => panic!("neither data nor close"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
        }
    }
    assert!(
        total < 64 << 20,
        "the stalled response was cut ({total} bytes read)"
    );
    shutdown.cancel();
    served.await.unwrap().unwrap();
}

/// Open descriptors of a process.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// `kla serve` with `extra` flags, under `ulimit -n` when given, on port 0; returns the child and its address.
async fn spawn_kla(
    data_dir: &std::path::Path,
    nofile: Option<u32>,
    extra: &[&str],
) -> (std::process::Child, String) {
    let mut cmd = std::process::Command::new("sh");
    let limit = nofile.map(|n| format!("ulimit -n {n} && ")).unwrap_or_default();
    cmd.arg("-c")
        .arg(format!("{limit}exec \"$0\" \"$@\""))
        .arg(kla_bin())
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--api-addr", "127.0.0.1:0", "--policy-deadline", "2s"])
        .arg("--policies")
        .arg(repo_path("policies"))
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("kla listening on ")
        .unwrap_or_else(|| panic!("kla serve failed to start: {line:?}"))
        .to_owned();
    (child, addr)
}

/// With a cap of N: N idle connections delay a new client only until they time out; connections over the cap are
/// not accepted (no descriptor) while the cap is full, and are accepted and closed in turn as slots free.
#[tokio::test]
async fn connections_over_the_cap_wait_and_do_not_hold_descriptors() {
    const CAP: usize = 4;
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_kla(
        tmp.path(),
        None,
        &[
            "--api-max-connections",
            "4",
            "--api-header-timeout",
            "500ms",
            "--api-idle-timeout",
            "500ms",
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let readyz = |client: reqwest::Client, addr: String| async move {
        let r = client.get(format!("http://{addr}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    };
    readyz(client.clone(), addr.clone()).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let base = fds(child.id());

    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(3), readyz(client.clone(), addr.clone()))
        .await
        .expect("served once the idle connections timed out");
    assert!(
        t.elapsed() > Duration::from_millis(250),
        "the cap held the client back: {:?}",
        t.elapsed()
    );
    for c in &mut idle {
        closed_within(c, Duration::from_secs(2)).await;
    }

    let mut over = Vec::new();
    for _ in 0..4 * CAP {
        over.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = fds(child.id());
    assert!(
        held <= base + CAP,
        "{held} descriptors with {} connections (base {base}, cap {CAP})",
        over.len()
    );
    for c in &mut over {
        closed_within(c, Duration::from_secs(5)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Many raw connections held open by a client with no token, more than the server has descriptors for: the server
/// closes them in turn and then answers `/readyz` and a real decision.
#[tokio::test]
async fn a_descriptor_exhaustion_attempt_leaves_the_server_answering() {
    const ATTACKERS: usize = 160;
    let tmp = tempfile::tempdir().unwrap();
    let (mut child, addr) = spawn_kla(
        tmp.path(),
        Some(128),
        &["--api-max-connections", "48", "--api-header-timeout", "500ms"],
    )
    .await;
    let tok = token_for(tmp.path(), &[TENANT], kla::auth::Role::Admin);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    let r = client
        .post(format!("{base}/v1/agents"))
        .bearer_auth(&tok)
        .header("x-tenant-id", TENANT)
        .json(&agent_body("claims-bot"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let agent: serde_json::Value = r.json().await.unwrap();
    let agent = agent["agentId"].as_str().unwrap().to_owned();

    let mut attack = Vec::new();
    for _ in 0..ATTACKERS {
        attack.push(TcpStream::connect(&addr).await.unwrap());
    }
    let t = Instant::now();
    for c in &mut attack {
        closed_within(c, Duration::from_secs(8)).await;
    }
    assert!(t.elapsed() < Duration::from_secs(8));
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        client.get(format!("{base}/readyz")).send(),
    )
    .await
    .expect("readyz answered")
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = tokio::time::timeout(
        Duration::from_secs(3),
        client
            .post(format!("{base}/v1/decisions.evaluate"))
            .bearer_auth(&tok)
            .header("x-tenant-id", TENANT)
            .json(&serde_json::json!({"agentId": agent, "action": "lookup_policy", "context": {}}))
            .send(),
    )
    .await
    .expect("a decision answered")
    .unwrap();
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body["decision"].is_string(), "{body}");
    drop(attack);
    let _ = child.kill();
    let _ = child.wait();
}

// ---- errors raised before the router ----

/// Sends `request` on a new connection and reads the answer.
async fn raw_exchange(s: &Server, request: &[u8]) -> RawResp {
    let mut conn = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    // A huge request may be answered (and the connection closed) before it is all sent.
    let _ = conn.write_all(request).await;
    read_response(&mut conn, Duration::from_secs(3)).await
}

/// Requests hyper cannot parse (a bad request line, a malformed Content-Length, a head over hyper's own limits)
/// get kla's JSON error with an `x-request-id`, not hyper's empty answer; on a new connection and after a good
/// request on a kept-alive one.
#[tokio::test]
async fn requests_hyper_cannot_parse_get_json_errors() {
    let s = Server::start().await;
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nhost: kla\r\nx-big: {}\r\n\r\n",
        "a".repeat(500 * 1024)
    );
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\nhost: kla\r\n{}\r\n",
        (0..120).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
    );
    let huge_target = format!("GET /{} HTTP/1.1\r\nhost: kla\r\n\r\n", "a".repeat(70 * 1024));
    for (request, status) in [
        (b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            b"GET /healthz HTTP/1.1\r\nhost: kla\r\nbad header line\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /v1/agents HTTP/1.1\r\nhost: kla\r\ncontent-length: abc\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST /v1/agents HTTP/1.1\r\nhost: kla\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
                .to_vec(),
            400,
        ),
        (huge_header.into_bytes(), 431),
        (many_headers.into_bytes(), 431),
        (huge_target.into_bytes(), 414),
    ] {
        let r = raw_exchange(&s, &request).await;
        r.assert_error(status);
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
    }
    // After a good request on the same connection.
    let mut conn = TcpStream::connect(addr_of(&s.base)).await.unwrap();
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: kla\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn, Duration::from_secs(2)).await.status, 200);
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: kla\r\ncontent-length: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut conn, Duration::from_secs(2))
        .await
        .assert_error(400);
    closed_within(&mut conn, Duration::from_secs(2)).await;
    // Responses of the router are untouched, an empty-bodied one included.
    let r = raw_exchange(&s, b"GET /nope HTTP/1.1\r\nhost: kla\r\n\r\n").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "not_found");
    s.stop().await;
}

/// A target or a header block over the listener's (lowered) limits gets 414 / 431 in kla's form, keeping the
/// client's request id, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn a_target_or_headers_over_the_limits_get_json_errors() {
    let s = Server::start_with(|c| {
        c.api_max_header_bytes = Some(4096);
        c.api_max_uri_bytes = Some(1024);
    })
    .await;
    let r = raw_exchange(
        &s,
        format!(
            "GET /healthz?{} HTTP/1.1\r\nhost: kla\r\nx-request-id: long-1\r\n\r\n",
            "q".repeat(2000)
        )
        .as_bytes(),
    )
    .await;
    r.assert_error(414);
    assert_eq!(r.header("x-request-id"), Some("long-1"));
    assert!(r.json()["message"].as_str().unwrap().contains("1024"));
    let r = raw_exchange(
        &s,
        format!(
            "GET /healthz HTTP/1.1\r\nhost: kla\r\nx-big: {}\r\n\r\n",
            "a".repeat(8000)
        )
        .as_bytes(),
    )
    .await;
    r.assert_error(431);
    assert!(r.json()["message"].as_str().unwrap().contains("4096"));
    // Under the limits: served.
    let r = raw_exchange(
        &s,
        format!(
            "GET /healthz?{} HTTP/1.1\r\nhost: kla\r\nx-big: {}\r\n\r\n",
            "q".repeat(900),
            "a".repeat(3000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (url, header, status) in [
        (
            format!("{}/healthz?{}", s.base, "q".repeat(2000)),
            String::new(),
            414,
        ),
        (format!("{}/healthz", s.base), "a".repeat(8000), 431),
    ] {
        let mut rb = h2.get(&url).header("x-request-id", "h2-1");
        if !header.is_empty() {
            rb = rb.header("x-big", header);
        }
        let resp = rb.send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["x-request-id"], "h2-1");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request", "{body}");
    }
    s.stop().await;
}

/// Over HTTPS: the header timeout covers the TLS handshake (a client that connects and never starts one is closed),
/// and a request hyper cannot parse still gets kla's JSON answer (it is rewritten above TLS).
#[tokio::test]
async fn https_listeners_have_the_same_deadlines_and_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut cfg = raw(&tmp.path().join("data"));
    cfg.tls_cert = Some(cert);
    cfg.tls_key = Some(key);
    cfg.api_header_timeout = Some("1s".into());
    let running = kla::app::start(cfg.validate().unwrap()).await.unwrap();
    let addr = running.api_addr;

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let closed = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(closed < Duration::from_millis(2500), "{closed:?}");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: kla\r\ncontent-length: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut tls, Duration::from_secs(2))
        .await
        .assert_error(400);
    running.shutdown.cancel();
    running.done.await.unwrap().unwrap();
}
