#![allow(dead_code)] // Helpers used by some test modules only.

//! The one set of helpers every test module uses: starting kla (in process with [`Server`], or the real binary
//! with [`Process`]), minting tokens, and sending requests through an [`Api`] that reads each answer whole into a
//! [`Resp`]; `pack` writes the unsigned policy packs tests start kla with.

mod pack;

pub use pack::{pack_yaml, write_pack, write_pack_file};

use crate::verifier::{Cp, VKey, parse_vkey, verify_checkpoint};
use kla::auth::{self, Role, keys};
use kla::config::RawConfig;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A running kla as a test sees it: where it listens, its data dir (whose key mints tokens) and a client.
/// [`Server`] and [`Process`] both dereference to one.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
}

/// A client that gives up on a hung request, so a hang fails its test instead of the whole run.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

impl Api {
    /// A token for `tenant` with `role`, minted with this kla's key.
    pub fn token(&self, tenant: &str, role: Role) -> String {
        token_for(&self.data_dir, &[tenant], role)
    }

    /// A request without auth headers.
    pub fn anon(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// A request with the bearer token and `x-tenant-id`.
    pub fn req(&self, method: Method, path: &str, token: &str, tenant: &str) -> reqwest::RequestBuilder {
        self.anon(method, path)
            .bearer_auth(token)
            .header("x-tenant-id", tenant)
    }

    /// An authenticated GET, read whole.
    /// Casts `decision` (`APPROVED` or `DENIED`) on `approval` as `token`'s holder, with `comment` when given (the
    /// key is left out otherwise); the answer whole.
    pub async fn vote(
        &self,
        token: &str,
        tenant: &str,
        approval: &str,
        decision: &str,
        comment: Option<&str>,
    ) -> Resp {
        let mut body = serde_json::json!({ "decision": decision });
        if let Some(c) = comment {
            body["comment"] = c.into();
        }
        let path = format!("/v1/approvals/{approval}/decision");
        send(self.req(Method::POST, &path, token, tenant).json(&body)).await
    }

    pub async fn get(&self, path: &str, token: &str, tenant: &str) -> Resp {
        send(self.req(Method::GET, path, token, tenant)).await
    }

    /// An authenticated GET that must answer 200 with `text/plain`; returns the text.
    pub async fn text(&self, path: &str, token: &str, tenant: &str) -> String {
        let r = self.get(path, token, tenant).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain"), "{path}: {ct}");
        r.text()
    }

    /// Registers an agent (`agent_body(name)`), asserts 201 and returns its id.
    pub async fn register(&self, token: &str, tenant: &str, name: &str) -> String {
        let r = send(
            self.req(Method::POST, "/v1/agents", token, tenant)
                .json(&agent_body(name)),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["agentId"].as_str().expect("agentId");
        assert!(id.starts_with("agt_"), "{}", r.body);
        id.to_owned()
    }

    /// `POST /v1/decisions.evaluate` for `agent`, `action` and `context`, whatever the answer.
    pub async fn evaluate(
        &self,
        token: &str,
        tenant: &str,
        agent: &str,
        action: &str,
        context: Value,
    ) -> Resp {
        send(
            self.req(Method::POST, "/v1/decisions.evaluate", token, tenant)
                .json(&serde_json::json!({"agentId": agent, "action": action, "context": context})),
        )
        .await
    }

    /// `POST /v1/decisions.evaluate` with `body`; asserts 200 with a decision, lineage and ledger index, and
    /// returns the answer's body.
    pub async fn decide(&self, token: &str, tenant: &str, body: Value) -> Value {
        let r = send(
            self.req(Method::POST, "/v1/decisions.evaluate", token, tenant)
                .json(&body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.body["decisionId"]
                .as_str()
                .is_some_and(|d| d.starts_with("dec_")),
            "{}",
            r.body
        );
        assert!(
            r.body["lineageId"].as_str().is_some_and(|l| l.starts_with("lr_")),
            "{}",
            r.body
        );
        assert!(r.body["ledgerIndex"].is_u64(), "{}", r.body);
        r.body
    }

    /// `GET /v1/ledger/key`: the key line (without its newline) and the key parsed.
    pub async fn ledger_key(&self, token: &str, tenant: &str) -> (String, VKey) {
        let text = self.text("/v1/ledger/key", token, tenant).await;
        let k = parse_vkey(&text);
        (text.trim_end().to_owned(), k)
    }

    /// `GET /v1/ledger/checkpoint`, its signature checked with `key`.
    pub async fn checkpoint(&self, token: &str, tenant: &str, key: &VKey) -> Cp {
        let text = self.text("/v1/ledger/checkpoint", token, tenant).await;
        verify_checkpoint(&text, key)
    }

    /// Entries `[0, end)` from `GET /v1/ledger/entries`, one line each (without its newline).
    pub async fn entries(&self, token: &str, tenant: &str, end: u64) -> Vec<Vec<u8>> {
        let r = self
            .get(&format!("/v1/ledger/entries?start=0&end={end}"), token, tenant)
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
        assert_eq!(r.header("x-kla-next"), Some(end.to_string().as_str()));
        assert!(r.bytes.is_empty() || r.bytes.ends_with(b"\n"));
        let mut lines: Vec<Vec<u8>> = r.bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
        lines.pop();
        assert_eq!(lines.len() as u64, end);
        lines
    }
}

/// Sends and reads the whole answer. Every answer of kla carries `x-request-id` (docs/api.md, "Request id"),
/// so every test checks that on every answer it reads.
pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("request sent");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body").to_vec();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let resp = Resp {
        status,
        headers,
        body,
        bytes,
    };
    assert!(
        resp.header("x-request-id").is_some_and(|id| !id.is_empty()),
        "an answer without x-request-id: {resp:?}"
    );
    resp
}

/// An answer, read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON; `Null` when it is empty or not JSON.
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resp")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &self.text())
            .finish()
    }
}

