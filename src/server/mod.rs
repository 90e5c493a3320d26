//! What runs a server: its listeners ([`Listener`], bound together by [`bind`], served and drained together by
//! [`Bound::serve`], each connection under the [`Limits`] of its listener) and its supervised background services
//! ([`Services`]).

mod conn;
pub mod error;
mod errors;
pub mod json;
mod listener;
pub mod ratelimit;
pub mod request_id;
mod services;
pub mod sse;

pub use conn::{BodyTimeout, Limits, MAX_HEADER_BYTES, MAX_URI_BYTES};
pub use error::{ApiError, ApiResult, Code};
pub use errors::X_REQUEST_ID;
pub use listener::{Bound, FileTls, Listener, ListenerConfig, TlsConfig, bind};
pub use ratelimit::{RateLimitConfig, RateLimiter};

/// Tenant header of the KLA Control Plane API (the REST API and the OTLP receivers read it).
pub const X_TENANT_ID: &str = "x-tenant-id";
pub use services::Services;
