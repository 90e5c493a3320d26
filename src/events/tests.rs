//! The hub and its subscriptions over a real ledger and store: every resume position gives exactly the rest of
//! the stream, whether it is served from the ring, from disk through the index, or from the ledger where the index
//! does not hold an entry; resync; caps; heartbeats; the follower pausing and resuming.

use super::*;
use crate::ledger::Entry;
use crate::policy::Outcome;
use crate::recorder::{DecisionEntry, OpenedApproval, Record, Recorder};
use crate::test_support::recorder::TempRecorder;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Rig {
    recorder: Recorder,
    hub: Hub,
    stop: CancellationToken,
    closing: CancellationToken,
    _tmp: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn rig(cfg: HubConfig) -> Rig {
    let TempRecorder { recorder, dir, .. } = TempRecorder::new();
    let closing = CancellationToken::new();
    let hub = Hub::new(recorder.clone(), cfg, closing.clone());
    let stop = CancellationToken::new();
    tokio::spawn(hub.clone().run(stop.clone()));
    Rig {
        recorder,
        hub,
        stop,
        closing,
        _tmp: dir,
    }
}

fn small_ring() -> HubConfig {
    HubConfig {
        ring_events: 5,
        linger: Duration::from_millis(50),
        ..HubConfig::default()
    }
}

/// A decision entry as the recorder writes it; `require_approval` with an `approval` object (desk-spec.md).
fn decision(tenant: &str, i: usize, agent: &str, execution: Option<&str>) -> Record {
    let outcome = if i % 3 == 2 { "require_approval" } else { "allow" };
    let mut body = json!({
        "action": "execute_refund",
        "agent": {"id": format!("agt_{agent}"), "name": agent},
        "context": {},
        "decision": outcome,
        "decisionId": format!("dec_{tenant}_{i}"),
        "executionId": execution,
        "matchedRules": [],
        "principal": {"role": "agent", "subject": "s"},
        "reasonCodes": ["R"],
        "requiresDeskApproval": outcome == "require_approval",
        "wouldDecide": outcome,
    });
    if outcome == "require_approval" {
        body["approval"] = json!({"approvalId": format!("appr_{i}"), "expiresAt": "2026-12-01T00:15:00.000Z",
                                  "actionDigest": "hmac-sha256:00", "approvers": 1, "onTimeout": "block",
                                  "timeoutSeconds": 900});
    }
    Record::Decision(DecisionEntry {
        tenant: tenant.into(),
        decision_id: format!("dec_{tenant}_{i}"),
        agent_id: format!("agt_{agent}"),
        action: "execute_refund".into(),
        outcome: if outcome == "allow" {
            Outcome::Allow
        } else {
            Outcome::RequireApproval
        },
        trace_id: None,
        execution_id: execution.map(str::to_owned),
        approval: (outcome == "require_approval").then(|| OpenedApproval {
            approval_id: format!("appr_{i}"),
            expires_at: "2026-12-01T00:15:00.000Z".into(),
            action_digest: None,
        }),
        uses_approval: None,
        body: serde_json_canonicalizer::to_vec(&body).expect("canonical"),
    })
}

/// An approval entry appended to the ledger alone: the index never hears of it (as if its rows were still queued).
async fn unindexed_approval(rec: &Recorder, tenant: &str, agent_id: &str, i: usize) -> u64 {
    let e = Entry {
        v: 1,
        kind: "approval.resolved".into(),
        lineage_id: crate::ledger::new_lineage_id(),
        tenant: tenant.into(),
        time: crate::time::now_rfc3339(),
        body: json!({"approvalId": format!("appr_{i}"), "agentId": agent_id, "status": "APPROVED",
                     "executionId": null, "decisionId": format!("dec_{i}"), "agentName": null,
                     "action": "execute_refund", "resolvedBy": null, "resolvedAt": "2026-12-01T00:01:00.000Z",
                     "comment": null, "votes": [], "finalDecision": "allow", "recheck": null}),
    };
    rec.ledger()
        .append(e.encode().expect("encode"))
        .await
        .expect("append")
}

fn filter(tenant: &str) -> Filter {
    Filter::new(
        tenant.into(),
        None,
        None,
        Interest::Stream {
            types: TypeSet::all(),
            execution_id: None,
        },
    )
}

/// Every event of `tenant` in the ledger, computed straight from its entries.
fn expected(rec: &Recorder, tenant: &str) -> Vec<Event> {
    let l = rec.ledger();
    (0..l.size())
        .flat_map(|i| events_of_entry(i, &Entry::decode(&l.entry(i).expect("entry")).expect("decode")))
        .filter(|e| e.tenant == tenant)
        .collect()
}

async fn take(sub: &mut Subscription, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let deadline = Instant::now() + Duration::from_secs(10);
        match sub.next(deadline).await.expect("read") {
            Step::Event(p) => out.push(p.event.clone()),
            Step::Idle => panic!("stalled after {} of {n} events", out.len()),
            Step::Closed => panic!("closed"),
        }
    }
    out
}

