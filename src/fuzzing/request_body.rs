//! Request bodies: `decisions.evaluate` and agent registration, parsed as their handlers parse them.

use serde_json::{Value, json};

use crate::error::{Class, Classify};
use crate::ledger::Entry;
use crate::policy::{AgentRef, Decision, POLICY_ERROR};
use crate::recorder::DecisionBody;
use crate::registry::{Manifest, RegistryError};
use crate::server::{ApiError, Code};

use super::{Verdict, canonical_json, same_json, verdict};

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
    let manifest: Manifest = match crate::server::json::parse(data) {
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
    let again: Manifest = crate::server::json::parse(canonical.as_bytes())
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
