//! The invariants of ARCHITECTURE.md that a test can check by reading the source tree (rust-analyzer's
//! `xtask/src/tidy.rs` is the model): SQL only in `src/store/`, domain modules never importing an edge, edges
//! importing no other edge but `server`, no two top-level modules importing each other, the tool-call phases named
//! alike in `proxy/pipeline.rs`, ARCHITECTURE.md and docs/request-lifecycle.md, a `//!` doc on every source file, a size limit on non-test code, and
//! no `unwrap()` on a non-test path.
//!
//! It reads files only (no server, no kla types), so it is its own small test binary rather than a module of
//! `tests/it`: `cargo test --test tidy` runs in a second. The source is read through a small lexer that blanks
//! comments and string literals (so a doc that names `crate::api` or a string holding `unwrap()` is not code) and
//! marks test code: items under `#[test]`/`#[cfg(test)]` (or a cfg that needs `test` or the `fuzzing` feature),
//! files declared by a `#[cfg(test)] mod x;`, files named `tests.rs` or under a `tests/` folder, and
//! `src/fuzzing*` (the fuzz targets' support, test code by purpose).
//!
//! Each exceptions list below is today's debt with its reason; a test fails when an entry no longer applies, so
//! the lists only shrink.
#![allow(clippy::expect_used, clippy::unwrap_used)] // A test: a tree that cannot be read is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The domain: modules that decide, record and prove, and know no transport. They may use each other, never an
/// edge ([`EDGES`]) or the composition root ([`COMPOSITION`]), so the REST API, the proxy, OTLP, the Desk and
/// executions can all sit on top of them. `config`, `telemetry`, `server` and the rest are neither: they are
/// infrastructure that the composition root wires (see ARCHITECTURE.md's invariants).
const DOMAIN: &[&str] = &[
    "approvals",
    "auth",
    "coord",
    "decide",
    "error",
    "events",
    "executions",
    "json",
    "ledger",
    "names",
    "policy",
    "recorder",
    "redact",
    "registry",
    "store",
    "time",
];

/// The edges: where requests arrive over a transport (and webhooks leave over one), each rendering the domain's
/// answers in its protocol.
const EDGES: &[&str] = &["api", "desk", "otlp", "proxy", "server", "webhooks"];

/// The composition root and the command line, which build everything; nothing below them may reach up.
const COMPOSITION: &[&str] = &["app", "cli"];

/// Domain files that import an edge today, with why and what removes it: `(file, edge module, reason)`. Empty:
/// every domain module already stays below the edges; an entry here is debt, never a way to land new code.
const EDGE_IMPORT_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// Pairs of top-level modules that import each other today: `(a, b, reason)`. Empty: every top-level module
/// depends one way; an entry here is debt, never a way to land new code.
const CYCLE_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// The edges that may import another edge: `(from, to, reason)`. Every edge receives its handles from the
/// composition root and shares HTTP plumbing only through `server`; anything else one edge needs of another
/// belongs in the domain or in `server`.
const EDGE_TO_EDGE: &[(&str, &str, &str)] = &[(
    "api",
    "desk",
    "the API accepts the Desk's session cookie on /v1 (its name and parser are the Desk's)",
)];

/// The size limit of a source file's non-test code, in lines (test items inside the file do not count): a file
/// past it is split by concern. Every file meets it today but those in [`SIZE_EXCEPTIONS`]; the next largest,
/// `config/mod.rs` and `ledger/log.rs`, are at 750-790.
const MAX_LINES: usize = 800;

/// Files over [`MAX_LINES`] today: `(file, ceiling, reason)`. The ceiling is today's size rounded up to the next
/// 25 lines, so the file may not keep growing; the reason says what split brings it under the limit (and then the
/// entry must go).
const SIZE_EXCEPTIONS: &[(&str, usize, &str)] = &[
    (
        "src/policy/engine.rs",
        850,
        "compiling `when`s to RVM programs, the per-thread VMs and the deadline/retry evaluation in one file: \
         split compile from run",
    ),
    (
        "src/redact/detectors.rs",
        850,
        "every detector's pattern, validator and evidence rule in one file: split secrets from personal data",
    ),
    (
        "src/redact/engine.rs",
        825,
        "the prefilter, the normalised view's scan and the JSON walk in one file: the JSON walk in its own file",
    ),
];

