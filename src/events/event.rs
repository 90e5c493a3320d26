//! One event, its id and type, and its wire form (rendered once, shared by every subscriber).

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::str::FromStr;

/// An event's id and stream position: the ledger index of the entry it comes from and its number within that
/// entry. Ordered as the stream is. On the wire `"<ledgerIndex>.<n>"`, both in decimal without leading zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub index: u64,
    pub n: u32,
}

/// The `n` of a position that stands after every event of its entry (the id a heartbeat or `resync_required`
/// carries, so a client that resumes from it starts at the next entry).
pub const END_OF_ENTRY: u32 = u32::MAX;

impl EventId {
    /// The id `n` of the entry at `index`.
    pub fn new(index: u64, n: u32) -> EventId {
        EventId { index, n }
    }

    /// The first position after this one.
    pub fn successor(self) -> EventId {
        match self.n.checked_add(1) {
            Some(n) => EventId { index: self.index, n },
            None => EventId {
                index: self.index.saturating_add(1),
                n: 0,
            },
        }
    }

    /// The id that stands just before position `next` (what a client resumes from to get `next` onwards), or
    /// `None` for the very start of the ledger.
    pub fn before(next: EventId) -> Option<EventId> {
        if next.n > 0 {
            Some(EventId::new(next.index, next.n - 1))
        } else if next.index > 0 {
            Some(EventId::new(next.index - 1, END_OF_ENTRY))
        } else {
            None
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.n)
    }
}

/// Why an event id did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event id is '<ledgerIndex>.<n>' (two decimal numbers without leading zeros), got {0:?}")]
pub struct ParseIdError(String);

fn number<T: FromStr>(s: &str) -> Option<T> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

impl FromStr for EventId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<EventId, ParseIdError> {
        // Echo at most a short prefix: the id comes from a client.
        let bad = || ParseIdError(s.chars().take(48).collect());
        let (i, n) = s.split_once('.').ok_or_else(bad)?;
        Ok(EventId {
            index: number(i).ok_or_else(bad)?,
            n: number(n).ok_or_else(bad)?,
        })
    }
}

/// The kinds of event, as their `type` strings name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Every decision.
    DecisionMade,
    /// A `require_approval` decision: its approval is pending.
    ApprovalRequired,
    /// The same, in the KLA Execution API's shape, for a decision of an execution.
    ExecutionApprovalRequired,
    /// A non-final vote under a quorum.
    ApprovalVoted,
    /// An approval reached its final state (approved, denied, canceled).
    ApprovalResolved,
    /// An approval timed out.
    ApprovalExpired,
    /// An execution was started (`PENDING`).
    ExecutionCreated,
    /// An execution is in the queue (`QUEUED`).
    ExecutionQueued,
    /// An execution is running (`RUNNING`).
    ExecutionStarted,
    /// Cancel was asked of a running execution (`CANCEL_REQUESTED`).
    ExecutionCancelRequested,
    /// An execution finished with a result (`COMPLETED`).
    ExecutionCompleted,
    /// An execution finished with an error (`FAILED`).
    ExecutionFailed,
    /// An execution was stopped (`CANCELED`).
    ExecutionCanceled,
}

impl EventType {
    /// Every type, in a fixed order.
    pub const ALL: [EventType; 13] = [
        EventType::DecisionMade,
        EventType::ApprovalRequired,
        EventType::ExecutionApprovalRequired,
        EventType::ApprovalVoted,
        EventType::ApprovalResolved,
        EventType::ApprovalExpired,
        EventType::ExecutionCreated,
        EventType::ExecutionQueued,
        EventType::ExecutionStarted,
        EventType::ExecutionCancelRequested,
        EventType::ExecutionCompleted,
        EventType::ExecutionFailed,
        EventType::ExecutionCanceled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::DecisionMade => "decision.made",
            EventType::ApprovalRequired => "approval.required",
            EventType::ExecutionApprovalRequired => "execution.approval_required",
            EventType::ApprovalVoted => "approval.voted",
            EventType::ApprovalResolved => "approval.resolved",
            EventType::ApprovalExpired => "approval.expired",
            EventType::ExecutionCreated => "execution.created",
            EventType::ExecutionQueued => "execution.queued",
            EventType::ExecutionStarted => "execution.started",
            EventType::ExecutionCancelRequested => "execution.cancel_requested",
            EventType::ExecutionCompleted => "execution.completed",
            EventType::ExecutionFailed => "execution.failed",
            EventType::ExecutionCanceled => "execution.canceled",
        }
    }

    /// The type a wire name names.
    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeSet(u16);

impl TypeSet {
    /// No type.
    pub const NONE: TypeSet = TypeSet(0);

    /// Every type.
    pub fn all() -> TypeSet {
        TypeSet::of(&EventType::ALL)
    }

    /// Exactly these types.
    pub fn of(types: &[EventType]) -> TypeSet {
        TypeSet(types.iter().fold(0, |m, t| m | t.bit()))
    }

    /// Whether `t` is in the set.
    pub fn contains(self, t: EventType) -> bool {
        self.0 & t.bit() != 0
    }

    /// The union.
    pub fn with(self, other: TypeSet) -> TypeSet {
        TypeSet(self.0 | other.0)
    }

