//! Action and agent names through the real server: one canonical form (ASCII lowercase), everything outside the
//! grammar refused with 400, so no spelling of a name escapes the rules written for it.

use crate::harness::*;
use kla::auth::{self, Role, keys};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const T: &str = "acme-names";

/// A small unsigned pack, with exact names (the index's hash-map path) and a `when` on `input.action`.
const RULES: &str = r#"    - {id: no-customer-deletes, match: {actions: [delete_customer]}, decision: block, reasonCode: NO_DELETE}
    - {id: refunds-need-a-human, match: {actions: [execute_refund]}, decision: require_approval, reasonCode: REFUND, approval: {timeout: 15m}}
    - {id: no-purge, when: "input.action == \"purge_cache\"", decision: block, reasonCode: NO_PURGE}
    - {id: triage-no-export, match: {actions: [export_claims], agents: [Claims-Triage]}, decision: block, reasonCode: NO_EXPORT}
"#;

/// A server over unsigned packs in a temp dir (kept alive by the returned guard).
async fn server(packs: &[(&str, &str)]) -> (Server, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    for (name, rules) in packs {
        write_pack(root.path(), name, rules);
    }
    let dir = root.path().to_owned();
    let s = Server::start_with(move |c| {
        c.policies = Some(dir);
        c.allow_unsigned = Some(true);
    })
    .await;
    (s, root)
}

/// Spellings that are not names: whitespace, control characters, look-alikes, invisible and bidi characters,
/// separators at an edge. Each is built around `name`.
fn not_names(name: &str) -> Vec<String> {
    let (head, tail) = name.split_at(1);
    let fullwidth: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() {
                char::from_u32(c as u32 - 'a' as u32 + 0xFF41).unwrap()
            } else {
                c
            }
        })
        .collect();
    let v = vec![
        format!("{name} "),
        format!(" {name}"),
        format!("{name}\0"),
        format!("{name}\n"),
        format!("{head}\t{tail}"),
        format!("{name}\u{a0}"),
        fullwidth,
        name.replacen('e', "\u{435}", 1), // Cyrillic е
        name.replacen('o', "\u{3bf}", 1), // Greek ο
        format!("{head}\u{301}{tail}"),   // combining acute accent
        format!("{head}\u{200d}{tail}"),  // zero-width joiner
        format!("{head}\u{200b}{tail}"),  // zero-width space
        format!("\u{feff}{name}"),        // byte order mark
        format!("{head}\u{ad}{tail}"),    // soft hyphen
        format!("\u{202e}{name}"),        // right-to-left override
        format!("{name}\u{2066}"),        // left-to-right isolate
        format!("{name}_"),
        format!(".{name}"),
        format!("{name}%00"),
        name.replacen('c', "\u{441}", 1), // Cyrillic с
    ];
    // A look-alike substitution for a letter the name lacks leaves the name itself.
    v.into_iter().filter(|v| v != name).collect()
}

/// The ledger's size (entries), read by an admin.
async fn ledger_size(s: &Server) -> u64 {
    let admin = s.token(T, Role::Admin);
    let r = send(s.req(Method::GET, "/v1/ledger/entries?start=0&end=0", &admin, T)).await;
    assert_eq!(r.status, 200);
    r.header("x-kla-tree-size").unwrap().parse().unwrap()
}

/// Asks for `action` and checks the outcome, reason code and that the decision (answer, stored record and ledger
/// entry) carries the canonical action.
async fn decided(s: &Server, tok: &str, agent: &str, action: &str, want: &str, code: &str, canonical: &str) {
    let r = s.evaluate(tok, T, agent, action, json!({})).await;
    assert_eq!(r.status, 200, "{action:?}: {}", r.body);
    assert_eq!(r.body["decision"], want, "{action:?}: {}", r.body);
    assert_eq!(r.body["reasonCodes"], json!([code]), "{action:?}: {}", r.body);
    assert_eq!(r.body["requiresDeskApproval"], want == "require_approval");
    let id = r.body["decisionId"].as_str().unwrap();
    let stored = send(s.req(Method::GET, &format!("/v1/decisions/{id}"), tok, T)).await;
    assert_eq!(stored.body["action"], canonical, "{}", stored.body);
    let lineage = r.body["lineageId"].as_str().unwrap();
    let entry = send(s.req(Method::GET, &format!("/v1/lineage/{lineage}"), tok, T)).await;
    assert_eq!(entry.body["body"]["action"], canonical, "{}", entry.body);
    assert!(
        entry.body["canonical"]
            .as_str()
            .unwrap()
            .contains(&format!("\"action\":\"{canonical}\"")),
        "{}",
        entry.body
    );
}