/// Where SQL may appear: the store is the only module that knows it.
const SQL_HOME: &str = "src/store/";

#[test]
fn sql_appears_only_in_the_store() {
    let mut bad = Vec::new();
    for f in sources() {
        if f.rel.starts_with(SQL_HOME) {
            continue;
        }
        for (line, _) in find_word(&f.code, "rusqlite") {
            bad.push(format!("{}:{line}", f.rel));
        }
    }
    assert!(
        bad.is_empty(),
        "\n`rusqlite` outside {SQL_HOME} (SQL lives only in the store; give the store a typed function instead):\n  {}\n",
        bad.join("\n  ")
    );
}

#[test]
fn domain_modules_never_import_an_edge() {
    let mut bad = Vec::new();
    let mut used = BTreeSet::new();
    for f in sources() {
        let Some(top) = f.top_module() else { continue };
        if !DOMAIN.contains(&top.as_str()) {
            continue;
        }
        for (line, target) in f.crate_imports() {
            if !EDGES.contains(&target.as_str()) && !COMPOSITION.contains(&target.as_str()) {
                continue;
            }
            let known = EDGE_IMPORT_EXCEPTIONS
                .iter()
                .position(|(p, m, _)| *p == f.rel && *m == target);
            match known {
                Some(i) => {
                    used.insert(i);
                }
                None => bad.push(format!(
                    "{}:{line}: domain module `{top}` imports `crate::{target}`",
                    f.rel
                )),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "\nA domain module imports an edge or the composition root (domain: {DOMAIN:?}; edges: {EDGES:?}; \
         composition: {COMPOSITION:?}). Move the shared piece into the domain, or pass a handle in:\n  {}\n",
        bad.join("\n  ")
    );
    let stale: Vec<_> = (0..EDGE_IMPORT_EXCEPTIONS.len())
        .filter(|i| !used.contains(i))
        .collect();
    assert!(
        stale.is_empty(),
        "\nEDGE_IMPORT_EXCEPTIONS entries that no longer apply (remove them): {:?}\n",
        stale
            .iter()
            .map(|&i| EDGE_IMPORT_EXCEPTIONS[i])
            .collect::<Vec<_>>()
    );
}

#[test]
fn edges_import_only_the_server_of_the_other_edges() {
    let mut bad = Vec::new();
    let mut used = BTreeSet::new();
    for f in sources() {
        let Some(top) = f.top_module() else { continue };
        if !EDGES.contains(&top.as_str()) || top == "server" || f.test_file {
            continue;
        }
        for (line, target) in f.crate_imports_outside_tests() {
            if target == top || target == "server" || !EDGES.contains(&target.as_str()) {
                continue;
            }
            match EDGE_TO_EDGE
                .iter()
                .position(|(a, b, _)| *a == top && *b == target)
            {
                Some(i) => {
                    used.insert(i);
                }
                None => bad.push(format!(
                    "{}:{line}: edge `{top}` imports edge `crate::{target}`",
                    f.rel
                )),
            }
        }
    }
    assert!(
        bad.is_empty(),
        "\nAn edge imports another edge (edges: {EDGES:?}). Each edge gets its handles from the composition root; \
         shared HTTP plumbing lives in `server`, shared rules in the domain:\n  {}\n",
        bad.join("\n  ")
    );
    let stale: Vec<_> = (0..EDGE_TO_EDGE.len()).filter(|i| !used.contains(i)).collect();
    assert!(
        stale.is_empty(),
        "\nEDGE_TO_EDGE entries that no longer apply (remove them): {:?}\n",
        stale.iter().map(|&i| EDGE_TO_EDGE[i]).collect::<Vec<_>>()
    );
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    // Who imports whom, with one place each import is made (for the message).
    let mut graph: BTreeMap<(String, String), String> = BTreeMap::new();
    for f in sources() {
        let Some(top) = f.top_module() else { continue };
        if f.test_file {
            continue;
        }
        for (line, target) in f.crate_imports_outside_tests() {
            if target != top && is_top_module(&target) {
                graph
                    .entry((top.clone(), target))
                    .or_insert_with(|| format!("{}:{line}", f.rel));
            }
        }
    }
    let mut bad = Vec::new();
    let mut found = BTreeSet::new();
    for ((a, b), at) in &graph {
        if a < b
            && let Some(back) = graph.get(&(b.clone(), a.clone()))
        {
            found.insert((a.clone(), b.clone()));
            if !CYCLE_EXCEPTIONS.iter().any(|(x, y, _)| x == a && y == b) {
                bad.push(format!("`{a}` <-> `{b}` ({at}; {back})"));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "\nTop-level modules that import each other (one of the two must depend on the other only, or both on a \
         third):\n  {}\n",
        bad.join("\n  ")
    );
    let stale: Vec<_> = CYCLE_EXCEPTIONS
        .iter()
        .filter(|(a, b, _)| !found.contains(&(a.to_string(), b.to_string())))
        .collect();
    assert!(
        stale.is_empty(),
        "\nCYCLE_EXCEPTIONS entries that no longer apply (remove them): {stale:?}\n"
    );
}

#[test]
fn every_source_file_has_its_module_doc() {
    let mut bad = Vec::new();
    for f in sources().into_iter().chain(rust_files("benches")) {
        // Test files document their tests; the module they test carries the doc.
        if f.test_file {
            continue;
        }
        let first = f
            .text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("#!["));
        if !first.is_some_and(|l| l.starts_with("//!")) {
            bad.push(f.rel.clone());
        }
    }
    assert!(
        bad.is_empty(),
        "\nSource files without a `//!` doc (say what the module owns and what it must not touch):\n  {}\n",
        bad.join("\n  ")
    );
}

#[test]
fn non_test_code_stays_under_the_size_limit() {
    let mut bad = Vec::new();
    let mut used = BTreeSet::new();
    for f in sources() {
        if f.test_file {
            continue;
        }
        let lines = f.non_test_lines();
        match SIZE_EXCEPTIONS.iter().position(|(p, _, _)| *p == f.rel) {
            Some(i) => {
                used.insert(i);
                let ceiling = SIZE_EXCEPTIONS[i].1;
                if lines > ceiling {
                    bad.push(format!(
                        "{}: {lines} non-test lines, over its listed ceiling of {ceiling}",
                        f.rel
                    ));
                } else if lines <= MAX_LINES {
                    bad.push(format!(
                        "{}: {lines} non-test lines, under the limit now: remove it from SIZE_EXCEPTIONS",
                        f.rel
                    ));
                }
            }
            None if lines > MAX_LINES => bad.push(format!(
                "{}: {lines} non-test lines, over the limit of {MAX_LINES}",
                f.rel
            )),
            None => {}
        }
    }
    assert!(
        bad.is_empty(),
        "\nFiles too large (split them by concern; tests in a `tests.rs` beside them do not count):\n  {}\n",
        bad.join("\n  ")
    );
    let stale: Vec<_> = (0..SIZE_EXCEPTIONS.len()).filter(|i| !used.contains(i)).collect();
    assert!(
        stale.is_empty(),
        "\nSIZE_EXCEPTIONS entries naming no file (remove them): {:?}\n",
        stale.iter().map(|&i| SIZE_EXCEPTIONS[i].0).collect::<Vec<_>>()
    );
}

#[test]
fn no_unwrap_on_a_non_test_path() {
    let mut bad = Vec::new();
    for f in sources() {
        if f.test_file {
            continue;
        }
        for (line, at) in find_word(&f.code, "unwrap") {
            if !f.is_test_at(at) && f.code[at + "unwrap".len()..].trim_start().starts_with("()") {
                bad.push(format!("{}:{line}", f.rel));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "\n`unwrap()` on a non-test path (return a classified error, or state why it cannot fail with \
         `expect(\"...\")` where the value is not input-driven):\n  {}\n",
        bad.join("\n  ")
    );
}

// ---- The scanner's own checks: each rule's reading of the code on small inputs.

#[test]
fn the_lexer_blanks_comments_and_strings_but_keeps_code_and_lines() {
    let src = "let a = \"x.unwrap() // no\"; // crate::api\nlet b = r#\"crate::proxy\"#; /* rusqlite /* nested */ */\n\
               let c = '\"'; let d: &'static str = x.unwrap(); let e = b'\"'; // \"unwrap()\n";
    let code = blank_comments_and_strings(src);
    assert_eq!(code.lines().count(), 3, "line count kept");
    assert!(!code.contains("crate::api") && !code.contains("crate::proxy") && !code.contains("rusqlite"));
    assert_eq!(
        find_word(&code, "unwrap").len(),
        1,
        "only the call on line 3: {code}"
    );
    assert_eq!(find_word(&code, "unwrap")[0].0, 3);
    assert!(code.contains("&'static str"), "a lifetime is code: {code}");
}

#[test]
fn test_items_are_masked_and_the_rest_is_not() {
    let f = SourceFile::new(
        "src/decide/x.rs".into(),
        "//! doc\nfn real() { a.unwrap(); }\n#[cfg(test)]\nmod tests {\n    fn t() { b.unwrap(); }\n}\n\
         #[cfg(not(test))]\nfn prod() { c.unwrap(); }\n#[cfg(any(test, feature = \"fuzzing\"))]\nfn helper() {}\n\
         #[tokio::test]\nasync fn t2() { d.unwrap(); }\n"
            .into(),
    );
    let calls: Vec<_> = find_word(&f.code, "unwrap")
        .into_iter()
        .filter(|&(_, at)| !f.is_test_at(at))
        .map(|(line, _)| line)
        .collect();
    assert_eq!(calls, vec![2, 8]);
    assert_eq!(f.non_test_lines(), 4, "lines 1, 2, 7 and 8");
}

#[test]
fn crate_paths_are_resolved_through_groups_and_super() {
    let f = SourceFile::new(
        "src/decide/phase.rs".into(),
        "//! doc\nuse crate::{policy::{self, X}, api::Y};\nuse super::super::proxy::Z;\nuse super::sibling;\n\
         fn f() { crate::otlp::g(); }\n// crate::desk in a comment\n"
            .into(),
    );
    let got: Vec<_> = f.crate_imports().into_iter().map(|(_, m)| m).collect();
    assert_eq!(got, vec!["policy", "api", "proxy", "otlp"]);
}

// ---- Reading the tree.

/// One Rust file: its text, the same text with comments and strings blanked, and which byte ranges are test code.
struct SourceFile {
    /// Path relative to the package root, with `/` separators.
    rel: String,
    text: String,
    code: String,
    /// The whole file is test code.
    test_file: bool,
    /// Byte ranges of `code` that are test items.
    test_ranges: Vec<(usize, usize)>,
    /// Modules this file declares under a test cfg (`#[cfg(test)] mod x;`): their files are test files.
    test_children: Vec<String>,
}

impl SourceFile {
    fn new(rel: String, text: String) -> Self {
        let code = blank_comments_and_strings(&text);
        let name = rel.rsplit('/').next().unwrap_or_default();
        let test_file = name == "tests.rs"
            || rel.split('/').rev().skip(1).any(|d| d == "tests")
            || rel.starts_with("src/fuzzing");
        let mut f = SourceFile {
            rel,
            text,
            code,
            test_file,
            test_ranges: Vec::new(),
            test_children: Vec::new(),
        };
        f.mark_test_items();
        f
    }

    /// The top-level module under `src/` this file belongs to (`src/names.rs` and `src/names/ids.rs`: `names`).
    fn top_module(&self) -> Option<String> {
        let rest = self.rel.strip_prefix("src/")?;
        let first = rest.split('/').next()?;
        let name = first.strip_suffix(".rs").unwrap_or(first);
        (!matches!(name, "lib" | "main")).then(|| name.to_string())
    }

    /// How many `super`s reach the crate root from this file (`src/a/b.rs`: 2, `src/a/mod.rs` and `src/a.rs`: 1).
    fn depth(&self) -> usize {
        let rest = self.rel.strip_prefix("src/").unwrap_or(&self.rel);
        let parts: Vec<_> = rest.split('/').collect();
        match parts.last() {
            Some(&"mod.rs") => parts.len() - 1,
            _ if parts.len() == 1 && matches!(parts[0], "lib.rs" | "main.rs") => 0,
            _ => parts.len(),
        }
    }

    fn is_test_at(&self, at: usize) -> bool {
        self.test_file || self.test_ranges.iter().any(|&(s, e)| s <= at && at < e)
    }

    /// Lines holding non-test code (test items' lines do not count; the file's other lines all do).
    fn non_test_lines(&self) -> usize {
        if self.test_file {
            return 0;
        }
        let mut start = 0;
        self.code
            .split_inclusive('\n')
            .filter(|l| {
                let at = start;
                start += l.len();
                let first_code = l.find(|c: char| !c.is_whitespace()).map_or(at, |i| at + i);
                !self.is_test_at(first_code)
            })
            .count()
    }

    /// Every crate-level module this file names through `crate::` or enough `super::`s, with its line.
    fn crate_imports(&self) -> Vec<(usize, String)> {
        self.crate_paths()
            .into_iter()
            .map(|(line, _, m)| (line, m))
            .collect()
    }

    fn crate_imports_outside_tests(&self) -> Vec<(usize, String)> {
        self.crate_paths()
            .into_iter()
            .filter(|&(_, at, _)| !self.is_test_at(at))
            .map(|(line, _, m)| (line, m))
            .collect()
    }

    /// `(line, byte offset, crate-level module)` of every path from the crate root.
    fn crate_paths(&self) -> Vec<(usize, usize, String)> {
        let mut out = Vec::new();
        for (line, at) in find_word(&self.code, "crate") {
            if let Some(rest) = self.code[at + "crate".len()..].trim_start().strip_prefix("::") {
                first_segments(rest, &mut |m| out.push((line, at, m)));
            }
        }
        let depth = self.depth();
        for (line, at) in find_word(&self.code, "super") {
            // Count the whole chain from its first `super` only.
            if self.code[..at].trim_end().ends_with("::") {
                continue;
            }
            let mut rest = &self.code[at..];
            let mut n = 0;
            while let Some(r) = rest
                .strip_prefix("super")
                .and_then(|r| r.trim_start().strip_prefix("::"))
            {
                n += 1;
                rest = r.trim_start();
            }
            if n > 0 && n >= depth {
                first_segments(rest, &mut |m| out.push((line, at, m)));
            }
        }
        out.sort_by_key(|&(_, at, _)| at);
        out
    }

    /// Marks every item under a test attribute, and the files of test modules declared without a body.
    fn mark_test_items(&mut self) {
        let b = self.code.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] != b'#' {
                i += 1;
                continue;
            }
            let inner = b.get(i + 1) == Some(&b'!');
            let open = if inner { i + 2 } else { i + 1 };
            if b.get(open) != Some(&b'[') {
                i += 1;
                continue;
            }
            let Some(close) = matching(b, open) else { return };
            // The attribute's own text: a cfg's feature name is a string, blank in `code`.
            if !is_test_attr(&self.text[open + 1..close]) {
                i = close + 1;
                continue;
            }
            if inner {
                self.test_file = true;
                return;
            }
            let end = item_end(b, close + 1);
            let item = &self.code[close + 1..end];
            if let Some(name) = body_less_mod(item) {
                self.test_children.push(name);
            }
            self.test_ranges.push((i, end));
            i = end;
        }
    }
}

/// Whether an attribute's content makes its item test code: `test`, `tokio::test(..)`, or a `cfg` that needs
/// `test` or the `fuzzing` feature (`cfg(not(test))` is production code).
fn is_test_attr(attr: &str) -> bool {
    let attr: String = attr.chars().filter(|c| !c.is_whitespace()).collect();
    let path = attr.split(['(', '=']).next().unwrap_or_default();
    if path == "test" || path.ends_with("::test") {
        return true;
    }
    let Some(pred) = attr.strip_prefix("cfg(") else {
        return false;
    };
    let mut positive = pred.to_string();
    while let Some(s) = positive.find("not(") {
        let e = matching(positive.as_bytes(), s + 3).unwrap_or(positive.len() - 1);
        positive.replace_range(s..=e, "");
    }
    positive.contains("feature=\"fuzzing\"") || !find_word(&positive, "test").is_empty()
}

/// Where an item that starts at `from` ends: after its first `;` at depth 0, or after the `}` matching its first
/// `{` (further attributes before the item are part of it).
fn item_end(b: &[u8], from: usize) -> usize {
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'(' | b'[' => depth += 1,
            b')' | b']' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => return i + 1,
            b'{' if depth == 0 => return matching(b, i).map_or(b.len(), |e| e + 1),
            _ => {}
        }
        i += 1;
    }
    b.len()
}

/// `mod name;` (with any attributes or visibility before it): the module's name.
fn body_less_mod(item: &str) -> Option<String> {
    let item = item.trim().strip_suffix(';')?;
    let mut words = item.split_whitespace().rev();
    let name = words.next()?;
    (words.next() == Some("mod")).then(|| name.to_string())
}

/// The index of the bracket closing the one at `open` (`(`, `[` or `{`), counting all three kinds.
fn matching(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &c) in b.iter().enumerate().skip(open) {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The first segment of a path (`api::x`: `api`) or of each path of a group (`{api::x, policy}`: `api`, `policy`).
fn first_segments(rest: &str, out: &mut dyn FnMut(String)) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let b = group.as_bytes();
        let mut depth = 0usize;
        let mut start = 0;
        for (i, &c) in b.iter().enumerate() {
            match c {
                b'{' => depth += 1,
                b'}' if depth == 0 => {
                    first_segments(&group[start..i], out);
                    return;
                }
                b'}' => depth -= 1,
                b',' if depth == 0 => {
                    first_segments(&group[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if !ident.is_empty() && ident != "self" {
        out(ident);
    }
}

fn is_top_module(name: &str) -> bool {
    DOMAIN.contains(&name)
        || EDGES.contains(&name)
        || COMPOSITION.contains(&name)
        || ["config", "telemetry", "fuzzing"].contains(&name)
}

/// Every occurrence of `word` as a whole identifier: `(line, byte offset)`.
fn find_word(code: &str, word: &str) -> Vec<(usize, usize)> {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = code.as_bytes();
    let mut out = Vec::new();
    let mut line = 1;
    let mut last = 0;
    for (at, _) in code.match_indices(word) {
        let before = at.checked_sub(1).map(|i| b[i]);
        let after = b.get(at + word.len()).copied();
        if before.is_some_and(ident) || after.is_some_and(ident) {
            continue;
        }
        line += code[last..at].matches('\n').count();
        last = at;
        out.push((line, at));
    }
    out
}

/// The text with every comment and string or char literal replaced by spaces (newlines kept, so lines and byte
/// offsets stay those of the file).
fn blank_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to.min(b.len())] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &b[i..];
        if rest.starts_with(b"//") {
            let end = rest.iter().position(|&c| c == b'\n').map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if rest.starts_with(b"/*") {
            let mut depth = 0;
            let mut j = i;
            while j < b.len() {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some(hashes) = raw_string_start(b, i) {
            // r"..", r#".."#, br#".."#: no escapes; ends at `"` followed by as many `#`.
            let open = b[i..].iter().position(|&c| c == b'"').map_or(b.len(), |p| i + p);
            let closing: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            let end = b[open + 1..]
                .windows(closing.len())
                .position(|w| w == closing.as_slice())
                .map_or(b.len(), |p| open + 1 + p + closing.len());
            blank(&mut out, open, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if b[i] == b'\'' && !in_identifier(b, i) {
            // A char literal ('a', '\n', '\u{1F600}', '"') or a lifetime ('a, 'static): a literal closes with a
            // `'` right after its one (possibly escaped, possibly multi-byte) char.
            if b.get(i + 1) == Some(&b'\\') {
                let end = b[i + 2..]
                    .iter()
                    .position(|&c| c == b'\'')
                    .map_or(b.len(), |p| i + 2 + p + 1);
                blank(&mut out, i, end);
                i = end;
            } else {
                let ch_len = text[i + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(i + 1 + ch_len) == Some(&b'\'') {
                    blank(&mut out, i, i + 2 + ch_len);
                    i += 2 + ch_len;
                } else {
                    i += 1;
                }
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Whether the `'` at `i` ends an identifier (`x'`), so it starts no literal; a byte literal's `b` (`b'"'`) does
/// not count.
fn in_identifier(b: &[u8], i: usize) -> bool {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    match i.checked_sub(1).map(|p| b[p]) {
        Some(b'b') => i >= 2 && ident(b[i - 2]),
        Some(c) => ident(c),
        None => false,
    }
}

/// At a raw string's start (`r"`, `r#"`, `br##"`, ...) not inside an identifier: how many `#`s it uses.
fn raw_string_start(b: &[u8], i: usize) -> Option<usize> {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut j = i;
    if matches!(b.get(j), Some(b'b' | b'c')) {
        j += 1;
    }
    if b.get(j) != Some(&b'r') || (i > 0 && ident(b[i - 1])) {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    (b.get(j + hashes) == Some(&b'"')).then_some(hashes)
}

/// The phases of a tool call, in order, as `src/proxy/pipeline.rs`'s module doc lists them (`N. **name**`).
fn pipeline_phases() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("src/proxy/pipeline.rs")).expect("pipeline.rs");
    text.lines()
        .filter_map(|l| l.strip_prefix("//! "))
        .filter_map(|l| {
            let (n, rest) = l.split_once(". **")?;
            n.trim().parse::<u32>().ok()?;
            Some(rest.split_once("**")?.0.to_string())
        })
        .collect()
}

#[test]
fn the_proxy_phases_have_one_set_of_names_in_the_code_and_the_docs() {
    let code = pipeline_phases();
    assert!(
        code.len() >= 7,
        "pipeline.rs lists its phases as `N. **name**`: {code:?}"
    );
    // docs/request-lifecycle.md: the first column of the proxy's phase table, in order (the budget's row is the
    // place of a phase to come, in parentheses).
    let lifecycle = std::fs::read_to_string(root().join("docs/request-lifecycle.md")).expect("lifecycle");
    let section = lifecycle
        .split("## The tool-call proxy's phases")
        .nth(1)
        .expect("docs/request-lifecycle.md has the proxy's phases");
    let documented: Vec<String> = section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split_once(" |").map(|(c, _)| c.trim().to_string()))
        .filter(|c| c != "phase" && !c.starts_with("---") && !c.starts_with('('))
        .collect();
    assert_eq!(
        documented, code,
        "docs/request-lifecycle.md's phase table and pipeline.rs disagree"
    );
    // ARCHITECTURE.md's code map names each phase in bold where its code lives.
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let proxy = arch
        .split("- **`proxy/`**")
        .nth(1)
        .and_then(|s| s.split("\n- **").next())
        .expect("ARCHITECTURE.md's code map has proxy/");
    let missing: Vec<&String> = code
        .iter()
        .filter(|p| !proxy.contains(&format!("**{p}**")))
        .collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's proxy/ entry does not name the phases {missing:?}"
    );
    // Each phase the adapter implements says so in its doc (`Phase **name**`).
    let pipeline = std::fs::read_to_string(root().join("src/proxy/pipeline.rs")).expect("pipeline.rs");
    for p in ["forward", "respond", "hold"] {
        assert!(
            pipeline.contains(&format!("Phase **{p}**")),
            "Adapter's {p} is not documented as its phase"
        );
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `src/`, with the files of body-less test modules marked as test files.
fn sources() -> Vec<SourceFile> {
    let mut files = rust_files("src");
    let test_files: BTreeSet<String> = files
        .iter()
        .flat_map(|f| {
            let dir = match ["mod.rs", "lib.rs", "main.rs"]
                .iter()
                .find_map(|r| f.rel.strip_suffix(r))
            {
                Some(d) => d.to_string(),
                None => format!("{}/", f.rel.trim_end_matches(".rs")),
            };
            f.test_children
                .iter()
                .map(move |c| format!("{dir}{c}"))
                .collect::<Vec<_>>()
        })
        .collect();
    for f in &mut files {
        let stem = f.rel.trim_end_matches(".rs").trim_end_matches("/mod");
        if test_files
            .iter()
            .any(|t| stem == t || stem.starts_with(&format!("{t}/")))
        {
            f.test_file = true;
        }
    }
    files
}

fn rust_files(dir: &str) -> Vec<SourceFile> {
    let mut paths = Vec::new();
    walk(&root().join(dir), &mut paths);
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root())
                .expect("under the root")
                .to_string_lossy()
                .replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {rel}: {e}"));
            SourceFile::new(rel, text)
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lists every file's non-test size, largest first (`cargo test --test tidy -- --ignored --nocapture sizes`), to
/// choose or review [`MAX_LINES`] and [`SIZE_EXCEPTIONS`].
#[test]
#[ignore = "a report, not a check"]
fn sizes() {
    let mut all: Vec<_> = sources()
        .into_iter()
        .map(|f| (f.non_test_lines(), f.rel))
        .collect();
    all.sort_by(|a, b| b.cmp(a));
    let mut report = String::new();
    for (n, rel) in all.iter().take(25) {
        let _ = writeln!(report, "{n:6} {rel}");
    }
    println!("{report}");
}
