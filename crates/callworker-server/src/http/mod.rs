//! The HTTP surface: control API, Twilio webhooks, media upgrades, health and metrics.

mod actions;
mod admin_webhooks;
mod api;
mod health;
mod media;
pub mod openapi;
pub mod twilio;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde::de::DeserializeOwned;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, ErrorKind};
use crate::metrics as m;
use crate::state::AppState;

/// Builds the router for one worker, and serves its OpenAPI document at `/openapi.json`.
pub fn router(state: AppState) -> Router {
    let body_max = state.config.limits.http_body_bytes_max;
    let (router, doc) = routes().split_for_parts();
    let doc = openapi::document(doc, openapi::WorkerFacts::of(&state.config));
    let doc = serde_json::to_string(&doc).expect("an OpenAPI document serializes to JSON");
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(openapi::DocumentJson(Arc::new(doc))))
        .layer(DefaultBodyLimit::max(body_max))
        // Before any route (media upgrades included): a browser page from another origin
        // gets nothing, not even an authentication error.
        .layer(middleware::from_fn_with_state(state.clone(), crate::auth::check_origin))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

/// Every route, once. A route registered with `routes!` is served and documented from its
/// handler's `#[utoipa::path]`; a route registered with `.route` is served only, and must be
/// one of [`openapi::UNDOCUMENTED_ROUTES`] (a test checks).
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(api::create_call, api::list_calls))
        .routes(routes!(api::get_call))
        .routes(routes!(api::call_events))
        .routes(routes!(api::call_transcript))
        .routes(routes!(api::end_call))
        .routes(routes!(api::call_action))
        .routes(routes!(api::call_recording))
        .routes(routes!(api::list_workers))
        .routes(routes!(api::admin_memory))
        .routes(routes!(api::admin_memory_purge))
        .routes(routes!(api::admin_memory_profile))
        .routes(routes!(api::admin_drain))
        .routes(routes!(admin_webhooks::dead_letters))
        .route("/v1/media", get(media::native_media))
        .route("/twilio/voice", post(twilio::voice))
        .route("/twilio/stream-ended", post(twilio::stream_ended))
        .route("/twilio/media", get(media::twilio_media))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::openapi_json))
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
///
/// A number written with a zero fraction (`20.0`) is read as the integer it is: JSON Schema,
/// and so the OpenAPI document, counts it as an integer, and serde would refuse it for an
/// integer field. Numbers are normalized in a `serde_json::Value` before `T` is read from it.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let mut value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(v)) => v,
            Err(JsonRejection::MissingJsonContentType(_)) => {
                return Err(Error::new(
                    ErrorKind::UnsupportedMediaType,
                    "unsupported_media_type",
                    "expected Content-Type: application/json",
                ));
            }
            Err(JsonRejection::BytesRejection(r)) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    "body_too_large",
                    "request body exceeds the size bound",
                ));
            }
            Err(JsonRejection::JsonSyntaxError(e)) => {
                return Err(Error::new(ErrorKind::InvalidRequest, "invalid_json", e.body_text()));
            }
            Err(e) => return Err(Error::new(ErrorKind::InvalidRequest, "invalid_body", e.body_text())),
        };
        integral_floats_to_integers(&mut value);
        serde_json::from_value(value).map(ApiJson).map_err(|e| {
            Error::new(
                ErrorKind::InvalidRequest,
                "invalid_body",
                format!("Failed to deserialize the JSON body into the target type: {e}"),
            )
        })
    }
}

/// [`ApiJson`] that also keeps the body's bytes (a forwarded action is signed over them, and
/// forwarded as they are).
#[derive(Debug)]
pub struct ApiJsonRaw<T>(pub T, pub bytes::Bytes);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJsonRaw<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let (parts, body) = req.into_parts();
        let content_type = parts.headers.get(axum::http::header::CONTENT_TYPE).cloned();
        // Within the route's `DefaultBodyLimit`, which rides in the request's extensions.
        let bytes =
            bytes::Bytes::from_request(Request::from_parts(parts, body), state).await.map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    Error::new(
                        ErrorKind::PayloadTooLarge,
                        "body_too_large",
                        "request body exceeds the size bound",
                    )
                } else {
                    Error::new(ErrorKind::InvalidRequest, "invalid_body", e.body_text())
                }
            })?;
        let mut again = Request::new(axum::body::Body::from(bytes.clone()));
        if let Some(content_type) = content_type {
            again.headers_mut().insert(axum::http::header::CONTENT_TYPE, content_type);
        }
        let ApiJson(value) = ApiJson::<T>::from_request(again, state).await?;
        Ok(ApiJsonRaw(value, bytes))
    }
}

