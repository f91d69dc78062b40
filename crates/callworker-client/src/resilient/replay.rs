//! The sans-IO core of the resilient client: the bounded replay buffer of client audio
//! (`docs/protocol.md` §4.2) and the filter for server audio (§4.3).

use std::collections::VecDeque;

use bytes::Bytes;
use callworker_protocol::codec::{ALAW_SILENCE, ULAW_SILENCE};
use callworker_protocol::{AudioFormat, Encoding};

/// Default for the replay buffer's bound: 15 s of 20 ms frames (§4.2 suggests it).
pub const DEFAULT_REPLAY_FRAMES_MAX: usize = 750;
/// Default for the retained tail: 2 s of 20 ms frames already acknowledged, kept because a
/// store may lose its last second of writes and the next worker then asks for them again.
pub const DEFAULT_RETAINED_TAIL_FRAMES: usize = 100;
/// Duration of a silence frame sent for audio the buffer no longer holds.
pub const SILENCE_FRAME_MS: u32 = 20;

/// The frame for sequence number `seq` is not the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("audio frame seq {got} pushed where {expected} was next")]
pub struct SeqMismatch {
    pub expected: u64,
    pub got: u64,
}

/// What a `welcome` asks of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePlan {
    /// Frames to send as silence: the server wants them but the buffer dropped them.
    pub silence_frames: u64,
    /// Frames the buffer still holds and sends again.
    pub replay_frames: u64,
}

/// Client audio kept for replay: every frame not yet acknowledged, plus a retained tail of
/// acknowledged ones, at most `frames_max` in all.
///
/// Invariants: the frames held have consecutive sequence numbers `first_seq..next_seq`;
/// at most `retained_tail_frames` of them are acknowledged (unless the buffer is told
/// otherwise by a `welcome` that asks for older frames again); `len() <= frames_max`. When
/// a new frame would exceed the bound, the oldest frame is dropped and counted: a resume
/// that needs it sends silence in its place (§4.2).
#[derive(Debug)]
pub struct ReplayBuffer {
    /// Encoded frames (header + payload); `frames[i]` carries `first_seq + i`.
    frames: VecDeque<Bytes>,
    first_seq: u64,
    /// Highest sequence number the server holds durably (from `ack` or `welcome`).
    acked_upto: u64,
    frames_max: usize,
    retained_tail_frames: usize,
    dropped_overflow: u64,
}

impl ReplayBuffer {
    /// An empty buffer whose next frame carries `next_seq` (1 for a new call).
    pub fn new(frames_max: usize, retained_tail_frames: usize, next_seq: u64) -> ReplayBuffer {
        let frames_max = frames_max.max(1);
        ReplayBuffer {
            frames: VecDeque::with_capacity(frames_max),
            first_seq: next_seq,
            acked_upto: next_seq.saturating_sub(1),
            frames_max,
            retained_tail_frames: retained_tail_frames.min(frames_max),
            dropped_overflow: 0,
        }
    }

    /// Sequence number of the oldest frame held (equal to [`ReplayBuffer::next_seq`] when
    /// empty).
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number the next new frame carries.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + self.frames.len() as u64
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Highest sequence number known to be durable on the server.
    pub fn acked_upto(&self) -> u64 {
        self.acked_upto
    }

    /// Frames dropped because the buffer was full.
    pub fn dropped_overflow(&self) -> u64 {
        self.dropped_overflow
    }

    /// Appends the frame carrying `seq`, which must be [`ReplayBuffer::next_seq`]. Returns
    /// how many old frames were dropped to make room (0 or 1).
    pub fn push(&mut self, seq: u64, frame: Bytes) -> Result<usize, SeqMismatch> {
        let expected = self.next_seq();
        if seq != expected {
            return Err(SeqMismatch { expected, got: seq });
        }
        let mut dropped = 0;
        if self.frames.len() >= self.frames_max {
            self.frames.pop_front();
            self.first_seq += 1;
            self.dropped_overflow += 1;
            dropped = 1;
        }
        self.frames.push_back(frame);
        Ok(dropped)
    }

