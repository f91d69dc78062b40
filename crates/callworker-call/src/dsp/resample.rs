//! Resampling of prompt audio (WAV files at any rate) to a call's rate, once, when the
//! prompts are loaded.
//!
//! A windowed-sinc interpolator: each output sample is the sum of the input samples within
//! [`HALF_TAPS`] input periods (scaled to the cut-off when downsampling), weighted by a sinc
//! low-pass at 0.45 × the lower of the two rates and a Blackman window. That removes what
//! would alias when going down (44.1 kHz to 8 kHz) and interpolates smoothly going up. It
//! costs about 2 × [`HALF_TAPS`] multiplications per output sample, which is fine at load
//! time and never runs on the media path.

/// Zero crossings of the sinc kept on each side of the output instant.
pub const HALF_TAPS: usize = 16;

/// Resamples mono PCM from `from_hz` to `to_hz`, appending to `out`. The output has
/// `ceil(len × to / from)` samples. Equal rates copy.
pub fn resample_sinc(samples: &[i16], from_hz: u32, to_hz: u32, out: &mut Vec<i16>) {
    if from_hz == 0 || to_hz == 0 || samples.is_empty() {
        return;
    }
    if from_hz == to_hz {
        out.extend_from_slice(samples);
        return;
    }
    let (from, to) = (f64::from(from_hz), f64::from(to_hz));
    let out_len = (samples.len() as u64 * u64::from(to_hz)).div_ceil(u64::from(from_hz)) as usize;
    // Cut-off relative to the input rate: below both Nyquist frequencies, with some margin.
    let cutoff = 0.45 * from.min(to) / from;
    // Half-width of the kernel, in input samples.
    let half_width = HALF_TAPS as f64 / (2.0 * cutoff);
    out.reserve(out_len);
    for j in 0..out_len {
        let centre = j as f64 * from / to;
        let first = (centre - half_width).ceil().max(0.0) as usize;
        let last = ((centre + half_width).floor() as usize).min(samples.len() - 1);
        let mut acc = 0.0f64;
        for (i, &s) in samples.iter().enumerate().take(last + 1).skip(first) {
            let x = i as f64 - centre;
            acc += f64::from(s) * kernel(x, cutoff, half_width);
        }
        out.push(acc.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16);
    }
}

/// Low-pass sinc at `cutoff` (cycles per input sample) times a Blackman window of
/// half-width `half_width`, at `x` input samples from the centre.
fn kernel(x: f64, cutoff: f64, half_width: f64) -> f64 {
    use std::f64::consts::PI;
    if x.abs() >= half_width {
        return 0.0;
    }
    let sinc = if x == 0.0 { 2.0 * cutoff } else { (2.0 * PI * cutoff * x).sin() / (PI * x) };
    let blackman = 0.42 + 0.5 * (PI * x / half_width).cos() + 0.08 * (2.0 * PI * x / half_width).cos();
    sinc * blackman
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::goertzel_power;

    fn sine(freq: f64, rate: u32, n: usize, amplitude: f64) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (amplitude * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn tones_in_band_keep_their_level_at_common_rates() {
        for from in [8_000u32, 11_025, 16_000, 22_050, 44_100, 48_000] {
            for to in [8_000u32, 16_000] {
                let input = sine(1_000.0, from, from as usize / 2, 10_000.0);
                let mut out = Vec::new();
                resample_sinc(&input, from, to, &mut out);
                assert_eq!(
                    out.len(),
                    (input.len() as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize
                );
                // Skip the edges, where the kernel runs off the signal.
                let middle = &out[out.len() / 4..out.len() * 3 / 4];
                let p = goertzel_power(middle, to, 1_000.0);
                let expected = (10_000.0f64 / 32_768.0).powi(2);
                assert!((p / expected - 1.0).abs() < 0.05, "{from} → {to}: {p} vs {expected}");
            }
        }
    }

    #[test]
    fn what_would_alias_is_removed_when_going_down() {
        // 6 kHz at 44.1 kHz would fold to 2 kHz at 8 kHz.
        let input = sine(6_000.0, 44_100, 22_050, 10_000.0);
        let mut out = Vec::new();
        resample_sinc(&input, 44_100, 8_000, &mut out);
        let middle = &out[out.len() / 4..out.len() * 3 / 4];
        let folded = goertzel_power(middle, 8_000, 2_000.0);
        let tone = (10_000.0f64 / 32_768.0).powi(2);
        assert!(folded < tone / 1_000.0, "alias at 2 kHz reads {folded} (tone {tone})");
    }

    #[test]
    fn equal_rates_copy_and_empty_input_gives_nothing() {
        let input = vec![1, -2, 3];
        let mut out = Vec::new();
        resample_sinc(&input, 8_000, 8_000, &mut out);
        assert_eq!(out, input);
        out.clear();
        resample_sinc(&[], 44_100, 8_000, &mut out);
        assert!(out.is_empty());
    }
}
