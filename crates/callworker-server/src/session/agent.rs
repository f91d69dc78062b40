//! The agent leg of a call running the `agent` program: a WebSocket from this worker to
//! the call's voice agent (`docs/agent-protocol.md`).
//!
//! [`AgentLink`] belongs to the session's driver. It starts a leg while the attached call
//! runs the agent program, and stops it when the call ends, detaches or switches program.
//! Each leg is one task and one connection: it connects (bounded by
//! `agent.connect_timeout_ms`), sends `start` (a resume, with the transcript, when the call
//! had a leg before, here or on a worker that died), then pumps messages both ways until
//! either side stops. The link owns the retry policy: a leg that goes down is reported to
//! the call (`lost`) and started again after a backoff; after
//! `agent.reconnect_attempts_max` failures in a row the call is told its agent `failed`
//! (it falls back or ends `agent_unavailable`).
//!
//! Bounds, and what happens when they are reached:
//! - Towards the agent (`agent.to_agent_queue_max` messages): caller audio is dropped and
//!   counted in `callworker_agent_frames_dropped_total` once fewer than
//!   [`AGENT_CONTROL_RESERVE`] places are left; a control message (DTMF, mark, stop) that
//!   finds the queue full closes the leg as `slow_agent`, and the link reconnects.
//! - From the agent (`agent.from_agent_queue_max` messages): the leg awaits the driver, so
//!   it stops reading the socket and TCP pushes back on the agent.
//! - Agent messages above `agent.message_bytes_max` close the leg with 1009, invalid ones
//!   with 1008; both are counted in `callworker_agent_leg_errors_total` and reconnected.
//!   Other calls never notice: each leg is its own task and socket.
//!
//! The token (per call, or the tenant's) is sent only as `Authorization: Bearer`, marked
//! sensitive, and never logged. A tenant's token goes only to that tenant's configured URL.

use std::time::Duration;

use callworker_call::program::Secret;
use callworker_call::program::agent::start_message;
use callworker_call::{Call, CallId, ProgramSpec, ProgramState, TenantId};
use callworker_protocol::agent::{AgentError, AgentLimits, Frame, FromAgent, ToAgent, parse_from_agent};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::{debug, info};

use crate::config::AgentConfig;
use crate::config::agent::AGENT_CONTROL_RESERVE;
use crate::error::{Error, ErrorKind};
use crate::metrics as m;

