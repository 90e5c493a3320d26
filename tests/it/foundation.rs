//! Issue 2: the server, its error model, auth and tenancy, idempotency, limits, the agent registry, TLS, restart.

use crate::harness::*;
use base64::Engine;
use kla::auth::{Claims, Role, keys};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const T: &str = "acme-prod";

#[tokio::test]
async fn health_endpoints_need_no_auth() {
    let s = Server::start().await;
    let r = send(s.client.get(format!("{}/admin/health", s.base))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");
    assert!(r.body["sqlite_version"].as_str().unwrap().starts_with("3."));
    assert!(r.body["uptime_sec"].is_u64());
    assert!(r.header("x-request-id").unwrap().starts_with("req_"));
    assert_eq!(
        send(s.client.get(format!("{}/healthz", s.base))).await.status,
        200
    );
    let ready = send(s.client.get(format!("{}/readyz", s.base))).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let s = Server::start().await;
    let r = send(
        s.client
            .get(format!("{}/healthz", s.base))
            .header("x-request-id", "abc-123"),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = send(
        s.client
            .get(format!("{}/healthz", s.base))
            .header("x-request-id", "bad id!"),
    )
    .await;
    assert_ne!(r.header("x-request-id"), Some("bad id!"));
}

#[tokio::test]
async fn register_agent_as_in_the_seed() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Agent);
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&agent_body("claims-triage")),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["agentId"].as_str().unwrap();
    assert!(id.starts_with("agt_"));
    let hash = r.body["manifestHash"].as_str().unwrap();
    assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64);
    assert!(r.body["registeredAt"].as_str().unwrap().ends_with('Z'));
    assert!(r.body["signature"].as_str().unwrap().starts_with("ed25519:"));
    // The hash is SHA-256 over the RFC 8785 canonical manifest.
    let canonical = r#"{"description":"Triages inbound insurance claims","model":"gpt-4.1","name":"claims-triage","temperature":0.2,"tools":["lookup_policy","flag_for_review"]}"#;
    use sha2::Digest;
    assert_eq!(
        hash,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(canonical)))
    );
    // The signature verifies with kla's registry key.
    let key = keys::load(&keys::registry_key_path(&s.data_dir)).unwrap();
    let sig_b64 = r.body["signature"]
        .as_str()
        .unwrap()
        .trim_start_matches("ed25519:");
    let sig = base64::engine::general_purpose::STANDARD.decode(sig_b64).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
    use ed25519_dalek::Verifier;
    key.signing
        .verifying_key()
        .verify(hash.as_bytes(), &sig)
        .expect("manifest signature verifies");

    let one = s
        .send(s.req(Method::GET, &format!("/v1/agents/{id}"), &tok, T))
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["name"], "claims-triage");
    assert_eq!(one.body["versions"].as_array().unwrap().len(), 1);
    assert_eq!(one.body["manifest"]["tools"][1], "flag_for_review");
}

