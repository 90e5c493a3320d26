//! The one grammar and canonical form of the names policy decides on: action names (what an agent asks to do: a
//! tool, an MCP tool name, a namespaced operation) and agent names. Every place a name enters kla (the REST API,
//! agent manifests, policy packs, pack test suites, and the tool-call proxy for HTTP routes and MCP tool names) goes
//! through these functions, so a rule written for one spelling governs every spelling that means the same name.
//!
//! Grammar (`kind` below is `action` or `agent`):
//!
//! ```text
//! action  = segment *( ("/" / ":") segment )      ; e.g. delete_customer, github/create_issue, mcp:tools.call
//! agent   = segment                               ; e.g. claims-triage
//! segment = alnum [ *( alnum / "_" / "-" / "." ) alnum ]
//! alnum   = ASCII letter or digit
//! ```
//!
//! 1 to [`MAX_LEN`] characters in all. The characters are MCP's tool-name characters (ASCII letters, digits, `_`, `-`,
//! `.`), plus `/` and `:` between the parts of an action name. Every part starts and ends with a letter or digit, so
//! there are no leading, trailing or doubled separators and no `.` or `..` parts (`github/../admin` is refused).
//!
//! **Canonical form**: ASCII lowercase (`Delete_Customer` and `DELETE_CUSTOMER` are `delete_customer`). Anything
//! outside the grammar (any non-ASCII character, whitespace, control characters, other punctuation) is refused, never
//! normalised: folding fullwidth letters or homoglyphs would mean guessing what a caller meant, and a governance
//! check must not guess. Canonicalisation is idempotent, and the canonical form is itself a valid name.
//!
//! Patterns (`match.actions`, `match.agents` in policy packs) are checked by [`action_pattern`] and
//! [`agent_pattern`]: a pattern without glob syntax must be a valid name (it is matched on its canonical form); a
//! glob may use only the grammar's characters and the glob syntax `* ? [ ] { } , ! ^`, and is matched
//! case-insensitively, so a pattern that could never match a canonical name is refused when the pack loads.
//!
//! Pure: no IO, no allocation beyond the returned name.
//!
//! [`ids`] holds the same kind of rule for the correlation ids callers hand in (trace and execution ids).

pub mod ids;

use std::fmt;

/// Longest name, in characters (MCP's limit for tool names).
pub const MAX_LEN: usize = 128;

/// Which grammar a name follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Action names: parts joined by `/` or `:`.
    Action,
    /// Agent names: one part.
    Agent,
}

impl Kind {
    /// The grammar in one sentence, for error messages.
    pub fn grammar(self) -> &'static str {
        match self {
            Kind::Action => {
                "an action name is 1-128 ASCII letters, digits, '_', '-' or '.', in parts joined by '/' or ':', \
                 each part starting and ending with a letter or digit; case is ignored"
            }
            Kind::Agent => {
                "an agent name is 1-128 ASCII letters, digits, '_', '-' or '.', starting and ending with a letter \
                 or digit; case is ignored"
            }
        }
    }

    fn is_joiner(self, b: u8) -> bool {
        self == Kind::Action && matches!(b, b'/' | b':')
    }
}

/// Why a name (or pattern) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError {
    /// The grammar that was applied.
    pub kind: Kind,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong with a refused name. Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The name is empty.
    Empty,
    /// More than [`MAX_LEN`] characters.
    TooLong { chars: usize },
    /// A character outside the grammar.
    Char { at: usize, ch: char },
    /// A part starts or ends with a separator (`_`, `-`, `.`), or a `/` or `:` has no part on one side.
    Separator { at: usize, ch: char },
    /// A pattern uses a backslash escape: no name holds a character that would need one.
    Escape { at: usize },
    /// A glob starts or ends with a separator, so it can never match a name.
    GlobEdge { ch: char },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Empty => f.write_str("is empty")?,
            Problem::TooLong { chars } => write!(f, "is {chars} characters long")?,
            Problem::Char { at, ch } => write!(f, "has {} at character {at}", describe(*ch))?,
            Problem::Separator { at, ch } => {
                write!(f, "has '{ch}' at character {at}, where a letter or digit must be")?
            }
            Problem::Escape { at } => write!(
                f,
                "has a backslash escape at character {at} (no name holds a character that needs one)"
            )?,
            Problem::GlobEdge { ch } => write!(f, "starts or ends with '{ch}', so it can never match")?,
        }
        write!(f, "; {}", self.kind.grammar())
    }
}

impl std::error::Error for NameError {}

/// A character as a reader can identify it: printable ASCII quoted, everything else as its code point (a homoglyph
/// or an invisible character printed as itself would hide what is wrong).
fn describe(ch: char) -> String {
    if ch.is_ascii_graphic() {
        format!("'{ch}'")
    } else if ch == ' ' {
        "a space".into()
    } else {
        format!("U+{:04X}", ch as u32)
    }
}

/// A valid action name in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionName(String);

