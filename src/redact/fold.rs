//! The normalised view of a string that the detectors scan, and the way back to the original's byte ranges. Pure.
//!
//! A value can be spelled so that it reads the same to a person but not to a byte pattern: full-width digits
//! (`４１１１…`), digits of another script, a full-width `＠`, a no-break or thin space, an en dash or a minus sign
//! between groups, an invisible zero-width character inside a number. [`fold`] rewrites such characters into the
//! ASCII the detectors know (the compatibility mapping of NFKC for digits, `@`, `.` and `-`, every Unicode space as
//! a space, every dash as `-`) and removes invisible format characters, remembering where each rewritten character
//! came from, so that a match in the view maps back to a range of the original that covers every character of it.
//! Other characters (letters of any script, an IDN domain's labels) are kept as they are.

/// What a range of non-ASCII characters reads as.
#[derive(Debug, Clone, Copy)]
enum To {
    /// This ASCII byte.
    Byte(u8),
    /// A decimal digit: this one for the range's first character, the next ones for the characters after it.
    Digit(u8),
    /// The ASCII character whose full-width form it is (NFKC maps U+FF01..U+FF5E one to one).
    FullWidth,
    /// Nothing: an invisible format character.
    Drop,
}

/// Every non-ASCII character the view rewrites, in ranges sorted by code point:
/// - digits: every character with a decimal digit value in Unicode 14 (all scripts' digits, the mathematical
///   digits) and those whose NFKC form is one ASCII digit (superscripts, subscripts, circled digits), generated with
///   Python's `unicodedata`;
/// - the full-width forms of ASCII (digits, letters, `＠`, `．`, `－`, ...);
/// - every Unicode space (Zs) as a space; hyphens, dashes and minus signs as `-`; the full stops NFKC or IDNA read as
///   `.`; `﹫` as `@`;
/// - invisible format characters (soft hyphen, zero-width spaces and joiners, direction marks and isolates, word
///   joiner, byte order mark), removed: a number or an address reads the same without them.
const FOLDS: &[(u32, u32, To)] = &[
    (0xA0, 0xA0, To::Byte(b' ')),
    (0xAD, 0xAD, To::Drop),
    (0xB2, 0xB3, To::Digit(2)),
    (0xB9, 0xB9, To::Digit(1)),
    (0x34F, 0x34F, To::Drop),
    (0x61C, 0x61C, To::Drop),
    (0x660, 0x669, To::Digit(0)),
    (0x6F0, 0x6F9, To::Digit(0)),
    (0x7C0, 0x7C9, To::Digit(0)),
    (0x966, 0x96F, To::Digit(0)),
    (0x9E6, 0x9EF, To::Digit(0)),
    (0xA66, 0xA6F, To::Digit(0)),
    (0xAE6, 0xAEF, To::Digit(0)),
    (0xB66, 0xB6F, To::Digit(0)),
    (0xBE6, 0xBEF, To::Digit(0)),
    (0xC66, 0xC6F, To::Digit(0)),
    (0xCE6, 0xCEF, To::Digit(0)),
    (0xD66, 0xD6F, To::Digit(0)),
    (0xDE6, 0xDEF, To::Digit(0)),
    (0xE50, 0xE59, To::Digit(0)),
    (0xED0, 0xED9, To::Digit(0)),
    (0xF20, 0xF29, To::Digit(0)),
    (0x1040, 0x1049, To::Digit(0)),
    (0x1090, 0x1099, To::Digit(0)),
    (0x1680, 0x1680, To::Byte(b' ')),
    (0x17E0, 0x17E9, To::Digit(0)),
    (0x180E, 0x180E, To::Drop),
    (0x1810, 0x1819, To::Digit(0)),
    (0x1946, 0x194F, To::Digit(0)),
    (0x19D0, 0x19D9, To::Digit(0)),
    (0x1A80, 0x1A89, To::Digit(0)),
    (0x1A90, 0x1A99, To::Digit(0)),
    (0x1B50, 0x1B59, To::Digit(0)),
    (0x1BB0, 0x1BB9, To::Digit(0)),
    (0x1C40, 0x1C49, To::Digit(0)),
    (0x1C50, 0x1C59, To::Digit(0)),
    (0x2000, 0x200A, To::Byte(b' ')),
    (0x200B, 0x200F, To::Drop),
    (0x2010, 0x2015, To::Byte(b'-')),
    (0x2024, 0x2024, To::Byte(b'.')),
    (0x202A, 0x202E, To::Drop),
    (0x202F, 0x202F, To::Byte(b' ')),
    (0x2043, 0x2043, To::Byte(b'-')),
    (0x205F, 0x205F, To::Byte(b' ')),
    (0x2060, 0x2064, To::Drop),
    (0x2066, 0x206F, To::Drop),
    (0x2070, 0x2070, To::Digit(0)),
    (0x2074, 0x2079, To::Digit(4)),
    (0x2080, 0x2089, To::Digit(0)),
    (0x2212, 0x2212, To::Byte(b'-')),
    (0x2460, 0x2468, To::Digit(1)),
    (0x24EA, 0x24EA, To::Digit(0)),
    (0x2E3A, 0x2E3B, To::Byte(b'-')),
    (0x3000, 0x3000, To::Byte(b' ')),
    (0x3002, 0x3002, To::Byte(b'.')),
    (0xA620, 0xA629, To::Digit(0)),
    (0xA8D0, 0xA8D9, To::Digit(0)),
    (0xA900, 0xA909, To::Digit(0)),
    (0xA9D0, 0xA9D9, To::Digit(0)),
    (0xA9F0, 0xA9F9, To::Digit(0)),
    (0xAA50, 0xAA59, To::Digit(0)),
    (0xABF0, 0xABF9, To::Digit(0)),
    (0xFE52, 0xFE52, To::Byte(b'.')),
    (0xFE58, 0xFE58, To::Byte(b'-')),
    (0xFE63, 0xFE63, To::Byte(b'-')),
    (0xFE6B, 0xFE6B, To::Byte(b'@')),
    (0xFEFF, 0xFEFF, To::Drop),
    (0xFF01, 0xFF5E, To::FullWidth),
    (0xFF61, 0xFF61, To::Byte(b'.')),
    (0x104A0, 0x104A9, To::Digit(0)),
    (0x10D30, 0x10D39, To::Digit(0)),
    (0x11066, 0x1106F, To::Digit(0)),
    (0x110F0, 0x110F9, To::Digit(0)),
    (0x11136, 0x1113F, To::Digit(0)),
    (0x111D0, 0x111D9, To::Digit(0)),
    (0x112F0, 0x112F9, To::Digit(0)),
    (0x11450, 0x11459, To::Digit(0)),
    (0x114D0, 0x114D9, To::Digit(0)),
    (0x11650, 0x11659, To::Digit(0)),
    (0x116C0, 0x116C9, To::Digit(0)),
    (0x11730, 0x11739, To::Digit(0)),
    (0x118E0, 0x118E9, To::Digit(0)),
    (0x11950, 0x11959, To::Digit(0)),
    (0x11C50, 0x11C59, To::Digit(0)),
    (0x11D50, 0x11D59, To::Digit(0)),
    (0x11DA0, 0x11DA9, To::Digit(0)),
    (0x16A60, 0x16A69, To::Digit(0)),
    (0x16AC0, 0x16AC9, To::Digit(0)),
    (0x16B50, 0x16B59, To::Digit(0)),
    (0x1D7CE, 0x1D7D7, To::Digit(0)),
    (0x1D7D8, 0x1D7E1, To::Digit(0)),
    (0x1D7E2, 0x1D7EB, To::Digit(0)),
    (0x1D7EC, 0x1D7F5, To::Digit(0)),
    (0x1D7F6, 0x1D7FF, To::Digit(0)),
    (0x1E140, 0x1E149, To::Digit(0)),
    (0x1E2F0, 0x1E2F9, To::Digit(0)),
    (0x1E950, 0x1E959, To::Digit(0)),
    (0x1FBF0, 0x1FBF9, To::Digit(0)),
];

