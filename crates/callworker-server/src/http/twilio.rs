//! Twilio webhooks: the voice webhook that starts a call and answers TwiML opening a
//! bidirectional stream, and the `<Connect action>` that Twilio requests when the stream
//! ends.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use callworker_call::{CallId, CallSpec, Direction, EndReason, Epoch};
use callworker_protocol::AudioFormat;
use serde::Deserialize;
use tracing::info;

use super::{ApiForm, ApiQuery};
use crate::calls;
use crate::error::{Error, ErrorKind};
use crate::session::twilio::{PARAM_CALL_ID, PARAM_EPOCH, PARAM_SIG};
use crate::state::AppState;

/// Longest form value we keep (Twilio numbers, SIDs).
const FORM_VALUE_BYTES_MAX: usize = 256;

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn twiml(body: String) -> Response {
    (
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>{body}</Response>\n"),
    )
        .into_response()
}

/// TwiML that connects the call to a stream carrying our signed parameters.
pub fn connect_twiml(state: &AppState, call_id: &CallId, epoch: Epoch) -> Response {
    let action = format!("{}/twilio/stream-ended?call_id={}", state.config.server.public_url, call_id);
    let stream_url = state.media_url("/twilio/media");
    let sig = state.tokens.stream_signature(call_id, epoch);
    twiml(format!(
        "<Connect action=\"{}\"><Stream url=\"{}\"><Parameter name=\"{PARAM_CALL_ID}\" value=\"{}\"/><Parameter name=\"{PARAM_EPOCH}\" value=\"{}\"/><Parameter name=\"{PARAM_SIG}\" value=\"{}\"/></Stream></Connect>",
        xml_escape(&action),
        xml_escape(&stream_url),
        xml_escape(call_id.as_str()),
        epoch,
        xml_escape(&sig),
    ))
}

fn hangup() -> Response {
    twiml("<Hangup/>".to_owned())
}

fn form_value(form: &HashMap<String, String>, key: &str) -> Option<String> {
    form.get(key).filter(|v| !v.is_empty() && v.len() <= FORM_VALUE_BYTES_MAX).cloned()
}

/// `POST /twilio/voice`: a call arrives; create it and answer with a stream.
pub async fn voice(
    State(state): State<AppState>,
    ApiForm(form): ApiForm<HashMap<String, String>>,
) -> Result<Response, Error> {
    state.admission.admit_call()?;
    let direction = match form.get("Direction").map(String::as_str) {
        Some(d) if d.starts_with("outbound") => Direction::Outbound,
        _ => Direction::Inbound,
    };
    let spec = CallSpec {
        tenant: state.config.calls.default_tenant.clone(),
        direction,
        from: form_value(&form, "From"),
        to: form_value(&form, "To"),
        program: state.config.calls.default_program.clone(),
        audio: AudioFormat::TWILIO,
        limits: state.config.calls.limits,
    };
    let (call, _) = calls::create(&state, spec, "twilio").await?;
    Ok(connect_twiml(&state, &call.id, Epoch::ZERO))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamEndedQuery {
    call_id: String,
}

/// `POST /twilio/stream-ended?call_id=…`: the stream closed; say what Twilio does next.
///
/// An ended call hangs up. A live call whose stream went away cannot be carried on yet
/// (resuming Twilio calls on another stream arrives with Redis-backed failover), so it is
/// ended with `rescue_failed` — recorded, never silent — and hung up.
pub async fn stream_ended(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<StreamEndedQuery>,
    ApiForm(_form): ApiForm<HashMap<String, String>>,
) -> Result<Response, Error> {
    let call_id = CallId::parse(&q.call_id).map_err(|_| Error::call_not_found())?;
    match calls::end_in_store(&state, &call_id, EndReason::RescueFailed).await {
        Ok(_) => info!(call_id = %call_id, "twilio stream ended with the call live; ended as rescue_failed"),
        Err(e) if e.kind == ErrorKind::CallEnded => {}
        Err(e) => return Err(e),
    }
    Ok(hangup())
}