/// A valid agent name in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

macro_rules! name_type {
    ($t:ident) => {
        impl $t {
            /// The canonical form.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The canonical form, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
    };
}

name_type!(ActionName);
name_type!(AgentName);

/// Checks an action name and returns its canonical form.
pub fn action(s: &str) -> Result<ActionName, NameError> {
    canonical(Kind::Action, s).map(ActionName)
}

/// Checks an agent name and returns its canonical form.
pub fn agent(s: &str) -> Result<AgentName, NameError> {
    canonical(Kind::Agent, s).map(AgentName)
}

/// Whether `s` is a valid action name already in canonical form (what the policy engine is given).
pub fn is_canonical_action(s: &str) -> bool {
    check(Kind::Action, s).is_ok() && !s.bytes().any(|b| b.is_ascii_uppercase())
}

/// Checks a name of either kind and returns its canonical form.
pub fn canonical(kind: Kind, s: &str) -> Result<String, NameError> {
    check(kind, s)?;
    Ok(s.to_ascii_lowercase())
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'_' | b'-' | b'.')
}

/// The grammar, without building the canonical form.
fn check(kind: Kind, s: &str) -> Result<(), NameError> {
    let err = |problem| Err(NameError { kind, problem });
    if s.is_empty() {
        return err(Problem::Empty);
    }
    // Characters, not bytes: a refused name is reported by character position.
    let mut prev: Option<u8> = None;
    let mut chars = 0usize;
    for (i, ch) in s.chars().enumerate() {
        chars = i + 1;
        if chars > MAX_LEN {
            return err(Problem::TooLong {
                chars: s.chars().count(),
            });
        }
        let at = i + 1;
        let Ok(b) = u8::try_from(ch) else {
            return err(Problem::Char { at, ch });
        };
        let joiner = kind.is_joiner(b);
        if !(b.is_ascii_alphanumeric() || is_separator(b) || joiner) {
            return err(Problem::Char { at, ch });
        }
        // A part starts after the beginning or a joiner: its first character must be a letter or digit; and the
        // character before a joiner ends a part.
        let starts_part = prev.is_none_or(|p| kind.is_joiner(p));
        if starts_part && !b.is_ascii_alphanumeric() {
            return err(Problem::Separator { at, ch });
        }
        if let Some(p) = prev
            && joiner
            && is_separator(p)
        {
            return err(Problem::Separator {
                at: at - 1,
                ch: char::from(p),
            });
        }
        prev = Some(b);
    }
    match prev {
        Some(b) if !b.is_ascii_alphanumeric() => err(Problem::Separator {
            at: chars,
            ch: char::from(b),
        }),
        _ => Ok(()),
    }
}

/// A checked `match.actions` or `match.agents` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `*`: every name.
    Any,
    /// One name, in canonical form.
    Exact(String),
    /// A glob as written; match it case-insensitively against canonical names.
    Glob(String),
}

/// The glob syntax a pattern may use besides the grammar's characters.
const GLOB_SYNTAX: &[u8] = b"*?[]{},!^";

/// Checks an action pattern: `*`, an action name, or a glob over action names.
pub fn action_pattern(p: &str) -> Result<Pattern, NameError> {
    pattern(Kind::Action, p)
}

/// Checks an agent pattern: `*`, an agent name (or id), or a glob over them.
pub fn agent_pattern(p: &str) -> Result<Pattern, NameError> {
    pattern(Kind::Agent, p)
}

/// Checks a pattern of either kind. A glob may be up to four times [`MAX_LEN`] characters (alternatives in braces
/// make it longer than the names it matches).
pub fn pattern(kind: Kind, p: &str) -> Result<Pattern, NameError> {
    if p == "*" {
        return Ok(Pattern::Any);
    }
    if !p.contains(['*', '?', '[', ']', '{', '}', '\\']) {
        return canonical(kind, p).map(Pattern::Exact);
    }
    let err = |problem| Err(NameError { kind, problem });
    if p.chars().count() > MAX_LEN * 4 {
        return err(Problem::TooLong {
            chars: p.chars().count(),
        });
    }
    for (i, ch) in p.chars().enumerate() {
        let at = i + 1;
        if ch == '\\' {
            return err(Problem::Escape { at });
        }
        let ok = u8::try_from(ch).is_ok_and(|b| {
            b.is_ascii_alphanumeric() || is_separator(b) || kind.is_joiner(b) || GLOB_SYNTAX.contains(&b)
        });
        if !ok {
            return err(Problem::Char { at, ch });
        }
    }
    let edge = |b: u8| is_separator(b) || kind.is_joiner(b);
    for b in [p.as_bytes().first(), p.as_bytes().last()].into_iter().flatten() {
        if edge(*b) {
            return err(Problem::GlobEdge { ch: char::from(*b) });
        }
    }
    Ok(Pattern::Glob(p.to_owned()))
}

#[cfg(test)]
mod tests;
