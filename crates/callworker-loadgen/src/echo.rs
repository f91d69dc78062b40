//! Per-call bookkeeping of an echo call, by byte offset: what was sent when, what came back,
//! how late, and whether it was byte-exact. Pure (no clock, no sockets): instants are
//! microseconds since the call's own origin, passed in by the caller.
//!
//! Why by byte offset and not by frame: a server may re-chunk audio (join two 20 ms frames,
//! split one), so received message *n* need not be sent frame *n*. Byte *k* of the echo is
//! always byte *k* of what was sent, whatever the chunking. A received payload's lag is
//! measured against the frame that holds the *last* byte received so far, so a server that
//! holds audio back to batch it is charged for the wait.
//!
//! Lag is measured from the frame's *scheduled* send instant, never from when it actually
//! went out, so a generator that falls behind cannot hide server latency (no coordinated
//! omission; see research/reliability.md §2).

use callworker_client::audio::test_pattern;

/// Bytes of one 20 ms μ-law 8 kHz frame.
pub const FRAME_BYTES: usize = 160;
/// Length of the cyclic test pattern a call sends. Prime, so a lost, duplicated or
/// re-ordered frame moves every later byte off the pattern: a shift of `k` frames is
/// invisible only when `160·k` is a multiple of 7,919, i.e. `k` is (about 2.6 minutes of
/// audio lost in one piece). Cyclic so a call's pattern costs 8 KB whatever its length.
pub const PATTERN_BYTES: usize = 7_919;
/// Most frames whose scheduled send instants a call keeps (8 bytes each; 4,096 frames is
/// 82 s of audio, 32 KiB). An echo arriving later than that behind its frame is counted in
/// [`EchoTracker::lags_beyond_window`] instead of measured.
pub const WINDOW_FRAMES_MAX: usize = 4_096;

/// A call's test signal: [`test_pattern`] of [`PATTERN_BYTES`] bytes repeated without end.
#[derive(Debug, Clone)]
pub struct Pattern {
    /// The pattern followed by a copy of its first frame, so every frame of the endless
    /// stream is one contiguous slice (sending needs no copy).
    bytes: Box<[u8]>,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        let mut bytes = test_pattern(seed, PATTERN_BYTES);
        bytes.extend_from_within(..FRAME_BYTES);
        Pattern { bytes: bytes.into_boxed_slice() }
    }

    fn start(offset: u64) -> usize {
        // The remainder is below PATTERN_BYTES, which fits any usize.
        (offset % PATTERN_BYTES as u64) as usize
    }

    /// Frame `frame` (0-based) of the stream: bytes `[160·frame, 160·frame + 160)`.
    pub fn frame(&self, frame: u64) -> &[u8] {
        let start = Self::start(frame * FRAME_BYTES as u64);
        &self.bytes[start..start + FRAME_BYTES]
    }

    /// Whether `data` equals the stream from byte `offset` on.
    pub fn matches(&self, offset: u64, data: &[u8]) -> bool {
        let mut start = Self::start(offset);
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(PATTERN_BYTES - start);
            if rest[..n] != self.bytes[start..start + n] {
                return false;
            }
            rest = &rest[n..];
            start = 0;
        }
        true
    }
}

/// What one received payload told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Echo lag of the payload's last byte, in microseconds.
    LagUs(u64),
    /// The payload ends beyond everything sent (the server made audio up).
    Excess,
    /// The frame holding the last byte is older than the window of kept send instants.
    BeyondWindow,
    /// An empty payload: nothing to measure.
    Empty,
}

/// Per-call send and receive bookkeeping (see the module docs).
#[derive(Debug)]
pub struct EchoTracker {
    pattern: Pattern,
    /// Scheduled send instants (µs since the call's origin) of the last `ring.len()` frames
    /// sent, frame `f` at `ring[f % ring.len()]`. Bounded: sized for the planned frames, at
    /// most [`WINDOW_FRAMES_MAX`]; older entries are overwritten.
    ring: Box<[u64]>,
    frames_sent: u64,
    bytes_received: u64,
    messages_received: u64,
    mismatched_frames: u64,
    /// The last frame counted as mismatched, so a frame split over payloads counts once.
    last_mismatched_frame: Option<u64>,
    excess_bytes: u64,
    lags_beyond_window: u64,
    lag_max_us: u64,
}

impl EchoTracker {
    /// A tracker for a call that plans to send `frames_planned` frames of `Pattern::new(seed)`.
    pub fn new(seed: u64, frames_planned: u64) -> EchoTracker {
        let window = usize::try_from(frames_planned).unwrap_or(usize::MAX).clamp(1, WINDOW_FRAMES_MAX);
        EchoTracker {
            pattern: Pattern::new(seed),
            ring: vec![0; window].into_boxed_slice(),
            frames_sent: 0,
            bytes_received: 0,
            messages_received: 0,
            mismatched_frames: 0,
            last_mismatched_frame: None,
            excess_bytes: 0,
            lags_beyond_window: 0,
            lag_max_us: 0,
        }
    }

