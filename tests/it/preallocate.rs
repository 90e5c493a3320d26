//! The ledger's preallocated (zero-filled) tail through the real binary: `--ledger-preallocate` sets its size and
//! `0` turns it off; and a zero-fill that fails (a disk with less free space than the tail) only turns
//! preallocation off: appends go on, kla stays ready, and the ledger verifies.

use crate::harness::*;
use kla::auth::Role;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: &str = "acme-prealloc";
const SMALL: u64 = 64 << 10;

fn entries_len(data: &Path) -> u64 {
    std::fs::metadata(data.join("ledger").join(kla::ledger::log::ENTRIES_FILE))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// The `zero_slices` the ledger writer logged when it stopped.
fn zero_slices(log: &str) -> u64 {
    let line = log
        .lines()
        .find(|l| l.contains("ledger writer stopped"))
        .unwrap_or_else(|| panic!("no `ledger writer stopped` line:\n{log}"));
    let v: Value = serde_json::from_str(line).expect("a JSON log line");
    v["fields"]["zero_slices"].as_u64().expect("zero_slices")
}

async fn some_decisions(p: &Process, n: usize) {
    let tok = p.token(T, Role::Agent);
    let agent = p.register(&tok, T, &format!("bot-{}", rand_suffix())).await;
    for i in 0..n {
        p.decide(
            &tok,
            T,
            json!({"agentId": agent, "action": "lookup_policy", "context": {"i": i}}),
        )
        .await;
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::test]
async fn the_zero_tail_has_the_configured_size_and_0_turns_it_off() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let size = SMALL.to_string();
    let p = Process::serve(&data, &["--ledger-preallocate", &size]).await;
    some_decisions(&p, 3).await;
    // The writer zero-fills when idle: wait until the tail is there, then check it has the configured size and
    // not the default 64 MiB.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while entries_len(&data) < SMALL {
        assert!(
            std::time::Instant::now() < deadline,
            "no zero tail: entries.log is {} bytes",
            entries_len(&data)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let len = entries_len(&data);
    assert!(
        len < 2 * SMALL,
        "entries.log is {len} bytes with a {SMALL}-byte tail"
    );
    let stopped = tokio::task::spawn_blocking(move || p.terminate()).await.unwrap();
    assert!(stopped.success(), "{}", stopped.log);
    assert!(zero_slices(&stopped.log) >= 1, "{}", stopped.log);
    // A clean stop cuts the tail: the file is the log.
    let log_only = entries_len(&data);
    assert!(log_only < SMALL, "{log_only}");

    // Off: the same ledger, appended to, is never zero-filled.
    let p = Process::serve(&data, &["--ledger-preallocate", "0"]).await;
    some_decisions(&p, 3).await;
    let stopped = tokio::task::spawn_blocking(move || p.terminate()).await.unwrap();
    assert!(stopped.success(), "{}", stopped.log);
    assert_eq!(zero_slices(&stopped.log), 0, "{}", stopped.log);
    assert!(entries_len(&data) > log_only);

    // Out of range is refused at startup, naming the key.
    let refused = Process::start(&data, &["--ledger-preallocate", "100"])
        .await
        .err()
        .expect("refused");
    assert!(!refused.success());
    assert!(
        refused.log.contains("ledger.preallocate (--ledger-preallocate)"),
        "{}",
        refused.log
    );
}

/// A directory with little free space: a 16 MiB tmpfs where this process may mount one (root), else a file size
/// limit of 16 MiB on kla (`ulimit -f`, SIGXFSZ ignored, so a write past it fails with EFBIG). Either way the
/// default 64 MiB zero tail cannot be written.
struct SmallDisk {
    dir: PathBuf,
    mounted: bool,
    _tmp: tempfile::TempDir,
}

const SMALL_DISK_MIB: u64 = 16;

impl SmallDisk {
    fn new() -> SmallDisk {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("disk");
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={SMALL_DISK_MIB}m"), "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        SmallDisk {
            dir,
            mounted,
            _tmp: tmp,
        }
    }

    /// How to run kla on it.
    fn command(&self) -> Command {
        if self.mounted {
            return Command::new(kla_bin());
        }
        let blocks = SMALL_DISK_MIB * 1024 * 1024 / 512;
        let mut c = Command::new("sh");
        c.args([
            "-c",
            &format!("trap '' XFSZ; ulimit -f {blocks}; exec \"$@\""),
            "sh",
        ])
        .arg(kla_bin());
        c
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}

#[tokio::test]
async fn a_failed_zero_fill_turns_preallocation_off_and_appends_go_on() {
    let disk = SmallDisk::new();
    let data = disk.dir.join("data");
    let p = match Process::start_in(disk.command(), &data, &[], &[]).await {
        Ok(p) => p,
        Err(e) => panic!("kla did not start on a small disk ({}):\n{}", e.status, e.log),
    };
    let failed = p
        .wait_log("ledger zero-fill failed", Duration::from_secs(30), |l| {
            l.contains("ledger zero-fill failed")
        })
        .await;
    // Appends go on: registrations, decisions, and kla stays ready.
    some_decisions(&p, 20).await;
    let ready = p.get("/readyz", "", T).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(failed.contains("preallocation is off"), "{failed}");
    // The zero tail was given back: the file is the log, far below the disk's size.
    assert!(
        entries_len(&data) < 1 << 20,
        "entries.log holds {} bytes",
        entries_len(&data)
    );
    assert!(!p.log().contains("refusing further appends"), "{}", p.log());
    let stopped = tokio::task::spawn_blocking(move || p.terminate()).await.unwrap();
    assert!(stopped.success(), "{}", stopped.log);
    let out = kla(&["ledger", "verify", "--data-dir", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    eprintln!(
        "small disk: {}",
        if disk.mounted { "tmpfs" } else { "file size limit" }
    );
}
