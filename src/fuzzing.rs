//! Fuzz targets: one function per parser of bytes that reach kla from outside, each calling the real entry point and
//! checking what kla promises about it: no panic; an accepted input re-validates (or round-trips) to the same
//! canonical value; a refusal is the typed error its caller renders. A broken promise panics, which is what a fuzzer
//! reports. `fuzz/` drives these functions with cargo-fuzz (nightly) and `tests/it/fuzz.rs` with proptest, bounded,
//! on stable; `docs/security.md` records what they ran and found.
//!
//! Not an API (hidden from the docs). Pure apart from [`ledger_file`], which works in a private temporary directory,
//! and [`seed_corpus`], which reads the repository's own inputs. Owns no production behaviour: it only calls it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::{Signer as _, SigningKey};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::{ApiError, Code};
use crate::auth::{AuthError, Authenticator, ExternalIssuer, Principal, Role};
use crate::config::{ConfigError, RawConfig};
use crate::error::{Class, Classify};
use crate::json::CheckError;
use crate::ledger::evidence::{BUNDLE_FORMAT, EvidenceEntry};
use crate::ledger::note::NoteSigner;
use crate::ledger::tree::{self, MemTree, NodeSource};
use crate::ledger::{Entry, EvidenceBundle, Ledger, LedgerConfig, LedgerError, RepairMode};
use crate::names::{self, Kind, Pattern};
use crate::policy::{
    AgentRef, CompiledPack, Decision, EvalInput, Outcome, POLICY_ERROR, POLICY_UNAVAILABLE, PackFiles,
    PolicyError, PolicySet, SIGNATURE_FILE, TrustedKey, VerifiedPack,
};
use crate::recorder::DecisionBody;
use crate::registry::{Manifest, RegistryError};

/// What one input came to (the stable driver checks seeds against it; the fuzzer ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Parsed and accepted by kla.
    Accepted,
    /// Refused with the typed error its caller renders.
    Refused,
}

/// One fuzz target: its name (the cargo-fuzz binary and corpus directory) and its function.
pub type Target = (&'static str, fn(&[u8]) -> Verdict);

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("json", json),
    ("request_body", request_body),
    ("config_yaml", config_yaml),
    ("pack", pack),
    ("when_expr", when_expr),
    ("token", token),
    ("ledger_entry", ledger_entry),
    ("ledger_file", ledger_file),
    ("evidence", evidence),
    ("names", names),
    ("otlp", otlp),
    ("redactor", redactor),
    ("mcp", mcp),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8]) -> Verdict> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

fn verdict(accepted: bool) -> Verdict {
    if accepted {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}

/// Whether two JSON values are equal, numbers compared as kla stores them: integers exactly, other numbers by their
/// RFC 8785 (shortest round-trip) form, so a value parsed back from its own canonical text compares equal.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || matches!((x.as_f64(), y.as_f64()), (Some(p), Some(q)) if p == q)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn canonical_json(v: &Value) -> Vec<u8> {
    serde_json_canonicalizer::to_vec(v).unwrap_or_else(|e| panic!("a JSON value has no canonical form: {e}"))
}

// ---------------------------------------------------------------------------------------------------------------
// JSON: `crate::json::check_unique_keys`, the check in front of every JSON document kla accepts.

