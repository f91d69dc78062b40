//! The per-session outbound queue between a session's driver and its WebSocket writer.
//!
//! Bounded twice: at most `audio_max` audio frames and `control_max` control messages.
//! When audio is full the *oldest* audio frame is dropped and counted (live audio that
//! arrives late is worthless; the newest is what the caller should hear). Control messages
//! (acks, marks, events, close) are never dropped: when they overflow, the consumer is too
//! slow to be served and the session is closed. Order is preserved between everything that
//! is not dropped, so a Twilio `mark` still follows the audio it marks.
//!
//! Audio also carries the moment it was queued: the writer never sends a frame that waited
//! longer than the call's lease (see [`Outbound::is_stale`]). Only a paused process (SIGSTOP,
//! CPU starvation) makes a frame wait that long, and after such a pause the call may
//! already have a new owner: its old audio must not reach a client after the new owner's.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message};
use tokio::sync::Notify;

#[derive(Debug)]
enum Item {
    /// An audio frame and when it was queued.
    Audio(Message, Instant),
    Control(Message),
}

/// A message drained for the writer.
#[derive(Debug)]
pub struct Outbound {
    pub msg: Message,
    /// When an audio frame was queued (`None` for control messages).
    queued_at: Option<Instant>,
}

impl Outbound {
    /// An audio frame that waited longer than `max_wait` (control messages never are).
    pub fn is_stale(&self, max_wait: Duration, now: Instant) -> bool {
        self.queued_at.is_some_and(|at| now.saturating_duration_since(at) > max_wait)
    }
}

#[derive(Debug)]
struct Inner {
    items: VecDeque<Item>,
    audio_len: usize,
    control_len: usize,
    /// Set once a close frame is queued: nothing is accepted after it.
    closing: bool,
}

/// Outcome of queueing a control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlPush {
    Queued,
    /// The control bound is reached: the consumer is too slow; close the session.
    Overflow,
    /// A close is already queued; the message was discarded.
    Closing,
}

/// Bounded queue drained by the session's writer task.
#[derive(Debug)]
pub struct OutboundQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    /// Current audio bound (lowered while the memory governor is above normal).
    audio_max: std::sync::atomic::AtomicUsize,
    control_max: usize,
}

impl OutboundQueue {
    pub fn new(audio_max: usize, control_max: usize) -> OutboundQueue {
        OutboundQueue {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(audio_max.min(64) + 4),
                audio_len: 0,
                control_len: 0,
                closing: false,
            }),
            notify: Notify::new(),
            audio_max: std::sync::atomic::AtomicUsize::new(audio_max.max(1)),
            control_max: control_max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // mutation is a single push/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an audio frame; returns how many older frames were dropped to make room
    /// (0 or 1). Audio queued after a close is discarded (returns 0).
    pub fn push_audio(&self, msg: Message) -> usize {
        let mut inner = self.lock();
        if inner.closing {
            return 0;
        }
        let mut dropped = 0;
        if inner.audio_len >= self.audio_max.load(std::sync::atomic::Ordering::Relaxed)
            && let Some(pos) = inner.items.iter().position(|i| matches!(i, Item::Audio(..)))
        {
            inner.items.remove(pos);
            inner.audio_len -= 1;
            dropped = 1;
        }
        inner.items.push_back(Item::Audio(msg, Instant::now()));
        inner.audio_len += 1;
        drop(inner);
        self.notify.notify_one();
        dropped
    }

    /// Queues a control message, refusing it when the control bound is reached.
    pub fn push_control(&self, msg: Message) -> ControlPush {
        let mut inner = self.lock();
        if inner.closing {
            return ControlPush::Closing;
        }
        if inner.control_len >= self.control_max {
            return ControlPush::Overflow;
        }
        inner.items.push_back(Item::Control(msg));
        inner.control_len += 1;
        drop(inner);
        self.notify.notify_one();
        ControlPush::Queued
    }

    /// Discards queued audio (e.g. on `clear`); control messages stay.
    pub fn clear_audio(&self) -> usize {
        let mut inner = self.lock();
        let before = inner.items.len();
        inner.items.retain(|i| matches!(i, Item::Control(_)));
        let removed = before - inner.items.len();
        inner.audio_len = 0;
        removed
    }

    /// Queues a close frame after everything already queued (always accepted, once), so a
    /// final `bye` or error is delivered before the socket closes.
    pub fn close(&self, code: u16, reason: String) {
        let mut inner = self.lock();
        if inner.closing {
            return;
        }
        inner.closing = true;
        inner
            .items
            .push_back(Item::Control(Message::Close(Some(CloseFrame { code, reason: reason.into() }))));
        inner.control_len += 1;
        drop(inner);
        self.notify.notify_one();
    }

