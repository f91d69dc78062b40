//! [`MemoryStore`]: a bounded, in-process [`CallStore`] for a single worker and for tests.
//!
//! All state sits behind one `std::sync::Mutex`. Every operation is a short, synchronous
//! critical section (no `.await` while the lock is held), which is what makes each
//! operation atomic, like the Lua scripts of the Redis store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use callworker_call::{CallId, EndReason, Epoch, UnixMillis, WorkerId};

use crate::outbox::{
    self, DEFAULT_CALL_EVENTS_MAX, DEFAULT_DEAD_LETTERS_MAX, DeadLetter, EventBody, EventType, OutboxClaim,
    OutboxEvent, PendingEvent, Settle, Subscriptions,
};
use crate::{
    Attached, AttemptId, CallRecord, CallStore, Checkpoint, CheckpointAck, ExpireAction, LIST_LIMIT_MAX,
    LeaseObservation, ListPage, ListQuery, NewCall, RecordStatus, Recording, RecordingChunk, StoreError,
    WorkerInfo,
};

/// Default bound of each recorded track per call (bytes): one hour of 8 kHz G.711.
pub const RECORDING_TRACK_BYTES_MAX: usize = 8000 * 3600;

/// Where the store reads the time for leases and record timestamps.
pub type StoreClock = Arc<dyn Fn() -> UnixMillis + Send + Sync>;

/// An in-process [`CallStore`] holding at most `capacity` calls.
///
/// When full, [`CallStore::create`] evicts the oldest *ended* call (its outcome has been
/// reported; a live call must never be dropped to make room); if no call has ended it
/// refuses with [`StoreError::Full`], which the server turns into "not admitting".
pub struct MemoryStore {
    /// Most calls held, live or ended.
    capacity: usize,
    /// Most bytes recorded per track per call; beyond it audio is left out and the
    /// recording marked truncated.
    recording_track_bytes_max: usize,
    clock: StoreClock,
    /// Which tenants get which webhook events (see [`outbox`]).
    subscriptions: Subscriptions,
    /// Undelivered events per call; beyond it a call's timeline events are dropped and
    /// counted (the end's two events are always kept).
    call_events_max: usize,
    /// Dead letters kept; beyond it the oldest is dropped.
    dead_letters_max: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<CallId, Entry>,
    /// Calls in creation order, by creation position. List cursors are positions, so they
    /// stay valid when earlier calls are evicted.
    order: BTreeMap<u64, CallId>,
    /// Position the next created call gets.
    next_position: u64,
    /// The worker registry: the last heartbeat of each worker and when it lapses.
    workers: BTreeMap<WorkerId, (WorkerInfo, UnixMillis)>,
    /// Calls with undelivered webhook events: when each is due (or its claim lapses).
    /// Bounded by the calls held: an evicted call takes its outbox with it.
    due: HashMap<CallId, UnixMillis>,
    /// Dead letters, newest first, at most `dead_letters_max`.
    dead: VecDeque<DeadLetter>,
}

#[derive(Debug)]
struct Entry {
    record: CallRecord,
    position: u64,
    /// The attach attempt that produced the current epoch, so its retry is recognised.
    attempt: Option<AttemptId>,
    recording: Recording,
    /// The tenant's webhook mask when the call was created.
    hooks: u32,
    /// Undelivered webhook bodies, oldest first.
    outbox: VecDeque<String>,
    /// Failed attempts of the oldest one.
    outbox_attempts: u32,
}

impl Entry {
    /// Appends a chunk, leaving out what does not fit under `max` bytes per track.
    fn record(&mut self, chunk: RecordingChunk, max: usize) {
        let rec = &mut self.recording;
        for (track, data) in [(&mut rec.inbound, chunk.inbound), (&mut rec.outbound, chunk.outbound)] {
            if data.is_empty() {
                continue;
            }
            let room = max.saturating_sub(track.len());
            if data.len() > room {
                rec.truncated = true;
            }
            let keep = data.len().min(room);
            if keep > 0 {
                let mut joined = Vec::with_capacity(track.len() + keep);
                joined.extend_from_slice(track);
                joined.extend_from_slice(&data[..keep]);
                *track = joined.into();
            }
        }
    }
}

