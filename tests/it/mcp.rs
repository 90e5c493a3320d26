//! MCP routes (`kind: mcp`) through the real server, with the official MCP Python SDK on both sides: its
//! Streamable HTTP server (tests/py/mcp_server.py, which logs every tool it executes) behind kla, and its `Client`
//! (tests/py/mcp_client.py) calling through kla in both protocol eras (the `initialize` handshake and the stateless
//! 2026-07-28 revision). Raw HTTP covers what no well-behaved client sends: headers that disagree with the body,
//! bad JSON-RPC, batches.

use crate::harness::*;
use kla::auth::Role;
use kla::proxy::{FileProxy, FileRoute};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

const T: &str = "acme-mcp";
const AGENT: &str = "mcp-bot";
const STATELESS: &str = "2026-07-28";

const RULES: &str = r#"    - {id: no-delete, match: {actions: [delete_customer]}, decision: block, reasonCode: NO_DELETE, message: "customers are not deleted by agents"}
    - {id: big-refund, match: {actions: [execute_refund]}, when: "input.context.amount > 1000", decision: block, reasonCode: BIG_REFUND}
    - {id: flag-export, match: {actions: [export_report]}, decision: warn, reasonCode: EXPORT_FLAGGED}
    - {id: hold-wire, match: {actions: [wire_money]}, decision: require_approval, reasonCode: WIRE, approval: {timeout: 15m}}
"#;

/// The venv `.ci/run` makes (tests/py/requirements.txt, with `mcp`).
fn python() -> PathBuf {
    let p = repo_path(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run .ci/run (or python3 -m venv .venv && .venv/bin/pip install -r tests/py/requirements.txt)",
        p.display()
    );
    p
}

/// The SDK's MCP server on 127.0.0.1; killed on drop.
struct McpServer {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for McpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl McpServer {
    fn start() -> McpServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("executed.jsonl");
        let (child, port) = spawn_listening(
            Command::new(python())
                .arg(repo_path("tests/py/mcp_server.py"))
                .env("OUT", &log),
            "the MCP server",
        );
        McpServer {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The tools it executed, in order.
    fn executed(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line"))
            .collect()
    }

    fn count(&self, tool: &str) -> usize {
        self.executed().iter().filter(|e| e["tool"] == tool).count()
    }
}

fn write_pack(root: &Path) {
    let dir = root.join("mcp");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = format!(
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: mcp, version: 1.0.0}}\nspec:\n  defaultDecision: allow\n  rules:\n{RULES}"
    );
    std::fs::write(dir.join("pack.yaml"), yaml).unwrap();
}

