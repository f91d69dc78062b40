//! The native resumable protocol, version 1 (`docs/protocol.md` is the normative text).
//!
//! One WebSocket per session. Control messages are JSON text frames tagged by `"type"`;
//! audio travels in binary frames with a fixed big-endian header:
//!
//! ```text
//! client → server audio: 0x01 | seq: u64                | payload
//! server → client audio: 0x02 | epoch: u64 | seq: u64   | payload
//! ```
//!
//! Client audio sequence numbers start at 1 and increase by one per frame; the server
//! acknowledges them cumulatively with [`ServerControl::Ack`] only once a durable checkpoint
//! covers them, so a client keeps every unacknowledged frame for replay after a resume.
//! Server audio carries the epoch of the worker that produced it, so a client can drop frames
//! from a fenced-out worker, and a sequence number for de-duplication and `played` reports.

use serde::{Deserialize, Serialize};

use crate::codec::AudioFormat;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// WebSocket subprotocol name a client may offer (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "callworker.v1";

/// First byte of a client → server audio frame.
pub const CLIENT_AUDIO_KIND: u8 = 0x01;
/// First byte of a server → client audio frame.
pub const SERVER_AUDIO_KIND: u8 = 0x02;
/// Header bytes before the payload of a client audio frame.
pub const CLIENT_AUDIO_HEADER_BYTES: usize = 1 + 8;
/// Header bytes before the payload of a server audio frame.
pub const SERVER_AUDIO_HEADER_BYTES: usize = 1 + 8 + 8;

/// First message of every session, client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol version the client speaks; must equal [`PROTOCOL_VERSION`].
    pub version: u16,
    pub call_id: String,
    /// The token from call creation or from the latest `welcome`.
    pub resume_token: String,
    /// Highest epoch this client has seen for the call; 0 on the first connection.
    pub epoch_seen: u64,
    /// The sequence number of the next audio frame the client would send (1 on the first
    /// connection).
    pub next_seq: u64,
    /// Highest server audio sequence number received (0 if none).
    pub last_server_seq_rx: u64,
    /// Highest server audio sequence number played to the caller (0 if none).
    pub last_played_server_seq: u64,
    /// Format of the audio the client sends and wants to receive.
    pub audio: AudioFormat,
}

/// Control messages from client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientControl {
    Hello(Hello),
    /// Server audio up to and including `upto_seq` has been played to the caller.
    Played {
        upto_seq: u64,
    },
    /// A DTMF digit detected by the gateway (`0-9`, `*`, `#`, `A-D`).
    Dtmf {
        digit: char,
    },
    /// The caller hung up; the call ends with `client_hangup`.
    Bye {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// Answer to a successful `hello`: the session now drives the call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    pub version: u16,
    pub call_id: String,
    /// The epoch this session holds; server audio carries it.
    pub epoch: u64,
    /// Token to present on the next `hello` (tokens rotate on every resume).
    pub resume_token: String,
    /// The client must (re)send its audio starting at this sequence number.
    pub resume_from_seq: u64,
    /// Sequence number of the next server audio frame.
    pub server_next_seq: u64,
    /// Format the server sends in.
    pub audio: AudioFormat,
    /// Whether this session resumed an existing call (false on the first connection).
    pub resumed: bool,
}

/// Control messages from server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerControl {
    Welcome(Welcome),
    /// Client audio up to and including `upto_seq` is durably covered by a checkpoint.
    Ack {
        upto_seq: u64,
    },
    /// Something happened on the call (`name` such as `dtmf_received`, `program_switched`).
    Event {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Discard server audio buffered but not yet played (barge-in, program switch).
    Clear,
    /// Reconnect (through the load balancer) after `reconnect_after_ms`; the call continues.
    Migrate {
        reason: String,
        reconnect_after_ms: u64,
    },
    /// The call ended; `reason` is its end reason (`completed`, `api_ended`, …).
    Bye {
        reason: String,
    },
    /// A refusal; the server closes the socket right after with the matching close code.
    Error {
        code: String,
        message: String,
    },
}

