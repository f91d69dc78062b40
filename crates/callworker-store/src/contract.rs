//! The behaviour every [`CallStore`] must show, as a reusable suite.
//!
//! Each scenario is a `pub async fn` taking a store and panicking (through `assert!`) when
//! the store breaks one of the invariants in the crate docs; [`run_all`] runs every scenario
//! on a fresh store from `make`. Implementations run it from their tests:
//!
//! ```
//! # use callworker_store::{contract, memory::MemoryStore};
//! # async fn meets_the_contract() {
//! // In a `#[tokio::test]`:
//! contract::run_all(|| MemoryStore::new(1_000)).await;
//! # }
//! ```
//!
//! Scenarios use call ids and tenants unique to the process run, so a store shared between
//! scenarios (one Redis server) does not make them interfere. Lease assertions compare
//! leases with each other, never with a clock, so they hold on any store clock.
//!
//! This module is test support: it lives in the library so other crates' tests can reuse
//! it, but nothing in the service calls it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, WorkerId};

use crate::{
    AttemptId, CallRecord, CallStore, Checkpoint, CheckpointAck, LIST_LIMIT_MAX, ListQuery, NewCall,
    RecordStatus, StoreError,
};

/// A short lease, and a long one whose renewal must visibly move `lease_until`.
const LEASE_SHORT: Duration = Duration::from_secs(1);
const LEASE_LONG: Duration = Duration::from_secs(600);
/// How far a renewal from [`LEASE_SHORT`] to [`LEASE_LONG`] must move the lease at least
/// (the full difference minus generous slack for time passing between the two calls).
const LEASE_MOVE_MIN_MS: u64 = 500_000;

/// Runs every scenario, each on a fresh store from `make`.
pub async fn run_all<S: CallStore>(make: impl Fn() -> S) {
    create_then_get(&make()).await;
    duplicate_create_is_refused(&make()).await;
    unknown_call_is_not_found(&make()).await;
    attach_is_a_compare_and_set_that_bumps_the_epoch(&make()).await;
    stale_attach_changes_nothing(&make()).await;
    attach_retry_with_the_same_attempt_is_idempotent(&make()).await;
    old_owner_is_fenced_after_takeover(&make()).await;
    duplicate_checkpoint_is_acknowledged_and_renews(&make()).await;
    end_bumps_the_epoch_and_blocks_later_writes(&make()).await;
    end_twice_keeps_the_first_reason(&make()).await;
    end_keeps_the_newest_checkpoint(&make()).await;
    list_filters_and_pages_cover_every_record_once(&make()).await;
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
    assert_eq!(store.checkpoint(&id, e, checkpoint(1), LEASE_SHORT).await, Err(StoreError::NotFound));
    assert_eq!(store.renew(&id, e, LEASE_SHORT).await, Err(StoreError::NotFound));
    assert_eq!(store.end(&id, e, EndReason::ApiEnded, None).await, Err(StoreError::NotFound));
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
    assert_eq!(store.checkpoint(&id, old, checkpoint(1), LEASE_SHORT).await, Ok(CheckpointAck::Applied));
    let new =
        store.attach(&id, &attempt("b"), &worker("w2"), old, LEASE_SHORT).await.expect("takeover").epoch;
    let before = get(store, &id).await;
    let fenced = Some(StoreError::Fenced { current: new });
    assert_eq!(store.checkpoint(&id, old, checkpoint(2), LEASE_LONG).await.err(), fenced);
    assert_eq!(store.renew(&id, old, LEASE_LONG).await.err(), fenced);
    assert_eq!(store.end(&id, old, EndReason::ShedMemory, Some(checkpoint(3))).await.err(), fenced);
    let after = get(store, &id).await;
    assert_eq!(after.checkpoint, Some(checkpoint(1)), "fenced writes change nothing");
    assert_eq!((after.epoch, after.status, after.end_reason), (new, RecordStatus::Active, None));
    assert_eq!(after.lease_until, before.lease_until, "a fenced renew does not extend the lease");
    assert_eq!(store.checkpoint(&id, new, checkpoint(2), LEASE_SHORT).await, Ok(CheckpointAck::Applied));
}

