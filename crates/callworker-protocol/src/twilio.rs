//! Twilio Media Streams messages (bidirectional `<Connect><Stream>`), both directions.
//!
//! Twilio → server: `connected`, `start`, `media`, `dtmf`, `mark`, `stop`, each a JSON text
//! frame; numbers such as `sequenceNumber`, `chunk` and `timestamp` arrive as JSON strings.
//! Server → Twilio: `media`, `mark`, `clear`.
//!
//! Parsing is strict: the text length is bounded by [`Limits::message_bytes_max`], the decoded
//! media payload by [`Limits::payload_bytes_max`], base64 is validated, identifiers are
//! bounded, and an unknown `event` is reported as [`TwilioError::UnknownEvent`] so the caller
//! can apply Twilio's forward-compatibility rule (ignore it, count it) without guessing.
//!
//! Both directions also have encoders and parsers for the *other* side, so the Twilio
//! simulator in `callworker-client` speaks exactly the same format as the server.

//! Performance: `media` is the hot path (50 messages per second per call). Parsing
//! deserializes into private borrowed structs (strings are `Cow`s that borrow from the text
//! unless they contain JSON escapes), decodes base64 straight into the output buffer after
//! bounding its size, and allocates only the output's `streamSid` and payload. Encoders write
//! JSON by hand into the caller's `String`, with no `serde_json::Value` in between.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::codec::{AudioFormat, Encoding};

/// Longest unknown `event` name kept in [`TwilioError::UnknownEvent`], in bytes; longer names
/// are truncated so a hostile sender cannot make us log or label with megabytes.
pub const EVENT_NAME_BYTES_MAX: usize = 32;
/// Longest text kept from a JSON parser error in [`TwilioError::MalformedJson`], in bytes
/// (parser messages can quote the input).
pub const ERROR_TEXT_BYTES_MAX: usize = 200;
/// Most entries accepted in `start.tracks` (Twilio sends `inbound`, `outbound` or both).
pub const TRACKS_MAX: usize = 2;

/// Bounds applied while parsing Twilio messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted text message, in bytes; larger → [`TwilioError::MessageTooLarge`].
    pub message_bytes_max: usize,
    /// Largest decoded media payload, in bytes; larger → [`TwilioError::PayloadTooLarge`].
    pub payload_bytes_max: usize,
    /// Largest identifier (`streamSid`, `callSid`, mark name, parameter key/value), in bytes.
    pub id_bytes_max: usize,
    /// Most `customParameters` entries accepted on `start`.
    pub custom_parameters_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes_max: 64 * 1024,
            payload_bytes_max: 16 * 1024,
            id_bytes_max: 256,
            custom_parameters_max: 32,
        }
    }
}

/// Which leg of the call a media or DTMF message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Track {
    /// Audio from the caller (`"inbound"`; DTMF uses `"inbound_track"`, also accepted).
    Inbound,
    /// Audio played to the caller (`"outbound"`).
    Outbound,
}

impl Track {
    /// Parses the wire name; both the `media` form (`inbound`) and the `dtmf` form
    /// (`inbound_track`) are accepted.
    pub fn from_wire(name: &str) -> Option<Track> {
        match name {
            "inbound" | "inbound_track" => Some(Track::Inbound),
            "outbound" | "outbound_track" => Some(Track::Outbound),
            _ => None,
        }
    }

    /// The name used in `start.tracks` and `media.track` (`inbound`).
    pub fn media_name(self) -> &'static str {
        match self {
            Track::Inbound => "inbound",
            Track::Outbound => "outbound",
        }
    }

    /// The name used in `dtmf.track` (`inbound_track`).
    pub fn dtmf_name(self) -> &'static str {
        match self {
            Track::Inbound => "inbound_track",
            Track::Outbound => "outbound_track",
        }
    }
}

/// `mediaFormat` of a `start` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaFormat {
    /// For example `audio/x-mulaw`.
    pub encoding: String,
    pub sample_rate_hz: u32,
    pub channels: u16,
}

impl MediaFormat {
    /// The `encoding` Twilio uses for μ-law.
    pub const MULAW: &'static str = "audio/x-mulaw";

    /// Twilio's only format today: mono μ-law at 8 kHz.
    pub fn twilio_default() -> MediaFormat {
        MediaFormat { encoding: MediaFormat::MULAW.to_owned(), sample_rate_hz: 8_000, channels: 1 }
    }

    /// The matching [`AudioFormat`], or `None` when callworker cannot carry this format
    /// (not mono, an unknown encoding or an unsupported rate).
    pub fn audio_format(&self) -> Option<AudioFormat> {
        let encoding = match self.encoding.as_str() {
            "audio/x-mulaw" => Encoding::Pcmu,
            "audio/x-alaw" => Encoding::Pcma,
            _ => return None,
        };
        let format = AudioFormat { encoding, sample_rate_hz: self.sample_rate_hz };
        (self.channels == 1 && format.validate().is_ok()).then_some(format)
    }
}

/// `connected`: the first message on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub protocol: String,
    pub version: String,
}

/// `start`: stream metadata, sent once after `connected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub sequence_number: u64,
    pub stream_sid: String,
    pub account_sid: String,
    pub call_sid: String,
    pub tracks: Vec<Track>,
    pub custom_parameters: BTreeMap<String, String>,
    pub media_format: MediaFormat,
}

/// `media` from Twilio: one chunk of caller audio (payload already base64-decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub sequence_number: u64,
    pub stream_sid: String,
    pub track: Track,
    /// Chunk number, starting at 1, per track.
    pub chunk: u64,
    /// Milliseconds since the stream started.
    pub timestamp_ms: u64,
    pub payload: Vec<u8>,
}

/// `dtmf`: a keypress detected by Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtmf {
    pub sequence_number: u64,
    pub stream_sid: String,
    pub track: Track,
    /// One of `0-9`, `*`, `#`, `A-D`.
    pub digit: char,
}

/// `mark` from Twilio: the audio sent before our `mark` of this name finished playing
/// (or was cleared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub sequence_number: u64,
    pub stream_sid: String,
    pub name: String,
}

/// `stop`: the stream ended (call hung up or `<Stream>` stopped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub sequence_number: u64,
    pub stream_sid: String,
    pub account_sid: String,
    pub call_sid: String,
}

/// A message sent by Twilio to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromTwilio {
    Connected(Connected),
    Start(Start),
    Media(Media),
    Dtmf(Dtmf),
    Mark(Mark),
    Stop(Stop),
}