impl Entry {
    /// Appends the webhook events the call's tenant subscribed to; `force` events (the
    /// end's) are kept even when the outbox is full. Returns whether the outbox is non-empty.
    fn enqueue(&mut self, events: &[OutboxEvent], force: bool, max: usize) -> bool {
        for e in events {
            if self.hooks & e.kind.bit() == 0 {
                continue;
            }
            if !force && self.outbox.len() >= max {
                metrics::counter!(crate::metrics::WEBHOOK_EVENTS_DROPPED).increment(1);
                continue;
            }
            let r = &self.record;
            self.outbox.push_back(outbox::body(&r.call_id, &r.tenant, &e.id, e.kind, e.at, &e.data));
        }
        !self.outbox.is_empty()
    }

    /// The end's own events: `call.ended`, and `recording.ready` when audio was recorded.
    fn end_events(&self, reason: EndReason, now: UnixMillis) -> Vec<OutboxEvent> {
        let id = &self.record.call_id;
        let mut events = vec![OutboxEvent {
            id: outbox::ended_id(id),
            kind: EventType::CallEnded,
            at: now,
            data: format!("{{\"reason\":\"{}\"}}", reason.as_str()),
        }];
        let rec = &self.recording;
        if !rec.inbound.is_empty() || !rec.outbound.is_empty() {
            events.push(OutboxEvent {
                id: outbox::recording_id(id),
                kind: EventType::RecordingReady,
                at: now,
                data: format!(
                    "{{\"inbound_bytes\":{},\"outbound_bytes\":{},\"truncated\":{}}}",
                    rec.inbound.len(),
                    rec.outbound.len(),
                    rec.truncated
                ),
            });
        }
        events
    }
}

impl Inner {
    /// Makes a call with pending events due now, unless it already is due or claimed.
    fn mark_due(&mut self, call_id: &CallId, now: UnixMillis) {
        self.due.entry(call_id.clone()).or_insert(now);
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

/// Wall-clock now, as the store's clock.
pub fn system_clock() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    UnixMillis(ms)
}

impl MemoryStore {
    /// A store of at most `capacity` calls, on the system clock.
    pub fn new(capacity: usize) -> MemoryStore {
        MemoryStore::with_clock(capacity, Arc::new(system_clock))
    }

