//! The native resumable protocol on `WS /v1/media` (see `docs/protocol.md`).

use std::borrow::Cow;

use axum::extract::ws::Message;
use callworker_call::{Call, CallId, EndReason, Epoch, Input, UnixMillis};
use callworker_protocol::native::{
    self, ClientControl, NativeError, ServerControl, Welcome, decode_client_audio, encode_server_audio,
    encode_server_control, parse_client_control,
};
use callworker_protocol::{AudioFormat, Encoding};

use super::rate::RateLimiter;
use super::{Attachment, Decoded, Stream, Wire, attach, next_message};
use crate::error::{Error, ErrorKind};
use crate::state::{AppState, now};

/// The native half of an attached session.
#[derive(Debug)]
pub struct NativeWire {
    audio: AudioFormat,
    message_bytes_max: usize,
    /// `hello.last_server_seq_rx`: the highest server frame number the client has seen.
    pub last_server_seq_rx: u64,
}

fn native_error(e: NativeError) -> Error {
    match e {
        NativeError::MessageTooLarge { .. } => {
            Error::new(ErrorKind::PayloadTooLarge, "message_too_large", e.to_string())
        }
        NativeError::MalformedJson(_) => {
            Error::new(ErrorKind::InvalidRequest, "malformed_json", e.to_string())
        }
        NativeError::ShortFrame(_) | NativeError::UnknownFrameKind(_) => {
            Error::new(ErrorKind::InvalidRequest, "bad_frame", e.to_string())
        }
        NativeError::UnsupportedVersion(_) => {
            Error::new(ErrorKind::UnsupportedVersion, "unsupported_version", e.to_string())
        }
    }
}

/// Reads `hello`, verifies it, and takes the call over.
pub async fn handshake(
    state: &AppState,
    stream: &mut Stream,
    limiter: &mut RateLimiter,
) -> Result<Attachment, Error> {
    let max = state.config.limits.ws_message_bytes_max;
    let msg = next_message(stream, limiter)
        .await?
        .ok_or_else(|| Error::new(ErrorKind::InvalidRequest, "closed_before_hello", "closed before hello"))?;
    let text = match msg {
        Message::Text(t) => t,
        _ => {
            return Err(Error::new(
                ErrorKind::OutOfOrder,
                "audio_before_hello",
                "the first message must be hello",
            ));
        }
    };
    let ClientControl::Hello(hello) = parse_client_control(&text, max).map_err(native_error)? else {
        return Err(Error::new(ErrorKind::OutOfOrder, "expected_hello", "the first message must be hello"));
    };
    let call_id = CallId::parse(&hello.call_id)
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, "invalid_call_id", e.to_string()))?;
    hello
        .audio
        .validate()
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, "unsupported_audio", e.to_string()))?;
    let record = state.store.get(&call_id).await?;
    let epoch_seen = Epoch(hello.epoch_seen);
    state
        .tokens
        .verify(&hello.resume_token, &call_id, &record.tenant, epoch_seen, now())
        .map_err(|e| Error::new(ErrorKind::Unauthorized, "invalid_resume_token", e.to_string()))?;
    let (mut call, epoch, checkpoint_seq) = attach(state, &record, epoch_seen, |call| {
        if call.audio == hello.audio {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::InvalidRequest,
                "audio_format_mismatch",
                format!("the call's audio is {:?} at {} Hz", call.audio.encoding, call.audio.sample_rate_hz),
            ))
        }
    })
    .await?;
    // The client knows better than the checkpoint what the caller has heard.
    call.handle(now(), Input::Played { upto_seq: hello.last_played_server_seq }, &mut Vec::new());
    Ok(Attachment {
        call,
        epoch,
        checkpoint_seq,
        previous_write: Some(record.updated_at),
        wire: Wire::Native(NativeWire {
            audio: hello.audio,
            message_bytes_max: max,
            last_server_seq_rx: hello.last_server_seq_rx,
        }),
    })
}

fn text(msg: &ServerControl) -> Message {
    Message::Text(encode_server_control(msg).into())
}

impl NativeWire {
    pub fn welcome(
        &mut self,
        state: &AppState,
        call: &Call,
        epoch: Epoch,
        now: UnixMillis,
        resumed: bool,
    ) -> Message {
        text(&ServerControl::Welcome(Welcome {
            version: native::PROTOCOL_VERSION,
            call_id: call.id.to_string(),
            epoch: epoch.get(),
            resume_token: state.tokens.issue(&call.id, &call.tenant, epoch, now),
            resume_from_seq: call.media.inbound_applied_seq + 1,
            server_next_seq: call.media.outbound_next_seq,
            audio: self.audio,
            resumed,
        }))
    }

    /// Maps one inbound message to what the call should see.
    pub fn decode<'m>(&mut self, msg: &'m Message, _state: &AppState) -> Decoded<'m> {
        match msg {
            Message::Binary(frame) => match decode_client_audio(frame) {
                Err(e) => Decoded::Refuse(native_error(e)),
                Ok(a) if a.payload.is_empty() => Decoded::Refuse(Error::new(
                    ErrorKind::InvalidRequest,
                    "empty_audio",
                    "an audio frame carries no samples",
                )),
                Ok(a) if self.audio.encoding == Encoding::L16 && a.payload.len() % 2 == 1 => Decoded::Refuse(
                    Error::new(ErrorKind::InvalidRequest, "odd_l16_frame", "L16 audio must be whole samples"),
                ),
                Ok(a) => Decoded::Audio { seq: Some(a.seq), payload: Cow::Borrowed(a.payload) },
            },
            Message::Text(t) => match parse_client_control(t, self.message_bytes_max) {
                Err(e) => Decoded::Refuse(native_error(e)),
                Ok(ClientControl::Played { upto_seq }) => Decoded::Input(Input::Played { upto_seq }),
                // The parser has already refused anything but 0-9, *, #, A-D.
                Ok(ClientControl::Dtmf { digit }) => Decoded::Input(Input::Dtmf { digit }),
                Ok(ClientControl::Bye { .. }) => Decoded::Input(Input::End(EndReason::ClientHangup)),
                Ok(ClientControl::Hello(_)) => Decoded::Refuse(Error::new(
                    ErrorKind::OutOfOrder,
                    "duplicate_hello",
                    "hello is only valid as the first message",
                )),
            },
            _ => Decoded::Nothing,
        }
    }

    pub fn audio(&self, epoch: Epoch, seq: u64, payload: &[u8]) -> Message {
        let mut frame = Vec::with_capacity(native::SERVER_AUDIO_HEADER_BYTES + payload.len());
        encode_server_audio(epoch.get(), seq, payload, &mut frame);
        Message::Binary(frame.into())
    }

    pub fn ack(&self, upto_seq: u64) -> Message {
        text(&ServerControl::Ack { upto_seq })
    }

    pub fn event(&self, name: &str, detail: Option<String>) -> Message {
        text(&ServerControl::Event { name: name.to_owned(), detail })
    }

    pub fn clear(&self) -> Message {
        text(&ServerControl::Clear)
    }

    pub fn bye(&self, reason: EndReason) -> Message {
        text(&ServerControl::Bye { reason: reason.as_str().to_owned() })
    }

    pub fn migrate(&self, reason: &str) -> Message {
        text(&ServerControl::Migrate { reason: reason.to_owned(), reconnect_after_ms: 0 })
    }

    pub fn error(&self, e: &Error) -> Message {
        text(&ServerControl::Error { code: e.code.to_owned(), message: e.message.clone() })
    }
}
