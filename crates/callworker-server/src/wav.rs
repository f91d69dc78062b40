//! WAV (RIFF/WAVE) files for recordings, in the call's own encoding so the bytes are exactly
//! what was recorded: μ-law (format 7) and A-law (format 6) at 8 bits, or 16-bit PCM
//! (format 1), mono. [`decode`] reads the same formats (and `WAVE_FORMAT_EXTENSIBLE` around
//! them, mono or stereo, any rate) for IVR prompts.

use callworker_protocol::{AudioFormat, Encoding};

/// A WAV file holding `audio` (mono, in `format`). Audio beyond 4 GiB cannot be
/// described by a RIFF header and is cut (recordings are bounded far below that).
pub fn encode(format: AudioFormat, audio: &[u8]) -> Vec<u8> {
    let (tag, bits): (u16, u16) = match format.encoding {
        Encoding::Pcmu => (7, 8),
        Encoding::Pcma => (6, 8),
        Encoding::L16 => (1, 16),
    };
    let audio = &audio[..audio.len().min(u32::MAX as usize - 64)];
    let pcm = tag == 1;
    let block_align = bits / 8;
    let rate = format.sample_rate_hz;
    let data_len = audio.len() as u32;
    // Non-PCM formats carry cbSize in fmt and a fact chunk with the sample count.
    let fmt_len: u32 = if pcm { 16 } else { 18 };
    let fact_len: u32 = if pcm { 0 } else { 12 };
    let pad = data_len % 2;
    let riff_len = 4 + (8 + fmt_len) + fact_len + (8 + data_len + pad);
    let mut out = Vec::with_capacity(riff_len as usize + 8);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&fmt_len.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // channels
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    if !pcm {
        out.extend_from_slice(&0u16.to_le_bytes()); // cbSize
        out.extend_from_slice(b"fact");
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(data_len / u32::from(block_align)).to_le_bytes());
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(audio);
    if pad == 1 {
        out.push(0);
    }
    out
}

/// The data chunk of a WAV file written by [`encode`] (for tests and tools).
pub fn data(wav: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    while at + 8 <= wav.len() {
        let id = &wav[at..at + 4];
        let len = u32::from_le_bytes([wav[at + 4], wav[at + 5], wav[at + 6], wav[at + 7]]) as usize;
        let body = wav.get(at + 8..at + 8 + len)?;
        if id == b"data" {
            return Some(body);
        }
        at += 8 + len + len % 2;
    }
    None
}

/// Why a WAV file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("no fmt chunk before the data chunk")]
    NoFormat,
    #[error("no data chunk")]
    NoData,
    #[error("chunk {0:?} runs past the end of the file")]
    Truncated(String),
    #[error("format tag {0} is not supported (PCM 16-bit, A-law or mu-law only)")]
    UnsupportedFormat(u16),
    #[error("{0} bits per sample is not supported for this format")]
    UnsupportedBits(u16),
    #[error("{0} channels; mono or stereo only")]
    UnsupportedChannels(u16),
    #[error("sample rate {0} Hz is outside 4000..=96000 Hz")]
    UnsupportedRate(u32),
    #[error("the data chunk holds no samples")]
    Empty,
}

/// Lowest and highest sample rate accepted in a prompt file.
pub const DECODE_RATE_HZ_MIN: u32 = 4_000;
pub const DECODE_RATE_HZ_MAX: u32 = 96_000;

/// Decodes a WAV file into mono 16-bit PCM and its sample rate: PCM 16-bit (tag 1), A-law
/// (6), mu-law (7), or `WAVE_FORMAT_EXTENSIBLE` (0xFFFE) carrying one of them; stereo is
/// mixed down to mono. Chunks other than `fmt ` and `data` are skipped. A trailing partial
/// sample frame is ignored.
pub fn decode(wav: &[u8]) -> Result<(Vec<i16>, u32), WavError> {
    if wav.len() < 12 || &wav[..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return Err(WavError::NotWave);
    }
    let mut at = 12;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while at + 8 <= wav.len() {
        let id = &wav[at..at + 4];
        let len = u32::from_le_bytes([wav[at + 4], wav[at + 5], wav[at + 6], wav[at + 7]]) as usize;
        let body = wav
            .get(at + 8..(at + 8).saturating_add(len))
            .ok_or_else(|| WavError::Truncated(String::from_utf8_lossy(id).into_owned()))?;
        if id == b"fmt " {
            if body.len() < 16 {
                return Err(WavError::Truncated("fmt ".into()));
            }
            let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let mut tag = u16_at(0);
            if tag == 0xFFFE {
                // WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID.
                if body.len() < 26 {
                    return Err(WavError::Truncated("fmt ".into()));
                }
                tag = u16_at(24);
            }
            let channels = u16_at(2);
            let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
            let bits = u16_at(14);
            format = Some((tag, channels, rate, bits));
        } else if id == b"data" {
            let (tag, channels, rate, bits) = format.ok_or(WavError::NoFormat)?;
            return decode_samples(body, tag, channels, rate, bits);
        }
        at = at.saturating_add(8 + len + len % 2);
    }
    Err(WavError::NoData)
}

