//! Operations on calls shared by the HTTP routes and the media sessions: create a call,
//! describe it, end it through the store when no local session drives it.

use callworker_call::{Call, CallId, CallSpec, EndReason, Input, checkpoint as envelope};
use callworker_store::{CallRecord, Checkpoint, NewCall, RecordStatus, RecordingChunk, StoreError};
use serde::Serialize;
use tracing::{info, warn};

use crate::error::{Error, ErrorKind};
use crate::metrics as m;
use crate::state::{AppState, new_call_id, now};

/// Attempts to end a call through the store when its epoch moves under us.
const END_ATTEMPTS_MAX: usize = 3;

/// Refuses a new call for `tenant` when it already has `auth.tenant_calls_max` live calls
/// across the fleet (429 `tenant_calls_limit`). The count is read from the store, so two
/// creations racing on different workers may both pass: the cap can be exceeded by the
/// creations in flight at the same moment, never more.
pub async fn admit_tenant(state: &AppState, tenant: &callworker_call::TenantId) -> Result<(), Error> {
    let max = state.config.auth.tenant_calls_max;
    if max == 0 {
        return Ok(());
    }
    let live = state.store.live_calls_of(tenant, max).await?;
    if live >= max {
        crate::auth::count_limit("tenant_calls");
        return Err(Error::new(
            ErrorKind::RateLimited,
            "tenant_calls_limit",
            format!("this tenant already has {max} live calls"),
        )
        .retry_after(1));
    }
    Ok(())
}

/// Creates a call in status `created` (its first checkpoint is the initial state).
pub async fn create(
    state: &AppState,
    spec: CallSpec,
    via: &'static str,
) -> Result<(Call, CallRecord), Error> {
    let created_at = now();
    let call = Call::new(new_call_id(), spec, created_at)
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, "invalid_call", e.to_string()))?;
    let checkpoint = Checkpoint { seq: 0, blob: envelope::encode(&call).into() };
    state
        .store
        .create(NewCall {
            call_id: call.id.clone(),
            tenant: call.tenant.clone(),
            checkpoint: checkpoint.clone(),
        })
        .await?;
    metrics::counter!(m::CALLS_CREATED, "via" => via).increment(1);
    info!(call_id = %call.id, tenant = %call.tenant, program = call.program_name(), via, "call created");
    let record = CallRecord {
        call_id: call.id.clone(),
        tenant: call.tenant.clone(),
        status: RecordStatus::Created,
        epoch: callworker_call::Epoch::ZERO,
        owner: None,
        lease_until: None,
        end_reason: None,
        created_at,
        updated_at: created_at,
        checkpoint: Some(checkpoint),
    };
    Ok((call, record))
}

/// Decodes the call held in a store record.
///
/// A call the store ended without a final checkpoint (the reaper, a corrupt checkpoint)
/// is shown ended with the store's reason, at the store's last update.
pub fn decode(record: &CallRecord) -> Result<Call, Error> {
    let cp = record.checkpoint.as_ref().ok_or_else(Error::internal)?;
    let mut call = envelope::decode(&cp.blob).map_err(|e| {
        warn!(call_id = %record.call_id, error = %e, "stored checkpoint unreadable");
        Error::new(ErrorKind::Internal, "checkpoint_unreadable", "the call's stored state cannot be read")
    })?;
    if let Some(reason) = record.end_reason
        && call.end_reason.is_none()
    {
        call.handle(record.updated_at, Input::End(reason), &mut Vec::new());
    }
    Ok(call)
}

/// Ends a call that no session on this worker drives, by a fenced end at the stored epoch.
/// If a session elsewhere owns the call, this fences it; it learns of the end from its next
/// write and says goodbye to its client.
pub async fn end_in_store(state: &AppState, call_id: &CallId, reason: EndReason) -> Result<Call, Error> {
    for _ in 0..END_ATTEMPTS_MAX {
        let record = state.store.get(call_id).await?;
        if let Some(reason) = record.end_reason {
            return Err(StoreError::Ended { reason }.into());
        }
        let mut call = decode(&record)?;
        let mut outputs = Vec::new();
        call.handle(now(), Input::End(reason), &mut outputs);
        let seq = record.checkpoint.as_ref().map_or(0, |c| c.seq) + 1;
        let checkpoint = Checkpoint { seq, blob: envelope::encode(&call).into() };
        match state
            .store
            .end(call_id, record.epoch, reason, Some(checkpoint), RecordingChunk::default())
            .await
        {
            Ok(_) => {
                metrics::counter!(m::CALLS_ENDED, "reason" => reason.as_str()).increment(1);
                info!(call_id = %call_id, reason = %reason, "call ended through the store");
                return Ok(call);
            }
            Err(StoreError::Fenced { .. }) => continue, // a session moved the epoch; re-read
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::new(
        ErrorKind::Conflict,
        "call_owner_changed",
        "the call changed owner while ending it; retry",
    ))
}

/// A call as the control API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Call)]
pub struct CallView {
    pub call_id: String,
    pub tenant: String,
    #[schema(value_type = crate::http::openapi::CallStatusDoc)]
    pub status: &'static str,
    #[schema(value_type = crate::http::openapi::DirectionDoc)]
    pub direction: callworker_call::Direction,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The running program's name (`echo`, `tone`).
    pub program: &'static str,
    #[schema(value_type = crate::http::openapi::AudioFormatDoc)]
    pub audio: callworker_protocol::AudioFormat,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    #[schema(value_type = Option<crate::http::openapi::EndReasonDoc>)]
    pub end_reason: Option<EndReason>,
    #[schema(value_type = Option<crate::http::openapi::TransportDoc>)]
    pub transport: Option<callworker_call::Transport>,
    /// Whether a media session drives the call right now.
    pub attached: bool,
    pub epoch: u64,
    #[schema(value_type = crate::http::openapi::MediaPositionsDoc)]
    pub media: callworker_call::MediaPositions,
    pub timeline_events: usize,
    pub timeline_events_dropped: u64,
    /// Which ways of the audio `mute` actions silenced.
    #[schema(value_type = crate::http::openapi::MuteDoc)]
    pub mute: callworker_call::Mute,
}

impl CallView {
    pub fn new(call: &Call, epoch: callworker_call::Epoch) -> CallView {
        CallView {
            call_id: call.id.to_string(),
            tenant: call.tenant.to_string(),
            status: call.status.as_str(),
            direction: call.direction,
            from: call.from.clone(),
            to: call.to.clone(),
            program: call.program_name(),
            audio: call.audio,
            created_at_ms: call.created_at.0,
            started_at_ms: call.started_at.map(|t| t.0),
            ended_at_ms: call.ended_at.map(|t| t.0),
            end_reason: call.end_reason,
            transport: call.transport,
            attached: call.attached,
            epoch: epoch.get(),
            media: call.media,
            timeline_events: call.timeline.len(),
            timeline_events_dropped: call.timeline.dropped(),
            mute: call.mute,
        }
    }
}
