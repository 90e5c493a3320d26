//! The tool-call proxy through the real server, in front of a real upstream on loopback that records what reached
//! it: allow forwards and streams, warn flags, block and require_approval never reach the upstream, every decision
//! is in the ledger before its effect, body context drives rules, and shared mode takes its identity from
//! `Proxy-Authorization`.

use crate::harness::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use kla::auth::Role;
use kla::proxy::{FileAction, FileProxy, FileRoute};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const T: &str = "acme-proxy";
pub(crate) const AGENT: &str = "proxy-bot";

const RULES: &str = r#"    - {id: no-delete, match: {actions: [delete_customer]}, decision: block, reasonCode: NO_DELETE, message: "customers are not deleted by agents"}
    - {id: big-refund, match: {actions: [execute_refund]}, when: "input.context.amount > 1000", decision: block, reasonCode: BIG_REFUND}
    - {id: flag-export, match: {actions: [export_report]}, decision: warn, reasonCode: EXPORT_FLAGGED}
    - {id: hold-wire, match: {actions: [wire_money]}, decision: require_approval, reasonCode: WIRE, approval: {timeout: 15m}}
"#;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: Bytes,
}

/// A plain HTTP/1.1 upstream on 127.0.0.1:0 that records every request. `/stream` answers in chunks spread over
/// time, `/slow` waits 3s; everything else echoes `ok <target>`.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn serve_one(
    req: http::Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<http::Response<UpBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers,
        body,
    });
    if let Some(kind) = target.strip_prefix("/api/redirect/") {
        // Where an upstream may send its client: itself (inside or outside the route's base path), or a path.
        let host = seen
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let location = match kind {
            "in" => format!("http://{host}/api/customers/c7?x=1"),
            "out" => format!("http://{host}/elsewhere"),
            "path" => "/api/customers/c9".to_owned(),
            _ => "https://example.com/away".to_owned(),
        };
        let resp = http::Response::builder()
            .status(302)
            .header("location", location)
            .body(BodyExt::boxed(Full::new(Bytes::new())))
            .unwrap();
        return Ok(resp);
    }
    if target.ends_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if target.ends_with("/stream") {
        let chunks = futures_util::stream::unfold(0u32, |i| async move {
            if i == 5 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk{i};")))),
                i + 1,
            ))
        });
        let resp = http::Response::builder()
            .header("x-upstream", "yes")
            .body(BodyExt::boxed(StreamBody::new(chunks)))
            .unwrap();
        return Ok(resp);
    }
    let resp = http::Response::builder()
        .header("x-upstream", "yes")
        .header("connection", "x-private")
        .header("x-private", "hop")
        .body(BodyExt::boxed(Full::new(Bytes::from(format!("ok {target}")))))
        .unwrap();
    Ok(resp)
}

