//! Input built to be read two ways: JSON that repeats a key (in REST bodies, evidence bundles and `kla pack eval`
//! input), and `Idempotency-Key` values outside visible ASCII.

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: &str = "acme-prod";

/// POST with a body sent byte for byte as given (serde would drop a repeated key before it is sent).
async fn post_raw(s: &Server, path: &str, tok: &str, body: &str) -> Resp {
    s.send(
        s.req(Method::POST, path, tok, T)
            .header("content-type", "application/json")
            .body(body.to_owned()),
    )
    .await
}

#[tokio::test]
async fn a_repeated_key_at_any_depth_of_a_request_body_is_refused() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let agent = register(&s, &tok, T, "dup-keys").await;
    let ev =
        |context: &str| format!(r#"{{"agentId":"{agent}","action":"execute_refund","context":{context}}}"#);
    // The same body without the repeat is a decision, so what follows is refused for the repeat alone.
    let ok = post_raw(&s, "/v1/decisions.evaluate", &tok, &ev(r#"{"amount":1250.00}"#)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["decision"], "require_approval");

    for (body, message) in [
        // A small amount after the large one: a reader that keeps the last would allow what the first forbids.
        (
            ev(r#"{"amount":1250.00,"amount":5}"#),
            "duplicate key 'amount' in field 'context'",
        ),
        (
            ev(r#"{"refund":{"items":[{"sku":"a"},{"sku":"b","sku":"c"}]}}"#),
            "duplicate key 'sku' in field 'context.refund.items[1]'",
        ),
        (
            ev(r#"{"\u0061mount":1,"amount":2}"#),
            "duplicate key 'amount' in field 'context'",
        ),
        (
            format!(r#"{{"agentId":"{agent}","action":"lookup_policy","tool":{{"name":"a","name":"b"}}}}"#),
            "duplicate key 'name' in field 'tool'",
        ),
        (
            format!(r#"{{"agentId":"{agent}","action":"lookup_policy","action":"execute_refund"}}"#),
            "duplicate key 'action'",
        ),
    ] {
        let r = post_raw(&s, "/v1/decisions.evaluate", &tok, &body).await;
        r.assert_error(400, "invalid_request");
        assert_eq!(r.body["message"], message, "{body}");
    }
    let r = post_raw(
        &s,
        "/v1/agents",
        &tok,
        r#"{"name":"one","name":"two","description":"d","model":"m","tools":[]}"#,
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert_eq!(r.body["message"], "duplicate key 'name'");
    // Syntax errors keep their message.
    let r = post_raw(&s, "/v1/decisions.evaluate", &tok, r#"{"agentId":"#).await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().starts_with("malformed JSON"),
        "{}",
        r.body
    );
    // Nothing refused reached the ledger or the registry: one decision, one agent.
    let list = s.send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(
        list.body["agents"].as_array().map(Vec::len),
        Some(1),
        "{}",
        list.body
    );
    let entries = s
        .req(Method::GET, "/v1/ledger/entries?start=0", &tok, T)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let decisions = entries
        .lines()
        .filter(|l| l.contains(r#""kind":"decision""#))
        .count();
    assert_eq!(decisions, 1, "{entries}");
    s.stop().await;
}

#[tokio::test]
async fn kla_verify_refuses_an_evidence_bundle_that_repeats_a_key() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let agent = register(&s, &tok, T, "bundle-dup").await;
    let d = evaluate(&s, &tok, T, &agent, "lookup_policy", json!({})).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let id = d.body["decisionId"].as_str().unwrap();
    let bundle = s
        .send(s.req(Method::GET, &format!("/v1/evidence?decisionId={id}"), &tok, T))
        .await;
    assert_eq!(bundle.status, 200, "{}", bundle.body);
    let key = s
        .client
        .get(format!("{}/v1/ledger/key", s.base))
        .bearer_auth(&tok)
        .header("x-tenant-id", T)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let verify = |name: &str, text: &str| {
        let file = tmp.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = Command::new(kla_bin())
            .arg("verify")
            .arg(&file)
            .args(["--key", key.trim()])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let good = bundle.body.to_string();
    let (ok, out) = verify("good.json", &good);
    assert!(ok, "{out}");
    // A second treeSize and a second ledgerIndex in the entry, each holding a different number.
    let size = bundle.body["treeSize"].as_u64().unwrap();
    let top = good.replacen('{', &format!(r#"{{"treeSize":{},"#, size + 1), 1);
    let (ok, out) = verify("top.json", &top);
    assert!(!ok, "{out}");
    assert!(out.contains("duplicate key 'treeSize'"), "{out}");
    let index = bundle.body["entries"][0]["ledgerIndex"].as_u64().unwrap();
    let nested = good.replacen(
        &format!(r#""ledgerIndex":{index}"#),
        &format!(r#""ledgerIndex":{index},"ledgerIndex":{}"#, index + 7),
        1,
    );
    assert_ne!(nested, good);
    let (ok, out) = verify("nested.json", &nested);
    assert!(!ok, "{out}");
    assert!(
        out.contains("duplicate key 'ledgerIndex' in field 'entries[0]'"),
        "{out}"
    );
    s.stop().await;
}

#[test]
fn kla_pack_eval_refuses_input_that_repeats_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let input = |name: &str, context: &str| {
        let path = tmp.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"{{"agent":{{"id":"agt_1","name":"a"}},"action":"execute_refund","context":{context}}}"#
            ),
        )
        .unwrap();
        let out = Command::new(kla_bin())
            .args(["pack", "eval"])
            .arg(repo_path("policies/default"))
            .arg("--input")
            .arg(&path)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, out) = input("ok.json", r#"{"amount":1250}"#);
    assert!(ok, "{out}");
    assert!(out.contains("require_approval"), "{out}");
    let (ok, out) = input("dup.json", r#"{"amount":1250,"amount":5}"#);
    assert!(!ok, "{out}");
    assert!(out.contains("duplicate key 'amount' in field 'context'"), "{out}");
}

/// Sends a POST /v1/agents over a plain TCP connection with `key` as the raw bytes of `Idempotency-Key` (HTTP
/// client libraries refuse to send some of these bytes); returns the status and the body.
async fn post_with_raw_key(s: &Server, tok: &str, key: &[u8]) -> (u16, String) {
    let addr = s.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = agent_body("raw-key").to_string();
    let mut req = format!(
        "POST /v1/agents HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nx-tenant-id: {T}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nIdempotency-Key: ",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(key);
    req.extend_from_slice(b"\r\n\r\n");
    req.extend_from_slice(body.as_bytes());
    conn.write_all(&req).await.unwrap();
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn an_idempotency_key_outside_visible_ascii_or_too_long_is_refused() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let too_long = "k".repeat(256);
    let cases: [(&str, &[u8]); 5] = [
        ("tab", b"retry\t1"),
        ("space", b"retry 1"),
        ("non-ASCII", "clé-1".as_bytes()),
        ("empty", b""),
        ("256 bytes", too_long.as_bytes()),
    ];
    for (what, key) in cases {
        let (status, body) = post_with_raw_key(&s, &tok, key).await;
        assert_eq!(status, 400, "{what}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
        assert_eq!(v["code"], "invalid_request", "{what}: {body}");
        assert!(
            v["message"].as_str().unwrap().contains("Idempotency-Key"),
            "{what}: {body}"
        );
    }
    // DEL is refused by the HTTP parser before kla sees the request (kla's own check refuses it too: see the
    // unit tests of `api::idempotency`).
    let (status, body) = post_with_raw_key(&s, &tok, b"retry\x7f1").await;
    assert_eq!(status, 400, "DEL: {body}");
    // None of them registered the agent; 255 visible characters are a key.
    let list = s.send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(
        list.body["agents"].as_array().map(Vec::len),
        Some(0),
        "{}",
        list.body
    );
    let longest = "~!".repeat(127) + "k";
    let (status, body) = post_with_raw_key(&s, &tok, longest.as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = post_with_raw_key(&s, &tok, longest.as_bytes()).await;
    assert_eq!(status, 201, "the replay");
    s.stop().await;
}