    /// The set without `other`.
    pub fn without(self, other: TypeSet) -> TypeSet {
        TypeSet(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// A comma list of `types=` (unknown names refused, naming the known ones).
    pub fn parse_list(list: &str) -> Result<TypeSet, String> {
        let mut set = TypeSet::NONE;
        for name in list.split(',') {
            let t = EventType::parse(name.trim()).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "unknown event type {:?}; types is a comma list of: {}",
                    name.chars().take(64).collect::<String>(),
                    known.join(", ")
                )
            })?;
            set = set.with(TypeSet::of(&[t]));
        }
        Ok(set)
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub kind: EventType,
    /// The tenant of the entry.
    pub tenant: String,
    /// The agent the event is about, when the entry names one.
    pub agent_id: Option<String>,
    /// The agent's name, when the entry carries it (decisions do; an approval entry may name the agent by id only).
    pub agent_name: Option<String>,
    pub execution_id: Option<String>,
    /// The entry's time (RFC 3339 UTC, milliseconds).
    pub created_at: String,
    /// The type's payload.
    pub data: Value,
}

/// The envelope on the wire (SSE `data:` and WebSocket text frames).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    created_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    execution_id: Option<&'a str>,
    data: &'a Value,
}

impl Event {
    /// The envelope as one line of JSON: `{"id","type","createdAt","executionId"?,"data"}`.
    pub fn to_json(&self) -> String {
        envelope_json(
            self.id,
            self.kind.as_str(),
            &self.created_at,
            self.execution_id.as_deref(),
            &self.data,
        )
    }
}

/// An envelope as one line of JSON (also for stream messages that are no event, like `resync_required`).
pub(super) fn envelope_json(
    id: EventId,
    kind: &str,
    created_at: &str,
    execution_id: Option<&str>,
    data: &Value,
) -> String {
    let env = Envelope {
        id: id.to_string(),
        kind,
        created_at,
        execution_id,
        data,
    };
    // A struct of strings and a `Value` always serializes.
    serde_json::to_string(&env).unwrap_or_default()
}

/// One SSE message: `id:`, `event:`, one `data:` line (JSON has no raw newline), a blank line.
pub(super) fn sse_frame(id: Option<EventId>, kind: &str, json: &str) -> Bytes {
    let mut out = String::with_capacity(json.len() + kind.len() + 48);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out.push_str("event: ");
    out.push_str(kind);
    out.push_str("\ndata: ");
    out.push_str(json);
    out.push_str("\n\n");
    Bytes::from(out)
}

/// An SSE heartbeat: a comment, with an `id:` line when the subscriber's position moved since the last id it was
/// sent. A message with an id and no data dispatches no event, but a client's last event id becomes it, so a
/// subscriber whose filter let nothing through for a long time still resumes from where it was, not from the last
/// event it got.
pub fn sse_heartbeat(cursor: Option<EventId>) -> Bytes {
    match cursor {
        Some(id) => Bytes::from(format!(": heartbeat\nid: {id}\n\n")),
        None => Bytes::from_static(b": heartbeat\n\n"),
    }
}

/// An event with its wire forms, rendered once and shared by every subscriber that gets it.
#[derive(Debug)]
pub struct Published {
    pub event: Event,
    /// The envelope (a WebSocket text frame).
    pub json: Bytes,
    /// The whole SSE message.
    pub sse: Bytes,
}

impl Published {
    /// Renders `event`.
    pub fn new(event: Event) -> Published {
        let json = event.to_json();
        let sse = sse_frame(Some(event.id), event.kind.as_str(), &json);
        Published {
            event,
            json: Bytes::from(json),
            sse,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_in_canonical_form_only() {
        for (s, id) in [
            ("0.0", EventId::new(0, 0)),
            ("17.2", EventId::new(17, 2)),
            (
                "18446744073709551615.4294967295",
                EventId::new(u64::MAX, u32::MAX),
            ),
        ] {
            assert_eq!(s.parse::<EventId>(), Ok(id));
            assert_eq!(id.to_string(), s);
        }
        for bad in [
            "",
            "1",
            "1.",
            ".1",
            "01.0",
            "1.01",
            "+1.0",
            "1.-1",
            "1.0.0",
            " 1.0",
            "1 .0",
            "a.b",
            "1.4294967296",
            "18446744073709551616.0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positions_order_and_step_as_the_stream_does() {
        assert!(EventId::new(3, 9) < EventId::new(4, 0));
        assert_eq!(EventId::new(3, 1).successor(), EventId::new(3, 2));
        assert_eq!(EventId::new(3, END_OF_ENTRY).successor(), EventId::new(4, 0));
        assert_eq!(
            EventId::before(EventId::new(4, 0)),
            Some(EventId::new(3, END_OF_ENTRY))
        );
        assert_eq!(EventId::before(EventId::new(4, 2)), Some(EventId::new(4, 1)));
        assert_eq!(EventId::before(EventId::new(0, 0)), None);
        for id in [EventId::new(3, 0), EventId::new(3, END_OF_ENTRY)] {
            assert_eq!(EventId::before(id.successor()), Some(id));
        }
    }

    #[test]
    fn type_lists_parse_and_refuse_unknown_names() {
        let s = TypeSet::parse_list("decision.made, approval.expired").unwrap();
        assert!(s.contains(EventType::DecisionMade) && s.contains(EventType::ApprovalExpired));
        assert!(!s.contains(EventType::ApprovalRequired));
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
            assert!(TypeSet::all().contains(t));
        }
        assert!(
            TypeSet::parse_list("decision.made,bogus")
                .unwrap_err()
                .contains("bogus")
        );
        assert!(TypeSet::parse_list("").is_err());
        assert!(TypeSet::parse_list("decision.made,").is_err());
    }
}