/// One bit per block of 256 code points below U+20000: set when the block holds a character of [`FOLDS`], so the
/// letters of most scripts are passed over without a lookup.
const BLOCKS: [u64; 8] = {
    let mut bits = [0u64; 8];
    let mut i = 0;
    while i < FOLDS.len() {
        let mut block = FOLDS[i].0 >> 8;
        while block <= FOLDS[i].1 >> 8 {
            bits[(block / 64) as usize] |= 1 << (block % 64);
            block += 1;
        }
        i += 1;
    }
    bits
};

/// What a non-ASCII character reads as: `None` kept as it is, `Some(None)` removed (invisible), `Some(Some(b))` the
/// ASCII byte `b`.
fn fold_char(c: char) -> Option<Option<u8>> {
    let u = c as u32;
    let block = u >> 8;
    if block >= 512 || BLOCKS[(block / 64) as usize] & (1 << (block % 64)) == 0 {
        return None;
    }
    let i = FOLDS.partition_point(|&(_, last, _)| last < u);
    let &(first, _, to) = FOLDS.get(i).filter(|r| r.0 <= u)?;
    // Within a range, `u - first` is small (ranges are at most 94 characters long).
    let k = (u - first) as u8;
    Some(match to {
        To::Byte(b) => Some(b),
        To::Digit(d) => Some(b'0' + d + k),
        To::FullWidth => Some(0x21 + k),
        To::Drop => None,
    })
}

/// One rewritten character of the original.
#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Where its replacement starts in the view.
    at: usize,
    /// Where it starts in the original.
    orig: usize,
    /// Its length in the original (bytes).
    orig_len: usize,
    /// Its replacement's length in the view (0: removed, 1: an ASCII byte).
    len: usize,
}

/// A string's normalised view, with the way back to the original.
#[derive(Debug)]
pub(crate) struct Folded {
    /// The view the detectors scan.
    pub(crate) text: String,
    marks: Vec<Mark>,
}

