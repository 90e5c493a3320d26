//! Seeds: the corpus every target starts from, checked by the stable driver.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::ledger::Entry;
use crate::policy::{PackFiles, SIGNATURE_FILE};

use super::mcp::mcp_seeds;
use super::otlp::otlp_seeds;
use super::{
    FILE_MARK, TOKEN_IDP, Verdict, bundle_of, frame_entries, pack_input, sign_token, token_local_key,
};

/// One seed input and what its target must make of it.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The target's name.
    pub target: &'static str,
    /// The corpus file's name.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
    /// What the target must answer.
    pub verdict: Verdict,
}

fn read_pack(dir: &Path) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let files = PackFiles::read_dir(dir).map_err(std::io::Error::other)?;
    let mut all = files.files;
    if let Some(sig) = files.signature {
        all.insert(SIGNATURE_FILE.to_owned(), sig);
    }
    Ok(all)
}

/// The `when` expressions of a pack's rules (`pack.yaml` and `rules/*.yaml`), in file order.
fn when_expressions(files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    for (path, bytes) in files {
        if !(path == crate::policy::PACK_FILE || path.starts_with("rules/")) {
            continue;
        }
        let doc: serde_yaml::Value = serde_yaml::from_slice(bytes).map_err(std::io::Error::other)?;
        let rules = doc
            .get("spec")
            .and_then(|s| s.get("rules"))
            .or_else(|| doc.get("rules"))
            .and_then(serde_yaml::Value::as_sequence);
        for rule in rules.into_iter().flatten() {
            match rule.get("when") {
                Some(serde_yaml::Value::String(w)) => out.push(w.clone()),
                Some(serde_yaml::Value::Sequence(ws)) => {
                    out.extend(ws.iter().filter_map(|w| w.as_str().map(str::to_owned)))
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// A ledger entry as kla writes one (canonical).
fn entry_bytes(i: u64, kind: &str, body: Value) -> Vec<u8> {
    Entry {
        v: crate::ledger::entry::ENTRY_VERSION,
        kind: kind.into(),
        lineage_id: format!("lr_{i:024x}"),
        tenant: "acme".into(),
        time: format!("2026-01-01T00:00:{:02}.000Z", i % 60),
        body,
    }
    .encode()
    .unwrap_or_else(|e| panic!("a seed entry does not encode: {e}"))
}

fn seed_entries() -> Vec<Vec<u8>> {
    (0..5)
        .map(|i| {
            entry_bytes(
                i,
                "decision",
                json!({"decisionId": format!("dec_{i:024x}"), "action": "execute_refund",
                       "agent": {"id": "agt_000000000001", "name": "billing-bot"},
                       "context": {"amount": 5000 + i, "note": "caf\u{e9} \u{1f600}", "ratio": 0.1 + i as f64},
                       "decision": "require_approval", "reasonCodes": ["AMOUNT_OVER_THRESHOLD"]}),
            )
        })
        .collect()
}

/// The seed corpus of every target, from the repository at `repo` (the shipped default pack in `policies/`, the
/// example pack and config in `examples/`) and from inputs built here with the targets' fixed keys.
pub fn seed_corpus(repo: &Path) -> std::io::Result<Vec<Seed>> {
    use Verdict::{Accepted, Refused};
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>, verdict: Verdict| {
        seeds.push(Seed {
            target,
            name: name.to_owned(),
            bytes,
            verdict,
        });
    };
    let text = |s: &str| s.as_bytes().to_vec();

    let input = std::fs::read(repo.join("examples/packs/payments/input.json"))?;
    add("json", "eval-input", input, Accepted);
    add(
        "json",
        "nested",
        text(r#"{"a":[1,-2.5e-3,{"b":null,"c":"\u00e9\ud83d\ude00"}],"d":{"e":{"f":[true,false]}}}"#),
        Accepted,
    );
    add(
        "json",
        "repeated-key",
        text(r#"{"context":{"amount":1,"amount":99999}}"#),
        Refused,
    );

    add(
        "request_body",
        "evaluate",
        text(
            r#"{"agentId":"agt_000000000001","action":"Execute_Refund","context":{"amount":5000,"currency":"EUR"},"tool":{"name":"refunds","description":"Refunds a payment"},"executionId":"exec_42","traceId":"4bf92f3577b34da6a3ce929d0e0e4736"}"#,
        ),
        Accepted,
    );
    add(
        "request_body",
        "manifest",
        text(
            r#"{"name":"Claims-Triage","description":"Triages inbound insurance claims","model":"gpt-4.1","temperature":0.2,"tools":["lookup_policy","GitHub/Create_Issue"],"endpoint":"https://agents.example/claims","owner":"claims-team"}"#,
        ),
        Accepted,
    );
    add(
        "request_body",
        "repeated-context-key",
        text(r#"{"agentId":"a","action":"pay","context":{"amount":1,"amount":2}}"#),
        Refused,
    );

    add(
        "config_yaml",
        "example",
        std::fs::read(repo.join("examples/kla.yaml"))?,
        Accepted,
    );

    let default_pack = read_pack(&repo.join("policies/default"))?;
    let payments = read_pack(&repo.join("examples/packs/payments"))?;
    add("pack", "default-pack", pack_input(&default_pack), Accepted);
    add("pack", "payments-pack", pack_input(&payments), Accepted);

    // Every `when` of the shipped packs, with the default pack's module it calls.
    let mut n = 0;
    for files in [&default_pack, &payments] {
        let modules: BTreeMap<String, Vec<u8>> = files
            .iter()
            .filter(|(p, _)| p.ends_with(".rego"))
            .map(|(p, b)| (p.clone(), b.clone()))
            .collect();
        for when in when_expressions(files)? {
            let mut input = when.into_bytes();
            for (p, b) in &modules {
                input.extend_from_slice(format!("\n{FILE_MARK}{p}\n").as_bytes());
                input.extend_from_slice(b);
            }
            n += 1;
            add("when_expr", &format!("shipped-when-{n}"), input, Accepted);
        }
    }
    add(
        "when_expr",
        "library",
        text(
            r#"kla_lib.nonneg_number(input.context.amount) > 1000; endswith(kla_lib.email_domain(input.context.to[_]), "example.com")"#,
        ),
        Accepted,
    );

    let far = 4_102_444_800u64; // 2100-01-01
    let claims = |role: &str, tenants: &str, extra: &str, iss: &str, aud: &str| {
        format!(
            r#"{{"iss":"{iss}","sub":"alice","aud":"{aud}","tenants":{tenants},"role":"{role}","exp":{far},"iat":1767225600{extra}}}"#
        )
    };
    let local = token_local_key();
    let ed = r#"{"alg":"EdDSA","typ":"JWT"}"#;
    let signed = |mode: u8, header: &str, claims: &str| {
        let mut v = vec![mode];
        v.extend_from_slice(header.as_bytes());
        v.push(b'\n');
        v.extend_from_slice(claims.as_bytes());
        v
    };
    let admin = claims("admin", r#"["acme"]"#, "", "kla", "kla");
    add("token", "local-admin", signed(1, ed, &admin), Accepted);
    add(
        "token",
        "local-operator",
        signed(1, ed, &claims("operator", "[]", "", "kla", "kla")),
        Accepted,
    );
    let (iss, aud, kid) = TOKEN_IDP;
    add(
        "token",
        "external-bound-agent",
        signed(
            2,
            &format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#),
            &claims(
                "agent",
                r#"["acme","beta"]"#,
                r#","agent":"claims-triage""#,
                iss,
                aud,
            ),
        ),
        Accepted,
    );
    let mut raw = vec![0u8];
    raw.extend_from_slice(sign_token(ed.as_bytes(), admin.as_bytes(), &local).as_bytes());
    add("token", "compact", raw, Accepted);
    add(
        "token",
        "repeated-claim",
        signed(
            1,
            ed,
            &claims("admin", r#"["acme"]"#, r#","role":"agent""#, "kla", "kla"),
        ),
        Refused,
    );

    let entries = seed_entries();
    add("ledger_entry", "decision", entries[0].clone(), Accepted);
    add(
        "ledger_entry",
        "policy-activated",
        entry_bytes(
            9,
            "policy.activated",
            json!({"packs": [{"name": "kla-default", "version": "1.1.0", "digest": "ab"}], "big": 9007199254740993u64}),
        ),
        Accepted,
    );
    add(
        "ledger_entry",
        "not-canonical",
        text(r#"{"v":1,"kind":"decision","lineageId":"lr_0","tenant":"acme","time":"t","body":{}}"#),
        Refused,
    );

    let log = frame_entries(&entries);
    let mut prealloc = log.clone();
    prealloc.extend_from_slice(&[0u8; 64]);
    add("ledger_file", "five-entries", log.clone(), Accepted);
    add("ledger_file", "preallocated-tail", prealloc, Accepted);
    add(
        "ledger_file",
        "torn-tail",
        log[..log.len() - 7].to_vec(),
        Accepted,
    );
    let mut damaged = log.clone();
    if let Some(b) = damaged.get_mut(40) {
        *b ^= 0x20;
    }
    add("ledger_file", "damaged", damaged, Refused);

    let bundle = |prove: &[u64]| serde_json::to_vec_pretty(&bundle_of(&entries, prove)).unwrap_or_default();
    add("evidence", "three-of-five", bundle(&[0, 3, 4]), Accepted);
    add("evidence", "one-of-five", bundle(&[2]), Accepted);
    // The same bytes in another spelling were once accepted.
    let mut upper = bundle_of(&entries, &[1]);
    upper.root_hash = upper
        .root_hash
        .to_ascii_uppercase()
        .replacen("SHA256:", "sha256:", 1);
    add(
        "evidence",
        "uppercase-root-hash",
        serde_json::to_vec_pretty(&upper).unwrap_or_default(),
        Refused,
    );

    for (name, s, v) in [
        ("action-namespaced", "GitHub/Create_Issue", Accepted),
        ("action-mcp", "mcp:tools.call", Accepted),
        ("agent", "claims-triage", Accepted),
        ("glob", "{delete,drop}_*", Accepted),
        ("dot-dot", "github/../admin", Refused),
        ("homoglyph", "cl\u{430}ims", Refused),
    ] {
        add("names", name, text(s), v);
    }

    for (name, bytes, v) in otlp_seeds() {
        add("otlp", name, bytes, v);
    }
    for (name, s, v) in [
        (
            "clean-log",
            "2026-12-02T03:15:33Z INFO order ORD-2026-004512 trace 4bf92f3577b34da6a3ce929d0e0e4736",
            Accepted,
        ),
        (
            "genai-json",
            r#"{"gen_ai.input.messages":[{"role":"user","content":"hello"}],"n":3}"#,
            Accepted,
        ),
        (
            "email-card",
            "mail jane@example.com card 4111 1111 1111 1111",
            Refused,
        ),
        (
            "json-secrets",
            r#"{"password":"hunter2","msg":"{\"to\":\"a\\u0040b.io\",\"key\":\"AKIAIOSFODNN7EXAMPLE\"}"}"#,
            Refused,
        ),
        ("pem-cut", "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg", Refused),
        (
            "spelled-otherwise",
            "card ４１１１\u{a0}1111\u{2013}1111 1111, ssn １２３.４５.６７８９, mail jane＠bücher.de",
            Refused,
        ),
        (
            "glued-and-invisible",
            "cc_4111\u{200b}111111111111 ref#123-45-6789 /cards/5555555555554444 番号378282246310005",
            Refused,
        ),
        (
            "quoted-and-keyed",
            "\"john doe\"@example.com SSN: 123456789 aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            Refused,
        ),
        (
            "ids-and-lookalikes",
            "trace 4111111111111111abcdef0123456789 span be71096123456769 uploaded 123456789 bytes 東京",
            Accepted,
        ),
    ] {
        add("redactor", name, text(s), v);
    }
    for (name, bytes, v) in mcp_seeds() {
        add("mcp", name, bytes, v);
    }
    Ok(seeds)
}
