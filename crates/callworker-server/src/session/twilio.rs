//! Twilio Media Streams on `WS /twilio/media`.
//!
//! A stream names its call through the `<Parameter>`s our TwiML put in it (`call_id`,
//! `epoch`, `sig`); a stream without them (static TwiML pointing straight at the stream
//! URL) starts a new call with the configured default program. Outbound audio is followed
//! every `twilio.mark_interval_frames` frames by a `mark` named `s:<seq>`; Twilio echoes it
//! once that audio has played, which is how the call learns what the caller has heard.

use std::borrow::Cow;

use axum::extract::ws::Message;
use callworker_call::Transport;
use callworker_call::{CallId, CallSpec, Direction, EndReason, Epoch, Input, TwilioLeg};
use callworker_protocol::AudioFormat;
use callworker_protocol::twilio::{
    FromTwilio, SequenceTracker, ToTwilio, Track, TwilioError, encode_to_twilio, parse_from_twilio,
};

use super::rate::RateLimiter;
use super::{Attachment, Decoded, Stream, Wire, attach, next_message, reject};
use crate::calls;
use crate::error::{Error, ErrorKind};
use crate::state::AppState;

/// The `<Parameter>` names our TwiML sets on a stream.
pub const PARAM_CALL_ID: &str = "call_id";
pub const PARAM_EPOCH: &str = "epoch";
pub const PARAM_SIG: &str = "sig";

/// Prefix of the marks we send (`s:<outbound seq>`).
const MARK_PREFIX: &str = "s:";

/// The Twilio half of an attached session.
#[derive(Debug)]
pub struct TwilioWire {
    stream_sid: String,
    sequence: SequenceTracker,
    frames_since_mark: u32,
    /// The last outbound frame sent on this stream.
    last_seq: u64,
    /// Marks for frames up to this one that arrive after a `clear` are ignored: Twilio
    /// answers the marks of cleared audio at once, although that audio never played.
    /// (A mark of audio that did play but whose echo crossed the `clear` is ignored too:
    /// the played position errs towards "not heard".)
    cleared_upto_seq: u64,
    limits: callworker_protocol::twilio::Limits,
    /// Reused for encoding outbound JSON.
    buf: String,
}

fn twilio_error(e: &TwilioError) -> Error {
    let kind = match e {
        TwilioError::MessageTooLarge { .. } | TwilioError::PayloadTooLarge { .. } => {
            ErrorKind::PayloadTooLarge
        }
        _ => ErrorKind::InvalidRequest,
    };
    let code = match e {
        TwilioError::MessageTooLarge { .. } => "message_too_large",
        other => other.label(),
    };
    Error::new(kind, code, e.to_string())
}

fn binary_refused() -> Error {
    Error::new(ErrorKind::UnsupportedMediaType, "binary_frame", "Twilio Media Streams messages are JSON text")
}

fn unknown_event(e: &TwilioError) {
    // Twilio may add events; ignoring an unknown one (counted) keeps the call up.
    reject(Transport::Twilio, &twilio_error(e));
}

/// Reads `connected` and `start`, then attaches or creates the call.
pub async fn handshake(
    state: &AppState,
    stream: &mut Stream,
    limiter: &mut RateLimiter,
) -> Result<Attachment, Error> {
    let limits = state.config.twilio.parse_limits;
    let mut seen_connected = false;
    let start = loop {
        let msg = next_message(stream, limiter).await?.ok_or_else(|| {
            Error::new(ErrorKind::InvalidRequest, "closed_before_start", "closed before start")
        })?;
        let Message::Text(text) = msg else { return Err(binary_refused()) };
        match parse_from_twilio(&text, &limits) {
            Err(e @ TwilioError::UnknownEvent(_)) => unknown_event(&e),
            Err(e) => return Err(twilio_error(&e)),
            Ok(FromTwilio::Connected(_)) if !seen_connected => seen_connected = true,
            Ok(FromTwilio::Start(start)) => break start,
            Ok(FromTwilio::Media(_)) => {
                return Err(Error::new(
                    ErrorKind::OutOfOrder,
                    "media_before_start",
                    "media arrived before start",
                ));
            }
            Ok(other) => {
                return Err(Error::new(
                    ErrorKind::OutOfOrder,
                    "event_before_start",
                    format!("{} arrived before start", other.event_name()),
                ));
            }
        }
    };
    let mut sequence = SequenceTracker::default();
    sequence
        .check(start.sequence_number)
        .map_err(|e| Error::new(ErrorKind::OutOfOrder, "sequence_gap", e.to_string()))?;
    let format = &start.media_format;
    if format.encoding != "audio/x-mulaw" || format.sample_rate_hz != 8_000 || format.channels != 1 {
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            "unsupported_media_format",
            "only audio/x-mulaw, 8000 Hz, mono is supported",
        ));
    }

    let params = &start.custom_parameters;
    let (record, expected_epoch) = match params.get(PARAM_CALL_ID) {
        Some(call_id) => {
            let call_id = CallId::parse(call_id)
                .map_err(|e| Error::new(ErrorKind::InvalidRequest, "invalid_call_id", e.to_string()))?;
            let epoch =
                params.get(PARAM_EPOCH).and_then(|e| e.parse::<u64>().ok()).map(Epoch).ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidRequest,
                        "invalid_epoch",
                        "epoch parameter missing or invalid",
                    )
                })?;
            let sig = params.get(PARAM_SIG).map(String::as_str).unwrap_or_default();
            state.tokens.verify_stream_signature(sig, &call_id, epoch).map_err(|e| {
                Error::new(ErrorKind::Unauthorized, "invalid_stream_signature", e.to_string())
            })?;
            (state.store.get(&call_id).await?, epoch)
        }
        None => {
            // Static TwiML: a new inbound call with the default program.
            let spec = CallSpec {
                tenant: state.config.calls.default_tenant.clone(),
                direction: Direction::Inbound,
                from: None,
                to: None,
                program: state.config.calls.default_program.clone(),
                audio: AudioFormat::TWILIO,
                limits: state.config.calls.limits,
                recording: state.config.calls.recording,
            };
            calls::admit_tenant(state, &spec.tenant).await?;
            let (_, record) = calls::create(state, spec, "twilio").await?;
            (record, Epoch::ZERO)
        }
    };
    let (mut call, epoch, checkpoint_seq) = attach(state, &record, expected_epoch, |call| {
        if call.audio == AudioFormat::TWILIO {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::InvalidRequest,
                "audio_format_mismatch",
                "the call does not use μ-law 8 kHz",
            ))
        }
    })
    .await?;
    // Kept in the call's state so a reaper can redirect this Twilio call (REST rescue) if
    // this worker hangs with the stream open.
    call.twilio = Some(TwilioLeg {
        account_sid: start.account_sid.clone(),
        call_sid: start.call_sid.clone(),
        stream_sid: start.stream_sid.clone(),
    });
    Ok(Attachment {
        call,
        epoch,
        checkpoint_seq,
        previous_write: Some(record.updated_at),
        wire: Wire::Twilio(TwilioWire {
            stream_sid: start.stream_sid,
            sequence,
            frames_since_mark: 0,
            last_seq: 0,
            cleared_upto_seq: 0,
            limits,
            buf: String::with_capacity(512),
        }),
    })
}

