//! The checkpoint envelope: how a [`Call`] is persisted.
//!
//! ```text
//! magic "CWCK" (4) | format version u16 BE | payload length u32 BE | crc32 of payload u32 BE | payload
//! ```
//!
//! The payload is the postcard encoding of the call as of that format version. postcard is
//! maintained, compact, has a documented stable wire format, and is positional: field
//! evolution is handled here, by versioned formats and upgrade-on-read, never by guessing.
//!
//! A worker reads every format up to [`FORMAT_VERSION_MAX_READ`] and writes
//! [`FORMAT_VERSION_WRITE`]; a checkpoint with a newer version is refused with
//! [`CheckpointError::TooNew`] so that another worker can take the call.
//!
//! Formats:
//! - 1: the first release.
//! - 2: adds `recording`, `twilio` and `detach_cause` at the end of the call. Format 1 is
//!   upgraded on read (nothing recorded, no Twilio leg, no pending cause).
//! - 3: adds `mute` and `play_queue` at the end of the call, and may hold the enum variants
//!   appended with them (`Transferred`, `DtmfInjected`) that a format-2 reader would take
//!   for corruption. Format 2 is upgraded on read (nothing muted, nothing queued).

use crate::call::Call;

/// The format version this build writes.
pub const FORMAT_VERSION_WRITE: u16 = 3;
/// The newest format version this build can read.
pub const FORMAT_VERSION_MAX_READ: u16 = 3;
/// Envelope magic.
pub const MAGIC: [u8; 4] = *b"CWCK";
/// Largest checkpoint accepted, in bytes (a call's state is a few KB).
pub const CHECKPOINT_BYTES_MAX: usize = 1 << 20;

/// Why a checkpoint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a checkpoint (bad magic)")]
    BadMagic,
    #[error("checkpoint truncated or oversized")]
    BadLength,
    #[error("checkpoint checksum mismatch")]
    ChecksumMismatch,
    #[error("checkpoint format {found} is newer than {max} (this build)")]
    TooNew { found: u16, max: u16 },
    #[error("checkpoint payload does not decode: {0}")]
    Decode(String),
}

/// Bytes of the envelope header: magic, format version, payload length, checksum.
pub const HEADER_BYTES: usize = 4 + 2 + 4 + 4;

