//! A policy pack's `redaction:` section: its YAML form (unknown fields refused), its validation and compilation
//! into [`PackRules`] (a bad pattern or glob refuses the pack), and how the rules of every active pack combine into
//! the one [`Engine`] a redactor runs: the strictest setting wins. Pure.

use super::RedactError;
use super::detectors::Builtin;
use super::engine::{Custom, Engine, KeyAction, KeyRule};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What replaces a detected value. Ordered by strength: where packs disagree the strongest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// HMAC-SHA256 with the tenant's key, as lowercase hex (the OpenTelemetry Collector's `hmac-sha256` form):
    /// equal values stay correlatable without being readable.
    Hash,
    /// `[REDACTED:<DETECTOR>]`.
    Mask,
    /// Removed (an object member whose key rule drops it is removed with its key).
    Drop,
}

/// Largest number of custom detectors in one pack.
pub const MAX_CUSTOM: usize = 64;
/// Largest number of key rules in one pack.
pub const MAX_KEY_RULES: usize = 256;
/// Longest custom pattern or key glob (characters).
pub const MAX_PATTERN_LEN: usize = 1024;
/// Compiled size limit of one custom pattern (the `regex` crate's limit), so a pack cannot make kla build a huge
/// automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The key rules every pack gets unless it sets `defaultKeys: false`: values under these keys are credentials
/// whatever they look like.
pub const DEFAULT_KEY_RULES: &[&str] = &[
    "*password*",
    "*passwd*",
    "pwd",
    "*_pwd",
    "*secret*",
    "authorization",
    "*.authorization",
    "proxy-authorization",
    "cookie",
    "*.cookie",
    "set-cookie",
    "*api_key",
    "*apikey",
    "*api-key",
    "*private_key",
    "*access_token",
    "*refresh_token",
    "*session_token",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DetectorSetting {
    Off,
    Mask,
    Hash,
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum KeyActionDoc {
    Allow,
    Mask,
    Hash,
    Drop,
}

fn yes() -> bool {
    true
}

/// The `redaction:` section of a pack's `spec`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedactionDoc {
    /// `false` turns redaction off for this pack (other active packs still redact).
    #[serde(default = "yes")]
    enabled: bool,
    /// The action of every detector the pack does not name (default `mask`).
    #[serde(default)]
    default_action: Option<Action>,
    /// Built-in detectors by name: `off`, `mask`, `hash` or `drop`.
    #[serde(default)]
    detectors: BTreeMap<String, DetectorSetting>,
    /// Whether [`DEFAULT_KEY_RULES`] apply.
    #[serde(default = "yes")]
    default_keys: bool,
    /// Key rules, by attribute or object key glob.
    #[serde(default)]
    keys: Vec<KeyRuleDoc>,
    /// The pack's own detectors.
    #[serde(default)]
    custom: Vec<CustomDoc>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KeyRuleDoc {
    #[serde(rename = "match")]
    pattern: String,
    action: KeyActionDoc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CustomDoc {
    name: String,
    pattern: String,
    #[serde(default)]
    action: Option<Action>,
}

/// One pack's compiled redaction rules.
#[derive(Debug, Clone)]
pub struct PackRules {
    enabled: bool,
    builtins: [Option<Action>; Builtin::ALL.len()],
    keys: Vec<KeyRule>,
    custom: Vec<Arc<Custom>>,
}

impl Default for PackRules {
    fn default() -> Self {
        PackRules::defaults()
    }
}

impl PackRules {
    /// The rules of a pack without a `redaction:` section: the validated detectors (every built-in but the IP
    /// addresses) masking, and the default key rules.
    pub fn defaults() -> PackRules {
        let mut builtins = [None; Builtin::ALL.len()];
        for b in Builtin::ALL {
            if b.on_by_default() {
                builtins[b.index()] = Some(Action::Mask);
            }
        }
        PackRules {
            enabled: true,
            builtins,
            keys: default_keys(),
            custom: Vec::new(),
        }
    }

    /// Validates and compiles a pack's section; the error names the field at fault.
    pub fn compile(doc: RedactionDoc) -> Result<PackRules, RedactError> {
        let bad = |m: String| RedactError::Invalid(format!("redaction: {m}"));
        let default_action = doc.default_action.unwrap_or(Action::Mask);
        let mut builtins = [None; Builtin::ALL.len()];
        for b in Builtin::ALL {
            if b.on_by_default() {
                builtins[b.index()] = Some(default_action);
            }
        }
        for (name, setting) in &doc.detectors {
            let b = Builtin::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
                bad(format!(
                    "detectors: unknown detector {name:?} (known: {})",
                    known.join(", ")
                ))
            })?;
            builtins[b.index()] = match setting {
                DetectorSetting::Off => None,
                DetectorSetting::Mask => Some(Action::Mask),
                DetectorSetting::Hash => Some(Action::Hash),
                DetectorSetting::Drop => Some(Action::Drop),
            };
        }
        if doc.keys.len() > MAX_KEY_RULES {
            return Err(bad(format!("keys: more than {MAX_KEY_RULES} rules")));
        }
        let mut keys = if doc.default_keys {
            default_keys()
        } else {
            Vec::new()
        };
        for (i, k) in doc.keys.iter().enumerate() {
            if k.pattern.is_empty() || k.pattern.chars().count() > MAX_PATTERN_LEN {
                return Err(bad(format!(
                    "keys[{i}].match must be 1 to {MAX_PATTERN_LEN} characters"
                )));
            }
            globset::GlobBuilder::new(&k.pattern)
                .case_insensitive(true)
                .build()
                .map_err(|e| bad(format!("keys[{i}].match {:?}: {e}", k.pattern)))?;
            let action = match k.action {
                KeyActionDoc::Allow => KeyAction::Allow,
                KeyActionDoc::Mask => KeyAction::Redact(Action::Mask),
                KeyActionDoc::Hash => KeyAction::Redact(Action::Hash),
                KeyActionDoc::Drop => KeyAction::Redact(Action::Drop),
            };
            keys.push(KeyRule {
                glob: k.pattern.clone(),
                action,
            });
        }
        if doc.custom.len() > MAX_CUSTOM {
            return Err(bad(format!("custom: more than {MAX_CUSTOM} detectors")));
        }
        let mut custom = Vec::with_capacity(doc.custom.len());
        for (i, c) in doc.custom.iter().enumerate() {
            let n = &c.name;
            let grammar = n.len() <= 64
                && n.starts_with(|ch: char| ch.is_ascii_lowercase())
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !grammar {
                return Err(bad(format!(
                    "custom[{i}].name {n:?} must match [a-z][a-z0-9_]{{0,63}}"
                )));
            }
            if Builtin::from_name(n).is_some() || n.starts_with("key") {
                return Err(bad(format!(
                    "custom[{i}].name {n:?} is reserved for a built-in detector or key rule"
                )));
            }
            if custom.iter().any(|x: &Arc<Custom>| &x.name == n) {
                return Err(bad(format!("custom[{i}].name {n:?} is used twice")));
            }
            if c.pattern.is_empty() || c.pattern.chars().count() > MAX_PATTERN_LEN {
                return Err(bad(format!(
                    "custom[{i}].pattern must be 1 to {MAX_PATTERN_LEN} characters"
                )));
            }
            let regex = regex::RegexBuilder::new(&c.pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| bad(format!("custom[{i}] {n:?}: bad pattern: {e}")))?;
            if regex.is_match("") {
                return Err(bad(format!(
                    "custom[{i}] {n:?}: the pattern matches the empty string, so it would redact nothing"
                )));
            }
            custom.push(Arc::new(Custom {
                name: n.clone(),
                label: format!("[REDACTED:{}]", n.to_ascii_uppercase()),
                regex,
                action: c.action.unwrap_or(default_action),
            }));
        }
        Ok(PackRules {
            enabled: doc.enabled,
            builtins,
            keys,
            custom,
        })
    }

    /// Whether this pack redacts at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

fn default_keys() -> Vec<KeyRule> {
    DEFAULT_KEY_RULES
        .iter()
        .map(|g| KeyRule {
            glob: (*g).to_string(),
            action: KeyAction::Redact(Action::Mask),
        })
        .collect()
}

/// The engine for a set of active packs (each `None` is a pack without a `redaction:` section, which gets
/// [`PackRules::defaults`]). The strictest wins: a detector runs if any enabled pack runs it, with the strongest
/// action any gives it; custom detectors and key rules add up (a key rule that redacts beats one that allows).
/// With no pack at all the defaults apply; only when every pack turns redaction off is nothing redacted.
pub(crate) fn merge(packs: &[Option<&PackRules>]) -> Engine {
    let defaults = PackRules::defaults();
    let all: Vec<&PackRules> = if packs.is_empty() {
        vec![&defaults]
    } else {
        packs.iter().map(|p| p.unwrap_or(&defaults)).collect()
    };
    let on: Vec<&PackRules> = all.into_iter().filter(|p| p.enabled).collect();
    let mut builtins = [None; Builtin::ALL.len()];
    let mut keys = Vec::new();
    let mut custom = Vec::new();
    for p in &on {
        for (i, a) in p.builtins.iter().enumerate() {
            builtins[i] = builtins[i].max(*a);
        }
        for k in &p.keys {
            if !keys
                .iter()
                .any(|x: &KeyRule| x.glob == k.glob && x.action == k.action)
            {
                keys.push(k.clone());
            }
        }
        custom.extend(p.custom.iter().cloned());
    }
    Engine::new(builtins, keys, custom)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Result<PackRules, RedactError> {
        let d: RedactionDoc = serde_yaml::from_str(yaml).map_err(|e| RedactError::Invalid(e.to_string()))?;
        PackRules::compile(d)
    }

    #[test]
    fn a_bad_pattern_unknown_detector_or_field_refuses_the_section() {
        let e = doc("custom: [{name: emp, pattern: 'EMP-[0-9'}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("custom[0]") && e.contains("bad pattern"), "{e}");
        let e = doc("detectors: {emial: mask}").unwrap_err().to_string();
        assert!(e.contains("unknown detector \"emial\""), "{e}");
        assert!(doc("enable: false").is_err(), "unknown fields are refused");
        let e = doc("custom: [{name: emp, pattern: 'x*'}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty string"), "{e}");
        let e = doc("custom: [{name: email, pattern: 'x'}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
        let e = doc("keys: [{match: 'a[', action: allow}]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keys[0]"), "{e}");
        assert!(doc("custom: [{name: emp, pattern: 'EMP-[0-9]{6}', action: hash}]").is_ok());
    }

    #[test]
    fn the_strictest_pack_wins() {
        let a = doc("detectors: {email: hash, ipv4: mask}").unwrap();
        let b = doc("detectors: {email: drop, phone: off}").unwrap();
        let off = doc("enabled: false").unwrap();
        let e = merge(&[Some(&a), Some(&b)]);
        assert_eq!(e.action(Builtin::Email), Some(Action::Drop));
        assert_eq!(e.action(Builtin::Ipv4), Some(Action::Mask));
        assert_eq!(
            e.action(Builtin::Phone),
            Some(Action::Mask),
            "pack a keeps the default"
        );
        assert_eq!(merge(&[Some(&off)]).action(Builtin::Email), None);
        assert_eq!(
            merge(&[Some(&off), None]).action(Builtin::Email),
            Some(Action::Mask)
        );
        assert_eq!(merge(&[]).action(Builtin::Card), Some(Action::Mask));
        assert_eq!(
            merge(&[]).action(Builtin::Ipv4),
            None,
            "IP addresses are off by default"
        );
    }
}
