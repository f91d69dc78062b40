//! A native-protocol client session (one WebSocket).
//!
//! ```text
//! let (mut tx, mut rx, welcome) = native::connect(&media_url, hello).await?;
//! tx.send_audio(seq, &payload).await?;
//! while let Some(event) = rx.next().await { … }
//! ```
//!
//! [`crate::resilient`] builds a reconnecting client on the same pieces: it sends frames
//! encoded once with [`encode_audio_frame`] (kept for replay and sent without copying),
//! reads with [`NativeReceiver::next_inbound`] (zero-copy payloads, heartbeats visible for
//! liveness) and drops dead sockets with [`abort`].

use std::time::Duration;

use bytes::Bytes;

use callworker_protocol::native::{
    self, ClientControl, Hello, ServerControl, Welcome, decode_server_audio, encode_client_audio,
    encode_client_control, parse_server_control,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ClientError;

/// Largest server message accepted.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Time allowed for connect + hello → welcome.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Audio {
        epoch: u64,
        seq: u64,
        payload: Vec<u8>,
    },
    Control(ServerControl),
    /// The server closed the socket (code 1006 when it vanished without a close frame).
    Closed {
        code: u16,
        reason: String,
    },
}

/// What the server sent, as [`NativeReceiver::next_inbound`] reports it: like
/// [`ServerEvent`], but audio payloads share the received frame's buffer (no copy),
/// heartbeats are reported (they prove the connection is alive) and undecodable messages
/// are reported as such rather than dressed up as a server `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Audio {
        epoch: u64,
        seq: u64,
        /// The payload, a slice of the received frame.
        payload: Bytes,
    },
    Control(ServerControl),
    /// A WebSocket ping or pong.
    Heartbeat,
    /// A message that does not decode as version 1 of the protocol.
    Invalid(native::NativeError),
    /// The server closed the socket (code 1006 when it vanished without a close frame).
    Closed {
        code: u16,
        reason: String,
    },
}

/// The sending half.
#[derive(Debug)]
pub struct NativeSender {
    sink: SplitSink<Ws, Message>,
}

/// The receiving half.
#[derive(Debug)]
pub struct NativeReceiver {
    stream: SplitStream<Ws>,
    closed: bool,
}

pub(crate) fn ws_config() -> WebSocketConfig {
    // Small buffers: a client holds many sessions (see DESIGN.md §7 on tungstenite's
    // default 128 KiB read buffer).
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MESSAGE_BYTES_MAX))
        .max_frame_size(Some(MESSAGE_BYTES_MAX))
}

/// A hello for the first connection to a freshly created call.
pub fn first_hello(call_id: &str, resume_token: &str, audio: callworker_protocol::AudioFormat) -> Hello {
    Hello {
        version: native::PROTOCOL_VERSION,
        call_id: call_id.to_owned(),
        resume_token: resume_token.to_owned(),
        epoch_seen: 0,
        next_seq: 1,
        last_server_seq_rx: 0,
        last_played_server_seq: 0,
        audio,
    }
}

/// Encodes one client audio frame (header + payload) into a buffer of exactly its size, so
/// it can be kept for replay and sent any number of times without another copy.
pub fn encode_audio_frame(seq: u64, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(native::CLIENT_AUDIO_HEADER_BYTES + payload.len());
    encode_client_audio(seq, payload, &mut frame);
    Bytes::from(frame)
}

/// Connects, sends `hello` and waits for `welcome`, within [`HANDSHAKE_TIMEOUT`]. A refusal
/// comes back as [`ClientError::Closed`] with the server's close code.
pub async fn connect(
    media_url: &str,
    hello: Hello,
) -> Result<(NativeSender, NativeReceiver, Welcome), ClientError> {
    connect_with_timeout(media_url, hello, HANDSHAKE_TIMEOUT).await
}

/// [`connect`] with another bound on connect + `hello` → `welcome`.
pub async fn connect_with_timeout(
    media_url: &str,
    hello: Hello,
    timeout: Duration,
) -> Result<(NativeSender, NativeReceiver, Welcome), ClientError> {
    tokio::time::timeout(timeout, async {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(media_url, Some(ws_config()), true).await?;
        let (sink, stream) = ws.split();
        let mut tx = NativeSender { sink };
        let mut rx = NativeReceiver { stream, closed: false };
        tx.send_control(&ClientControl::Hello(hello)).await?;
        loop {
            match rx.next().await {
                Some(ServerEvent::Control(ServerControl::Welcome(w))) => return Ok((tx, rx, w)),
                Some(ServerEvent::Control(ServerControl::Error { .. })) => continue, // the close follows
                Some(ServerEvent::Closed { code, reason }) => {
                    return Err(ClientError::Closed { code, reason });
                }
                Some(other) => return Err(ClientError::Protocol(format!("expected welcome, got {other:?}"))),
                None => return Err(ClientError::Closed { code: 1006, reason: "closed".into() }),
            }
        }
    })
    .await
    .map_err(|_| ClientError::Timeout("native handshake"))?
}