impl FromTwilio {
    /// The `sequenceNumber`, for every message but `connected` (which has none).
    pub fn sequence_number(&self) -> Option<u64> {
        match self {
            FromTwilio::Connected(_) => None,
            FromTwilio::Start(m) => Some(m.sequence_number),
            FromTwilio::Media(m) => Some(m.sequence_number),
            FromTwilio::Dtmf(m) => Some(m.sequence_number),
            FromTwilio::Mark(m) => Some(m.sequence_number),
            FromTwilio::Stop(m) => Some(m.sequence_number),
        }
    }

    /// The event name as it appears on the wire (`"media"`, …), for logs and metric labels.
    pub fn event_name(&self) -> &'static str {
        match self {
            FromTwilio::Connected(_) => "connected",
            FromTwilio::Start(_) => "start",
            FromTwilio::Media(_) => "media",
            FromTwilio::Dtmf(_) => "dtmf",
            FromTwilio::Mark(_) => "mark",
            FromTwilio::Stop(_) => "stop",
        }
    }
}

/// A message sent by the server to Twilio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToTwilio {
    /// Audio to play, μ-law 8 kHz (raw bytes; base64-encoded on the wire).
    Media { stream_sid: String, payload: Vec<u8> },
    /// Ask Twilio to echo `name` back once the audio sent before it has played.
    Mark { stream_sid: String, name: String },
    /// Discard audio buffered by Twilio but not yet played.
    Clear { stream_sid: String },
}

impl ToTwilio {
    /// The event name as it appears on the wire (`"media"`, `"mark"`, `"clear"`).
    pub fn event_name(&self) -> &'static str {
        match self {
            ToTwilio::Media { .. } => "media",
            ToTwilio::Mark { .. } => "mark",
            ToTwilio::Clear { .. } => "clear",
        }
    }
}

/// Why a Twilio message was refused. Each variant maps to one close code and metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TwilioError {
    #[error("message of {size} bytes exceeds the {max}-byte limit")]
    MessageTooLarge { size: usize, max: usize },
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("unknown event {0:?}")]
    UnknownEvent(String),
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("invalid base64 in media payload")]
    InvalidBase64,
    #[error("media payload of {size} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge { size: usize, max: usize },
}

impl TwilioError {
    /// Stable snake_case label for metrics and logs (`"malformed_json"`, …).
    pub fn label(&self) -> &'static str {
        match self {
            TwilioError::MessageTooLarge { .. } => "message_too_large",
            TwilioError::MalformedJson(_) => "malformed_json",
            TwilioError::UnknownEvent(_) => "unknown_event",
            TwilioError::MissingField(_) => "missing_field",
            TwilioError::InvalidField { .. } => "invalid_field",
            TwilioError::InvalidBase64 => "invalid_base64",
            TwilioError::PayloadTooLarge { .. } => "payload_too_large",
        }
    }
}

/// Parses one text frame sent by Twilio.
///
/// Checks run in this order: size, JSON shape, `event` (an unknown one is reported before
/// any other field is looked at), then the event's fields.
pub fn parse_from_twilio(text: &str, limits: &Limits) -> Result<FromTwilio, TwilioError> {
    let raw = parse_raw(text, limits)?;
    let event = raw.event_name()?;
    match event.as_ref() {
        "connected" => Ok(FromTwilio::Connected(Connected {
            protocol: id(raw.protocol, "protocol", limits)?,
            version: id(raw.version, "version", limits)?,
        })),
        "start" => parse_start(raw, limits).map(FromTwilio::Start),
        "media" => {
            let sequence_number = number(raw.sequence_number, "sequenceNumber")?;
            let stream_sid = id(raw.stream_sid, "streamSid", limits)?;
            let media = raw.media.ok_or(TwilioError::MissingField("media"))?.0;
            Ok(FromTwilio::Media(Media {
                sequence_number,
                stream_sid,
                track: track(media.track, "media.track")?,
                chunk: number(media.chunk, "media.chunk")?,
                timestamp_ms: number(media.timestamp, "media.timestamp")?,
                payload: payload(media.payload, limits)?,
            }))
        }
        "dtmf" => {
            let sequence_number = number(raw.sequence_number, "sequenceNumber")?;
            let stream_sid = id(raw.stream_sid, "streamSid", limits)?;
            let dtmf = raw.dtmf.ok_or(TwilioError::MissingField("dtmf"))?.0;
            let track = track(dtmf.track, "dtmf.track")?;
            let digit = string(dtmf.digit, "dtmf.digit")?;
            let mut chars = digit.chars();
            let digit = match (chars.next(), chars.next()) {
                (Some(c), None) if crate::is_dtmf_digit(c) => c,
                _ => {
                    return Err(invalid("dtmf.digit", "expected one of 0-9, *, #, A-D".to_owned()));
                }
            };
            Ok(FromTwilio::Dtmf(Dtmf { sequence_number, stream_sid, track, digit }))
        }
        "mark" => {
            let sequence_number = number(raw.sequence_number, "sequenceNumber")?;
            let stream_sid = id(raw.stream_sid, "streamSid", limits)?;
            let mark = raw.mark.ok_or(TwilioError::MissingField("mark"))?.0;
            Ok(FromTwilio::Mark(Mark {
                sequence_number,
                stream_sid,
                name: id(mark.name, "mark.name", limits)?,
            }))
        }
        "stop" => {
            let sequence_number = number(raw.sequence_number, "sequenceNumber")?;
            let stream_sid = id(raw.stream_sid, "streamSid", limits)?;
            let stop = raw.stop.ok_or(TwilioError::MissingField("stop"))?.0;
            Ok(FromTwilio::Stop(Stop {
                sequence_number,
                stream_sid,
                account_sid: id(stop.account_sid, "stop.accountSid", limits)?,
                call_sid: id(stop.call_sid, "stop.callSid", limits)?,
            }))
        }
        other => Err(unknown_event(other)),
    }
}

