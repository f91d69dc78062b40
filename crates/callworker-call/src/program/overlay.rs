//! The overlay: a tone started by the `play_tone` action. While it plays, it replaces the
//! program's audio (the program keeps running underneath, its frames discarded); it is part
//! of the call's state, so a resumed call finishes the tone on the new worker.

use callworker_protocol::AudioFormat;
use serde::{Deserialize, Serialize};

use crate::dsp::ToneGenerator;
use crate::program::{Effects, FRAME_MS, FrameClock};
use crate::time::UnixMillis;

/// A tone playing over the program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    /// Frequencies (empty = silence).
    freqs_hz: Vec<u32>,
    /// Frames still to play (or skip); the overlay is over at 0.
    frames_left: u32,
    generator: ToneGenerator,
    clock: FrameClock,
}

impl Overlay {
    /// An overlay of `duration_ms` (rounded up to whole frames), not yet clocked.
    pub fn new(freqs_hz: Vec<u32>, duration_ms: u32) -> Overlay {
        Overlay {
            freqs_hz,
            frames_left: u32::try_from(u64::from(duration_ms).div_ceil(FRAME_MS)).unwrap_or(u32::MAX),
            generator: ToneGenerator::new(),
            clock: FrameClock::default(),
        }
    }

    pub fn freqs_hz(&self) -> &[u32] {
        &self.freqs_hz
    }

    pub fn frames_left(&self) -> u32 {
        self.frames_left
    }

    /// Every frame has been sent (the last may still be playing).
    pub fn is_done(&self) -> bool {
        self.frames_left == 0
    }

    /// Every frame has been sent and the last one has had its [`FRAME_MS`] to play, so the
    /// program's audio may take over at `now` without overlapping it.
    pub(crate) fn is_finished(&self, now: UnixMillis) -> bool {
        self.is_done() && self.clock.deadline().is_none_or(|end| now >= end)
    }

    pub(crate) fn attach(&mut self, now: UnixMillis) {
        self.clock.start(now);
    }

    pub(crate) fn detach(&mut self) {
        self.clock.stop();
    }

    /// The next frame, or once done, the end of the last frame.
    pub(crate) fn next_deadline(&self) -> Option<UnixMillis> {
        self.clock.deadline()
    }

    /// Emits the frames due at `now`. Skipped frames use up the duration too: the overlay
    /// lasts `duration_ms` of attached time, however late the actor is.
    pub(crate) fn run_due(&mut self, now: UnixMillis, audio: AudioFormat, fx: &mut Effects) {
        if self.is_done() {
            // Leave the clock at the end of the last frame for `is_finished`.
            return;
        }
        let (emit, skipped) = self.clock.take_due(now);
        let skipped = skipped.min(u64::from(self.frames_left));
        if skipped > 0 {
            let samples = u64::from(audio.sample_rate_hz) * FRAME_MS / 1000 * skipped;
            self.generator.skip(&self.freqs_hz, audio.sample_rate_hz, samples);
            fx.dropped_frames += skipped;
            self.frames_left -= skipped as u32;
        }
        for _ in 0..emit {
            if self.frames_left == 0 {
                break;
            }
            fx.push_tone_frame(&mut self.generator, &self.freqs_hz, audio);
            self.frames_left -= 1;
        }
    }
}
