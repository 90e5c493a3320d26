//! What runs a server: its listeners ([`Listener`], bound together by [`bind`], served and drained together by
//! [`Bound::serve`], each connection under the [`Limits`] of its listener) and its supervised background services
//! ([`Services`]).

mod conn;
mod errors;
mod listener;
mod services;

pub use conn::{BodyTimeout, Limits, MAX_HEADER_BYTES, MAX_URI_BYTES};
pub use listener::{Bound, Listener, bind};
pub use services::Services;
