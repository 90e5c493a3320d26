//! What the proxy decides is exactly what it forwards: one canonical request target (percent-encodings, dot
//! segments, merged slashes, method spellings, override headers), one reading of the body and query, approvals
//! bound to the whole call, and redirects that do not lead around kla. Requests go over raw TCP where an HTTP
//! client would normalise them first; a stock Starlette app shows that no blocked handler runs.

use super::proxy::{AGENT, T, Upstream, action, decision, pending_approvals, start_with, vote};
use crate::harness::*;
use proptest::strategy::{Strategy, ValueTree};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status and JSON body (or `Null`) of one raw HTTP/1.1 request, sent byte for byte as given.
async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    // A chunked answer: take the JSON between the chunk sizes.
    let json = body
        .find('{')
        .and_then(|i| body.rfind('}').map(|j| &body[i..=j]))
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

async fn proxy_addr(s: &Server) -> SocketAddr {
    s.listener("proxy").expect("proxy listener")
}

/// Every spelling of the blocked `DELETE /billing/customers/c7` and of the 5000 refund (blocked over 1000) that
/// upstreams are known to read as the same call is either decided as that call (and blocked) or refused as
/// ambiguous; none reaches the upstream.
#[tokio::test]
async fn every_spelling_of_a_blocked_call_is_blocked_or_refused() {
    let up = Upstream::start().await;
    let (s, _proxy, _admin, _p, _d) = start_with(Some(AGENT), &up, |_| {}).await;
    let addr = proxy_addr(&s).await;
    let json = [("content-type", "application/json")];
    let blocked = |v: &Value, code: &str| v["reasonCodes"] == json!([code]);
    for (method, target, headers, want) in [
        ("DELETE", "/billing/%63ustomers/c7", &[][..], 403),
        ("DELETE", "/billing/customers/%63%37", &[][..], 403),
        ("DELETE", "/billing/./customers/c7", &[][..], 403),
        ("DELETE", "/billing/x/../customers/c7", &[][..], 403),
        ("DELETE", "/billing//customers/c7", &[][..], 403),
        ("DELETE", "/billing/customers//c7", &[][..], 403),
        ("DELETE", "/billing/customers%2Fc8", &[][..], 400),
        ("DELETE", "/billing/customers%2fc8", &[][..], 400),
        ("DELETE", "/billing/%2e/customers/c7", &[][..], 400),
        ("DELETE", "/billing/customers/c7%00", &[][..], 400),
        ("DELETE", "/billing/customers%5Cc7", &[][..], 400),
        ("DELETE", "/billing/customers;x=1/c7", &[][..], 400),
        ("DELETE", "/billing/%2563ustomers/c7", &[][..], 400),
        ("DELETE", "/billing/customers/c7/", &[][..], 400),
        ("DELETE", "/billing/Customers/c7", &[][..], 400),
        ("delete", "/billing/customers/c7", &[][..], 400),
        ("Delete", "/billing/customers/c7", &[][..], 400),
        (
            "POST",
            "/billing/customers/c7",
            &[("X-HTTP-Method-Override", "DELETE")][..],
            400,
        ),
        (
            "POST",
            "/billing/customers/c7",
            &[("X-HTTP-Method", "DELETE")][..],
            400,
        ),
        (
            "POST",
            "/billing/customers/c7",
            &[("X-Method-Override", "DELETE")][..],
            400,
        ),
        (
            "GET",
            "/billing/reports/r1",
            &[("X-Original-URL", "/api/customers/c7")][..],
            400,
        ),
        (
            "GET",
            "/billing/reports/r1",
            &[("X-Rewrite-URL", "/api/customers/c7")][..],
            400,
        ),
    ] {
        let (status, body) = raw(addr, method, target, headers, "").await;
        assert_eq!(status, want, "{method} {target} {headers:?}: {body}");
        if want == 403 {
            assert!(blocked(&body, "NO_DELETE"), "{method} {target}: {body}");
        } else {
            assert_eq!(body["code"], "invalid_request", "{method} {target}: {body}");
        }
    }
    for target in [
        "/billing/%72efunds",
        "/billing/./refunds",
        "/billing//refunds",
        "/billing/%72%65funds",
    ] {
        let (status, body) = raw(addr, "POST", target, &json, r#"{"amount": 5000}"#).await;
        assert_eq!(status, 403, "{target}: {body}");
        assert!(blocked(&body, "BIG_REFUND"), "{target}: {body}");
    }
    let seen = up.seen();
    assert!(
        seen.is_empty(),
        "reached the upstream: {:?}",
        seen.iter().map(|r| &r.target).collect::<Vec<_>>()
    );

    // What is allowed is forwarded in its canonical form: the upstream gets the path that was decided.
    let (status, body) = raw(addr, "GET", "/billing/%72eports/./r%2D1?x=%2F", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/reports/r-1?x=%2F");
}

/// Random encodings of the blocked call (escapes of any byte in any hex case, dot segments, detours, doubled
/// slashes, method spellings) never reach the upstream: each is blocked as the call it is, or refused.
#[tokio::test]
async fn random_encodings_of_a_blocked_call_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let (s, _proxy, _admin, _p, _d) = start_with(Some(AGENT), &up, |_| {}).await;
    let addr = proxy_addr(&s).await;
    // One spelling of a segment: each byte as itself or escaped (upper or lower hex).
    fn spell(seg: &'static str) -> impl Strategy<Value = String> {
        proptest::collection::vec(0u8..3, seg.len()).prop_map(move |how| {
            seg.bytes()
                .zip(how)
                .map(|(b, h)| match h {
                    0 => (b as char).to_string(),
                    1 => format!("%{b:02X}"),
                    _ => format!("%{b:02x}"),
                })
                .collect()
        })
    }
    // Between segments: `/`, `//`, `/./`, or a detour `/x/../`.
    let sep = proptest::sample::select(vec!["/", "//", "/./", "/zz/../", "/%2e/", "/%2E%2E/"]);
    let method = proptest::sample::select(vec!["DELETE", "delete", "DeLeTe"]);
    let case = proptest::sample::select(vec!["customers", "Customers"]);
    let strategy = (
        method,
        sep.clone(),
        case,
        sep.clone(),
        spell("c7"),
        spell("billing"),
    )
        .prop_flat_map(|(m, s1, c, s2, id, billing)| {
            spell(c).prop_map(move |cust| (m, format!("/{billing}{s1}{cust}{s2}{id}")))
        });
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..96 {
        let (method, target) = strategy.new_tree(&mut runner).unwrap().current();
        let (status, body) = raw(addr, method, &target, &[], "").await;
        match status {
            403 => assert_eq!(
                body["reasonCodes"],
                json!(["NO_DELETE"]),
                "{method} {target}: {body}"
            ),
            400 | 404 => assert!(body["code"].is_string(), "{method} {target}: {body}"),
            other => panic!("{method} {target}: {other} {body}"),
        }
    }
    assert!(
        up.seen().is_empty(),
        "reached the upstream: {:?}",
        up.seen().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
}

/// Routes can say their upstream ignores letter case or a trailing slash, and refuse calls that match no action.
#[tokio::test]
async fn route_options_case_trailing_slash_and_unmatched() {
    let up = Upstream::start().await;
    let (s, proxy, _admin, _p, _d) = start_with(Some(AGENT), &up, |p| {
        let r = &mut p.routes.as_mut().unwrap()[0];
        r.case_insensitive = Some(true);
        r.ignore_trailing_slash = Some(true);
        r.unmatched = Some("block".into());
    })
    .await;
    let addr = proxy_addr(&s).await;
    for target in [
        "/billing/Customers/c7",
        "/billing/customers/c7/",
        "/billing/CUSTOMERS/c7/",
    ] {
        let (status, body) = raw(addr, "DELETE", target, &[], "").await;
        assert_eq!(status, 403, "{target}: {body}");
        assert_eq!(body["reasonCodes"], json!(["NO_DELETE"]), "{target}: {body}");
    }
    // Unmatched: refused without being forwarded.
    let r = client()
        .get(format!("{proxy}/billing/anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("matches none"),
        "{body}"
    );
    // A declared action still goes through, its trailing slash dropped on the way.
    let (status, body) = raw(addr, "GET", "/billing/REPORTS/r2/", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/api/REPORTS/r2");
}

/// One reading of the body and query: a value sent twice (query beside body, keys differing by case, a query
/// parameter named twice) is refused; context can name query parameters; the query is part of the decision.
#[tokio::test]
async fn the_body_and_query_are_read_once() {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) = start_with(Some(AGENT), &up, |p| {
        let r = &mut p.routes.as_mut().unwrap()[0];
        r.actions.as_mut().unwrap().push(action(
            "POST",
            "/payouts",
            "execute_refund",
            &[("amount", "?amount"), ("currency", "?currency")],
        ));
    })
    .await;
    let c = client();
    let post = |path: &str, body: &'static str| {
        c.post(format!("{proxy}{path}"))
            .header("content-type", "application/json")
            .body(body)
    };
    for (path, body) in [
        ("/billing/refunds?amount=5000", r#"{"amount": 50}"#),
        ("/billing/refunds?Amount=5000", r#"{"amount": 50}"#),
        ("/billing/refunds", r#"{"Amount": 5000, "amount": 50}"#),
        (
            "/billing/refunds",
            r#"{"amount": 50, "meta": {"Dest": "a", "dest": "b"}}"#,
        ),
        ("/billing/payouts?amount=5&amount=5000", "{}"),
        ("/billing/payouts?amount=5&AMOUNT=5000", "{}"),
        ("/billing/payouts?amount=%zz", "{}"),
    ] {
        let r = post(path, body).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path} {body}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["code"], "invalid_request", "{b}");
    }
    assert!(up.seen().is_empty());
    // A context value from the query drives the rule.
    let r = post("/billing/payouts?amount=5000&currency=EUR", "{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["reasonCodes"], json!(["BIG_REFUND"]), "{b}");
    let r = post("/billing/payouts?amount=50&currency=EUR", "{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    let d = decision(&s, &admin, &id).await;
    // A query value written as a number is a number; anything else a string.
    assert_eq!(d["context"], json!({"amount": 50, "currency": "EUR"}), "{d}");
    assert_eq!(d["tool"]["query"], "amount=50&currency=EUR", "{d}");
}

/// An approval covers the whole call: a retry that adds a body field, a query, or changes a significant header is
/// a new call needing its own approval; the approver saw all of it; the exact call goes through once.
#[tokio::test]
async fn an_approval_covers_the_whole_call() {
    let up = Upstream::start().await;
    let (s, proxy, admin, _p, _d) = start_with(Some(AGENT), &up, |p| {
        p.routes.as_mut().unwrap()[0].significant_headers = Some(vec!["X-Account".into()]);
    })
    .await;
    let c = client();
    let wire = |query: &str, body: &'static str, account: &'static str| {
        c.post(format!("{proxy}/billing/wires{query}"))
            .header("content-type", "application/json")
            .header("x-account", account)
            .body(body)
    };
    let approved_body = r#"{"to": "acme", "amount": 5}"#;
    let r = wire("", approved_body, "ops").send().await.unwrap();
    assert_eq!(r.status(), 403, "held (hold budget 0: answered as pending)");
    let pending = pending_approvals(&s, &admin, 1).await;
    let approval = pending[0]["approvalId"].as_str().unwrap().to_owned();
    // The approver sees the whole call (redacted as every record is).
    let a = s.get(&format!("/v1/approvals/{approval}"), &admin, T).await;
    assert_eq!(a.body["tool"]["method"], "POST", "{}", a.body);
    assert_eq!(a.body["tool"]["path"], "/billing/wires", "{}", a.body);
    assert_eq!(
        a.body["tool"]["headers"],
        json!({"x-account": "ops"}),
        "{}",
        a.body
    );
    assert_eq!(
        a.body["tool"]["body"]["json"],
        json!({"to": "acme", "amount": 5}),
        "{}",
        a.body
    );
    vote(&s, &approval, "APPROVED").await;

    // Retries that differ in anything forwarded are not covered by it.
    for (query, body, account) in [
        (
            "",
            r#"{"to": "acme", "amount": 5, "destination_account": "ATTACKER"}"#,
            "ops",
        ),
        ("?dest=ATTACKER&currency=BTC", approved_body, "ops"),
        ("", approved_body, "attacker"),
        ("", r#"{"to":"acme","amount":5}"#, "ops"),
    ] {
        let r = wire(query, body, account).send().await.unwrap();
        assert_eq!(r.status(), 403, "{query} {body} {account}");
        let b: Value = r.json().await.unwrap();
        assert!(
            b["approvalId"].is_string() && b["approvalId"] != approval.as_str(),
            "{b}"
        );
    }
    assert!(
        up.seen().is_empty(),
        "a changed call went through on another call's approval"
    );
    // The exact call goes through, once.
    let r = wire("", approved_body, "ops").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = wire("", approved_body, "ops").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(up.seen().len(), 1);
}

/// An upstream's redirect to itself is rewritten to go through kla; one that would leave the route at the upstream's
/// origin is withheld; other redirects pass as they are.
#[tokio::test]
async fn redirects_do_not_lead_around_kla() {
    let up = Upstream::start().await;
    let (s, proxy, _admin, _p, _d) = start_with(Some(AGENT), &up, |_| {}).await;
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let addr = proxy_addr(&s).await;
    let loc = |r: &reqwest::Response| {
        r.headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let r = c
        .get(format!("{proxy}/billing/redirect/in"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        loc(&r).as_deref(),
        Some(format!("http://{addr}/billing/customers/c7?x=1").as_str())
    );
    let r = c
        .get(format!("{proxy}/billing/redirect/path"))
        .send()
        .await
        .unwrap();
    assert_eq!(loc(&r).as_deref(), Some("/billing/customers/c9"));
    let r = c
        .get(format!("{proxy}/billing/redirect/away"))
        .send()
        .await
        .unwrap();
    assert_eq!(loc(&r).as_deref(), Some("https://example.com/away"));
    let r = c
        .get(format!("{proxy}/billing/redirect/out"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers().get("location").is_none());
}

/// The stock Starlette app behind kla.
struct Starlette {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Starlette {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Starlette {
    fn start() -> Starlette {
        let python = venv_python();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("ran.jsonl");
        let (child, port) = spawn_listening(
            Command::new(python)
                .arg(repo_path("tests/py/starlette_app.py"))
                .env("OUT", &log),
            "the Starlette app",
        );
        Starlette {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    /// The handlers that ran, in order.
    fn ran(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Against a stock Starlette app (which decodes paths before routing, reads form bodies and query parameters, and
/// redirects to itself): no spelling of the blocked delete or of the big refund runs its handler.
#[tokio::test]
async fn a_stock_starlette_app_runs_no_blocked_handler() {
    let app = Starlette::start();
    let up = Upstream::start().await;
    let (s, _proxy, _admin, _p, _d) = start_with(Some(AGENT), &up, |p| {
        let r = &mut p.routes.as_mut().unwrap()[0];
        r.upstream = format!("http://127.0.0.1:{}", app.port);
        r.actions
            .as_mut()
            .unwrap()
            .push(action("GET", "/customers/{id}", "lookup_customer", &[]));
    })
    .await;
    let addr = proxy_addr(&s).await;
    let json = ("content-type", "application/json");
    let form = ("content-type", "application/x-www-form-urlencoded");
    for (method, target, headers, body) in [
        ("DELETE", "/billing/%63ustomers/c7", vec![], ""),
        ("DELETE", "/billing/customers%2Fc8", vec![], ""),
        ("DELETE", "/billing/x/../customers/c7", vec![], ""),
        ("DELETE", "/billing//customers/c7", vec![], ""),
        ("DELETE", "/billing/customers/c7/", vec![], ""),
        ("delete", "/billing/customers/c7", vec![], ""),
        (
            "POST",
            "/billing/customers/c7",
            vec![("X-HTTP-Method-Override", "DELETE")],
            "",
        ),
        ("POST", "/billing/%72efunds", vec![json], r#"{"amount": 5000}"#),
        ("POST", "/billing/refunds", vec![form], "amount=5000"),
        (
            "POST",
            "/billing/refunds?amount=5000",
            vec![json],
            r#"{"amount": 50}"#,
        ),
        (
            "POST",
            "/billing/refunds",
            vec![json],
            r#"{"Amount": 5000, "amount": 50}"#,
        ),
    ] {
        let (status, body) = raw(addr, method, target, &headers, body).await;
        assert!(
            matches!(status, 400 | 403 | 415),
            "{method} {target}: {status} {body}"
        );
    }
    assert_eq!(app.ran(), Vec::<Value>::new(), "a blocked handler ran");
    // The allowed calls run, and a redirect of the app to itself comes back pointing at kla.
    let (status, _) = raw(addr, "POST", "/billing/refunds", &[json], r#"{"amount": 50}"#).await;
    assert_eq!(status, 200);
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("http://{addr}/billing/moved"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("http://{addr}/billing/customers/c-moved")
    );
    let ran = app.ran();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(ran[0]["handler"], "refund");
}
