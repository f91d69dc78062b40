//! WebSocket upgrades for the media endpoints. Admission happens *before* the upgrade, so a
//! worker at capacity answers 503 + `Retry-After` and the load balancer can try another.

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use callworker_call::Transport;
use callworker_protocol::native;

use crate::error::{Error, ErrorKind};
use crate::session;
use crate::state::AppState;

/// Read buffer per connection: tungstenite's default (128 KiB) is zero-filled before every
/// read and costs CPU and memory per call; media messages are well under this.
const READ_BUFFER_BYTES: usize = 8 * 1024;
/// Bytes buffered before a write reaches the socket: 0 writes eagerly (the writer flushes
/// per batch anyway).
const WRITE_BUFFER_BYTES: usize = 0;
/// Bound on the write buffer when the socket cannot keep up (beyond it writes fail and the
/// session ends); the outbound queue drops audio long before this.
const WRITE_BUFFER_BYTES_MAX: usize = 256 * 1024;

/// Frames may be up to this many times the message bound. tungstenite checks the frame
/// bound on the header (before reading the payload) and the message bound after reading it;
/// a frame refused unread leaves bytes in the socket, so closing it sends a TCP reset that
/// destroys our close frame. With a larger frame bound, a moderately oversized message is
/// read, refused with 1009 and closed cleanly; only abusive frames are cut off.
const FRAME_TO_MESSAGE_BOUND: usize = 2;

fn upgrade(
    state: AppState,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    transport: Transport,
) -> Result<Response, Error> {
    let ws = ws.map_err(|e| {
        Error::new(
            ErrorKind::InvalidRequest,
            "websocket_upgrade_required",
            format!("not a WebSocket upgrade: {e}"),
        )
    })?;
    let permit = state.admission.admit_session()?;
    let max = state.config.limits.ws_message_bytes_max;
    let tracker = state.sessions.clone();
    Ok(ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(WRITE_BUFFER_BYTES_MAX)
        .max_message_size(max)
        .max_frame_size(max * FRAME_TO_MESSAGE_BOUND)
        .protocols([native::SUBPROTOCOL])
        .on_upgrade(move |socket| tracker.track_future(session::run(state, socket, transport, permit)))
        .into_response())
}

pub async fn native_media(
    State(state): State<AppState>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    upgrade(state, ws, Transport::Native)
}

/// `GET /twilio/media`: Twilio signs the upgrade like a webhook, over the `wss://` URL it
/// was given (no form parameters); it is checked before anything else.
pub async fn twilio_media(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Error> {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    super::twilio::verify_signature(&state, &headers, &state.media_url(path), &[])?;
    upgrade(state, ws, Transport::Twilio)
}
