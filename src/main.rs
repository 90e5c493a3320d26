//! The `kla` binary: parse the command line, run, map the outcome to an exit code.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = kla::cli::Cli::parse();
    match kla::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kla: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// glibc's allocator spent a quarter of the decision hot path in malloc/free under load (perf, BENCHMARKS.md);
// mimalloc's thread-local free lists avoid that contention.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
