//! Redaction before every record: a decision with planted personal data and secrets in its context and tool is
//! decided on the values as given (a rule on the raw value matches), while the ledger entry, evidence, the store's
//! rows and files, the event stream and the approval hold none of them and the entry names the detectors. Also the
//! labelled accuracy corpus (tests/corpus/redaction, generated with Faker) and a property test that no planted value
//! survives the redactor. For OTLP, a secret in every string-bearing field of the trace protos, enumerated from
//! their descriptors (tests/data/otlp-proto), is neither served nor stored.

use crate::harness::*;
use kla::auth::Role;
use kla::redact::{Redactor, Report};
use proptest::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const T: &str = "acme-redact";

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
const PLANTED: &[&str] = &[
    "ceo@vip.example.com",
    "cfo@vip.example.com",
    "4111 1111 1111 1111",
    "123-45-6789",
    "DE89370400440532013000",
    JWT,
    "AKIAIOSFODNN7EXAMPLE",
    "hunter2-very-secret",
    "EMP-424242",
    "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
];

/// The redaction pack: a custom detector and a rule that holds mail to VIP recipients.
const PACK: &str = r#"apiVersion: kla.dev/v1
kind: PolicyPack
metadata: {name: redact-test, version: 1.0.0}
spec:
  defaultDecision: allow
  redaction:
    custom:
      - {name: employee_id, pattern: 'EMP-[0-9]{6}'}
  rules:
    - id: vip-mail
      match: {actions: [send_email]}
      when: 'endswith(input.context.to, "@vip.example.com")'
      decision: require_approval
      reasonCode: VIP_RECIPIENT
      approval: {timeout: 15m}
"#;

/// Reads the SSE stream until `needle` has been seen `times` times or 10 s passed; returns what arrived.
async fn sse_until(resp: &mut reqwest::Response, needle: &str, times: usize) -> String {
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while buf.matches(needle).count() < times {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            _ => break,
        }
    }
    buf
}

fn assert_clean(what: &str, text: &str) {
    for p in PLANTED {
        assert!(!text.contains(p), "{what} holds the planted {p:?}: {text}");
    }
}

/// Every file under `dir` but the keys: the ledger, the SQLite store and its WAL.
fn files_text(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "keys") {
                files_text(&p, out);
            }
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
}

#[tokio::test]
async fn a_decision_is_made_on_raw_values_and_recorded_redacted_everywhere() {
    let packs = tempfile::tempdir().unwrap();
    write_pack_file(packs.path(), "redact", PACK);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = raw(data.path());
    cfg.policies = Some(packs.path().to_owned());
    cfg.allow_unsigned = Some(true);
    let s = Server::start_cfg(cfg, None).await;
    let agent_tok = s.token(T, Role::Agent);
    let admin = s.token(T, Role::Admin);
    let auditor = s.token(T, Role::Auditor);
    let agent = s.register(&agent_tok, T, "mail-bot").await;

    let mut events = client()
        .get(format!("{}/v1/events", s.base))
        .bearer_auth(&admin)
        .header("x-tenant-id", T)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);

    let inner = json!({"cc": "cfo@vip.example.com", "note": "badge EMP-424242"}).to_string();
    let body = json!({
        "agentId": agent,
        "action": "send_email",
        "context": {
            "to": "ceo@vip.example.com",
            "body": format!("card 4111 1111 1111 1111, ssn 123-45-6789, iban DE89370400440532013000, token {JWT}"),
            "password": "hunter2-very-secret",
            "aws": {"keys": ["AKIAIOSFODNN7EXAMPLE"]},
            "payload": inner,
            "amount": 12,
        },
        "tool": {"name": "smtp", "description": "uses ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"},
    });
    let answer = s.decide(&agent_tok, T, body).await;
    // The policy saw the raw recipient: its rule on the domain matched.
    assert_eq!(answer["decision"], "require_approval", "{answer}");
    assert_eq!(answer["reasonCodes"], json!(["VIP_RECIPIENT"]));
    assert_clean("the answer", &answer.to_string());
    let lineage = answer["lineageId"].as_str().unwrap();
    let decision_id = answer["decisionId"].as_str().unwrap();
    let approval_id = answer["approvalId"].as_str().expect("an approval").to_owned();

    let entry = s.get(&format!("/v1/lineage/{lineage}"), &auditor, T).await;
    assert_eq!(entry.status, 200, "{}", entry.body);
    assert_clean("the ledger entry", &entry.body.to_string());
    let body = &entry.body["body"];
    assert_eq!(
        body["redaction"],
        json!({
            "aws_access_key": 1, "card": 1, "email": 2, "employee_id": 1, "github_token": 1, "iban": 1,
            "jwt": 1, "key:*password*": 1, "ssn": 1,
        }),
        "{body}"
    );
    assert_eq!(body["context"]["to"], "[REDACTED:EMAIL]");
    assert_eq!(body["context"]["amount"], 12);
    assert_eq!(body["context"]["password"], "[REDACTED:KEY]");
    let payload: Value = serde_json::from_str(body["context"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!({"cc": "[REDACTED:EMAIL]", "note": "badge [REDACTED:EMPLOYEE_ID]"})
    );

    for path in [
        format!("/v1/evidence?lineageId={lineage}"),
        format!("/v1/decisions/{decision_id}"),
        format!("/v1/approvals/{approval_id}"),
        "/v1/approvals".to_string(),
        format!(
            "/v1/ledger/entries?start=0&end={}",
            answer["ledgerIndex"].as_u64().unwrap() + 1
        ),
    ] {
        let r = send(s.req(Method::GET, &path, &auditor, T)).await;
        assert!(r.status == 200, "{path}: {} {}", r.status, r.text());
        assert_clean(&path, &r.text());
    }
    let approval = s.get(&format!("/v1/approvals/{approval_id}"), &admin, T).await;
    assert_eq!(
        approval.body["context"]["to"], "[REDACTED:EMAIL]",
        "{}",
        approval.body
    );

    let stream = sse_until(&mut events, &approval_id, 1).await;
    assert!(
        stream.contains(decision_id) && stream.contains(&approval_id),
        "{stream}"
    );
    assert_clean("the event stream", &stream);

    s.stop().await;
    let mut files = Vec::new();
    files_text(data.path(), &mut files);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("kla.db")),
        "the store is in the data dir"
    );
    for (path, bytes) in &files {
        for p in PLANTED {
            assert!(
                !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
                "{path} holds the planted {p:?}"
            );
        }
    }
    let key = data.path().join(format!("keys/redaction/{T}.key"));
    assert!(!key.exists(), "no key is made while nothing hashes");
}

