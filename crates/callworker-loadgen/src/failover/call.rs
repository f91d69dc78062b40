//! One call of the `failover` mode: create it on the victim, connect a [`ResilientCall`],
//! stream numbered frames on an open-loop 20 ms clock across the fault, wait (bounded) for
//! the ack of the last frame, hang up, and say what happened with event instants that the
//! run compares with the fault's instant.
//!
//! A call is one task and one `select!` loop: events first (so each gets its instant as
//! soon as the runtime sees it), then the fault (drop-connection drill only), then the
//! frame clock.

use std::sync::Arc;
use std::time::Duration;

use callworker_client::api::ControlApi;
use callworker_client::audio::{FRAME, FrameClock};
use callworker_client::resilient::{CallEvent, EndCause, ResilientCall, ResilientConfig, Stats};
use callworker_protocol::AudioFormat;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

use super::frames::EchoSeqs;
use crate::echo::FRAME_BYTES;

/// Time allowed for one call's setup: creation plus the first `welcome`.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
/// After the last frame, how long to wait for an ack that covers it.
pub const FINAL_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the hang-up (`bye`, the server's close; a resume first if the session
/// is lost meanwhile, which the client bounds by its resume window).
pub const HANGUP_TIMEOUT: Duration = Duration::from_secs(40);
/// Extra time on top of streaming, the ack wait and the hang-up before a call is abandoned
/// (a client stuck somewhere would otherwise hold the run forever).
const BUDGET_SLACK: Duration = Duration::from_secs(10);
/// After the hang-up, how long to keep reading events that were already queued.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What one call should do.
#[derive(Debug, Clone)]
pub struct CallPlan {
    pub index: u32,
    /// Frames to send (20 ms each), before and after the fault.
    pub frames: u64,
    /// Seed of the call's test pattern.
    pub seed: u64,
    /// Where the call is offered within each 20 ms period, so the calls' frames are spread
    /// over the period instead of all sent in the same instant.
    pub phase: Duration,
    /// Media URLs in the order the client tries them: the victim (the call's home) first.
    pub media_urls: Vec<String>,
    /// Control API of the worker the call is created on: the victim, or with `--no-fault`
    /// each worker in turn.
    pub api: ControlApi,
}

/// What every call of a run shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub create_body: Arc<serde_json::Value>,
    /// Setups running at once (creation + handshake), so a run's start is not a stampede.
    pub setup_permits: Arc<Semaphore>,
    /// Each call sends its index here once it is set up (or failed to), exactly once.
    /// Bounded by the number of calls, so a send never waits.
    pub ready: mpsc::Sender<u32>,
    /// When streaming starts (every call's frame 1 is due at this instant plus its phase);
    /// `None` until all calls are set up.
    pub start: watch::Receiver<Option<Instant>>,
    /// The fault's instant, for the drop-connection drill: each call then drops its own
    /// connection. `None` until then, and always when a process is signalled instead.
    pub drop_at: Option<watch::Receiver<Option<Instant>>>,
    pub config: ResilientConfig,
}

/// What one call did and saw. Instants are kept as [`Instant`]s and turned into
/// milliseconds after the fault by the report.
#[derive(Debug, Clone, Serialize)]
pub struct CallOutcome {
    pub index: u32,
    pub id: Option<String>,
    pub setup_error: Option<String>,
    /// The first thing that went wrong after setup.
    pub error: Option<String>,
    /// Epoch of the first session (the victim's).
    pub first_epoch: u64,
    /// Epoch of the last session.
    pub last_epoch: u64,
    /// Media URL of the last session.
    pub last_media_url: Option<String>,
    /// `Disconnected` and `Resumed` events seen.
    pub disconnects: u64,
    pub resumes: u64,
    /// From the first `Resumed`: the client's gap (session lost → `welcome`), the attempts
    /// it took, what was replayed and what had to be sent as silence.
    pub gap_ms: Option<u64>,
    pub resume_attempts: Option<u32>,
    pub resume_from_seq: Option<u64>,
    pub silence_frames: u64,
    /// Frames given to the client (seq 1..=frames_sent).
    pub frames_sent: u64,
    /// Highest `ack`: caller audio durable on the server.
    pub acked_upto_seq: u64,
    /// Frames sent that no ack covered by hang-up.
    pub audio_lost_frames: u64,
    /// Echo, by the client seq each echoed payload names.
    pub echoed_frames: u64,
    pub echo_duplicates: u64,
    pub echo_gaps: u64,
    pub echo_missing_tail: u64,
    pub echo_mismatched: u64,
    /// Server audio frames received from the first epoch and from later ones.
    pub audio_first_epoch: u64,
    pub audio_later_epochs: u64,
    /// Latest a frame went out after its scheduled instant.
    pub send_late_max_ms: f64,
    /// How the call ended for the client (`hung_up` is the only good answer).
    pub end: String,
    /// The client's counters, taken just before the hang-up.
    #[serde(skip)]
    pub stats: Stats,
    pub frames_replayed: u64,
    pub duplicates_dropped: u64,
    pub stale_epoch_dropped: u64,
    pub events_dropped: u64,
    pub failed_attempts: u64,
    /// The inbound recording compared with the frames sent.
    pub recording: RecordingCheck,
    #[serde(skip)]
    pub instants: Instants,
}

