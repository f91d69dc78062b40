//! The behaviour every [`CallStore`] must show, as a reusable suite.
//!
//! Each scenario is a `pub async fn` taking a store and panicking (through `assert!`) when
//! the store breaks one of the invariants in the crate docs; [`run_all`] runs every scenario
//! on a fresh store from the async factory `make`. Stores from `make` must bound each
//! recorded track to [`RECORDING_TRACK_BYTES_MAX`] bytes, and keep webhooks as
//! [`webhook_subscriptions`], [`WEBHOOK_CALL_EVENTS_MAX`] and [`WEBHOOK_DEAD_LETTERS_MAX`]
//! say. Implementations run it from their tests:
//!
//! ```
//! # use callworker_store::{contract, memory::MemoryStore};
//! # async fn meets_the_contract() {
//! // In a `#[tokio::test]`:
//! contract::run_all(|| async {
//!     MemoryStore::new(1_000).with_recording_limit(contract::RECORDING_TRACK_BYTES_MAX).with_webhooks(
//!         contract::webhook_subscriptions(),
//!         contract::WEBHOOK_CALL_EVENTS_MAX,
//!         contract::WEBHOOK_DEAD_LETTERS_MAX,
//!     )
//! })
//! .await;
//! # }
//! ```
//!
//! Scenarios use call ids, tenants and worker ids unique to the process run, and only look
//! at their own calls and workers, so a store shared between scenarios (one Redis server)
//! does not make them interfere. Most lease assertions compare leases with each other, never
//! with a clock, so they hold on any store clock. The reaper scenarios need leases to run
//! out: they use a real clock with short leases ([`LEASE_TINY`]) and sleep a little past
//! them, so the whole suite takes a few seconds.
//!
//! This module is test support: it lives in the library so other crates' tests can reuse
//! it, but nothing in the service calls it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, UnixMillis, WorkerId};

use crate::outbox::{EventBody, EventType, OutboxClaim, OutboxEvent, PendingEvent, Settle, Subscriptions};
use crate::{
    AttemptId, CallRecord, CallStore, Checkpoint, CheckpointAck, ExpireAction, LIST_LIMIT_MAX,
    LeaseObservation, ListQuery, NewCall, RecordStatus, Recording, RecordingChunk, StoreError, WorkerInfo,
};

/// The per-track recording bound the stores given to [`run_all`] must have.
pub const RECORDING_TRACK_BYTES_MAX: usize = 64;
/// The tenant whose calls keep every webhook event in the stores given to [`run_all`];
/// other tenants keep none.
pub const WEBHOOK_TENANT: &str = "contract-hooks";
/// The per-call bound on undelivered webhook events the stores must have.
pub const WEBHOOK_CALL_EVENTS_MAX: usize = 4;
/// The bound on dead letters the stores must have.
pub const WEBHOOK_DEAD_LETTERS_MAX: usize = 1_000;

/// The webhook subscriptions the stores given to [`run_all`] must have.
pub fn webhook_subscriptions() -> Subscriptions {
    let mut subscriptions = Subscriptions::default();
    let tenant = TenantId::parse(WEBHOOK_TENANT).expect("a valid tenant");
    subscriptions.subscribe(&tenant, EventType::ALL);
    subscriptions
}

/// A lease short enough for a test to wait it out.
pub const LEASE_TINY: Duration = Duration::from_millis(200);
/// How long the reaper scenarios sleep to see a [`LEASE_TINY`] lease run out (with room for
/// a store clock that is not the test's own, e.g. Redis `TIME`).
const PAST_TINY_LEASE: Duration = Duration::from_millis(300);
/// Big enough for every expired lease a scenario can see in a fresh store.
const REAP_LIMIT: usize = 1_000;

/// A short lease, and a long one whose renewal must visibly move `lease_until`.
const LEASE_SHORT: Duration = Duration::from_secs(1);
const LEASE_LONG: Duration = Duration::from_secs(600);
/// How far a renewal from [`LEASE_SHORT`] to [`LEASE_LONG`] must move the lease at least
/// (the full difference minus generous slack for time passing between the two calls).
const LEASE_MOVE_MIN_MS: u64 = 500_000;

/// Runs every scenario, each on a fresh store from `make` (whose tracks are bounded to
/// [`RECORDING_TRACK_BYTES_MAX`]).
pub async fn run_all<S, F, Fut>(make: F)
where
    S: CallStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    create_then_get(&make().await).await;
    duplicate_create_is_refused(&make().await).await;
    unknown_call_is_not_found(&make().await).await;
    attach_is_a_compare_and_set_that_bumps_the_epoch(&make().await).await;
    stale_attach_changes_nothing(&make().await).await;
    attach_retry_with_the_same_attempt_is_idempotent(&make().await).await;
    old_owner_is_fenced_after_takeover(&make().await).await;
    duplicate_checkpoint_is_acknowledged_and_renews(&make().await).await;
    end_bumps_the_epoch_and_blocks_later_writes(&make().await).await;
    end_twice_keeps_the_first_reason(&make().await).await;
    end_keeps_the_newest_checkpoint(&make().await).await;
    list_filters_and_pages_cover_every_record_once(&make().await).await;
    recording_appends_exactly_once_with_fenced_writes(&make().await).await;
    recording_is_bounded_per_track(&make().await).await;
    live_leases_are_not_expired(&make().await).await;
    expired_lease_end_bumps_the_epoch_and_leaves_the_index(&make().await).await;
    renew_or_takeover_between_phases_is_stale(&make().await).await;
    extend_keeps_the_epoch_and_moves_the_lease(&make().await).await;
    created_calls_expire_from_creation(&make().await).await;
    expired_leases_come_oldest_first_within_the_limit(&make().await).await;
    heartbeats_list_workers_until_they_lapse(&make().await).await;
    live_calls_of_a_tenant_reach_the_bound_only_while_that_many_are_live(&make().await).await;
    webhook_events_ride_with_their_writes_exactly_once_and_in_order(&make().await).await;
    webhooks_of_unsubscribed_tenants_are_not_kept(&make().await).await;
    webhook_retries_back_off_and_dead_letters_are_kept(&make().await).await;
    lapsed_outbox_claims_are_claimed_again(&make().await).await;
    webhook_outbox_is_bounded_per_call_but_keeps_the_end(&make().await).await;
    reaper_end_writes_the_end_webhook_events(&make().await).await;
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A string unique to this process run (for ids and tenants).
fn unique(prefix: &str) -> String {
    let started_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{started_ms}-{n}", std::process::id())
}

fn call_id(scenario: &str) -> CallId {
    CallId::parse(&unique(scenario)).expect("contract ids are valid")
}

fn tenant() -> TenantId {
    TenantId::parse(&unique("t")).expect("contract tenants are valid")
}

fn worker(name: &str) -> WorkerId {
    WorkerId::parse(name).expect("contract worker ids are valid")
}