#[tokio::test]
async fn hashing_uses_a_per_tenant_key_made_0600_on_first_use() {
    let packs = tempfile::tempdir().unwrap();
    write_pack_file(
        packs.path(),
        "hash",
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {name: hash, version: 1.0.0}\nspec:\n  defaultDecision: allow\n  redaction: {detectors: {email: hash}}\n",
    );
    let data = tempfile::tempdir().unwrap();
    let mut cfg = raw(data.path());
    cfg.policies = Some(packs.path().to_owned());
    cfg.allow_unsigned = Some(true);
    let s = Server::start_cfg(cfg, None).await;
    let tok = s.token(T, Role::Agent);
    let agent = s.register(&tok, T, "hash-bot").await;
    let a = s
        .decide(
            &tok,
            T,
            json!({"agentId": agent, "action": "x", "context": {"to": "jane@example.com"}}),
        )
        .await;
    let auditor = s.token(T, Role::Auditor);
    let e = s
        .get(
            &format!("/v1/lineage/{}", a["lineageId"].as_str().unwrap()),
            &auditor,
            T,
        )
        .await;
    let key_path = data.path().join(format!("keys/redaction/{T}.key"));
    let key = std::fs::read_to_string(&key_path).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The Collector's hmac-sha256 with the file's text as `hmac_key` gives the same value.
    let expected = kla::redact::HmacKey::new(key.trim()).hash("jane@example.com");
    assert_eq!(e.body["body"]["context"]["to"], expected.as_str(), "{}", e.body);
    assert_eq!(e.body["body"]["redaction"], json!({"email": 1}));
    s.stop().await;
}

