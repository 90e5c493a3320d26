//! Command-line subcommands. The only module where `anyhow` is fine.
pub mod ledger;
pub mod pack;
