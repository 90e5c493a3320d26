//! The config file.

use crate::config::{ConfigError, RawConfig};

use super::Verdict;

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
