//! The error answer (`{"code","message"}` with the KLA Control Plane API's codes) for every status, request ids,
//! unknown routes (404), wrong methods (405) and oversized bodies (413).

use crate::harness::*;
use kla::auth::Role;
use reqwest::Method;
use serde_json::json;

const T: &str = "acme-prod";

/// docs/api.md, "Request id": every answer (health checks, successes and errors alike) carries `x-request-id`; a
/// sent id of 1-128 characters from `[A-Za-z0-9-_.:]` is echoed, any other is replaced by a generated `req_`
/// followed by 16 hex digits, as is a missing one.
#[tokio::test]
async fn request_id_is_echoed_or_generated_on_every_kind_of_answer() {
    let s = Server::start_with(|c| c.body_limit = Some(2048)).await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "dup").await;
    // One request per kind of answer, made afresh for each id tried (`n` keeps registrations new).
    let kinds = |n: usize| {
        let name = format!("new-{n}");
        vec![
            (200, s.anon(Method::GET, "/healthz")),
            (200, s.anon(Method::GET, "/admin/health")),
            (200, s.anon(Method::GET, "/readyz")),
            (200, s.req(Method::GET, "/v1/agents", &tok, T)),
            (
                201,
                s.req(Method::POST, "/v1/agents", &tok, T)
                    .json(&agent_body(&name)),
            ),
            (
                200,
                s.req(Method::POST, "/v1/decisions.evaluate", &tok, T)
                    .json(&json!({"agentId": agent, "action": "lookup_policy"})),
            ),
            (400, s.req(Method::GET, "/v1/agents", &tok, "")),
            (401, s.anon(Method::GET, "/v1/agents").header("x-tenant-id", T)),
            (403, s.req(Method::GET, "/v1/agents", &tok, "other")),
            (404, s.anon(Method::GET, "/nope")),
            (404, s.req(Method::GET, "/v1/agents/agt_000000000000", &tok, T)),
            (405, s.req(Method::DELETE, "/v1/agents", &tok, T)),
            (
                409,
                s.req(Method::POST, "/v1/agents", &tok, T)
                    .json(&agent_body("dup")),
            ),
            (
                413,
                s.req(Method::POST, "/v1/agents", &tok, T)
                    .json(&json!({"name": "big", "description": "x".repeat(4096)})),
            ),
        ]
    };
    let generated = |id: &str| {
        id.strip_prefix("req_").is_some_and(|h| {
            h.len() == 16
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        })
    };
    let longest = "aZ09-_.:".repeat(16);
    assert_eq!(longest.len(), 128);
    let too_long = format!("{longest}x");
    let tries: [(Option<&str>, bool); 6] = [
        (None, false),
        (Some("abc-123"), true),
        (Some(&longest), true),
        (Some("bad id!"), false),
        (Some(&too_long), false),
        (Some(""), false),
    ];
    let mut seen = std::collections::HashSet::new();
    let mut n = 0;
    for (sent, echoed) in tries {
        for (status, mut rb) in kinds(n) {
            n += 1;
            if let Some(id) = sent {
                rb = rb.header("x-request-id", id);
            }
            let r = send(rb).await;
            assert_eq!(r.status.as_u16(), status, "{sent:?}: {}", r.body);
            let got = r
                .header("x-request-id")
                .unwrap_or_else(|| panic!("{status} answer without x-request-id (sent {sent:?})"));
            if echoed {
                assert_eq!(Some(got), sent, "a sane id is echoed on a {status} answer");
            } else {
                assert!(
                    generated(got),
                    "{status} answer to {sent:?}: {got:?} is not a generated id"
                );
                assert!(
                    seen.insert(got.to_owned()),
                    "generated ids are fresh: {got} twice"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_error_code_has_the_documented_shape() {
    let s = Server::start_with(|c| c.body_limit = Some(2048)).await;
    let tok = s.token(T, Role::Admin);
    // 400: malformed JSON, wrong type (names the field), unknown field (names it), missing field, bad value.
    let r = send(
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
    let r = send(
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
    let r = send(
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
    let r = send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&json!({"model":"m"})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert!(r.body["message"].as_str().unwrap().contains("name"), "{}", r.body);
    let r = send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&json!({"name":"a","tools":["x", 3]})),
    )
    .await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("tools[1]"),
        "{}",
        r.body
    );
    send(s.req(Method::GET, "/v1/agents", &tok, ""))
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
    send(s.req(Method::GET, "/v1/agents", "not.a.jwt", T))
        .await
        .assert_error(401, "unauthorized");
    // 403: other tenant; role without permission.
    send(s.req(Method::GET, "/v1/agents", &tok, "other"))
        .await
        .assert_error(403, "forbidden");
    let approver = s.token(T, Role::Approver);
    send(
        s.req(Method::POST, "/v1/agents", &approver, T)
            .json(&agent_body("z")),
    )
    .await
    .assert_error(403, "forbidden");
    // 404: unknown route (with and without auth), unknown agent.
    send(s.client.get(format!("{}/nope", s.base)))
        .await
        .assert_error(404, "not_found");
    send(s.req(Method::GET, "/v1/nope", &tok, T))
        .await
        .assert_error(404, "not_found");
    send(s.req(Method::GET, "/v1/agents/agt_000000000000", &tok, T))
        .await
        .assert_error(404, "not_found");
    // 405 for a known route with the wrong method.
    let r = send(s.req(Method::DELETE, "/v1/agents", &tok, T)).await;
    r.assert_error(405, "invalid_request");
    assert!(
        r.body["message"].as_str().unwrap().contains("DELETE"),
        "{}",
        r.body
    );
    // 409: duplicate registration.
    s.register(&tok, T, "dup").await;
    send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&agent_body("dup")),
    )
    .await
    .assert_error(409, "conflict");
    // 413: body over the limit (declared and streamed).
    let big = json!({"name":"big","description":"x".repeat(4096)});
    send(s.req(Method::POST, "/v1/agents", &tok, T).json(&big))
        .await
        .assert_error(413, "invalid_request");
    // 5xx internal_error: a real fault in the real store (the agents table a registration reads is gone).
    let db = rusqlite::Connection::open(s.data_dir.join("kla.db")).unwrap();
    db.execute_batch("ALTER TABLE agents RENAME TO injected_fault;")
        .unwrap();
    let r = send(
        s.req(Method::POST, "/v1/agents", &tok, T)
            .json(&agent_body("faulty")),
    )
    .await;
    // A store that refuses writes is an unavailable dependency: 503 with `Retry-After: 1`.
    r.assert_error(503, "internal_error");
    assert!(
        !r.body["message"].as_str().unwrap().contains("injected"),
        "no internals leak"
    );
    assert_eq!(r.header("retry-after"), Some("1"));
}

/// The KLA Control Plane API's seven codes are the whole vocabulary (`invalid_request`, `unauthorized`,
/// `forbidden`, `not_found`, `conflict`, `rate_limited`, `internal_error`). Regression: a body over the limit
/// answered with a code of kla's own, `payload_too_large`, which a client written against the API does not know.
/// The status stays 413.
#[tokio::test]
async fn an_oversized_body_answers_413_invalid_request() {
    let s = Server::start_with(|c| c.body_limit = Some(1024)).await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "big").await;
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
            send(rb).await.assert_error(413, "invalid_request");
        }
    }
}
