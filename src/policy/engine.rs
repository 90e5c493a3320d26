//! The compiled rule set and the hot path: [`PolicySet::evaluate`].
//!
//! Design:
//! * rules are indexed by action: exact names in a `HashMap`, wildcard patterns in one
//!   `GlobSet` per pack, match-all rules in a list, so work follows the matching rules;
//! * names are matched on their canonical form (`crate::names`): exact patterns are stored
//!   lowercase, globs match case-insensitively, and an `input.action` that is not a canonical
//!   action name fails closed, so no spelling of a name escapes the rules written for it;
//! * each rule's `when` is compiled once into its own small RVM `Program` (`Arc`, shared by all
//!   threads); each thread owns one `RegoVM` (`thread_local!`) and loads the rule's program
//!   before running it, so there is no lock on the hot path;
//! * rules without `when` never touch Rego; the Rego `input` value is built lazily, once per
//!   evaluation;
//! * the deadline is checked before every Rego rule and enforced inside the VM by regorus'
//!   execution timer (checked every [`TIMER_CHECK_INTERVAL`] work units) plus an instruction cap.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::ExecutionMode;
use regorus::rvm::{Instruction, RegoVM};
use regorus::utils::limits::ExecutionTimerConfig;

use super::PolicyError;
use super::pack::{PackSpec, RuleSpec, parse_pack};
use super::signing::VerifiedPack;
use super::types::{
    DEFAULT_DECISION, Decision, EvalInput, MatchedRule, Mode, Outcome, POLICY_ERROR, POLICY_UNAVAILABLE,
    PackRef,
};
use crate::names::{self, Pattern};

/// Default evaluation deadline.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(5);
/// Largest accepted evaluation deadline.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);
/// VM instructions between two clock reads inside the VM.
pub const TIMER_CHECK_INTERVAL: u32 = 16;
/// Hard cap on VM instructions per `when` (a second guard besides the clock).
pub const MAX_INSTRUCTIONS: usize = 1_000_000;
/// Package of the generated module holding a rule's `when`; reserved.
const WHEN_PACKAGE: &str = "kla_when";
const WHEN_ENTRY: &str = "data.kla_when.holds";
/// Package of kla's Rego library, compiled into every pack (typed, fail-closed helpers); reserved.
const LIB_PACKAGE: &str = "kla_lib";
/// Name the library's module is registered under (appears in Rego error messages).
const LIB_PATH: &str = "kla_lib.rego (built in)";
const LIB_SOURCE: &str = include_str!("kla_lib.rego");
/// Builtins a `when` may not reach (directly or through the pack's Rego), with why:
/// - results that do not follow from the input (regorus' `must_cache` list, as far as kla's feature set
///   compiles them in), so the same input and pack always decide alike;
/// - a cost set by an argument's *value*, not by the size of the input: one call such as
///   `numbers.range(1, input.context.n)` can run for minutes and allocate without bound, and neither the VM's
///   instruction cap nor the deadline can stop a builtin that is running.
const REFUSED_BUILTINS: [(&str, &str); 5] = [
    ("rand.intn", NON_DETERMINISTIC),
    ("time.now_ns", NON_DETERMINISTIC),
    ("uuid.rfc4122", NON_DETERMINISTIC),
    ("numbers.range", UNBOUNDED),
    ("numbers.range_step", UNBOUNDED),
];
const NON_DETERMINISTIC: &str =
    "is non-deterministic: a decision must follow from its input alone; use input.now for time";
const UNBOUNDED: &str = "has a cost set by an argument's value, which the evaluation deadline cannot stop";

/// Matches agents by id or name, case-insensitively (agent names are canonically lowercase, `crate::names`).
#[derive(Debug, Clone)]
enum AgentMatcher {
    Any,
    Globs(GlobSet),
}

impl AgentMatcher {
    fn build(rule: &RuleSpec) -> Result<Self, PolicyError> {
        if rule.agents.is_empty() || rule.agents.contains(&Pattern::Any) {
            return Ok(AgentMatcher::Any);
        }
        let mut b = GlobSetBuilder::new();
        for a in &rule.agents {
            // An exact name holds no glob syntax, so it compiles to a glob that matches just that name.
            let (Pattern::Exact(p) | Pattern::Glob(p)) = a else {
                continue;
            };
            b.add(glob(p).map_err(|e| rule.error(format!("bad glob {p:?}: {e}")))?);
        }
        Ok(AgentMatcher::Globs(
            b.build()
                .map_err(|e| rule.error(format!("bad agent globs: {e}")))?,
        ))
    }

