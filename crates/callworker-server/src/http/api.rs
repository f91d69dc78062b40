//! The control API: `/v1/calls…`. Errors are `{"error": {"code", "message"}}`.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use callworker_call::{
    Action, Call, CallId, CallSpec, Direction, EndReason, Epoch, ProgramSpec, ProgramState,
    RecordingSettings, TenantId,
};
use callworker_protocol::{AudioFormat, Encoding};
use callworker_store::{LIST_LIMIT_MAX, ListQuery, RecordStatus};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;
use utoipa::IntoParams;

use super::openapi::{
    ActionDoc, AuthErrors, BodyErrors, CallEventsDoc, CallPageDoc, CreateCallDoc, CreatedCallDoc, DrainDoc,
    ErrorBody, MemoryDoc, TranscriptDoc, WorkersDoc,
};
use super::{ApiJson, ApiJsonRaw, ApiQuery};
use crate::auth::{Caller, Operator, count_refusal};
use crate::calls::{self, CallView};
use crate::error::{Error, ErrorKind};
use crate::live::Command;
use crate::state::{AppState, now};

/// How long the API waits for a live call's task to answer.
const ACTOR_REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// Default page size of `GET /v1/calls`.
const LIST_LIMIT_DEFAULT: usize = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCall {
    program: ProgramSpec,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    direction: Option<Direction>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    audio: Option<AudioFormat>,
    /// At most the configured `calls.max_duration_ms`.
    #[serde(default)]
    max_duration_ms: Option<u64>,
    /// Tracks to record; the configured `calls.recording` when absent.
    #[serde(default)]
    record: Option<RecordingSettings>,
}

/// Longest `from`/`to` accepted (E.164 numbers, SIP URIs), in characters: what the
/// OpenAPI document's `maxLength` counts (so at most 1 KiB of UTF-8).
pub(crate) const PARTY_CHARS_MAX: usize = 256;

fn invalid(code: &'static str, message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidRequest, code, message)
}

fn parse_call_id(id: &str) -> Result<CallId, Error> {
    // An id that cannot be valid cannot name a call.
    CallId::parse(id).map_err(|_| Error::call_not_found())
}

