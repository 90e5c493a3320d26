#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

/// What a name should come to: its canonical form, or the problem that refuses it.
enum Want {
    Ok(&'static str),
    Err(Problem),
}
use Want::{Err as No, Ok as Is};

fn char_at(at: usize, ch: char) -> Want {
    No(Problem::Char { at, ch })
}

fn sep_at(at: usize, ch: char) -> Want {
    No(Problem::Separator { at, ch })
}

#[track_caller]
fn check_name(kind: Kind, input: &str, want: Want) {
    let got = canonical(kind, input);
    match (want, got) {
        (Is(c), Ok(g)) => assert_eq!(g, c, "{input:?}"),
        (No(p), Err(e)) => {
            assert_eq!(e.problem, p, "{input:?}");
            assert_eq!(e.kind, kind);
            // Every refusal states the grammar.
            assert!(e.to_string().ends_with(kind.grammar()), "{e}");
        }
        (Is(c), Err(e)) => panic!("{input:?}: expected {c:?}, refused: {e}"),
        (No(p), Ok(g)) => panic!("{input:?}: expected refusal {p:?}, got {g:?}"),
    }
}

#[track_caller]
fn check(input: &str, want: Want) {
    check_name(Kind::Action, input, want);
}

#[test]
fn case_is_folded_to_ascii_lowercase() {
    check("delete_customer", Is("delete_customer"));
    check("Delete_Customer", Is("delete_customer"));
    check("DELETE_CUSTOMER", Is("delete_customer"));
    check("dElEtE_cUsToMeR", Is("delete_customer"));
    check("GitHub/Create_Issue", Is("github/create_issue"));
    check("MCP:Tools.Call", Is("mcp:tools.call"));
    check("delete-customer", Is("delete-customer"));
    check("mcp__github__create_issue", Is("mcp__github__create_issue"));
    check("a", Is("a"));
    check("7", Is("7"));
    check("v1.2.3", Is("v1.2.3"));
    check("db.users.drop", Is("db.users.drop"));
    check("a:b/c:d", Is("a:b/c:d"));
}

#[test]
fn whitespace_and_control_characters_are_refused() {
    check("delete_customer ", char_at(16, ' '));
    check(" delete_customer", char_at(1, ' '));
    check("delete customer", char_at(7, ' '));
    check("delete_customer\0", char_at(16, '\0'));
    check("delete_customer\n", char_at(16, '\n'));
    check("delete_customer\r\n", char_at(16, '\r'));
    check("delete\t_customer", char_at(7, '\t'));
    check("delete_customer\u{7f}", char_at(16, '\u{7f}'));
    check("delete_customer\u{1b}[0m", char_at(16, '\u{1b}'));
    check("delete_customer\u{a0}", char_at(16, '\u{a0}')); // no-break space
    check("delete_customer\u{3000}", char_at(16, '\u{3000}')); // ideographic space
    check("delete_customer\u{85}", char_at(16, '\u{85}')); // next line (C1)
}

#[test]
fn unicode_look_alikes_are_refused_not_folded() {
    // Fullwidth letters, which NFKC would fold to `delete_customer`.
    check("ｄｅｌｅｔｅ_customer", char_at(1, 'ｄ'));
    check("delete＿customer", char_at(7, '＿'));
    // Cyrillic е (U+0435) and о (U+043E), Greek ο (U+03BF).
    check("d\u{435}lete_customer", char_at(2, '\u{435}'));
    check("delete_cust\u{43e}mer", char_at(12, '\u{43e}'));
    check("delete_cust\u{3bf}mer", char_at(12, '\u{3bf}'));
    // Letters whose Unicode case mapping or folding is ASCII: Kelvin sign, long s, dotless i, dotted capital I.
    check("\u{212a}ill", char_at(1, '\u{212a}'));
    check("\u{17f}end_email", char_at(1, '\u{17f}'));
    check("l\u{131}st", char_at(2, '\u{131}'));
    check("L\u{130}ST", char_at(2, '\u{130}'));
    // Mathematical bold letters.
    check("\u{1d41d}elete_customer", char_at(1, '\u{1d41d}'));
    // Combining marks: precomposed and decomposed é alike.
    check("de\u{301}lete_customer", char_at(3, '\u{301}'));
    check("d\u{e9}lete_customer", char_at(2, '\u{e9}'));
    check("delete_customer\u{338}", char_at(16, '\u{338}'));
}

#[test]
fn invisible_and_bidi_characters_are_refused() {
    check("delete\u{200d}_customer", char_at(7, '\u{200d}')); // zero-width joiner
    check("delete\u{200c}_customer", char_at(7, '\u{200c}')); // zero-width non-joiner
    check("delete\u{200b}_customer", char_at(7, '\u{200b}')); // zero-width space
    check("\u{feff}delete_customer", char_at(1, '\u{feff}')); // byte order mark
    check("delete\u{ad}_customer", char_at(7, '\u{ad}')); // soft hyphen
    check("delete\u{2060}_customer", char_at(7, '\u{2060}')); // word joiner
    check("\u{202e}remotsuc_eteled", char_at(1, '\u{202e}')); // right-to-left override
    check("delete_customer\u{2066}", char_at(16, '\u{2066}')); // left-to-right isolate
    check("delete\u{e0041}_customer", char_at(7, '\u{e0041}')); // tag character
    check("delete_customer\u{fe0f}", char_at(16, '\u{fe0f}')); // variation selector
}

#[test]
fn other_punctuation_is_refused() {
    for (input, at, ch) in [
        ("delete,customer", 7, ','),
        ("delete;customer", 7, ';'),
        ("delete%5fcustomer", 7, '%'),
        ("delete+customer", 7, '+'),
        ("delete*", 7, '*'),
        ("\"delete_customer\"", 1, '"'),
        ("delete\\customer", 7, '\\'),
        ("delete@customer", 7, '@'),
        ("delete#x", 7, '#'),
        ("delete?x", 7, '?'),
    ] {
        check(input, char_at(at, ch));
    }
}

#[test]
fn separators_only_inside_a_part() {
    check("delete_customer_", sep_at(16, '_'));
    check("_delete_customer", sep_at(1, '_'));
    check(".hidden", sep_at(1, '.'));
    check("delete-", sep_at(7, '-'));
    check("-", sep_at(1, '-'));
    check("/github/x", sep_at(1, '/'));
    check("github/", sep_at(7, '/'));
    check("github//x", sep_at(8, '/'));
    check("github/../admin", sep_at(8, '.'));
    check("github/./x", sep_at(8, '.'));
    check("github_/x", sep_at(7, '_'));
    check("mcp::x", sep_at(5, ':'));
    check(":x", sep_at(1, ':'));
    check("x:", sep_at(2, ':'));
}

#[test]
fn length_is_1_to_128_characters() {
    check("", No(Problem::Empty));
    let max = "a".repeat(MAX_LEN);
    assert_eq!(action(&max).unwrap().as_str(), max);
    check(
        &"a".repeat(MAX_LEN + 1),
        No(Problem::TooLong { chars: MAX_LEN + 1 }),
    );
    check(&"A".repeat(10_000), No(Problem::TooLong { chars: 10_000 }));
}

#[test]
fn agent_names_have_no_namespaces() {
    let agent = |input, want| check_name(Kind::Agent, input, want);
    agent("claims-triage", Is("claims-triage"));
    agent("Claims-Triage", Is("claims-triage"));
    agent("CLAIMS-TRIAGE", Is("claims-triage"));
    agent("agt_3f9a1c0b7e21", Is("agt_3f9a1c0b7e21"));
    agent("bot.v2", Is("bot.v2"));
    agent("claims/triage", char_at(7, '/'));
    agent("claims:triage", char_at(7, ':'));
    agent("claims-triage ", char_at(14, ' '));
    agent("cl\u{430}ims-triage", char_at(3, '\u{430}'));
    agent("claims\u{200d}-triage", char_at(7, '\u{200d}'));
    agent("-claims", sep_at(1, '-'));
    agent("claims.", sep_at(7, '.'));
    agent("", No(Problem::Empty));
}

#[test]
fn errors_name_the_character_readably() {
    let e = action("d\u{435}lete_customer").unwrap_err().to_string();
    assert!(
        e.starts_with("has U+0435 at character 2; an action name is"),
        "{e}"
    );
    let e = action("delete_customer ").unwrap_err().to_string();
    assert!(e.starts_with("has a space at character 16"), "{e}");
    let e = agent("a,b").unwrap_err().to_string();
    assert!(e.starts_with("has ',' at character 2; an agent name is"), "{e}");
    let e = action("x_").unwrap_err().to_string();
    assert!(
        e.contains("'_' at character 2, where a letter or digit must be"),
        "{e}"
    );
}

#[test]
fn newtypes_hold_the_canonical_form() {
    let a = action("GitHub/Create_Issue").unwrap();
    assert_eq!(a.as_str(), "github/create_issue");
    assert_eq!(&*a, "github/create_issue");
    assert_eq!(a.to_string(), "github/create_issue");
    assert_eq!(String::from(a), "github/create_issue");
    assert_eq!(agent("Claims-Triage").unwrap().into_string(), "claims-triage");
    assert!(is_canonical_action("delete_customer"));
    assert!(!is_canonical_action("Delete_Customer"));
    assert!(!is_canonical_action("delete_customer "));
    assert!(!is_canonical_action(""));
}

#[track_caller]
fn check_pattern(kind: Kind, p: &str, want: Result<Pattern, Problem>) {
    assert_eq!(pattern(kind, p).map_err(|e| e.problem), want, "{p:?}");
}

#[test]
fn patterns() {
    use Kind::{Action, Agent};
    let exact = |s: &str| Ok(Pattern::Exact(s.into()));
    let glob = |s: &str| Ok(Pattern::Glob(s.into()));
    check_pattern(Action, "*", Ok(Pattern::Any));
    check_pattern(Agent, "*", Ok(Pattern::Any));
    check_pattern(Action, "delete_customer", exact("delete_customer"));
    check_pattern(Action, "Delete_Customer", exact("delete_customer"));
    check_pattern(Action, "github/create_issue", exact("github/create_issue"));
    check_pattern(Action, "email_*", glob("email_*"));
    check_pattern(Action, "Email_*", glob("Email_*"));
    check_pattern(Action, "github/*", glob("github/*"));
    check_pattern(Action, "*_payment", glob("*_payment"));
    check_pattern(Action, "{get,put}_secret", glob("{get,put}_secret"));
    check_pattern(Action, "rm_?", glob("rm_?"));
    check_pattern(Action, "[!a-c]*", glob("[!a-c]*"));
    check_pattern(Action, "db.*.drop", glob("db.*.drop"));
    check_pattern(Agent, "ops-*", glob("ops-*"));
    check_pattern(Agent, "Claims-Triage", exact("claims-triage"));
    // Patterns no canonical name can match.
    check_pattern(Action, "ｄｅｌｅｔｅ_*", Err(Problem::Char { at: 1, ch: 'ｄ' }));
    check_pattern(
        Action,
        "d\u{435}lete_*",
        Err(Problem::Char { at: 2, ch: '\u{435}' }),
    );
    check_pattern(
        Action,
        "delete_*\u{200b}",
        Err(Problem::Char {
            at: 9,
            ch: '\u{200b}',
        }),
    );
    check_pattern(Action, "delete *", Err(Problem::Char { at: 7, ch: ' ' }));
    check_pattern(
        Action,
        "d\u{435}lete_customer",
        Err(Problem::Char { at: 2, ch: '\u{435}' }),
    );
    check_pattern(Action, "delete customer", Err(Problem::Char { at: 7, ch: ' ' }));
    check_pattern(
        Action,
        "delete_customer_",
        Err(Problem::Separator { at: 16, ch: '_' }),
    );
    check_pattern(Action, "a,b", Err(Problem::Char { at: 2, ch: ',' }));
    check_pattern(Action, "\\*", Err(Problem::Escape { at: 1 }));
    check_pattern(Action, "_*", Err(Problem::GlobEdge { ch: '_' }));
    check_pattern(Action, "*.", Err(Problem::GlobEdge { ch: '.' }));
    check_pattern(Action, "/*", Err(Problem::GlobEdge { ch: '/' }));
    check_pattern(Agent, "team/*", Err(Problem::Char { at: 5, ch: '/' }));
    check_pattern(Action, "", Err(Problem::Empty));
}

/// An independent statement of the grammar: split into parts at `/` and `:`, each part non-empty from
/// `[A-Za-z0-9._-]` starting and ending with a letter or digit.
fn oracle(kind: Kind, s: &str) -> bool {
    let len = s.chars().count();
    if !(1..=MAX_LEN).contains(&len) {
        return false;
    }
    let parts: Vec<&str> = match kind {
        Kind::Action => s.split(['/', ':']).collect(),
        Kind::Agent => vec![s],
    };
    parts.iter().all(|p| {
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
        alnum(p.chars().next())
            && alnum(p.chars().last())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    })
}

/// Valid names: parts of letters and digits with `_`, `-`, `.` inside, joined by `/` or `:`, in any case.
fn valid_names() -> impl Strategy<Value = String> {
    let part = "[a-zA-Z0-9]([a-zA-Z0-9_.-]{0,6}[a-zA-Z0-9])?";
    (
        proptest::collection::vec(part, 1..5),
        proptest::collection::vec(any::<bool>(), 4),
    )
        .prop_map(|(parts, slash)| {
            let mut s = String::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    s.push(if slash[i % slash.len()] { '/' } else { ':' });
                }
                s.push_str(p);
            }
            s
        })
}

