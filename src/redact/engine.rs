//! The scanner: finds what the detectors and key rules name in one string or JSON value and replaces it. Pure;
//! returns borrowed input when nothing is found, so clean text costs no allocation.
//!
//! Clean text is scanned fast because no pattern runs until a cheap prefilter points at a place: one
//! Aho-Corasick pass over the literal triggers (`@`, `eyJ`, `-----BEGIN`, `AKIA`, `ghp_`, `sk-`, `xox`, `AIza`,
//! `password`, `bearer`, ...), and one byte pass that finds runs of digits (with the separators numbers are printed
//! with) long enough to hold a card, an SSN or a phone number, and two capitals before two digits (an IBAN's
//! start). Each detector's anchored pattern then runs only there, over a bounded window, and its validator decides.

use super::Report;
use super::detectors::{self, Builtin, Find};
use super::fold;
use super::rules::Action;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use hmac::{Hmac, Mac};
use regex::Regex;
use serde_json::{Map, Value};
use sha2::Sha256;
use std::borrow::Cow;
use std::sync::Arc;

/// A pack's own detector.
#[derive(Debug)]
pub struct Custom {
    pub(crate) name: String,
    /// `[REDACTED:<NAME>]`.
    pub(crate) label: String,
    pub(crate) regex: Regex,
    pub(crate) action: Action,
}

/// What a key rule does with the value under a matching key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAction {
    /// Recorded as given, no detector runs.
    Allow,
    /// Replaced whole.
    Redact(Action),
}

/// A key rule: a case-insensitive glob over an attribute or object key.
#[derive(Debug, Clone)]
pub(crate) struct KeyRule {
    pub(crate) glob: String,
    pub(crate) action: KeyAction,
}

/// JSON held in strings is redacted inside up to this depth of strings within strings.
const MAX_STRING_NESTING: u8 = 4;
/// Numeric windows: the longest number any numeric detector matches (bytes from its first character).
const NUMBER_REACH: usize = 64;
/// `[REDACTED:KEY]`: what a key rule's mask leaves.
const KEY_LABEL: &str = "[REDACTED:KEY]";

/// The rules of the active packs, compiled into one scanner.
#[derive(Debug)]
pub struct Engine {
    actions: [Option<Action>; Builtin::ALL.len()],
    /// Literal triggers and, for each, the detectors to try at a hit (priority order).
    triggers: Option<(AhoCorasick, Vec<Vec<Builtin>>)>,
    /// Numeric detectors on, in priority order.
    numeric: Vec<Builtin>,
    /// Digits a run needs before any numeric detector can match in it.
    min_digits: usize,
    email: bool,
    iban: bool,
    ipv6: bool,
    custom: Vec<Arc<Custom>>,
    keys: GlobSet,
    key_rules: Vec<KeyRule>,
}

