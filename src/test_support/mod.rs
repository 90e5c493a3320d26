//! Set-ups that more than one of the library's unit tests needs, written once: a recorder over a fresh ledger and
//! store ([`recorder`]) and OTLP export requests built from spans ([`otlp`]).
//!
//! Compiled only under `cfg(test)` (declared so in `lib.rs`), never in the library's build. It builds inputs and
//! owns their temporary files; it asserts nothing, so each test keeps its own checks. Helpers shared with the
//! integration tests or the fuzz targets do not belong here (those live in `tests/it` and `src/fuzzing/`).

pub(crate) mod otlp;
pub(crate) mod recorder;