    fn matches(&self, id: &str, name: &str) -> bool {
        match self {
            AgentMatcher::Any => true,
            AgentMatcher::Globs(set) => set.is_match(id) || (!name.is_empty() && set.is_match(name)),
        }
    }
}

/// A pattern's glob, matched case-insensitively: names are compared on their canonical (lowercase) form, and a glob
/// written `Email_*` means the same names as `email_*`.
fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).case_insensitive(true).build()
}

#[derive(Debug, Clone)]
struct CompiledRule {
    id: String,
    decision: Outcome,
    reason_code: String,
    message: Option<String>,
    approval: Option<super::types::ApprovalSpec>,
    shadow: bool,
    agents: AgentMatcher,
    when: Option<Arc<Program>>,
}

/// Rule index by canonical action name.
#[derive(Debug, Clone, Default)]
struct ActionIndex {
    exact: HashMap<String, Vec<u32>>,
    globs: Option<GlobSet>,
    glob_rules: Vec<u32>,
    all: Vec<u32>,
}

impl ActionIndex {
    fn build(rules: &[RuleSpec]) -> Result<Self, PolicyError> {
        let mut index = ActionIndex::default();
        let mut builder = GlobSetBuilder::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| rule.error("too many rules"))?;
            if rule.actions.is_empty() {
                index.all.push(i);
                continue;
            }
            for pat in &rule.actions {
                match pat {
                    Pattern::Any => index.all.push(i),
                    Pattern::Exact(name) => index.exact.entry(name.clone()).or_default().push(i),
                    Pattern::Glob(g) => {
                        builder.add(glob(g).map_err(|e| rule.error(format!("bad glob {g:?}: {e}")))?);
                        index.glob_rules.push(i);
                    }
                }
            }
        }
        if !index.glob_rules.is_empty() {
            index.globs = Some(builder.build().map_err(|e| PolicyError::Invalid {
                file: String::new(),
                line: None,
                rule: None,
                reason: format!("cannot build action glob set: {e}"),
            })?);
        }
        Ok(index)
    }

    /// Candidate rule indices for the canonical `action`, in rule order, deduplicated.
    fn candidates(&self, action: &str, out: &mut Vec<u32>, scratch: &mut Vec<usize>) {
        out.clear();
        out.extend_from_slice(&self.all);
        if let Some(v) = self.exact.get(action) {
            out.extend_from_slice(v);
        }
        if let Some(globs) = &self.globs {
            globs.matches_into(action, scratch);
            out.extend(scratch.iter().filter_map(|&g| self.glob_rules.get(g).copied()));
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// One compiled pack: immutable, shareable, cheap to keep as "last good".
#[derive(Debug, Clone)]
pub struct CompiledPack {
    pack_ref: PackRef,
    mode: Mode,
    default_decision: Outcome,
    rules: Vec<CompiledRule>,
    index: ActionIndex,
    redaction: Option<Arc<crate::redact::PackRules>>,
}

impl CompiledPack {
    /// Parses, validates and compiles a verified pack. Refusals name file, rule and line.
    pub fn compile(pack: &VerifiedPack) -> Result<Self, PolicyError> {
        let spec = parse_pack(&pack.files)?;
        if let Some((name, version)) = &pack.signed_header
            && (name != &spec.name || version != &spec.version)
        {
            return Err(PolicyError::Signature {
                pack: pack.root().display().to_string(),
                reason: format!(
                    "manifest names {name}@{version} but pack.yaml says {}@{}",
                    spec.name, spec.version
                ),
            });
        }
        Self::from_spec(
            spec,
            PackRef {
                name: String::new(),
                version: String::new(),
                digest: pack.digest.clone(),
                signer_key_id: pack.signer_key_id.clone(),
            },
        )
    }

    fn from_spec(spec: PackSpec, mut pack_ref: PackRef) -> Result<Self, PolicyError> {
        pack_ref.name = spec.name.clone();
        pack_ref.version = spec.version.clone();
        let index = ActionIndex::build(&spec.rules)?;
        let base = base_engine(&spec)?;
        let mut rules = Vec::with_capacity(spec.rules.len());
        for rule in &spec.rules {
            let agents = AgentMatcher::build(rule)?;
            let when = if rule.when.is_empty() {
                None
            } else {
                Some(compile_when(&base, rule)?)
            };
            rules.push(CompiledRule {
                id: rule.id.clone(),
                decision: rule.decision,
                reason_code: rule.reason_code.clone(),
                message: rule.message.clone(),
                approval: rule.approval.clone(),
                shadow: rule.shadow || spec.mode == Mode::Shadow,
                agents,
                when,
            });
        }
        Ok(CompiledPack {
            pack_ref,
            mode: spec.mode,
            default_decision: spec.default_decision,
            rules,
            index,
            redaction: spec.redaction,
        })
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.pack_ref.name
    }

    /// `metadata.version`.
    pub fn version(&self) -> &str {
        &self.pack_ref.version
    }

    /// Identity (name, version, digest, signer).
    pub fn pack_ref(&self) -> &PackRef {
        &self.pack_ref
    }

    /// The pack's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Number of rules.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// The pack's compiled `redaction:` section (`None`: the pack has none, so the defaults apply).
    pub fn redaction(&self) -> Option<&crate::redact::PackRules> {
        self.redaction.as_deref()
    }
}

/// An engine holding kla's library and the pack's own `*.rego` modules, cloned for every rule's
/// `when`. A module may not use the reserved package of the generated `when` modules (it would
/// add to, or set a default for, every rule's `holds`) or of the library (it would redefine a
/// helper every pack relies on), nor a package under either.
fn base_engine(spec: &PackSpec) -> Result<regorus::Engine, PolicyError> {
    let mut engine = regorus::Engine::new();
    engine
        .add_policy(LIB_PATH.to_string(), LIB_SOURCE.to_string())
        .map_err(|e| PolicyError::Invalid {
            file: LIB_PATH.to_string(),
            line: None,
            rule: None,
            reason: format!("kla's Rego library does not compile: {e}"),
        })?;
    for (path, text) in &spec.rego_modules {
        let fail = |reason: String| PolicyError::Invalid {
            file: path.clone(),
            line: None,
            rule: None,
            reason,
        };
        let package = engine
            .add_policy(path.clone(), text.clone())
            .map_err(|e| fail(format!("Rego does not compile: {e}")))?;
        for (name, what) in [
            (WHEN_PACKAGE, "the rules' `when` expressions"),
            (LIB_PACKAGE, "kla's Rego library"),
        ] {
            let reserved = format!("data.{name}");
            if package == reserved || package.starts_with(&format!("{reserved}.")) {
                return Err(fail(format!("package {name} is reserved for {what}")));
            }
        }
    }
    Ok(engine)
}

fn compile_when(base: &regorus::Engine, rule: &RuleSpec) -> Result<Arc<Program>, PolicyError> {
    let mut engine = base.clone();
    let mut src = format!("package {WHEN_PACKAGE}\n\nimport data.{LIB_PACKAGE}\n\nholds if {{\n");
    for expr in &rule.when {
        src.push_str(expr);
        src.push('\n');
    }
    src.push_str("}\n");
    let bad = |e: anyhow::Error| {
        rule.error(format!(
            "`when` does not compile as Rego ({}): {e}",
            rule.when.join(" ; ")
        ))
    };
    engine.add_policy(format!("{}#when", rule.id), src).map_err(bad)?;
    let entry: regorus::Rc<str> = WHEN_ENTRY.into();
    let compiled = engine.compile_with_entrypoint(&entry).map_err(bad)?;
    let program = Compiler::compile_from_policy(&compiled, &[WHEN_ENTRY]).map_err(|e| bad(e.into()))?;
    if program.has_host_await {
        return Err(rule.error("`when` uses __builtin_host_await: kla evaluates without a host to answer it"));
    }
    // The program lists every builtin the rule can reach, also through the pack's modules.
    for b in &program.builtin_info_table {
        if let Some((name, why)) = REFUSED_BUILTINS.iter().find(|(n, _)| *n == b.name.as_str()) {
            return Err(rule.error(format!(
                "`when` uses the builtin {name} (directly or through the pack's Rego), which {why}"
            )));
        }
    }
    Ok(program)
}

/// Builds the Rego `input` document directly (same shape as `EvalInput`'s serde form, checked
/// by a unit test), deserialising the JSON parts by reference instead of cloning them.
pub(crate) fn rego_input_of(input: &EvalInput) -> Result<regorus::Value, String> {
    use regorus::Value as V;
    use serde::Deserialize as _;
    use std::collections::BTreeMap;
    let json = |v: &serde_json::Value| V::deserialize(v).map_err(|e| e.to_string());
    let s = |v: &str| V::from(v);
    let mut agent = BTreeMap::new();
    agent.insert(s("id"), s(&input.agent.id));
    agent.insert(s("name"), s(&input.agent.name));
    if let Some(v) = &input.agent.version {
        agent.insert(s("version"), s(v));
    }
    if let Some(h) = &input.agent.manifest_hash {
        agent.insert(s("manifestHash"), s(h));
    }
    let mut root = BTreeMap::new();
    root.insert(s("agent"), V::from(agent));
    root.insert(s("action"), s(&input.action));
    root.insert(s("context"), json(&input.context)?);
    if let Some(t) = &input.tool {
        root.insert(s("tool"), json(t)?);
    }
    if let Some(e) = &input.execution {
        root.insert(s("execution"), json(e)?);
    }
    root.insert(s("principal"), json(&input.principal)?);
    root.insert(s("tenant"), s(&input.tenant));
    root.insert(s("now"), s(&input.now));
    Ok(V::from(root))
}

/// Per-thread VMs, one per rule of the set last evaluated on this thread, each with its
/// rule's program already loaded. Keyed by the set's unique id: evaluating another set
/// drops them (and with them the old programs).
struct VmCache {
    set_id: u64,
    vms: Vec<Option<Box<RegoVM>>>,
}

thread_local! {
    static VMS: RefCell<VmCache> = const { RefCell::new(VmCache { set_id: 0, vms: Vec::new() }) };
}

const PANICKED: &str = "the Rego VM panicked";

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

fn new_vm(program: &Arc<Program>) -> RegoVM {
    let mut vm = RegoVM::new();
    // OPA semantics: a failing builtin makes its expression undefined (the rule does not
    // match). Resource limits (time, instructions) are errors and fail closed.
    vm.set_max_instructions(MAX_INSTRUCTIONS);
    if may_recurse(program) {
        vm.set_execution_mode(ExecutionMode::Suspendable);
    }
    vm.load_program(program.clone());
    vm
}

/// Whether a rule's program calls a rule or function besides its entry (or looks `data` up
/// dynamically, which can evaluate rules), and so could recurse: regorus compiles some recursive
/// Rego (`f(x) := data.lib.f(x)`, `g if data.lib.g`), and in its default run-to-completion mode
/// every call is a native call, so runaway recursion overflowed the thread's stack and aborted
/// the process. Such programs run in suspendable mode, whose calls live on the VM's heap stack:
/// recursion stops at the instruction cap and fails closed (`compile_when` refuses programs that
/// could suspend, so a run always completes). Mere expressions keep the faster mode (suspendable
/// costs about 0.8 us per rule).
fn may_recurse(program: &Program) -> bool {
    let calls = program
        .instructions
        .iter()
        .filter(|i| {
            matches!(
                i,
                Instruction::CallRule { .. }
                    | Instruction::FunctionCall { .. }
                    | Instruction::VirtualDataDocumentLookup { .. }
            )
        })
        .count();
    calls > 1 || program.rule_infos.len() > 1 || program.needs_runtime_recursion_check
}

/// Runs one rule's program on this thread's VM for that rule. `Ok(true)` only when the body
/// evaluated to `true`; undefined means "does not hold".
fn run_when(
    set: &PolicySet,
    slot: usize,
    program: &Arc<Program>,
    input: &regorus::Value,
    remaining: Duration,
) -> Result<bool, String> {
    let timer = ExecutionTimerConfig {
        limit: remaining,
        check_interval: NonZeroU32::new(TIMER_CHECK_INTERVAL).unwrap_or(NonZeroU32::MIN),
    };
    // A panic inside the VM must not escape `evaluate`: it becomes an error (fail closed) and
    // the VM, whose state is unknown, is discarded.
    #[cfg(test)]
    test_stall::maybe_stall();
    let run = |vm: &mut RegoVM| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            vm.set_input(input.clone());
            vm.set_execution_timer_config(Some(timer));
            vm.execute_entry_point_by_index(0)
                .map(|v| v == regorus::Value::Bool(true))
                .map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err(PANICKED.to_string()))
    };
    VMS.with(|cell| {
        let Ok(mut cache) = cell.try_borrow_mut() else {
            return run(&mut new_vm(program));
        };
        if cache.set_id != set.id {
            cache.vms.clear();
            cache.vms.resize_with(set.total_rules, || None);
            cache.set_id = set.id;
        }
        match cache.vms.get_mut(slot) {
            Some(entry) => {
                let result = run(entry.get_or_insert_with(|| Box::new(new_vm(program))));
                if matches!(&result, Err(e) if e == PANICKED) {
                    *entry = None;
                }
                result
            }
            None => run(&mut new_vm(program)),
        }
    })
}