/// Why a native-protocol message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeError {
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    MessageTooLarge { size: usize, max: usize },
    #[error("malformed control message: {0}")]
    MalformedJson(String),
    #[error("binary frame shorter than its {0}-byte header")]
    ShortFrame(usize),
    #[error("unknown binary frame kind 0x{0:02x}")]
    UnknownFrameKind(u8),
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
}

impl NativeError {
    /// Stable snake_case label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            NativeError::MessageTooLarge { .. } => "message_too_large",
            NativeError::MalformedJson(_) => "malformed_json",
            NativeError::ShortFrame(_) => "short_frame",
            NativeError::UnknownFrameKind(_) => "unknown_frame_kind",
            NativeError::UnsupportedVersion(_) => "unsupported_version",
        }
    }
}

/// Longest text kept from a JSON parser error in [`NativeError::MalformedJson`], in bytes
/// (parser messages can quote the input).
pub const ERROR_TEXT_BYTES_MAX: usize = 200;

/// Parses a client → server text frame of at most `max_bytes`.
///
/// A `hello` that names another protocol version is refused with
/// [`NativeError::UnsupportedVersion`] even when the rest of it does not fit version 1's
/// shape (a future version may add or rename fields), so the server can answer with close
/// code 4426 rather than "bad request". A `dtmf` digit outside `0-9`, `*`, `#`, `A-D` is
/// malformed.
pub fn parse_client_control(text: &str, max_bytes: usize) -> Result<ClientControl, NativeError> {
    check_size(text, max_bytes)?;
    match serde_json::from_str::<ClientControl>(text) {
        Ok(ClientControl::Hello(hello)) if hello.version != PROTOCOL_VERSION => {
            Err(NativeError::UnsupportedVersion(hello.version))
        }
        Ok(ClientControl::Dtmf { digit }) if !crate::is_dtmf_digit(digit) => {
            Err(NativeError::MalformedJson(format!("invalid dtmf digit {digit:?}")))
        }
        Ok(msg) => Ok(msg),
        Err(e) => Err(foreign_hello_version(text).unwrap_or_else(|| malformed(&e))),
    }
}

/// Parses a server → client text frame of at most `max_bytes` (client SDK side).
pub fn parse_server_control(text: &str, max_bytes: usize) -> Result<ServerControl, NativeError> {
    check_size(text, max_bytes)?;
    serde_json::from_str(text).map_err(|e| malformed(&e))
}

/// Serializes a client → server control message.
pub fn encode_client_control(msg: &ClientControl) -> String {
    serde_json::to_string(msg).expect("control messages have string keys only, so always serialize")
}

/// Serializes a server → client control message.
pub fn encode_server_control(msg: &ServerControl) -> String {
    serde_json::to_string(msg).expect("control messages have string keys only, so always serialize")
}

fn check_size(text: &str, max_bytes: usize) -> Result<(), NativeError> {
    if text.len() > max_bytes {
        return Err(NativeError::MessageTooLarge { size: text.len(), max: max_bytes });
    }
    Ok(())
}

fn malformed(e: &serde_json::Error) -> NativeError {
    NativeError::MalformedJson(crate::twilio::truncated(&e.to_string(), ERROR_TEXT_BYTES_MAX))
}

/// The version of a `hello` that failed to parse as version 1, if it is a JSON object
/// with `"type":"hello"` and an integer `version` other than ours. Versions beyond `u16`
/// are reported as `u16::MAX`.
fn foreign_hello_version(text: &str) -> Option<NativeError> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
        version: Option<u64>,
    }
    let probe: Probe<'_> = serde_json::from_str(text).ok()?;
    let version = probe.version?;
    if probe.kind.as_deref() != Some("hello") || version == u64::from(PROTOCOL_VERSION) {
        return None;
    }
    Some(NativeError::UnsupportedVersion(u16::try_from(version).unwrap_or(u16::MAX)))
}

/// A client → server audio frame, borrowed from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAudio<'a> {
    pub seq: u64,
    pub payload: &'a [u8],
}

/// A server → client audio frame, borrowed from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAudio<'a> {
    pub epoch: u64,
    pub seq: u64,
    pub payload: &'a [u8],
}