pub async fn duplicate_checkpoint_is_acknowledged_and_renews<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "dupck", "w1").await;
    assert_eq!(store.checkpoint(&id, epoch, checkpoint(5), LEASE_SHORT).await, Ok(CheckpointAck::Applied));
    let short = lease_ms(&get(store, &id).await);
    for seq in [5, 3, 0] {
        let mut stale = checkpoint(seq);
        stale.blob = Bytes::from_static(b"must not be stored");
        assert_eq!(
            store.checkpoint(&id, epoch, stale, LEASE_LONG).await,
            Ok(CheckpointAck::Duplicate { stored_seq: 5 }),
            "seq {seq}"
        );
    }
    let r = get(store, &id).await;
    assert_eq!(r.checkpoint, Some(checkpoint(5)));
    assert!(lease_ms(&r) >= short + LEASE_MOVE_MIN_MS, "a duplicate still renews the lease");
    assert_eq!(store.checkpoint(&id, epoch, checkpoint(6), LEASE_SHORT).await, Ok(CheckpointAck::Applied));
    assert_eq!(get(store, &id).await.checkpoint, Some(checkpoint(6)));

    // Renew alone moves the lease too.
    let before = lease_ms(&get(store, &id).await);
    store.renew(&id, epoch, LEASE_LONG).await.expect("renew");
    assert!(lease_ms(&get(store, &id).await) >= before + LEASE_MOVE_MIN_MS);
}

pub async fn end_bumps_the_epoch_and_blocks_later_writes<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "end", "w1").await;
    let ended =
        store.end(&id, epoch, EndReason::Completed, Some(checkpoint(9))).await.expect("end by the owner");
    assert_eq!(ended, epoch.next(), "end bumps the epoch by exactly one");
    let r = get(store, &id).await;
    assert_eq!((r.status, r.end_reason, r.epoch), (RecordStatus::Ended, Some(EndReason::Completed), ended));
    assert_eq!(r.checkpoint, Some(checkpoint(9)), "the final checkpoint is stored");

    let is_ended = Some(StoreError::Ended { reason: EndReason::Completed });
    assert_eq!(store.checkpoint(&id, ended, checkpoint(10), LEASE_SHORT).await.err(), is_ended);
    assert_eq!(store.renew(&id, ended, LEASE_SHORT).await.err(), is_ended);
    let attach = store.attach(&id, &attempt("b"), &worker("w2"), ended, LEASE_SHORT).await;
    assert_eq!(attach.err(), is_ended);
    // The old epoch is refused too (as ended or as fenced; either stops the writer).
    let old = store.checkpoint(&id, epoch, checkpoint(11), LEASE_SHORT).await;
    assert!(matches!(old, Err(StoreError::Ended { .. } | StoreError::Fenced { .. })), "{old:?}");
    let after = get(store, &id).await;
    assert_eq!(
        (after.epoch, after.checkpoint),
        (ended, Some(checkpoint(9))),
        "nothing written after the end"
    );

    // A call that never attached (epoch 0) can be ended too.
    let id = create(store, "end0", &tenant()).await;
    assert_eq!(store.end(&id, Epoch::ZERO, EndReason::ApiEnded, None).await, Ok(Epoch(1)));
    assert_eq!(get(store, &id).await.checkpoint, Some(checkpoint(0)));
}

pub async fn end_twice_keeps_the_first_reason<S: CallStore>(store: &S) {
    let (id, epoch) = create_attached(store, "end2", "w1").await;
    let ended = store.end(&id, epoch, EndReason::ClientHangup, None).await.expect("end");
    for (e, reason) in [(ended, EndReason::ApiEnded), (epoch, EndReason::ShedMemory)] {
        let again = store.end(&id, e, reason, Some(checkpoint(4))).await;
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
    assert_eq!(store.checkpoint(&id, epoch, checkpoint(10), LEASE_SHORT).await, Ok(CheckpointAck::Applied));
    store.end(&id, epoch, EndReason::Completed, Some(checkpoint(7))).await.expect("end");
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
    store.end(&all_a[3], Epoch::ZERO, EndReason::ApiEnded, None).await.expect("end");

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
