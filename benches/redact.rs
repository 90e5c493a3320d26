//! Criterion benchmarks of the redaction scan, in MB/s of input.
//!
//! `cargo bench --bench redact -- --quick`
//!
//! * `redact/clean/kla` — 1 MiB of log-like text with ids, timestamps, hashes and numbers but nothing to redact:
//!   the prefilter's pass alone (the redactor returns its input borrowed);
//! * `redact/clean/regex_alternation` — baseline: the same detectors' patterns as one alternation for the
//!   `regex` crate, scanning the same text;
//! * `redact/clean_unicode/kla` — 1 MiB of log lines in German, Japanese, French and Russian with nothing to redact
//!   but characters the detectors normalise (full-width digits and punctuation, narrow no-break spaces, dashes):
//!   the digit pass, the normalised view and the scan over it (the redactor still returns its input borrowed);
//! * `redact/hits/kla` — 1 MiB where every prefilter fires: each line holds an email, a card, an SSN, a phone
//!   number, an IBAN, a JWT, AWS, GitHub, OpenAI, Slack and Google keys, a `password=` and a bearer token, plus
//!   look-alikes that the validators refuse;
//! * `redact/hits/regex_alternation` — the baseline on that text (finding only, no validation or replacement).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use kla::redact::{Builtin, Redactor, Report, pattern_source};
use regex::Regex;

const SIZE: usize = 1 << 20;

fn clean_text() -> String {
    let lines = [
        "2026-12-02T03:15:33.123456Z INFO request completed trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7 status=200 duration_ms=12\n",
        "order ORD-2026-004512 shipped to warehouse 7 in 3 parcels; version 10.2.14 of the client, build 1764645333\n",
        "commit 3f2a9c1e8b7d6f5a4c3b2a1908f7e6d5c4b3a291 merged by the release job; uuid 123e4567-e89b-12d3-a456-426614174000\n",
        "The agent summarised the quarterly report for the finance team and asked for approval of the refund policy.\n",
    ];
    let mut s = String::with_capacity(SIZE + 256);
    let mut i = 0;
    while s.len() < SIZE {
        s.push_str(lines[i % lines.len()]);
        i += 1;
    }
    s
}

fn unicode_text() -> String {
    let lines = [
        "2026-12-02T03:15:33Z INFO Bestellung ORD-2026-004512 an Lager 7 übergeben, 3 Pakete, Größe L – Status „geliefert“\n",
        "注文番号：２０２６－００４５１２、金額：￥１２，３４０（税込）。お客様への連絡は完了しました。\n",
        "Montant total : 1\u{202f}234\u{202f}567,89 € — facture INV-202601-00012 réglée le 02/12/2026 à 14 h 05\n",
        "Заказ № 4512 отправлен; трек 4bf92f3577b34da6a3ce929d0e0e4736, вес 12,5 кг, версия 10.2.14\n",
    ];
    let mut s = String::with_capacity(SIZE + 256);
    let mut i = 0;
    while s.len() < SIZE {
        s.push_str(lines[i % lines.len()]);
        i += 1;
    }
    s
}

fn hits_text() -> String {
    let line = concat!(
        "mail jane.doe@example.com card 4111 1111 1111 1111 ssn 123-45-6789 call (212) 555-0142 ",
        "iban DE89370400440532013000 jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl ",
        "aws AKIAIOSFODNN7EXAMPLE gh ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 ",
        "openai sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t slack xoxb-123456789012-abcdefABCDEF ",
        "google AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW password=hunter2 Authorization: Bearer abc.def.ghi123 ",
        "not-mail a@b order 4111111111111112 pkg@1.2.3 task-runner-name\n",
    );
    let mut s = String::with_capacity(SIZE + line.len());
    while s.len() < SIZE {
        s.push_str(line);
    }
    s
}

/// The detectors' own patterns, unanchored, as one alternation (the `regex` crate on its own). The AWS secret key's
/// pattern is left out: it only means something near its evidence, and alone (40 characters of base64, no literal)
/// it would take every 40-character token and turn off the alternation's literal prefilter.
fn baseline() -> Regex {
    let alts: Vec<String> = Builtin::ALL
        .iter()
        .filter(|b| b.on_by_default() && **b != Builtin::AwsSecretKey)
        .map(|b| {
            let p = pattern_source(*b);
            let p = p
                .strip_prefix("(?i)")
                .map(|x| format!("(?i:{})", x.replacen(r"\A", "", 1)))
                .unwrap_or_else(|| p.replacen(r"\A", "", 1));
            format!("(?:{p})")
        })
        .collect();
    Regex::new(&alts.join("|")).unwrap()
}

fn bench(c: &mut Criterion) {
    let redactor = Redactor::builtin();
    let re = baseline();
    for (name, text) in [
        ("clean", clean_text()),
        ("clean_unicode", unicode_text()),
        ("hits", hits_text()),
    ] {
        if name != "hits" {
            let mut r = Report::default();
            let _ = redactor.text("message", &text, &mut r);
            assert!(
                r.is_empty(),
                "the {name} text has something to redact: {:?}",
                r.counts
            );
        }
        let mut g = c.benchmark_group(format!("redact/{name}"));
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function("kla", |b| {
            b.iter(|| {
                let mut r = Report::default();
                black_box(redactor.text("message", black_box(&text), &mut r).len())
            })
        });
        g.bench_function("regex_alternation", |b| {
            b.iter(|| black_box(re.find_iter(black_box(&text)).count()))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
