//! `/healthz` (the process is alive; never depends on the store), `/readyz` (admitting
//! calls) and `/metrics` (Prometheus text).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

pub async fn healthz(State(state): State<AppState>) -> Response {
    Json(json!({ "status": "ok", "worker_id": state.worker_id.as_str() })).into_response()
}

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

pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