impl Upstream {
    pub(crate) async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve_one(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

pub(crate) fn action(method: &str, path: &str, name: &str, context: &[(&str, &str)]) -> FileAction {
    FileAction {
        method: method.into(),
        path: path.into(),
        action: name.into(),
        context: (!context.is_empty()).then(|| {
            context
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        }),
    }
}

pub(crate) fn section(agent: Option<&str>, upstream: SocketAddr) -> FileProxy {
    FileProxy {
        addr: None,
        tenant: Some(T.into()),
        agent: agent.map(str::to_owned),
        connect_timeout: Some("1s".into()),
        timeout: Some("1s".into()),
        // The tests of holding set their own budget.
        hold_budget: Some("0s".into()),
        audit: None,
        tls: None,
        routes: Some(vec![
            FileRoute {
                name: "billing".into(),
                prefix: "/billing".into(),
                upstream: format!("http://{upstream}/api"),
                ca_file: None,
                kind: None,
                hide_blocked_tools: None,
                case_insensitive: None,
                ignore_trailing_slash: None,
                unmatched: None,
                significant_headers: None,
                actions: Some(vec![
                    action(
                        "POST",
                        "/refunds",
                        "execute_refund",
                        &[("amount", "/amount"), ("user", "/user_id")],
                    ),
                    action("DELETE", "/customers/{id}", "delete_customer", &[]),
                    action("GET", "/reports/{id}", "export_report", &[]),
                    action(
                        "POST",
                        "/wires",
                        "wire_money",
                        &[("to", "/to"), ("amount", "/amount")],
                    ),
                ]),
            },
            FileRoute {
                name: "dead".into(),
                prefix: "/dead".into(),
                // Port 9 (discard) on loopback: nothing listens there in a test environment.
                upstream: "http://127.0.0.1:9".into(),
                ca_file: None,
                kind: None,
                hide_blocked_tools: None,
                case_insensitive: None,
                ignore_trailing_slash: None,
                unmatched: None,
                significant_headers: None,
                actions: None,
            },
        ]),
    }
}

/// A server with the proxy in front of `upstream`, the agent registered; (server, proxy base URL, admin token).
pub(crate) async fn start(
    agent: Option<&str>,
    upstream: &Upstream,
) -> (Server, String, String, tempfile::TempDir, tempfile::TempDir) {
    start_with(agent, upstream, |_| {}).await
}

/// As [`start`], with the proxy section changed by `edit` first.
pub(crate) async fn start_with(
    agent: Option<&str>,
    upstream: &Upstream,
    edit: impl FnOnce(&mut FileProxy),
) -> (Server, String, String, tempfile::TempDir, tempfile::TempDir) {
    let packs = tempfile::tempdir().unwrap();
    write_pack(packs.path(), "proxy", RULES);
    let data = tempfile::tempdir().unwrap();
    let mut c = raw(data.path());
    c.policies = Some(packs.path().to_owned());
    c.allow_unsigned = Some(true);
    c.proxy_addr = Some("127.0.0.1:0".into());
    let mut section = section(agent, upstream.addr);
    edit(&mut section);
    c.proxy = Some(section);
    let s = Server::start_cfg(c, None).await;
    let admin = s.token(T, Role::Admin);
    s.register(&admin, T, AGENT).await;
    let proxy = format!("http://{}", s.listener("proxy").expect("proxy listener"));
    (s, proxy, admin, packs, data)
}

pub(crate) async fn decision(s: &Server, admin: &str, id: &str) -> Value {
    let r = s.get(&format!("/v1/decisions/{id}"), admin, T).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

#[tokio::test]
async fn allow_forwards_headers_and_body_and_streams_back() {
    allow_forwards("strict").await;
}

/// Under `audit: overlap` the same: every answered call's decision is in the ledger by the time its answer is.
#[tokio::test]
async fn allow_forwards_the_same_under_audit_overlap() {
    allow_forwards("overlap").await;
}

async fn allow_forwards(audit: &str) {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) = start_with(Some(AGENT), &up, |p| p.audit = Some(audit.into())).await;
    let c = client();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .post(format!("{proxy}/billing/refunds?x=1"))
        .header("traceparent", traceparent)
        .header("x-kla-execution-id", "exec_42")
        .header("authorization", "Bearer upstream-secret")
        .header("proxy-authorization", "Bearer not-for-upstream")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "drop me")
        .header("x-custom", "kept")
        .header("content-type", "application/json")
        .body(r#"{"amount": 40, "user_id": "u-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    assert!(r.headers().get("x-kla-decision").is_none());
    assert_eq!(r.headers()["x-upstream"], "yes");
    assert!(
        r.headers().get("x-private").is_none(),
        "hop-by-hop response header forwarded"
    );
    assert_eq!(r.text().await.unwrap(), "ok /api/refunds?x=1");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let got = &seen[0];
    assert_eq!(
        (got.method.as_str(), got.target.as_str()),
        ("POST", "/api/refunds?x=1")
    );
    assert_eq!(
        got.body,
        Bytes::from_static(br#"{"amount": 40, "user_id": "u-1"}"#)
    );
    assert_eq!(got.headers["authorization"], "Bearer upstream-secret");
    assert_eq!(got.headers["x-custom"], "kept");
    // Correlation goes on to the upstream untouched.
    assert_eq!(got.headers["traceparent"], traceparent);
    assert_eq!(got.headers["x-kla-execution-id"], "exec_42");
    assert!(got.headers.get("proxy-authorization").is_none());
    assert!(got.headers.get("x-hop").is_none());
    assert_eq!(got.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(got.headers["x-forwarded-proto"], "http");
    assert_eq!(
        got.headers["x-forwarded-host"].to_str().unwrap(),
        proxy.trim_start_matches("http://")
    );
    // The decision was recorded with the body's context.
    let d = decision(&s, &admin, &id).await;
    assert_eq!(d["decision"], "allow", "{d}");
    assert_eq!(d["action"], "execute_refund", "{d}");
    assert_eq!(d["context"]["amount"], 40, "{d}");
    assert_eq!(d["context"]["user"], "u-1", "{d}");
    assert_eq!(d["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736", "{d}");
    assert_eq!(d["executionId"], "exec_42", "{d}");
    // The whole call as forwarded, which an approval binds: its query and its body's bytes too.
    let sent = br#"{"amount": 40, "user_id": "u-1"}"#;
    assert_eq!(
        d["tool"],
        json!({"route": "billing", "method": "POST", "path": "/billing/refunds", "query": "x=1",
            "body": {"contentType": "application/json", "bytes": sent.len(),
                "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(sent)),
                "json": {"amount": 40, "user_id": "u-1"}}}),
        "{d}"
    );

    // A streamed (chunked) upstream answer arrives whole; an unnamed request is `http.request`.
    let r = c.get(format!("{proxy}/billing/stream")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), "chunk0;chunk1;chunk2;chunk3;chunk4;");
    let d = decision(&s, &admin, &id).await;
    assert_eq!(d["action"], "http.request", "{d}");
    assert_eq!(
        d["context"],
        json!({"method": "GET", "path": "/billing/stream"}),
        "{d}"
    );
}

#[tokio::test]
async fn warn_block_and_body_rules() {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) = start(Some(AGENT), &up).await;
    let c = client();
    // warn: forwarded and flagged.
    let r = c
        .get(format!("{proxy}/billing/reports/r-7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-kla-decision"], "warn");
    assert_eq!(r.headers()["x-kla-reason-codes"], "EXPORT_FLAGGED");
    let id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    assert_eq!(decision(&s, &admin, &id).await["context"]["id"], "r-7");
    assert_eq!(up.seen().len(), 1);

    // block: refused, the upstream never contacted, the decision in the ledger.
    let r = c
        .delete(format!("{proxy}/billing/customers/c-42"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let header_id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "forbidden", "{body}");
    assert_eq!(body["reasonCodes"], json!(["NO_DELETE"]), "{body}");
    assert_eq!(body["decisionId"], header_id.as_str());
    assert_eq!(up.seen().len(), 1, "a blocked call reached the upstream");
    let d = decision(&s, &admin, &header_id).await;
    assert_eq!(d["decision"], "block", "{d}");
    assert_eq!(d["context"]["id"], "c-42", "{d}");

    // A JSON pointer into the body drives the rule: a big refund is blocked, a small one forwarded.
    let r = c
        .post(format!("{proxy}/billing/refunds"))
        .header("content-type", "application/json")
        .body(r#"{"amount": 5000, "user_id": "u-2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["reasonCodes"], json!(["BIG_REFUND"]), "{body}");
    assert_eq!(up.seen().len(), 1, "a blocked refund reached the upstream");
    let r = c
        .post(format!("{proxy}/billing/refunds"))
        .header("content-type", "application/json")
        .body(r#"{"amount": 50}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen().len(), 2);

    // A body an action must read that is not JSON is refused before anything is decided or forwarded: 415 when
    // its declared type is not JSON (a form-encoded refund reached upstreams as 5000), 400 when it says JSON but
    // is not.
    for (ct, status) in [
        (Some("application/x-www-form-urlencoded"), 415),
        (None, 415),
        (Some("text/plain"), 415),
        (Some("application/json; charset=utf-16"), 415),
        (Some("application/json"), 400),
    ] {
        let mut rq = c.post(format!("{proxy}/billing/refunds")).body("amount=5000");
        if let Some(ct) = ct {
            rq = rq.header("content-type", ct);
        }
        let r = rq.send().await.unwrap();
        assert_eq!(r.status(), status, "{ct:?}");
        assert!(r.headers().get("x-kla-decision-id").is_none());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request", "{body}");
    }
    // Over the body limit: 413.
    let big = format!(r#"{{"amount": 1, "pad": "{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let r = c
        .post(format!("{proxy}/billing/refunds"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn unknown_route_dead_upstream_and_approvals() {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) = start(Some(AGENT), &up).await;
    let c = client();
    let r = c.get(format!("{proxy}/nowhere/x")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_found", "{body}");
    assert!(body["message"].as_str().unwrap().contains("/nowhere/x"));
    // A prefix matches whole segments only.
    let r = c.get(format!("{proxy}/billingx")).send().await.unwrap();
    assert_eq!(r.status(), 404);

    let r = c.get(format!("{proxy}/dead/thing")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().get("x-kla-decision-id").is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "internal_error", "{body}");
    assert!(body["message"].as_str().unwrap().contains("route dead"), "{body}");

    // An upstream slower than the timeout: 504, after the call was decided.
    let r = c.get(format!("{proxy}/billing/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(r.headers().get("x-kla-decision-id").is_some());
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("route billing"),
        "{body}"
    );
    assert_eq!(up.seen().len(), 1);

    // require_approval: 202 with the approval for a client that asks for it, else 403 naming it.
    let r = c
        .post(format!("{proxy}/billing/wires"))
        .header("prefer", "respond-async")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let header_id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    let body: Value = r.json().await.unwrap();
    let approval = body["approvalId"].as_str().unwrap().to_owned();
    assert!(approval.starts_with("appr_"), "{body}");
    assert_eq!(body["decisionId"], header_id.as_str());
    assert_eq!(body["approvalUrl"], format!("{}/v1/approvals/{approval}", s.base));
    let a = s.get(&format!("/v1/approvals/{approval}"), &admin, T).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let r = c
        .post(format!("{proxy}/billing/wires"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "forbidden", "{body}");
    assert!(
        body["approvalId"].as_str().unwrap().starts_with("appr_"),
        "{body}"
    );
    assert_eq!(up.seen().len(), 1, "a held call reached the upstream");
}

#[tokio::test]
async fn shared_mode_takes_the_agent_from_proxy_authorization() {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) = start(None, &up).await;
    let c = client();
    let r = c.get(format!("{proxy}/billing/x")).send().await.unwrap();
    assert_eq!(r.status(), 407);
    assert_eq!(r.headers()["proxy-authenticate"], "Bearer");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized", "{body}");
    let r = c
        .get(format!("{proxy}/billing/x"))
        .header("proxy-authorization", "Bearer garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 407);
    // A token without an agent claim may not make tool calls.
    let unbound = s.token(T, Role::Agent);
    let r = c
        .get(format!("{proxy}/billing/x"))
        .header("proxy-authorization", format!("Bearer {unbound}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(up.seen().is_empty());

    let tok = agent_token(&s.data_dir, T, AGENT);
    let r = c
        .get(format!("{proxy}/billing/x"))
        .header("proxy-authorization", format!("Bearer {tok}"))
        .header("authorization", "Bearer for-upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("proxy-authorization").is_none());
    assert_eq!(seen[0].headers["authorization"], "Bearer for-upstream");
    let d = decision(&s, &admin, &id).await;
    assert_eq!(d["agent"]["name"], AGENT, "{d}");
    // A token for another tenant is refused.
    let other = agent_token(&s.data_dir, "other-tenant", AGENT);
    let r = c
        .get(format!("{proxy}/billing/x"))
        .header("proxy-authorization", format!("Bearer {other}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test]
async fn https_upstream_with_a_route_ca_file() {
    // The upstream is a second kla serving HTTPS with a self-signed certificate for `localhost`.
    let tmp = tempfile::tempdir().unwrap();
    let (up, cert, https) = https_config(tmp.path());
    let upstream = Server::start_cfg(up, Some((https, "localhost"))).await;
    let port = upstream.listener("api").unwrap().port();

    let route = |name: &str, ca: Option<std::path::PathBuf>| FileRoute {
        name: name.into(),
        prefix: format!("/{name}"),
        upstream: format!("https://localhost:{port}"),
        ca_file: ca,
        kind: None,
        hide_blocked_tools: None,
        case_insensitive: None,
        ignore_trailing_slash: None,
        unmatched: None,
        significant_headers: None,
        actions: None,
    };
    let data = tempfile::tempdir().unwrap();
    let mut c = raw(data.path());
    c.proxy_addr = Some("127.0.0.1:0".into());
    c.proxy = Some(FileProxy {
        tenant: Some(T.into()),
        agent: Some(AGENT.into()),
        routes: Some(vec![route("trusted", Some(cert)), route("untrusted", None)]),
        ..FileProxy::default()
    });
    let s = Server::start_cfg(c, None).await;
    let admin = s.token(T, Role::Admin);
    s.register(&admin, T, AGENT).await;
    let proxy = format!("http://{}", s.listener("proxy").unwrap());
    let r = client()
        .get(format!("{proxy}/trusted/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-kla-decision-id").is_some());
    // Without the route's CA bundle the self-signed upstream is not trusted.
    let r = client()
        .get(format!("{proxy}/untrusted/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "internal_error", "{body}");
}

/// The pending approvals of the test tenant, waiting until there are `n` (a held call opened its approval).
pub(crate) async fn pending_approvals(s: &Server, admin: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.get("/v1/approvals?status=PENDING", admin, T).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let items: Vec<Value> = r.body["approvals"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["status"] == "PENDING")
            .cloned()
            .collect();
        if items.len() >= n {
            return items;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pending approval appeared: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn vote(s: &Server, approval: &str, verdict: &str) {
    let approver = s.token(T, Role::Approver);
    let r = s.vote(&approver, T, approval, verdict, Some("checked")).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

fn wires(up: &Upstream) -> usize {
    up.seen().iter().filter(|r| r.target.ends_with("/wires")).count()
}

#[tokio::test]
async fn a_held_call_is_forwarded_once_when_approved_and_refused_when_denied() {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) =
        start_with(Some(AGENT), &up, |p| p.hold_budget = Some("20s".into())).await;
    let c = client();

    // Approved: the held request itself is forwarded, once, under a second decision that used the approval up.
    let call = {
        let c = c.clone();
        let url = format!("{proxy}/billing/wires");
        tokio::spawn(async move {
            c.post(url)
                .header("content-type", "application/json")
                .body(r#"{"to":"acme","n":1}"#)
                .send()
                .await
        })
    };
    let pending = pending_approvals(&s, &admin, 1).await;
    let approval = pending[0]["approvalId"].as_str().unwrap().to_owned();
    assert_eq!(wires(&up), 0, "forwarded before anyone approved");
    vote(&s, &approval, "APPROVED").await;
    let r = call.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    assert_eq!(r.text().await.unwrap(), "ok /api/wires");
    assert_eq!(wires(&up), 1);
    let d = decision(&s, &admin, &id).await;
    assert_eq!(d["decision"], "require_approval", "{d}");
    assert_eq!(d["usesApproval"], approval.as_str(), "{d}");
    assert_ne!(d["decisionId"], pending[0]["decisionId"]);
    // Its evidence carries the approval's chain: the decision that opened it, its resolution, then this one.
    let r = s.get(&format!("/v1/evidence?decisionId={id}"), &admin, T).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let chain: Vec<(String, String)> = r.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let v: Value = serde_json::from_str(e["entry"].as_str().unwrap()).unwrap();
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["body"]["decisionId"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let opened = pending[0]["decisionId"].as_str().unwrap().to_owned();
    assert_eq!(
        chain,
        vec![
            ("decision".to_owned(), opened.clone()),
            ("approval.resolved".to_owned(), opened),
            ("decision".to_owned(), id.clone()),
        ]
    );
    // Each of them (a decision that opened an approval, its resolution, a decision that used it up) reads as its
    // typed body and writes back the stored bytes.
    for e in r.body["entries"].as_array().unwrap() {
        crate::records::assert_typed_round_trip(e["entry"].as_str().unwrap());
    }

    // The same call again needs a new approval: the first one let one call through.
    let r = c
        .post(format!("{proxy}/billing/wires"))
        .header("prefer", "respond-async")
        .header("content-type", "application/json")
        .body(r#"{"to":"acme","n":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    let second = body["approvalId"].as_str().unwrap().to_owned();
    assert_ne!(second, approval);

    // Denied: the held request is refused with the approval's status and the upstream never sees it. (It waits
    // for the pending approval of the same call rather than opening a third.)
    let call = {
        let c = c.clone();
        let url = format!("{proxy}/billing/wires");
        tokio::spawn(async move {
            c.post(url)
                .header("content-type", "application/json")
                .body(r#"{"to":"acme","n":1}"#)
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pending_approvals(&s, &admin, 1).await.len(),
        1,
        "a second approval for the same call"
    );
    vote(&s, &second, "DENIED").await;
    let r = call.await.unwrap().unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "forbidden", "{body}");
    assert_eq!(body["approvalId"], second.as_str(), "{body}");
    assert_eq!(body["approvalStatus"], "DENIED", "{body}");
    assert!(body["message"].as_str().unwrap().contains("denied"), "{body}");
    assert_eq!(wires(&up), 1, "a denied call reached the upstream");
}

#[tokio::test]
async fn a_retry_after_the_budget_goes_through_exactly_once_and_a_disconnect_forwards_nothing() {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) =
        start_with(Some(AGENT), &up, |p| p.hold_budget = Some("300ms".into())).await;
    let c = client();
    let call = || {
        c.post(format!("{proxy}/billing/wires"))
            .header("content-type", "application/json")
            .body(r#"{"to":"globex","amount":7}"#)
    };

    // Held past the budget: answered as pending, naming the approval.
    let r = call().send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    let approval = body["approvalId"].as_str().unwrap().to_owned();
    assert_eq!(body["approvalUrl"], format!("{}/v1/approvals/{approval}", s.base));
    assert!(body["message"].as_str().unwrap().contains("Retry"), "{body}");
    // A retry while it is pending waits for the same approval.
    let r = call().send().await.unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["approvalId"], approval.as_str(), "{body}");
    assert_eq!(pending_approvals(&s, &admin, 1).await.len(), 1);

    vote(&s, &approval, "APPROVED").await;
    // A different call (other arguments) is not covered by the approval.
    let r = c
        .post(format!("{proxy}/billing/wires"))
        .header("prefer", "respond-async")
        .header("content-type", "application/json")
        .body(r#"{"to":"globex","amount":8}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(wires(&up), 0);

    // Concurrent retries of the approved call: exactly one goes through.
    let tries: Vec<_> = (0..4).map(|_| tokio::spawn(call().send())).collect();
    let mut ok = 0;
    for t in tries {
        let r = t.await.unwrap().unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            403 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(ok, 1, "one approval, one forwarded call");
    assert_eq!(wires(&up), 1);

    // A client that goes away while held has cancelled: its approval, once given, forwards nothing by itself.
    let (s2, proxy2, admin2, _p2, _d2) =
        start_with(Some(AGENT), &up, |p| p.hold_budget = Some("20s".into())).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{proxy2}/billing/wires"))
        .header("content-type", "application/json")
        .body(r#"{"to":"initech"}"#)
        .send()
        .await;
    assert!(r.is_err(), "the held call answered before its approval");
    let pending = pending_approvals(&s2, &admin2, 1).await;
    let approval = pending[0]["approvalId"].as_str().unwrap().to_owned();
    vote(&s2, &approval, "APPROVED").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wires(&up), 1, "a cancelled call was forwarded");
    // The agent's retry is what goes through, once.
    let r = c
        .post(format!("{proxy2}/billing/wires"))
        .header("content-type", "application/json")
        .body(r#"{"to":"initech"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(wires(&up), 2);
}

/// The proxy listener over HTTPS (a certificate made here), speaking HTTP/2 when the agent offers it; the upstream
/// is told the call came in over https.
#[tokio::test]
async fn the_proxy_listener_serves_https_and_http2() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (https, cert, agent_client) = https_config(dir.path());
    let key = https.tls_key.clone();
    let (s, _proxy, _admin, _p, _d) = start_with(Some(AGENT), &up, |p| {
        p.tls = Some(kla::config::FileTls {
            cert: Some(cert.clone()),
            key,
        });
    })
    .await;
    let addr = s.listener("proxy").unwrap();
    let r = agent_client
        .post(format!("https://localhost:{}/billing/refunds", addr.port()))
        .header("content-type", "application/json")
        .body(r#"{"amount": 3, "user_id": "u-9"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert!(r.headers().get("x-kla-decision-id").is_some());
    assert_eq!(r.text().await.unwrap(), "ok /api/refunds");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    // Plain HTTP to a TLS listener is not served.
    let plain = client()
        .post(format!("http://127.0.0.1:{}/billing/refunds", addr.port()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    assert_eq!(up.seen().len(), 1);
}

/// A free port on loopback (bound and released; the server binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn proxy_yaml(upstream: SocketAddr, routes: &[&str]) -> String {
    let mut y = format!("proxy:\n  tenant: {T}\n  agent: {AGENT}\n  routes:\n");
    for r in routes {
        y.push_str(&format!(
            "    - {{name: {r}, prefix: /{r}, upstream: \"http://{upstream}/{r}\"}}\n"
        ));
    }
    y
}

/// One HTTP/1.1 request on an open connection; the status and body of its answer.
async fn on_conn(conn: &mut tokio::net::TcpStream, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: kla\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "the connection was closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if body.len() >= len {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return (status, body[..len].to_owned());
            }
        }
    }
}

/// `kla serve` with a config file: SIGHUP reloads the proxy's routes; a new route answers on a connection opened
/// before the reload, and a config that cannot apply is refused with the running routes kept.
#[tokio::test]
async fn sighup_reloads_the_routes_without_dropping_connections() {
    let up = Upstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_pack(tmp.path(), "proxy", RULES);
    let config = tmp.path().join("kla.yaml");
    std::fs::write(&config, proxy_yaml(up.addr, &["one"])).unwrap();
    let proxy_port = free_port();
    let mut child = std::process::Command::new(kla_bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--api-addr", "127.0.0.1:0", "--allow-unsigned"])
        .arg("--policies")
        .arg(tmp.path().join("proxy"))
        .args(["--proxy-addr", &format!("127.0.0.1:{proxy_port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let api = line.trim().strip_prefix("kla listening on ").unwrap().to_owned();
    let admin = token_for(&data, &[T], Role::Admin);
    let r = client()
        .post(format!("http://{api}/v1/agents"))
        .bearer_auth(&admin)
        .header("x-tenant-id", T)
        .json(&agent_body(AGENT))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
        .await
        .unwrap();
    assert_eq!(on_conn(&mut conn, "/one/x").await, (200, "ok /one/x".into()));
    assert_eq!(on_conn(&mut conn, "/two/x").await.0, 404);

    let hup = |pid: u32| {
        let ok = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    std::fs::write(&config, proxy_yaml(up.addr, &["one", "two"])).unwrap();
    hup(child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The same connection, opened before the reload.
        let (status, body) = on_conn(&mut conn, "/two/y").await;
        if status == 200 {
            assert_eq!(body, "ok /two/y");
            break;
        }
        assert_eq!(status, 404);
        assert!(std::time::Instant::now() < deadline, "the reload did not take");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A config that changes who calls are made as needs a restart: refused, the routes stay.
    std::fs::write(
        &config,
        proxy_yaml(up.addr, &["three"]).replace(&format!("agent: {AGENT}"), "agent: someone-else"),
    )
    .unwrap();
    hup(child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(on_conn(&mut conn, "/two/z").await.0, 200);
    assert_eq!(on_conn(&mut conn, "/three/z").await.0, 404);
    assert!(
        child.try_wait().unwrap().is_none(),
        "a refused reload stopped the server"
    );
    drop(conn);
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