#[utoipa::path(
    post,
    path = "/v1/calls",
    tag = "calls",
    request_body = CreateCallDoc,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; connect media to `media_url`", body = CreatedCallDoc),
        (status = 400, description = "Invalid program (`invalid_program`; `unknown_ivr_definition` for an IVR definition this worker does not have), tenant, party, audio or duration", body = ErrorBody),
        (status = 403, description = "The body names another tenant than the key's (`tenant_mismatch`)", body = ErrorBody),
        (status = 429, description = "Rate limited, or the tenant has too many live calls (`tenant_calls_limit`)", body = ErrorBody),
        AuthErrors,
        BodyErrors,
    ),
)]
pub async fn create_call(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateCall>,
) -> Result<Response, Error> {
    state.admission.admit_call()?;
    let mut req = req;
    req.program
        .resolve_ivr(&state.config.ivr.definitions)
        .map_err(|e| invalid("unknown_ivr_definition", e.to_string()))?;
    req.program.validate().map_err(|e| invalid("invalid_program", e.to_string()))?;
    let named = req
        .tenant
        .map(|t| TenantId::parse(&t).map_err(|e| invalid("invalid_tenant", e.to_string())))
        .transpose()?;
    // A tenant key creates calls for its own tenant; an operator for the tenant it names.
    let tenant = match (&caller.tenant, named) {
        (Some(own), Some(named)) if *own != named => {
            count_refusal("tenant_mismatch");
            return Err(Error::new(
                ErrorKind::Forbidden,
                "tenant_mismatch",
                "the body names another tenant than the API key's",
            ));
        }
        (Some(own), _) => own.clone(),
        (None, Some(named)) => named,
        (None, None) => state.config.calls.default_tenant.clone(),
    };
    for (field, value) in [("from", &req.from), ("to", &req.to)] {
        if value
            .as_ref()
            .is_some_and(|v| v.chars().count() > PARTY_CHARS_MAX || v.chars().any(char::is_control))
        {
            return Err(invalid(
                "invalid_party",
                format!("{field} must be at most {PARTY_CHARS_MAX} printable characters"),
            ));
        }
    }
    let audio = req.audio.unwrap_or(AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 });
    audio.validate().map_err(|e| invalid("unsupported_audio", e.to_string()))?;
    let mut limits = state.config.calls.limits;
    if let Some(ms) = req.max_duration_ms {
        if ms == 0 || ms > limits.max_duration_ms {
            return Err(invalid(
                "invalid_max_duration",
                format!("max_duration_ms must be within 1..={}", limits.max_duration_ms),
            ));
        }
        limits.max_duration_ms = ms;
    }
    let program = crate::session::agent::prepare_program(&state.config.agent, &tenant, req.program)?;
    let spec = CallSpec {
        tenant,
        direction: req.direction.unwrap_or(Direction::Outbound),
        from: req.from,
        to: req.to,
        program,
        audio,
        limits,
        recording: req.record.unwrap_or(state.config.calls.recording),
    };
    // Last before creating: the cap is read from the store, after every cheap check.
    calls::admit_tenant(&state, &spec.tenant).await?;
    let (call, _) = calls::create(&state, spec, "api").await?;
    let token = state.tokens.issue(&call.id, &call.tenant, Epoch::ZERO, now());
    let body = json!({
        "call": CallView::new(&call, Epoch::ZERO),
        "media_url": state.media_url("/v1/media"),
        "resume_token": token,
        "epoch": 0,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only calls in this status.
    #[serde(default)]
    #[param(value_type = Option<super::openapi::CallStatusDoc>, inline)]
    status: Option<String>,
    /// Only this tenant's calls (operator keys; a tenant key sees its own tenant only).
    #[serde(default)]
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    tenant: Option<String>,
    /// Page size (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page (opaque; its form depends on the store, and the
    /// pattern here is this worker's).
    #[serde(default)]
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/calls",
    tag = "calls",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of calls, newest last", body = CallPageDoc),
        (status = 400, description = "Invalid status, tenant, limit or cursor", body = ErrorBody),
        (status = 403, description = "A tenant key asked for another tenant (`tenant_mismatch`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn list_calls(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Response, Error> {
    let status = match p.status.as_deref() {
        None => None,
        Some("created") => Some(RecordStatus::Created),
        Some("active") => Some(RecordStatus::Active),
        Some("ended") => Some(RecordStatus::Ended),
        Some(other) => {
            return Err(invalid("invalid_status", format!("{other:?} is not created, active or ended")));
        }
    };
    let limit = p.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return Err(invalid("invalid_limit", format!("limit must be within 1..={LIST_LIMIT_MAX}")));
    }
    let named = p
        .tenant
        .map(|t| TenantId::parse(&t).map_err(|e| invalid("invalid_tenant", e.to_string())))
        .transpose()?;
    // A tenant key lists its own tenant's calls only, whatever it asks for.
    let tenant = match (&caller.tenant, named) {
        (Some(own), Some(named)) if *own != named => {
            count_refusal("tenant_mismatch");
            return Err(Error::new(
                ErrorKind::Forbidden,
                "tenant_mismatch",
                "a tenant key may list only its own tenant's calls",
            ));
        }
        (Some(own), _) => Some(own.clone()),
        (None, named) => named,
    };
    let page = state.store.list(&ListQuery { tenant, status, cursor: p.cursor, limit }).await?;
    let mut views = Vec::with_capacity(page.records.len());
    for record in &page.records {
        // One call whose stored state cannot be read (corrupt, or a newer format) must not
        // hide the others: it is listed with what the store itself knows.
        let view = match calls::decode(record) {
            Ok(call) => {
                serde_json::to_value(CallView::new(&call, record.epoch)).map_err(|_| Error::internal())?
            }
            Err(_) => json!({
                "call_id": record.call_id.as_str(),
                "tenant": record.tenant.as_str(),
                "status": record.status.as_str(),
                "end_reason": record.end_reason,
                "epoch": record.epoch.get(),
                "created_at_ms": record.created_at.0,
                "state_readable": false,
            }),
        };
        views.push(view);
    }
    Ok(Json(json!({ "calls": views, "next_cursor": page.next_cursor })).into_response())
}

/// The freshest state of a call: from the session driving it here, else from the store.
async fn load(state: &AppState, caller: &Caller, id: &CallId) -> Result<(Call, Epoch), Error> {
    let record = state.store.get(id).await?;
    caller.authorize(&record.tenant)?;
    if let Some(commands) = state.live.get(id) {
        let (tx, rx) = oneshot::channel();
        if commands.try_send(Command::Snapshot(tx)).is_ok()
            && let Ok(Ok(call)) = tokio::time::timeout(ACTOR_REPLY_TIMEOUT, rx).await
        {
            return Ok((call, record.epoch));
        }
    }
    Ok((calls::decode(&record)?, record.epoch))
}

#[utoipa::path(
    get,
    path = "/v1/calls/{id}",
    tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The call", body = crate::calls::CallView),
        (status = 404, description = "No such call (`call_not_found`), or another tenant's", body = ErrorBody),
        (status = 500, description = "The call's stored state cannot be read (`checkpoint_unreadable`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn get_call(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_call_id(&id)?;
    let (call, epoch) = load(&state, &caller, &id).await?;
    Ok(Json(CallView::new(&call, epoch)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/calls/{id}/events",
    tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The call's timeline", body = CallEventsDoc),
        (status = 404, description = "No such call (`call_not_found`), or another tenant's", body = ErrorBody),
        (status = 500, description = "The call's stored state cannot be read (`checkpoint_unreadable`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn call_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_call_id(&id)?;
    let (call, _) = load(&state, &caller, &id).await?;
    let events: Vec<_> = call.timeline.events().collect();
    Ok(Json(json!({
        "call_id": call.id.as_str(),
        "events": events,
        "dropped": call.timeline.dropped(),
    }))
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/calls/{id}/transcript",
    tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The conversation of a call running the agent program", body = TranscriptDoc),
        (status = 404, description = "No such call (`call_not_found`), or another tenant's", body = ErrorBody),
        (status = 409, description = "The call does not run the agent program (`not_an_agent_call`)", body = ErrorBody),
        (status = 500, description = "The call's stored state cannot be read (`checkpoint_unreadable`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn call_transcript(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_call_id(&id)?;
    let (call, _) = load(&state, &caller, &id).await?;
    let ProgramState::Agent(agent) = &call.program else {
        return Err(Error::new(
            ErrorKind::Conflict,
            "not_an_agent_call",
            "the call does not run the agent program",
        ));
    };
    let t = agent.transcript();
    let entries: Vec<_> = t.entries().collect();
    Ok(Json(json!({
        "call_id": call.id.as_str(),
        "entries": entries,
        "next_index": t.next_index(),
        "dropped": t.dropped(),
        "duplicates": t.duplicates(),
        "missing": t.missing(),
        "turns": agent.turns(),
        "connected": agent.is_connected(),
        "last_mark": agent.last_mark(),
    }))
    .into_response())
}

/// Sends a command to the session driving the call here and waits for its answer; `None`
/// when no session drives it here (any more).
pub(super) async fn ask_live(
    state: &AppState,
    id: &CallId,
    make: impl FnOnce(oneshot::Sender<Result<Call, Error>>) -> Command,
) -> Option<Result<Call, Error>> {
    let commands = state.live.get(id)?;
    let (tx, rx) = oneshot::channel();
    if let Err(e) = commands.try_send(make(tx)) {
        return Some(Err(match e {
            tokio::sync::mpsc::error::TrySendError::Full(_) => {
                Error::new(ErrorKind::Overloaded, "call_busy", "the call has too many pending commands")
                    .retry_after(1)
            }
            // The session ended between lookup and send: fall back to the store.
            tokio::sync::mpsc::error::TrySendError::Closed(_) => return None,
        }));
    }
    match tokio::time::timeout(ACTOR_REPLY_TIMEOUT, rx).await {
        Ok(Ok(result)) => Some(result),
        Ok(Err(_)) => None, // session ended before answering
        Err(_) => Some(Err(Error::new(
            ErrorKind::Unavailable,
            "call_unresponsive",
            "the call did not answer in time",
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/v1/calls/{id}/end",
    tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Ended (`api_ended`); the call as it ended", body = crate::calls::CallView),
        (status = 404, description = "No such call (`call_not_found`), or another tenant's", body = ErrorBody),
        (status = 409, description = "The call has ended (`call_ended`), or changed owner meanwhile", body = ErrorBody),
        (status = 500, description = "The call's stored state cannot be read (`checkpoint_unreadable`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn end_call(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_call_id(&id)?;
    let record = state.store.get(&id).await?;
    caller.authorize(&record.tenant)?;
    if let Some(reason) = record.end_reason {
        return Err(callworker_store::StoreError::Ended { reason }.into());
    }
    let call = match ask_live(&state, &id, |tx| Command::End(EndReason::ApiEnded, tx)).await {
        Some(result) => result?,
        None => calls::end_in_store(&state, &id, EndReason::ApiEnded).await?,
    };
    let epoch = state.store.get(&id).await.map(|r| r.epoch).unwrap_or(record.epoch);
    Ok(Json(CallView::new(&call, epoch)).into_response())
}

#[utoipa::path(
    post,
    path = "/v1/calls/{id}/actions",
    tag = "calls",
    params(("id" = String, Path, description = "Call id")),
    request_body = ActionDoc,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Applied; the call after it", body = crate::calls::CallView),
        (status = 400, description = "Invalid action (`invalid_action`, `unknown_ivr_definition`, `invalid_json`, `invalid_body`)", body = ErrorBody),
        (status = 404, description = "No such call (`call_not_found`), or another tenant's", body = ErrorBody),
        (status = 403, description = "A forged or stale forwarding header (`forward_signature_invalid`)", body = ErrorBody),
        (status = 409, description = "The call has ended (`call_ended`), no media session drives it anywhere (`call_not_attached`, with `Retry-After`), it moved while the action was forwarded (`call_owner_moved`, retry), or a transfer is not possible (`transfer_unavailable`)", body = ErrorBody),
        (status = 500, description = "The call's stored state cannot be read (`checkpoint_unreadable`)", body = ErrorBody),
        (status = 503, description = "The worker carrying the call did not answer (`owner_unreachable`), Twilio did not take a transfer (`transfer_failed`), or the call is busy (`call_busy`, `call_unresponsive`); `Retry-After`", body = ErrorBody),
        AuthErrors,
        BodyErrors,
    ),
)]
pub async fn call_action(
    State(state): State<AppState>,
    origin: super::actions::ActionOrigin,
    Path(id): Path<String>,
    ApiJsonRaw(action, body): ApiJsonRaw<Action>,
) -> Result<Response, Error> {
    let id = parse_call_id(&id)?;
    super::actions::apply(&state, origin, id, action, body).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RecordingParams {
    /// Which direction (default `inbound`).
    #[serde(default)]
    #[param(value_type = Option<super::openapi::TrackDoc>, inline)]
    track: Option<String>,
}

/// `GET /v1/calls/{id}/recording?track=inbound|outbound`: the call's recording as a WAV
/// file in the call's own encoding (μ-law, A-law or 16-bit PCM, mono). It holds the audio
/// that durable checkpoints cover: for a live call, up to its last checkpoint.
#[utoipa::path(
    get,
    path = "/v1/calls/{id}/recording",
    tag = "calls",
    params(("id" = String, Path, description = "Call id"), RecordingParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "WAV (mono, in the call's encoding); audio up to the last checkpoint", content_type = "audio/wav", body = Vec<u8>, headers(("x-recording-truncated" = String, description = "`true` when the recording reached its size bound"))),
        (status = 400, description = "Invalid track (`invalid_track`)", body = ErrorBody),
        (status = 404, description = "No such call, or the track is not recorded (`recording_not_enabled`)", body = ErrorBody),
        (status = 500, description = "The call's stored state cannot be read (`checkpoint_unreadable`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn call_recording(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<RecordingParams>,
) -> Result<Response, Error> {
    let id = parse_call_id(&id)?;
    caller.authorize(&state.store.get(&id).await?.tenant)?;
    let inbound = match p.track.as_deref() {
        None | Some("inbound") => true,
        Some("outbound") => false,
        Some(other) => {
            return Err(invalid(
                "invalid_track",
                format!("track {other:?} is not one of: inbound, outbound"),
            ));
        }
    };
    let record = state.store.get(&id).await?;
    let call = calls::decode(&record)?;
    let enabled = if inbound { call.recording.inbound } else { call.recording.outbound };
    if !enabled {
        return Err(Error::new(
            ErrorKind::NotFound,
            "recording_not_enabled",
            "this call does not record that track",
        ));
    }
    let recording = state.store.recording(&id).await?;
    let audio = if inbound { recording.inbound } else { recording.outbound };
    let wav = crate::wav::encode(call.audio, &audio);
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "audio/wav"),
            (
                axum::http::header::HeaderName::from_static("x-recording-truncated"),
                if recording.truncated { "true" } else { "false" },
            ),
        ],
        wav,
    )
        .into_response())
}

/// `GET /v1/workers`: the worker registry (workers whose heartbeat has not lapsed).
#[utoipa::path(
    get,
    path = "/v1/workers",
    tag = "operator",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Workers whose heartbeat has not lapsed", body = WorkersDoc),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn list_workers(State(state): State<AppState>, _: Operator) -> Result<Response, Error> {
    let workers = state.store.workers().await?;
    Ok(Json(json!({ "workers": workers })).into_response())
}

/// `POST /v1/admin/drain`: stop admitting (readiness false, new calls and sessions 503
/// `draining`) and migrate every call on this worker to other workers (their resumes record
/// `migrated_drain`). The worker keeps running; stop it once `live_calls` is 0.
#[utoipa::path(
    post,
    path = "/v1/admin/drain",
    tag = "operator",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Draining; calls told to migrate", body = DrainDoc),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn admin_drain(State(state): State<AppState>, _: Operator) -> Result<Response, Error> {
    state.admission.start_draining();
    let mut migrating = 0;
    for call in state.live.all() {
        let command = crate::live::Command::Migrate { cause: callworker_call::ResumeCause::MigratedDrain };
        if call.commands.try_send(command).is_ok() {
            migrating += 1;
        }
    }
    tracing::info!(migrating, "drain requested: migrating every call away");
    Ok(Json(json!({ "draining": true, "migrating": migrating })).into_response())
}

/// `POST /v1/admin/memory/purge`: returns the allocator's unused memory to the kernel now.
#[utoipa::path(
    post,
    path = "/v1/admin/memory/purge",
    tag = "operator",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Purged", body = crate::allocator::PurgeReport),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 500, description = "The allocator refused (`purge_failed`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn admin_memory_purge(_: Operator) -> Result<Response, Error> {
    let report = tokio::task::spawn_blocking(crate::allocator::purge)
        .await
        .map_err(|_| Error::internal())?
        .map_err(|e| Error::new(ErrorKind::Internal, "purge_failed", e))?;
    Ok(Json(report).into_response())
}

/// `GET /v1/admin/memory`: the memory governor's level and last sample.
#[utoipa::path(
    get,
    path = "/v1/admin/memory",
    tag = "operator",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The memory governor's level and last sample", body = MemoryDoc),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn admin_memory(State(state): State<AppState>, _: Operator) -> Result<Response, Error> {
    let governor = &state.config.governor;
    Ok(Json(json!({
        "level": state.admission.memory_level(),
        "idle_reason": state.memory.idle_reason(),
        "sample": state.memory.snapshot(),
        "thresholds": governor.thresholds,
        "configured_limit_bytes": governor.memory_limit_bytes,
        "live_calls": state.live.len(),
        "allocator": crate::allocator::stats().ok(),
        "top_calls": state.live.largest(10).into_iter().map(|c| json!({"call_id": c.call_id.as_str(), "bytes": c.bytes})).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// Query of `GET /v1/admin/memory/profile`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProfileQuery {
    /// Sampling window in seconds (1..=300; default 30).
    #[param(minimum = 1, maximum = 300)]
    seconds: Option<u64>,
}

/// `GET /v1/admin/memory/profile?seconds=N`: samples heap allocations for N seconds and
/// answers the heap profile as gzipped pprof protobuf (see `profiling.rs`). 404
/// `profiling_disabled` unless `[profiling] enabled`; 409 `profiling_unavailable` unless the
/// worker was started with `_RJEM_MALLOC_CONF=prof:true,…`; 409 `profile_in_progress` while
/// another profile is being taken.
#[utoipa::path(
    get,
    path = "/v1/admin/memory/profile",
    tag = "operator",
    params(ProfileQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Heap profile, gzipped pprof protobuf", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "`seconds` outside 1..=300 (`invalid_seconds`)", body = ErrorBody),
        (status = 403, description = "Not an operator key", body = ErrorBody),
        (status = 404, description = "Profiling is disabled by configuration (`profiling_disabled`)", body = ErrorBody),
        (status = 409, description = "Profiling unavailable in this process, or another profile is running", body = ErrorBody),
        (status = 500, description = "The profile could not be taken (`profile_failed`)", body = ErrorBody),
        AuthErrors,
    ),
)]
pub async fn admin_memory_profile(
    State(state): State<AppState>,
    _: Operator,
    ApiQuery(query): ApiQuery<ProfileQuery>,
) -> Result<Response, Error> {
    use crate::profiling::{self, ProfileError};

    if !state.config.profiling.enabled {
        return Err(Error::new(
            ErrorKind::NotFound,
            "profiling_disabled",
            "heap profiling is disabled by configuration ([profiling] enabled, CALLWORKER_PROFILING__ENABLED)",
        ));
    }
    let to_error = |e: ProfileError| match e {
        ProfileError::WindowOutOfBounds(_) => {
            Error::new(ErrorKind::InvalidRequest, "invalid_seconds", e.to_string())
        }
        ProfileError::Unavailable => Error::new(ErrorKind::Conflict, "profiling_unavailable", e.to_string()),
        ProfileError::InProgress => Error::new(ErrorKind::Conflict, "profile_in_progress", e.to_string()),
        ProfileError::Failed(detail) => {
            tracing::error!(error = %detail, "heap profile failed");
            Error::new(ErrorKind::Internal, "profile_failed", "the heap profile could not be taken")
        }
    };
    let window = profiling::window(query.seconds).map_err(to_error)?;
    let slot = profiling::claim().map_err(to_error)?;
    let profile = profiling::capture(slot, window).await.map_err(to_error)?;
    let worker: String = state
        .worker_id
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let taken_s =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let disposition = format!("attachment; filename=\"callworker-heap-{worker}-{taken_s}.pb.gz\"");
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (axum::http::header::CONTENT_DISPOSITION, disposition),
        ],
        profile,
    )
        .into_response())
}
