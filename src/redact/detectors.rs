//! The built-in detectors: what each one looks for (a pattern for the `regex` crate, anchored where the prefilter
//! hands it a position), how it is found cheaply (literal triggers, or the digit runs of [`super::engine`]), and how a
//! candidate is validated (checksums, issuer and number rules, decodable structure) so that look-alikes such as
//! ids, hashes, timestamps and version numbers stay untouched. Pure.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use regex::Regex;
use std::sync::LazyLock;

/// A built-in detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Builtin {
    Email,
    Phone,
    Card,
    Ssn,
    Iban,
    Ipv4,
    Ipv6,
    Jwt,
    PemPrivateKey,
    AwsAccessKey,
    AwsSecretKey,
    GithubToken,
    OpenaiKey,
    AnthropicKey,
    SlackToken,
    GoogleApiKey,
    Password,
    Bearer,
}

/// How the engine finds a detector's candidates before any pattern runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Find {
    /// At a position the digit-run scan marks (a group of digits starting a candidate number).
    Digits,
    /// At two capital letters followed by two digits (marked by the digit-run scan).
    CountryCode,
    /// Around one of these literals (found by one Aho-Corasick pass).
    Literals(&'static [&'static str]),
    /// By its pattern over the whole text (the opt-in IPv6 detector only).
    Scan,
}

impl Builtin {
    /// Every built-in detector, in priority order (on equal spans the earlier one names the match).
    pub const ALL: [Builtin; 18] = [
        Builtin::PemPrivateKey,
        Builtin::Jwt,
        Builtin::AnthropicKey,
        Builtin::OpenaiKey,
        Builtin::GithubToken,
        Builtin::AwsSecretKey,
        Builtin::AwsAccessKey,
        Builtin::SlackToken,
        Builtin::GoogleApiKey,
        Builtin::Bearer,
        Builtin::Password,
        Builtin::Email,
        Builtin::Card,
        Builtin::Iban,
        Builtin::Ssn,
        Builtin::Phone,
        Builtin::Ipv4,
        Builtin::Ipv6,
    ];