/// A JSON document as written: objects keep every member in order, repeats included. The oracle for
/// [`crate::json::check_unique_keys`], read by serde_json's own parser.
enum Doc {
    Scalar,
    Array(Vec<Doc>),
    Object(Vec<(String, Doc)>),
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_str<E>(self, _: &str) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_unit<E>(self) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
        let mut items = Vec::new();
        while let Some(d) = a.next_element()? {
            items.push(d);
        }
        Ok(Doc::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Doc, A::Error> {
        let mut members = Vec::new();
        while let Some(m) = a.next_entry::<String, Doc>()? {
            members.push(m);
        }
        Ok(Doc::Object(members))
    }
}

enum Seg {
    Key(String),
    Index(usize),
}

/// The first repeated key in reading order and the path to its object, as a streaming reader meets it: a
/// member's key is compared before its value is read.
fn first_repeat(doc: &Doc, path: &mut Vec<Seg>) -> Option<(String, String, bool)> {
    match doc {
        Doc::Scalar => None,
        Doc::Array(items) => items.iter().enumerate().find_map(|(i, d)| {
            path.push(Seg::Index(i));
            let found = first_repeat(d, path);
            path.pop();
            found
        }),
        Doc::Object(members) => members.iter().enumerate().find_map(|(i, (k, v))| {
            if members[..i].iter().any(|(p, _)| p == k) {
                let all_plain = plain(k)
                    && path.iter().all(|s| match s {
                        Seg::Key(k) => plain(k),
                        Seg::Index(_) => true,
                    });
                return Some((k.clone(), path_text(path), all_plain));
            }
            path.push(Seg::Key(k.clone()));
            let found = first_repeat(v, path);
            path.pop();
            found
        }),
    }
}

/// A path as messages write it: `context.items[2]`.
fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Keys a message shows as written (no escaping, no shortening), so the oracle's key and path compare as text.
fn plain(k: &str) -> bool {
    k.len() <= 64 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `crate::json::check_unique_keys` against serde_json read into [`Doc`]: it accepts exactly the well-formed
/// documents without a repeated key, reports the first repeat and where its object is, and an accepted document
/// round-trips through `serde_json::Value` to one that is accepted again.
pub fn json(data: &[u8]) -> Verdict {
    let doc = serde_json::from_slice::<Doc>(data);
    match (crate::json::check_unique_keys(data), doc) {
        (Ok(()), Ok(doc)) => {
            assert!(
                first_repeat(&doc, &mut Vec::new()).is_none(),
                "a document that repeats a key was accepted"
            );
            let value: Value = serde_json::from_slice(data)
                .unwrap_or_else(|e| panic!("an accepted document is not a serde_json value: {e}"));
            let again =
                serde_json::to_vec(&value).unwrap_or_else(|e| panic!("a value does not serialise: {e}"));
            let back: Value = crate::json::from_slice_unique(&again)
                .unwrap_or_else(|e| panic!("a re-serialised accepted document is refused: {e}"));
            assert!(same_json(&value, &back), "a document does not round-trip");
            Verdict::Accepted
        }
        (Ok(()), Err(e)) => panic!("check_unique_keys accepted what serde_json refuses: {e}"),
        (Err(CheckError::Duplicate(d)), doc) => {
            if let Ok(doc) = doc {
                let Some((key, path, all_plain)) = first_repeat(&doc, &mut Vec::new()) else {
                    panic!("refused a document without repeated keys for a {d}");
                };
                // Other keys are escaped or shortened in messages.
                if all_plain {
                    assert_eq!((d.key.as_str(), d.path.as_str()), (key.as_str(), path.as_str()));
                }
            }
            Verdict::Refused
        }
        (Err(CheckError::Malformed(e) | CheckError::Trailing(e)), Ok(_)) => {
            panic!("refused well-formed JSON as malformed: {e}")
        }
        (Err(CheckError::Malformed(_) | CheckError::Trailing(_)), Err(_)) => Verdict::Refused,
        (Err(CheckError::Invalid(e)), _) => panic!("check_unique_keys reported a type error: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Request bodies: `decisions.evaluate` and agent registration, parsed as their handlers parse them.

fn refused_as_invalid(e: &ApiError, what: &str) {
    assert_eq!(e.code, Code::InvalidRequest, "{what} refused with {e}");
    assert!(!e.message.is_empty(), "{what} refused without a message");
}

/// A request body as `POST /v1/decisions.evaluate` and `POST /v1/agents` read it. Refusals are 400
/// `invalid_request`; an accepted evaluate body re-sent with its canonical action is the same request, and the entry
/// the record phase writes for it reads back from the ledger with the same context; an accepted manifest's
/// canonical form parses and validates to itself.
pub fn request_body(data: &[u8]) -> Verdict {
    let evaluate = evaluate_body(data);
    let register = register_body(data);
    verdict(evaluate == Verdict::Accepted || register == Verdict::Accepted)
}

fn evaluate_body(data: &[u8]) -> Verdict {
    let req = match crate::api::parse_evaluate(data) {
        Ok(r) => r,
        Err(e) => {
            refused_as_invalid(&e, "an evaluate body");
            return Verdict::Refused;
        }
    };
    assert!(
        crate::json::check_unique_keys(data).is_ok(),
        "an evaluate body that repeats a key was parsed"
    );
    let action = match crate::decide::validate(&req) {
        Ok(a) => a,
        Err(e) => {
            assert_eq!(e.class(), Class::Invalid, "evaluate fields refused with {e}");
            refused_as_invalid(&ApiError::from(e), "evaluate fields");
            return Verdict::Refused;
        }
    };
    let resent = json!({
        "agentId": req.agent_id, "action": action.as_str(), "context": req.context, "tool": req.tool,
        "executionId": req.execution_id, "traceId": req.trace_id,
    });
    let again = serde_json::to_vec(&resent)
        .ok()
        .and_then(|b| crate::api::parse_evaluate(&b).ok())
        .unwrap_or_else(|| panic!("an accepted evaluate body re-sent in canonical form is refused"));
    let again_action = crate::decide::validate(&again)
        .unwrap_or_else(|e| panic!("an accepted action re-sent in canonical form is refused: {e}"));
    assert_eq!(again_action, action);
    assert_eq!(
        (&again.agent_id, &again.execution_id, &again.trace_id),
        (&req.agent_id, &req.execution_id, &req.trace_id)
    );
    let context = Value::Object(req.context);
    assert!(
        same_json(&Value::Object(again.context), &context),
        "the context does not round-trip"
    );

    // What the record phase writes for this request, read back as re-indexing reads it.
    let agent = AgentRef {
        id: "agt_000000000001".into(),
        name: "fuzz-agent".into(),
        ..Default::default()
    };
    let decision = Decision::fail_closed(POLICY_ERROR, None, Vec::new());
    let body = DecisionBody {
        decision_id: "dec_000000000000000000000001",
        agent: &agent,
        action: action.as_str(),
        context: &context,
        tool: req.tool.as_ref(),
        execution_id: req.execution_id.as_deref(),
        trace_id: req.trace_id.as_deref(),
        subject: "fuzz",
        role: "agent",
        decision: &decision,
        approval: None,
        uses_approval: None,
        awaits_approval: None,
        redaction: None,
    };
    let bytes = body
        .encode()
        .unwrap_or_else(|e| panic!("an accepted request could not be encoded for the ledger: {e}"));
    assert_eq!(
        bytes,
        canonical_json(&body.to_value()),
        "the direct decision encoder differs from RFC 8785"
    );
    let entry = Entry::encode_with_body(
        1,
        "decision",
        "lr_000000000000000000000001",
        "acme",
        "2026-01-01T00:00:00.000Z",
        &bytes,
    );
    let read = Entry::decode(&entry)
        .unwrap_or_else(|e| panic!("the ledger cannot read back the entry of an accepted request: {e}"));
    assert_eq!(
        canonical_json(&read.body["context"]),
        canonical_json(&context),
        "the recorded context differs from the request's"
    );
    Verdict::Accepted
}

fn register_body(data: &[u8]) -> Verdict {
    let manifest: Manifest = match crate::api::parse_body(data) {
        Ok(m) => m,
        Err(e) => {
            refused_as_invalid(&e, "a manifest");
            return Verdict::Refused;
        }
    };
    let valid = match manifest.validate() {
        Ok(v) => v,
        Err(RegistryError::Invalid(m)) => {
            assert!(
                m.starts_with("field '"),
                "a manifest refusal that names no field: {m}"
            );
            return Verdict::Refused;
        }
        Err(e) => panic!("manifest validation failed with a non-input error: {e}"),
    };
    let canonical = valid
        .canonical()
        .unwrap_or_else(|e| panic!("a valid manifest has no canonical form: {e}"));
    let again: Manifest = crate::api::parse_body(canonical.as_bytes())
        .unwrap_or_else(|e| panic!("a canonical manifest does not parse: {e}"));
    let again = again
        .validate()
        .unwrap_or_else(|e| panic!("a canonical manifest does not validate: {e}"));
    assert_eq!(
        again.canonical().ok().as_deref(),
        Some(canonical.as_str()),
        "the canonical manifest is not a fixed point"
    );
    Verdict::Accepted
}

// ---------------------------------------------------------------------------------------------------------------
// The config file.

/// A config file's text as `kla serve --config` reads it (`RawConfig::from_yaml`, then validation). Refusals are
/// messages (parse) or `ConfigError::Invalid` (values); the same text always gives the same config, and empty flags
/// over it change nothing.
pub fn config_yaml(data: &[u8]) -> Verdict {
    // The file is read as UTF-8; other bytes are a read error before the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return Verdict::Refused;
    };
    let raw = match RawConfig::from_yaml(text) {
        Ok(r) => r,
        Err(m) => {
            assert!(!m.is_empty(), "a config refused without a message");
            return Verdict::Refused;
        }
    };
    let merged = RawConfig::default().over(raw.clone());
    match (raw.validate(), merged.validate()) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "empty flags changed the config"
            );
            Verdict::Accepted
        }
        (Err(ConfigError::Invalid(a)), Err(ConfigError::Invalid(b))) => {
            assert_eq!(a, b, "empty flags changed the refusal");
            Verdict::Refused
        }
        (a, b) => panic!("config validation: {a:?} vs {b:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Policy packs and `when` expressions.

/// In a pack input, a line starting with this names the next file (`==> rules/x.yaml`); the text before the first
/// such line is `pack.yaml`.
pub const FILE_MARK: &str = "==> ";

/// One input holding the files of a pack ([`FILE_MARK`]); `pack.sig.json` is its signature.
pub fn pack_input(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = files.get(crate::policy::PACK_FILE).cloned().unwrap_or_default();
    for (path, bytes) in files.iter().filter(|(p, _)| *p != crate::policy::PACK_FILE) {
        out.extend_from_slice(format!("\n{FILE_MARK}{path}\n").as_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The files of a pack input (see [`pack_input`]), read into memory as `PackFiles::read_dir` would.
fn pack_files(data: &[u8]) -> PackFiles {
    let mark = format!("\n{FILE_MARK}");
    let mark = mark.as_bytes();
    let mut files = BTreeMap::new();
    let mut signature = None;
    let mut name = crate::policy::PACK_FILE.to_owned();
    let mut rest = data;
    loop {
        let at = rest.windows(mark.len()).position(|w| w == mark);
        let (bytes, next) = match at {
            Some(i) => (&rest[..i], Some(&rest[i + mark.len()..])),
            None => (rest, None),
        };
        if name == SIGNATURE_FILE {
            signature = Some(bytes.to_vec());
        } else if !name.is_empty() {
            files.insert(name.clone(), bytes.to_vec());
        }
        let Some(next) = next else {
            break;
        };
        let end = next.iter().position(|&b| b == b'\n').unwrap_or(next.len());
        name = String::from_utf8_lossy(&next[..end]).trim().to_owned();
        rest = next.get(end + 1..).unwrap_or_default();
    }
    PackFiles {
        root: PathBuf::from("fuzz-pack"),
        files,
        signature,
    }
}

/// Evaluation deadline of the targets: long enough that a debug build decides, short enough to stop slow Rego.
const EVAL_DEADLINE: Duration = Duration::from_millis(50);

fn default_key() -> TrustedKey {
    TrustedKey::parse(crate::app::DEFAULT_PACK_KEY)
        .unwrap_or_else(|e| panic!("the embedded default-pack key does not parse: {e}"))
}

/// Inputs every compiled pack decides (actions and contexts of the shipped packs' rules, and a few besides).
fn eval_inputs() -> Vec<EvalInput> {
    let agent = AgentRef {
        id: "agt_000000000001".into(),
        name: "billing-bot".into(),
        ..Default::default()
    };
    [
        ("execute_refund", json!({"amount": 5000, "currency": "EUR"})),
        (
            "send_email",
            json!({"to": ["a@example.com", "b@other.example"], "amount": "12"}),
        ),
        ("delete_customer", json!({})),
        (
            "github/create_issue",
            json!({"amount": -1, "nested": {"a": [1, 2, {"b": null}]}}),
        ),
    ]
    .into_iter()
    .map(|(action, context)| EvalInput {
        agent: agent.clone(),
        action: action.into(),
        context,
        principal: json!({"subject": "fuzz", "role": "agent"}),
        tenant: "acme".into(),
        now: "2026-01-01T00:00:00.000Z".into(),
        ..Default::default()
    })
    .collect()
}

/// What every decision must satisfy, whatever the pack: failures are a fail-closed `block`, anything but `allow`
/// says why, and no enforced matching rule asks for more than the outcome.
fn check_decision(d: &Decision) {
    if let Some(err) = &d.error {
        assert_eq!(
            d.outcome,
            Outcome::Block,
            "a failed evaluation did not block: {err}"
        );
        assert!(
            d.reason_codes == [POLICY_ERROR] || d.reason_codes == [POLICY_UNAVAILABLE],
            "a failed evaluation has reasons {:?}",
            d.reason_codes
        );
    }
    if d.outcome != Outcome::Allow {
        assert!(
            !d.reason_codes.is_empty(),
            "a {} decision gives no reason",
            d.outcome
        );
    }
    for m in d.matched_rules.iter().filter(|m| !m.shadow) {
        assert!(
            m.decision <= d.outcome,
            "rule {} asks for more than the outcome",
            m.id
        );
    }
}

/// Compiles `files` as `--allow-unsigned` would and decides [`eval_inputs`]; a refusal must be the pack author's
/// (`PolicyError::Invalid`).
fn compile_and_decide(files: &PackFiles) -> Result<(), PolicyError> {
    let unsigned = VerifiedPack {
        files: files.clone(),
        signed_header: None,
        digest: String::new(),
        signer_key_id: None,
    };
    let compiled = match CompiledPack::compile(&unsigned) {
        Ok(c) => c,
        Err(e @ PolicyError::Invalid { .. }) => return Err(e),
        Err(e) => panic!("a pack's content was refused as something else than invalid: {e}"),
    };
    let again =
        CompiledPack::compile(&unsigned).unwrap_or_else(|e| panic!("a pack compiled once, not twice: {e}"));
    assert_eq!(
        (compiled.pack_ref(), compiled.rule_count()),
        (again.pack_ref(), again.rule_count())
    );
    let set = PolicySet::new(vec![Arc::new(compiled)], EVAL_DEADLINE);
    for input in eval_inputs() {
        check_decision(&set.evaluate(&input));
    }
    match crate::policy::run_suites(files, &set) {
        Ok(_) | Err(PolicyError::Invalid { .. }) => Ok(()),
        Err(e) => panic!("a pack's test suite failed with a non-input error: {e}"),
    }
}

/// A pack's files ([`FILE_MARK`] format). Against the shipped pack key only the shipped bytes verify, and any change
/// to one of them is refused; compiled unsigned, the pack is refused as invalid or decides every input within the
/// engine's promises, and its test suites run.
pub fn pack(data: &[u8]) -> Verdict {
    let files = pack_files(data);
    let key = default_key();
    match crate::policy::verify_pack(files.clone(), std::slice::from_ref(&key)) {
        Ok(verified) => {
            CompiledPack::compile(&verified)
                .unwrap_or_else(|e| panic!("a pack signed with the shipped key does not compile: {e}"));
            let mut tampered = files.clone();
            if let Some(bytes) = tampered.files.values_mut().next() {
                bytes.push(b'\n');
                assert!(
                    crate::policy::verify_pack(tampered, std::slice::from_ref(&key)).is_err(),
                    "a changed file still verifies"
                );
            }
        }
        Err(PolicyError::Signature { .. }) => {}
        Err(e) => panic!("a signature was refused as something else than a signature problem: {e}"),
    }
    verdict(compile_and_decide(&files).is_ok())
}

/// A string as a YAML double-quoted scalar: printable ASCII as itself, everything else escaped, so any text reaches
/// the pack parser unchanged.
fn yaml_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// The id of the rule [`when_expr`] puts the expression in.
const WHEN_RULE: &str = "fuzz-when";

/// A `when` expression, optionally followed by further pack files ([`FILE_MARK`] format, e.g. a `.rego` module it
/// calls), compiled through the real pack path into one rule. A refusal is the pack author's and names the rule (or
/// the module at fault); a rule that compiles decides every input within the engine's promises.
pub fn when_expr(data: &[u8]) -> Verdict {
    let mut files = pack_files(data);
    let Some(expr) = files
        .files
        .remove(crate::policy::PACK_FILE)
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return Verdict::Refused;
    };
    let extra = !files.files.is_empty() || files.signature.is_some();
    let yaml = format!(
        "apiVersion: kla.dev/v1\nkind: PolicyPack\nmetadata: {{name: fuzz-when, version: 1.0.0}}\nspec:\n  rules:\n    - id: {WHEN_RULE}\n      when: {}\n      decision: block\n",
        yaml_quoted(&expr)
    );
    files
        .files
        .insert(crate::policy::PACK_FILE.to_owned(), yaml.into_bytes());
    match compile_and_decide(&files) {
        Ok(()) => Verdict::Accepted,
        Err(PolicyError::Invalid { rule, reason, .. }) => {
            if !extra {
                assert_eq!(
                    rule.as_deref(),
                    Some(WHEN_RULE),
                    "a `when` refusal names no rule: {reason}"
                );
            }
            Verdict::Refused
        }
        Err(e) => panic!("unexpected refusal: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Bearer tokens.

fn key_from(label: &str) -> SigningKey {
    SigningKey::from_bytes(&Sha256::digest(label.as_bytes()).into())
}

/// The key of kla's own tokens in the token target (fixed, so seeds stay valid).
pub fn token_local_key() -> SigningKey {
    key_from("kla fuzzing: local token key")
}

/// The external issuer's key in the token target.
pub fn token_idp_key() -> SigningKey {
    key_from("kla fuzzing: external issuer key")
}

/// The external issuer, audience and key id of the token target.
pub const TOKEN_IDP: (&str, &str, &str) = ("https://idp.example", "kla-api", "idp-1");

fn authenticator() -> Authenticator {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    let pem = token_local_key()
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap_or_else(|e| panic!("cannot encode the local key: {e}"));
    let (issuer, audience, kid) = TOKEN_IDP;
    let x = B64URL.encode(token_idp_key().verifying_key().as_bytes());
    let jwks = serde_json::from_value(json!({"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}
    ]}))
    .unwrap_or_else(|e| panic!("the JWKS does not parse: {e}"));
    let external = ExternalIssuer {
        jwks,
        issuer: issuer.into(),
        audience: audience.into(),
    };
    Authenticator::new(pem.as_bytes(), Some(external)).unwrap_or_else(|e| panic!("no authenticator: {e}"))
}

/// A compact JWS over exactly these header and claims bytes, signed with `key`.
pub fn sign_token(header: &[u8], claims: &[u8], key: &SigningKey) -> String {
    let msg = format!("{}.{}", B64URL.encode(header), B64URL.encode(claims));
    let sig = key.sign(msg.as_bytes());
    format!("{msg}.{}", B64URL.encode(sig.to_bytes()))
}

/// Words of Rust, serde, base64 and jsonwebtoken that a refusal must not show the caller.
const INTERNALS: &[&str] = &[
    "Error(",
    "Error {",
    "ErrorKind",
    "InvalidAlgorithm",
    "InvalidSignature",
    "ExpiredSignature",
    "Base64",
    "base64",
    "Json",
    "serde",
    "expected",
    "variant",
    "at line",
    "column",
    "`",
    "invalid token",
];

/// A bearer token. The first byte says how the rest is used: as the token itself (0), or as header and claims
/// (split at the first newline) signed with kla's own key (1) or the external issuer's (2), so the fuzzer reaches the
/// claims. A refusal is a 401 whose message speaks the caller's terms; an accepted token names a principal that
/// follows the role and tenant rules, verifies again to the same principal, and is refused once its claims change.
pub fn token(data: &[u8]) -> Verdict {
    let Some((&mode, rest)) = data.split_first() else {
        return Verdict::Refused;
    };
    let token = match mode % 3 {
        0 => match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return Verdict::Refused,
        },
        m => {
            let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let key = if m == 1 {
                token_local_key()
            } else {
                token_idp_key()
            };
            sign_token(header, claims, &key)
        }
    };
    let auth = authenticator();
    match auth.verify(&token) {
        Ok(p) => {
            check_principal(&token, &p);
            let again = auth
                .verify(&token)
                .unwrap_or_else(|e| panic!("an accepted token is refused the second time: {e}"));
            assert_eq!(
                format!("{p:?}"),
                format!("{again:?}"),
                "a token named two principals"
            );
            let mut parts = token.split('.');
            if let (Some(h), Some(c), Some(s)) = (parts.next(), parts.next(), parts.next())
                && let Ok(mut claims) = B64URL.decode(c)
            {
                claims.push(b' ');
                let changed = format!("{h}.{}.{s}", B64URL.encode(&claims));
                assert!(
                    auth.verify(&changed).is_err(),
                    "a token whose claims changed is accepted"
                );
            }
            Verdict::Accepted
        }
        Err(AuthError::InvalidToken(m)) => {
            // A repeated key is named in the message; it is the caller's own text.
            let ours = m.split("duplicate key '").next().unwrap_or_default();
            assert!(!m.is_empty(), "a token refused without a message");
            for w in INTERNALS {
                assert!(!ours.contains(w), "a refusal shows {w:?}: {m}");
            }
            Verdict::Refused
        }
        Err(e) => panic!("a token was refused as something else than invalid: {e}"),
    }
}

fn check_principal(token: &str, p: &Principal) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "an accepted token is not three parts");
    let decode = |s: &str| {
        B64URL
            .decode(s)
            .unwrap_or_else(|e| panic!("an accepted token part is not base64url: {e}"))
    };
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    for part in [&header, &claims] {
        assert!(
            crate::json::check_unique_keys(part).is_ok(),
            "an accepted token repeats a key"
        );
    }
    let h: Value = serde_json::from_slice(&header).unwrap_or_default();
    let c: Value = serde_json::from_slice(&claims).unwrap_or_default();
    assert_eq!(c["sub"].as_str(), Some(&*p.subject), "subject");
    assert_eq!(c["iss"].as_str(), Some(&*p.issuer), "issuer");
    assert_eq!(c["role"].as_str(), Some(p.role.as_str()), "role");
    let tenants: Vec<&str> = c["tenants"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        tenants,
        p.tenants.iter().map(String::as_str).collect::<Vec<_>>(),
        "tenants"
    );
    assert_eq!(c["agent"].as_str(), p.agent.as_deref(), "agent");
    let local = h.get("kid").is_none();
    if local {
        assert_eq!(
            &*p.issuer,
            crate::auth::LOCAL_ISSUER,
            "a token without kid from another issuer"
        );
    } else {
        assert_eq!(&*p.issuer, TOKEN_IDP.0, "an external token from another issuer");
    }
    if p.role == Role::Operator {
        assert!(local, "an external operator token was accepted");
        assert!(
            p.tenants.is_empty() && p.agent.is_none(),
            "an operator token with a tenant or agent"
        );
    } else {
        assert!(!p.tenants.is_empty(), "a token of a tenant role lists no tenant");
    }
    let now = jsonwebtoken::get_current_timestamp();
    assert!(p.exp + 6 >= now, "an expired token was accepted");
}

// ---------------------------------------------------------------------------------------------------------------
// Ledger entries and files.

/// Stored ledger entry bytes (`Entry::decode`): accepted exactly when they are the RFC 8785 form of an entry (checked
/// against the reference encoder); and for any JSON value as a body, kla's direct encoder writes what the reference
/// writes, which decodes again.
pub fn ledger_entry(data: &[u8]) -> Verdict {
    let v = match Entry::decode(data) {
        Ok(e) => {
            let reference = serde_json_canonicalizer::to_vec(&e)
                .unwrap_or_else(|err| panic!("a decoded entry has no canonical form: {err}"));
            assert_eq!(reference, data, "decode accepted bytes that are not RFC 8785");
            assert!(
                crate::json::check_unique_keys(data).is_ok(),
                "decode accepted an entry that repeats a key"
            );
            Verdict::Accepted
        }
        Err(LedgerError::InvalidEntry(_)) => Verdict::Refused,
        Err(e) => panic!("an entry was refused as something else than invalid: {e}"),
    };
    if let Ok(body) = serde_json::from_slice::<Value>(data) {
        let e = Entry {
            v: crate::ledger::entry::ENTRY_VERSION,
            kind: "decision".into(),
            lineage_id: "lr_000000000000000000000001".into(),
            tenant: "acme".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            body,
        };
        match e.encode() {
            Ok(bytes) => {
                let reference = serde_json_canonicalizer::to_vec(&e)
                    .unwrap_or_else(|err| panic!("kla encoded what the reference cannot: {err}"));
                assert_eq!(bytes, reference, "the direct entry encoder differs from RFC 8785");
                Entry::decode(&bytes).unwrap_or_else(|err| panic!("an encoded entry does not decode: {err}"));
            }
            Err(LedgerError::InvalidEntry(_)) => {}
            Err(err) => panic!("encoding an entry failed with {err}"),
        }
    }
    v
}

/// A private directory under `/dev/shm` (or the temporary directory), removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> ScratchDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "kla-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ledger key of the ledger-file target (fixed, as a PKCS#8 PEM).
fn ledger_key_pem() -> String {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    key_from("kla fuzzing: ledger key")
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map(|p| p.to_string())
        .unwrap_or_else(|e| panic!("cannot encode the ledger key: {e}"))
}

const ORIGIN: &str = "kla.local/ledger";

/// A ledger directory holding `entries` as its `entries.log` (and its key and origin, so nothing is generated).
fn ledger_dir(entries: &[u8]) -> ScratchDir {
    use std::os::unix::fs::OpenOptionsExt;
    let d = ScratchDir::new();
    let write = |name: &str, bytes: &[u8]| {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(d.0.join(name))
            .and_then(|mut f| f.write_all(bytes))
            .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    };
    write("origin", format!("{ORIGIN}\n").as_bytes());
    write("ledger.key", ledger_key_pem().as_bytes());
    write(crate::ledger::log::ENTRIES_FILE, entries);
    d
}

/// How an entries file ends, by the framing rules of `docs/ledger-format.md` (written independently of kla's two
/// readers, `kla ledger verify` and recovery on open).
#[derive(Debug, PartialEq)]
enum Tail {
    /// At the end of the file, or only zeros follow (the preallocated region).
    Clean,
    /// An incomplete final record: never acknowledged, cut on open.
    Torn,
    /// A full-length final record with a bad checksum followed only by zeros: a torn write into the zero-filled
    /// region, cut on open.
    TornInZeros,
    /// Anything else: damage.
    Damage,
}

struct Framing {
    intact: u64,
    root: tree::Hash,
    tail: Tail,
}

fn framing(data: &[u8]) -> Framing {
    const HEADER: usize = 8;
    const MAX_ENTRY: usize = 16 << 20;
    let zeros = |from: usize| data[from..].iter().all(|&b| b == 0);
    let mut tree = MemTree::new();
    let mut pos = 0usize;
    let tail = loop {
        if pos == data.len() {
            break Tail::Clean;
        }
        if data.len() - pos < HEADER {
            break if zeros(pos) { Tail::Clean } else { Tail::Torn };
        }
        let h = &data[pos..pos + HEADER];
        if h.iter().all(|&b| b == 0) {
            break if zeros(pos) { Tail::Clean } else { Tail::Damage };
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 || len > MAX_ENTRY {
            break Tail::Damage;
        }
        let next = pos + HEADER + len;
        if next > data.len() {
            break Tail::Torn;
        }
        let body = &data[pos + HEADER..next];
        if crc32fast::hash(body) != sum {
            break if next < data.len() && zeros(next) {
                Tail::TornInZeros
            } else {
                Tail::Damage
            };
        }
        tree.push(body);
        pos = next;
    };
    Framing {
        intact: tree.size(),
        root: tree.root(),
        tail,
    }
}

/// `kla ledger verify` on the directory: its entry count and root, or the error.
fn verify_dir(dir: &Path) -> Result<(u64, tree::Hash), LedgerError> {
    crate::ledger::verify_ledger_dir(dir, &mut |_, _| {}).map(|s| (s.entries, s.root))
}

/// Opens the ledger in `dir` with `repair` (recovery on open) and closes it again; returns its size.
fn open_dir(dir: &Path, repair: RepairMode) -> Result<u64, LedgerError> {
    let mut cfg = LedgerConfig::new(dir);
    cfg.repair = repair;
    Ledger::open(cfg).map(|l| l.size())
}

/// An `entries.log` as `kla ledger verify` and startup read it. Both readers agree with an independent reading of
/// the framing and with each other: verify accepts exactly a clean, torn or torn-into-zeros end and then counts the
/// intact records and their root; opening refuses exactly what verify refuses; repair mode `truncate` always opens,
/// keeping exactly the intact records; and every log an open leaves behind verifies.
pub fn ledger_file(data: &[u8]) -> Verdict {
    let expect = framing(data);
    let readable = expect.tail != Tail::Damage;
    let dir = ledger_dir(data);
    let verified = verify_dir(&dir.0);
    match &verified {
        Ok((n, root)) => {
            assert!(readable, "verify accepted a damaged log ({:?})", expect.tail);
            assert_eq!(
                (*n, *root),
                (expect.intact, expect.root),
                "verify counted other records"
            );
        }
        Err(LedgerError::Corrupt { .. }) => assert!(!readable, "verify refused a readable log"),
        Err(e) => panic!("verify failed with {e}"),
    }
    match open_dir(&dir.0, RepairMode::Refuse) {
        Ok(size) => {
            assert!(readable, "open accepted a damaged log ({:?})", expect.tail);
            assert_eq!(size, expect.intact, "open kept other records");
            let after = verify_dir(&dir.0).unwrap_or_else(|e| panic!("an opened log does not verify: {e}"));
            assert_eq!(
                after,
                (expect.intact, expect.root),
                "the opened log verifies differently"
            );
        }
        Err(LedgerError::Corrupt { .. }) => assert!(!readable, "open refused a readable log"),
        Err(e) => panic!("open failed with {e}"),
    }
    let dir = ledger_dir(data);
    let size = open_dir(&dir.0, RepairMode::Truncate)
        .unwrap_or_else(|e| panic!("repair mode truncate could not open a log without a checkpoint: {e}"));
    assert_eq!(
        size, expect.intact,
        "truncate kept other records than the intact ones"
    );
    let after = verify_dir(&dir.0).unwrap_or_else(|e| panic!("a truncated log does not verify: {e}"));
    assert_eq!(
        after,
        (expect.intact, expect.root),
        "the truncated log verifies differently"
    );
    verdict(verified.is_ok())
}

/// A ledger file's bytes: each entry framed as `entries.log` stores it (length, CRC-32, bytes).
pub fn frame_entries(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(e).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

// ---------------------------------------------------------------------------------------------------------------
// Evidence bundles.

/// The signer of the evidence target's checkpoints (fixed, so seeds stay valid).
fn evidence_signer() -> NoteSigner {
    NoteSigner::new(ORIGIN, key_from("kla fuzzing: ledger checkpoint key"))
        .unwrap_or_else(|e| panic!("no note signer: {e}"))
}

/// The verifier key the evidence target checks bundles with (what `kla verify --key` takes).
pub fn evidence_vkey() -> String {
    evidence_signer().verifier().to_vkey()
}

fn parse_hash(s: &str) -> Option<tree::Hash> {
    hex::decode(s.strip_prefix("sha256:")?).ok()?.try_into().ok()
}

fn fmt_hash(h: &tree::Hash) -> String {
    format!("sha256:{}", hex::encode(h))
}

/// The length of the RFC 6962 audit path of leaf `m` in a tree of `n` leaves (section 2.1.1, written from the
/// definition): a strict verifier accepts no other length.
fn audit_path_len(m: u64, n: u64) -> usize {
    if n <= 1 {
        return 0;
    }
    let k = 1u64 << (63 - (n - 1).leading_zeros());
    if m < k {
        1 + audit_path_len(m, k)
    } else {
        1 + audit_path_len(m - k, n - k)
    }
}

/// An evidence bundle as `kla verify BUNDLE --key` reads it, checked with the target's key; and the same bundle with
/// its checkpoint re-signed for its own tree size and root, so the fuzzer reaches the inclusion proofs. A refusal is
/// a `BadBundle`; an accepted bundle's proofs have exactly the audit path's length, its entries decode, and changing
/// an entry or a proof hash makes it refused.
pub fn evidence(data: &[u8]) -> Verdict {
    let vkey = evidence_vkey();
    let first = check_bundle(data, &vkey);
    if let Ok(mut b) = serde_json::from_slice::<EvidenceBundle>(data)
        && let Some(root) = parse_hash(&b.root_hash)
    {
        let signer = evidence_signer();
        b.checkpoint = signer.checkpoint(ORIGIN, b.tree_size, root).text().to_owned();
        b.origin = ORIGIN.into();
        b.key_id = hex::encode(signer.verifier().key_id());
        if let Ok(bytes) = serde_json::to_vec(&b) {
            check_bundle(&bytes, &vkey);
        }
    }
    first
}

fn check_bundle(bytes: &[u8], vkey: &str) -> Verdict {
    match crate::ledger::verify_bundle(bytes, vkey) {
        Ok(report) => {
            let b: EvidenceBundle = crate::json::from_slice_unique(bytes)
                .unwrap_or_else(|e| panic!("an accepted bundle does not parse: {e}"));
            assert_eq!(b.format, BUNDLE_FORMAT);
            assert_eq!((report.tree_size, &report.root_hash), (b.tree_size, &b.root_hash));
            for e in &b.entries {
                assert_eq!(
                    e.inclusion_proof.len(),
                    audit_path_len(e.ledger_index, b.tree_size),
                    "an inclusion proof of the wrong length was accepted"
                );
                let entry = Entry::decode(e.entry.as_bytes()).unwrap_or_else(|err| {
                    panic!("an accepted bundle holds an entry that does not decode: {err}")
                });
                assert_eq!(entry.lineage_id, e.lineage_id);
            }
            let refused = |t: &EvidenceBundle| {
                serde_json::to_vec(t)
                    .map(|b| crate::ledger::verify_bundle(&b, vkey).is_err())
                    .unwrap_or(true)
            };
            if let Some(e) = b.entries.first() {
                let mut t = b.clone();
                t.entries[0].entry.push(' ');
                assert!(refused(&t), "a changed entry still verifies");
                if let Some(h) = e.inclusion_proof.first().and_then(|h| parse_hash(h)) {
                    let mut flipped = h;
                    flipped[0] ^= 1;
                    let mut t = b.clone();
                    t.entries[0].inclusion_proof[0] = fmt_hash(&flipped);
                    assert!(refused(&t), "a changed proof hash still verifies");
                }
            }
            Verdict::Accepted
        }
        Err(LedgerError::BadBundle { .. }) => Verdict::Refused,
        Err(e) => panic!("a bundle was refused as something else than a bad bundle: {e}"),
    }
}

/// A bundle of `entries` proving those at `prove`, signed with the evidence target's key.
pub fn bundle_of(entries: &[Vec<u8>], prove: &[u64]) -> EvidenceBundle {
    let mut t = MemTree::new();
    for e in entries {
        t.push(e);
    }
    let size = t.size();
    let signer = evidence_signer();
    let cp = signer.checkpoint(ORIGIN, size, t.root());
    let proven = prove
        .iter()
        .filter_map(|&i| {
            let bytes = entries.get(usize::try_from(i).ok()?)?;
            let e = Entry::decode(bytes).ok()?;
            let proof = tree::inclusion_proof(&t, i, size).ok()?;
            Some(EvidenceEntry {
                lineage_id: e.lineage_id,
                ledger_index: i,
                entry: String::from_utf8(bytes.clone()).ok()?,
                leaf_hash: fmt_hash(&tree::leaf_hash(bytes)),
                inclusion_proof: proof.iter().map(fmt_hash).collect(),
            })
        })
        .collect();
    EvidenceBundle {
        format: BUNDLE_FORMAT.into(),
        origin: ORIGIN.into(),
        key_id: hex::encode(signer.verifier().key_id()),
        checkpoint: cp.text().to_owned(),
        tree_size: size,
        root_hash: fmt_hash(&t.root()),
        entries: proven,
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Names.

/// The name grammar of `crate::names`, written from its module docs as an oracle.
fn grammar(kind: Kind, s: &str) -> bool {
    if s.is_empty() || s.chars().count() > names::MAX_LEN {
        return false;
    }
    let part_ok = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
    };
    match kind {
        Kind::Action => s.split(['/', ':']).all(part_ok),
        Kind::Agent => part_ok(s),
    }
}

/// A name or pattern as an entry point or a pack gives it. Names are accepted exactly by the grammar, in canonical
/// (ASCII lowercase) form, idempotently; every agent name is an action name; a pattern without glob syntax is the
/// canonical name, and a glob is kept as written.
pub fn names(data: &[u8]) -> Verdict {
    let Ok(s) = std::str::from_utf8(data) else {
        return Verdict::Refused;
    };
    let mut accepted = false;
    for kind in [Kind::Action, Kind::Agent] {
        let got = names::canonical(kind, s);
        assert_eq!(got.is_ok(), grammar(kind, s), "{kind:?} {s:?}: {got:?}");
        match &got {
            Ok(c) => {
                accepted = true;
                assert_eq!(c, &s.to_ascii_lowercase());
                assert_eq!(
                    names::canonical(kind, c).as_ref(),
                    Ok(c),
                    "canonical form is not a fixed point"
                );
                if kind == Kind::Action {
                    assert!(names::is_canonical_action(c));
                }
                assert_eq!(names::pattern(kind, c), Ok(Pattern::Exact(c.clone())));
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match names::pattern(kind, s) {
            Ok(Pattern::Any) => assert_eq!(s, "*"),
            Ok(Pattern::Exact(c)) => assert_eq!(Ok(c), got, "an exact pattern is not the canonical name"),
            Ok(Pattern::Glob(g)) => {
                assert_eq!(g, s);
                assert!(
                    s.contains(['*', '?', '[', ']', '{', '}']),
                    "a glob without glob syntax"
                );
                accepted = true;
            }
            Err(_) => {}
        }
    }
    if names::agent(s).is_ok() {
        assert!(
            names::action(s).is_ok(),
            "an agent name that is not an action name"
        );
    }
    verdict(accepted)
}

/// The OTLP export decoders as the receivers call them. The first byte picks the encoding (`0` protobuf, `1` JSON,
/// `2` gzip-compressed protobuf, inflated under a 1 MiB limit); the rest is the body. An accepted export
/// re-encodes to the same protobuf bytes; after validation every span left has valid ids; redaction with an
/// identity function changes nothing but kla's own summary attributes; sealing keeps every span (none is too large
/// under the limit), each hash recomputes from the body, and every body has a canonical encoding.
pub fn otlp(data: &[u8]) -> Verdict {
    use crate::otlp::{Encoding, seal, walk};
    use prost::Message as _;
    let Some((&mode, body)) = data.split_first() else {
        return Verdict::Refused;
    };
    let inflated;
    let (encoding, body) = match mode {
        0 => (Encoding::Protobuf, body),
        1 => (Encoding::Json, body),
        2 => match crate::otlp::gunzip(body, 1 << 20) {
            Ok(b) => {
                inflated = b;
                (Encoding::Protobuf, inflated.as_slice())
            }
            Err(e) => {
                assert!(matches!(e.class(), Class::Invalid | Class::TooLarge), "{e}");
                return Verdict::Refused;
            }
        },
        _ => return Verdict::Refused,
    };
    let mut req = match crate::otlp::decode(encoding, body) {
        Ok(r) => r,
        Err(e) => {
            assert_eq!(e.class(), Class::Invalid, "{e}");
            assert!(!e.to_string().is_empty());
            return Verdict::Refused;
        }
    };
    let bytes = req.encode_to_vec();
    let again = crate::otlp::decode(Encoding::Protobuf, &bytes).expect("an accepted export re-decodes");
    assert_eq!(again.encode_to_vec(), bytes, "protobuf round trip");
    let total: usize = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum();
    let (rejected, reasons) = walk::reject_invalid(&mut req);
    assert_eq!(rejected > 0, !reasons.is_empty());
    let kept: Vec<_> = req
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    assert_eq!(kept.len() as u64 + rejected, total as u64);
    assert!(kept.iter().all(|s| walk::invalid_reason(s).is_none()));
    let kept = kept.len() as u64;
    let mut strip = req.clone();
    let mut keep =
        walk::redact_fn(|_: &str, s: &str, _: &mut crate::redact::Report| std::borrow::Cow::Borrowed(s));
    let redacted = walk::redact_export(&mut keep, &mut req);
    for m in [&mut strip, &mut req] {
        for sp in m
            .resource_spans
            .iter_mut()
            .flat_map(|r| &mut r.scope_spans)
            .flat_map(|s| &mut s.spans)
        {
            sp.attributes
                .retain(|kv| !kv.key.starts_with(walk::SUMMARY_PREFIX));
        }
    }
    // Deeply nested values are cut by the walk; below that depth nothing changes.
    let deep = format!("{strip:?}").matches("ArrayValue").count()
        + format!("{strip:?}").matches("KvlistValue").count();
    if deep < walk::MAX_VALUE_DEPTH {
        assert_eq!(
            strip.encode_to_vec(),
            req.encode_to_vec(),
            "identity redaction changed the export"
        );
    }
    let sealed = seal::seal("fuzz", req, &redacted, &[]);
    assert_eq!(sealed.spans + sealed.rejected, kept);
    for b in &sealed.batches {
        let body = serde_json_canonicalizer::to_vec(&b.body).expect("a sealed body has a canonical form");
        assert!(!body.is_empty());
        let spans: Vec<&Value> = b.body["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
            .flat_map(|s| s["spans"].as_array().into_iter().flatten())
            .collect();
        let hashes = b.body["spanHashes"].as_array().expect("span hashes");
        assert_eq!(spans.len(), hashes.len());
        for (sp, h) in spans.iter().zip(hashes) {
            assert_eq!(h["hash"], seal::span_hash(sp), "a span hash does not recompute");
            assert_eq!(sp["traceId"], b.trace_id.as_str());
        }
    }
    Verdict::Accepted
}

// ---------------------------------------------------------------------------------------------------------------
// MCP: `proxy::mcp::wire`, the POST body, the routing headers and the SSE events of an MCP route.

/// Input: header lines (`name: value`) up to the first empty line, then the body. The body is read as a POST body
/// (`wire::parse`, then the header checks of both eras) and as an SSE stream (split whole and in two chunks, each
/// event's data read and replaced).
pub fn mcp(data: &[u8]) -> Verdict {
    use crate::proxy::mcp::wire::{self, Era, Posted};
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (&[][..], data),
    };
    let mut headers = http::HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    for v in headers.values() {
        let Ok(s) = v.to_str() else { continue };
        if let (Some(d), Some(payload)) = (
            wire::decode_header(s),
            s.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")),
        ) {
            let e = base64::engine::general_purpose::STANDARD;
            assert_eq!(
                e.encode(d.as_bytes()),
                payload,
                "a decoded header is not its canonical base64"
            );
        }
    }
    mcp_sse(body);

    let posted = match wire::parse(body) {
        Ok(p) => p,
        Err(r) => {
            assert!(
                r.code == wire::PARSE_ERROR || r.code == wire::INVALID_REQUEST,
                "{r:?}"
            );
            assert!(r.id.is_null() || r.id.is_string() || r.id.is_number(), "{r:?}");
            assert!(r.code != wire::PARSE_ERROR || r.id.is_null(), "{r:?}");
            assert!(!r.message.is_empty());
            return Verdict::Refused;
        }
    };
    let messages = match &posted {
        Posted::Single(m) => std::slice::from_ref(m),
        Posted::Batch(b) => {
            assert!(!b.is_empty(), "an empty batch was accepted");
            b.as_slice()
        }
    };
    // Each accepted message re-serialises to JSON that parses back to the same message.
    for m in messages {
        let text = serde_json::to_vec(&m.0).expect("an accepted message re-serialises");
        match wire::parse(&text) {
            Ok(Posted::Single(again)) => assert!(
                same_json(&Value::Object(again.0), &Value::Object(m.0.clone())),
                "a message changed on re-parsing"
            ),
            other => panic!("a re-serialised message is refused: {other:?}"),
        }
        let id = m.answer_id();
        assert!(id.is_null() || id.is_string() || id.is_number(), "{id:?}");
    }
    if let Posted::Batch(b) = &posted {
        let all = Value::Array(b.iter().map(|m| Value::Object(m.0.clone())).collect());
        let text = serde_json::to_vec(&all).expect("an accepted batch re-serialises");
        assert!(matches!(wire::parse(&text), Ok(Posted::Batch(again)) if again.len() == b.len()));
        let _ = wire::batch_allowed(&headers);
        return Verdict::Accepted;
    }
    let m = &messages[0];
    let era = wire::era(&headers, Some(m));
    let checks = [Era::Handshake, Era::Stateless].map(|e| {
        let r = wire::check_headers(&headers, m, e);
        if let Err(r) = &r {
            assert_eq!((r.code, &r.id), (wire::HEADER_MISMATCH, &m.answer_id()), "{r:?}");
            assert!(!r.message.is_empty());
        }
        r.is_ok()
    });
    // The stateless era only adds requirements.
    assert!(
        !checks[1] || checks[0],
        "a stateless check passed that the handshake check refused"
    );
    if checks[1] && m.request_id().is_some() {
        let method = headers.get("mcp-method").and_then(|v| v.to_str().ok());
        assert_eq!(
            method,
            m.method(),
            "a stateless request passed without its Mcp-Method"
        );
    }
    verdict(checks[usize::from(era == Era::Stateless)])
}

/// The SSE side of [`mcp`]: splitting loses and adds no bytes and does not depend on chunking; every event ends with
/// a blank line; replacing an event's data leaves exactly the new data.
fn mcp_sse(stream: &[u8]) {
    use crate::proxy::mcp::wire::{self, SseSplitter};
    let split = |chunks: &[&[u8]]| {
        let mut s = SseSplitter::default();
        let mut events = Vec::new();
        for c in chunks {
            events.extend(s.push(c).expect("a short stream is under the event limit"));
        }
        (events, s.rest())
    };
    let (whole, rest) = split(&[stream]);
    let cut = stream.len().checked_div(2).unwrap_or(0) + stream.first().map_or(0, |b| usize::from(*b) % 7);
    let cut = cut.min(stream.len());
    let (parts, rest2) = split(&[&stream[..cut], &stream[cut..]]);
    let mut all: Vec<u8> = whole.iter().flat_map(|e| e.iter().copied()).collect();
    all.extend_from_slice(&rest);
    assert_eq!(all, stream, "splitting changed the stream");
    // A '\r' held back at a chunk's end may end an event only once the next chunk arrives; the bytes are the same.
    let mut all2: Vec<u8> = parts.iter().flat_map(|e| e.iter().copied()).collect();
    all2.extend_from_slice(&rest2);
    assert_eq!(all2, stream, "splitting in two chunks changed the stream");
    for ev in &whole {
        // An event is its lines and the empty line that ends it: it ends with a line break, and so does what
        // precedes that break (unless nothing does).
        let strip = |b: &[u8]| -> Option<usize> {
            if b.ends_with(b"\r\n") {
                Some(b.len() - 2)
            } else if b.ends_with(b"\n") || b.ends_with(b"\r") {
                Some(b.len() - 1)
            } else {
                None
            }
        };
        let body = strip(ev).expect("an event ends with a line break");
        assert!(
            body == 0 || strip(&ev[..body]).is_some(),
            "an event does not end with an empty line: {ev:?}"
        );
        let Some(old) = wire::event_data(ev) else {
            continue;
        };
        let new = json!({"jsonrpc": "2.0", "id": 1, "result": {"replaced": old.len()}});
        let out = wire::replace_data(ev, &new);
        assert_eq!(
            wire::event_data(&out),
            Some(new.to_string()),
            "a replaced event carries other data: {:?}",
            String::from_utf8_lossy(&out)
        );
        let (again, left) = split(&[&out]);
        assert!(
            again.len() == 1 && left.is_empty(),
            "a replaced event is not one event"
        );
    }
    // The end of the stream may complete one more event (a held-back '\r'); what an MCP route writes of each event
    // reads back as it read it, so a client reads nothing the route did not.
    let mut s = SseSplitter::default();
    let mut events = s.push(stream).expect("a short stream is under the event limit");
    events.extend(s.finish().0);
    for (i, ev) in events.iter().enumerate() {
        let read = wire::read_event(ev, i == 0);
        let data = read
            .data
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok());
        let out = wire::render_event(&read, data.as_ref());
        let again = wire::read_event(&out, false);
        assert_eq!(
            again.data,
            data.map(|v| v.to_string()),
            "a rewritten event carries other data"
        );
        assert_eq!(
            (again.comments, again.event, again.id, again.retry),
            (read.comments, read.event, read.id, read.retry)
        );
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Seeds.

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

/// MCP seeds: requests of both eras with their routing headers, a batch, a notification, a response, SSE streams,
/// and refusals.
fn mcp_seeds() -> Vec<(&'static str, Vec<u8>, Verdict)> {
    let post = |headers: &str, body: Value| format!("{headers}\n\n{body}").into_bytes();
    let v2026 = "io.modelcontextprotocol/protocolVersion";
    vec![
        (
            "initialize",
            post(
                "mcp-protocol-version: 2025-06-18",
                json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
                    "capabilities": {"roots": {"listChanged": true}, "sampling": {}},
                    "clientInfo": {"name": "claude-code", "version": "1.0.0"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "initialized-notification",
            post(
                "mcp-protocol-version: 2025-06-18\nmcp-session-id: 1868a90c",
                json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-list-handshake",
            post(
                "mcp-protocol-version: 2025-11-25",
                json!({"jsonrpc": "2.0", "id": "list-1", "method": "tools/list", "params": {"cursor": "c1"}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-call-handshake",
            post(
                "mcp-protocol-version: 2025-06-18",
                json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "execute_refund",
                    "arguments": {"amount": 5000, "currency": "EUR", "note": "caf\u{e9}"},
                    "_meta": {"progressToken": "p-2"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "batch-2025-03-26",
            format!(
                "mcp-protocol-version: 2025-03-26\n\n{}",
                json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                       {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "lookup", "arguments": {"q": "x"}}},
                       {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 0}}])
            )
            .into_bytes(),
            Verdict::Accepted,
        ),
        (
            "response-to-server",
            post(
                "",
                json!({"jsonrpc": "2.0", "id": "srv-1", "result": {"roots": [{"uri": "file:///tmp", "name": "tmp"}]}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-list-stateless",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/list",
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": {v2026: "2026-07-28"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-call-stateless",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/call\nmcp-name: execute_refund",
                json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "execute_refund",
                    "arguments": {"amount": 12000, "to": ["a@example.com"]},
                    "_meta": {v2026: "2026-07-28", "io.modelcontextprotocol/clientCapabilities":
                        {"extensions": {"io.modelcontextprotocol/tasks": {}}}}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tools-call-base64-name",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/call\nmcp-name: =?base64?Y2Fmw6k=?=",
                json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "caf\u{e9}",
                    "arguments": {}, "_meta": {v2026: "2026-07-28"}}}),
            ),
            Verdict::Accepted,
        ),
        (
            "tasks-get-stateless",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tasks/get\nmcp-name: task-1",
                json!({"jsonrpc": "2.0", "id": 9, "method": "tasks/get", "params": {"taskId": "task-1"}}),
            ),
            Verdict::Accepted,
        ),
        (
            "sse-stream",
            b"event: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p-2\",\"progress\":1}}\r\n\r\n: ping\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\n data: \"result\":{\"tools\":[{\"name\":\"a\"}]}}\n\n"
                .to_vec(),
            Verdict::Refused,
        ),
        (
            "sse-cr-lines",
            b"event: message\rdata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"hidden\"}]}}\r\r\n".to_vec(),
            Verdict::Refused,
        ),
        (
            "header-mismatch",
            post(
                "mcp-protocol-version: 2026-07-28\nmcp-method: tools/list\nmcp-name: lookup",
                json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "lookup"}}),
            ),
            Verdict::Refused,
        ),
        (
            "repeated-key",
            b"\n\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"method\":\"tools/list\"}".to_vec(),
            Verdict::Refused,
        ),
    ]
}

/// OTLP seeds: an export in each encoding (attributes of every kind, an event, a link, a rejected span), and
/// refusals.
fn otlp_seeds() -> Vec<(&'static str, Vec<u8>, Verdict)> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    use std::io::Write as _;
    let json_body = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent"}}]},
    "scopeSpans": [{"scope": {"name": "lib", "version": "1"}, "spans": [
      {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "parentSpanId": "eee19b7ec3c1b173",
       "name": "execute_tool refund", "kind": 3, "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
       "attributes": [{"key": "s", "value": {"stringValue": "user@example.com"}}, {"key": "i", "value": {"intValue": "42"}},
         {"key": "d", "value": {"doubleValue": 0.5}}, {"key": "b", "value": {"boolValue": true}},
         {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": 1}]}}},
         {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}},
         {"key": "bytes", "value": {"bytesValue": "AQI="}}],
       "events": [{"timeUnixNano": "1544712660500000000", "name": "message", "attributes": [{"key": "content", "value": {"stringValue": "hi"}}]}],
       "links": [{"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331", "attributes": []}],
       "status": {"code": 2, "message": "failed"}},
      {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "00", "name": "bad id"}
    ]}]}]});
    let json_bytes = serde_json::to_vec(&json_body).unwrap_or_default();
    let req: ExportTraceServiceRequest = serde_json::from_slice(&json_bytes).unwrap_or_default();
    let proto = req.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = gz.write_all(&proto);
    let gz = gz.finish().unwrap_or_default();
    let with = |mode: u8, body: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(body);
        v
    };
    vec![
        ("protobuf", with(0, &proto), Verdict::Accepted),
        ("json", with(1, &json_bytes), Verdict::Accepted),
        ("gzip", with(2, &gz), Verdict::Accepted),
        (
            "json-repeated-key",
            with(1, br#"{"resourceSpans":[],"resourceSpans":[]}"#),
            Verdict::Refused,
        ),
        (
            "protobuf-truncated",
            with(0, &proto[..proto.len() / 2]),
            Verdict::Refused,
        ),
        ("not-gzip", with(2, b"plain"), Verdict::Refused),
    ]
}

/// The redactor (`crate::redact`) over any text, and over it as JSON when it parses: never panics; what it returns
/// changes it reports, and what it reports nothing for it returns borrowed; a JSON value stays JSON of the same type;
/// and a text spelled in full-width characters (every printable ASCII character and the space) is found exactly as
/// the text itself, since the detectors read the normalised view. Accepted when nothing was redacted, refused when
/// something was.
pub fn redactor(data: &[u8]) -> Verdict {
    use crate::redact::{Redactor, Report};
    let Ok(s) = std::str::from_utf8(data) else {
        return Verdict::Refused;
    };
    let r = Redactor::builtin();
    let mut report = Report::default();
    let out = r.text("", s, &mut report);
    assert_eq!(
        out == s,
        report.is_empty(),
        "report {:?} for {s:?} -> {out:?}",
        report.counts
    );
    let trimmed = s.trim_start();
    if !trimmed.starts_with('{') && !trimmed.starts_with('[') {
        let wide: String = s
            .chars()
            .map(|c| match c {
                ' ' => '\u{3000}',
                '!'..='~' => char::from_u32(c as u32 + 0xFEE0).unwrap_or(c),
                c => c,
            })
            .collect();
        let mut wide_report = Report::default();
        let wide_out = r.text("", &wide, &mut wide_report);
        assert_eq!(
            wide_report.counts, report.counts,
            "{s:?} -> {out:?}, but its full-width spelling -> {wide_out:?}"
        );
    }
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        let mut vr = Report::default();
        let red = r.value_report(&v, &mut vr);
        assert!(
            red.as_ref() == &v || !vr.is_empty(),
            "{v} -> {red} with nothing reported"
        );
        let same_type = std::mem::discriminant(red.as_ref()) == std::mem::discriminant(&v)
            || (v.is_number() && red.is_string());
        assert!(same_type, "{v} became {red}");
        serde_json::from_str::<Value>(&red.to_string()).expect("redacted JSON re-parses");
    }
    if report.is_empty() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}
