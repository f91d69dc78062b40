//! One simulated echo call, native or Twilio: set up, stream the call's test pattern on an
//! open-loop 20 ms clock while measuring what comes back, hang up, wait for the close.
//!
//! A call is one task and one `select!` loop: receive first (so a receive instant is taken
//! as soon as the runtime sees the message), then the frame clock. Per frame it allocates
//! only what the SDK forces (the native sender copies its encode buffer into each message;
//! the Twilio simulator takes an owned `Vec`; received payloads arrive as `Vec`s).

use std::sync::Arc;
use std::time::Duration;

use callworker_client::api::ControlApi;
use callworker_client::audio::{FRAME, FrameClock};
use callworker_client::native::{self, ServerEvent};
use callworker_client::twilio::{StreamEvent, TwilioSimulator};
use callworker_protocol::AudioFormat;
use callworker_protocol::native::ServerControl;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::debug;

use crate::echo::{EchoTracker, Received};
use crate::report::{CallSummary, Protocol, Samples, SharedHistograms};

/// Time allowed for setup: call creation (or voice webhook) plus the media handshake.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for the server's close after `bye` (native) or `stop` (Twilio).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time on top of setup, streaming and close before a call is abandoned (a send
/// blocked on a server that stopped reading would otherwise hold the run forever).
const BUDGET_SLACK: Duration = Duration::from_secs(10);
/// The Twilio number every simulated call dials.
const TWILIO_TO: &str = "+15550100000";

/// What one call should do.
#[derive(Debug, Clone)]
pub struct CallPlan {
    pub index: u32,
    pub protocol: Protocol,
    /// When to start (the ramp spreads these out).
    pub start_at: Instant,
    /// Frames to send (20 ms each).
    pub frames: u64,
    /// Seed of the call's test pattern.
    pub seed: u64,
}

/// What every call of a run shares.
#[derive(Debug, Clone)]
pub struct Clients {
    pub api: ControlApi,
    pub twilio: TwilioSimulator,
    /// `POST /v1/calls` body for native calls.
    pub create_body: Arc<serde_json::Value>,
    pub histograms: Arc<SharedHistograms>,
}

/// Runs one call to its end and says what happened. Never fails: failures are in the
/// summary.
pub async fn run(plan: CallPlan, clients: Clients) -> CallSummary {
    sleep_until(plan.start_at).await;
    let mut summary = CallSummary::new(plan.index, plan.protocol);
    let mut tracker = EchoTracker::new(plan.seed, plan.frames);
    let mut samples = Samples::new(clients.histograms.clone(), plan.protocol);
    let streaming = FRAME * u32::try_from(plan.frames).unwrap_or(u32::MAX);
    let budget = SETUP_TIMEOUT + streaming + CLOSE_TIMEOUT + BUDGET_SLACK;
    let mut call = Call { plan: &plan, summary: &mut summary, tracker: &mut tracker, samples: &mut samples };
    let driven = timeout(budget, async {
        match plan.protocol {
            Protocol::Native => call.native(&clients).await,
            Protocol::Twilio => call.twilio(&clients).await,
        }
    })
    .await;
    if driven.is_err() {
        summary.fail(format!("abandoned after its {} s budget", budget.as_secs()));
    }
    samples.flush();
    summary.frames_sent = tracker.frames_sent();
    summary.bytes_sent = tracker.bytes_sent();
    summary.messages_received = tracker.messages_received();
    summary.bytes_received = tracker.bytes_received();
    summary.mismatched_frames = tracker.mismatched_frames();
    summary.excess_bytes = tracker.excess_bytes();
    summary.lags_beyond_window = tracker.lags_beyond_window();
    summary.echo_lag_max_ms = tracker.lag_max_us() as f64 / 1_000.0;
    if let Some(error) = summary.setup_error.as_deref().or(summary.error.as_deref()) {
        debug!(index = plan.index, protocol = plan.protocol.as_str(), error, "call failed");
    }
    summary
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The state of one running call.
struct Call<'a> {
    plan: &'a CallPlan,
    summary: &'a mut CallSummary,
    tracker: &'a mut EchoTracker,
    samples: &'a mut Samples,
}

