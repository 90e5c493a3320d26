//! Policy packs through the real server: outcomes, precedence, shadow, signatures, reload, rollback, fail-closed,
//! and the pack CLI.

use crate::harness::*;
use kla::auth::Role;
use kla::policy::{PackSigner, sign_pack_dir};
use reqwest::Method;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const T: &str = "acme-prod";

/// A temp folder of packs and the key that signs them, trusted by the server under test.
struct Packs {
    root: tempfile::TempDir,
    signer: PackSigner,
    pub_key: PathBuf,
}

impl Packs {
    fn new() -> Packs {
        let root = tempfile::tempdir().unwrap();
        let signer = PackSigner::generate();
        let keys = tempfile::tempdir().unwrap().keep();
        let pub_key = keys.join("trusted.pub");
        signer.write(&keys.join("signing.key"), &pub_key).unwrap();
        Packs {
            root,
            signer,
            pub_key,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// Writes `pack.yaml` for pack `name` and signs it.
    fn write(&self, name: &str, version: &str, default: &str, mode: &str, rules: &str) -> PathBuf {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let yaml = format!(
            "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: {name}, version: {version}}}\nspec:\n  defaultDecision: {default}\n  mode: {mode}\n  rules:\n{rules}"
        );
        std::fs::write(dir.join("pack.yaml"), yaml).unwrap();
        sign_pack_dir(&dir, &self.signer).unwrap();
        dir
    }

    async fn server(&self, deadline: Option<&str>) -> Server {
        let (root, key) = (self.root.path().to_owned(), self.pub_key.clone());
        let deadline = deadline.map(str::to_owned);
        Server::start_with(move |c| {
            c.policies = Some(root);
            c.trusted_key = vec![key];
            c.policy_deadline = deadline;
        })
        .await
    }
}

const ALPHA: &str = r#"    - id: external-email
      match: {actions: ["send_email"]}
      decision: warn
      reasonCode: EXTERNAL_EMAIL
    - id: refund-over-threshold
      match: {actions: ["execute_refund"], agents: ["*"]}
      when: "input.context.amount > 1000"
      decision: require_approval
      reasonCode: AMOUNT_OVER_THRESHOLD
      message: Refunds over 1000 need approval
      approval: {timeout: 15m, onTimeout: block}
    - id: no-deletes
      match: {actions: ["delete_*"]}
      decision: block
      reasonCode: DESTRUCTIVE_ACTION
"#;

const BETA: &str = r#"    - id: refund-seen
      match: {actions: ["execute_refund"]}
      decision: warn
      reasonCode: REFUND_SEEN
    - id: bad-currency
      match: {actions: ["execute_*"]}
      when: ["input.context.currency == \"XXX\"", "input.context.amount > 0"]
      decision: block
      reasonCode: BAD_CURRENCY
    - id: would-block-email
      mode: shadow
      match: {actions: ["send_*"]}
      decision: block
      reasonCode: EMAIL_SHADOW
"#;

/// One evaluate case: action, context → decision, reason codes.
async fn check(
    s: &Server,
    tok: &str,
    agent: &str,
    action: &str,
    ctx: Value,
    want: &str,
    codes: &[&str],
) -> Value {
    let r = s.evaluate(tok, T, agent, action, ctx.clone()).await;
    assert_eq!(r.status, 200, "{action} {ctx}: {}", r.body);
    assert_eq!(r.body["decision"], want, "{action} {ctx}: {}", r.body);
    assert_eq!(r.body["reasonCodes"], json!(codes), "{action} {ctx}: {}", r.body);
    assert_eq!(r.body["requiresDeskApproval"], want == "require_approval");
    assert!(r.body["decisionId"].as_str().unwrap().starts_with("dec_"));
    assert!(r.body["lineageId"].as_str().unwrap().starts_with("lr_"));
    r.body
}

#[tokio::test]
async fn each_outcome_and_precedence_across_two_packs() {
    let p = Packs::new();
    p.write("alpha", "1.0.0", "allow", "enforce", ALPHA);
    p.write("beta", "2.1.0", "allow", "enforce", BETA);
    let s = p.server(None).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "claims-triage").await;

    check(&s, &tok, &agent, "lookup_policy", json!({}), "allow", &[]).await;
    let warn = check(
        &s,
        &tok,
        &agent,
        "send_email",
        json!({"to": "x@y"}),
        "warn",
        &["EXTERNAL_EMAIL"],
    )
    .await;
    // The shadow rule matched and is reported, but did not change the answer.
    let shadow: Vec<&Value> = warn["matchedRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["shadow"] == true)
        .collect();
    assert_eq!(shadow.len(), 1, "{warn}");
    assert_eq!(shadow[0]["id"], "would-block-email");
    assert_eq!(shadow[0]["pack"], "beta");
    assert_eq!(warn["wouldDecide"], "block");
    check(
        &s,
        &tok,
        &agent,
        "execute_refund",
        json!({"amount": 50}),
        "warn",
        &["REFUND_SEEN"],
    )
    .await;
    // The KLA Control Plane API's example: both packs match; require_approval beats warn.
    let ra = check(
        &s,
        &tok,
        &agent,
        "execute_refund",
        json!({"amount": 1250.00, "user_id": "usr_22"}),
        "require_approval",
        &["AMOUNT_OVER_THRESHOLD"],
    )
    .await;
    let ids: Vec<&str> = ra["matchedRules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"refund-over-threshold") && ids.contains(&"refund-seen"),
        "every matching rule is reported: {ids:?}"
    );
    let approval = ra["matchedRules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "refund-over-threshold")
        .unwrap();
    assert_eq!(approval["approval"]["onTimeout"], "block");
    // Block beats everything, across packs; a `when` list needs all of its expressions.
    check(
        &s,
        &tok,
        &agent,
        "execute_refund",
        json!({"amount": 5000, "currency": "XXX"}),
        "block",
        &["BAD_CURRENCY"],
    )
    .await;
    check(
        &s,
        &tok,
        &agent,
        "execute_refund",
        json!({"amount": 0, "currency": "XXX"}),
        "warn",
        &["REFUND_SEEN"],
    )
    .await;
    check(
        &s,
        &tok,
        &agent,
        "delete_customer",
        json!({}),
        "block",
        &["DESTRUCTIVE_ACTION"],
    )
    .await;
    // The answer names both packs with versions and digests.
    let packs: Vec<(String, String)> = ra["policy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        packs,
        [("alpha".into(), "1.0.0".into()), ("beta".into(), "2.1.0".into())]
    );
    assert!(ra["policy"][0]["digest"].as_str().unwrap().len() >= 64);
    assert!(ra["evaluationMicros"].is_u64());
}

#[tokio::test]
async fn a_shadow_pack_reports_but_never_decides() {
    let p = Packs::new();
    p.write(
        "observe",
        "0.1.0",
        "block",
        "shadow",
        "    - {id: block-all, match: {actions: [\"*\"]}, decision: block, reasonCode: WOULD_BLOCK}\n",
    );
    p.write(
        "base",
        "1.0.0",
        "allow",
        "enforce",
        "    - {id: warn-mail, match: {actions: [send_email]}, decision: warn, reasonCode: MAIL}\n",
    );
    let s = p.server(None).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "a").await;
    let d = check(&s, &tok, &agent, "anything", json!({}), "allow", &[]).await;
    assert_eq!(d["wouldDecide"], "block");
    assert_eq!(d["matchedRules"][0]["shadow"], true);
    assert_eq!(d["matchedRules"][0]["reasonCode"], "WOULD_BLOCK");
    check(&s, &tok, &agent, "send_email", json!({}), "warn", &["MAIL"]).await;
}

#[tokio::test]
async fn the_default_pack_is_enforced_with_no_flags() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "claims-triage").await;
    check(
        &s,
        &tok,
        &agent,
        "delete_customer",
        json!({}),
        "block",
        &["DESTRUCTIVE_ACTION"],
    )
    .await;
    check(
        &s,
        &tok,
        &agent,
        "execute_refund",
        json!({"amount": 1250.00, "user_id": "usr_22"}),
        "require_approval",
        &["AMOUNT_OVER_THRESHOLD"],
    )
    .await;
    check(&s, &tok, &agent, "lookup_policy", json!({"id": 7}), "allow", &[]).await;
    let admin = s.token(T, Role::Admin);
    let st = send(s.req(Method::GET, "/v1/policies", &admin, T)).await;
    assert_eq!(st.status, 200, "{}", st.body);
    assert!(st.body["generation"].is_u64(), "{}", st.body);
    assert_eq!(st.body["packs"].as_array().unwrap().len(), 1, "{}", st.body);
    assert_eq!(st.body["packs"][0]["name"], "kla-default");
    assert_eq!(st.body["packs"][0]["mode"], "enforce");
    assert!(st.body["packs"][0]["signerKeyId"].is_string());
    assert_eq!(st.body["refused"], json!([]), "{}", st.body);
}

