//! In-band DTMF detection: Goertzel filters at the eight DTMF frequencies over a sliding
//! window of the caller's audio, with the checks a DTMF receiver makes (ITU-T Q.24 in
//! spirit, with thresholds taken from common receiver settings rather than any one
//! administration's table):
//!
//! - **Level.** Each tone of the pair must be at least [`TONE_POWER_MIN`] (about -33 dBFS).
//! - **Purity.** The two tones must carry at least [`ENERGY_RATIO_MIN`] of the window's
//!   energy, so speech, music and noise that happen to have energy at two DTMF frequencies
//!   are not taken for a key (talk-off).
//! - **Peak.** Each tone must stand [`PEAK_RATIO_MIN`] (6 dB) above the other frequencies
//!   of its group.
//! - **Twist.** The high tone may be at most 8 dB above the low one (normal twist) and at
//!   most 4 dB below it (reverse twist).
//! - **Steadiness.** The two halves of a window must have energies within 3 dB of each
//!   other, so a window only partly covered by a tone does not count.
//! - **Duration.** A digit is reported after it held for two consecutive windows. Windows
//!   are 205 samples at 8 kHz (25.6 ms, the classic Goertzel length that separates the
//!   DTMF rows) and slide by half a window. With the steadiness check (a window counts when
//!   the tone fills at least half of each of its halves) a tone of 40 ms or more is always
//!   detected (Q.24's figure; real keypads send 70 ms or more) and one shorter than 25 ms
//!   never is; in between it depends on how the tone falls on the windows.
//! - **Debounce.** One digit per key press: the digit is reported once, and the same digit
//!   is reported again only after two consecutive windows without it (a release of about
//!   13-26 ms).
//!
//! The detector's state (the partial window, the digit being held) lives only in memory: a
//! call resumed on another worker starts with a fresh detector. A key held across a
//! failover may then be reported again, which is why the IVR that feeds it treats a digit
//! as a key press, exactly like a signalled one.

use super::goertzel_power;

/// DTMF row (low group) frequencies, in hertz.
pub const ROWS_HZ: [u32; 4] = [697, 770, 852, 941];
/// DTMF column (high group) frequencies, in hertz.
pub const COLS_HZ: [u32; 4] = [1209, 1336, 1477, 1633];
/// The keypad, by row then column.
const KEYS: [[char; 4]; 4] =
    [['1', '2', '3', 'A'], ['4', '5', '6', 'B'], ['7', '8', '9', 'C'], ['*', '0', '#', 'D']];

/// Window length at 8 kHz, in samples; scaled with the sample rate.
const WINDOW_SAMPLES_8K: usize = 205;
/// Lowest power of each tone ([`goertzel_power`] units: a full-scale sine reads 1.0):
/// about -33 dBFS.
pub const TONE_POWER_MIN: f64 = 5.0e-4;
/// Share of the window's energy the two tones must carry.
pub const ENERGY_RATIO_MIN: f64 = 0.6;
/// How far each tone must stand above the other frequencies of its group (6 dB).
pub const PEAK_RATIO_MIN: f64 = 4.0;
/// High tone above the low one, at most (8 dB, as a power ratio).
const TWIST_NORMAL_MAX: f64 = 6.31;
/// Low tone above the high one, at most (4 dB, as a power ratio).
const TWIST_REVERSE_MAX: f64 = 2.51;
/// The weaker half of a window carries at least this share of the stronger half's energy.
const STEADY_RATIO_MIN: f64 = 0.5;
/// Consecutive windows a digit must hold to be reported.
const HITS_TO_REPORT: u8 = 2;
/// Consecutive windows without the digit that release it.
const MISSES_TO_RELEASE: u8 = 2;