    /// The payload of the next frame to send (frame index [`Self::frames_sent`]).
    pub fn next_payload(&self) -> &[u8] {
        self.pattern.frame(self.frames_sent)
    }

    /// Records that the next frame went out; `scheduled_us` is when it was due.
    pub fn on_sent(&mut self, scheduled_us: u64) {
        let slot = self.slot(self.frames_sent);
        self.ring[slot] = scheduled_us;
        self.frames_sent += 1;
    }

    fn slot(&self, frame: u64) -> usize {
        // The remainder is below ring.len(), a usize.
        (frame % self.ring.len() as u64) as usize
    }

    /// Records a received payload at `now_us`: checks its bytes against the pattern at its
    /// offset and measures the lag of its last byte.
    pub fn on_received(&mut self, now_us: u64, payload: &[u8]) -> Received {
        self.messages_received += 1;
        let start = self.bytes_received;
        let end = start + payload.len() as u64;
        self.bytes_received = end;
        let sent_bytes = self.frames_sent * FRAME_BYTES as u64;
        if end > sent_bytes {
            self.excess_bytes += end - sent_bytes.max(start);
        }
        self.check_bytes(start, payload);
        if payload.is_empty() {
            return Received::Empty;
        }
        if end > sent_bytes {
            return Received::Excess;
        }
        let frame = (end - 1) / FRAME_BYTES as u64;
        if frame + (self.ring.len() as u64) < self.frames_sent {
            self.lags_beyond_window += 1;
            return Received::BeyondWindow;
        }
        let lag_us = now_us.saturating_sub(self.ring[self.slot(frame)]);
        self.lag_max_us = self.lag_max_us.max(lag_us);
        Received::LagUs(lag_us)
    }

