//! Where call state lives between sessions and workers.
//!
//! [`CallStore`] is the one interface the rest of callworker uses. Every write that could
//! race with another worker is *fenced*: it carries the writer's [`Epoch`] and is refused
//! with [`StoreError::Fenced`] if the stored epoch has moved on. Taking over a call is a
//! compare-and-set on the epoch ([`CallStore::attach`]), and ending a call bumps the epoch
//! too, so nothing can write after the end.
//!
//! Layout:
//! - [`CallStore`] and its request/response types (this file).
//! - [`memory`]: [`memory::MemoryStore`], a bounded in-process implementation (single worker,
//!   tests).
//! - [`redis_store`]: [`redis_store::RedisStore`], the implementation shared by every worker,
//!   on one Redis server or a Redis Cluster, over TCP or TLS: one Lua script per fenced write
//!   (`lua/*.lua`), keys hash-tagged by call id so each script runs on one slot.
//! - [`outbox`]: the webhook outbox: events written atomically with the state change that
//!   causes them, claimed and settled by every worker's delivery task.
//! - [`contract`]: the behaviour every implementation must show, as a reusable test suite.
//! - [`metrics`]: the names of the metrics the store exports.
//!
//! Invariants (checked by [`contract`]):
//! - The epoch of a call never decreases; `attach` and `end` increase it by exactly one.
//! - A write with a stale epoch changes nothing.
//! - Retrying a write whose reply was lost is safe: a checkpoint with an already-stored
//!   sequence number answers [`CheckpointAck::Duplicate`]; an attach retried with the same
//!   [`AttemptId`] answers the same epoch instead of `Stale`.
//! - An ended call stays ended with its first end reason.
//! - A webhook event is stored by the same atomic operation as the state change behind it,
//!   and only once: retried writes append no event twice ([`outbox`]).

pub mod contract;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod redis_store;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, UnixMillis, WorkerId};
use serde::Serialize;

use crate::outbox::{DeadLetter, OutboxClaim, OutboxEvent, PendingEvent, Settle};

/// Identifies one attach attempt, so a retried attach whose reply was lost is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptId(pub String);

/// Lifecycle status as the store sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Created, never attached.
    Created,
    /// Attached at least once and not ended.
    Active,
    Ended,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Created => "created",
            RecordStatus::Active => "active",
            RecordStatus::Ended => "ended",
        }
    }
}

/// The last durable checkpoint of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Writer-chosen, strictly increasing per call across owners (a checkpoint with a
    /// sequence number not above the stored one is a duplicate).
    pub seq: u64,
    /// The envelope bytes (see `callworker_call::checkpoint`).
    pub blob: Bytes,
}

/// A call as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub call_id: CallId,
    pub tenant: TenantId,
    pub status: RecordStatus,
    pub epoch: Epoch,
    /// The worker that holds the current epoch, if attached.
    pub owner: Option<WorkerId>,
    /// Until when the owner's lease runs (store clock).
    pub lease_until: Option<UnixMillis>,
    pub end_reason: Option<EndReason>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub checkpoint: Option<Checkpoint>,
}

/// Audio recorded since the previous checkpoint, appended atomically with the checkpoint
/// that covers it (so a retried write never appends twice, and after a takeover the
/// recording continues exactly where the durable call state does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingChunk {
    /// Caller audio, in the call's encoding, in inbound sequence order.
    pub inbound: Bytes,
    /// Audio sent to the caller, in the call's encoding.
    pub outbound: Bytes,
}

impl RecordingChunk {
    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty() && self.outbound.is_empty()
    }

    pub fn len(&self) -> usize {
        self.inbound.len() + self.outbound.len()
    }
}

/// A call's stored recording.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recording {
    pub inbound: Bytes,
    pub outbound: Bytes,
    /// Audio was left out because a track reached the store's per-call bound.
    pub truncated: bool,
}

/// What the reaper saw of a call whose lease ran out (phase one of the two-phase reap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseObservation {
    pub call_id: CallId,
    pub epoch: Epoch,
    pub status: RecordStatus,
    /// The lease as stored when observed (`created_at` for a call never attached).
    pub lease_until: UnixMillis,
    /// The store's clock at the observation.
    pub observed_at: UnixMillis,
}