fn attempt(name: &str) -> AttemptId {
    AttemptId(unique(name))
}

fn checkpoint(seq: u64) -> Checkpoint {
    Checkpoint { seq, blob: Bytes::from(format!("checkpoint {seq}").into_bytes()) }
}

/// Creates a call (with checkpoint seq 0) under `tenant` and returns its id.
async fn create<S: CallStore>(store: &S, scenario: &str, tenant: &TenantId) -> CallId {
    let id = call_id(scenario);
    store
        .create(NewCall { call_id: id.clone(), tenant: tenant.clone(), checkpoint: checkpoint(0) })
        .await
        .unwrap_or_else(|e| panic!("{scenario}: create failed: {e}"));
    id
}

/// Creates a call and attaches `owner` to it; returns the id and epoch 1.
async fn create_attached<S: CallStore>(store: &S, scenario: &str, owner: &str) -> (CallId, Epoch) {
    let id = create(store, scenario, &tenant()).await;
    let attached = store
        .attach(&id, &attempt(owner), &worker(owner), Epoch::ZERO, LEASE_SHORT)
        .await
        .unwrap_or_else(|e| panic!("{scenario}: first attach failed: {e}"));
    assert_eq!(attached.epoch, Epoch(1), "{scenario}: the first attach gives epoch 1");
    (id, attached.epoch)
}

async fn get<S: CallStore>(store: &S, id: &CallId) -> CallRecord {
    store.get(id).await.unwrap_or_else(|e| panic!("get {id}: {e}"))
}

fn lease_ms(record: &CallRecord) -> u64 {
    record.lease_until.map_or(0, |t| t.0)
}

pub async fn create_then_get<S: CallStore>(store: &S) {
    let tenant = tenant();
    let id = create(store, "create", &tenant).await;
    let r = get(store, &id).await;
    assert_eq!(r.call_id, id);
    assert_eq!(r.tenant, tenant);
    assert_eq!(r.status, RecordStatus::Created);
    assert_eq!(r.epoch, Epoch::ZERO);
    assert_eq!((r.owner, r.lease_until, r.end_reason), (None, None, None));
    assert_eq!(r.checkpoint, Some(checkpoint(0)), "create stores the first checkpoint");
    assert!(r.created_at <= r.updated_at);
}

pub async fn duplicate_create_is_refused<S: CallStore>(store: &S) {
    let tenant = tenant();
    let id = create(store, "dup", &tenant).await;
    let again = NewCall {
        call_id: id.clone(),
        tenant: TenantId::parse("other").expect("valid"),
        checkpoint: checkpoint(7),
    };
    assert_eq!(store.create(again).await, Err(StoreError::AlreadyExists));
    let r = get(store, &id).await;
    assert_eq!((r.tenant, r.checkpoint), (tenant, Some(checkpoint(0))), "the original is untouched");
}

pub async fn unknown_call_is_not_found<S: CallStore>(store: &S) {
    let id = call_id("missing");
    let e = Epoch(1);
    assert_eq!(store.get(&id).await, Err(StoreError::NotFound));
    let attach = store.attach(&id, &attempt("a"), &worker("w1"), Epoch::ZERO, LEASE_SHORT).await;
    assert_eq!(attach.map(|a| a.epoch), Err(StoreError::NotFound));
    assert_eq!(
        store.checkpoint(&id, e, checkpoint(1), RecordingChunk::default(), LEASE_SHORT).await,
        Err(StoreError::NotFound)
    );
    assert_eq!(store.renew(&id, e, LEASE_SHORT).await, Err(StoreError::NotFound));
    assert_eq!(
        store.end(&id, e, EndReason::ApiEnded, None, RecordingChunk::default()).await,
        Err(StoreError::NotFound)
    );
}

pub async fn attach_is_a_compare_and_set_that_bumps_the_epoch<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "cas", "w1").await;
    let r = get(store, &id).await;
    assert_eq!(r.epoch, epoch);
    assert_eq!(r.status, RecordStatus::Active);
    assert_eq!(r.owner, Some(worker("w1")));
    assert!(r.lease_until.is_some(), "attach grants a lease");

    let b = store
        .attach(&id, &attempt("b"), &worker("w2"), epoch, LEASE_SHORT)
        .await
        .expect("takeover with the current epoch succeeds");
    assert_eq!(b.epoch, epoch.next(), "takeover bumps the epoch by exactly one");
    assert_eq!(b.record.epoch, b.epoch);
    assert_eq!(b.record.owner, Some(worker("w2")));
    assert_eq!(b.record.status, RecordStatus::Active);
    assert_eq!(get(store, &id).await.epoch, b.epoch);
}

pub async fn stale_attach_changes_nothing<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "stale", "w1").await;
    let before = get(store, &id).await;
    let late = store.attach(&id, &attempt("late"), &worker("w2"), Epoch::ZERO, LEASE_LONG).await;
    assert_eq!(late.map(|a| a.epoch), Err(StoreError::Stale { current: epoch }));
    let ahead = store.attach(&id, &attempt("ahead"), &worker("w2"), epoch.next(), LEASE_LONG).await;
    assert_eq!(ahead.map(|a| a.epoch), Err(StoreError::Stale { current: epoch }));
    let after = get(store, &id).await;
    assert_eq!(
        (after.epoch, after.owner, after.lease_until),
        (before.epoch, before.owner, before.lease_until)
    );
}

pub async fn attach_retry_with_the_same_attempt_is_idempotent<S: CallStore>(store: &S) {
    let id = create(store, "retry", &tenant()).await;
    let x = attempt("x");
    let first = store.attach(&id, &x, &worker("w1"), Epoch::ZERO, LEASE_SHORT).await.expect("first attach");
    let retry = store
        .attach(&id, &x, &worker("w1"), Epoch::ZERO, LEASE_SHORT)
        .await
        .expect("a retry of the same attempt answers the same epoch");
    assert_eq!(retry.epoch, first.epoch);
    assert_eq!(get(store, &id).await.epoch, first.epoch, "a retry does not bump");

    let other = store.attach(&id, &attempt("y"), &worker("w2"), Epoch::ZERO, LEASE_SHORT).await;
    assert_eq!(other.map(|a| a.epoch), Err(StoreError::Stale { current: first.epoch }));

    let takeover =
        store.attach(&id, &attempt("z"), &worker("w2"), first.epoch, LEASE_SHORT).await.expect("takeover");
    let old_retry = store.attach(&id, &x, &worker("w1"), Epoch::ZERO, LEASE_SHORT).await;
    assert_eq!(
        old_retry.map(|a| a.epoch),
        Err(StoreError::Stale { current: takeover.epoch }),
        "a retry after a takeover is stale"
    );
}

