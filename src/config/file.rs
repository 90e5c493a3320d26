//! The YAML file of `kla serve --config`: one nested section per component, unknown keys refused at every level.
//! It is read into [`FileConfig`] and flattened into a [`RawConfig`], the form of the flags, so that flags and file
//! merge key by key and one validation covers both.

use super::{ConfigError, RawConfig};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The config file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `log`.
    pub log: Option<FileLog>,
    /// `api`.
    pub api: Option<FileApi>,
    /// `auth`.
    pub auth: Option<FileAuth>,
    /// `ledger`.
    pub ledger: Option<FileLedger>,
    /// `policy`.
    pub policy: Option<FilePolicy>,
    /// `events`.
    pub events: Option<FileEvents>,
    /// `webhooks`: only in the file (a list, with secrets).
    pub webhooks: Option<Vec<FileWebhook>>,
    /// `proxy`: the tool-call proxy (only in the file: routes are a list).
    pub proxy: Option<crate::proxy::FileProxy>,
    /// `otlp`: the OTLP receivers.
    pub otlp: Option<crate::otlp::FileOtlp>,
    /// `telemetry`: kla's own spans.
    pub telemetry: Option<FileTelemetry>,
}

/// `telemetry:`, where kla exports its own spans.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileTelemetry {
    /// OTLP endpoint URL.
    pub endpoint: Option<String>,
    /// `grpc` or `http`.
    pub protocol: Option<String>,
    /// `service.name`.
    pub service_name: Option<String>,
}

/// One entry of `webhooks:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileWebhook {
    /// Unique; names the webhook in logs and keeps its delivery position.
    pub name: String,
    /// `http` or `https` URL events are POSTed to.
    pub url: String,
    /// The tenant whose events are sent.
    pub tenant: String,
    /// `whsec_<base64>`; or `secret-file`.
    pub secret: Option<String>,
    /// A file holding the secret.
    pub secret_file: Option<PathBuf>,
    /// Event types; default `approval.required`, `approval.resolved`, `approval.expired`.
    pub events: Option<Vec<String>>,
    /// One delivery's timeout; default 10s.
    pub timeout: Option<String>,
    /// Attempts per event; default 10.
    pub max_attempts: Option<u32>,
    /// Wait before the first retry (doubling after each); default 1s.
    pub retry_initial: Option<String>,
}

/// `log:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileLog {
    /// `text` or `json`.
    pub format: Option<String>,
}

/// `api:`, the REST API listener and its request limits.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileApi {
    /// Listen address.
    pub addr: Option<String>,
    /// HTTPS.
    pub tls: Option<FileTls>,
    /// Connection cap and timeouts.
    pub limits: Option<FileLimits>,
    /// Largest request body in bytes.
    pub body_limit: Option<usize>,
    /// Per-tenant token bucket.
    pub rate_limit: Option<FileRateLimit>,
}

/// `tls:` of a listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileTls {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `limits:` of a listener (durations in humantime syntax).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileLimits {
    /// Open connections at most.
    pub max_connections: Option<usize>,
    /// Close a connection with no request in progress after this long.
    pub idle_timeout: Option<String>,
    /// Time to the end of a request's headers.
    pub header_timeout: Option<String>,
    /// Time a request body may take.
    pub body_timeout: Option<String>,
    /// HTTP/2 streams at once per connection.
    pub h2_max_concurrent_streams: Option<u32>,
    /// HTTP/2 ping interval (`0s`: none).
    pub h2_keepalive_interval: Option<String>,
    /// HTTP/2 ping answer timeout.
    pub h2_keepalive_timeout: Option<String>,
    /// Largest request header block in bytes.
    pub max_header_bytes: Option<usize>,
    /// Longest request target in bytes.
    pub max_uri_bytes: Option<usize>,
}

/// `api.rate-limit:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileRateLimit {
    /// Refill per second; 0 is off.
    pub rps: Option<f64>,
    /// Bucket size.
    pub burst: Option<u32>,
}

/// `auth:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileAuth {
    /// An external OAuth issuer whose tokens kla accepts.
    pub external_issuer: Option<FileExternalIssuer>,
}