/// Appends a client audio frame to `out`.
pub fn encode_client_audio(seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(CLIENT_AUDIO_HEADER_BYTES + payload.len());
    out.push(CLIENT_AUDIO_KIND);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Decodes a client audio frame.
///
/// An empty frame is [`NativeError::ShortFrame`]; otherwise the kind byte is checked first
/// ([`NativeError::UnknownFrameKind`]), then the header length.
pub fn decode_client_audio(frame: &[u8]) -> Result<ClientAudio<'_>, NativeError> {
    let (header, payload) = split_frame(frame, CLIENT_AUDIO_KIND, CLIENT_AUDIO_HEADER_BYTES)?;
    Ok(ClientAudio { seq: be_u64(header, 1), payload })
}

/// Appends a server audio frame to `out`.
pub fn encode_server_audio(epoch: u64, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(SERVER_AUDIO_HEADER_BYTES + payload.len());
    out.push(SERVER_AUDIO_KIND);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Decodes a server audio frame (same checks as [`decode_client_audio`]).
pub fn decode_server_audio(frame: &[u8]) -> Result<ServerAudio<'_>, NativeError> {
    let (header, payload) = split_frame(frame, SERVER_AUDIO_KIND, SERVER_AUDIO_HEADER_BYTES)?;
    Ok(ServerAudio { epoch: be_u64(header, 1), seq: be_u64(header, 9), payload })
}

fn split_frame(frame: &[u8], kind: u8, header_bytes: usize) -> Result<(&[u8], &[u8]), NativeError> {
    match frame.first() {
        None => return Err(NativeError::ShortFrame(header_bytes)),
        Some(&k) if k != kind => return Err(NativeError::UnknownFrameKind(k)),
        Some(_) => {}
    }
    if frame.len() < header_bytes {
        return Err(NativeError::ShortFrame(header_bytes));
    }
    Ok(frame.split_at(header_bytes))
}

