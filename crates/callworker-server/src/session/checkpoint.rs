//! The per-call checkpoint writer: a task that persists the latest state of one call.
//!
//! The driver never awaits the store on its media path. It encodes the call and places it
//! in a one-slot mailbox (a `watch` channel): at most one write is in flight per call and
//! a newer state replaces an older unwritten one (latest wins), so a slow or unreachable
//! store costs writes, never audio. Across calls, writes are pipelined by the store client.
//! Results come back to the driver on a small bounded channel; the driver acks native audio
//! only from these results (acks follow durability).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use callworker_call::{CallId, EndReason, Epoch};
use callworker_store::{CallStore, Checkpoint, CheckpointAck, StoreError};
use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::metrics as m;

/// Results the driver has not read yet. The writer waits when it is full (the driver reads
/// it in its main loop, so this only fills while the driver is busy for a moment).
const RESULTS_MAX: usize = 4;
/// First retry delay after a failed write; doubles up to [`RETRY_DELAY_MAX`].
const RETRY_DELAY_MIN: Duration = Duration::from_millis(50);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(2);

/// A state to persist.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Checkpoint sequence number (strictly increasing per call, across owners).
    pub seq: u64,
    /// The call's `media.inbound_applied_seq` in this state (what an ack may cover).
    pub inbound_applied_seq: u64,
    pub blob: Bytes,
    /// `Some` for the final write of an ended call (a fenced `end`, not a checkpoint).
    pub end: Option<EndReason>,
}

/// What happened to a write.
#[derive(Debug, Clone)]
pub struct Written {
    pub seq: u64,
    pub inbound_applied_seq: u64,
    pub end: Option<EndReason>,
    pub outcome: Result<(), StoreError>,
}

/// The driver's side of a call's writer.
#[derive(Debug)]
pub struct CheckpointWriter {
    slot: watch::Sender<Option<Pending>>,
    pub results: mpsc::Receiver<Written>,
    task: tokio::task::JoinHandle<()>,
}

impl CheckpointWriter {
    pub fn spawn(
        store: Arc<dyn CallStore>,
        call_id: CallId,
        epoch: Epoch,
        lease: Duration,
    ) -> CheckpointWriter {
        let (slot, rx) = watch::channel(None);
        let (results_tx, results) = mpsc::channel(RESULTS_MAX);
        let task = tokio::spawn(task_main(store, call_id, epoch, lease, rx, results_tx));
        CheckpointWriter { slot, results, task }
    }

    /// Replaces whatever is waiting to be written with `pending`.
    pub fn submit(&self, pending: Pending) {
        self.slot.send_replace(Some(pending));
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

/// Writes the latest pending state until the driver goes away or the call is fenced/ended.
pub async fn task_main(
    store: Arc<dyn CallStore>,
    call_id: CallId,
    epoch: Epoch,
    lease: Duration,
    mut slot: watch::Receiver<Option<Pending>>,
    results: mpsc::Sender<Written>,
) {
    let mut retry_delay = RETRY_DELAY_MIN;
    loop {
        if slot.changed().await.is_err() {
            return; // driver dropped the sender
        }
        loop {
            let Some(pending) = slot.borrow_and_update().clone() else { break };
            let started = Instant::now();
            let bytes = pending.blob.len();
            let checkpoint = Checkpoint { seq: pending.seq, blob: pending.blob.clone() };
            let mut duplicate = false;
            let outcome = match pending.end {
                Some(reason) => store.end(&call_id, epoch, reason, Some(checkpoint)).await.map(|_| ()),
                None => store.checkpoint(&call_id, epoch, checkpoint, lease).await.map(|ack| {
                    duplicate = matches!(ack, CheckpointAck::Duplicate { .. });
                }),
            };
            metrics::histogram!(m::CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::histogram!(m::CHECKPOINT_BYTES).record(bytes as f64);
            let label = match &outcome {
                Ok(()) if duplicate => "duplicate",
                Ok(()) => "applied",
                Err(StoreError::Fenced { .. }) => "fenced",
                Err(StoreError::Ended { .. }) => "ended",
                Err(_) => "error",
            };
            metrics::counter!(m::CHECKPOINTS, "outcome" => label).increment(1);
            let retry = matches!(&outcome, Err(StoreError::Unavailable(_)));
            if let Err(e) = &outcome
                && retry
            {
                warn!(call_id = %call_id, epoch = %epoch, error = %e, "checkpoint write failed; retrying");
            }
            let final_answer = matches!(
                &outcome,
                Err(StoreError::Fenced { .. } | StoreError::Ended { .. } | StoreError::NotFound)
            );
            let written = Written {
                seq: pending.seq,
                inbound_applied_seq: pending.inbound_applied_seq,
                end: pending.end,
                outcome,
            };
            if results.send(written).await.is_err() || final_answer {
                return;
            }
            if retry {
                // Keep the slot's latest state and try again after a backoff, unless a newer
                // state arrives first (then write that one).
                let _ = tokio::time::timeout(retry_delay, slot.changed()).await;
                retry_delay = (retry_delay * 2).min(RETRY_DELAY_MAX);
                slot.mark_changed();
                continue;
            }
            retry_delay = RETRY_DELAY_MIN;
            if !slot.has_changed().unwrap_or(false) {
                break;
            }
        }
    }
}