/// What the check of a call's inbound recording found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingCheck {
    NotChecked,
    /// Exactly the frames sent, in order.
    Exact,
    /// Different, or it could not be read; why.
    Mismatch(String),
}

impl RecordingCheck {
    pub fn checked(&self) -> bool {
        *self != RecordingCheck::NotChecked
    }

    pub fn mismatch(&self) -> Option<&str> {
        match self {
            RecordingCheck::Mismatch(why) => Some(why),
            RecordingCheck::NotChecked | RecordingCheck::Exact => None,
        }
    }
}

/// When things happened to a call (after setup).
#[derive(Debug, Clone, Copy, Default)]
pub struct Instants {
    /// First `Disconnected`.
    pub disconnected: Option<Instant>,
    /// First `Resumed`.
    pub resumed: Option<Instant>,
    /// First echoed frame of an epoch after the first: audio processed by the new session.
    pub first_new_audio: Option<Instant>,
}

impl CallOutcome {
    pub(crate) fn new(index: u32) -> CallOutcome {
        CallOutcome {
            index,
            id: None,
            setup_error: None,
            error: None,
            first_epoch: 0,
            last_epoch: 0,
            last_media_url: None,
            disconnects: 0,
            resumes: 0,
            gap_ms: None,
            resume_attempts: None,
            resume_from_seq: None,
            silence_frames: 0,
            frames_sent: 0,
            acked_upto_seq: 0,
            audio_lost_frames: 0,
            echoed_frames: 0,
            echo_duplicates: 0,
            echo_gaps: 0,
            echo_missing_tail: 0,
            echo_mismatched: 0,
            audio_first_epoch: 0,
            audio_later_epochs: 0,
            send_late_max_ms: 0.0,
            end: "not_set_up".to_owned(),
            stats: Stats::default(),
            frames_replayed: 0,
            duplicates_dropped: 0,
            stale_epoch_dropped: 0,
            events_dropped: 0,
            failed_attempts: 0,
            recording: RecordingCheck::NotChecked,
            instants: Instants::default(),
        }
    }

    /// Keeps the first error only: later ones are usually its consequences.
    fn fail(&mut self, error: String) {
        self.error.get_or_insert(error);
    }

    pub fn set_up(&self) -> bool {
        self.setup_error.is_none()
    }

    /// Ended by our own hang-up.
    pub fn hung_up(&self) -> bool {
        self.end == "hung_up"
    }
}

/// A short label for how the call ended.
fn end_label(cause: &EndCause) -> String {
    match cause {
        EndCause::HungUp => "hung_up".to_owned(),
        EndCause::ServerBye { reason } => format!("server_bye:{reason}"),
        EndCause::Closed { code, .. } => format!("closed:{code}"),
        EndCause::GaveUp { .. } => "gave_up".to_owned(),
        EndCause::Abandoned => "abandoned".to_owned(),
    }
}

fn end_detail(cause: &EndCause) -> Option<String> {
    match cause {
        EndCause::Closed { code, reason } => Some(format!("closed {code}: {reason}")),
        EndCause::GaveUp { attempts, last_error } => {
            Some(format!("resume gave up after {attempts} attempts: {last_error}"))
        }
        EndCause::ServerBye { reason } => Some(format!("the server ended the call: {reason}")),
        EndCause::HungUp | EndCause::Abandoned => None,
    }
}