fn parse_start(raw: RawMessage<'_>, limits: &Limits) -> Result<Start, TwilioError> {
    let sequence_number = number(raw.sequence_number, "sequenceNumber")?;
    let stream_sid = id(raw.stream_sid, "streamSid", limits)?;
    let start = raw.start.ok_or(TwilioError::MissingField("start"))?.0;
    // Twilio repeats the stream SID inside `start`; a disagreement means a forged or broken
    // sender, and we would not know which one to trust.
    if let Some(inner) = start.stream_sid
        && *string(Some(inner), "start.streamSid")? != *stream_sid
    {
        return Err(invalid("start.streamSid", "differs from streamSid".to_owned()));
    }
    let account_sid = id(start.account_sid, "start.accountSid", limits)?;
    let call_sid = id(start.call_sid, "start.callSid", limits)?;

    let raw_tracks = start.tracks.ok_or(TwilioError::MissingField("start.tracks"))?;
    if raw_tracks.len() > TRACKS_MAX {
        return Err(invalid("start.tracks", format!("more than {TRACKS_MAX} entries")));
    }
    let mut tracks = Vec::with_capacity(raw_tracks.len());
    for t in raw_tracks {
        let t = track(Some(t), "start.tracks")?;
        if !tracks.contains(&t) {
            tracks.push(t);
        }
    }

    let mut custom_parameters = BTreeMap::new();
    if let Some(Params(params)) = start.custom_parameters {
        if params.len() > limits.custom_parameters_max {
            return Err(invalid(
                "start.customParameters",
                format!("more than {} entries", limits.custom_parameters_max),
            ));
        }
        for (key, value) in params {
            let key = bounded(key, "start.customParameters", limits)?;
            let value = id(Some(value), "start.customParameters", limits)?;
            if custom_parameters.insert(key, value).is_some() {
                return Err(invalid("start.customParameters", "duplicate key".to_owned()));
            }
        }
    }

    let format = start.media_format.ok_or(TwilioError::MissingField("start.mediaFormat"))?.0;
    let sample_rate_hz = number(format.sample_rate, "start.mediaFormat.sampleRate")?;
    let channels = number(format.channels, "start.mediaFormat.channels")?;
    let media_format = MediaFormat {
        encoding: id(format.encoding, "start.mediaFormat.encoding", limits)?,
        sample_rate_hz: u32::try_from(sample_rate_hz)
            .map_err(|_| invalid("start.mediaFormat.sampleRate", "out of range".to_owned()))?,
        channels: u16::try_from(channels)
            .map_err(|_| invalid("start.mediaFormat.channels", "out of range".to_owned()))?,
    };

    Ok(Start { sequence_number, stream_sid, account_sid, call_sid, tracks, custom_parameters, media_format })
}

