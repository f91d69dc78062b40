//! The per-call checkpoint writer: a task that persists the latest state of one call.
//!
//! The driver never awaits the store on its media path. It encodes the call and places it
//! in a one-slot mailbox: at most one write is in flight per call and a newer state
//! replaces an older unwritten one (latest wins), so a slow or unreachable store costs
//! writes, never audio. Across calls, writes are pipelined by the store client. Results
//! come back to the driver on a small bounded channel; the driver acks native audio only
//! from these results (acks follow durability).
//!
//! Recorded audio rides with the checkpoints (the store appends it atomically with the
//! state that covers it), so it must never be lost to coalescing: a state that replaces an
//! unwritten one inherits its audio. A write whose outcome is unknown (timeout, store
//! down) is retried *exactly* — same sequence number, same audio — before anything newer,
//! so the store's duplicate detection makes the retry append nothing twice. While the store
//! is unreachable, unwritten audio is bounded (`resume.recording_pending_bytes_max`): the
//! oldest is dropped and counted beyond it.
//!
//! Webhook events ride the same way (`crate::webhooks`): the timeline events new in a state
//! go with the write that makes that state durable, a state that replaces an unwritten one
//! inherits them, and an exact retry carries the same events, so the store appends each
//! once. Unwritten events are bounded by `webhooks.call_events_max`: the newest beyond it
//! are dropped and counted, as the store does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch};
use callworker_store::outbox::OutboxEvent;
use callworker_store::{CallStore, Checkpoint, CheckpointAck, RecordingChunk, StoreError};
use tokio::sync::{Notify, mpsc};
use tracing::warn;

use crate::metrics as m;

/// Results the driver has not read yet. The writer waits when it is full (the driver reads
/// it in its main loop, so this only fills while the driver is busy for a moment).
const RESULTS_MAX: usize = 4;
/// First retry delay after a failed write; doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(50);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

/// Recorded audio not yet handed to the store.
#[derive(Debug, Clone, Default)]
pub struct RecordingBuffer {
    pub inbound: Vec<u8>,
    pub outbound: Vec<u8>,
}

impl RecordingBuffer {
    pub fn len(&self) -> usize {
        self.inbound.len() + self.outbound.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts `older` in front of this buffer's audio.
    fn prepend(&mut self, older: RecordingBuffer) {
        for (track, mut old) in [(&mut self.inbound, older.inbound), (&mut self.outbound, older.outbound)] {
            if !old.is_empty() {
                old.extend_from_slice(track);
                *track = old;
            }
        }
    }

    /// Drops the oldest audio until at most `max` bytes remain (each track keeps its share);
    /// returns how many bytes were dropped.
    fn bound(&mut self, max: usize) -> usize {
        let total = self.len();
        if total <= max {
            return 0;
        }
        let mut dropped = 0;
        for track in [&mut self.inbound, &mut self.outbound] {
            // Keep each track's proportional share of the budget.
            let keep = (track.len() as u128 * max as u128 / total as u128) as usize;
            let cut = track.len() - keep;
            track.drain(..cut);
            dropped += cut;
        }
        dropped
    }

    fn into_chunk(self) -> RecordingChunk {
        RecordingChunk { inbound: Bytes::from(self.inbound), outbound: Bytes::from(self.outbound) }
    }
}

/// A state to persist.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Checkpoint sequence number (strictly increasing per call, across owners).
    pub seq: u64,
    /// The call's `media.inbound_applied_seq` in this state (what an ack may cover).
    pub inbound_applied_seq: u64,
    pub blob: Bytes,
    /// Audio recorded since the previous submitted state.
    pub recording: RecordingBuffer,
    /// `Some` for the final write of an ended call (a fenced `end`, not a checkpoint).
    pub end: Option<EndReason>,
    /// Webhook events new in this state (timeline order), stored with it.
    pub events: Vec<OutboxEvent>,
}

/// What happened to a write.
#[derive(Debug, Clone)]
pub struct Written {
    pub seq: u64,
    pub inbound_applied_seq: u64,
    pub end: Option<EndReason>,
    pub outcome: Result<(), StoreError>,
}

#[derive(Debug)]
struct Mailbox {
    next: Mutex<Option<Pending>>,
    notify: Notify,
    recording_pending_bytes_max: usize,
    /// Most unwritten webhook events kept (`webhooks.call_events_max`).
    events_pending_max: usize,
}

/// The driver's side of a call's writer.
#[derive(Debug)]
pub struct CheckpointWriter {
    mailbox: Arc<Mailbox>,
    pub results: mpsc::Receiver<Written>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a call's writer writes.
#[derive(Debug, Clone)]
pub struct Target {
    pub store: Arc<dyn CallStore>,
    pub call_id: CallId,
    pub epoch: Epoch,
    pub lease: Duration,
}

impl CheckpointWriter {
    pub fn spawn(
        target: Target,
        recording_pending_bytes_max: usize,
        events_pending_max: usize,
    ) -> CheckpointWriter {
        let mailbox = Arc::new(Mailbox {
            next: Mutex::new(None),
            notify: Notify::new(),
            recording_pending_bytes_max,
            events_pending_max,
        });
        let (results_tx, results) = mpsc::channel(RESULTS_MAX);
        let task = tokio::spawn(task_main(target, mailbox.clone(), results_tx));
        CheckpointWriter { mailbox, results, task }
    }