/// How long a stopping leg may take to send `stop` and its close frame.
const LEG_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffer of an agent socket (tungstenite's default, 128 KiB, would be zero-filled
/// before every read; see DESIGN.md §7).
const LEG_READ_BUFFER_BYTES: usize = 4096;

/// What the link reports to the driver.
#[derive(Debug)]
pub enum AgentEvent {
    /// The leg is up and its `start` was sent.
    Up,
    /// Audio to play.
    Audio(Vec<u8>),
    /// A text message from the agent.
    Message(FromAgent),
    /// The leg went down; the link reconnects after a backoff.
    Lost { reason: &'static str },
    /// The link gave up on the agent.
    Failed { reason: &'static str },
    /// A backoff ended: [`AgentLink::sync`] starts the next leg.
    RetryDue,
}

/// What a leg task reports.
#[derive(Debug)]
enum LegEvent {
    Up,
    Audio(Vec<u8>),
    Message(FromAgent),
    Down(&'static str),
}

#[derive(Debug)]
struct Leg {
    tx: mpsc::Sender<ToAgent>,
    rx: mpsc::Receiver<LegEvent>,
    task: tokio::task::JoinHandle<()>,
    resume: bool,
}

/// The driver's handle on its call's agent leg.
#[derive(Debug)]
pub struct AgentLink {
    config: AgentConfig,
    call_id: CallId,
    leg: Option<Leg>,
    /// Legs that failed in a row (reset when one comes up).
    failures: u32,
    /// When the next leg may start, after a failure.
    retry_at: Option<tokio::time::Instant>,
    /// The link reported `Failed`; no more legs until the program changes.
    gave_up: bool,
    /// An event decided outside a leg (a refused configuration, a slow agent).
    pending: Option<AgentEvent>,
}

impl AgentLink {
    pub fn new(config: &AgentConfig, call_id: CallId) -> AgentLink {
        AgentLink {
            config: config.clone(),
            call_id,
            leg: None,
            failures: 0,
            retry_at: None,
            gave_up: false,
            pending: None,
        }
    }

    /// Starts or stops the leg to match the call: one while the attached call runs the
    /// agent program, none otherwise.
    pub fn sync(&mut self, call: &Call) {
        let wanted = call.attached && matches!(call.program, ProgramState::Agent(_));
        if !wanted {
            if self.leg.is_some() {
                self.stop("program_switched");
            }
            self.retry_at = None;
            self.failures = 0;
            self.gave_up = false;
            self.pending = None;
            return;
        }
        if self.leg.is_none() && self.retry_at.is_none() && self.pending.is_none() && !self.gave_up {
            self.connect(call);
        }
    }

    /// Sends a message to the agent (see the module docs for the bound).
    pub fn send(&mut self, msg: ToAgent) {
        let Some(leg) = &self.leg else { return };
        let audio = matches!(msg, ToAgent::Audio(_));
        if audio && leg.tx.capacity() <= AGENT_CONTROL_RESERVE {
            metrics::counter!(m::AGENT_FRAMES_DROPPED).increment(1);
            return;
        }
        match leg.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) if audio => metrics::counter!(m::AGENT_FRAMES_DROPPED).increment(1),
            Err(TrySendError::Full(_)) => {
                info!(call_id = %self.call_id, "agent too slow for control messages; reconnecting");
                if let Some(leg) = self.leg.take() {
                    leg.task.abort();
                }
                let event = self.leg_down("slow_agent");
                self.pending = Some(event);
            }
            // The leg ended; its `Down` is waiting in its channel.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Stops the leg: `stop {reason}` and a normal close, in the leg's own task.
    pub fn stop(&mut self, reason: &str) {
        if let Some(leg) = self.leg.take() {
            if leg.tx.try_send(ToAgent::Stop { reason: reason.to_owned() }).is_err() {
                leg.task.abort();
            }
            debug!(call_id = %self.call_id, reason, "agent leg stopping");
        }
        self.retry_at = None;
    }

    /// Drops the leg at once, without a word to the agent (the session was fenced: the
    /// call's new owner talks to the agent now).
    pub fn abort(&mut self) {
        if let Some(leg) = self.leg.take() {
            leg.task.abort();
        }
        self.retry_at = None;
    }

    /// The next thing the driver must act on; pending forever while there is none.
    pub async fn next(&mut self) -> AgentEvent {
        if let Some(event) = self.pending.take() {
            return event;
        }
        enum Woke {
            Leg(Option<LegEvent>),
            Retry,
        }
        let retry_at = self.retry_at;
        let woke = {
            let leg = self.leg.as_mut().map(|l| &mut l.rx);
            tokio::select! {
                event = async {
                    match leg {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => Woke::Leg(event),
                () = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => Woke::Retry,
            }
        };
        match woke {
            Woke::Retry => {
                self.retry_at = None;
                AgentEvent::RetryDue
            }
            Woke::Leg(Some(LegEvent::Up)) => {
                self.failures = 0;
                let resume = self.leg.as_ref().is_some_and(|l| l.resume);
                metrics::counter!(m::AGENT_LEGS, "resume" => if resume { "true" } else { "false" })
                    .increment(1);
                info!(call_id = %self.call_id, resume, "agent leg up");
                AgentEvent::Up
            }
            Woke::Leg(Some(LegEvent::Audio(audio))) => AgentEvent::Audio(audio),
            Woke::Leg(Some(LegEvent::Message(msg))) => AgentEvent::Message(msg),
            Woke::Leg(Some(LegEvent::Down(reason))) => {
                self.leg = None;
                self.leg_down(reason)
            }
            Woke::Leg(None) => {
                self.leg = None;
                self.leg_down("closed")
            }
        }
    }

    /// A leg failed: count it, and either schedule the next or give up.
    fn leg_down(&mut self, reason: &'static str) -> AgentEvent {
        metrics::counter!(m::AGENT_LEG_ERRORS, "reason" => reason).increment(1);
        self.failures += 1;
        if self.failures > self.config.reconnect_attempts_max {
            info!(call_id = %self.call_id, reason, failures = self.failures, "agent unreachable; giving up");
            metrics::counter!(m::AGENT_GAVE_UP, "reason" => reason).increment(1);
            self.gave_up = true;
            return AgentEvent::Failed { reason };
        }
        let exponent = (self.failures - 1).min(16);
        let backoff = self
            .config
            .reconnect_backoff
            .saturating_mul(1 << exponent)
            .min(self.config.reconnect_backoff_max);
        info!(call_id = %self.call_id, reason, backoff_ms = backoff.as_millis() as u64, "agent leg down; reconnecting");
        self.retry_at = Some(tokio::time::Instant::now() + backoff);
        AgentEvent::Lost { reason }
    }

    fn connect(&mut self, call: &Call) {
        let (ProgramState::Agent(state), Some(ToAgent::Start(start))) = (&call.program, start_message(call))
        else {
            return;
        };
        let (url, token) = match resolve(&self.config, &call.tenant, &state.params) {
            Ok(target) => target,
            Err(reason) => {
                // Not a connection failure: no reconnect can fix the configuration.
                metrics::counter!(m::AGENT_LEG_ERRORS, "reason" => reason).increment(1);
                metrics::counter!(m::AGENT_GAVE_UP, "reason" => reason).increment(1);
                self.gave_up = true;
                self.pending = Some(AgentEvent::Failed { reason });
                return;
            }
        };
        let resume = start.resume;
        let (tx, outgoing) = mpsc::channel(self.config.to_agent_queue_max);
        let (events, rx) = mpsc::channel(self.config.from_agent_queue_max);
        let params = LegParams {
            url,
            token,
            start: ToAgent::Start(start),
            connect_timeout: self.config.connect_timeout,
            limits: AgentLimits { message_bytes_max: self.config.message_bytes_max },
        };
        let task = tokio::spawn(leg_main(params, outgoing, events));
        self.leg = Some(Leg { tx, rx, task, resume });
    }
}

/// The URL and token a leg uses: the call's own, else the tenant's configured agent. A
/// tenant's token goes only with the tenant's URL.
fn resolve(
    config: &AgentConfig,
    tenant: &TenantId,
    params: &callworker_call::program::AgentParams,
) -> Result<(String, Option<Secret>), &'static str> {
    match &params.url {
        Some(url) if !config.url_allowed(url) => Err("agent_url_not_allowed"),
        Some(url) => Ok((url.clone(), params.token.clone())),
        None => match config.tenants.get(tenant) {
            Some(t) => Ok((t.url.clone(), params.token.clone().or_else(|| t.token.clone()))),
            None => Err("agent_not_configured"),
        },
    }
}

/// Checks an agent program (and an agent fallback or IVR choice inside it, which cannot
/// be) before a call is created or switched to it, and fills the worker's defaults in:
/// 400 `agent_not_configured` when it names no URL and its tenant has no agent,
/// `agent_url_not_allowed` when its URL is outside `agent.url_prefixes_allowed`.
pub fn prepare_program(
    config: &AgentConfig,
    tenant: &TenantId,
    program: ProgramSpec,
) -> Result<ProgramSpec, Error> {
    let ProgramSpec::Agent(mut params) = program else {
        return Ok(program);
    };
    let refuse =
        |code: &'static str, message: &str| Error::new(ErrorKind::InvalidRequest, code, message.to_owned());
    match resolve(config, tenant, &params) {
        Ok(_) => {}
        Err("agent_url_not_allowed") => {
            return Err(refuse(
                "agent_url_not_allowed",
                "the agent URL is outside agent.url_prefixes_allowed",
            ));
        }
        Err(_) => {
            return Err(refuse(
                "agent_not_configured",
                "no agent URL given and none configured for the tenant",
            ));
        }
    }
    if params.transcript_entries_max.is_none() {
        params.transcript_entries_max = Some(config.transcript_entries_max);
    }
    if params.transcript_bytes_max.is_none() {
        params.transcript_bytes_max = Some(config.transcript_bytes_max);
    }
    if params.playback_frames_max.is_none() {
        params.playback_frames_max = Some(config.playback_frames_max);
    }
    Ok(ProgramSpec::Agent(params))
}

#[derive(Debug)]
struct LegParams {
    url: String,
    token: Option<Secret>,
    start: ToAgent,
    connect_timeout: Duration,
    limits: AgentLimits,
}

async fn leg_main(params: LegParams, mut outgoing: mpsc::Receiver<ToAgent>, events: mpsc::Sender<LegEvent>) {
    if let Err(reason) = run_leg(params, &mut outgoing, &events).await {
        let _ = events.send(LegEvent::Down(reason)).await;
    }
}

/// One connection: `Ok` when the link stopped it, `Err(reason)` when it failed.
async fn run_leg(
    params: LegParams,
    outgoing: &mut mpsc::Receiver<ToAgent>,
    events: &mpsc::Sender<LegEvent>,
) -> Result<(), &'static str> {
    let mut request = params.url.as_str().into_client_request().map_err(|_| "invalid_url")?;
    if let Some(token) = &params.token {
        let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| "invalid_token")?;
        value.set_sensitive(true);
        request.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
    let bytes_max = params.limits.message_bytes_max;
    let config = WebSocketConfig::default()
        .read_buffer_size(LEG_READ_BUFFER_BYTES)
        .max_message_size(Some(bytes_max))
        .max_frame_size(Some(bytes_max));
    let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let mut ws = match tokio::time::timeout(params.connect_timeout, connect).await {
        Err(_) => return Err("connect_timeout"),
        Ok(Err(tungstenite::Error::Http(response))) if matches!(response.status().as_u16(), 401 | 403) => {
            return Err("agent_unauthorized");
        }
        Ok(Err(_)) => return Err("connect_failed"),
        Ok(Ok((ws, _))) => ws,
    };
    let Frame::Text(start) = params.start.encode() else {
        return Err("internal_error");
    };
    ws.send(Message::text(start)).await.map_err(|_| "closed")?;
    if events.send(LegEvent::Up).await.is_err() {
        return Ok(());
    }
    loop {
        tokio::select! {
            out = outgoing.recv() => {
                let Some(msg) = out else {
                    let _ = tokio::time::timeout(LEG_CLOSE_TIMEOUT, ws.close(None)).await;
                    return Ok(());
                };
                let stop = matches!(msg, ToAgent::Stop { .. });
                let frame = match msg.encode() {
                    Frame::Text(text) => Message::text(text),
                    Frame::Binary(bytes) => Message::binary(bytes),
                };
                if stop {
                    let _ = tokio::time::timeout(LEG_CLOSE_TIMEOUT, async {
                        ws.send(frame).await?;
                        ws.close(None).await
                    })
                    .await;
                    return Ok(());
                }
                ws.send(frame).await.map_err(|_| "closed")?;
            }
            incoming = ws.next() => {
                let event = match incoming {
                    None | Some(Ok(Message::Close(_))) => return Err("closed"),
                    Some(Err(tungstenite::Error::Capacity(_))) => {
                        refuse(&mut ws, &AgentError::TooLarge(bytes_max + 1)).await;
                        return Err("message_too_large");
                    }
                    Some(Err(_)) => return Err("closed"),
                    Some(Ok(Message::Text(text))) => match parse_from_agent(text.as_str(), &params.limits) {
                        Ok(msg) => LegEvent::Message(msg),
                        Err(e) => {
                            refuse(&mut ws, &e).await;
                            return Err(e.code());
                        }
                    },
                    Some(Ok(Message::Binary(audio))) => LegEvent::Audio(audio.to_vec()),
                    // Pings are answered by tungstenite; pongs and raw frames mean nothing here.
                    Some(Ok(_)) => continue,
                };
                if events.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Closes the leg over a refused agent message: 1009 for size, 1008 for the rest, with the
/// error code as the reason (best effort: the socket may already be unusable).
async fn refuse<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, e: &AgentError)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let code = match e {
        AgentError::TooLarge(_) => CloseCode::Size,
        _ => CloseCode::Policy,
    };
    info!(code = e.code(), error = %e, "agent message refused");
    let frame = CloseFrame { code, reason: e.code().into() };
    let _ = tokio::time::timeout(LEG_CLOSE_TIMEOUT, ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use callworker_call::program::AgentParams;

    use super::*;
    use crate::config::agent::TenantAgent;

    fn config(prefixes: &[&str]) -> AgentConfig {
        let mut tenants = BTreeMap::new();
        tenants.insert(
            TenantId::parse("acme").unwrap(),
            TenantAgent { url: "ws://acme-agent:9000/v1".into(), token: Some(Secret::new("tenant-token")) },
        );
        AgentConfig {
            message_bytes_max: 65_536,
            connect_timeout: Duration::from_secs(3),
            reconnect_attempts_max: 3,
            reconnect_backoff: Duration::from_millis(200),
            reconnect_backoff_max: Duration::from_secs(2),
            to_agent_queue_max: 64,
            from_agent_queue_max: 64,
            transcript_entries_max: 50,
            transcript_bytes_max: 4096,
            playback_frames_max: 500,
            url_prefixes_allowed: prefixes.iter().map(|p| p.to_string()).collect(),
            tenants,
        }
    }

    fn params(url: Option<&str>, token: Option<&str>) -> AgentParams {
        AgentParams {
            url: url.map(str::to_owned),
            token: token.map(Secret::new),
            context: None,
            transcript_entries_max: None,
            transcript_bytes_max: None,
            playback_frames_max: None,
            fallback: None,
        }
    }

    #[test]
    fn a_tenant_token_goes_only_to_the_tenant_url() {
        let c = config(&[]);
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("other").unwrap();
        fn token(
            r: Result<(String, Option<Secret>), &'static str>,
        ) -> Result<(String, Option<String>), &'static str> {
            r.map(|(u, t)| (u, t.map(|t| t.expose().to_owned())))
        }
        assert_eq!(
            token(resolve(&c, &acme, &params(None, None))),
            Ok(("ws://acme-agent:9000/v1".into(), Some("tenant-token".into())))
        );
        assert_eq!(
            token(resolve(&c, &acme, &params(None, Some("own")))),
            Ok(("ws://acme-agent:9000/v1".into(), Some("own".into())))
        );
        // A call's own URL never gets the tenant's token.
        assert_eq!(
            token(resolve(&c, &acme, &params(Some("ws://elsewhere/"), None))),
            Ok(("ws://elsewhere/".into(), None))
        );
        assert_eq!(token(resolve(&c, &other, &params(None, None))), Err("agent_not_configured"));
        let strict = config(&["ws://agents.internal/"]);
        assert_eq!(
            token(resolve(&strict, &acme, &params(Some("ws://elsewhere/"), None))),
            Err("agent_url_not_allowed")
        );
        assert!(resolve(&strict, &acme, &params(Some("ws://agents.internal/a"), None)).is_ok());
    }

    #[test]
    fn prepare_fills_the_worker_defaults_and_refuses_what_cannot_connect() {
        let c = config(&["ws://agents.internal/"]);
        let acme = TenantId::parse("acme").unwrap();
        let ProgramSpec::Agent(p) =
            prepare_program(&c, &acme, ProgramSpec::Agent(params(None, None))).unwrap()
        else {
            panic!("still an agent");
        };
        assert_eq!(
            (p.transcript_entries_max, p.transcript_bytes_max, p.playback_frames_max),
            (Some(50), Some(4096), Some(500))
        );
        let own =
            AgentParams { transcript_entries_max: Some(7), ..params(Some("ws://agents.internal/x"), None) };
        let ProgramSpec::Agent(p) = prepare_program(&c, &acme, ProgramSpec::Agent(own)).unwrap() else {
            panic!()
        };
        assert_eq!(p.transcript_entries_max, Some(7), "the call's own bound is kept");
        let refused = [
            (TenantId::parse("other").unwrap(), params(None, None), "agent_not_configured"),
            (acme.clone(), params(Some("ws://elsewhere/"), None), "agent_url_not_allowed"),
        ];
        for (tenant, p, code) in refused {
            assert_eq!(prepare_program(&c, &tenant, ProgramSpec::Agent(p)).unwrap_err().code, code);
        }
        let echo = ProgramSpec::Echo(callworker_call::program::EchoParams { delay_ms: 0 });
        assert_eq!(prepare_program(&c, &acme, echo.clone()).unwrap(), echo);
    }
}
