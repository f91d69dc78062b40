//! `/healthz` (the process is alive; never depends on the store), `/readyz` (admitting
//! calls) and `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::openapi::{HealthDoc, ReadinessDoc};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The process is alive", body = HealthDoc)),
)]
pub async fn healthz(State(state): State<AppState>) -> Response {
    Json(json!({ "status": "ok", "worker_id": state.worker_id.as_str() })).into_response()
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Admitting calls", body = ReadinessDoc),
        (status = 503, description = "Not admitting (draining, memory pressure, at capacity)", body = ReadinessDoc),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.admission.check() {
        Ok(()) => Json(json!({ "ready": true, "live_calls": state.live.len() })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": reason, "live_calls": state.live.len() })),
        )
            .into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
