//! Who reads what, through the real server: tenants see each other's ledger entries only as leaf hashes, the
//! operator (no tenant) reads the whole stream and nothing tenant-scoped, a token bound to one agent reads only
//! that agent's records, and list answers come in bounded pages.
//!
//! The Merkle checks use the independent RFC 6962 / 9162 code of `verifier.rs`, not kla's.

use crate::harness::*;
use crate::verifier::{H, consistent, hashes, leaf, mth, ph, root_from_inclusion};
use base64::Engine;
use kla::auth::{self, Claims, Role, keys};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

const A: &str = "acme-iso";
const B: &str = "globex-iso";

// ---------------------------------------------------------------------------------------------------------
// Reading the entry stream.

/// One line of `/v1/ledger/entries`.
#[derive(Debug, Clone, PartialEq)]
enum Line {
    /// The canonical entry bytes.
    Entry(Vec<u8>),
    /// `{"leafHash":"sha256:..."}` for an entry the caller may not read.
    Withheld(H),
}

impl Line {
    fn leaf(&self) -> H {
        match self {
            Line::Entry(b) => leaf(b),
            Line::Withheld(h) => *h,
        }
    }
    fn entry(&self) -> Option<Value> {
        match self {
            Line::Entry(b) => Some(serde_json::from_slice(b).unwrap()),
            Line::Withheld(_) => None,
        }
    }
}

