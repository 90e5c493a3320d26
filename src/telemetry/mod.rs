//! telemetry (placeholder)