/// `auth.external-issuer:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileExternalIssuer {
    /// JWKS file.
    pub jwks: Option<PathBuf>,
    /// Expected `iss`.
    pub issuer: Option<String>,
    /// Expected `aud`.
    pub audience: Option<String>,
}

/// `ledger:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileLedger {
    /// Checkpoint origin line.
    pub origin: Option<String>,
    /// `none` or `truncate`.
    pub repair: Option<String>,
    /// Check only what follows the last signed checkpoint at startup.
    pub fast_start: Option<bool>,
    /// Bytes zero-filled ahead of the log's end; 0: off.
    pub preallocate: Option<u64>,
}

/// `policy:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FilePolicy {
    /// A pack directory or a folder of packs.
    pub dir: Option<PathBuf>,
    /// Public keys trusted to sign packs.
    pub trusted_keys: Option<Vec<PathBuf>>,
    /// Load unsigned packs.
    pub allow_unsigned: Option<bool>,
    /// Load a signed pack older than its name's floor.
    pub allow_rollback: Option<bool>,
    /// Evaluation deadline (humantime).
    pub deadline: Option<String>,
}

/// `events:`, the event stream (durations in humantime syntax).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileEvents {
    /// How far back a resume may start.
    pub retention: Option<String>,
    /// Heartbeat interval of idle streams.
    pub heartbeat: Option<String>,
    /// Subscribers of the server at most.
    pub max_subscribers: Option<usize>,
    /// Subscribers of one tenant at most.
    pub max_subscribers_per_tenant: Option<usize>,
}

/// Where each flag lives in the file; a flag's name written as a top-level key (the file's form before it had
/// sections) gets this path in its error.
pub const FLAG_PATHS: &[(&str, &str)] = &[
    ("api-addr", "api.addr"),
    ("tls-cert", "api.tls.cert"),
    ("tls-key", "api.tls.key"),
    ("body-limit", "api.body-limit"),
    ("rate-limit-rps", "api.rate-limit.rps"),
    ("rate-limit-burst", "api.rate-limit.burst"),
    ("jwks", "auth.external-issuer.jwks"),
    ("jwt-issuer", "auth.external-issuer.issuer"),
    ("jwt-audience", "auth.external-issuer.audience"),
    ("policies", "policy.dir"),
    ("trusted-key", "policy.trusted-keys"),
    ("allow-unsigned", "policy.allow-unsigned"),
    ("allow-pack-rollback", "policy.allow-rollback"),
    ("policy-deadline", "policy.deadline"),
    ("ledger-origin", "ledger.origin"),
    ("ledger-repair", "ledger.repair"),
    ("ledger-fast-start", "ledger.fast-start"),
    ("ledger-preallocate", "ledger.preallocate"),
    ("log-format", "log.format"),
    ("proxy-addr", "proxy.addr"),
    ("otlp-http-addr", "otlp.http-addr"),
    ("otlp-grpc-addr", "otlp.grpc-addr"),
    ("otel-endpoint", "telemetry.endpoint"),
    ("otel-protocol", "telemetry.protocol"),
    ("otel-service-name", "telemetry.service-name"),
    ("api-max-connections", "api.limits.max-connections"),
    ("api-idle-timeout", "api.limits.idle-timeout"),
    ("api-header-timeout", "api.limits.header-timeout"),
    ("api-body-timeout", "api.limits.body-timeout"),
    (
        "api-h2-max-concurrent-streams",
        "api.limits.h2-max-concurrent-streams",
    ),
    ("api-h2-keepalive-interval", "api.limits.h2-keepalive-interval"),
    ("api-h2-keepalive-timeout", "api.limits.h2-keepalive-timeout"),
    ("api-max-header-bytes", "api.limits.max-header-bytes"),
    ("api-max-uri-bytes", "api.limits.max-uri-bytes"),
    ("events-retention", "events.retention"),
    ("events-heartbeat", "events.heartbeat"),
    ("events-max-subscribers", "events.max-subscribers"),
    (
        "events-max-subscribers-per-tenant",
        "events.max-subscribers-per-tenant",
    ),
];

