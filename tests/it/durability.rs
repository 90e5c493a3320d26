//! The proxy's audit guarantees checked at the moment they matter, with the real binary: an upstream that, when a
//! call reaches it, looks at what is already durable (the synced bytes of a [`LazyFs`] under the data dir) for the
//! call's decision entry (`audit: strict`); a kla killed with SIGKILL the instant its upstream receives a call,
//! whose decision is then in the ledger and the index after a restart; and `audit: overlap` with a ledger that
//! refuses appends, where the call reaches the upstream but its answer never reaches the agent (503).

use crate::harness::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kla::auth::Role;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const T: &str = "acme-durable";
const AGENT: &str = "durable-bot";

/// What the upstream makes of a call when it receives it (the call's JSON body in, a note out).
type OnCall = Arc<dyn Fn(&Value) -> String + Send + Sync>;

/// One call as the upstream received it, with the note its check made at that moment.
#[derive(Debug)]
struct Received {
    body: Value,
    note: String,
}

/// An HTTP/1.1 upstream on 127.0.0.1:0 that runs its check on every call before answering
/// `upstream answer for <ref>`, and reports each call on a channel.
struct Upstream {
    addr: SocketAddr,
    calls: mpsc::UnboundedReceiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(on_call: OnCall) -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, calls) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (tx, on_call) = (tx.clone(), on_call.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let (tx, on_call) = (tx.clone(), on_call.clone());
                        async move {
                            let bytes = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                            let note = on_call(&body);
                            let answer =
                                format!("upstream answer for {}", body["ref"].as_str().unwrap_or("?"));
                            let _ = tx.send(Received { body, note });
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("x-upstream", "yes")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, calls, task }
    }

    /// The next call the upstream received; fails the test if none comes within 15 s.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(15), self.calls.recv())
            .await
            .expect("a call reached the upstream")
            .expect("upstream running")
    }
}

/// A config file (in `dir`) with one proxy route in front of `upstream`: `POST /billing/refunds` is the action
/// `execute_refund` with context `amount` and `ref` from the body (the default pack allows small refunds).
fn config(dir: &Path, upstream: SocketAddr, audit: &str) -> PathBuf {
    let yaml = format!(
        r#"proxy:
  addr: 127.0.0.1:0
  tenant: {T}
  agent: {AGENT}
  timeout: 10s
  hold-budget: 0s
  audit: {audit}
  routes:
    - name: billing
      prefix: /billing
      upstream: http://{upstream}
      actions:
        - {{method: POST, path: /refunds, action: execute_refund, context: {{amount: /amount, ref: /ref}}}}
"#
    );
    let path = dir.join("kla.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Starts kla on `data` with `config`, registers the proxy's agent; returns kla and the proxy's base URL.
async fn start(data: &Path, config: &Path) -> (Process, String) {
    let p = Process::serve(data, &["--config", config.to_str().unwrap()]).await;
    let admin = p.token(T, Role::Admin);
    p.register(&admin, T, AGENT).await;
    let proxy = format!("http://{}", p.listener("proxy").await);
    (p, proxy)
}

/// `POST {proxy}/billing/refunds` with a small amount and `reference`.
fn refund(proxy: &str, reference: &str) -> reqwest::RequestBuilder {
    client()
        .post(format!("{proxy}/billing/refunds"))
        .json(&json!({"amount": 20, "ref": reference}))
}

/// The decision entry among `records` whose context carries `reference`.
fn decision_for<'a>(records: &'a [Value], reference: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|e| e["kind"] == "decision" && e["body"]["context"]["ref"] == reference)
}

/// `audit: strict`: when a call reaches the upstream, its decision entry is already in the synced bytes of the
/// ledger (what a power cut at that instant would leave), for sequential and concurrent calls alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_strict_audit_the_upstream_only_sees_calls_whose_decision_is_durable() {
    let fs = LazyFs::mount();
    let data = fs.root().join("data");
    let durable_ledger = fs.durable().join("data/ledger");
    let mut up = Upstream::start(Arc::new(move |body: &Value| {
        let reference = body["ref"].as_str().unwrap_or_default();
        let records = ledger_records(&durable_ledger);
        match decision_for(&records, reference) {
            Some(_) => "durable".to_owned(),
            None => format!("NOT durable ({} entries durable)", records.len()),
        }
    }))
    .await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let (p, proxy) = start(&data, &config(cfg_dir.path(), up.addr, "strict")).await;
    fs.wait_zero_fill("data/ledger").await;

    let refs: Vec<String> = (0..10).map(|i| format!("strict-{i}")).collect();
    // Four one after the other, then six at once (one group commit may carry several).
    for r in &refs[..4] {
        let resp = refund(&proxy, r).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.text().await.unwrap(), format!("upstream answer for {r}"));
    }
    let concurrent = refs[4..].iter().map(|r| async {
        let resp = refund(&proxy, r).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    });
    let answers = futures_util::future::join_all(concurrent).await;
    for (r, a) in refs[4..].iter().zip(&answers) {
        assert_eq!(a, &format!("upstream answer for {r}"));
    }
    let mut seen = Vec::new();
    for _ in &refs {
        let got = up.next().await;
        assert_eq!(
            got.note, "durable",
            "{:?} reached the upstream before its decision was durable",
            got.body
        );
        seen.push(got.body["ref"].as_str().unwrap().to_owned());
    }
    seen.sort();
    let mut want = refs.clone();
    want.sort();
    assert_eq!(seen, want);
    drop(p);
}