    /// The detector's name in packs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Email => "email",
            Builtin::Phone => "phone",
            Builtin::Card => "card",
            Builtin::Ssn => "ssn",
            Builtin::Iban => "iban",
            Builtin::Ipv4 => "ipv4",
            Builtin::Ipv6 => "ipv6",
            Builtin::Jwt => "jwt",
            Builtin::PemPrivateKey => "pem_private_key",
            Builtin::AwsAccessKey => "aws_access_key",
            Builtin::AwsSecretKey => "aws_secret_key",
            Builtin::GithubToken => "github_token",
            Builtin::OpenaiKey => "openai_key",
            Builtin::AnthropicKey => "anthropic_key",
            Builtin::SlackToken => "slack_token",
            Builtin::GoogleApiKey => "google_api_key",
            Builtin::Password => "password",
            Builtin::Bearer => "bearer",
        }
    }

    /// The detector named `name`.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Its position in [`Builtin::ALL`] (the engine's table index).
    pub(crate) fn index(self) -> usize {
        Builtin::ALL.iter().position(|b| *b == self).unwrap_or(0)
    }

    /// Whether it runs when a pack says nothing about it: every detector but the IP addresses, which are
    /// operational data more often than personal data.
    pub fn on_by_default(self) -> bool {
        !matches!(self, Builtin::Ipv4 | Builtin::Ipv6)
    }

    pub(crate) fn find(self) -> Find {
        match self {
            Builtin::Phone | Builtin::Card | Builtin::Ssn | Builtin::Ipv4 => Find::Digits,
            Builtin::Iban => Find::CountryCode,
            Builtin::Ipv6 => Find::Scan,
            Builtin::Email => Find::Literals(&["@"]),
            // A JSON header's first bytes in base64url: `{"` is `eyJ`; `{ ` is `eyA`; `{\n`, `{\r`, `{\t` are `ewo`,
            // `ew0`, `ewk`.
            Builtin::Jwt => Find::Literals(&["eyJ", "eyA", "ewo", "ew0", "ewk"]),
            Builtin::PemPrivateKey => Find::Literals(&["-----BEGIN"]),
            Builtin::AwsAccessKey => Find::Literals(&["AKIA", "ASIA"]),
            // A secret access key has no prefix of its own: it is looked for near its evidence (see
            // `aws_secret_near`).
            Builtin::AwsSecretKey => Find::Literals(&["secret", "AKIA", "ASIA"]),
            Builtin::GithubToken => Find::Literals(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]),
            // One trigger for both vendors: the Anthropic pattern is tried first (priority order).
            Builtin::OpenaiKey | Builtin::AnthropicKey => Find::Literals(&["sk-"]),
            Builtin::SlackToken => Find::Literals(&["xox"]),
            Builtin::GoogleApiKey => Find::Literals(&["AIza"]),
            Builtin::Password => Find::Literals(&[
                "password",
                "passwd",
                "pwd",
                "secret",
                "api_key",
                "apikey",
                "api-key",
                "access_token",
                "auth_token",
            ]),
            Builtin::Bearer => Find::Literals(&["bearer"]),
        }
    }

    /// How far after its start a match may end (bytes).
    pub(crate) fn reach(self) -> usize {
        match self {
            Builtin::PemPrivateKey => 64 * 1024,
            Builtin::Jwt | Builtin::Bearer => 16 * 1024,
            Builtin::Email => 64 + 1 + 255,
            Builtin::Ipv6 => 64,
            Builtin::AwsSecretKey => AWS_SECRET_AFTER_KEYWORD,
            _ => 512,
        }
    }

    fn pattern(self) -> &'static str {
        match self {
            // Whole addresses (the benchmark's baseline); the engine walks back over the local part from the `@`
            // (see `email_at`) and runs `EMAIL_DOMAIN` after it.
            // Unbounded repetitions: counted ones over Unicode classes compile to automata of megabytes.
            Builtin::Email => concat!(
                r"[\p{L}\p{N}._%+'\-]+@(?:[\p{L}\p{N}][\p{L}\p{N}\p{M}\-]*\.)+",
                r"(?:[Xx][Nn]--[A-Za-z0-9\-]+|\p{L}[\p{L}\p{M}]+)"
            ),
            Builtin::Phone => concat!(
                r"\A(?:",
                r"(?:(?:\+1|001)[ .\-]?)?(?:\([0-9]{3}\) ?|[0-9]{3}[ .\-])[0-9]{3}[ .\-][0-9]{4}",
                r"|\+[1-9][0-9]{0,2}[ .\-]?(?:[0-9][ .\-]?){6,12}[0-9]",
                r")(?:[ ]?(?:x|ext\.?)[ ]?[0-9]{1,6})?"
            ),
            // Groups with up to three separator characters between them (`4111  1111`, `4111 - 1111`); `card`
            // keeps the groups printed with one and the same separator.
            Builtin::Card => r"\A[0-9](?:[ \t\-.]{0,3}[0-9]){11,22}",
            // Dashes, spaces or dots, or bare (a bare one needs evidence: see `ssn_evidence`).
            Builtin::Ssn => r"\A[0-9]{3}(?:[ \-.][0-9]{2}[ \-.][0-9]{4}|[0-9]{6})",
            Builtin::Iban => r"\A[A-Za-z]{2}[0-9]{2}(?:[ \-]?[A-Za-z0-9]){11,34}",
            Builtin::Ipv4 => r"\A(?:[0-9]{1,3}\.){3}[0-9]{1,3}",
            Builtin::Ipv6 => r"(?i)(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?:%[0-9a-z]{1,16})?",
            Builtin::Jwt => r"\Ae[yw][A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{2,}\.[A-Za-z0-9_\-]*",
            // PEM keys and OpenPGP armored private key blocks, to the nearest END line; a key cut short (no END) is
            // redacted over its armor headers (`Version: ...`) to the end of its base64 body.
            Builtin::PemPrivateKey => concat!(
                r"\A-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?:(?s:.*?)-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----",
                r"|(?:(?:\r?\n|\\r\\n|\\n)[A-Za-z][A-Za-z0-9\-]*: [^\r\n\\]*)*[A-Za-z0-9+/=\s\\]*)"
            ),
            Builtin::AwsAccessKey => r"\A(?:AKIA|ASIA)[A-Z0-9]{16}",
            // Exactly 40 characters of standard base64 (group 1), found near its evidence.
            Builtin::AwsSecretKey => r"(?:\A|[^A-Za-z0-9/+])([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)",
            Builtin::GithubToken => r"\A(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9_]{22,244})",
            Builtin::OpenaiKey => r"\Ask-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,200}",
            Builtin::AnthropicKey => r"\Ask-ant-[a-z]{2,10}[0-9]{2}-[A-Za-z0-9_\-]{32,200}",
            Builtin::SlackToken => r"\Axox[abposre]-[0-9A-Za-z\-]{10,250}",
            Builtin::GoogleApiKey => r"\AAIza[0-9A-Za-z_\-]{35}",
            // Only the value is redacted (group 1), so the record still says a password was given.
            Builtin::Password => concat!(
                r#"(?i)\A(?:password|passwd|pwd|secret|api[_\-]?key|access_token|auth_token)["']?[ \t]*[:=][ \t]*"#,
                r#"["']?([^\s"'&,;<>\\]{1,256})"#
            ),
            Builtin::Bearer => r"(?i)\Abearer[ \t]+([A-Za-z0-9._~+/=\-]{8,4096})",
        }
    }

    /// Whether it looks for its match around its trigger rather than at it (a secret access key near its keyword
    /// or its access key id): the trigger stays open to the other detectors.
    pub(crate) fn nearby(self) -> bool {
        self == Builtin::AwsSecretKey
    }

    /// Whether the match to replace is capture group 1 (a credential after its keyword) rather than the whole match.
    pub(crate) fn replaces_group(self) -> bool {
        matches!(self, Builtin::Password | Builtin::Bearer)
    }

    /// Checks a candidate `text[start..end]` (what the pattern matched) and returns the span to replace, which may be
    /// shorter (a card's first groups, an IBAN's own length). `text` is the whole string, so the characters around
    /// the span can be checked.
    pub(crate) fn validate(self, text: &str, start: usize, end: usize) -> Option<(usize, usize)> {
        let s = text.get(start..end)?;
        let before = text[..start].chars().next_back();
        let after_at = |e: usize| text[e..].chars().next();
        let alnum = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
        match self {
            Builtin::Email => {
                let at = s.rfind('@')?;
                let local = &s[..at];
                let quoted = local.ends_with('"');
                if quoted {
                    // `"john doe"@…`: any characters between the quotes, but some letter or digit (so the `":"`
                    // between a JSON key and a value `"@handle.io"` is not a local part).
                    if !local.chars().any(char::is_alphanumeric) {
                        return None;
                    }
                } else if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
                    return None;
                }
                // A longer word around it is not an address.
                if before.is_some_and(|c| c.is_alphanumeric() || !quoted && c != '\'' && is_local_char(c)) {
                    return None;
                }
                if after_at(end).is_some_and(|c| c.is_alphanumeric() || c == '-' || c == '_') {
                    return None;
                }
                Some((start, end))
            }
            Builtin::Card => card(text, start, s),
            Builtin::Ssn => {
                let d: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
                let sep: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_digit()).collect();
                let printed = sep.is_empty() || sep.len() == 2 && sep[0] == sep[1];
                if !printed || in_identifier(text, start, end) {
                    return None;
                }
                // A bare one also needs evidence, which the engine checks (`ssn_evidence`).
                ssn_digits(&d).then_some((start, end))
            }
            Builtin::Phone => {
                let digits = s.bytes().filter(u8::is_ascii_digit).count();
                let nanp = !s.starts_with('+') || s.starts_with("+1");
                if !(10..=18).contains(&digits) || alnum(after_at(end)) {
                    return None;
                }
                if nanp {
                    // Area code and exchange start with 2-9 (the North American Numbering Plan).
                    let d: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
                    let skip = if s.starts_with("001") {
                        3
                    } else if s.starts_with("+1") {
                        1
                    } else {
                        0
                    };
                    let (area, exchange) = (d.get(skip)?, d.get(skip + 3)?);
                    if *area < b'2' || *exchange < b'2' {
                        return None;
                    }
                }
                Some((start, end))
            }
            Builtin::Iban => iban(text, start, s),
            Builtin::Ipv4 => {
                if after_at(end).is_some_and(|c| c.is_ascii_digit() || c == '.') {
                    return None;
                }
                s.parse::<std::net::Ipv4Addr>().ok().map(|_| (start, end))
            }
            Builtin::Ipv6 => {
                if alnum(before)
                    || before == Some(':')
                    || alnum(after_at(end))
                    || !s.contains("::") && s.matches(':').count() < 7
                {
                    return None;
                }
                let addr = s.split('%').next()?;
                addr.parse::<std::net::Ipv6Addr>().ok().map(|_| (start, end))
            }
            Builtin::AwsSecretKey => {
                let after = text[end..].chars().next();
                let b64 =
                    |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '+');
                // Random: both cases and a digit or `/`/`+` (a hex digest or a word never is).
                let mixed = s.bytes().any(|b| b.is_ascii_uppercase())
                    && s.bytes().any(|b| b.is_ascii_lowercase())
                    && s.bytes().any(|b| b.is_ascii_digit() || b == b'/' || b == b'+');
                (s.len() == 40 && mixed && !b64(before) && !b64(after) && after != Some('='))
                    .then_some((start, end))
            }
            Builtin::Jwt => {
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
                    return None;
                }
                let header = s.split('.').next()?;
                let bytes = B64URL.decode(header).ok()?;
                let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                let o = v.as_object()?;
                (o.contains_key("alg") || o.contains_key("typ") || o.contains_key("enc"))
                    .then_some((start, end))
            }
            Builtin::PemPrivateKey => Some((start, end)),
            Builtin::AwsAccessKey | Builtin::GoogleApiKey | Builtin::GithubToken | Builtin::SlackToken => {
                if alnum(before) || alnum(after_at(end)) {
                    return None;
                }
                Some((start, end))
            }
            Builtin::AnthropicKey => (!alnum(before)).then_some((start, end)),
            Builtin::OpenaiKey => {
                // Random keys mix cases and digits; a kebab-case name after `sk-` does not.
                let body = &s[3..];
                let mixed = body.bytes().any(|b| b.is_ascii_digit())
                    && body.bytes().any(|b| b.is_ascii_uppercase())
                    && body.bytes().any(|b| b.is_ascii_lowercase());
                if alnum(before) || s.starts_with("sk-ant-") || !mixed {
                    return None;
                }
                Some((start, end))
            }
            Builtin::Password | Builtin::Bearer => {
                if alnum(before) && self == Builtin::Bearer {
                    return None;
                }
                // Already redacted, or a placeholder.
                if s.starts_with("[REDACTED") || s.bytes().all(|b| b == b'*') {
                    return None;
                }
                Some((start, end))
            }
        }
    }
}

