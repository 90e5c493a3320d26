//! The fuzz targets of `kla::fuzzing` on stable, bounded: every seed is committed under `fuzz/corpus/` as it is
//! built today (the shipped default pack among them) and gets its expected verdict; then each target runs under
//! proptest on mutated seeds and arbitrary bytes for a fixed number of cases, a few seconds in all. The same
//! functions run unbounded under cargo-fuzz (`fuzz/`, see docs/security.md).

use kla::fuzzing::{self, Seed, Verdict};
use kla::policy::{CompiledPack, PackFiles, TrustedKey, verify_pack};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;
use std::sync::OnceLock;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| fuzzing::seed_corpus(repo()).expect("the seed corpus builds from the repository"))
}

#[test]
fn every_seed_is_committed_and_gets_its_verdict() {
    for seed in seeds() {
        let path = repo().join("fuzz/corpus").join(seed.target).join(&seed.name);
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == seed.bytes,
            "{} is not the current seed: run `cargo run --example fuzz_corpus`",
            path.display()
        );
        let target = fuzzing::target(seed.target).expect("a seed names a target");
        assert_eq!(target(&seed.bytes), seed.verdict, "{}/{}", seed.target, seed.name);
    }
    let manifest = std::fs::read_to_string(repo().join("fuzz/Cargo.toml")).unwrap();
    for (name, _) in fuzzing::TARGETS {
        assert!(
            seeds()
                .iter()
                .any(|s| s.target == *name && s.verdict == Verdict::Accepted),
            "{name} has no accepted seed"
        );
        assert!(
            repo().join(format!("fuzz/fuzz_targets/{name}.rs")).is_file()
                && manifest.contains(&format!("name = \"{name}\"")),
            "{name} has no cargo-fuzz target"
        );
    }
}

/// The pack seed is the shipped default pack as it is now: version 1.1.0, verified with `policies/kla-default.pub`.
#[test]
fn the_pack_seed_is_the_signed_default_pack() {
    let dir = repo().join("policies/default");
    let key = TrustedKey::read(&repo().join("policies/kla-default.pub")).unwrap();
    let files = PackFiles::read_dir(&dir).unwrap();
    let pack = CompiledPack::compile(&verify_pack(files, &[key]).unwrap()).unwrap();
    assert_eq!((pack.name(), pack.version()), ("kla-default", "1.1.0"));
    let seed = seeds()
        .iter()
        .find(|s| s.target == "pack" && s.name == "default-pack")
        .unwrap();
    let text = String::from_utf8_lossy(&seed.bytes);
    assert!(
        text.contains("version: 1.1.0") && text.contains("==> pack.sig.json\n"),
        "{text}"
    );
    assert_eq!(fuzzing::pack(&seed.bytes), Verdict::Accepted);
    // Every `when` of the shipped pack is a seed of the `when` target.
    let shipped = seeds()
        .iter()
        .filter(|s| s.target == "when_expr" && s.name.starts_with("shipped-when-"));
    assert!(shipped.count() >= 4);
}

/// One edit of a seed: overwrite, insert or delete a byte, or insert a character that JSON, YAML and Rego give
/// meaning to.
fn edit(bytes: &mut Vec<u8>, (at, op, byte): (u16, u8, u8)) {
    const SYNTAX: &[u8] = b"{}[]()\",:\n\\-.0e#`'*|=!&";
    let at = if bytes.is_empty() {
        0
    } else {
        usize::from(at) % (bytes.len() + 1)
    };
    match op % 4 {
        0 if at < bytes.len() => bytes[at] = byte,
        1 => bytes.insert(at, byte),
        2 if at < bytes.len() => {
            bytes.remove(at);
        }
        _ => bytes.insert(at, SYNTAX[usize::from(byte) % SYNTAX.len()]),
    }
}