/// Every variant is refused with 400 naming the field and the grammar, and nothing is recorded.
async fn all_refused(s: &Server, tok: &str, agent: &str, variants: &[String]) {
    let before = ledger_size(s).await;
    for v in variants {
        let r = s.evaluate(tok, T, agent, v, json!({})).await;
        r.assert_error(400, "invalid_request");
        let m = r.body["message"].as_str().unwrap();
        assert!(m.starts_with("field 'action' "), "{v:?}: {m}");
        assert!(m.contains("an action name is 1-128 ASCII letters"), "{v:?}: {m}");
    }
    assert_eq!(ledger_size(s).await, before, "a refused action records nothing");
}

#[tokio::test]
async fn a_block_rule_blocks_every_case_of_its_name_and_other_spellings_are_refused() {
    let (s, _dir) = server(&[("names", RULES)]).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "support-bot").await;
    for action in [
        "delete_customer",
        "DELETE_CUSTOMER",
        "Delete_Customer",
        "dElEtE_cUsToMeR",
    ] {
        decided(&s, &tok, &agent, action, "block", "NO_DELETE", "delete_customer").await;
    }
    // A `when` comparing input.action sees the canonical form too.
    for action in ["purge_cache", "PURGE_CACHE", "Purge_Cache"] {
        decided(&s, &tok, &agent, action, "block", "NO_PURGE", "purge_cache").await;
    }
    all_refused(&s, &tok, &agent, &not_names("delete_customer")).await;
    // A name the rules do not mention is still allowed, in canonical form.
    let r = s.evaluate(&tok, T, &agent, "Lookup_Customer", json!({})).await;
    assert_eq!(r.body["decision"], "allow", "{}", r.body);
}

#[tokio::test]
async fn a_require_approval_rule_holds_every_case_of_its_name_and_other_spellings_are_refused() {
    let (s, _dir) = server(&[("names", RULES)]).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "billing-bot").await;
    for action in ["execute_refund", "EXECUTE_REFUND", "Execute_Refund"] {
        decided(
            &s,
            &tok,
            &agent,
            action,
            "require_approval",
            "REFUND",
            "execute_refund",
        )
        .await;
    }
    all_refused(&s, &tok, &agent, &not_names("execute_refund")).await;
}

#[tokio::test]
async fn the_default_pack_globs_match_every_case() {
    let s = Server::start().await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "support-bot").await;
    for action in ["DELETE_CUSTOMER", "Delete_Customer", "Drop_Table", "PURGE_LOGS"] {
        let r = s.evaluate(&tok, T, &agent, action, json!({})).await;
        assert_eq!(r.body["decision"], "block", "{action}: {}", r.body);
        assert_eq!(r.body["reasonCodes"], json!(["DESTRUCTIVE_ACTION"]));
    }
    for action in ["EXECUTE_PAYMENT", "Vendor_Payment", "Execute_Refund"] {
        let r = s.evaluate(&tok, T, &agent, action, json!({"amount": 5000})).await;
        assert_eq!(r.body["decision"], "require_approval", "{action}: {}", r.body);
    }
    let r = s
        .evaluate(
            &tok,
            T,
            &agent,
            "Send_Email",
            json!({"from": "a@acme.com", "to": ["b@evil.com"]}),
        )
        .await;
    assert_eq!(r.body["decision"], "warn", "{}", r.body);
    all_refused(&s, &tok, &agent, &not_names("delete_customer")).await;
}