/// The compiled pattern of every built-in detector, in [`Builtin::ALL`] order (compiled once per process).
pub(crate) static PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    Builtin::ALL
        .iter()
        .map(|b| {
            #[allow(clippy::expect_used)]
            // Constant patterns, checked by the unit tests: failing here is a build defect, not an input error.
            Regex::new(b.pattern()).expect("built-in redaction patterns compile")
        })
        .collect()
});

/// The pattern of `b`, as the engine runs it.
pub(crate) fn pattern(b: Builtin) -> &'static Regex {
    &PATTERNS[b.index()]
}

/// The source of `b`'s pattern (the benchmark's baseline uses the same patterns).
pub fn pattern_source(b: Builtin) -> &'static str {
    b.pattern()
}

/// The Luhn checksum holds over these digits.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

/// A payment card number's issuer prefix fits its length (the card networks' published ranges).
fn card_issuer(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| -> u32 { d.iter().take(k).fold(0, |a, b| a * 10 + u32::from(b - b'0')) };
    match d.first() {
        Some(b'4') => matches!(n, 13 | 16 | 19),
        Some(b'5') => (p(2) >= 51 && p(2) <= 55 && n == 16) || maestro(d),
        Some(b'2') => (2221..=2720).contains(&p(4)) && n == 16 || p(4) == 2131 && n == 15,
        Some(b'3') => {
            ((p(2) == 34 || p(2) == 37) && n == 15)
                || ((300..=305).contains(&p(3)) || p(2) == 36 || p(2) == 38 || p(2) == 39) && (14..=19).contains(&n)
                // JCB (3528-3589 assigned; the whole 35 block is used by generators and test numbers).
                || p(2) == 35 && (16..=19).contains(&n)
        }
        Some(b'6') => {
            (p(4) == 6011 || p(2) == 65 || (644..=649).contains(&p(3)) || p(2) == 62)
                && (16..=19).contains(&n)
                || maestro(d)
        }
        Some(b'1') => p(4) == 1800 && n == 15,
        Some(b'0') => p(4) == 604 && n == 12,
        _ => false,
    }
}

