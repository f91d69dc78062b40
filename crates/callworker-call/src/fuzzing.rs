//! Fuzz check for the checkpoint decoder, shared by the cargo-fuzz target `checkpoint_decode`
//! in `fuzz/` and by the stable corpus replay (`tests/fuzz_corpus.rs`).
//!
//! The check panics on a broken property: a panic *is* the finding. Compiled only with the
//! `fuzzing` feature.

use crate::checkpoint::{self, CheckpointError, HEADER_BYTES, MAGIC};

/// The checkpoint decoder, on the input as given and on the input with its envelope repaired
/// (a real checksum and length over whatever follows the header, format version kept), so
/// that mutations reach the payload decoder of every format instead of stopping at the
/// checksum:
/// - never panics, and refuses a format newer than this build's as
///   [`CheckpointError::TooNew`];
/// - a call that decodes (from any format) re-encodes in the current format, and that
///   decodes again to a call whose encoding is byte-for-byte the same (bytes, not `==`, so a
///   NaN in a decoded float cannot hide a difference).
pub fn checkpoint_decode(data: &[u8]) {
    check(data);
    if data.len() >= HEADER_BYTES && data[..MAGIC.len()] == MAGIC {
        let payload = &data[HEADER_BYTES..];
        let Ok(payload_len) = u32::try_from(payload.len()) else { return };
        let mut repaired = Vec::with_capacity(data.len());
        repaired.extend_from_slice(&data[..6]);
        repaired.extend_from_slice(&payload_len.to_be_bytes());
        repaired.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
        repaired.extend_from_slice(payload);
        check(&repaired);
    }
}

fn check(bytes: &[u8]) {
    let version = checkpoint::format_version(bytes);
    match checkpoint::decode(bytes) {
        Ok(call) => {
            let version = version.expect("a decoded checkpoint has a header");
            assert!(version <= checkpoint::FORMAT_VERSION_MAX_READ);
            let encoded = checkpoint::encode(&call);
            assert_eq!(checkpoint::format_version(&encoded), Ok(checkpoint::FORMAT_VERSION_WRITE));
            let again = checkpoint::decode(&encoded).expect("a re-encoded call decodes");
            assert_eq!(checkpoint::encode(&again), encoded, "decode(encode(call)) changed the call");
        }
        Err(CheckpointError::TooNew { found, max }) => {
            assert_eq!(max, checkpoint::FORMAT_VERSION_MAX_READ);
            assert_eq!(version, Ok(found));
            assert!(found > max);
        }
        Err(_) => {
            if let Ok(v) = version {
                assert!(v <= checkpoint::FORMAT_VERSION_MAX_READ, "format {v} refused but not as too new");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_checkpoints_pass_the_check() {
        checkpoint_decode(include_bytes!("../tests/golden/checkpoint-v1.bin"));
        checkpoint_decode(include_bytes!("../tests/golden/checkpoint-v2.bin"));
        checkpoint_decode(b"CWCK\x00\x09");
        checkpoint_decode(b"");
    }
}
