//! Configuration in two stages. What a user writes is either `kla serve` flags ([`RawConfig`], flat, every field
//! optional) or a YAML file with one nested section per component (unknown keys refused at every level), which is
//! read into a [`RawConfig`] too so the two merge key by key: flags override file keys, file keys override the
//! embedded defaults. Each key is declared once, in `keys.rs`: the flag, its place in the file, the merge and the
//! docs table's row all come from that list ([`KEYS`]; the machinery is in `declare.rs`, the file reader in
//! `file.rs`). [`RawConfig::validate`] turns the merge into [`Config`], the validated, typed result: one section
//! per component, each handed to that component by `app`. This module reads the config file and nothing else; it
//! never touches the process environment (tests pass values in).

mod declare;
mod file;
mod keys;

pub use declare::{Key, KeyDoc, markdown_table};
pub use file::FileWebhook;
pub use keys::{KEYS, RawConfig};

use crate::ledger::RepairMode;
pub use crate::server::{
    FileTls, Limits, ListenerConfig, MAX_HEADER_BYTES, MAX_URI_BYTES, RateLimitConfig, TlsConfig,
};
use std::path::PathBuf;
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
    /// The file is not valid YAML for the config file's sections (`file.rs`).
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

/// The validated configuration: one section per component.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data directory: the store, the ledger and the keys live in it.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogSection,
    /// The REST API.
    pub api: ApiSection,
    /// Token verification beyond kla's own tokens.
    pub auth: AuthSection,
    /// The SQLite store.
    pub store: StoreSection,
    /// The ledger.
    pub ledger: LedgerSection,
    /// The policy manager.
    pub policy: PolicySection,
    /// The event stream (SSE and WebSocket).
    pub events: EventsSection,
    /// Webhooks.
    pub webhooks: Vec<crate::webhooks::Endpoint>,
    /// The tool-call proxy, when `proxy:` has routes.
    pub proxy: Option<crate::proxy::ProxyConfig>,
    /// The OTLP receivers, when configured.
    pub otlp: Option<crate::otlp::OtlpConfig>,
    /// kla's own spans, when `--otel-endpoint` is set.
    pub telemetry: Option<crate::telemetry::otel::OtelConfig>,
}

