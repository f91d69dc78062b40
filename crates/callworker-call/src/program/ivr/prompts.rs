//! What an IVR prompt plays: tone/silence segments generated on the fly, or recorded clips
//! (WAV files loaded with the configuration), and the named definitions that carry them.
//!
//! A clip is decoded and resampled once, at load time, to every rate a call may use
//! ([`SAMPLE_RATES_HZ`]), so playing it is a slice and an encode per frame. Its frames are
//! a pure function of the position: frame `i` is samples `i × spf .. (i + 1) × spf` (the
//! last one padded with silence). Tone segments are generated the same way, with the
//! sine's phase computed from the position, so a prompt replayed after a resume sends
//! exactly the bytes the caller did not hear.
//!
//! Clip audio never goes into a checkpoint (it would make every checkpoint as large as the
//! prompts). A call that uses a named definition keeps the definition's name and content
//! hash in its state; the worker that resumes it binds the clips from its own copy of the
//! configuration ([`crate::Call::bind_ivr`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use callworker_protocol::codec::SAMPLE_RATES_HZ;
use serde::{Deserialize, Serialize};

use crate::dsp::resample::resample_sinc;
use crate::program::FRAME_MS;

/// One step of a prompt: a tone pattern segment (`{"freqs_hz": [440], "duration_ms": 500}`,
/// no frequencies = silence) or a recorded clip (`{"wav": "welcome"}`, named in the
/// definition's `[prompts]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSegment {
    #[serde(default)]
    pub freqs_hz: Vec<u32>,
    #[serde(default)]
    pub duration_ms: u32,
    /// A clip of the definition, instead of a tone.
    #[serde(default)]
    pub wav: Option<String>,
}

impl PromptSegment {
    /// Frames this segment lasts at `rate_hz`; 0 for a clip that is not bound (never the
    /// case for a validated, bound definition).
    pub(crate) fn frames(&self, clips: Option<&IvrClips>, rate_hz: u32) -> u64 {
        match &self.wav {
            None => (u64::from(self.duration_ms) / FRAME_MS).max(1),
            Some(name) => clips.and_then(|c| c.get(name)).map_or(0, |clip| clip.frames(rate_hz)),
        }
    }
}

/// Samples in one frame at `rate_hz`.
pub(crate) fn samples_per_frame(rate_hz: u32) -> usize {
    (u64::from(rate_hz) * FRAME_MS / 1000) as usize
}

/// A recorded prompt, as PCM at every supported call rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clip {
    by_rate: Vec<(u32, Vec<i16>)>,
}

impl Clip {
    /// A clip from mono PCM at `rate_hz` (any rate), resampled to every call rate.
    pub fn from_pcm(samples: &[i16], rate_hz: u32) -> Clip {
        let by_rate = SAMPLE_RATES_HZ
            .iter()
            .map(|&to| {
                let mut out = Vec::new();
                resample_sinc(samples, rate_hz, to, &mut out);
                (to, out)
            })
            .collect();
        Clip { by_rate }
    }

    /// The clip at `rate_hz` (empty for a rate no call uses).
    pub fn samples(&self, rate_hz: u32) -> &[i16] {
        self.by_rate.iter().find(|(r, _)| *r == rate_hz).map_or(&[], |(_, s)| s.as_slice())
    }

    /// Frames the clip lasts at `rate_hz` (at least one).
    pub fn frames(&self, rate_hz: u32) -> u64 {
        let spf = samples_per_frame(rate_hz).max(1);
        (self.samples(rate_hz).len().div_ceil(spf) as u64).max(1)
    }

    /// Memory the clip holds, in bytes.
    pub fn bytes(&self) -> usize {
        self.by_rate.iter().map(|(_, s)| s.len() * 2).sum()
    }

    /// Frame `index` at `rate_hz`, padded with silence, appended to `pcm`.
    pub(crate) fn frame(&self, rate_hz: u32, index: u64, pcm: &mut Vec<i16>) {
        let spf = samples_per_frame(rate_hz);
        let samples = self.samples(rate_hz);
        let start = (index as usize).saturating_mul(spf).min(samples.len());
        let end = start.saturating_add(spf).min(samples.len());
        pcm.extend_from_slice(&samples[start..end]);
        pcm.resize(pcm.len() + (spf - (end - start)), 0);
    }
}

/// The clips of one definition, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IvrClips {
    pub clips: BTreeMap<String, Clip>,
}

impl IvrClips {
    pub fn get(&self, name: &str) -> Option<&Clip> {
        self.clips.get(name)
    }

    /// Memory all clips hold, in bytes.
    pub fn bytes(&self) -> usize {
        self.clips.values().map(Clip::bytes).sum()
    }
}

/// The clips an IVR plays, shared by every call of the definition. Not serialized (see the
/// module docs), and not part of a call's identity: two handles always compare equal, the
/// definition's hash is what tells versions apart.
#[derive(Clone, Default)]
pub struct ClipsHandle(pub Option<Arc<IvrClips>>);

impl ClipsHandle {
    pub fn get(&self) -> Option<&IvrClips> {
        self.0.as_deref()
    }
}

impl PartialEq for ClipsHandle {
    fn eq(&self, _: &ClipsHandle) -> bool {
        true
    }
}

impl Eq for ClipsHandle {}

impl std::fmt::Debug for ClipsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(c) => write!(f, "ClipsHandle({} clips)", c.clips.len()),
            None => f.write_str("ClipsHandle(unbound)"),
        }
    }
}

/// A named definition from configuration, as a call remembers it: the name to find it by
/// on any worker, and the hash of its content (menus and clip audio) to tell whether that
/// worker's copy is the one the call started with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IvrDefinitionRef {
    pub name: String,
    pub hash: u64,
}

/// FNV-1a, 64 bits: a stable content hash (the same on every worker and build, unlike
/// `std`'s hasher), plenty to tell two versions of a definition apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_frames_are_exact_slices_padded_with_silence() {
        let samples: Vec<i16> = (1..=400).collect();
        let clip = Clip::from_pcm(&samples, 8_000);
        assert_eq!(clip.samples(8_000), samples.as_slice());
        assert_eq!(clip.frames(8_000), 3);
        let mut pcm = Vec::new();
        clip.frame(8_000, 2, &mut pcm);
        assert_eq!(pcm.len(), 160);
        assert_eq!(&pcm[..80], &samples[320..]);
        assert!(pcm[80..].iter().all(|&s| s == 0));
        // Upsampled for 16 kHz calls: twice the samples, the same number of frames.
        assert_eq!(clip.samples(16_000).len(), 800);
        assert_eq!(clip.frames(16_000), 3);
        assert_eq!(clip.bytes(), (400 + 800) * 2);
    }

    #[test]
    fn the_content_hash_is_fnv1a() {
        let mut h = Fnv64::new();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