/// Appends the JSON of a Twilio → server message to `out` (used by the simulator and tests).
///
/// Field order and number formatting follow what Twilio sends. The encoder does not
/// validate: a message that breaks a [`Limits`] bound or carries an invalid digit is written
/// as given and refused by the parser.
pub fn encode_from_twilio(msg: &FromTwilio, out: &mut String) {
    match msg {
        FromTwilio::Connected(m) => {
            out.push_str(r#"{"event":"connected","protocol":"#);
            push_json_str(out, &m.protocol);
            out.push_str(r#","version":"#);
            push_json_str(out, &m.version);
            out.push('}');
        }
        FromTwilio::Start(m) => {
            out.push_str(r#"{"event":"start","sequenceNumber":"#);
            push_u64_str(out, m.sequence_number);
            out.push_str(r#","start":{"accountSid":"#);
            push_json_str(out, &m.account_sid);
            out.push_str(r#","streamSid":"#);
            push_json_str(out, &m.stream_sid);
            out.push_str(r#","callSid":"#);
            push_json_str(out, &m.call_sid);
            out.push_str(r#","tracks":["#);
            for (i, t) in m.tracks.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(out, t.media_name());
            }
            out.push_str(r#"],"customParameters":{"#);
            for (i, (key, value)) in m.custom_parameters.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_json_str(out, key);
                out.push(':');
                push_json_str(out, value);
            }
            out.push_str(r#"},"mediaFormat":{"encoding":"#);
            push_json_str(out, &m.media_format.encoding);
            out.push_str(r#","sampleRate":"#);
            push_u64(out, u64::from(m.media_format.sample_rate_hz));
            out.push_str(r#","channels":"#);
            push_u64(out, u64::from(m.media_format.channels));
            out.push_str(r#"}},"streamSid":"#);
            push_json_str(out, &m.stream_sid);
            out.push('}');
        }
        FromTwilio::Media(m) => {
            out.reserve(128 + m.stream_sid.len() + base64_len(m.payload.len()));
            out.push_str(r#"{"event":"media","sequenceNumber":"#);
            push_u64_str(out, m.sequence_number);
            out.push_str(r#","media":{"track":"#);
            push_json_str(out, m.track.media_name());
            out.push_str(r#","chunk":"#);
            push_u64_str(out, m.chunk);
            out.push_str(r#","timestamp":"#);
            push_u64_str(out, m.timestamp_ms);
            out.push_str(r#","payload":""#);
            BASE64.encode_string(&m.payload, out);
            out.push_str(r#""},"streamSid":"#);
            push_json_str(out, &m.stream_sid);
            out.push('}');
        }
        FromTwilio::Dtmf(m) => {
            out.push_str(r#"{"event":"dtmf","streamSid":"#);
            push_json_str(out, &m.stream_sid);
            out.push_str(r#","sequenceNumber":"#);
            push_u64_str(out, m.sequence_number);
            out.push_str(r#","dtmf":{"track":"#);
            push_json_str(out, m.track.dtmf_name());
            out.push_str(r#","digit":"#);
            let mut buf = [0u8; 4];
            push_json_str(out, m.digit.encode_utf8(&mut buf));
            out.push_str("}}");
        }
        FromTwilio::Mark(m) => {
            out.push_str(r#"{"event":"mark","sequenceNumber":"#);
            push_u64_str(out, m.sequence_number);
            out.push_str(r#","streamSid":"#);
            push_json_str(out, &m.stream_sid);
            out.push_str(r#","mark":{"name":"#);
            push_json_str(out, &m.name);
            out.push_str("}}");
        }
        FromTwilio::Stop(m) => {
            out.push_str(r#"{"event":"stop","sequenceNumber":"#);
            push_u64_str(out, m.sequence_number);
            out.push_str(r#","stop":{"accountSid":"#);
            push_json_str(out, &m.account_sid);
            out.push_str(r#","callSid":"#);
            push_json_str(out, &m.call_sid);
            out.push_str(r#"},"streamSid":"#);
            push_json_str(out, &m.stream_sid);
            out.push('}');
        }
    }
}

/// Appends the JSON of a server → Twilio message to `out`.
pub fn encode_to_twilio(msg: &ToTwilio, out: &mut String) {
    match msg {
        ToTwilio::Media { stream_sid, payload } => {
            out.reserve(64 + stream_sid.len() + base64_len(payload.len()));
            out.push_str(r#"{"event":"media","streamSid":"#);
            push_json_str(out, stream_sid);
            out.push_str(r#","media":{"payload":""#);
            BASE64.encode_string(payload, out);
            out.push_str(r#""}}"#);
        }
        ToTwilio::Mark { stream_sid, name } => {
            out.push_str(r#"{"event":"mark","streamSid":"#);
            push_json_str(out, stream_sid);
            out.push_str(r#","mark":{"name":"#);
            push_json_str(out, name);
            out.push_str("}}");
        }
        ToTwilio::Clear { stream_sid } => {
            out.push_str(r#"{"event":"clear","streamSid":"#);
            push_json_str(out, stream_sid);
            out.push('}');
        }
    }
}

/// Parses a server → Twilio message (used by the simulator and tests).
pub fn parse_to_twilio(text: &str, limits: &Limits) -> Result<ToTwilio, TwilioError> {
    let raw = parse_raw(text, limits)?;
    let event = raw.event_name()?;
    match event.as_ref() {
        "media" => {
            let stream_sid = id(raw.stream_sid, "streamSid", limits)?;
            let media = raw.media.ok_or(TwilioError::MissingField("media"))?.0;
            Ok(ToTwilio::Media { stream_sid, payload: payload(media.payload, limits)? })
        }
        "mark" => {
            let stream_sid = id(raw.stream_sid, "streamSid", limits)?;
            let mark = raw.mark.ok_or(TwilioError::MissingField("mark"))?.0;
            Ok(ToTwilio::Mark { stream_sid, name: id(mark.name, "mark.name", limits)? })
        }
        "clear" => Ok(ToTwilio::Clear { stream_sid: id(raw.stream_sid, "streamSid", limits)? }),
        other => Err(unknown_event(other)),
    }
}

/// A gap or regression in Twilio's `sequenceNumber`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sequence number {got}, expected {expected}")]
pub struct SequenceError {
    pub expected: u64,
    pub got: u64,
}

/// Checks that `sequenceNumber` increases by exactly one per message on a stream.
///
/// Twilio numbers every message after `connected` starting at 1 (`start` is 1).
#[derive(Debug, Clone, Default)]
pub struct SequenceTracker {
    next: Option<u64>,
}

impl SequenceTracker {
    /// Accepts `got` if it is the next number (the first must be 1), otherwise reports what
    /// was expected and leaves the tracker unchanged.
    ///
    /// The expected number saturates at `u64::MAX` (2⁶⁴ messages is not a reachable stream).
    pub fn check(&mut self, got: u64) -> Result<(), SequenceError> {
        let expected = self.next.unwrap_or(1);
        if got != expected {
            return Err(SequenceError { expected, got });
        }
        self.next = Some(got.saturating_add(1));
        Ok(())
    }

    /// The number the next message must carry.
    pub fn expected(&self) -> u64 {
        self.next.unwrap_or(1)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing internals.

/// Every field either direction may carry; unknown fields are ignored (Twilio adds fields
/// over time), known ones are checked per event after dispatch.
#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow)]
    event: Option<Scalar<'a>>,
    #[serde(borrow, rename = "sequenceNumber")]
    sequence_number: Option<Scalar<'a>>,
    #[serde(borrow, rename = "streamSid")]
    stream_sid: Option<Scalar<'a>>,
    #[serde(borrow)]
    protocol: Option<Scalar<'a>>,
    #[serde(borrow)]
    version: Option<Scalar<'a>>,
    #[serde(borrow)]
    start: Option<Object<RawStart<'a>>>,
    #[serde(borrow)]
    media: Option<Object<RawMedia<'a>>>,
    #[serde(borrow)]
    dtmf: Option<Object<RawDtmf<'a>>>,
    #[serde(borrow)]
    mark: Option<Object<RawMark<'a>>>,
    #[serde(borrow)]
    stop: Option<Object<RawStop<'a>>>,
}

impl<'a> RawMessage<'a> {
    fn event_name(&self) -> Result<&Cow<'a, str>, TwilioError> {
        match &self.event {
            None => Err(TwilioError::MissingField("event")),
            Some(Scalar::Str(name)) => Ok(name),
            Some(other) => Err(invalid("event", format!("expected a string, found {}", other.kind()))),
        }
    }
}

#[derive(Deserialize)]
struct RawStart<'a> {
    #[serde(borrow, rename = "accountSid")]
    account_sid: Option<Scalar<'a>>,
    #[serde(borrow, rename = "streamSid")]
    stream_sid: Option<Scalar<'a>>,
    #[serde(borrow, rename = "callSid")]
    call_sid: Option<Scalar<'a>>,
    #[serde(borrow)]
    tracks: Option<Vec<Scalar<'a>>>,
    #[serde(borrow, rename = "customParameters")]
    custom_parameters: Option<Params<'a>>,
    #[serde(borrow, rename = "mediaFormat")]
    media_format: Option<Object<RawMediaFormat<'a>>>,
}

#[derive(Deserialize)]
struct RawMediaFormat<'a> {
    #[serde(borrow)]
    encoding: Option<Scalar<'a>>,
    #[serde(borrow, rename = "sampleRate")]
    sample_rate: Option<Scalar<'a>>,
    #[serde(borrow)]
    channels: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(borrow)]
    track: Option<Scalar<'a>>,
    #[serde(borrow)]
    chunk: Option<Scalar<'a>>,
    #[serde(borrow)]
    timestamp: Option<Scalar<'a>>,
    #[serde(borrow)]
    payload: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct RawDtmf<'a> {
    #[serde(borrow)]
    track: Option<Scalar<'a>>,
    #[serde(borrow)]
    digit: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct RawMark<'a> {
    #[serde(borrow)]
    name: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct RawStop<'a> {
    #[serde(borrow, rename = "accountSid")]
    account_sid: Option<Scalar<'a>>,
    #[serde(borrow, rename = "callSid")]
    call_sid: Option<Scalar<'a>>,
}

/// Any JSON value, kept only if it is a string or a non-negative integer: the field checks
/// then report a wrong type as [`TwilioError::InvalidField`] naming the field, instead of
/// a generic parser error.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Uint(u64),
    /// Any other value, described for the error message.
    Other(&'static str),
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Uint(_) => "a number",
            Scalar::Other(kind) => kind,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor(PhantomData))
    }
}

struct ScalarVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for ScalarVisitor<'a> {
    type Value = Scalar<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Uint(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(v).map_or(Scalar::Other("a negative number"), Scalar::Uint))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other("a fractional or out-of-range number"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other("a boolean"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
}

/// A struct that must be a JSON object: serde's derived impls also accept arrays (fields by
/// position), which Twilio never sends and a strict parser must refuse.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }

        deserializer.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

/// `customParameters` in wire order, duplicates kept so they can be refused.
struct Params<'a>(Vec<(Cow<'a, str>, Scalar<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Params<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ParamsVisitor<'a>(PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for ParamsVisitor<'a> {
            type Value = Params<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(8));
                while let Some((key, value)) = map.next_entry::<Scalar<'a>, Scalar<'a>>()? {
                    // JSON object keys are always strings.
                    let Scalar::Str(key) = key else {
                        return Err(de::Error::custom("non-string key"));
                    };
                    entries.push((key, value));
                }
                Ok(Params(entries))
            }
        }

        deserializer.deserialize_map(ParamsVisitor(PhantomData))
    }
}

fn parse_raw<'a>(text: &'a str, limits: &Limits) -> Result<RawMessage<'a>, TwilioError> {
    if text.len() > limits.message_bytes_max {
        return Err(TwilioError::MessageTooLarge { size: text.len(), max: limits.message_bytes_max });
    }
    serde_json::from_str::<Object<RawMessage<'a>>>(text)
        .map(|object| object.0)
        .map_err(|e| TwilioError::MalformedJson(truncated(&e.to_string(), ERROR_TEXT_BYTES_MAX)))
}

fn invalid(field: &'static str, reason: String) -> TwilioError {
    TwilioError::InvalidField { field, reason }
}

fn unknown_event(name: &str) -> TwilioError {
    TwilioError::UnknownEvent(truncated(name, EVENT_NAME_BYTES_MAX))
}

/// `text` cut to at most `max_bytes`, on a character boundary.
pub(crate) fn truncated(text: &str, max_bytes: usize) -> String {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

fn string<'a>(value: Option<Scalar<'a>>, field: &'static str) -> Result<Cow<'a, str>, TwilioError> {
    match value {
        None => Err(TwilioError::MissingField(field)),
        Some(Scalar::Str(s)) => Ok(s),
        Some(other) => Err(invalid(field, format!("expected a string, found {}", other.kind()))),
    }
}

fn bounded(value: Cow<'_, str>, field: &'static str, limits: &Limits) -> Result<String, TwilioError> {
    if value.len() > limits.id_bytes_max {
        return Err(invalid(
            field,
            format!("{} bytes exceeds the {}-byte limit", value.len(), limits.id_bytes_max),
        ));
    }
    Ok(value.into_owned())
}

fn id(value: Option<Scalar<'_>>, field: &'static str, limits: &Limits) -> Result<String, TwilioError> {
    bounded(string(value, field)?, field, limits)
}

/// A non-negative integer sent as a decimal string (Twilio's form) or, leniently, as a JSON
/// number.
fn number(value: Option<Scalar<'_>>, field: &'static str) -> Result<u64, TwilioError> {
    match value {
        None => Err(TwilioError::MissingField(field)),
        Some(Scalar::Uint(n)) => Ok(n),
        Some(Scalar::Str(s)) => parse_decimal(&s).ok_or_else(|| {
            invalid(field, "expected a decimal string of at most 20 digits that fits in u64".to_owned())
        }),
        Some(other) => Err(invalid(field, format!("expected a decimal string, found {}", other.kind()))),
    }
}

/// Only ASCII digits: `u64::from_str` alone would also accept a leading `+`.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn track(value: Option<Scalar<'_>>, field: &'static str) -> Result<Track, TwilioError> {
    let name = string(value, field)?;
    Track::from_wire(&name).ok_or_else(|| {
        invalid(field, "expected inbound, outbound, inbound_track or outbound_track".to_owned())
    })
}

/// Decodes the base64 `payload` after checking its decoded size against the bound, so an
/// oversized payload costs no allocation.
fn payload(value: Option<Scalar<'_>>, limits: &Limits) -> Result<Vec<u8>, TwilioError> {
    let text = string(value, "media.payload")?;
    let bytes = text.as_bytes();
    // The standard engine requires canonical padding, so a valid text is a multiple of 4.
    if !bytes.len().is_multiple_of(4) {
        return Err(TwilioError::InvalidBase64);
    }
    let padding = bytes.iter().rev().take(2).filter(|&&b| b == b'=').count();
    let size = bytes.len() / 4 * 3 - padding;
    if size > limits.payload_bytes_max {
        return Err(TwilioError::PayloadTooLarge { size, max: limits.payload_bytes_max });
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    BASE64.decode_vec(bytes, &mut out).map_err(|_| TwilioError::InvalidBase64)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Encoding internals.

fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// Appends `s` as a JSON string literal (quotes included).
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0C => "\\f",
            0x00..=0x1F => "",
            _ => continue,
        };
        // `i` indexes an ASCII byte, so both slices end on character boundaries.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

/// Twilio sends its counters as JSON strings.
fn push_u64_str(out: &mut String, n: u64) {
    out.push('"');
    push_u64(out, n);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MZ: &str = "MZ18ad3ab5a668481ce02b83e7395059f0";
    const AC: &str = "ACxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    const CA: &str = "CAxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
    const PAYLOAD: [u8; 10] = [0xFF, 0xFE, 0x7F, 0x00, 0x80, 0x10, 0x20, 0x30, 0x40, 0xD5];

    fn limits() -> Limits {
        Limits::default()
    }

    fn from_fixtures() -> Vec<(&'static str, FromTwilio)> {
        vec![
            (
                include_str!("../tests/fixtures/twilio/from_connected.json"),
                FromTwilio::Connected(Connected { protocol: "Call".into(), version: "1.0.0".into() }),
            ),
            (
                include_str!("../tests/fixtures/twilio/from_start.json"),
                FromTwilio::Start(Start {
                    sequence_number: 1,
                    stream_sid: MZ.into(),
                    account_sid: AC.into(),
                    call_sid: CA.into(),
                    tracks: vec![Track::Inbound],
                    custom_parameters: [("call_id", "c1"), ("epoch", "3"), ("sig", "c2lnbmF0dXJl")]
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    media_format: MediaFormat::twilio_default(),
                }),
            ),
            (
                include_str!("../tests/fixtures/twilio/from_media.json"),
                FromTwilio::Media(Media {
                    sequence_number: 3,
                    stream_sid: MZ.into(),
                    track: Track::Inbound,
                    chunk: 1,
                    timestamp_ms: 5,
                    payload: PAYLOAD.to_vec(),
                }),
            ),
            (
                include_str!("../tests/fixtures/twilio/from_dtmf.json"),
                FromTwilio::Dtmf(Dtmf {
                    sequence_number: 5,
                    stream_sid: MZ.into(),
                    track: Track::Inbound,
                    digit: '1',
                }),
            ),
            (
                include_str!("../tests/fixtures/twilio/from_mark.json"),
                FromTwilio::Mark(Mark { sequence_number: 4, stream_sid: MZ.into(), name: "my label".into() }),
            ),
            (
                include_str!("../tests/fixtures/twilio/from_stop.json"),
                FromTwilio::Stop(Stop {
                    sequence_number: 5,
                    stream_sid: MZ.into(),
                    account_sid: AC.into(),
                    call_sid: CA.into(),
                }),
            ),
        ]
    }

    fn to_fixtures() -> Vec<(&'static str, ToTwilio)> {
        vec![
            (
                include_str!("../tests/fixtures/twilio/to_media.json"),
                ToTwilio::Media { stream_sid: MZ.into(), payload: PAYLOAD.to_vec() },
            ),
            (
                include_str!("../tests/fixtures/twilio/to_mark.json"),
                ToTwilio::Mark { stream_sid: MZ.into(), name: "prompt-1 \"quoted\"".into() },
            ),
            (
                include_str!("../tests/fixtures/twilio/to_clear.json"),
                ToTwilio::Clear { stream_sid: MZ.into() },
            ),
        ]
    }

    #[test]
    fn from_twilio_golden_fixtures_parse_and_encode_exactly() {
        for (text, expected) in from_fixtures() {
            let text = text.trim_end();
            assert_eq!(parse_from_twilio(text, &limits()), Ok(expected.clone()), "{text}");
            let mut out = String::new();
            encode_from_twilio(&expected, &mut out);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn to_twilio_golden_fixtures_parse_and_encode_exactly() {
        for (text, expected) in to_fixtures() {
            let text = text.trim_end();
            assert_eq!(parse_to_twilio(text, &limits()), Ok(expected.clone()), "{text}");
            let mut out = String::new();
            encode_to_twilio(&expected, &mut out);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn encoders_append() {
        let mut out = String::from("prefix");
        encode_to_twilio(&ToTwilio::Clear { stream_sid: "MZ1".into() }, &mut out);
        assert_eq!(out, r#"prefix{"event":"clear","streamSid":"MZ1"}"#);
    }

    #[test]
    fn event_names_and_sequence_numbers() {
        let expected = [
            ("connected", None),
            ("start", Some(1)),
            ("media", Some(3)),
            ("dtmf", Some(5)),
            ("mark", Some(4)),
            ("stop", Some(5)),
        ];
        for ((_, msg), (name, seq)) in from_fixtures().into_iter().zip(expected) {
            assert_eq!(msg.event_name(), name);
            assert_eq!(msg.sequence_number(), seq);
        }
        let names: Vec<_> = to_fixtures().iter().map(|(_, m)| m.event_name()).collect();
        assert_eq!(names, ["media", "mark", "clear"]);
    }

    #[test]
    fn lenient_forms_are_accepted() {
        let cases: &[(&str, FromTwilio)] = &[
            // Numbers as JSON numbers, unknown fields, other field order, whitespace,
            // escaped slashes in base64, an empty payload.
            (
                r#" { "streamSid" : "MZ1", "extra": {"a": [1, 2]}, "event" : "media",
                   "sequenceNumber" : 7,
                   "media" : {"payload": "\/\/5\/AIAQIDBA1Q==", "timestamp": 20, "chunk": 2,
                              "track": "outbound", "new": null } } "#,
                FromTwilio::Media(Media {
                    sequence_number: 7,
                    stream_sid: "MZ1".into(),
                    track: Track::Outbound,
                    chunk: 2,
                    timestamp_ms: 20,
                    payload: PAYLOAD.to_vec(),
                }),
            ),
            (
                r#"{"event":"media","sequenceNumber":"0007","streamSid":"MZ1","media":{"track":"inbound_track","chunk":"1","timestamp":"0","payload":""}}"#,
                FromTwilio::Media(Media {
                    sequence_number: 7,
                    stream_sid: "MZ1".into(),
                    track: Track::Inbound,
                    chunk: 1,
                    timestamp_ms: 0,
                    payload: Vec::new(),
                }),
            ),
            (
                r##"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"2","dtmf":{"track":"outbound_track","digit":"#"}}"##,
                FromTwilio::Dtmf(Dtmf {
                    sequence_number: 2,
                    stream_sid: "MZ1".into(),
                    track: Track::Outbound,
                    digit: '#',
                }),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_from_twilio(text, &limits()).as_ref(), Ok(expected), "{text}");
        }
        // Both tracks, no customParameters, sampleRate as a string, no inner streamSid.
        let start = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"accountSid":"AC1","callSid":"CA1","tracks":["inbound","outbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":"8000","channels":1}}}"#;
        let Ok(FromTwilio::Start(start)) = parse_from_twilio(start, &limits()) else {
            panic!("start refused");
        };
        assert_eq!(start.tracks, [Track::Inbound, Track::Outbound]);
        assert!(start.custom_parameters.is_empty());
        assert_eq!(start.media_format.audio_format(), Some(crate::AudioFormat::TWILIO));
    }

    #[test]
    fn every_error_variant() {
        let l = Limits {
            message_bytes_max: 512,
            payload_bytes_max: 6,
            id_bytes_max: 16,
            custom_parameters_max: 2,
        };
        let media = |seq: &str, payload: &str| {
            format!(
                r#"{{"event":"media","sequenceNumber":{seq},"streamSid":"MZ1","media":{{"track":"inbound","chunk":"1","timestamp":"0","payload":"{payload}"}}}}"#
            )
        };
        let start = |params: &str, tracks: &str| {
            format!(
                r#"{{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{{"accountSid":"AC1","callSid":"CA1","tracks":{tracks},"customParameters":{params},"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
            )
        };
        let dtmf = |digit: &str| {
            format!(
                r#"{{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{{"track":"inbound_track","digit":{digit}}}}}"#
            )
        };
        let cases: Vec<(String, &str, Option<&str>)> = vec![
            (" ".repeat(513), "message_too_large", None),
            (String::new(), "malformed_json", None),
            ("{".into(), "malformed_json", None),
            ("[]".into(), "malformed_json", None),
            (r#"["media"]"#.into(), "malformed_json", None),
            (r#""media""#.into(), "malformed_json", None),
            (r#"{"event":"stop"} x"#.into(), "malformed_json", None),
            (r#"{"event":"a","event":"b"}"#.into(), "malformed_json", None),
            (r#"{"event":"media","media":["inbound"]}"#.into(), "malformed_json", None),
            (r#"{"event":"start","start":{"tracks":"inbound"}}"#.into(), "malformed_json", None),
            (r#"{"event":"nope"}"#.into(), "unknown_event", None),
            (r#"{"event":"clear","streamSid":"MZ1"}"#.into(), "unknown_event", None),
            ("{}".into(), "missing_field", Some("event")),
            (r#"{"event":null}"#.into(), "missing_field", Some("event")),
            (r#"{"event":1}"#.into(), "invalid_field", Some("event")),
            (r#"{"event":"connected","protocol":"Call"}"#.into(), "missing_field", Some("version")),
            (r#"{"event":"connected","protocol":"Call","version":1}"#.into(), "invalid_field", Some("version")),
            (r#"{"event":"media","streamSid":"MZ1"}"#.into(), "missing_field", Some("sequenceNumber")),
            (r#"{"event":"media","sequenceNumber":"1"}"#.into(), "missing_field", Some("streamSid")),
            (r#"{"event":"media","sequenceNumber":"1","streamSid":"MZ1"}"#.into(), "missing_field", Some("media")),
            (r#"{"event":"media","sequenceNumber":"1","streamSid":"MZ1","media":{}}"#.into(), "missing_field", Some("media.track")),
            (r#"{"event":"media","sequenceNumber":"1","streamSid":"MZ12345678901234567","media":{}}"#.into(), "invalid_field", Some("streamSid")),
            (media(r#""1""#, "AAAA").replace("\"inbound\"", "\"sideways\""), "invalid_field", Some("media.track")),
            (media(r#""-1""#, "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media(r#""+1""#, "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media(r#""""#, "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media(r#""1.0""#, "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media(r#""18446744073709551616""#, "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media("-1", "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media("1.5", "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media("true", "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media("[1]", "AAAA"), "invalid_field", Some("sequenceNumber")),
            (media("1", "AAA"), "invalid_base64", None),
            (media("1", "AA=A"), "invalid_base64", None),
            (media("1", "AA-_"), "invalid_base64", None),
            (media("1", "AAB="), "invalid_base64", None),
            (media("1", "AAAA AAA"), "invalid_base64", None),
            (media("1", "AAAAAAAAAA=="), "payload_too_large", None),
            (start("{}", r#"["inbound","outbound","inbound"]"#), "invalid_field", Some("start.tracks")),
            (start("{}", r#"["left"]"#), "invalid_field", Some("start.tracks")),
            (start(r#"{"a":"1","b":"2","c":"3"}"#, "[]"), "invalid_field", Some("start.customParameters")),
            (start(r#"{"a":"1","a":"2"}"#, "[]"), "invalid_field", Some("start.customParameters")),
            (start(r#"{"a":1}"#, "[]"), "invalid_field", Some("start.customParameters")),
            (start(r#"{"a":"12345678901234567"}"#, "[]"), "invalid_field", Some("start.customParameters")),
            (start(r#"{"12345678901234567":"a"}"#, "[]"), "invalid_field", Some("start.customParameters")),
            (start("{}", "[]").replace(r#""sampleRate":8000"#, r#""sampleRate":4294967296"#), "invalid_field", Some("start.mediaFormat.sampleRate")),
            (start("{}", "[]").replace(r#""channels":1"#, r#""channels":65536"#), "invalid_field", Some("start.mediaFormat.channels")),
            (start("{}", "[]").replace(r#","channels":1"#, ""), "missing_field", Some("start.mediaFormat.channels")),
            (start("{}", "[]").replace(r#""accountSid":"AC1","#, r#""streamSid":"MZ2","accountSid":"AC1","#), "invalid_field", Some("start.streamSid")),
            (start("{}", "[]").replace(r#""callSid":"CA1","#, ""), "missing_field", Some("start.callSid")),
            (dtmf(r#""E""#), "invalid_field", Some("dtmf.digit")),
            (dtmf(r#""12""#), "invalid_field", Some("dtmf.digit")),
            (dtmf(r#""""#), "invalid_field", Some("dtmf.digit")),
            (dtmf("1"), "invalid_field", Some("dtmf.digit")),
            (r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"12345678901234567"}}"#.into(), "invalid_field", Some("mark.name")),
            (r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{}}"#.into(), "missing_field", Some("mark.name")),
            (r#"{"event":"stop","sequenceNumber":"4","streamSid":"MZ1"}"#.into(), "missing_field", Some("stop")),
        ];
        for (text, label, field) in &cases {
            let err = parse_from_twilio(text, &l).expect_err(text);
            assert_eq!(err.label(), *label, "{text}: {err}");
            let got_field = match &err {
                TwilioError::MissingField(f) | TwilioError::InvalidField { field: f, .. } => Some(*f),
                _ => None,
            };
            assert_eq!(got_field, *field, "{text}: {err}");
        }
        assert_eq!(
            parse_from_twilio(&media("1", "AAAAAAAA"), &l).map(|m| m.event_name()),
            Ok("media"),
            "exactly payload_bytes_max is accepted"
        );
        assert_eq!(
            parse_from_twilio(&media("1", "AAAAAAAAAA=="), &l),
            Err(TwilioError::PayloadTooLarge { size: 7, max: 6 })
        );
        assert_eq!(
            parse_from_twilio(&" ".repeat(513), &l),
            Err(TwilioError::MessageTooLarge { size: 513, max: 512 })
        );
    }

    #[test]
    fn unknown_event_name_is_truncated_on_a_char_boundary() {
        let name = "é".repeat(100);
        let text = format!(r#"{{"event":"{name}"}}"#);
        let Err(TwilioError::UnknownEvent(kept)) = parse_from_twilio(&text, &limits()) else {
            panic!("expected unknown_event");
        };
        assert!(kept.len() <= EVENT_NAME_BYTES_MAX);
        assert_eq!(kept, "é".repeat(EVENT_NAME_BYTES_MAX / 2));
    }

    #[test]
    fn malformed_json_text_is_bounded() {
        let text = format!(r#"{{"event":"media","media":"{}"}}"#, "x".repeat(10_000));
        let Err(TwilioError::MalformedJson(reason)) = parse_from_twilio(&text, &limits()) else {
            panic!("expected malformed_json");
        };
        assert!(reason.len() <= ERROR_TEXT_BYTES_MAX);
    }

    #[test]
    fn to_twilio_errors() {
        let l = Limits { payload_bytes_max: 3, ..Limits::default() };
        let cases: &[(&str, &str)] = &[
            (r#"{"event":"start"}"#, "unknown_event"),
            (r#"{"event":"media","streamSid":"MZ1"}"#, "missing_field"),
            (r#"{"event":"media","streamSid":"MZ1","media":{"payload":"AAAAAA=="}}"#, "payload_too_large"),
            (r#"{"event":"media","streamSid":"MZ1","media":{"payload":"A"}}"#, "invalid_base64"),
            (r#"{"event":"mark","streamSid":"MZ1","mark":{"name":5}}"#, "invalid_field"),
            (r#"{"event":"clear"}"#, "missing_field"),
            ("nope", "malformed_json"),
        ];
        for (text, label) in cases {
            assert_eq!(parse_to_twilio(text, &l).map_err(|e| e.label()), Err(*label), "{text}");
        }
    }

    #[test]
    fn labels_are_distinct_snake_case() {
        let errors = [
            TwilioError::MessageTooLarge { size: 2, max: 1 },
            TwilioError::MalformedJson(String::new()),
            TwilioError::UnknownEvent(String::new()),
            TwilioError::MissingField("x"),
            TwilioError::InvalidField { field: "x", reason: String::new() },
            TwilioError::InvalidBase64,
            TwilioError::PayloadTooLarge { size: 2, max: 1 },
        ];
        let labels: Vec<_> = errors.iter().map(TwilioError::label).collect();
        assert_eq!(
            labels,
            [
                "message_too_large",
                "malformed_json",
                "unknown_event",
                "missing_field",
                "invalid_field",
                "invalid_base64",
                "payload_too_large"
            ]
        );
    }

    #[test]
    fn sequence_tracker() {
        // (input, accepted, expected afterwards)
        let steps: &[(u64, Result<(), SequenceError>, u64)] = &[
            (0, Err(SequenceError { expected: 1, got: 0 }), 1),
            (2, Err(SequenceError { expected: 1, got: 2 }), 1),
            (1, Ok(()), 2),
            (2, Ok(()), 3),
            (2, Err(SequenceError { expected: 3, got: 2 }), 3),
            (5, Err(SequenceError { expected: 3, got: 5 }), 3),
            (3, Ok(()), 4),
        ];
        let mut tracker = SequenceTracker::default();
        for &(got, result, expected_after) in steps {
            assert_eq!(tracker.check(got), result, "got {got}");
            assert_eq!(tracker.expected(), expected_after);
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}é€");
        assert_eq!(out, r#""a\"b\\c\n\r\t\b\f\u0001\u001fé€""#);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}é€");
    }

    #[test]
    fn media_format_mapping() {
        let f = |encoding: &str, rate: u32, channels: u16| MediaFormat {
            encoding: encoding.into(),
            sample_rate_hz: rate,
            channels,
        };
        assert_eq!(f("audio/x-mulaw", 8000, 1).audio_format(), Some(crate::AudioFormat::TWILIO));
        assert_eq!(f("audio/x-alaw", 16000, 1).audio_format().map(|a| a.encoding), Some(Encoding::Pcma));
        assert_eq!(f("audio/x-mulaw", 8000, 2).audio_format(), None);
        assert_eq!(f("audio/x-mulaw", 44100, 1).audio_format(), None);
        assert_eq!(f("audio/opus", 8000, 1).audio_format(), None);
    }

    fn id_strategy() -> impl Strategy<Value = String> {
        // Any Unicode, including quotes, backslashes and control characters, within the
        // default 256-byte id bound (64 chars × ≤ 4 bytes).
        proptest::collection::vec(any::<char>(), 0..64).prop_map(|c| c.into_iter().collect())
    }

    fn track_strategy() -> impl Strategy<Value = Track> {
        prop_oneof![Just(Track::Inbound), Just(Track::Outbound)]
    }

    fn from_twilio_strategy() -> impl Strategy<Value = FromTwilio> {
        let digit = proptest::sample::select("0123456789*#ABCD".chars().collect::<Vec<_>>());
        prop_oneof![
            (id_strategy(), id_strategy())
                .prop_map(|(protocol, version)| FromTwilio::Connected(Connected { protocol, version })),
            (
                any::<u64>(),
                (id_strategy(), id_strategy(), id_strategy()),
                proptest::sample::subsequence(vec![Track::Inbound, Track::Outbound], 0..=2),
                proptest::collection::btree_map(id_strategy(), id_strategy(), 0..8),
                (id_strategy(), any::<u32>(), any::<u16>()),
            )
                .prop_map(|(seq, (stream, account, call), tracks, params, (enc, rate, ch))| {
                    FromTwilio::Start(Start {
                        sequence_number: seq,
                        stream_sid: stream,
                        account_sid: account,
                        call_sid: call,
                        tracks,
                        custom_parameters: params,
                        media_format: MediaFormat { encoding: enc, sample_rate_hz: rate, channels: ch },
                    })
                }),
            (
                any::<u64>(),
                id_strategy(),
                track_strategy(),
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..1024),
            )
                .prop_map(|(seq, sid, track, chunk, ts, payload)| {
                    FromTwilio::Media(Media {
                        sequence_number: seq,
                        stream_sid: sid,
                        track,
                        chunk,
                        timestamp_ms: ts,
                        payload,
                    })
                }),
            (any::<u64>(), id_strategy(), track_strategy(), digit).prop_map(|(seq, sid, track, digit)| {
                FromTwilio::Dtmf(Dtmf { sequence_number: seq, stream_sid: sid, track, digit })
            }),
            (any::<u64>(), id_strategy(), id_strategy()).prop_map(|(seq, sid, name)| {
                FromTwilio::Mark(Mark { sequence_number: seq, stream_sid: sid, name })
            }),
            (any::<u64>(), id_strategy(), id_strategy(), id_strategy()).prop_map(
                |(seq, sid, account, call)| {
                    FromTwilio::Stop(Stop {
                        sequence_number: seq,
                        stream_sid: sid,
                        account_sid: account,
                        call_sid: call,
                    })
                }
            ),
        ]
    }

    fn to_twilio_strategy() -> impl Strategy<Value = ToTwilio> {
        prop_oneof![
            (id_strategy(), proptest::collection::vec(any::<u8>(), 0..1024))
                .prop_map(|(stream_sid, payload)| ToTwilio::Media { stream_sid, payload }),
            (id_strategy(), id_strategy()).prop_map(|(stream_sid, name)| ToTwilio::Mark { stream_sid, name }),
            id_strategy().prop_map(|stream_sid| ToTwilio::Clear { stream_sid }),
        ]
    }

    proptest! {
        #[test]
        fn from_twilio_round_trips(msg in from_twilio_strategy()) {
            let mut text = String::new();
            encode_from_twilio(&msg, &mut text);
            prop_assert_eq!(parse_from_twilio(&text, &limits()), Ok(msg));
        }

        #[test]
        fn to_twilio_round_trips(msg in to_twilio_strategy()) {
            let mut text = String::new();
            encode_to_twilio(&msg, &mut text);
            prop_assert_eq!(parse_to_twilio(&text, &limits()), Ok(msg));
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = parse_from_twilio(&text, &limits());
            let _ = parse_to_twilio(&text, &limits());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_from_twilio(&text, &limits());
            let _ = parse_to_twilio(&text, &limits());
        }

        #[test]
        fn mutated_messages_never_panic(
            msg in from_twilio_strategy(),
            cut in any::<proptest::sample::Index>(),
            insert in "[\\[\\]{}\":,0-9a-z\\\\ ]{0,4}",
        ) {
            let mut text = String::new();
            encode_from_twilio(&msg, &mut text);
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert_str(at, &insert);
            let _ = parse_from_twilio(&text, &limits());
            text.truncate(at);
            let _ = parse_from_twilio(&text, &limits());
        }

        #[test]
        fn sequence_tracker_accepts_exactly_the_next(gots in proptest::collection::vec(0u64..8, 0..50)) {
            let mut tracker = SequenceTracker::default();
            for got in gots {
                let before = tracker.expected();
                match tracker.check(got) {
                    Ok(()) => {
                        prop_assert_eq!(got, before);
                        prop_assert_eq!(tracker.expected(), before + 1);
                    }
                    Err(e) => {
                        prop_assert_eq!(e, SequenceError { expected: before, got });
                        prop_assert_eq!(tracker.expected(), before);
                    }
                }
            }
        }
    }
}
