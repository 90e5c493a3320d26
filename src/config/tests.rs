use super::*;
use std::path::Path;

fn yaml(text: &str) -> RawConfig {
    RawConfig::from_yaml(text).expect("yaml")
}

#[test]
fn defaults_validate() {
    let c = RawConfig::default().validate().expect("defaults are valid");
    assert_eq!(c.data_dir, PathBuf::from("kla-data"));
    assert_eq!(c.api.listener.addr.to_string(), "127.0.0.1:8700");
    assert!(c.api.listener.tls.is_none());
    assert_eq!(c.api.body_limit, 1 << 20);
    assert!(c.api.rate_limit.is_none());
    assert!(c.auth.external_issuer.is_none());
    assert_eq!(c.store.dir, PathBuf::from("kla-data"));
    assert_eq!(c.ledger.dir, PathBuf::from("kla-data/ledger"));
    assert_eq!(c.ledger.origin, "kla.local/ledger");
    assert_eq!(c.ledger.repair, RepairMode::Refuse);
    assert!(!c.ledger.fast_start);
    assert_eq!(c.ledger.preallocate, 64 << 20);
    assert_eq!(c.policy.dir, PathBuf::from("policies"));
    assert!(c.policy.trusted_keys.is_empty());
    assert!(!c.policy.allow_unsigned && !c.policy.allow_rollback);
    assert_eq!(c.policy.deadline, Duration::from_millis(5));
    assert!(!c.log.json);
    assert_eq!(c.api.listener.limits, Limits::default());
    let l = c.api.listener.limits;
    assert_eq!(
        (
            l.max_connections,
            l.idle_timeout,
            l.header_timeout,
            l.body_timeout
        ),
        (
            1024,
            Duration::from_secs(60),
            Duration::from_secs(10),
            Duration::from_secs(30)
        )
    );
    assert_eq!(l.h2_max_concurrent_streams, 100);
    assert_eq!(l.h2_keepalive_interval, Some(Duration::from_secs(20)));
    assert_eq!(l.h2_keepalive_timeout, Duration::from_secs(20));
    assert_eq!((l.max_header_bytes, l.max_uri_bytes), (65536, 8192));
}

#[test]
fn nested_yaml_is_parsed_into_its_sections() {
    let c = yaml(
        "data-dir: /srv/kla\n\
         log: {format: json}\n\
         api:\n  addr: 0.0.0.0:9000\n  tls: {cert: c.pem, key: k.pem}\n  body-limit: 2048\n  \
         rate-limit: {rps: 10, burst: 20}\n  \
         limits: {max-connections: 8, idle-timeout: 5s, header-timeout: 2s, body-timeout: 3s, \
         h2-max-concurrent-streams: 4, h2-keepalive-interval: 0s, h2-keepalive-timeout: 1s, \
         max-header-bytes: 4096, max-uri-bytes: 1024}\n\
         auth:\n  external-issuer: {jwks: idp.json, issuer: https://idp/, audience: kla-api}\n\
         ledger: {origin: kla.example/ledger, repair: truncate, fast-start: true, preallocate: 0}\n\
         policy:\n  dir: /etc/kla/policies\n  trusted-keys: [a.pub, b.pub]\n  allow-unsigned: true\n  \
         allow-rollback: true\n  deadline: 7ms\n",
    )
    .validate()
    .expect("valid");
    assert_eq!(c.data_dir, PathBuf::from("/srv/kla"));
    assert!(c.log.json);
    assert_eq!(c.api.listener.addr.port(), 9000);
    let tls = c.api.listener.tls.expect("tls");
    assert_eq!((tls.cert, tls.key), ("c.pem".into(), "k.pem".into()));
    assert_eq!(c.api.body_limit, 2048);
    assert_eq!(c.api.rate_limit.map(|r| (r.rps, r.burst)), Some((10.0, 20)));
    assert_eq!(
        c.api.listener.limits,
        Limits {
            max_connections: 8,
            idle_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(3),
            h2_max_concurrent_streams: 4,
            h2_keepalive_interval: None,
            h2_keepalive_timeout: Duration::from_secs(1),
            max_header_bytes: 4096,
            max_uri_bytes: 1024,
        }
    );
    let idp = c.auth.external_issuer.expect("issuer");
    assert_eq!(
        (idp.jwks, idp.issuer.as_str(), idp.audience.as_str()),
        ("idp.json".into(), "https://idp/", "kla-api")
    );
    assert_eq!(c.store.dir, PathBuf::from("/srv/kla"));
    assert_eq!(c.ledger.dir, PathBuf::from("/srv/kla/ledger"));
    assert_eq!(c.ledger.origin, "kla.example/ledger");
    assert_eq!(c.ledger.repair, RepairMode::Truncate);
    assert!(c.ledger.fast_start);
    assert_eq!(c.ledger.preallocate, 0);
    assert_eq!(c.policy.dir, PathBuf::from("/etc/kla/policies"));
    assert_eq!(
        c.policy.trusted_keys,
        [PathBuf::from("a.pub"), PathBuf::from("b.pub")]
    );
    assert!(c.policy.allow_unsigned && c.policy.allow_rollback);
    assert_eq!(c.policy.deadline, Duration::from_millis(7));
}