fn tamper(dir: &Path) {
    let p = dir.join("pack.yaml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, text.replace("decision: block", "decision: allow")).unwrap();
}

#[tokio::test]
async fn refused_packs_leave_the_last_good_one_serving() {
    let p = Packs::new();
    let rules = "    - {id: no-deletes, match: {actions: [\"delete_*\"]}, decision: block, reasonCode: DESTRUCTIVE_ACTION}\n";
    let dir = p.write("guard", "1.0.0", "allow", "enforce", rules);
    let s = p.server(None).await;
    let tok = s.token(T, Role::Agent);
    let admin = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "a").await;
    check(
        &s,
        &tok,
        &agent,
        "delete_x",
        json!({}),
        "block",
        &["DESTRUCTIVE_ACTION"],
    )
    .await;

    // A refusal is reported in the answer, not as an HTTP error.
    let reload = || async {
        let r = send(s.req(Method::POST, "/v1/policies/reload", &admin, T)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    };
    let assert_refused = |st: &Value, needle: &str| {
        let reason = st["lastRefusal"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(reason.contains(needle), "refusal should mention {needle:?}: {st}");
        assert_eq!(
            st["packs"][0]["version"], "1.0.0",
            "the last good pack stays active: {st}"
        );
    };

    // 1. A file changed after signing.
    tamper(&dir);
    assert_refused(&reload().await, "pack.yaml");
    check(
        &s,
        &tok,
        &agent,
        "delete_x",
        json!({}),
        "block",
        &["DESTRUCTIVE_ACTION"],
    )
    .await;
    // 2. A file added after signing.
    p.write("guard", "1.0.0", "allow", "enforce", rules);
    std::fs::write(dir.join("extra.rego"), "package extra\nx := 1\n").unwrap();
    assert_refused(&reload().await, "extra.rego");
    std::fs::remove_file(dir.join("extra.rego")).unwrap();
    // 3. Signed by a key the server does not trust.
    let stranger = PackSigner::generate();
    std::fs::write(
        dir.join("pack.yaml"),
        std::fs::read_to_string(dir.join("pack.yaml"))
            .unwrap()
            .replace("1.0.0", "6.6.6"),
    )
    .unwrap();
    sign_pack_dir(&dir, &stranger).unwrap();
    let st = reload().await;
    assert_refused(&st, "");
    assert!(
        st["lastRefusal"]["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("key"),
        "{st}"
    );
    // 4. Unsigned (signature file removed).
    std::fs::remove_file(dir.join("pack.sig.json")).unwrap();
    assert_refused(&reload().await, "");
    // 5. Invalid content, correctly signed (`kla pack sign` refuses to sign it, so sign the files directly):
    //    refused with file, rule and line.
    std::fs::write(
        dir.join("pack.yaml"),
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {name: guard, version: 1.0.1}\nspec:\n  rules:\n    - {id: bad, match: {actions: [\"[\"]}, decision: block}\n",
    )
    .unwrap();
    let files = kla::policy::PackFiles::read_dir(&dir).unwrap();
    let sig = kla::policy::sign_files(&files, "guard", "1.0.1", &p.signer).unwrap();
    std::fs::write(dir.join("pack.sig.json"), sig).unwrap();
    let st = reload().await;
    assert_refused(&st, "pack.yaml");
    assert!(
        st["lastRefusal"]["reason"].as_str().unwrap().contains("bad"),
        "names the rule: {st}"
    );
    // Through all of that, decisions kept coming from the good pack.
    check(
        &s,
        &tok,
        &agent,
        "delete_x",
        json!({}),
        "block",
        &["DESTRUCTIVE_ACTION"],
    )
    .await;
    // A valid new version is swapped in.
    p.write("guard", "2.0.0", "allow", "enforce", "    - {id: warn-deletes, match: {actions: [\"delete_*\"]}, decision: warn, reasonCode: DELETE_WARN}\n");
    let st = reload().await;
    assert_eq!(st["packs"][0]["version"], "2.0.0", "{st}");
    check(&s, &tok, &agent, "delete_x", json!({}), "warn", &["DELETE_WARN"]).await;
    // Reload is for admins only.
    send(s.req(Method::POST, "/v1/policies/reload", &tok, T))
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test]
async fn the_watcher_reloads_on_file_change() {
    let p = Packs::new();
    p.write(
        "w",
        "1.0.0",
        "allow",
        "enforce",
        "    - {id: r, match: {actions: [act]}, decision: warn, reasonCode: V1}\n",
    );
    let s = p.server(None).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "a").await;
    check(&s, &tok, &agent, "act", json!({}), "warn", &["V1"]).await;
    p.write(
        "w",
        "2.0.0",
        "allow",
        "enforce",
        "    - {id: r, match: {actions: [act]}, decision: block, reasonCode: V2}\n",
    );
    let mut last = Value::Null;
    for _ in 0..100 {
        last = s.evaluate(&tok, T, &agent, "act", json!({})).await.body;
        if last["decision"] == "block" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        last["reasonCodes"],
        json!(["V2"]),
        "the watcher swapped in v2: {last}"
    );
}

#[tokio::test]
async fn hot_reload_under_load_never_fails_or_misdecides() {
    let p = Packs::new();
    let v = |version: &str, decision: &str, code: &str| {
        p.write(
            "swap",
            version,
            "allow",
            "enforce",
            &format!(
                "    - {{id: r, match: {{actions: [act]}}, decision: {decision}, reasonCode: {code}}}\n"
            ),
        );
    };
    v("1.0.0", "warn", "V1");
    let s = p.server(None).await;
    let tok = s.token(T, Role::Agent);
    let admin = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "a").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (base, client, tok, agent, stop) = (
            s.base.clone(),
            s.client.clone(),
            tok.clone(),
            agent.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = send(
                    client
                        .post(format!("{base}/v1/decisions.evaluate"))
                        .bearer_auth(&tok)
                        .header("x-tenant-id", T)
                        .json(&json!({"agentId": agent, "action": "act", "context": {}})),
                )
                .await;
                assert_eq!(r.status, 200, "no request fails during a swap: {}", r.body);
                // The decision must be exactly what the pack version it names says.
                let version = r.body["policy"][0]["version"].as_str().unwrap().to_owned();
                let expected = match version.as_str() {
                    "1.0.0" | "3.1.0" => ("warn", "V1"),
                    "2.0.0" => ("block", "V2"),
                    "3.0.0" => ("require_approval", "V3"),
                    other => panic!("unexpected version {other}"),
                };
                assert_eq!(
                    (
                        r.body["decision"].as_str().unwrap(),
                        r.body["reasonCodes"][0].as_str().unwrap()
                    ),
                    expected,
                    "{}",
                    r.body
                );
                seen.push(version);
            }
            seen
        }));
    }
    for (version, decision, code) in [
        ("2.0.0", "block", "V2"),
        ("3.0.0", "require_approval", "V3"),
        ("3.1.0", "warn", "V1"),
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        v(version, decision, code);
        let st = send(s.req(Method::POST, "/v1/policies/reload", &admin, T)).await;
        assert_eq!(st.status, 200, "{}", st.body);
        assert_eq!(st.body["packs"][0]["version"], version);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = std::collections::BTreeSet::new();
    let mut total = 0;
    for w in workers {
        let seen = w.await.expect("a worker saw a failed or mis-decided request");
        total += seen.len();
        versions.extend(seen);
    }
    assert!(total > 50, "load was applied ({total} requests)");
    assert_eq!(
        versions.len(),
        4,
        "every version served some requests: {versions:?}"
    );
}

#[tokio::test]
async fn fail_closed_without_policy_and_on_engine_trouble() {
    // No valid pack at all: block with POLICY_UNAVAILABLE.
    let empty = Packs::new();
    let s = empty.server(None).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "a").await;
    check(
        &s,
        &tok,
        &agent,
        "lookup_policy",
        json!({}),
        "block",
        &["POLICY_UNAVAILABLE"],
    )
    .await;
    drop(s);
    // An unsigned pack is never loaded.
    let unsigned = Packs::new();
    let dir = unsigned.write(
        "u",
        "1.0.0",
        "allow",
        "enforce",
        "    - {id: r, match: {actions: [x]}, decision: warn, reasonCode: W}\n",
    );
    std::fs::remove_file(dir.join("pack.sig.json")).unwrap();
    let s = unsigned.server(None).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "a").await;
    check(&s, &tok, &agent, "x", json!({}), "block", &["POLICY_UNAVAILABLE"]).await;
    drop(s);
    // A rule that runs past the deadline: block with POLICY_ERROR, promptly.
    let slow = Packs::new();
    // (An array literal: `numbers.range` is refused in packs. 40^4 iterations, under the 1,024-column limit.)
    let a = (0..40).map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let when = format!(
        "count([1 | some i in [{a}]; some j in [{a}]; some k in [{a}]; some l in [{a}]; i + j + k + l > 0]) > 0"
    );
    slow.write("slow", "1.0.0", "allow", "enforce", &format!("    - {{id: spin, match: {{actions: [spin]}}, when: \"{when}\", decision: allow}}\n    - {{id: fast, match: {{actions: [fast]}}, decision: warn, reasonCode: FAST}}\n"));
    let s = slow.server(Some("5ms")).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "a").await;
    let d = check(&s, &tok, &agent, "spin", json!({}), "block", &["POLICY_ERROR"]).await;
    assert!(
        d["evaluationMicros"].as_u64().unwrap() < 100_000,
        "stopped near the deadline: {d}"
    );
    check(&s, &tok, &agent, "fast", json!({}), "warn", &["FAST"]).await;
}