impl Resp {
    /// Asserts the KLA Control Plane API's error answer: `status`, a JSON `{"code","message"}` body with `code`
    /// and a message.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        self.assert_error_with(status, code, &[]);
    }

    /// As [`Resp::assert_error`], with the named extra fields beside code and message (a conflict's stored
    /// state).
    #[track_caller]
    pub fn assert_error_with(&self, status: u16, code: &str, extra: &[&str]) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        for k in extra {
            assert!(self.body.get(*k).is_some(), "field {k}: {}", self.body);
        }
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        assert_eq!(
            self.body.as_object().map(|o| o.len()),
            Some(2 + extra.len()),
            "only code, message and {extra:?}: {}",
            self.body
        );
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{:?}",
            self.headers
        );
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tokens.

/// A kla token for `tenants` with `role`, minted with the data dir's key (the same path `kla token` uses).
pub fn token_for(data_dir: &Path, tenants: &[&str], role: Role) -> String {
    mint(data_dir, tenants, role, None)
}

/// An agent token for `tenant` bound to the agent named `agent` (what `kla token --agent` mints).
pub fn agent_token(data_dir: &Path, tenant: &str, agent: &str) -> String {
    mint(data_dir, &[tenant], Role::Agent, Some(agent))
}

fn mint(data_dir: &Path, tenants: &[&str], role: Role, agent: Option<&str>) -> String {
    let key = keys::load(&keys::token_key_path(data_dir)).expect("token key exists");
    auth::mint(
        key.private_pem.as_bytes(),
        tenants.iter().map(|t| t.to_string()).collect(),
        role,
        format!("test-{}", role.as_str()),
        agent.map(str::to_owned),
        Duration::from_secs(3600),
    )
    .expect("mint")
}

// ---------------------------------------------------------------------------------------------------------
// Request bodies.

/// The agent manifest of the API reference's example, with a given name.
pub fn agent_body(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "description": "Triages inbound insurance claims",
        "model": "gpt-4.1",
        "temperature": 0.2,
        "tools": ["lookup_policy", "flag_for_review"]
    })
}

