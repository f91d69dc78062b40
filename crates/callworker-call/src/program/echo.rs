//! The echo program: plays the caller's audio back byte for byte, in order, optionally
//! delayed by `delay_ms` (held frames are bounded by `CallLimits::delay_frames_max`).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::call::CallLimits;
use crate::program::Effects;
use crate::time::UnixMillis;

/// Parameters of the echo program.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoParams {
    /// Delay before a frame is played back, in milliseconds (0–5000).
    #[serde(default)]
    pub delay_ms: u32,
}

/// Running state of the echo program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EchoState {
    pub params: EchoParams,
    /// Frames waiting for their delay to pass, oldest first. Bounded by
    /// `CallLimits::delay_frames_max`: when full the oldest is dropped and counted, because
    /// the newest audio is what the caller is waiting to hear. Held frames are checkpointed,
    /// so a resumed call plays them back on the new worker.
    held: VecDeque<HeldFrame>,
}

/// One caller frame held back by the echo delay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HeldFrame {
    release_at: UnixMillis,
    payload: Vec<u8>,
}

impl EchoState {
    pub fn new(params: EchoParams) -> EchoState {
        EchoState { params, held: VecDeque::new() }
    }

    /// Frames currently held back by the delay.
    pub fn held_frames(&self) -> usize {
        self.held.len()
    }

    pub(crate) fn audio(&mut self, now: UnixMillis, payload: &[u8], limits: &CallLimits, fx: &mut Effects) {
        if self.params.delay_ms == 0 {
            fx.frames.push(payload.to_vec());
            return;
        }
        let cap = limits.delay_frames_max as usize;
        while !self.held.is_empty() && self.held.len() >= cap {
            self.held.pop_front();
            fx.dropped_frames += 1;
        }
        if cap == 0 {
            fx.dropped_frames += 1;
            return;
        }
        self.held.push_back(HeldFrame {
            release_at: now.add_ms(u64::from(self.params.delay_ms)),
            payload: payload.to_vec(),
        });
    }

    pub(crate) fn run_due(&mut self, now: UnixMillis, fx: &mut Effects) {
        while self.held.front().is_some_and(|f| f.release_at <= now) {
            if let Some(frame) = self.held.pop_front() {
                fx.frames.push(frame.payload);
            }
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<UnixMillis> {
        self.held.front().map(|f| f.release_at)
    }
}
