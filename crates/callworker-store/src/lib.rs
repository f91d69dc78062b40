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
//! - [`contract`]: the behaviour every implementation must show, as a reusable test suite.
//!
//! Invariants (checked by [`contract`]):
//! - The epoch of a call never decreases; `attach` and `end` increase it by exactly one.
//! - A write with a stale epoch changes nothing.
//! - Retrying a write whose reply was lost is safe: a checkpoint with an already-stored
//!   sequence number answers [`CheckpointAck::Duplicate`]; an attach retried with the same
//!   [`AttemptId`] answers the same epoch instead of `Stale`.
//! - An ended call stays ended with its first end reason.

pub mod contract;
pub mod memory;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch, TenantId, UnixMillis, WorkerId};
use serde::Serialize;

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

    /// Stores a checkpoint and renews the lease, if `epoch` is still current.
    async fn checkpoint(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        checkpoint: Checkpoint,
        lease: Duration,
    ) -> Result<CheckpointAck, StoreError>;

    /// Renews the owner's lease, if `epoch` is still current.
    async fn renew(&self, call_id: &CallId, epoch: Epoch, lease: Duration) -> Result<(), StoreError>;

    /// Ends the call, if `epoch` is still current, storing `final_checkpoint` when given.
    /// Bumps the epoch so that nothing can write after the end. Ending an ended call
    /// answers [`StoreError::Ended`] with the first reason.
    async fn end(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        reason: EndReason,
        final_checkpoint: Option<Checkpoint>,
    ) -> Result<Epoch, StoreError>;

    /// Reads one call.
    async fn get(&self, call_id: &CallId) -> Result<CallRecord, StoreError>;

    /// Lists calls, oldest first, filtered and paginated.
    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError>;
}