    /// The frame carrying `seq`, if held.
    pub fn get(&self, seq: u64) -> Option<&Bytes> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.frames.get(index)
    }

    /// `ack {upto_seq}`: frames up to `upto_seq` are durable; keep only the retained tail
    /// of them. Acks are cumulative, so an older one changes nothing.
    pub fn ack(&mut self, upto_seq: u64) {
        if upto_seq > self.acked_upto {
            self.acked_upto = upto_seq;
        }
        self.trim();
    }

    /// `welcome {resume_from_seq}`: the server holds exactly the frames before
    /// `resume_from_seq` (possibly fewer than it once acknowledged, if the store lost
    /// writes), and the client sends again from `resume_from_seq`.
    pub fn on_welcome(&mut self, resume_from_seq: u64) -> ResumePlan {
        let resume_from_seq = resume_from_seq.max(1);
        self.acked_upto = resume_from_seq - 1;
        self.trim();
        let next = self.next_seq();
        let first = self.first_seq;
        let from = resume_from_seq.min(next);
        ResumePlan {
            silence_frames: first.min(next).saturating_sub(from),
            replay_frames: next.saturating_sub(from.max(first)),
        }
    }

    /// Drops acknowledged frames beyond the retained tail.
    fn trim(&mut self) {
        let durable_end = self.acked_upto.saturating_add(1).min(self.next_seq());
        let mut acked_held = durable_end.saturating_sub(self.first_seq);
        while acked_held > self.retained_tail_frames as u64 {
            self.frames.pop_front();
            self.first_seq += 1;
            acked_held -= 1;
        }
    }
}

/// One 20 ms frame of silence in `audio`, sent for client audio the buffer no longer
/// holds. Silence is `0xFF` in μ-law, `0xD5` in A-law and zero in L16.
pub fn silence_payload(audio: AudioFormat) -> Vec<u8> {
    let byte = match audio.encoding {
        Encoding::Pcmu => ULAW_SILENCE,
        Encoding::Pcma => ALAW_SILENCE,
        Encoding::L16 => 0,
    };
    let bytes = audio.bytes_for_ms(SILENCE_FRAME_MS).max(audio.bytes_per_sample());
    vec![byte; bytes]
}

/// What to do with a server audio frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New audio: hand it to the application.
    Accept,
    /// From another epoch than this session's `welcome` (a fenced-out worker): drop.
    StaleEpoch,
    /// At or below the highest sequence number already accepted (a regenerated or replayed
    /// frame): drop.
    Duplicate,
}

/// De-duplicates server audio by `(epoch, seq)` (§4.3). `last_seq_rx` survives sessions:
/// server sequence numbers are per call.
#[derive(Debug, Clone, Default)]
pub struct ServerAudioFilter {
    /// Epoch of the `welcome` of the current session (0 before the first).
    epoch: u64,
    last_seq_rx: u64,
}

impl ServerAudioFilter {
    /// A filter for a client that has accepted server audio up to `last_seq_rx`.
    pub fn new(last_seq_rx: u64) -> ServerAudioFilter {
        ServerAudioFilter { epoch: 0, last_seq_rx }
    }