/// The big-endian u64 at `offset`; the caller has checked the header length.
fn be_u64(header: &[u8], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&header[offset..offset + 8]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Encoding;
    use proptest::prelude::*;

    const MAX: usize = 4096;

    fn pcmu8() -> AudioFormat {
        AudioFormat::TWILIO
    }

    fn client_fixtures() -> Vec<(&'static str, ClientControl)> {
        vec![
            (
                include_str!("../tests/fixtures/native/client_hello.json"),
                ClientControl::Hello(Hello {
                    version: 1,
                    call_id: "c1".into(),
                    resume_token: "tok-1".into(),
                    epoch_seen: 0,
                    next_seq: 1,
                    last_server_seq_rx: 0,
                    last_played_server_seq: 0,
                    audio: pcmu8(),
                }),
            ),
            (
                include_str!("../tests/fixtures/native/client_hello_resume.json"),
                ClientControl::Hello(Hello {
                    version: 1,
                    call_id: "c1".into(),
                    resume_token: "tok-2".into(),
                    epoch_seen: 3,
                    next_seq: 412,
                    last_server_seq_rx: 380,
                    last_played_server_seq: 377,
                    audio: AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 },
                }),
            ),
            (
                include_str!("../tests/fixtures/native/client_played.json"),
                ClientControl::Played { upto_seq: 377 },
            ),
            (include_str!("../tests/fixtures/native/client_dtmf.json"), ClientControl::Dtmf { digit: '#' }),
            (include_str!("../tests/fixtures/native/client_bye.json"), ClientControl::Bye { reason: None }),
            (
                include_str!("../tests/fixtures/native/client_bye_reason.json"),
                ClientControl::Bye { reason: Some("caller hung up".into()) },
            ),
        ]
    }

    fn server_fixtures() -> Vec<(&'static str, ServerControl)> {
        vec![
            (
                include_str!("../tests/fixtures/native/server_welcome.json"),
                ServerControl::Welcome(Welcome {
                    version: 1,
                    call_id: "c1".into(),
                    epoch: 4,
                    resume_token: "tok-3".into(),
                    resume_from_seq: 401,
                    server_next_seq: 378,
                    audio: pcmu8(),
                    resumed: true,
                }),
            ),
            (include_str!("../tests/fixtures/native/server_ack.json"), ServerControl::Ack { upto_seq: 400 }),
            (
                include_str!("../tests/fixtures/native/server_event.json"),
                ServerControl::Event { name: "dtmf_received".into(), detail: None },
            ),
            (
                include_str!("../tests/fixtures/native/server_event_detail.json"),
                ServerControl::Event { name: "program_switched".into(), detail: Some("ivr".into()) },
            ),
            (include_str!("../tests/fixtures/native/server_clear.json"), ServerControl::Clear),
            (
                include_str!("../tests/fixtures/native/server_migrate.json"),
                ServerControl::Migrate { reason: "migrated_drain".into(), reconnect_after_ms: 0 },
            ),
            (
                include_str!("../tests/fixtures/native/server_bye.json"),
                ServerControl::Bye { reason: "completed".into() },
            ),
            (
                include_str!("../tests/fixtures/native/server_error.json"),
                ServerControl::Error {
                    code: "unsupported_version".into(),
                    message: "protocol version 2 is not supported".into(),
                },
            ),
        ]
    }

    #[test]
    fn client_golden_fixtures_parse_and_encode_exactly() {
        for (text, expected) in client_fixtures() {
            let text = text.trim_end();
            assert_eq!(parse_client_control(text, MAX), Ok(expected.clone()), "{text}");
            assert_eq!(encode_client_control(&expected), text);
        }
    }

    #[test]
    fn server_golden_fixtures_parse_and_encode_exactly() {
        for (text, expected) in server_fixtures() {
            let text = text.trim_end();
            assert_eq!(parse_server_control(text, MAX), Ok(expected.clone()), "{text}");
            assert_eq!(encode_server_control(&expected), text);
        }
    }

    #[test]
    fn client_control_errors() {
        let hello = client_fixtures()[0].0.trim_end();
        let cases: Vec<(String, NativeError)> = vec![
            (" ".repeat(MAX + 1), NativeError::MessageTooLarge { size: MAX + 1, max: MAX }),
            (hello.replace(r#""version":1"#, r#""version":2"#), NativeError::UnsupportedVersion(2)),
            (hello.replace(r#""version":1"#, r#""version":0"#), NativeError::UnsupportedVersion(0)),
            (
                hello.replace(r#""version":1"#, r#""version":70000"#),
                NativeError::UnsupportedVersion(u16::MAX),
            ),
            // A future version with a different shape is still "unsupported", not "bad".
            (
                r#"{"type":"hello","version":2,"session":"s","codecs":["opus"]}"#.into(),
                NativeError::UnsupportedVersion(2),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_client_control(&text, MAX), Err(expected), "{text}");
        }
        let malformed = [
            String::new(),
            "{".into(),
            "[]".into(),
            r#"{"type":"hello"}"#.into(),
            r#"{"type":"hello","version":1}"#.into(),
            r#"{"type":"hello","version":"2"}"#.into(),
            r#"{"version":2}"#.into(),
            r#"{"type":"played","version":2}"#.into(),
            r#"{"type":"welcome","version":2}"#.into(),
            hello.replace(r#""epoch_seen":0"#, r#""epoch_seen":-1"#),
            hello.replace(r#""call_id":"c1""#, r#""call_id":"c1","extra":1"#),
            hello.replace(r#""pcmu""#, r#""opus""#),
            r#"{"type":"played"}"#.into(),
            r#"{"type":"played","upto_seq":1,"x":2}"#.into(),
            r#"{"type":"dtmf","digit":"E"}"#.into(),
            r#"{"type":"dtmf","digit":"12"}"#.into(),
            r#"{"type":"nope"}"#.into(),
            r#"{"type":"ack","upto_seq":1}"#.into(),
            r#"{"type":"bye"} {}"#.into(),
        ];
        for text in malformed {
            let err = parse_client_control(&text, MAX).expect_err(&text);
            assert_eq!(err.label(), "malformed_json", "{text}: {err}");
        }
    }

    #[test]
    fn server_control_errors() {
        assert_eq!(
            parse_server_control(r#"{"type":"ack","upto_seq":1}"#, 10),
            Err(NativeError::MessageTooLarge { size: 27, max: 10 })
        );
        for text in [
            "",
            r#"{"type":"ack"}"#,
            r#"{"type":"played","upto_seq":1}"#,
            r#"{"type":"bye","reason":"completed","x":1}"#,
            r#"{"type":"welcome","version":1}"#,
        ] {
            let err = parse_server_control(text, MAX).expect_err(text);
            assert_eq!(err.label(), "malformed_json", "{text}");
        }
        // serde's `deny_unknown_fields` does not reach unit variants of an internally tagged
        // enum, so extra fields on `clear` are ignored (harmless: it carries no data).
        assert_eq!(parse_server_control(r#"{"type":"clear","x":1}"#, MAX), Ok(ServerControl::Clear));
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(3000));
        let Err(NativeError::MalformedJson(reason)) = parse_server_control(&long, MAX) else {
            panic!("expected malformed_json");
        };
        assert!(reason.len() <= ERROR_TEXT_BYTES_MAX);
    }

    #[test]
    fn binary_frame_layouts() {
        let mut client = Vec::new();
        encode_client_audio(0x0102_0304_0506_0708, &[0xAA, 0xBB], &mut client);
        assert_eq!(client, [0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0xAA, 0xBB]);
        assert_eq!(
            decode_client_audio(&client),
            Ok(ClientAudio { seq: 0x0102_0304_0506_0708, payload: &[0xAA, 0xBB] })
        );

        let mut server = Vec::new();
        encode_server_audio(3, 258, &[0xFF], &mut server);
        assert_eq!(server, [0x02, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 2, 0xFF]);
        assert_eq!(decode_server_audio(&server), Ok(ServerAudio { epoch: 3, seq: 258, payload: &[0xFF] }));

        // Header only: an empty payload is a valid frame.
        assert_eq!(decode_client_audio(&client[..CLIENT_AUDIO_HEADER_BYTES]).map(|a| a.payload.len()), Ok(0));
        assert_eq!(decode_server_audio(&server[..SERVER_AUDIO_HEADER_BYTES]).map(|a| a.payload.len()), Ok(0));
    }

    #[test]
    fn binary_frame_errors() {
        let cases: &[(&[u8], NativeError, NativeError)] = &[
            (&[], NativeError::ShortFrame(9), NativeError::ShortFrame(17)),
            (&[0x01], NativeError::ShortFrame(9), NativeError::UnknownFrameKind(0x01)),
            (&[0x02], NativeError::UnknownFrameKind(0x02), NativeError::ShortFrame(17)),
            (&[0x01, 0, 0, 0, 0, 0, 0, 0], NativeError::ShortFrame(9), NativeError::UnknownFrameKind(0x01)),
            (&[0x02; 16], NativeError::UnknownFrameKind(0x02), NativeError::ShortFrame(17)),
            (&[0x00; 20], NativeError::UnknownFrameKind(0x00), NativeError::UnknownFrameKind(0x00)),
            (b"{\"type\":\"bye\"}", NativeError::UnknownFrameKind(b'{'), NativeError::UnknownFrameKind(b'{')),
        ];
        for (frame, client_err, server_err) in cases {
            assert_eq!(decode_client_audio(frame), Err(client_err.clone()), "{frame:?}");
            assert_eq!(decode_server_audio(frame), Err(server_err.clone()), "{frame:?}");
        }
    }

    #[test]
    fn labels() {
        let cases = [
            (NativeError::MessageTooLarge { size: 2, max: 1 }, "message_too_large"),
            (NativeError::MalformedJson(String::new()), "malformed_json"),
            (NativeError::ShortFrame(9), "short_frame"),
            (NativeError::UnknownFrameKind(7), "unknown_frame_kind"),
            (NativeError::UnsupportedVersion(2), "unsupported_version"),
        ];
        for (err, label) in cases {
            assert_eq!(err.label(), label);
        }
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..40).prop_map(|c| c.into_iter().collect())
    }

    fn audio() -> impl Strategy<Value = AudioFormat> {
        (prop_oneof![Just(Encoding::Pcmu), Just(Encoding::Pcma), Just(Encoding::L16)], any::<u32>())
            .prop_map(|(encoding, sample_rate_hz)| AudioFormat { encoding, sample_rate_hz })
    }

    fn client_control() -> impl Strategy<Value = ClientControl> {
        let digit = proptest::sample::select("0123456789*#ABCD".chars().collect::<Vec<_>>());
        prop_oneof![
            (text(), text(), any::<[u64; 4]>(), audio()).prop_map(|(call_id, token, n, audio)| {
                ClientControl::Hello(Hello {
                    version: PROTOCOL_VERSION,
                    call_id,
                    resume_token: token,
                    epoch_seen: n[0],
                    next_seq: n[1],
                    last_server_seq_rx: n[2],
                    last_played_server_seq: n[3],
                    audio,
                })
            }),
            any::<u64>().prop_map(|upto_seq| ClientControl::Played { upto_seq }),
            digit.prop_map(|digit| ClientControl::Dtmf { digit }),
            proptest::option::of(text()).prop_map(|reason| ClientControl::Bye { reason }),
        ]
    }

    fn server_control() -> impl Strategy<Value = ServerControl> {
        prop_oneof![
            (text(), text(), any::<[u64; 3]>(), audio(), any::<(u16, bool)>()).prop_map(
                |(call_id, token, n, audio, (version, resumed))| {
                    ServerControl::Welcome(Welcome {
                        version,
                        call_id,
                        epoch: n[0],
                        resume_token: token,
                        resume_from_seq: n[1],
                        server_next_seq: n[2],
                        audio,
                        resumed,
                    })
                }
            ),
            any::<u64>().prop_map(|upto_seq| ServerControl::Ack { upto_seq }),
            (text(), proptest::option::of(text()))
                .prop_map(|(name, detail)| ServerControl::Event { name, detail }),
            Just(ServerControl::Clear),
            (text(), any::<u64>()).prop_map(|(reason, reconnect_after_ms)| {
                ServerControl::Migrate { reason, reconnect_after_ms }
            }),
            text().prop_map(|reason| ServerControl::Bye { reason }),
            (text(), text()).prop_map(|(code, message)| ServerControl::Error { code, message }),
        ]
    }

    proptest! {
        #[test]
        fn client_control_round_trips(msg in client_control()) {
            let text = encode_client_control(&msg);
            prop_assert_eq!(parse_client_control(&text, MAX), Ok(msg));
        }

        #[test]
        fn server_control_round_trips(msg in server_control()) {
            let text = encode_server_control(&msg);
            prop_assert_eq!(parse_server_control(&text, MAX), Ok(msg));
        }

        #[test]
        fn audio_frames_round_trip(
            epoch in any::<u64>(),
            seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..700),
        ) {
            let mut frame = Vec::new();
            encode_client_audio(seq, &payload, &mut frame);
            prop_assert_eq!(frame.len(), CLIENT_AUDIO_HEADER_BYTES + payload.len());
            prop_assert_eq!(decode_client_audio(&frame), Ok(ClientAudio { seq, payload: &payload }));
            frame.clear();
            encode_server_audio(epoch, seq, &payload, &mut frame);
            prop_assert_eq!(frame.len(), SERVER_AUDIO_HEADER_BYTES + payload.len());
            prop_assert_eq!(
                decode_server_audio(&frame),
                Ok(ServerAudio { epoch, seq, payload: &payload })
            );
        }

        #[test]
        fn arbitrary_input_never_panics(
            text in ".{0,300}",
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = parse_client_control(&text, MAX);
            let _ = parse_server_control(&text, MAX);
            let lossy = String::from_utf8_lossy(&bytes);
            let _ = parse_client_control(&lossy, MAX);
            let _ = parse_server_control(&lossy, MAX);
            let _ = decode_client_audio(&bytes);
            let _ = decode_server_audio(&bytes);
        }

        #[test]
        fn mutated_control_never_panics(
            msg in client_control(),
            cut in any::<proptest::sample::Index>(),
            insert in "[\\[\\]{}\":,0-9a-z\\\\ ]{0,4}",
        ) {
            let mut text = encode_client_control(&msg);
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert_str(at, &insert);
            let _ = parse_client_control(&text, MAX);
        }
    }
}
