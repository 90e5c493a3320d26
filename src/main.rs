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
