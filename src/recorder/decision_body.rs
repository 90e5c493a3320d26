//! A decision's ledger body in RFC 8785 form, written directly from the decision's parts (the hot path), with the
//! reference encoder as fallback and as the property tests' oracle.

use super::RecordError;
use crate::ledger::LedgerError;
use crate::ledger::jcs::{Obj, write_array};
use crate::policy::{AgentRef, Decision, OnTimeout, Outcome};
use serde_json::{Value, json};

/// The ledger body of a decision, from borrowed parts (the caller keeps them for its answer).
pub struct DecisionBody<'a> {
    /// `dec_...`.
    pub decision_id: &'a str,
    /// The agent as the policy saw it.
    pub agent: &'a AgentRef,
    pub action: &'a str,
    /// The caller's context object.
    pub context: &'a Value,
    /// The caller's tool description, if any.
    pub tool: Option<&'a Value>,
    pub execution_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    /// Token subject of the caller.
    pub subject: &'a str,
    /// The caller's role.
    pub role: &'a str,
    /// What the policy decided.
    pub decision: &'a Decision,
    /// The approval a `require_approval` decision opens (it exists once this entry is durable).
    pub approval: Option<&'a ApprovalTerms>,
    /// The approved approval of this exact action that this decision uses up (`appr_...`).
    pub uses_approval: Option<&'a str>,
    /// The pending approval of this exact action that this decision waits for instead of opening one.
    pub awaits_approval: Option<&'a str>,
    /// Which detectors (and key rules) replaced how many values in the recorded context and tool; recorded as
    /// `redaction` when anything was replaced.
    pub redaction: Option<&'a crate::redact::Report>,
}

/// The terms of the approval a `require_approval` decision opens, recorded in the decision's entry so that the
/// approval and its decision are one write.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalTerms {
    /// `appr_...`.
    pub approval_id: String,
    /// Keyed digest of the exact action (tenant, agent, action, context, tool); see `approvals::digest`.
    pub action_digest: String,
    /// RFC 3339; at this time a pending approval resolves as `on_timeout`.
    pub expires_at: String,
    pub on_timeout: OnTimeout,
    /// Distinct approvers needed.
    pub approvers: u32,
    pub timeout_seconds: u64,
}