/// Sliding-window DTMF detector for one call's audio (see the module docs).
///
/// Bounded: it holds at most one window of samples (205 at 8 kHz, 410 at 16 kHz).
#[derive(Debug, Clone, Default)]
pub struct DtmfDetector {
    /// The samples of the window being filled (at most one window).
    window: Vec<i16>,
    /// Sample rate of `window`; a change resets the detector.
    rate_hz: u32,
    /// The digit being held (already reported).
    held: Option<char>,
    /// A digit seen but not yet held long enough, and for how many windows.
    candidate: Option<(char, u8)>,
    /// Windows in a row without the held digit.
    misses: u8,
}

impl DtmfDetector {
    pub fn new() -> DtmfDetector {
        DtmfDetector::default()
    }

    /// Forgets everything (a new session, a change of rate).
    pub fn reset(&mut self) {
        *self = DtmfDetector::default();
    }

    /// A digit is sounding (held or about to be reported): audio that is a DTMF tone is not
    /// speech, so a voice detector should not count it.
    pub fn tone_present(&self) -> bool {
        self.held.is_some() || self.candidate.is_some()
    }

    /// Feeds `samples` at `rate_hz` and appends the digits whose key press was recognised.
    pub fn push(&mut self, samples: &[i16], rate_hz: u32, digits: &mut Vec<char>) {
        if rate_hz == 0 {
            return;
        }
        if rate_hz != self.rate_hz {
            self.reset();
            self.rate_hz = rate_hz;
        }
        let window = window_samples(rate_hz);
        let hop = window / 2;
        for &s in samples {
            self.window.push(s);
            if self.window.len() == window {
                let found = classify(&self.window, rate_hz);
                self.step(found, digits);
                self.window.drain(..hop);
            }
        }
    }

    fn step(&mut self, found: Option<char>, digits: &mut Vec<char>) {
        if found.is_some() && found == self.held {
            self.misses = 0;
            return;
        }
        if self.held.is_some() {
            self.misses += 1;
            if self.misses >= MISSES_TO_RELEASE {
                self.held = None;
                self.misses = 0;
            }
        }
        let Some(digit) = found else {
            self.candidate = None;
            return;
        };
        let hits = match self.candidate {
            Some((c, n)) if c == digit => n + 1,
            _ => 1,
        };
        if hits >= HITS_TO_REPORT && self.held.is_none() {
            self.held = Some(digit);
            self.misses = 0;
            self.candidate = None;
            digits.push(digit);
        } else {
            self.candidate = Some((digit, hits.min(HITS_TO_REPORT)));
        }
    }
}

/// Window length at `rate_hz` (205 samples at 8 kHz).
fn window_samples(rate_hz: u32) -> usize {
    (WINDOW_SAMPLES_8K * rate_hz as usize / 8_000).max(2)
}

/// The digit a window holds, if it passes every check.
pub fn classify(window: &[i16], rate_hz: u32) -> Option<char> {
    // The cheap checks first: most windows are speech or quiet, and never reach the eight
    // Goertzel filters.
    let half = window.len() / 2;
    let energy_of = |part: &[i16]| part.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>();
    let (first, second) = (energy_of(&window[..half]), energy_of(&window[half..]));
    if first.min(second) < STEADY_RATIO_MIN * first.max(second) {
        return None;
    }
    // Goertzel power of a sine is twice its mean square (both relative to full scale), so
    // for a clean pair `row + col` is about `energy`, and a window with less energy than one
    // tone needs cannot hold two.
    let full = 32_768.0f64 * 32_768.0;
    let mean_square = (first + second) / window.len() as f64;
    let energy = 2.0 * mean_square / full;
    if energy < TONE_POWER_MIN {
        return None;
    }
    let rows = ROWS_HZ.map(|f| goertzel_power(window, rate_hz, f64::from(f)));
    let cols = COLS_HZ.map(|f| goertzel_power(window, rate_hz, f64::from(f)));
    let (r, row) = peak(&rows)?;
    let (c, col) = peak(&cols)?;
    if row < TONE_POWER_MIN || col < TONE_POWER_MIN {
        return None;
    }
    if col > row * TWIST_NORMAL_MAX || row > col * TWIST_REVERSE_MAX {
        return None;
    }
    if (row + col) < ENERGY_RATIO_MIN * energy {
        return None;
    }
    Some(KEYS[r][c])
}