pub async fn old_owner_is_fenced_after_takeover<S: CallStore>(store: &S) {
    let (id, old) = create_attached(store, "fence", "w1").await;
    assert_eq!(
        store.checkpoint(&id, old, checkpoint(1), RecordingChunk::default(), LEASE_SHORT).await,
        Ok(CheckpointAck::Applied)
    );
    let new =
        store.attach(&id, &attempt("b"), &worker("w2"), old, LEASE_SHORT).await.expect("takeover").epoch;
    let before = get(store, &id).await;
    let fenced = Some(StoreError::Fenced { current: new });
    assert_eq!(
        store.checkpoint(&id, old, checkpoint(2), RecordingChunk::default(), LEASE_LONG).await.err(),
        fenced
    );
    assert_eq!(store.renew(&id, old, LEASE_LONG).await.err(), fenced);
    assert_eq!(
        store
            .end(&id, old, EndReason::ShedMemory, Some(checkpoint(3)), RecordingChunk::default())
            .await
            .err(),
        fenced
    );
    let after = get(store, &id).await;
    assert_eq!(after.checkpoint, Some(checkpoint(1)), "fenced writes change nothing");
    assert_eq!((after.epoch, after.status, after.end_reason), (new, RecordStatus::Active, None));
    assert_eq!(after.lease_until, before.lease_until, "a fenced renew does not extend the lease");
    assert_eq!(
        store.checkpoint(&id, new, checkpoint(2), RecordingChunk::default(), LEASE_SHORT).await,
        Ok(CheckpointAck::Applied)
    );
}

pub async fn duplicate_checkpoint_is_acknowledged_and_renews<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "dupck", "w1").await;
    assert_eq!(
        store.checkpoint(&id, epoch, checkpoint(5), RecordingChunk::default(), LEASE_SHORT).await,
        Ok(CheckpointAck::Applied)
    );
    let short = lease_ms(&get(store, &id).await);
    for seq in [5, 3, 0] {
        let mut stale = checkpoint(seq);
        stale.blob = Bytes::from_static(b"must not be stored");
        assert_eq!(
            store.checkpoint(&id, epoch, stale, RecordingChunk::default(), LEASE_LONG).await,
            Ok(CheckpointAck::Duplicate { stored_seq: 5 }),
            "seq {seq}"
        );
    }
    let r = get(store, &id).await;
    assert_eq!(r.checkpoint, Some(checkpoint(5)));
    assert!(lease_ms(&r) >= short + LEASE_MOVE_MIN_MS, "a duplicate still renews the lease");
    assert_eq!(
        store.checkpoint(&id, epoch, checkpoint(6), RecordingChunk::default(), LEASE_SHORT).await,
        Ok(CheckpointAck::Applied)
    );
    assert_eq!(get(store, &id).await.checkpoint, Some(checkpoint(6)));

    // Renew alone moves the lease too.
    let before = lease_ms(&get(store, &id).await);
    store.renew(&id, epoch, LEASE_LONG).await.expect("renew");
    assert!(lease_ms(&get(store, &id).await) >= before + LEASE_MOVE_MIN_MS);
}

pub async fn end_bumps_the_epoch_and_blocks_later_writes<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "end", "w1").await;
    let ended = store
        .end(&id, epoch, EndReason::Completed, Some(checkpoint(9)), RecordingChunk::default())
        .await
        .expect("end by the owner");
    assert_eq!(ended, epoch.next(), "end bumps the epoch by exactly one");
    let r = get(store, &id).await;
    assert_eq!((r.status, r.end_reason, r.epoch), (RecordStatus::Ended, Some(EndReason::Completed), ended));
    assert_eq!(r.checkpoint, Some(checkpoint(9)), "the final checkpoint is stored");

    let is_ended = Some(StoreError::Ended { reason: EndReason::Completed });
    assert_eq!(
        store.checkpoint(&id, ended, checkpoint(10), RecordingChunk::default(), LEASE_SHORT).await.err(),
        is_ended
    );
    assert_eq!(store.renew(&id, ended, LEASE_SHORT).await.err(), is_ended);
    let attach = store.attach(&id, &attempt("b"), &worker("w2"), ended, LEASE_SHORT).await;
    assert_eq!(attach.err(), is_ended);
    // The old epoch is refused too (as ended or as fenced; either stops the writer).
    let old = store.checkpoint(&id, epoch, checkpoint(11), RecordingChunk::default(), LEASE_SHORT).await;
    assert!(matches!(old, Err(StoreError::Ended { .. } | StoreError::Fenced { .. })), "{old:?}");
    let after = get(store, &id).await;
    assert_eq!(
        (after.epoch, after.checkpoint),
        (ended, Some(checkpoint(9))),
        "nothing written after the end"
    );

    // A call that never attached (epoch 0) can be ended too.
    let id = create(store, "end0", &tenant()).await;
    assert_eq!(
        store.end(&id, Epoch::ZERO, EndReason::ApiEnded, None, RecordingChunk::default()).await,
        Ok(Epoch(1))
    );
    assert_eq!(get(store, &id).await.checkpoint, Some(checkpoint(0)));
}

pub async fn end_twice_keeps_the_first_reason<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "end2", "w1").await;
    let ended =
        store.end(&id, epoch, EndReason::ClientHangup, None, RecordingChunk::default()).await.expect("end");
    for (e, reason) in [(ended, EndReason::ApiEnded), (epoch, EndReason::ShedMemory)] {
        let again = store.end(&id, e, reason, Some(checkpoint(4)), RecordingChunk::default()).await;
        assert!(
            matches!(again, Err(StoreError::Ended { reason: EndReason::ClientHangup })),
            "end at epoch {e}: {again:?}"
        );
    }
    let r = get(store, &id).await;
    assert_eq!((r.end_reason, r.epoch), (Some(EndReason::ClientHangup), ended));
    assert_eq!(r.checkpoint, Some(checkpoint(0)), "a refused end stores nothing");
}

pub async fn end_keeps_the_newest_checkpoint<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "endck", "w1").await;
    assert_eq!(
        store.checkpoint(&id, epoch, checkpoint(10), RecordingChunk::default(), LEASE_SHORT).await,
        Ok(CheckpointAck::Applied)
    );
    store
        .end(&id, epoch, EndReason::Completed, Some(checkpoint(7)), RecordingChunk::default())
        .await
        .expect("end");
    assert_eq!(
        get(store, &id).await.checkpoint,
        Some(checkpoint(10)),
        "an older final checkpoint is ignored"
    );
}