#[tokio::test]
async fn registry_versions_under_a_stable_id() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let first = s
        .send(s.req(Method::POST, "/v1/agents", &tok, T).json(&agent_body("a1")))
        .await;
    assert_eq!(first.status, 201);
    let again = s
        .send(s.req(Method::POST, "/v1/agents", &tok, T).json(&agent_body("a1")))
        .await;
    again.assert_error(409, "conflict");

    let mut changed = agent_body("a1");
    changed["model"] = json!("gpt-5");
    changed["endpoint"] = json!("http://127.0.0.1:9/run");
    changed["owner"] = json!("claims-team");
    let second = s
        .send(s.req(Method::POST, "/v1/agents", &tok, T).json(&changed))
        .await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["agentId"], first.body["agentId"]);
    assert_eq!(second.body["version"], 2);
    assert_ne!(second.body["manifestHash"], first.body["manifestHash"]);

    let id = first.body["agentId"].as_str().unwrap();
    let one = s
        .send(s.req(Method::GET, &format!("/v1/agents/{id}"), &tok, T))
        .await;
    let versions = one.body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["manifestHash"], first.body["manifestHash"]);
    assert_eq!(versions[1]["manifest"]["owner"], "claims-team");
    assert_eq!(one.body["version"], 2);

    let list = s.send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(list.body["agents"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn tenants_are_isolated() {
    let s = Server::start().await;
    let a = s.token("tenant-a", Role::Admin);
    let b = s.token("tenant-b", Role::Admin);
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &a, "tenant-a")
                .json(&agent_body("x")),
        )
        .await;
    let id = r.body["agentId"].as_str().unwrap().to_owned();
    // B cannot see A's agent, by id or in a list.
    s.send(s.req(Method::GET, &format!("/v1/agents/{id}"), &b, "tenant-b"))
        .await
        .assert_error(404, "not_found");
    let list = s.send(s.req(Method::GET, "/v1/agents", &b, "tenant-b")).await;
    assert_eq!(list.body["agents"], json!([]));
    // B's token naming tenant A is refused.
    s.send(s.req(Method::GET, "/v1/agents", &b, "tenant-a"))
        .await
        .assert_error(403, "forbidden");
    // The same name in B is a different agent.
    let rb = s
        .send(
            s.req(Method::POST, "/v1/agents", &b, "tenant-b")
                .json(&agent_body("x")),
        )
        .await;
    assert_eq!(rb.status, 201);
    assert_ne!(rb.body["agentId"], r.body["agentId"]);
    // A token listing both tenants works in both.
    let both = token_for(&s.data_dir, &["tenant-a", "tenant-b"], Role::Auditor);
    assert_eq!(
        s.send(s.req(Method::GET, &format!("/v1/agents/{id}"), &both, "tenant-a"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn every_error_code_has_the_seed_shape() {
    let s = Server::start_with(|c| c.body_limit = Some(2048)).await;
    let tok = s.token(T, Role::Admin);
    // 400: malformed JSON, wrong type (names the field), unknown field (names it), missing field, bad value.
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .header("content-type", "application/json")
                .body("{"),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("malformed JSON"),
        "{}",
        r.body
    );
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&json!({"name":"a","temperature":"hot"})),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("'temperature'"),
        "{}",
        r.body
    );
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&json!({"name":"a","colour":"red"})),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("colour"),
        "{}",
        r.body
    );
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&json!({"model":"m"})),
        )
        .await;
    r.assert_error(400, "invalid_request");
    assert!(r.body["message"].as_str().unwrap().contains("name"), "{}", r.body);
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&json!({"name":"a","tools":["x", 3]})),
        )
        .await;
    assert!(
        r.body["message"].as_str().unwrap().contains("tools[1]"),
        "{}",
        r.body
    );
    s.send(s.req(Method::GET, "/v1/agents", &tok, ""))
        .await
        .assert_error(400, "invalid_request");
    // 401: no token, garbage token.
    send(
        s.client
            .get(format!("{}/v1/agents", s.base))
            .header("x-tenant-id", T),
    )
    .await
    .assert_error(401, "unauthorized");
    s.send(s.req(Method::GET, "/v1/agents", "not.a.jwt", T))
        .await
        .assert_error(401, "unauthorized");
    // 403: other tenant; role without permission.
    s.send(s.req(Method::GET, "/v1/agents", &tok, "other"))
        .await
        .assert_error(403, "forbidden");
    let approver = s.token(T, Role::Approver);
    s.send(
        s.req(Method::POST, "/v1/agents", &approver, T)
            .json(&agent_body("z")),
    )
    .await
    .assert_error(403, "forbidden");
    // 404: unknown route (with and without auth), unknown agent.
    send(s.client.get(format!("{}/nope", s.base)))
        .await
        .assert_error(404, "not_found");
    s.send(s.req(Method::GET, "/v1/nope", &tok, T))
        .await
        .assert_error(404, "not_found");
    s.send(s.req(Method::GET, "/v1/agents/agt_000000000000", &tok, T))
        .await
        .assert_error(404, "not_found");
    // 405 for a known route with the wrong method.
    let r = s.send(s.req(Method::DELETE, "/v1/agents", &tok, T)).await;
    assert_eq!(r.status, 405);
    // 409: duplicate registration.
    s.send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&agent_body("dup")),
    )
    .await;
    s.send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&agent_body("dup")),
    )
    .await
    .assert_error(409, "conflict");
    // 413: body over the limit (declared and streamed).
    let big = json!({"name":"big","description":"x".repeat(4096)});
    s.send(s.req(Method::POST, "/v1/agents", &tok, T).json(&big))
        .await
        .assert_error(413, "invalid_request");
    // 5xx internal_error: a real fault in the real store (the agents table a registration reads is gone).
    let db = rusqlite::Connection::open(s.data_dir.join("kla.db")).unwrap();
    db.execute_batch("ALTER TABLE agents RENAME TO injected_fault;")
        .unwrap();
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&agent_body("faulty")),
        )
        .await;
    assert!(r.status.is_server_error(), "{}", r.body);
    assert_eq!(r.body["code"], "internal_error");
    assert!(
        !r.body["message"].as_str().unwrap().contains("injected"),
        "no internals leak"
    );
    assert!(r.header("retry-after").is_some());
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let s = Server::start().await;
    let good = s.token(T, Role::Admin);
    assert_eq!(
        s.send(s.req(Method::GET, "/v1/agents", &good, T)).await.status,
        200
    );
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |exp: u64| Claims {
        iss: "kla".into(),
        sub: "mallory".into(),
        aud: kla::auth::Audience::One("kla".into()),
        tenants: vec![T.into()],
        role: Role::Admin,
        exp,
        iat: now,
        agent: None,
    };
    // Signed with another Ed25519 key.
    let other = tempfile::tempdir().unwrap();
    let k = keys::load_or_create(&other.path().join("k.pem")).unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ed_pem(k.private_pem.as_bytes()).unwrap();
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims(now + 600),
        &enc,
    )
    .unwrap();
    s.send(s.req(Method::GET, "/v1/agents", &wrong_key, T))
        .await
        .assert_error(401, "unauthorized");
    // alg: none with the right claims and an empty signature.
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&serde_json::to_value(claims(now + 600)).unwrap())
    );
    s.send(s.req(Method::GET, "/v1/agents", &none, T))
        .await
        .assert_error(401, "unauthorized");
    // HS256 keyed with the server's public key (algorithm confusion).
    let pubkey = keys::load(&keys::token_key_path(&s.data_dir)).unwrap().public_pem;
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(now + 600),
        &jsonwebtoken::EncodingKey::from_secret(pubkey.as_bytes()),
    )
    .unwrap();
    s.send(s.req(Method::GET, "/v1/agents", &hs, T))
        .await
        .assert_error(401, "unauthorized");
    // Expired, signed with the right key.
    let right = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ed_pem(right.private_pem.as_bytes()).unwrap();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
        &claims(now - 3600),
        &enc,
    )
    .unwrap();
    let r = s.send(s.req(Method::GET, "/v1/agents", &expired, T)).await;
    r.assert_error(401, "unauthorized");
    // A payload altered after signing (role escalation) fails the signature.
    let parts: Vec<&str> = good.split('.').collect();
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    payload["tenants"] = json!([T, "victim"]);
    let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
    s.send(s.req(Method::GET, "/v1/agents", &tampered, "victim"))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn external_jwks_tokens_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let k = keys::load_or_create(&tmp.path().join("idp.pem")).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.signing.verifying_key().as_bytes());
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
    let mk = |iss: &str, kid: &str| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some(kid.into());
        let c = json!({"iss":iss,"sub":"alice@example.com","aud":["other-api","kla-api"],"tenants":[T],"role":"auditor","exp":now+600});
        jsonwebtoken::encode(
            &h,
            &c,
            &jsonwebtoken::EncodingKey::from_ed_pem(k.private_pem.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(
        s.send(s.req(Method::GET, "/v1/agents", &mk("https://idp.example", "idp-1"), T))
            .await
            .status,
        200
    );
    s.send(s.req(Method::GET, "/v1/agents", &mk("https://evil.example", "idp-1"), T))
        .await
        .assert_error(401, "unauthorized");
    s.send(s.req(
        Method::GET,
        "/v1/agents",
        &mk("https://idp.example", "unknown"),
        T,
    ))
    .await
    .assert_error(401, "unauthorized");
    // The auditor role from the external token applies.
    s.send(
        s.req(Method::POST, "/v1/agents", &mk("https://idp.example", "idp-1"), T)
            .json(&agent_body("q")),
    )
    .await
    .assert_error(403, "forbidden");
    // An external token with the same subject and role as a kla token is another caller: it does not replay
    // the kla token's stored answer (the issuer is part of the idempotency fingerprint).
    let local = s.token(T, Role::Admin);
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some("idp-1".into());
    let c = json!({"iss":"https://idp.example","sub":"test-admin","aud":"kla-api","tenants":[T],"role":"admin","exp":now+600});
    let external = jsonwebtoken::encode(
        &h,
        &c,
        &jsonwebtoken::EncodingKey::from_ed_pem(k.private_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let post = |tok: &str| {
        s.req(Method::POST, "/v1/agents", tok, T)
            .header("Idempotency-Key", "same-subject")
            .json(&agent_body("issuer-bound"))
    };
    assert_eq!(s.send(post(&local)).await.status, 201);
    s.send(post(&external)).await.assert_error(409, "conflict");
}

#[tokio::test]
async fn idempotency_replays_and_conflicts() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let post = |key: &str, body: &Value| {
        s.req(Method::POST, "/v1/agents", &tok, T)
            .header("Idempotency-Key", key)
            .json(body)
    };
    let first = s.send(post("k-1", &agent_body("idem"))).await;
    assert_eq!(first.status, 201);
    assert!(first.header("idempotent-replayed").is_none());
    let replay = s.send(post("k-1", &agent_body("idem"))).await;
    assert_eq!(
        replay.status, 201,
        "a replay returns the original response, not a duplicate conflict"
    );
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    let other = s.send(post("k-1", &agent_body("something-else"))).await;
    other.assert_error(409, "conflict");
    assert!(
        other.body["message"]
            .as_str()
            .unwrap()
            .contains("different request")
    );
    // Keys are per tenant: the same key in another tenant is independent.
    let tok2 = s.token("t2", Role::Admin);
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok2, "t2")
                .header("Idempotency-Key", "k-1")
                .json(&agent_body("idem")),
        )
        .await;
    assert_eq!(r.status, 201);
    assert!(r.header("idempotent-replayed").is_none());
    let list = s.send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(list.body["agents"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_agent() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let rb = s
            .req(Method::POST, "/v1/agents", &tok, T)
            .header("Idempotency-Key", "race")
            .json(&agent_body("racer"));
        tasks.push(tokio::spawn(send(rb)));
    }
    let mut created = 0;
    let mut replayed = 0;
    let mut in_flight = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match (r.status.as_u16(), r.header("idempotent-replayed")) {
            (201, None) => created += 1,
            (201, Some("true")) => replayed += 1,
            (409, _) => {
                assert_eq!(r.header("retry-after"), Some("1"), "{}", r.body);
                in_flight += 1;
            }
            other => panic!("unexpected {other:?} {}", r.body),
        }
    }
    assert_eq!(
        created, 1,
        "exactly one request did the work ({replayed} replays, {in_flight} in flight)"
    );
    let list = s.send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    assert_eq!(list.body["agents"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_failed_request_releases_its_idempotency_key() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let db = rusqlite::Connection::open(s.data_dir.join("kla.db")).unwrap();
    db.execute_batch("ALTER TABLE agents RENAME TO injected_fault;")
        .unwrap();
    let post = || {
        s.req(Method::POST, "/v1/agents", &tok, T)
            .header("Idempotency-Key", "retry-me")
            .json(&agent_body("r"))
    };
    assert!(s.send(post()).await.status.is_server_error());
    db.execute_batch("ALTER TABLE injected_fault RENAME TO agents;")
        .unwrap();
    let r = s.send(post()).await;
    assert_eq!(r.status, 201, "a retry after a 5xx does the work: {}", r.body);
}

#[tokio::test]
async fn rate_limit_per_tenant() {
    let s = Server::start_with(|c| {
        c.rate_limit_rps = Some(1.0);
        c.rate_limit_burst = Some(3);
    })
    .await;
    let a = s.token("a", Role::Auditor);
    let b = s.token("b", Role::Auditor);
    for _ in 0..3 {
        assert_eq!(
            s.send(s.req(Method::GET, "/v1/agents", &a, "a")).await.status,
            200
        );
    }
    let r = s.send(s.req(Method::GET, "/v1/agents", &a, "a")).await;
    r.assert_error(429, "rate_limited");
    let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&after));
    assert_eq!(
        s.send(s.req(Method::GET, "/v1/agents", &b, "b")).await.status,
        200,
        "tenant b has its own bucket"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        s.send(s.req(Method::GET, "/v1/agents", &a, "a")).await.status,
        200,
        "refilled"
    );
}

