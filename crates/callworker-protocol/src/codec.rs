//! Audio encodings carried by callworker: G.711 μ-law (PCMU), G.711 A-law (PCMA) and
//! 16-bit linear PCM (L16, little-endian), at 8 kHz or 16 kHz, mono.
//!
//! G.711 conversions follow ITU-T G.711 as implemented by the classic Sun Microsystems
//! `g711.c` reference: decoding is a lookup in a 256-entry table computed at compile time
//! (`const fn`), encoding is a segment computation (a leading-zero count and two shifts),
//! which is as fast as a table and needs no 16K-entry array in cache. Resampling between
//! 8 kHz and 16 kHz is for tone/prompt generation, not for the echo path, which passes
//! payload bytes through untouched: μ-law has two codes for zero (`0x7F` and `0xFF`), so
//! decode → encode is not the identity on bytes.

use serde::{Deserialize, Serialize};

/// How audio bytes are encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// G.711 μ-law, one byte per sample (Twilio's `audio/x-mulaw`).
    Pcmu,
    /// G.711 A-law, one byte per sample.
    Pcma,
    /// Signed 16-bit linear PCM, little-endian, two bytes per sample.
    L16,
}

impl Encoding {
    /// Bytes per sample (1 for G.711, 2 for L16).
    pub const fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::Pcmu | Encoding::Pcma => 1,
            Encoding::L16 => 2,
        }
    }
}

/// Supported sample rates.
pub const SAMPLE_RATES_HZ: [u32; 2] = [8_000, 16_000];

/// The μ-law code for silence the encoder produces (`linear_to_ulaw(0)`).
pub const ULAW_SILENCE: u8 = 0xFF;
/// The A-law code for silence the encoder produces (`linear_to_alaw(0)`).
pub const ALAW_SILENCE: u8 = 0xD5;

/// Audio format of one direction of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AudioFormat {
    pub encoding: Encoding,
    pub sample_rate_hz: u32,
}

/// Errors from audio format validation and payload conversion.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported sample rate {0} Hz (supported: 8000, 16000)")]
    UnsupportedSampleRate(u32),
    #[error("L16 payload has an odd length of {0} bytes")]
    OddL16Length(usize),
}

impl AudioFormat {
    /// Twilio Media Streams' only format: μ-law at 8 kHz.
    pub const TWILIO: AudioFormat = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };

    /// Checks the sample rate is one callworker supports.
    pub fn validate(&self) -> Result<(), CodecError> {
        if SAMPLE_RATES_HZ.contains(&self.sample_rate_hz) {
            Ok(())
        } else {
            Err(CodecError::UnsupportedSampleRate(self.sample_rate_hz))
        }
    }

    /// Bytes per sample for this encoding (1 for G.711, 2 for L16).
    pub fn bytes_per_sample(&self) -> usize {
        self.encoding.bytes_per_sample()
    }

    /// Payload bytes of `duration_ms` of audio (160 for 20 ms of 8 kHz μ-law), rounded down
    /// to whole samples.
    pub fn bytes_for_ms(&self, duration_ms: u32) -> usize {
        // u64 cannot overflow: u32 × u32 fits, and the result is divided before widening.
        let samples = u64::from(self.sample_rate_hz) * u64::from(duration_ms) / 1_000;
        let bytes = samples.saturating_mul(self.bytes_per_sample() as u64);
        usize::try_from(bytes).unwrap_or(usize::MAX)
    }

    /// Duration in milliseconds of `bytes` of payload, rounded down (0 for an invalid
    /// sample rate of 0 Hz rather than a division by zero).
    pub fn ms_for_bytes(&self, bytes: usize) -> u64 {
        let samples = (bytes / self.bytes_per_sample()) as u64;
        samples.saturating_mul(1_000).checked_div(u64::from(self.sample_rate_hz)).unwrap_or(0)
    }
}

/// Bias added to the magnitude before μ-law segment search (G.711; Sun `BIAS`).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude μ-law encodes; above it the top code is used (Sun `CLIP`), chosen so
/// that `CLIP + BIAS` is exactly `0x7FFF`, the end of segment 7.
const ULAW_CLIP: i32 = 32_635;