/// The pack CLI through the real binary: keygen, sign, verify, test, eval, and a server that trusts the new key.
#[tokio::test]
async fn pack_cli_round_trip_through_the_binary() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = kla(args);
        (out.status.success(), output_text(&out))
    };
    let (key, public) = (tmp.path().join("ops.key"), tmp.path().join("ops.pub"));
    let (k, p) = (key.to_str().unwrap(), public.to_str().unwrap());
    assert!(run(&["pack", "keygen", "--private", k, "--public", p]).0);
    // Copy the payments example and sign it with the new key.
    let pack = tmp.path().join("packs/payments");
    std::fs::create_dir_all(pack.join("tests")).unwrap();
    for f in ["pack.yaml", "tests/payments.yaml"] {
        std::fs::copy(repo_path("examples/packs/payments").join(f), pack.join(f)).unwrap();
    }
    let d = pack.to_str().unwrap();
    let (ok, out) = run(&["pack", "test", d]);
    assert!(ok, "the example's suite passes: {out}");
    assert!(run(&["pack", "sign", d, "--key", k]).0);
    let (ok, out) = run(&["pack", "verify", d, "--key", p]);
    assert!(ok, "{out}");
    let input = tmp.path().join("input.json");
    std::fs::copy(repo_path("examples/packs/payments/input.json"), &input).unwrap();
    let (ok, out) = run(&["pack", "eval", d, "--input", input.to_str().unwrap()]);
    assert!(ok && out.contains("require_approval"), "{out}");
    // Tampering is caught by verify, and by the default key which never signed it.
    std::fs::write(
        pack.join("pack.yaml"),
        std::fs::read_to_string(pack.join("pack.yaml")).unwrap() + "\n# edited\n",
    )
    .unwrap();
    assert!(!run(&["pack", "verify", d, "--key", p]).0);
    assert!(
        !run(&[
            "pack",
            "verify",
            repo_path("examples/packs/payments").to_str().unwrap(),
            "--key",
            p
        ])
        .0
    );
    // A failing suite exits non-zero.
    std::fs::write(pack.join("tests/payments.yaml"), "cases:\n  - name: wrong on purpose\n    input: {agent: {id: a}, action: delete_x}\n    expect: {decision: allow}\n").unwrap();
    assert!(!run(&["pack", "test", d]).0);
}