    /// Compares `payload`, at stream offset `start`, frame by frame with the pattern and
    /// counts each frame that differs once.
    fn check_bytes(&mut self, start: u64, payload: &[u8]) {
        let mut offset = start;
        let mut rest = payload;
        while !rest.is_empty() {
            let frame = offset / FRAME_BYTES as u64;
            let in_frame = FRAME_BYTES - (offset % FRAME_BYTES as u64) as usize;
            let n = rest.len().min(in_frame);
            if !self.pattern.matches(offset, &rest[..n]) && self.last_mismatched_frame != Some(frame) {
                self.last_mismatched_frame = Some(frame);
                self.mismatched_frames += 1;
            }
            offset += n as u64;
            rest = &rest[n..];
        }
    }

    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    pub fn bytes_sent(&self) -> u64 {
        self.frames_sent * FRAME_BYTES as u64
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Audio messages received (a re-chunking server may send more or fewer than frames).
    pub fn messages_received(&self) -> u64 {
        self.messages_received
    }

    /// Frames (160-byte slices of the sent stream) whose echo differed in any byte.
    pub fn mismatched_frames(&self) -> u64 {
        self.mismatched_frames
    }

    /// Bytes received beyond everything sent at the time they arrived.
    pub fn excess_bytes(&self) -> u64 {
        self.excess_bytes
    }

    pub fn lags_beyond_window(&self) -> u64 {
        self.lags_beyond_window
    }

    pub fn lag_max_us(&self) -> u64 {
        self.lag_max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;

    /// A tracker that sent `frames` frames on the 20 ms schedule starting at 0.
    fn sent(seed: u64, planned: u64, frames: u64) -> EchoTracker {
        let mut t = EchoTracker::new(seed, planned);
        for f in 0..frames {
            t.on_sent(f * 20 * MS);
        }
        t
    }

    /// The first `len` bytes of the endless stream from `offset`.
    fn stream(seed: u64, offset: u64, len: usize) -> Vec<u8> {
        let base = test_pattern(seed, PATTERN_BYTES);
        (offset..offset + len as u64).map(|o| base[(o % PATTERN_BYTES as u64) as usize]).collect()
    }

    #[test]
    fn pattern_is_the_sdk_pattern_repeated_and_frames_are_contiguous() {
        let p = Pattern::new(7);
        let base = test_pattern(7, PATTERN_BYTES);
        assert_eq!(&p.bytes[..PATTERN_BYTES], &base[..]);
        // A frame that wraps around the end of the pattern.
        let wrap = (PATTERN_BYTES / FRAME_BYTES) as u64;
        let expected = stream(7, wrap * FRAME_BYTES as u64, FRAME_BYTES);
        assert_eq!(p.frame(wrap), &expected[..]);
        let tail = PATTERN_BYTES - wrap as usize * FRAME_BYTES;
        assert_eq!(&expected[..tail], &base[PATTERN_BYTES - tail..]);
        assert_eq!(&expected[tail..], &base[..FRAME_BYTES - tail]);
        assert!(p.matches(wrap * FRAME_BYTES as u64 + 5, &expected[5..]));
        assert!(!p.matches(wrap * FRAME_BYTES as u64 + 4, &expected[5..]));
        assert_ne!(Pattern::new(8).frame(0), p.frame(0), "seeds give different calls different audio");
    }

    #[test]
    fn in_order_echo_lag_is_from_the_scheduled_send() {
        let mut t = sent(1, 10, 3);
        assert_eq!(t.on_received(5 * MS, &stream(1, 0, 160)), Received::LagUs(5 * MS));
        assert_eq!(t.on_received(27 * MS, &stream(1, 160, 160)), Received::LagUs(7 * MS));
        assert_eq!(t.on_received(41 * MS, &stream(1, 320, 160)), Received::LagUs(MS));
        assert_eq!((t.messages_received(), t.bytes_received(), t.bytes_sent()), (3, 480, 480));
        assert_eq!((t.mismatched_frames(), t.excess_bytes(), t.lag_max_us()), (0, 0, 7 * MS));
    }

    #[test]
    fn rechunked_echo_is_measured_against_the_frame_of_its_last_byte() {
        let mut t = sent(2, 10, 4);
        // Two frames joined: the wait for the second counts from the second's schedule.
        assert_eq!(t.on_received(30 * MS, &stream(2, 0, 320)), Received::LagUs(10 * MS));
        // 100 bytes: ends inside frame 2 (bytes 320..420).
        assert_eq!(t.on_received(45 * MS, &stream(2, 320, 100)), Received::LagUs(5 * MS));
        // 60 more finish frame 2, then 160 cover frame 3: ends in frame 3.
        assert_eq!(t.on_received(46 * MS, &stream(2, 420, 60)), Received::LagUs(6 * MS));
        assert_eq!(t.on_received(61 * MS, &stream(2, 480, 160)), Received::LagUs(MS));
        assert_eq!(t.mismatched_frames(), 0);
        assert_eq!(t.messages_received(), 4);
    }

    #[test]
    fn mismatches_count_once_per_frame_even_when_split() {
        let mut t = sent(3, 10, 4);
        let mut wrong = stream(3, 0, 640);
        wrong[170] ^= 0xFF; // frame 1
        wrong[200] ^= 0xFF; // frame 1 again
        wrong[639] ^= 0x01; // frame 3
        // Frame 1 arrives split across two payloads, both bad.
        t.on_received(MS, &wrong[..180]);
        t.on_received(MS, &wrong[180..300]);
        t.on_received(MS, &wrong[300..]);
        assert_eq!(t.mismatched_frames(), 2);
    }

    #[test]
    fn a_lost_frame_shifts_the_rest_off_the_pattern() {
        let mut t = sent(4, 10, 4);
        t.on_received(MS, &stream(4, 0, 160));
        // Frame 1 lost: frames 2 and 3 arrive where 1 and 2 belong.
        t.on_received(MS, &stream(4, 320, 160));
        t.on_received(MS, &stream(4, 480, 160));
        assert_eq!(t.mismatched_frames(), 2);
        assert_eq!(t.bytes_received(), 480);
    }

    #[test]
    fn bytes_beyond_what_was_sent_are_excess() {
        let mut t = sent(5, 10, 1);
        assert_eq!(t.on_received(MS, &stream(5, 0, 100)), Received::LagUs(MS));
        assert_eq!(t.on_received(MS, &stream(5, 100, 100)), Received::Excess);
        assert_eq!(t.excess_bytes(), 40);
        assert_eq!(t.on_received(MS, &[0; 10]), Received::Excess);
        assert_eq!(t.excess_bytes(), 50);
        assert_eq!(t.on_received(MS, &[]), Received::Empty);
        assert_eq!((t.excess_bytes(), t.messages_received()), (50, 4));
    }

    #[test]
    fn the_window_is_bounded_and_older_echoes_are_counted_not_measured() {
        let mut t = sent(6, 3, 5); // window of 3 frames; frames 0 and 1 overwritten
        assert_eq!(t.ring.len(), 3);
        assert_eq!(t.on_received(100 * MS, &stream(6, 0, 160)), Received::BeyondWindow);
        assert_eq!(t.on_received(100 * MS, &stream(6, 160, 160)), Received::BeyondWindow);
        assert_eq!(t.on_received(100 * MS, &stream(6, 320, 160)), Received::LagUs(60 * MS));
        assert_eq!(t.lags_beyond_window(), 2);
        assert_eq!(EchoTracker::new(1, 1_000_000).ring.len(), WINDOW_FRAMES_MAX);
        assert_eq!(EchoTracker::new(1, 0).ring.len(), 1);
    }

    #[test]
    fn next_payload_walks_the_stream() {
        let mut t = EchoTracker::new(9, 100);
        for f in 0..60 {
            assert_eq!(t.next_payload(), &stream(9, f * 160, 160)[..]);
            t.on_sent(f);
        }
    }
}
