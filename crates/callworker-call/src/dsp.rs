//! Signal helpers for programs and tests: a phase-continuous tone generator whose state is
//! serializable, and a Goertzel detector for measuring tone energy.
//!
//! - [`dtmf`]: in-band DTMF detection on the caller's audio.
//! - [`vad`]: energy-based voice activity detection (barge-in).
//! - [`resample`]: windowed-sinc resampling of prompt audio, at load time.

use serde::{Deserialize, Serialize};

pub mod dtmf;
pub mod resample;
pub mod vad;

/// Peak amplitude of a generated tone: about -10 dBFS (32767 × 10^(-10/20)). Loud enough to
/// hear and detect, quiet enough that G.711 never clips and two summed tones stay in range.
pub const TONE_AMPLITUDE_PEAK: f64 = 10_362.0;

/// Frequencies one generator mixes at most (a DTMF pair).
pub const TONE_FREQS_MAX: usize = 2;

/// DTMF frequency pair (low, high) for a digit, `None` for anything else.
///
/// The standard 4×4 keypad grid: rows 697/770/852/941 Hz, columns 1209/1336/1477/1633 Hz,
/// including the rarely used `A`–`D` column.
pub fn dtmf_freqs_hz(digit: char) -> Option<(u32, u32)> {
    const ROWS_HZ: [u32; 4] = [697, 770, 852, 941];
    const COLS_HZ: [u32; 4] = [1209, 1336, 1477, 1633];
    let (row, col) = match digit {
        '1' => (0, 0),
        '2' => (0, 1),
        '3' => (0, 2),
        'A' => (0, 3),
        '4' => (1, 0),
        '5' => (1, 1),
        '6' => (1, 2),
        'B' => (1, 3),
        '7' => (2, 0),
        '8' => (2, 1),
        '9' => (2, 2),
        'C' => (2, 3),
        '*' => (3, 0),
        '0' => (3, 1),
        '#' => (3, 2),
        'D' => (3, 3),
        _ => return None,
    };
    Some((ROWS_HZ[row], COLS_HZ[col]))
}

/// Whether `digit` is a DTMF digit (`0-9`, `*`, `#`, `A-D`).
pub fn is_dtmf_digit(digit: char) -> bool {
    dtmf_freqs_hz(digit).is_some()
}

/// Relative power of `freq_hz` in `samples` at `sample_rate_hz` (Goertzel), normalised so a
/// full-scale sine at that frequency gives about 1.0 and silence gives 0.0.
///
/// The raw Goertzel magnitude² of a sine of amplitude `A` over `N` samples is about
/// `(A·N/2)²`, so dividing by `(32768·N/2)²` makes the result `(A/32768)²`: a -10 dBFS tone
/// reads about 0.1, and a pair of half-amplitude tones about 0.025 each.
pub fn goertzel_power(samples: &[i16], sample_rate_hz: u32, freq_hz: f64) -> f64 {
    if samples.is_empty() || sample_rate_hz == 0 {
        return 0.0;
    }
    let omega = 2.0 * std::f64::consts::PI * freq_hz / f64::from(sample_rate_hz);
    let coeff = 2.0 * omega.cos();
    let (mut s_prev, mut s_prev2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s = f64::from(x) + coeff * s_prev - s_prev2;
        s_prev2 = s_prev;
        s_prev = s;
    }
    let power = s_prev * s_prev + s_prev2 * s_prev2 - coeff * s_prev * s_prev2;
    let full_scale = 32768.0 * samples.len() as f64 / 2.0;
    power / (full_scale * full_scale)
}

/// A phase-continuous generator of up to [`TONE_FREQS_MAX`] summed sines.
///
/// Each phase is kept as an exact integer, `phase / sample_rate_hz` cycles, advanced by
/// `freq_hz` per sample modulo the sample rate. Integer phases never drift, compare exactly
/// after a checkpoint round trip, and stay continuous when the frequency changes between
/// segments, so a resumed call continues the waveform without a click.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToneGenerator {
    /// Phase of each sine, in units of 1/`sample_rate_hz` cycle.
    phases: [u32; TONE_FREQS_MAX],
}

impl ToneGenerator {
    pub fn new() -> ToneGenerator {
        ToneGenerator::default()
    }