/// Every file under a data dir but its keys (the ledger, the SQLite store and its WAL), with its bytes: for tests
/// that a planted value is stored nowhere raw.
pub fn data_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("read data dir") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "keys") {
                    dirs.push(p);
                }
            } else {
                let bytes = std::fs::read(&p).expect("read data file");
                out.push((p, bytes));
            }
        }
    }
    out
}

/// Panics naming the file if any file of the data dir `dir` (see [`data_files`]) holds one of `planted`.
pub fn assert_nowhere_raw(dir: &Path, planted: &[&str]) {
    let files = data_files(dir);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("kla.db")),
        "the store is in the data dir"
    );
    for (path, bytes) in &files {
        for p in planted {
            assert!(
                !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
                "{} holds the planted {p:?}",
                path.display()
            );
        }
    }
}

/// Three evaluate bodies for `agent` with three different outcomes under the default pack.
pub fn cases(agent: &str) -> Vec<(Value, &'static str)> {
    vec![
        (
            serde_json::json!({"agentId": agent, "action": "lookup_policy", "context": {"claimId": "c-1"}}),
            "allow",
        ),
        (
            serde_json::json!({"agentId": agent, "action": "delete_claim", "context": {"claimId": "c-2"}}),
            "block",
        ),
        (
            serde_json::json!({"agentId": agent, "action": "execute_refund", "context": {"amount": 5000}}),
            "require_approval",
        ),
    ]
}

// ---------------------------------------------------------------------------------------------------------
// In process.

/// A server running in this process on 127.0.0.1:0; cancelled on drop.
pub struct Server {
    pub api: Api,
    running: Option<kla::app::Running>,
    _tmp: Option<tempfile::TempDir>,
}

impl Deref for Server {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// Raw config with `data_dir`, an ephemeral port and the repository's policies; tests adjust fields before
/// starting.
pub fn raw(data_dir: &Path) -> RawConfig {
    RawConfig {
        data_dir: Some(data_dir.to_owned()),
        api_addr: Some("127.0.0.1:0".into()),
        policies: Some(repo_path("policies")),
        // Tests run many servers on two cores; a 5 ms wall-clock deadline would fail closed under that load.
        policy_deadline: Some(POLICY_DEADLINE.into()),
        ..Default::default()
    }
}

/// The policy deadline of every server the tests start.
const POLICY_DEADLINE: &str = "2s";

/// A self-signed certificate for `localhost` written into `dir`, and a config serving HTTPS with it from the data
/// dir `dir/data`; returns the config, the certificate's PEM file and a client that trusts it and sends `localhost`
/// to 127.0.0.1.
pub fn https_config(dir: &Path) -> (RawConfig, PathBuf, reqwest::Client) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert file");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key file");
    let mut cfg = raw(&dir.join("data"));
    cfg.tls_cert = Some(cert.clone());
    cfg.tls_key = Some(key);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).expect("pem"))
        .resolve("localhost", "127.0.0.1:0".parse().expect("addr"))
        .build()
        .expect("client");
    (cfg, cert, client)
}

/// A path inside the repository (tests never depend on the working directory).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

impl Server {
    /// Starts with defaults in a new temp dir.
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// Starts in a new temp dir after `f` adjusts the config.
    pub async fn start_with(f: impl FnOnce(&mut RawConfig)) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cfg = raw(tmp.path());
        f(&mut cfg);
        let mut s = Self::start_cfg(cfg, None).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts with a full config and an optional HTTPS client with the host name it must use.
    pub async fn start_cfg(cfg: RawConfig, client: Option<(reqwest::Client, &str)>) -> Server {
        let data_dir = cfg.data_dir.clone().expect("data dir");
        let cfg = cfg.validate().expect("valid config");
        let https = cfg.api.listener.tls.is_some();
        let running = kla::app::start(cfg).await.expect("server starts");
        let (client, host) = match client {
            Some((c, host)) => (c, host.to_owned()),
            None => (self::client(), "127.0.0.1".to_owned()),
        };
        let scheme = if https { "https" } else { "http" };
        Server {
            api: Api {
                base: format!("{scheme}://{host}:{}", running.api_addr.port()),
                data_dir,
                client,
            },
            running: Some(running),
            _tmp: None,
        }
    }