/// Parses one line as the API documents it: a JSON object with exactly one member `leafHash` is a withheld entry,
/// anything else is an entry's canonical bytes.
fn parse_line(l: &[u8]) -> Line {
    let v: Value = serde_json::from_slice(l).expect("every line is JSON");
    let o = v.as_object().expect("every line is an object");
    if o.len() == 1 && o.contains_key("leafHash") {
        assert_eq!(
            l,
            format!(r#"{{"leafHash":"{}"}}"#, o["leafHash"].as_str().unwrap()).as_bytes(),
            "a withheld line has exactly the documented bytes"
        );
        Line::Withheld(ph(&o["leafHash"]))
    } else {
        Line::Entry(l.to_vec())
    }
}

struct Page {
    lines: Vec<Line>,
    bytes: usize,
    next: u64,
    withheld: u64,
}

async fn entries_page(s: &Server, tok: &str, tenant: &str, start: u64, end: u64) -> Page {
    let r = s
        .req(
            Method::GET,
            &format!("/v1/ledger/entries?start={start}&end={end}"),
            tok,
            tenant,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(r.headers()["x-kla-start"], start.to_string().as_str());
    let next: u64 = r.headers()["x-kla-next"].to_str().unwrap().parse().unwrap();
    let withheld: u64 = r.headers()["x-kla-withheld"].to_str().unwrap().parse().unwrap();
    let body = r.bytes().await.unwrap();
    assert!(body.is_empty() || body.ends_with(b"\n"));
    let lines: Vec<Line> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect();
    assert_eq!(lines.len() as u64, next - start, "one line per entry");
    assert_eq!(
        lines.iter().filter(|l| matches!(l, Line::Withheld(_))).count() as u64,
        withheld
    );
    Page {
        lines,
        bytes: body.len(),
        next,
        withheld,
    }
}

/// Every line `[0, end)`, following `x-kla-next`.
async fn stream(s: &Server, tok: &str, tenant: &str, end: u64) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < end {
        let p = entries_page(s, tok, tenant, start, end).await;
        assert!(p.next > start, "every page makes progress");
        lines.extend(p.lines);
        start = p.next;
    }
    lines
}

/// `(size, root)` of the latest checkpoint (signature checks are `ledger.rs`'s business).
async fn checkpoint(s: &Server, tok: &str, tenant: &str) -> (u64, H) {
    let r = s
        .req(Method::GET, "/v1/ledger/checkpoint", tok, tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let size = lines[1].parse().unwrap();
    let root = base64::engine::general_purpose::STANDARD
        .decode(lines[2])
        .unwrap()
        .try_into()
        .unwrap();
    (size, root)
}

async fn get(s: &Server, path: &str, tok: &str, tenant: &str) -> Resp {
    send(s.req(Method::GET, path, tok, tenant)).await
}

async fn decide(s: &Server, tok: &str, tenant: &str, body: Value) -> Value {
    let r = send(
        s.req(Method::POST, "/v1/decisions.evaluate", tok, tenant)
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn bound_token(s: &Server, tenant: &str, role: Role, agent: &str) -> String {
    let key = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    auth::mint(
        key.private_pem.as_bytes(),
        vec![tenant.to_owned()],
        role,
        format!("bound-{}", role.as_str()),
        Some(agent.to_owned()),
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn kla_token(s: &Server, args: &[&str]) -> std::process::Output {
    std::process::Command::new(kla_bin())
        .args(["token", "--data-dir"])
        .arg(&s.data_dir)
        .args(args)
        .output()
        .unwrap()
}

fn operator_token(s: &Server) -> String {
    let out = kla_token(s, &["--operator"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Two tenants with one agent each, and decisions whose contexts carry a secret naming their tenant.
async fn two_tenants() -> (Server, Vec<Value>, Vec<Value>) {
    let s = Server::start().await;
    let (ta, tb) = (s.token(A, Role::Admin), s.token(B, Role::Admin));
    let aa = s.register(&ta, A, "acme-bot").await;
    let ab = s.register(&tb, B, "globex-bot").await;
    let (mut da, mut db) = (Vec::new(), Vec::new());
    for i in 0..3 {
        da.push(
            decide(
                &s,
                &ta,
                A,
                json!({"agentId": aa, "action": "lookup_policy", "context": {"secret": format!("acme-secret-{i}")}}),
            )
            .await,
        );
        db.push(
            decide(
                &s,
                &tb,
                B,
                json!({"agentId": ab, "action": "lookup_policy", "context": {"secret": format!("globex-secret-{i}")}}),
            )
            .await,
        );
    }
    (s, da, db)
}

// ---------------------------------------------------------------------------------------------------------
// 1. The entry stream across tenants.

/// Regression: `/v1/ledger/entries` served every tenant's entries in full to any tenant's auditor or admin, so one
/// tenant read another's decision contexts. Now another tenant's entry is a `{"leafHash":...}` line: each tenant's
/// view still rebuilds the signed root, proves its own entries' inclusion and checks consistency between two
/// checkpoints, and the withheld hashes are the other tenant's true leaves.
#[tokio::test]
async fn other_tenants_entries_reach_the_stream_as_leaf_hashes_only() {
    let (s, da, db) = two_tenants().await;
    let (aud_a, admin_b) = (s.token(A, Role::Auditor), s.token(B, Role::Admin));
    let (size, root) = checkpoint(&s, &aud_a, A).await;
    let view_a = stream(&s, &aud_a, A, size).await;
    let view_b = stream(&s, &admin_b, B, size).await;
    assert_eq!(
        view_a,
        stream(&s, &s.token(A, Role::Admin), A, size).await,
        "A's admin sees what A's auditor sees"
    );

    for (view, me, other) in [(&view_a, A, "globex-secret"), (&view_b, B, "acme-secret")] {
        let leaves: Vec<H> = view.iter().map(Line::leaf).collect();
        assert_eq!(mth(&leaves), root, "{me}'s view rebuilds the signed root");
        let mut withheld = 0;
        for (i, l) in view.iter().enumerate() {
            match l {
                Line::Entry(bytes) => {
                    let e: Value = serde_json::from_slice(bytes).unwrap();
                    let t = e["tenant"].as_str().unwrap();
                    assert!(t == me || t == "_system", "{me} reads entry {i} of {t}");
                    let text = String::from_utf8_lossy(bytes);
                    assert!(!text.contains(other), "{me} reads {other} in entry {i}");
                }
                Line::Withheld(_) => withheld += 1,
            }
        }
        // The other tenant's registration and three decisions.
        assert_eq!(withheld, 4, "{me}: {view:?}");
    }
    assert!(
        view_a
            .iter()
            .any(|l| l.entry().is_some_and(|e| e["kind"] == "policy.activated")),
        "system entries are read in full"
    );
    // What A sees withheld is B's entry, byte for byte (its leaf), and the other way round.
    for (i, (a, b)) in view_a.iter().zip(&view_b).enumerate() {
        assert_eq!(a.leaf(), b.leaf(), "entry {i}");
        assert!(
            matches!(a, Line::Entry(_)) || matches!(b, Line::Entry(_)),
            "entry {i} is someone's"
        );
    }

    // Own entries: inclusion proofs check against leaves and roots taken from the redacted view.
    let leaves: Vec<H> = view_a.iter().map(Line::leaf).collect();
    for d in &da {
        let v = get(
            &s,
            &format!("/v1/lineage/{}/verify", d["lineageId"].as_str().unwrap()),
            &aud_a,
            A,
        )
        .await;
        assert_eq!(v.status, 200, "{}", v.body);
        let (idx, ts) = (
            v.body["ledgerIndex"].as_u64().unwrap(),
            v.body["treeSize"].as_u64().unwrap(),
        );
        assert_eq!(ph(&v.body["leafHash"]), leaves[idx as usize]);
        let r = root_from_inclusion(idx, ts, &leaves[idx as usize], &hashes(&v.body["merklePath"]));
        assert_eq!(r, Some(mth(&leaves[..ts as usize])), "entry {idx}");
    }
    // B's entries are still not A's to fetch.
    for d in &db {
        get(
            &s,
            &format!("/v1/lineage/{}", d["lineageId"].as_str().unwrap()),
            &aud_a,
            A,
        )
        .await
        .assert_error(404, "not_found");
    }

    // Consistency between this checkpoint and a later one, from A's redacted view alone.
    let tb = s.token(B, Role::Admin);
    let list = get(&s, "/v1/agents", &tb, B).await;
    let ab = list.body["agents"][0]["agentId"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        decide(
            &s,
            &tb,
            B,
            json!({"agentId": ab, "action": "lookup_policy", "context": {"secret": "globex-later"}}),
        )
        .await;
    }
    let (size2, root2) = checkpoint(&s, &aud_a, A).await;
    assert!(size2 > size);
    let later = stream(&s, &aud_a, A, size2).await;
    assert_eq!(&later[..size as usize], &view_a[..], "the prefix is unchanged");
    let leaves2: Vec<H> = later.iter().map(Line::leaf).collect();
    assert_eq!(mth(&leaves2), root2);
    for from in [1, size / 2, size] {
        let r = get(
            &s,
            &format!("/v1/ledger/consistency?from={from}&to={size2}"),
            &aud_a,
            A,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let (r1, r2) = (mth(&leaves2[..from as usize]), root2);
        assert_eq!((ph(&r.body["fromRoot"]), ph(&r.body["toRoot"])), (r1, r2));
        assert!(
            consistent(from, size2, &r1, &r2, &hashes(&r.body["proof"])),
            "{from} -> {size2}"
        );
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// 2. The operator.

/// `kla token --operator` mints a token of no tenant (its requests name the reserved `_operator`): it reads the
/// whole stream in full, the checkpoint, key and consistency proofs, and is refused (403) by every tenant-scoped
/// route. No other path yields that role: `--role operator`, an operator claim listing tenants or an agent, and a
/// tenant token naming `_operator` are all refused.
#[tokio::test]
async fn the_operator_belongs_to_no_tenant_and_reads_only_the_monitor_routes() {
    let (s, da, db) = two_tenants().await;
    let op = operator_token(&s);
    let o = auth::OPERATOR_TENANT;
    assert_eq!(o, "_operator");
    let (size, root) = checkpoint(&s, &op, o).await;
    let all = stream(&s, &op, o, size).await;
    assert_eq!(mth(&all.iter().map(Line::leaf).collect::<Vec<_>>()), root);
    let tenants: BTreeSet<String> = all
        .iter()
        .map(|l| {
            l.entry().expect("the operator reads every entry in full")["tenant"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(tenants, [A, B, "_system"].map(String::from).into());
    let page = entries_page(&s, &op, o, 0, size).await;
    assert_eq!(page.withheld, 0);
    let key = get(&s, "/v1/ledger/key", &op, o).await;
    assert_eq!(key.status, 200);
    let c = get(&s, &format!("/v1/ledger/consistency?from=1&to={size}"), &op, o).await;
    assert_eq!(c.status, 200, "{}", c.body);

    let (dec, lin) = (
        da[0]["decisionId"].as_str().unwrap(),
        db[0]["lineageId"].as_str().unwrap(),
    );
    for path in [
        "/v1/agents".to_owned(),
        "/v1/agents/agt_000000000000".to_owned(),
        format!("/v1/decisions/{dec}"),
        format!("/v1/lineage/{lin}"),
        format!("/v1/lineage/{lin}/verify"),
        format!("/v1/evidence?lineageId={lin}"),
        "/v1/policies".to_owned(),
    ] {
        get(&s, &path, &op, o).await.assert_error(403, "forbidden");
    }
    for (path, body) in [
        ("/v1/agents", agent_body("op-bot")),
        ("/v1/decisions.evaluate", json!({"agentId": "x", "action": "y"})),
        ("/v1/policies/reload", json!({})),
    ] {
        send(s.req(Method::POST, path, &op, o).json(&body))
            .await
            .assert_error(403, "forbidden");
    }
    // It acts in no tenant, and no tenant token acts as it.
    get(&s, "/v1/ledger/checkpoint", &op, A)
        .await
        .assert_error(403, "forbidden");
    let r = send(s.client.get(format!("{}/v1/ledger/key", s.base)).bearer_auth(&op)).await;
    r.assert_error(400, "invalid_request");
    for role in [Role::Admin, Role::Auditor] {
        get(&s, "/v1/ledger/key", &s.token(A, role), o)
            .await
            .assert_error(403, "forbidden");
    }

    // Minting: only the explicit flag, and never with a tenant, a role or an agent.
    for args in [
        &["--role", "operator", "--tenant", A][..],
        &["--operator", "--tenant", A],
        &["--operator", "--role", "admin"],
        &["--operator", "--agent", "acme-bot"],
    ] {
        let out = kla_token(&s, args);
        assert!(!out.status.success(), "kla token {args:?} must fail");
    }
    let key = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    assert!(
        auth::mint(
            key.private_pem.as_bytes(),
            vec![A.into()],
            Role::Operator,
            "x".into(),
            None,
            Duration::from_secs(60)
        )
        .is_err()
    );
    // Hand-made operator claims that list a tenant or an agent are refused, even signed with kla's key.
    let now = jsonwebtoken::get_current_timestamp();
    let enc = jsonwebtoken::EncodingKey::from_ed_pem(key.private_pem.as_bytes()).unwrap();
    for (tenants, agent) in [(vec![A.to_owned()], None), (vec![], Some("acme-bot".to_owned()))] {
        let claims = Claims {
            iss: "kla".into(),
            sub: "mallory".into(),
            aud: auth::Audience::One("kla".into()),
            tenants: tenants.clone(),
            role: Role::Operator,
            exp: now + 600,
            iat: now,
            agent,
        };
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &enc,
        )
        .unwrap();
        for tenant in [o, A] {
            get(&s, "/v1/ledger/entries?start=0", &t, tenant)
                .await
                .assert_error(401, "unauthorized");
        }
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// 3. Tokens bound to one agent.

/// Regression: a token bound to one agent (`agent` claim) read every agent's decisions, lineage and evidence in its
/// tenant. Now another agent's records are the same 404 as unknown ids, searches return only its agent's entries,
/// the agent list holds only its agent, and its entry stream withholds the other agents' entries. Binding by id
/// works as by name; system entries stay readable; unbound tokens still read every agent of the tenant.
#[tokio::test]
async fn a_token_bound_to_an_agent_reads_only_that_agents_records() {
    let s = Server::start().await;
    let admin = s.token(A, Role::Admin);
    let other_reg = send(
        s.req(Method::POST, "/v1/agents", &admin, A)
            .json(&agent_body("other-bot")),
    )
    .await;
    assert_eq!(other_reg.status, 201);
    let other = other_reg.body["agentId"].as_str().unwrap().to_owned();
    let me = s.register(&admin, A, "billing-bot").await;
    let bound = bound_token(&s, A, Role::Agent, "billing-bot");
    let bound_aud = bound_token(&s, A, Role::Auditor, &me);
    let ctx = |agent: &str, i: u32| {
        json!({"agentId": agent, "action": "lookup_policy", "context": {"n": i},
               "traceId": "5a5a0000000000000000000000000001", "executionId": "exec_5a"})
    };
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..2 {
        mine.push(decide(&s, &bound, A, ctx(&me, i)).await);
        theirs.push(decide(&s, &admin, A, ctx(&other, i)).await);
    }
    let ids = |ds: &[Value], k: &str| -> BTreeSet<String> {
        ds.iter().map(|d| d[k].as_str().unwrap().to_owned()).collect()
    };

    for tok in [&bound, &bound_aud] {
        for d in &theirs {
            let id = d["decisionId"].as_str().unwrap();
            let r = get(&s, &format!("/v1/decisions/{id}"), tok, A).await;
            r.assert_error(404, "not_found");
            assert_eq!(
                r.body["message"],
                format!("unknown decisionId '{id}'"),
                "as if unknown"
            );
            let lin = d["lineageId"].as_str().unwrap();
            for p in [
                format!("/v1/lineage/{lin}"),
                format!("/v1/lineage/{lin}/verify"),
                format!("/v1/evidence?lineageId={lin}"),
                format!("/v1/evidence?decisionId={id}"),
            ] {
                get(&s, &p, tok, A).await.assert_error(404, "not_found");
            }
        }
        // Another agent's registration entry, and the agent itself.
        let reg = other_reg.body["lineageId"].as_str().unwrap();
        get(&s, &format!("/v1/lineage/{reg}"), tok, A)
            .await
            .assert_error(404, "not_found");
        let r = get(&s, &format!("/v1/agents/{other}"), tok, A).await;
        r.assert_error(404, "not_found");
        assert_eq!(r.body["message"], format!("unknown agentId '{other}'"));
        assert_eq!(get(&s, &format!("/v1/agents/{me}"), tok, A).await.status, 200);
        let list = get(&s, "/v1/agents", tok, A).await;
        assert_eq!(list.status, 200, "{}", list.body);
        let names: Vec<&str> = list.body["agents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["billing-bot"]);
        // Its own records.
        for d in &mine {
            let id = d["decisionId"].as_str().unwrap();
            assert_eq!(get(&s, &format!("/v1/decisions/{id}"), tok, A).await.status, 200);
            let lin = d["lineageId"].as_str().unwrap();
            assert_eq!(
                get(&s, &format!("/v1/lineage/{lin}/verify"), tok, A).await.status,
                200
            );
        }
        for q in ["traceId=5a5a0000000000000000000000000001", "executionId=exec_5a"] {
            let r = get(&s, &format!("/v1/evidence?{q}"), tok, A).await;
            assert_eq!(r.status, 200, "{}", r.body);
            let got: BTreeSet<String> = r.body["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["lineageId"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(got, ids(&mine, "lineageId"), "{q}");
        }
    }

    // The unbound view: everything of the tenant, and the system entries, which bound tokens read too.
    let aud = s.token(A, Role::Auditor);
    let r = get(
        &s,
        "/v1/evidence?traceId=5a5a0000000000000000000000000001",
        &s.token(A, Role::Agent),
        A,
    )
    .await;
    assert_eq!(r.body["entries"].as_array().unwrap().len(), 4, "{}", r.body);
    assert_eq!(
        get(&s, "/v1/agents", &aud, A).await.body["agents"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (size, root) = checkpoint(&s, &aud, A).await;
    let full = stream(&s, &aud, A, size).await;
    assert!(full.iter().all(|l| matches!(l, Line::Entry(_))));
    let sys = full
        .iter()
        .filter_map(Line::entry)
        .find(|e| e["kind"] == "policy.activated")
        .unwrap();
    let r = get(
        &s,
        &format!("/v1/lineage/{}", sys["lineageId"].as_str().unwrap()),
        &bound,
        A,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // The bound auditor's stream: the other agent's registration and decisions are leaf hashes.
    let view = stream(&s, &bound_aud, A, size).await;
    assert_eq!(mth(&view.iter().map(Line::leaf).collect::<Vec<_>>()), root);
    let withheld: BTreeSet<u64> = view
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l, Line::Withheld(_)))
        .map(|(i, _)| i as u64)
        .collect();
    let mut want: BTreeSet<u64> = theirs
        .iter()
        .map(|d| d["ledgerIndex"].as_u64().unwrap())
        .collect();
    want.insert(
        full.iter()
            .position(|l| {
                l.entry()
                    .is_some_and(|e| e["lineageId"] == other_reg.body["lineageId"])
            })
            .unwrap() as u64,
    );
    assert_eq!(withheld, want);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// 4. Pages.

/// Regression: one evidence call returned every entry of a trace (up to 10,000 with their proofs, 25 MB). Now a
/// call returns at most `limit` entries (default 100, at most 1000) and `x-kla-next-cursor` names the next page;
/// the pages together hold every entry once, in ledger order, and each page is a bundle that verifies on its own.
#[tokio::test]
async fn evidence_answers_are_pages_with_a_cursor() {
    let s = Server::start().await;
    let tok = s.token(A, Role::Agent);
    let agent = s.register(&tok, A, "paged-bot").await;
    let mut want = Vec::new();
    for i in 0..120 {
        let d = decide(
            &s,
            &tok,
            A,
            json!({"agentId": agent, "action": "lookup_policy", "context": {"i": i}, "traceId": "a0a00000000000000000000000000002"}),
        )
        .await;
        want.push(d["lineageId"].as_str().unwrap().to_owned());
    }
    let page = |q: String| {
        let s = &s;
        let tok = &tok;
        async move {
            let r = get(
                s,
                &format!("/v1/evidence?traceId=a0a00000000000000000000000000002{q}"),
                tok,
                A,
            )
            .await;
            assert_eq!(r.status, 200, "{q}: {}", r.body);
            let next = r.header("x-kla-next-cursor").map(str::to_owned);
            (r.body, next)
        }
    };
    let (first, next) = page(String::new()).await;
    assert_eq!(
        first["entries"].as_array().unwrap().len(),
        100,
        "the default limit"
    );
    let next = next.expect("a cursor to the rest");
    let (second, end) = page(format!("&cursor={next}")).await;
    assert_eq!(second["entries"].as_array().unwrap().len(), 20);
    assert_eq!(end, None, "no cursor after the last page");
    for b in [&first, &second] {
        for e in b["entries"].as_array().unwrap() {
            let l = leaf(e["entry"].as_str().unwrap().as_bytes());
            assert_eq!(l, ph(&e["leafHash"]));
            let r = root_from_inclusion(
                e["ledgerIndex"].as_u64().unwrap(),
                b["treeSize"].as_u64().unwrap(),
                &l,
                &hashes(&e["inclusionProof"]),
            );
            assert_eq!(r, Some(ph(&b["rootHash"])));
        }
    }
    // `kla verify` takes a page as it is.
    let dir = tempfile::tempdir().unwrap();
    let vkey = s
        .req(Method::GET, "/v1/ledger/key", &tok, A)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let path = dir.path().join("page2.json");
    std::fs::write(&path, second.to_string()).unwrap();
    let out = std::process::Command::new(kla_bin())
        .arg("verify")
        .arg(&path)
        .args(["--key", vkey.trim()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    // Small pages chain to the same entries, each once, in ledger order.
    let mut got = Vec::new();
    let mut cursor = String::new();
    let mut calls = 0;
    loop {
        let (b, next) = page(format!("&limit=7{cursor}")).await;
        let n = b["entries"].as_array().unwrap().len();
        assert!(n <= 7);
        got.extend(
            b["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["lineageId"].as_str().unwrap().to_owned()),
        );
        calls += 1;
        match next {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(calls, 120usize.div_ceil(7));
    assert_eq!(got, want);
    let (all, none) = page("&limit=1000".into()).await;
    assert_eq!((all["entries"].as_array().unwrap().len(), none), (120, None));

    let agents_cursor = get(&s, "/v1/agents?limit=1", &tok, A).await;
    let foreign = agents_cursor.body["nextCursor"].as_str().map(str::to_owned);
    for q in [
        "&limit=0".to_owned(),
        "&limit=1001".to_owned(),
        "&limit=x".to_owned(),
        "&cursor=%21%21".to_owned(),
        "&cursor=ZXZpZGVuY2U6eA".to_owned(), // "evidence:x"
        format!("&cursor={}", foreign.unwrap_or_else(|| "YWdlbnRzOmE".into())),
    ] {
        get(
            &s,
            &format!("/v1/evidence?traceId=a0a00000000000000000000000000002{q}"),
            &tok,
            A,
        )
        .await
        .assert_error(400, "invalid_request");
    }
    s.stop().await;
}

/// Regression: `GET /v1/agents` answered every agent of the tenant at once. Now it is pages of at most `limit`
/// (default 100, at most 1000) with `nextCursor` (`null` on the last page), and a page also stops before its
/// manifests pass 4 MiB.
#[tokio::test]
async fn agent_lists_are_pages_with_a_cursor() {
    let s = Server::start().await;
    let tok = s.token(A, Role::Admin);
    // 33 agents whose manifests are about 131 KB each (1024 tools of 125 bytes, near the longest name):
    // about 4.3 MB in all.
    let mut names = Vec::new();
    for i in 0..33 {
        let name = format!("bot-{i:02}");
        let tools: Vec<String> = (0..1024)
            .map(|t| format!("t{i:02}-{t:04}-{}", "x".repeat(116)))
            .collect();
        let r = send(
            s.req(Method::POST, "/v1/agents", &tok, A)
                .json(&json!({"name": name, "tools": tools})),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        names.push(name);
    }
    let list = |q: String| {
        let s = &s;
        let tok = &tok;
        async move {
            let r = get(s, &format!("/v1/agents{q}"), tok, A).await;
            assert_eq!(r.status, 200, "{q}: {}", r.body);
            let got: Vec<String> = r.body["agents"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a["name"].as_str().unwrap().to_owned())
                .collect();
            (got, r.body["nextCursor"].clone())
        }
    };
    // The byte budget cuts the default page short of 33.
    let (first, next) = list(String::new()).await;
    assert!(first.len() < 33 && first.len() > 1, "{}", first.len());
    assert!(next.is_string(), "{next}");
    let (rest, end) = list(format!("?cursor={}", next.as_str().unwrap())).await;
    assert_eq!(end, Value::Null);
    assert_eq!([first, rest].concat(), names);
    // Small pages.
    let mut got = Vec::new();
    let mut q = "?limit=5".to_owned();
    let mut pages = 0;
    loop {
        let (page, next) = list(q.clone()).await;
        assert!(page.len() <= 5);
        got.extend(page);
        pages += 1;
        match next.as_str() {
            Some(c) => q = format!("?limit=5&cursor={c}"),
            None => break,
        }
    }
    assert_eq!((got, pages), (names, 7));
    for q in [
        "?limit=0",
        "?limit=1001",
        "?limit=-1",
        "?cursor=bm9wZQ",
        "?page=2",
    ] {
        get(&s, &format!("/v1/agents{q}"), &tok, A)
            .await
            .assert_error(400, "invalid_request");
    }
    s.stop().await;
}

/// The entry stream's 10,000-entry cap also has a byte budget: a response stops before the entries it covers pass
/// 4 MiB, the same cut for every caller, and following `x-kla-next` still yields every leaf. Evidence pages stop
/// at the same budget.
#[tokio::test]
async fn large_entries_split_stream_and_evidence_pages_by_bytes() {
    let s = Server::start().await;
    let tok = s.token(A, Role::Agent);
    let agent = s.register(&tok, A, "big-bot").await;
    // Five decisions of about 900 KB each (the default body limit is 1 MiB).
    let mut big = Vec::new();
    for i in 0..5 {
        let d = decide(
            &s,
            &tok,
            A,
            json!({"agentId": agent, "action": "lookup_policy", "traceId": "b1b10000000000000000000000000003",
                   "context": {"blob": format!("{i}{}", "y".repeat(900_000))}}),
        )
        .await;
        big.push(d["lineageId"].as_str().unwrap().to_owned());
    }
    let aud = s.token(A, Role::Auditor);
    let other = s.token(B, Role::Auditor);
    let (size, root) = checkpoint(&s, &aud, A).await;
    let first = entries_page(&s, &aud, A, 0, size).await;
    assert!(first.next < size, "one response does not hold every entry");
    assert!(first.bytes <= 4 << 20, "{} bytes", first.bytes);
    let theirs = entries_page(&s, &other, B, 0, size).await;
    assert_eq!(theirs.next, first.next, "the cut does not depend on the caller");
    assert!(
        theirs.bytes < 64 << 10,
        "withheld lines are small: {}",
        theirs.bytes
    );
    let all = stream(&s, &aud, A, size).await;
    assert_eq!(mth(&all.iter().map(Line::leaf).collect::<Vec<_>>()), root);
    let all_b = stream(&s, &other, B, size).await;
    assert_eq!(mth(&all_b.iter().map(Line::leaf).collect::<Vec<_>>()), root);

    // Evidence: four of the five fit 4 MiB.
    let r = get(
        &s,
        "/v1/evidence?traceId=b1b10000000000000000000000000003",
        &tok,
        A,
    )
    .await;
    assert_eq!(r.status, 200);
    let n1 = r.body["entries"].as_array().unwrap().len();
    assert!((1..5).contains(&n1), "{n1}");
    let next = r.header("x-kla-next-cursor").expect("a cursor").to_owned();
    let r2 = get(
        &s,
        &format!("/v1/evidence?traceId=b1b10000000000000000000000000003&cursor={next}"),
        &tok,
        A,
    )
    .await;
    assert_eq!(r2.status, 200);
    let got: Vec<String> = [&r.body, &r2.body]
        .iter()
        .flat_map(|b| b["entries"].as_array().unwrap().clone())
        .map(|e| e["lineageId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, big);
    assert!(r2.header("x-kla-next-cursor").is_none());
    s.stop().await;
}