/// kla with an MCP route `/tools` in front of `up` (sidecar mode); returns the server and the route's URL.
struct Kla {
    s: Server,
    url: String,
    admin: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn start(up: &McpServer, hide: Option<bool>, hold_budget: Option<&str>) -> Kla {
    let packs = tempfile::tempdir().unwrap();
    write_pack(packs.path());
    let data = tempfile::tempdir().unwrap();
    let mut c = raw(data.path());
    c.policies = Some(packs.path().to_owned());
    c.allow_unsigned = Some(true);
    c.proxy_addr = Some("127.0.0.1:0".into());
    c.proxy = Some(FileProxy {
        tenant: Some(T.into()),
        hold_budget: hold_budget.map(str::to_owned),
        agent: Some(AGENT.into()),
        timeout: Some("10s".into()),
        routes: Some(vec![FileRoute {
            name: "tools".into(),
            prefix: "/tools".into(),
            upstream: format!("http://127.0.0.1:{}/mcp", up.port),
            kind: Some("mcp".into()),
            hide_blocked_tools: hide,
            ..FileRoute::default()
        }]),
        ..FileProxy::default()
    });
    let s = Server::start_cfg(c, None).await;
    let admin = s.token(T, Role::Admin);
    s.register(&admin, T, AGENT).await;
    let url = format!("http://{}/tools", s.listener("proxy").expect("proxy listener"));
    Kla {
        s,
        url,
        admin,
        _dirs: (packs, data),
    }
}

/// Runs the SDK client through kla; one JSON answer per step.
async fn client(url: &str, mode: &str, steps: Value) -> Vec<Value> {
    let out = tokio::process::Command::new(python())
        .arg(repo_path("tests/py/mcp_client.py"))
        .arg(url)
        .arg(mode)
        .arg(steps.to_string())
        .output()
        .await
        .expect("run the MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("client line"))
        .collect()
}

fn call(name: &str, args: Value) -> Value {
    json!({"op": "call", "name": name, "args": args})
}

fn text(answer: &Value) -> String {
    answer["texts"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// A raw stateless-era POST: the envelope in `_meta` and the routing headers as a client sends them, then
/// `headers` on top.
async fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut rb = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    let text = r.text().await.unwrap();
    let v = if h
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap().starts_with("text/event-stream"))
    {
        // The last message event of an SSE answer.
        text.split("\n\n")
            .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
            .filter_map(|d| serde_json::from_str(d).ok())
            .last()
            .unwrap_or(Value::Null)
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| json!({"raw": text}))
    };
    (status, h, v)
}

fn envelope(id: u64, method: &str, mut params: Value) -> Value {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS,
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn stateless_headers<'a>(method: &'a str, name: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut h = vec![("mcp-protocol-version", STATELESS), ("mcp-method", method)];
    if let Some(n) = name {
        h.push(("mcp-name", n));
    }
    h
}

#[tokio::test]
async fn sdk_client_in_both_eras_lists_filtered_tools_and_gets_decisions() {
    let up = McpServer::start();
    let k = start(&up, None, None).await;
    for mode in ["legacy", STATELESS] {
        let answers = client(
            &k.url,
            mode,
            json!([
                {"op": "list"},
                call("lookup_policy", json!({"policy_id": "p-1"})),
                call("export_report", json!({"report_id": "r-1"})),
                call("delete_customer", json!({"customer_id": "c-1"})),
                call("execute_refund", json!({"amount": 5000})),
                call("execute_refund", json!({"amount": 50})),
                call("_internal_probe", json!({})),
            ]),
        )
        .await;
        // Always-blocked tools (and a name outside the grammar) are hidden; a conditionally blocked one is not.
        assert_eq!(
            answers[0]["tools"],
            json!(["execute_refund", "export_report", "lookup_policy", "wire_money"]),
            "{mode}: {}",
            answers[0]
        );
        if mode == STATELESS {
            assert_eq!(answers[0]["cacheScope"], "private", "{}", answers[0]);
        }
        assert_eq!(answers[1]["isError"], false, "{mode}: {}", answers[1]);
        assert_eq!(text(&answers[1]), "policy p-1: active");
        // warn: forwarded, the result untouched.
        assert_eq!(answers[2]["isError"], false, "{mode}: {}", answers[2]);
        assert_eq!(text(&answers[2]), "report r-1 exported");
        // block: the client sees isError naming the rule, its reason and the decision.
        assert_eq!(answers[3]["isError"], true, "{mode}: {}", answers[3]);
        let t = text(&answers[3]);
        assert!(t.contains("mcp/no-delete") && t.contains("NO_DELETE"), "{t}");
        assert!(
            t.contains("customers are not deleted by agents") && t.contains("dec_"),
            "{t}"
        );
        // A rule over the arguments decides.
        assert_eq!(answers[4]["isError"], true, "{mode}: {}", answers[4]);
        assert!(text(&answers[4]).contains("BIG_REFUND"), "{}", answers[4]);
        assert_eq!(answers[5]["isError"], false, "{mode}: {}", answers[5]);
        // A tool name outside the grammar is refused without a decision.
        assert_eq!(answers[6]["isError"], true, "{mode}: {}", answers[6]);
        assert!(text(&answers[6]).contains("refused"), "{}", answers[6]);
    }
    let ran: Vec<Value> = up.executed();
    let tools: Vec<&str> = ran.iter().filter_map(|e| e["tool"].as_str()).collect();
    assert_eq!(
        tools,
        [
            "lookup_policy",
            "export_report",
            "execute_refund",
            "lookup_policy",
            "export_report",
            "execute_refund"
        ],
        "{ran:?}"
    );
    assert!(
        ran.iter()
            .all(|e| e["tool"] != "execute_refund" || e["args"]["amount"] == 50.0),
        "{ran:?}"
    );
}

#[tokio::test]
async fn warn_headers_and_raw_stateless_answers() {
    let up = McpServer::start();
    let k = start(&up, None, None).await;
    let body = envelope(
        7,
        "tools/call",
        json!({"name": "export_report", "arguments": {"report_id": "r-9"}}),
    );
    let mut h = stateless_headers("tools/call", Some("export_report"));
    h.push(("x-kla-execution-id", "exec_42"));
    h.push((
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ));
    let (status, headers, v) = post(&k.url, &body, &h).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(headers["x-kla-decision"], "warn");
    assert_eq!(headers["x-kla-reason-codes"], "EXPORT_FLAGGED");
    assert_eq!(v["id"], 7, "{v}");
    // The result is the upstream's, untouched.
    assert_eq!(v["result"]["isError"], false, "{v}");
    let meta: Vec<&String> = v["result"]["_meta"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(meta, ["io.modelcontextprotocol/serverInfo"], "{v}");
    let id = headers["x-kla-decision-id"].to_str().unwrap();
    let d = k.s.get(&format!("/v1/decisions/{id}"), &k.admin, T).await;
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["action"], "export_report", "{}", d.body);
    assert_eq!(d.body["context"], json!({"report_id": "r-9"}), "{}", d.body);
    assert_eq!(d.body["executionId"], "exec_42", "{}", d.body);
    assert_eq!(
        d.body["traceId"], "0af7651916cd43dd8448eb211c80319c",
        "{}",
        d.body
    );

    // tools/list: filtered and marked private (the upstream said public).
    let (status, _, v) = post(
        &k.url,
        &envelope(8, "tools/list", json!({})),
        &stateless_headers("tools/list", None),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"delete_customer") && names.contains(&"lookup_policy"),
        "{names:?}"
    );

