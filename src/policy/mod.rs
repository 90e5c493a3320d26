//! policy (placeholder)