    /// A store of at most `capacity` calls reading time from `clock` (tests use a virtual
    /// clock to check leases without sleeping).
    pub fn with_clock(capacity: usize, clock: StoreClock) -> MemoryStore {
        MemoryStore {
            capacity,
            recording_track_bytes_max: RECORDING_TRACK_BYTES_MAX,
            clock,
            subscriptions: Subscriptions::default(),
            call_events_max: DEFAULT_CALL_EVENTS_MAX,
            dead_letters_max: DEFAULT_DEAD_LETTERS_MAX,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Keeps webhook events for the tenants of `subscriptions`, at most `call_events_max`
    /// undelivered per call and `dead_letters_max` dead letters.
    pub fn with_webhooks(
        mut self,
        subscriptions: Subscriptions,
        call_events_max: usize,
        dead_letters_max: usize,
    ) -> MemoryStore {
        self.subscriptions = subscriptions;
        self.call_events_max = call_events_max;
        self.dead_letters_max = dead_letters_max;
        self
    }

    /// Bounds each recorded track of a call to `bytes`.
    pub fn with_recording_limit(mut self, bytes: usize) -> MemoryStore {
        self.recording_track_bytes_max = bytes;
        self
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Calls held right now.
    pub fn len(&self) -> usize {
        self.lock().map(|inner| inner.records.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A poisoned lock means an operation panicked half-way: its state can no longer be
    /// trusted to uphold fencing, so the store reports itself unavailable instead.
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Unavailable("memory store poisoned by a panic".into()))
    }

    fn now(&self) -> UnixMillis {
        (self.clock)()
    }
}

impl Inner {
    fn entry(&mut self, call_id: &CallId) -> Result<&mut Entry, StoreError> {
        self.records.get_mut(call_id).ok_or(StoreError::NotFound)
    }

    /// Removes the oldest ended call; `false` if none has ended.
    fn evict_oldest_ended(&mut self) -> bool {
        // Prefer a call whose webhooks are all delivered; an evicted call's undelivered
        // events go with it.
        let ended = |e: &Entry| e.record.status == RecordStatus::Ended;
        let victim = self
            .order
            .iter()
            .find(|(_, id)| self.records.get(*id).is_some_and(|e| ended(e) && e.outbox.is_empty()))
            .or_else(|| self.order.iter().find(|(_, id)| self.records.get(*id).is_some_and(ended)))
            .map(|(position, id)| (*position, id.clone()));
        match victim {
            Some((position, id)) => {
                self.order.remove(&position);
                self.records.remove(&id);
                self.due.remove(&id);
                true
            }
            None => false,
        }
    }
}

/// Why `record` cannot be written any more, if it has ended.
fn ended(record: &CallRecord) -> Result<(), StoreError> {
    if record.status == RecordStatus::Ended {
        // This store always records a reason with the end; the fallback is never used.
        let reason = record.end_reason.unwrap_or(EndReason::InternalError);
        return Err(StoreError::Ended { reason });
    }
    Ok(())
}

/// Refuses writes to an ended call, then writes with a stale epoch.
fn check_writable(record: &CallRecord, epoch: Epoch) -> Result<(), StoreError> {
    ended(record)?;
    if record.epoch != epoch {
        return Err(StoreError::Fenced { current: record.epoch });
    }
    Ok(())
}

/// The list cursors this store hands out and accepts (`m` and a position), as a regular
/// expression: the control API's OpenAPI document states it.
pub const LIST_CURSOR_PATTERN: &str = "^m[0-9]{1,19}$";

fn encode_cursor(position: u64) -> String {
    format!("m{position}")
}

fn decode_cursor(cursor: &str) -> Result<u64, StoreError> {
    cursor
        .strip_prefix('m')
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| StoreError::Invalid("malformed list cursor".into()))
}

#[async_trait]
impl CallStore for MemoryStore {
    async fn create(&self, call: NewCall) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if inner.records.contains_key(&call.call_id) {
            return Err(StoreError::AlreadyExists);
        }
        while inner.records.len() >= self.capacity {
            if !inner.evict_oldest_ended() {
                return Err(StoreError::Full(self.capacity));
            }
        }
        let hooks = self.subscriptions.mask(&call.tenant);
        let position = inner.next_position;
        inner.next_position += 1;
        inner.order.insert(position, call.call_id.clone());
        let record = CallRecord {
            call_id: call.call_id.clone(),
            tenant: call.tenant,
            status: RecordStatus::Created,
            epoch: Epoch::ZERO,
            owner: None,
            lease_until: None,
            end_reason: None,
            created_at: now,
            updated_at: now,
            checkpoint: Some(call.checkpoint),
        };
        let entry = Entry {
            record,
            position,
            attempt: None,
            recording: Recording::default(),
            hooks,
            outbox: VecDeque::new(),
            outbox_attempts: 0,
        };
        inner.records.insert(call.call_id, entry);
        Ok(())
    }

    async fn attach(
        &self,
        call_id: &CallId,
        attempt: &AttemptId,
        owner: &WorkerId,
        expected_epoch: Epoch,
        lease: Duration,
    ) -> Result<Attached, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let entry = inner.entry(call_id)?;
        let record = &mut entry.record;
        ended(record)?;
        let retry = entry.attempt.as_ref() == Some(attempt) && record.epoch == expected_epoch.next();
        if retry {
            // The reply to this very attempt was lost: answer it again (and renew, since
            // the retrying owner is alive).
            record.lease_until = Some(now + lease);
            record.updated_at = now;
            return Ok(Attached { epoch: record.epoch, record: record.clone() });
        }
        if record.epoch != expected_epoch {
            return Err(StoreError::Stale { current: record.epoch });
        }
        record.epoch = record.epoch.next();
        record.owner = Some(owner.clone());
        record.lease_until = Some(now + lease);
        record.status = RecordStatus::Active;
        record.updated_at = now;
        entry.attempt = Some(attempt.clone());
        Ok(Attached { epoch: record.epoch, record: record.clone() })
    }

    async fn checkpoint_with_events(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        checkpoint: Checkpoint,
        recording: RecordingChunk,
        events: &[OutboxEvent],
        lease: Duration,
    ) -> Result<CheckpointAck, StoreError> {
        let now = self.now();
        let max = self.recording_track_bytes_max;
        let mut inner = self.lock()?;
        let entry = inner.entry(call_id)?;
        let record = &mut entry.record;
        check_writable(record, epoch)?;
        // A duplicate is a retry by the current owner: it is alive, so renew either way.
        record.lease_until = Some(now + lease);
        record.updated_at = now;
        if let Some(stored) = &record.checkpoint
            && checkpoint.seq <= stored.seq
        {
            return Ok(CheckpointAck::Duplicate { stored_seq: stored.seq });
        }
        record.checkpoint = Some(checkpoint);
        entry.record(recording, max);
        if entry.enqueue(events, false, self.call_events_max) {
            inner.mark_due(call_id, now);
        }
        Ok(CheckpointAck::Applied)
    }

