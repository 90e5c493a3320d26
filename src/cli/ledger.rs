//! `kla ledger ...` and `kla verify` (placeholder)
