//! Authentication and tenancy: kla and external (JWKS) tokens, forgeries, the `Bearer` scheme, roles, agent-bound
//! tokens, `x-tenant-id` and tenant isolation.

use crate::harness::*;
use base64::Engine;
use kla::auth::{Claims, Role, keys};
use reqwest::Method;
use serde_json::{Value, json};

const T: &str = "acme-prod";

#[tokio::test]
async fn tenants_are_isolated() {
    let s = Server::start().await;
    let a = s.token("tenant-a", Role::Admin);
    let b = s.token("tenant-b", Role::Admin);
    let r = send(
        s.req(Method::POST, "/v1/agents", &a, "tenant-a")
            .json(&agent_body("x")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["agentId"].as_str().unwrap().to_owned();
    // B cannot see A's agent, by id or in a list.
    send(s.req(Method::GET, &format!("/v1/agents/{id}"), &b, "tenant-b"))
        .await
        .assert_error(404, "not_found");
    let list = send(s.req(Method::GET, "/v1/agents", &b, "tenant-b")).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["agents"], json!([]));
    // B's token naming tenant A is refused.
    send(s.req(Method::GET, "/v1/agents", &b, "tenant-a"))
        .await
        .assert_error(403, "forbidden");
    // The same name in B is a different agent.
    let rb = send(
        s.req(Method::POST, "/v1/agents", &b, "tenant-b")
            .json(&agent_body("x")),
    )
    .await;
    assert_eq!(rb.status, 201);
    assert_ne!(rb.body["agentId"], r.body["agentId"]);
    // A token listing both tenants works in both, and sees in each only that tenant's agent.
    let both = token_for(&s.data_dir, &["tenant-a", "tenant-b"], Role::Auditor);
    let one = send(s.req(Method::GET, &format!("/v1/agents/{id}"), &both, "tenant-a")).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body["agentId"], id.as_str());
    for (tenant, agent) in [("tenant-a", &r), ("tenant-b", &rb)] {
        let list = send(s.req(Method::GET, "/v1/agents", &both, tenant)).await;
        assert_eq!(list.status, 200, "{}", list.body);
        let agents = list.body["agents"].as_array().unwrap();
        assert_eq!(agents.len(), 1, "{tenant}: {}", list.body);
        assert_eq!(agents[0]["agentId"], agent.body["agentId"], "{tenant}");
    }
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let s = Server::start().await;
    let good = s.token(T, Role::Admin);
    assert_eq!(send(s.req(Method::GET, "/v1/agents", &good, T)).await.status, 200);
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
    send(s.req(Method::GET, "/v1/agents", &wrong_key, T))
        .await
        .assert_error(401, "unauthorized");
    // alg: none with the right claims and an empty signature.
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg":"none","typ":"JWT"})),
        b64(&serde_json::to_value(claims(now + 600)).unwrap())
    );
    send(s.req(Method::GET, "/v1/agents", &none, T))
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
    send(s.req(Method::GET, "/v1/agents", &hs, T))
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
    let r = send(s.req(Method::GET, "/v1/agents", &expired, T)).await;
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
    send(s.req(Method::GET, "/v1/agents", &tampered, "victim"))
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
        send(s.req(Method::GET, "/v1/agents", &mk("https://idp.example", "idp-1"), T))
            .await
            .status,
        200
    );
    send(s.req(Method::GET, "/v1/agents", &mk("https://evil.example", "idp-1"), T))
        .await
        .assert_error(401, "unauthorized");
    send(s.req(
        Method::GET,
        "/v1/agents",
        &mk("https://idp.example", "unknown"),
        T,
    ))
    .await
    .assert_error(401, "unauthorized");
    // The auditor role from the external token applies.
    send(
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
    assert_eq!(send(post(&local)).await.status, 201);
    send(post(&external)).await.assert_error(409, "conflict");
}

