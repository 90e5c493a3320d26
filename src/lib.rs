//! kla: a governance sidecar for AI agents.
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod ledger;
pub mod policy;
pub mod recorder;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod time;
