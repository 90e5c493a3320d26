//! `kla ledger verify`, `kla ledger key` and `kla verify BUNDLE --key PUB`.
//! Argument types and `run_*` functions; `main` wires them into the command tree.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;

use crate::ledger::{self, LedgerError};

/// `kla ledger ...`
#[derive(Debug, clap::Args)]
pub struct LedgerArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: LedgerCommand,
}

/// Subcommands of `kla ledger`.
#[derive(Debug, clap::Subcommand)]
pub enum LedgerCommand {
    /// Recompute and check the whole local log (checksums, leaf and node hashes,
    /// checkpoint root and signature).
    Verify(LedgerVerifyArgs),
    /// Print the ledger's verifier key (what `kla verify --key` takes).
    Key(LedgerKeyArgs),
}

/// `kla ledger verify --data-dir DIR`
#[derive(Debug, clap::Args)]
pub struct LedgerVerifyArgs {
    /// kla data directory; the ledger lives in `<data-dir>/ledger/`.
    #[arg(long, env = "KLA_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// `kla ledger key --data-dir DIR`
#[derive(Debug, clap::Args)]
pub struct LedgerKeyArgs {
    /// kla data directory; the ledger lives in `<data-dir>/ledger/`.
    #[arg(long, env = "KLA_DATA_DIR")]
    pub data_dir: PathBuf,
}

/// `kla verify BUNDLE --key PUB`
#[derive(Debug, clap::Args)]
pub struct VerifyBundleArgs {
    /// Evidence bundle file (`kla-evidence/v1` JSON).
    pub bundle: PathBuf,
    /// The ledger verifier key string (`<name>+<id>+<key>`), or a file containing it.
    #[arg(long)]
    pub key: String,
}

fn ledger_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ledger")
}

/// Runs `kla ledger <command>`.
pub fn run_ledger(args: LedgerArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LedgerCommand::Verify(a) => run_ledger_verify(a),
        LedgerCommand::Key(a) => run_ledger_key(a),
    }
}

/// Runs `kla ledger verify`: exit 0 if the whole log checks out, 1 naming the first
/// bad index otherwise.
pub fn run_ledger_verify(args: LedgerVerifyArgs) -> anyhow::Result<ExitCode> {
    let dir = ledger_dir(&args.data_dir);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} verifying ledger {bytes}/{total_bytes} [{bar:30}] {binary_bytes_per_sec} eta {eta}",
        )
        .context("progress style")?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let res = ledger::verify_ledger_dir(&dir, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let mut out = std::io::stdout().lock();
    report_verify(&mut out, &dir, res, started.elapsed().as_secs_f64())
}