impl TwilioWire {
    /// Maps one inbound message to what the call should see.
    pub fn decode<'m>(&mut self, msg: &'m Message, _state: &AppState) -> Decoded<'m> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => return Decoded::Refuse(binary_refused()),
            _ => return Decoded::Nothing,
        };
        let parsed = match parse_from_twilio(text, &self.limits) {
            Ok(m) => m,
            Err(e @ TwilioError::UnknownEvent(_)) => {
                unknown_event(&e);
                return Decoded::Nothing;
            }
            Err(e) => return Decoded::Refuse(twilio_error(&e)),
        };
        if let Some(seq) = parsed.sequence_number()
            && let Err(e) = self.sequence.check(seq)
        {
            return Decoded::Refuse(Error::new(ErrorKind::OutOfOrder, "sequence_gap", e.to_string()));
        }
        let stream_sid = match &parsed {
            FromTwilio::Connected(_) => None,
            FromTwilio::Start(m) => Some(&m.stream_sid),
            FromTwilio::Media(m) => Some(&m.stream_sid),
            FromTwilio::Dtmf(m) => Some(&m.stream_sid),
            FromTwilio::Mark(m) => Some(&m.stream_sid),
            FromTwilio::Stop(m) => Some(&m.stream_sid),
        };
        if stream_sid.is_some_and(|sid| *sid != self.stream_sid) {
            return Decoded::Refuse(Error::new(
                ErrorKind::InvalidRequest,
                "stream_sid_mismatch",
                "message for another stream",
            ));
        }
        match parsed {
            FromTwilio::Media(m) if m.track == Track::Inbound => {
                Decoded::Audio { seq: None, payload: Cow::Owned(m.payload) }
            }
            FromTwilio::Media(_) => Decoded::Nothing,
            FromTwilio::Dtmf(d) => Decoded::Input(Input::Dtmf { digit: d.digit }),
            FromTwilio::Mark(mark) => {
                match mark.name.strip_prefix(MARK_PREFIX).and_then(|s| s.parse::<u64>().ok()) {
                    Some(upto_seq) if upto_seq > self.cleared_upto_seq => {
                        Decoded::Input(Input::Played { upto_seq })
                    }
                    Some(_) | None => Decoded::Nothing,
                }
            }
            FromTwilio::Stop(_) => Decoded::Input(Input::End(EndReason::RemoteHangup)),
            FromTwilio::Connected(_) | FromTwilio::Start(_) => Decoded::Refuse(Error::new(
                ErrorKind::OutOfOrder,
                "unexpected_start",
                "connected/start after the stream started",
            )),
        }
    }

    fn encode(&mut self, msg: &ToTwilio) -> Message {
        self.buf.clear();
        encode_to_twilio(msg, &mut self.buf);
        Message::Text(self.buf.as_str().into())
    }

    pub fn audio(&mut self, payload: &[u8]) -> Message {
        let msg = ToTwilio::Media { stream_sid: self.stream_sid.clone(), payload: payload.to_vec() };
        self.encode(&msg)
    }

    /// A mark after the frame `seq` when `interval` frames have gone out since the last.
    pub fn mark_after(&mut self, seq: u64, interval: u32) -> Option<Message> {
        self.last_seq = seq;
        self.frames_since_mark += 1;
        if self.frames_since_mark < interval {
            return None;
        }
        self.frames_since_mark = 0;
        let msg = ToTwilio::Mark { stream_sid: self.stream_sid.clone(), name: format!("{MARK_PREFIX}{seq}") };
        Some(self.encode(&msg))
    }

    /// `clear`; the marks of the audio it discards will not count as played.
    pub fn clear(&mut self) -> Message {
        self.cleared_upto_seq = self.last_seq;
        let mut buf = String::new();
        encode_to_twilio(&ToTwilio::Clear { stream_sid: self.stream_sid.clone() }, &mut buf);
        Message::Text(buf.into())
    }
}
