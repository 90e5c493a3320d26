//! `kla pack ...`: key generation, signing, verification, test suites and one-off evaluation
//! of policy packs. Thin wrappers over [`crate::policy`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::policy::{
    CompiledPack, EvalInput, PackFiles, PackSigner, PolicySet, TrustedKey, VerifiedPack, canonical_input,
    run_suites, sign_pack_dir, verify_pack,
};

/// `kla pack <subcommand>`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PackCommand,
}

/// The `kla pack` subcommands.
#[derive(Debug, Subcommand)]
pub enum PackCommand {
    /// Generate an Ed25519 key pair for signing packs.
    Keygen(KeygenArgs),
    /// Sign a pack directory (writes DIR/pack.sig.json).
    Sign(SignArgs),
    /// Verify a pack's signature and file list against a public key.
    Verify(VerifyArgs),
    /// Run the pack's YAML test suites (DIR/tests/*.yaml).
    Test(TestArgs),
    /// Evaluate one input against a pack and print the decision JSON.
    Eval(EvalArgs),
}

/// `kla pack keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, mode 0600; never overwritten).
    #[arg(long)]
    pub private: PathBuf,
    /// Where to write the public key (`kla-ed25519:<base64>`).
    #[arg(long)]
    pub public: PathBuf,
}

/// `kla pack sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Pack directory.
    pub dir: PathBuf,
    /// Private key file.
    #[arg(long)]
    pub key: PathBuf,
}

/// `kla pack verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Pack directory.
    pub dir: PathBuf,
    /// Trusted public key file(s).
    #[arg(long, required = true)]
    pub key: Vec<PathBuf>,
}

/// `kla pack test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Pack directory.
    pub dir: PathBuf,
    /// Verify the signature with this public key first (default: test the pack unsigned).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// `kla pack eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Pack directory.
    pub dir: PathBuf,
    /// JSON file with the input document (`-` for stdin).
    #[arg(long)]
    pub input: PathBuf,
    /// Verify the signature with this public key first (default: evaluate the pack unsigned).
    #[arg(long)]
    pub key: Option<PathBuf>,
}

/// Runs `kla pack <subcommand>`.
pub fn run(args: PackArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match args.command {
        PackCommand::Keygen(a) => run_keygen(&a, &mut out),
        PackCommand::Sign(a) => run_sign(&a, &mut out),
        PackCommand::Verify(a) => run_verify(&a, &mut out),
        PackCommand::Test(a) => run_test(&a, &mut out),
        PackCommand::Eval(a) => run_eval(&a, &mut out),
    }
}

