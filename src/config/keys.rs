//! The keys of `kla serve`, each declared once: its `RawConfig` field and type, its flag's help and clap
//! attributes, its place in the config file and its row in docs/config.md's settings table. Everything else about a
//! key's form (the flag, the file section, the merge, the "this is a flag" hint, the docs row) is generated from
//! this list by [`config_keys!`](super::declare); what a key means is checked where it is used, in
//! [`RawConfig::validate`](super::RawConfig::validate).
//!
//! Adding a key: one entry here (in the file's order), its use in `validate`, then `cargo test --lib config` prints
//! the docs table to paste into docs/config.md.

use super::FileWebhook;
use super::declare::config_keys;
use std::path::PathBuf;

config_keys! {
    /// Data directory (SQLite store, ledger, keys). Default `./kla-data`.
    #[arg(long)]
    data_dir: Option<PathBuf> {
        file: "data-dir",
        doc: [
            "<path>",
            "`kla-data` (relative to the working directory)",
            "created if absent. Holds `kla.db` (SQLite store), `ledger/` (see [ledger-format.md](ledger-format.md)), `keys/token-signing.pem` and `keys/registry-signing.pem` (Ed25519, created on first start, mode 0600)",
        ],
    }
    /// Log format: `text` or `json`. Default `text`.
    #[arg(long)]
    log_format: Option<String> {
        file: "log.format",
        doc: [
            "<fmt>",
            "`text`",
            "`text` or `json`",
        ],
    }
    /// Address of the REST API. Default `127.0.0.1:8700`.
    #[arg(long)]
    api_addr: Option<String> {
        file: "api.addr",
        doc: [
            "<ip:port>",
            "`127.0.0.1:8700`",
            "listen address. Must parse as a socket address (an IP, not a host name). Port `0` picks a free port",
        ],
    }
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long)]
    tls_cert: Option<PathBuf> {
        file: "api.tls.cert",
        doc: [
            "<path>",
            "none",
            "PEM certificate chain. Serves HTTPS. Must be set together with `tls-key`",
        ],
    }
    /// PEM private key for --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf> {
        file: "api.tls.key",
        doc: [
            "<path>",
            "none",
            "PEM private key for `tls-cert`",
        ],
    }
    /// Open API connections at most; at the cap new ones wait in the listen backlog. Default 1024.
    #[arg(long)]
    api_max_connections: Option<usize> {
        file: "api.limits.max-connections",
        doc: [
            "<n>",
            "`1024`",
            "open API connections at most, 1 to 1048576. At the cap kla stops accepting until one closes (see \"Listener limits\")",
        ],
    }
    /// Close an API connection with no request in progress after this long, e.g. `60s`. Default 60s.
    #[arg(long)]
    api_idle_timeout: Option<String> {
        file: "api.limits.idle-timeout",
        doc: [
            "<duration>",
            "`60s`",
            "close a connection with no request in progress (HTTP/1 keep-alive, HTTP/2 with no stream) after this long; also how long a response may wait for a client that does not read it. More than 0, at most 1 day",
        ],
    }
    /// Time from connecting to the end of the first request's headers (and on HTTP/1 from a request's first byte
    /// to the end of its headers). Default 10s.
    #[arg(long)]
    api_header_timeout: Option<String> {
        file: "api.limits.header-timeout",
        doc: [
            "<duration>",
            "`10s`",
            "time from connecting (TLS handshake included) to the end of the first request's headers, and on HTTP/1 from the first byte of each later request to the end of its headers. More than 0, at most 1 day",
        ],
    }
    /// Time a request body may take to arrive. Default 30s.
    #[arg(long)]
    api_body_timeout: Option<String> {
        file: "api.limits.body-timeout",
        doc: [
            "<duration>",
            "`30s`",
            "time a request body may take to arrive, from the handler's first wait for it; a slower one is cut off with 400 `invalid_request`. More than 0, at most 1 day",
        ],
    }
    /// HTTP/2 streams open at once per API connection. Default 100.
    #[arg(long)]
    api_h2_max_concurrent_streams: Option<u32> {
        file: "api.limits.h2-max-concurrent-streams",
        doc: [
            "<n>",
            "`100`",
            "HTTP/2 streams open at once per connection. At least 1",
        ],
    }
    /// HTTP/2 keep-alive ping interval; `0s` sends none. Default 20s.
    #[arg(long)]
    api_h2_keepalive_interval: Option<String> {
        file: "api.limits.h2-keepalive-interval",
        doc: [
            "<duration>",
            "`20s`",
            "HTTP/2 keep-alive ping interval; `0s` sends no pings; at most 1 day",
        ],
    }
    /// How long an HTTP/2 keep-alive ping may go unanswered. Default 20s.
    #[arg(long)]
    api_h2_keepalive_timeout: Option<String> {
        file: "api.limits.h2-keepalive-timeout",
        doc: [
            "<duration>",
            "`20s`",
            "an HTTP/2 ping not answered within this closes the connection. More than 0, at most 1 day",
        ],
    }
    /// Largest request header block in bytes (431 over it). Default 65536.
    #[arg(long)]
    api_max_header_bytes: Option<usize> {
        file: "api.limits.max-header-bytes",
        doc: [
            "<bytes>",
            "`65536`",
            "largest request header block (each header's name and value plus 4 bytes); over it 431. 1024 to 262144",
        ],
    }
    /// Longest request target in bytes (414 over it). Default 8192.
    #[arg(long)]
    api_max_uri_bytes: Option<usize> {
        file: "api.limits.max-uri-bytes",
        doc: [
            "<bytes>",
            "`8192`",
            "longest request target (path and query, and authority when sent); over it 414. 256 to 65534",
        ],
    }
    /// Largest accepted request body in bytes. Default 1 MiB.
    #[arg(long)]
    body_limit: Option<usize> {
        file: "api.body-limit",
        doc: [
            "<bytes>",
            "`1048576` (1 MiB)",
            "largest request body, 1 byte to 8 MiB (a decision's context must fit in one 16 MiB ledger entry). Larger bodies get 413",
        ],
    }
    /// Requests per second per tenant (token bucket refill); 0 turns rate limiting off. Default 0.
    #[arg(long)]
    rate_limit_rps: Option<f64> {
        file: "api.rate-limit.rps",
        doc: [
            "<float>",
            "`0` (off)",
            "per-tenant token-bucket refill, in requests per second. Must be finite and ≥ 0",
        ],
    }
    /// Bucket size per tenant. Default: max(1, rps).
    #[arg(long)]
    rate_limit_burst: Option<u32> {
        file: "api.rate-limit.burst",
        doc: [
            "<int>",
            "`max(1, ceil(rps))`",
            "bucket size per tenant. A value of 0 is raised to 1. Ignored while rps is 0",
        ],
    }
    /// JWKS file of an external OAuth issuer whose tokens kla accepts.
    #[arg(long)]
    jwks: Option<PathBuf> {
        file: "auth.external-issuer.jwks",
        doc: [
            "<path>",
            "none",
            "JWKS file of an external token issuer. Needs `issuer` and `audience`",
        ],
    }
    /// Expected `iss` of external tokens (required with --jwks).
    #[arg(long)]
    jwt_issuer: Option<String> {
        file: "auth.external-issuer.issuer",
        doc: [
            "<string>",
            "none",
            "required `iss` of external tokens. Only valid with `jwks`",
        ],
    }
    /// Expected `aud` of external tokens (required with --jwks).
    #[arg(long)]
    jwt_audience: Option<String> {
        file: "auth.external-issuer.audience",
        doc: [
            "<string>",
            "none",
            "required `aud` of external tokens. Only valid with `jwks`",
        ],
    }
    /// Ledger origin line of signed checkpoints. Default `kla.local/ledger`.
    #[arg(long)]
    ledger_origin: Option<String> {
        file: "ledger.origin",
        doc: [
            "<string>",
            "`kla.local/ledger`",
            "origin line and key name of signed checkpoints. Once a ledger exists, opening it with another origin is refused",
        ],
    }
    /// `truncate`: cut a damaged ledger tail (never below the last signed checkpoint) instead of refusing to start.
    #[arg(long)]
    ledger_repair: Option<String> {
        file: "ledger.repair",
        doc: [
            "<mode>",
            "`none`",
            "`none` refuses to start on a damaged ledger. `truncate` cuts a damaged *tail* (never below the last signed checkpoint). Mid-log damage is always refused",
        ],
    }
    /// Skip the full ledger check at startup: only what follows the last signed checkpoint is checked (run
    /// `kla ledger verify` separately). For very large logs; by default damage anywhere refuses startup.
    /// `--ledger-fast-start=false` turns off a `true` from the config file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    ledger_fast_start: Option<bool> {
        file: "ledger.fast-start",
        doc: [
            "[=true\\|false]",
            "`false`",
            "check only what follows the last signed checkpoint at startup instead of the whole log (for very large logs; run `kla ledger verify` on the stopped server separately)",
        ],
    }
    /// Bytes of zeros the ledger keeps written ahead of its last entry, so an append's fdatasync need not update
    /// the file size (docs/ledger-format.md, "Preallocation"). `0` turns it off (for small disks). Default 64 MiB.
    #[arg(long)]
    ledger_preallocate: Option<u64> {
        file: "ledger.preallocate",
        doc: [
            "<bytes>",
            "`67108864` (64 MiB)",
            "zeros kept written ahead of the ledger's last entry, so an append's `fdatasync` need not update the file size (see \"Preallocation\" in ledger-format.md). `0` turns it off (small disks: the tail needs that much free space); otherwise 4096 to 1073741824. If writing the zeros fails (a full disk), preallocation turns itself off until restart, the tail's space is given back, and appends go on (a warning is logged)",
        ],
    }
    /// A policy pack directory or a folder of packs. Default `./policies`.
    #[arg(long)]
    policies: Option<PathBuf> {
        file: "policy.dir",
        doc: [
            "<path>",
            "`policies`",
            "a pack directory (holding `pack.yaml`) or a folder of pack directories. Watched for changes",
        ],
    }
    /// Public key trusted to sign policy packs (repeatable). Default: kla's embedded default-pack key.
    #[arg(long = "trusted-key")]
    trusted_key: Vec<PathBuf> {
        file: "policy.trusted-keys",
        doc: [
            "<path>",
            "kla's embedded default-pack key (`policies/kla-default.pub`)",
            "public keys (`kla-ed25519:<base64>`) trusted to sign packs. Giving any key replaces the embedded one. An unreadable key file stops startup",
        ],
    }
    /// Load unsigned packs (local development only; logs a warning). `--allow-unsigned=false` turns off a `true`
    /// from the config file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    allow_unsigned: Option<bool> {
        file: "policy.allow-unsigned",
        doc: [
            "[=true\\|false]",
            "`false`",
            "load packs without `pack.sig.json` (local development only; a warning is logged). A pack that *has* a signature file must still verify",
        ],
    }
    /// Load a signed pack older than the newest version of its name kla has activated (a rollback; logs a
    /// warning). `--allow-pack-rollback=false` turns off a `true` from the config file.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    allow_pack_rollback: Option<bool> {
        file: "policy.allow-rollback",
        doc: [
            "[=true\\|false]",
            "`false`",
            "load a signed pack older than the newest version of its name kla has activated, and make it the new floor (see \"Rollback protection\" in policy-packs.md); a warning is logged",
        ],
    }
    /// Policy evaluation deadline, e.g. `5ms`. Default 5ms.
    #[arg(long)]
    policy_deadline: Option<String> {
        file: "policy.deadline",
        doc: [
            "<duration>",
            "`5ms`",
            "per-decision evaluation deadline, in humantime syntax (`5ms`, `1s`). Values above 60 s are capped at 60 s. Overrunning it gives `block` / `POLICY_ERROR` (once more first if the thread was preempted: it used less CPU than the deadline)",
        ],
    }
    /// How far back an event stream may resume (`Last-Event-ID`), e.g. `7d`; older positions get
    /// `resync_required`. Default 7 days.
    #[arg(long)]
    events_retention: Option<String> {
        file: "events.retention",
        doc: [
            "<duration>",
            "`7d`",
            "how far back an event stream may resume: a `Last-Event-ID` whose entry is older gets `resync_required` and the stream restarts at the head. 1 s to 366 days",
        ],
    }
    /// Heartbeat interval of idle event streams (SSE comment, WebSocket ping). Default 15s.
    #[arg(long)]
    events_heartbeat: Option<String> {
        file: "events.heartbeat",
        doc: [
            "<duration>",
            "`15s`",
            "heartbeat of idle event streams (an SSE comment, a WebSocket ping; a WebSocket silent for three is closed). 100 ms to 1 h",
        ],
    }
    /// Event stream subscribers (SSE and WebSocket) of the whole server at most; beyond, 503. Default 4096.
    #[arg(long)]
    events_max_subscribers: Option<usize> {
        file: "events.max-subscribers",
        doc: [
            "<n>",
            "`4096`",
            "SSE and WebSocket subscribers of the whole server at most; beyond, 503. 1 to 1048576",
        ],
    }
    /// Event stream subscribers of one tenant at most; beyond, 429. Default 1024.
    #[arg(long)]
    events_max_subscribers_per_tenant: Option<usize> {
        file: "events.max-subscribers-per-tenant",
        doc: [
            "<n>",
            "`1024` (at most `max-subscribers`)",
            "subscribers of one tenant at most; beyond, 429. 1 to `max-subscribers`",
        ],
    }
    /// Webhooks, from the config file only (`webhooks:`).
    #[arg(skip)]
    webhooks: Vec<FileWebhook> {
        file: "webhooks",
    }
    /// Address of the tool-call proxy listener (it only starts when the file's `proxy:` has routes). Default
    /// `127.0.0.1:8701`.
    #[arg(long)]
    proxy_addr: Option<String> {
        file: "proxy.addr",
        lift: |raw: &mut RawConfig| raw.proxy.as_mut().and_then(|p| p.addr.take()),
        doc: [
            "<ip:port>",
            "`127.0.0.1:8701`",
            "address of the tool-call proxy's listener; it only starts when `proxy.routes` has a route. Same limits and timeouts as the API's listener",
        ],
    }
    /// The tool-call proxy, from the config file only (`proxy:`).
    #[arg(skip)]
    proxy: Option<crate::proxy::FileProxy> {
        file: "proxy",
        keep: |p: &crate::proxy::FileProxy| !p.is_empty(),
    }
    /// Address of the OTLP/HTTP receiver, or `off` (giving this or `--otlp-grpc-addr` or the file's `otlp:` starts
    /// the receivers). Default `127.0.0.1:4318`.
    #[arg(long)]
    otlp_http_addr: Option<String> {
        file: "otlp.http-addr",
        lift: |raw: &mut RawConfig| raw.otlp.as_mut().and_then(|o| o.http_addr.take()),
        doc: [
            "<ip:port\\|off>",
            "`127.0.0.1:4318`",
            "OTLP/HTTP receiver; giving this, `--otlp-grpc-addr` or any `otlp:` key starts both receivers (`off` leaves one out). Same limits and timeouts as the API's listener",
        ],
    }
    /// Address of the OTLP/gRPC receiver, or `off`. Default `127.0.0.1:4317`.
    #[arg(long)]
    otlp_grpc_addr: Option<String> {
        file: "otlp.grpc-addr",
        lift: |raw: &mut RawConfig| raw.otlp.as_mut().and_then(|o| o.grpc_addr.take()),
        doc: [
            "<ip:port\\|off>",
            "`127.0.0.1:4317`",
            "OTLP/gRPC receiver",
        ],
    }
    /// The OTLP receivers, from the config file (`otlp:`; its addresses are the two flags' places).
    #[arg(skip)]
    otlp: Option<crate::otlp::FileOtlp> {
        file: "otlp",
        keep: |o: &crate::otlp::FileOtlp| !o.is_empty(),
    }
    /// OTLP endpoint kla exports its own spans to (decisions, proxied calls, approvals); off when unset.
    #[arg(long)]
    otel_endpoint: Option<String> {
        file: "telemetry.endpoint",
        doc: [
            "<url>",
            "none (off)",
            "OTLP/gRPC endpoint (`http(s)://host:4317`) kla exports its own spans to (decisions, proxied calls, approval votes); may be kla's own `--otlp-grpc-addr`. See [otlp.md](otlp.md#klas-own-telemetry)",
        ],
    }
    /// `grpc` (default) or `http` (OTLP/HTTP protobuf) for `--otel-endpoint`.
    #[arg(long)]
    otel_protocol: Option<String> {
        file: "telemetry.protocol",
        doc: [
            "<grpc>",
            "`grpc`",
            "export protocol; only `grpc` for now (`http` is refused)",
        ],
    }
    /// `service.name` of kla's own spans. Default `kla`.
    #[arg(long)]
    otel_service_name: Option<String> {
        file: "telemetry.service-name",
        doc: [
            "<name>",
            "`kla`",
            "`service.name` of kla's spans",
        ],
    }
}