/// Nothing more arrives within a short wait.
async fn quiet(sub: &mut Subscription) {
    let deadline = Instant::now() + Duration::from_millis(150);
    match sub.next(deadline).await.expect("read") {
        Step::Idle => {}
        other => panic!("expected nothing more, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resume_position_gives_exactly_the_rest_from_ring_disk_or_ledger() {
    let r = rig(small_ring()).await;
    let mut live = r.hub.subscribe(filter("acme"), None).await.expect("subscribe").0;
    for i in 0..24 {
        let tenant = if i % 4 == 3 { "other" } else { "acme" };
        let exec = (i % 2 == 0).then_some("exec-1");
        r.recorder
            .record(decision(tenant, i, "a", exec))
            .await
            .expect("record");
        if i == 10 {
            unindexed_approval(&r.recorder, "acme", "agt_a", i).await;
        }
    }
    let all = expected(&r.recorder, "acme");
    assert!(all.len() > 20, "{}", all.len());
    assert!(
        all.iter().any(|e| e.id.n == 2),
        "entries with three events are in the stream"
    );
    assert_eq!(
        take(&mut live, all.len()).await,
        all,
        "the live subscriber, from the ring"
    );
    quiet(&mut live).await;
    assert!(
        r.hub.inner.ring.read().first > all[0].id.index,
        "the ring is smaller than the stream, so early positions are read from disk"
    );
    for (k, from) in all.iter().enumerate() {
        let (mut sub, resync) = r
            .hub
            .subscribe(filter("acme"), Some(from.id))
            .await
            .expect("subscribe");
        assert_eq!(resync, None);
        let rest = take(&mut sub, all.len() - k - 1).await;
        assert_eq!(rest, all[k + 1..], "resumed after {}", from.id);
        quiet(&mut sub).await;
    }
    // A position between events (an entry without events, another tenant's entry) resumes just after it too.
    let (mut sub, _) = r
        .hub
        .subscribe(filter("acme"), Some(EventId::new(0, END_OF_ENTRY)))
        .await
        .expect("sub");
    assert_eq!(
        take(&mut sub, all.len() - 1).await,
        all[1..],
        "after entry 0: everything but entry 0's"
    );
    // Types and executions narrow the stream the same way on every path.
    let execs = Filter::new(
        "acme".into(),
        None,
        None,
        Interest::Stream {
            types: TypeSet::of(&[EventType::DecisionMade]),
            execution_id: Some("exec-1".into()),
        },
    );
    let want: Vec<&Event> = all
        .iter()
        .filter(|e| e.id > EventId::new(0, 0))
        .filter(|e| e.kind == EventType::DecisionMade && e.execution_id.as_deref() == Some("exec-1"))
        .collect();
    let (mut sub, _) = r
        .hub
        .subscribe(execs, Some(EventId::new(0, 0)))
        .await
        .expect("sub");
    let got = take(&mut sub, want.len()).await;
    assert_eq!(got.iter().collect::<Vec<_>>(), want);
    quiet(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_or_foreign_position_resyncs_to_the_head() {
    let r = rig(HubConfig {
        retention: Duration::from_millis(200),
        ..small_ring()
    })
    .await;
    r.recorder
        .record(decision("acme", 0, "a", None))
        .await
        .expect("record");
    let size = r.recorder.ledger().size();
    let (mut ahead, resync) = r
        .hub
        .subscribe(filter("acme"), Some(EventId::new(size + 7, 0)))
        .await
        .expect("sub");
    let resync = resync.expect("a position beyond the ledger");
    assert_eq!(resync.reason, ResyncReason::Ahead);
    assert_eq!(resync.restart_after, Some(EventId::new(size - 1, END_OF_ENTRY)));
    let wire: Value = serde_json::from_str(&resync.json()).expect("json");
    assert_eq!(wire["type"], "resync_required");
    assert_eq!(wire["id"], format!("{}.{END_OF_ENTRY}", size - 1));
    assert_eq!(wire["data"]["reason"], "ahead");
    assert_eq!(wire["data"]["lastEventId"], format!("{}.0", size + 7));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut expired, resync) = r
        .hub
        .subscribe(filter("acme"), Some(EventId::new(0, 0)))
        .await
        .expect("sub");
    assert_eq!(resync.map(|r| r.reason), Some(ResyncReason::Expired));
    // After the last entry there is nothing to catch up, however old it is.
    let at_head = EventId::new(size - 1, END_OF_ENTRY);
    let (mut quiet_ledger, resync) = r.hub.subscribe(filter("acme"), Some(at_head)).await.expect("sub");
    assert_eq!(resync, None);
    // Both continue from the head: the next decision is their first event.
    r.recorder
        .record(decision("acme", 1, "a", None))
        .await
        .expect("record");
    for sub in [&mut ahead, &mut expired, &mut quiet_ledger] {
        let got = take(sub, 1).await;
        assert_eq!(got[0].id, EventId::new(size, 0));
        quiet(sub).await;
    }
}

#[tokio::test]
async fn subscriber_caps_per_tenant_and_per_server() {
    let r = rig(HubConfig {
        max_subscribers: 2,
        max_subscribers_per_tenant: 1,
        ..small_ring()
    })
    .await;
    let a = r.hub.subscribe(filter("acme"), None).await.expect("first");
    assert!(matches!(
        r.hub.subscribe(filter("acme"), None).await,
        Err(SubscribeError::TenantFull { limit: 1, .. })
    ));
    let b = r
        .hub
        .subscribe(filter("beta"), None)
        .await
        .expect("another tenant");
    assert!(matches!(
        r.hub.subscribe(filter("gamma"), None).await,
        Err(SubscribeError::Full { limit: 2 })
    ));
    assert_eq!(r.hub.subscribers(), 2);
    drop(a);
    drop(b);
    assert_eq!(r.hub.subscribers(), 0);
    r.hub.subscribe(filter("acme"), None).await.expect("a slot again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_subscribers_get_heartbeats_with_their_position_and_end_on_shutdown() {
    let r = rig(small_ring()).await;
    r.recorder
        .record(decision("other", 0, "a", None))
        .await
        .expect("record");
    let (mut sub, _) = r.hub.subscribe(filter("acme"), None).await.expect("sub");
    let before = sub.cursor();
    assert_eq!(before, Some(EventId::new(0, END_OF_ENTRY)));
    // Another tenant's entry moves the position without an event.
    r.recorder
        .record(decision("other", 1, "a", None))
        .await
        .expect("record");
    let started = Instant::now();
    let mut moved = false;
    while started.elapsed() < Duration::from_secs(5) && !moved {
        match sub
            .next(Instant::now() + Duration::from_millis(50))
            .await
            .expect("read")
        {
            Step::Idle => moved = sub.cursor() == Some(EventId::new(1, END_OF_ENTRY)),
            other => panic!("no event is this tenant's: {other:?}"),
        }
    }
    assert!(moved, "the position follows the ledger: {:?}", sub.cursor());
    r.closing.cancel();
    assert!(matches!(
        sub.next(Instant::now() + Duration::from_secs(5)).await,
        Ok(Step::Closed)
    ));
    assert!(matches!(
        r.hub.subscribe(filter("acme"), None).await,
        Err(SubscribeError::Closing)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_pauses_without_subscribers_and_resumes_without_a_gap() {
    let r = rig(small_ring()).await;
    let (mut sub, _) = r.hub.subscribe(filter("acme"), None).await.expect("sub");
    r.recorder
        .record(decision("acme", 0, "a", None))
        .await
        .expect("record");
    let first = take(&mut sub, 1).await;
    drop(sub);
    // Past the linger: the follower stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 1..8 {
        r.recorder
            .record(decision("acme", i, "a", None))
            .await
            .expect("record");
    }
    let (mut sub, _) = r
        .hub
        .subscribe(filter("acme"), Some(first[0].id))
        .await
        .expect("sub");
    let all = expected(&r.recorder, "acme");
    assert_eq!(take(&mut sub, all.len() - 1).await, all[1..]);
    r.recorder
        .record(decision("acme", 9, "a", None))
        .await
        .expect("record");
    let next = take(&mut sub, 1).await;
    assert_eq!(next[0].data["decisionId"], "dec_acme_9");
    quiet(&mut sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_filter_sees_only_its_agent_including_approvals_named_by_id() {
    let r = rig(small_ring()).await;
    let bound = |id: Option<&str>| {
        Filter::new(
            "acme".into(),
            Some(Arc::from("bot-a")),
            id.map(str::to_owned),
            Interest::Stream {
                types: TypeSet::all(),
                execution_id: None,
            },
        )
    };
    let (mut live, _) = r.hub.subscribe(bound(None), None).await.expect("sub");
    r.recorder
        .record(decision("acme", 0, "bot-b", None))
        .await
        .expect("record");
    r.recorder
        .record(decision("acme", 1, "bot-a", None))
        .await
        .expect("record");
    unindexed_approval(&r.recorder, "acme", "agt_bot-a", 1).await;
    let got = take(&mut live, 2).await;
    assert_eq!(got[0].data["agentName"], "bot-a");
    assert_eq!(
        got[1].kind,
        EventType::ApprovalResolved,
        "learned agt_bot-a from its decision"
    );
    quiet(&mut live).await;
    // Resolved up front (the directory's id), an approval is seen without its decision.
    let (mut resumed, _) = r
        .hub
        .subscribe(bound(Some("agt_bot-a")), Some(got[0].id))
        .await
        .expect("sub");
    assert_eq!(take(&mut resumed, 1).await[0].kind, EventType::ApprovalResolved);
}
