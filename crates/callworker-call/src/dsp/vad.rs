//! Energy-based voice activity detection for barge-in.
//!
//! Each frame's level is its mean square relative to a full-scale square wave, in dB
//! (dBFS: a full-scale sine reads -3 dBFS, a -10 dBFS tone peak about -13). A frame at or
//! above the threshold counts as speech. Barge-in needs `min_speech_ms` of speech; a quiet
//! gap shorter than `hangover_ms` inside it does not start the count over (speech has
//! short pauses between syllables), a longer one does. Clicks and single loud frames
//! shorter than `min_speech_ms` never trigger.
//!
//! The state is two counters, kept in memory only: a call resumed on another worker starts
//! counting again, which at worst delays a barge-in by `min_speech_ms`.

/// How a barge-in is recognised (a menu's `barge_in` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VadSettings {
    /// Level a frame must reach to count as speech, in dBFS.
    pub threshold_dbfs: i32,
    /// Speech needed before a barge-in, in milliseconds.
    pub min_speech_ms: u32,
    /// Longest quiet gap that does not reset the speech count, in milliseconds.
    pub hangover_ms: u32,
}

/// Counts speech for one call while a prompt plays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnergyVad {
    speech_ms: u32,
    quiet_ms: u32,
}

/// Level of `samples` in dBFS (mean square relative to full scale); -120 for silence.
pub fn level_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return -120.0;
    }
    let full = 32_768.0f64 * 32_768.0;
    let mean_square =
        samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len() as f64;
    if mean_square <= 0.0 { -120.0 } else { (10.0 * (mean_square / full).log10()).max(-120.0) }
}

impl EnergyVad {
    pub fn new() -> EnergyVad {
        EnergyVad::default()
    }

    pub fn reset(&mut self) {
        *self = EnergyVad::default();
    }

    /// Feeds one frame of `frame_ms` milliseconds; `true` once the caller has spoken for
    /// `min_speech_ms` (and on every later speech frame until [`reset`](Self::reset)).
    pub fn push(&mut self, samples: &[i16], frame_ms: u32, settings: VadSettings) -> bool {
        if level_dbfs(samples) >= f64::from(settings.threshold_dbfs) {
            self.speech_ms = self.speech_ms.saturating_add(frame_ms);
            self.quiet_ms = 0;
        } else {
            self.quiet_ms = self.quiet_ms.saturating_add(frame_ms);
            if self.quiet_ms > settings.hangover_ms {
                self.speech_ms = 0;
            }
        }
        self.speech_ms >= settings.min_speech_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dsp::ToneGenerator;

    const SETTINGS: VadSettings = VadSettings { threshold_dbfs: -35, min_speech_ms: 100, hangover_ms: 60 };

    fn frame(amplitude: f64) -> Vec<i16> {
        (0..160).map(|i| (amplitude * ((i % 16) as f64 / 8.0 - 1.0)) as i16).collect()
    }

    /// Frames (`true` = loud) until the first barge-in; its frame index.
    fn first_trigger(pattern: &[bool]) -> Option<usize> {
        let mut vad = EnergyVad::new();
        pattern.iter().position(|&loud| vad.push(&frame(if loud { 6_000.0 } else { 30.0 }), 20, SETTINGS))
    }

    #[test]
    fn levels_are_in_dbfs() {
        let mut sine = Vec::new();
        ToneGenerator::new().fill(&[1_000], 8_000, 800, &mut sine);
        let level = level_dbfs(&sine);
        assert!((level - -13.0).abs() < 0.5, "a -10 dBFS peak sine reads {level}");
        assert_eq!(level_dbfs(&[0; 160]), -120.0);
        assert_eq!(level_dbfs(&[]), -120.0);
    }

    #[test]
    fn speech_must_last_min_speech_ms_and_short_gaps_do_not_reset() {
        assert_eq!(first_trigger(&[true; 10]), Some(4), "five 20 ms frames make 100 ms");
        assert_eq!(first_trigger(&[true, true, true, true, false, false, false, false, true]), None);
        // A 40 ms gap is within the 60 ms hangover: the count carries on.
        assert_eq!(first_trigger(&[true, true, true, false, false, true, true]), Some(6));
        // Clicks (one loud frame now and then) never add up.
        let clicks: Vec<bool> = (0..100).map(|i| i % 5 == 0).collect();
        assert_eq!(first_trigger(&clicks), None);
        assert_eq!(first_trigger(&[false; 100]), None);
    }
}
