//! Pure per-call bookkeeping of the `failover` mode: what frame `seq` carries, which client
//! frames came back in the echo (by client sequence number), and whether a recording holds
//! exactly the frames sent. No clock, no sockets.
//!
//! Why the client sequence number rides in the payload: across a failover the server audio
//! is renumbered by whichever worker drives the call, so server `seq` cannot say which
//! caller frame an echoed frame is. The echo program returns each applied frame byte for
//! byte, so a frame that names itself tells exactly which caller audio was echoed: twice
//! (a duplicate the caller hears), never (a gap) or altered (a mismatch).

use crate::echo::{FRAME_BYTES, Pattern};

/// Bytes at the start of each payload that carry its client `seq` (little-endian).
pub const SEQ_BYTES: usize = 8;
/// Most frames a call may plan: the bitmap of echoed frames is sized for the plan (1 h of
/// 20 ms frames is 180,000 frames, a 22.5 KB bitmap).
pub const FRAMES_PLANNED_MAX: u64 = 180_000;

/// The audio a call sends: frame `seq` (from 1) is the call's cyclic test pattern at frame
/// `seq − 1`, with its first [`SEQ_BYTES`] replaced by `seq`.
#[derive(Debug, Clone)]
pub struct FramePayloads {
    pattern: Pattern,
}

impl FramePayloads {
    pub fn new(seed: u64) -> FramePayloads {
        FramePayloads { pattern: Pattern::new(seed) }
    }

    /// Writes frame `seq` into `out` (no allocation: the per-frame path uses one array).
    pub fn write(&self, seq: u64, out: &mut [u8; FRAME_BYTES]) {
        out.copy_from_slice(self.pattern.frame(seq.saturating_sub(1)));
        out[..SEQ_BYTES].copy_from_slice(&seq.to_le_bytes());
    }

    /// Whether `data` is exactly frame `seq`.
    pub fn is_frame(&self, seq: u64, data: &[u8]) -> bool {
        let mut expected = [0u8; FRAME_BYTES];
        self.write(seq, &mut expected);
        data == expected
    }

    /// The client `seq` a payload names, when it is frame-sized.
    pub fn seq_of(payload: &[u8]) -> Option<u64> {
        if payload.len() != FRAME_BYTES {
            return None;
        }
        let mut seq = [0u8; SEQ_BYTES];
        seq.copy_from_slice(&payload[..SEQ_BYTES]);
        Some(u64::from_le_bytes(seq))
    }
}

/// Which client frames came back in the echo, by the `seq` each echoed payload names.
#[derive(Debug)]
pub struct EchoSeqs {
    payloads: FramePayloads,
    /// Bit `seq − 1` is set once frame `seq` was echoed. Sized for the plan (bounded by
    /// [`FRAMES_PLANNED_MAX`]).
    seen: Box<[u64]>,
    frames_planned: u64,
    echoed: u64,
    highest: u64,
    duplicates: u64,
    /// Echoed payloads that are not a frame this call sends (wrong size, unknown `seq`, or
    /// bytes that differ from the frame they name).
    mismatched: u64,
}

impl EchoSeqs {
    pub fn new(seed: u64, frames_planned: u64) -> EchoSeqs {
        let frames_planned = frames_planned.min(FRAMES_PLANNED_MAX);
        let words = usize::try_from(frames_planned.div_ceil(64)).unwrap_or(0).max(1);
        EchoSeqs {
            payloads: FramePayloads::new(seed),
            seen: vec![0; words].into_boxed_slice(),
            frames_planned,
            echoed: 0,
            highest: 0,
            duplicates: 0,
            mismatched: 0,
        }
    }

    pub fn payloads(&self) -> &FramePayloads {
        &self.payloads
    }

    /// Records one echoed payload.
    pub fn on_echo(&mut self, payload: &[u8]) {
        let seq = match FramePayloads::seq_of(payload) {
            Some(seq) if (1..=self.frames_planned).contains(&seq) && self.payloads.is_frame(seq, payload) => {
                seq
            }
            _ => {
                self.mismatched += 1;
                return;
            }
        };
        // Both below the bitmap's length: seq − 1 < frames_planned.
        let (word, bit) = (((seq - 1) / 64) as usize, (seq - 1) % 64);
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.echoed += 1;
        self.highest = self.highest.max(seq);
    }

    /// Distinct frames echoed.
    pub fn echoed(&self) -> u64 {
        self.echoed
    }

    /// Frames echoed more than once (each extra copy counts).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn mismatched(&self) -> u64 {
        self.mismatched
    }

    /// Frames never echoed although a later frame was: holes in the caller's echo.
    pub fn gaps(&self) -> u64 {
        self.highest - self.echoed
    }

    /// Frames sent after the last one echoed (the echo still in flight at hang-up, or lost).
    pub fn missing_tail(&self, frames_sent: u64) -> u64 {
        frames_sent.saturating_sub(self.highest)
    }
}