    /// Replaces whatever is waiting to be written with `pending`, keeping the waiting
    /// state's recorded audio in front of the new one's.
    pub fn submit(&self, mut pending: Pending) {
        let mut next = self.mailbox.next.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(older) = next.take() {
            pending.recording.prepend(older.recording);
            if !older.events.is_empty() {
                let mut events = older.events;
                events.append(&mut pending.events);
                pending.events = events;
            }
        }
        if pending.events.len() > self.mailbox.events_pending_max {
            let dropped = pending.events.len() - self.mailbox.events_pending_max;
            pending.events.truncate(self.mailbox.events_pending_max);
            metrics::counter!(m::WEBHOOKS_DROPPED, "reason" => "pending_full").increment(dropped as u64);
        }
        let dropped = pending.recording.bound(self.mailbox.recording_pending_bytes_max);
        if dropped > 0 {
            metrics::counter!(m::RECORDING_DROPPED_BYTES).increment(dropped as u64);
        }
        *next = Some(pending);
        drop(next);
        self.mailbox.notify.notify_one();
    }

    /// Stops the writer after its current write (used when the session is fenced).
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for CheckpointWriter {
    fn drop(&mut self) {
        // The driver is gone: nothing will read results, and a later owner may exist.
        self.task.abort();
    }
}

impl Mailbox {
    async fn take(&self) -> Pending {
        loop {
            let notified = self.notify.notified();
            if let Some(p) = self.next.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take() {
                return p;
            }
            notified.await;
        }
    }
}

/// Writes the latest pending state until the driver goes away or the call is fenced/ended.
async fn task_main(target: Target, mailbox: Arc<Mailbox>, results: mpsc::Sender<Written>) {
    loop {
        let pending = mailbox.take().await;
        let checkpoint = Checkpoint { seq: pending.seq, blob: pending.blob };
        let recording = pending.recording.into_chunk();
        let events = pending.events;
        let mut retry_delay = RETRY_DELAY_MIN;
        loop {
            let outcome = write(&target, &checkpoint, &recording, &events, pending.end).await;
            let retry = matches!(&outcome, Err(StoreError::Unavailable(_)));
            let final_answer = matches!(
                &outcome,
                Err(StoreError::Fenced { .. } | StoreError::Ended { .. } | StoreError::NotFound)
            );
            if let Err(e) = &outcome
                && retry
            {
                warn!(call_id = %target.call_id, epoch = %target.epoch, error = %e, "checkpoint write failed; retrying");
            }
            let written = Written {
                seq: checkpoint.seq,
                inbound_applied_seq: pending.inbound_applied_seq,
                end: pending.end,
                outcome,
            };
            if results.send(written).await.is_err() || final_answer {
                return;
            }
            if !retry {
                break;
            }
            // The outcome is unknown: retry this very write (its sequence number makes a
            // repeat harmless) before any newer state.
            tokio::time::sleep(retry_delay).await;
            retry_delay = (retry_delay * 2).min(RETRY_DELAY_MAX);
        }
    }
}

async fn write(
    target: &Target,
    checkpoint: &Checkpoint,
    recording: &RecordingChunk,
    events: &[OutboxEvent],
    end: Option<EndReason>,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let bytes = checkpoint.blob.len();
    let mut duplicate = false;
    let outcome = match end {
        Some(reason) => target
            .store
            .end_with_events(
                &target.call_id,
                target.epoch,
                reason,
                Some(checkpoint.clone()),
                recording.clone(),
                events,
            )
            .await
            .map(|_| ()),
        None => target
            .store
            .checkpoint_with_events(
                &target.call_id,
                target.epoch,
                checkpoint.clone(),
                recording.clone(),
                events,
                target.lease,
            )
            .await
            .map(|ack| duplicate = matches!(ack, CheckpointAck::Duplicate { .. })),
    };
    metrics::histogram!(m::CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::histogram!(m::CHECKPOINT_BYTES).record(bytes as f64);
    let label = match &outcome {
        Ok(()) if duplicate => "duplicate",
        Ok(()) => "applied",
        Err(StoreError::Fenced { .. }) => {
            metrics::counter!(m::FENCED_WRITES).increment(1);
            "fenced"
        }
        Err(StoreError::Ended { .. }) => "ended",
        Err(StoreError::Unavailable(_)) => {
            metrics::counter!(m::STORE_ERRORS, "op" => if end.is_some() { "end" } else { "checkpoint" })
                .increment(1);
            "error"
        }
        Err(_) => "error",
    };
    metrics::counter!(m::CHECKPOINTS, "outcome" => label).increment(1);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(inbound: &[u8], outbound: &[u8]) -> RecordingBuffer {
        RecordingBuffer { inbound: inbound.to_vec(), outbound: outbound.to_vec() }
    }

    #[test]
    fn prepend_keeps_order_per_track() {
        let mut newer = buf(b"cd", b"z");
        newer.prepend(buf(b"ab", b""));
        assert_eq!((newer.inbound.as_slice(), newer.outbound.as_slice()), (&b"abcd"[..], &b"z"[..]));
    }

    #[test]
    fn bound_drops_the_oldest_audio_of_each_track() {
        let mut b = buf(b"0123456789", b"abcdefghij");
        assert_eq!(b.bound(100), 0);
        assert_eq!(b.bound(10), 10);
        assert_eq!((b.inbound.as_slice(), b.outbound.as_slice()), (&b"56789"[..], &b"fghij"[..]));
    }
}
