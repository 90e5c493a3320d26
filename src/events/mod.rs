//! The Decision Desk's event stream: what happened, in ledger order, for SSE (`GET /v1/events`), the WebSocket
//! (`/ws`) and, later, webhooks.
//!
//! There is no event table. An [`Event`] is a pure function of one ledger entry ([`events_of_entry`]), and its id
//! is the entry's ledger index plus its number within the entry (`"<ledgerIndex>.<n>"`), so positions are ledger
//! positions: they survive restarts, a resume has neither gap nor duplicate, and the decision path writes nothing
//! more than its entry.
//!
//! The [`Hub`] (one per server) follows the ledger once for everyone while anyone listens, keeps the recent events
//! in a bounded ring and wakes subscribers; a [`Subscription`] behind the ring catches up from disk through the
//! lineage index (the recorder's reads) and the ledger, a bounded page at a time. Filters (tenant, agent-bound
//! tokens, types, execution, WebSocket topics) are applied per subscriber ([`Filter`]).
//!
//! This module knows no HTTP and no SQL: it renders each event's wire forms once (the JSON envelope, the SSE
//! message) and `api::events` and `api::ws` serve them; the recorder reads the index and the ledger for it.

mod event;
mod filter;
mod hub;
mod map;
mod subscription;

pub use event::{END_OF_ENTRY, Event, EventId, EventType, ParseIdError, Published, TypeSet, sse_heartbeat};
pub use filter::{Filter, Interest, Topic, execution_types};
pub use hub::{Hub, HubConfig, RESYNC_REQUIRED, Resync, ResyncReason, SubscribeError};
pub use map::events_of_entry;
pub use subscription::{Step, Subscription};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
