//! The agent registry: what a manifest is, how it is validated, redacted (its free text, before anything is
//! recorded), canonicalised (RFC 8785 JCS), hashed (`sha256:<hex>`) and signed with kla's registry key (pure, this
//! file), and the directory that registers agents through the recorder and looks them up (`directory.rs`). Rows
//! live in `store`, HTTP in `api::agents`.

mod directory;

pub use directory::{Agents, Registered};

use crate::names;
use crate::redact::{Redactor, Report};
use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A manifest field is missing or out of range; the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The tenant has no agent with this id.
    #[error("unknown agentId '{0}'")]
    UnknownAgent(String),
    /// The latest version of this name already has this exact manifest.
    #[error("agent '{name}' is already registered with this manifest ({agent_id} version {version})")]
    Duplicate {
        name: String,
        agent_id: String,
        version: i64,
    },
    /// The caller may not register or use this agent.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// Stored agent rows contradict each other.
    #[error("corrupt agent record: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Record(#[from] crate::recorder::RecordError),
}

impl crate::error::Classify for RegistryError {
    fn class(&self) -> crate::error::Class {
        use crate::error::Class;
        match self {
            RegistryError::Invalid(_) => Class::Invalid,
            RegistryError::UnknownAgent(_) => Class::NotFound,
            RegistryError::Duplicate { .. } => Class::Conflict,
            RegistryError::Auth(e) => e.class(),
            RegistryError::Corrupt(_) => Class::Internal,
            RegistryError::Store(e) => e.class(),
            RegistryError::Record(e) => e.class(),
        }
    }
}

/// An agent manifest as registered (the KLA Control Plane API's body plus `endpoint` and `owner`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    /// An agent name ([`crate::names`]), unique within the tenant ignoring case; stored in canonical (lowercase) form.
    pub name: String,
    /// What the agent does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Model identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Action names ([`crate::names`]) of the tools the agent may call, stored in canonical form.
    #[serde(default)]
    pub tools: Vec<String>,
    /// URL kla calls to start an execution (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Who owns the agent (team or person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Manifest {
    /// Checks every field and returns the manifest with `name` and `tools` in canonical form (so `Claims-Triage`
    /// registers, and is unique, as `claims-triage`); the error names the field.
    pub fn validate(mut self) -> Result<Manifest, RegistryError> {
        let bad = |m: String| Err(RegistryError::Invalid(m));
        self.name = names::agent(&self.name)
            .map_err(|e| RegistryError::Invalid(format!("field 'name' {e}")))?
            .into_string();
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return bad("field 'temperature' must be between 0 and 2".into());
        }
        if self.description.as_ref().is_some_and(|d| d.len() > 4096) {
            return bad("field 'description' must be at most 4096 characters".into());
        }
        if self.tools.len() > 1024 {
            return bad("field 'tools' must list at most 1024 tools".into());
        }
        let mut seen = std::collections::HashMap::with_capacity(self.tools.len());
        for (i, t) in self.tools.iter_mut().enumerate() {
            *t = names::action(t)
                .map_err(|e| RegistryError::Invalid(format!("field 'tools[{i}]' {e}")))?
                .into_string();
            if let Some(first) = seen.insert(t.clone(), i) {
                return bad(format!(
                    "field 'tools[{i}]' names the tool of 'tools[{first}]' again ('{t}'; case is ignored)"
                ));
            }
        }
        if let Some(e) = &self.endpoint {
            let uri = e.parse::<http::Uri>().ok();
            let ok = (e.starts_with("http://") || e.starts_with("https://")) && uri.is_some();
            if !ok {
                return bad("field 'endpoint' must be an http or https URL".into());
            }
            // A manifest is recorded for good: a password in the URL would be too.
            if uri
                .as_ref()
                .and_then(http::Uri::authority)
                .is_some_and(|a| a.as_str().contains('@'))
            {
                return bad("field 'endpoint' must not carry credentials (user:password@)".into());
            }
        }
        Ok(self)
    }

    /// The manifest as it may be recorded: its free text (`description`, `model`, `owner`) passes the tenant's
    /// redactor, like a decision's context, because the ledger cannot forget what a registration puts in it. An
    /// `endpoint` that the redactor would change is refused instead: kla calls it as recorded, so it can neither be
    /// recorded raw nor be altered. Run after [`Manifest::validate`] and before [`Manifest::canonical`], so the hash
    /// and signature cover what is stored.
    pub fn redacted(mut self, redactor: &Redactor) -> Result<Manifest, RegistryError> {
        let mut report = Report::default();
        for (key, field) in [
            ("description", &mut self.description),
            ("model", &mut self.model),
            ("owner", &mut self.owner),
        ] {
            if let Some(v) = field
                && let Cow::Owned(r) = redactor.text(key, v, &mut report)
            {
                *v = r;
            }
        }
        if let Some(e) = &self.endpoint {
            let mut found = Report::default();
            if let Cow::Owned(_) = redactor.text("endpoint", e, &mut found) {
                let what: Vec<&str> = found.counts.keys().map(String::as_str).collect();
                return Err(RegistryError::Invalid(format!(
                    "field 'endpoint' holds what redaction removes ({}); an endpoint is recorded as given, so it \
                     must hold none",
                    what.join(", ")
                )));
            }
        }
        Ok(self)
    }

    /// RFC 8785 canonical JSON of the manifest.
    pub fn canonical(&self) -> Result<String, RegistryError> {
        serde_json_canonicalizer::to_string(self).map_err(|e| RegistryError::Invalid(e.to_string()))
    }
}

