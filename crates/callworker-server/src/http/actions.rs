//! What `POST /v1/calls/{id}/actions` does with an action, wherever the call runs:
//!
//! - the session driving the call on this worker applies it;
//! - otherwise the worker that carries the call is asked ([`crate::forward`]), once;
//! - otherwise nobody drives the call: a `hangup` ends it through the store (also when the
//!   owner cannot be reached), anything else answers 409 `call_not_attached` with
//!   `Retry-After` (the call resumes when its client reconnects; actions are not queued).
//!
//! A `transfer` of a Twilio call first redirects the call to `<Dial>` through Twilio's REST
//! API, and ends it `transferred` only once Twilio took the redirect; a native call is told
//! where to go (`event transfer`) and ended.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use callworker_call::{Action, Call, CallId, EndReason, TransferTarget, Transport};
use callworker_store::StoreError;
use tracing::{info, warn};

use super::api::ask_live;
use crate::auth::{Caller, count_refusal};
use crate::calls::{self, CallView};
use crate::error::{Error, ErrorKind};
use crate::forward::{self, FORWARD_HEADER, Route};
use crate::live::Command;
use crate::metrics as m;
use crate::state::AppState;
use crate::twilio_rest::{self, RestOutcome};

/// Who sent an action: a client with an API key, or another worker forwarding it (its
/// header is checked in [`apply`], against the call and the body it signs).
#[derive(Debug)]
pub enum ActionOrigin {
    Client(Caller),
    Forwarded(String),
}

impl FromRequestParts<AppState> for ActionOrigin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<ActionOrigin, Error> {
        if let Some(value) = parts.headers.get(FORWARD_HEADER) {
            let Ok(value) = value.to_str() else {
                count_refusal("forward_signature_invalid");
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "forward_signature_invalid",
                    "the forwarding header is not valid for this request",
                ));
            };
            return Ok(ActionOrigin::Forwarded(value.to_owned()));
        }
        Caller::from_request_parts(parts, state).await.map(ActionOrigin::Client)
    }
}

fn invalid_action(e: &callworker_call::SpecError) -> Error {
    Error::new(ErrorKind::InvalidRequest, "invalid_action", e.to_string())
}

/// Applies `action` (sent as `body`) to call `id`, wherever it runs.
pub async fn apply(
    state: &AppState,
    origin: ActionOrigin,
    id: CallId,
    mut action: Action,
    body: Bytes,
) -> Result<Response, Error> {
    let (caller, forwarded) = match origin {
        ActionOrigin::Client(caller) => (caller, false),
        ActionOrigin::Forwarded(header) => (forward::check(state, &header, &id, &body)?.caller, true),
    };
    let record = state.store.get(&id).await?;
    caller.authorize(&record.tenant)?;
    if let Action::SwitchProgram { program } = &mut action {
        program
            .resolve_ivr(&state.config.ivr.definitions)
            .map_err(|e| Error::new(ErrorKind::InvalidRequest, "unknown_ivr_definition", e.to_string()))?;
    }
    action.validate().map_err(|e| invalid_action(&e))?;
    if let Action::SwitchProgram { program } = action {
        let program = crate::session::agent::prepare_program(&state.config.agent, &record.tenant, program)?;
        action = Action::SwitchProgram { program };
    }
    if let Some(reason) = record.end_reason {
        return Err(StoreError::Ended { reason }.into());
    }
    if state.live.get(&id).is_some()
        && let Some(result) = apply_here(state, &id, action.clone()).await
    {
        return Ok(Json(CallView::new(&result?, record.epoch)).into_response());
    }
    // Not carried here (or its session ended just now).
    if forwarded {
        if forward::owned_elsewhere(state, &record) {
            return Err(forward::owner_moved());
        }
    } else if let Route::Owner(owner) = forward::route(state, &record).await? {
        match forward::forward(state, &owner, &id, &caller, body).await {
            // A hang-up need not wait for an unreachable owner: ending the call in the store
            // is fenced, and an owner that is alive after all learns of the end on its next
            // write and says goodbye to its client.
            Err(e) if e.code == "owner_unreachable" && matches!(action, Action::Hangup) => {}
            relayed => return relayed,
        }
    }
    if matches!(action, Action::Hangup) {
        let call = calls::end_in_store(state, &id, EndReason::ApiEnded).await?;
        return Ok(Json(CallView::new(&call, record.epoch.next())).into_response());
    }
    Err(forward::not_attached())
}