/// Maestro's ranges (12 to 19 digits).
fn maestro(d: &[u8]) -> bool {
    let p4: u32 = d.iter().take(4).fold(0, |a, b| a * 10 + u32::from(b - b'0'));
    let p2 = p4 / 100;
    (12..=19).contains(&d.len())
        && (matches!(p4, 5018 | 5020 | 5038 | 6304 | 6759 | 6761 | 6762 | 6763 | 6390)
            || (56..=58).contains(&p2))
}

/// A card number in `s` (the pattern's match at `start`): the first groups whose digits form a valid number, grouped
/// as cards are printed (no separators; fours; Amex and Diners 4-6-5 / 4-6-4), all with the same separator (one to
/// three characters: `4111 1111`, `4111.1111`, `4111\t1111`, `4111  1111`, `4111 - 1111`).
fn card(text: &str, start: usize, s: &str) -> Option<(usize, usize)> {
    // Groups of digits, up to a change of separator.
    let b = s.as_bytes();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut sep: Option<&[u8]> = None;
    let mut i = 0;
    while i < b.len() {
        let g0 = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        groups.push((g0, i));
        let s0 = i;
        while i < b.len() && !b[i].is_ascii_digit() {
            i += 1;
        }
        if sep.is_some_and(|x| x != &b[s0..i]) {
            break;
        }
        sep = Some(&b[s0..i]);
    }
    for k in (1..=groups.len()).rev() {
        let take = &groups[..k];
        let end = take[k - 1].1;
        let sizes: Vec<usize> = take.iter().map(|g| g.1 - g.0).collect();
        let digits: Vec<u8> = s[..end].bytes().filter(u8::is_ascii_digit).collect();
        let n = digits.len();
        if !(12..=19).contains(&n) {
            continue;
        }
        let grouped = k == 1
            || (sizes[..k - 1].iter().all(|&g| g == 4) && (1..=4).contains(&sizes[k - 1]))
            || sizes == [4, 6, 5]
            || sizes == [4, 6, 4];
        if !grouped {
            continue;
        }
        if in_identifier(text, start, start + end) {
            continue;
        }
        if card_issuer(&digits) && luhn(&digits) {
            return Some((start, start + end));
        }
    }
    None
}