/// A pack whose `redaction:` section is invalid is refused with a message naming the field.
#[test]
fn a_bad_redaction_pattern_refuses_the_pack() {
    let packs = tempfile::tempdir().unwrap();
    std::fs::write(
        packs.path().join("pack.yaml"),
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {name: bad, version: 1.0.0}\nspec:\n  redaction:\n    custom: [{name: emp, pattern: 'EMP-[0-9'}]\n",
    )
    .unwrap();
    let err = kla::policy::load_pack(packs.path(), &[], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("redaction: custom[0] \"emp\": bad pattern"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------------
// The accuracy corpus.

/// Detectors that must find at least 99% of their planted values.
const VALIDATED: &[&str] = &[
    "email",
    "card",
    "ssn",
    "iban",
    "jwt",
    "pem_private_key",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "openai_key",
    "anthropic_key",
    "slack_token",
    "google_api_key",
];

#[test]
fn the_labelled_corpus_meets_the_recall_and_false_positive_targets() {
    let text = std::fs::read_to_string(repo_path("tests/corpus/redaction/corpus.jsonl")).unwrap();
    let r = Redactor::builtin();
    // detector -> (planted, found, reported, reported beyond the labels)
    let mut stats: BTreeMap<String, (u64, u64, u64, u64)> = BTreeMap::new();
    // evasion form -> (planted, found, the values missed)
    let mut forms: BTreeMap<String, (u64, u64, Vec<String>)> = BTreeMap::new();
    let (mut look, mut look_fp) = (0u64, Vec::new());
    let mut look_kinds: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let item: Value = serde_json::from_str(line).unwrap();
        let input = item["text"].as_str().unwrap();
        let mut report = Report::default();
        let out = r.text("", input, &mut report);
        if item["lookalike"] == true {
            look += 1;
            *look_kinds
                .entry(item["kind"].as_str().unwrap().to_string())
                .or_default() += 1;
            if !report.is_empty() {
                look_fp.push(format!("{} {input:?} -> {out:?}", item["kind"]));
            }
            continue;
        }
        let mut labelled: BTreeMap<&str, u64> = BTreeMap::new();
        for l in item["labels"].as_array().unwrap() {
            let det = l["detector"].as_str().unwrap();
            let value = l["value"].as_str().unwrap();
            *labelled.entry(det).or_default() += 1;
            let st = stats.entry(det.to_string()).or_default();
            st.0 += 1;
            let hit = !out.contains(value) && report.counts.contains_key(det);
            if hit {
                st.1 += 1;
            } else if std::env::var_os("KLA_CORPUS_VERBOSE").is_some() {
                eprintln!("missed {det}: {input:?} -> {out:?}");
            }
            if let Some(form) = item["form"].as_str() {
                let f = forms.entry(form.to_string()).or_default();
                f.0 += 1;
                if hit {
                    f.1 += 1;
                } else {
                    f.2.push(format!("{input:?} -> {out:?}"));
                }
            }
        }
        for (det, n) in &report.counts {
            let st = stats.entry(det.clone()).or_default();
            st.2 += n;
            st.3 += n.saturating_sub(labelled.get(det.as_str()).copied().unwrap_or(0));
        }
    }
    println!(
        "{:<16} {:>7} {:>8} {:>9}",
        "detector", "planted", "recall", "precision"
    );
    for (det, (planted, found, reported, extra)) in &stats {
        let recall = if *planted > 0 {
            *found as f64 / *planted as f64
        } else {
            f64::NAN
        };
        let precision = if *reported > 0 {
            (reported - extra) as f64 / *reported as f64
        } else {
            f64::NAN
        };
        println!("{det:<16} {planted:>7} {recall:>8.4} {precision:>9.4}");
    }
    println!("{:<24} {:>7} {:>8}", "evasion form", "planted", "recall");
    for (form, (planted, found, _)) in &forms {
        println!("{form:<24} {planted:>7} {:>8.4}", *found as f64 / *planted as f64);
    }
    let fp_rate = look_fp.len() as f64 / look as f64;
    println!(
        "look-alikes: {look} of {} kinds, changed: {} (rate {fp_rate:.5})",
        look_kinds.len(),
        look_fp.len()
    );
    for f in &look_fp {
        println!("  look-alike changed: {f}");
    }
    // Every spelling a detector must see through is found, every time.
    assert!(forms.len() >= 30, "{} evasion forms", forms.len());
    for (form, (planted, _, missed)) in &forms {
        assert!(*planted >= 50, "{form} has {planted} planted values");
        assert!(missed.is_empty(), "{form}: missed {missed:#?}");
    }
    for kind in [
        "bare_nine_digits",
        "b64_40_no_evidence",
        "card_in_hex_id",
        "lower_span_id_like_iban",
        "cjk_fullwidth",
        "fr_amount_nbsp",
    ] {
        assert!(
            look_kinds.get(kind).is_some_and(|n| *n >= 100),
            "{kind}: {look_kinds:?}"
        );
    }
    for det in VALIDATED {
        let (planted, found, _, _) = stats.get(*det).copied().unwrap_or_default();
        assert!(planted >= 100, "{det} has {planted} planted values");
        let recall = found as f64 / planted as f64;
        assert!(recall >= 0.99, "{det}: recall {recall:.4} < 0.99");
    }
    // Heuristic detectors, reported above and held to what they reach today.
    for (det, floor) in [("phone", 0.9), ("password", 0.8), ("bearer", 0.99)] {
        let (planted, found, _, _) = stats.get(det).copied().unwrap_or_default();
        let recall = found as f64 / planted.max(1) as f64;
        assert!(recall >= floor, "{det}: recall {recall:.4} < {floor}");
    }
    assert!(look >= 7000, "{look} look-alikes");
    assert!(look_fp.is_empty(), "look-alikes changed: {look_fp:#?}");
}

// ---------------------------------------------------------------------------------------------------------------
// No planted value survives.

fn luhn_complete(prefix: &str) -> String {
    for d in 0..10 {
        let s = format!("{prefix}{d}");
        if kla::redact::luhn(s.as_bytes()) {
            return s;
        }
    }
    unreachable!("one check digit fits")
}

fn iban_de(bban: &str) -> String {
    for c in 2..99 {
        let s = format!("DE{c:02}{bban}");
        if kla::redact::iban_checksum(s.as_bytes()) {
            return s;
        }
    }
    unreachable!("one pair of check digits fits")
}

fn planted() -> impl Strategy<Value = String> {
    let b64 = "[A-Za-z0-9_-]{10,40}";
    prop_oneof![
        "[a-z]{1,12}(\\.[a-z0-9]{1,8})?@[a-z]{2,10}\\.(com|org|io|co\\.uk)",
        "4[0-9]{14}".prop_map(|p| luhn_complete(&p)),
        "5[1-5][0-9]{13}".prop_map(|p| luhn_complete(&p)),
        "3[47][0-9]{12}".prop_map(|p| luhn_complete(&p)),
        (1u32..900, 1u32..100, 1u32..10000)
            .prop_filter("valid area", |(a, _, _)| *a != 666)
            .prop_map(|(a, g, s)| format!("{a:03}-{g:02}-{s:04}")),
        "[0-9]{18}".prop_map(|b| iban_de(&b)),
        "(AKIA|ASIA)[A-Z2-7]{16}",
        "gh[pousr]_[A-Za-z0-9]{36}",
        "AIza[A-Za-z0-9_-]{35}",
        (b64, b64).prop_map(|(p, s)| format!("eyJhbGciOiJIUzI1NiJ9.{p}.{s}")),
        "[A-Za-z0-9+/]{40,200}"
            .prop_map(|b| format!("-----BEGIN PRIVATE KEY-----\n{b}\n-----END PRIVATE KEY-----")),
    ]
}

/// Where a planted value sits: plain text, a member of an object, an array item, JSON inside a string.
fn placed(v: &str, filler: &str, how: u8) -> Value {
    let sentence = format!("{filler} {v} {filler}");
    match how % 4 {
        0 => Value::String(sentence),
        1 => json!({"a": {"b": sentence}, "n": 1}),
        2 => json!(["x", [sentence], 3]),
        _ => json!({"msg": json!({"content": sentence}).to_string()}),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn no_planted_value_survives_text_or_value(v in planted(), filler in "[a-z ,.:;]{0,16}", how in 0u8..8) {
        let r = Redactor::builtin();
        let doc = placed(&v, &filler, how);
        let mut report = Report::default();
        let out = r.value_report(&doc, &mut report);
        let rendered = out.to_string();
        let escaped = serde_json::to_string(&v).unwrap();
        let escaped = escaped.trim_matches('"');
        prop_assert!(!rendered.contains(&v) && !rendered.contains(escaped), "{v:?} survived in {rendered}");
        prop_assert!(!report.is_empty());
        let text = format!("{filler} {v} {filler}");
        let t = r.text("", &text, &mut Report::default());
        prop_assert!(!t.contains(&v), "{v:?} survived in {t:?}");
    }
}

/// A tiny upstream on loopback that answers `ok` and counts what reached it.
async fn ok_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(b"ok"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// The same promise for spans sent over OTLP and for proxied tool calls: values planted everywhere a span can hold
/// them (resource, name, attributes as strings and JSON strings, events, links, status) and in a proxied call's
/// body context are stored, sealed and served redacted, and no file of the data dir holds them.
#[tokio::test]
async fn spans_and_proxied_calls_are_recorded_redacted() {
    let packs = tempfile::tempdir().unwrap();
    write_pack_file(packs.path(), "redact", PACK);
    let data = tempfile::tempdir().unwrap();
    let (up, _task) = ok_upstream().await;
    let mut cfg = raw(data.path());
    cfg.policies = Some(packs.path().to_owned());
    cfg.allow_unsigned = Some(true);
    cfg.otlp_http_addr = Some("127.0.0.1:0".into());
    cfg.otlp_grpc_addr = Some("off".into());
    cfg.proxy_addr = Some("127.0.0.1:0".into());
    cfg.proxy = Some(kla::proxy::FileProxy {
        tenant: Some(T.into()),
        agent: Some("pay-bot".into()),
        routes: Some(vec![kla::proxy::FileRoute {
            name: "pay".into(),
            prefix: "/pay".into(),
            upstream: format!("http://{up}"),
            actions: Some(vec![kla::proxy::FileAction {
                method: "POST".into(),
                path: "/charges".into(),
                action: "charge_card".into(),
                context: Some(
                    [("card", "/card"), ("note", "/note"), ("owner", "/owner")]
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
            }]),
            ..Default::default()
        }]),
        ..Default::default()
    });
    let s = Server::start_cfg(cfg, None).await;
    let agent_tok = s.token(T, Role::Agent);
    let admin = s.token(T, Role::Admin);
    s.register(&admin, T, "pay-bot").await;

    // A span export in the OTLP JSON mapping.
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let sv = |v: &str| json!({"stringValue": v});
    let args = json!({"to": "ceo@vip.example.com", "card": "4111 1111 1111 1111"}).to_string();
    let export = json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "owner.iban", "value": sv("DE89370400440532013000")}]},
        "scopeSpans": [{"scope": {"name": "agent"}, "spans": [{
            "traceId": trace_id, "spanId": "eee19b7ec3c1b174", "name": "execute_tool mail cfo@vip.example.com",
            "kind": 3, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
            "attributes": [
                {"key": "gen_ai.tool.call.arguments", "value": sv(&args)},
                {"key": "user.ssn", "value": sv("123-45-6789")},
                {"key": "nested", "value": {"kvlistValue": {"values": [
                    {"key": "list", "value": {"arrayValue": {"values": [sv("badge EMP-424242")]}}}]}}}
            ],
            "events": [{"timeUnixNano": "1544712660500000000", "name": "auth",
                        "attributes": [{"key": "token", "value": sv(JWT)}]}],
            "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
                       "attributes": [{"key": "aws", "value": sv("AKIAIOSFODNN7EXAMPLE")}]}],
            "status": {"code": 2, "message": "push failed with ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"}
        }]}]
    }]});
    let r = send(
        client()
            .post(format!("http://{}/v1/traces", s.listener("otlp-http").unwrap()))
            .bearer_auth(&agent_tok)
            .header("x-tenant-id", T)
            .header("content-type", "application/json")
            .body(export.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = s.get(&format!("/v1/traces/{trace_id}"), &admin, T).await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert!(
        got.body["spans"].as_array().is_some_and(|a| !a.is_empty()),
        "{}",
        got.body
    );
    assert_clean("the stored spans", &got.body.to_string());
    assert!(got.body.to_string().contains("[REDACTED:"), "{}", got.body);

    // A proxied call whose body context carries a card and a secret.
    let r = client()
        .post(format!("http://{}/pay/charges", s.listener("proxy").unwrap()))
        .header("content-type", "application/json")
        .body(json!({"card": "4111 1111 1111 1111", "note": "password=hunter2-very-secret", "owner": "ceo@vip.example.com"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-kla-decision-id"].to_str().unwrap().to_owned();
    let d = s.get(&format!("/v1/decisions/{id}"), &admin, T).await;
    assert_eq!(d.status, 200, "{}", d.body);
    assert_clean("the proxied call's decision", &d.body.to_string());

    s.stop().await;
    let mut files = Vec::new();
    files_text(data.path(), &mut files);
    for (name, bytes) in files {
        for p in PLANTED {
            assert!(
                !bytes.windows(p.len()).any(|w| w == p.as_bytes()),
                "{name} holds the planted {p:?}"
            );
        }
    }
}

/// The OTLP trace protos (tests/data/otlp-proto/README.md says where they come from).
const OTLP_DESCRIPTORS: &[u8] = include_bytes!("../data/otlp-proto/trace_service.desc");

/// Message types of a descriptor set by full name (`.opentelemetry.proto.trace.v1.Span`), nested ones included.
fn message_types(set: &prost_types::FileDescriptorSet) -> BTreeMap<String, prost_types::DescriptorProto> {
    fn add(
        out: &mut BTreeMap<String, prost_types::DescriptorProto>,
        scope: &str,
        m: &prost_types::DescriptorProto,
    ) {
        let name = format!("{scope}.{}", m.name());
        for n in &m.nested_type {
            add(out, &name, n);
        }
        out.insert(name, m.clone());
    }
    let mut out = BTreeMap::new();
    for f in &set.file {
        for m in &f.message_type {
            add(&mut out, &format!(".{}", f.package()), m);
        }
    }
    out
}

/// Builds protobuf messages from descriptors alone, with a distinct secret in every string it writes. A message
/// type is built as several instances so that together they set every field (one per oneof alternative, and
/// every instance of a singular sub-message); repeated fields hold every instance of their element. A type is
/// entered at most twice on one path, so recursive values (arrays of kv-lists of arrays) are covered to depth 2.
struct ProtoGen<'a> {
    types: &'a BTreeMap<String, prost_types::DescriptorProto>,
    /// Each secret written, with the field path it sits at.
    planted: Vec<(String, String)>,
    /// `(message type, field)` of every string field written.
    string_fields: std::collections::BTreeSet<(String, String)>,
    next_id: u64,
    trace_id: [u8; 16],
}

/// One field as built: (number, wire type, the encoded values it can take, repeated, its oneof).
type Choice = (i32, u64, Vec<Vec<u8>>, bool, Option<i32>);

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: i32, wire: u64) {
    varint(out, ((field as u64) << 3) | wire);
}

impl ProtoGen<'_> {
    fn secret(&mut self, path: &str) -> String {
        let s = format!("planted{}@vip.example.com", self.planted.len());
        self.planted.push((path.to_owned(), s.clone()));
        s
    }

    /// The bytes an id field needs to be valid, by name; other bytes are arbitrary.
    fn bytes(&mut self, field: &str) -> Vec<u8> {
        match field {
            "trace_id" => self.trace_id.to_vec(),
            "span_id" | "parent_span_id" => {
                self.next_id += 1;
                self.next_id.to_be_bytes().to_vec()
            }
            _ => vec![0xde, 0xad],
        }
    }

    /// One scalar of `field` (non-zero, so a re-encoding keeps it), with its wire type.
    fn scalar(&mut self, ty: &str, f: &prost_types::FieldDescriptorProto, path: &str) -> (u64, Vec<u8>) {
        use prost_types::field_descriptor_proto::Type;
        let mut v = Vec::new();
        let wire = match f.r#type() {
            Type::String => {
                self.string_fields.insert((ty.to_owned(), f.name().to_owned()));
                let s = self.secret(path);
                varint(&mut v, s.len() as u64);
                v.extend_from_slice(s.as_bytes());
                2
            }
            Type::Bytes => {
                let b = self.bytes(f.name());
                varint(&mut v, b.len() as u64);
                v.extend_from_slice(&b);
                2
            }
            Type::Double => {
                v.extend_from_slice(&1.5f64.to_le_bytes());
                1
            }
            Type::Fixed64 | Type::Sfixed64 => {
                v.extend_from_slice(&1_764_633_600_000_000_000u64.to_le_bytes());
                1
            }
            Type::Float => {
                v.extend_from_slice(&1.5f32.to_le_bytes());
                5
            }
            Type::Fixed32 | Type::Sfixed32 => {
                v.extend_from_slice(&1u32.to_le_bytes());
                5
            }
            // Varints: ints, bools and enums, 1 (true, the first non-default enum value).
            Type::Int32 | Type::Int64 | Type::Uint32 | Type::Uint64 | Type::Bool | Type::Enum => {
                varint(&mut v, 1);
                0
            }
            Type::Sint32 | Type::Sint64 => {
                varint(&mut v, 2);
                0
            }
            Type::Group | Type::Message => unreachable!("not a scalar"),
        };
        (wire, v)
    }

    /// The instances of message `ty` at `path` (empty when `ty` is already twice on the path).
    fn instances(&mut self, ty: &str, path: &str, stack: &mut Vec<String>) -> Vec<Vec<u8>> {
        use prost_types::field_descriptor_proto::{Label, Type};
        if stack.iter().filter(|t| *t == ty).count() >= 2 {
            return Vec::new();
        }
        let m = self
            .types
            .get(ty)
            .unwrap_or_else(|| panic!("no type {ty}"))
            .clone();
        stack.push(ty.to_owned());
        // Per field: the encoded values it can take (message fields: one per instance of their type).
        let mut choices: Vec<Choice> = Vec::new();
        let mut fields = m.field.clone();
        fields.sort_by_key(|f| f.number());
        for f in &fields {
            let at = format!("{path}.{}", f.name());
            let repeated = f.label() == Label::Repeated;
            let oneof = f.oneof_index;
            if f.r#type() == Type::Message {
                let sub = self.instances(f.type_name(), &at, stack);
                let framed = sub
                    .into_iter()
                    .map(|b| {
                        let mut v = Vec::new();
                        varint(&mut v, b.len() as u64);
                        v.extend_from_slice(&b);
                        v
                    })
                    .collect();
                choices.push((f.number(), 2, framed, repeated, oneof));
            } else {
                let (wire, v) = self.scalar(ty, f, &at);
                choices.push((f.number(), wire, vec![v], repeated, oneof));
            }
        }
        stack.pop();
        // One instance per alternative of the largest oneof, per instance of the most varied singular message.
        let mut oneofs: BTreeMap<i32, Vec<(usize, usize)>> = BTreeMap::new();
        let mut count = 1;
        for (i, (_, _, vals, repeated, oneof)) in choices.iter().enumerate() {
            if let Some(o) = oneof {
                let alts = oneofs.entry(*o).or_default();
                alts.extend((0..vals.len()).map(|k| (i, k)));
                count = count.max(alts.len());
            } else if !repeated {
                count = count.max(vals.len());
            }
        }
        (0..count)
            .map(|n| {
                let mut out = Vec::new();
                for (i, (num, wire, vals, repeated, oneof)) in choices.iter().enumerate() {
                    let picked: Vec<&Vec<u8>> = match oneof {
                        Some(o) => {
                            let alts = &oneofs[o];
                            let (fi, k) = alts[n % alts.len()];
                            if fi == i { vec![&vals[k]] } else { vec![] }
                        }
                        None if *repeated => vals.iter().collect(),
                        None if vals.is_empty() => vec![],
                        None => vec![&vals[n % vals.len()]],
                    };
                    for v in picked {
                        tag(&mut out, *num, *wire);
                        out.extend_from_slice(v);
                    }
                }
                out
            })
            .collect()
    }
}

