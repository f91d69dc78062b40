//! The one place where failures meet the outside world.
//!
//! An [`Error`] has an [`ErrorKind`] (which decides the HTTP status, the WebSocket close code
//! and the log level) and a stable snake_case `code` (the JSON `error.code`, the metric
//! label). The `message` is written for the client on purpose; internal error chains are
//! logged where they are handled and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callworker_protocol::close;
use callworker_store::StoreError;
use serde_json::json;

/// Class of failure at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed or invalid input.
    InvalidRequest,
    /// Missing, forged or expired credentials.
    Unauthorized,
    /// Authenticated, but not allowed this call.
    Forbidden,
    NotFound,
    /// The request conflicts with the call's state (not attached, lost takeover).
    Conflict,
    /// The call has ended.
    CallEnded,
    PayloadTooLarge,
    /// Wrong content type (HTTP) or frame type (WebSocket, closes with 1003).
    UnsupportedMediaType,
    /// Input out of order (media before start, sequence gap).
    OutOfOrder,
    UnsupportedVersion,
    RateLimited,
    /// Not admitting now (capacity, governor, drain); retry, probably elsewhere.
    Overloaded,
    /// A dependency (the store) failed.
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::UnsupportedVersion => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict | ErrorKind::CallEnded => StatusCode::CONFLICT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::OutOfOrder => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Overloaded | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn close_code(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => close::BAD_REQUEST,
            ErrorKind::UnsupportedMediaType => close::UNSUPPORTED_DATA,
            ErrorKind::Unauthorized | ErrorKind::Forbidden => close::UNAUTHORIZED,
            ErrorKind::NotFound => close::UNKNOWN_CALL,
            ErrorKind::Conflict => close::STALE_SESSION,
            ErrorKind::CallEnded => close::CALL_ENDED,
            ErrorKind::PayloadTooLarge => close::MESSAGE_TOO_BIG,
            ErrorKind::OutOfOrder => close::OUT_OF_ORDER,
            ErrorKind::UnsupportedVersion => close::UNSUPPORTED_VERSION,
            ErrorKind::RateLimited => close::RATE_LIMITED,
            ErrorKind::Overloaded => close::OVERLOADED,
            ErrorKind::Unavailable | ErrorKind::Internal => close::INTERNAL_ERROR,
        }
    }

    /// Whether this is our fault (logged at error level) rather than the client's.
    pub fn is_server_fault(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Internal)
    }
}

/// A failure to report to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    pub kind: ErrorKind,
    /// Stable snake_case identifier (JSON `error.code`, metric label).
    pub code: &'static str,
    /// Client-facing text.
    pub message: String,
    /// For 503s: seconds after which to retry.
    pub retry_after_s: Option<u32>,
}

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Error {
        Error { kind, code, message: message.into(), retry_after_s: None }
    }

    pub fn retry_after(mut self, seconds: u32) -> Error {
        self.retry_after_s = Some(seconds);
        self
    }

    pub fn call_not_found() -> Error {
        Error::new(ErrorKind::NotFound, "call_not_found", "no call with this id")
    }

    pub fn internal() -> Error {
        Error::new(ErrorKind::Internal, "internal_error", "internal error")
    }

    /// The close reason text: `code: message`, cut to the 123 bytes a close frame allows.
    pub fn close_reason(&self) -> String {
        let mut s = format!("{}: {}", self.code, self.message);
        if s.len() > 123 {
            let mut cut = 123;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::NotFound => Error::call_not_found(),
            StoreError::AlreadyExists => {
                Error::new(ErrorKind::Conflict, "call_exists", "a call with this id exists")
            }
            StoreError::Fenced { current } | StoreError::Stale { current } => Error::new(
                ErrorKind::Conflict,
                "stale_session",
                format!("another session owns the call (epoch {current})"),
            ),
            StoreError::Ended { reason } => {
                Error::new(ErrorKind::CallEnded, "call_ended", format!("the call has ended ({reason})"))
            }
            StoreError::Full(_) => {
                Error::new(ErrorKind::Overloaded, "store_full", "the call store is full").retry_after(5)
            }
            StoreError::Unavailable(_) => {
                Error::new(ErrorKind::Unavailable, "store_unavailable", "the call store is unavailable")
                    .retry_after(1)
            }
            StoreError::Invalid(msg) => Error::new(ErrorKind::InvalidRequest, "invalid_request", msg),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": { "code": self.code, "message": self.message } }));
        let mut response = (self.kind.status(), body).into_response();
        if let Some(s) = self.retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}
