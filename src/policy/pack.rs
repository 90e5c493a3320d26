//! The pack format: reading a pack directory into memory (the only file IO of the engine) and
//! parsing `pack.yaml` / `rules/*.yaml` into validated rule specs.
//!
//! Files are read exactly once into [`PackFiles`]; signature checking and parsing both work on
//! those bytes, so what is verified is what is compiled.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PolicyError;
use super::types::{ApprovalSpec, Mode, OnTimeout, Outcome};
use crate::names::{self, Pattern};

/// Name of the signature file inside a pack; it is never part of the signed manifest.
pub const SIGNATURE_FILE: &str = "pack.sig.json";
/// Name of the pack's main file.
pub const PACK_FILE: &str = "pack.yaml";
/// The only supported `apiVersion`.
pub const API_VERSION: &str = "kla.dev/v1";

const MAX_FILES: usize = 10_000;
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// All files of a pack together: everything is read into memory before the signature is checked,
/// so this bounds what anyone able to write into a pack directory can make kla allocate.
const MAX_PACK_BYTES: u64 = 64 * 1024 * 1024;

/// The raw content of a pack directory, read once. Keys are `/`-separated relative paths.
#[derive(Debug, Clone)]
pub struct PackFiles {
    pub(crate) root: PathBuf,
    pub(crate) files: BTreeMap<String, Vec<u8>>,
    pub(crate) signature: Option<Vec<u8>>,
}

impl PackFiles {
    /// Reads every regular file under `dir` (recursively). Symlinks and non-UTF-8 names are
    /// refused, so the signed manifest describes exactly what is on disk. At most
    /// 8 MiB per file and 64 MiB in all are read.
    pub fn read_dir(dir: &Path) -> Result<Self, PolicyError> {
        let mut files = BTreeMap::new();
        let mut signature = None;
        let mut total: u64 = 0;
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let abs = dir.join(&rel);
            let entries = std::fs::read_dir(&abs).map_err(|e| PolicyError::io(&abs, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| PolicyError::io(&abs, e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else {
                    return Err(PolicyError::invalid(
                        abs.display().to_string(),
                        None,
                        None,
                        "file name is not valid UTF-8",
                    ));
                };
                let rel_child = rel.join(name);
                let abs_child = dir.join(&rel_child);
                let meta =
                    std::fs::symlink_metadata(&abs_child).map_err(|e| PolicyError::io(&abs_child, e))?;
                if meta.file_type().is_symlink() {
                    return Err(PolicyError::invalid(
                        abs_child.display().to_string(),
                        None,
                        None,
                        "symlinks are not allowed in a pack",
                    ));
                }
                if meta.is_dir() {
                    stack.push(rel_child);
                    continue;
                }
                if !meta.is_file() {
                    continue;
                }
                if meta.len() > MAX_FILE_BYTES {
                    return Err(PolicyError::invalid(
                        abs_child.display().to_string(),
                        None,
                        None,
                        format!("file is larger than {MAX_FILE_BYTES} bytes"),
                    ));
                }
                total = total.saturating_add(meta.len());
                if total > MAX_PACK_BYTES {
                    return Err(PolicyError::invalid(
                        dir.display().to_string(),
                        None,
                        None,
                        format!("pack is larger than {MAX_PACK_BYTES} bytes in total"),
                    ));
                }
                let bytes = read_at_most(&abs_child, meta.len())?;
                let key = rel_key(&rel_child);
                if key == SIGNATURE_FILE {
                    signature = Some(bytes);
                } else {
                    files.insert(key, bytes);
                }
                if files.len() > MAX_FILES {
                    return Err(PolicyError::invalid(
                        dir.display().to_string(),
                        None,
                        None,
                        format!("pack has more than {MAX_FILES} files"),
                    ));
                }
            }
        }
        Ok(PackFiles {
            root: dir.to_path_buf(),
            files,
            signature,
        })
    }

    /// The directory the files were read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn display(&self, rel: &str) -> String {
        self.root.join(rel).display().to_string()
    }

    fn text(&self, rel: &str) -> Result<&str, PolicyError> {
        let bytes = self
            .files
            .get(rel)
            .ok_or_else(|| PolicyError::invalid(self.display(rel), None, None, "file is missing"))?;
        std::str::from_utf8(bytes)
            .map_err(|_| PolicyError::invalid(self.display(rel), None, None, "not valid UTF-8"))
    }
}

