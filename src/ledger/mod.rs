//! ledger (placeholder)