    /// Changes the audio bound (at least 1). Audio already queued beyond a lower bound is
    /// dropped oldest first as new audio arrives.
    pub fn set_audio_max(&self, audio_max: usize) {
        self.audio_max.store(audio_max.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes of the messages queued right now (for the call's memory account).
    pub fn queued_bytes(&self) -> usize {
        self.lock()
            .items
            .iter()
            .map(|i| match i {
                Item::Audio(m, _) | Item::Control(m) => match m {
                    Message::Text(t) => t.len(),
                    Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
                    Message::Close(_) => 0,
                },
            })
            .sum()
    }

    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Moves everything queued into `batch` (in order), waiting until there is something.
    pub async fn drain_into(&self, batch: &mut Vec<Outbound>) {
        loop {
            {
                let mut inner = self.lock();
                if !inner.items.is_empty() {
                    batch.extend(inner.items.drain(..).map(|i| match i {
                        Item::Audio(msg, at) => Outbound { msg, queued_at: Some(at) },
                        Item::Control(msg) => Outbound { msg, queued_at: None },
                    }));
                    inner.audio_len = 0;
                    inner.control_len = 0;
                    return;
                }
            }
            self.notify.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Message) -> String {
        match m {
            Message::Text(t) => t.as_str().to_owned(),
            Message::Binary(b) => format!("bin:{}", b[0]),
            Message::Close(Some(c)) => format!("close:{}", c.code),
            other => format!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn full_audio_drops_the_oldest_frame_and_keeps_order() {
        let q = OutboundQueue::new(2, 4);
        assert_eq!(q.push_audio(Message::Binary(vec![1].into())), 0);
        assert_eq!(q.push_control(Message::Text("mark".into())), ControlPush::Queued);
        assert_eq!(q.push_audio(Message::Binary(vec![2].into())), 0);
        assert_eq!(q.push_audio(Message::Binary(vec![3].into())), 1);
        let mut batch = Vec::new();
        q.drain_into(&mut batch).await;
        let got: Vec<String> = batch.iter().map(|o| text(&o.msg)).collect();
        assert_eq!(got, ["mark", "bin:2", "bin:3"]);
    }

    #[tokio::test]
    async fn a_lowered_audio_bound_applies_to_new_audio_and_bytes_are_counted() {
        let q = OutboundQueue::new(10, 4);
        q.set_audio_max(2);
        let dropped: usize = (1..=3).map(|i| q.push_audio(Message::Binary(vec![i; 100].into()))).sum();
        assert_eq!(dropped, 1);
        assert_eq!(q.queued_bytes(), 200);
        let mut batch = Vec::new();
        q.drain_into(&mut batch).await;
        assert_eq!(batch.iter().map(|o| text(&o.msg)).collect::<Vec<_>>(), ["bin:2", "bin:3"]);
    }

    #[tokio::test]
    async fn control_is_never_dropped_but_overflow_is_reported() {
        let q = OutboundQueue::new(2, 2);
        assert_eq!(q.push_control(Message::Text("a".into())), ControlPush::Queued);
        assert_eq!(q.push_control(Message::Text("b".into())), ControlPush::Queued);
        assert_eq!(q.push_control(Message::Text("c".into())), ControlPush::Overflow);
        // A close is always accepted and is the last thing sent.
        q.close(4430, "slow".into());
        assert_eq!(q.push_control(Message::Text("d".into())), ControlPush::Closing);
        assert_eq!(q.push_audio(Message::Binary(vec![9].into())), 0);
        let mut batch = Vec::new();
        q.drain_into(&mut batch).await;
        let got: Vec<String> = batch.iter().map(|o| text(&o.msg)).collect();
        assert_eq!(got, ["a", "b", "close:4430"]);
    }

    #[tokio::test]
    async fn clear_discards_audio_only() {
        let q = OutboundQueue::new(4, 4);
        q.push_audio(Message::Binary(vec![1].into()));
        q.push_control(Message::Text("ack".into()));
        q.push_audio(Message::Binary(vec![2].into()));
        assert_eq!(q.clear_audio(), 2);
        let mut batch = Vec::new();
        q.drain_into(&mut batch).await;
        assert_eq!(batch.iter().map(|o| text(&o.msg)).collect::<Vec<_>>(), ["ack"]);
    }

    #[tokio::test]
    async fn audio_that_waited_past_the_bound_is_stale_and_control_never_is() {
        let q = OutboundQueue::new(4, 4);
        q.push_audio(Message::Binary(vec![1].into()));
        q.push_control(Message::Text("mark".into()));
        let mut batch = Vec::new();
        q.drain_into(&mut batch).await;
        let later = Instant::now() + Duration::from_secs(2);
        let wait = Duration::from_millis(1_500);
        assert!(batch[0].is_stale(wait, later), "a frame queued 2 s ago, past a 1.5 s bound");
        assert!(!batch[0].is_stale(wait, Instant::now()), "a frame queued just now");
        assert!(!batch[1].is_stale(wait, later), "control messages are never stale");
    }
}