/// Applies an action through the session driving the call here; `None` if there is none
/// (any more).
async fn apply_here(state: &AppState, id: &CallId, action: Action) -> Option<Result<Call, Error>> {
    if let Action::Transfer { to } = &action {
        let call = match ask_live(state, id, Command::PrepareTransfer).await? {
            Ok(call) => call,
            Err(e) => return Some(Err(e)),
        };
        if call.transport == Some(Transport::Twilio) {
            return Some(twilio_transfer(state, id, &call, to).await);
        }
    }
    ask_live(state, id, |tx| Command::Action(action, tx)).await
}

fn transfer_unavailable(message: &str) -> Error {
    Error::new(ErrorKind::Conflict, "transfer_unavailable", message)
}

/// Redirects a Twilio call to `<Dial>` the target, then ends it `transferred`. While the
/// redirect is under way the session takes Twilio stopping the stream for the transfer
/// (`Command::PrepareTransfer`, sent by the caller); a failed redirect undoes that and the
/// call goes on.
async fn twilio_transfer(state: &AppState, id: &CallId, call: &Call, to: &str) -> Result<Call, Error> {
    let cancel = || {
        if let Some(commands) = state.live.get(id) {
            // Best effort: a full queue means the session is busy with other commands, and
            // a stream that then stops is recorded as a transfer rather than a hang-up.
            let _ = commands.try_send(Command::CancelTransfer);
        }
    };
    let cfg = &state.config.twilio;
    if !cfg.rescue_enabled() {
        cancel();
        return Err(transfer_unavailable(
            "Twilio REST credentials are not configured (twilio.account_sid, twilio.auth_token)",
        ));
    }
    let Some(leg) = &call.twilio else {
        cancel();
        return Err(transfer_unavailable("the Twilio call behind this stream is not known yet"));
    };
    let target = TransferTarget::parse(to).map_err(|e| {
        cancel();
        invalid_action(&e)
    })?;
    let twiml = twilio_rest::dial_document(target);
    let outcome = twilio_rest::update_call(forward::http(), cfg, leg, &twiml).await;
    metrics::counter!(m::TWILIO_REST_REQUESTS, "outcome" => outcome.label()).increment(1);
    match outcome {
        RestOutcome::Redirected => {
            info!(call_id = %id, call_sid = %leg.call_sid, "twilio call redirected for a transfer");
            let action = Action::Transfer { to: to.to_owned() };
            match ask_live(state, id, |tx| Command::Action(action, tx)).await {
                Some(result) => result,
                // The stream stopped first (the session ended the call `transferred`) or
                // went away: make sure the end is in the store, and show it.
                None => match calls::end_in_store(state, id, EndReason::Transferred).await {
                    Err(e) if e.code == "call_ended" => calls::decode(&state.store.get(id).await?),
                    other => other,
                },
            }
        }
        RestOutcome::CallOver => {
            cancel();
            Err(Error::new(ErrorKind::CallEnded, "call_ended", "Twilio reports that the call is over"))
        }
        RestOutcome::Failed(why) => {
            cancel();
            warn!(call_id = %id, call_sid = %leg.call_sid, why, "twilio transfer failed; the call goes on");
            Err(Error::new(
                ErrorKind::Unavailable,
                "transfer_failed",
                "Twilio did not take the transfer; the call goes on",
            )
            .retry_after(1))
        }
    }
}