    /// Appends `samples` samples of `freqs_hz` (at most [`TONE_FREQS_MAX`] are used; empty
    /// means silence) at `sample_rate_hz` to `out`. Two frequencies are summed at half
    /// amplitude each so the sum never exceeds [`TONE_AMPLITUDE_PEAK`].
    pub fn fill(&mut self, freqs_hz: &[u32], sample_rate_hz: u32, samples: usize, out: &mut Vec<i16>) {
        let freqs = &freqs_hz[..freqs_hz.len().min(TONE_FREQS_MAX)];
        if freqs.is_empty() || sample_rate_hz == 0 {
            out.extend(std::iter::repeat_n(0i16, samples));
            return;
        }
        let amplitude = TONE_AMPLITUDE_PEAK / freqs.len() as f64;
        let rate = u64::from(sample_rate_hz);
        let radians_per_unit = 2.0 * std::f64::consts::PI / rate as f64;
        out.reserve(samples);
        for _ in 0..samples {
            let mut value = 0.0f64;
            for (phase, &freq) in self.phases.iter_mut().zip(freqs) {
                value += amplitude * (f64::from(*phase) * radians_per_unit).sin();
                *phase = ((u64::from(*phase) + u64::from(freq)) % rate) as u32;
            }
            // |value| <= TONE_AMPLITUDE_PEAK < i16::MAX, so the cast never saturates.
            out.push(value.round() as i16);
        }
    }

    /// Advances the phases as if `samples` samples of `freqs_hz` had been generated.
    pub fn skip(&mut self, freqs_hz: &[u32], sample_rate_hz: u32, samples: u64) {
        if sample_rate_hz == 0 {
            return;
        }
        let rate = u64::from(sample_rate_hz);
        for (phase, &freq) in self.phases.iter_mut().zip(freqs_hz) {
            let step = (u64::from(freq) % rate) * (samples % rate) % rate;
            *phase = ((u64::from(*phase) + step) % rate) as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_grid_matches_the_standard() {
        let table = [
            ('1', 697, 1209),
            ('2', 697, 1336),
            ('3', 697, 1477),
            ('A', 697, 1633),
            ('4', 770, 1209),
            ('5', 770, 1336),
            ('6', 770, 1477),
            ('B', 770, 1633),
            ('7', 852, 1209),
            ('8', 852, 1336),
            ('9', 852, 1477),
            ('C', 852, 1633),
            ('*', 941, 1209),
            ('0', 941, 1336),
            ('#', 941, 1477),
            ('D', 941, 1633),
        ];
        for (digit, low, high) in table {
            assert_eq!(dtmf_freqs_hz(digit), Some((low, high)), "digit {digit}");
        }
        for bad in ['a', 'E', ' ', 'x', '\0'] {
            assert_eq!(dtmf_freqs_hz(bad), None);
        }
    }

    #[test]
    fn goertzel_is_normalised_to_full_scale() {
        let rate = 8000;
        let full: Vec<i16> = (0..800)
            .map(|n| (32767.0 * (2.0 * std::f64::consts::PI * 1000.0 * n as f64 / 8000.0).sin()) as i16)
            .collect();
        let p = goertzel_power(&full, rate, 1000.0);
        assert!((p - 1.0).abs() < 0.02, "full scale reads {p}");
        assert!(goertzel_power(&full, rate, 1500.0) < 0.001);
        assert_eq!(goertzel_power(&[0; 160], rate, 1000.0), 0.0);
        assert_eq!(goertzel_power(&[], rate, 1000.0), 0.0);
    }

    #[test]
    fn generator_is_phase_continuous_across_calls() {
        let mut whole = ToneGenerator::new();
        let mut a = Vec::new();
        whole.fill(&[440], 8000, 320, &mut a);
        let mut split = ToneGenerator::new();
        let mut b = Vec::new();
        split.fill(&[440], 8000, 160, &mut b);
        split.fill(&[440], 8000, 160, &mut b);
        assert_eq!(a, b);
        let mut skipped = ToneGenerator::new();
        skipped.skip(&[440], 8000, 160);
        let mut c = Vec::new();
        skipped.fill(&[440], 8000, 160, &mut c);
        assert_eq!(&a[160..], &c[..]);
    }

    #[test]
    fn generator_level_is_about_minus_10_dbfs() {
        let mut g = ToneGenerator::new();
        let mut one = Vec::new();
        g.fill(&[1000], 8000, 800, &mut one);
        let p = goertzel_power(&one, 8000, 1000.0);
        assert!((p - 0.1).abs() < 0.01, "single tone reads {p}");
        let mut g = ToneGenerator::new();
        let mut pair = Vec::new();
        g.fill(&[770, 1336], 8000, 800, &mut pair);
        for f in [770.0, 1336.0] {
            let p = goertzel_power(&pair, 8000, f);
            assert!((p - 0.025).abs() < 0.005, "{f} Hz reads {p}");
        }
        assert!(pair.iter().all(|s| s.unsigned_abs() <= TONE_AMPLITUDE_PEAK as u16 + 1));
        let mut silence = Vec::new();
        g.fill(&[], 8000, 160, &mut silence);
        assert!(silence.iter().all(|&s| s == 0));
    }
}
