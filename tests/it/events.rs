//! The event stream through the real server: SSE at `/v1/events` (order, ids, resume from any position with no gap
//! and no duplicate, also across a restart, filters, isolation, resync, heartbeats, caps) and the WebSocket at `/ws`
//! in the KLA Execution API's message shapes, with its `?token=` kept out of the log.

use crate::harness::*;
use kla::auth::Role;
use rand::seq::SliceRandom;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const T: &str = "acme-events";

// ---------------------------------------------------------------------------------------------------------
// An SSE reader, after the WHATWG event-stream parsing rules (fields `id`, `event`, `data`, `retry`, comments).

/// One message of an event stream.
#[derive(Debug, Clone, Default)]
struct Msg {
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    comment: Option<String>,
    retry: Option<u64>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("data is JSON")
    }

    /// Whether it dispatches an event (a message with data).
    fn is_event(&self) -> bool {
        self.data.is_some()
    }
}

struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
}

/// A client without a total timeout: streams outlive requests.
fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

impl Sse {
    /// Opens `path` (e.g. `/v1/events?types=...`), asserting a 200 event stream.
    async fn open(api: &Api, path: &str, token: &str, tenant: &str, last_event_id: Option<&str>) -> Sse {
        let mut rb = stream_client()
            .get(format!("{}{path}", api.base))
            .bearer_auth(token)
            .header("x-tenant-id", tenant);
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(Duration::from_secs(10), rb.send())
            .await
            .expect("answered in time")
            .expect("sent");
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(ct, Some("text/event-stream"));
        assert_eq!(
            resp.headers().get("cache-control").and_then(|v| v.to_str().ok()),
            Some("no-cache")
        );
        assert!(resp.headers().get("x-request-id").is_some());
        let mut s = Sse {
            resp,
            buf: Vec::new(),
        };
        let first = s
            .next_msg(Duration::from_secs(5))
            .await
            .expect("the first message");
        assert_eq!(
            first.retry,
            Some(2000),
            "the stream opens with its reconnect delay: {first:?}"
        );
        s
    }

    /// The next message within `within`, `None` if none came (or the stream ended).
    async fn next_msg(&mut self, within: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8");
                let mut m = Msg::default();
                for line in text.lines().filter(|l| !l.is_empty()) {
                    if let Some(c) = line.strip_prefix(':') {
                        m.comment = Some(c.trim().to_owned());
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "id" => m.id = Some(value),
                        "event" => m.event = Some(value),
                        "data" => {
                            assert!(m.data.is_none(), "one data line per message: {text}");
                            m.data = Some(value);
                        }
                        "retry" => m.retry = Some(value.parse().expect("retry is a number")),
                        other => panic!("unknown field {other:?} in {text:?}"),
                    }
                }
                return Some(m);
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await.ok()?;
            match chunk.expect("stream read") {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return None,
            }
        }
    }

    /// The next event (heartbeats skipped), `None` if none came within `within`.
    async fn next_event(&mut self, within: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.next_msg(left).await?;
            if m.is_event() {
                return Some(m);
            }
        }
    }

    /// Exactly `n` events, each within a few seconds.
    async fn events(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next_event(Duration::from_secs(10)).await {
                Some(m) => out.push(m),
                None => panic!("stream stalled after {} of {n} events: {out:?}", out.len()),
            }
        }
        out
    }

    /// No further event within a short wait (heartbeats aside).
    async fn assert_quiet(&mut self) {
        if let Some(m) = self.next_event(Duration::from_millis(400)).await {
            panic!("an unexpected event: {m:?}");
        }
    }
}