/// Characters that stand for whole classes of trouble.
const TROUBLE: [char; 14] = [
    ' ', '\0', '\t', '\u{200d}', '\u{202e}', '\u{feff}', '\u{435}', 'ｄ', '\u{301}', '\u{212a}', '\u{17f}',
    '\u{130}', 'é', '_',
];

/// Strings near the grammar: valid names, valid names with one character inserted (a separator, a look-alike, an
/// invisible character or anything at all), and strings of the grammar's characters in any order.
fn near_names() -> impl Strategy<Value = String> {
    let any_char = prop_oneof![3 => proptest::sample::select(TROUBLE.to_vec()), 1 => any::<char>(),
        2 => proptest::sample::select("-./:".chars().collect::<Vec<_>>())];
    let inserted = (valid_names(), any_char, any::<prop::sample::Index>()).prop_map(|(s, c, at)| {
        let mut v: Vec<char> = s.chars().collect();
        v.insert(at.index(v.len() + 1), c);
        v.into_iter().collect()
    });
    let shuffled = proptest::collection::vec(
        proptest::sample::select("abcxyzABCXYZ0189_-./:".chars().collect::<Vec<_>>()),
        0..140,
    )
    .prop_map(|v| v.into_iter().collect());
    prop_oneof![valid_names(), inserted, shuffled, ".{0,140}"]
}