pub async fn list_filters_and_pages_cover_every_record_once<S: CallStore>(store: &S) {
    let (ta, tb) = (tenant(), tenant());
    // Created in this order: a0 a1 b0 a2 a3 b1 a4; a1 attached, a3 ended.
    let mut all_a = Vec::new();
    let mut all_b = Vec::new();
    for tenant_is_a in [true, true, false, true, true, false, true] {
        if tenant_is_a {
            all_a.push(create(store, "list", &ta).await);
        } else {
            all_b.push(create(store, "list", &tb).await);
        }
    }
    store.attach(&all_a[1], &attempt("l"), &worker("w1"), Epoch::ZERO, LEASE_SHORT).await.expect("attach");
    store
        .end(&all_a[3], Epoch::ZERO, EndReason::ApiEnded, None, RecordingChunk::default())
        .await
        .expect("end");

    let query = |tenant: &TenantId, status, limit| ListQuery {
        tenant: Some(tenant.clone()),
        status,
        cursor: None,
        limit,
    };
    for limit in [1, 2, 3, 5, LIST_LIMIT_MAX] {
        let ids = list_all(store, query(&ta, None, limit)).await;
        assert_eq!(ids, all_a, "every record once, oldest first (limit {limit})");
    }
    assert_eq!(list_all(store, query(&tb, None, 1)).await, all_b);
    let cases = [
        (RecordStatus::Created, vec![all_a[0].clone(), all_a[2].clone(), all_a[4].clone()]),
        (RecordStatus::Active, vec![all_a[1].clone()]),
        (RecordStatus::Ended, vec![all_a[3].clone()]),
    ];
    for (status, expected) in cases {
        for limit in [1, 2, 10] {
            assert_eq!(
                list_all(store, query(&ta, Some(status), limit)).await,
                expected,
                "{status:?} limit {limit}"
            );
        }
    }
    let nobody = tenant();
    let page = store.list(&query(&nobody, None, 10)).await.expect("list");
    assert!(page.records.is_empty() && page.next_cursor.is_none());

    for limit in [0, LIST_LIMIT_MAX + 1] {
        let page = store.list(&query(&ta, None, limit)).await;
        assert!(matches!(page, Err(StoreError::Invalid(_))), "limit {limit}: {page:?}");
    }
    let mut bad = query(&ta, None, 10);
    bad.cursor = Some("not a cursor".into());
    assert!(matches!(store.list(&bad).await, Err(StoreError::Invalid(_))));
}

/// Follows cursors to the end; checks each page's size bound.
async fn list_all<S: CallStore>(store: &S, mut query: ListQuery) -> Vec<CallId> {
    let mut ids = Vec::new();
    // Bounded: more pages than records would mean the cursor does not advance.
    for _ in 0..=64 {
        let page = store.list(&query).await.expect("list");
        assert!(page.records.len() <= query.limit);
        if page.next_cursor.is_some() {
            assert!(!page.records.is_empty(), "a page with a next cursor has records");
        }
        ids.extend(page.records.into_iter().map(|r| r.call_id));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => return ids,
        }
    }
    panic!("list pagination does not terminate");
}

fn chunk(inbound: &[u8], outbound: &[u8]) -> RecordingChunk {
    RecordingChunk { inbound: Bytes::copy_from_slice(inbound), outbound: Bytes::copy_from_slice(outbound) }
}

async fn recording<S: CallStore>(store: &S, id: &CallId) -> Recording {
    store.recording(id).await.unwrap_or_else(|e| panic!("recording {id}: {e}"))
}

fn tracks(r: &Recording) -> (&[u8], &[u8], bool) {
    (&r.inbound[..], &r.outbound[..], r.truncated)
}

pub async fn recording_appends_exactly_once_with_fenced_writes<S: CallStore>(store: &S) {
    assert_eq!(store.recording(&call_id("norec")).await, Err(StoreError::NotFound));
    let (id, old) = create_attached(store, "rec", "w1").await;
    assert_eq!(tracks(&recording(store, &id).await), (&b""[..], &b""[..], false), "nothing recorded yet");

    let ack = store.checkpoint(&id, old, checkpoint(1), chunk(b"ab", b"x"), LEASE_SHORT).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied));
    assert_eq!(tracks(&recording(store, &id).await), (&b"ab"[..], &b"x"[..], false));

    let retry = store.checkpoint(&id, old, checkpoint(1), chunk(b"ab", b"x"), LEASE_SHORT).await;
    assert_eq!(retry, Ok(CheckpointAck::Duplicate { stored_seq: 1 }));
    assert_eq!(
        tracks(&recording(store, &id).await),
        (&b"ab"[..], &b"x"[..], false),
        "a duplicate appends nothing"
    );

    let new =
        store.attach(&id, &attempt("b"), &worker("w2"), old, LEASE_SHORT).await.expect("takeover").epoch;
    let fenced = store.checkpoint(&id, old, checkpoint(2), chunk(b"old", b"old"), LEASE_SHORT).await;
    assert_eq!(fenced, Err(StoreError::Fenced { current: new }));
    let fenced_end = store.end(&id, old, EndReason::ShedMemory, None, chunk(b"old", b"old")).await;
    assert_eq!(fenced_end, Err(StoreError::Fenced { current: new }));
    assert_eq!(
        tracks(&recording(store, &id).await),
        (&b"ab"[..], &b"x"[..], false),
        "fenced writes append nothing"
    );

    let ack = store.checkpoint(&id, new, checkpoint(2), chunk(b"cd", b""), LEASE_SHORT).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied));
    let ended = store.end(&id, new, EndReason::Completed, Some(checkpoint(3)), chunk(b"", b"yz")).await;
    assert_eq!(ended, Ok(new.next()));
    assert_eq!(
        tracks(&recording(store, &id).await),
        (&b"abcd"[..], &b"xyz"[..], false),
        "the end appends its chunk"
    );

    let again = store.end(&id, new.next(), EndReason::ApiEnded, None, chunk(b"late", b"late")).await;
    assert_eq!(again, Err(StoreError::Ended { reason: EndReason::Completed }));
    assert_eq!(
        tracks(&recording(store, &id).await),
        (&b"abcd"[..], &b"xyz"[..], false),
        "nothing after the end"
    );
}

pub async fn recording_is_bounded_per_track<S: CallStore>(store: &S) {
    let max = RECORDING_TRACK_BYTES_MAX;
    let (id, epoch) = create_attached(store, "recmax", "w1").await;
    let first = vec![b'a'; max - 4];
    let ack = store.checkpoint(&id, epoch, checkpoint(1), chunk(&first, b"o"), LEASE_SHORT).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied));
    assert!(!recording(store, &id).await.truncated, "under the bound nothing is left out");

    // The inbound track overflows: what fits is kept, the rest left out and flagged.
    let ack = store.checkpoint(&id, epoch, checkpoint(2), chunk(b"bbbbbbbb", b"p"), LEASE_SHORT).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied));
    let r = recording(store, &id).await;
    let mut expected_in = first.clone();
    expected_in.extend_from_slice(b"bbbb");
    assert_eq!(tracks(&r), (&expected_in[..], &b"op"[..], true));

    // The full track takes nothing more; the other keeps growing up to its own bound.
    let out = vec![b'q'; max];
    let ack = store.checkpoint(&id, epoch, checkpoint(3), chunk(b"c", &out), LEASE_SHORT).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied));
    store.end(&id, epoch, EndReason::Completed, None, chunk(b"d", b"r")).await.expect("end");
    let r = recording(store, &id).await;
    let mut expected_out = b"op".to_vec();
    expected_out.extend_from_slice(&out[..max - 2]);
    assert_eq!(tracks(&r), (&expected_in[..], &expected_out[..], true));
}

