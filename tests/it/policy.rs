//! Issue 3 through the real server: outcomes, precedence, shadow, signatures, reload, fail-closed.
