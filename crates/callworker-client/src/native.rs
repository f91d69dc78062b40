//! A native-protocol client session (one WebSocket).
//!
//! ```text
//! let (mut tx, mut rx, welcome) = native::connect(&media_url, hello).await?;
//! tx.send_audio(seq, &payload).await?;
//! while let Some(event) = rx.next().await { … }
//! ```

use std::time::Duration;

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

/// The sending half.
#[derive(Debug)]
pub struct NativeSender {
    sink: SplitSink<Ws, Message>,
    buf: Vec<u8>,
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

/// Connects, sends `hello` and waits for `welcome`. A refusal comes back as
/// [`ClientError::Closed`] with the server's close code.
pub async fn connect(
    media_url: &str,
    hello: Hello,
) -> Result<(NativeSender, NativeReceiver, Welcome), ClientError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(media_url, Some(ws_config()), true).await?;
        let (sink, stream) = ws.split();
        let mut tx = NativeSender { sink, buf: Vec::with_capacity(1024) };
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
pub async fn connect_raw(url: &str) -> Result<(NativeSender, NativeReceiver), ClientError> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
    let (sink, stream) = ws.split();
    Ok((NativeSender { sink, buf: Vec::new() }, NativeReceiver { stream, closed: false }))
}

impl NativeSender {
    pub async fn send_audio(&mut self, seq: u64, payload: &[u8]) -> Result<(), ClientError> {
        self.buf.clear();
        encode_client_audio(seq, payload, &mut self.buf);
        self.sink.send(Message::Binary(self.buf.clone().into())).await?;
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
        if self.closed {
            return None;
        }
        loop {
            let msg = match self.stream.next().await {
                Some(Ok(m)) => m,
                Some(Err(_)) | None => {
                    self.closed = true;
                    return Some(ServerEvent::Closed { code: 1006, reason: "connection lost".into() });
                }
            };
            return Some(match msg {
                Message::Binary(b) => match decode_server_audio(&b) {
                    Ok(a) => ServerEvent::Audio { epoch: a.epoch, seq: a.seq, payload: a.payload.to_vec() },
                    Err(e) => ServerEvent::Control(ServerControl::Error {
                        code: "client_decode".into(),
                        message: e.to_string(),
                    }),
                },
                Message::Text(t) => match parse_server_control(&t, MESSAGE_BYTES_MAX) {
                    Ok(c) => ServerEvent::Control(c),
                    Err(e) => ServerEvent::Control(ServerControl::Error {
                        code: "client_decode".into(),
                        message: e.to_string(),
                    }),
                },
                Message::Close(frame) => {
                    self.closed = true;
                    match frame {
                        Some(f) => ServerEvent::Closed { code: f.code.into(), reason: f.reason.to_string() },
                        None => ServerEvent::Closed { code: 1005, reason: String::new() },
                    }
                }
                _ => continue,
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
