//! The voice-agent protocol (version [`AGENT_PROTOCOL_VERSION`]), spoken between a worker
//! (the WebSocket client) and an external voice-agent service (the server). Documented in
//! `docs/agent-protocol.md`.
//!
//! Text messages are JSON objects tagged by `type`; binary messages are raw audio in the
//! call's format (caller audio towards the agent, audio to play towards the worker).
//!
//! - Worker → agent ([`ToAgent`]): `start` (once per connection; `resume: true` with the
//!   transcript on every connection after the first), binary caller audio, `dtmf`, `mark`
//!   (an agent mark was played, or `cleared`), `stop`.
//! - Agent → worker ([`FromAgent`]): binary audio to play, `mark`, `clear`, `transfer`,
//!   `hangup`, `end_of_turn`, `transcript`.
//!
//! [`parse_from_agent`] refuses anything above its [`AgentLimits`] with a typed
//! [`AgentError`]; [`ToAgent::encode`] writes exactly what [`parse_to_agent`] reads (the
//! agent side, used by the reference agent and tests).

use serde::{Deserialize, Serialize};

use crate::codec::AudioFormat;

/// Version carried in `start`; an agent that does not speak it closes the connection.
pub const AGENT_PROTOCOL_VERSION: u32 = 1;
/// Longest mark name, in bytes.
pub const MARK_NAME_BYTES_MAX: usize = 128;
/// Longest transfer target (a phone number or URI), in bytes.
pub const TRANSFER_TARGET_BYTES_MAX: usize = 256;
/// Longest hang-up reason, in bytes.
pub const HANGUP_REASON_BYTES_MAX: usize = 128;
/// Longest text of one transcript entry, in bytes.
pub const TRANSCRIPT_TEXT_BYTES_MAX: usize = 4096;

/// Who said a transcript entry. Part of the call's checkpointed state: append variants only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TranscriptRole {
    Caller,
    Agent,
}

impl TranscriptRole {
    pub fn as_str(self) -> &'static str {
        match self {
            TranscriptRole::Caller => "caller",
            TranscriptRole::Agent => "agent",
        }
    }
}

/// One transcript entry as sent in a resuming `start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscriptLine {
    /// Position in the call's transcript, from 0, without gaps unless entries were lost.
    pub index: u64,
    pub role: TranscriptRole,
    pub text: String,
    /// When the worker stored it (Unix milliseconds).
    pub at_ms: u64,
}

/// The first message on every agent connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub version: u32,
    pub call_id: String,
    pub tenant: String,
    /// Format of the binary audio both ways.
    pub audio: AudioFormat,
    /// True when an agent leg of this call was established before (a reconnect, or another
    /// worker resuming the call): the conversation continues.
    pub resume: bool,
    /// The call's opaque context from its parameters.
    pub context: Option<String>,
    /// The transcript kept in the call's state (the newest entries within its bound).
    pub transcript: Vec<TranscriptLine>,
    /// Index the next transcript entry gets: the worker holds everything below it (minus
    /// `transcript_dropped` oldest entries dropped for the bound).
    pub transcript_next_index: u64,
    pub transcript_dropped: u64,
    /// `end_of_turn` messages received so far.
    pub turns: u64,
    /// The last mark whose audio the caller heard.
    pub last_mark: Option<String>,
}

/// Worker → agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgent {
    Start(Box<Start>),
    /// Caller audio (a binary message).
    Audio(Vec<u8>),
    Dtmf {
        digit: char,
    },
    /// The audio before the agent's mark `name` was played to the caller, or (`cleared`)
    /// discarded unplayed by a `clear` or lost with a worker.
    Mark {
        name: String,
        cleared: bool,
    },
    /// The worker lets go of the connection: the call ended (`reason` is its end reason) or
    /// moved (`detached`, `migrated`).
    Stop {
        reason: String,
    },
}

/// JSON shape of the text messages of [`ToAgent`].
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ToAgentJson {
    Start(Box<Start>),
    Dtmf { digit: char },
    Mark { name: String, cleared: bool },
    Stop { reason: String },
}

/// One WebSocket message, as the I/O layer sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

impl ToAgent {
    /// The message's `type` (`audio` for binary audio).
    pub fn name(&self) -> &'static str {
        match self {
            ToAgent::Start(_) => "start",
            ToAgent::Audio(_) => "audio",
            ToAgent::Dtmf { .. } => "dtmf",
            ToAgent::Mark { .. } => "mark",
            ToAgent::Stop { .. } => "stop",
        }
    }

    pub fn encode(self) -> Frame {
        let json = match self {
            ToAgent::Audio(payload) => return Frame::Binary(payload),
            ToAgent::Start(start) => ToAgentJson::Start(start),
            ToAgent::Dtmf { digit } => ToAgentJson::Dtmf { digit },
            ToAgent::Mark { name, cleared } => ToAgentJson::Mark { name, cleared },
            ToAgent::Stop { reason } => ToAgentJson::Stop { reason },
        };
        Frame::Text(serde_json::to_string(&json).expect("plain structs always serialize"))
    }
}

