//! Names.

use crate::names::{self, Kind, Pattern};

use super::{Verdict, verdict};

/// The name grammar of `crate::names`, written from its module docs as an oracle.
fn grammar(kind: Kind, s: &str) -> bool {
    if s.is_empty() || s.chars().count() > names::MAX_LEN {
        return false;
    }
    let part_ok = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
    };
    match kind {
        Kind::Action => s.split(['/', ':']).all(part_ok),
        Kind::Agent => part_ok(s),
    }
}

/// A name or pattern as an entry point or a pack gives it. Names are accepted exactly by the grammar, in canonical
/// (ASCII lowercase) form, idempotently; every agent name is an action name; a pattern without glob syntax is the
/// canonical name, and a glob is kept as written.
pub fn names(data: &[u8]) -> Verdict {
    let Ok(s) = std::str::from_utf8(data) else {
        return Verdict::Refused;
    };
    let mut accepted = false;
    for kind in [Kind::Action, Kind::Agent] {
        let got = names::canonical(kind, s);
        assert_eq!(got.is_ok(), grammar(kind, s), "{kind:?} {s:?}: {got:?}");
        match &got {
            Ok(c) => {
                accepted = true;
                assert_eq!(c, &s.to_ascii_lowercase());
                assert_eq!(
                    names::canonical(kind, c).as_ref(),
                    Ok(c),
                    "canonical form is not a fixed point"
                );
                if kind == Kind::Action {
                    assert!(names::is_canonical_action(c));
                }
                assert_eq!(names::pattern(kind, c), Ok(Pattern::Exact(c.clone())));
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        match names::pattern(kind, s) {
            Ok(Pattern::Any) => assert_eq!(s, "*"),
            Ok(Pattern::Exact(c)) => assert_eq!(Ok(c), got, "an exact pattern is not the canonical name"),
            Ok(Pattern::Glob(g)) => {
                assert_eq!(g, s);
                assert!(
                    s.contains(['*', '?', '[', ']', '{', '}']),
                    "a glob without glob syntax"
                );
                accepted = true;
            }
            Err(_) => {}
        }
    }
    if names::agent(s).is_ok() {
        assert!(
            names::action(s).is_ok(),
            "an agent name that is not an action name"
        );
    }
    verdict(accepted)
}