/// kla is killed (SIGKILL) by the upstream the instant the call reaches it: after a restart, the call's decision
/// is in the ledger and in the index, as `allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_when_the_upstream_receives_a_call_leaves_its_decision_recorded() {
    let data = tempfile::tempdir().unwrap();
    let pid = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let kill = pid.clone();
    let mut up = Upstream::start(Arc::new(move |_: &Value| {
        let pid = kill.load(std::sync::atomic::Ordering::SeqCst).to_string();
        match std::process::Command::new("kill").args(["-KILL", &pid]).status() {
            Ok(s) if s.success() => "killed".to_owned(),
            other => format!("kill -KILL {pid}: {other:?}"),
        }
    }))
    .await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = config(cfg_dir.path(), up.addr, "strict");
    let (p, proxy) = start(data.path(), &cfg).await;
    pid.store(p.pid(), std::sync::atomic::Ordering::SeqCst);

    let sent = refund(&proxy, "killed-0").send().await;
    let got = up.next().await;
    assert_eq!(got.note, "killed");
    // The agent never got an answer: kla died with the call in flight.
    assert!(sent.is_err(), "{sent:?}");
    p.kill9();

    let p = Process::serve(data.path(), &["--config", cfg.to_str().unwrap()]).await;
    let admin = p.token(T, Role::Admin);
    let records = ledger_records(&data.path().join("ledger"));
    let entry = decision_for(&records, "killed-0").expect("the call's decision is in the ledger");
    assert_eq!(entry["body"]["decision"], "allow", "{entry}");
    let id = entry["body"]["decisionId"].as_str().unwrap();
    let r = p.get(&format!("/v1/decisions/{id}"), &admin, T).await;
    assert_eq!(
        r.status, 200,
        "the decision is indexed after the restart: {}",
        r.body
    );
    assert_eq!(r.body["decision"], "allow", "{}", r.body);
    assert_eq!(r.body["context"]["ref"], "killed-0", "{}", r.body);
}

/// `audit: overlap` with a ledger whose files refuse writes: the call is sent upstream while its decision is being
/// recorded, the record fails, and the agent gets 503 without the upstream's answer (which kla logs it withheld).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overlap_audit_a_failed_record_withholds_the_upstream_answer() {
    let fs = LazyFs::mount();
    let data = fs.root().join("data");
    let mut up = Upstream::start(Arc::new(|_: &Value| String::new())).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let (p, proxy) = start(&data, &config(cfg_dir.path(), up.addr, "overlap")).await;

    // The same call goes through while the ledger takes appends.
    let resp = refund(&proxy, "overlap-ok").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream answer for overlap-ok");
    assert_eq!(up.next().await.body["ref"], "overlap-ok");

    fs.fail_ledger(true);
    let resp = refund(&proxy, "overlap-refused").send().await.unwrap();
    let status = resp.status();
    let upstream_header = resp.headers().get("x-upstream").cloned();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(upstream_header, None, "an upstream header leaked");
    assert!(
        !body.contains("upstream answer"),
        "the upstream's answer leaked: {body}"
    );
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "internal_error", "{err}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    // The upstream did receive it: this is the overlap path, not a refusal before sending.
    assert_eq!(up.next().await.body["ref"], "overlap-refused");
    p.wait_log("the withheld-answer error", Duration::from_secs(10), |l| {
        l.contains("its answer is withheld")
    })
    .await;
    // Nothing of the refused call is in the ledger.
    fs.fail_ledger(false);
    let records = ledger_records(&data.join("ledger"));
    assert!(decision_for(&records, "overlap-ok").is_some());
    assert!(decision_for(&records, "overlap-refused").is_none());
}