#[test]
fn unknown_keys_are_refused_at_every_level_with_their_name() {
    let e = RawConfig::from_yaml("bogus: 1\n").expect_err("unknown top-level key");
    assert!(e.contains("unknown field `bogus`"), "{e}");
    // Below the top level the error also names the section and the position.
    for (text, section, name) in [
        ("api:\n  adr: 1.2.3.4:1\n", "api", "adr"),
        ("api:\n  tls: {cert: c, key: k, chain: x}\n", "api.tls", "chain"),
        ("api:\n  limits: {max-conns: 1}\n", "api.limits", "max-conns"),
        (
            "api:\n  rate-limit: {rps: 1, brust: 2}\n",
            "api.rate-limit",
            "brust",
        ),
        (
            "auth:\n  external-issuer: {jwks: f, isuer: i}\n",
            "auth.external-issuer",
            "isuer",
        ),
        ("ledger: {orign: x}\n", "ledger", "orign"),
        ("policy: {trusted-key: [a]}\n", "policy", "trusted-key"),
        ("log: {level: debug}\n", "log", "level"),
    ] {
        let e = RawConfig::from_yaml(text).expect_err(text);
        assert!(
            e.starts_with(&format!("{section}: unknown field `{name}`")),
            "{text}: {e}"
        );
        assert!(e.contains(" at line "), "{text}: {e}");
    }
}

#[test]
fn a_flag_name_used_as_a_file_key_is_refused_with_its_place_in_the_file() {
    let e = RawConfig::from_yaml("api-addr: 1.2.3.4:1\n").expect_err("flat keys are flags");
    assert!(
        e.contains("unknown field `api-addr`") && e.contains("`api.addr`"),
        "{e}"
    );
    let e = RawConfig::from_yaml("policies: ./p\n").expect_err("flat keys are flags");
    assert!(e.contains("`policy.dir`"), "{e}");
}

#[test]
fn every_flag_has_a_place_in_the_file() {
    // Each flag of KEYS, written at its nested path, reaches the same RawConfig field as the flag.
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        raw: RawConfig,
    }
    use clap::Parser as _;
    for key in KEYS.iter().filter(|k| k.doc.is_some()) {
        let (flag, path) = (&key.flag(), key.path);
        let value = match flag.as_str() {
            "api-addr" => "127.0.0.1:1",
            "rate-limit-rps"
            | "rate-limit-burst"
            | "body-limit"
            | "api-max-connections"
            | "api-h2-max-concurrent-streams"
            | "api-max-header-bytes"
            | "api-max-uri-bytes"
            | "events-max-subscribers"
            | "events-max-subscribers-per-tenant" => "3",
            "ledger-preallocate" => "65536",
            "allow-unsigned" | "allow-pack-rollback" | "ledger-fast-start" => "true",
            "ledger-repair" => "truncate",
            "policy-deadline" => "3ms",
            "log-format" => "json",
            _ => "x",
        };
        let parts: Vec<&str> = path.split('.').collect();
        let mut text = String::new();
        for (depth, part) in parts.iter().enumerate() {
            text += &"  ".repeat(depth);
            text += part;
            text += ":";
            if depth + 1 < parts.len() {
                text += "\n";
            }
        }
        text += if flag == "trusted-key" { " [x]\n" } else { " " };
        if flag != "trusted-key" {
            text += value;
            text += "\n";
        }
        let from_file = format!(
            "{:?}",
            RawConfig::from_yaml(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
        );
        let arg = if matches!(value, "true") {
            format!("--{flag}")
        } else {
            format!("--{flag}={value}")
        };
        let from_flag = format!(
            "{:?}",
            Flags::try_parse_from(["kla", &arg]).expect(flag.as_str()).raw
        );
        assert_eq!(from_file, from_flag, "{flag} at {path}");
    }
}