/// Logging.
#[derive(Debug, Clone, Copy)]
pub struct LogSection {
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// The REST API: its listener and the limits its handlers apply.
#[derive(Debug, Clone)]
pub struct ApiSection {
    /// Where and how it listens.
    pub listener: ListenerConfig,
    /// Largest accepted request body in bytes.
    pub body_limit: usize,
    /// Per-tenant rate limit, when on.
    pub rate_limit: Option<RateLimitConfig>,
}

/// Token verification.
#[derive(Debug, Clone, Default)]
pub struct AuthSection {
    /// An external OAuth issuer whose tokens are accepted too.
    pub external_issuer: Option<JwksConfig>,
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

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct StoreSection {
    /// Directory of `kla.db` (the data dir).
    pub dir: PathBuf,
}

/// The ledger.
#[derive(Debug, Clone)]
pub struct LedgerSection {
    /// `<data-dir>/ledger`.
    pub dir: PathBuf,
    /// Origin line and key name of signed checkpoints.
    pub origin: String,
    /// What to do about damage found at startup.
    pub repair: RepairMode,
    /// Check only what follows the last signed checkpoint at startup.
    pub fast_start: bool,
    /// Bytes zero-filled ahead of the log's end; 0: none.
    pub preallocate: u64,
}

/// The policy manager.
#[derive(Debug, Clone)]
pub struct PolicySection {
    /// A pack directory or a folder of packs.
    pub dir: PathBuf,
    /// Trusted pack-signing keys (empty: the embedded default key).
    pub trusted_keys: Vec<PathBuf>,
    /// Load unsigned packs.
    pub allow_unsigned: bool,
    /// Load a signed pack older than its name's rollback floor.
    pub allow_rollback: bool,
    /// Evaluation deadline.
    pub deadline: Duration,
}

/// The event stream.
#[derive(Debug, Clone)]
pub struct EventsSection {
    /// How far back a resume may start.
    pub retention: Duration,
    /// Heartbeat interval of idle streams.
    pub heartbeat: Duration,
    /// Subscribers of the server at most.
    pub max_subscribers: usize,
    /// Subscribers of one tenant at most.
    pub max_subscribers_per_tenant: usize,
}

/// `"api.addr (--api-addr)"`: both names of a setting, for error messages.
fn key(flag: &str) -> String {
    match file::file_place(flag) {
        Some(path) => format!("{path} (--{flag})"),
        None => format!("--{flag}"),
    }
}

fn invalid(flag: &str, what: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{}: {what}", key(flag)))
}

impl RawConfig {
    /// Validates and fills defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("kla-data"));
        Ok(Config {
            log: LogSection {
                json: match self.log_format.as_deref() {
                    None | Some("text") => false,
                    Some("json") => true,
                    Some(other) => return Err(invalid("log-format", format!("{other:?}: text or json"))),
                },
            },
            api: ApiSection {
                listener: listener(
                    self.api_addr.as_deref(),
                    "127.0.0.1:8700",
                    self.tls_cert,
                    self.tls_key,
                    LimitFlags {
                        prefix: "api",
                        max_connections: self.api_max_connections,
                        idle_timeout: self.api_idle_timeout,
                        header_timeout: self.api_header_timeout,
                        body_timeout: self.api_body_timeout,
                        h2_max_concurrent_streams: self.api_h2_max_concurrent_streams,
                        h2_keepalive_interval: self.api_h2_keepalive_interval,
                        h2_keepalive_timeout: self.api_h2_keepalive_timeout,
                        max_header_bytes: self.api_max_header_bytes,
                        max_uri_bytes: self.api_max_uri_bytes,
                    },
                )?,
                body_limit: body_limit(self.body_limit)?,
                rate_limit: rate_limit(self.rate_limit_rps, self.rate_limit_burst)?,
            },
            auth: AuthSection {
                external_issuer: match (self.jwks, self.jwt_issuer, self.jwt_audience) {
                    (Some(jwks), Some(issuer), Some(audience)) => Some(JwksConfig {
                        jwks,
                        issuer,
                        audience,
                    }),
                    (None, None, None) => None,
                    _ => {
                        return Err(ConfigError::Invalid(format!(
                            "{} needs {} and {} (and they need it)",
                            key("jwks"),
                            key("jwt-issuer"),
                            key("jwt-audience")
                        )));
                    }
                },
            },
            store: StoreSection {
                dir: data_dir.clone(),
            },
            ledger: LedgerSection {
                dir: data_dir.join("ledger"),
                origin: self.ledger_origin.unwrap_or_else(|| "kla.local/ledger".into()),
                repair: match self.ledger_repair.as_deref() {
                    None | Some("none") => RepairMode::Refuse,
                    Some("truncate") => RepairMode::Truncate,
                    Some(other) => {
                        return Err(invalid(
                            "ledger-repair",
                            format!("{other:?}: expected `truncate` or `none`"),
                        ));
                    }
                },
                fast_start: self.ledger_fast_start.unwrap_or(false),
                preallocate: preallocate(self.ledger_preallocate)?,
            },
            policy: PolicySection {
                dir: self.policies.unwrap_or_else(|| PathBuf::from("policies")),
                trusted_keys: self.trusted_key,
                allow_unsigned: self.allow_unsigned.unwrap_or(false),
                allow_rollback: self.allow_pack_rollback.unwrap_or(false),
                deadline: match self.policy_deadline.as_deref() {
                    None => Duration::from_millis(5),
                    Some(s) => humantime::parse_duration(s)
                        .map_err(|e| invalid("policy-deadline", format!("{s:?}: {e}")))?,
                },
            },
            events: events(
                self.events_retention,
                self.events_heartbeat,
                self.events_max_subscribers,
                self.events_max_subscribers_per_tenant,
            )?,
            webhooks: webhooks(self.webhooks)?,
            proxy: crate::proxy::config::validate(self.proxy, self.proxy_addr)
                .map_err(ConfigError::Invalid)?,
            otlp: crate::otlp::validate(self.otlp, self.otlp_http_addr, self.otlp_grpc_addr)
                .map_err(ConfigError::Invalid)?,
            telemetry: crate::telemetry::otel::validate(
                self.otel_endpoint,
                self.otel_protocol,
                self.otel_service_name,
            )
            .map_err(|(flag, message)| invalid(flag, message))?,
            data_dir,
        })
    }
}

/// The longest listener timeout accepted: longer ones would only hide a mistake.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A listener's limit flags (`--<prefix>-max-connections`, …).
struct LimitFlags {
    prefix: &'static str,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    h2_max_concurrent_streams: Option<u32>,
    h2_keepalive_interval: Option<String>,
    h2_keepalive_timeout: Option<String>,
    max_header_bytes: Option<usize>,
    max_uri_bytes: Option<usize>,
}

impl LimitFlags {
    fn validate(self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let p = self.prefix;
        let duration = |flag: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            let flag = format!("{p}-{flag}");
            match v {
                None => Ok(default),
                Some(s) => match humantime::parse_duration(&s) {
                    Ok(d) if !d.is_zero() && d <= MAX_TIMEOUT => Ok(d),
                    Ok(_) => Err(invalid(&flag, "must be more than 0 and at most 1 day")),
                    Err(e) => Err(invalid(&flag, format!("{s:?}: {e}"))),
                },
            }
        };
        let max_connections = self.max_connections.unwrap_or(d.max_connections);
        // A semaphore holds at most this many permits; far more than any descriptor limit anyway.
        if max_connections == 0 || max_connections > 1 << 20 {
            return Err(invalid(&format!("{p}-max-connections"), "must be 1..=1048576"));
        }
        let streams = self
            .h2_max_concurrent_streams
            .unwrap_or(d.h2_max_concurrent_streams);
        if streams == 0 {
            return Err(invalid(
                &format!("{p}-h2-max-concurrent-streams"),
                "must be at least 1",
            ));
        }
        let h2_keepalive_interval = match self.h2_keepalive_interval.as_deref() {
            None => d.h2_keepalive_interval,
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d <= MAX_TIMEOUT => (!d.is_zero()).then_some(d),
                Ok(_) => {
                    return Err(invalid(
                        &format!("{p}-h2-keepalive-interval"),
                        "must be at most 1 day",
                    ));
                }
                Err(e) => {
                    return Err(invalid(
                        &format!("{p}-h2-keepalive-interval"),
                        format!("{s:?}: {e}"),
                    ));
                }
            },
        };
        let max_header_bytes = self.max_header_bytes.unwrap_or(d.max_header_bytes);
        if !(1024..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
            return Err(invalid(
                &format!("{p}-max-header-bytes"),
                format!("must be 1024..={MAX_HEADER_BYTES} (hyper's own limit is above it)"),
            ));
        }
        let max_uri_bytes = self.max_uri_bytes.unwrap_or(d.max_uri_bytes);
        if !(256..=MAX_URI_BYTES).contains(&max_uri_bytes) {
            return Err(invalid(
                &format!("{p}-max-uri-bytes"),
                format!("must be 256..={MAX_URI_BYTES} (hyper's own limit)"),
            ));
        }
        Ok(Limits {
            max_header_bytes,
            max_uri_bytes,
            max_connections,
            idle_timeout: duration("idle-timeout", self.idle_timeout, d.idle_timeout)?,
            header_timeout: duration("header-timeout", self.header_timeout, d.header_timeout)?,
            body_timeout: duration("body-timeout", self.body_timeout, d.body_timeout)?,
            h2_max_concurrent_streams: streams,
            h2_keepalive_interval,
            h2_keepalive_timeout: duration(
                "h2-keepalive-timeout",
                self.h2_keepalive_timeout,
                d.h2_keepalive_timeout,
            )?,
        })
    }
}