/// Runs one call to its end. Never fails: failures are in the outcome.
pub async fn run(plan: CallPlan, shared: Shared) -> CallOutcome {
    let mut outcome = CallOutcome::new(plan.index);
    let mut echo = EchoSeqs::new(plan.seed, plan.frames);
    let connected = {
        // Closed only if the run dropped it, which it never does while calls run.
        let _permit = shared.setup_permits.acquire().await.ok();
        timeout(SETUP_TIMEOUT, set_up(&plan, &shared, &mut outcome)).await
    };
    // Exactly one ready message per call; the channel holds one per call.
    let _ = shared.ready.try_send(plan.index);
    let (call, events) = match connected {
        Ok(Some(connected)) => connected,
        Ok(None) => return outcome,
        Err(_) => {
            outcome.setup_error = Some(format!("setup took over {} s", SETUP_TIMEOUT.as_secs()));
            return outcome;
        }
    };
    let mut start = shared.start.clone();
    let start_at = match start.wait_for(Option::is_some).await.map(|s| *s) {
        Ok(Some(at)) => at,
        _ => {
            outcome.setup_error = Some("the run stopped before streaming began".to_owned());
            return outcome;
        }
    };
    let streaming = FRAME * u32::try_from(plan.frames).unwrap_or(u32::MAX);
    let budget = plan.phase + streaming + FINAL_ACK_TIMEOUT + HANGUP_TIMEOUT + BUDGET_SLACK;
    let streamed = timeout(
        budget,
        Streaming { plan: &plan, shared: &shared, outcome: &mut outcome, echo: &mut echo }.run(
            call,
            events,
            start_at + plan.phase,
        ),
    )
    .await;
    if streamed.is_err() {
        outcome.fail(format!("abandoned after its {} s budget", budget.as_secs()));
        outcome.end = "abandoned".to_owned();
    }
    outcome.echoed_frames = echo.echoed();
    outcome.echo_duplicates = echo.duplicates();
    outcome.echo_gaps = echo.gaps();
    outcome.echo_missing_tail = echo.missing_tail(outcome.frames_sent);
    outcome.echo_mismatched = echo.mismatched();
    outcome.audio_lost_frames = outcome.frames_sent.saturating_sub(outcome.acked_upto_seq);
    let s = outcome.stats;
    outcome.frames_replayed = s.frames_replayed;
    outcome.duplicates_dropped = s.duplicates_dropped;
    outcome.stale_epoch_dropped = s.stale_epoch_dropped;
    outcome.events_dropped = s.events_dropped;
    outcome.failed_attempts = s.failed_attempts;
    if let Some(error) = outcome.setup_error.as_deref().or(outcome.error.as_deref()) {
        debug!(index = plan.index, error, "call failed");
    }
    outcome
}