/// Attaches `owner` to a new call with a lease of `lease`; returns the id and epoch 1.
async fn create_leased<S: CallStore>(
    store: &S,
    scenario: &str,
    owner: &str,
    lease: Duration,
) -> (CallId, Epoch) {
    let id = create(store, scenario, &tenant()).await;
    let attached = store
        .attach(&id, &attempt(owner), &worker(owner), Epoch::ZERO, lease)
        .await
        .unwrap_or_else(|e| panic!("{scenario}: attach failed: {e}"));
    (id, attached.epoch)
}

/// The observations of `id` among the store's expired leases.
async fn observed<S: CallStore>(store: &S, overdue: Duration, id: &CallId) -> Vec<LeaseObservation> {
    let all = store.expired_leases(overdue, REAP_LIMIT).await.expect("expired_leases");
    all.into_iter().filter(|o| &o.call_id == id).collect()
}

/// The one observation of `id` once its lease ran out.
async fn observe_one<S: CallStore>(store: &S, id: &CallId) -> LeaseObservation {
    let mut seen = observed(store, Duration::ZERO, id).await;
    assert_eq!(seen.len(), 1, "{id} is listed once its lease ran out: {seen:?}");
    seen.remove(0)
}

pub async fn live_leases_are_not_expired<S: CallStore>(store: &S) {
    let (id, _) = create_leased(store, "live", "w1", LEASE_LONG).await;
    assert!(observed(store, Duration::ZERO, &id).await.is_empty(), "a live lease is not expired");
    let created = create(store, "live0", &tenant()).await;
    assert!(observed(store, Duration::from_secs(60), &created).await.is_empty(), "a new call is not overdue");
    assert_eq!(store.expired_leases(Duration::ZERO, 0).await, Ok(Vec::new()), "limit 0 lists nothing");
}

pub async fn expired_lease_end_bumps_the_epoch_and_leaves_the_index<S: CallStore>(store: &S) {
    let (id, epoch) = create_leased(store, "reap", "w1", LEASE_TINY).await;
    let lease_until = get(store, &id).await.lease_until.expect("attached calls have a lease");
    tokio::time::sleep(PAST_TINY_LEASE).await;
    let seen = observe_one(store, &id).await;
    assert_eq!((seen.epoch, seen.status, seen.lease_until), (epoch, RecordStatus::Active, lease_until));
    assert!(seen.observed_at >= seen.lease_until, "observed after the lease ran out: {seen:?}");

    let ended = store.expire(&seen, ExpireAction::End(EndReason::ResumeWindowExpired)).await;
    assert_eq!(ended, Ok(epoch.next()), "ending an orphan bumps the epoch");
    let r = get(store, &id).await;
    assert_eq!(
        (r.status, r.end_reason, r.epoch, r.lease_until),
        (RecordStatus::Ended, Some(EndReason::ResumeWindowExpired), epoch.next(), None)
    );
    assert!(observed(store, Duration::ZERO, &id).await.is_empty(), "an ended call leaves the lease index");
    let again = store.expire(&seen, ExpireAction::End(EndReason::ResumeWindowExpired)).await;
    assert_eq!(again, Err(StoreError::Ended { reason: EndReason::ResumeWindowExpired }));
    let late = store.checkpoint(&id, epoch, checkpoint(1), chunk(b"zombie", b""), LEASE_SHORT).await;
    assert_eq!(late, Err(StoreError::Ended { reason: EndReason::ResumeWindowExpired }));
    assert_eq!(recording(store, &id).await.inbound.len(), 0, "the fenced-out owner recorded nothing");

    // A call ended by its owner leaves the index too.
    let (id, epoch) = create_leased(store, "reap2", "w1", LEASE_TINY).await;
    store.end(&id, epoch, EndReason::Completed, None, RecordingChunk::default()).await.expect("end");
    tokio::time::sleep(PAST_TINY_LEASE).await;
    assert!(observed(store, Duration::ZERO, &id).await.is_empty(), "an ended call is never expired");

    let missing = LeaseObservation { call_id: call_id("gone"), ..seen };
    assert_eq!(
        store.expire(&missing, ExpireAction::End(EndReason::ResumeWindowExpired)).await,
        Err(StoreError::NotFound)
    );
}

pub async fn renew_or_takeover_between_phases_is_stale<S: CallStore>(store: &S) {
    let (renewed, renewed_epoch) = create_leased(store, "phase-renew", "w1", LEASE_TINY).await;
    let (taken, taken_epoch) = create_leased(store, "phase-take", "w1", LEASE_TINY).await;
    tokio::time::sleep(PAST_TINY_LEASE).await;
    let seen_renewed = observe_one(store, &renewed).await;
    let seen_taken = observe_one(store, &taken).await;

    store.renew(&renewed, renewed_epoch, LEASE_TINY).await.expect("the owner came back");
    let stale = store.expire(&seen_renewed, ExpireAction::End(EndReason::ResumeWindowExpired)).await;
    assert_eq!(stale, Err(StoreError::Stale { current: renewed_epoch }), "a renewal between the phases wins");
    let r = get(store, &renewed).await;
    assert_eq!((r.status, r.epoch), (RecordStatus::Active, renewed_epoch), "a stale reap changes nothing");

    let new = store
        .attach(&taken, &attempt("b"), &worker("w2"), taken_epoch, LEASE_LONG)
        .await
        .expect("takeover")
        .epoch;
    let stale = store.expire(&seen_taken, ExpireAction::Extend(LEASE_LONG)).await;
    assert_eq!(stale, Err(StoreError::Stale { current: new }), "a takeover between the phases wins");
    let r = get(store, &taken).await;
    assert_eq!((r.status, r.epoch, r.owner), (RecordStatus::Active, new, Some(worker("w2"))));
}