/// The US Social Security Administration's rules: area not 000, 666 or 900-999; group not 00; serial not 0000.
pub fn ssn_digits(d: &[u8]) -> bool {
    if d.len() != 9 {
        return false;
    }
    let area = &d[..3];
    area != b"000" && area != b"666" && area[0] != b'9' && &d[3..5] != b"00" && &d[5..] != b"0000"
}

/// IBAN lengths by country (the SWIFT registry).
fn iban_length(cc: &[u8]) -> Option<usize> {
    const T: &[(&[u8; 2], usize)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NL", 18),
        (b"NO", 15),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"SA", 24),
        (b"SC", 31),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
    ];
    T.iter().find(|(c, _)| c.as_slice() == cc).map(|(_, n)| *n)
}

/// The IBAN check (ISO 13616): moved four characters to the end, letters as 10-35, the number mod 97 is 1.
pub fn iban_checksum(chars: &[u8]) -> bool {
    if chars.len() < 5 {
        return false;
    }
    let mut r: u32 = 0;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        r = if v >= 10 {
            (r * 100 + v) % 97
        } else {
            (r * 10 + v) % 97
        };
    }
    r == 1
}

/// An IBAN in `s` (the pattern's match at `start`), in one case (upper or lower), bare or printed in groups. In
/// capitals with spaces any grouping is read; in lower case or with dashes only the printed form, fours with one
/// separator, so that the parts of a UUID or a sentence's next word are not read as the rest of one.
fn iban(text: &str, start: usize, s: &str) -> Option<(usize, usize)> {
    let want = iban_length(s.get(..2)?.to_ascii_uppercase().as_bytes())?;
    let mut chars = Vec::with_capacity(want);
    let (mut end, mut group, mut groups, mut seps) = (0, 0usize, Vec::new(), Vec::new());
    for (i, b) in s.bytes().enumerate() {
        if b == b' ' || b == b'-' {
            groups.push(group);
            group = 0;
            seps.push(b);
            continue;
        }
        chars.push(b.to_ascii_uppercase());
        group += 1;
        if chars.len() == want {
            end = i + 1;
            break;
        }
    }
    if chars.len() != want {
        return None;
    }
    let printed = &s.as_bytes()[..end];
    let lower = printed.iter().any(u8::is_ascii_lowercase);
    if lower && printed.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    if (lower || seps.contains(&b'-'))
        && !seps.is_empty()
        && (groups.iter().any(|&g| g != 4) || group > 4 || seps.iter().any(|&x| x != seps[0]))
    {
        return None;
    }
    if text
        .as_bytes()
        .get(start + end)
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return None;
    }
    // Lower case and all hex digits at an id's length: a span id or a digest (`be71…` is Belgium's length), not an
    // IBAN, which is printed in capitals.
    let compact = &text[start..start + end];
    if compact.len() == want
        && HEX_ID_LENS.contains(&want)
        && compact
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    iban_checksum(&chars).then_some((start, start + end))
}

