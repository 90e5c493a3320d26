//! The redactor.

use serde_json::Value;

use super::Verdict;

/// The redactor (`crate::redact`) over any text, and over it as JSON when it parses: never panics; what it returns
/// changes it reports, and what it reports nothing for it returns borrowed; a JSON value stays JSON of the same type;
/// and a text spelled in full-width characters (every printable ASCII character and the space) is found exactly as
/// the text itself, since the detectors read the normalised view. Accepted when nothing was redacted, refused when
/// something was.
pub fn redactor(data: &[u8]) -> Verdict {
    use crate::redact::{Redactor, Report};
    let Ok(s) = std::str::from_utf8(data) else {
        return Verdict::Refused;
    };
    let r = Redactor::builtin();
    let mut report = Report::default();
    let out = r.text("", s, &mut report);
    assert_eq!(
        out == s,
        report.is_empty(),
        "report {:?} for {s:?} -> {out:?}",
        report.counts
    );
    let trimmed = s.trim_start();
    if !trimmed.starts_with('{') && !trimmed.starts_with('[') {
        let wide: String = s
            .chars()
            .map(|c| match c {
                ' ' => '\u{3000}',
                '!'..='~' => char::from_u32(c as u32 + 0xFEE0).unwrap_or(c),
                c => c,
            })
            .collect();
        let mut wide_report = Report::default();
        let wide_out = r.text("", &wide, &mut wide_report);
        assert_eq!(
            wide_report.counts, report.counts,
            "{s:?} -> {out:?}, but its full-width spelling -> {wide_out:?}"
        );
    }
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        let mut vr = Report::default();
        let red = r.value_report(&v, &mut vr);
        assert!(
            red.as_ref() == &v || !vr.is_empty(),
            "{v} -> {red} with nothing reported"
        );
        let same_type = std::mem::discriminant(red.as_ref()) == std::mem::discriminant(&v)
            || (v.is_number() && red.is_string());
        assert!(same_type, "{v} became {red}");
        serde_json::from_str::<Value>(&red.to_string()).expect("redacted JSON re-parses");
    }
    if report.is_empty() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    }
}