pub async fn extend_keeps_the_epoch_and_moves_the_lease<S: CallStore>(store: &S) {
    let (id, epoch) = create_leased(store, "extend", "w1", LEASE_TINY).await;
    tokio::time::sleep(PAST_TINY_LEASE).await;
    let seen = observe_one(store, &id).await;
    let extended = store.expire(&seen, ExpireAction::Extend(LEASE_LONG)).await;
    assert_eq!(extended, Ok(epoch), "an extension keeps the epoch");
    let r = get(store, &id).await;
    assert_eq!((r.status, r.epoch, r.owner.clone()), (RecordStatus::Active, epoch, Some(worker("w1"))));
    assert!(
        lease_ms(&r) >= seen.lease_until.0 + LEASE_MOVE_MIN_MS,
        "the lease moved by the extension: {:?} after {:?}",
        r.lease_until,
        seen.lease_until
    );
    assert!(observed(store, Duration::ZERO, &id).await.is_empty(), "an extended lease is not expired");
    let again = store.expire(&seen, ExpireAction::End(EndReason::ResumeWindowExpired)).await;
    assert_eq!(again, Err(StoreError::Stale { current: epoch }), "the old observation is stale now");
    let ack = store.checkpoint(&id, epoch, checkpoint(1), RecordingChunk::default(), LEASE_SHORT).await;
    assert_eq!(ack, Ok(CheckpointAck::Applied), "the owner keeps its epoch");
}

pub async fn created_calls_expire_from_creation<S: CallStore>(store: &S) {
    let id = create(store, "orphan0", &tenant()).await;
    let created_at = get(store, &id).await.created_at;
    tokio::time::sleep(PAST_TINY_LEASE).await;
    assert!(observed(store, Duration::from_secs(60), &id).await.is_empty(), "not overdue yet");
    let seen = observed(store, Duration::from_millis(100), &id).await;
    assert_eq!(seen.len(), 1, "a call never attached expires from its creation: {seen:?}");
    assert_eq!(
        (seen[0].epoch, seen[0].status, seen[0].lease_until),
        (Epoch::ZERO, RecordStatus::Created, created_at)
    );
    let ended = store.expire(&seen[0], ExpireAction::End(EndReason::ResumeWindowExpired)).await;
    assert_eq!(ended, Ok(Epoch(1)));
    assert_eq!(get(store, &id).await.status, RecordStatus::Ended);
    assert!(observed(store, Duration::ZERO, &id).await.is_empty());
}

pub async fn expired_leases_come_oldest_first_within_the_limit<S: CallStore>(store: &S) {
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(create_leased(store, "order", &format!("w{n}"), LEASE_TINY).await.0);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    tokio::time::sleep(PAST_TINY_LEASE).await;
    let all = store.expired_leases(Duration::ZERO, REAP_LIMIT).await.expect("expired_leases");
    let ours: Vec<&CallId> = all.iter().map(|o| &o.call_id).filter(|id| ids.contains(id)).collect();
    assert_eq!(ours, ids.iter().collect::<Vec<_>>(), "oldest lease first");
    assert!(all.windows(2).all(|w| w[0].lease_until <= w[1].lease_until), "sorted by lease: {all:?}");
    let two = store.expired_leases(Duration::ZERO, 2).await.expect("expired_leases");
    assert_eq!(two.len(), 2, "the limit bounds the answer");
    let key = |o: &LeaseObservation| (o.call_id.clone(), o.epoch, o.lease_until);
    assert_eq!(
        two.iter().map(key).collect::<Vec<_>>(),
        all[..2].iter().map(key).collect::<Vec<_>>(),
        "a smaller limit answers a prefix"
    );
}

fn worker_info(id: &WorkerId, live_calls: u64) -> WorkerInfo {
    WorkerInfo {
        worker_id: id.clone(),
        address: "127.0.0.1:9".into(),
        version: "test".into(),
        live_calls,
        governor_level: "normal".into(),
        started_at: UnixMillis(1),
        heartbeat_at: UnixMillis(0),
    }
}

async fn our_workers<S: CallStore>(store: &S, ids: &[&WorkerId]) -> Vec<WorkerInfo> {
    let all = store.workers().await.expect("workers");
    all.into_iter().filter(|w| ids.contains(&&w.worker_id)).collect()
}

pub async fn heartbeats_list_workers_until_they_lapse<S: CallStore>(store: &S) {
    let brief = WorkerId::parse(&unique("wb")).expect("valid");
    let steady = WorkerId::parse(&unique("ws")).expect("valid");
    let ids = [&brief, &steady];
    assert!(our_workers(store, &ids).await.is_empty());
    store.heartbeat(&worker_info(&brief, 1), LEASE_TINY).await.expect("heartbeat");
    store.heartbeat(&worker_info(&steady, 1), LEASE_LONG).await.expect("heartbeat");
    store.heartbeat(&worker_info(&steady, 7), LEASE_LONG).await.expect("heartbeat again");
    let seen = our_workers(store, &ids).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    let steady_seen = seen.iter().find(|w| w.worker_id == steady).expect("steady is listed");
    assert_eq!(steady_seen.live_calls, 7, "the last heartbeat wins");
    assert!(seen.iter().all(|w| w.heartbeat_at > UnixMillis(0)), "the store sets heartbeat_at: {seen:?}");
    let expected = WorkerInfo { heartbeat_at: steady_seen.heartbeat_at, ..worker_info(&steady, 7) };
    assert_eq!(steady_seen, &expected, "everything else is as announced");

    tokio::time::sleep(PAST_TINY_LEASE).await;
    let seen = our_workers(store, &ids).await;
    assert_eq!(
        seen.iter().map(|w| &w.worker_id).collect::<Vec<_>>(),
        [&steady],
        "brief lapsed after its ttl"
    );

    store.deregister(&steady).await.expect("deregister");
    assert!(our_workers(store, &ids).await.is_empty(), "deregistered");
    store.deregister(&steady).await.expect("deregistering twice is fine");
}

pub async fn live_calls_of_a_tenant_reach_the_bound_only_while_that_many_are_live<S: CallStore>(store: &S) {
    let (t, u) = (tenant(), tenant());
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(create(store, "live-of", &t).await);
    }
    create(store, "live-of-u", &u).await;
    let count = |tenant: TenantId, bound: usize| async move {
        store.live_calls_of(&tenant, bound).await.unwrap_or_else(|e| panic!("live_calls_of: {e}"))
    };
    assert_eq!(count(t.clone(), 100).await, 5, "below the bound, with nothing ended, it is exact");
    assert_eq!(count(u.clone(), 100).await, 1, "tenants are counted apart");
    assert!(count(t.clone(), 5).await >= 5);
    assert!(count(t.clone(), 3).await >= 3);
    // An attached (active) call is live too.
    store.attach(&ids[0], &attempt("a"), &worker("w1"), Epoch::ZERO, LEASE_SHORT).await.expect("attach");
    assert!(count(t.clone(), 5).await >= 5);
    // Ended calls stop counting at the bound.
    store.end(&ids[0], Epoch(1), EndReason::Completed, None, RecordingChunk::default()).await.expect("end");
    store.end(&ids[1], Epoch::ZERO, EndReason::ApiEnded, None, RecordingChunk::default()).await.expect("end");
    assert!(count(t.clone(), 4).await < 4, "3 live calls are below a bound of 4");
    assert!(count(t.clone(), 3).await >= 3, "3 live calls reach a bound of 3");
    for id in &ids[2..] {
        store.end(id, Epoch::ZERO, EndReason::ApiEnded, None, RecordingChunk::default()).await.expect("end");
    }
    assert_eq!(count(t.clone(), 1).await, 0, "no live call left");
    assert_eq!(count(u, 1).await, 1);
}

