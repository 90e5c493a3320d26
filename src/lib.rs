//! kla: a governance sidecar for AI agents.
//!
//! Modules in reading order: `config` (what the operator set) and `app` (builds every part and owns shutdown);
//! the entry points: `api` (REST) and `desk` (the Decision Desk's web page and its sign-in); the governed action:
//! `decide` (phases of one decision), `names` (the one grammar and canonical form of action and agent names),
//! `auth` (who calls), `registry` (agents), `policy` (signed packs, pure evaluation), `redact` (what may be
//! recorded); executions: `executions` (the lifecycle of governed agent runs and its recorded moves); the Decision Desk's event stream: `events` (ledger entries as events, followed once and fanned out);
//! the record: `recorder` (typed records, the ledger-first write order, the index, following what was recorded),
//! `ledger` (RFC 6962 log, proofs, checkpoints, evidence) and `store` (the only SQL); and `error` (how every error
//! is classified), `json` (refusing repeated keys in JSON from outside), `telemetry`, `time`, `cli`; `webhooks` (signed
//! pushes of the event stream); `proxy` (the tool-call proxy: routes, actions, forwarding); `otlp` (OTLP trace
//! receivers, span redaction and sealing, forwarding); and, hidden and only with the `fuzzing` feature, `fuzzing` (the fuzz
//! targets over every parser of outside bytes); in unit tests only, `test_support` (set-ups that several unit tests
//! share).
pub mod api;
pub mod app;
pub mod approvals;
pub mod auth;
pub mod cli;
pub mod config;
pub mod coord;
pub mod decide;
pub mod desk;
pub mod error;
pub mod events;
pub mod executions;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod json;
pub mod ledger;
pub mod names;
pub mod otlp;
pub mod policy;
pub mod proxy;
pub mod recorder;
pub mod redact;
pub mod registry;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(test)]
pub(crate) mod test_support;
pub mod time;
pub mod webhooks;
