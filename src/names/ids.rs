//! The syntax of the correlation ids a caller hands in and kla records as given: W3C trace ids (a decision's
//! `traceId`; the proxy reads it from `traceparent`) and kla's execution ids (a decision's `executionId`; the
//! proxy's `x-kla-execution-id` header). They are indexed, searchable and passed to webhooks and events, and unlike
//! contexts they do not go through redaction (an id replaced by `[REDACTED]` would no longer find its records).
//! So only their exact form is accepted; anything else is refused, never normalised, and no secret, personal datum
//! or second value can ride in one.
//!
//! ```text
//! trace-id     = 32 lowercase hex digits, not all zero      ; W3C Trace Context, e.g. 4bf92f3577b34da6a3ce929d0e0e4736
//! execution-id = "exec_" 1*32 lowercase hex digits          ; e.g. exec_0190f5a2c4e1a1b2c3d4e5f6
//! ```
//!
//! An execution id has the shape of kla's other ids (`dec_`, `appr_`, `lr_`: a prefix, then lowercase hex). kla
//! mints them with [`new_execution_id`] (32 digits: a millisecond time, then random bits); a caller that mints its
//! own may use fewer. The KLA Execution API's example `exec-456` is spelled `exec_456` here, as its
//! `appr-789` is kla's `appr_...`. Pure.

use std::fmt;

/// The prefix of every execution id.
pub const EXECUTION_PREFIX: &str = "exec_";
/// Most hex digits after [`EXECUTION_PREFIX`].
pub const EXECUTION_MAX_DIGITS: usize = 32;
/// The hex digits of a trace id.
pub const TRACE_DIGITS: usize = 32;

/// Which id was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A W3C trace id.
    Trace,
    /// A kla execution id.
    Execution,
}

impl IdKind {
    /// The refusal of an id of this kind for `problem`.
    fn refuse<T>(self, problem: IdProblem) -> Result<T, IdError> {
        Err(IdError { kind: self, problem })
    }

    /// The form in one sentence, for error messages.
    pub fn form(self) -> &'static str {
        match self {
            IdKind::Trace => "a trace id is 32 lowercase hex digits, not all zero (W3C Trace Context)",
            IdKind::Execution => "an execution id is 'exec_' followed by 1-32 lowercase hex digits",
        }
    }
}

/// Why an id was refused. The message never quotes the value (it may be what must not be recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    /// The form that was applied.
    pub kind: IdKind,
    /// What is wrong.
    pub problem: IdProblem,
}

/// What is wrong with a refused id. Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdProblem {
    /// Empty.
    Empty,
    /// The wrong number of characters.
    Length { chars: usize },
    /// A character outside the form.
    Char { at: usize, ch: char },
    /// An execution id that does not start with `exec_`.
    Prefix,
    /// A trace id of only zeros (invalid by the W3C spec).
    AllZero,
    /// A header given more than once (which one would count is a guess).
    Repeated,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            IdProblem::Empty => f.write_str("is empty")?,
            IdProblem::Length { chars } => write!(f, "is {chars} characters long")?,
            IdProblem::Char { at, ch } => write!(f, "has {} at character {at}", super::describe(*ch))?,
            IdProblem::Prefix => write!(f, "does not start with '{EXECUTION_PREFIX}'")?,
            IdProblem::AllZero => f.write_str("is all zeros")?,
            IdProblem::Repeated => f.write_str("is given more than once")?,
        }
        write!(f, "; {}", self.kind.form())
    }
}

impl std::error::Error for IdError {}

/// Checks a W3C trace id.
pub fn trace_id(s: &str) -> Result<(), IdError> {
    let err = |problem| IdKind::Trace.refuse(problem);
    if s.is_empty() {
        return err(IdProblem::Empty);
    }
    if let Some(p) = bad_char(s, 0) {
        return err(p);
    }
    if s.len() != TRACE_DIGITS {
        return err(IdProblem::Length { chars: s.len() });
    }
    if s.bytes().all(|b| b == b'0') {
        return err(IdProblem::AllZero);
    }
    Ok(())
}

/// Checks a kla execution id.
pub fn execution_id(s: &str) -> Result<(), IdError> {
    let err = |problem| IdKind::Execution.refuse(problem);
    if s.is_empty() {
        return err(IdProblem::Empty);
    }
    let Some(digits) = s.strip_prefix(EXECUTION_PREFIX) else {
        return err(IdProblem::Prefix);
    };
    if let Some(p) = bad_char(digits, EXECUTION_PREFIX.len()) {
        return err(p);
    }
    if digits.is_empty() || digits.len() > EXECUTION_MAX_DIGITS {
        return err(IdProblem::Length {
            chars: s.chars().count(),
        });
    }
    Ok(())
}

/// The values of an `x-kla-execution-id` header as a request carries them (raw bytes, one per header line): no
/// header is `None`; one valid execution id is that id; anything else (an invalid value, a non-UTF-8 byte, the
/// header twice) is refused.
pub fn execution_header<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Option<&'a str>, IdError> {
    let mut values = values.into_iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let err = |problem| IdKind::Execution.refuse(problem);
    if values.next().is_some() {
        return err(IdProblem::Repeated);
    }
    let s = match std::str::from_utf8(first) {
        Ok(s) => s,
        Err(e) => {
            // Report the first character that is not ASCII, like any other character outside the form.
            let at = first[..e.valid_up_to()]
                .iter()
                .filter(|b| (**b & 0xC0) != 0x80)
                .count()
                + 1;
            return err(IdProblem::Char {
                at,
                ch: char::REPLACEMENT_CHARACTER,
            });
        }
    };
    execution_id(s).map(|()| Some(s))
}

