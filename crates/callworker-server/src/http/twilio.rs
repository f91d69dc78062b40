//! Twilio webhooks: the voice webhook that starts a call and answers TwiML opening a
//! bidirectional stream, and the `<Connect action>` that Twilio requests when the stream
//! ends.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use callworker_call::{CallId, CallSpec, Direction, Epoch};
use callworker_protocol::AudioFormat;
use callworker_protocol::twilio_signature::{self, SignatureError};
use callworker_store::StoreError;
use serde::Deserialize;
use tracing::info;

use super::{ApiForm, ApiQuery};
use crate::calls;
use crate::error::{Error, ErrorKind};
use crate::session::twilio::{PARAM_CALL_ID, PARAM_EPOCH, PARAM_SIG};
use crate::state::AppState;

/// Longest form value we keep (Twilio numbers, SIDs).
const FORM_VALUE_BYTES_MAX: usize = 256;

/// Escapes text for an XML attribute or element.
pub(crate) fn xml_escape(s: &str) -> String {
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
    twiml(connect_verb(state, call_id, epoch))
}

/// A whole TwiML document connecting the call to a new stream (for the REST rescue).
pub fn connect_document(state: &AppState, call_id: &CallId, epoch: Epoch) -> String {
    format!("<Response>{}</Response>", connect_verb(state, call_id, epoch))
}

fn connect_verb(state: &AppState, call_id: &CallId, epoch: Epoch) -> String {
    let action = format!("{}/twilio/stream-ended?call_id={}", state.config.server.public_url, call_id);
    let stream_url = state.media_url("/twilio/media");
    let sig = state.tokens.stream_signature(call_id, epoch);
    format!(
        "<Connect action=\"{}\"><Stream url=\"{}\"><Parameter name=\"{PARAM_CALL_ID}\" value=\"{}\"/><Parameter name=\"{PARAM_EPOCH}\" value=\"{}\"/><Parameter name=\"{PARAM_SIG}\" value=\"{}\"/></Stream></Connect>",
        xml_escape(&action),
        xml_escape(&stream_url),
        xml_escape(call_id.as_str()),
        epoch,
        xml_escape(&sig),
    )
}

/// Checks `X-Twilio-Signature` of a request Twilio made to `url` (the public URL it was
/// given, with the path and query it requested) with form `params`: 403 and counted when it
/// is missing or wrong, or when no auth token is configured to check it with.
pub fn verify_signature(
    state: &AppState,
    headers: &HeaderMap,
    url: &str,
    params: &[(String, String)],
) -> Result<(), Error> {
    let twilio = &state.config.twilio;
    if !twilio.verify_signatures {
        return Ok(());
    }
    if twilio.auth_token.is_empty() {
        crate::auth::count_refusal("twilio_not_configured");
        return Err(Error::new(
            ErrorKind::Forbidden,
            "twilio_not_configured",
            "twilio.auth_token is not set, so Twilio requests cannot be verified",
        ));
    }
    let presented = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
    twilio_signature::verify(twilio.auth_token.as_bytes(), url, params, presented).map_err(|e| {
        let code = match e {
            SignatureError::Missing => "twilio_signature_missing",
            SignatureError::Malformed | SignatureError::Mismatch => "twilio_signature_invalid",
        };
        crate::auth::count_refusal(code);
        Error::new(ErrorKind::Forbidden, code, e.to_string())
    })
}

/// The URL Twilio requested: the configured public URL with the request's path and query.
fn requested_url(state: &AppState, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    format!("{}{path}", state.config.server.public_url)
}

fn form_map(form: &[(String, String)]) -> HashMap<String, String> {
    form.iter().cloned().collect()
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
    uri: Uri,
    headers: HeaderMap,
    ApiForm(params): ApiForm<Vec<(String, String)>>,
) -> Result<Response, Error> {
    verify_signature(&state, &headers, &requested_url(&state, &uri), &params)?;
    let form = form_map(&params);
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
        recording: state.config.calls.recording,
    };
    calls::admit_tenant(&state, &spec.tenant).await?;
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
/// A live call (its worker died, drained or moved it) gets a new `<Connect><Stream>` for the
/// same call at its current epoch: Twilio opens a stream, the worker that answers takes the
/// call over and continues from its last checkpoint. An ended or unknown call hangs up.
pub async fn stream_ended(
    State(state): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamEndedQuery>,
    ApiForm(params): ApiForm<Vec<(String, String)>>,
) -> Result<Response, Error> {
    verify_signature(&state, &headers, &requested_url(&state, &uri), &params)?;
    let form = form_map(&params);
    let Ok(call_id) = CallId::parse(&q.call_id) else { return Ok(hangup()) };
    let record = match state.store.get(&call_id).await {
        Ok(record) => record,
        Err(StoreError::NotFound) => return Ok(hangup()),
        Err(e) => return Err(e.into()),
    };
    if record.end_reason.is_some() {
        return Ok(hangup());
    }
    // A request naming another Twilio call than the one this call runs on is refused: only
    // Twilio, for this very call, may reconnect it.
    let leg = record
        .checkpoint
        .as_ref()
        .and_then(|c| callworker_call::checkpoint::decode(&c.blob).ok())
        .and_then(|c| c.twilio);
    if let (Some(leg), Some(sid)) = (&leg, form.get("CallSid"))
        && &leg.call_sid != sid
    {
        return Err(Error::new(ErrorKind::Forbidden, "call_sid_mismatch", "CallSid does not match the call"));
    }
    info!(call_id = %call_id, epoch = %record.epoch, "twilio stream ended with the call live; reconnecting it");
    Ok(connect_twiml(&state, &call_id, record.epoch))
}
