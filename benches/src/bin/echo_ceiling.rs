//! `echo-ceiling`: the bare Twilio Media Streams echo that callworker's capacity is measured
//! against (issue 5, DESIGN.md §7). Not part of the product.
//!
//! One tokio runtime, one task per connection, no state beyond the stream's SID, no store.
//! It does only what the load generator's Twilio simulator needs to measure an echo:
//! - `POST /twilio/voice` answers TwiML `<Connect><Stream url="ws://ADDR/twilio/media"/>`
//!   (and closes the connection: the webhook is not what is measured);
//! - `GET /twilio/media` upgrades to a WebSocket with a small read buffer and a bounded write
//!   buffer; every Twilio JSON message is parsed with the same codec as the worker, each
//!   inbound `media` is answered with a `media` carrying the same payload, followed every
//!   [`MARK_INTERVAL_FRAMES`] frames by a `mark` (as the worker does), and `stop` is answered
//!   with a 1000 close.
//!
//! Usage: `echo-ceiling [LISTEN_ADDR]` (default `127.0.0.1:0`). It prints
//! `echo-ceiling listening on http://ADDR` on stdout once bound and serves until killed.

use std::process::ExitCode;
use std::time::Duration;

use callworker_protocol::twilio::{FromTwilio, Limits, ToTwilio, Track, encode_to_twilio, parse_from_twilio};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// WebSocket read buffer: tungstenite zero-fills its whole read buffer before every read, so
/// the 128 KiB default costs CPU and memory per connection (DESIGN.md §7). A 160-byte frame
/// is ~300 bytes of JSON.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes buffered before a write goes to the socket (0: every message is written at once).
const WRITE_BUFFER_BYTES: usize = 0;
/// Bound on unsent bytes per connection; beyond it a send fails and the connection ends.
const WRITE_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// Largest WebSocket message accepted (the worker's `limits.ws_message_bytes_max`).
const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// A `mark` after every this many echoed frames (the worker's `twilio.mark_interval_frames`).
const MARK_INTERVAL_FRAMES: u32 = 10;
/// Largest HTTP request head (and webhook body) read for `POST /twilio/voice`.
const HTTP_REQUEST_BYTES_MAX: usize = 16 * 1024;
/// Time allowed for a connection's first bytes and for a whole webhook request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echo-ceiling: start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(serve(&listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-ceiling: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: &str) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("echo-ceiling listening on http://{addr}");
    let twiml: &'static str = Box::leak(
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Connect><Stream url=\"ws://{addr}/twilio/media\"/></Connect></Response>"
        )
        .into_boxed_str(),
    );
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                eprintln!("echo-ceiling: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(e) = connection(socket, twiml).await {
                eprintln!("echo-ceiling: connection from {peer}: {e}");
            }
        });
    }
}

/// Dispatches by the request's first bytes: `POST` is the webhook, anything else goes to the
/// WebSocket handshake (which refuses what is not an upgrade).
async fn connection(socket: TcpStream, twiml: &str) -> Result<(), String> {
    socket.set_nodelay(true).map_err(|e| format!("set TCP_NODELAY: {e}"))?;
    let mut head = [0u8; 4];
    let peeked = tokio::time::timeout(HTTP_TIMEOUT, async {
        loop {
            let n = socket.peek(&mut head).await?;
            if n == 0 || n >= head.len() {
                return Ok::<usize, std::io::Error>(n);
            }
            // Fewer than 4 bytes so far (rare): wait for more without spinning.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .map_err(|_| "no request".to_owned())?
    .map_err(|e| format!("peek: {e}"))?;
    if peeked == 0 {
        return Ok(());
    }
    if &head == b"POST" {
        return webhook(socket, twiml).await;
    }
    echo(socket).await
}

/// Answers one `POST /twilio/voice` with the TwiML and closes the connection.
async fn webhook(mut socket: TcpStream, twiml: &str) -> Result<(), String> {
    let mut buf = Vec::with_capacity(1024);
    let request = tokio::time::timeout(HTTP_TIMEOUT, async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = socket.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let body_len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + body_len {
                    return Ok(head.starts_with("post /twilio/voice"));
                }
            }
            if buf.len() > HTTP_REQUEST_BYTES_MAX {
                return Ok(false);
            }
        }
    })
    .await
    .map_err(|_| "webhook request timed out".to_owned())?
    .map_err(|e| format!("read webhook: {e}"))?;
    let response = if request {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{twiml}",
            twiml.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
    };
    socket.write_all(response.as_bytes()).await.map_err(|e| format!("write webhook: {e}"))?;
    let _ = socket.shutdown().await;
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The echo itself: one task reads a message, answers it, reads the next.
async fn echo(socket: TcpStream) -> Result<(), String> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES_MAX)
        .max_message_size(Some(MESSAGE_BYTES_MAX))
        .max_frame_size(Some(MESSAGE_BYTES_MAX));
    let mut ws = tokio_tungstenite::accept_async_with_config(socket, Some(config))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let limits = Limits::default();
    let mut stream_sid = String::new();
    let mut out = String::with_capacity(512);
    let mut frames_since_mark = 0u32;
    let mut frames_echoed = 0u64;
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(Message::Text(text)) => text,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => return Err(format!("read: {e}")),
        };
        let parsed = match parse_from_twilio(&text, &limits) {
            Ok(parsed) => parsed,
            Err(e) => return Err(format!("parse: {e}")),
        };
        match parsed {
            FromTwilio::Start(start) => stream_sid = start.stream_sid,
            FromTwilio::Media(media) if media.track == Track::Inbound => {
                out.clear();
                encode_to_twilio(
                    &ToTwilio::Media { stream_sid: stream_sid.clone(), payload: media.payload },
                    &mut out,
                );
                frames_echoed += 1;
                frames_since_mark += 1;
                if frames_since_mark >= MARK_INTERVAL_FRAMES {
                    frames_since_mark = 0;
                    ws.feed(Message::Text(out.as_str().into())).await.map_err(|e| format!("send: {e}"))?;
                    out.clear();
                    let name = format!("s:{frames_echoed}");
                    encode_to_twilio(&ToTwilio::Mark { stream_sid: stream_sid.clone(), name }, &mut out);
                }
                ws.send(Message::Text(out.as_str().into())).await.map_err(|e| format!("send: {e}"))?;
            }
            FromTwilio::Stop(_) => {
                let close = CloseFrame { code: CloseCode::Normal, reason: "stop".into() };
                let _ = ws.close(Some(close)).await;
                // Let the client's close answer arrive before dropping the socket.
                while let Some(Ok(_)) = ws.next().await {}
                return Ok(());
            }
            FromTwilio::Media(_) | FromTwilio::Connected(_) | FromTwilio::Mark(_) | FromTwilio::Dtmf(_) => {}
        }
    }
    Ok(())
}
