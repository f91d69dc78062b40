//! The HTTP surface: control API, Twilio webhooks, media upgrades, health and metrics.

mod api;
mod health;
mod media;
pub mod twilio;

use std::time::Instant;

use axum::Router;
use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind};
use crate::metrics as m;
use crate::state::AppState;

/// Builds the router for one worker.
pub fn router(state: AppState) -> Router {
    let body_max = state.config.limits.http_body_bytes_max;
    Router::new()
        .route("/v1/calls", post(api::create_call).get(api::list_calls))
        .route("/v1/calls/{id}", get(api::get_call))
        .route("/v1/calls/{id}/events", get(api::call_events))
        .route("/v1/calls/{id}/end", post(api::end_call))
        .route("/v1/calls/{id}/actions", post(api::call_action))
        .route("/v1/calls/{id}/recording", get(api::call_recording))
        .route("/v1/workers", get(api::list_workers))
        .route("/v1/admin/memory", get(api::admin_memory))
        .route("/v1/admin/memory/purge", post(api::admin_memory_purge))
        .route("/v1/admin/memory/profile", get(api::admin_memory_profile))
        .route("/v1/admin/drain", post(api::admin_drain))
        .route("/v1/media", get(media::native_media))
        .route("/twilio/voice", post(twilio::voice))
        .route("/twilio/stream-ended", post(twilio::stream_ended))
        .route("/twilio/media", get(media::twilio_media))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_max))
        // Before any route (media upgrades included): a browser page from another origin
        // gets nothing, not even an authentication error.
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::check_origin))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

async fn not_found() -> Error {
    Error::new(ErrorKind::NotFound, "route_not_found", "no such route")
}

async fn method_not_allowed() -> Response {
    let mut r =
        Error::new(ErrorKind::InvalidRequest, "method_not_allowed", "method not allowed on this route")
            .into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Counts every request by route template (never the raw path: ids would explode the
/// label set), method and status.
async fn record_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!(m::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_SECONDS, "route" => route).record(started.elapsed().as_secs_f64());
    response
}

/// `Json<T>` whose rejections use our error format.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(Error::new(
                ErrorKind::UnsupportedMediaType,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(r)) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    "body_too_large",
                    "request body exceeds the size bound",
                ))
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                Err(Error::new(ErrorKind::InvalidRequest, "invalid_json", e.body_text()))
            }
            Err(e) => Err(Error::new(ErrorKind::InvalidRequest, "invalid_body", e.body_text())),
        }
    }
}

/// `Form<T>` whose rejections use our error format.
#[derive(Debug)]
pub struct ApiForm<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiForm<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        axum::Form::<T>::from_request(req, state).await.map(|axum::Form(v)| ApiForm(v)).map_err(
            |e: FormRejection| match e {
                FormRejection::InvalidFormContentType(_) => Error::new(
                    ErrorKind::UnsupportedMediaType,
                    "unsupported_media_type",
                    "expected Content-Type: application/x-www-form-urlencoded",
                ),
                e => Error::new(ErrorKind::InvalidRequest, "invalid_form", e.body_text()),
            },
        )
    }
}

/// `Query<T>` whose rejections use our error format.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                Error::new(ErrorKind::InvalidRequest, "invalid_query", e.body_text())
            })
    }
}