    // A block in the stateless era carries resultType.
    let body = envelope(
        9,
        "tools/call",
        json!({"name": "delete_customer", "arguments": {"customer_id": "c"}}),
    );
    let (status, headers, v) = post(
        &k.url,
        &body,
        &stateless_headers("tools/call", Some("delete_customer")),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(headers.get("x-kla-decision-id").is_some());
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(up.count("delete_customer"), 0);
}

#[tokio::test]
async fn hide_blocked_tools_off_lists_everything() {
    let up = McpServer::start();
    let k = start(&up, Some(false), None).await;
    let answers = client(&k.url, STATELESS, json!([{"op": "list"}])).await;
    assert_eq!(
        answers[0]["tools"],
        json!([
            "_internal_probe",
            "delete_customer",
            "execute_refund",
            "export_report",
            "lookup_policy",
            "wire_money"
        ]),
        "{}",
        answers[0]
    );
    assert_eq!(answers[0]["cacheScope"], "public", "{}", answers[0]);
}

#[tokio::test]
async fn mismatched_headers_and_bad_json_rpc_are_refused_and_never_forwarded() {
    let up = McpServer::start();
    let k = start(&up, None, None).await;
    let call = envelope(
        11,
        "tools/call",
        json!({"name": "lookup_policy", "arguments": {"policy_id": "x"}}),
    );
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // Mcp-Name names another tool than the body.
        stateless_headers("tools/call", Some("wire_money")),
        // Mcp-Method says another method.
        stateless_headers("tools/list", Some("lookup_policy")),
        // Stateless, without Mcp-Name.
        stateless_headers("tools/call", None),
        // The version header disagrees with the envelope.
        vec![
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "lookup_policy"),
        ],
    ];
    for h in cases {
        let (status, headers, v) = post(&k.url, &call, &h).await;
        assert_eq!(status, 400, "{h:?}: {v}");
        assert_eq!(v["error"]["code"], -32020, "{h:?}: {v}");
        assert_eq!(v["id"], 11, "{h:?}: {v}");
        assert!(headers.get("x-kla-decision-id").is_none());
    }
    // Not JSON: parse error; JSON but not JSON-RPC: invalid request.
    let r = reqwest::Client::new()
        .post(&k.url)
        .header("content-type", "application/json")
        .body("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32700, "{v}");
    for bad in [
        json!({"jsonrpc": "1.0", "id": 2, "method": "tools/call"}),
        json!({"jsonrpc": "2.0", "id": 3, "method": 5}),
        json!([]),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": "lookup_policy"}),
    ] {
        let (status, _, v) = post(&k.url, &bad, &[]).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["error"]["code"], -32600, "{bad}: {v}");
    }
    // tools/call params that name no tool: invalid params, never forwarded.
    let (status, _, v) = post(
        &k.url,
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"arguments": {}}}),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -32602, "{v}");
    // A batch is only 2025-03-26's: refused under a later version; a batch kla answers whole never goes upstream.
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_customer", "arguments": {"customer_id": "c"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "wire_money", "arguments": {"amount": 5, "to": "x"}}},
    ]);
    let (status, _, v) = post(&k.url, &batch, &[("mcp-protocol-version", "2025-06-18")]).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    let (status, headers, v) = post(&k.url, &batch, &[]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|m| m["result"]["isError"] == true),
        "{v}"
    );
    assert!(
        v[0]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("NO_DELETE"),
        "{v}"
    );
    assert!(
        v[1]["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("appr_"),
        "{v}"
    );
    assert_eq!(
        headers["x-kla-decision-id"].to_str().unwrap().split(',').count(),
        2
    );
    assert!(up.executed().is_empty(), "{:?}", up.executed());
}