/// Opens a raw WebSocket to a media URL (for tests that speak the protocol by hand).
pub async fn connect_raw(
    request: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> Result<(NativeSender, NativeReceiver), ClientError> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(ws_config()), true).await?;
    let (sink, stream) = ws.split();
    Ok((NativeSender { sink }, NativeReceiver { stream, closed: false }))
}

/// Drops a session's socket at once, without a close frame, and with a TCP reset where the
/// socket allows it (`SO_LINGER` 0), the way a crashed peer or a broken network looks. The
/// server sees the connection fail (a client would see 1006). Used when a connection is
/// judged dead, and by tests that simulate a network failure.
pub fn abort(tx: NativeSender, rx: NativeReceiver) {
    if let Ok(ws) = rx.stream.reunite(tx.sink)
        && let MaybeTlsStream::Plain(tcp) = ws.get_ref()
    {
        // Best effort: without it the socket still closes, with a FIN instead of a reset.
        let _ = tcp.set_zero_linger();
    }
}

impl NativeSender {
    pub async fn send_audio(&mut self, seq: u64, payload: &[u8]) -> Result<(), ClientError> {
        self.send_frame(encode_audio_frame(seq, payload)).await
    }

    /// Sends an audio frame encoded by [`encode_audio_frame`] (the buffer is shared, not
    /// copied).
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), ClientError> {
        self.sink.send(Message::Binary(frame)).await?;
        Ok(())
    }

    /// Sends a WebSocket ping (the server answers with a pong; both count as traffic).
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.sink.send(Message::Ping(Bytes::new())).await?;
        Ok(())
    }

    pub async fn send_control(&mut self, msg: &ClientControl) -> Result<(), ClientError> {
        self.sink.send(Message::Text(encode_client_control(msg).into())).await?;
        Ok(())
    }

    pub async fn played(&mut self, upto_seq: u64) -> Result<(), ClientError> {
        self.send_control(&ClientControl::Played { upto_seq }).await
    }

    pub async fn dtmf(&mut self, digit: char) -> Result<(), ClientError> {
        self.send_control(&ClientControl::Dtmf { digit }).await
    }

    /// Hangs up: the call ends with `client_hangup`.
    pub async fn bye(&mut self) -> Result<(), ClientError> {
        self.send_control(&ClientControl::Bye { reason: None }).await
    }

    /// Sends any message as is (tests of malformed input).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), ClientError> {
        self.sink.send(msg).await?;
        Ok(())
    }

    /// Closes the socket without `bye` (the call stays resumable).
    pub async fn close(&mut self) -> Result<(), ClientError> {
        self.sink.close().await?;
        Ok(())
    }
}

impl NativeReceiver {
    /// The next server event; `None` after [`ServerEvent::Closed`] was returned.
    pub async fn next(&mut self) -> Option<ServerEvent> {
        loop {
            return Some(match self.next_inbound().await? {
                Inbound::Audio { epoch, seq, payload } => {
                    ServerEvent::Audio { epoch, seq, payload: payload.to_vec() }
                }
                Inbound::Control(c) => ServerEvent::Control(c),
                Inbound::Heartbeat => continue,
                Inbound::Invalid(e) => ServerEvent::Control(ServerControl::Error {
                    code: "client_decode".into(),
                    message: e.to_string(),
                }),
                Inbound::Closed { code, reason } => ServerEvent::Closed { code, reason },
            });
        }
    }

    /// The next inbound message; `None` after [`Inbound::Closed`] was returned.
    ///
    /// Cancel-safe: the only await is the socket read, and a message read is always
    /// returned.
    pub async fn next_inbound(&mut self) -> Option<Inbound> {
        if self.closed {
            return None;
        }
        loop {
            let msg = match self.stream.next().await {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => {
                    self.closed = true;
                    return Some(Inbound::Closed { code: 1006, reason: "connection lost".into() });
                }
            };
            return Some(match msg {
                Message::Binary(b) => match decode_server_audio(&b) {
                    Ok(a) => Inbound::Audio { epoch: a.epoch, seq: a.seq, payload: b.slice_ref(a.payload) },
                    Err(e) => Inbound::Invalid(e),
                },
                Message::Text(t) => match parse_server_control(&t, MESSAGE_BYTES_MAX) {
                    Ok(c) => Inbound::Control(c),
                    Err(e) => Inbound::Invalid(e),
                },
                Message::Close(frame) => {
                    self.closed = true;
                    match frame {
                        Some(f) => Inbound::Closed { code: f.code.into(), reason: f.reason.to_string() },
                        None => Inbound::Closed { code: 1005, reason: String::new() },
                    }
                }
                Message::Ping(_) | Message::Pong(_) => Inbound::Heartbeat,
                Message::Frame(_) => continue,
            });
        }
    }

    /// Waits for the session to close and returns its close code and reason, skipping any
    /// other events (bounded by `timeout`).
    pub async fn closed(&mut self, timeout: Duration) -> Result<(u16, String), ClientError> {
        tokio::time::timeout(timeout, async {
            while let Some(event) = self.next().await {
                if let ServerEvent::Closed { code, reason } = event {
                    return Ok((code, reason));
                }
            }
            Err(ClientError::Protocol("already closed".into()))
        })
        .await
        .map_err(|_| ClientError::Timeout("waiting for close"))?
    }
}
