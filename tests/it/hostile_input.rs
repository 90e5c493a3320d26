//! Input built to be read two ways or to draw out internals: JSON that repeats a key (in REST bodies, evidence
//! bundles, `kla pack eval` input and token claims), `Idempotency-Key` values outside visible ASCII, and bearer
//! tokens wrong in every way kla tells apart, whose 401 messages must speak the caller's terms.

use crate::harness::*;
use base64::Engine;
use kla::auth::{Role, keys};
use reqwest::Method;
use serde_json::{Value, json};
use std::process::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: &str = "acme-prod";

/// POST with a body sent byte for byte as given (serde would drop a repeated key before it is sent).
async fn post_raw(s: &Server, path: &str, tok: &str, body: &str) -> Resp {
    send(
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
    let agent = s.register(&tok, T, "dup-keys").await;
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
    let list = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
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
    let agent = s.register(&tok, T, "bundle-dup").await;
    let d = s.evaluate(&tok, T, &agent, "lookup_policy", json!({})).await;
    assert_eq!(d.status, 200, "{}", d.body);
    let id = d.body["decisionId"].as_str().unwrap();
    let bundle = send(s.req(Method::GET, &format!("/v1/evidence?decisionId={id}"), &tok, T)).await;
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
        (out.status.success(), output_text(&out))
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
        (out.status.success(), output_text(&out))
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
    let list = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
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

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS over exactly these header and claims texts (which may repeat keys), signed with `key`: the token
/// fuzz target's signer.
fn sign_raw(header: &str, claims: &str, key: &keys::KeyFile) -> String {
    kla::fuzzing::sign_token(header.as_bytes(), claims.as_bytes(), &key.signing)
}

/// Sends `token` and checks the 401 says `says` and nothing of the parser.
async fn assert_refused(s: &Server, case: &str, token: &str, says: &str) {
    let r = send(s.req(Method::GET, "/v1/agents", token, T)).await;
    r.assert_error(401, "unauthorized");
    let m = r.body["message"].as_str().unwrap();
    assert!(m.contains(says), "{case}: {m:?} should say {says:?}");
    // The words of Rust, serde, base64 and jsonwebtoken that the token fuzz target also refuses to show.
    for w in kla::fuzzing::INTERNALS {
        assert!(!m.contains(w), "{case}: {m:?} shows {w:?}");
    }
}

#[tokio::test]
async fn every_refused_token_says_why_in_the_callers_terms() {
    let s = Server::start().await;
    let right = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let other = keys::load_or_create(&other_dir.path().join("k.pem")).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let ed = r#"{"alg":"EdDSA","typ":"JWT"}"#;
    let claims = |extra: &str| {
        format!(
            r#"{{"iss":"kla","sub":"mallory","aud":"kla","tenants":["{T}"],"role":"admin","exp":{},"iat":{now}{extra}}}"#,
            now + 600
        )
    };
    // The base case is accepted, so each refusal below is for its one difference.
    let good = sign_raw(ed, &claims(""), &right);
    assert_eq!(send(s.req(Method::GET, "/v1/agents", &good, T)).await.status, 200);

    let well = "the bearer token is not a well-formed JWT";
    let parts: Vec<&str> = good.split('.').collect();
    let tampered_claims = claims("").replace("\"admin\"", "\"auditor\"");
    let cases: Vec<(&str, String, &str)> = vec![
        ("one part", "garbage".into(), well),
        ("two parts", format!("{}.{}", parts[0], parts[1]), well),
        ("four parts", format!("{good}.x"), well),
        (
            "header not base64url",
            format!("***.{}.{}", parts[1], parts[2]),
            well,
        ),
        (
            "signature not base64url",
            format!("{}.{}.***", parts[0], parts[1]),
            well,
        ),
        (
            "header not JSON",
            format!("{}.{}.{}", b64(b"hello"), parts[1], parts[2]),
            well,
        ),
        ("claims not an object", sign_raw(ed, "[1,2]", &right), well),
        (
            "repeated claim role",
            sign_raw(ed, &claims(r#","role":"agent""#), &right),
            "the bearer token is not a well-formed JWT: its claims have a duplicate key 'role'",
        ),
        (
            "repeated claim tenants",
            sign_raw(ed, &claims(r#","tenants":["victim"]"#), &right),
            "its claims have a duplicate key 'tenants'",
        ),
        (
            "repeated claim kla does not read",
            sign_raw(ed, &claims(r#","scope":"read","scope":"write""#), &right),
            "its claims have a duplicate key 'scope'",
        ),
        (
            "repeated key inside a claim",
            sign_raw(ed, &claims(r#","ctx":{"a":1,"a":2}"#), &right),
            "its claims have a duplicate key 'a' in field 'ctx'",
        ),
        (
            "repeated header alg",
            sign_raw(r#"{"alg":"none","alg":"EdDSA"}"#, &claims(""), &right),
            "its header parameters have a duplicate key 'alg'",
        ),
        (
            "signed with another key",
            sign_raw(ed, &claims(""), &other),
            "the token's signature does not verify",
        ),
        (
            "claims altered after signing",
            format!("{}.{}.{}", parts[0], b64(tampered_claims.as_bytes()), parts[2]),
            "the token's signature does not verify",
        ),
        (
            "expired",
            sign_raw(
                ed,
                &claims("").replace(
                    &format!("\"exp\":{}", now + 600),
                    &format!("\"exp\":{}", now - 600),
                ),
                &right,
            ),
            "the token has expired",
        ),
        (
            "not valid yet",
            sign_raw(ed, &claims(&format!(r#","nbf":{}"#, now + 3600)), &right),
            "the token is not valid yet",
        ),
        (
            "another audience",
            sign_raw(
                ed,
                &claims("").replace(r#""aud":"kla""#, r#""aud":"billing""#),
                &right,
            ),
            "the token was issued for another audience",
        ),
        (
            "another issuer",
            sign_raw(
                ed,
                &claims("").replace(r#""iss":"kla""#, r#""iss":"evil""#),
                &right,
            ),
            "the token was issued by an issuer kla does not trust",
        ),
        (
            "alg none",
            format!("{}.{}.", b64(br#"{"alg":"none"}"#), parts[1]),
            "the token's algorithm is not accepted (use EdDSA)",
        ),
        (
            "HS256",
            sign_raw(r#"{"alg":"HS256"}"#, &claims(""), &right),
            "the token's algorithm is not accepted (use EdDSA)",
        ),
        (
            "RS256 without an external issuer",
            sign_raw(r#"{"alg":"RS256"}"#, &claims(""), &right),
            "the token's algorithm is not accepted (use EdDSA)",
        ),
        (
            "no alg",
            sign_raw(r#"{"typ":"JWT"}"#, &claims(""), &right),
            "the token's algorithm is not accepted (use EdDSA)",
        ),
        (
            "a key id without an external issuer",
            sign_raw(r#"{"alg":"EdDSA","kid":"k1"}"#, &claims(""), &right),
            "the token names a key id ('kid' header), but kla trusts no external issuer",
        ),
        (
            "no tenants",
            sign_raw(
                ed,
                &claims("").replace(&format!(r#""tenants":["{T}"],"#), ""),
                &right,
            ),
            "the token lacks claim 'tenants'",
        ),
        (
            "empty tenants",
            sign_raw(
                ed,
                &claims("").replace(&format!(r#""tenants":["{T}"]"#), r#""tenants":[]"#),
                &right,
            ),
            "the token's claim 'tenants' lists no tenant",
        ),
        (
            "no role",
            sign_raw(ed, &claims("").replace(r#""role":"admin","#, ""), &right),
            "the token lacks claim 'role'",
        ),
        (
            "unknown role",
            sign_raw(
                ed,
                &claims("").replace(r#""role":"admin""#, r#""role":"root""#),
                &right,
            ),
            "the token's claim 'role' must be one of agent, approver, admin, auditor",
        ),
        (
            "tenants not a list",
            sign_raw(
                ed,
                &claims("").replace(&format!(r#""tenants":["{T}"]"#), &format!(r#""tenants":"{T}""#)),
                &right,
            ),
            "the token's claim 'tenants' has the wrong type",
        ),
        (
            "no exp",
            sign_raw(
                ed,
                &claims("").replace(&format!(r#""exp":{},"#, now + 600), ""),
                &right,
            ),
            "the token lacks claim 'exp'",
        ),
        (
            "exp not a number",
            sign_raw(
                ed,
                &claims("").replace(&format!(r#""exp":{}"#, now + 600), r#""exp":"soon""#),
                &right,
            ),
            "the token's claim 'exp' has the wrong type",
        ),
        (
            "no sub",
            sign_raw(ed, &claims("").replace(r#""sub":"mallory","#, ""), &right),
            "the token lacks claim 'sub'",
        ),
    ];
    for (case, token, says) in &cases {
        assert_refused(&s, case, token, says).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn refused_external_tokens_say_why_in_the_callers_terms() {
    let tmp = tempfile::tempdir().unwrap();
    let idp = keys::load_or_create(&tmp.path().join("idp.pem")).unwrap();
    let x = b64(idp.signing.verifying_key().as_bytes());
    let jwks = json!({"keys":[{"kty":"OKP","crv":"Ed25519","x":x,"kid":"idp-1","alg":"EdDSA","use":"sig"}]});
    let jwks_path = tmp.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).unwrap();
    let s = Server::start_with(|c| {
        c.jwks = Some(jwks_path.clone());
        c.jwt_issuer = Some("https://idp.example".into());
        c.jwt_audience = Some("kla-api".into());
    })
    .await;
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |iss: &str, aud: &str| {
        format!(
            r#"{{"iss":"{iss}","sub":"alice@example.com","aud":"{aud}","tenants":["{T}"],"role":"auditor","exp":{}}}"#,
            now + 600
        )
    };
    let good_claims = claims("https://idp.example", "kla-api");
    let kid = r#"{"alg":"EdDSA","kid":"idp-1"}"#;
    let good = sign_raw(kid, &good_claims, &idp);
    assert_eq!(send(s.req(Method::GET, "/v1/agents", &good, T)).await.status, 200);
    let cases = [
        (
            "HS256",
            sign_raw(r#"{"alg":"HS256","kid":"idp-1"}"#, &good_claims, &idp),
            "the token's algorithm is not accepted (use EdDSA, RS256 or ES256)",
        ),
        (
            "RS256 without a key id",
            sign_raw(r#"{"alg":"RS256"}"#, &good_claims, &idp),
            "the token lacks a key id ('kid' header)",
        ),
        (
            "unknown key id",
            sign_raw(r#"{"alg":"EdDSA","kid":"idp-9"}"#, &good_claims, &idp),
            "the token's key id ('kid' header) is not one of the external issuer's keys",
        ),
        (
            "ES256 naming an Ed25519 key",
            sign_raw(r#"{"alg":"ES256","kid":"idp-1"}"#, &good_claims, &idp),
            "the token's algorithm does not match the key it names",
        ),
        (
            "another audience",
            sign_raw(kid, &claims("https://idp.example", "other-api"), &idp),
            "the token was issued for another audience",
        ),
        (
            "another issuer",
            sign_raw(kid, &claims("https://evil.example", "kla-api"), &idp),
            "the token was issued by an issuer kla does not trust",
        ),
        (
            "repeated role",
            sign_raw(kid, &good_claims.replacen('{', r#"{"role":"admin","#, 1), &idp),
            "its claims have a duplicate key 'role'",
        ),
    ];
    for (case, token, says) in &cases {
        assert_refused(&s, case, token, says).await;
    }
    s.stop().await;
}