/// Reads a worker message (the agent side: the reference agent and tests).
pub fn parse_to_agent(frame: Frame) -> Result<ToAgent, AgentError> {
    match frame {
        Frame::Binary(payload) => Ok(ToAgent::Audio(payload)),
        Frame::Text(text) => {
            let json: ToAgentJson =
                serde_json::from_str(&text).map_err(|e| AgentError::InvalidJson(e.to_string()))?;
            Ok(match json {
                ToAgentJson::Start(start) => ToAgent::Start(start),
                ToAgentJson::Dtmf { digit } => ToAgent::Dtmf { digit },
                ToAgentJson::Mark { name, cleared } => ToAgent::Mark { name, cleared },
                ToAgentJson::Stop { reason } => ToAgent::Stop { reason },
            })
        }
    }
}

/// Agent → worker text messages (audio to play comes as binary messages).
///
/// Field-less messages are written `{"type": "clear"}`; they are struct variants so that
/// unknown fields are refused (serde's `deny_unknown_fields` skips unit variants).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromAgent {
    /// Tell me (`mark` back) when the caller has heard the audio sent before this.
    Mark { name: String },
    /// Discard the audio not yet played (barge-in).
    Clear {},
    /// Hand the caller to `target`. The worker has no telephony to bridge a third party:
    /// it records the transfer and ends the call with `transferred`; the carrier side acts
    /// on that end reason.
    Transfer { target: String },
    /// End the call (`completed`).
    Hangup {
        #[serde(default)]
        reason: Option<String>,
    },
    /// The agent finished its turn (a semantic transition: the worker checkpoints).
    EndOfTurn {},
    /// Append to the call's transcript. `index`, when given, must be the worker's next
    /// index: a lower one is a duplicate (ignored), a higher one leaves a counted gap.
    Transcript {
        #[serde(default)]
        index: Option<u64>,
        role: TranscriptRole,
        text: String,
    },
}

impl FromAgent {
    pub fn name(&self) -> &'static str {
        match self {
            FromAgent::Mark { .. } => "mark",
            FromAgent::Clear {} => "clear",
            FromAgent::Transfer { .. } => "transfer",
            FromAgent::Hangup { .. } => "hangup",
            FromAgent::EndOfTurn {} => "end_of_turn",
            FromAgent::Transcript { .. } => "transcript",
        }
    }

    /// The JSON text of this message (the agent side).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("plain enums always serialize")
    }
}

/// Bounds applied to agent messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLimits {
    /// Largest message (text or binary), in bytes.
    pub message_bytes_max: usize,
}

/// Why an agent message was refused. [`AgentError::code`] is the metric label and the
/// close reason's prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("message of {0} bytes is above the bound")]
    TooLarge(usize),
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl AgentError {
    pub fn code(&self) -> &'static str {
        match self {
            AgentError::TooLarge(_) => "message_too_large",
            AgentError::InvalidJson(_) => "invalid_json",
            AgentError::Invalid { .. } => "invalid_message",
        }
    }
}

/// Parses an agent's text message and checks every field against its bound.
pub fn parse_from_agent(text: &str, limits: &AgentLimits) -> Result<FromAgent, AgentError> {
    if text.len() > limits.message_bytes_max {
        return Err(AgentError::TooLarge(text.len()));
    }
    let msg: FromAgent = serde_json::from_str(text).map_err(|e| AgentError::InvalidJson(e.to_string()))?;
    match &msg {
        FromAgent::Mark { name } => check_text("name", name, MARK_NAME_BYTES_MAX, false)?,
        FromAgent::Transfer { target } => check_text("target", target, TRANSFER_TARGET_BYTES_MAX, false)?,
        FromAgent::Hangup { reason: Some(reason) } => {
            check_text("reason", reason, HANGUP_REASON_BYTES_MAX, true)?;
        }
        FromAgent::Transcript { text, .. } => check_text("text", text, TRANSCRIPT_TEXT_BYTES_MAX, true)?,
        FromAgent::Hangup { reason: None } | FromAgent::Clear {} | FromAgent::EndOfTurn {} => {}
    }
    Ok(msg)
}

