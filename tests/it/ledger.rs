//! Issue 4 through the real server: proofs, checkpoints, evidence, crash and tamper.