impl DecisionBody<'_> {
    /// The canonical (RFC 8785) body, written directly rather than through a sorted `serde_json::Value` (a
    /// decision's hot path). Falls back to the reference encoder where the direct one declines
    /// (integers beyond 2^53 in the caller's context). Equal to the reference encoding of [`Self::to_value`]
    /// (property-tested).
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        match self.encode_direct() {
            Some(b) => Ok(b),
            None => serde_json_canonicalizer::to_vec(&self.to_value())
                .map_err(|e| RecordError::Ledger(LedgerError::InvalidEntry(e.to_string()))),
        }
    }

    fn encode_direct(&self) -> Option<Vec<u8>> {
        let d = self.decision;
        let mut out = Vec::with_capacity(1024);
        let mut o = Obj::begin(&mut out);
        o.str("action", self.action);
        let mut a = Obj::begin(o.raw("agent"));
        a.str("id", &self.agent.id);
        if let Some(h) = &self.agent.manifest_hash {
            a.str("manifestHash", h);
        }
        a.str("name", &self.agent.name);
        if let Some(v) = &self.agent.version {
            a.str("version", v);
        }
        a.end();
        if let Some(t) = self.approval {
            let mut x = Obj::begin(o.raw("approval"));
            x.str("actionDigest", &t.action_digest);
            x.str("approvalId", &t.approval_id);
            x.uint("approvers", u64::from(t.approvers))?;
            x.str("expiresAt", &t.expires_at);
            x.str("onTimeout", t.on_timeout.as_str());
            x.uint("timeoutSeconds", t.timeout_seconds)?;
            x.end();
        }
        // Left out when absent (not `null`): only a retried call's decision carries these.
        if let Some(a) = self.awaits_approval {
            o.str("awaitsApproval", a);
        }
        o.value("context", self.context)?;
        o.str("decision", d.outcome.as_str());
        o.str("decisionId", self.decision_id);
        o.opt_str("error", d.error.as_deref());
        o.uint("evaluationMicros", d.evaluation_micros)?;
        o.opt_str("executionId", self.execution_id);
        write_array(o.raw("matchedRules"), &d.matched_rules, |m, buf| {
            let mut r = Obj::begin(buf);
            if let Some(ap) = &m.approval {
                let mut x = Obj::begin(r.raw("approval"));
                if ap.approvers != 1 {
                    x.uint("approvers", u64::from(ap.approvers))?;
                }
                x.str("onTimeout", ap.on_timeout.as_str());
                x.str("timeout", &ap.timeout);
                x.uint("timeoutSeconds", ap.timeout_seconds)?;
                x.end();
            }
            r.str("decision", m.decision.as_str());
            r.str("id", &m.id);
            if let Some(msg) = &m.message {
                r.str("message", msg);
            }
            r.str("pack", &m.pack);
            r.str("reasonCode", &m.reason_code);
            r.bool("shadow", m.shadow);
            r.end();
            Some(())
        })?;
        write_array(o.raw("policy"), &d.policy, |p, buf| {
            let mut x = Obj::begin(buf);
            x.str("digest", &p.digest);
            x.str("name", &p.name);
            x.opt_str("signerKeyId", p.signer_key_id.as_deref());
            x.str("version", &p.version);
            x.end();
            Some(())
        })?;
        let mut p = Obj::begin(o.raw("principal"));
        p.str("role", self.role);
        p.str("subject", self.subject);
        p.end();
        o.strs("reasonCodes", &d.reason_codes);
        if let Some(r) = self.redaction.filter(|r| !r.is_empty()) {
            o.value("redaction", &r.to_json())?;
        }
        o.bool("requiresDeskApproval", d.outcome == Outcome::RequireApproval);
        match self.tool {
            Some(t) => o.value("tool", t)?,
            None => o.raw("tool").extend_from_slice(b"null"),
        }
        o.opt_str("traceId", self.trace_id);
        if let Some(a) = self.uses_approval {
            o.str("usesApproval", a);
        }
        o.str("wouldDecide", d.would_decide.as_str());
        o.end();
        Some(out)
    }

    /// The same body as a JSON value (the fallback's input, and the tests' oracle).
    pub fn to_value(&self) -> Value {
        let d = self.decision;
        let mut v = json!({
            "decisionId": self.decision_id,
            "agent": self.agent,
            "action": self.action,
            "context": self.context,
            "tool": self.tool,
            "executionId": self.execution_id,
            "traceId": self.trace_id,
            "principal": {"subject": self.subject, "role": self.role},
            "decision": d.outcome,
            "reasonCodes": d.reason_codes,
            "requiresDeskApproval": d.outcome == Outcome::RequireApproval,
            "wouldDecide": d.would_decide,
            "matchedRules": d.matched_rules,
            "policy": d.policy,
            "evaluationMicros": d.evaluation_micros,
            "error": d.error,
        });
        if let (Some(t), Some(o)) = (self.approval, v.as_object_mut()) {
            o.insert("approval".into(), json!(t));
        }
        if let (Some(a), Some(o)) = (self.uses_approval, v.as_object_mut()) {
            o.insert("usesApproval".into(), a.into());
        }
        if let (Some(a), Some(o)) = (self.awaits_approval, v.as_object_mut()) {
            o.insert("awaitsApproval".into(), a.into());
        }
        if let (Some(r), Some(o)) = (self.redaction.filter(|r| !r.is_empty()), v.as_object_mut()) {
            o.insert("redaction".into(), r.to_json());
        }
        v
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ledger::Entry;
    use crate::policy::{ApprovalSpec, MatchedRule, OnTimeout, PackRef};
    use proptest::prelude::*;

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Outcome::Allow),
            Just(Outcome::Warn),
            Just(Outcome::RequireApproval),
            Just(Outcome::Block)
        ]
    }

    /// Strings with the characters JCS treats specially (escapes, non-ASCII, astral).
    fn text() -> impl Strategy<Value = String> {
        "[a-z\"\\\\\\u{0}-\\u{1f}\\u{7f}\\u{e9}\\u{2028}\\u{ffff}\\u{1f600}]{0,8}"
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(text(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn matched_rule() -> impl Strategy<Value = MatchedRule> {
        (
            text(),
            text(),
            outcome(),
            text(),
            proptest::option::of(text()),
            any::<bool>(),
            proptest::option::of((text(), 0u64..1 << 40, any::<bool>())),
        )
            .prop_map(
                |(id, pack, decision, reason_code, message, shadow, ap)| MatchedRule {
                    id,
                    pack,
                    decision,
                    reason_code,
                    message,
                    shadow,
                    approval: ap.map(|(timeout, timeout_seconds, allow)| ApprovalSpec {
                        timeout,
                        timeout_seconds,
                        on_timeout: if allow { OnTimeout::Allow } else { OnTimeout::Block },
                        approvers: 1 + (timeout_seconds % 3) as u32,
                    }),
                },
            )
    }

    fn decision() -> impl Strategy<Value = Decision> {
        (
            outcome(),
            prop::collection::vec(text(), 0..3),
            outcome(),
            prop::collection::vec(matched_rule(), 0..3),
            prop::collection::vec((text(), text(), text(), proptest::option::of(text())), 0..3),
            0u64..1 << 40,
            proptest::option::of(text()),
        )
            .prop_map(
                |(outcome, reason_codes, would_decide, matched_rules, packs, micros, error)| Decision {
                    outcome,
                    reason_codes,
                    would_decide,
                    matched_rules,
                    policy: packs
                        .into_iter()
                        .map(|(name, version, digest, signer_key_id)| PackRef {
                            name,
                            version,
                            digest,
                            signer_key_id,
                        })
                        .collect(),
                    evaluation_micros: micros,
                    error,
                },
            )
    }

    fn agent() -> impl Strategy<Value = AgentRef> {
        (
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
        )
            .prop_map(|(id, name, version, manifest_hash)| AgentRef {
                id,
                name,
                version,
                manifest_hash,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        /// The direct writer is byte-for-byte the reference RFC 8785 encoding of the body as a JSON value, and
        /// the entry around it decodes (which checks the canonical form again).
        #[test]
        fn decision_bodies_are_the_reference_encoding(
            d in decision(),
            a in agent(),
            context in json_value(),
            tool in proptest::option::of(json_value()),
            ids in (text(), text(), proptest::option::of(text()), proptest::option::of(text())),
            role in text(),
            terms in proptest::option::of((text(), text(), 1u32..5, any::<bool>())),
            earlier in proptest::option::of((any::<bool>(), text())),
            counts in proptest::option::of(prop::collection::btree_map("[a-z_:*\\-]{1,12}", 0u64..1000, 0..4)),
        ) {
            let report = counts.map(|counts| crate::redact::Report { counts });
            let terms = terms.map(|(approval_id, action_digest, approvers, allow)| ApprovalTerms {
                approval_id,
                action_digest,
                expires_at: "2026-12-01T00:15:00.000Z".into(),
                on_timeout: if allow { OnTimeout::Allow } else { OnTimeout::Block },
                approvers,
                timeout_seconds: 900,
            });
            let body = DecisionBody {
                decision_id: &ids.0,
                agent: &a,
                action: &ids.1,
                context: &context,
                tool: tool.as_ref(),
                execution_id: ids.2.as_deref(),
                trace_id: ids.3.as_deref(),
                subject: "sub",
                role: &role,
                decision: &d,
                approval: terms.as_ref(),
                uses_approval: earlier.as_ref().filter(|e| e.0).map(|e| e.1.as_str()),
                awaits_approval: earlier.as_ref().filter(|e| !e.0).map(|e| e.1.as_str()),
                redaction: report.as_ref(),
            };
            let reference = serde_json_canonicalizer::to_vec(&body.to_value()).expect("reference");
            let bytes = body.encode().expect("encodes");
            prop_assert_eq!(String::from_utf8_lossy(&bytes), String::from_utf8_lossy(&reference));
            let entry = Entry::encode_with_body(1, "decision", "lr_00", "acme", "2026-11-23T00:00:00.000Z", &bytes);
            let back = Entry::decode(&entry).expect("canonical entry decodes");
            prop_assert_eq!(back.body["decisionId"].as_str(), Some(ids.0.as_str()));
            // The typed body reads what the direct writer wrote and writes the same bytes back.
            use crate::recorder::body::RecordBody;
            let typed = crate::recorder::body::Decision::of_entry(&back).expect("reads as a decision body");
            let again = typed.canonical().expect("canonical");
            prop_assert_eq!(String::from_utf8_lossy(&again), String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn a_context_beyond_two_to_the_53_falls_back_to_the_reference_encoder() {
        let d = Decision::fail_closed("POLICY_ERROR", None, Vec::new());
        let a = AgentRef::default();
        let context: Value = serde_json::from_str(r#"{"n":9007199254740993,"m":1.5}"#).expect("json");
        let body = DecisionBody {
            decision_id: "dec_1",
            agent: &a,
            action: "pay",
            context: &context,
            tool: None,
            execution_id: None,
            trace_id: None,
            subject: "s",
            role: "agent",
            decision: &d,
            approval: None,
            uses_approval: None,
            awaits_approval: None,
            redaction: None,
        };
        assert!(body.encode_direct().is_none(), "the direct writer declines");
        assert_eq!(
            body.encode().expect("fallback"),
            serde_json_canonicalizer::to_vec(&body.to_value()).expect("reference")
        );
    }
}
