//! Configuration in two stages: [`RawConfig`] is what a user writes (YAML file keys or `kla serve` flags, every
//! field optional, unknown keys refused), [`Config`] is the validated, typed result that the rest of kla reads.
//! Flags override file keys, file keys override the embedded defaults. This module reads the config file and
//! nothing else; it never touches the process environment (tests pass values in).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors of configuration: always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// Path of the file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid YAML for [`RawConfig`].
    #[error("config {path}: {message}")]
    Parse {
        /// Path of the file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Largest accepted `body-limit`: well under the ledger's 16 MiB entry limit, so any accepted body can be recorded.
pub const MAX_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Every setting as written by a user. Field names are the YAML keys; flags use the same names in kebab case.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawConfig {
    /// Data directory (SQLite store, ledger, keys). Default `./kla-data`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the REST API. Default `127.0.0.1:8700`.
    #[arg(long)]
    pub api_addr: Option<String>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Requests per second per tenant (token bucket refill); 0 turns rate limiting off. Default 0.
    #[arg(long)]
    pub rate_limit_rps: Option<f64>,
    /// Bucket size per tenant. Default: max(1, rps).
    #[arg(long)]
    pub rate_limit_burst: Option<u32>,
    /// Largest accepted request body in bytes. Default 1 MiB.
    #[arg(long)]
    pub body_limit: Option<usize>,
    /// JWKS file of an external OAuth issuer whose tokens kla accepts.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// Expected `iss` of external tokens (required with --jwks).
    #[arg(long)]
    pub jwt_issuer: Option<String>,
    /// Expected `aud` of external tokens (required with --jwks).
    #[arg(long)]
    pub jwt_audience: Option<String>,
    /// A policy pack directory or a folder of packs. Default `./policies`.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Public key trusted to sign policy packs (repeatable). Default: kla's embedded default-pack key.
    #[arg(long = "trusted-key")]
    #[serde(default)]
    pub trusted_key: Vec<PathBuf>,
    /// Load unsigned packs (local development only; logs a warning). `--allow-unsigned=false` turns off a `true`
    /// from the config file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allow_unsigned: Option<bool>,
    /// Load a signed pack older than the newest version of its name kla has activated (a rollback; logs a
    /// warning). `--allow-pack-rollback=false` turns off a `true` from the config file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allow_pack_rollback: Option<bool>,
    /// Policy evaluation deadline, e.g. `5ms`. Default 5ms.
    #[arg(long)]
    pub policy_deadline: Option<String>,
    /// Ledger origin line of signed checkpoints. Default `kla.local/ledger`.
    #[arg(long)]
    pub ledger_origin: Option<String>,
    /// `truncate`: cut a damaged ledger tail (never below the last signed checkpoint) instead of refusing to start.
    #[arg(long)]
    pub ledger_repair: Option<String>,
    /// Skip the full ledger check at startup: only what follows the last signed checkpoint is checked (run
    /// `kla ledger verify` separately). For very large logs; by default damage anywhere refuses startup.
    /// `--ledger-fast-start=false` turns off a `true` from the config file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub ledger_fast_start: Option<bool>,
    /// Log format: `text` or `json`. Default `text`.
    #[arg(long)]
    pub log_format: Option<String>,
}

impl RawConfig {
    /// Reads a YAML config file.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// `self` with every unset field taken from `base`.
    pub fn over(self, base: RawConfig) -> RawConfig {
        RawConfig {
            data_dir: self.data_dir.or(base.data_dir),
            api_addr: self.api_addr.or(base.api_addr),
            tls_cert: self.tls_cert.or(base.tls_cert),
            tls_key: self.tls_key.or(base.tls_key),
            rate_limit_rps: self.rate_limit_rps.or(base.rate_limit_rps),
            rate_limit_burst: self.rate_limit_burst.or(base.rate_limit_burst),
            body_limit: self.body_limit.or(base.body_limit),
            jwks: self.jwks.or(base.jwks),
            jwt_issuer: self.jwt_issuer.or(base.jwt_issuer),
            jwt_audience: self.jwt_audience.or(base.jwt_audience),
            policies: self.policies.or(base.policies),
            trusted_key: if self.trusted_key.is_empty() {
                base.trusted_key
            } else {
                self.trusted_key
            },
            allow_unsigned: self.allow_unsigned.or(base.allow_unsigned),
            allow_pack_rollback: self.allow_pack_rollback.or(base.allow_pack_rollback),
            policy_deadline: self.policy_deadline.or(base.policy_deadline),
            ledger_origin: self.ledger_origin.or(base.ledger_origin),
            ledger_repair: self.ledger_repair.or(base.ledger_repair),
            ledger_fast_start: self.ledger_fast_start.or(base.ledger_fast_start),
            log_format: self.log_format.or(base.log_format),
        }
    }

    /// Validates and fills defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let api_addr: SocketAddr = self
            .api_addr
            .as_deref()
            .unwrap_or("127.0.0.1:8700")
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("api-addr: {e}")))?;
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::Invalid("tls-cert and tls-key go together".into()));
            }
        };
        let rps = self.rate_limit_rps.unwrap_or(0.0);
        if !rps.is_finite() || rps < 0.0 {
            return Err(ConfigError::Invalid("rate-limit-rps must be >= 0".into()));
        }
        let rate_limit = (rps > 0.0).then(|| RateLimitConfig {
            rps,
            burst: self.rate_limit_burst.unwrap_or(rps.ceil().max(1.0) as u32).max(1),
        });
        let external_issuer = match (self.jwks, self.jwt_issuer, self.jwt_audience) {
            (Some(jwks), Some(issuer), Some(audience)) => Some(JwksConfig {
                jwks,
                issuer,
                audience,
            }),
            (None, None, None) => None,
            _ => {
                return Err(ConfigError::Invalid(
                    "jwks needs jwt-issuer and jwt-audience (and they need jwks)".into(),
                ));
            }
        };
        let policy_deadline = match self.policy_deadline.as_deref() {
            None => Duration::from_millis(5),
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| ConfigError::Invalid(format!("policy-deadline {s:?}: {e}")))?,
        };
        let ledger_repair_truncate = match self.ledger_repair.as_deref() {
            None | Some("none") => false,
            Some("truncate") => true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "ledger-repair {other:?}: expected `truncate` or `none`"
                )));
            }
        };
        let log_json = match self.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "log-format {other:?}: text or json"
                )));
            }
        };
        let body_limit = self.body_limit.unwrap_or(1024 * 1024);
        if body_limit == 0 || body_limit > MAX_BODY_LIMIT {
            return Err(ConfigError::Invalid(format!(
                "body-limit must be 1..={MAX_BODY_LIMIT} bytes (a decision's context must fit in one ledger entry)"
            )));
        }
        Ok(Config {
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("kla-data")),
            api_addr,
            tls,
            rate_limit,
            body_limit,
            external_issuer,
            policies: self.policies.unwrap_or_else(|| PathBuf::from("policies")),
            trusted_keys: self.trusted_key,
            allow_unsigned: self.allow_unsigned.unwrap_or(false),
            allow_pack_rollback: self.allow_pack_rollback.unwrap_or(false),
            policy_deadline,
            ledger_origin: self.ledger_origin.unwrap_or_else(|| "kla.local/ledger".into()),
            ledger_repair_truncate,
            ledger_fast_start: self.ledger_fast_start.unwrap_or(false),
            log_json,
        })
    }
}

