#![allow(dead_code)] // Helpers used by some test modules only.

//! Starting servers, minting tokens and making requests, shared by every test module.

use kla::auth::{self, Role, keys};
use kla::config::RawConfig;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A server running in this process on 127.0.0.1:0.
pub struct Server {
    pub base: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    running: Option<kla::app::Running>,
    _tmp: Option<tempfile::TempDir>,
}

/// Raw config with a fresh data dir and an ephemeral port; tests adjust fields before `start`.
pub fn raw(data_dir: &Path) -> RawConfig {
    RawConfig {
        data_dir: Some(data_dir.to_owned()),
        api_addr: Some("127.0.0.1:0".into()),
        policies: Some(repo_path("policies")),
        // Tests run many servers on two cores; a 5 ms wall-clock deadline would fail closed under that load.
        policy_deadline: Some("2s".into()),
        ..Default::default()
    }
}

/// A path inside the repository (tests never depend on the working directory).
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Registers an agent and returns its id.
pub async fn register(s: &Server, token: &str, tenant: &str, name: &str) -> String {
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", token, tenant)
                .json(&agent_body(name)),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["agentId"].as_str().expect("agentId").to_owned()
}

/// POST /v1/decisions.evaluate with the seed's body.
pub async fn evaluate(
    s: &Server,
    token: &str,
    tenant: &str,
    agent: &str,
    action: &str,
    context: Value,
) -> Resp {
    s.send(
        s.req(Method::POST, "/v1/decisions.evaluate", token, tenant)
            .json(&serde_json::json!({"agentId": agent, "action": action, "context": context})),
    )
    .await
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

    /// Starts with a full config and an optional HTTPS client.
    pub async fn start_cfg(cfg: RawConfig, client: Option<(reqwest::Client, &str)>) -> Server {
        let data_dir = cfg.data_dir.clone().expect("data dir");
        let cfg = cfg.validate().expect("valid config");
        let https = cfg.api.listener.tls.is_some();
        let running = kla::app::start(cfg).await.expect("server starts");
        let (client, host) = match client {
            Some((c, host)) => (c, host.to_owned()),
            None => (reqwest::Client::new(), "127.0.0.1".to_owned()),
        };
        let scheme = if https { "https" } else { "http" };
        Server {
            base: format!("{scheme}://{host}:{}", running.api_addr.port()),
            data_dir,
            client,
            running: Some(running),
            _tmp: None,
        }
    }

    /// A token for `tenant` with `role`, minted with the server's key.
    pub fn token(&self, tenant: &str, role: Role) -> String {
        token_for(&self.data_dir, &[tenant], role)
    }

    /// A request builder with auth headers.
    pub fn req(&self, method: Method, path: &str, token: &str, tenant: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(token)
            .header("x-tenant-id", tenant)
    }

    /// Sends and returns status, headers and JSON body (Null when empty or not JSON).
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        send(rb).await
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

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Asserts the seed's error shape with `code`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        assert!(self.headers.contains_key("x-request-id"));
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let r = rb.send().await.expect("request sent");
    let status = r.status();
    let headers = r.headers().clone();
    let bytes = r.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Resp {
        status,
        headers,
        body,
    }
}

/// Mints a token with the data dir's key (the same path `kla token` uses).
pub fn token_for(data_dir: &Path, tenants: &[&str], role: Role) -> String {
    let key = keys::load(&keys::token_key_path(data_dir)).expect("token key exists");
    auth::mint(
        key.private_pem.as_bytes(),
        tenants.iter().map(|t| t.to_string()).collect(),
        role,
        format!("test-{}", role.as_str()),
        None,
        Duration::from_secs(3600),
    )
    .expect("mint")
}

/// The seed 001 agent body with a given name.
pub fn agent_body(name: &str) -> Value {
    serde_json::json!({
        "name": name,
        "description": "Triages inbound insurance claims",
        "model": "gpt-4.1",
        "temperature": 0.2,
        "tools": ["lookup_policy", "flag_for_review"]
    })
}

/// The `kla` binary built for these tests.
pub fn kla_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kla"))
}

/// The real binary running `kla serve` on a free port; killed on drop.
pub struct Process {
    pub child: Child,
    pub base: String,
}

impl Process {
    /// Starts `kla serve --data-dir DIR --api-addr 127.0.0.1:PORT` plus `extra` and waits until healthy.
    pub async fn serve(data_dir: &Path, extra: &[&str]) -> Process {
        use std::io::BufRead;
        // Port 0 and the address the server prints: no window in which another test can take the port.
        let mut child = Command::new(kla_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-addr", "127.0.0.1:0", "--policy-deadline", "2s"])
            .arg("--policies")
            .arg(repo_path("policies"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kla");
        let stdout = child.stdout.take().expect("stdout");
        let mut p = Process {
            child,
            base: String::new(),
        };
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
        })
        .await
        .expect("join")
        .expect("read stdout");
        let addr = line
            .trim()
            .strip_prefix("kla listening on ")
            .unwrap_or_else(|| panic!("kla serve failed to start: {line:?}"));
        p.base = format!("http://{addr}");
        p
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        self.child.wait().expect("wait")
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
    }
}

/// A port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