/// Every event message is well formed: `id:` and `event:` lines that repeat the envelope's `id` and `type`.
fn check_envelope(m: &Msg) -> Value {
    let v = m.json();
    assert_eq!(v["id"].as_str(), m.id.as_deref(), "{m:?}");
    assert_eq!(v["type"].as_str(), m.event.as_deref(), "{m:?}");
    assert!(v["createdAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
    assert!(v["data"].is_object(), "{v}");
    v
}

async fn evaluate_in(api: &Api, token: &str, tenant: &str, body: Value) -> Value {
    api.decide(token, tenant, body).await
}

fn id_of(answer: &Value) -> String {
    format!("{}.0", answer["ledgerIndex"].as_u64().expect("ledgerIndex"))
}

// ---------------------------------------------------------------------------------------------------------
// SSE.

#[tokio::test]
async fn sse_sends_each_decision_in_order_with_its_ledger_position_as_id() {
    let (s, tok, agent) = Server::with_agent(T, "stream-bot").await;
    let auditor = s.token(T, Role::Auditor);
    let mut made = Sse::open(&s, "/v1/events?types=decision.made", &auditor, T, None).await;
    let mut all = Sse::open(&s, "/v1/events", &auditor, T, None).await;
    let mut answers = Vec::new();
    for round in 0..2 {
        for (mut body, expected) in cases(&agent) {
            body["executionId"] = json!(format!("exec_{round}"));
            let a = evaluate_in(&s, &tok, T, body).await;
            assert_eq!(a["decision"], expected);
            answers.push(a);
        }
    }
    let got = made.events(answers.len()).await;
    for (m, a) in got.iter().zip(&answers) {
        let v = check_envelope(m);
        assert_eq!(
            m.id.as_deref(),
            Some(id_of(a).as_str()),
            "the id is the ledger position"
        );
        assert_eq!(m.event.as_deref(), Some("decision.made"));
        let d = &v["data"];
        assert_eq!(d["decisionId"], a["decisionId"]);
        assert_eq!(d["decision"], a["decision"]);
        assert_eq!(d["reasonCodes"], a["reasonCodes"]);
        assert_eq!(d["requiresDeskApproval"], a["requiresDeskApproval"]);
        assert_eq!(d["agentId"], agent.as_str());
        assert_eq!(d["agentName"], "stream-bot");
        assert!(d["action"].is_string());
        assert_eq!(v["executionId"], d["executionId"]);
        assert!(v["executionId"].as_str().is_some_and(|x| x.starts_with("exec_")));
    }
    let ids: Vec<(u64, u64)> = got
        .iter()
        .map(|m| {
            let (i, n) = m.id.as_deref().unwrap().split_once('.').unwrap();
            (i.parse().unwrap(), n.parse().unwrap())
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    made.assert_quiet().await;

    // The unfiltered stream has the same decisions in the same order; a require_approval decision whose answer
    // names its approval also announces it, right after the decision (ids n = 1, and 2 for an execution).
    let approvals = answers.iter().filter(|a| a["approvalId"].is_string()).count();
    let everything = all.events(answers.len() + approvals * 2).await;
    let decisions: Vec<&Msg> = everything
        .iter()
        .filter(|m| m.event.as_deref() == Some("decision.made"))
        .collect();
    assert_eq!(decisions.len(), answers.len());
    for (m, a) in decisions.iter().zip(&answers) {
        assert_eq!(m.id.as_deref(), Some(id_of(a).as_str()));
    }
    for m in &everything {
        check_envelope(m);
    }
    all.assert_quiet().await;
}

/// Collects every event of the tenant from the start of the ledger (after position 0, a policy activation).
async fn whole_stream(api: &Api, token: &str, n: usize) -> Vec<Msg> {
    let mut sse = Sse::open(api, "/v1/events?types=decision.made", token, T, Some("0.0")).await;
    let got = sse.events(n).await;
    sse.assert_quiet().await;
    got
}

/// For each of `positions`, a stream resumed after it gives exactly the events after it in `all`, then nothing.
async fn resume_everywhere(api: &Api, token: &str, all: &[Msg], positions: &[usize]) {
    for &k in positions {
        let from = all[k].id.as_deref().unwrap();
        // Alternate the header (what EventSource sends) and the query parameter (a first connection).
        let mut sse = if k % 2 == 0 {
            Sse::open(api, "/v1/events?types=decision.made", token, T, Some(from)).await
        } else {
            let path = format!("/v1/events?types=decision.made&lastEventId={from}");
            Sse::open(api, &path, token, T, None).await
        };
        let rest = sse.events(all.len() - k - 1).await;
        let want: Vec<&str> = all[k + 1..].iter().map(|m| m.id.as_deref().unwrap()).collect();
        let got: Vec<&str> = rest.iter().map(|m| m.id.as_deref().unwrap()).collect();
        assert_eq!(got, want, "resumed after {from}");
        for (g, w) in rest.iter().zip(&all[k + 1..]) {
            assert_eq!(g.json(), w.json(), "the same event, byte for byte in meaning");
        }
        sse.assert_quiet().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_random_positions_has_no_gap_and_no_duplicate_across_a_restart() {
    // The real binary, stopped and started again on the same data dir.
    let tmp = tempfile::tempdir().unwrap();
    let s = Process::serve(tmp.path(), &[]).await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "resume-bot").await;
    // A live subscriber first, so later positions are served from memory and earlier ones from disk.
    let mut live = Sse::open(&s, "/v1/events?types=decision.made", &tok, T, None).await;
    let other = s.token("acme-other", Role::Admin);
    let other_agent = s.register(&other, "acme-other", "noise-bot").await;
    let mut answers = Vec::new();
    for i in 0..30 {
        let (body, _) = cases(&agent).swap_remove(i % 3);
        answers.push(evaluate_in(&s, &tok, T, body).await);
        if i % 5 == 0 {
            // Another tenant's entries between ours: positions the stream skips.
            let (body, _) = cases(&other_agent).swap_remove(0);
            evaluate_in(&s, &other, "acme-other", body).await;
        }
    }
    let live_got = live.events(answers.len()).await;
    let all = whole_stream(&s, &tok, answers.len()).await;
    assert_eq!(
        all.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        answers.iter().map(|a| Some(id_of(a))).collect::<Vec<_>>()
    );
    assert_eq!(
        live_got.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        all.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
    );
    let mut rng = rand::thread_rng();
    let mut positions: Vec<usize> = (0..all.len() - 1).collect();
    positions.shuffle(&mut rng);
    positions.truncate(8);
    positions.push(all.len() - 1);
    resume_everywhere(&s, &tok, &all, &positions).await;
    drop(live);
    assert!(s.terminate().success(), "clean exit on SIGTERM with streams open");

    // Same data dir: the positions from before the restart still resume exactly, into what came after.
    let s = Process::serve(tmp.path(), &[]).await;
    let mut before_restart = all;
    let last = before_restart.last().unwrap().id.clone().unwrap();
    let mut resumed = Sse::open(&s, "/v1/events?types=decision.made", &tok, T, Some(&last)).await;
    let mut more = Vec::new();
    for i in 0..10 {
        let (body, _) = cases(&agent).swap_remove(i % 3);
        more.push(evaluate_in(&s, &tok, T, body).await);
    }
    let after = resumed.events(more.len()).await;
    assert_eq!(
        after.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        more.iter().map(|a| Some(id_of(a))).collect::<Vec<_>>(),
        "a stream resumed after the last event before the restart gets exactly the new ones"
    );
    resumed.assert_quiet().await;
    before_restart.extend(after);
    let all = whole_stream(&s, &tok, before_restart.len()).await;
    assert_eq!(
        all.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        before_restart.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
    );
    let mut positions: Vec<usize> = (0..all.len() - 1).collect();
    positions.shuffle(&mut rng);
    positions.truncate(8);
    resume_everywhere(&s, &tok, &all, &positions).await;
    assert!(s.terminate().success());
}

#[tokio::test]
async fn types_and_execution_filters_and_bad_queries() {
    let (s, tok, agent) = Server::with_agent(T, "filter-bot").await;
    let mut exec1 = Sse::open(&s, "/v1/events?executionId=exec_1", &tok, T, None).await;
    let mut none = Sse::open(
        &s,
        "/v1/events?types=approval.resolved,approval.expired",
        &tok,
        T,
        None,
    )
    .await;
    let mut sent = Vec::new();
    for exec in ["exec_1", "exec_2", "exec_1"] {
        let (mut body, _) = cases(&agent).swap_remove(0);
        body["executionId"] = json!(exec);
        sent.push(evaluate_in(&s, &tok, T, body).await);
    }
    let (body, _) = cases(&agent).swap_remove(1);
    evaluate_in(&s, &tok, T, body).await;
    let got = exec1.events(2).await;
    assert_eq!(got[0].id.as_deref(), Some(id_of(&sent[0]).as_str()));
    assert_eq!(got[1].id.as_deref(), Some(id_of(&sent[2]).as_str()));
    for m in &got {
        assert_eq!(m.json()["executionId"], "exec_1");
    }
    exec1.assert_quiet().await;
    none.assert_quiet().await;

    let admin = s.token(T, Role::Admin);
    for (path, what) in [
        ("/v1/events?types=decision.made,bogus", "bogus"),
        ("/v1/events?types=", "unknown event type"),
        ("/v1/events?lastEventId=7", "event id"),
        ("/v1/events?lastEventId=01.0", "event id"),
        ("/v1/events?unknown=1", "unknown"),
    ] {
        let r = s.get(path, &admin, T).await;
        r.assert_error(400, "invalid_request");
        assert!(
            r.body["message"].as_str().unwrap().contains(what),
            "{path}: {}",
            r.body
        );
    }
    let r = send(
        s.req(Method::GET, "/v1/events", &admin, T)
            .header("last-event-id", "x.y"),
    )
    .await;
    r.assert_error(400, "invalid_request");
    let long = "x".repeat(300);
    s.get(&format!("/v1/events?executionId={long}"), &admin, T)
        .await
        .assert_error(400, "invalid_request");
}

#[tokio::test]
async fn tenants_and_agent_bound_tokens_see_only_their_own_events() {
    let (s, tok, bot_a) = Server::with_agent(T, "bot-a").await;
    let bot_b = s.register(&tok, T, "bot-b").await;
    let other = s.token("acme-rival", Role::Admin);
    let rival = s.register(&other, "acme-rival", "bot-a").await;
    let bound_a = agent_token(&s.data_dir, T, "bot-a");
    let mut tenant_wide = Sse::open(&s, "/v1/events", &s.token(T, Role::Approver), T, None).await;
    let mut only_a = Sse::open(&s, "/v1/events", &bound_a, T, None).await;
    let mut rivals = Sse::open(&s, "/v1/events", &other, "acme-rival", None).await;
    let (a_body, _) = cases(&bot_a).swap_remove(0);
    let (b_body, _) = cases(&bot_b).swap_remove(0);
    let (r_body, _) = cases(&rival).swap_remove(0);
    let a = evaluate_in(&s, &tok, T, a_body).await;
    let b = evaluate_in(&s, &tok, T, b_body).await;
    let r = evaluate_in(&s, &other, "acme-rival", r_body).await;
    let ids = |ms: Vec<Msg>| ms.into_iter().map(|m| m.id.unwrap()).collect::<Vec<_>>();
    assert_eq!(ids(tenant_wide.events(2).await), [id_of(&a), id_of(&b)]);
    assert_eq!(ids(only_a.events(1).await), [id_of(&a)]);
    assert_eq!(ids(rivals.events(1).await), [id_of(&r)]);
    tenant_wide.assert_quiet().await;
    only_a.assert_quiet().await;
    rivals.assert_quiet().await;
    // Resuming from another tenant's position shows nothing of it either.
    let mut resumed = Sse::open(&s, "/v1/events", &other, "acme-rival", Some(&id_of(&a))).await;
    assert_eq!(ids(resumed.events(1).await), [id_of(&r)]);
    // A token of one tenant cannot name another.
    s.get("/v1/events", &tok, "acme-rival")
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test]
async fn every_tenant_role_may_subscribe_and_the_operator_may_not() {
    let s = Server::start().await;
    for role in [Role::Agent, Role::Approver, Role::Admin, Role::Auditor] {
        Sse::open(&s, "/v1/events", &s.token(T, role), T, None).await;
    }
    let op = kla_token(&s.data_dir, &["--operator"]);
    s.get("/v1/events", &op, kla::auth::OPERATOR_TENANT)
        .await
        .assert_error(403, "forbidden");
    send(s.anon(Method::GET, "/v1/events"))
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test]
async fn a_stale_or_unknown_position_gets_resync_required_then_the_head() {
    let s = Server::start_with(|c| c.events_retention = Some("1s".into())).await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "resync-bot").await;
    let (body, _) = cases(&agent).swap_remove(0);
    let old = evaluate_in(&s, &tok, T, body.clone()).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for (from, reason) in [(id_of(&old), "expired"), ("99999999.0".to_owned(), "ahead")] {
        let mut sse = Sse::open(&s, "/v1/events?types=decision.made", &tok, T, Some(&from)).await;
        let m = sse.next_msg(Duration::from_secs(5)).await.expect("resync");
        assert_eq!(m.event.as_deref(), Some("resync_required"), "{m:?}");
        let v = m.json();
        assert_eq!(v["type"], "resync_required");
        assert_eq!(v["data"]["reason"], reason);
        assert_eq!(v["data"]["lastEventId"], from.as_str());
        assert_eq!(v["id"].as_str(), m.id.as_deref());
        assert_eq!(v["data"]["restartAfter"].as_str(), m.id.as_deref());
        // The stream goes on from the head: the next decision, nothing older.
        let next = evaluate_in(&s, &tok, T, body.clone()).await;
        let got = sse.events(1).await;
        assert_eq!(got[0].id.as_deref(), Some(id_of(&next).as_str()));
        // Resuming from the resync's id is a fresh, valid position: no second resync, no gap.
        let mut again = Sse::open(&s, "/v1/events?types=decision.made", &tok, T, m.id.as_deref()).await;
        assert_eq!(again.events(1).await[0].id, got[0].id);
    }
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open_past_the_listener_s_idle_timeout() {
    let s = Server::start_with(|c| {
        c.events_heartbeat = Some("200ms".into());
        c.api_idle_timeout = Some("1s".into());
    })
    .await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "quiet-bot").await;
    let mut sse = Sse::open(&s, "/v1/events", &tok, T, None).await;
    let started = std::time::Instant::now();
    let mut beats = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let m = sse
            .next_msg(Duration::from_secs(2))
            .await
            .expect("a heartbeat within 2s");
        assert!(!m.is_event(), "{m:?}");
        assert_eq!(m.comment.as_deref(), Some("heartbeat"));
        beats += 1;
    }
    assert!(beats >= 5, "{beats} heartbeats in 2.5s");
    // Still the same stream: an event arrives on it.
    let (body, _) = cases(&agent).swap_remove(0);
    let a = evaluate_in(&s, &tok, T, body).await;
    assert_eq!(sse.events(1).await[0].id.as_deref(), Some(id_of(&a).as_str()));
}

#[tokio::test]
async fn a_heartbeat_carries_the_position_so_a_filtered_stream_resumes_where_it_was() {
    let s = Server::start_with(|c| c.events_heartbeat = Some("200ms".into())).await;
    let tok = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "cursor-bot").await;
    let mut sse = Sse::open(&s, "/v1/events?types=approval.expired", &tok, T, None).await;
    let (body, _) = cases(&agent).swap_remove(0);
    let a = evaluate_in(&s, &tok, T, body).await;
    let index = a["ledgerIndex"].as_u64().unwrap();
    let want = format!("{index}.{}", u32::MAX);
    let mut seen = Vec::new();
    for _ in 0..20 {
        let m = sse.next_msg(Duration::from_secs(2)).await.expect("heartbeat");
        assert!(!m.is_event(), "{m:?}");
        if let Some(id) = m.id {
            seen.push(id);
            if seen.last() == Some(&want) {
                break;
            }
        }
    }
    assert_eq!(
        seen.last(),
        Some(&want),
        "after the decision, which the filter skipped: {seen:?}"
    );
    // Resuming from it gives the next event, nothing older, and no resync.
    let mut resumed = Sse::open(&s, "/v1/events", &tok, T, Some(&want)).await;
    let (body, _) = cases(&agent).swap_remove(0);
    let b = evaluate_in(&s, &tok, T, body).await;
    assert_eq!(resumed.events(1).await[0].id.as_deref(), Some(id_of(&b).as_str()));
}

#[tokio::test]
async fn subscriber_caps_answer_429_per_tenant_and_503_for_the_server() {
    let s = Server::start_with(|c| {
        c.events_max_subscribers = Some(2);
        c.events_max_subscribers_per_tenant = Some(1);
        // A closed client is noticed at the next write.
        c.events_heartbeat = Some("200ms".into());
    })
    .await;
    let a = s.token(T, Role::Admin);
    let b = s.token("acme-b", Role::Admin);
    let c = s.token("acme-c", Role::Admin);
    let first = Sse::open(&s, "/v1/events", &a, T, None).await;
    let r = s.get("/v1/events", &a, T).await;
    r.assert_error(429, "rate_limited");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("max-subscribers-per-tenant"),
        "{}",
        r.body
    );
    assert!(r.header("retry-after").is_some());
    let _second = Sse::open(&s, "/v1/events", &b, "acme-b", None).await;
    let r = s.get("/v1/events", &c, "acme-c").await;
    r.assert_error(503, "internal_error");
    assert!(
        r.body["message"].as_str().unwrap().contains("max-subscribers"),
        "{}",
        r.body
    );
    // A closed stream gives its slot back.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = stream_client()
            .get(format!("{}/v1/events", s.base))
            .bearer_auth(&a)
            .header("x-tenant-id", T)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_instead_of_waiting_for_them() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Admin);
    let mut sse = Sse::open(&s, "/v1/events", &tok, T, None).await;
    let url = format!("{}/ws?token={tok}&tenant={T}", s.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    let started = std::time::Instant::now();
    s.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        sse.next_event(Duration::from_secs(2)).await.is_none(),
        "the stream ended"
    );
    use futures_util::StreamExt as _;
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(m) = ws.next().await {
            if let Ok(tokio_tungstenite::tungstenite::Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(1001), "going away");
}

// ---------------------------------------------------------------------------------------------------------
// Approvals on the stream, from the Decision Desk's own entries.

/// A pack (unsigned, loaded with `allow-unsigned`) whose rules open approvals: one that waits, one that times out
/// in a second, one that needs two approvers.
const DESK_RULES: &str = r#"    - {id: big-refunds, match: {actions: [execute_refund]}, when: "input.context.amount > 1000", decision: require_approval, reasonCode: AMOUNT_OVER_THRESHOLD, message: "Refunds over 1000 need approval", approval: {timeout: 15m, onTimeout: block}}
    - {id: quick-block, match: {actions: [wire_money]}, decision: require_approval, reasonCode: WIRE, approval: {timeout: 1s, onTimeout: block}}
    - {id: two-people, match: {actions: [close_account]}, decision: require_approval, reasonCode: CLOSE, approval: {timeout: 15m, approvers: 2}}
"#;

async fn desk_server(packs: &std::path::Path) -> Server {
    write_pack(packs, "desk", DESK_RULES);
    let packs = packs.to_owned();
    Server::start_with(move |c| {
        c.policies = Some(packs);
        c.allow_unsigned = Some(true);
    })
    .await
}

fn types(ms: &[Msg]) -> Vec<&str> {
    ms.iter().map(|m| m.event.as_deref().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_reach_sse_and_the_websocket_in_the_desk_s_and_the_execution_api_s_shapes() {
    let packs = tempfile::tempdir().unwrap();
    let s = desk_server(packs.path()).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "desk-bot").await;
    let approver = s.token(T, Role::Approver);
    let mut desk = Sse::open(&s, "/v1/events", &approver, T, None).await;
    let mut mine = Sse::open(
        &s,
        "/v1/events",
        &agent_token(&s.data_dir, T, "desk-bot"),
        T,
        None,
    )
    .await;
    let mut others = Sse::open(
        &s,
        "/v1/events",
        &agent_token(&s.data_dir, T, "other-bot"),
        T,
        None,
    )
    .await;
    let mut ws = ws::connect_to(&s, &format!("?token={approver}&tenant={T}")).await;
    for sub in [
        json!({"type": "subscribe", "executionId": "exec_de5c"}),
        json!({"type": "subscribe", "topic": "approvals"}),
    ] {
        ws::say(&mut ws, sub).await;
        assert_eq!(ws::hear(&mut ws).await["type"], "subscribed");
    }

    // A decision that needs approval: the decision, the Desk's announcement, the Execution API's.
    let a = evaluate_in(
        &s,
        &tok,
        T,
        json!({"agentId": agent, "action": "execute_refund", "context": {"amount": 5000}, "executionId": "exec_de5c"}),
    )
    .await;
    assert_eq!(a["decision"], "require_approval");
    let approval = a["approvalId"].as_str().expect("approvalId").to_owned();
    let index = a["ledgerIndex"].as_u64().unwrap();
    let three = desk.events(3).await;
    assert_eq!(
        types(&three),
        [
            "decision.made",
            "approval.required",
            "execution.approval_required"
        ]
    );
    let ids: Vec<String> = (0..3).map(|n| format!("{index}.{n}")).collect();
    assert_eq!(
        three.iter().map(|m| m.id.clone().unwrap()).collect::<Vec<_>>(),
        ids
    );
    let required = check_envelope(&three[1]);
    assert_eq!(required["executionId"], "exec_de5c");
    let d = &required["data"];
    assert_eq!(d["approvalId"], approval.as_str());
    assert_eq!(d["decisionId"], a["decisionId"]);
    assert_eq!(
        (d["agentId"].as_str(), d["agentName"].as_str()),
        (Some(agent.as_str()), Some("desk-bot"))
    );
    assert_eq!(d["action"], "execute_refund");
    assert_eq!(d["reason"], "Refunds over 1000 need approval");
    assert_eq!(d["reasonCodes"], json!(["AMOUNT_OVER_THRESHOLD"]));
    assert!(d["expiresAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{d}");
    let exec = check_envelope(&three[2]);
    assert_eq!(exec["executionId"], "exec_de5c");
    assert_eq!(
        exec["data"],
        json!({"approvalId": approval, "action": "execute_refund", "reason": "Refunds over 1000 need approval"})
    );
    // The WebSocket: the execution's decision, the topic's approval.required, the execution's approval, in order.
    let mut heard = Vec::new();
    for _ in 0..3 {
        heard.push(ws::hear(&mut ws).await);
    }
    assert_eq!(
        heard
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ids
    );
    assert_eq!(heard[1], three[1].json());
    assert_eq!(heard[2], three[2].json());

    // A person approves: approval.resolved, on both, once on the WebSocket though both subscriptions match.
    let r = s.vote(&approver, T, &approval, "APPROVED", Some("fine")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let resolved = desk.events(1).await;
    let v = check_envelope(&resolved[0]);
    assert_eq!(v["type"], "approval.resolved");
    assert_eq!(v["executionId"], "exec_de5c");
    assert_eq!(v["data"]["approvalId"], approval.as_str());
    assert_eq!(v["data"]["status"], "APPROVED");
    assert_eq!(v["data"]["finalDecision"], "allow");
    assert_eq!(v["data"]["comment"], "fine");
    assert!(resolved[0].id.as_deref().unwrap().ends_with(".0"));
    assert_eq!(ws::hear(&mut ws).await, v);

    // A vote short of the quorum, and an approval that times out.
    let q = evaluate_in(
        &s,
        &tok,
        T,
        json!({"agentId": agent, "action": "close_account", "context": {}}),
    )
    .await;
    let quorum = q["approvalId"].as_str().unwrap();
    let r = s.vote(&approver, T, quorum, "APPROVED", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let w = evaluate_in(
        &s,
        &tok,
        T,
        json!({"agentId": agent, "action": "wire_money", "context": {}}),
    )
    .await;
    let later = desk.events(6).await;
    assert_eq!(
        types(&later),
        [
            "decision.made",
            "approval.required",
            "approval.voted",
            "decision.made",
            "approval.required",
            "approval.expired"
        ]
    );
    let voted = later[2].json();
    assert_eq!(voted["data"]["approvalId"], quorum);
    assert_eq!(voted["data"]["vote"], "APPROVED");
    let expired = later[5].json();
    assert_eq!(expired["data"]["approvalId"], w["approvalId"]);
    assert_eq!(expired["data"]["status"], "EXPIRED");
    assert_eq!(expired["data"]["finalDecision"], "block");
    assert!(expired.get("executionId").is_none(), "{expired}");
    // The WebSocket's approvals topic has the same approval events (no decision.made: not subscribed).
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(ws::hear(&mut ws).await["type"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        got,
        [
            "approval.required",
            "approval.voted",
            "approval.required",
            "approval.expired"
        ]
    );

    // The agent's own token sees all of it (approval entries name its agent), another agent's nothing.
    let all: Vec<Msg> = three.into_iter().chain(resolved).chain(later).collect();
    let own = mine.events(all.len()).await;
    assert_eq!(
        own.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        all.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
    );
    others.assert_quiet().await;
    // And a resume from the first event gives the rest, from disk, exactly.
    let mut resumed = Sse::open(&s, "/v1/events", &approver, T, all[0].id.as_deref()).await;
    let rest = resumed.events(all.len() - 1).await;
    for (g, w) in rest.iter().zip(&all[1..]) {
        assert_eq!((g.id.as_deref(), g.json()), (w.id.as_deref(), w.json()));
    }
    resumed.assert_quiet().await;
}

// ---------------------------------------------------------------------------------------------------------
// WebSocket.

mod ws {
    use super::*;
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    type Socket =
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    pub(super) fn url(api: &Api, query: &str) -> String {
        format!("{}/ws{query}", api.base.replacen("http", "ws", 1))
    }

    pub(super) async fn connect_to(api: &Api, query: &str) -> Socket {
        connect(&url(api, query), &[]).await
    }

    async fn connect(url: &str, headers: &[(&str, &str)]) -> Socket {
        let mut req = url.into_client_request().expect("request");
        for (k, v) in headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name");
            req.headers_mut().insert(name, v.parse().expect("header"));
        }
        tokio_tungstenite::connect_async(req).await.expect("upgraded").0
    }

    pub(super) async fn say(ws: &mut Socket, v: Value) {
        ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    /// The next JSON text frame (pings are answered by the client library).
    pub(super) async fn hear(ws: &mut Socket) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::time::timeout_at(deadline, ws.next())
                .await
                .expect("a message in time")
                .expect("open")
                .expect("frame");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    async fn silent(ws: &mut Socket) {
        let r = tokio::time::timeout(Duration::from_millis(400), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return t.to_string(),
                    Some(Ok(_)) => {}
                    _ => return String::new(),
                }
            }
        })
        .await;
        assert!(r.is_err(), "unexpected message {r:?}");
    }

    #[tokio::test]
    async fn execution_and_topic_subscriptions_in_the_execution_api_s_shapes() {
        let (s, tok, agent) = Server::with_agent(T, "ws-bot").await;
        let approver = s.token(T, Role::Approver);
        // A browser's way: token and tenant in the query.
        let mut ws = connect(&url(&s, &format!("?token={approver}&tenant={T}")), &[]).await;
        say(&mut ws, json!({"type": "subscribe", "executionId": "exec_456"})).await;
        assert_eq!(
            hear(&mut ws).await,
            json!({"type": "subscribed", "executionId": "exec_456"})
        );
        say(&mut ws, json!({"type": "subscribe", "topic": "decisions"})).await;
        assert_eq!(
            hear(&mut ws).await,
            json!({"type": "subscribed", "topic": "decisions"})
        );
        say(&mut ws, json!({"type": "subscribe", "topic": "approvals"})).await;
        assert_eq!(
            hear(&mut ws).await,
            json!({"type": "subscribed", "topic": "approvals"})
        );

        let (mut body, _) = cases(&agent).swap_remove(2);
        body["executionId"] = json!("exec_456");
        let a = evaluate_in(&s, &tok, T, body).await;
        let made = hear(&mut ws).await;
        assert_eq!(made["type"], "decision.made", "{made}");
        assert_eq!(made["id"], id_of(&a));
        assert_eq!(made["executionId"], "exec_456");
        assert_eq!(made["data"]["decisionId"], a["decisionId"]);
        assert!(made["createdAt"].is_string());
        if let Some(approval) = a["approvalId"].as_str() {
            // The Desk's shape (topic approvals), then the Execution API's (the execution subscription).
            let required = hear(&mut ws).await;
            assert_eq!(required["type"], "approval.required");
            assert_eq!(required["data"]["approvalId"], approval);
            let exec = hear(&mut ws).await;
            assert_eq!(exec["type"], "execution.approval_required");
            assert_eq!(exec["executionId"], "exec_456");
            assert_eq!(exec["data"]["approvalId"], approval);
            assert_eq!(exec["data"]["action"], "execute_refund");
            assert!(exec["data"]["reason"].is_string());
        }
        silent(&mut ws).await;

        // Bad messages get an error and change nothing; the subscriptions go on.
        for (bad, what) in [
            (json!({"type": "subscribe"}).to_string(), "exactly one"),
            (
                json!({"type": "subscribe", "executionId": "e", "topic": "approvals"}).to_string(),
                "exactly one",
            ),
            (
                json!({"type": "subscribe", "topic": "gossip"}).to_string(),
                "unknown topic",
            ),
            (json!({"type": "dance"}).to_string(), "unknown message type"),
            (
                json!({"type": "subscribe", "executionId": 5}).to_string(),
                "executionId",
            ),
            (
                json!({"type": "subscribe", "executionId": "e", "extra": 1}).to_string(),
                "extra",
            ),
            (r#"{"type":"subscribe","type":"ping"}"#.to_owned(), "type"),
            ("not json".to_owned(), "malformed JSON"),
        ] {
            ws.send(Message::Text(bad.clone().into())).await.unwrap();
            let e = hear(&mut ws).await;
            assert_eq!(e["type"], "error", "{bad}: {e}");
            assert_eq!(e["code"], "invalid_request", "{bad}: {e}");
            assert!(e["message"].as_str().unwrap().contains(what), "{bad}: {e}");
            assert_eq!(e.as_object().unwrap().len(), 3, "{e}");
        }
        ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
        assert_eq!(hear(&mut ws).await["type"], "error");
        say(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(hear(&mut ws).await, json!({"type": "pong"}));

        // Unsubscribing stops that subscription only.
        say(&mut ws, json!({"type": "unsubscribe", "topic": "decisions"})).await;
        assert_eq!(
            hear(&mut ws).await,
            json!({"type": "unsubscribed", "topic": "decisions"})
        );
        let (body, _) = cases(&agent).swap_remove(0);
        evaluate_in(&s, &tok, T, body).await;
        let (mut body, _) = cases(&agent).swap_remove(0);
        body["executionId"] = json!("exec_456");
        let b = evaluate_in(&s, &tok, T, body).await;
        let got = hear(&mut ws).await;
        assert_eq!(got["id"], id_of(&b), "only the execution's decision: {got}");
        say(&mut ws, json!({"type": "unsubscribe", "executionId": "exec_456"})).await;
        assert_eq!(
            hear(&mut ws).await,
            json!({"type": "unsubscribed", "executionId": "exec_456"})
        );
        let (mut body, _) = cases(&agent).swap_remove(0);
        body["executionId"] = json!("exec_456");
        evaluate_in(&s, &tok, T, body).await;
        silent(&mut ws).await;
    }

    #[tokio::test]
    async fn kla_pings_and_closes_a_client_that_stays_silent() {
        let s = Server::start_with(|c| c.events_heartbeat = Some("200ms".into())).await;
        let tok = s.token(T, Role::Admin);
        let u = url(&s, &format!("?token={tok}&tenant={T}"));
        let mut silent = connect(&u, &[]).await;
        let mut lively = connect(&u, &[]).await;
        // The lively client reads (its library answers each ping); the silent one does not, so kla hears nothing
        // from it.
        let reading = tokio::time::Instant::now() + Duration::from_millis(1200);
        let mut lively_pings = 0;
        while let Ok(m) = tokio::time::timeout_at(reading, lively.next()).await {
            match m.expect("open").expect("frame") {
                Message::Ping(_) => lively_pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(lively_pings >= 3, "kla pings every heartbeat: {lively_pings}");
        say(&mut lively, json!({"type": "ping"})).await;
        assert_eq!(
            hear(&mut lively).await,
            json!({"type": "pong"}),
            "an answering client stays connected"
        );
        // The silent one was pinged, then closed (1001), or its socket shut if kla had gone before the client
        // could answer the pings it finally reads.
        let mut pings = 0;
        let end = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(m) = silent.next().await {
                match m {
                    Ok(Message::Ping(_)) => pings += 1,
                    Ok(Message::Close(f)) => return f.map(|f| (u16::from(f.code), f.reason.to_string())),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(_) => return None,
                }
            }
            None
        })
        .await
        .expect("the silent client's connection ended");
        assert!(pings >= 1, "{pings} pings before the end");
        if let Some((code, reason)) = end {
            assert_eq!((code, reason.as_str()), (1001, "no answer to pings"));
        }
    }

    #[tokio::test]
    async fn header_credentials_the_token_s_own_tenant_and_isolation() {
        let (s, tok, agent) = Server::with_agent(T, "ws-iso").await;
        let rival_tok = s.token("acme-ws-rival", Role::Admin);
        let rival = s.register(&rival_tok, "acme-ws-rival", "ws-iso").await;
        let bearer = format!("Bearer {tok}");
        let mut by_header = connect(
            &url(&s, ""),
            &[("authorization", bearer.as_str()), ("x-tenant-id", T)],
        )
        .await;
        // The token lists one tenant: it is the connection's.
        let mut own = connect(&url(&s, &format!("?token={rival_tok}")), &[]).await;
        let mut bound = connect(
            &url(
                &s,
                &format!("?token={}", agent_token(&s.data_dir, T, "other-bot")),
            ),
            &[],
        )
        .await;
        for ws in [&mut by_header, &mut own, &mut bound] {
            say(ws, json!({"type": "subscribe", "topic": "decisions"})).await;
            assert_eq!(hear(ws).await["type"], "subscribed");
        }
        let (body, _) = cases(&agent).swap_remove(0);
        let a = evaluate_in(&s, &tok, T, body).await;
        let (body, _) = cases(&rival).swap_remove(0);
        let r = evaluate_in(&s, &rival_tok, "acme-ws-rival", body).await;
        assert_eq!(hear(&mut by_header).await["id"], id_of(&a));
        assert_eq!(hear(&mut own).await["id"], id_of(&r));
        silent(&mut by_header).await;
        silent(&mut own).await;
        silent(&mut bound).await;
    }

    #[tokio::test]
    async fn credentials_are_checked_before_the_upgrade() {
        let s = Server::start().await;
        let tok = s.token(T, Role::Admin);
        let multi = token_for(&s.data_dir, &[T, "acme-2"], Role::Admin);
        let op = kla_token(&s.data_dir, &["--operator"]);
        let bearer = format!("Bearer {tok}");
        let upgrade = |path: &str| {
            s.anon(Method::GET, path)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        };
        for (rb, status, code) in [
            (upgrade("/ws"), 401, "unauthorized"),
            (
                upgrade(&format!("/ws?token=nope&tenant={T}")),
                401,
                "unauthorized",
            ),
            (
                upgrade(&format!("/ws?token={tok}&tenant=acme-2")),
                403,
                "forbidden",
            ),
            (upgrade(&format!("/ws?token={multi}")), 400, "invalid_request"),
            (
                upgrade(&format!("/ws?token={tok}&tenant={T}&tenant={T}")),
                400,
                "invalid_request",
            ),
            (
                upgrade(&format!("/ws?token={tok}&extra=1")),
                400,
                "invalid_request",
            ),
            (
                upgrade(&format!("/ws?token={tok}")).header("authorization", &bearer),
                400,
                "invalid_request",
            ),
            (
                upgrade(&format!("/ws?token={tok}&tenant=acme-2")).header("x-tenant-id", T),
                400,
                "invalid_request",
            ),
            (
                upgrade(&format!("/ws?token={op}&tenant=_operator")),
                403,
                "forbidden",
            ),
            // Not a WebSocket request at all.
            (
                s.anon(Method::GET, &format!("/ws?token={tok}&tenant={T}")),
                400,
                "invalid_request",
            ),
        ] {
            let r = send(rb).await;
            r.assert_error(status, code);
            assert!(
                !r.text().contains(&tok),
                "no answer quotes the token: {}",
                r.text()
            );
        }
        let ok = send(upgrade(&format!("/ws?token={tok}&tenant={T}"))).await;
        assert_eq!(ok.status, 101);
    }

    #[tokio::test]
    async fn the_query_token_never_reaches_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Process::start_env(tmp.path(), &[], &[("RUST_LOG", "trace")])
            .await
            .unwrap_or_else(|e| panic!("kla serve exited: {}", e.log));
        let tok = p.token(T, Role::Admin);
        let agent = p.register(&tok, T, "log-bot").await;
        let mut ws = connect(&url(&p, &format!("?token={tok}&tenant={T}")), &[]).await;
        say(&mut ws, json!({"type": "subscribe", "topic": "decisions"})).await;
        assert_eq!(hear(&mut ws).await["type"], "subscribed");
        let (body, _) = cases(&agent).swap_remove(0);
        let a = p.decide(&tok, T, body).await;
        assert_eq!(hear(&mut ws).await["id"], id_of(&a));
        // A refused token in the query too (what an attacker or a typo sends).
        let refused = format!("{tok}x");
        let r = send(p.anon(Method::GET, &format!("/ws?token={refused}&tenant={T}"))).await;
        r.assert_error(401, "unauthorized");
        drop(ws);
        let log = p.terminate().log;
        assert!(
            log.contains("websocket subscriber connected"),
            "the connection was logged:\n{log}"
        );
        assert!(log.contains("/ws"), "requests to /ws were logged:\n{log}");
        // The token's signature part is what makes it a secret; check that (and the whole token).
        let signature = tok.rsplit('.').next().unwrap();
        assert!(
            !log.contains(&tok) && !log.contains(signature),
            "the token is in the log"
        );
    }
}