/// TLS files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Per-tenant token bucket.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitConfig {
    /// Refill rate.
    pub rps: f64,
    /// Bucket size.
    pub burst: u32,
}

/// External OAuth issuer.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// JWKS file.
    pub jwks: PathBuf,
    /// Expected issuer.
    pub issuer: String,
    /// Expected audience.
    pub audience: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// REST API address.
    pub api_addr: SocketAddr,
    /// HTTPS, when set.
    pub tls: Option<TlsConfig>,
    /// Rate limit, when on.
    pub rate_limit: Option<RateLimitConfig>,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// External token issuer.
    pub external_issuer: Option<JwksConfig>,
    /// Policy pack dir.
    pub policies: PathBuf,
    /// Trusted pack-signing keys (empty: the embedded default key).
    pub trusted_keys: Vec<PathBuf>,
    /// Load unsigned packs.
    pub allow_unsigned: bool,
    /// Load a signed pack older than its name's rollback floor.
    pub allow_pack_rollback: bool,
    /// Evaluation deadline.
    pub policy_deadline: Duration,
    /// Ledger checkpoint origin.
    pub ledger_origin: String,
    /// `--ledger-repair=truncate`.
    pub ledger_repair_truncate: bool,
    /// `--ledger-fast-start`.
    pub ledger_fast_start: bool,
    /// JSON logs.
    pub log_json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let c = RawConfig::default().validate().expect("defaults are valid");
        assert_eq!(c.api_addr.to_string(), "127.0.0.1:8700");
        assert_eq!(c.body_limit, 1 << 20);
        assert!(c.rate_limit.is_none());
    }

    #[test]
    fn unknown_yaml_key_is_refused() {
        let e = serde_yaml::from_str::<RawConfig>("api-addr: 1.2.3.4:1\nbogus: 1\n").expect_err("must fail");
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn flags_override_file() {
        let file: RawConfig =
            serde_yaml::from_str("api-addr: 127.0.0.1:1\nrate-limit-rps: 5\n").expect("yaml");
        let flags = RawConfig {
            api_addr: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        let c = flags.over(file).validate().expect("valid");
        assert_eq!(c.api_addr.port(), 2);
        assert_eq!(c.rate_limit.map(|r| r.burst), Some(5));
    }

    /// Boolean flags are tri-state: absent keeps the file's value, `--flag` and `--flag=true` turn it on,
    /// `--flag=false` turns a file's `true` off.
    #[test]
    fn boolean_flags_override_the_file_both_ways() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            raw: RawConfig,
        }
        use clap::Parser as _;
        let file = || -> RawConfig {
            serde_yaml::from_str("allow-unsigned: true\nledger-fast-start: true\nallow-pack-rollback: true\n")
                .expect("yaml")
        };
        let parse = |args: &[&str]| {
            let flags =
                Flags::try_parse_from(std::iter::once("kla").chain(args.iter().copied())).expect("flags");
            let c = flags.raw.over(file()).validate().expect("valid");
            (c.allow_unsigned, c.ledger_fast_start)
        };
        assert_eq!(parse(&[]), (true, true));
        let rollback = |args: &[&str]| {
            let flags =
                Flags::try_parse_from(std::iter::once("kla").chain(args.iter().copied())).expect("flags");
            flags
                .raw
                .over(file())
                .validate()
                .expect("valid")
                .allow_pack_rollback
        };
        assert!(rollback(&[]) && !rollback(&["--allow-pack-rollback=false"]));
        assert_eq!(parse(&["--allow-unsigned=false"]), (false, true));
        assert_eq!(
            parse(&["--ledger-fast-start=false", "--allow-unsigned"]),
            (true, false)
        );
        let off = Flags::try_parse_from(["kla"])
            .expect("flags")
            .raw
            .validate()
            .expect("valid");
        assert!(
            !off.allow_unsigned && !off.ledger_fast_start && !off.allow_pack_rollback,
            "both default to off"
        );
        assert!(Flags::try_parse_from(["kla", "--allow-unsigned=maybe"]).is_err());
    }

    #[test]
    fn the_example_config_file_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kla.yaml");
        let c = RawConfig::from_file(&path)
            .expect("example parses")
            .validate()
            .expect("example validates");
        assert_eq!(c.rate_limit.map(|r| (r.rps, r.burst)), Some((200.0, 400)));
        assert_eq!(c.policy_deadline, Duration::from_millis(5));
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        for (yaml, key) in [
            ("api-addr: nope\n", "api-addr"),
            ("rate-limit-rps: -1\n", "rate-limit-rps"),
            ("policy-deadline: soon\n", "policy-deadline"),
            ("ledger-repair: maybe\n", "ledger-repair"),
            ("log-format: xml\n", "log-format"),
            ("jwks: f.json\n", "jwks"),
        ] {
            let raw: RawConfig = serde_yaml::from_str(yaml).expect("yaml");
            let e = raw.validate().expect_err(yaml).to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    #[test]
    fn half_tls_is_refused() {
        let raw = RawConfig {
            tls_cert: Some("c.pem".into()),
            ..Default::default()
        };
        assert!(raw.validate().is_err());
    }
}
