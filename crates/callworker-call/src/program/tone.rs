//! The tone program: plays a pattern of tones and silences in 20 ms frames on its own
//! clock, and reacts to DTMF (acknowledges each digit with its DTMF tone pair; the hang-up
//! digit ends the call with `completed`).

use callworker_protocol::AudioFormat;
use serde::{Deserialize, Serialize};

use crate::dsp::{self, ToneGenerator};
use crate::end::EndReason;
use crate::program::{Effects, FRAME_MS, FrameClock};
use crate::time::UnixMillis;

/// How long a pressed digit's DTMF pair is played back, in milliseconds.
pub const DTMF_ACK_MS: u64 = 200;

/// One step of a tone pattern: up to two frequencies (none = silence) for `duration_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToneSegment {
    #[serde(default)]
    pub freqs_hz: Vec<u32>,
    pub duration_ms: u32,
}

impl ToneSegment {
    /// Frames this segment lasts (at least one, so a pattern always makes progress).
    pub(crate) fn frames(&self) -> u32 {
        u32::try_from((u64::from(self.duration_ms) / FRAME_MS).max(1)).unwrap_or(u32::MAX)
    }
}

/// Parameters of the tone program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToneParams {
    pub segments: Vec<ToneSegment>,
    /// Play the pattern again when it ends (otherwise the call ends with `completed`).
    #[serde(default = "default_true")]
    pub repeat: bool,
    /// Digit that ends the call with `completed`.
    #[serde(default)]
    pub hangup_digit: Option<char>,
}

fn default_true() -> bool {
    true
}

/// Running state of the tone program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToneState {
    pub params: ToneParams,
    /// Segment the next frame comes from.
    segment_index: u32,
    /// Frames of that segment already played.
    segment_frames_played: u32,
    /// Phase-continuous sine state, shared by every segment and the DTMF acknowledgement.
    generator: ToneGenerator,
    /// Paces frames; stopped while detached.
    clock: FrameClock,
    /// A digit's DTMF pair being played back; the pattern restarts from segment 0 after it.
    dtmf_ack: Option<DtmfAck>,
    /// The pattern played to its end without `repeat`: the call ends `completed` at the
    /// next frame time (once the last frame has had its 20 ms to play).
    finished: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DtmfAck {
    freqs_hz: [u32; 2],
    frames_left: u32,
}

impl ToneState {
    pub fn new(params: ToneParams) -> ToneState {
        ToneState {
            params,
            segment_index: 0,
            segment_frames_played: 0,
            generator: ToneGenerator::new(),
            clock: FrameClock::default(),
            dtmf_ack: None,
            finished: false,
        }
    }

    /// Index of the segment the next frame comes from.
    pub fn segment_index(&self) -> u32 {
        self.segment_index
    }

    /// The digit acknowledgement tone is playing.
    pub fn is_acknowledging_dtmf(&self) -> bool {
        self.dtmf_ack.is_some()
    }

    pub(crate) fn attach(&mut self, now: UnixMillis) {
        self.clock.start(now);
    }

    pub(crate) fn detach(&mut self) {
        self.clock.stop();
    }

    /// Steps the pattern back `frames` frames that were sent but never played to the caller
    /// (they died with the previous session), so they are played again. A repeating pattern
    /// wraps around; a one-shot pattern stops at its start. Inside a digit acknowledgement
    /// the acknowledgement is lengthened instead, up to its full length.
    pub(crate) fn rewind(&mut self, frames: u64) {
        if frames == 0 {
            return;
        }
        if let Some(ack) = &mut self.dtmf_ack {
            let full = (DTMF_ACK_MS / FRAME_MS) as u32;
            ack.frames_left =
                ack.frames_left.saturating_add(u32::try_from(frames).unwrap_or(u32::MAX)).min(full);
            return;
        }
        let lengths: Vec<u64> = self.params.segments.iter().map(|s| u64::from(s.frames())).collect();
        let total: u64 = lengths.iter().sum();
        if total == 0 || self.segment_index as usize > lengths.len() {
            return;
        }
        let position = if self.finished {
            total
        } else {
            lengths[..self.segment_index as usize].iter().sum::<u64>() + u64::from(self.segment_frames_played)
        };
        let target = if self.params.repeat {
            (position + total - frames % total) % total
        } else {
            position.saturating_sub(frames)
        };
        let mut rest = target;
        for (index, len) in lengths.iter().enumerate() {
            if rest < *len {
                self.segment_index = index as u32;
                self.segment_frames_played = rest as u32;
                break;
            }
            rest -= len;
        }
        self.finished = false;
    }

    pub(crate) fn next_deadline(&self) -> Option<UnixMillis> {
        self.clock.deadline()
    }

    pub(crate) fn dtmf(&mut self, digit: char, fx: &mut Effects) {
        if self.params.hangup_digit == Some(digit) {
            fx.end = Some(EndReason::Completed);
            return;
        }
        if let Some((low, high)) = dsp::dtmf_freqs_hz(digit) {
            self.dtmf_ack =
                Some(DtmfAck { freqs_hz: [low, high], frames_left: (DTMF_ACK_MS / FRAME_MS) as u32 });
        }
    }

    /// Emits the frames due at `now`; the oldest beyond [`FRAMES_PER_STEP_MAX`](super::FRAMES_PER_STEP_MAX)
    /// are skipped (the pattern position does not jump: a stalled actor delays it).
    pub(crate) fn run_due(&mut self, now: UnixMillis, audio: AudioFormat, fx: &mut Effects) {
        let (emit, skipped) = self.clock.take_due(now);
        fx.dropped_frames += skipped;
        for _ in 0..emit {
            if !self.next_frame(audio, fx) {
                self.clock.stop();
                return;
            }
        }
    }

    /// Produces one frame; `false` when the program has ended instead.
    fn next_frame(&mut self, audio: AudioFormat, fx: &mut Effects) -> bool {
        if let Some(ack) = &mut self.dtmf_ack {
            fx.push_tone_frame(&mut self.generator, &ack.freqs_hz, audio);
            ack.frames_left = ack.frames_left.saturating_sub(1);
            if ack.frames_left == 0 {
                self.dtmf_ack = None;
                self.segment_index = 0;
                self.segment_frames_played = 0;
                self.finished = false;
            }
            return true;
        }
        // An index past the end can only come from a hand-made state; treat it as finished.
        let Some(segment) = self.params.segments.get(self.segment_index as usize) else {
            self.finished = true;
            fx.end = Some(EndReason::Completed);
            return false;
        };
        if self.finished {
            fx.end = Some(EndReason::Completed);
            return false;
        }
        fx.push_tone_frame(&mut self.generator, &segment.freqs_hz, audio);
        self.segment_frames_played += 1;
        if self.segment_frames_played >= segment.frames() {
            self.segment_frames_played = 0;
            self.segment_index += 1;
            if self.segment_index as usize >= self.params.segments.len() {
                self.segment_index = 0;
                self.finished = !self.params.repeat;
            }
        }
        true
    }
}