fn listener(
    addr: Option<&str>,
    default: &str,
    cert: Option<PathBuf>,
    key_file: Option<PathBuf>,
    limits: LimitFlags,
) -> Result<ListenerConfig, ConfigError> {
    let addr = addr
        .unwrap_or(default)
        .parse()
        .map_err(|e| invalid("api-addr", e))?;
    let tls = match (cert, key_file) {
        (Some(cert), Some(key)) => Some(TlsConfig { cert, key }),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid(format!(
                "{} and {} go together",
                key("tls-cert"),
                key("tls-key")
            )));
        }
    };
    Ok(ListenerConfig {
        addr,
        tls,
        limits: limits.validate()?,
    })
}

/// The longest event retention accepted.
const MAX_RETENTION: Duration = Duration::from_secs(366 * 24 * 3600);

fn events(
    retention: Option<String>,
    heartbeat: Option<String>,
    max: Option<usize>,
    per_tenant: Option<usize>,
) -> Result<EventsSection, ConfigError> {
    let within =
        |flag: &str, v: Option<String>, default: Duration, range: (Duration, Duration), what: &str| {
            let Some(s) = v else { return Ok(default) };
            match humantime::parse_duration(&s) {
                Ok(d) if d >= range.0 && d <= range.1 => Ok(d),
                Ok(_) => Err(invalid(flag, format!("{s:?}: must be {what}"))),
                Err(e) => Err(invalid(flag, format!("{s:?}: {e}"))),
            }
        };
    let retention = within(
        "events-retention",
        retention,
        Duration::from_secs(7 * 24 * 3600),
        (Duration::from_secs(1), MAX_RETENTION),
        "at least 1s and at most 366 days",
    )?;
    let heartbeat = within(
        "events-heartbeat",
        heartbeat,
        Duration::from_secs(15),
        (Duration::from_millis(100), Duration::from_secs(3600)),
        "at least 100ms and at most 1h",
    )?;
    let max_subscribers = max.unwrap_or(4096);
    if !(1..=1 << 20).contains(&max_subscribers) {
        return Err(invalid("events-max-subscribers", "must be 1..=1048576"));
    }
    let max_subscribers_per_tenant = per_tenant.unwrap_or(1024.min(max_subscribers));
    if !(1..=max_subscribers).contains(&max_subscribers_per_tenant) {
        return Err(invalid(
            "events-max-subscribers-per-tenant",
            format!("must be 1..={max_subscribers} (events.max-subscribers)"),
        ));
    }
    Ok(EventsSection {
        retention,
        heartbeat,
        max_subscribers,
        max_subscribers_per_tenant,
    })
}

