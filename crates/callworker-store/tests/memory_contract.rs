//! The store contract against [`MemoryStore`], plus its own bound: capacity and eviction.

// Helper functions are not `#[test]`s, so clippy's test exemption misses them.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, UnixMillis, WorkerId};
use callworker_store::memory::MemoryStore;
use callworker_store::outbox::{DeadLetter, OutboxClaim, OutboxEvent, PendingEvent, Settle};
use callworker_store::{
    AttemptId, CallStore, Checkpoint, ExpireAction, LeaseObservation, ListQuery, NewCall, RecordStatus,
    Recording, RecordingChunk, StoreError, WorkerInfo, contract,
};

#[tokio::test]
async fn memory_store_meets_the_contract() {
    contract::run_all(|| async {
        MemoryStore::new(1_000).with_recording_limit(contract::RECORDING_TRACK_BYTES_MAX).with_webhooks(
            contract::webhook_subscriptions(),
            contract::WEBHOOK_CALL_EVENTS_MAX,
            contract::WEBHOOK_DEAD_LETTERS_MAX,
        )
    })
    .await;
}

fn new_call(id: &str) -> NewCall {
    NewCall {
        call_id: CallId::parse(id).unwrap(),
        tenant: TenantId::parse("acme").unwrap(),
        checkpoint: Checkpoint { seq: 0, blob: Bytes::from_static(b"c") },
    }
}

fn id(s: &str) -> CallId {
    CallId::parse(s).unwrap()
}

async fn ids_listed(store: &MemoryStore) -> Vec<String> {
    let query = ListQuery { tenant: None, status: None, cursor: None, limit: 100 };
    store.list(&query).await.unwrap().records.into_iter().map(|r| r.call_id.to_string()).collect()
}

#[tokio::test]
async fn full_store_evicts_the_oldest_ended_call_or_refuses() {
    let store = MemoryStore::new(3);
    for name in ["c1", "c2", "c3"] {
        store.create(new_call(name)).await.unwrap();
    }
    assert_eq!(store.create(new_call("c4")).await, Err(StoreError::Full(3)), "no call has ended");
    assert_eq!(store.create(new_call("c1")).await, Err(StoreError::AlreadyExists));

    store.end(&id("c2"), Epoch::ZERO, EndReason::Completed, None, RecordingChunk::default()).await.unwrap();
    store.end(&id("c3"), Epoch::ZERO, EndReason::Completed, None, RecordingChunk::default()).await.unwrap();
    store.create(new_call("c4")).await.unwrap();
    assert_eq!(store.get(&id("c2")).await, Err(StoreError::NotFound), "c2 was the oldest ended");
    assert_eq!(ids_listed(&store).await, ["c1", "c3", "c4"]);

    store.create(new_call("c5")).await.unwrap();
    assert_eq!(ids_listed(&store).await, ["c1", "c4", "c5"]);
    assert_eq!(store.create(new_call("c6")).await, Err(StoreError::Full(3)), "live calls are never evicted");
    assert_eq!(store.len(), 3);

    let empty = MemoryStore::new(0);
    assert_eq!(empty.create(new_call("c1")).await, Err(StoreError::Full(0)));
}

#[tokio::test]
async fn cursors_survive_eviction_of_earlier_calls() {
    let store = MemoryStore::new(4);
    for name in ["c1", "c2", "c3", "c4"] {
        store.create(new_call(name)).await.unwrap();
    }
    let first = ListQuery { tenant: None, status: None, cursor: None, limit: 2 };
    let page = store.list(&first).await.unwrap();
    store.end(&id("c1"), Epoch::ZERO, EndReason::Completed, None, RecordingChunk::default()).await.unwrap();
    store.create(new_call("c5")).await.unwrap();
    let next = ListQuery { cursor: page.next_cursor, ..first };
    let page = store.list(&next).await.unwrap();
    let names: Vec<String> = page.records.iter().map(|r| r.call_id.to_string()).collect();
    assert_eq!(names, ["c3", "c4"]);
}

#[tokio::test]
async fn leases_run_from_the_store_clock() {
    let now_ms = Arc::new(AtomicU64::new(1_000_000));
    let clock = now_ms.clone();
    let store = MemoryStore::with_clock(10, Arc::new(move || UnixMillis(clock.load(Ordering::SeqCst))));
    store.create(new_call("c1")).await.unwrap();
    let lease = Duration::from_secs(5);
    let a = store
        .attach(&id("c1"), &AttemptId("a".into()), &WorkerId::parse("w1").unwrap(), Epoch::ZERO, lease)
        .await
        .unwrap();
    assert_eq!(a.record.lease_until, Some(UnixMillis(1_005_000)));
    assert_eq!(a.record.created_at, UnixMillis(1_000_000));
    now_ms.store(1_002_000, Ordering::SeqCst);
    store.renew(&id("c1"), a.epoch, lease).await.unwrap();
    let r = store.get(&id("c1")).await.unwrap();
    assert_eq!((r.lease_until, r.updated_at), (Some(UnixMillis(1_007_000)), UnixMillis(1_002_000)));
    store.end(&id("c1"), a.epoch, EndReason::Completed, None, RecordingChunk::default()).await.unwrap();
    let r = store.get(&id("c1")).await.unwrap();
    assert_eq!((r.status, r.owner, r.lease_until), (RecordStatus::Ended, None, None));
}

