//! [`MemoryStore`]: a bounded, in-process [`CallStore`] for a single worker and for tests.
//!
//! All state sits behind one `std::sync::Mutex`. Every operation is a short, synchronous
//! critical section (no `.await` while the lock is held), which is what makes each
//! operation atomic, like the Lua scripts of the Redis store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use callworker_call::{CallId, EndReason, Epoch, UnixMillis, WorkerId};

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
}

#[derive(Debug)]
struct Entry {
    record: CallRecord,
    position: u64,
    /// The attach attempt that produced the current epoch, so its retry is recognised.
    attempt: Option<AttemptId>,
    recording: Recording,
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
            inner: Mutex::new(Inner::default()),
        }
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
        let victim = self
            .order
            .iter()
            .find(|(_, id)| self.records.get(*id).is_some_and(|e| e.record.status == RecordStatus::Ended))
            .map(|(position, id)| (*position, id.clone()));
        match victim {
            Some((position, id)) => {
                self.order.remove(&position);
                self.records.remove(&id);
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
        inner
            .records
            .insert(call.call_id, Entry { record, position, attempt: None, recording: Recording::default() });
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

    async fn checkpoint(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        checkpoint: Checkpoint,
        recording: RecordingChunk,
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

    async fn end(
        &self,
        call_id: &CallId,
        epoch: Epoch,
        reason: EndReason,
        final_checkpoint: Option<Checkpoint>,
        recording: RecordingChunk,
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
        let record = &mut inner.entry(&observed.call_id)?.record;
        ended(record)?;
        let lease_until = record.lease_until.unwrap_or(record.created_at);
        if record.epoch != observed.epoch || lease_until != observed.lease_until {
            return Err(StoreError::Stale { current: record.epoch });
        }
        match action {
            ExpireAction::End(reason) => {
                record.status = RecordStatus::Ended;
                record.end_reason = Some(reason);
                record.epoch = record.epoch.next();
                record.owner = None;
                record.lease_until = None;
            }
            ExpireAction::Extend(by) => record.lease_until = Some(now + by),
        }
        record.updated_at = now;
        Ok(record.epoch)
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
