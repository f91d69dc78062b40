//! Clients for callworker, used by tests, the load generator and integrators.
//!
//! Layout:
//! - [`api`]: [`api::ControlApi`], a typed client of the HTTP control API.
//! - [`native`]: the native resumable protocol — connect with `hello`, send sequenced audio,
//!   receive `(epoch, seq)` audio and control messages.
//! - [`resilient`]: [`resilient::ResilientCall`], a native call that survives lost sessions:
//!   bounded replay buffer with a retained tail, resume with backoff and jitter across
//!   media URLs, `(epoch, seq)` de-duplication of server audio, liveness pings; final on
//!   4409 and the other non-reconnect close codes.
//! - [`twilio`]: a Twilio Media Streams simulator that behaves as Twilio does: fetches TwiML
//!   from the voice webhook, streams `connected`/`start`/`media`/`dtmf`/`stop` with proper
//!   sequence numbers, plays received audio on a real clock and echoes each `mark` once the
//!   audio before it has "played" (or at once on `clear`).
//! - [`audio`]: pacing helpers (a 20 ms clock) and test signals.
//!
//! Invariants: every channel here is bounded; no call to the network is retried silently.

pub mod api;
pub mod audio;
pub mod native;
pub mod resilient;
pub mod twilio;

/// Errors from the clients.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("API answered {status}: {code}: {message}")]
    Api { status: u16, code: String, message: String },
    #[error("WebSocket failed: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the server closed the session ({code}: {reason})")]
    Closed { code: u16, reason: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}