/// One place to replace.
#[derive(Debug, Clone, Copy)]
struct Found {
    start: usize,
    end: usize,
    det: Det,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Det {
    Builtin(Builtin),
    Custom(usize),
}

/// Byte classes for the digit-run scan.
const OTHER: u8 = 0;
const DIGIT: u8 = 1;
const SEP: u8 = 2;
const OPEN: u8 = 3;
/// A byte of a non-ASCII character: the text needs its normalised view (`fold`).
const HIGH: u8 = 4;
/// Separator bytes a run of digits may hold between two digits (`4111 - 1111`).
const MAX_SEPS: u8 = 3;
static CLASS: [u8; 256] = {
    let mut t = [OTHER; 256];
    let mut h = 0x80;
    while h < 256 {
        t[h] = HIGH;
        h += 1;
    }
    let mut i = b'0';
    while i <= b'9' {
        t[i as usize] = DIGIT;
        i += 1;
    }
    t[b' ' as usize] = SEP;
    t[b'\t' as usize] = SEP;
    t[b'-' as usize] = SEP;
    t[b'.' as usize] = SEP;
    t[b')' as usize] = SEP;
    t[b'/' as usize] = SEP;
    t[b'(' as usize] = OPEN;
    t[b'+' as usize] = OPEN;
    t
};

impl Engine {
    pub(crate) fn new(
        actions: [Option<Action>; Builtin::ALL.len()],
        key_rules: Vec<KeyRule>,
        custom: Vec<Arc<Custom>>,
    ) -> Engine {
        let on = |b: Builtin| actions[b.index()].is_some();
        let mut literals: Vec<String> = Vec::new();
        let mut per: Vec<Vec<Builtin>> = Vec::new();
        let mut numeric = Vec::new();
        for b in Builtin::ALL {
            if !on(b) {
                continue;
            }
            match b.find() {
                // The `@` has its own memchr pass: a one-byte literal would make the packed (SIMD) search
                // verify every byte that starts any literal.
                Find::Literals(["@"]) => {}
                Find::Literals(ls) => {
                    for l in ls.iter().flat_map(|l| case_variants(b, l)) {
                        match literals.iter().position(|x| *x == l) {
                            Some(i) => {
                                if !per[i].contains(&b) {
                                    per[i].push(b)
                                }
                            }
                            None => {
                                literals.push(l);
                                per.push(vec![b]);
                            }
                        }
                    }
                }
                Find::Digits => numeric.push(b),
                Find::CountryCode | Find::Scan => {}
            }
        }
        // Case-sensitive, so the packed searcher keeps three-byte fingerprints; the keyword detectors list the
        // spellings they are found by.
        let triggers = if literals.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostFirst)
                .build(&literals)
                .ok()
                .map(|ac| (ac, per))
        };
        let min_digits = if numeric.contains(&Builtin::Ipv4) { 4 } else { 9 };
        let mut set = GlobSetBuilder::new();
        let mut kept = Vec::with_capacity(key_rules.len());
        for k in key_rules {
            // Globs were checked when their pack was compiled; one that fails here is skipped, never fatal.
            if let Ok(g) = GlobBuilder::new(&k.glob).case_insensitive(true).build() {
                set.add(g);
                kept.push(k);
            }
        }
        let keys = set.build().unwrap_or_else(|_| GlobSet::empty());
        Engine {
            actions,
            triggers,
            numeric,
            min_digits,
            email: on(Builtin::Email),
            iban: on(Builtin::Iban),
            ipv6: on(Builtin::Ipv6),
            custom,
            keys,
            key_rules: kept,
        }
    }

    /// An engine that redacts nothing.
    pub(crate) fn off() -> Engine {
        Engine::new([None; Builtin::ALL.len()], Vec::new(), Vec::new())
    }

    /// Whether any detector or key rule hashes (then the tenant's key is needed).
    pub(crate) fn hashes(&self) -> bool {
        self.actions.contains(&Some(Action::Hash))
            || self.custom.iter().any(|c| c.action == Action::Hash)
            || self
                .key_rules
                .iter()
                .any(|k| k.action == KeyAction::Redact(Action::Hash))
    }

    /// The action of a built-in detector (`None`: off).
    #[cfg(test)]
    pub(crate) fn action(&self, b: Builtin) -> Option<Action> {
        self.actions[b.index()]
    }

    /// What the key rules say about `key`: a redacting rule beats an allowing one; the first redacting rule (in
    /// pack order) names the replacement in reports, the strongest action applies.
    fn key_rule(&self, key: &str) -> Option<(KeyAction, &str)> {
        if key.is_empty() || self.key_rules.is_empty() || !self.keys.is_match(key) {
            return None;
        }
        let mut allow: Option<&str> = None;
        let mut redact: Option<(Action, &str)> = None;
        for i in self.keys.matches(key) {
            let r = &self.key_rules[i];
            match r.action {
                KeyAction::Allow => allow = allow.or(Some(&r.glob)),
                KeyAction::Redact(a) => {
                    redact = Some(match redact {
                        None => (a, &r.glob),
                        Some((b, g)) => (a.max(b), g),
                    })
                }
            }
        }
        match (redact, allow) {
            (Some((a, g)), _) => Some((KeyAction::Redact(a), g)),
            (None, Some(g)) => Some((KeyAction::Allow, g)),
            (None, None) => None,
        }
    }

    /// Every place to replace in `text` (found under `key`), in order, without overlaps.
    ///
    /// The built-in detectors read the text's normalised view (see `fold`) when it has one, and their matches are
    /// mapped back to the original characters; custom detectors read the text as given.
    fn scan(&self, text: &str, key: &str) -> Vec<Found> {
        let mut found = Vec::new();
        let digits = !self.numeric.is_empty() || self.iban;
        // The digit pass reads every byte, so it also says whether any is non-ASCII (it stops at the first): ASCII
        // text, the common case, is its own view and pays nothing more.
        let high = if digits {
            self.digit_runs(text, key, &mut found, true)
        } else {
            !text.is_ascii()
        };
        match if high { fold::fold(text) } else { None } {
            Some(view) => {
                found.clear();
                let mut in_view = Vec::new();
                if digits {
                    self.digit_runs(&view.text, key, &mut in_view, false);
                }
                self.scan_literals(&view.text, &mut in_view);
                found.extend(in_view.into_iter().map(|f| {
                    let (start, end) = view.original(f.start, f.end);
                    Found { start, end, ..f }
                }));
            }
            None => {
                if high && digits {
                    // Non-ASCII text that is its own view: the pass stopped early, so it runs again over all of it.
                    found.clear();
                    self.digit_runs(text, key, &mut found, false);
                }
                self.scan_literals(text, &mut found);
            }
        }
        for (i, c) in self.custom.iter().enumerate() {
            for m in c.regex.find_iter(text) {
                if m.start() < m.end() {
                    found.push(Found {
                        start: m.start(),
                        end: m.end(),
                        det: Det::Custom(i),
                    });
                }
            }
        }
        if found.len() > 1 {
            // Earliest first, then longest, then the detector's priority.
            found.sort_by_key(|f| (f.start, std::cmp::Reverse(f.end), prio(f.det)));
            let mut last_end = 0;
            found.retain(|f| {
                let keep = f.start >= last_end;
                if keep {
                    last_end = f.end;
                }
                keep
            });
        }
        found
    }

    /// The built-in detectors found by literal triggers, the `@` and the IPv6 scan, over `text` (a view).
    fn scan_literals(&self, text: &str, found: &mut Vec<Found>) {
        if let Some((ac, per)) = &self.triggers {
            let mut covered = 0;
            for m in ac.find_iter(text) {
                let p = m.start();
                if p < covered {
                    continue;
                }
                for &b in &per[m.pattern().as_usize()] {
                    if let Some((s, e)) = at_trigger(b, text, p) {
                        found.push(Found {
                            start: s,
                            end: e,
                            det: Det::Builtin(b),
                        });
                        // A detector that looks around its evidence leaves the trigger to the others.
                        if b.nearby() {
                            continue;
                        }
                        // A credential after its keyword may itself be a vendor key, whose trigger lies inside
                        // it: let that detector name it.
                        if !b.replaces_group() {
                            covered = e;
                        }
                        break;
                    }
                }
            }
        }
        if self.email {
            let mut covered = 0;
            for p in memchr::memchr_iter(b'@', text.as_bytes()) {
                if p < covered {
                    continue;
                }
                if let Some((s, e)) = detectors::email_at(text, p) {
                    found.push(Found {
                        start: s,
                        end: e,
                        det: Det::Builtin(Builtin::Email),
                    });
                    covered = e;
                }
            }
        }
        if self.ipv6 {
            for m in detectors::pattern(Builtin::Ipv6).find_iter(text) {
                if let Some((s, e)) = Builtin::Ipv6.validate(text, m.start(), m.end()) {
                    found.push(Found {
                        start: s,
                        end: e,
                        det: Det::Builtin(Builtin::Ipv6),
                    });
                }
            }
        }
    }

    /// The digit-run prefilter and the numeric detectors at the group starts of each long enough run; returns
    /// whether `text` holds any non-ASCII byte, stopping at the first one when `stop_at_high` (then `found` is
    /// incomplete).
    fn digit_runs(&self, text: &str, key: &str, found: &mut Vec<Found>, stop_at_high: bool) -> bool {
        let bytes = text.as_bytes();
        let n = bytes.len();
        let mut high = false;
        let mut run_start = usize::MAX;
        let (mut digits, mut seps, mut last_digit_end) = (0usize, 0u8, 0usize);
        let mut covered = 0usize;
        let mut i = 0;
        while i < n {
            let class = CLASS[bytes[i] as usize];
            if class == OTHER && run_start == usize::MAX {
                i += 1;
                continue;
            }
            if class == DIGIT {
                if run_start == usize::MAX {
                    run_start = i;
                    digits = 0;
                }
                if self.iban
                    && i >= 2
                    && bytes[i - 1].is_ascii_alphabetic()
                    && bytes[i - 2].is_ascii_alphabetic()
                    && (i < 3 || !bytes[i - 3].is_ascii_alphanumeric())
                    && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                {
                    let c = i - 2;
                    let w = &text[c..floor(text, c + 80)];
                    if let Some(m) = detectors::pattern(Builtin::Iban).find(w)
                        && let Some((s, e)) = Builtin::Iban.validate(text, c, c + m.end())
                    {
                        found.push(Found {
                            start: s,
                            end: e,
                            det: Det::Builtin(Builtin::Iban),
                        });
                    }
                }
                digits += 1;
                seps = 0;
                last_digit_end = i + 1;
            } else if run_start != usize::MAX && (class == SEP || class == OPEN) && seps < MAX_SEPS {
                seps += 1;
            } else {
                if class == HIGH {
                    if stop_at_high {
                        return true;
                    }
                    high = true;
                }
                if run_start != usize::MAX {
                    if digits >= self.min_digits {
                        self.numbers(text, key, run_start, last_digit_end, digits, &mut covered, found);
                    }
                    run_start = usize::MAX;
                }
                if class == OPEN {
                    run_start = i;
                    digits = 0;
                    seps = 0;
                }
            }
            i += 1;
        }
        if run_start != usize::MAX && digits >= self.min_digits {
            self.numbers(text, key, run_start, last_digit_end, digits, &mut covered, found);
        }
        high
    }

    /// Tries the numeric detectors at each group start of the run `text[start..end]`.
    #[allow(clippy::too_many_arguments)] // one scan's state, passed down rather than kept in a struct per call
    fn numbers(
        &self,
        text: &str,
        key: &str,
        start: usize,
        end: usize,
        digits: usize,
        covered: &mut usize,
        found: &mut Vec<Found>,
    ) {
        if self.numeric.is_empty() {
            return;
        }
        let bytes = text.as_bytes();
        let mut g = start;
        let mut left = digits;
        while g < end {
            let b = bytes[g];
            let group_start = g == start || matches!(CLASS[bytes[g - 1] as usize], SEP | OPEN);
            if g >= *covered && group_start && CLASS[b as usize] != SEP {
                let glued = g == start && joined(bytes, g);
                let w = &text[g..floor(text, g + NUMBER_REACH)];
                for &det in &self.numeric {
                    // Cards and SSNs ask their validator whether they are part of an identifier
                    // (`detectors::in_identifier`, which needs evidence); phone numbers and addresses keep to
                    // numbers that stand on their own.
                    if glued && matches!(det, Builtin::Phone | Builtin::Ipv4) {
                        continue;
                    }
                    // The shape a pattern needs, checked on bytes first: most runs of digits in clean text
                    // (timestamps, ids, counts) fail here without running a pattern.
                    if !shape(det, &bytes[g..], left) {
                        continue;
                    }
                    if let Some(m) = detectors::pattern(det).find(w)
                        && let Some((s, e)) = det.validate(text, g, g + m.end())
                        && (det != Builtin::Ssn || ssn_printed_or_named(text, key, s, e))
                    {
                        found.push(Found {
                            start: s,
                            end: e,
                            det: Det::Builtin(det),
                        });
                        *covered = e;
                        break;
                    }
                }
            }
            if b.is_ascii_digit() {
                left = left.saturating_sub(1);
            }
            g += 1;
        }
    }

    fn replacement<'a>(&'a self, det: Det, matched: &str, key: Option<&HmacKey>) -> Cow<'a, str> {
        let (action, label) = match det {
            Det::Builtin(b) => (self.actions[b.index()].unwrap_or(Action::Mask), None),
            Det::Custom(i) => (self.custom[i].action, Some(self.custom[i].label.as_str())),
        };
        match (action, key) {
            (Action::Drop, _) => Cow::Borrowed(""),
            (Action::Hash, Some(k)) => Cow::Owned(k.hash(matched)),
            // Without the tenant's key (it could not be read), hashing falls back to masking: fail closed.
            (Action::Mask, _) | (Action::Hash, None) => match (det, label) {
                (_, Some(l)) => Cow::Borrowed(l),
                (Det::Builtin(b), None) => Cow::Owned(mask_label(b)),
                (Det::Custom(_), None) => Cow::Borrowed("[REDACTED]"),
            },
        }
    }

    fn name(&self, det: Det) -> &str {
        match det {
            Det::Builtin(b) => b.name(),
            Det::Custom(i) => &self.custom[i].name,
        }
    }

    /// `text`, found under `key`, with every detected datum replaced (no key rules: the caller applies those).
    pub(crate) fn redact_str<'a>(
        &self,
        key: &str,
        text: &'a str,
        hk: Option<&HmacKey>,
        report: &mut Report,
    ) -> Cow<'a, str> {
        let found = self.scan(text, key);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for f in &found {
            out.push_str(&text[last..f.start]);
            out.push_str(&self.replacement(f.det, &text[f.start..f.end], hk));
            last = f.end;
            report.add(self.name(f.det));
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    /// One string under `key`: key rules first, then JSON held in the string, then the detectors.
    pub(crate) fn text<'a>(
        &self,
        key: &str,
        s: &'a str,
        hk: Option<&HmacKey>,
        report: &mut Report,
        depth: u8,
    ) -> Cow<'a, str> {
        match self.key_rule(key) {
            Some((KeyAction::Allow, _)) => return Cow::Borrowed(s),
            Some((KeyAction::Redact(a), glob)) => {
                report.add_key(glob);
                return Cow::Owned(whole(a, s, hk));
            }
            None => {}
        }
        self.text_detect(key, s, hk, report, depth)
    }

    fn text_detect<'a>(
        &self,
        key: &str,
        s: &'a str,
        hk: Option<&HmacKey>,
        report: &mut Report,
        depth: u8,
    ) -> Cow<'a, str> {
        let t = s.trim_start();
        if depth < MAX_STRING_NESTING
            && (t.starts_with('{') || t.starts_with('['))
            && let Ok(doc) = serde_json::from_str::<Value>(s)
        {
            // A JSON document in a string: redacted inside (escapes decoded, keys seen) and re-serialized.
            return match self.value(key, &doc, hk, report, depth + 1) {
                Cow::Borrowed(_) => Cow::Borrowed(s),
                Cow::Owned(v) => {
                    Cow::Owned(serde_json::to_string(&v).unwrap_or_else(|_| KEY_LABEL.to_string()))
                }
            };
        }
        self.redact_str(key, s, hk, report)
    }

    /// A JSON value found under `key` (arrays pass their key on to their items).
    pub(crate) fn value<'a>(
        &self,
        key: &str,
        v: &'a Value,
        hk: Option<&HmacKey>,
        report: &mut Report,
        depth: u8,
    ) -> Cow<'a, Value> {
        match v {
            Value::String(s) => match self.text_detect(key, s, hk, report, depth) {
                Cow::Borrowed(_) => Cow::Borrowed(v),
                Cow::Owned(o) => Cow::Owned(Value::String(o)),
            },
            Value::Number(n) => {
                // Card numbers and SSNs sent as JSON numbers are numbers too.
                let big = n.as_u64().map(|u| u >= 100_000_000).unwrap_or(false)
                    || n.as_i64().map(|i| i <= -100_000_000).unwrap_or(false);
                if !big {
                    return Cow::Borrowed(v);
                }
                let text = n.to_string();
                match self.redact_str(key, &text, hk, report) {
                    Cow::Borrowed(_) => Cow::Borrowed(v),
                    Cow::Owned(o) => Cow::Owned(Value::String(o)),
                }
            }
            Value::Bool(_) | Value::Null => Cow::Borrowed(v),
            Value::Array(items) => {
                let mut out: Option<Vec<Value>> = None;
                for (i, x) in items.iter().enumerate() {
                    let r = self.value(key, x, hk, report, depth);
                    if let Cow::Owned(o) = r {
                        out.get_or_insert_with(|| items[..i].to_vec()).push(o);
                    } else if let Some(o) = &mut out {
                        o.push(x.clone());
                    }
                }
                out.map_or(Cow::Borrowed(v), |o| Cow::Owned(Value::Array(o)))
            }
            Value::Object(m) => {
                let mut out: Option<Map<String, Value>> = None;
                for (i, (k, x)) in m.iter().enumerate() {
                    let new_key = self.redact_str("", k, hk, report);
                    let new_val: Option<Cow<'_, Value>> = match self.key_rule(k) {
                        Some((KeyAction::Allow, _)) => Some(Cow::Borrowed(x)),
                        Some((KeyAction::Redact(a), glob)) if !x.is_null() => {
                            report.add_key(glob);
                            match a {
                                Action::Drop => None,
                                _ => Some(Cow::Owned(Value::String(whole_value(a, x, hk)))),
                            }
                        }
                        _ => Some(self.value(k, x, hk, report, depth)),
                    };
                    let changed =
                        matches!(new_key, Cow::Owned(_)) || !matches!(new_val, Some(Cow::Borrowed(_)));
                    if changed && out.is_none() {
                        out = Some(m.iter().take(i).map(|(a, b)| (a.clone(), b.clone())).collect());
                    }
                    if let Some(o) = &mut out
                        && let Some(val) = new_val
                    {
                        let mut k2 = new_key.into_owned();
                        // Two redacted keys may now be equal: keep both members.
                        let mut n = 2;
                        while o.contains_key(&k2) {
                            k2 = format!(
                                "{}~{n}",
                                k2.trim_end_matches(|c: char| c.is_ascii_digit() || c == '~')
                            );
                            n += 1;
                        }
                        o.insert(k2, val.into_owned());
                    }
                }
                out.map_or(Cow::Borrowed(v), |o| Cow::Owned(Value::Object(o)))
            }
        }
    }
}