#[tokio::test]
async fn bad_mcp_route_config_is_refused_at_startup() {
    let data = tempfile::tempdir().unwrap();
    let route = |kind: Option<&str>, hide: Option<bool>, actions: bool| FileRoute {
        name: "tools".into(),
        prefix: "/tools".into(),
        upstream: "http://127.0.0.1:9/mcp".into(),
        kind: kind.map(str::to_owned),
        hide_blocked_tools: hide,
        actions: actions.then(|| {
            vec![kla::proxy::FileAction {
                method: "POST".into(),
                path: "/x".into(),
                action: "x".into(),
                context: None,
            }]
        }),
        ..FileRoute::default()
    };
    for (r, why) in [
        (route(Some("grpc"), None, false), "must be http or mcp"),
        (route(None, Some(true), false), "only for a route of kind mcp"),
        (route(Some("mcp"), None, true), "has no actions"),
    ] {
        let mut c = raw(data.path());
        c.proxy = Some(FileProxy {
            tenant: Some(T.into()),
            routes: Some(vec![r]),
            ..FileProxy::default()
        });
        let err = c.validate().expect_err("refused").to_string();
        assert!(err.contains(why), "{err}");
    }
}

impl Kla {
    /// The approvals waiting for a person.
    async fn pending(&self) -> Vec<String> {
        let r = self.s.get("/v1/approvals?status=PENDING", &self.admin, T).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["approvalId"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until exactly `n` approvals are pending; returns them.
    async fn wait_pending(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let p = self.pending().await;
            if p.len() == n {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never {n} pending approvals: {:?}", self.pending().await);
    }

    /// A person (not the agent) decides the approval.
    async fn resolve(&self, approval: &str, decision: &str) {
        let approver = self.s.token(T, Role::Approver);
        let r = send(
            self.s
                .req(
                    reqwest::Method::POST,
                    &format!("/v1/approvals/{approval}/decision"),
                    &approver,
                    T,
                )
                .json(&json!({"decision": decision, "comment": "checked by a person"})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// The `appr_...` id named in a text.
fn approval_in(text: &str) -> String {
    let i = text
        .find("appr_")
        .unwrap_or_else(|| panic!("no approval in {text:?}"));
    text[i..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[tokio::test]
async fn held_calls_are_approved_or_denied_over_the_api_in_both_eras() {
    let up = McpServer::start();
    let k = start(&up, None, Some("30s")).await;
    for (mode, verdict) in [
        ("legacy", "APPROVED"),
        (STATELESS, "DENIED"),
        (STATELESS, "APPROVED"),
        ("legacy", "DENIED"),
    ] {
        let before = up.count("wire_money");
        let url = k.url.clone();
        let held = tokio::spawn(async move {
            let mut c = call("wire_money", json!({"amount": 5, "to": "acct-1"}));
            c["progress"] = json!(true);
            client(&url, mode, json!([c])).await
        });
        let approval = k.wait_pending(1).await.remove(0);
        // Held: nothing ran while a person decides.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(up.count("wire_money"), before);
        k.resolve(&approval, verdict).await;
        let a = held.await.unwrap().remove(0);
        // The client saw progress while it waited (it sent a progressToken).
        assert!(!a["progress"].as_array().unwrap().is_empty(), "{mode}: {a}");
        if verdict == "APPROVED" {
            assert_eq!(a["isError"], false, "{mode}: {a}");
            assert_eq!(text(&a), "wired 5 to acct-1");
            assert_eq!(up.count("wire_money"), before + 1);
        } else {
            assert_eq!(a["isError"], true, "{mode}: {a}");
            let t = text(&a);
            assert!(t.contains("denied") && t.contains(&approval), "{t}");
            assert_eq!(up.count("wire_money"), before);
        }
    }
    assert_eq!(up.count("wire_money"), 2);
}

#[tokio::test]
async fn a_hold_past_the_budget_then_an_approved_retry_runs_exactly_once() {
    let up = McpServer::start();
    let k = start(&up, None, Some("1s")).await;
    let wire = || call("wire_money", json!({"amount": 70, "to": "acct-2"}));
    for mode in ["legacy", STATELESS] {
        let before = up.count("wire_money");
        let a = client(&k.url, mode, json!([wire()])).await.remove(0);
        assert_eq!(a["isError"], true, "{mode}: {a}");
        let t = text(&a);
        let approval = approval_in(&t);
        assert!(t.contains(&format!("/v1/approvals/{approval}")), "{t}");
        assert_eq!(up.count("wire_money"), before);
        k.resolve(&approval, "APPROVED").await;
        // The same call again goes through once; the one after needs an approval of its own.
        let answers = client(&k.url, mode, json!([wire(), wire()])).await;
        assert_eq!(answers[0]["isError"], false, "{mode}: {answers:?}");
        assert_eq!(text(&answers[0]), "wired 70 to acct-2");
        assert_eq!(answers[1]["isError"], true, "{mode}: {answers:?}");
        assert_ne!(approval_in(&text(&answers[1])), approval);
        assert_eq!(up.count("wire_money"), before + 1);
        for a in k.pending().await {
            k.resolve(&a, "DENIED").await;
        }
    }
}

fn with_tasks(mut body: Value) -> Value {
    body["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"] =
        json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    body
}

async fn task_get(k: &Kla, task: &str) -> Value {
    let body = envelope(90, "tasks/get", json!({"taskId": task}));
    let (status, _, v) = post(
        &k.url,
        &with_tasks(body),
        &stateless_headers("tasks/get", Some(task)),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test]
async fn a_client_with_the_tasks_extension_gets_a_task_that_kla_owns() {
    let up = McpServer::start();
    let k = start(&up, None, Some("1s")).await;
    let call = with_tasks(envelope(
        21,
        "tools/call",
        json!({"name": "wire_money", "arguments": {"amount": 9, "to": "acct-3"}}),
    ));
    let h = stateless_headers("tools/call", Some("wire_money"));
    let (status, headers, v) = post(&k.url, &call, &h).await;
    assert_eq!(status, 200, "{v}");
    assert!(headers.get("x-kla-decision-id").is_some());
    assert_eq!(v["id"], 21, "{v}");
    assert_eq!(v["result"]["resultType"], "task", "{v}");
    assert_eq!(v["result"]["status"], "working", "{v}");
    let task = v["result"]["taskId"].as_str().unwrap().to_owned();
    let approval = k.wait_pending(1).await.remove(0);
    // Past the hold budget, the task is still working: it waits as long as the approval may.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let g = task_get(&k, &task).await;
    assert_eq!(g["result"]["status"], "working", "{g}");
    assert_eq!(g["result"]["resultType"], "complete", "{g}");
    assert!(
        g["result"]["statusMessage"].as_str().unwrap().contains(&approval),
        "{g}"
    );
    assert_eq!(up.count("wire_money"), 0);
    k.resolve(&approval, "APPROVED").await;
    let mut done = Value::Null;
    for _ in 0..100 {
        done = task_get(&k, &task).await;
        if done["result"]["status"] != "working" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["result"]["status"], "completed", "{done}");
    assert_eq!(done["result"]["result"]["isError"], false, "{done}");
    assert_eq!(
        done["result"]["result"]["content"][0]["text"], "wired 9 to acct-3",
        "{done}"
    );
    assert_eq!(up.count("wire_money"), 1);

    // A cancelled task's call is never forwarded, even once approved.
    let (_, _, v) = post(&k.url, &call, &h).await;
    let task = v["result"]["taskId"].as_str().unwrap().to_owned();
    let approval = k.wait_pending(1).await.remove(0);
    let cancel = with_tasks(envelope(22, "tasks/cancel", json!({"taskId": task})));
    let (status, _, v) = post(&k.url, &cancel, &stateless_headers("tasks/cancel", Some(&task))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(task_get(&k, &task).await["result"]["status"], "cancelled");
    k.resolve(&approval, "APPROVED").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.count("wire_money"), 1);
    // An unknown task id of kla's is not found; someone else's ids go to the upstream.
    let g = task_get(&k, "kla-task-00000000000000000000000000000000").await;
    assert_eq!(g["error"]["code"], -32602, "{g}");
}

#[tokio::test]
async fn a_client_that_disconnects_while_held_has_cancelled() {
    let up = McpServer::start();
    let k = start(&up, None, Some("30s")).await;
    let held = envelope(
        31,
        "tools/call",
        json!({"name": "wire_money", "arguments": {"amount": 3, "to": "acct-4"}}),
    );
    let mut rb = reqwest::Client::new()
        .post(&k.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(held.to_string());
    for (h, v) in stateless_headers("tools/call", Some("wire_money")) {
        rb = rb.header(h, v);
    }
    let mut resp = rb.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The first event says the call is held.
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b":"), "{first:?}");
    let approval = k.wait_pending(1).await.remove(0);
    drop(resp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    k.resolve(&approval, "APPROVED").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(up.count("wire_money"), 0, "a cancelled call was forwarded");
    // The approval was not used up by the call that went away: the retry goes through, once.
    let a = client(
        &k.url,
        STATELESS,
        json!([call("wire_money", json!({"amount": 3, "to": "acct-4"}))]),
    )
    .await;
    assert_eq!(a[0]["isError"], false, "{a:?}");
    assert_eq!(up.count("wire_money"), 1);
}

#[tokio::test]
async fn a_handshake_era_cancel_notification_drops_the_held_call() {
    let up = McpServer::start();
    let k = start(&up, None, Some("30s")).await;
    let legacy = "2025-06-18";
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": legacy,
        "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}});
    let c = reqwest::Client::new();
    let r = c
        .post(&k.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let session = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.text().await.unwrap();
    let post = |body: Value| {
        c.post(&k.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", legacy)
            .body(body.to_string())
            .send()
    };
    let r = post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut held = post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "wire_money", "arguments": {"amount": 8, "to": "acct-5"}}}))
    .await
    .unwrap();
    assert_eq!(held.headers()["content-type"], "text/event-stream");
    assert!(held.chunk().await.unwrap().is_some());
    let approval = k.wait_pending(1).await.remove(0);
    let r = post(json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 2, "reason": "the user gave up"}}))
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    // The held answer ends without an answer, and approving afterwards forwards nothing.
    let rest = tokio::time::timeout(Duration::from_secs(5), held.chunk())
        .await
        .expect("the held stream ended");
    assert!(matches!(rest, Ok(None)), "{rest:?}");
    k.resolve(&approval, "APPROVED").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(up.count("wire_money"), 0, "a cancelled call was forwarded");
}