// ----- webhook outbox --------------------------------------------------------------------

fn hooked_tenant() -> TenantId {
    TenantId::parse(WEBHOOK_TENANT).expect("a valid tenant")
}

fn event(id: &CallId, n: u64, kind: EventType, data: &str) -> OutboxEvent {
    OutboxEvent { id: format!("{id}:e{n}"), kind, at: UnixMillis(1_000 + n), data: data.to_owned() }
}

fn dtmf(id: &CallId, n: u64) -> OutboxEvent {
    event(id, n, EventType::Dtmf, &format!("{{\"digit\":\"{}\"}}", n % 10))
}

/// Claims `id`'s outbox if it is due (other calls found due are given back at once).
async fn claim_own<S: CallStore>(store: &S, id: &CallId, lease: Duration) -> Option<OutboxClaim> {
    let claims = store.outbox_claim(REAP_LIMIT, lease).await.unwrap_or_else(|e| panic!("outbox_claim: {e}"));
    let mut own = None;
    for claim in claims {
        if &claim.call_id == id {
            own = Some(claim);
        } else {
            store.outbox_yield(&claim).await.unwrap_or_else(|e| panic!("outbox_yield: {e}"));
        }
    }
    own
}

fn parse_body(event: &PendingEvent) -> EventBody {
    serde_json::from_slice(&event.body)
        .unwrap_or_else(|e| panic!("a stored webhook body is JSON: {e}: {:?}", event.body))
}

/// Delivers every pending event of `id` (one claim), returning the bodies in order.
async fn drain_outbox<S: CallStore>(store: &S, id: &CallId) -> Vec<EventBody> {
    let claim = claim_own(store, id, LEASE_LONG).await.unwrap_or_else(|| panic!("{id}: outbox is due"));
    let mut bodies = Vec::new();
    while let Some(head) = store.outbox_head(&claim).await.unwrap_or_else(|e| panic!("outbox_head: {e}")) {
        bodies.push(parse_body(&head));
        store.outbox_settle(&claim, &head, Settle::Delivered).await.unwrap_or_else(|e| panic!("settle: {e}"));
        // A settle retried after a lost reply changes nothing twice.
        store.outbox_settle(&claim, &head, Settle::Delivered).await.unwrap_or_else(|e| panic!("settle: {e}"));
        assert!(bodies.len() <= 100, "{id}: the outbox drains");
    }
    assert_eq!(claim_own(store, id, LEASE_LONG).await, None, "{id}: an empty outbox is not due");
    bodies
}

pub async fn webhook_events_ride_with_their_writes_exactly_once_and_in_order<S: CallStore>(store: &S) {
    let tenant = hooked_tenant();
    let id = create(store, "wh-once", &tenant).await;
    let a = store
        .attach(&id, &attempt("w1"), &worker("w1"), Epoch::ZERO, LEASE_SHORT)
        .await
        .expect("the store answers");
    let started = event(&id, 1, EventType::CallStarted, "{\"transport\":\"native\"}");
    let audio = RecordingChunk { inbound: Bytes::from_static(b"abc"), outbound: Bytes::new() };
    let first = [started.clone(), dtmf(&id, 2)];
    store
        .checkpoint_with_events(&id, a.epoch, checkpoint(1), audio.clone(), &first, LEASE_SHORT)
        .await
        .expect("the store answers");
    // A retry of the same write (same seq) appends nothing again.
    let retry = store
        .checkpoint_with_events(&id, a.epoch, checkpoint(1), audio, &first, LEASE_SHORT)
        .await
        .expect("the store answers");
    assert_eq!(retry, CheckpointAck::Duplicate { stored_seq: 1 });
    // A takeover; the old owner's write is fenced and appends nothing.
    let b = store
        .attach(&id, &attempt("w2"), &worker("w2"), a.epoch, LEASE_SHORT)
        .await
        .expect("the store answers");
    let fenced = store
        .checkpoint_with_events(
            &id,
            a.epoch,
            checkpoint(2),
            RecordingChunk::default(),
            &[dtmf(&id, 3)],
            LEASE_SHORT,
        )
        .await;
    assert!(matches!(fenced, Err(StoreError::Fenced { .. })), "{fenced:?}");
    let resumed = event(&id, 3, EventType::CallResumed, "{\"cause\":\"worker_lost\",\"gap_ms\":5}");
    store
        .checkpoint_with_events(
            &id,
            b.epoch,
            checkpoint(2),
            RecordingChunk::default(),
            &[resumed],
            LEASE_SHORT,
        )
        .await
        .expect("the store answers");
    store
        .end_with_events(
            &id,
            b.epoch,
            EndReason::ClientHangup,
            Some(checkpoint(3)),
            RecordingChunk::default(),
            &[dtmf(&id, 4)],
        )
        .await
        .expect("the store answers");
    // The end retried after a lost reply writes no second end event.
    let again = store.end(&id, b.epoch, EndReason::ClientHangup, None, RecordingChunk::default()).await;
    assert!(matches!(again, Err(StoreError::Ended { .. })), "{again:?}");

    let bodies = drain_outbox(store, &id).await;
    let ids: Vec<String> = bodies.iter().map(|b| b.id.clone()).collect();
    let expected_ids = [
        format!("{id}:e1"),
        format!("{id}:e2"),
        format!("{id}:e3"),
        format!("{id}:e4"),
        format!("{id}:ended"),
        format!("{id}:recording"),
    ];
    assert_eq!(ids, expected_ids, "every event once, in order");
    let types: Vec<&str> = bodies.iter().map(|b| b.kind.as_str()).collect();
    assert_eq!(types, ["call.started", "dtmf", "call.resumed", "dtmf", "call.ended", "recording.ready"]);
    for b in &bodies {
        assert_eq!((b.call_id.as_str(), b.tenant.as_str()), (id.as_str(), WEBHOOK_TENANT), "{b:?}");
    }
    assert_eq!(bodies[0].data["transport"], "native");
    assert_eq!(bodies[0].at, 1_001);
    assert_eq!(bodies[1].data["digit"], "2");
    assert_eq!(bodies[2].data["gap_ms"], 5);
    assert_eq!(bodies[4].data["reason"], "client_hangup");
    assert_eq!(bodies[5].data["inbound_bytes"], 3);
    assert_eq!(bodies[5].data["outbound_bytes"], 0);
    assert_eq!(bodies[5].data["truncated"], false);
}