/// Reads a file that had `len` bytes when listed, refusing one that has grown since (so a file
/// replaced or appended to between the listing and the read cannot make kla read more), and one
/// that is no longer a regular file: opened without following a symlink and without blocking (a
/// FIFO swapped in would otherwise hold the reload thread until someone writes to it), then
/// checked on the open handle.
pub(crate) fn read_at_most(path: &Path, len: u64) -> Result<Vec<u8>, PolicyError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| PolicyError::io(path, e))?;
    let meta = file.metadata().map_err(|e| PolicyError::io(path, e))?;
    if !meta.is_file() {
        return Err(PolicyError::invalid(
            path.display().to_string(),
            None,
            None,
            "not a regular file (replaced while the pack was read)",
        ));
    }
    let mut bytes = Vec::new();
    file.take(len.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| PolicyError::io(path, e))?;
    if bytes.len() as u64 > len {
        return Err(PolicyError::invalid(
            path.display().to_string(),
            None,
            None,
            "file changed while the pack was read",
        ));
    }
    Ok(bytes)
}

fn rel_key(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Deepest nesting of `[` and `{` (outside string literals and comments) in a `.rego` module or a `when`, whose
/// expressions sit in a rule body (one level). regorus 0.14 parses the first element of an array, set or object
/// twice (once as a possible comprehension), so the parse time of a nest grows 2.2-fold with every level: 0.5 s at
/// 14 levels, 10 s at 18, over 15 minutes at 24 (release build). Parentheses do not double and are not counted.
pub const MAX_REGO_NESTING: usize = 10;

/// Nesting up to this depth costs the Rego parser nothing out of the ordinary (kla's default pack nests 4 deep).
pub const FREE_REGO_NESTING: usize = 4;

/// The parse work a pack's Rego (all its `.rego` modules and `when` expressions together) may need beyond
/// [`FREE_REGO_NESTING`]: every byte at depth `d` above it costs `2^(d - 4)`. The depth limit alone does not bound a
/// load: 100 small rules nested 10 deep took 1.5 s, and a pack may hold 64 MiB. Measured at up to 75 us per unit,
/// so this budget bounds the extra parse time of a whole pack to about 1.2 s; it allows, say, 8 KiB of Rego at depth
/// 5 or 250 bytes at depth 10.
pub const REGO_NESTING_BUDGET: u64 = 16_384;

/// Checks Rego source against [`MAX_REGO_NESTING`] (naming the 1-based line where it is passed) and returns its cost
/// against [`REGO_NESTING_BUDGET`]. `depth` is the nesting the source starts at (1 for a `when`, which is placed in a
/// rule body). Unbalanced brackets are left to the Rego parser, which reports them better.
pub(crate) fn rego_nesting_cost(src: &str, mut depth: usize) -> Result<u64, String> {
    #[derive(Clone, Copy, PartialEq)]
    enum In {
        Code,
        Str,
        Escape,
        Raw,
        Comment,
    }
    let (mut state, mut line, mut cost) = (In::Code, 1usize, 0u64);
    for b in src.bytes() {
        if b == b'\n' {
            line += 1;
        }
        state = match (state, b) {
            (In::Code, b'"') => In::Str,
            (In::Code, b'`') => In::Raw,
            (In::Code, b'#') => In::Comment,
            (In::Code, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_REGO_NESTING {
                    return Err(format!(
                        "brackets ('[', '{{') nest more than {MAX_REGO_NESTING} deep at line {line} (the Rego \
                         parser's time doubles with every level)"
                    ));
                }
                In::Code
            }
            (In::Code, b']' | b'}') => {
                depth = depth.saturating_sub(1);
                In::Code
            }
            (In::Str, b'\\') => In::Escape,
            // A line break ends a (malformed) string for counting; the Rego parser reports it.
            (In::Str, b'"' | b'\n') | (In::Raw, b'`') | (In::Comment, b'\n') => In::Code,
            (In::Escape, _) => In::Str,
            (s, _) => s,
        };
        if let Some(over) = depth.checked_sub(FREE_REGO_NESTING).filter(|&o| o > 0) {
            cost = cost.saturating_add(1 << over);
        }
    }
    Ok(cost)
}

/// What a pack's Rego has spent of [`REGO_NESTING_BUDGET`] so far.
#[derive(Default)]
struct NestingBudget(u64);

impl NestingBudget {
    /// Adds `cost`; the refusal's reason once the pack is over budget.
    fn spend(&mut self, cost: u64) -> Result<(), String> {
        self.0 = self.0.saturating_add(cost);
        if self.0 > REGO_NESTING_BUDGET {
            return Err(format!(
                "the pack's Rego nests brackets more than {FREE_REGO_NESTING} deep too often: it needs {} units of \
                 kla's budget of {REGO_NESTING_BUDGET} (each byte at depth d > {FREE_REGO_NESTING} costs \
                 2^(d-{FREE_REGO_NESTING}), because the Rego parser's time doubles with every level)",
                self.0
            ));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// YAML documents (the user-facing contract). Unknown keys are refused everywhere.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PackDoc {
    api_version: String,
    kind: String,
    metadata: MetadataDoc,
    #[serde(default)]
    spec: SpecDoc,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MetadataDoc {
    name: String,
    version: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SpecDoc {
    #[serde(default)]
    default_decision: Outcome,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    /// What decisions and spans record (`crate::redact`); absent: the default detectors.
    #[serde(default)]
    redaction: Option<crate::redact::RedactionDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RulesFileDoc {
    rules: Vec<RuleDoc>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleDoc {
    id: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default, rename = "match")]
    matcher: Option<MatchDoc>,
    #[serde(default)]
    when: Option<OneOrMany>,
    decision: Outcome,
    #[serde(default)]
    reason_code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    approval: Option<ApprovalDoc>,
    #[serde(default)]
    mode: Option<Mode>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchDoc {
    #[serde(default)]
    actions: Option<Vec<String>>,
    #[serde(default)]
    agents: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The largest quorum a rule may ask for.
pub const MAX_APPROVERS: u32 = 10;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ApprovalDoc {
    timeout: String,
    #[serde(default)]
    on_timeout: OnTimeout,
    /// Distinct approvers needed (a quorum); one when absent.
    #[serde(default)]
    approvers: Option<u32>,
}

// ---------------------------------------------------------------------------------------------
// Validated specs handed to the compiler.

/// A validated rule, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct RuleSpec {
    pub id: String,
    pub file: String,
    pub line: Option<usize>,
    /// Action patterns; empty means every action.
    pub actions: Vec<Pattern>,
    /// Agent patterns over id or name; empty means every agent.
    pub agents: Vec<Pattern>,
    /// Rego expressions that must all hold; empty means no condition.
    pub when: Vec<String>,
    pub decision: Outcome,
    pub reason_code: String,
    pub message: Option<String>,
    pub approval: Option<ApprovalSpec>,
    pub shadow: bool,
}

impl RuleSpec {
    pub(crate) fn error(&self, reason: impl Into<String>) -> PolicyError {
        PolicyError::invalid(self.file.clone(), self.line, Some(self.id.clone()), reason)
    }
}

/// A validated pack: header, rules in file order (`pack.yaml` first, then `rules/` sorted), and
/// the raw Rego modules.
#[derive(Debug, Clone)]
pub(crate) struct PackSpec {
    pub name: String,
    pub version: String,
    pub default_decision: Outcome,
    pub mode: Mode,
    pub rules: Vec<RuleSpec>,
    /// (display path, source) of every `*.rego` file.
    pub rego_modules: Vec<(String, String)>,
    /// The compiled `redaction:` section, if the pack has one.
    pub redaction: Option<std::sync::Arc<crate::redact::PackRules>>,
}

/// Parses and validates a pack (no Rego compilation yet).
pub(crate) fn parse_pack(files: &PackFiles) -> Result<PackSpec, PolicyError> {
    let pack_text = files.text(PACK_FILE)?;
    let pack_path = files.display(PACK_FILE);
    let doc: PackDoc = from_yaml(&pack_path, pack_text)?;
    let header_err = |reason: String| PolicyError::invalid(pack_path.clone(), None, None, reason);
    if doc.api_version != API_VERSION {
        return Err(header_err(format!(
            "apiVersion must be {API_VERSION:?}, found {:?}",
            doc.api_version
        )));
    }
    if doc.kind != "PolicyPack" {
        return Err(header_err(format!(
            "kind must be \"PolicyPack\", found {:?}",
            doc.kind
        )));
    }
    let name = doc.metadata.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(header_err(format!(
            "metadata.name {name:?} must be non-empty and use only [A-Za-z0-9._-]"
        )));
    }
    if doc.metadata.version.trim().is_empty() {
        return Err(header_err("metadata.version must not be empty".into()));
    }
    // Versions are ordered (a signed pack older than one kla has activated is refused), so they must be SemVer.
    if let Err(e) = semver::Version::parse(&doc.metadata.version) {
        return Err(header_err(format!(
            "metadata.version {:?} is not a semantic version such as 1.2.0 ({e})",
            doc.metadata.version
        )));
    }

    let redaction = match doc.spec.redaction {
        None => None,
        Some(r) => Some(std::sync::Arc::new(
            crate::redact::PackRules::compile(r).map_err(|e| header_err(e.to_string()))?,
        )),
    };

    let mut rules = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut budget = NestingBudget::default();
    let mut push_rules =
        |budget: &mut NestingBudget, file: &str, text: &str, docs: Vec<RuleDoc>| -> Result<(), PolicyError> {
            let mut in_file: std::collections::HashMap<String, usize> = Default::default();
            for rule in docs {
                let nth = in_file.entry(rule.id.clone()).or_default();
                *nth += 1;
                let (mut spec, cost) = validate_rule(file, text, rule)?;
                budget.spend(cost).map_err(|reason| spec.error(reason))?;
                if !seen.insert(spec.id.clone()) {
                    // Point at this occurrence, not the first one in the file.
                    spec.line = find_rule_line_nth(text, &spec.id, *nth).or(spec.line);
                    return Err(spec.error("duplicate rule id in this pack"));
                }
                rules.push(spec);
            }
            Ok(())
        };
    push_rules(&mut budget, &pack_path, pack_text, doc.spec.rules)?;

    let mut rego_modules = Vec::new();
    for rel in files.files.keys() {
        if let Some(rest) = rel.strip_prefix("rules/") {
            let display = files.display(rel);
            if !(rest.ends_with(".yaml") || rest.ends_with(".yml")) || rest.contains('/') {
                return Err(PolicyError::invalid(
                    display,
                    None,
                    None,
                    "only rules/*.yaml (or .yml) files may live under rules/",
                ));
            }
            let text = files.text(rel)?;
            let doc: RulesFileDoc = from_yaml(&display, text)?;
            push_rules(&mut budget, &display, text, doc.rules)?;
        } else if rel.ends_with(".rego") {
            let display = files.display(rel);
            let text = files.text(rel)?;
            let fail = |reason| PolicyError::invalid(display.clone(), None, None, reason);
            budget
                .spend(rego_nesting_cost(text, 0).map_err(fail)?)
                .map_err(fail)?;
            rego_modules.push((display, text.to_string()));
        }
    }

    Ok(PackSpec {
        name,
        version: doc.metadata.version,
        default_decision: doc.spec.default_decision,
        mode: doc.spec.mode,
        rules,
        rego_modules,
        redaction,
    })
}

/// Deserialises YAML, turning errors into `file:line: near rule 'x': message`.
pub(crate) fn from_yaml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, PolicyError> {
    serde_yaml::from_str(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
        let rule = line.and_then(|l| rule_near_line(text, l));
        PolicyError::invalid(file.to_string(), line, rule, e.to_string())
    })
}

/// A validated rule and the cost of its `when` against [`REGO_NESTING_BUDGET`].
fn validate_rule(file: &str, text: &str, doc: RuleDoc) -> Result<(RuleSpec, u64), PolicyError> {
    let line = find_rule_line(text, &doc.id);
    let fail = |reason: String| PolicyError::invalid(file.to_string(), line, Some(doc.id.clone()), reason);
    if doc.id.trim().is_empty() || doc.id.chars().any(char::is_whitespace) {
        return Err(fail(format!(
            "rule id {:?} must be non-empty without whitespace",
            doc.id
        )));
    }
    let matcher = doc.matcher.unwrap_or_default();
    let actions = match matcher.actions {
        None => Vec::new(),
        Some(a) if a.is_empty() => {
            return Err(fail(
                "match.actions is empty and would never match; omit it to match every action".into(),
            ));
        }
        Some(a) => a,
    };
    let agents = match matcher.agents {
        None => Vec::new(),
        Some(a) if a.is_empty() => {
            return Err(fail(
                "match.agents is empty and would never match; omit it to match every agent".into(),
            ));
        }
        Some(a) => a,
    };
    // Patterns are matched against canonical names (`crate::names`): one that could never match one is refused here.
    let patterns = |field: &str, list: Vec<String>, kind: names::Kind| -> Result<Vec<Pattern>, PolicyError> {
        let mut out = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            let pattern = names::pattern(kind, p).map_err(|e| fail(format!("{field}[{i}] {p:?} {e}")))?;
            if let Pattern::Glob(g) = &pattern
                && let Err(e) = globset::Glob::new(g)
            {
                return Err(fail(format!("{field}[{i}]: bad glob {g:?}: {e}")));
            }
            out.push(pattern);
        }
        Ok(out)
    };
    let actions = patterns("match.actions", actions, names::Kind::Action)?;
    let agents = patterns("match.agents", agents, names::Kind::Agent)?;
    let when = match doc.when {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if when.iter().any(|w| w.trim().is_empty()) {
        return Err(fail("a `when` expression is empty".into()));
    }
    let mut cost = 0u64;
    for w in &when {
        cost = cost.saturating_add(rego_nesting_cost(w, 1).map_err(|e| fail(format!("`when`: {e}")))?);
    }
    let reason_code = match doc.reason_code {
        Some(code) => code,
        None => doc.id.to_ascii_uppercase().replace(['-', '.'], "_"),
    };
    if reason_code.is_empty()
        || !reason_code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(fail(format!("reasonCode {reason_code:?} must match [A-Z0-9_]+")));
    }
    let approval = match doc.approval {
        None => None,
        Some(_) if doc.decision != Outcome::RequireApproval => {
            return Err(fail(
                "approval is only allowed on rules with decision: require_approval".into(),
            ));
        }
        Some(a) => {
            let dur = humantime::parse_duration(&a.timeout)
                .map_err(|e| fail(format!("approval.timeout {:?}: {e}", a.timeout)))?;
            if dur.as_secs() == 0 {
                return Err(fail("approval.timeout must be at least one second".into()));
            }
            let approvers = a.approvers.unwrap_or(1);
            if !(1..=MAX_APPROVERS).contains(&approvers) {
                return Err(fail(format!(
                    "approval.approvers must be 1 to {MAX_APPROVERS}, not {approvers}"
                )));
            }
            Some(ApprovalSpec {
                timeout: a.timeout,
                timeout_seconds: dur.as_secs(),
                on_timeout: a.on_timeout,
                approvers,
            })
        }
    };
    Ok((
        RuleSpec {
            id: doc.id,
            file: file.to_string(),
            line,
            actions,
            agents,
            when,
            decision: doc.decision,
            reason_code,
            message: doc.message,
            approval,
            shadow: doc.mode == Some(Mode::Shadow),
        },
        cost,
    ))
}

/// Parses `id: value` (optionally after `- ` or `{`) on one line.
fn id_on_line(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let t = t.strip_prefix('-').unwrap_or(t).trim_start();
    let t = t.strip_prefix('{').unwrap_or(t).trim_start();
    let rest = t.strip_prefix("id:")?;
    let v = rest.split([',', '}', '#']).next().unwrap_or("").trim();
    Some(v.trim_matches(|c| c == '"' || c == '\''))
}

/// 1-based line of the first `id: <id>` in `text`.
pub(crate) fn find_rule_line(text: &str, id: &str) -> Option<usize> {
    find_rule_line_nth(text, id, 1)
}

/// 1-based line of the `nth` (1-based) `id: <id>` in `text`.
fn find_rule_line_nth(text: &str, id: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| id_on_line(l) == Some(id))
        .nth(nth.saturating_sub(1))
        .map(|(i, _)| i + 1)
}

/// The id of the nearest rule declared at or above 1-based `line`.
fn rule_near_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    lines
        .iter()
        .rev()
        .find_map(|l| id_on_line(l))
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}
