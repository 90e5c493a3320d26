//! What runs a server: its supervised background services ([`Services`]).

mod services;

pub use services::Services;