/// The strongest of a group, if it stands [`PEAK_RATIO_MIN`] above every other.
fn peak(powers: &[f64; 4]) -> Option<(usize, f64)> {
    let (best, &p) = powers.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1))?;
    let clear = powers.iter().enumerate().all(|(i, &q)| i == best || p >= q * PEAK_RATIO_MIN);
    clear.then_some((best, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::{ToneGenerator, dtmf_freqs_hz};

    /// `ms` of the digit's pair at `rate`, with each tone scaled by `low_gain`/`high_gain`.
    fn key(digit: char, ms: u32, rate: u32, low_gain: f64, high_gain: f64) -> Vec<i16> {
        let (low, high) = dtmf_freqs_hz(digit).unwrap();
        let n = (rate * ms / 1000) as usize;
        let mut l = Vec::new();
        let mut h = Vec::new();
        ToneGenerator::new().fill(&[low], rate, n, &mut l);
        ToneGenerator::new().fill(&[high], rate, n, &mut h);
        l.iter()
            .zip(&h)
            .map(|(&a, &b)| (f64::from(a) * 0.5 * low_gain + f64::from(b) * 0.5 * high_gain) as i16)
            .collect()
    }

    fn silence(ms: u32, rate: u32) -> Vec<i16> {
        vec![0; (rate * ms / 1000) as usize]
    }

    /// A small deterministic noise source (xorshift), amplitude `amp`.
    fn noise(n: usize, amp: f64, seed: u64) -> Vec<i16> {
        let mut x = seed.max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 65_536) as f64 / 32_768.0 - 1.0) * amp
            })
            .map(|v| v as i16)
            .collect()
    }

    /// Feeds `signal` in 20 ms frames, as a session would.
    fn detect(signal: &[i16], rate: u32) -> Vec<char> {
        let mut d = DtmfDetector::new();
        let mut digits = Vec::new();
        for frame in signal.chunks((rate / 50) as usize) {
            d.push(frame, rate, &mut digits);
        }
        digits
    }

    #[test]
    fn every_key_is_detected_once_at_both_rates() {
        for rate in [8_000, 16_000] {
            for digit in "0123456789*#ABCD".chars() {
                let mut s = silence(40, rate);
                s.extend(key(digit, 100, rate, 1.0, 1.0));
                s.extend(silence(60, rate));
                assert_eq!(detect(&s, rate), vec![digit], "{digit} at {rate} Hz");
            }
        }
    }

    #[test]
    fn a_sequence_of_presses_gives_one_digit_each_even_when_repeated() {
        let rate = 8_000;
        let mut s = Vec::new();
        for digit in ['1', '1', '2', '#'] {
            s.extend(key(digit, 70, rate, 1.0, 1.0));
            s.extend(silence(50, rate));
        }
        assert_eq!(detect(&s, rate), vec!['1', '1', '2', '#']);
        // A long press is still one digit.
        let mut long = key('5', 1_000, rate, 1.0, 1.0);
        long.extend(silence(40, rate));
        assert_eq!(detect(&long, rate), vec!['5']);
    }

    #[test]
    fn short_bursts_are_refused_and_40_ms_tones_accepted() {
        let rate = 8_000;
        for (ms, expected) in [(20, 0), (25, 0), (40, 1), (50, 1), (60, 1)] {
            for offset in [0u32, 7, 13] {
                let mut s = silence(offset, rate);
                s.extend(key('9', ms, rate, 1.0, 1.0));
                s.extend(silence(60, rate));
                assert_eq!(detect(&s, rate).len(), expected, "{ms} ms burst after {offset} ms");
            }
        }
    }

    #[test]
    fn twist_within_bounds_is_accepted_and_beyond_refused() {
        let rate = 8_000;
        let db = |d: f64| 10f64.powf(d / 20.0);
        let cases = [
            (1.0, db(6.0), true),    // high tone 6 dB above the low one
            (1.0, db(-3.0), true),   // high tone 3 dB below
            (1.0, db(-10.0), false), // reverse twist too large
            (db(-14.0), 1.0, false), // normal twist too large
        ];
        for (low, high, ok) in cases {
            let mut s = key('0', 100, rate, low, high);
            s.extend(silence(40, rate));
            assert_eq!(!detect(&s, rate).is_empty(), ok, "gains {low:.2}/{high:.2}");
        }
    }

    #[test]
    fn keys_survive_moderate_noise_and_quiet_keys_are_ignored() {
        let rate = 8_000;
        let mut s = key('7', 100, rate, 1.0, 1.0);
        // About 20 dB below the tones.
        for (x, n) in s.iter_mut().zip(noise(800, 700.0, 3)) {
            *x = x.saturating_add(n);
        }
        s.extend(silence(40, rate));
        assert_eq!(detect(&s, rate), vec!['7']);
        // A key at about -50 dBFS per tone is below the level threshold.
        let mut quiet = key('7', 100, rate, 0.02, 0.02);
        quiet.extend(silence(40, rate));
        assert!(detect(&quiet, rate).is_empty());
        // Loud noise alone is not a key.
        assert!(detect(&noise(8_000, 12_000.0, 9), rate).is_empty());
    }

    #[test]
    fn speech_like_signals_do_not_talk_off() {
        // Voiced "speech": a harmonic series on a gliding fundamental (90-250 Hz) with
        // formant-like emphasis, which puts energy near DTMF frequencies now and then.
        let rate = 8_000;
        for (f0_start, f0_end) in [(90.0, 140.0), (120.0, 250.0), (200.0, 180.0)] {
            let n = 8_000;
            let mut phase = 0.0f64;
            let s: Vec<i16> = (0..n)
                .map(|i| {
                    let t = i as f64 / n as f64;
                    let f0 = f0_start + (f0_end - f0_start) * t;
                    phase += 2.0 * std::f64::consts::PI * f0 / f64::from(rate);
                    let mut v = 0.0;
                    for h in 1..30 {
                        let f = f0 * f64::from(h);
                        if f > 3_800.0 {
                            break;
                        }
                        let formant = (-((f - 700.0) / 300.0).powi(2)).exp()
                            + 0.7 * (-((f - 1_300.0) / 250.0).powi(2)).exp();
                        v += formant * (phase * f64::from(h)).sin();
                    }
                    (v * 4_000.0) as i16
                })
                .collect();
            assert!(detect(&s, rate).is_empty(), "talk-off on a glide {f0_start}-{f0_end} Hz");
        }
        // A chord that contains a DTMF pair plus a third strong tone is not a key.
        let mut chord = key('5', 200, rate, 1.0, 1.0);
        let mut third = Vec::new();
        ToneGenerator::new().fill(&[1_000], rate, chord.len(), &mut third);
        for (x, t) in chord.iter_mut().zip(third) {
            *x = x.saturating_add(t);
        }
        assert!(detect(&chord, rate).is_empty());
    }

    #[test]
    fn state_carries_across_frame_boundaries_of_any_size() {
        let rate = 8_000;
        let mut s = key('3', 60, rate, 1.0, 1.0);
        s.extend(silence(40, rate));
        for chunk in [1usize, 33, 160, 1_000] {
            let mut d = DtmfDetector::new();
            let mut digits = Vec::new();
            for c in s.chunks(chunk) {
                d.push(c, rate, &mut digits);
            }
            assert_eq!(digits, vec!['3'], "chunks of {chunk}");
        }
    }
}