/// Largest magnitude below which every integer is exactly an `f64` (2^53).
const F64_EXACT_INTEGER_MAX: f64 = 9_007_199_254_740_992.0;

/// Rewrites every number with a zero fraction, small enough to be exact, as an integer.
fn integral_floats_to_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64()
                && n.is_f64()
                && f.fract() == 0.0
                && f.abs() <= F64_EXACT_INTEGER_MAX
            {
                // In range and integral: the casts are exact.
                #[allow(clippy::cast_possible_truncation)]
                let i = f as i64;
                *n = i.into();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(map) => map.values_mut().for_each(integral_floats_to_integers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body1 {
        duration_ms: u32,
        freqs_hz: Vec<u32>,
        #[serde(default)]
        gain: Option<f64>,
    }

    async fn read(body: &str) -> Result<Body1, Error> {
        let req =
            Request::post("/").header("content-type", "application/json").body(Body::from(body.to_owned()));
        ApiJson::<Body1>::from_request(req.unwrap(), &()).await.map(|ApiJson(b)| b)
    }

    /// Found by schemathesis: `{"duration_ms": 4440.0}` is an integer by JSON Schema (and by
    /// the OpenAPI document) and was refused with 400.
    #[tokio::test]
    async fn integral_floats_are_integers_and_other_numbers_are_untouched() {
        let b = read(r#"{"duration_ms": 4440.0, "freqs_hz": [85.0, 2], "gain": 0.5}"#).await.unwrap();
        assert_eq!(b, Body1 { duration_ms: 4440, freqs_hz: vec![85, 2], gain: Some(0.5) });
        let b = read(r#"{"duration_ms": 1e3, "freqs_hz": [], "gain": 2.0}"#).await.unwrap();
        assert_eq!(b, Body1 { duration_ms: 1000, freqs_hz: vec![], gain: Some(2.0) });
        for bad in [
            r#"{"duration_ms": 20.5, "freqs_hz": []}"#,
            r#"{"duration_ms": -20.0, "freqs_hz": []}"#,
            r#"{"duration_ms": 1e300, "freqs_hz": []}"#,
            r#"{"duration_ms": 20, "freqs_hz": [], "extra": 1}"#,
        ] {
            let e = read(bad).await.unwrap_err();
            assert_eq!((e.kind, e.code), (ErrorKind::InvalidRequest, "invalid_body"), "{bad}");
        }
        let e = read("{").await.unwrap_err();
        assert_eq!(e.code, "invalid_json");
    }

    /// The raw variant reads the same and keeps the body's exact bytes (forwarded actions are
    /// signed over them), with the same refusals.
    #[tokio::test]
    async fn the_raw_json_extractor_keeps_the_bytes_and_refuses_alike() {
        let raw = |body: &'static str, content_type: Option<&'static str>| {
            let mut req = Request::post("/");
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            ApiJsonRaw::<Body1>::from_request(req.body(Body::from(body)).unwrap(), &())
        };
        let text = r#"{"duration_ms": 40.0, "freqs_hz": []}"#;
        let ApiJsonRaw(b, bytes) = raw(text, Some("application/json")).await.unwrap();
        assert_eq!(b, Body1 { duration_ms: 40, freqs_hz: vec![], gain: None });
        assert_eq!(&bytes[..], text.as_bytes());
        assert_eq!(raw(text, None).await.unwrap_err().code, "unsupported_media_type");
        assert_eq!(raw("{", Some("application/json")).await.unwrap_err().code, "invalid_json");
        assert_eq!(raw("{\"x\": 1}", Some("application/json")).await.unwrap_err().code, "invalid_body");
    }
}