/// The normalised view of `s`, or `None` when no character of it changes (then `s` is its own view).
pub(crate) fn fold(s: &str) -> Option<Folded> {
    let mut out: Option<Folded> = None;
    let mut copied = 0;
    let bytes = s.as_bytes();
    let mut next = 0;
    // Only non-ASCII characters can change: hop from one to the next.
    while let Some(off) = bytes.get(next..).and_then(|b| b.iter().position(|&x| x >= 0x80)) {
        let i = next + off;
        let Some(c) = s.get(i..).and_then(|t| t.chars().next()) else {
            break;
        };
        next = i + c.len_utf8();
        let Some(to) = fold_char(c) else { continue };
        let f = out.get_or_insert_with(|| Folded {
            text: String::with_capacity(s.len()),
            marks: Vec::new(),
        });
        f.text.push_str(&s[copied..i]);
        let at = f.text.len();
        if let Some(b) = to {
            f.text.push(char::from(b));
        }
        f.marks.push(Mark {
            at,
            orig: i,
            orig_len: c.len_utf8(),
            len: usize::from(to.is_some()),
        });
        copied = i + c.len_utf8();
    }
    let mut f = out?;
    f.text.push_str(&s[copied..]);
    Some(f)
}

impl Folded {
    /// The original range that the view's range `start..end` (char boundaries of the view) came from: from the start
    /// of the character that produced its first byte to the end of the one that produced its last, so a
    /// replacement of the original range covers every character of the match (removed ones inside it too).
    pub(crate) fn original(&self, start: usize, end: usize) -> (usize, usize) {
        let s = self.locate(start).0;
        if end <= start {
            return (s, s);
        }
        (s, self.locate(end - 1).1)
    }

    /// The original character (start, end) that produced the view's byte `v`.
    fn locate(&self, v: usize) -> (usize, usize) {
        let i = self.marks.partition_point(|m| m.at <= v);
        let Some(m) = i.checked_sub(1).and_then(|i| self.marks.get(i)) else {
            // Before the first rewritten character, the view is the original.
            return (v, v + 1);
        };
        if v < m.at + m.len {
            return (m.orig, m.orig + m.orig_len);
        }
        // Copied unchanged after `m`: byte for byte.
        let o = m.orig + m.orig_len + (v - m.at - m.len);
        (o, o + 1)
    }
}

/// `s` as the detectors read it: borrowed when nothing changes.
#[cfg(test)]
pub(crate) fn view(s: &str) -> std::borrow::Cow<'_, str> {
    match fold(s) {
        Some(f) => std::borrow::Cow::Owned(f.text),
        None => std::borrow::Cow::Borrowed(s),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn the_table_is_sorted_and_every_character_in_it_folds() {
        for w in FOLDS.windows(2) {
            assert!(w[0].1 < w[1].0, "{:x?} overlaps or precedes {:x?}", w[0], w[1]);
        }
        for &(first, last, _) in FOLDS {
            assert!(last - first < 94);
            for u in first..=last {
                let c = char::from_u32(u).unwrap();
                assert!(fold_char(c).is_some(), "U+{u:04X}");
            }
        }
        assert_eq!(fold_char('é'), None);
        assert_eq!(fold_char('я'), None);
        assert_eq!(fold_char('\u{1F600}'), None);
    }

    #[test]
    fn digits_of_every_kind_read_as_ascii_digits() {
        assert_eq!(view("４１１１"), "4111");
        assert_eq!(view("٤١١١ ४१११ 𝟒𝟏𝟏𝟏 ④①①①"), "4111 4111 4111 4111");
        assert_eq!(view("x²"), "x2");
        assert_eq!(view("jane＠example．com"), "jane@example.com");
        assert_eq!(view("ｊａｎｅ﹫ｘ．ｉｏ"), "jane@x.io");
    }

    #[test]
    fn spaces_dashes_and_invisible_characters() {
        assert_eq!(
            view("4111\u{a0}1111\u{2009}1111\u{202f}1111"),
            "4111 1111 1111 1111"
        );
        assert_eq!(view("123\u{2013}45\u{2212}6789"), "123-45-6789");
        assert_eq!(view("41\u{200b}11\u{feff}1111"), "41111111");
        assert!(matches!(view("plain ascii"), Cow::Borrowed(_)));
        assert!(matches!(view("Grüße aus München, 東京"), Cow::Borrowed(_)));
    }

    #[test]
    fn view_ranges_map_back_over_whole_characters() {
        let s = "card ４１\u{200b}１１ end";
        let f = fold(s).unwrap();
        assert_eq!(f.text, "card 4111 end");
        let (a, b) = f.original(5, 9);
        assert_eq!(&s[a..b], "４１\u{200b}１１");
        // Unchanged text after the rewritten characters maps byte for byte.
        let (a, b) = f.original(10, 13);
        assert_eq!(&s[a..b], "end");
        // Before any rewritten character, too.
        let (a, b) = f.original(0, 4);
        assert_eq!(&s[a..b], "card");
        // Kept non-ASCII characters map as they are.
        let s = "ü４ü";
        let f = fold(s).unwrap();
        assert_eq!(f.text, "ü4ü");
        assert_eq!(f.original(2, 3), (2, 5));
        assert_eq!(f.original(3, 5), (5, 7));
    }
}