    /// A new session holds `epoch`.
    pub fn on_welcome(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Highest server sequence number accepted (0 if none): `hello.last_server_seq_rx`.
    pub fn last_seq_rx(&self) -> u64 {
        self.last_seq_rx
    }

    pub fn check(&mut self, epoch: u64, seq: u64) -> Verdict {
        if epoch != self.epoch {
            return Verdict::StaleEpoch;
        }
        if seq <= self.last_seq_rx {
            return Verdict::Duplicate;
        }
        self.last_seq_rx = seq;
        Verdict::Accept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::encode_audio_frame;

    fn frame(seq: u64) -> Bytes {
        encode_audio_frame(seq, &[seq as u8; 4])
    }

    fn filled(buffer: &mut ReplayBuffer, upto: u64) {
        while buffer.next_seq() <= upto {
            let seq = buffer.next_seq();
            buffer.push(seq, frame(seq)).expect("next seq");
        }
    }

    /// Checks the invariants after every step.
    fn check(buffer: &ReplayBuffer) {
        assert!(buffer.len() <= buffer.frames_max);
        assert_eq!(buffer.next_seq(), buffer.first_seq() + buffer.len() as u64);
        for seq in buffer.first_seq()..buffer.next_seq() {
            assert_eq!(buffer.get(seq), Some(&frame(seq)), "frames are consecutive");
        }
        assert_eq!(buffer.get(buffer.next_seq()), None);
        assert_eq!(buffer.get(buffer.first_seq().wrapping_sub(1)), None);
    }

    #[test]
    fn unacked_frames_are_kept_and_acks_keep_a_retained_tail() {
        let mut buffer = ReplayBuffer::new(750, 100, 1);
        filled(&mut buffer, 300);
        check(&buffer);
        assert_eq!((buffer.first_seq(), buffer.len()), (1, 300), "nothing acked: all kept");

        buffer.ack(250);
        check(&buffer);
        assert_eq!(buffer.first_seq(), 151, "100 acked frames retained before the unacked ones");
        assert_eq!(buffer.len(), 150);

        buffer.ack(200);
        assert_eq!(buffer.first_seq(), 151, "an older ack changes nothing");
        buffer.ack(300);
        assert_eq!((buffer.first_seq(), buffer.len()), (201, 100), "all acked: only the tail");
        buffer.ack(10_000);
        assert_eq!((buffer.first_seq(), buffer.len()), (201, 100), "an ack beyond next_seq is clamped");
        assert_eq!(buffer.dropped_overflow(), 0);
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts() {
        let mut buffer = ReplayBuffer::new(750, 100, 1);
        filled(&mut buffer, 1000);
        check(&buffer);
        assert_eq!((buffer.first_seq(), buffer.len()), (251, 750));
        assert_eq!(buffer.dropped_overflow(), 250);
        assert_eq!(buffer.push(5, frame(5)), Err(SeqMismatch { expected: 1001, got: 5 }));
    }

    #[test]
    fn welcome_replays_from_resume_from_seq() {
        let mut buffer = ReplayBuffer::new(750, 100, 1);
        filled(&mut buffer, 300);
        buffer.ack(200);
        let plan = buffer.on_welcome(221);
        check(&buffer);
        assert_eq!(plan, ResumePlan { silence_frames: 0, replay_frames: 80 });
        assert_eq!(buffer.first_seq(), 121, "frames below resume_from_seq become the tail");
        // Nothing to replay when the server holds it all.
        assert_eq!(buffer.on_welcome(301), ResumePlan { silence_frames: 0, replay_frames: 0 });
    }

    #[test]
    fn a_welcome_may_ask_for_acknowledged_frames_again() {
        let mut buffer = ReplayBuffer::new(750, 100, 1);
        filled(&mut buffer, 300);
        buffer.ack(300);
        assert_eq!(buffer.first_seq(), 201);
        // The store lost its last writes: the new worker asks from 251 (acked long ago).
        let plan = buffer.on_welcome(251);
        assert_eq!(plan, ResumePlan { silence_frames: 0, replay_frames: 50 });
        assert_eq!(buffer.acked_upto(), 250, "frames from 251 are unacknowledged again");
        filled(&mut buffer, 400);
        buffer.ack(260);
        check(&buffer);
        assert_eq!(buffer.first_seq(), 201, "no more than the tail is trimmed");
    }

    #[test]
    fn a_welcome_beyond_the_buffer_is_filled_with_silence() {
        let mut buffer = ReplayBuffer::new(750, 100, 1);
        filled(&mut buffer, 1000);
        assert_eq!(buffer.first_seq(), 251);
        // The server has 1..=100; 101..=250 were dropped on overflow.
        let plan = buffer.on_welcome(101);
        check(&buffer);
        assert_eq!(plan, ResumePlan { silence_frames: 150, replay_frames: 750 });
        // Nothing held at all: everything from resume_from_seq to next_seq is silence.
        let mut empty = ReplayBuffer::new(10, 5, 1);
        filled(&mut empty, 20);
        empty.ack(20);
        assert_eq!(empty.first_seq(), 16);
        assert_eq!(empty.on_welcome(3), ResumePlan { silence_frames: 13, replay_frames: 5 });
    }

    #[test]
    fn silence_is_20_ms_of_the_format_s_zero() {
        let pcmu = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };
        assert_eq!(silence_payload(pcmu), vec![0xFF; 160]);
        let pcma = AudioFormat { encoding: Encoding::Pcma, sample_rate_hz: 8_000 };
        assert_eq!(silence_payload(pcma), vec![0xD5; 160]);
        let l16 = AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 };
        assert_eq!(silence_payload(l16), vec![0; 640]);
    }

    #[test]
    fn server_audio_is_deduplicated_by_epoch_and_seq() {
        let mut filter = ServerAudioFilter::default();
        filter.on_welcome(1);
        assert_eq!(filter.check(1, 1), Verdict::Accept);
        assert_eq!(filter.check(1, 2), Verdict::Accept);
        assert_eq!(filter.check(1, 2), Verdict::Duplicate);
        assert_eq!(filter.check(0, 3), Verdict::StaleEpoch);
        assert_eq!(filter.check(1, 5), Verdict::Accept, "gaps (server-side drops) are accepted");
        filter.on_welcome(2);
        assert_eq!(filter.check(1, 6), Verdict::StaleEpoch, "the fenced-out worker's frames");
        assert_eq!(filter.check(2, 4), Verdict::Duplicate, "regenerated frames across sessions");
        assert_eq!(filter.check(2, 6), Verdict::Accept);
        assert_eq!(filter.last_seq_rx(), 6);
    }
}