/// The event types a webhook gets when its entry names none.
pub const DEFAULT_WEBHOOK_EVENTS: &str = "approval.required,approval.resolved,approval.expired";

fn webhooks(list: Vec<FileWebhook>) -> Result<Vec<crate::webhooks::Endpoint>, ConfigError> {
    use crate::webhooks::{Endpoint, Secret};
    let mut out: Vec<Endpoint> = Vec::with_capacity(list.len());
    for (i, w) in list.into_iter().enumerate() {
        let bad = |what: String| ConfigError::Invalid(format!("webhooks[{i}] ({}): {what}", w.name));
        if w.name.is_empty()
            || w.name.len() > 64
            || !w
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("name must be 1-64 of [A-Za-z0-9_-]".into()));
        }
        if out.iter().any(|e| e.name == w.name) {
            return Err(bad("name is used twice".into()));
        }
        let url = reqwest::Url::parse(&w.url).map_err(|e| bad(format!("url {:?}: {e}", w.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad(format!("url {:?} must be http or https with a host", w.url)));
        }
        if !crate::auth::tenant_name_ok(&w.tenant) || w.tenant.starts_with('_') {
            return Err(bad(format!("tenant {:?} is not a tenant name", w.tenant)));
        }
        let secret_text = match (&w.secret, &w.secret_file) {
            (Some(s), None) => s.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| bad(format!("secret-file {}: {e}", f.display())))?
                .trim()
                .to_owned(),
            _ => return Err(bad("give exactly one of secret, secret-file".into())),
        };
        let secret = Secret::parse(&secret_text).map_err(bad)?;
        let types = match &w.events {
            None => DEFAULT_WEBHOOK_EVENTS.to_owned(),
            Some(v) if v.is_empty() => return Err(bad("events must name at least one type".into())),
            Some(v) => v.join(","),
        };
        let types = crate::events::TypeSet::parse_list(&types).map_err(bad)?;
        let dur = |v: &Option<String>, default: Duration, key: &str| -> Result<Duration, ConfigError> {
            match v {
                None => Ok(default),
                Some(s) => match humantime::parse_duration(s) {
                    Ok(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(600) => Ok(d),
                    Ok(_) => Err(bad(format!("{key} {s:?} must be 10ms to 10m"))),
                    Err(e) => Err(bad(format!("{key} {s:?}: {e}"))),
                },
            }
        };
        let max_attempts = w.max_attempts.unwrap_or(10);
        if !(1..=100).contains(&max_attempts) {
            return Err(bad("max-attempts must be 1-100".into()));
        }
        out.push(Endpoint {
            timeout: dur(&w.timeout, Duration::from_secs(10), "timeout")?,
            retry_initial: dur(&w.retry_initial, Duration::from_secs(1), "retry-initial")?,
            max_attempts,
            name: w.name.clone(),
            url,
            tenant: w.tenant.clone(),
            secret,
            types,
        });
    }
    Ok(out)
}