/// Flips the case of ASCII letters where `mask` says so.
fn recase(s: &str, mask: &[bool]) -> String {
    s.chars()
        .zip(mask.iter().cycle())
        .map(|(c, &flip)| {
            if !flip {
                c
            } else if c.is_ascii_lowercase() {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The canonical form is a valid, canonical name, and canonicalising it again changes nothing.
    #[test]
    fn canonicalisation_is_idempotent(s in near_names()) {
        for kind in [Kind::Action, Kind::Agent] {
            if let Ok(c) = canonical(kind, &s) {
                prop_assert_eq!(canonical(kind, &c), Ok(c.clone()));
                prop_assert!(!c.bytes().any(|b| b.is_ascii_uppercase()));
                prop_assert!(c.eq_ignore_ascii_case(&s));
                if kind == Kind::Action {
                    prop_assert!(is_canonical_action(&c));
                }
            }
        }
    }

    /// Accepted exactly when the independent oracle accepts; in particular every name with a character outside the
    /// grammar (non-ASCII, whitespace, control) is refused.
    #[test]
    fn grammar_matches_the_oracle(s in near_names()) {
        for kind in [Kind::Action, Kind::Agent] {
            prop_assert_eq!(canonical(kind, &s).is_ok(), oracle(kind, &s), "{:?} {:?}", kind, s);
        }
        if s.chars().any(|c| !c.is_ascii() || c.is_whitespace() || c.is_control()) {
            prop_assert!(action(&s).is_err());
            prop_assert!(agent(&s).is_err());
        }
    }

    /// Every name built from the grammar is accepted, as its lowercase self.
    #[test]
    fn grammar_names_are_accepted(s in valid_names()) {
        prop_assume!(s.len() <= MAX_LEN);
        prop_assert_eq!(action(&s).map(String::from), Ok(s.to_ascii_lowercase()));
        if !s.contains(['/', ':']) {
            prop_assert_eq!(agent(&s).map(String::from), Ok(s.to_ascii_lowercase()));
        }
    }

    /// Two spellings that differ only in ASCII case have one canonical form (or are both refused).
    #[test]
    fn case_variants_share_one_canonical_form(s in near_names(), mask in proptest::collection::vec(any::<bool>(), 1..8)) {
        let v = recase(&s, &mask);
        prop_assert_eq!(action(&s), action(&v));
        prop_assert_eq!(agent(&s), agent(&v));
    }
}
