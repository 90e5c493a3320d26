//! kla's one integration test binary: every test drives the real server over loopback (in process through
//! `kla::app::start`, or the real `kla` binary where a restart or a kill is part of the test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod foundation;
mod harness;
mod ledger;
mod listeners;
mod policy;