    /// Starts with defaults and registers one agent; returns the server, the agent token that registered it and
    /// the agent's id.
    pub async fn with_agent(tenant: &str, name: &str) -> (Server, String, String) {
        let s = Server::start().await;
        let tok = s.token(tenant, Role::Agent);
        let agent = s.register(&tok, tenant, name).await;
        (s, tok, agent)
    }

    /// The bound address of listener `name` (`api`, `proxy`), if it runs.
    pub fn listener(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.running.as_ref()?.listeners.get(name).copied()
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
            r.done.await.expect("join").expect("clean stop");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.shutdown.cancel();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The real binary.

/// The `kla` binary built for these tests.
pub fn kla_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kla"))
}

/// Runs `kla ARGS` to completion.
pub fn kla(args: &[&str]) -> Output {
    Command::new(kla_bin()).args(args).output().expect("run kla")
}

/// A finished command's stdout and stderr, as text.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kla token --data-dir DIR ARGS`: asserts success and returns the token.
pub fn kla_token(data_dir: &Path, args: &[&str]) -> String {
    let dir = data_dir.to_str().expect("UTF-8 data dir");
    let out = kla(&[&["token", "--data-dir", dir][..], args].concat());
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8(out.stdout)
        .expect("UTF-8 token")
        .trim()
        .to_owned()
}

/// How long `kla serve` may take to bind its API listener.
const STARTUP: Duration = Duration::from_secs(30);

/// The real binary running `kla serve`; killed on drop. Its stdout and stderr are drained to a log file for as
/// long as it runs (so it never blocks on a full pipe), readable with [`Process::log`].
pub struct Process {
    pub api: Api,
    child: Child,
    log: Log,
    /// Every line kla writes, as it writes it (see [`Process::wait_log`]).
    lines: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Deref for Process {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// How a [`Process`] ended, with everything it wrote.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub log: String,
}

impl Exited {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl Process {
    /// Starts `kla serve` on `data_dir` (see [`Process::start`]); panics with its log if it exits instead.
    pub async fn serve(data_dir: &Path, extra: &[&str]) -> Process {
        match Process::start(data_dir, extra).await {
            Ok(p) => p,
            Err(e) => panic!("kla serve exited ({}):\n{}", e.status, e.log),
        }
    }

    /// Runs `kla serve --data-dir DIR --api-addr 127.0.0.1:0` with the repository's policies, plus `extra`, and
    /// waits for it to log `kla API listening` with the address it bound: no port is chosen before kla binds
    /// it, so no other test can take it in between. `Err` if kla exits first (it refused to start).
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Result<Process, Exited> {
        Process::start_env(data_dir, extra, &[]).await
    }

    /// [`Process::start`] with `env` set for kla (e.g. `RUST_LOG`, which then replaces the tests' own).
    pub async fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Result<Process, Exited> {
        Process::start_in(Command::new(kla_bin()), data_dir, extra, env).await
    }