/// A token minted with `kla token --agent NAME` acts only as that agent: it registers only that name and asks
/// decisions only for that agent (by id); every other agent of the tenant is 403 `forbidden`. Unbound tokens keep
/// acting for any agent of their tenants.
#[tokio::test]
async fn a_token_bound_to_an_agent_acts_only_as_that_agent() {
    let s = Server::start().await;
    let admin = s.token(T, Role::Admin);
    let other = s.register(&admin, T, "other-bot").await;
    let bound = kla_token(
        &s.data_dir,
        &["--tenant", T, "--role", "agent", "--agent", "billing-bot"],
    );

    let me = s.register(&bound, T, "billing-bot").await;
    let r = send(
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

    let ok = s.evaluate(&bound, T, &me, "send_email", json!({})).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let r = s.evaluate(&bound, T, &other, "send_email", json!({})).await;
    r.assert_error(403, "forbidden");
    // The refused request was not decided: nothing was recorded for it.
    let next = s.evaluate(&bound, T, &me, "send_email", json!({})).await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(
        next.body["ledgerIndex"].as_u64(),
        ok.body["ledgerIndex"].as_u64().map(|i| i + 1),
        "no ledger entry between the two allowed decisions"
    );

    let unbound = s.token(T, Role::Agent);
    let r = s.evaluate(&unbound, T, &other, "send_email", json!({})).await;
    assert_eq!(
        r.status, 200,
        "unbound agent tokens act for any agent of the tenant: {}",
        r.body
    );
    s.stop().await;
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

/// A token whose `nbf` (not before) lies in the future is not valid yet (RFC 7519 section 4.1.5).
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
    send(s.req(Method::GET, "/v1/agents", &early, T))
        .await
        .assert_error(401, "unauthorized");
    let ok = sign(claims(now - 10));
    assert_eq!(send(s.req(Method::GET, "/v1/agents", &ok, T)).await.status, 200);
    s.stop().await;
}

/// `x-tenant-id` is 1-128 visible ASCII characters, as its error message says: a space inside is refused.
#[tokio::test]
async fn a_tenant_header_with_a_space_is_refused() {
    let s = Server::start().await;
    let tok = token_for(&s.data_dir, &["acme prod", T], Role::Admin);
    send(s.req(Method::GET, "/v1/agents", &tok, "acme prod"))
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(send(s.req(Method::GET, "/v1/agents", &tok, T)).await.status, 200);
    s.stop().await;
}

/// Regression: the role check comes before the body is parsed, so a caller without permission gets 403 whatever
/// it sends (it used to get 400 for a malformed body).
#[tokio::test]
async fn role_is_checked_before_the_body() {
    let s = Server::start().await;
    let auditor = s.token(T, Role::Auditor);
    for path in ["/v1/decisions.evaluate", "/v1/agents"] {
        let r = send(
            s.req(Method::POST, path, &auditor, T)
                .json(&json!({"bogus": true})),
        )
        .await;
        r.assert_error(403, "forbidden");
    }
}

/// Tenants starting with `_` are kla's own (system ledger entries): no token may act in them.
#[tokio::test]
async fn reserved_tenants_are_refused() {
    let s = Server::start().await;
    let tok = token_for(&s.data_dir, &["_system"], Role::Admin);
    send(s.req(Method::GET, "/v1/agents", &tok, "_system"))
        .await
        .assert_error(403, "forbidden");
    let out = kla(&[
        "token",
        "--data-dir",
        s.data_dir.to_str().unwrap(),
        "--tenant",
        "_system",
        "--role",
        "admin",
    ]);
    assert!(!out.status.success());
    assert!(output_text(&out).contains("reserved"), "{}", output_text(&out));
    assert!(out.stdout.is_empty(), "no token printed");
    // A bad path parameter is a 400 with the error shape too.
    let adm = s.token(T, Role::Admin);
    send(s.req(Method::GET, "/v1/agents/%FF", &adm, T))
        .await
        .assert_error(400, "invalid_request");
}
