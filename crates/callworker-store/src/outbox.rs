//! The webhook outbox: events that became durable with a call's state, waiting to be
//! delivered (docs/webhooks.md).
//!
//! An event is written **in the same atomic store operation as the state change that causes
//! it**, so a worker that dies right after the change cannot lose it:
//!
//! - `call.started`, `call.resumed`, `call.migrated` and `dtmf` come from the call's
//!   timeline. The checkpoint writer hands the timeline events that are new since its last
//!   write to [`CallStore::checkpoint_with_events`] (or [`CallStore::end_with_events`]),
//!   which appends them with the checkpoint that covers them. A checkpoint retried with
//!   the same `seq` is a duplicate and appends nothing, exactly like recorded audio.
//! - `call.ended` and `recording.ready` are written by the store itself, by whichever
//!   operation ends the call (`end`, or the reaper's `expire`), since not every end has a
//!   session behind it.
//!
//! Whether a call's events are kept at all is decided per tenant ([`Subscriptions`], given
//! to the store at construction): the tenant's event mask is stored on the call at
//! creation, and every later operation on the call filters by it. A tenant that subscribes
//! to nothing costs nothing.
//!
//! Each event carries a stable id ([`OutboxEvent::id`]), which is the webhook's
//! `Idempotency-Key`: the timeline position for timeline events (`<call>:e<n>`), and
//! `<call>:ended` / `<call>:recording` for the end's events.
//!
//! Delivery (every worker runs it) works on calls with pending events:
//! [`CallStore::outbox_claim`] leases up to `limit` due calls to the caller for a while (a
//! dead worker's claims lapse and are claimed again), [`CallStore::outbox_head`] reads the
//! oldest event of a claimed call (events of one call go out in order), and
//! [`CallStore::outbox_settle`] records what happened to it: delivered (removed), retry
//! later (an attempt counted, the call due again after a delay), or dead-lettered (moved
//! to the bounded dead-letter list, [`CallStore::dead_letters`]).
//!
//! Bounds: at most `call_events_max` undelivered events per call (later timeline events of
//! that call are dropped and counted in `dropped_events`; the end's two events are always
//! kept), and at most `dead_letters_max` dead letters (the oldest is dropped).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use callworker_call::{CallId, TenantId, UnixMillis};
use serde::{Deserialize, Serialize};

/// The kinds of webhook events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A media session attached to the call for the first time.
    CallStarted,
    /// The call resumed after its worker was lost.
    CallResumed,
    /// The call resumed after a worker moved it on purpose (memory, drain).
    CallMigrated,
    /// The call ended (with its reason).
    CallEnded,
    /// The caller pressed a key.
    Dtmf,
    /// The ended call's recording is final and readable.
    RecordingReady,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::CallStarted,
        EventType::CallResumed,
        EventType::CallMigrated,
        EventType::CallEnded,
        EventType::Dtmf,
        EventType::RecordingReady,
    ];

    /// The name in configuration, in the webhook body's `type` and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CallStarted => "call.started",
            EventType::CallResumed => "call.resumed",
            EventType::CallMigrated => "call.migrated",
            EventType::CallEnded => "call.ended",
            EventType::Dtmf => "dtmf",
            EventType::RecordingReady => "recording.ready",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The event's bit in a subscription mask (stored on the call; the Lua scripts test it).
    pub fn bit(self) -> u32 {
        match self {
            EventType::CallStarted => 1,
            EventType::CallResumed => 2,
            EventType::CallMigrated => 4,
            EventType::CallEnded => 8,
            EventType::Dtmf => 16,
            EventType::RecordingReady => 32,
        }
    }
}

/// A mask with every event type's bit.
pub const MASK_ALL: u32 = 63;

/// Which events each tenant receives: tenant → mask of [`EventType::bit`]s. Tenants not
/// listed receive none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscriptions {
    masks: BTreeMap<String, u32>,
}

impl Subscriptions {
    /// Subscribes `tenant` to `events` (replacing an earlier entry).
    pub fn subscribe(&mut self, tenant: &TenantId, events: impl IntoIterator<Item = EventType>) {
        let mask = events.into_iter().fold(0, |m, e| m | e.bit());
        self.masks.insert(tenant.as_str().to_owned(), mask);
    }

    /// The mask of `tenant` (0: no webhooks).
    pub fn mask(&self, tenant: &TenantId) -> u32 {
        self.masks.get(tenant.as_str()).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.masks.values().all(|m| *m == 0)
    }
}

/// Default bound on undelivered events per call.
pub const DEFAULT_CALL_EVENTS_MAX: usize = 64;

/// A timeline event to append to a call's outbox with a checkpoint or an end. The store
/// adds the call id and tenant when it writes the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Stable id, unique per call: the `Idempotency-Key` (`<call>:e<n>` for the n-th
    /// timeline event).
    pub id: String,
    pub kind: EventType,
    /// When it happened (the call's clock).
    pub at: UnixMillis,
    /// The event's own fields, a JSON object (`{"digit":"5"}`).
    pub data: String,
}

/// The body of a webhook as stored and sent: one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub call_id: String,
    pub tenant: String,
    pub at: u64,
    pub data: serde_json::Value,
}

/// Builds the stored body of `event` (the Redis scripts write the same shape in Lua).
pub fn body(
    call_id: &CallId,
    tenant: &TenantId,
    id: &str,
    kind: EventType,
    at: UnixMillis,
    data: &str,
) -> String {
    format!(
        "{{\"id\":\"{id}\",\"type\":\"{}\",\"call_id\":\"{call_id}\",\"tenant\":\"{}\",\"at\":{},\"data\":{data}}}",
        kind.as_str(),
        tenant.as_str(),
        at.0
    )
}

/// The id of the `call.ended` event of a call.
pub fn ended_id(call_id: &CallId) -> String {
    format!("{call_id}:ended")
}

/// The id of the `recording.ready` event of a call.
pub fn recording_id(call_id: &CallId) -> String {
    format!("{call_id}:recording")
}

/// A call leased to one deliverer by [`CallStore::outbox_claim`](crate::CallStore::outbox_claim).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxClaim {
    pub call_id: CallId,
    /// Identifies this claim: settling with a lapsed claim changes no schedule.
    pub token: u64,
}

/// The oldest undelivered event of a claimed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// The stored body (JSON, an [`EventBody`]), sent as it is.
    pub body: Bytes,
    /// Failed delivery attempts so far.
    pub attempts: u32,
}

/// What happened to a [`PendingEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Accepted by the receiver: removed from the outbox.
    Delivered,
    /// Not accepted: count an attempt and make the call due again after `after`.
    Retry { after: Duration },
    /// Given up after `attempts` delivery attempts: moved to the dead-letter list with this
    /// reason (snake_case), and removed.
    Dead { reason: String, attempts: u32 },
}

/// An event that was given up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub event: EventBody,
    /// Why it was given up (`attempts_exhausted`, `tenant_not_configured`, …).
    pub reason: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was dead-lettered (store clock).
    pub at: u64,
}

/// Default bound of the dead-letter list.
pub const DEFAULT_DEAD_LETTERS_MAX: usize = 1_000;
