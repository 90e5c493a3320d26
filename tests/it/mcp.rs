//! MCP routes (`kind: mcp`) through the real server, with the official MCP Python SDK on both sides: its
//! Streamable HTTP server (tests/py/mcp_server.py, which logs every tool it executes) behind kla, and its `Client`
//! (tests/py/mcp_client.py) calling through kla in both protocol eras (the `initialize` handshake and the stateless
//! 2026-07-28 revision). Raw HTTP covers what no well-behaved client sends: headers that disagree with the body,
//! bad JSON-RPC, batches.

use crate::harness::*;
use kla::auth::Role;
use kla::proxy::{FileProxy, FileRoute};
use serde_json::{Value, json};
use std::path::PathBuf;
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
            Command::new(venv_python())
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

/// kla with an MCP route `/tools` in front of `up` (sidecar mode); returns the server and the route's URL.
struct Kla {
    s: Server,
    url: String,
    admin: String,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn start(up: &McpServer, hide: Option<bool>, hold_budget: Option<&str>) -> Kla {
    start_at(up.port, hide, hold_budget).await
}

/// kla in front of the MCP upstream on 127.0.0.1:`port`.
async fn start_at(port: u16, hide: Option<bool>, hold_budget: Option<&str>) -> Kla {
    let packs = tempfile::tempdir().unwrap();
    write_pack(packs.path(), "mcp", RULES);
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
            upstream: format!("http://127.0.0.1:{port}/mcp"),
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
    let out = tokio::process::Command::new(venv_python())
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
        let r = self
            .s
            .vote(&approver, T, approval, decision, Some("checked by a person"))
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
    // The approval was not used up by the call that went away: the same call again goes through, once.
    let (status, _, v) = post(
        &k.url,
        &held,
        &stateless_headers("tools/call", Some("wire_money")),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["isError"], false, "{v}");
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

/// An MCP upstream scripted byte for byte, over loopback: it records every request it receives (method and body)
/// and answers each with what `answer` returns for the body (read as JSON, else null): status, content type, bytes.
/// For what no SDK server sends: answers kla must not pass on unread, and proof that a request never arrived.
struct Scripted {
    port: u16,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = (u16, &'static str, Vec<u8>);
/// A request the scripted upstream received: its method and body.
type Seen = (String, Vec<u8>);
/// A refused shape: what it is, the body, extra headers, the JSON-RPC error code.
type Shape<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>, i64);

impl Scripted {
    async fn start(answer: impl Fn(&Value) -> Answer + Send + Sync + 'static) -> Scripted {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = std::sync::Arc::new(answer);
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |method: axum::http::Method, body: axum::body::Bytes| {
            let log = log.clone();
            let answer = answer.clone();
            async move {
                log.lock().unwrap().push((method.to_string(), body.to_vec()));
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (status, ctype, bytes) = answer(&v);
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", ctype)
                    .body(axum::body::Body::from(bytes))
                    .unwrap()
            }
        });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Scripted { port, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A JSON-RPC result for `v`'s id.
fn ok_for(v: &Value, result: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": v["id"], "result": result})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn every_shape_of_a_tool_call_is_decided_or_refused_and_refusals_never_reach_the_upstream() {
    let up = Scripted::start(|v| {
        let r =
            json!({"content": [{"type": "text", "text": "ran"}], "isError": false, "resultType": "complete"});
        (200, "application/json", ok_for(v, r))
    })
    .await;
    let k = start_at(up.port, None, None).await;
    let c = reqwest::Client::new();
    let call = |id: Option<u64>, method: &str| {
        let mut m = json!({"jsonrpc": "2.0", "method": method,
            "params": {"name": "lookup_policy", "arguments": {"policy_id": "p"}}});
        if let Some(id) = id {
            m["id"] = json!(id);
        }
        m
    };
    // Control: a tools/call request is decided and forwarded.
    let (status, headers, v) = post(&k.url, &call(Some(1), "tools/call"), &[]).await;
    assert_eq!(status, 200, "{v}");
    assert!(headers.get("x-kla-decision-id").is_some());
    assert_eq!(up.seen().len(), 1);

    // JSON-RPC shapes kla refuses (status, JSON-RPC code).
    let stateless_note = stateless_headers("tools/call", Some("lookup_policy"));
    let cases: Vec<Shape> = vec![
        ("notification", call(None, "tools/call"), vec![], -32600),
        (
            "stateless notification",
            call(None, "tools/call"),
            stateless_note,
            -32600,
        ),
        ("look-alike method", call(Some(2), "Tools/Call"), vec![], -32600),
        ("padded method", call(Some(3), "tools/call "), vec![], -32600),
        (
            "batch with a notification-shaped call",
            json!([call(Some(4), "tools/call"), call(None, "tools/call")]),
            vec![],
            -32600,
        ),
        (
            "batch with a routing header",
            json!([call(Some(5), "tools/call")]),
            vec![("mcp-method", "tools/call")],
            -32020,
        ),
        (
            "response with routing headers",
            json!({"jsonrpc": "2.0", "id": 6, "result": {}}),
            vec![("mcp-method", "tools/call"), ("mcp-name", "lookup_policy")],
            -32020,
        ),
    ];
    for (what, body, h, code) in cases {
        let (status, headers, v) = post(&k.url, &body, &h).await;
        assert_eq!(status, 400, "{what}: {v}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert!(headers.get("x-kla-decision-id").is_none(), "{what}");
        assert_eq!(up.seen().len(), 1, "{what} reached the upstream");
    }

    // Methods that carry no body, with one; methods the transport does not define.
    let body = call(Some(7), "tools/call").to_string();
    for (method, status) in [
        (reqwest::Method::GET, 400),
        (reqwest::Method::DELETE, 400),
        (reqwest::Method::PUT, 405),
        (reqwest::Method::PATCH, 405),
    ] {
        let r = c
            .request(method.clone(), &k.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method}");
        if status == 405 {
            assert!(
                r.headers()["allow"].to_str().unwrap().contains("POST"),
                "{method}"
            );
        }
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "invalid_request", "{method}: {v}");
        assert_eq!(up.seen().len(), 1, "{method} with a body reached the upstream");
    }
    // A compressed body is refused too: kla would read other bytes than the upstream.
    let r = c
        .post(&k.url)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(up.seen().len(), 1);
    // A GET without a body (the server's stream) still reaches the upstream.
    let r = c
        .get(&k.url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[1].0.as_str(), seen[1].1.len()), ("GET", 0));
}

/// The upstream's `tools/list` answers kla must read to filter, in forms the SDK reads (checked directly against the
/// upstream) but a naive reader does not.
#[tokio::test]
async fn a_tools_list_answer_kla_cannot_read_is_never_passed_on_unfiltered() {
    let mode = std::sync::Arc::new(std::sync::Mutex::new(""));
    let m = mode.clone();
    let up = Scripted::start(move |v| {
        let tools = json!([{"name": "delete_customer", "inputSchema": {"type": "object"}},
                           {"name": "lookup_policy", "inputSchema": {"type": "object"}}]);
        let result = json!({"tools": tools, "resultType": "complete", "ttlMs": 0, "cacheScope": "public"});
        let msg = json!({"jsonrpc": "2.0", "id": v["id"], "result": result}).to_string();
        let sse = "text/event-stream";
        match *m.lock().unwrap() {
            "nan" => (
                200,
                "application/json",
                msg.replace("\"ttlMs\":0", "\"ttlMs\":0,\"x\":NaN").into_bytes(),
            ),
            "nan-sse" => (
                200,
                sse,
                format!(
                    "data: {}\n\n",
                    msg.replace("\"ttlMs\":0", "\"ttlMs\":0,\"x\":NaN")
                )
                .into_bytes(),
            ),
            "lone-cr" => (200, sse, format!("event: message\rdata: {msg}\r\r").into_bytes()),
            "bad-comment" => (
                200,
                sse,
                [
                    &b": \xff\xfe\nevent: message\ndata: "[..],
                    msg.as_bytes(),
                    b"\n\n",
                ]
                .concat(),
            ),
            "string-id" => {
                let id = v["id"].to_string();
                let msg = msg.replace(&format!("\"id\":{id}"), &format!("\"id\":\"{id}\""));
                (200, "application/json", msg.into_bytes())
            }
            "bom" => (200, sse, format!("\u{feff}data: {msg}\n\n").into_bytes()),
            "unended" => (200, sse, format!("data: {msg}\n").into_bytes()),
            "text" => (200, "text/plain", msg.into_bytes()),
            _ => (200, "application/json", msg.into_bytes()),
        }
    })
    .await;
    let k = start_at(up.port, None, None).await;
    let direct = format!("http://127.0.0.1:{}/mcp", up.port);
    // What kla answers: the filtered listing when it can read the answer (as the SDK would), else an error.
    for (case, sdk_reads_it, kla_filters_it) in [
        ("plain", true, true),
        ("nan", true, false),
        ("nan-sse", true, false),
        ("lone-cr", true, true),
        ("bad-comment", true, true),
        ("string-id", true, true),
        ("bom", false, true),
        ("unended", false, false),
        ("text", false, false),
    ] {
        *mode.lock().unwrap() = case;
        let raw = client(&direct, STATELESS, json!([{"op": "list"}]))
            .await
            .remove(0);
        assert_eq!(
            raw["tools"] == json!(["delete_customer", "lookup_policy"]),
            sdk_reads_it,
            "{case}: the SDK reading the upstream directly: {raw}"
        );
        let a = client(&k.url, STATELESS, json!([{"op": "list"}])).await.remove(0);
        if kla_filters_it {
            assert_eq!(a["tools"], json!(["lookup_policy"]), "{case}: {a}");
        } else {
            assert!(a.get("error").is_some(), "{case}: {a}");
            assert!(!a.to_string().contains("delete_customer"), "{case}: {a}");
        }
    }
}

#[tokio::test]
async fn an_approval_covers_the_whole_tool_call_not_only_its_arguments() {
    let up = McpServer::start();
    let k = start(&up, None, Some("0s")).await;
    let body = |mode: &str, meta: Value| {
        let mut b = envelope(
            41,
            "tools/call",
            json!({"name": "wire_money", "arguments": {"amount": 5, "to": "acct-9"}, "mode": mode}),
        );
        for (key, v) in meta.as_object().unwrap() {
            b["params"]["_meta"][key] = v.clone();
        }
        b
    };
    let h = stateless_headers("tools/call", Some("wire_money"));
    let pending_approval = |v: &Value| {
        assert_eq!(v["result"]["isError"], true, "{v}");
        approval_in(v["result"]["content"][0]["text"].as_str().unwrap())
    };
    let (_, _, v) = post(&k.url, &body("live", json!({})), &h).await;
    let approval = pending_approval(&v);
    k.resolve(&approval, "APPROVED").await;
    // Another params field, or an Mcp-Param header, differs: not the approved call, so it waits for its own.
    let (_, _, v) = post(&k.url, &body("dry-run", json!({})), &h).await;
    assert_ne!(pending_approval(&v), approval);
    let mut with_param = h.clone();
    with_param.push(("mcp-param-to", "acct-666"));
    let (_, headers, v) = post(&k.url, &body("live", json!({})), &with_param).await;
    assert_ne!(pending_approval(&v), approval);
    let id = headers["x-kla-decision-id"].to_str().unwrap();
    let d = k.s.get(&format!("/v1/decisions/{id}"), &k.admin, T).await;
    assert_eq!(
        d.body["tool"]["headers"]["mcp-param-to"], "acct-666",
        "{}",
        d.body
    );
    assert_eq!(d.body["tool"]["params"]["mode"], "live", "{}", d.body);
    assert_eq!(up.count("wire_money"), 0);
    // A new progress token or trace context only correlates: the same call goes through, once, on the approval.
    let meta = json!({"progressToken": "p-7", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"});
    let (_, headers, v) = post(&k.url, &body("live", meta), &h).await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert_eq!(up.count("wire_money"), 1);
    // The decision shows what the approval was bound to: the tool, its server and the other params.
    let id = headers["x-kla-decision-id"].to_str().unwrap();
    let d = k.s.get(&format!("/v1/decisions/{id}"), &k.admin, T).await;
    let tool = &d.body["tool"];
    assert_eq!(tool["name"], "wire_money", "{tool}");
    assert_eq!(tool["server"], "tools", "{tool}");
    assert_eq!(tool["params"]["mode"], "live", "{tool}");
    assert_eq!(
        tool["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"], STATELESS,
        "{tool}"
    );
    assert!(tool["params"]["_meta"].get("progressToken").is_none(), "{tool}");
    assert_eq!(tool["headers"]["mcp-protocol-version"], STATELESS, "{tool}");
}

#[tokio::test]
async fn a_task_nobody_polls_is_cancelled_and_its_call_never_forwarded() {
    let up = McpServer::start();
    let k = start(&up, None, Some("1s")).await;
    let call = with_tasks(envelope(
        51,
        "tools/call",
        json!({"name": "wire_money", "arguments": {"amount": 1250, "to": "acct-7"}}),
    ));
    let h = stateless_headers("tools/call", Some("wire_money"));
    let (_, _, v) = post(&k.url, &call, &h).await;
    assert_eq!(v["result"]["resultType"], "task", "{v}");
    assert!(
        v["result"]["statusMessage"]
            .as_str()
            .unwrap()
            .contains("poll tasks/get"),
        "{v}"
    );
    let task = v["result"]["taskId"].as_str().unwrap().to_owned();
    let approval = k.wait_pending(1).await.remove(0);
    // Like a client that rejected the task: it never polls. Past the window (5 poll intervals) the task is gone.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let g = task_get(&k, &task).await;
    assert_eq!(g["result"]["status"], "cancelled", "{g}");
    assert!(
        g["result"]["statusMessage"]
            .as_str()
            .unwrap()
            .contains("no client polled"),
        "{g}"
    );
    // Approved afterwards: the task's call is not run, and the approval was not used up by it, so the client's
    // own retry of the same call is what goes through, once.
    k.resolve(&approval, "APPROVED").await;
    let (_, _, v) = post(&k.url, &call, &h).await;
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert_eq!(up.count("wire_money"), 1);
}

#[tokio::test]
async fn discovery_through_kla_advertises_the_tasks_kla_serves() {
    let up = McpServer::start();
    let k = start(&up, None, None).await;
    let tasks = "io.modelcontextprotocol/tasks";
    let direct = client(
        &format!("http://127.0.0.1:{}/mcp", up.port),
        "auto",
        json!([{"op": "caps"}]),
    )
    .await
    .remove(0);
    assert_eq!(direct["protocolVersion"], STATELESS, "{direct}");
    assert!(
        direct["capabilities"]["extensions"].get(tasks).is_none(),
        "{direct}"
    );
    let through = client(&k.url, "auto", json!([{"op": "caps"}])).await.remove(0);
    assert_eq!(through["protocolVersion"], STATELESS, "{through}");
    assert_eq!(
        through["capabilities"]["extensions"][tasks],
        json!({}),
        "{through}"
    );
    // The rest of the upstream's capabilities pass unchanged.
    assert_eq!(through["capabilities"]["tools"], direct["capabilities"]["tools"]);
}

/// Waits (up to 10 s) until the upstream has executed `tool` `n` times.
async fn executed_times(up: &McpServer, tool: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while up.count(tool) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream executed {tool} {} times, not {n}",
            up.count(tool)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `audit: overlap` on an MCP route, as on plain HTTP routes: an allowed or warned `tools/call` is sent upstream
/// while its decision is made durable, and its answer (with the decision's id) is released only once it is; a
/// blocked call never reaches the upstream. With a ledger that refuses appends, the call reaches the upstream (the
/// overlap path, not a refusal before sending) but its answer is withheld: a JSON-RPC error, nothing of the
/// upstream's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overlap_audit_a_tool_call_is_sent_while_its_decision_is_recorded() {
    let up = McpServer::start();
    let fs = LazyFs::mount();
    let data = fs.root().join("data");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kla.yaml");
    std::fs::write(
        &cfg,
        format!(
            "proxy:\n  addr: 127.0.0.1:0\n  tenant: {T}\n  agent: {AGENT}\n  timeout: 10s\n  audit: overlap\n  \
             routes:\n    - name: tools\n      prefix: /tools\n      upstream: http://127.0.0.1:{}/mcp\n      \
             kind: mcp\n",
            up.port
        ),
    )
    .unwrap();
    // The repository's default pack: `delete_*` is blocked, the other tools here are allowed.
    let p = Process::serve(&data, &["--config", cfg.to_str().unwrap()]).await;
    let admin = p.token(T, Role::Admin);
    p.register(&admin, T, AGENT).await;
    let url = format!("http://{}/tools", p.listener("proxy").await);

    // Allowed: forwarded, the upstream's answer with the decision, which is durable and indexed.
    for (id, tool, args) in [
        (1, "lookup_policy", json!({"policy_id": "p-7"})),
        (2, "export_report", json!({"report_id": "r-7"})),
    ] {
        let body = envelope(id, "tools/call", json!({"name": tool, "arguments": args}));
        let (status, headers, v) = post(&url, &body, &stateless_headers("tools/call", Some(tool))).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["id"], id, "{v}");
        assert_eq!(v["result"]["isError"], false, "{v}");
        assert_eq!(up.count(tool), 1, "{tool}");
        let decision = headers["x-kla-decision-id"].to_str().unwrap();
        let d = p.get(&format!("/v1/decisions/{decision}"), &admin, T).await;
        assert_eq!(d.status, 200, "{}", d.body);
        assert_eq!(d.body["action"], tool, "{}", d.body);
        assert_eq!(d.body["decision"], "allow", "{}", d.body);
    }

    // Blocked: kla's refusal, and the upstream never sees the call.
    let body = envelope(
        3,
        "tools/call",
        json!({"name": "delete_customer", "arguments": {"customer_id": "c-7"}}),
    );
    let (status, headers, v) = post(
        &url,
        &body,
        &stateless_headers("tools/call", Some("delete_customer")),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["isError"], true, "{v}");
    assert!(headers.get("x-kla-decision-id").is_some());

    // The record fails: the call was sent (overlap), its answer is withheld.
    fs.fail_ledger(true);
    let body = envelope(
        4,
        "tools/call",
        json!({"name": "lookup_policy", "arguments": {"policy_id": "p-withheld"}}),
    );
    let (_, headers, v) = post(
        &url,
        &body,
        &stateless_headers("tools/call", Some("lookup_policy")),
    )
    .await;
    assert_eq!(v["id"], 4, "{v}");
    assert!(v["error"]["code"].is_i64(), "{v}");
    assert!(v.get("result").is_none(), "the upstream's answer leaked: {v}");
    assert!(!v.to_string().contains("p-withheld: active"), "{v}");
    assert!(headers.get("x-kla-decision-id").is_none());
    executed_times(&up, "lookup_policy", 2).await;
    p.wait_log("the withheld-answer error", Duration::from_secs(10), |l| {
        l.contains("its answer is withheld")
    })
    .await;
    fs.fail_ledger(false);
    assert_eq!(up.count("delete_customer"), 0);
}

/// The identify phase is the proxy's, the same on MCP routes as on plain HTTP ones: an `x-kla-execution-id` that
/// is not exactly one kla execution id is refused (400 `invalid_request` naming the header) before anything is
/// decided or forwarded, where it used to reach the upstream with the call.
#[tokio::test]
async fn a_malformed_execution_header_is_refused_before_deciding_or_forwarding() {
    let up = McpServer::start();
    let k = start(&up, None, None).await;
    let body = envelope(
        1,
        "tools/call",
        json!({"name": "lookup_policy", "arguments": {"policy_id": "p-1"}}),
    );
    for bad in ["exec-456", "exec_XYZ", "exec_42, exec_43"] {
        let mut h = stateless_headers("tools/call", Some("lookup_policy"));
        h.push(("x-kla-execution-id", bad));
        let (status, headers, v) = post(&k.url, &body, &h).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["code"], "invalid_request", "{bad}: {v}");
        let m = v["message"].as_str().unwrap_or_default();
        assert!(m.contains("header 'x-kla-execution-id'"), "{bad}: {m}");
        assert!(headers.get("x-kla-decision-id").is_none(), "{bad} was decided");
    }
    // The same call with a well-formed id is decided and forwarded.
    let mut h = stateless_headers("tools/call", Some("lookup_policy"));
    h.push(("x-kla-execution-id", "exec_42"));
    let (status, headers, v) = post(&k.url, &body, &h).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["result"]["isError"], false, "{v}");
    assert!(headers.get("x-kla-decision-id").is_some());
    assert_eq!(up.count("lookup_policy"), 1);
}
