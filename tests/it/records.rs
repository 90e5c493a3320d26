//! Typed record bodies over entries a real server wrote: every entry reads as its kind's typed body
//! (`kla::recorder::body`) and writes back to the very bytes the ledger holds.

use kla::ledger::Entry;
use kla::recorder::Kind;
use kla::recorder::body::{
    AgentRegistered, ApprovalResolved, ApprovalVoted, Decision, ExecutionTransition, RecordBody, TraceSpans,
};

/// Reads `entry` (an entry's canonical JSON, as an evidence bundle or `/v1/ledger/entries` carries it) as its
/// kind's typed body and checks the body written back is byte for byte the entry's; returns the kind.
pub fn assert_typed_round_trip(entry: &str) -> Kind {
    fn again<B: RecordBody>(e: &Entry) -> Vec<u8> {
        let b = B::of_entry(e).unwrap_or_else(|err| panic!("{}: {err}", e.kind));
        b.canonical().expect("canonical")
    }
    let e = Entry::decode(entry.as_bytes()).expect("a stored entry decodes");
    let kind = Kind::parse(&e.kind).expect("a kind this kla knows");
    let bytes = match kind {
        Kind::Decision => again::<Decision>(&e),
        Kind::AgentRegistered => again::<AgentRegistered>(&e),
        Kind::PolicyActivated | Kind::PolicyRefused => again::<kla::policy::PolicyEvent>(&e),
        Kind::ApprovalVoted => again::<ApprovalVoted>(&e),
        Kind::ApprovalResolved => again::<ApprovalResolved>(&e),
        Kind::TraceSpans => again::<TraceSpans>(&e),
        Kind::ExecutionTransition => again::<ExecutionTransition>(&e),
    };
    let rebuilt = Entry::encode_with_body(e.v, &e.kind, &e.lineage_id, &e.tenant, &e.time, &bytes);
    assert_eq!(
        String::from_utf8_lossy(&rebuilt),
        entry,
        "the typed {kind} body does not write back the stored entry"
    );
    kind
}