fn decode_samples(
    data: &[u8],
    tag: u16,
    channels: u16,
    rate: u32,
    bits: u16,
) -> Result<(Vec<i16>, u32), WavError> {
    if !(1..=2).contains(&channels) {
        return Err(WavError::UnsupportedChannels(channels));
    }
    if !(DECODE_RATE_HZ_MIN..=DECODE_RATE_HZ_MAX).contains(&rate) {
        return Err(WavError::UnsupportedRate(rate));
    }
    let (encoding, expected_bits) = match tag {
        1 => (Encoding::L16, 16),
        6 => (Encoding::Pcma, 8),
        7 => (Encoding::Pcmu, 8),
        other => return Err(WavError::UnsupportedFormat(other)),
    };
    if bits != expected_bits {
        return Err(WavError::UnsupportedBits(bits));
    }
    let frame_bytes = usize::from(bits / 8) * usize::from(channels);
    let whole = data.len() - data.len() % frame_bytes;
    let mut interleaved = Vec::with_capacity(whole / usize::from(bits / 8));
    callworker_protocol::codec::decode(encoding, &data[..whole], &mut interleaved)
        .map_err(|_| WavError::UnsupportedBits(bits))?;
    let mono: Vec<i16> = if channels == 2 {
        interleaved.chunks_exact(2).map(|p| ((i32::from(p[0]) + i32::from(p[1])) / 2) as i16).collect()
    } else {
        interleaved
    };
    if mono.is_empty() {
        return Err(WavError::Empty);
    }
    Ok((mono, rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mulaw_file_has_fmt_fact_and_data() {
        let audio = [0x7Fu8, 0xFF, 0x00];
        let wav = encode(AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8000 }, &audio);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([wav[4], wav[5], wav[6], wav[7]]) as usize, wav.len() - 8);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 7, "WAVE_FORMAT_MULAW");
        assert_eq!(data(&wav), Some(&audio[..]));
        assert_eq!(wav.len() % 2, 0, "chunks are word-aligned");
    }

    #[test]
    fn l16_file_is_plain_pcm() {
        let audio = [1u8, 0, 2, 0];
        let wav = encode(AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16000 }, &audio);
        assert_eq!(u16::from_le_bytes([wav[20], wav[21]]), 1);
        assert_eq!(u32::from_le_bytes([wav[28], wav[29], wav[30], wav[31]]), 32000, "byte rate");
        assert_eq!(data(&wav), Some(&audio[..]));
        assert_eq!(wav.len(), 44 + audio.len());
    }

    #[test]
    fn files_we_write_decode_back_and_bad_files_are_refused() {
        let samples: Vec<i16> = vec![0, 1000, -1000, 32767, -32768];
        let mut l16 = Vec::new();
        callworker_protocol::codec::encode(Encoding::L16, &samples, &mut l16);
        let wav = encode(AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 }, &l16);
        assert_eq!(decode(&wav), Ok((samples.clone(), 16_000)));
        for encoding in [Encoding::Pcmu, Encoding::Pcma] {
            let mut bytes = Vec::new();
            callworker_protocol::codec::encode(encoding, &samples, &mut bytes);
            let wav = encode(AudioFormat { encoding, sample_rate_hz: 8_000 }, &bytes);
            let mut expected = Vec::new();
            callworker_protocol::codec::decode(encoding, &bytes, &mut expected).unwrap();
            assert_eq!(decode(&wav), Ok((expected, 8_000)), "{encoding:?}");
        }
        // Stereo at 44.1 kHz is mixed down.
        let mut stereo =
            encode(AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 }, &[10, 0, 30, 0]);
        stereo[22] = 2; // channels
        stereo[24..28].copy_from_slice(&44_100u32.to_le_bytes());
        assert_eq!(decode(&stereo), Ok((vec![20], 44_100)));
        assert_eq!(decode(b"RIFX0000WAVE"), Err(WavError::NotWave));
        let mut float = wav.clone();
        float[20] = 3;
        assert!(matches!(decode(&float), Err(WavError::UnsupportedFormat(3))));
        let mut rate = wav.clone();
        rate[24..28].copy_from_slice(&200_000u32.to_le_bytes());
        assert!(matches!(decode(&rate), Err(WavError::UnsupportedRate(200_000))));
        assert!(matches!(decode(&wav[..wav.len() - 3]), Err(WavError::Truncated(_))));
        let empty = encode(AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 }, &[]);
        assert_eq!(decode(&empty), Err(WavError::Empty));
    }
}