/// The spellings a literal trigger is searched for: vendor prefixes as written; keywords in lower case, upper
/// case, capitalised and the usual camel case (`apiKey`).
fn case_variants(b: Builtin, l: &str) -> Vec<String> {
    let keyword = matches!(b, Builtin::Password | Builtin::Bearer | Builtin::AwsSecretKey);
    if !keyword || l.bytes().any(|c| c.is_ascii_uppercase()) {
        return vec![l.to_string()];
    }
    let mut cap = l.to_string();
    if let Some(f) = cap.get_mut(..1) {
        f.make_ascii_uppercase();
    }
    let mut v = vec![l.to_string(), l.to_ascii_uppercase(), cap];
    if l == "apikey" {
        v.extend(["apiKey".to_string(), "ApiKey".to_string()]);
    }
    v
}

/// Whether a number starting at `b[0]`, with `left` digits before its run ends, can have the shape `det`'s pattern
/// needs.
fn shape(det: Builtin, b: &[u8], left: usize) -> bool {
    let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let sep = |i: usize, set: &[u8]| b.get(i).is_some_and(|c| set.contains(c));
    match det {
        Builtin::Card => left >= 12 && d(0),
        Builtin::Ssn => {
            left >= 9
                && (0..3).all(d)
                && (sep(3, b" -.") && d(4) && d(5) && sep(6, b" -.") && (7..11).all(d)
                    || (3..9).all(d) && !d(9))
        }
        Builtin::Phone => {
            left >= 10 && (matches!(b.first(), Some(b'(' | b'+')) || d(0) && d(1) && d(2) && sep(3, b" .-"))
        }
        Builtin::Ipv4 => left >= 4 && d(0),
        _ => true,
    }
}

