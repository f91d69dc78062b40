//! Wire formats spoken by callworker, with no I/O.
//!
//! Layout:
//! - [`twilio`]: Twilio Media Streams, both directions (`connected`, `start`, `media`, `dtmf`,
//!   `mark`, `stop` from Twilio; `media`, `mark`, `clear` to Twilio), strict parsing with
//!   bounded sizes, and [`twilio::SequenceTracker`] for `sequenceNumber` checks.
//! - [`native`]: the native resumable protocol (version [`native::PROTOCOL_VERSION`]),
//!   documented in `docs/protocol.md`: JSON control messages and binary audio frames.
//! - [`close`]: WebSocket close codes shared by both endpoints.
//! - [`agent`]: the voice-agent protocol (version [`agent::AGENT_PROTOCOL_VERSION`]) between
//!   a worker and an external voice agent, documented in `docs/agent-protocol.md`.
//! - [`twilio_signature`]: Twilio's `X-Twilio-Signature` request signatures (webhooks and the
//!   Media Streams WebSocket upgrade).
//! - [`codec`]: G.711 μ-law / A-law ↔ PCM16 and 8 kHz ↔ 16 kHz resampling.
//! - `fuzzing` (feature `fuzzing`): the checks the fuzz targets in `fuzz/` run, shared with
//!   the stable corpus replay.
//!
//! Invariants:
//! - Parsers never panic and never allocate more than a bound derived from their input
//!   limits; every refusal is a typed error the server maps to a close code and a metric.
//! - Encoders produce exactly what the matching parser accepts (round-trip tests).
//! - This crate depends on no other workspace crate and performs no I/O.

pub mod agent;
pub mod close;
pub mod codec;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod native;
pub mod twilio;
pub mod twilio_signature;

pub use codec::{AudioFormat, Encoding};

/// Whether `c` is a DTMF key: `0-9`, `*`, `#` or `A-D` (both protocols carry these only).
pub fn is_dtmf_digit(c: char) -> bool {
    matches!(c, '0'..='9' | '*' | '#' | 'A'..='D')
}