/// A store that forgets to fence checkpoints: it writes with whatever epoch is stored.
/// The contract must catch it, or the contract proves nothing.
#[derive(Debug)]
struct UnfencedStore(MemoryStore);

#[async_trait::async_trait]
impl CallStore for UnfencedStore {
    async fn create(&self, call: NewCall) -> Result<(), StoreError> {
        self.0.create(call).await
    }
    async fn attach(
        &self,
        call_id: &CallId,
        attempt: &AttemptId,
        owner: &WorkerId,
        expected_epoch: Epoch,
        lease: Duration,
    ) -> Result<callworker_store::Attached, StoreError> {
        self.0.attach(call_id, attempt, owner, expected_epoch, lease).await
    }
    async fn checkpoint_with_events(
        &self,
        call_id: &CallId,
        _epoch: Epoch,
        checkpoint: Checkpoint,
        recording: RecordingChunk,
        events: &[OutboxEvent],
        lease: Duration,
    ) -> Result<callworker_store::CheckpointAck, StoreError> {
        let current = self.0.get(call_id).await?.epoch;
        self.0.checkpoint_with_events(call_id, current, checkpoint, recording, events, lease).await
    }
    async fn renew(&self, call_id: &CallId, epoch: Epoch, lease: Duration) -> Result<(), StoreError> {
        self.0.renew(call_id, epoch, lease).await
    }
    async fn end_with_events(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        reason: EndReason,
        final_checkpoint: Option<Checkpoint>,
        recording: RecordingChunk,
        events: &[OutboxEvent],
    ) -> Result<Epoch, StoreError> {
        self.0.end_with_events(call_id, epoch, reason, final_checkpoint, recording, events).await
    }
    async fn get(&self, call_id: &CallId) -> Result<callworker_store::CallRecord, StoreError> {
        self.0.get(call_id).await
    }
    async fn list(&self, query: &ListQuery) -> Result<callworker_store::ListPage, StoreError> {
        self.0.list(query).await
    }
    async fn live_calls_of(
        &self,
        tenant: &callworker_call::TenantId,
        bound: usize,
    ) -> Result<usize, StoreError> {
        self.0.live_calls_of(tenant, bound).await
    }
    async fn recording(&self, call_id: &CallId) -> Result<Recording, StoreError> {
        self.0.recording(call_id).await
    }
    async fn expired_leases(
        &self,
        overdue: Duration,
        limit: usize,
    ) -> Result<Vec<LeaseObservation>, StoreError> {
        self.0.expired_leases(overdue, limit).await
    }
    async fn expire(&self, observed: &LeaseObservation, action: ExpireAction) -> Result<Epoch, StoreError> {
        self.0.expire(observed, action).await
    }
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError> {
        self.0.heartbeat(worker, ttl).await
    }
    async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        self.0.workers().await
    }
    async fn deregister(&self, worker_id: &WorkerId) -> Result<(), StoreError> {
        self.0.deregister(worker_id).await
    }
    async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxClaim>, StoreError> {
        self.0.outbox_claim(limit, lease).await
    }
    async fn outbox_head(&self, claim: &OutboxClaim) -> Result<Option<PendingEvent>, StoreError> {
        self.0.outbox_head(claim).await
    }
    async fn outbox_settle(
        &self,
        claim: &OutboxClaim,
        event: &PendingEvent,
        settle: Settle,
    ) -> Result<(), StoreError> {
        self.0.outbox_settle(claim, event, settle).await
    }
    async fn outbox_yield(&self, claim: &OutboxClaim) -> Result<(), StoreError> {
        self.0.outbox_yield(claim).await
    }
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        self.0.dead_letters(limit).await
    }
    async fn outbox_calls(&self) -> Result<u64, StoreError> {
        self.0.outbox_calls().await
    }
}

#[tokio::test]
async fn the_contract_catches_a_store_that_does_not_fence() {
    let run = tokio::spawn(async {
        contract::old_owner_is_fenced_after_takeover(&UnfencedStore(MemoryStore::new(10))).await;
    });
    let result = run.await;
    assert!(result.is_err_and(|e| e.is_panic()), "the fencing scenario must fail");
}