#[test]
fn flags_override_file() {
    let file = yaml("api:\n  addr: 127.0.0.1:1\n  rate-limit: {rps: 5}\npolicy: {dir: ./file-policies}\n");
    let flags = RawConfig {
        api_addr: Some("127.0.0.1:2".into()),
        ..Default::default()
    };
    let c = flags.over(file).validate().expect("valid");
    assert_eq!(c.api.listener.addr.port(), 2, "the flag wins");
    assert_eq!(
        c.api.rate_limit.map(|r| r.burst),
        Some(5),
        "the file fills what the flags leave"
    );
    assert_eq!(c.policy.dir, PathBuf::from("./file-policies"));
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
    let file = || yaml("policy: {allow-unsigned: true, allow-rollback: true}\nledger: {fast-start: true}\n");
    let config = |args: &[&str]| {
        let flags = Flags::try_parse_from(std::iter::once("kla").chain(args.iter().copied())).expect("flags");
        flags.raw.over(file()).validate().expect("valid")
    };
    let parse = |args: &[&str]| {
        let c = config(args);
        (c.policy.allow_unsigned, c.ledger.fast_start)
    };
    assert_eq!(parse(&[]), (true, true));
    let rollback = |args: &[&str]| config(args).policy.allow_rollback;
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
        !off.policy.allow_unsigned && !off.ledger.fast_start && !off.policy.allow_rollback,
        "all default to off"
    );
    assert!(Flags::try_parse_from(["kla", "--allow-unsigned=maybe"]).is_err());
}

#[test]
fn trusted_key_flags_replace_the_files_whole_list() {
    let file = || yaml("policy: {trusted-keys: [a.pub, b.pub]}\n");
    let c = RawConfig::default().over(file()).validate().expect("valid");
    assert_eq!(c.policy.trusted_keys.len(), 2);
    let flags = RawConfig {
        trusted_key: vec!["c.pub".into()],
        ..Default::default()
    };
    let c = flags.over(file()).validate().expect("valid");
    assert_eq!(c.policy.trusted_keys, [PathBuf::from("c.pub")]);
}

#[test]
fn the_example_config_file_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kla.yaml");
    let c = RawConfig::from_file(&path)
        .expect("example parses")
        .validate()
        .expect("example validates");
    assert_eq!(c.api.rate_limit.map(|r| (r.rps, r.burst)), Some((200.0, 400)));
    assert_eq!(c.policy.deadline, Duration::from_millis(5));
}

