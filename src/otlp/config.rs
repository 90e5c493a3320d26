//! The `otlp:` section of the config file: as written ([`FileOtlp`]) and validated ([`OtlpConfig`]). The receivers
//! run only when the section sets something or one of `--otlp-http-addr` / `--otlp-grpc-addr` (the file's
//! `otlp.http-addr` / `otlp.grpc-addr`) is given.

use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Default address of the OTLP/HTTP receiver (the OTLP default port).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:4318";
/// Default address of the OTLP/gRPC receiver (the OTLP default port).
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:4317";
/// Default largest export, after decompression (20 MiB).
pub const DEFAULT_MAX_BODY: usize = 20 << 20;
/// Default number of exports decoded and sealed at once; beyond it exports are answered 503 / UNAVAILABLE.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Default number of redacted exports waiting to be forwarded; beyond it the oldest is dropped.
pub const DEFAULT_FORWARD_QUEUE: usize = 1024;
/// Default time a sealed span is remembered, so an export retried within it is not sealed twice.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);
/// Default number of sealed spans remembered at most (all tenants; about 64 bytes each at the most).
pub const DEFAULT_IDEMPOTENCY_SPANS: usize = 1 << 19;

/// `otlp:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileOtlp {
    /// OTLP/HTTP listener address (flag `--otlp-http-addr`), or `off`; default `127.0.0.1:4318`.
    pub http_addr: Option<String>,
    /// OTLP/gRPC listener address (flag `--otlp-grpc-addr`), or `off`; default `127.0.0.1:4317`.
    pub grpc_addr: Option<String>,
    /// A tenant fixed for both listeners: exports without `Authorization` are accepted into it.
    pub tenant: Option<String>,
    /// Largest export in bytes after decompression; default 20 MiB.
    pub max_body: Option<usize>,
    /// Exports in flight at most; default 64.
    pub max_in_flight: Option<usize>,
    /// A downstream OTLP endpoint that receives the redacted spans after sealing.
    pub forward: Option<FileForward>,
    /// A per-tenant quota of spans per second (off when absent).
    pub quota: Option<FileQuota>,
    /// How long, and for how many spans, sealed spans are remembered so a retried export is not sealed twice.
    pub idempotency: Option<FileIdempotency>,
}

/// `otlp.quota:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileQuota {
    /// Spans a tenant may export per second, sustained.
    pub spans_per_second: f64,
    /// Spans a tenant may export at once above the rate; default twice the rate.
    pub burst: Option<u32>,
}

/// `otlp.idempotency:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileIdempotency {
    /// How long a sealed span is remembered at least (unless `spans` is reached first); default 10m.
    pub window: Option<String>,
    /// Spans remembered at most, all tenants together; default 524288.
    pub spans: Option<usize>,
}

impl FileOtlp {
    /// Whether nothing but (at most) the addresses is set.
    pub fn is_empty(&self) -> bool {
        self.tenant.is_none()
            && self.max_body.is_none()
            && self.max_in_flight.is_none()
            && self.forward.is_none()
            && self.quota.is_none()
            && self.idempotency.is_none()
    }
}

/// `otlp.forward:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileForward {
    /// For `http`: the full URL (`http://collector:4318/v1/traces`); for `grpc`: `http://collector:4317`.
    pub endpoint: String,
    /// `http` (protobuf, default) or `grpc`.
    pub protocol: Option<String>,
    /// Exports waiting at most; default 1024.
    pub queue: Option<usize>,
    /// One attempt's timeout; default 10s.
    pub timeout: Option<String>,
    /// Attempts per export before it is dropped; default 8.
    pub max_attempts: Option<u32>,
}

/// The forwarding protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardProtocol {
    /// OTLP/HTTP with protobuf bodies.
    Http,
    /// OTLP/gRPC.
    Grpc,
}

/// The validated `otlp.forward`.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Where to send.
    pub endpoint: http::Uri,
    /// How.
    pub protocol: ForwardProtocol,
    /// Queue capacity (exports).
    pub queue: usize,
    /// One attempt's timeout.
    pub timeout: Duration,
    /// Attempts per export.
    pub max_attempts: u32,
}