/// A new execution id: `exec_`, a millisecond time and random bits (24 hex digits), like kla's other ids.
pub fn new_execution_id() -> String {
    // A sortable id (12 digits of milliseconds, 12 random) and 8 more random digits: 32, with 80 random bits.
    let r: [u8; 4] = rand::random();
    format!("{}{}", crate::time::sortable_id(EXECUTION_PREFIX), hex::encode(r))
}

/// The first character of `s` that is not a lowercase hex digit; `offset` characters precede `s` in the id.
fn bad_char(s: &str, offset: usize) -> Option<IdProblem> {
    s.chars()
        .enumerate()
        .find(|(_, ch)| !matches!(ch, '0'..='9' | 'a'..='f'))
        .map(|(i, ch)| IdProblem::Char {
            at: offset + i + 1,
            ch,
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn problem(r: Result<(), IdError>) -> Option<IdProblem> {
        r.err().map(|e| e.problem)
    }

    #[test]
    fn trace_ids_are_w3c_trace_ids_only() {
        assert_eq!(problem(trace_id("4bf92f3577b34da6a3ce929d0e0e4736")), None);
        assert_eq!(problem(trace_id("")), Some(IdProblem::Empty));
        assert_eq!(
            problem(trace_id("00000000000000000000000000000000")),
            Some(IdProblem::AllZero)
        );
        assert_eq!(
            problem(trace_id("4BF92F3577B34DA6A3CE929D0E0E4736")),
            Some(IdProblem::Char { at: 2, ch: 'B' })
        );
        assert_eq!(problem(trace_id("t-1")), Some(IdProblem::Char { at: 1, ch: 't' }));
        assert_eq!(problem(trace_id("4bf92f")), Some(IdProblem::Length { chars: 6 }));
        assert_eq!(
            problem(trace_id("4bf92f3577b34da6a3ce929d0e0e47360")),
            Some(IdProblem::Length { chars: 33 })
        );
        // A card number is digits, but not 32 of them; an email is not hex.
        assert!(trace_id("4111111111111111").is_err());
        assert!(trace_id("a@b.example").is_err());
        assert!(trace_id(" 4bf92f3577b34da6a3ce929d0e0e4736").is_err());
    }

    #[test]
    fn execution_ids_have_the_form_of_klas_ids() {
        for ok in [
            "exec_0",
            "exec_42",
            "exec_0190f5a2c4e1a1b2c3d4e5f6",
            &format!("exec_{}", "f".repeat(32)),
        ] {
            assert_eq!(problem(execution_id(ok)), None, "{ok}");
        }
        assert!(execution_id(&new_execution_id()).is_ok());
        assert_eq!(new_execution_id().len(), 5 + 32);
        assert_eq!(problem(execution_id("")), Some(IdProblem::Empty));
        assert_eq!(problem(execution_id("exec-456")), Some(IdProblem::Prefix));
        assert_eq!(problem(execution_id("EXEC_42")), Some(IdProblem::Prefix));
        assert_eq!(
            problem(execution_id("exec_")),
            Some(IdProblem::Length { chars: 5 })
        );
        assert_eq!(
            problem(execution_id(&format!("exec_{}", "f".repeat(33)))),
            Some(IdProblem::Length { chars: 38 })
        );
        assert_eq!(
            problem(execution_id("exec_42 ")),
            Some(IdProblem::Char { at: 8, ch: ' ' })
        );
        assert_eq!(
            problem(execution_id("exec_sk_live_abc")),
            Some(IdProblem::Char { at: 6, ch: 's' })
        );
        assert_eq!(
            problem(execution_id("exec_4111\u{00a0}1111")),
            Some(IdProblem::Char {
                at: 10,
                ch: '\u{00a0}'
            })
        );
    }

    #[test]
    fn the_header_is_absent_or_one_valid_id() {
        let none: [&[u8]; 0] = [];
        assert_eq!(execution_header(none), Ok(None));
        assert_eq!(execution_header([&b"exec_42"[..]]), Ok(Some("exec_42")));
        let twice = execution_header([&b"exec_42"[..], &b"exec_43"[..]]).unwrap_err();
        assert_eq!(twice.problem, IdProblem::Repeated);
        let bad = execution_header([&b"exec_4\xff2"[..]]).unwrap_err();
        assert_eq!(
            bad.problem,
            IdProblem::Char {
                at: 7,
                ch: char::REPLACEMENT_CHARACTER
            }
        );
        assert!(execution_header([&b"jane@example.com"[..]]).is_err());
    }

    #[test]
    fn messages_name_the_problem_and_the_form_but_not_the_value() {
        let e = execution_id("exec_jane@example.com").unwrap_err().to_string();
        assert!(!e.contains("jane"), "{e}");
        assert!(
            e.contains("'j' at character 6") && e.contains("'exec_' followed by"),
            "{e}"
        );
        let e = trace_id("4111111111111111").unwrap_err().to_string();
        assert!(!e.contains("4111"), "{e}");
        assert!(e.contains("16 characters") && e.contains("W3C"), "{e}");
    }
}