#[tokio::test]
async fn serves_https_with_rustls() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut cfg = raw(&tmp.path().join("data"));
    cfg.tls_cert = Some(cert);
    cfg.tls_key = Some(key);
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .resolve("localhost", "127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let s = Server::start_cfg(cfg, Some((client, "localhost"))).await;
    assert!(s.base.starts_with("https://localhost:"));
    let r = send(s.client.get(format!("{}/admin/health", s.base))).await;
    assert_eq!(r.status, 200);
    let tok = s.token(T, Role::Admin);
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&agent_body("tls")),
        )
        .await;
    assert_eq!(r.status, 201);
    // Plain HTTP to the TLS port fails.
    let plain = reqwest::Client::new()
        .get(s.base.replace("https://localhost", "http://127.0.0.1") + "/healthz")
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

#[tokio::test]
async fn the_binary_restarts_with_all_data_and_drains_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Process::serve(tmp.path(), &[]).await;
    let out = std::process::Command::new(kla_bin())
        .args(["token", "--data-dir"])
        .arg(tmp.path())
        .args(["--tenant", T, "--role", "admin", "--ttl", "10m"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let c = reqwest::Client::new();
    let post = |name: &str, key: &str| {
        c.post(format!("{}/v1/agents", p.base))
            .bearer_auth(&tok)
            .header("x-tenant-id", T)
            .header("Idempotency-Key", key)
            .json(&agent_body(name))
    };
    let r1 = send(post("keep-me", "persist-1")).await;
    assert_eq!(r1.status, 201);
    let mut changed = agent_body("keep-me");
    changed["model"] = json!("v2");
    let r2 = send(
        c.post(format!("{}/v1/agents", p.base))
            .bearer_auth(&tok)
            .header("x-tenant-id", T)
            .json(&changed),
    )
    .await;
    assert_eq!(r2.body["version"], 2);
    let status = p.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    let p = Process::serve(tmp.path(), &[]).await;
    let base = p.base.clone();
    let r = send(
        c.get(format!(
            "{base}/v1/agents/{}",
            r1.body["agentId"].as_str().unwrap()
        ))
        .bearer_auth(&tok)
        .header("x-tenant-id", T),
    )
    .await;
    assert_eq!(
        r.status, 200,
        "the token minted before the restart still verifies"
    );
    assert_eq!(r.body["versions"].as_array().unwrap().len(), 2);
    // The idempotency key survived too.
    let replay = send(
        c.post(format!("{base}/v1/agents"))
            .bearer_auth(&tok)
            .header("x-tenant-id", T)
            .header("Idempotency-Key", "persist-1")
            .json(&agent_body("keep-me")),
    )
    .await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, r1.body);
    assert!(p.terminate().success());
}