/// Lengths of hex identifiers: span ids (16), object ids (24), trace ids and MD5 (32), SHA-1 (40), SHA-224 (56),
/// SHA-256 (64), SHA-384 (96), SHA-512 (128).
const HEX_ID_LENS: [usize; 8] = [16, 24, 32, 40, 56, 64, 96, 128];

/// Evidence that the number `text[start..end]` is part of an identifier rather than a number of its own: the run of
/// ASCII letters and digits it continues is a hex id of a standard length (a span or trace id, a digest, an object
/// id), or it lies inside a UUID. Nothing else is evidence: a card after `cc_`, `ref#`, `/cards/`, `ORD-`, a letter
/// or any non-ASCII text is still a card.
pub(crate) fn in_identifier(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let mut l = start;
    while l > 0 && b[l - 1].is_ascii_alphanumeric() && start - l <= 128 {
        l -= 1;
    }
    let mut r = end;
    while r < b.len() && b[r].is_ascii_alphanumeric() && r - end <= 128 {
        r += 1;
    }
    let hex_id =
        (l < start || r > end) && HEX_ID_LENS.contains(&(r - l)) && b[l..r].iter().all(u8::is_ascii_hexdigit);
    hex_id || in_uuid(b, start, end)
}

/// Whether `b[start..end]` lies inside a UUID (`8-4-4-4-12` hex digits).
fn in_uuid(b: &[u8], start: usize, end: usize) -> bool {
    let is_uuid = |u: &[u8]| {
        u.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
    };
    end - start <= 36 && (end.saturating_sub(36)..=start).any(|l| b.get(l..l + 36).is_some_and(is_uuid))
}