/// What the reaper does to an orphan it observed, if nothing changed since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireAction {
    /// End the call with this reason (bumps the epoch).
    End(EndReason),
    /// Extend the lease by this much without changing the epoch (claims a rescue so that
    /// reapers on other workers leave the call alone meanwhile).
    Extend(Duration),
}

/// A worker as it announces itself in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    pub worker_id: WorkerId,
    /// Where its HTTP API listens.
    pub address: String,
    pub version: String,
    pub live_calls: u64,
    /// Memory governor level (`normal`, …).
    pub governor_level: String,
    pub started_at: UnixMillis,
    /// Store clock at the last heartbeat (set by the store).
    pub heartbeat_at: UnixMillis,
}

/// A new call to store (status `created`, epoch 0, with its first checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCall {
    pub call_id: CallId,
    pub tenant: TenantId,
    pub checkpoint: Checkpoint,
}

/// Result of a successful attach: the session now owns `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub epoch: Epoch,
    pub record: CallRecord,
}

/// Outcome of a successful checkpoint write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointAck {
    /// Stored.
    Applied,
    /// A checkpoint with this or a later sequence number was already stored (a retry).
    Duplicate { stored_seq: u64 },
}

/// Filter and page for [`CallStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub tenant: Option<TenantId>,
    pub status: Option<RecordStatus>,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1..=[`LIST_LIMIT_MAX`].
    pub limit: usize,
}

/// Largest page [`CallStore::list`] returns.
pub const LIST_LIMIT_MAX: usize = 500;

/// One page of records, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub records: Vec<CallRecord>,
    /// Cursor for the next page, `None` at the end.
    pub next_cursor: Option<String>,
}

/// Why a store operation failed. `Fenced`, `Stale`, `Ended` and `NotFound` are answers about
/// the call; `Full` and `Unavailable` are about the store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("call not found")]
    NotFound,
    #[error("call already exists")]
    AlreadyExists,
    #[error("write fenced: the call is at epoch {current}")]
    Fenced { current: Epoch },
    #[error("attach lost: the call is at epoch {current}")]
    Stale { current: Epoch },
    #[error("call ended ({reason})")]
    Ended { reason: EndReason },
    #[error("store is full ({0} calls)")]
    Full(usize),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Fenced, versioned persistence of calls.