/// The validated `otlp:` section.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// OTLP/HTTP listener (`None`: off).
    pub http_addr: Option<SocketAddr>,
    /// OTLP/gRPC listener (`None`: off).
    pub grpc_addr: Option<SocketAddr>,
    /// The listeners' fixed tenant, if any.
    pub tenant: Option<String>,
    /// Largest export after decompression.
    pub max_body: usize,
    /// Exports in flight at most.
    pub max_in_flight: usize,
    /// Forwarding, when configured.
    pub forward: Option<ForwardConfig>,
    /// The per-tenant span quota (`rps` spans per second, `burst` spans), when configured.
    pub quota: Option<crate::server::RateLimitConfig>,
    /// How long a sealed span is remembered at least.
    pub idempotency_window: Duration,
    /// Sealed spans remembered at most.
    pub idempotency_spans: usize,
}

fn invalid(what: impl Into<String>) -> String {
    what.into()
}

fn addr(v: Option<&str>, default: &str, key: &str) -> Result<Option<SocketAddr>, String> {
    match v.unwrap_or(default) {
        "off" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|e| invalid(format!("otlp.{key} (--otlp-{key}) {s:?}: {e}"))),
    }
}

/// Validates `otlp:` with the two address flags folded in. `None`: neither the section nor a flag is given, so no
/// receiver runs.
pub fn validate(
    file: Option<FileOtlp>,
    http_flag: Option<String>,
    grpc_flag: Option<String>,
) -> Result<Option<OtlpConfig>, String> {
    if file.is_none() && http_flag.is_none() && grpc_flag.is_none() {
        return Ok(None);
    }
    let file = file.unwrap_or_default();
    let http_addr = addr(
        http_flag.as_deref().or(file.http_addr.as_deref()),
        DEFAULT_HTTP_ADDR,
        "http-addr",
    )?;
    let grpc_addr = addr(
        grpc_flag.as_deref().or(file.grpc_addr.as_deref()),
        DEFAULT_GRPC_ADDR,
        "grpc-addr",
    )?;
    if let Some(t) = &file.tenant
        && (!crate::auth::tenant_name_ok(t) || t.starts_with('_'))
    {
        return Err(invalid(format!("otlp.tenant {t:?} is not a tenant name")));
    }
    let max_body = file.max_body.unwrap_or(DEFAULT_MAX_BODY);
    if !(1024..=256 << 20).contains(&max_body) {
        return Err(invalid("otlp.max-body must be 1 KiB to 256 MiB"));
    }
    let max_in_flight = file.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
    if !(1..=4096).contains(&max_in_flight) {
        return Err(invalid("otlp.max-in-flight must be 1 to 4096"));
    }
    let forward = file.forward.map(forward).transpose()?;
    let quota = match file.quota {
        None => None,
        Some(q) => {
            if !(q.spans_per_second.is_finite() && q.spans_per_second > 0.0 && q.spans_per_second <= 1e9) {
                return Err(invalid(
                    "otlp.quota.spans-per-second must be above 0 and at most 1e9",
                ));
            }
            // Twice the rate by default, at least one span.
            let burst = q
                .burst
                .unwrap_or_else(|| (q.spans_per_second * 2.0).ceil().min(f64::from(u32::MAX)) as u32)
                .max(1);
            Some(crate::server::RateLimitConfig {
                rps: q.spans_per_second,
                burst,
            })
        }
    };
    let idem = file.idempotency.unwrap_or_default();
    let idempotency_window = match idem.window.as_deref() {
        None => DEFAULT_IDEMPOTENCY_WINDOW,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(86_400) => d,
            Ok(_) => {
                return Err(invalid(format!(
                    "otlp.idempotency.window {s:?} must be 1s to 24h"
                )));
            }
            Err(e) => return Err(invalid(format!("otlp.idempotency.window {s:?}: {e}"))),
        },
    };
    let idempotency_spans = idem.spans.unwrap_or(DEFAULT_IDEMPOTENCY_SPANS);
    if !(2..=1 << 26).contains(&idempotency_spans) {
        return Err(invalid("otlp.idempotency.spans must be 2 to 67108864"));
    }
    Ok(Some(OtlpConfig {
        http_addr,
        grpc_addr,
        tenant: file.tenant,
        max_body,
        max_in_flight,
        forward,
        quota,
        idempotency_window,
        idempotency_spans,
    }))
}