/// Largest `ledger-preallocate`: the zero tail is read in full when a crashed ledger is opened.
const MAX_PREALLOCATE: u64 = 1 << 30;
/// Smallest non-zero `ledger-preallocate` (one page; smaller would zero-fill in slivers).
const MIN_PREALLOCATE: u64 = 4096;

fn preallocate(v: Option<u64>) -> Result<u64, ConfigError> {
    let bytes = v.unwrap_or(crate::ledger::DEFAULT_PREALLOCATE);
    if bytes != 0 && !(MIN_PREALLOCATE..=MAX_PREALLOCATE).contains(&bytes) {
        return Err(invalid(
            "ledger-preallocate",
            format!("must be 0 (off) or {MIN_PREALLOCATE}..={MAX_PREALLOCATE} bytes"),
        ));
    }
    Ok(bytes)
}

fn body_limit(v: Option<usize>) -> Result<usize, ConfigError> {
    let limit = v.unwrap_or(1024 * 1024);
    if limit == 0 || limit > MAX_BODY_LIMIT {
        return Err(invalid(
            "body-limit",
            format!("must be 1..={MAX_BODY_LIMIT} bytes (a decision's context must fit in one ledger entry)"),
        ));
    }
    Ok(limit)
}

fn rate_limit(rps: Option<f64>, burst: Option<u32>) -> Result<Option<RateLimitConfig>, ConfigError> {
    let rps = rps.unwrap_or(0.0);
    if !rps.is_finite() || rps < 0.0 {
        return Err(invalid("rate-limit-rps", "must be >= 0"));
    }
    Ok((rps > 0.0).then(|| RateLimitConfig {
        rps,
        burst: burst.unwrap_or(rps.ceil().max(1.0) as u32).max(1),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