/// Logs at most once per second per call site; counts what it suppressed.
pub(crate) struct RateLimitedLog {
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    pub(crate) const fn new() -> Self {
        RateLimitedLog {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns `Some(suppressed_count)` when the caller may log now.
    pub(crate) fn allow(&self) -> Option<u64> {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1000;
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1000
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

static LOG_UNAVAILABLE: RateLimitedLog = RateLimitedLog::new();
static LOG_ERROR: RateLimitedLog = RateLimitedLog::new();
static LOG_SHADOW: RateLimitedLog = RateLimitedLog::new();

/// The active, immutable set of compiled packs. Shared across threads behind an `Arc`.
#[derive(Debug, Clone)]
pub struct PolicySet {
    packs: Vec<Arc<CompiledPack>>,
    refs: Vec<PackRef>,
    deadline: Duration,
    /// Unique per constructed set (keys the per-thread VM cache).
    id: u64,
    /// Index of each pack's first rule in the set-wide rule numbering.
    offsets: Vec<usize>,
    total_rules: usize,
}

impl PolicySet {
    /// Builds a set from compiled packs (evaluated in the given order) with an evaluation
    /// deadline.
    /// Deadlines above [`MAX_DEADLINE`] are clamped to it.
    pub fn new(packs: Vec<Arc<CompiledPack>>, deadline: Duration) -> Self {
        let deadline = deadline.min(MAX_DEADLINE);
        let refs = packs.iter().map(|p| p.pack_ref.clone()).collect();
        let mut offsets = Vec::with_capacity(packs.len());
        let mut total_rules = 0;
        for p in &packs {
            offsets.push(total_rules);
            total_rules += p.rules.len();
        }
        PolicySet {
            packs,
            refs,
            deadline,
            id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
            offsets,
            total_rules,
        }
    }

    /// A set with no packs: every decision is `block` / `POLICY_UNAVAILABLE`.
    pub fn empty() -> Self {
        Self::new(Vec::new(), DEFAULT_DEADLINE)
    }

    /// The packs in evaluation order.
    pub fn packs(&self) -> &[Arc<CompiledPack>] {
        &self.packs
    }

    /// Evaluates `input` against every pack. Never panics on input, never errors: failures are
    /// fail-closed `block` decisions (`POLICY_UNAVAILABLE`, `POLICY_ERROR`).
    ///
    /// The deadline bounds the engine's work, not the scheduler: it is enforced on wall-clock
    /// time (the VM timer), but an overrun during which this thread used less CPU time than the
    /// deadline was preemption on a busy host, and the evaluation runs once more with a fresh
    /// budget instead of failing closed (under overload, about 1 decision in 4,000 used to be a
    /// spurious `POLICY_ERROR`). A second overrun fails closed whatever the cause.
    pub fn evaluate(&self, input: &EvalInput) -> Decision {
        let start = Instant::now();
        // The thread's CPU clock is a system call (~0.5 us here, no vDSO), so it is read only once
        // Rego is about to run; an overrun before that was spent in index lookups and scheduling.
        let mut cpu = None;
        let mut result = self.evaluate_inner(input, start, &mut cpu);
        if let Err(f) = &result
            && f.overran
            && cpu
                .is_none_or(|c: cpu_time::ThreadTime| c.try_elapsed().is_ok_and(|used| used < self.deadline))
        {
            tracing::debug!(why = %f.why, "policy deadline overrun while preempted; evaluating again");
            result = self.evaluate_inner(input, Instant::now(), &mut None);
        }
        let mut decision = match result {
            Ok(d) => d,
            Err(f) => self.fail(f.code, f.why),
        };
        decision.evaluation_micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        decision
    }

    /// Whether every call of `action` by `agent` is `block` whatever its context, and why: an enforced rule (of an
    /// enforced pack) without `when` decides `block` for it, or no pack is loaded (every decision fails closed).
    /// Conditional rules and default decisions are not consulted, so `None` only means "not always blocked".
    /// Records nothing and runs no Rego: the MCP proxy asks it for each tool a `tools/list` answer names.
    pub(crate) fn always_blocks(&self, agent: &super::types::AgentRef, action: &str) -> Option<String> {
        if self.packs.is_empty() {
            return Some(POLICY_UNAVAILABLE.to_string());
        }
        let mut candidates = Vec::new();
        let mut scratch = Vec::new();
        for pack in self.packs.iter().filter(|p| p.mode == Mode::Enforce) {
            pack.index.candidates(action, &mut candidates, &mut scratch);
            let hit = candidates
                .iter()
                .filter_map(|&ri| pack.rules.get(ri as usize))
                .find(|r| {
                    r.decision == Outcome::Block
                        && !r.shadow
                        && r.when.is_none()
                        && r.agents.matches(&agent.id, &agent.name)
                });
            if let Some(rule) = hit {
                return Some(format!(
                    "{}/{} ({})",
                    pack.pack_ref.name, rule.id, rule.reason_code
                ));
            }
        }
        None
    }

    fn fail(&self, code: &str, why: String) -> Decision {
        let limiter = if code == POLICY_UNAVAILABLE {
            &LOG_UNAVAILABLE
        } else {
            &LOG_ERROR
        };
        if let Some(suppressed) = limiter.allow() {
            if code == POLICY_UNAVAILABLE {
                tracing::warn!(suppressed, reason = %why, "policy decision failed closed: block/{code}");
            } else {
                tracing::error!(suppressed, reason = %why, "policy decision failed closed: block/{code}");
            }
        }
        Decision::fail_closed(code, Some(why), self.refs.clone())
    }

    fn evaluate_inner(
        &self,
        input: &EvalInput,
        start: Instant,
        cpu: &mut Option<cpu_time::ThreadTime>,
    ) -> Result<Decision, Failure> {
        if self.packs.is_empty() {
            return Err(Failure::new(
                POLICY_UNAVAILABLE,
                "no valid policy pack is loaded".into(),
                false,
            ));
        }
        // Rules match canonical names only; an entry point that skipped `names::action` must not get `allow` for a
        // spelling no rule was written for.
        if !names::is_canonical_action(&input.action) {
            return Err(Failure::new(
                POLICY_ERROR,
                format!(
                    "action {:?} is not a canonical action name (entry points canonicalise with names::action)",
                    input.action
                ),
                false,
            ));
        }
        let deadline = start + self.deadline;
        let mut rego_input: Option<regorus::Value> = None;
        let mut matched: Vec<MatchedRule> = Vec::new();
        let mut candidates: Vec<u32> = Vec::new();
        let mut scratch: Vec<usize> = Vec::new();
        // (contribution, reason codes) per pack, enforced view and "would decide" view.
        let mut outcome = Outcome::Allow;
        let mut would = Outcome::Allow;
        let mut contributions: Vec<(Outcome, usize, usize, bool)> = Vec::new();

        for (pi, pack) in self.packs.iter().enumerate() {
            let offset = self.offsets.get(pi).copied().unwrap_or(0);
            pack.index
                .candidates(&input.action, &mut candidates, &mut scratch);
            let first = matched.len();
            for &ri in &candidates {
                let Some(rule) = pack.rules.get(ri as usize) else {
                    continue;
                };
                if !rule.agents.matches(&input.agent.id, &input.agent.name) {
                    continue;
                }
                if let Some(program) = &rule.when {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(Failure::new(
                            POLICY_ERROR,
                            format!(
                                "evaluation deadline of {:?} exceeded before pack {} rule {}",
                                self.deadline, pack.pack_ref.name, rule.id
                            ),
                            true,
                        ));
                    }
                    if rego_input.is_none() {
                        *cpu = cpu_time::ThreadTime::try_now().ok();
                        match rego_input_of(input) {
                            Ok(v) => rego_input = Some(v),
                            Err(e) => {
                                return Err(Failure::new(
                                    POLICY_ERROR,
                                    format!("cannot encode input: {e}"),
                                    false,
                                ));
                            }
                        }
                    }
                    let Some(value) = rego_input.as_ref() else {
                        continue;
                    };
                    match run_when(
                        self,
                        offset + ri as usize,
                        program,
                        value,
                        deadline.saturating_duration_since(now),
                    ) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) if rule.shadow && Instant::now() < deadline => {
                            if let Some(suppressed) = LOG_SHADOW.allow() {
                                tracing::warn!(suppressed, pack = %pack.pack_ref.name, rule = %rule.id, error = %e,
                                    "shadow rule failed to evaluate; ignored");
                            }
                            continue;
                        }
                        Err(e) => {
                            let overran = Instant::now() >= deadline;
                            let what = if overran {
                                format!("evaluation deadline of {:?} exceeded", self.deadline)
                            } else {
                                "evaluation error".to_string()
                            };
                            return Err(Failure::new(
                                POLICY_ERROR,
                                format!("{what} in pack {} rule {}: {e}", pack.pack_ref.name, rule.id),
                                overran,
                            ));
                        }
                    }
                }
                matched.push(MatchedRule {
                    id: rule.id.clone(),
                    pack: pack.pack_ref.name.clone(),
                    decision: rule.decision,
                    reason_code: rule.reason_code.clone(),
                    message: rule.message.clone(),
                    shadow: rule.shadow,
                    approval: rule.approval.clone(),
                });
            }
            let mine = &matched[first..];
            // Enforced view: shadow packs contribute nothing; shadow rules are ignored.
            let enforced_max = mine.iter().filter(|m| !m.shadow).map(|m| m.decision).max();
            let any_max = mine.iter().map(|m| m.decision).max();
            if pack.mode == Mode::Enforce {
                let (c, from_default) = match enforced_max {
                    Some(d) => (d, false),
                    None => (pack.default_decision, true),
                };
                outcome = outcome.max(c);
                contributions.push((c, first, matched.len(), from_default));
            }
            would = would.max(any_max.unwrap_or(pack.default_decision));
        }
        // A builtin call cannot be interrupted by the VM timer: re-check after Rego ran. Pure
        // index decisions are bounded work and are not failed for scheduler preemption.
        if rego_input.is_some() && Instant::now() > deadline {
            return Err(Failure::new(
                POLICY_ERROR,
                format!("evaluation deadline of {:?} exceeded", self.deadline),
                true,
            ));
        }

        let mut reason_codes: Vec<String> = Vec::new();
        let mut push = |code: &str| {
            if !reason_codes.iter().any(|c| c == code) {
                reason_codes.push(code.to_string());
            }
        };
        for &(c, from, to, from_default) in &contributions {
            if c != outcome {
                continue;
            }
            if from_default {
                if c != Outcome::Allow {
                    push(DEFAULT_DECISION);
                }
            } else {
                for m in &matched[from..to] {
                    if !m.shadow && m.decision == outcome {
                        push(&m.reason_code);
                    }
                }
            }
        }
        Ok(Decision {
            outcome,
            reason_codes,
            would_decide: would,
            matched_rules: matched,
            policy: self.refs.clone(),
            evaluation_micros: 0,
            error: None,
        })
    }
}

/// Why an evaluation fails closed, before it is logged and turned into a decision.
struct Failure {
    code: &'static str,
    why: String,
    /// The wall-clock deadline passed (as opposed to an engine error).
    overran: bool,
}

impl Failure {
    fn new(code: &'static str, why: String, overran: bool) -> Failure {
        Failure { code, why, overran }
    }
}

/// Tests simulate a preempted thread: the next `n` Rego calls on this thread sleep first (wall-clock time
/// passes, the thread uses no CPU).
#[cfg(test)]
pub(crate) mod test_stall {
    use std::cell::Cell;
    use std::time::Duration;

    thread_local! {
        static STALL: Cell<(u32, Duration)> = const { Cell::new((0, Duration::ZERO)) };
    }

    /// Makes the next `n` Rego calls on this thread sleep for `d` before running.
    pub(crate) fn set(n: u32, d: Duration) {
        STALL.with(|s| s.set((n, d)));
    }

    pub(super) fn maybe_stall() {
        let (n, d) = STALL.with(Cell::get);
        if n > 0 {
            STALL.with(|s| s.set((n - 1, d)));
            std::thread::sleep(d);
        }
    }
}