    async fn renew(&self, call_id: &CallId, epoch: Epoch, lease: Duration) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let record = &mut inner.entry(call_id)?.record;
        check_writable(record, epoch)?;
        record.lease_until = Some(now + lease);
        record.updated_at = now;
        Ok(())
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
        let now = self.now();
        let max = self.recording_track_bytes_max;
        let mut inner = self.lock()?;
        let entry = inner.entry(call_id)?;
        let record = &mut entry.record;
        check_writable(record, epoch)?;
        record.status = RecordStatus::Ended;
        record.end_reason = Some(reason);
        record.epoch = record.epoch.next();
        record.owner = None;
        record.lease_until = None;
        record.updated_at = now;
        if let Some(last) = final_checkpoint
            && record.checkpoint.as_ref().is_none_or(|stored| last.seq > stored.seq)
        {
            record.checkpoint = Some(last);
        }
        let epoch = record.epoch;
        entry.record(recording, max);
        entry.enqueue(events, false, self.call_events_max);
        let own = entry.end_events(reason, now);
        if entry.enqueue(&own, true, self.call_events_max) {
            inner.mark_due(call_id, now);
        }
        Ok(epoch)
    }

    async fn get(&self, call_id: &CallId) -> Result<CallRecord, StoreError> {
        let inner = self.lock()?;
        inner.records.get(call_id).map(|e| e.record.clone()).ok_or(StoreError::NotFound)
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        if !(1..=LIST_LIMIT_MAX).contains(&query.limit) {
            return Err(StoreError::Invalid(format!(
                "limit {} is outside 1..={LIST_LIMIT_MAX}",
                query.limit
            )));
        }
        let after = query.cursor.as_deref().map(decode_cursor).transpose()?;
        let inner = self.lock()?;
        let start = after.map_or(0, |p| p.saturating_add(1));
        let mut matching = inner
            .order
            .range(start..)
            .filter_map(|(_, id)| inner.records.get(id))
            .filter(|e| query.tenant.as_ref().is_none_or(|t| &e.record.tenant == t))
            .filter(|e| query.status.is_none_or(|s| e.record.status == s));
        let mut records = Vec::with_capacity(query.limit.min(64));
        let mut last_position = None;
        for entry in matching.by_ref().take(query.limit) {
            records.push(entry.record.clone());
            last_position = Some(entry.position);
        }
        let next_cursor = match (matching.next(), last_position) {
            (Some(_), Some(position)) => Some(encode_cursor(position)),
            _ => None,
        };
        Ok(ListPage { records, next_cursor })
    }

    async fn live_calls_of(
        &self,
        tenant: &callworker_call::TenantId,
        bound: usize,
    ) -> Result<usize, StoreError> {
        let inner = self.lock()?;
        Ok(inner
            .records
            .values()
            .filter(|e| &e.record.tenant == tenant && e.record.status != RecordStatus::Ended)
            .take(bound)
            .count())
    }

    async fn recording(&self, call_id: &CallId) -> Result<Recording, StoreError> {
        let inner = self.lock()?;
        inner.records.get(call_id).map(|e| e.recording.clone()).ok_or(StoreError::NotFound)
    }

    async fn expired_leases(
        &self,
        overdue: Duration,
        limit: usize,
    ) -> Result<Vec<LeaseObservation>, StoreError> {
        let now = self.now();
        let inner = self.lock()?;
        let mut expired: Vec<LeaseObservation> = inner
            .records
            .values()
            .map(|e| &e.record)
            .filter(|r| r.status != RecordStatus::Ended)
            .filter_map(|r| {
                let lease_until = r.lease_until.unwrap_or(r.created_at);
                (lease_until + overdue <= now).then(|| LeaseObservation {
                    call_id: r.call_id.clone(),
                    epoch: r.epoch,
                    status: r.status,
                    lease_until,
                    observed_at: now,
                })
            })
            .collect();
        expired.sort_by(|a, b| a.lease_until.cmp(&b.lease_until).then_with(|| a.call_id.cmp(&b.call_id)));
        expired.truncate(limit);
        Ok(expired)
    }