fn check_text(field: &'static str, value: &str, bytes_max: usize, empty_ok: bool) -> Result<(), AgentError> {
    if value.len() > bytes_max {
        return Err(AgentError::Invalid {
            field,
            reason: format!("{} bytes; at most {bytes_max}", value.len()),
        });
    }
    if !empty_ok && value.is_empty() {
        return Err(AgentError::Invalid { field, reason: "empty".to_owned() });
    }
    if value.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(AgentError::Invalid { field, reason: "control characters".to_owned() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::Encoding;

    fn from_agent() -> impl Strategy<Value = FromAgent> {
        let text = "[a-z #+0-9-]{1,40}";
        let role = prop_oneof![Just(TranscriptRole::Caller), Just(TranscriptRole::Agent)];
        prop_oneof![
            text.prop_map(|name| FromAgent::Mark { name }),
            Just(FromAgent::Clear {}),
            text.prop_map(|target| FromAgent::Transfer { target }),
            proptest::option::of(text).prop_map(|reason| FromAgent::Hangup { reason }),
            Just(FromAgent::EndOfTurn {}),
            (proptest::option::of(any::<u64>()), role, "[^\\p{Cc}]{0,100}")
                .prop_map(|(index, role, text)| FromAgent::Transcript { index, role, text }),
        ]
    }

    proptest! {
        #[test]
        fn agent_messages_round_trip(msg in from_agent()) {
            prop_assert_eq!(parse_from_agent(&msg.encode(), &LIMITS), Ok(msg));
        }

        /// Whatever an agent sends, parsing answers a message or a typed error.
        #[test]
        fn parsing_never_panics(text in "\\PC{0,200}", json in "\\{\"type\":\"[a-z_]{0,12}\"[^}]{0,60}\\}") {
            let _ = parse_from_agent(&text, &LIMITS);
            let _ = parse_from_agent(&json, &LIMITS);
        }
    }

    const LIMITS: AgentLimits = AgentLimits { message_bytes_max: 65_536 };

    #[test]
    fn agent_messages_parse_and_round_trip() {
        let cases = [
            (r#"{"type":"mark","name":"turn-1"}"#, FromAgent::Mark { name: "turn-1".into() }),
            (r#"{"type":"clear"}"#, FromAgent::Clear {}),
            (
                r#"{"type":"transfer","target":"+15551234567"}"#,
                FromAgent::Transfer { target: "+15551234567".into() },
            ),
            (r#"{"type":"hangup"}"#, FromAgent::Hangup { reason: None }),
            (r#"{"type":"hangup","reason":"bye"}"#, FromAgent::Hangup { reason: Some("bye".into()) }),
            (r#"{"type":"end_of_turn"}"#, FromAgent::EndOfTurn {}),
            (
                r#"{"type":"transcript","index":3,"role":"caller","text":"hi"}"#,
                FromAgent::Transcript { index: Some(3), role: TranscriptRole::Caller, text: "hi".into() },
            ),
            (
                r#"{"type":"transcript","role":"agent","text":""}"#,
                FromAgent::Transcript { index: None, role: TranscriptRole::Agent, text: String::new() },
            ),
        ];
        for (text, expected) in cases {
            let parsed = parse_from_agent(text, &LIMITS).unwrap();
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(parse_from_agent(&parsed.encode(), &LIMITS).unwrap(), parsed);
        }
    }

    #[test]
    fn bad_agent_messages_are_refused_with_a_code() {
        let long = "x".repeat(TRANSCRIPT_TEXT_BYTES_MAX + 1);
        let cases = [
            ("{", "invalid_json"),
            (r#"{"type":"dance"}"#, "invalid_json"),
            (r#"{"type":"clear","x":1}"#, "invalid_json"),
            (r#"{"type":"mark"}"#, "invalid_json"),
            (r#"{"type":"mark","name":""}"#, "invalid_message"),
            (r#"{"type":"transfer","target":"a\u0000b"}"#, "invalid_message"),
            (r#"{"type":"transcript","role":"robot","text":"hi"}"#, "invalid_json"),
        ];
        for (text, code) in cases {
            assert_eq!(parse_from_agent(text, &LIMITS).unwrap_err().code(), code, "{text}");
        }
        let big = format!(r#"{{"type":"transcript","role":"agent","text":"{long}"}}"#);
        assert_eq!(parse_from_agent(&big, &LIMITS).unwrap_err().code(), "invalid_message");
        let small = AgentLimits { message_bytes_max: 16 };
        assert_eq!(
            parse_from_agent(r#"{"type":"end_of_turn"}"#, &small).unwrap_err().code(),
            "message_too_large"
        );
    }

    #[test]
    fn worker_messages_encode_as_the_agent_side_parses_them() {
        let start = Start {
            version: AGENT_PROTOCOL_VERSION,
            call_id: "c_1".into(),
            tenant: "acme".into(),
            audio: AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 },
            resume: true,
            context: Some("{\"lang\":\"en\"}".into()),
            transcript: vec![TranscriptLine {
                index: 0,
                role: TranscriptRole::Agent,
                text: "hello".into(),
                at_ms: 5,
            }],
            transcript_next_index: 1,
            transcript_dropped: 0,
            turns: 1,
            last_mark: Some("greeting".into()),
        };
        let messages = [
            ToAgent::Start(Box::new(start)),
            ToAgent::Audio(vec![1, 2, 3]),
            ToAgent::Dtmf { digit: '#' },
            ToAgent::Mark { name: "m".into(), cleared: true },
            ToAgent::Stop { reason: "completed".into() },
        ];
        for msg in messages {
            let frame = msg.clone().encode();
            if let Frame::Text(text) = &frame {
                let value: serde_json::Value = serde_json::from_str(text).unwrap();
                assert_eq!(value["type"], msg.name(), "{text}");
            }
            assert_eq!(parse_to_agent(frame).unwrap(), msg);
        }
    }
}