#[tokio::test]
async fn an_agent_name_cannot_be_shadowed_by_another_spelling() {
    let (s, _dir) = server(&[("names", RULES)]).await;
    let tok = s.token(T, Role::Agent);
    let reg = |body: Value| {
        let s = &s;
        let tok = &tok;
        async move { send(s.req(Method::POST, "/v1/agents", tok, T).json(&body)).await }
    };
    let first = s.register(&tok, T, "claims-triage").await;
    // The same manifest under another case is the same registration: a duplicate of the first.
    let r = reg(agent_body("Claims-Triage")).await;
    r.assert_error(409, "conflict");
    assert!(r.body["message"].as_str().unwrap().contains(&first), "{}", r.body);
    // A changed manifest under another case is the next version of the same agent.
    let mut changed = agent_body("CLAIMS-TRIAGE");
    changed["description"] = json!("Triages claims, now with a new model");
    changed["tools"] = json!(["Lookup_Policy", "GitHub/Create_Issue"]);
    let r = reg(changed).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["agentId"], first.as_str());
    assert_eq!(r.body["version"], 2);
    let list = send(s.req(Method::GET, "/v1/agents", &tok, T)).await;
    let agents = list.body["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 1, "one agent: {}", list.body);
    assert_eq!(agents[0]["name"], "claims-triage");
    assert_eq!(agents[0]["manifest"]["name"], "claims-triage");
    assert_eq!(
        agents[0]["manifest"]["tools"],
        json!(["lookup_policy", "github/create_issue"])
    );
    // Look-alikes and other non-names are refused, naming the field.
    for name in [
        "cl\u{430}ims-triage",
        "claims-triage ",
        "claims\u{200d}-triage",
        "ｃlaims-triage",
        "claims/triage",
        "-claims-triage",
    ] {
        let r = reg(agent_body(name)).await;
        r.assert_error(400, "invalid_request");
        let m = r.body["message"].as_str().unwrap();
        assert!(
            m.starts_with("field 'name' ") && m.contains("an agent name is"),
            "{name:?}: {m}"
        );
    }
    let mut bad_tool = agent_body("claims-triage");
    bad_tool["tools"] = json!(["lookup_policy", "delete\u{200b}_customer"]);
    let r = reg(bad_tool).await;
    r.assert_error(400, "invalid_request");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("field 'tools[1]' "),
        "{}",
        r.body
    );
    // A pack's agent pattern written `Claims-Triage` governs the agent.
    let r = s.evaluate(&tok, T, &first, "Export_Claims", json!({})).await;
    assert_eq!(r.body["decision"], "block", "{}", r.body);
    assert_eq!(r.body["reasonCodes"], json!(["NO_EXPORT"]));
    // A token bound to the agent under another case acts for it, and for no other.
    let key = keys::load(&keys::token_key_path(&s.data_dir)).unwrap();
    let bound = auth::mint(
        key.private_pem.as_bytes(),
        vec![T.into()],
        Role::Agent,
        "bound".into(),
        Some("Claims-Triage".into()),
        Duration::from_secs(600),
    )
    .unwrap();
    let r = s.evaluate(&bound, T, &first, "lookup_policy", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let other = s.register(&tok, T, "claims-triage-2").await;
    s.evaluate(&bound, T, &other, "lookup_policy", json!({}))
        .await
        .assert_error(403, "forbidden");
}

#[tokio::test]
async fn a_pack_whose_pattern_can_never_match_a_name_is_refused() {
    let bad = "    - {id: homoglyph, match: {actions: [\"ｄｅｌｅｔｅ_*\"]}, decision: block}\n";
    let bad_agent = "    - {id: cyrillic, match: {agents: [\"cl\u{430}ims-triage\"]}, decision: block}\n";
    let (s, _dir) = server(&[("good", RULES), ("bad", bad), ("worse", bad_agent)]).await;
    let admin = s.token(T, Role::Admin);
    let st = send(s.req(Method::GET, "/v1/policies", &admin, T)).await;
    assert_eq!(st.status, 200, "{}", st.body);
    let active: Vec<&str> = st.body["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["good"], "{}", st.body);
    let reasons: Vec<&str> = st.body["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons.len(), 2, "{}", st.body);
    let (bad, worse) = if reasons[0].contains("homoglyph") {
        (reasons[0], reasons[1])
    } else {
        (reasons[1], reasons[0])
    };
    assert!(
        bad.contains("rule 'homoglyph'") && bad.contains("match.actions[0]") && bad.contains("U+FF44"),
        "{bad}"
    );
    assert!(
        worse.contains("rule 'cyrillic'") && worse.contains("match.agents[0]") && worse.contains("U+0430"),
        "{worse}"
    );
    // The good pack decides.
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "support-bot").await;
    let r = s.evaluate(&tok, T, &agent, "DELETE_CUSTOMER", json!({})).await;
    assert_eq!(r.body["decision"], "block", "{}", r.body);
}