/// `kla pack keygen`.
pub fn run_keygen(args: &KeygenArgs, out: &mut dyn std::io::Write) -> anyhow::Result<ExitCode> {
    let signer = PackSigner::generate();
    signer.write(&args.private, &args.public)?;
    writeln!(
        out,
        "wrote private key {} (keep it secret) and public key {} (key id {})",
        args.private.display(),
        args.public.display(),
        signer.public().id()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `kla pack sign`.
pub fn run_sign(args: &SignArgs, out: &mut dyn std::io::Write) -> anyhow::Result<ExitCode> {
    let signer = PackSigner::read(&args.key)?;
    let digest =
        sign_pack_dir(&args.dir, &signer).with_context(|| format!("signing {}", args.dir.display()))?;
    writeln!(
        out,
        "signed {} with key {} (manifest sha256 {digest})",
        args.dir.display(),
        signer.public().id()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `kla pack verify`: exit 0 when the signature, the file list and the content are valid.
pub fn run_verify(args: &VerifyArgs, out: &mut dyn std::io::Write) -> anyhow::Result<ExitCode> {
    let keys = args
        .key
        .iter()
        .map(|p| TrustedKey::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let files = PackFiles::read_dir(&args.dir)?;
    match verify_pack(files, &keys).and_then(|v| CompiledPack::compile(&v)) {
        Ok(pack) => {
            let r = pack.pack_ref();
            writeln!(
                out,
                "OK {}@{} signed by {} (manifest sha256 {}), {} rules",
                r.name,
                r.version,
                r.signer_key_id.as_deref().unwrap_or("-"),
                r.digest,
                pack.rule_count()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "REFUSED {e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

fn load_for_cli(dir: &Path, key: Option<&Path>) -> anyhow::Result<(PackFiles, CompiledPack)> {
    let files = PackFiles::read_dir(dir)?;
    let verified = match key {
        Some(k) => verify_pack(files.clone(), &[TrustedKey::read(k)?])?,
        None => VerifiedPack::accept_unsigned(files.clone()),
    };
    Ok((files, CompiledPack::compile(&verified)?))
}

/// Deadline used by `test` and `eval`: suites check logic, not latency (debug builds are slow).
const CLI_DEADLINE: Duration = Duration::from_secs(1);

/// `kla pack test`: prints PASS/FAIL per case; exit 1 when any case fails or none exist.
pub fn run_test(args: &TestArgs, out: &mut dyn std::io::Write) -> anyhow::Result<ExitCode> {
    let (files, pack) = load_for_cli(&args.dir, args.key.as_deref())?;
    let set = PolicySet::new(vec![std::sync::Arc::new(pack)], CLI_DEADLINE);
    let report = run_suites(&files, &set)?;
    for c in &report.cases {
        if c.passed {
            writeln!(out, "PASS {} :: {}", c.file, c.name)?;
        } else {
            writeln!(out, "FAIL {} :: {}: {}", c.file, c.name, c.detail)?;
        }
    }
    let failed = report.failed();
    writeln!(
        out,
        "{} cases, {} passed, {} failed",
        report.cases.len(),
        report.cases.len() - failed,
        failed
    )?;
    if report.cases.is_empty() {
        writeln!(out, "no test cases found under {}/tests/", args.dir.display())?;
        return Ok(ExitCode::FAILURE);
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `kla pack eval`: prints the decision as pretty JSON.
pub fn run_eval(args: &EvalArgs, out: &mut dyn std::io::Write) -> anyhow::Result<ExitCode> {
    let (_, pack) = load_for_cli(&args.dir, args.key.as_deref())?;
    let text = if args.input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.input).with_context(|| format!("reading {}", args.input.display()))?
    };
    let mut input: EvalInput = crate::json::from_slice_unique(text.as_bytes())
        .with_context(|| format!("{} is not a valid input document", args.input.display()))?;
    canonical_input(&mut input).map_err(|e| anyhow::anyhow!("{}: {e}", args.input.display()))?;
    let set = PolicySet::new(vec![std::sync::Arc::new(pack)], CLI_DEADLINE);
    let decision = set.evaluate(&input);
    writeln!(out, "{}", serde_json::to_string_pretty(&decision)?)?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn repo(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    #[test]
    fn policy_cli_pack_test_on_default_pack_passes() {
        let mut out = Vec::new();
        let args = TestArgs {
            dir: repo("policies/default"),
            key: Some(repo("policies/kla-default.pub")),
        };
        assert_eq!(run_test(&args, &mut out).unwrap(), ExitCode::SUCCESS);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(" 0 failed") && !text.contains("FAIL "), "{text}");
    }

    #[test]
    fn policy_cli_pack_test_on_failing_suite_exits_nonzero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tests")).unwrap();
        std::fs::copy(
            repo("examples/packs/payments/pack.yaml"),
            dir.path().join("pack.yaml"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("tests/t.yaml"),
            "cases:\n  - name: deletes are fine (wrong)\n    input: {agent: {id: a}, action: delete_x}\n    expect: {decision: allow}\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let args = TestArgs {
            dir: dir.path().to_path_buf(),
            key: None,
        };
        assert_eq!(run_test(&args, &mut out).unwrap(), ExitCode::FAILURE);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAIL ") && text.contains("expected allow, got block"),
            "{text}"
        );
    }

    #[test]
    fn policy_cli_keygen_sign_verify_eval_roundtrip() {
        let keys = tempfile::tempdir().unwrap();
        let private = keys.path().join("k.key");
        let public = keys.path().join("k.pub");
        let mut out = Vec::new();
        let keygen = KeygenArgs {
            private: private.clone(),
            public: public.clone(),
        };
        assert_eq!(run_keygen(&keygen, &mut out).unwrap(), ExitCode::SUCCESS);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never overwrites a private key.
        assert!(run_keygen(&keygen, &mut out).is_err());

        let pack = tempfile::tempdir().unwrap();
        std::fs::copy(
            repo("examples/packs/payments/pack.yaml"),
            pack.path().join("pack.yaml"),
        )
        .unwrap();
        let sign = SignArgs {
            dir: pack.path().to_path_buf(),
            key: private,
        };
        assert_eq!(run_sign(&sign, &mut out).unwrap(), ExitCode::SUCCESS);
        let verify = VerifyArgs {
            dir: pack.path().to_path_buf(),
            key: vec![public.clone()],
        };
        assert_eq!(run_verify(&verify, &mut out).unwrap(), ExitCode::SUCCESS);

        let input = pack.path().join("in.json");
        std::fs::write(
            &input,
            r#"{"agent": {"id": "a"}, "action": "execute_refund", "context": {"amount": 5000}}"#,
        )
        .unwrap();
        // The input file was added after signing: verified eval refuses, unsigned eval works.
        let eval = EvalArgs {
            dir: pack.path().to_path_buf(),
            input: input.clone(),
            key: Some(public),
        };
        let err = run_eval(&eval, &mut out).unwrap_err().to_string();
        assert!(err.contains("in.json was added"), "{err}");
        let mut json = Vec::new();
        let eval = EvalArgs { key: None, ..eval };
        assert_eq!(run_eval(&eval, &mut json).unwrap(), ExitCode::SUCCESS);
        let decision: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(decision["outcome"], "require_approval");
        assert_eq!(decision["matchedRules"][0]["approval"]["timeoutSeconds"], 900);
        assert_eq!(run_verify(&verify, &mut out).unwrap(), ExitCode::FAILURE);
    }
}