/// On equal spans, the detector listed first in [`Builtin::ALL`] names the match; custom detectors come last.
fn prio(d: Det) -> usize {
    match d {
        Det::Builtin(b) => b.index(),
        Det::Custom(i) => Builtin::ALL.len() + i,
    }
}

/// `[REDACTED:EMAIL]`.
fn mask_label(b: Builtin) -> String {
    format!("[REDACTED:{}]", b.name().to_ascii_uppercase())
}

/// What a key rule leaves of a whole string.
fn whole(a: Action, s: &str, hk: Option<&HmacKey>) -> String {
    match (a, hk) {
        (Action::Drop, _) => String::new(),
        (Action::Hash, Some(k)) => k.hash(s),
        _ => KEY_LABEL.to_string(),
    }
}

/// What a key rule leaves of a whole JSON value (a non-string is hashed in its JSON form).
fn whole_value(a: Action, v: &Value, hk: Option<&HmacKey>) -> String {
    match v {
        Value::String(s) => whole(a, s, hk),
        other => whole(a, &other.to_string(), hk),
    }
}

/// Whether the number starting at `g` is glued to what precedes it (`ORD-1234…`, `a1234…`): phone numbers and
/// IPv4 addresses are then left alone (cards and SSNs are not: see `detectors::in_identifier`).
fn joined(bytes: &[u8], g: usize) -> bool {
    let Some(&p) = g.checked_sub(1).and_then(|i| bytes.get(i)) else {
        return false;
    };
    match p {
        p if p.is_ascii_alphanumeric() || p >= 0x80 => true,
        b'-' | b'_' | b'/' | b'#' | b'.' => {
            g >= 2 && (bytes[g - 2].is_ascii_alphanumeric() || bytes[g - 2] == b'_')
        }
        _ => false,
    }
}