    async fn expire(&self, observed: &LeaseObservation, action: ExpireAction) -> Result<Epoch, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let entry = inner.entry(&observed.call_id)?;
        let record = &mut entry.record;
        ended(record)?;
        let lease_until = record.lease_until.unwrap_or(record.created_at);
        if record.epoch != observed.epoch || lease_until != observed.lease_until {
            return Err(StoreError::Stale { current: record.epoch });
        }
        let mut end_reason = None;
        match action {
            ExpireAction::End(reason) => {
                record.status = RecordStatus::Ended;
                record.end_reason = Some(reason);
                record.epoch = record.epoch.next();
                record.owner = None;
                record.lease_until = None;
                end_reason = Some(reason);
            }
            ExpireAction::Extend(by) => record.lease_until = Some(now + by),
        }
        record.updated_at = now;
        let epoch = record.epoch;
        if let Some(reason) = end_reason {
            let own = entry.end_events(reason, now);
            if entry.enqueue(&own, true, self.call_events_max) {
                inner.mark_due(&observed.call_id, now);
            }
        }
        Ok(epoch)
    }

    async fn heartbeat(&self, worker: &WorkerInfo, ttl: Duration) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let mut info = worker.clone();
        info.heartbeat_at = now;
        inner.workers.insert(worker.worker_id.clone(), (info, now + ttl));
        Ok(())
    }

    async fn workers(&self) -> Result<Vec<WorkerInfo>, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        inner.workers.retain(|_, (_, lapses)| *lapses > now);
        Ok(inner.workers.values().map(|(info, _)| info.clone()).collect())
    }

    async fn deregister(&self, worker_id: &WorkerId) -> Result<(), StoreError> {
        self.lock()?.workers.remove(worker_id);
        Ok(())
    }

    async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxClaim>, StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        let mut due: Vec<(UnixMillis, CallId)> =
            inner.due.iter().filter(|(_, at)| **at <= now).map(|(id, at)| (*at, id.clone())).collect();
        due.sort();
        due.truncate(limit);
        let token = now + lease;
        Ok(due
            .into_iter()
            .map(|(_, call_id)| {
                inner.due.insert(call_id.clone(), token);
                OutboxClaim { call_id, token: token.0 }
            })
            .collect())
    }

    async fn outbox_head(&self, claim: &OutboxClaim) -> Result<Option<PendingEvent>, StoreError> {
        let mut inner = self.lock()?;
        let head = inner.records.get(&claim.call_id).and_then(|e| {
            e.outbox.front().map(|b| PendingEvent { body: b.clone().into(), attempts: e.outbox_attempts })
        });
        if head.is_none() && inner.due.get(&claim.call_id) == Some(&UnixMillis(claim.token)) {
            inner.due.remove(&claim.call_id);
        }
        Ok(head)
    }

    async fn outbox_settle(
        &self,
        claim: &OutboxClaim,
        event: &PendingEvent,
        settle: Settle,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let dead_max = self.dead_letters_max;
        let mut inner = self.lock()?;
        let Some(entry) = inner.records.get_mut(&claim.call_id) else { return Ok(()) };
        if entry.outbox.front().map(String::as_bytes) != Some(&event.body[..]) {
            return Ok(()); // settled already (a retry after a lost reply)
        }
        match settle {
            Settle::Delivered | Settle::Dead { .. } => {
                entry.outbox.pop_front();
                entry.outbox_attempts = 0;
            }
            Settle::Retry { .. } => entry.outbox_attempts += 1,
        }
        match settle {
            Settle::Delivered => {}
            Settle::Retry { after } => {
                if inner.due.get(&claim.call_id) == Some(&UnixMillis(claim.token)) {
                    inner.due.insert(claim.call_id.clone(), now + after);
                }
            }
            Settle::Dead { reason, attempts } => {
                let event: EventBody = serde_json::from_slice(&event.body)
                    .map_err(|e| StoreError::Invalid(format!("stored webhook body: {e}")))?;
                inner.dead.push_front(DeadLetter { event, reason, attempts, at: now.0 });
                inner.dead.truncate(dead_max);
            }
        }
        Ok(())
    }

    async fn outbox_yield(&self, claim: &OutboxClaim) -> Result<(), StoreError> {
        let now = self.now();
        let mut inner = self.lock()?;
        if inner.due.get(&claim.call_id) == Some(&UnixMillis(claim.token)) {
            inner.due.insert(claim.call_id.clone(), now);
        }
        Ok(())
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.lock()?.dead.iter().take(limit).cloned().collect())
    }

    async fn outbox_calls(&self) -> Result<u64, StoreError> {
        Ok(self.lock()?.due.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for p in [0, 1, 42, u64::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(p)), Ok(p));
        }
        for bad in ["", "m", "42", "mx", "m-1", "n1"] {
            assert!(matches!(decode_cursor(bad), Err(StoreError::Invalid(_))), "{bad:?}");
        }
    }
}