/// How far before a bare SSN its evidence may be (bytes): `SSN: `, `social security number of the customer is `.
const SSN_KEYWORD_REACH: usize = 48;

/// Evidence for a bare nine-digit SSN at `start`: the text just before it names one.
pub(crate) fn ssn_evidence(text: &str, start: usize) -> bool {
    let mut from = start.saturating_sub(SSN_KEYWORD_REACH);
    while !text.is_char_boundary(from) {
        from += 1;
    }
    names_ssn(&text[from..start])
}

/// Whether `s` names a Social Security number: `ssn` as a word or a part of a name (`SSN:`, `ssn=`, `user_ssn`,
/// `userSsn`, `SSNs`; not `classname`), or `social security` in any spelling of the space.
pub(crate) fn names_ssn(s: &str) -> bool {
    let b = s.as_bytes();
    for i in 0..b.len().saturating_sub(2) {
        if !b[i..i + 3].eq_ignore_ascii_case(b"ssn") {
            continue;
        }
        let camel = |x: u8, y: u8| x.is_ascii_lowercase() && y.is_ascii_uppercase();
        let starts = i == 0 || !b[i - 1].is_ascii_alphabetic() || camel(b[i - 1], b[i]);
        let ends = match b.get(i + 3) {
            None => true,
            Some(b's') => b.get(i + 4).is_none_or(|c| !c.is_ascii_alphabetic()),
            Some(&c) => !c.is_ascii_alphabetic() || camel(b[i + 2], c),
        };
        if starts && ends {
            return true;
        }
    }
    let lower = s.to_ascii_lowercase();
    [
        "social security",
        "social_security",
        "socialsecurity",
        "social-security",
        "soc. sec",
        "soc sec",
    ]
    .iter()
    .any(|k| lower.contains(k))
}

/// How far after a `secret` keyword an AWS secret access key may start (bytes): `aws_secret_access_key = `,
/// `"SecretAccessKey": "`.
const AWS_SECRET_AFTER_KEYWORD: usize = 100;
/// How far from an access key id (`AKIA…`, `ASIA…`) its secret may be, either side (bytes): the next line of a
/// credentials file, another member of the same object.
const AWS_SECRET_NEAR_ID: usize = 256;

/// An AWS secret access key near the evidence at `p`: 40 characters of base64 that mix cases and digits, within
/// [`AWS_SECRET_AFTER_KEYWORD`] after a `secret` keyword (`aws_secret_access_key=`, a credentials file's line,
/// `SecretAccessKey`) or within [`AWS_SECRET_NEAR_ID`] of an access key id. A 40-character string without such
/// evidence is not one (it is as likely an id or a digest).
pub(crate) fn aws_secret_near(text: &str, p: usize) -> Option<(usize, usize)> {
    let floor = |i: usize| {
        let mut i = i.min(text.len());
        while !text.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let id = text[p..].starts_with("AKIA") || text[p..].starts_with("ASIA");
    let (ws, we) = if id {
        (
            floor(p.saturating_sub(AWS_SECRET_NEAR_ID)),
            floor(p + 20 + AWS_SECRET_NEAR_ID),
        )
    } else {
        (p, floor(p + AWS_SECRET_AFTER_KEYWORD))
    };
    let w = &text[ws..we];
    let re = pattern(Builtin::AwsSecretKey);
    let mut at = 0;
    while let Some(c) = re.captures_at(w, at) {
        let g = c.get(1)?;
        if let Some(r) = Builtin::AwsSecretKey.validate(text, ws + g.start(), ws + g.end()) {
            return Some(r);
        }
        at = g.end();
    }
    None
}

/// A character of an address's local part (unquoted): letters, digits and combining marks of any script, `._%+-'`.
pub(crate) fn is_local_char(c: char) -> bool {
    c.is_alphanumeric() || "._%+-'".contains(c) || ('\u{300}'..='\u{36f}').contains(&c)
}

/// An address's domain after its `@`: labels of letters, digits and marks of any script (IDN as written, or its
/// `xn--` form), and a top-level domain of letters. Label lengths and ends are checked by `email_at` (counted
/// repetitions over Unicode classes would compile to automata of megabytes).
static EMAIL_DOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    // A constant pattern, checked by the unit tests.
    Regex::new(concat!(
        r"\A(?:[\p{L}\p{N}][\p{L}\p{N}\p{M}\-]*\.)+",
        r"(?:[Xx][Nn]--[A-Za-z0-9\-]+|\p{L}[\p{L}\p{M}]+)"
    ))
    .expect("the email domain pattern compiles")
});