/// Inputs for `target`: its seeds with a few edits (mostly), or arbitrary bytes.
fn inputs(target: &str) -> impl Strategy<Value = Vec<u8>> {
    let seeds: Vec<Vec<u8>> = seeds()
        .iter()
        .filter(|s| s.target == target)
        .map(|s| s.bytes.clone())
        .collect();
    assert!(!seeds.is_empty(), "{target} has seeds");
    let n = seeds.len();
    let mutated = (
        0..n,
        prop::collection::vec((any::<u16>(), any::<u8>(), any::<u8>()), 1..6),
    )
        .prop_map(move |(i, edits)| {
            let mut b = seeds[i].clone();
            for e in edits {
                edit(&mut b, e);
            }
            b
        });
    prop_oneof![4 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..200)]
}

/// Runs `target` on `cases` inputs; a broken promise fails with the smallest input proptest finds.
fn drive(target: &str, cases: u32) {
    let f = fuzzing::target(target).expect("a target");
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&inputs(target), |data| {
        f(&data);
        Ok(())
    }) {
        panic!("fuzz target {target}: {e}");
    }
}

#[test]
fn json_target_holds() {
    drive("json", 1000);
}

#[test]
fn request_body_target_holds() {
    drive("request_body", 500);
}

#[test]
fn config_yaml_target_holds() {
    drive("config_yaml", 300);
}

#[test]
fn pack_target_holds() {
    drive("pack", 24);
}

#[test]
fn when_expr_target_holds() {
    drive("when_expr", 64);
}

#[test]
fn token_target_holds() {
    drive("token", 200);
}

#[test]
fn ledger_entry_target_holds() {
    drive("ledger_entry", 500);
}

#[test]
fn ledger_file_target_holds() {
    drive("ledger_file", 100);
}

#[test]
fn evidence_target_holds() {
    drive("evidence", 100);
}

#[test]
fn names_target_holds() {
    drive("names", 1000);
}

#[test]
fn otlp_target_holds() {
    drive("otlp", 300);
}

#[test]
fn mcp_target_holds() {
    drive("mcp", 1000);
}

#[test]
fn redactor_target_holds() {
    drive("redactor", 500);
}

/// The redactor target on text assembled from what its detectors read: digits in several scripts and widths,
/// separators (no-break and thin spaces, dashes, tabs, invisible characters), `@` in both widths, quotes,
/// backslashes, keywords, key ids and letters and marks of other scripts. Byte edits of the seeds seldom keep such
/// text valid UTF-8; these inputs reach the normalised view and the mapping back to the original on every case.
#[test]
fn redactor_target_holds_on_spelled_text() {
    const PIECES: &[&str] = &[
        "4111",
        "1111",
        "5555",
        "4444",
        "123",
        "45",
        "6789",
        "078",
        "05",
        "1120",
        "５",
        "１",
        "٤",
        "١",
        "४",
        "𝟏",
        " ",
        "  ",
        "\u{a0}",
        "\u{202f}",
        "\u{3000}",
        "\u{2013}",
        "\u{2212}",
        "-",
        ".",
        "．",
        "\t",
        "\n",
        "\u{200b}",
        "\u{feff}",
        "\u{ad}",
        "@",
        "＠",
        "﹫",
        "\"",
        "'",
        "\\",
        "jane",
        "bücher",
        "例え",
        ".de",
        ".com",
        ".рф",
        "xn--p1ai",
        "ssn ",
        "SSN: ",
        "secret=",
        "aws_secret_access_key = ",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "eyAi",
        "eyJ",
        ".",
        "DE89",
        "de89",
        "3704",
        "0044",
        "cc_",
        "ref#",
        "/cards/",
        "番号",
        "é",
        "e\u{301}",
        "abcdef",
        "-----BEGIN PGP PRIVATE KEY BLOCK-----",
        "Version: x",
    ];
    let f = fuzzing::target("redactor").expect("the redactor target");
    let text =
        prop::collection::vec(prop::sample::select(PIECES), 0..48).prop_map(|v| v.concat().into_bytes());
    let mut runner = TestRunner::new(Config {
        cases: 600,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&text, |data| {
        f(&data);
        Ok(())
    }) {
        panic!("fuzz target redactor: {e}");
    }
}