/// Regression: registrations (main write connection) racing decisions (index write connection) got
/// SQLITE_BUSY from deferred transactions that upgraded to writes; every write transaction is now IMMEDIATE.
#[tokio::test]
async fn concurrent_registrations_and_decisions_all_succeed() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let agent = register(&s, &tok, T, "base").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let rb = if i % 2 == 0 {
            s.req(Method::POST, "/v1/agents", &tok, T)
                .json(&agent_body(&format!("racer-{i}")))
        } else {
            s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
                .json(&json!({"agentId": agent, "action": "lookup_policy", "context": {}}))
        };
        tasks.push(tokio::spawn(send(rb)));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status.is_success(), "{} {}", r.status, r.body);
    }
}

/// A token minted with `kla token --agent NAME` acts only as that agent: it registers only that name and asks
/// decisions only for that agent (by id); every other agent of the tenant is 403 `forbidden`. Unbound tokens keep
/// acting for any agent of their tenants.
#[tokio::test]
async fn a_token_bound_to_an_agent_acts_only_as_that_agent() {
    let s = Server::start().await;
    let admin = s.token(T, Role::Admin);
    let other = register(&s, &admin, T, "other-bot").await;
    let out = std::process::Command::new(kla_bin())
        .args(["token", "--data-dir"])
        .arg(&s.data_dir)
        .args(["--tenant", T, "--role", "agent", "--agent", "billing-bot"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bound = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let me = register(&s, &bound, T, "billing-bot").await;
    let r = s
        .send(
            s.req(Method::POST, "/v1/agents", &bound, T)
                .json(&agent_body("someone-else")),
        )
        .await;
    r.assert_error(403, "forbidden");
    assert!(
        r.body["message"].as_str().unwrap().contains("billing-bot"),
        "{}",
        r.body
    );

    let ok = evaluate(&s, &bound, T, &me, "send_email", json!({})).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let r = evaluate(&s, &bound, T, &other, "send_email", json!({})).await;
    r.assert_error(403, "forbidden");
    // The refused request was not decided: nothing was recorded for it.
    let next = evaluate(&s, &bound, T, &me, "send_email", json!({})).await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(
        next.body["ledgerIndex"].as_u64(),
        ok.body["ledgerIndex"].as_u64().map(|i| i + 1),
        "no ledger entry between the two allowed decisions"
    );

    let unbound = s.token(T, Role::Agent);
    let r = evaluate(&s, &unbound, T, &other, "send_email", json!({})).await;
    assert_eq!(
        r.status, 200,
        "unbound agent tokens act for any agent of the tenant: {}",
        r.body
    );
    s.stop().await;
}

/// Seed 001's error table is the whole code vocabulary (`invalid_request`, `unauthorized`, `forbidden`, `not_found`,
/// `conflict`, `rate_limited`, `internal_error`). Regression: a body over the limit answered with a code of kla's own,
/// `payload_too_large`, which a client written against the seed does not know. The status stays 413.
#[tokio::test]
async fn an_oversized_body_answers_with_a_seed_code() {
    let s = Server::start_with(|c| c.body_limit = Some(1024)).await;
    let tok = s.token(T, Role::Admin);
    let agent = register(&s, &tok, T, "big").await;
    let big = "x".repeat(2048);
    let bodies = [
        ("/v1/agents", json!({"name": "big2", "description": big})),
        (
            "/v1/decisions.evaluate",
            json!({"agentId": agent, "action": "lookup", "context": {"note": big}}),
        ),
    ];
    for (path, body) in &bodies {
        for key in [None, Some("big-1")] {
            let mut rb = s.req(Method::POST, path, &tok, T).json(body);
            if let Some(k) = key {
                rb = rb.header("Idempotency-Key", k);
            }
            s.send(rb).await.assert_error(413, "invalid_request");
        }
    }
}

/// Seed 001: "Replaying the same key returns the original result"; 409 is for "a different payload". Regression: the
/// fingerprint was over the body's bytes, so a retry whose client re-serialised the same JSON (other whitespace,
/// other key order, `0.20` for `0.2`) got 409 instead of the original answer.
#[tokio::test]
async fn an_idempotent_retry_of_the_same_json_reformatted_is_replayed() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let post = |path: &str, key: &str, body: String| {
        s.req(Method::POST, path, &tok, T)
            .header("Idempotency-Key", key)
            .header("content-type", "application/json")
            .body(body)
    };
    let first = s
        .send(post(
            "/v1/agents",
            "reg-1",
            r#"{"name":"fmt","model":"gpt-4.1","temperature":0.2,"tools":["a","b"]}"#.into(),
        ))
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let retry = s
        .send(post(
            "/v1/agents",
            "reg-1",
            "{\n  \"tools\": [\"a\", \"b\"],\n  \"temperature\": 0.20,\n  \"model\": \"gpt-4.1\",\n  \"name\": \"fmt\"\n}\n"
                .into(),
        ))
        .await;
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, first.body);
    // A different payload is still a conflict: another value, another array order.
    s.send(post(
        "/v1/agents",
        "reg-1",
        r#"{"name":"fmt","model":"gpt-4.1","temperature":0.3,"tools":["a","b"]}"#.into(),
    ))
    .await
    .assert_error(409, "conflict");
    s.send(post(
        "/v1/agents",
        "reg-1",
        r#"{"name":"fmt","model":"gpt-4.1","temperature":0.2,"tools":["b","a"]}"#.into(),
    ))
    .await
    .assert_error(409, "conflict");

    let agent = first.body["agentId"].as_str().unwrap();
    let d1 = s
        .send(post(
            "/v1/decisions.evaluate",
            "ev-1",
            format!(r#"{{"agentId":"{agent}","action":"execute_refund","context":{{"amount":1250.00,"user_id":"usr_22"}}}}"#),
        ))
        .await;
    assert_eq!(d1.status, 200, "{}", d1.body);
    let d2 = s
        .send(post(
            "/v1/decisions.evaluate",
            "ev-1",
            format!(r#"{{ "context": {{ "user_id": "usr_22", "amount": 1250 }}, "action": "execute_refund", "agentId": "{agent}" }}"#),
        ))
        .await;
    assert_eq!(d2.status, 200, "{}", d2.body);
    assert_eq!(d2.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        d2.body["decisionId"], d1.body["decisionId"],
        "one decision, not two"
    );
    // Integers beyond 2^53 are kept exactly: two that a double would confuse are different payloads.
    let big = |n: &str| format!(r#"{{"agentId":"{agent}","action":"lookup","context":{{"n":{n}}}}}"#);
    assert_eq!(
        s.send(post("/v1/decisions.evaluate", "ev-2", big("9007199254740993")))
            .await
            .status,
        200
    );
    s.send(post("/v1/decisions.evaluate", "ev-2", big("9007199254740992")))
        .await
        .assert_error(409, "conflict");
}

/// The `Bearer` scheme name is case-insensitive (RFC 9110 11.1), and every 401 says which scheme to use
/// (`WWW-Authenticate: Bearer`, RFC 6750 3).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive_and_401_names_it() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = send(
            s.client
                .get(format!("{}/v1/agents", s.base))
                .header("Authorization", format!("{scheme} {tok}"))
                .header("x-tenant-id", T),
        )
        .await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.body);
    }
    for auth in [
        None,
        Some(format!("Basic {tok}")),
        Some("Bearer not-a-jwt".to_owned()),
        Some("Bearer".into()),
    ] {
        let mut rb = s
            .client
            .get(format!("{}/v1/agents", s.base))
            .header("x-tenant-id", T);
        if let Some(a) = &auth {
            rb = rb.header("Authorization", a);
        }
        let r = send(rb).await;
        r.assert_error(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{auth:?}");
    }
    s.stop().await;
}