impl FileConfig {
    /// Parses the file's text; errors name the key with its line and column.
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        serde_yaml::from_str(text).map_err(|e| {
            let message = e.to_string();
            let hint = FLAG_PATHS
                .iter()
                .find(|(flag, _)| message.contains(&format!("unknown field `{flag}`")))
                .map(|(flag, path)| format!(" (`{flag}` is a flag; in the file it is `{path}`)"));
            message + hint.as_deref().unwrap_or("")
        })
    }

    /// The file in the flags' form.
    pub fn into_raw(self) -> RawConfig {
        let log = self.log.unwrap_or_default();
        let api = self.api.unwrap_or_default();
        let tls = api.tls.unwrap_or_default();
        let rate = api.rate_limit.unwrap_or_default();
        let limits = api.limits.unwrap_or_default();
        let issuer = self.auth.unwrap_or_default().external_issuer.unwrap_or_default();
        let ledger = self.ledger.unwrap_or_default();
        let policy = self.policy.unwrap_or_default();
        let events = self.events.unwrap_or_default();
        // `proxy.addr` is the flag `--proxy-addr`'s place; the rest of `proxy:` has no flag.
        let mut proxy = self.proxy;
        let proxy_addr = proxy.as_mut().and_then(|p| p.addr.take());
        let proxy = proxy.filter(|p| !p.is_empty());
        // `otlp.http-addr` / `otlp.grpc-addr` are the flags' places; the rest of `otlp:` has no flag.
        let mut otlp = self.otlp;
        let otlp_http_addr = otlp.as_mut().and_then(|o| o.http_addr.take());
        let otlp_grpc_addr = otlp.as_mut().and_then(|o| o.grpc_addr.take());
        let otlp = otlp.filter(|o| !o.is_empty());
        let telemetry = self.telemetry.unwrap_or_default();
        RawConfig {
            otel_endpoint: telemetry.endpoint,
            otel_protocol: telemetry.protocol,
            otel_service_name: telemetry.service_name,
            otlp_http_addr,
            otlp_grpc_addr,
            otlp,
            proxy_addr,
            proxy,
            webhooks: self.webhooks.unwrap_or_default(),
            data_dir: self.data_dir,
            api_addr: api.addr,
            tls_cert: tls.cert,
            tls_key: tls.key,
            rate_limit_rps: rate.rps,
            rate_limit_burst: rate.burst,
            body_limit: api.body_limit,
            jwks: issuer.jwks,
            jwt_issuer: issuer.issuer,
            jwt_audience: issuer.audience,
            policies: policy.dir,
            trusted_key: policy.trusted_keys.unwrap_or_default(),
            allow_unsigned: policy.allow_unsigned,
            allow_pack_rollback: policy.allow_rollback,
            policy_deadline: policy.deadline,
            ledger_origin: ledger.origin,
            ledger_repair: ledger.repair,
            ledger_fast_start: ledger.fast_start,
            ledger_preallocate: ledger.preallocate,
            log_format: log.format,
            api_max_connections: limits.max_connections,
            api_idle_timeout: limits.idle_timeout,
            api_header_timeout: limits.header_timeout,
            api_body_timeout: limits.body_timeout,
            api_h2_max_concurrent_streams: limits.h2_max_concurrent_streams,
            api_h2_keepalive_interval: limits.h2_keepalive_interval,
            api_h2_keepalive_timeout: limits.h2_keepalive_timeout,
            api_max_header_bytes: limits.max_header_bytes,
            api_max_uri_bytes: limits.max_uri_bytes,
            events_retention: events.retention,
            events_heartbeat: events.heartbeat,
            events_max_subscribers: events.max_subscribers,
            events_max_subscribers_per_tenant: events.max_subscribers_per_tenant,
        }
    }
}

impl RawConfig {
    /// Reads a YAML config file (nested sections) into the flags' form.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses the text of a config file into the flags' form.
    pub fn from_yaml(text: &str) -> Result<RawConfig, String> {
        FileConfig::parse(text).map(FileConfig::into_raw)
    }
}