/// Every JSON object key of `v` (the crate's serde form of a message of type `ty`) is a field of `ty` in the
/// descriptors: a field the crate has and the descriptors lack fails here.
fn check_json_fields(
    types: &BTreeMap<String, prost_types::DescriptorProto>,
    ty: &str,
    v: &Value,
    path: &str,
) {
    let Value::Object(o) = v else { return };
    let m = &types[ty];
    for (k, x) in o {
        let f = m
            .field
            .iter()
            .find(|f| f.json_name() == k)
            .unwrap_or_else(|| panic!("{path}.{k}: the crate's {ty} has a field the descriptors lack"));
        if f.r#type() == prost_types::field_descriptor_proto::Type::Message {
            match x {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        check_json_fields(types, f.type_name(), item, &format!("{path}.{k}[{i}]"));
                    }
                }
                _ => check_json_fields(types, f.type_name(), x, &format!("{path}.{k}")),
            }
        }
    }
}

/// Every string-bearing field of the OTLP trace protos, enumerated from their descriptors (not from kla's walk),
/// carries a distinct planted secret into one export over OTLP/HTTP (protobuf, and the same spans again in the
/// JSON mapping): none of them is served by `GET /v1/traces/{id}` or the evidence bundle, or stored in any file
/// of the data dir, and the sealed span still has unique attribute keys. The descriptors and the crate's types
/// are checked to hold the same fields, so a field added to OTLP fails here until it is covered.
#[tokio::test]
async fn every_string_field_of_the_otlp_trace_protos_is_redacted() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(OTLP_DESCRIPTORS).unwrap();
    let types = message_types(&set);
    const REQUEST: &str = ".opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest";
    // Every string field reachable from the export request, from the descriptors.
    let mut reachable = std::collections::BTreeSet::new();
    let mut todo = vec![REQUEST.to_owned()];
    let mut seen = std::collections::BTreeSet::new();
    while let Some(t) = todo.pop() {
        if !seen.insert(t.clone()) {
            continue;
        }
        for f in &types[&t].field {
            match f.r#type() {
                prost_types::field_descriptor_proto::Type::String => {
                    reachable.insert((t.clone(), f.name().to_owned()));
                }
                prost_types::field_descriptor_proto::Type::Message => todo.push(f.type_name().to_owned()),
                _ => {}
            }
        }
    }
    assert!(reachable.len() >= 14, "{reachable:?}");

    let data = tempfile::tempdir().unwrap();
    let mut cfg = raw(data.path());
    cfg.otlp_http_addr = Some("127.0.0.1:0".into());
    cfg.otlp_grpc_addr = Some("off".into());
    let s = Server::start_cfg(cfg, None).await;
    let agent = s.token(T, Role::Agent);
    let admin = s.token(T, Role::Admin);
    let url = format!("http://{}/v1/traces", s.listener("otlp-http").unwrap());
    let mut planted = Vec::new();
    for (n, json) in [(1u8, false), (2u8, true)] {
        let mut g = ProtoGen {
            types: &types,
            planted: Vec::new(),
            string_fields: Default::default(),
            next_id: u64::from(n) << 32,
            trace_id: [n; 16],
        };
        let mut exports = g.instances(REQUEST, "export", &mut Vec::new());
        assert_eq!(exports.len(), 1);
        let bytes = exports.remove(0);
        assert_eq!(
            g.string_fields, reachable,
            "every string field of the protos is planted"
        );
        // The crate's types know every field the descriptors have (prost drops unknown fields, so the message
        // would re-encode shorter), and no other (a field the crate has would show in its JSON form).
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            req.encode_to_vec().len(),
            bytes.len(),
            "the descriptors have a field the crate's types lack: regenerate or update"
        );
        let as_json = serde_json::to_value(&req).unwrap();
        check_json_fields(&types, REQUEST, &as_json, "export");
        for (_, secret) in &g.planted {
            assert!(
                as_json.to_string().contains(secret.as_str()),
                "{secret} reaches the decoded export"
            );
        }
        let (ct, body) = if json {
            ("application/json", as_json.to_string().into_bytes())
        } else {
            ("application/x-protobuf", bytes)
        };
        let r = send(
            client()
                .post(&url)
                .bearer_auth(&agent)
                .header("x-tenant-id", T)
                .header("content-type", ct)
                .body(body),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body.get("partialSuccess").is_none(), "{}", r.text());
        let id = hex::encode([n; 16]);
        let got = s.get(&format!("/v1/traces/{id}"), &admin, T).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let served = got.body.to_string();
        let ev = s.get(&format!("/v1/evidence?traceId={id}"), &admin, T).await;
        assert_eq!(ev.status, 200, "{}", ev.text());
        let evidence = ev.body.to_string();
        for (path, secret) in &g.planted {
            assert!(
                !served.contains(secret.as_str()),
                "{path} is served raw: {served}"
            );
            assert!(
                !evidence.contains(secret.as_str()),
                "{path} is in the evidence raw"
            );
        }
        // The sealed span is still a valid OTLP document: attribute keys unique in every list.
        fn unique_keys(v: &Value) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::Array(attrs)) = o.get("attributes").or_else(|| o.get("values")) {
                        let keys: Vec<&str> = attrs.iter().filter_map(|kv| kv["key"].as_str()).collect();
                        let set: std::collections::BTreeSet<_> = keys.iter().collect();
                        assert_eq!(set.len(), keys.len(), "duplicate keys {keys:?}");
                    }
                    o.values().for_each(unique_keys);
                }
                Value::Array(a) => a.iter().for_each(unique_keys),
                _ => {}
            }
        }
        unique_keys(&got.body);
        assert!(served.contains("[REDACTED:EMAIL]"), "{served}");
        planted.extend(g.planted);
    }
    s.stop().await;
    let mut files = Vec::new();
    files_text(data.path(), &mut files);
    for (name, bytes) in files {
        for (path, secret) in &planted {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{name} holds {path}'s planted {secret:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Spellings that hid values from the detectors.

const AWS_SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const AWS_SECRET_2: &str = "je7MtGbClwBF/2Zp9Utk/h3yCo8nvbEXAMPLEKEY";

/// One example per evasion form: (form, the text sent, the values that must not be recorded, the detector).
fn evasion_examples() -> Vec<(&'static str, String, Vec<String>, &'static str)> {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let fw = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                '!'..='~' => char::from_u32(c as u32 + 0xFEE0).unwrap(),
                c => c,
            })
            .collect()
    };
    let one = |form, text: &str, det| (form, text.to_string(), vec![text.to_string()], det);
    let inside = |form, text: String, value: &str, det| (form, text, vec![value.to_string()], det);
    let jwt = format!(
        "{}.{}.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg",
        b64(r#"{ "alg": "HS256", "typ": "JWT" }"#),
        b64(r#"{"sub":"user-42","name":"Jane Roe"}"#)
    );
    let pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\nlQOYBF8dVKgBCADaR3x9Qm1vZ2lQ2Fq7\nZm9vYmFyYmF6cXV4\n=Xb3q\n-----END PGP PRIVATE KEY BLOCK-----";
    vec![
        one("card with dots", "4111.1111.1111.1111", "card"),
        one("card with tabs", "5555\t5555\t5555\t4444", "card"),
        one(
            "card with no-break spaces",
            "4012\u{a0}8888\u{a0}8888\u{a0}1881",
            "card",
        ),
        one(
            "card with en dashes",
            "5105\u{2013}1051\u{2013}0510\u{2013}5100",
            "card",
        ),
        one("card with double spaces", "6011  1111  1111  1117", "card"),
        one("card in full-width digits", &fw("3566 0020 2036 0505"), "card"),
        inside(
            "card after cc_",
            "cc_4000056655665556".into(),
            "4000056655665556",
            "card",
        ),
        inside(
            "card after ref#",
            "ref#2223003122003222".into(),
            "2223003122003222",
            "card",
        ),
        inside(
            "card in a URL path",
            "GET /v1/cards/6011000990139424/charges".into(),
            "6011000990139424",
            "card",
        ),
        inside(
            "card after non-ASCII text",
            "番号5200828282828210".into(),
            "5200828282828210",
            "card",
        ),
        inside("SSN after cc_", "cc_219-09-9999".into(), "219-09-9999", "ssn"),
        inside("SSN after ref#", "ref#457-55-5462".into(), "457-55-5462", "ssn"),
        inside(
            "SSN after non-ASCII text",
            "社会保障番号078-05-1120".into(),
            "078-05-1120",
            "ssn",
        ),
        one("dotted SSN", "536.22.8726", "ssn"),
        inside("bare SSN", "SSN: 123456780".into(), "123456780", "ssn"),
        one("full-width SSN", &fw("234-56-7891"), "ssn"),
        one(
            "email with a full-width at",
            "ceo\u{ff20}vip.example.com",
            "email",
        ),
        one("email with an IDN domain", "jürgen@bücher-müller.de", "email"),
        one(
            "email with a quoted local part",
            "\"jane q. public\"@example.org",
            "email",
        ),
        inside(
            "AWS secret key as key=value",
            format!("AWS_SECRET_ACCESS_KEY={AWS_SECRET}"),
            AWS_SECRET,
            "aws_secret_key",
        ),
        (
            "AWS credentials file",
            format!(
                "[default]\naws_access_key_id = AKIAI44QH8DHBEXAMPLE\naws_secret_access_key = {AWS_SECRET_2}\n"
            ),
            vec!["AKIAI44QH8DHBEXAMPLE".into(), AWS_SECRET_2.into()],
            "aws_secret_key",
        ),
        (
            "bare AWS secret key beside its key id",
            "ASIAY34FZKBOKMUTVV7A jE9xLq2Rw8Tz0Vb4Nc6Md1Kf3Gh5Jp7Ss9Ua2Wd+".into(),
            vec![
                "ASIAY34FZKBOKMUTVV7A".into(),
                "jE9xLq2Rw8Tz0Vb4Nc6Md1Kf3Gh5Jp7Ss9Ua2Wd+".into(),
            ],
            "aws_secret_key",
        ),
        one("JWT whose header encodes to eyAi", &jwt, "jwt"),
        inside(
            "PGP private key block",
            format!("backup {pgp} end"),
            "lQOYBF8dVKgBCADaR3x9Qm1vZ2lQ2Fq7",
            "pem_private_key",
        ),
        one("IBAN in lower case", "gb82west12345698765432", "iban"),
        one("IBAN with dashes", "FR14-2004-1010-0505-0001-3M02-606", "iban"),
    ]
}

/// Each example, alone, is found by its detector, and replaced whole (the text around it kept).
#[test]
fn every_evasion_form_is_found_by_its_detector() {
    let r = Redactor::builtin();
    for (form, text, values, det) in evasion_examples() {
        let mut report = Report::default();
        let out = r.text("note", &text, &mut report);
        assert!(
            report.counts.contains_key(det),
            "{form}: {det} did not fire on {text:?} -> {out:?} ({:?})",
            report.counts
        );
        for v in &values {
            assert!(!out.contains(v.as_str()), "{form}: {v:?} survived in {out:?}");
        }
    }
}

/// The raw bytes of `v` and its JSON-escaped form (a tab is stored as `\t`).
fn spellings(v: &str) -> [String; 2] {
    let escaped = serde_json::to_string(v).unwrap();
    [v.to_string(), escaped.trim_matches('"').to_string()]
}

/// Through the running server: a decision whose context holds every example and a span whose attributes do are
/// recorded with none of the values, in what the API serves and in every file of the data dir.
#[tokio::test]
async fn evasion_forms_never_reach_the_record() {
    let data = tempfile::tempdir().unwrap();
    let mut cfg = raw(data.path());
    cfg.otlp_http_addr = Some("127.0.0.1:0".into());
    cfg.otlp_grpc_addr = Some("off".into());
    let s = Server::start_cfg(cfg, None).await;
    let tok = s.token(T, Role::Agent);
    let admin = s.token(T, Role::Admin);
    let agent = s.register(&tok, T, "evasive-bot").await;
    let examples = evasion_examples();
    let context: serde_json::Map<String, Value> = examples
        .iter()
        .enumerate()
        .map(|(i, (_, text, _, _))| (format!("note{i}"), Value::String(text.clone())))
        .collect();
    let answer = s
        .decide(
            &tok,
            T,
            json!({"agentId": agent, "action": "file_ticket", "context": context}),
        )
        .await;
    let lineage = answer["lineageId"].as_str().expect("recorded").to_owned();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let attributes: Vec<Value> = examples
        .iter()
        .enumerate()
        .map(|(i, (_, text, _, _))| json!({"key": format!("note.{i}"), "value": {"stringValue": text}}))
        .collect();
    let export = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": trace_id, "spanId": "00f067aa0ba902b7", "name": "file_ticket", "kind": 1,
        "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
        "attributes": attributes,
    }]}]}]});
    let r = send(
        client()
            .post(format!("http://{}/v1/traces", s.listener("otlp-http").unwrap()))
            .bearer_auth(&tok)
            .header("x-tenant-id", T)
            .header("content-type", "application/json")
            .body(export.to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    let entry = s.get(&format!("/v1/lineage/{lineage}"), &admin, T).await;
    assert_eq!(entry.status, 200, "{}", entry.body);
    let spans = s.get(&format!("/v1/traces/{trace_id}"), &admin, T).await;
    assert_eq!(spans.status, 200, "{}", spans.body);
    let counts = &entry.body["body"]["redaction"];
    for (form, _, values, det) in &examples {
        assert!(counts[*det].as_u64().is_some_and(|n| n > 0), "{form}: {counts}");
        for v in values {
            for sp in spellings(v) {
                assert!(
                    !entry.body.to_string().contains(&sp),
                    "{form}: the entry holds {sp:?}"
                );
                assert!(
                    !spans.body.to_string().contains(&sp),
                    "{form}: the spans hold {sp:?}"
                );
            }
        }
    }
    s.stop().await;
    let mut files = Vec::new();
    files_text(data.path(), &mut files);
    for (name, bytes) in &files {
        for (form, _, values, _) in &examples {
            for v in values {
                for sp in spellings(v) {
                    assert!(
                        !bytes.windows(sp.len()).any(|w| w == sp.as_bytes()),
                        "{name} holds {form}'s {sp:?}"
                    );
                }
            }
        }
    }
}
