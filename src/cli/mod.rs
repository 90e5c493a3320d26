//! Command-line subcommands. The only module where `anyhow` is fine.

pub mod ledger;
pub mod pack;
pub mod serve;
pub mod token;

use clap::{Parser, Subcommand};

/// kla: a governance sidecar for AI agents.
#[derive(Debug, Parser)]
#[command(name = "kla", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the kla server (API, policy engine, ledger).
    Serve(Box<serve::ServeArgs>),
    /// Print a signed API token for a tenant and role.
    Token(token::TokenArgs),
    /// Policy packs: keygen, sign, verify, test, eval.
    Pack(pack::PackArgs),
    /// The local ledger: verify it whole, print its verifier key.
    Ledger(ledger::LedgerArgs),
    /// Check an evidence bundle offline against the ledger's verifier key.
    Verify(ledger::VerifyBundleArgs),
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Token(a) => token::run(a),
        Command::Pack(a) => pack::run(a),
        Command::Ledger(a) => ledger::run_ledger(a),
        Command::Verify(a) => ledger::run_verify_bundle(a),
    }
}
