//! kla's one integration test binary: every test drives the real server over loopback (in process through
//! `kla::app::start`, or the real `kla` binary where a restart or a kill is part of the test). One module per
//! feature; `harness` holds the helpers they share and `verifier` the proof checks written independently of kla.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod approvals;
mod auth;
mod crash;
mod decisions;
mod default_pack;
mod desk;
mod durability;
mod errors;
mod events;
mod evidence;
mod executions;
mod free_text;
mod fuzz;
mod harness;
mod health;
mod hostile_input;
mod idempotency;
mod ids;
mod isolation;
mod ledger;
mod ledger_health;
mod listeners;
mod mcp;
mod names;
mod otlp;
mod policy;
mod preallocate;
mod proxy;
mod proxy_target;
mod rate_limit;
mod records;
mod redaction;
mod reindex;
mod restart;
mod shutdown;
mod telemetry;
mod tls;
mod upstream;
mod verifier;
mod webhooks;