    /// [`Process::start_env`] running `cmd`: the `kla` binary, or a wrapper that runs it with the arguments it is
    /// given (`sh -c '...; exec "$@"' sh <kla>`, to start kla under limits).
    pub async fn start_in(
        mut cmd: Command,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Process, Exited> {
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-addr", "127.0.0.1:0", "--policy-deadline", POLICY_DEADLINE])
            .arg("--policies")
            .arg(repo_path("policies"));
        if !extra.contains(&"--log-format") {
            cmd.args(["--log-format", "json"]);
        }
        // The listening line is logged at info: keep it whatever RUST_LOG the tests run with.
        let filter = env
            .iter()
            .find(|(k, _)| *k == "RUST_LOG")
            .map(|(_, v)| (*v).to_owned())
            .or_else(|| std::env::var("RUST_LOG").ok());
        if let Some(filter) = filter {
            cmd.env("RUST_LOG", format!("{filter},kla::app=info"));
        }
        cmd.envs(env.iter().filter(|(k, _)| *k != "RUST_LOG").copied());
        let mut child = cmd
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kla");
        let (mut log, mut lines) = Log::drain(&mut child);
        let listening = tokio::time::timeout(STARTUP, async {
            while let Some(line) = lines.recv().await {
                if let Some(l) = listening(&line) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match listening {
            Ok(Some((addr, tls))) => {
                let scheme = if tls { "https" } else { "http" };
                Ok(Process {
                    api: Api {
                        base: format!("{scheme}://{addr}"),
                        data_dir: data_dir.to_owned(),
                        client: client(),
                    },
                    child,
                    log,
                    lines: tokio::sync::Mutex::new(lines),
                })
            }
            // Both pipes closed before the line: kla has exited.
            Ok(None) => {
                let status = child.wait().expect("wait");
                Err(Exited {
                    status,
                    log: log.finish(),
                })
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "kla serve logged no `kla API listening` within {STARTUP:?}:\n{}",
                    log.finish()
                );
            }
        }
    }

    /// Everything kla has written so far.
    pub fn log(&self) -> String {
        self.log.read()
    }

    /// kla's process id (for a peer that kills it at a chosen moment).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until kla writes a line that `pred` accepts (or has written one already) and returns it; panics with
    /// the log if none comes `within`. The wait is on the lines themselves, never a sleep.
    pub async fn wait_log(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        let mut lines = self.lines.lock().await;
        // Every line reaches the log file before the channel: what the file lacks, the channel still holds.
        if let Some(l) = self.log().lines().find(|l| pred(l)) {
            return l.to_owned();
        }
        let found = tokio::time::timeout(within, async {
            while let Some(l) = lines.recv().await {
                if pred(&l) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(l)) => l,
            _ => panic!("kla logged no {what} within {within:?}:\n{}", self.log()),
        }
    }

    /// The address listener `name` (`proxy`, `otlp-http`, ...) bound, from its `"<title> listening"` log line.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let addr = |line: &str| -> Option<SocketAddr> {
            let v: Value = serde_json::from_str(line).ok()?;
            let f = &v["fields"];
            if f["listener"] != name || !f["message"].as_str()?.ends_with(" listening") {
                return None;
            }
            f["addr"].as_str()?.parse().ok()
        };
        let line = self
            .wait_log(&format!("`{name}` listening line"), STARTUP, |l| {
                addr(l).is_some()
            })
            .await;
        addr(&line).expect("listening line")
    }

    /// Sends SIGTERM and waits for it to exit.
    pub fn terminate(mut self) -> Exited {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let status = self.child.wait().expect("wait");
        Exited {
            status,
            log: self.log.finish(),
        }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log.finish();
            eprintln!("log of kla serve at {}:\n{log}", self.base);
        }
    }
}

/// A child's stdout and stderr, appended line by line to one file by a thread per pipe until the pipe closes.
struct Log {
    file: Arc<Mutex<tempfile::NamedTempFile>>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

impl Log {
    /// Starts draining `child`'s pipes; every line also goes to the receiver while it is open.
    fn drain(child: &mut Child) -> (Log, mpsc::UnboundedReceiver<String>) {
        let file = Arc::new(Mutex::new(tempfile::NamedTempFile::new().expect("log file")));
        let (tx, rx) = mpsc::unbounded_channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        let mut drains = Vec::new();
        for pipe in [out, err] {
            let (file, tx) = (file.clone(), tx.clone());
            drains.push(std::thread::spawn(move || {
                let mut pipe = BufReader::new(pipe);
                let mut line = Vec::new();
                while pipe.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let _ = file.lock().expect("log lock").write_all(&line);
                    let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                    line.clear();
                }
            }));
        }
        (Log { file, drains }, rx)
    }