/// The largest char boundary of `s` at or below `i` (clamped to its length).
pub(crate) fn floor(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut i = i;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// A match of `b` around the trigger at `p`, validated.
fn at_trigger(b: Builtin, text: &str, p: usize) -> Option<(usize, usize)> {
    match b {
        Builtin::Email => return detectors::email_at(text, p),
        Builtin::AwsSecretKey => return detectors::aws_secret_near(text, p),
        _ => {}
    }
    let re = detectors::pattern(b);
    let w = &text[p..floor(text, p + b.reach())];
    let (ms, me) = if b.replaces_group() {
        let c = re.captures(w)?;
        let g = c.get(1)?;
        (p + g.start(), p + g.end())
    } else {
        let m = re.find(w)?;
        (p + m.start(), p + m.end())
    };
    b.validate(text, ms, me)
}

/// An SSN is not a part of a longer dotted or dashed number (a version, a fraction of a second); a bare nine-digit
/// one also needs evidence: the key it is found under or the text just before it names an SSN. Printed ones
/// (`123-45-6789`, `123 45 6789`, `123.45.6789`) need none.
fn ssn_printed_or_named(text: &str, key: &str, s: usize, e: usize) -> bool {
    let b = text.as_bytes();
    let glue = |c: Option<&u8>| c.is_some_and(|c| matches!(c, b'.' | b'-' | b'/' | b','));
    let digit = |c: Option<&u8>| c.is_some_and(u8::is_ascii_digit);
    if s >= 2 && glue(b.get(s - 1)) && digit(b.get(s - 2)) || glue(b.get(e)) && digit(b.get(e + 1)) {
        return false;
    }
    b[s..e].iter().any(|c| !c.is_ascii_digit())
        || detectors::names_ssn(key)
        || detectors::ssn_evidence(text, s)
}

/// A tenant's hashing key: the Collector's `hmac_key` string, whose bytes key HMAC-SHA256.
#[derive(Clone)]
pub struct HmacKey(Hmac<Sha256>);

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

impl HmacKey {
    /// A key from its text (the bytes of the string are the HMAC key, as in the Collector's `hmac_key`).
    pub fn new(key: &str) -> HmacKey {
        // HMAC takes keys of any length.
        match Hmac::<Sha256>::new_from_slice(key.as_bytes()) {
            Ok(m) => HmacKey(m),
            Err(_) => HmacKey(<Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default())),
        }
    }

    /// Lowercase hex of HMAC-SHA256(key, value): the Collector's `hmac-sha256` output.
    pub fn hash(&self, value: &str) -> String {
        let mut m = self.0.clone();
        m.update(value.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::{PackRules, RedactionDoc, Redactor, Report};
    use super::*;
    use serde_json::json;

    /// Redacts `input` with the default rules; returns the output and the detectors that fired.
    fn run(input: &str) -> (String, Vec<String>) {
        let mut r = Report::default();
        let out = Redactor::builtin().text("", input, &mut r).into_owned();
        (out, r.counts.into_keys().collect())
    }

    /// `input` redacts to `expected`, with exactly `fired` detectors.
    fn check(input: &str, expected: &str, fired: &[&str]) {
        let (out, names) = run(input);
        assert_eq!(out, expected, "input {input:?}");
        assert_eq!(names, fired, "input {input:?}");
    }

    /// `input` stays untouched (and borrowed).
    fn untouched(input: &str) {
        let mut r = Report::default();
        let out = Redactor::builtin().text("", input, &mut r);
        assert!(
            matches!(out, Cow::Borrowed(_)),
            "{input:?} became {out:?} ({:?})",
            r.counts
        );
        assert!(r.is_empty());
    }

    #[test]
    fn emails() {
        check(
            "mail jane.doe+x@mail.example.com now",
            "mail [REDACTED:EMAIL] now",
            &["email"],
        );
        check("<a@b.io>", "<[REDACTED:EMAIL]>", &["email"]);
        untouched("pkg@1.2.3 and @scope/name and a@b and x@localhost");
        untouched("jane..doe@example.com");
    }

    #[test]
    fn cards_need_luhn_an_issuer_and_card_grouping() {
        check(
            "card 4111 1111 1111 1111 exp",
            "card [REDACTED:CARD] exp",
            &["card"],
        );
        check("4111-1111-1111-1111", "[REDACTED:CARD]", &["card"]);
        check("amex 3782 822463 10005.", "amex [REDACTED:CARD].", &["card"]);
        check("n=5555555555554444;", "n=[REDACTED:CARD];", &["card"]);
        untouched("card 4111 1111 1111 1112");
        untouched("1764645333123456 and 1764645333123456789");
        untouched("4111 1111 11 11 1111 and 41111 1111 1111 111");
        untouched("4111.1111 1111-1111 and 4111 1111\t1111 1111");
    }

    #[test]
    fn cards_with_any_separator_or_digits_are_cards() {
        for input in [
            "4111.1111.1111.1111",
            "4111\t1111\t1111\t1111",
            "4111\u{a0}1111\u{a0}1111\u{a0}1111",
            "4111\u{202f}1111\u{2009}1111\u{2009}1111",
            "4111\u{2013}1111\u{2013}1111\u{2013}1111",
            "4111\u{2212}1111\u{2212}1111\u{2212}1111",
            "4111  1111  1111  1111",
            "4111 - 1111 - 1111 - 1111",
            "４１１１ １１１１ １１１１ １１１１",
            "４１１１１１１１１１１１１１１１",
            "٤١١١١١١١١١١١١١١١",
            "41\u{200b}11 1111 11\u{200d}11 1111",
            "3782\u{a0}822463\u{a0}10005",
        ] {
            check(&format!("pay {input} now"), "pay [REDACTED:CARD] now", &["card"]);
        }
        untouched("４１１１ １１１１ １１１１ １１１２");
        untouched("4111\u{a0}1111\u{2013}1111 1111");
    }

    #[test]
    fn a_number_is_part_of_an_identifier_only_with_evidence() {
        // Any prefix, glued or not, leaves a card a card and an SSN an SSN.
        let cards = [
            "cc_4111111111111111",
            "ref#4111111111111111",
            "GET /cards/4111111111111111/charges",
            "ORD-4111111111111111",
            "a4111111111111111",
            "4111111111111111x",
            "番号4111111111111111",
            "Kartennummer→4111111111111111←",
            "4111111111111111番",
        ];
        let ssns = [
            "cc_123-45-6789",
            "ref#123-45-6789",
            "/people/123-45-6789",
            "社会保障番号123-45-6789",
        ];
        for (inputs, number, label, fired) in [
            (&cards[..], "4111111111111111", "[REDACTED:CARD]", "card"),
            (&ssns[..], "123-45-6789", "[REDACTED:SSN]", "ssn"),
        ] {
            for input in inputs {
                check(input, &input.replace(number, label), &[fired]);
            }
        }
        // Evidence: the digits sit in a hex id of a standard length, or in a UUID.
        untouched("span 4111111111111111abcdef0123456789 end");
        untouched("digest deadbeefcafe00004111111111111111 end");
        untouched("sha1 ab4111111111111111cdef012345678901234567");
        untouched("id 41111111-1111-1111-1111-111111111111");
        untouched("uuid 123e4567-e89b-12d3-a456-426614174000");
    }

    #[test]
    fn ssns_dotted_full_width_and_bare_with_evidence() {
        check("ssn 123.45.6789.", "ssn [REDACTED:SSN].", &["ssn"]);
        check("１２３-４５-６７８９", "[REDACTED:SSN]", &["ssn"]);
        check("123\u{2013}45\u{2013}6789", "[REDACTED:SSN]", &["ssn"]);
        check("SSN: 123456789", "SSN: [REDACTED:SSN]", &["ssn"]);
        check("ＳＳＮ １２３４５６７８９", "ＳＳＮ [REDACTED:SSN]", &["ssn"]);
        check("user_ssn=078051120;", "user_ssn=[REDACTED:SSN];", &["ssn"]);
        check("customerSsn 078051120", "customerSsn [REDACTED:SSN]", &["ssn"]);
        check(
            "her social security number is 078051120",
            "her social security number is [REDACTED:SSN]",
            &["ssn"],
        );
        // The key a value sits under is evidence too.
        let mut r = Report::default();
        assert_eq!(
            Redactor::builtin().text("ssn", "078051120", &mut r),
            "[REDACTED:SSN]"
        );
        let v = json!({"customer": {"SSN": 78051120, "ssn": 123456789, "n": 123456789}});
        assert_eq!(
            Redactor::builtin().value(&v).as_ref(),
            &json!({"customer": {"SSN": 78051120, "ssn": "[REDACTED:SSN]", "n": 123456789}})
        );
        // Without evidence a nine-digit number is a number; with it, the SSN rules still apply.
        untouched("sent 123456789 bytes in 1764645333.123456789 s");
        untouched("classname 123456789 and ssn 1764645333.123456789 and ssn 987654321 and ssn 123-45-0000");
        untouched("ssn 123.45.6789.1 v1.123.45.6789");
    }

    #[test]
    fn emails_in_other_scripts_and_with_quoted_local_parts() {
        for input in [
            "jane＠example.com",
            "jane﹫example.com",
            "ｊａｎｅ．ｄｏｅ＠ｅｘａｍｐｌｅ．ｃｏｍ",
            "jane@exämple.de",
            "josé.núñez@münchen.de",
            "用户@例子.广告",
            "почта@пример.рф",
            "jane@xn--mnchen-3ya.de",
            "jane@example.xn--p1ai",
            "\"john doe\"@example.com",
            "\"john..doe\"@example.com",
            "\\\"john doe\\\"@example.com",
            "jane\u{200b}@example.com",
        ] {
            check(
                &format!("mail {input} now"),
                "mail [REDACTED:EMAIL] now",
                &["email"],
            );
        }
        check("o'brien@example.com", "[REDACTED:EMAIL]", &["email"]);
        untouched(&format!("jane@foo-.com and jane@{}.com", "a".repeat(64)));
        check("'jane@example.com'", "'[REDACTED:EMAIL]'", &["email"]);
        untouched(r#"say "hi" "@example.com" and {"k":"@handle.io"} and pkg@1.2.3 and @名前"#);
    }

    #[test]
    fn aws_secret_access_keys_need_evidence() {
        let key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        check(
            &format!("aws_secret_access_key = {key}"),
            "aws_secret_access_key = [REDACTED:AWS_SECRET_KEY]",
            &["aws_secret_key"],
        );
        check(
            &format!("export AWS_SECRET_ACCESS_KEY={key}"),
            "export AWS_SECRET_ACCESS_KEY=[REDACTED:AWS_SECRET_KEY]",
            &["aws_secret_key"],
        );
        check(
            &format!("[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = {key}\n"),
            "[default]\naws_access_key_id = [REDACTED:AWS_ACCESS_KEY]\naws_secret_access_key = [REDACTED:AWS_SECRET_KEY]\n",
            &["aws_access_key", "aws_secret_key"],
        );
        check(
            &format!("creds AKIAIOSFODNN7EXAMPLE {key} ok"),
            "creds [REDACTED:AWS_ACCESS_KEY] [REDACTED:AWS_SECRET_KEY] ok",
            &["aws_access_key", "aws_secret_key"],
        );
        check(
            &format!("{key}:AKIAIOSFODNN7EXAMPLE"),
            "[REDACTED:AWS_SECRET_KEY]:[REDACTED:AWS_ACCESS_KEY]",
            &["aws_access_key", "aws_secret_key"],
        );
        check(
            &format!("SecretAccessKey: {key}, secret=hunter2"),
            "SecretAccessKey: [REDACTED:AWS_SECRET_KEY], secret=[REDACTED:PASSWORD]",
            &["aws_secret_key", "password"],
        );
        // No evidence, or not a random 40-character string: left alone.
        untouched(&format!("object {key} stored"));
        untouched("secret sauce: commit 3f2a9c1e8b7d6f5a4c3b2a1908f7e6d5c4b3a291");
        untouched(&format!("secret {key}A and secret /{key}="));
        untouched(&format!(
            "the secret is kept far away from here, {} {key}",
            "x".repeat(100)
        ));
    }

    #[test]
    fn jwts_whose_header_has_whitespace() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for header in [
            r#"{ "alg": "HS256", "typ": "JWT" }"#,
            "{\n  \"alg\": \"RS256\"\n}",
            "{\r\n\"alg\":\"none\"}",
            "{\t\"typ\":\"JWT\"}",
        ] {
            let jwt = format!("{}.{}.c2lnbmF0dXJl", b64(header), b64(r#"{"sub":"1234"}"#));
            check(&format!("t={jwt} end"), "t=[REDACTED:JWT] end", &["jwt"]);
        }
        untouched("the framework and the homework: ewok.ewok.ewok");
    }

    #[test]
    fn pgp_private_key_blocks() {
        let block = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\nComment: backup\n\nlQOYBF8dVKgBCADa\n=Xb3q\n-----END PGP PRIVATE KEY BLOCK-----";
        check(
            &format!("key {block} tail"),
            "key [REDACTED:PEM_PRIVATE_KEY] tail",
            &["pem_private_key"],
        );
        check(
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\nlQOYBF8dVKgBCADa+/=",
            "[REDACTED:PEM_PRIVATE_KEY]",
            &["pem_private_key"],
        );
        check(
            r"-----BEGIN PGP PRIVATE KEY BLOCK-----\nComment: x\n\nlQOYBF8dVKgBCADa",
            "[REDACTED:PEM_PRIVATE_KEY]",
            &["pem_private_key"],
        );
        untouched("-----BEGIN PGP PUBLIC KEY BLOCK-----\nmQENBF8d\n-----END PGP PUBLIC KEY BLOCK-----");
    }

    #[test]
    fn ibans_in_lower_case_with_dashes_or_full_width() {
        for input in [
            "de89370400440532013000",
            "de89 3704 0044 0532 0130 00",
            "DE89-3704-0044-0532-0130-00",
            "gb82-west-1234-5698-7654-32",
            "DE89\u{a0}3704\u{a0}0044\u{a0}0532\u{a0}0130\u{a0}00",
            "ＤＥ８９３７０４００４４０５３２０１３０００",
            "BE71096123456769",
        ] {
            check(&format!("to {input} ok"), "to [REDACTED:IBAN] ok", &["iban"]);
        }
        untouched("de89370400440532013001 and span be71096123456769");
        // Not printed as an IBAN: parts of a UUID and the next word, mixed case, groups other than fours.
        untouched("request f6092583-ac80-43f2-ba34-ef454c325438 done");
        untouched("De89370400440532013000 and de89 37040044 0532013000 and DE89-37040044-0532013000");
    }

    #[test]
    fn ssns_follow_the_numbering_rules() {
        check("ssn 123-45-6789.", "ssn [REDACTED:SSN].", &["ssn"]);
        check("078 05 1120", "[REDACTED:SSN]", &["ssn"]);
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "123-00-4567",
            "123-45-0000",
            "123-45 6789",
        ] {
            untouched(bad);
        }
    }

    #[test]
    fn ibans_need_mod_97_and_their_country_length() {
        check("to DE89370400440532013000 ok", "to [REDACTED:IBAN] ok", &["iban"]);
        check(
            "GB82 WEST 1234 5698 7654 32 AND",
            "[REDACTED:IBAN] AND",
            &["iban"],
        );
        untouched("DE89370400440532013001");
        untouched("XX89370400440532013000");
    }

    #[test]
    fn phones() {
        check("call (212) 555-0142 now", "call [REDACTED:PHONE] now", &["phone"]);
        check("+1-212-555-0142x123", "[REDACTED:PHONE]", &["phone"]);
        check("+44 20 7946 0958", "[REDACTED:PHONE]", &["phone"]);
        untouched("2026-12-02 03:15:33 and 10.0.19045.3803 and 1764645333");
        untouched("112-555-0142 and 212-155-0142");
    }

    #[test]
    fn secrets() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl";
        check(&format!("t={jwt} end"), "t=[REDACTED:JWT] end", &["jwt"]);
        untouched("eyJub3RhbmFsZyI6MX0.eyJzdWIiOiIxMjM0In0.c2ln");
        check(
            "AKIAIOSFODNN7EXAMPLE",
            "[REDACTED:AWS_ACCESS_KEY]",
            &["aws_access_key"],
        );
        check(
            "gh ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
            "gh [REDACTED:GITHUB_TOKEN]",
            &["github_token"],
        );
        check(
            "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
            "[REDACTED:OPENAI_KEY]",
            &["openai_key"],
        );
        let ant = format!("sk-ant-api03-{}AA", "aB3_".repeat(24));
        check(&ant, "[REDACTED:ANTHROPIC_KEY]", &["anthropic_key"]);
        check(
            "xoxb-123456789012-abcdefABCDEF",
            "[REDACTED:SLACK_TOKEN]",
            &["slack_token"],
        );
        check(
            "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW",
            "[REDACTED:GOOGLE_API_KEY]",
            &["google_api_key"],
        );
        check(
            "db password=hunter2&x=1",
            "db password=[REDACTED:PASSWORD]&x=1",
            &["password"],
        );
        check(
            r#"log {"pwd": "s3cr3t!"} "#,
            r#"log {"pwd": "[REDACTED:PASSWORD]"} "#,
            &["password"],
        );
        // As a JSON document, the key rule replaces the whole value.
        check(
            r#"{"pwd": "s3cr3t!"}"#,
            r#"{"pwd":"[REDACTED:KEY]"}"#,
            &["key:pwd"],
        );
        check(
            "Authorization: Bearer abc.def.ghi123",
            "Authorization: Bearer [REDACTED:BEARER]",
            &["bearer"],
        );
        untouched("task-runner-queue-name-for-the-deployment sk-this-is-a-kebab-name and secretary=no");
        untouched("AKIAIOSFODNN7EXAMPLEX and the password is long");
    }

    #[test]
    fn pem_blocks_whole_or_cut_short() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAAKC\n-----END RSA PRIVATE KEY-----";
        check(
            &format!("k={key} tail"),
            "k=[REDACTED:PEM_PRIVATE_KEY] tail",
            &["pem_private_key"],
        );
        check(
            "-----BEGIN PRIVATE KEY-----
MIIEow+/=
AAKC",
            "[REDACTED:PEM_PRIVATE_KEY]",
            &["pem_private_key"],
        );
        untouched(
            "-----BEGIN CERTIFICATE-----
MIIB
-----END CERTIFICATE-----",
        );
    }

    #[test]
    fn lookalikes_stay_untouched() {
        for s in [
            "123e4567-e89b-12d3-a456-426614174000",
            "4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7",
            "3f2a9c1e8b7d6f5a4c3b2a1908f7e6d5c4b3a291",
            "2026-12-02T03:15:33.123456Z",
            "v1.2.3-rc.1 10.0.19045.3803",
            "ORD-2026-004512 #1002345 112-4567890-1234567 PO 4500012345",
            "$1,234,567.89 and 12345678 items",
            "10.0.0.1 and ::1 and fe80::1",
            "",
        ] {
            untouched(s);
        }
    }

    #[test]
    fn json_in_a_string_is_redacted_inside_and_keeps_its_structure() {
        let s = r#"{"messages":[{"role":"user","content":"mail me at a\u0040example.com"}],"n":1}"#;
        let (out, fired) = run(s);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"messages":[{"role":"user","content":"mail me at [REDACTED:EMAIL]"}],"n":1})
        );
        assert_eq!(fired, ["email"]);
        untouched(r#"{"a":"b\u0041"}"#);
    }

    #[test]
    fn values_key_rules_keys_and_numbers() {
        let v = json!({
            "user": {"email": "jane@example.com", "age": 41},
            "password": "hunter2",
            "headers": {"Authorization": "Basic dXNlcjpwYXNz", "x": null},
            "card": 4111111111111111u64,
            "jane@example.com": "as a key",
            "list": ["ok", "123-45-6789"],
        });
        let mut r = Report::default();
        let out = Redactor::builtin().value_report(&v, &mut r);
        assert_eq!(
            out.as_ref(),
            &json!({
                "user": {"email": "[REDACTED:EMAIL]", "age": 41},
                "password": "[REDACTED:KEY]",
                "headers": {"Authorization": "[REDACTED:KEY]", "x": null},
                "card": "[REDACTED:CARD]",
                "[REDACTED:EMAIL]": "as a key",
                "list": ["ok", "[REDACTED:SSN]"],
            })
        );
        assert_eq!(r.counts["email"], 2);
        assert_eq!(r.counts["key:*password*"], 1);
        assert_eq!(r.counts["key:authorization"], 1);
        let clean = json!({"a": [1, "b", {"c": true}], "d": "2026-12-02T03:15:33Z"});
        assert!(matches!(Redactor::builtin().value(&clean), Cow::Borrowed(_)));
    }

    fn pack(yaml: &str) -> PackRules {
        PackRules::compile(serde_yaml::from_str::<RedactionDoc>(yaml).unwrap()).unwrap()
    }

    #[test]
    fn pack_rules_custom_detectors_allow_hash_and_drop() {
        let rules = pack(
            "detectors: {email: hash, phone: off}\n\
             custom: [{name: employee_id, pattern: 'EMP-[0-9]{6}', action: mask}]\n\
             keys: [{match: 'debug.*', action: allow}, {match: 'note', action: drop}]",
        );
        let key = HmacKey::new("secret");
        let r = Redactor::for_rules(Some(&rules), Some(HmacKey::new("secret")));
        let v = json!({"a": "EMP-123456 jane@example.com (212) 555-0142", "debug.raw": "jane@example.com", "note": "x"});
        let mut rep = Report::default();
        let out = r.value_report(&v, &mut rep);
        let hashed = key.hash("jane@example.com");
        assert_eq!(
            out.as_ref(),
            &json!({"a": format!("[REDACTED:EMPLOYEE_ID] {hashed} (212) 555-0142"), "debug.raw": "jane@example.com"})
        );
        assert_eq!(
            rep.counts.keys().collect::<Vec<_>>(),
            ["email", "employee_id", "key:note"]
        );
        // A hash without the tenant's key masks (fail closed).
        let nokey = Redactor::for_rules(Some(&rules), None);
        assert_eq!(
            nokey.text("", "jane@example.com", &mut Report::default()),
            "[REDACTED:EMAIL]"
        );
        let off = Redactor::for_rules(Some(&pack("enabled: false")), None);
        assert_eq!(
            off.text("password", "jane@example.com", &mut Report::default()),
            "jane@example.com"
        );
    }

    #[test]
    fn the_hash_is_the_collectors_hmac_sha256_hex() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), RFC 4231-style known answer.
        assert_eq!(
            HmacKey::new("key").hash("The quick brown fox jumps over the lazy dog"),
            "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
    }

    #[test]
    fn hostile_text_never_panics() {
        for s in [
            "@",
            "@@@@",
            "a@",
            "-----BEGIN",
            "eyJ",
            "sk-",
            "(((+++",
            "DE89",
            "é@é.é",
            "1234567890é",
            "\u{0}@x.io",
        ] {
            let _ = run(s);
            let _ = run(&s.repeat(50));
        }
    }
}