async fn set_up(
    plan: &CallPlan,
    shared: &Shared,
    outcome: &mut CallOutcome,
) -> Option<(ResilientCall, mpsc::Receiver<CallEvent>)> {
    let created = match plan.api.create_call(&shared.create_body).await {
        Ok(created) => created,
        Err(e) => {
            outcome.setup_error = Some(format!("create the call: {e}"));
            return None;
        }
    };
    outcome.id = Some(created.call_id().to_owned());
    let connected = ResilientCall::connect(
        plan.media_urls.iter().cloned(),
        created.call_id(),
        &created.resume_token,
        AudioFormat::TWILIO,
        shared.config.clone(),
    )
    .await;
    match connected {
        Ok((call, events)) => {
            let session = call.session();
            outcome.first_epoch = session.epoch;
            outcome.last_epoch = session.epoch;
            outcome.last_media_url = Some(session.media_url);
            outcome.end = "streaming".to_owned();
            Some((call, events))
        }
        Err(e) => {
            outcome.setup_error = Some(format!("connect: {e}"));
            None
        }
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// The streaming part of a call.
struct Streaming<'a> {
    plan: &'a CallPlan,
    shared: &'a Shared,
    outcome: &'a mut CallOutcome,
    echo: &'a mut EchoSeqs,
}

impl Streaming<'_> {
    /// Handles one event; `Some(cause)` when the call ended for the client.
    fn on_event(&mut self, event: CallEvent) -> Option<EndCause> {
        let now = Instant::now();
        let o = &mut *self.outcome;
        match event {
            CallEvent::Audio { epoch, payload, .. } => {
                self.echo.on_echo(&payload);
                if epoch == o.first_epoch {
                    o.audio_first_epoch += 1;
                } else {
                    o.audio_later_epochs += 1;
                    o.instants.first_new_audio.get_or_insert(now);
                }
            }
            CallEvent::Acked { upto_seq } => o.acked_upto_seq = o.acked_upto_seq.max(upto_seq),
            CallEvent::Disconnected { code, reason, .. } => {
                o.disconnects += 1;
                o.instants.disconnected.get_or_insert(now);
                debug!(index = o.index, code, reason, "session lost");
            }
            CallEvent::Resumed { epoch, attempts, gap_ms, resume_from_seq, silence_frames, .. } => {
                o.resumes += 1;
                o.last_epoch = epoch;
                o.silence_frames += silence_frames;
                if o.instants.resumed.is_none() {
                    o.instants.resumed = Some(now);
                    o.gap_ms = Some(gap_ms);
                    o.resume_attempts = Some(attempts);
                    o.resume_from_seq = Some(resume_from_seq);
                }
            }
            CallEvent::ServerError { code, message } => o.fail(format!("server error {code}: {message}")),
            CallEvent::Ended(cause) => return Some(cause),
            CallEvent::Clear | CallEvent::Event { .. } => {}
        }
        None
    }

    async fn run(&mut self, call: ResilientCall, mut events: mpsc::Receiver<CallEvent>, first_due: Instant) {
        let frames = self.plan.frames;
        let mut clock = FrameClock::start_at(first_due);
        let mut frame = [0u8; FRAME_BYTES];
        let mut drop_at = self.shared.drop_at.clone();
        let mut dropped = drop_at.is_none();
        let mut sending = true;
        // Armed once the last frame is sent: the bounded wait for its ack.
        let ack_wait = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(ack_wait);
        let mut ended: Option<EndCause> = None;
        loop {
            if !sending && self.outcome.acked_upto_seq >= self.outcome.frames_sent {
                break;
            }
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => {
                        if let Some(cause) = self.on_event(event) {
                            ended = Some(cause);
                            break;
                        }
                    }
                    None => break,
                },
                changed = async { drop_at.as_mut()?.wait_for(Option::is_some).await.ok().map(|_| ()) }, if !dropped => {
                    dropped = true;
                    if changed.is_some() && let Err(e) = call.debug_drop_connection().await {
                        self.outcome.fail(format!("drop the connection: {e}"));
                    }
                }
                scheduled = clock.tick(), if sending => {
                    let seq = self.outcome.frames_sent + 1;
                    let late = Instant::now().saturating_duration_since(scheduled);
                    self.outcome.send_late_max_ms = self.outcome.send_late_max_ms.max(millis(late));
                    self.echo.payloads().write(seq, &mut frame);
                    match call.send_audio(&frame).await {
                        Ok(numbered) if numbered == seq => self.outcome.frames_sent = seq,
                        Ok(numbered) => {
                            self.outcome.fail(format!("the client numbered frame {seq} as {numbered}"));
                            sending = false;
                        }
                        Err(e) => {
                            self.outcome.fail(format!("send audio: {e}"));
                            sending = false;
                        }
                    }
                    if self.outcome.frames_sent >= frames {
                        sending = false;
                    }
                    if !sending {
                        ack_wait.as_mut().reset(Instant::now() + FINAL_ACK_TIMEOUT);
                    }
                }
                () = &mut ack_wait, if !sending => {
                    self.outcome.fail(format!(
                        "no ack covered frame {} within {} s of the last frame",
                        self.outcome.frames_sent,
                        FINAL_ACK_TIMEOUT.as_secs()
                    ));
                    break;
                }
            }
        }
        self.outcome.stats = call.stats();
        let session = call.session();
        self.outcome.last_epoch = session.epoch;
        self.outcome.last_media_url = Some(session.media_url);
        let cause = match ended {
            Some(cause) => cause,
            None => self.hang_up(call, &mut events).await,
        };
        if let Some(detail) = end_detail(&cause) {
            self.outcome.fail(detail);
        }
        self.outcome.end = end_label(&cause);
    }

    /// Hangs up while still reading events (the client waits for room for the ones it
    /// never drops), then reads what is left, both bounded.
    async fn hang_up(&mut self, call: ResilientCall, events: &mut mpsc::Receiver<CallEvent>) -> EndCause {
        let hangup = timeout(HANGUP_TIMEOUT, call.hangup());
        tokio::pin!(hangup);
        let cause = loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(event) => {
                        // The hang-up answers with the same cause.
                        let _ = self.on_event(event);
                    }
                    None => break (&mut hangup).await,
                },
                result = &mut hangup => break result,
            }
        };
        let cause = cause.unwrap_or_else(|_| {
            self.outcome.fail(format!("the hang-up took over {} s", HANGUP_TIMEOUT.as_secs()));
            EndCause::Abandoned
        });
        let drain_until = Instant::now() + DRAIN_TIMEOUT;
        while let Ok(Some(event)) = timeout_at(drain_until, events.recv()).await {
            let _ = self.on_event(event);
        }
        cause
    }
}