/// `sha256:<hex>` over the canonical bytes.
pub fn manifest_hash(canonical: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(canonical.as_bytes())))
}

/// kla's signature over the manifest hash string: `ed25519:<base64>`.
pub fn sign_hash(key: &SigningKey, manifest_hash: &str) -> String {
    use base64::Engine;
    let sig = key.sign(manifest_hash.as_bytes());
    format!(
        "ed25519:{}",
        base64::engine::general_purpose::STANDARD.encode(sig.to_bytes())
    )
}

/// A new agent id: `agt_` and 12 random hex digits.
pub fn new_agent_id() -> String {
    format!("agt_{}", hex::encode(rand::random::<[u8; 6]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m() -> Manifest {
        serde_json::from_str(
            r#"{"name":"claims-triage","description":"Triages inbound insurance claims","model":"gpt-4.1",
                "temperature":0.2,"tools":["lookup_policy","flag_for_review"]}"#,
        )
        .expect("the API's example body parses")
    }

    #[test]
    fn canonical_form_is_sorted_and_compact() {
        let c = m().canonical().expect("canonical");
        assert_eq!(
            c,
            r#"{"description":"Triages inbound insurance claims","model":"gpt-4.1","name":"claims-triage","temperature":0.2,"tools":["lookup_policy","flag_for_review"]}"#
        );
        assert_eq!(manifest_hash(&c), manifest_hash(&m().canonical().expect("again")));
        assert!(manifest_hash(&c).starts_with("sha256:"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut x = m();
        x.temperature = Some(3.0);
        assert!(x.validate().expect_err("bad").to_string().contains("temperature"));
        let mut x = m();
        x.name = "bad name".into();
        assert!(x.validate().expect_err("bad").to_string().contains("name"));
        let mut x = m();
        x.endpoint = Some("ftp://x".into());
        assert!(x.validate().expect_err("bad").to_string().contains("endpoint"));
    }

    #[test]
    fn names_are_checked_and_stored_canonical() {
        let mut x = m();
        x.name = "Claims-Triage".into();
        x.tools = vec!["Lookup_Policy".into(), "GitHub/Create_Issue".into()];
        let v = x.validate().expect("valid");
        assert_eq!(v.name, "claims-triage");
        assert_eq!(v.tools, ["lookup_policy", "github/create_issue"]);
        // What is hashed and signed is the canonical form.
        assert!(v.canonical().expect("c").contains(r#""name":"claims-triage""#));
        for (name, why) in [
            ("cl\u{430}ims", "U+0430"),
            ("claims triage", "a space"),
            ("team/bot", "'/'"),
            ("-x", "'-'"),
        ] {
            let mut x = m();
            x.name = name.into();
            let e = x.validate().expect_err("refused").to_string();
            assert!(
                e.starts_with("field 'name' has") && e.contains(why) && e.contains("an agent name is"),
                "{e}"
            );
        }
        for tool in ["lookup policy", "lookup_policy\u{200b}", "ｌookup", ""] {
            let mut x = m();
            x.tools = vec!["ok".into(), tool.into()];
            let e = x.validate().expect_err("refused").to_string();
            assert!(
                e.starts_with("field 'tools[1]'") && e.contains("an action name is"),
                "{e}"
            );
        }
        let mut x = m();
        x.tools = vec!["lookup_policy".into(), "LOOKUP_POLICY".into()];
        let e = x.validate().expect_err("refused").to_string();
        assert!(e.contains("'tools[1]' names the tool of 'tools[0]' again"), "{e}");
    }
}
