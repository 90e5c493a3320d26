//! `kla pack ...` (placeholder)