fn report_verify(
    out: &mut dyn Write,
    dir: &Path,
    res: Result<ledger::VerifySummary, LedgerError>,
    secs: f64,
) -> anyhow::Result<ExitCode> {
    match res {
        Ok(s) => {
            writeln!(
                out,
                "ok: {} entries in {} verified in {secs:.2}s ({:.0} entries/s)",
                s.entries,
                dir.display(),
                s.entries as f64 / secs.max(1e-9)
            )?;
            writeln!(out, "root: sha256:{}", hex::encode(s.root))?;
            match s.checkpoint_size {
                Some(n) => writeln!(out, "checkpoint: size {n}, signature and root verified")?,
                None => writeln!(out, "checkpoint: none issued yet")?,
            }
            if s.torn_tail_bytes > 0 {
                writeln!(
                    out,
                    "note: {} bytes of a torn final record (incomplete, or a bad checksum before the zero-filled \
                     tail; never acknowledged) will be cut off on next open",
                    s.torn_tail_bytes
                )?;
            }
            if s.preallocated_bytes > 0 {
                writeln!(
                    out,
                    "preallocated: {} zero bytes after the last entry (checked)",
                    s.preallocated_bytes
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(LedgerError::Corrupt { index, detail }) => {
            writeln!(out, "FAILED: ledger corrupt at index {index}: {detail}")?;
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            writeln!(out, "FAILED: {e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs `kla ledger key`: prints the verifier key string.
pub fn run_ledger_key(args: LedgerKeyArgs) -> anyhow::Result<ExitCode> {
    let vkey = ledger::verifier_key_for_dir(&ledger_dir(&args.data_dir))
        .with_context(|| format!("reading ledger key in {}", args.data_dir.display()))?;
    println!("{vkey}");
    Ok(ExitCode::SUCCESS)
}

/// Resolves `--key`: the verifier key string itself, or a file containing it.
fn resolve_key(key: &str) -> anyhow::Result<String> {
    if key.contains('+') && !Path::new(key).exists() {
        return Ok(key.trim().to_owned());
    }
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("--key {key:?} is neither a verifier key nor a readable file"))?;
    Ok(text.trim().to_owned())
}

/// Runs `kla verify BUNDLE --key PUB`: prints each check; exit 1 naming the failing
/// entry if anything does not verify.
pub fn run_verify_bundle(args: VerifyBundleArgs) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(&args.bundle).with_context(|| format!("reading bundle {}", args.bundle.display()))?;
    let vkey = resolve_key(&args.key)?;
    let mut out = std::io::stdout().lock();
    report_bundle(&mut out, &bytes, &vkey)
}

fn report_bundle(out: &mut dyn Write, bytes: &[u8], vkey: &str) -> anyhow::Result<ExitCode> {
    match ledger::verify_bundle(bytes, vkey) {
        Ok(r) => {
            for c in &r.checks {
                writeln!(out, "ok: {c}")?;
            }
            writeln!(
                out,
                "VERIFIED: {} entries against checkpoint {} size {} root {}",
                r.checks.len().saturating_sub(5),
                r.origin,
                r.tree_size,
                r.root_hash
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            writeln!(out, "FAILED: {e}")?;
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::ledger::{Entry, Ledger, LedgerConfig, new_lineage_id};

    fn entry(i: u64) -> Vec<u8> {
        Entry {
            v: 1,
            kind: "agent.registered".into(),
            lineage_id: new_lineage_id(),
            tenant: "acme".into(),
            time: "2026-01-01T00:00:00Z".into(),
            body: serde_json::json!({ "i": i }),
        }
        .encode()
        .expect("encode")
    }

    /// What `kla verify` prints for `bundle`, and its exit code.
    fn report(bundle: &impl serde::Serialize, vkey: &str) -> (ExitCode, String) {
        let bytes = serde_json::to_vec(bundle).expect("json");
        let mut out = Vec::new();
        let code = report_bundle(&mut out, &bytes, vkey).expect("report");
        (code, String::from_utf8(out).expect("utf8"))
    }

    #[tokio::test]
    async fn verify_and_bundle_commands_report_and_exit() {
        let tmp = tempfile::tempdir().expect("tmp");
        let l = Ledger::open(LedgerConfig::new(ledger_dir(tmp.path()))).expect("open");
        for i in 0..5 {
            l.append(entry(i)).await.expect("append");
        }
        let bundle = l.build_evidence(&[3]).await.expect("bundle");
        let vkey = l.verifier_key();
        drop(l);

        let dir = ledger_dir(tmp.path());
        let mut out = Vec::new();
        let res = ledger::verify_ledger_dir(&dir, &mut |_, _| {});
        let code = report_verify(&mut out, &dir, res, 0.01).expect("report");
        assert_eq!(code, ExitCode::SUCCESS);
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("ok: 5 entries"), "{text}");

        // the key command's source of truth and the --key file form
        assert_eq!(ledger::verifier_key_for_dir(&dir).expect("vkey"), vkey);
        let key_file = tmp.path().join("ledger.pub");
        std::fs::write(&key_file, format!("{vkey}\n")).expect("write");
        assert_eq!(resolve_key(key_file.to_str().expect("path")).expect("key"), vkey);
        assert_eq!(resolve_key(&vkey).expect("key"), vkey);

        let (code, text) = report(&bundle, &vkey);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(text.contains("VERIFIED: 1 entries"), "{text}");

        let mut bad = bundle.clone();
        bad.entries[0].entry = bad.entries[0].entry.replacen("\"i\":3", "\"i\":4", 1);
        let (code, text) = report(&bad, &vkey);
        assert_eq!(code, ExitCode::FAILURE);
        assert!(
            text.contains("bundle entry 3") && text.contains(&bundle.entries[0].lineage_id),
            "{text}"
        );

        // damage in the log makes `ledger verify` fail naming the index
        let entries = dir.join("entries.log");
        let mut data = std::fs::read(&entries).expect("read");
        let last = data.len() - 2;
        data[last] ^= 1;
        std::fs::write(&entries, data).expect("write");
        let mut out = Vec::new();
        let res = ledger::verify_ledger_dir(&dir, &mut |_, _| {});
        assert_eq!(
            report_verify(&mut out, &dir, res, 0.01).expect("report"),
            ExitCode::FAILURE
        );
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.contains("index 4"), "{text}");
    }
}