/// The address around the `@` at `p`, validated: the local part walked back from it (a dot-atom of at most 64 bytes,
/// or a quoted string, `\"…\"` in JSON-escaped text), the domain matched after it.
pub(crate) fn email_at(text: &str, p: usize) -> Option<(usize, usize)> {
    let mut dom_end = (p + 1 + 255).min(text.len());
    while !text.is_char_boundary(dom_end) {
        dom_end -= 1;
    }
    let m = EMAIL_DOMAIN.find(text.get(p + 1..dom_end)?)?;
    // Labels of at most 63 characters, none ending with `-` (the TLD and an `xn--` label included).
    if m.as_str()
        .split('.')
        .any(|l| l.chars().count() > 63 || l.ends_with('-'))
    {
        return None;
    }
    let end = p + 1 + m.end();
    let head = &text[..p];
    let start = if head.ends_with('"') {
        quoted_local(head)?
    } else {
        let mut st = p;
        for (i, c) in head.char_indices().rev() {
            if p - i > 64 || !is_local_char(c) {
                break;
            }
            st = i;
        }
        // A quote before the address (`'jane@x.io'`) is not part of it.
        while head[st..].starts_with('\'') {
            st += 1;
        }
        st
    };
    if start == p {
        return None;
    }
    Builtin::Email.validate(text, start, end)
}

/// Where the quoted local part that `head` ends with starts: its opening quote (or the backslash before it, when
/// the quotes are JSON-escaped), within 66 bytes and on the same line.
fn quoted_local(head: &str) -> Option<usize> {
    let b = head.as_bytes();
    let close = b.len().checked_sub(1)?;
    let mut i = close;
    while i > 0 && close - i < 66 {
        i -= 1;
        match b[i] {
            b'"' => {
                let escaped = i > 0 && b[i - 1] == b'\\' && b[close - 1] == b'\\';
                return Some(if escaped { i - 1 } else { i });
            }
            b'\r' | b'\n' => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(PATTERNS.len(), Builtin::ALL.len());
        for b in Builtin::ALL {
            assert_eq!(Builtin::from_name(b.name()), Some(b));
        }
    }

    /// `check` holds on every one of `good` and on none of `bad`.
    #[track_caller]
    fn holds_only_on(check: fn(&[u8]) -> bool, good: &[&str], bad: &[&str]) {
        for g in good {
            assert!(check(g.as_bytes()), "{g}");
        }
        for b in bad {
            assert!(!check(b.as_bytes()), "{b}");
        }
    }

    #[test]
    fn luhn_accepts_valid_and_refuses_changed_numbers() {
        holds_only_on(
            luhn,
            &["4111111111111111", "378282246310005"],
            &["4111111111111112", ""],
        );
    }

    #[test]
    fn ssn_rules() {
        let bad = [
            "000456789",
            "666456789",
            "900456789",
            "123006789",
            "123450000",
            "12345678",
        ];
        holds_only_on(ssn_digits, &["123456789"], &bad);
    }

    #[test]
    fn iban_mod_97() {
        let good = ["DE89370400440532013000", "GB82WEST12345698765432"];
        holds_only_on(
            iban_checksum,
            &good,
            &["DE89370400440532013001", "GB82WEST1234569876543!"],
        );
    }

    #[test]
    fn card_issuers() {
        let good = ["4111111111111111", "378282246310005", "2221000000000009"];
        // Epoch microseconds; no issuer's prefix; Visa has no 14-digit numbers.
        let bad = ["1764645333123456", "9111111111111111", "41111111111111"];
        holds_only_on(card_issuer, &good, &bad);
    }
}