fn forward(f: FileForward) -> Result<ForwardConfig, String> {
    let endpoint: http::Uri = f
        .endpoint
        .parse()
        .map_err(|e| invalid(format!("otlp.forward.endpoint {:?}: {e}", f.endpoint)))?;
    if !matches!(endpoint.scheme_str(), Some("http" | "https")) || endpoint.host().is_none() {
        return Err(invalid(format!(
            "otlp.forward.endpoint {:?} must be an http or https URL",
            f.endpoint
        )));
    }
    let protocol = match f.protocol.as_deref() {
        None | Some("http") => ForwardProtocol::Http,
        Some("grpc") => ForwardProtocol::Grpc,
        Some(other) => return Err(invalid(format!("otlp.forward.protocol {other:?}: http or grpc"))),
    };
    let queue = f.queue.unwrap_or(DEFAULT_FORWARD_QUEUE);
    if !(1..=1 << 20).contains(&queue) {
        return Err(invalid("otlp.forward.queue must be 1 to 1048576"));
    }
    let timeout = match f.timeout.as_deref() {
        None => Duration::from_secs(10),
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if d >= Duration::from_millis(10) && d <= Duration::from_secs(600) => d,
            Ok(_) => return Err(invalid(format!("otlp.forward.timeout {s:?} must be 10ms to 10m"))),
            Err(e) => return Err(invalid(format!("otlp.forward.timeout {s:?}: {e}"))),
        },
    };
    let max_attempts = f.max_attempts.unwrap_or(8);
    if !(1..=1000).contains(&max_attempts) {
        return Err(invalid("otlp.forward.max-attempts must be 1 to 1000"));
    }
    Ok(ForwardConfig {
        endpoint,
        protocol,
        queue,
        timeout,
        max_attempts,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn absent_means_off_and_a_flag_turns_both_receivers_on() {
        assert!(validate(None, None, None).unwrap().is_none());
        let c = validate(None, Some("127.0.0.1:0".into()), None).unwrap().unwrap();
        assert_eq!(c.http_addr, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.grpc_addr, Some(DEFAULT_GRPC_ADDR.parse().unwrap()));
        assert_eq!(
            (c.max_body, c.max_in_flight),
            (DEFAULT_MAX_BODY, DEFAULT_MAX_IN_FLIGHT)
        );
        let off = FileOtlp {
            grpc_addr: Some("off".into()),
            ..Default::default()
        };
        assert_eq!(validate(Some(off), None, None).unwrap().unwrap().grpc_addr, None);
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = [
            FileOtlp {
                tenant: Some("_system".into()),
                ..Default::default()
            },
            FileOtlp {
                http_addr: Some("nowhere".into()),
                ..Default::default()
            },
            FileOtlp {
                max_in_flight: Some(0),
                ..Default::default()
            },
            FileOtlp {
                forward: Some(FileForward {
                    endpoint: "ftp://x".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            FileOtlp {
                forward: Some(FileForward {
                    endpoint: "http://x:4317".into(),
                    protocol: Some("thrift".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        for f in bad {
            assert!(validate(Some(f.clone()), None, None).is_err(), "{f:?}");
        }
        for q in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let f = FileOtlp {
                quota: Some(FileQuota {
                    spans_per_second: q,
                    burst: None,
                }),
                ..Default::default()
            };
            assert!(validate(Some(f), None, None).is_err(), "{q}");
        }
        for (window, spans) in [(Some("0s"), None), (Some("soon"), None), (None, Some(1))] {
            let f = FileOtlp {
                idempotency: Some(FileIdempotency {
                    window: window.map(Into::into),
                    spans,
                }),
                ..Default::default()
            };
            assert!(validate(Some(f), None, None).is_err(), "{window:?} {spans:?}");
        }
    }

    #[test]
    fn quota_burst_defaults_to_twice_the_rate_and_idempotency_to_ten_minutes() {
        let f = FileOtlp {
            quota: Some(FileQuota {
                spans_per_second: 500.0,
                burst: None,
            }),
            ..Default::default()
        };
        let c = validate(Some(f), None, None).unwrap().unwrap();
        assert_eq!(c.quota.map(|q| (q.rps, q.burst)), Some((500.0, 1000)));
        assert_eq!(c.idempotency_window, DEFAULT_IDEMPOTENCY_WINDOW);
        assert_eq!(c.idempotency_spans, DEFAULT_IDEMPOTENCY_SPANS);
        assert!(
            validate(None, Some("off".into()), None)
                .unwrap()
                .unwrap()
                .quota
                .is_none()
        );
    }
}
