//! kla: a governance sidecar for AI agents.
pub mod api;
pub mod cli;
pub mod config;
pub mod ledger;
pub mod policy;
pub mod store;
pub mod telemetry;
