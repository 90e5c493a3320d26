//! What runs a server: its listeners ([`Listener`], bound together by [`bind`], served and drained together by
//! [`Bound::serve`]) and its supervised background services ([`Services`]).

mod listener;
mod services;

pub use listener::{Bound, Listener, bind};
pub use services::Services;