/// Encodes `call` in the current format.
pub fn encode(call: &Call) -> Vec<u8> {
    // Every type in a `Call` is plain data whose binary serde shape postcard supports (the
    // round-trip tests prove it), so a failure here is a programming error, not bad input.
    let payload = postcard::to_allocvec(call).expect("a Call always serializes with postcard");
    let payload_len = u32::try_from(payload.len()).expect("a Call's payload is far below 4 GiB");
    let mut bytes = Vec::with_capacity(HEADER_BYTES + payload.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION_WRITE.to_be_bytes());
    bytes.extend_from_slice(&payload_len.to_be_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// Decodes a checkpoint of any readable format into the current [`Call`].
///
/// Checks, in order: magic, header, format version (before anything else about the
/// payload, so a newer format is reported as [`CheckpointError::TooNew`] and never as
/// corrupt: the caller must refuse the takeover, not end the call), size bound, declared
/// length, checksum, payload.
pub fn decode(bytes: &[u8]) -> Result<Call, CheckpointError> {
    let header = Header::read(bytes)?;
    if header.format_version > FORMAT_VERSION_MAX_READ {
        return Err(CheckpointError::TooNew { found: header.format_version, max: FORMAT_VERSION_MAX_READ });
    }
    if bytes.len() > CHECKPOINT_BYTES_MAX {
        return Err(CheckpointError::BadLength);
    }
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() != header.payload_len as usize {
        return Err(CheckpointError::BadLength);
    }
    if crc32fast::hash(payload) != header.crc32 {
        return Err(CheckpointError::ChecksumMismatch);
    }
    match header.format_version {
        1 => decode_payload::<v1::Call>(payload).map(|c| Call::from(v2::Call::from(c))),
        2 => decode_payload::<v2::Call>(payload).map(Call::from),
        3 => decode_payload::<Call>(payload),
        other => Err(CheckpointError::Decode(format!("unknown format version {other}"))),
    }
}

/// The format version of a checkpoint, read from its header without decoding it.
pub fn format_version(bytes: &[u8]) -> Result<u16, CheckpointError> {
    Header::read(bytes).map(|h| h.format_version)
}

fn decode_payload<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, CheckpointError> {
    let (call, rest) =
        postcard::take_from_bytes::<T>(payload).map_err(|e| CheckpointError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CheckpointError::Decode(format!("{} trailing bytes after the call", rest.len())));
    }
    Ok(call)
}

struct Header {
    format_version: u16,
    payload_len: u32,
    crc32: u32,
}

impl Header {
    fn read(bytes: &[u8]) -> Result<Header, CheckpointError> {
        // Compare as much of the magic as there is: even a few bytes that cannot start a
        // checkpoint are "not a checkpoint" rather than "truncated".
        let magic_len = bytes.len().min(MAGIC.len());
        if bytes[..magic_len] != MAGIC[..magic_len] {
            return Err(CheckpointError::BadMagic);
        }
        let Some(header) = bytes.get(..HEADER_BYTES) else {
            return Err(CheckpointError::BadLength);
        };
        let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        let be32 =
            |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        Ok(Header { format_version: be16(4), payload_len: be32(6), crc32: be32(10) })
    }
}

/// Format 1: the call as the first release stored it. Every nested type is unchanged since,
/// so only the top-level struct is kept here.
mod v1 {
    use callworker_protocol::AudioFormat;
    use serde::Deserialize;

    use crate::call::{CallLimits, CallStatus, Direction, MediaPositions, RecordingSettings, Transport};
    use crate::end::EndReason;
    use crate::ids::{CallId, TenantId};
    use crate::program::{Overlay, ProgramState};
    use crate::time::UnixMillis;
    use crate::timeline::Timeline;

    #[derive(Debug, Deserialize)]
    pub struct Call {
        id: CallId,
        tenant: TenantId,
        direction: Direction,
        from: Option<String>,
        to: Option<String>,
        audio: AudioFormat,
        limits: CallLimits,
        status: CallStatus,
        created_at: UnixMillis,
        started_at: Option<UnixMillis>,
        ended_at: Option<UnixMillis>,
        end_reason: Option<EndReason>,
        transport: Option<Transport>,
        attached: bool,
        media: MediaPositions,
        program: ProgramState,
        overlay: Option<Overlay>,
        timeline: Timeline,
    }

    impl From<Call> for super::v2::Call {
        fn from(c: Call) -> Self {
            super::v2::Call {
                id: c.id,
                tenant: c.tenant,
                direction: c.direction,
                from: c.from,
                to: c.to,
                audio: c.audio,
                limits: c.limits,
                status: c.status,
                created_at: c.created_at,
                started_at: c.started_at,
                ended_at: c.ended_at,
                end_reason: c.end_reason,
                transport: c.transport,
                attached: c.attached,
                media: c.media,
                program: c.program,
                overlay: c.overlay,
                timeline: c.timeline,
                recording: RecordingSettings::default(),
                twilio: None,
                detach_cause: None,
            }
        }
    }
}

/// Format 2: format 1 plus `recording`, `twilio` and `detach_cause`. Every nested type is
/// unchanged since (format 3 only appended enum variants), so only the top-level struct is
/// kept here.
mod v2 {
    use callworker_protocol::AudioFormat;
    use serde::Deserialize;

    use crate::call::{
        CallLimits, CallStatus, Direction, MediaPositions, Mute, RecordingSettings, Transport, TwilioLeg,
    };
    use crate::end::{EndReason, ResumeCause};
    use crate::ids::{CallId, TenantId};
    use crate::program::{Overlay, ProgramState};
    use crate::time::UnixMillis;
    use crate::timeline::Timeline;

    #[derive(Debug, Deserialize)]
    pub struct Call {
        pub(super) id: CallId,
        pub(super) tenant: TenantId,
        pub(super) direction: Direction,
        pub(super) from: Option<String>,
        pub(super) to: Option<String>,
        pub(super) audio: AudioFormat,
        pub(super) limits: CallLimits,
        pub(super) status: CallStatus,
        pub(super) created_at: UnixMillis,
        pub(super) started_at: Option<UnixMillis>,
        pub(super) ended_at: Option<UnixMillis>,
        pub(super) end_reason: Option<EndReason>,
        pub(super) transport: Option<Transport>,
        pub(super) attached: bool,
        pub(super) media: MediaPositions,
        pub(super) program: ProgramState,
        pub(super) overlay: Option<Overlay>,
        pub(super) timeline: Timeline,
        pub(super) recording: RecordingSettings,
        pub(super) twilio: Option<TwilioLeg>,
        pub(super) detach_cause: Option<ResumeCause>,
    }

    impl From<Call> for crate::call::Call {
        fn from(c: Call) -> Self {
            crate::call::Call {
                id: c.id,
                tenant: c.tenant,
                direction: c.direction,
                from: c.from,
                to: c.to,
                audio: c.audio,
                limits: c.limits,
                status: c.status,
                created_at: c.created_at,
                started_at: c.started_at,
                ended_at: c.ended_at,
                end_reason: c.end_reason,
                transport: c.transport,
                attached: c.attached,
                media: c.media,
                program: c.program,
                overlay: c.overlay,
                timeline: c.timeline,
                recording: c.recording,
                twilio: c.twilio,
                detach_cause: c.detach_cause,
                mute: Mute::default(),
                play_queue: std::collections::VecDeque::new(),
            }
        }
    }
}