pub async fn webhooks_of_unsubscribed_tenants_are_not_kept<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "wh-none", "w1").await;
    store
        .checkpoint_with_events(
            &id,
            epoch,
            checkpoint(1),
            RecordingChunk::default(),
            &[dtmf(&id, 1)],
            LEASE_SHORT,
        )
        .await
        .expect("the store answers");
    store
        .end(&id, epoch, EndReason::Completed, None, RecordingChunk::default())
        .await
        .expect("the store answers");
    assert_eq!(claim_own(store, &id, LEASE_LONG).await, None, "no webhook for a tenant without subscription");
}

pub async fn webhook_retries_back_off_and_dead_letters_are_kept<S: CallStore>(store: &S) {
    let id = create(store, "wh-retry", &hooked_tenant()).await;
    let a = store
        .attach(&id, &attempt("w1"), &worker("w1"), Epoch::ZERO, LEASE_SHORT)
        .await
        .expect("the store answers");
    let events = [dtmf(&id, 1), dtmf(&id, 2)];
    store
        .checkpoint_with_events(&id, a.epoch, checkpoint(1), RecordingChunk::default(), &events, LEASE_SHORT)
        .await
        .expect("the store answers");
    let claim = claim_own(store, &id, LEASE_LONG).await.expect("due");
    let head = store.outbox_head(&claim).await.expect("the store answers").expect("an event");
    assert_eq!((parse_body(&head).id, head.attempts), (format!("{id}:e1"), 0));
    store.outbox_settle(&claim, &head, Settle::Retry { after: LEASE_TINY }).await.expect("the store answers");
    assert_eq!(claim_own(store, &id, LEASE_LONG).await, None, "not due during its backoff");
    tokio::time::sleep(PAST_TINY_LEASE).await;
    let claim = claim_own(store, &id, LEASE_LONG).await.expect("due after its backoff");
    let head = store.outbox_head(&claim).await.expect("the store answers").expect("the same event");
    assert_eq!((parse_body(&head).id, head.attempts), (format!("{id}:e1"), 1), "the attempt was counted");
    store
        .outbox_settle(&claim, &head, Settle::Dead { reason: "attempts_exhausted".into(), attempts: 2 })
        .await
        .expect("the store answers");
    let next = store.outbox_head(&claim).await.expect("the store answers").expect("the next event");
    assert_eq!((parse_body(&next).id, next.attempts), (format!("{id}:e2"), 0), "attempts are per event");
    store.outbox_settle(&claim, &next, Settle::Delivered).await.expect("the store answers");
    assert_eq!(store.outbox_head(&claim).await.expect("the store answers"), None);
    let dead = store.dead_letters(WEBHOOK_DEAD_LETTERS_MAX).await.expect("the store answers");
    let letter = dead.iter().find(|d| d.event.call_id == id.as_str()).expect("the dead letter is kept");
    assert_eq!(
        (letter.event.id.as_str(), letter.reason.as_str(), letter.attempts),
        (format!("{id}:e1").as_str(), "attempts_exhausted", 2)
    );
}

pub async fn lapsed_outbox_claims_are_claimed_again<S: CallStore>(store: &S) {
    let id = create(store, "wh-lapse", &hooked_tenant()).await;
    let a = store
        .attach(&id, &attempt("w1"), &worker("w1"), Epoch::ZERO, LEASE_SHORT)
        .await
        .expect("the store answers");
    store
        .checkpoint_with_events(
            &id,
            a.epoch,
            checkpoint(1),
            RecordingChunk::default(),
            &[dtmf(&id, 1)],
            LEASE_SHORT,
        )
        .await
        .expect("the store answers");
    let first = claim_own(store, &id, LEASE_TINY).await.expect("due");
    assert_eq!(claim_own(store, &id, LEASE_LONG).await, None, "claimed: nobody else gets it");
    tokio::time::sleep(PAST_TINY_LEASE).await;
    let second = claim_own(store, &id, LEASE_LONG).await.expect("a lapsed claim is claimed again");
    assert_ne!(first.token, second.token);
    // The lapsed claimant's schedule changes are ignored; the current claim keeps the call.
    let head = store.outbox_head(&second).await.expect("the store answers").expect("the event");
    store.outbox_yield(&first).await.expect("the store answers");
    assert_eq!(claim_own(store, &id, LEASE_LONG).await, None, "a lapsed claim cannot give the call back");
    store.outbox_settle(&second, &head, Settle::Delivered).await.expect("the store answers");
    assert_eq!(store.outbox_head(&second).await.expect("the store answers"), None);
}

pub async fn webhook_outbox_is_bounded_per_call_but_keeps_the_end<S: CallStore>(store: &S) {
    let id = create(store, "wh-bound", &hooked_tenant()).await;
    let a = store
        .attach(&id, &attempt("w1"), &worker("w1"), Epoch::ZERO, LEASE_SHORT)
        .await
        .expect("the store answers");
    let many: Vec<OutboxEvent> = (1..=WEBHOOK_CALL_EVENTS_MAX as u64 + 2).map(|n| dtmf(&id, n)).collect();
    store
        .checkpoint_with_events(&id, a.epoch, checkpoint(1), RecordingChunk::default(), &many, LEASE_SHORT)
        .await
        .expect("the store answers");
    store
        .end(&id, a.epoch, EndReason::Completed, None, RecordingChunk::default())
        .await
        .expect("the store answers");
    let bodies = drain_outbox(store, &id).await;
    let ids: Vec<String> = bodies.iter().map(|b| b.id.clone()).collect();
    let mut expected: Vec<String> = (1..=WEBHOOK_CALL_EVENTS_MAX).map(|n| format!("{id}:e{n}")).collect();
    expected.push(format!("{id}:ended"));
    assert_eq!(ids, expected, "the oldest events and the end are kept; the newest beyond the bound dropped");
}

pub async fn reaper_end_writes_the_end_webhook_events<S: CallStore>(store: &S) {
    let id = create(store, "wh-reap", &hooked_tenant()).await;
    let a = store
        .attach(&id, &attempt("w1"), &worker("w1"), Epoch::ZERO, LEASE_TINY)
        .await
        .expect("the store answers");
    tokio::time::sleep(PAST_TINY_LEASE).await;
    let seen = store.expired_leases(Duration::ZERO, REAP_LIMIT).await.expect("the store answers");
    let observed = seen.into_iter().find(|o| o.call_id == id).expect("its lease ran out");
    assert_eq!(observed.epoch, a.epoch);
    store
        .expire(&observed, ExpireAction::End(EndReason::ResumeWindowExpired))
        .await
        .expect("the store answers");
    let bodies = drain_outbox(store, &id).await;
    assert_eq!(bodies.len(), 1, "call.ended only: nothing was recorded: {bodies:?}");
    assert_eq!(
        (bodies[0].kind.as_str(), &bodies[0].data["reason"]),
        ("call.ended", &serde_json::json!("resume_window_expired"))
    );
}
