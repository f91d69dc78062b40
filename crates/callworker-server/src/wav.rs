//! WAV (RIFF/WAVE) files for recordings, in the call's own encoding so the bytes are exactly
//! what was recorded: μ-law (format 7) and A-law (format 6) at 8 bits, or 16-bit PCM
//! (format 1), mono.

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
}