#[async_trait]
pub trait CallStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new call at epoch 0 with status `created`.
    async fn create(&self, call: NewCall) -> Result<(), StoreError>;

    /// Takes ownership of a call: succeeds only if the stored epoch equals
    /// `expected_epoch`, and bumps it by one. A retry with the same `attempt` after the
    /// reply was lost answers the same epoch. Status becomes `active`.
    async fn attach(
        &self,
        call_id: &CallId,
        attempt: &AttemptId,
        owner: &WorkerId,
        expected_epoch: Epoch,
        lease: Duration,
    ) -> Result<Attached, StoreError>;

    /// Stores a checkpoint, appends `recording` and renews the lease, if `epoch` is still
    /// current. A duplicate (a retry whose first attempt was applied) renews the lease and
    /// appends nothing.
    async fn checkpoint(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        checkpoint: Checkpoint,
        recording: RecordingChunk,
        lease: Duration,
    ) -> Result<CheckpointAck, StoreError> {
        self.checkpoint_with_events(call_id, epoch, checkpoint, recording, &[], lease).await
    }

    /// [`CallStore::checkpoint`], and appends `events` to the call's webhook outbox in the
    /// same atomic write (those the call's tenant subscribed to). A duplicate appends
    /// nothing.
    async fn checkpoint_with_events(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        checkpoint: Checkpoint,
        recording: RecordingChunk,
        events: &[OutboxEvent],
        lease: Duration,
    ) -> Result<CheckpointAck, StoreError>;

    /// Renews the owner's lease, if `epoch` is still current.
    async fn renew(&self, call_id: &CallId, epoch: Epoch, lease: Duration) -> Result<(), StoreError>;

    /// Ends the call, if `epoch` is still current, storing `final_checkpoint` (and
    /// appending `recording`) when given. Bumps the epoch so that nothing can write after
    /// the end, and removes the call from the lease index. Ending an ended call answers
    /// [`StoreError::Ended`] with the first reason.
    ///
    /// The end also writes the call's `call.ended` event and, when it recorded audio, its
    /// `recording.ready` event to the webhook outbox (if subscribed).
    async fn end(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        reason: EndReason,
        final_checkpoint: Option<Checkpoint>,
        recording: RecordingChunk,
    ) -> Result<Epoch, StoreError> {
        self.end_with_events(call_id, epoch, reason, final_checkpoint, recording, &[]).await
    }

    /// [`CallStore::end`], appending `events` (from the final checkpoint's timeline) to the
    /// outbox before the end's own events, in the same atomic write.
    async fn end_with_events(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        reason: EndReason,
        final_checkpoint: Option<Checkpoint>,
        recording: RecordingChunk,
        events: &[OutboxEvent],
    ) -> Result<Epoch, StoreError>;

    /// Reads one call.
    async fn get(&self, call_id: &CallId) -> Result<CallRecord, StoreError>;

    /// Lists calls, oldest first, filtered and paginated.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError>;

    /// Whether `tenant` has `bound` live (not ended) calls across the fleet, as a count: the
    /// answer is at least `bound` exactly when at least `bound` calls are live. Below `bound`
    /// it may also count calls that ended recently (an upper estimate, never below the live
    /// count).
    async fn live_calls_of(&self, tenant: &TenantId, bound: usize) -> Result<usize, StoreError>;

    /// Reads a call's recording (empty tracks if it recorded nothing).
    async fn recording(&self, call_id: &CallId) -> Result<Recording, StoreError>;

    /// Phase one of a reap: up to `limit` live (created or active) calls whose lease ran
    /// out at least `overdue` ago by the store's clock, oldest lease first. A call never
    /// attached counts its lease from creation.
    async fn expired_leases(
        &self,
        overdue: Duration,
        limit: usize,
    ) -> Result<Vec<LeaseObservation>, StoreError>;

    /// Phase two of a reap: applies `action` only if the call is exactly as observed (same
    /// epoch and lease: nobody attached or renewed since), else answers
    /// [`StoreError::Stale`] with the current epoch. An ended or missing call is dropped from
    /// the lease index and answers `Ended`/`NotFound`. Returns the epoch after the action.
    /// An end writes the end's webhook events like [`CallStore::end`].
    async fn expire(&self, observed: &LeaseObservation, action: ExpireAction) -> Result<Epoch, StoreError>;

    /// Announces (or refreshes) a worker in the registry; the entry lapses after `ttl`
    /// without a heartbeat.
    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError>;

    /// Workers whose heartbeat has not lapsed, by id.
    async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError>;

    /// Removes a worker from the registry (clean shutdown).
    async fn deregister(&self, worker_id: &WorkerId) -> Result<(), StoreError>;

    /// Leases up to `limit` calls whose outbox is due to the caller for `lease` (store
    /// clock). A claim that is not settled or released within it lapses, and the call is
    /// claimed again by whoever asks next.
    async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxClaim>, StoreError>;

    /// The oldest undelivered event of a claimed call, or `None` when its outbox is empty,
    /// in which case the claim is released (the call leaves the due set unless an event
    /// arrived meanwhile).
    async fn outbox_head(&self, claim: &OutboxClaim) -> Result<Option<PendingEvent>, StoreError>;

    /// Records what happened to `event`, which [`CallStore::outbox_head`] returned for
    /// `claim`. Acts on the event only while it is still the call's oldest (a settle
    /// retried after a lost reply changes nothing twice), and on the call's schedule only
    /// while the claim is current.
    async fn outbox_settle(
        &self,
        claim: &OutboxClaim,
        event: &PendingEvent,
        settle: Settle,
    ) -> Result<(), StoreError>;

    /// Gives a claim back before it lapses: the call is due again at once.
    async fn outbox_yield(&self, claim: &OutboxClaim) -> Result<(), StoreError>;

    /// The newest dead letters first, at most `limit`.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError>;

    /// How many calls have undelivered events (the outbox's depth, in calls).
    async fn outbox_calls(&self) -> Result<u64, StoreError>;
}