impl Call<'_> {
    fn set_up(&mut self, started: Instant, clients: &Clients) {
        let us = micros(started.elapsed());
        clients.histograms.record_setup_us(us);
        self.summary.setup_ms = Some(us as f64 / 1_000.0);
    }

    fn on_audio(&mut self, origin: Instant, payload: &[u8]) {
        let now_us = micros(origin.elapsed());
        if let Received::LagUs(us) = self.tracker.on_received(now_us, payload) {
            self.samples.echo_lag_us(us);
        }
    }

    /// Records the frame just sent; true when it was the last one.
    fn on_sent(&mut self, origin: Instant, scheduled: Instant, sending_at: Instant) -> bool {
        self.tracker.on_sent(micros(scheduled.saturating_duration_since(origin)));
        self.samples.send_lateness_us(micros(sending_at.saturating_duration_since(scheduled)));
        self.tracker.frames_sent() >= self.plan.frames
    }

    fn on_close(&mut self, code: u16, reason: String) {
        self.summary.close_code = Some(code);
        self.summary.close_reason = Some(reason);
    }

    async fn native(&mut self, clients: &Clients) {
        let started = Instant::now();
        let summary = &mut *self.summary;
        let setup = timeout(SETUP_TIMEOUT, async {
            let created = clients.api.create_call(&clients.create_body).await?;
            summary.id = Some(created.call_id().to_owned());
            let hello = native::first_hello(created.call_id(), &created.resume_token, AudioFormat::TWILIO);
            native::connect(&created.media_url, hello).await
        })
        .await;
        let (mut tx, mut rx) = match setup {
            Ok(Ok((tx, rx, _welcome))) => (tx, rx),
            Ok(Err(e)) => {
                self.summary.setup_error = Some(e.to_string());
                return;
            }
            Err(_) => {
                self.summary.setup_error = Some("setup timed out".to_owned());
                return;
            }
        };
        self.set_up(started, clients);

        let origin = Instant::now();
        let mut clock = FrameClock::start_at(origin);
        let linger = tokio::time::sleep(BUDGET_SLACK);
        tokio::pin!(linger);
        let mut ending = false;
        loop {
            tokio::select! {
                biased;
                event = rx.next() => match event {
                    Some(ServerEvent::Audio { payload, .. }) => self.on_audio(origin, &payload),
                    Some(ServerEvent::Control(ServerControl::Ack { upto_seq })) => {
                        self.summary.acks_received += 1;
                        self.summary.acked_upto_seq = self.summary.acked_upto_seq.max(upto_seq);
                    }
                    Some(ServerEvent::Control(ServerControl::Error { code, message })) => {
                        self.summary.fail(format!("server error {code}: {message}"));
                    }
                    Some(ServerEvent::Control(_)) => {}
                    Some(ServerEvent::Closed { code, reason }) => {
                        self.on_close(code, reason);
                        break;
                    }
                    None => break,
                },
                scheduled = clock.tick(), if !ending => {
                    let seq = self.tracker.frames_sent() + 1;
                    let sending_at = Instant::now();
                    let sent = tx.send_audio(seq, self.tracker.next_payload()).await;
                    let last = match &sent {
                        Ok(()) => self.on_sent(origin, scheduled, sending_at),
                        Err(e) => {
                            self.summary.fail(format!("send audio: {e}"));
                            true
                        }
                    };
                    if last {
                        // Hang up (unless the socket already failed) and wait for the
                        // close, still measuring the echo in flight.
                        ending = true;
                        linger.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                        if sent.is_ok() && let Err(e) = tx.bye().await {
                            self.summary.fail(format!("send bye: {e}"));
                        }
                    }
                }
                () = &mut linger, if ending => {
                    self.summary.fail(format!("no close within {} s of the end", CLOSE_TIMEOUT.as_secs()));
                    break;
                }
            }
        }
    }

    async fn twilio(&mut self, clients: &Clients) {
        let started = Instant::now();
        let from = format!("+1555{:07}", self.plan.index);
        let mut stream = match timeout(SETUP_TIMEOUT, clients.twilio.place_call(&from, TWILIO_TO)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                self.summary.setup_error = Some(e.to_string());
                return;
            }
            Err(_) => {
                self.summary.setup_error = Some("setup timed out".to_owned());
                return;
            }
        };
        self.summary.id = Some(stream.call_sid.clone());
        self.set_up(started, clients);

        let origin = Instant::now();
        let mut clock = FrameClock::start_at(origin);
        let linger = tokio::time::sleep(BUDGET_SLACK);
        tokio::pin!(linger);
        let mut ending = false;
        loop {
            tokio::select! {
                biased;
                event = stream.next_event() => match event {
                    Some(StreamEvent::Media(payload)) => self.on_audio(origin, &payload),
                    Some(StreamEvent::MarkPlayed(_)) => self.summary.marks_played += 1,
                    Some(StreamEvent::Clear) => {}
                    Some(StreamEvent::Closed { code, reason }) => {
                        self.on_close(code, reason);
                        break;
                    }
                    None => break,
                },
                scheduled = clock.tick(), if !ending => {
                    let sending_at = Instant::now();
                    // The simulator takes an owned payload: the one allocation per frame
                    // this path makes.
                    let sent = stream.send_media(self.tracker.next_payload().to_vec()).await;
                    let last = match &sent {
                        Ok(()) => self.on_sent(origin, scheduled, sending_at),
                        Err(e) => {
                            self.summary.fail(format!("send media: {e}"));
                            true
                        }
                    };
                    if last {
                        ending = true;
                        linger.as_mut().reset(Instant::now() + CLOSE_TIMEOUT);
                        if sent.is_ok() && let Err(e) = stream.stop().await {
                            self.summary.fail(format!("send stop: {e}"));
                        }
                    }
                }
                () = &mut linger, if ending => {
                    self.summary.fail(format!("no close within {} s of the end", CLOSE_TIMEOUT.as_secs()));
                    break;
                }
            }
        }
    }
}