const fn ulaw_decode_one(byte: u8) -> i16 {
    let u = !byte;
    let segment = (u & 0x70) >> 4;
    let t = ((((u & 0x0F) as i32) << 3) + ULAW_BIAS) << segment;
    if u & 0x80 != 0 { (ULAW_BIAS - t) as i16 } else { (t - ULAW_BIAS) as i16 }
}

const fn alaw_decode_one(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let segment = (a & 0x70) >> 4;
    match segment {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (segment - 1),
    }
    if a & 0x80 != 0 { t as i16 } else { -t as i16 }
}

/// Which G.711 law a decode table is built for (function pointers cannot be called in a
/// `const fn`).
#[derive(Clone, Copy)]
enum Law {
    Ulaw,
    Alaw,
}

const fn build_table(law: Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = match law {
            Law::Ulaw => ulaw_decode_one(i as u8),
            Law::Alaw => alaw_decode_one(i as u8),
        };
        i += 1;
    }
    table
}

/// μ-law code → linear sample, computed at compile time.
static ULAW_DECODE: [i16; 256] = build_table(Law::Ulaw);
/// A-law code → linear sample, computed at compile time.
static ALAW_DECODE: [i16; 256] = build_table(Law::Alaw);

/// Decodes one μ-law byte to a linear sample.
#[inline]
pub fn ulaw_to_linear(byte: u8) -> i16 {
    ULAW_DECODE[usize::from(byte)]
}

/// Encodes one linear sample to μ-law.
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    let mut magnitude = i32::from(sample);
    let sign: u8 = if magnitude < 0 {
        magnitude = -magnitude;
        0x80
    } else {
        0
    };
    magnitude = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // Segment = position of the highest set bit above bit 7 (Sun's `exp_lut`);
    // magnitude ≤ 0x7FFF so the segment is at most 7.
    let high = (magnitude >> 7) as u32;
    let segment = if high == 0 { 0 } else { 31 - high.leading_zeros() };
    let mantissa = ((magnitude >> (segment + 3)) & 0x0F) as u8;
    !(sign | ((segment as u8) << 4) | mantissa)
}

/// Decodes one A-law byte to a linear sample.
#[inline]
pub fn alaw_to_linear(byte: u8) -> i16 {
    ALAW_DECODE[usize::from(byte)]
}

/// Encodes one linear sample to A-law.
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on 13 bits; negative values use the one's complement magnitude so that
    // -1..-8 land on the smallest negative code rather than wrapping (Sun g711.c, 13-bit
    // revision).
    let scaled = i32::from(sample) >> 3;
    let (mask, magnitude) = if scaled >= 0 { (0xD5u8, scaled) } else { (0x55u8, -scaled - 1) };
    // magnitude ≤ 0xFFF, so the segment is at most 7.
    let segment = if magnitude <= 0x1F { 0 } else { 27 - (magnitude as u32).leading_zeros() };
    let quantized = if segment < 2 { (magnitude >> 1) & 0x0F } else { (magnitude >> segment) & 0x0F };
    (((segment as u8) << 4) | quantized as u8) ^ mask
}

/// Decodes `payload` in `encoding` and appends the samples to `out`.
///
/// On error nothing is appended.
pub fn decode(encoding: Encoding, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
    match encoding {
        Encoding::Pcmu => out.extend(payload.iter().map(|&b| ulaw_to_linear(b))),
        Encoding::Pcma => out.extend(payload.iter().map(|&b| alaw_to_linear(b))),
        Encoding::L16 => {
            if !payload.len().is_multiple_of(2) {
                return Err(CodecError::OddL16Length(payload.len()));
            }
            out.extend(payload.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])));
        }
    }
    Ok(())
}