/// The data chunk of a RIFF/WAVE file, if the file is well formed up to it.
pub fn wav_data(wav: &[u8]) -> Option<&[u8]> {
    if wav.len() < 12 || &wav[..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12;
    while at + 8 <= wav.len() {
        let id = &wav[at..at + 4];
        let len = u32::from_le_bytes([wav[at + 4], wav[at + 5], wav[at + 6], wav[at + 7]]) as usize;
        let body = wav.get(at + 8..at.checked_add(8)?.checked_add(len)?)?;
        if id == b"data" {
            return Some(body);
        }
        // Chunks are padded to an even length.
        at += 8 + len + len % 2;
    }
    None
}

/// How a recording differs from the frames `1..=frames_sent`; `None` when it is exact.
pub fn recording_mismatch(payloads: &FramePayloads, frames_sent: u64, data: &[u8]) -> Option<String> {
    let expected_bytes = frames_sent * FRAME_BYTES as u64;
    let mut differing = 0u64;
    let mut first = None;
    for (index, chunk) in data.chunks(FRAME_BYTES).enumerate() {
        let seq = index as u64 + 1;
        if seq > frames_sent {
            break;
        }
        if !payloads.is_frame(seq, chunk) {
            differing += 1;
            first.get_or_insert(seq);
        }
    }
    let len = data.len() as u64;
    match (len == expected_bytes, first) {
        (true, None) => None,
        (true, Some(seq)) => Some(format!("{differing} frames differ, the first is seq {seq}")),
        (false, None) => {
            Some(format!("{len} bytes recorded, {expected_bytes} sent; the common prefix matches"))
        }
        (false, Some(seq)) => Some(format!(
            "{len} bytes recorded, {expected_bytes} sent; {differing} frames differ, the first is seq {seq}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(p: &FramePayloads, seq: u64) -> Vec<u8> {
        let mut out = [0u8; FRAME_BYTES];
        p.write(seq, &mut out);
        out.to_vec()
    }

    #[test]
    fn frames_name_their_seq_and_keep_the_pattern() {
        let p = FramePayloads::new(3);
        let f = frame(&p, 42);
        assert_eq!(FramePayloads::seq_of(&f), Some(42));
        assert_eq!(&f[SEQ_BYTES..], &Pattern::new(3).frame(41)[SEQ_BYTES..]);
        assert!(p.is_frame(42, &f));
        assert!(!p.is_frame(43, &f));
        assert!(!FramePayloads::new(4).is_frame(42, &f));
        assert_eq!(FramePayloads::seq_of(&f[..100]), None);
    }

    #[test]
    fn echo_counts_duplicates_gaps_tail_and_mismatches() {
        let p = FramePayloads::new(1);
        let mut e = EchoSeqs::new(1, 100);
        for seq in [1, 2, 3, 2, 5, 6, 6, 6] {
            e.on_echo(&frame(&p, seq));
        }
        let mut bad = frame(&p, 7);
        bad[100] ^= 1;
        e.on_echo(&bad);
        e.on_echo(&frame(&p, 101)); // beyond the plan
        e.on_echo(&[0; 10]);
        assert_eq!((e.echoed(), e.duplicates(), e.gaps(), e.mismatched()), (5, 3, 1, 3));
        assert_eq!(e.missing_tail(10), 4);
        // A late frame fills its gap and is not a duplicate.
        e.on_echo(&frame(&p, 4));
        assert_eq!((e.echoed(), e.duplicates(), e.gaps()), (6, 3, 0));
    }

    #[test]
    fn the_bitmap_is_bounded_by_the_plan() {
        assert_eq!(EchoSeqs::new(1, 0).seen.len(), 1);
        assert_eq!(EchoSeqs::new(1, 64).seen.len(), 1);
        assert_eq!(EchoSeqs::new(1, 65).seen.len(), 2);
        assert_eq!(EchoSeqs::new(1, u64::MAX).seen.len(), (FRAMES_PLANNED_MAX / 64) as usize + 1);
    }

    fn wav(data: &[u8]) -> Vec<u8> {
        let mut w = b"RIFF\0\0\0\0WAVEfmt \x12\0\0\0".to_vec();
        w.extend_from_slice(&[7, 0, 1, 0, 0x40, 0x1f, 0, 0, 0x40, 0x1f, 0, 0, 1, 0, 8, 0, 0, 0]);
        w.extend_from_slice(b"fact\x04\0\0\0\0\0\0\0data");
        w.extend_from_slice(&(data.len() as u32).to_le_bytes());
        w.extend_from_slice(data);
        w
    }

    #[test]
    fn recordings_are_compared_frame_by_frame() {
        let p = FramePayloads::new(9);
        let all: Vec<u8> = (1..=5).flat_map(|s| frame(&p, s)).collect();
        let file = wav(&all);
        assert_eq!(wav_data(&file), Some(&all[..]));
        assert_eq!(wav_data(b"RIFX"), None);
        assert_eq!(recording_mismatch(&p, 5, &all), None);
        let short = recording_mismatch(&p, 6, &all).unwrap();
        assert!(short.contains("800 bytes recorded, 960 sent; the common prefix"), "{short}");
        let mut altered = all.clone();
        altered[2 * FRAME_BYTES + 9] ^= 0xFF;
        let why = recording_mismatch(&p, 5, &altered).unwrap();
        assert_eq!(why, "1 frames differ, the first is seq 3");
        // A frame recorded twice shifts everything after it.
        let mut doubled: Vec<u8> = (1..=3).flat_map(|s| frame(&p, s)).collect();
        doubled.extend((3..=5).flat_map(|s| frame(&p, s)));
        let why = recording_mismatch(&p, 5, &doubled).unwrap();
        assert!(why.contains("960 bytes recorded, 800 sent; 2 frames differ, the first is seq 4"), "{why}");
    }
}