/// If recording a finished key fails (a real store fault: a trigger that aborts the update), the answer still goes
/// out, a retry meanwhile gets 409 + `Retry-After` (the key stays reserved), and the key is recorded in the
/// background once the store recovers: the retry then replays the original decision instead of deciding again.
#[tokio::test]
async fn a_key_that_could_not_be_recorded_is_recorded_once_the_store_recovers() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let agent = register(&s, &tok, T, "finisher").await;
    let db = rusqlite::Connection::open(s.data_dir.join("kla.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER fault BEFORE UPDATE ON idempotency WHEN NEW.state = 'done'
         BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .unwrap();
    let post = || {
        s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
            .header("Idempotency-Key", "finish-later")
            .json(&json!({"agentId": agent, "action": "send_email", "context": {}}))
    };
    let first = s.send(post()).await;
    assert_eq!(first.status, 200, "the decision is answered: {}", first.body);
    let during = s.send(post()).await;
    during.assert_error(409, "conflict");
    assert_eq!(during.header("retry-after"), Some("1"));
    db.execute_batch("DROP TRIGGER fault;").unwrap();
    let mut replayed = None;
    for _ in 0..100 {
        let r = s.send(post()).await;
        if r.status == 200 {
            replayed = Some(r);
            break;
        }
        assert_eq!(r.status, 409, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = replayed.expect("the key was recorded in the background within 5 s");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(
        r.body["decisionId"], first.body["decisionId"],
        "the original decision, not a new one"
    );
    s.stop().await;
}

/// Review (auth): the idempotency fingerprint must bind the token's `agent` claim. `kla token` gives every token of
/// a role the same default subject (the role's name), so two agent tokens bound to different agents share subject
/// and role. Regression: the token bound to `beta-bot` sent the body and key that `alpha-bot`'s token had used and
/// got alpha's stored decision replayed (200), past the binding check that refuses it a fresh request (403).
#[tokio::test]
async fn an_idempotent_replay_does_not_cross_an_agent_binding() {
    let s = Server::start().await;
    let key = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    let bound = |agent: &str| {
        kla::auth::mint(
            key.private_pem.as_bytes(),
            vec![T.into()],
            Role::Agent,
            "agent".into(),
            Some(agent.into()),
            Duration::from_secs(600),
        )
        .unwrap()
    };
    let (alpha, beta) = (bound("alpha-bot"), bound("beta-bot"));
    let alpha_id = register(&s, &alpha, T, "alpha-bot").await;
    let body = json!({"agentId": alpha_id, "action": "send_email", "context": {}});
    let first = s
        .send(
            s.req(Method::POST, "/v1/decisions.evaluate", &alpha, T)
                .header("Idempotency-Key", "shared-key")
                .json(&body),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.body);
    let r = s
        .send(
            s.req(Method::POST, "/v1/decisions.evaluate", &beta, T)
                .header("Idempotency-Key", "shared-key")
                .json(&body),
        )
        .await;
    assert_ne!(
        r.status, 200,
        "beta's token got alpha's decision replayed: {}",
        r.body
    );
    r.assert_error(409, "conflict");
    s.stop().await;
}

/// Review (auth): a token whose `nbf` (not before) lies in the future is not valid yet (RFC 7519 section 4.1.5).
/// Regression: jsonwebtoken does not check `nbf` unless asked, and kla accepted such a token.
#[tokio::test]
async fn a_token_not_valid_before_a_future_time_is_refused() {
    let s = Server::start().await;
    let now = jsonwebtoken::get_current_timestamp();
    let right = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    let enc = jsonwebtoken::EncodingKey::from_ed_pem(right.private_pem.as_bytes()).unwrap();
    let claims = |nbf: u64| {
        json!({"iss": "kla", "sub": "early", "aud": "kla", "tenants": [T], "role": "admin",
               "exp": now + 7200, "iat": now, "nbf": nbf})
    };
    let sign = |c: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &c,
            &enc,
        )
        .unwrap()
    };
    let early = sign(claims(now + 3600));
    s.send(s.req(Method::GET, "/v1/agents", &early, T))
        .await
        .assert_error(401, "unauthorized");
    let ok = sign(claims(now - 10));
    assert_eq!(s.send(s.req(Method::GET, "/v1/agents", &ok, T)).await.status, 200);
    s.stop().await;
}

/// `x-tenant-id` is 1-128 visible ASCII characters, as its error message says: a space inside is refused.
#[tokio::test]
async fn a_tenant_header_with_a_space_is_refused() {
    let s = Server::start().await;
    let tok = token_for(&s.data_dir, &["acme prod", T], Role::Admin);
    s.send(s.req(Method::GET, "/v1/agents", &tok, "acme prod"))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(
        s.send(s.req(Method::GET, "/v1/agents", &tok, T)).await.status,
        200
    );
    s.stop().await;
}
