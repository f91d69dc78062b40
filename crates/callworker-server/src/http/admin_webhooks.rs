//! `GET /v1/admin/webhooks/dead`: the webhook events given up on (operators only).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::ApiQuery;
use super::openapi::{AuthErrors, ErrorBody};
use crate::auth::Operator;
use crate::error::{Error, ErrorKind};
use crate::state::AppState;

/// Largest page of dead letters.
const DEAD_LETTERS_LIMIT_MAX: usize = 1_000;
const DEAD_LETTERS_LIMIT_DEFAULT: usize = 100;

/// Query of `GET /v1/admin/webhooks/dead`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// Most dead letters returned, newest first (1..=1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// `GET /v1/admin/webhooks/dead` answer.
#[derive(Debug, ToSchema)]
#[schema(as = DeadLetters)]
#[allow(dead_code)]
pub struct DeadLettersDoc {
    /// Newest first.
    dead_letters: Vec<DeadLetterDoc>,
}

/// A webhook event given up on.
#[derive(Debug, ToSchema)]
#[schema(as = DeadLetter)]
#[allow(dead_code)]
pub struct DeadLetterDoc {
    /// The webhook body as it was sent (docs/webhooks.md).
    event: serde_json::Value,
    /// `attempts_exhausted`, `tenant_not_configured` or `unreadable`.
    reason: String,
    /// Failed attempts before it was given up.
    attempts: u32,
    /// When it was given up (Unix ms, store clock).
    at: u64,
}

/// `GET /v1/admin/webhooks/dead?limit=N`: the newest dead-lettered webhook events,
/// fleet-wide (bounded by `webhooks.dead_letters_max`).
#[utoipa::path(
    get,
    path = "/v1/admin/webhooks/dead",
    tag = "operator",
    params(DeadQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Dead-lettered webhook events, newest first", body = DeadLettersDoc),
        (status = 400, description = "`limit` outside 1..=1000 (`invalid_limit`)", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 503, description = "The store is unavailable (`store_unavailable`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn dead_letters(
    State(state): State<AppState>,
    _: Operator,
    ApiQuery(query): ApiQuery<DeadQuery>,
) -> Result<Response, Error> {
    let limit = query.limit.unwrap_or(DEAD_LETTERS_LIMIT_DEFAULT);
    if !(1..=DEAD_LETTERS_LIMIT_MAX).contains(&limit) {
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            "invalid_limit",
            format!("limit must be within 1..={DEAD_LETTERS_LIMIT_MAX}"),
        ));
    }
    let letters = state.store.dead_letters(limit).await?;
    Ok(Json(serde_json::json!({ "dead_letters": letters })).into_response())
}