#[test]
fn bad_values_are_refused_with_their_key() {
    for (text, key) in [
        ("api: {addr: nope}\n", "api.addr (--api-addr)"),
        (
            "api: {rate-limit: {rps: -1}}\n",
            "api.rate-limit.rps (--rate-limit-rps)",
        ),
        ("api: {body-limit: 0}\n", "api.body-limit (--body-limit)"),
        (
            "policy: {deadline: soon}\n",
            "policy.deadline (--policy-deadline)",
        ),
        ("ledger: {repair: maybe}\n", "ledger.repair (--ledger-repair)"),
        (
            "ledger: {preallocate: 100}\n",
            "ledger.preallocate (--ledger-preallocate)",
        ),
        ("log: {format: xml}\n", "log.format (--log-format)"),
        (
            "auth: {external-issuer: {jwks: f.json}}\n",
            "auth.external-issuer.jwks (--jwks)",
        ),
        ("api: {tls: {cert: c.pem}}\n", "api.tls.cert (--tls-cert)"),
        (
            "api: {limits: {max-connections: 0}}\n",
            "api.limits.max-connections (--api-max-connections)",
        ),
        (
            "api: {limits: {idle-timeout: 0s}}\n",
            "api.limits.idle-timeout (--api-idle-timeout)",
        ),
        (
            "api: {limits: {header-timeout: soon}}\n",
            "api.limits.header-timeout (--api-header-timeout)",
        ),
        (
            "api: {limits: {body-timeout: 0ms}}\n",
            "api.limits.body-timeout (--api-body-timeout)",
        ),
        (
            "api: {limits: {idle-timeout: 2days}}\n",
            "api.limits.idle-timeout (--api-idle-timeout)",
        ),
        (
            "api: {limits: {h2-max-concurrent-streams: 0}}\n",
            "(--api-h2-max-concurrent-streams)",
        ),
        (
            "api: {limits: {h2-keepalive-interval: x}}\n",
            "(--api-h2-keepalive-interval)",
        ),
    ] {
        let e = yaml(text).validate().expect_err(text).to_string();
        assert!(e.contains(key), "{text}: {e}");
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

#[test]
fn the_events_section_has_defaults_bounds_and_a_file_form() {
    let d = RawConfig::default().validate().expect("defaults");
    assert_eq!(d.events.retention, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(d.events.heartbeat, Duration::from_secs(15));
    assert_eq!(
        (d.events.max_subscribers, d.events.max_subscribers_per_tenant),
        (4096, 1024)
    );
    let c = yaml(
        "events: {retention: 2h, heartbeat: 200ms, max-subscribers: 10, max-subscribers-per-tenant: 4}\n",
    )
    .validate()
    .expect("valid");
    assert_eq!(c.events.retention, Duration::from_secs(7200));
    assert_eq!(c.events.heartbeat, Duration::from_millis(200));
    assert_eq!(
        (c.events.max_subscribers, c.events.max_subscribers_per_tenant),
        (10, 4)
    );
    // A global cap below the default tenant cap lowers the tenant cap with it.
    let small = RawConfig {
        events_max_subscribers: Some(10),
        ..Default::default()
    };
    assert_eq!(
        small.validate().expect("valid").events.max_subscribers_per_tenant,
        10
    );
    for (raw, key) in [
        (
            RawConfig {
                events_retention: Some("0s".into()),
                ..Default::default()
            },
            "events.retention (--events-retention)",
        ),
        (
            RawConfig {
                events_retention: Some("soon".into()),
                ..Default::default()
            },
            "events.retention (--events-retention)",
        ),
        (
            RawConfig {
                events_heartbeat: Some("1ms".into()),
                ..Default::default()
            },
            "events.heartbeat (--events-heartbeat)",
        ),
        (
            RawConfig {
                events_max_subscribers: Some(0),
                ..Default::default()
            },
            "events.max-subscribers (--events-max-subscribers)",
        ),
        (
            RawConfig {
                events_max_subscribers: Some(10),
                events_max_subscribers_per_tenant: Some(11),
                ..Default::default()
            },
            "events.max-subscribers-per-tenant (--events-max-subscribers-per-tenant)",
        ),
    ] {
        let e = raw.validate().expect_err(key).to_string();
        assert!(e.contains(key), "{e}");
    }
    assert!(
        RawConfig::from_yaml("events: {ring: 5}\n").is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn the_flags_are_the_keys_declared_as_flags() {
    // clap's derive names each flag after its field; KEYS says which fields are flags (those with a docs row).
    let cmd = <RawConfig as clap::Args>::augment_args(clap::Command::new("kla"));
    let from_clap: Vec<String> = cmd
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect();
    let from_keys: Vec<String> = KEYS
        .iter()
        .filter(|k| k.doc.is_some())
        .map(|k| k.flag())
        .collect();
    assert_eq!(from_clap, from_keys);
}

#[test]
fn no_key_is_also_a_section() {
    // A place that is both a key and a section would make the file reader pick one silently.
    let read: Vec<&str> = KEYS.iter().filter(|k| !k.embedded).map(|k| k.path).collect();
    for a in &read {
        assert_eq!(read.iter().filter(|b| *b == a).count(), 1, "{a} declared twice");
        assert!(
            !read.iter().any(|b| b.starts_with(&format!("{a}."))),
            "{a} is a key and a section"
        );
    }
    // A key lifted out of another module's section sits directly inside a section read whole.
    for k in KEYS.iter().filter(|k| k.embedded) {
        let (section, _) = k.path.rsplit_once('.').expect("a lifted key is inside a section");
        assert!(
            read.contains(&section),
            "{} is not inside a section read whole",
            k.path
        );
    }
}

#[test]
fn the_docs_settings_table_is_generated_from_the_keys() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md"))
        .expect("docs/config.md");
    let (begin, end) = (
        "<!-- settings table: generated from src/config/keys.rs by `cargo test --lib config` -->\n",
        "<!-- end of settings table -->",
    );
    let start = doc.find(begin).expect("the table's start marker") + begin.len();
    let stop = doc[start..].find(end).expect("the table's end marker") + start;
    let expected = markdown_table();
    assert!(
        doc[start..stop] == expected,
        "docs/config.md's settings table differs from src/config/keys.rs; replace it with:\n\n{expected}"
    );
}