    /// Once the child has exited: waits for the last of its output, then reads it all.
    fn finish(&mut self) -> String {
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        self.read()
    }

    fn read(&self) -> String {
        let path = self.file.lock().expect("log lock").path().to_owned();
        String::from_utf8_lossy(&std::fs::read(path).expect("read log")).into_owned()
    }
}

/// The address (and whether it is TLS) from kla's `kla API listening` log line, in the JSON or the text format.
fn listening(line: &str) -> Option<(SocketAddr, bool)> {
    const MESSAGE: &str = "kla API listening";
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        let f = &v["fields"];
        if f["message"] != MESSAGE {
            return None;
        }
        return Some((f["addr"].as_str()?.parse().ok()?, f["tls"] == true));
    }
    let plain = strip_ansi(line);
    let (_, fields) = plain.split_once(MESSAGE)?;
    let mut fields = fields.split_whitespace();
    let addr = fields.clone().find_map(|f| f.strip_prefix("addr="))?;
    Some((addr.parse().ok()?, fields.any(|f| f == "tls=true")))
}

/// `s` without ANSI escape sequences (`ESC [ ... letter`), which the text log format colours fields with.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_listening_line_is_found_in_either_log_format() {
    let json = r#"{"timestamp":"2026-06-01T10:48:00.1Z","level":"INFO","fields":{"message":"kla API listening","addr":"127.0.0.1:41234","tls":false,"data_dir":"/tmp/x"},"target":"kla::app"}"#;
    assert_eq!(listening(json), Some(("127.0.0.1:41234".parse().unwrap(), false)));
    let text = "\x1b[2m2026-06-01T10:48:00.1Z\x1b[0m \x1b[32m INFO\x1b[0m \x1b[2mkla::app\x1b[0m\x1b[2m:\x1b[0m kla API listening \x1b[3maddr\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:41234 \x1b[3mtls\x1b[0m\x1b[2m=\x1b[0mtrue\n";
    assert_eq!(listening(text), Some(("127.0.0.1:41234".parse().unwrap(), true)));
    let other = r#"{"fields":{"message":"policy set activated","addr":"127.0.0.1:1"}}"#;
    assert_eq!(listening(other), None);
    assert_eq!(listening("kla listening on 127.0.0.1:41234\n"), None);
}

/// Starts a test peer that prints `listening <port>` as its first line (the Python scripts in tests/py); returns it
/// and the port.
pub fn spawn_listening(cmd: &mut std::process::Command, what: &str) -> (std::process::Child, u16) {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{what}'s first line: {e}"));
    let port = line
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{what} said {line:?}"));
    (child, port)
}

/// The venv `scripts/test` makes (tests/py/requirements.txt); a missing one fails the test and says how to make it.
pub fn venv_python() -> PathBuf {
    let p = repo_path(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/test (the README's test command), which makes it from tests/py/requirements.txt",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------------------------------------
// A disk that forgets what was not synced.

/// A FUSE file system (tests/py/lazyfs.py) mounted on a temp dir: what is written under [`LazyFs::root`] stays in
/// the daemon's memory until it is `fsync`ed/`fdatasync`ed, and only then reaches [`LazyFs::durable`]. Killing the
/// daemon ([`LazyFs::power_cut`]) is a power cut: every write not yet synced is lost, which SIGKILL alone never
/// shows (the page cache outlives a process). [`LazyFs::fail_ledger`] makes the ledger's files refuse writes and
/// syncs (EIO) while the rest of the data dir keeps working. Unmounted on drop.
pub struct LazyFs {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
}

impl LazyFs {
    /// Mounts a new, empty one. Needs `/dev/fuse`, root (or fusermount3) and the venv's `mfusepy`.
    pub fn mount() -> LazyFs {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: the crash tests need FUSE (Debian's fuse3 package, which .ci/run installs)"
        );
        let dir = tempfile::tempdir().expect("lazyfs dir");
        for d in ["backing", "mnt"] {
            std::fs::create_dir(dir.path().join(d)).expect("lazyfs dirs");
        }
        let mut fs = LazyFs { dir, daemon: None };
        fs.start_daemon();
        fs
    }

    fn start_daemon(&mut self) {
        let mut child = Command::new(venv_python())
            .arg(repo_path("tests/py/lazyfs.py"))
            .arg(self.durable())
            .arg(self.root())
            .arg("--fail-flag")
            .arg(self.dir.path().join("fail-ledger"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tests/py/lazyfs.py");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        if !matches!(read, Ok(n) if n > 0) || line.trim() != "ready" {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "lazyfs did not mount (said {line:?}, {status:?}); it needs /dev/fuse, root and mfusepy from \
                 tests/py/requirements.txt (run scripts/test, which installs them)"
            );
        }
        self.daemon = Some(child);
    }

    /// Where the file system is mounted: put kla's data dir under it.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The backing directory: exactly what was synced, as it would be found after a power cut now.
    pub fn durable(&self) -> PathBuf {
        self.dir.path().join("backing")
    }

    /// What a power cut would lose now: (files, pages of 4 KiB) written and not yet synced, and the listing.
    pub fn pending(&self) -> (u64, u64, String) {
        let text = std::fs::read_to_string(self.root().join(".lazyfs-pending")).expect("lazyfs control file");
        let head = text.lines().next().unwrap_or_default();
        let field = |k: &str| {
            head.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("lazyfs said {text:?}"))
        };
        (field("files="), field("pages="), text)
    }

    /// Waits until the first zero fill of the ledger at `ledger` (relative to [`LazyFs::root`]) is synced
    /// (docs/ledger-format.md, *Preallocation*: 64 MiB). Each slice of it is an `fdatasync` of `entries.log`, which
    /// also carries records appended in between; once it is done only the append path syncs that file, so a test
    /// that starts then fails if that sync is missing.
    pub async fn wait_zero_fill(&self, ledger: &str) {
        const PREALLOC: u64 = 64 << 20;
        let entries = self.durable().join(ledger).join("entries.log");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        loop {
            ticks.tick().await;
            let synced = std::fs::metadata(&entries).map(|m| m.len()).unwrap_or(0);
            if synced >= PREALLOC {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the ledger's zero fill did not finish: {synced} bytes synced"
            );
        }
    }

    /// While `on`, every write, truncation and sync of a file under `ledger/` fails with EIO.
    pub fn fail_ledger(&self, on: bool) {
        let flag = self.dir.path().join("fail-ledger");
        if on {
            std::fs::write(flag, b"").expect("fail flag");
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }

    /// The power cut: the daemon is killed with everything it had not synced, the dead mount detached, and a new
    /// daemon mounted over what was synced. Kill every process writing here first.
    pub fn power_cut(&mut self) {
        self.stop();
        self.start_daemon();
    }

    fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Lazy: a dead FUSE daemon's mount cannot be unmounted the ordinary way while anything looks at it.
        let _ = Command::new("umount").arg("-l").arg(self.root()).status();
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The records of a ledger's `entries.log` (the framing of docs/ledger-format.md: `u32 LE len`, `u32 LE crc32`,
/// the bytes), each parsed as its JSON entry, up to the first zero header, incomplete or damaged record. Reads the
/// file as another process would, while kla runs.
pub fn ledger_records(ledger_dir: &Path) -> Vec<Value> {
    let Ok(f) = std::fs::File::open(ledger_dir.join("entries.log")) else {
        return Vec::new();
    };
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).is_err() {
            return out;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > 16 << 20 {
            return out;
        }
        let mut bytes = vec![0u8; len];
        if r.read_exact(&mut bytes).is_err() || crc32(&bytes) != crc {
            return out;
        }
        match serde_json::from_slice(&bytes) {
            Ok(v) => out.push(v),
            Err(_) => return out,
        }
    }
}

/// CRC-32 (IEEE, reflected, as zlib and the ledger's framing use it), written here so the reader shares no code
/// with the writer it checks.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}