/// Recursive Rego (a rule or function of the pack's own modules that calls itself) compiles, so it must
/// fail closed when evaluated, like any runaway rule, rather than take the server down; here an agent's input
/// decides whether the recursion runs.
#[tokio::test]
async fn recursive_rego_fails_closed_and_the_server_keeps_serving() {
    let packs = Packs::new();
    std::fs::create_dir_all(packs.dir("rec")).unwrap();
    std::fs::write(
        packs.dir("rec").join("lib.rego"),
        "package lib\n\ndeep if {\n  input.context.deep\n  data.lib.deep\n}\n\nf(x) := data.lib.f(x)\n",
    )
    .unwrap();
    packs.write(
        "rec",
        "1.0.0",
        "allow",
        "enforce",
        "    - {id: loop, match: {actions: [pay]}, when: data.lib.deep, decision: allow}\n    - {id: fn, match: {actions: [call]}, when: data.lib.f(1) == 1, decision: allow}\n    - {id: shadow-loop, mode: shadow, match: {actions: [read]}, when: data.lib.deep, decision: block}\n    - {id: fast, match: {actions: [read]}, decision: warn, reasonCode: FAST}\n    - {id: itself, match: {actions: [me]}, when: data.kla_when.holds, decision: allow}\n",
    );
    // A deadline far above what the instruction cap takes, so the cap is what stops the recursion.
    let s = packs.server(Some("30s")).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "a").await;
    check(&s, &tok, &agent, "pay", json!({"deep": false}), "allow", &[]).await;
    let d = check(
        &s,
        &tok,
        &agent,
        "pay",
        json!({"deep": true}),
        "block",
        &["POLICY_ERROR"],
    )
    .await;
    assert!(d["error"].as_str().is_none_or(|e| !e.contains("deadline")), "{d}");
    check(&s, &tok, &agent, "call", json!({}), "block", &["POLICY_ERROR"]).await;
    check(&s, &tok, &agent, "me", json!({}), "block", &["POLICY_ERROR"]).await;
    // A runaway shadow rule is ignored (it ran out of instructions, not of time).
    check(&s, &tok, &agent, "read", json!({"deep": true}), "warn", &["FAST"]).await;
    check(&s, &tok, &agent, "pay", json!({"deep": false}), "allow", &[]).await;
}