/// Encodes `samples` in `encoding` and appends the bytes to `out`.
pub fn encode(encoding: Encoding, samples: &[i16], out: &mut Vec<u8>) {
    match encoding {
        Encoding::Pcmu => out.extend(samples.iter().map(|&s| linear_to_ulaw(s))),
        Encoding::Pcma => out.extend(samples.iter().map(|&s| linear_to_alaw(s))),
        Encoding::L16 => {
            out.reserve(samples.len() * 2);
            for &s in samples {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
    }
}

/// Resamples mono PCM between 8 kHz and 16 kHz (either direction, or a copy when equal),
/// appending to `out`.
///
/// Each call is stateless (no filter memory across frames): upsampling interpolates linearly
/// between neighbours and repeats the last sample; downsampling averages pairs (a two-tap
/// low-pass, enough for tones and prompts) and keeps a trailing odd sample as is.
/// On error nothing is appended.
pub fn resample(samples: &[i16], from_hz: u32, to_hz: u32, out: &mut Vec<i16>) -> Result<(), CodecError> {
    for rate in [from_hz, to_hz] {
        if !SAMPLE_RATES_HZ.contains(&rate) {
            return Err(CodecError::UnsupportedSampleRate(rate));
        }
    }
    if from_hz == to_hz {
        out.extend_from_slice(samples);
    } else if from_hz < to_hz {
        out.reserve(samples.len() * 2);
        for (i, &s) in samples.iter().enumerate() {
            let next = samples.get(i + 1).copied().unwrap_or(s);
            out.push(s);
            out.push(midpoint(s, next));
        }
    } else {
        out.reserve(samples.len().div_ceil(2));
        let mut pairs = samples.chunks_exact(2);
        for pair in &mut pairs {
            out.push(midpoint(pair[0], pair[1]));
        }
        out.extend_from_slice(pairs.remainder());
    }
    Ok(())
}

/// Mean of two samples, computed without overflow (always within i16 range).
fn midpoint(a: i16, b: i16) -> i16 {
    ((i32::from(a) + i32::from(b)) / 2) as i16
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ulaw_known_vectors() {
        let cases: &[(u8, i16)] = &[
            (0xFF, 0),
            (0x7F, 0),
            (0x00, -32124),
            (0x80, 32124),
            (0xFE, 8),
            (0x7E, -8),
            (0xEF, 132),
            (0x6F, -132),
        ];
        for &(byte, linear) in cases {
            assert_eq!(ulaw_to_linear(byte), linear, "ulaw 0x{byte:02x}");
        }
        let enc: &[(i16, u8)] = &[
            (0, 0xFF),
            (-1, 0x7F),
            (i16::MAX, 0x80),
            (i16::MIN, 0x00),
            (32124, 0x80),
            (-32124, 0x00),
            (8, 0xFE),
            (-8, 0x7E),
        ];
        for &(linear, byte) in enc {
            assert_eq!(linear_to_ulaw(linear), byte, "ulaw encode {linear}");
        }
    }

    #[test]
    fn alaw_known_vectors() {
        let cases: &[(u8, i16)] =
            &[(0xD5, 8), (0x55, -8), (0x2A, -32256), (0xAA, 32256), (0xD4, 24), (0x54, -24)];
        for &(byte, linear) in cases {
            assert_eq!(alaw_to_linear(byte), linear, "alaw 0x{byte:02x}");
        }
        let enc: &[(i16, u8)] =
            &[(0, 0xD5), (-1, 0x55), (-8, 0x55), (7, 0xD5), (i16::MAX, 0xAA), (i16::MIN, 0x2A)];
        for &(linear, byte) in enc {
            assert_eq!(linear_to_alaw(linear), byte, "alaw encode {linear}");
        }
    }

    #[test]
    fn every_code_survives_decode_encode_decode() {
        for b in 0..=255u8 {
            let u = ulaw_to_linear(b);
            assert_eq!(ulaw_to_linear(linear_to_ulaw(u)), u, "ulaw 0x{b:02x}");
            // Only the negative zero is not reproduced byte for byte.
            let expected = if b == 0x7F { 0xFF } else { b };
            assert_eq!(linear_to_ulaw(u), expected, "ulaw bytes 0x{b:02x}");

            let a = alaw_to_linear(b);
            assert_eq!(alaw_to_linear(linear_to_alaw(a)), a, "alaw 0x{b:02x}");
            assert_eq!(linear_to_alaw(a), b, "alaw bytes 0x{b:02x}");
        }
    }

    #[test]
    fn decode_is_monotonic_in_code_order() {
        // μ-law: magnitude grows as the complemented low 7 bits grow; bit 7 clear = negative.
        // A-law: magnitude grows with (code ^ 0x55) & 0x7F; bit 7 of that set = positive.
        for positive in [false, true] {
            let mut prev_u = -1i32;
            let mut prev_a = -1i32;
            for index in 0..128u8 {
                let u_code = if positive { 0xFF - index } else { 0x7F - index };
                let u = i32::from(ulaw_to_linear(u_code)).abs();
                assert!(u > prev_u || (index == 0 && u == 0), "ulaw 0x{u_code:02x}");
                prev_u = u;

                let a_code = (index | if positive { 0x80 } else { 0 }) ^ 0x55;
                let a = i32::from(alaw_to_linear(a_code));
                assert_eq!(a > 0, positive, "alaw sign 0x{a_code:02x}");
                assert!(a.abs() > prev_a, "alaw 0x{a_code:02x}");
                prev_a = a.abs();
            }
        }
    }

    #[test]
    fn audio_format_sizes() {
        let cases: &[(Encoding, u32, u32, usize)] = &[
            (Encoding::Pcmu, 8_000, 20, 160),
            (Encoding::Pcma, 8_000, 20, 160),
            (Encoding::L16, 8_000, 20, 320),
            (Encoding::L16, 16_000, 20, 640),
            (Encoding::Pcmu, 16_000, 10, 160),
            (Encoding::Pcmu, 8_000, 0, 0),
        ];
        for &(encoding, sample_rate_hz, ms, bytes) in cases {
            let f = AudioFormat { encoding, sample_rate_hz };
            assert_eq!(f.validate(), Ok(()));
            assert_eq!(f.bytes_for_ms(ms), bytes, "{f:?} {ms} ms");
            assert_eq!(f.ms_for_bytes(bytes), u64::from(ms), "{f:?} {bytes} B");
        }
        assert_eq!(AudioFormat::TWILIO.ms_for_bytes(161), 20);
        assert_eq!(AudioFormat::TWILIO.bytes_per_sample(), 1);
        for rate in [0, 11_025, 44_100, 48_000] {
            let f = AudioFormat { encoding: Encoding::L16, sample_rate_hz: rate };
            assert_eq!(f.validate(), Err(CodecError::UnsupportedSampleRate(rate)));
        }
        let zero = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 0 };
        assert_eq!(zero.ms_for_bytes(160), 0);
    }

    #[test]
    fn l16_is_little_endian_and_rejects_odd_lengths() {
        let mut bytes = Vec::new();
        encode(Encoding::L16, &[1, -2, 0x1234], &mut bytes);
        assert_eq!(bytes, [0x01, 0x00, 0xFE, 0xFF, 0x34, 0x12]);
        let mut samples = vec![7];
        decode(Encoding::L16, &bytes, &mut samples).unwrap();
        assert_eq!(samples, [7, 1, -2, 0x1234]);
        assert_eq!(decode(Encoding::L16, &[1, 2, 3], &mut samples), Err(CodecError::OddL16Length(3)));
        assert_eq!(samples.len(), 4, "nothing appended on error");
    }

    #[test]
    fn g711_slices_match_per_sample_functions() {
        let samples = [0i16, 1, -1, 1000, -1000, i16::MAX, i16::MIN];
        let mut u = Vec::new();
        encode(Encoding::Pcmu, &samples, &mut u);
        let mut a = Vec::new();
        encode(Encoding::Pcma, &samples, &mut a);
        for (i, &s) in samples.iter().enumerate() {
            assert_eq!(u[i], linear_to_ulaw(s));
            assert_eq!(a[i], linear_to_alaw(s));
        }
        let mut back = Vec::new();
        decode(Encoding::Pcmu, &u, &mut back).unwrap();
        decode(Encoding::Pcma, &a, &mut back).unwrap();
        assert_eq!(back.len(), 14);
        assert_eq!(back[0], ulaw_to_linear(u[0]));
        assert_eq!(back[7], alaw_to_linear(a[0]));
    }

    #[test]
    fn resample_table() {
        let cases: &[(&[i16], u32, u32, &[i16])] = &[
            (&[0, 100, 200], 8_000, 16_000, &[0, 50, 100, 150, 200, 200]),
            (&[0, 50, 100, 150, 201], 16_000, 8_000, &[25, 125, 201]),
            (&[1, 2, 3], 8_000, 8_000, &[1, 2, 3]),
            (&[1, 2, 3], 16_000, 16_000, &[1, 2, 3]),
            (&[], 8_000, 16_000, &[]),
            (&[], 16_000, 8_000, &[]),
            (&[i16::MAX, i16::MAX], 16_000, 8_000, &[i16::MAX]),
            (&[i16::MIN, i16::MAX], 8_000, 16_000, &[i16::MIN, 0, i16::MAX, i16::MAX]),
        ];
        for &(input, from, to, expected) in cases {
            let mut out = Vec::new();
            resample(input, from, to, &mut out).unwrap();
            assert_eq!(out, expected, "{input:?} {from}->{to}");
        }
        let mut out = vec![9];
        assert_eq!(resample(&[1], 8_000, 44_100, &mut out), Err(CodecError::UnsupportedSampleRate(44_100)));
        assert_eq!(resample(&[1], 0, 8_000, &mut out), Err(CodecError::UnsupportedSampleRate(0)));
        assert_eq!(out, [9]);
    }

    proptest! {
        #[test]
        fn encode_decode_stays_within_quantization_step(sample in any::<i16>()) {
            let s = i32::from(sample);
            let u = i32::from(ulaw_to_linear(linear_to_ulaw(sample)));
            let a = i32::from(alaw_to_linear(linear_to_alaw(sample)));
            // Half of the largest step (1024 for μ-law, 1024 for A-law segment 7) plus the
            // clip region at the extremes.
            prop_assert!((u - s).abs() <= 1024 || s.abs() > ULAW_CLIP, "ulaw {s} -> {u}");
            prop_assert!((a - s).abs() <= 1024, "alaw {s} -> {a}");
            // Small signals stay small: the error scales with the segment.
            prop_assert!((u - s).abs() <= s.abs() / 16 + 8 || s.abs() > ULAW_CLIP);
            prop_assert!((a - s).abs() <= s.abs() / 16 + 16);
        }

        #[test]
        fn encoders_are_monotonic(x in any::<i16>(), y in any::<i16>()) {
            let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
            prop_assert!(ulaw_to_linear(linear_to_ulaw(lo)) <= ulaw_to_linear(linear_to_ulaw(hi)));
            prop_assert!(alaw_to_linear(linear_to_alaw(lo)) <= alaw_to_linear(linear_to_alaw(hi)));
        }

        #[test]
        fn l16_round_trips(samples in proptest::collection::vec(any::<i16>(), 0..400)) {
            let mut bytes = Vec::new();
            encode(Encoding::L16, &samples, &mut bytes);
            prop_assert_eq!(bytes.len(), samples.len() * 2);
            let mut back = Vec::new();
            decode(Encoding::L16, &bytes, &mut back).unwrap();
            prop_assert_eq!(back, samples);
        }

        #[test]
        fn resample_lengths_and_bounds(samples in proptest::collection::vec(any::<i16>(), 0..400)) {
            let mut up = Vec::new();
            resample(&samples, 8_000, 16_000, &mut up).unwrap();
            prop_assert_eq!(up.len(), samples.len() * 2);
            let mut down = Vec::new();
            resample(&up, 16_000, 8_000, &mut down).unwrap();
            prop_assert_eq!(down.len(), samples.len());
            let lo = samples.iter().copied().min().unwrap_or(0);
            let hi = samples.iter().copied().max().unwrap_or(0);
            prop_assert!(up.iter().chain(&down).all(|&s| (lo..=hi).contains(&s)));
        }
    }
}