#[tokio::test]
async fn an_older_signed_pack_is_a_rollback_refused_across_restarts() {
    let p = Packs::new();
    let rules =
        |d: &str| format!("    - {{id: r, match: {{actions: [act]}}, decision: {d}, reasonCode: R}}\n");
    p.write("guard", "1.1.0", "allow", "enforce", &rules("block"));
    let data = tempfile::tempdir().unwrap();
    let start = |allow_rollback: bool| {
        let mut c = raw(data.path());
        c.policies = Some(p.root.path().to_owned());
        c.trusted_key = vec![p.pub_key.clone()];
        c.allow_pack_rollback = allow_rollback.then_some(true);
        Server::start_cfg(c, None)
    };
    let s = start(false).await;
    let (tok, admin) = (s.token(T, Role::Agent), s.token(T, Role::Admin));
    let agent = s.register(&tok, T, "a").await;
    check(&s, &tok, &agent, "act", json!({}), "block", &["R"]).await;

    // The older version, validly signed by the trusted key, put back: refused, 1.1.0 keeps serving.
    p.write("guard", "1.0.0", "allow", "enforce", &rules("allow"));
    let st = send(s.req(Method::POST, "/v1/policies/reload", &admin, T)).await;
    assert_eq!(st.status, 200, "{}", st.body);
    let reason = st.body["lastRefusal"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("rollback refused: guard 1.0.0 is older than 1.1.0"),
        "{}",
        st.body
    );
    assert_eq!(st.body["packs"][0]["version"], "1.1.0", "{}", st.body);
    check(&s, &tok, &agent, "act", json!({}), "block", &["R"]).await;
    s.stop().await;

    // A restart with only 1.0.0 on disk: the floor is in the store, so nothing loads and kla fails closed.
    let s = start(false).await;
    let st = send(s.req(Method::GET, "/v1/policies", &admin, T)).await;
    assert_eq!(st.status, 200, "{}", st.body);
    assert_eq!(st.body["packs"], json!([]), "{}", st.body);
    assert!(
        st.body["refused"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rollback refused")),
        "the refusal is reported: {}",
        st.body
    );
    check(
        &s,
        &tok,
        &agent,
        "act",
        json!({}),
        "block",
        &["POLICY_UNAVAILABLE"],
    )
    .await;
    s.stop().await;

    // The operator means it: --allow-pack-rollback loads 1.0.0 and lowers the floor, so a later restart
    // without the flag keeps it.
    for allow in [true, false] {
        let s = start(allow).await;
        let st = send(s.req(Method::GET, "/v1/policies", &admin, T)).await;
        assert_eq!(st.body["packs"][0]["version"], "1.0.0", "{}", st.body);
        check(&s, &tok, &agent, "act", json!({}), "allow", &["R"]).await;
        s.stop().await;
    }
}
