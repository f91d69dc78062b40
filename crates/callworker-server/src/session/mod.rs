//! Media sessions: one WebSocket carrying one call for a while.
//!
//! A session is a task pair. The *driver* (this module's [`run`]) reads the socket and,
//! while attached, is the call's actor: it owns the [`Call`], feeds it inputs, turns its
//! outputs into wire messages, arms its timers and answers the control API through
//! [`Command`]s. The *writer* drains the bounded [`OutboundQueue`] into the socket. A third,
//! small task per call, the [`CheckpointWriter`], persists the latest state without ever
//! blocking the driver. The protocol-specific parts (handshake, message mapping) live in
//! [`native`] and [`twilio`]. A call running the agent program also has an agent leg, a
//! WebSocket to its voice agent, which the driver keeps in step with the call through
//! [`agent::AgentLink`].
//!
//! A session ends in one of three ways: the call ends (the end is persisted, then the
//! socket closes), the session detaches (client gone, shutdown: the call is checkpointed
//! as detached and stays resumable), or the session is fenced (another session owns the
//! call: it stops at once and writes nothing more).

pub mod agent;
pub mod checkpoint;
pub mod native;
pub mod outbound;
pub mod rate;
pub mod twilio;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use callworker_call::{
    Call, CallId, EndReason, Epoch, Input, Output, Transport, UnixMillis, checkpoint as envelope,
};
use callworker_protocol::close;
use callworker_store::{AttemptId, CallRecord, RecordingChunk, StoreError};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{debug, info, warn};

use crate::error::{Error, ErrorKind};
use crate::live::Command;
use crate::metrics as m;
use crate::state::{AppState, now};
use checkpoint::{CheckpointWriter, Pending, RecordingBuffer, Target, Written};
use outbound::{ControlPush, OutboundQueue};
use rate::RateLimiter;

/// How long a detaching or ending session waits for its last write to reach the store.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the writer may take to flush the last messages and the close frame.
const WRITER_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a closing session waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The protocol-specific half of an attached session.
#[derive(Debug)]
pub enum Wire {
    Native(native::NativeWire),
    Twilio(twilio::TwilioWire),
}

impl Wire {
    fn transport(&self) -> Transport {
        match self {
            Wire::Native(_) => Transport::Native,
            Wire::Twilio(_) => Transport::Twilio,
        }
    }
}

/// A call attached by a handshake, ready to be driven.
#[derive(Debug)]
pub struct Attachment {
    pub call: Call,
    pub epoch: Epoch,
    /// Sequence number of the stored checkpoint the call was loaded from.
    pub checkpoint_seq: u64,
    /// When the previous session last wrote (for the resume gap), if the call had one.
    pub previous_write: Option<UnixMillis>,
    pub wire: Wire,
}

/// Why the driver loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The call ended (its end is being persisted).
    Ended,
    /// The client went away or must reconnect; the call stays resumable.
    Detach,
    /// Another session owns the call; write nothing more.
    Fenced,
}

/// Inbound input the wire decoded from one message.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// Feed this input to the call.
    Input(Input<'a>),
    /// Caller audio with the protocol's own sequence number (native) to check first.
    Audio { seq: Option<u64>, payload: std::borrow::Cow<'a, [u8]> },
    /// Nothing to do (ignored or protocol-internal message).
    Nothing,
    /// Refuse: close the session with this error.
    Refuse(Error),
}

/// The socket halves a session works with.
pub type Sink = SplitSink<WebSocket, Message>;
pub type Stream = SplitStream<WebSocket>;

/// Runs one media session from upgrade to close.
pub async fn run(state: AppState, socket: WebSocket, transport: Transport, permit: OwnedSemaphorePermit) {
    let label = transport.as_str();
    metrics::gauge!(m::WS_SESSIONS, "transport" => label).increment(1.0);
    let (sink, mut stream) = socket.split();
    let out = Arc::new(OutboundQueue::new(
        state.config.limits.outbound_audio_frames_max,
        state.config.limits.outbound_control_max,
    ));
    let stale = metrics::counter!(m::FRAMES_DROPPED, "transport" => label);
    let writer = tokio::spawn(writer_main(sink, out.clone(), state.config.checkpoint.lease, stale));

    let mut limiter = RateLimiter::new(
        state.config.limits.messages_per_second_max,
        state.config.limits.bytes_per_second_max,
        Instant::now(),
    );
    let handshake = tokio::time::timeout(state.config.limits.handshake_timeout, async {
        match transport {
            Transport::Native => native::handshake(&state, &mut stream, &mut limiter).await,
            Transport::Twilio => twilio::handshake(&state, &mut stream, &mut limiter).await,
        }
    })
    .await
    .unwrap_or_else(|_| {
        Err(Error::new(ErrorKind::InvalidRequest, "handshake_timeout", "no handshake within the timeout"))
    });

    let code = match handshake {
        Ok(attachment) => {
            let mut driver = Driver::new(state.clone(), attachment, out.clone(), limiter);
            driver.run(&mut stream).await
        }
        Err(e) => {
            reject(transport, &e);
            let code = if e.code == "handshake_timeout" { close::TIMEOUT } else { e.kind.close_code() };
            out.close(code, e.close_reason());
            code
        }
    };
    metrics::counter!(m::WS_CLOSED, "transport" => label, "code" => code.to_string()).increment(1);
    // Closing handshake: while the writer flushes our close frame, read and discard input
    // until the peer's close arrives (bounded), so input still in flight does not turn our
    // close into a TCP reset that would destroy the close code on its way.
    let drain = tokio::time::timeout(CLOSE_LINGER, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    });
    let (flushed, _) = tokio::join!(tokio::time::timeout(WRITER_FLUSH_TIMEOUT, writer), drain);
    if flushed.is_err() {
        debug!(transport = label, "writer did not flush in time");
    }
    metrics::gauge!(m::WS_SESSIONS, "transport" => label).decrement(1.0);
    drop(permit);
}

/// Counts and logs a refused input.
pub fn reject(transport: Transport, e: &Error) {
    metrics::counter!(m::WS_REJECTED, "transport" => transport.as_str(), "reason" => e.code).increment(1);
    // The abuse limits are also counted by limit (the rates in `charge`, which knows which).
    match e.code {
        "message_too_large" => crate::auth::count_limit("ws_message_size"),
        "handshake_timeout" => crate::auth::count_limit("handshake_timeout"),
        _ => {}
    }
    if e.kind.is_server_fault() {
        warn!(transport = transport.as_str(), code = e.code, message = %e.message, "session failed");
    } else {
        info!(transport = transport.as_str(), code = e.code, message = %e.message, "session input refused");
    }
}

/// Drains the outbound queue into the socket until a close frame has been sent. Audio that
/// waited longer than `stale_after` (the lease) is dropped and counted instead: the process
/// was paused, and the call may have another owner by now.
async fn writer_main(
    mut sink: Sink,
    out: Arc<OutboundQueue>,
    stale_after: Duration,
    stale: metrics::Counter,
) {
    let mut batch = Vec::with_capacity(32);
    loop {
        out.drain_into(&mut batch).await;
        let drained_at = Instant::now();
        let mut closed = false;
        let mut fed = 0u64;
        for item in batch.drain(..) {
            if item.is_stale(stale_after, Instant::now()) {
                stale.increment(1);
                continue;
            }
            fed += 1;
            let msg = item.msg;
            closed |= matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                return;
            }
            if closed {
                break;
            }
        }
        // Fed frames sit in the socket's write buffer until the flush: if the process was
        // paused between the drain and here, they are as stale as a queued frame would be,
        // and the call may have another owner. The connection is dropped unflushed instead
        // (the client resumes; the session confirms its ownership or is fenced).
        if drained_at.elapsed() > stale_after {
            stale.increment(fed);
            return;
        }
        if sink.flush().await.is_err() || closed {
            return;
        }
    }
}

/// Reads the next data message during a handshake, charging the rate limiter; pings and
/// pongs are skipped. `Ok(None)` when the client closed.
pub async fn next_message(stream: &mut Stream, limiter: &mut RateLimiter) -> Result<Option<Message>, Error> {
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => return Err(ws_error(&e)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(msg)) => {
                charge(limiter, &msg)?;
                return Ok(Some(msg));
            }
        }
    }
}

fn charge(limiter: &mut RateLimiter, msg: &Message) -> Result<(), Error> {
    let bytes = match msg {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    };
    limiter.charge(bytes, Instant::now()).map_err(|which| {
        let (what, limit) = match which {
            rate::RateExceeded::Messages => ("message", "ws_message_rate"),
            rate::RateExceeded::Bytes => ("byte", "ws_byte_rate"),
        };
        crate::auth::count_limit(limit);
        Error::new(
            ErrorKind::RateLimited,
            "rate_limited",
            format!("{what} rate above the per-connection bound"),
        )
    })
}

/// Maps a WebSocket protocol error (from tungstenite, via axum) to a refusal.
fn ws_error(e: &axum::Error) -> Error {
    let text = e.to_string();
    if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
        Error::new(ErrorKind::PayloadTooLarge, "message_too_large", "message exceeds the size bound")
    } else {
        Error::new(ErrorKind::InvalidRequest, "websocket_protocol_error", "WebSocket protocol error")
    }
}

/// Attaches this worker to a call in the store and loads its state.
///
/// The stored checkpoint is checked *before* taking ownership: a format this build cannot
/// read is left for a newer worker (the client is told to reconnect), and `check` can
/// refuse a session that does not fit the call (e.g. another audio format) without
/// bumping the epoch. Then the takeover is a compare-and-set on `expected_epoch`. A
/// checkpoint that turns out unreadable after the takeover ends the call with
/// `checkpoint_corrupt` instead of letting every worker fail on it in turn.
pub async fn attach(
    state: &AppState,
    record: &CallRecord,
    expected_epoch: Epoch,
    check: impl FnOnce(&Call) -> Result<(), Error>,
) -> Result<(Call, Epoch, u64), Error> {
    let result = take_over(state, record, expected_epoch, check).await;
    if let Err(e) = &result {
        let reason = match e.code {
            "stale_session" => "stale",
            "call_ended" => "ended",
            "call_not_found" => "not_found",
            "version_incompatible" => "version_incompatible",
            "store_unavailable" => "store_unavailable",
            other => other,
        };
        metrics::counter!(m::TAKEOVERS_REFUSED, "reason" => reason).increment(1);
    }
    result
}

async fn take_over(
    state: &AppState,
    record: &CallRecord,
    expected_epoch: Epoch,
    check: impl FnOnce(&Call) -> Result<(), Error>,
) -> Result<(Call, Epoch, u64), Error> {
    if let Some(reason) = record.end_reason {
        return Err(StoreError::Ended { reason }.into());
    }
    if state.memory.refuses_return(&record.call_id, state.admission.memory_level()) {
        return Err(Error::new(
            ErrorKind::Overloaded,
            "migrated_away",
            "this worker moved the call away for memory; reconnect to another worker",
        )
        .retry_after(crate::admission::RETRY_AFTER_S));
    }
    if let Some(cp) = &record.checkpoint {
        match envelope::decode(&cp.blob) {
            Ok(call) => {
                check(&call)?;
                ivr_definition_known(state, &call)?;
            }
            Err(envelope::CheckpointError::TooNew { found, max }) => return Err(too_new(found, max)),
            Err(_) => {} // ended as corrupt once we own it, below
        }
    }
    let attempt = AttemptId(format!("{}:{:016x}", state.worker_id, rand::random::<u64>()));
    let attached = state
        .store
        .attach(&record.call_id, &attempt, &state.worker_id, expected_epoch, state.config.checkpoint.lease)
        .await?;
    let epoch = attached.epoch;
    let Some(cp) = attached.record.checkpoint else {
        return Err(end_unreadable(state, &record.call_id, epoch, "the call has no checkpoint").await);
    };
    match envelope::decode(&cp.blob) {
        Ok(mut call) => {
            // A named IVR gets its prompts from this worker's definitions (the checkpoint
            // holds only the definition's name and hash).
            call.bind_ivr(now(), &state.config.ivr.definitions)
                .map_err(|name| ivr_definition_missing(&name))?;
            Ok((call, epoch, cp.seq))
        }
        Err(envelope::CheckpointError::TooNew { found, max }) => Err(too_new(found, max)),
        Err(e) => Err(end_unreadable(state, &record.call_id, epoch, &e.to_string()).await),
    }
}

/// Refuses a takeover, before the epoch moves, when the call runs a named IVR definition
/// this worker does not have (its configuration differs from the worker that started the
/// call): another worker may have it. A definition that exists but changed is handled when
/// the call is bound (`Call::bind_ivr`).
fn ivr_definition_known(state: &AppState, call: &Call) -> Result<(), Error> {
    if let callworker_call::ProgramState::Ivr(s) = &call.program
        && let Some(d) = &s.params.definition
        && !state.config.ivr.definitions.contains_key(&d.name)
    {
        return Err(ivr_definition_missing(&d.name));
    }
    Ok(())
}

fn ivr_definition_missing(name: &str) -> Error {
    Error::new(
        ErrorKind::Overloaded,
        "ivr_definition_missing",
        format!("this worker has no IVR definition {name:?}; reconnect to another worker"),
    )
}

fn too_new(found: u16, max: u16) -> Error {
    Error::new(
        ErrorKind::Overloaded,
        "version_incompatible",
        format!(
            "checkpoint format {found} is newer than this worker reads ({max}); reconnect to another worker"
        ),
    )
}

/// Ends a call whose checkpoint cannot be read with `checkpoint_corrupt` rather than let
/// every worker fail on it in turn.
async fn end_unreadable(state: &AppState, call_id: &CallId, epoch: Epoch, detail: &str) -> Error {
    warn!(call_id = %call_id, epoch = %epoch, detail, "checkpoint unreadable; ending call");
    match state.store.end(call_id, epoch, EndReason::CheckpointCorrupt, None, RecordingChunk::default()).await
    {
        Ok(_) => {
            metrics::counter!(m::CALLS_ENDED, "reason" => EndReason::CheckpointCorrupt.as_str()).increment(1)
        }
        Err(e) => warn!(call_id = %call_id, error = %e, "could not end call with a corrupt checkpoint"),
    }
    Error::new(ErrorKind::CallEnded, "call_ended", "the call has ended (checkpoint_corrupt)")
}

/// The driver of an attached call (the call's actor while this session lasts).
struct Driver {
    state: AppState,
    call: Call,
    call_id: CallId,
    epoch: Epoch,
    wire: Wire,
    transport: Transport,
    out: Arc<OutboundQueue>,
    outputs: Vec<Output>,
    writer: CheckpointWriter,
    commands: mpsc::Receiver<Command>,
    commands_tx: mpsc::Sender<Command>,
    limiter: RateLimiter,
    /// Sequence number of the last checkpoint submitted.
    checkpoint_seq: u64,
    /// State changed since the last checkpoint submitted.
    dirty: bool,
    last_submit: Instant,
    last_inbound: Instant,
    /// Highest inbound sequence number acknowledged to a native client.
    acked_seq: u64,
    /// Audio recorded since the last submitted checkpoint (it rides with the next one).
    recording: RecordingBuffer,
    /// Timeline position up to which webhook events have been handed to the writer (the
    /// loaded checkpoint's events were stored with it).
    events_seen: u64,
    /// Whether the call's tenant has webhooks at all (else no events are collected).
    webhooks: bool,
    /// Bytes this call holds here (encoded state, unwritten recording, queued output),
    /// refreshed at every checkpoint; the governor migrates the largest calls first.
    account: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: Option<Stop>,
    /// When the driver loop last finished a turn. A later turn that finds more than a
    /// lease gone by means this task did not run meanwhile (the process was paused or
    /// starved): another worker may own the call by now (see `paused_past_lease`).
    last_turn: Instant,
    /// `Some(seq)` after such a pause: input and timers wait until the write `seq` is
    /// answered, which either confirms the ownership or fences this session.
    confirming: Option<u64>,
    /// The one message read when the pause was found, handled once ownership is confirmed.
    held: Option<Message>,
    /// Close frame to send once the last write is durable (see `finish`).
    closing: Option<(u16, String)>,
    /// A Twilio transfer is under way: Twilio stopping the stream is the transfer taking
    /// effect, so the call ends `transferred` (see [`Command::PrepareTransfer`]).
    transferring: bool,
    /// The call's agent leg (agent program).
    agent: agent::AgentLink,
    frames_in: metrics::Counter,
    frames_out: metrics::Counter,
    frames_dropped: metrics::Counter,
    frame_seconds: metrics::Histogram,
}

impl Driver {
    fn new(state: AppState, a: Attachment, out: Arc<OutboundQueue>, limiter: RateLimiter) -> Driver {
        let transport = a.wire.transport();
        let label = transport.as_str();
        let call_id = a.call.id.clone();
        let writer = CheckpointWriter::spawn(
            Target {
                store: state.store.clone(),
                call_id: call_id.clone(),
                epoch: a.epoch,
                lease: state.config.checkpoint.lease,
            },
            state.config.resume.recording_pending_bytes_max,
            state.config.webhooks.call_events_max,
        );
        let (commands_tx, commands) = mpsc::channel(state.config.limits.actor_commands_max);
        let acked_seq = a.call.media.inbound_applied_seq;
        let events_seen = a.call.timeline.dropped() + a.call.timeline.len() as u64;
        let webhooks = state.config.webhooks.target(a.call.tenant.as_str()).is_some();
        let now_i = Instant::now();
        let agent = agent::AgentLink::new(&state.config.agent, call_id.clone());
        Driver {
            call: a.call,
            call_id,
            epoch: a.epoch,
            wire: a.wire,
            transport,
            out,
            outputs: Vec::with_capacity(8),
            writer,
            commands,
            commands_tx,
            limiter,
            checkpoint_seq: a.checkpoint_seq,
            dirty: false,
            last_submit: now_i,
            last_inbound: now_i,
            acked_seq,
            recording: RecordingBuffer::default(),
            events_seen,
            webhooks,
            account: std::sync::Arc::default(),
            stop: None,
            last_turn: now_i,
            confirming: None,
            held: None,
            closing: None,
            transferring: false,
            agent,
            frames_in: metrics::counter!(m::FRAMES_IN, "transport" => label),
            frames_out: metrics::counter!(m::FRAMES_OUT, "transport" => label),
            frames_dropped: metrics::counter!(m::FRAMES_DROPPED, "transport" => label),
            frame_seconds: metrics::histogram!(m::FRAME_PROCESSING_SECONDS, "transport" => label),
            state,
        }
        .started(a.previous_write)
    }

    /// Registers the call, applies the attach and greets the client.
    fn started(mut self, previous_write: Option<UnixMillis>) -> Driver {
        let now = now();
        let resume = self.call.started_at.map(|_| callworker_call::Resume {
            cause: self.call.detach_cause.unwrap_or(callworker_call::ResumeCause::WorkerLost),
            gap_ms: previous_write.map_or(0, |t| now.since(t)),
        });
        if let Some(r) = resume {
            metrics::counter!(m::CALLS_RESUMED, "cause" => r.cause.as_str(), "transport" => self.transport.as_str())
                .increment(1);
            metrics::histogram!(m::RESUME_GAP_SECONDS).record(r.gap_ms as f64 / 1000.0);
        }
        self.state.live.register(&self.call_id, self.epoch, self.commands_tx.clone(), self.account.clone());
        metrics::gauge!(m::CALLS_ACTIVE).increment(1.0);
        metrics::counter!(m::CALLS_ATTACHED, "transport" => self.transport.as_str(), "resumed" => if resume.is_some() { "true" } else { "false" }).increment(1);
        info!(call_id = %self.call_id, epoch = %self.epoch, transport = self.transport.as_str(), resumed = resume.is_some(), "call attached");
        self.call.handle(now, Input::Attached { transport: self.transport, resume }, &mut self.outputs);
        if let Wire::Native(w) = &self.wire
            && !self.call.regenerates_sent_audio()
        {
            // Frames a dead session sent after its last checkpoint are numbers the client
            // has seen (and would drop): new audio (a prompt or tone from the frame heard, an
            // agent's) is numbered after them. Echo regenerates those very frames under the
            // same numbers, which the client rightly drops.
            self.call.skip_outbound_seq_past(w.last_server_seq_rx);
        }
        let greeting = match &mut self.wire {
            Wire::Native(w) => Some(w.welcome(&self.state, &self.call, self.epoch, now, resume.is_some())),
            Wire::Twilio(_) => None,
        };
        if let Some(msg) = greeting {
            self.control(msg);
        }
        self.flush_outputs();
        self
    }

    async fn run(&mut self, stream: &mut Stream) -> u16 {
        let shutdown = self.state.shutdown.clone();
        let mut tick = tokio::time::interval(self.state.config.checkpoint.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timer = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(timer);
        let mut timer_at: Option<UnixMillis> = None;
        let mut close_code = close::NORMAL;

        while self.stop.is_none() {
            let deadline = self.call.poll_timeout();
            if deadline != timer_at {
                timer_at = deadline;
                if let Some(at) = deadline {
                    let wait = Duration::from_millis(at.since(now()));
                    timer.as_mut().reset(tokio::time::Instant::now() + wait);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    close_code = self.detach(close::GOING_AWAY, "worker shutting down; reconnect");
                }
                Some(written) = self.writer.results.recv() => {
                    // Whichever branch wakes first after a pause notices it.
                    self.paused_past_lease();
                    if let Some(code) = self.on_written(written) {
                        close_code = code;
                    }
                }
                Some(cmd) = self.commands.recv(), if self.confirming.is_none() => self.on_command(cmd),
                event = self.agent.next(), if self.confirming.is_none() => self.on_agent(event),
                msg = stream.next(), if self.confirming.is_none() => {
                    match msg {
                        None | Some(Ok(Message::Close(_))) => {
                            close_code = self.detach(close::NORMAL, "client closed");
                        }
                        Some(Err(e)) => {
                            let e = ws_error(&e);
                            close_code = self.refuse(e);
                        }
                        Some(Ok(msg)) if self.paused_past_lease() => self.held = Some(msg),
                        Some(Ok(msg)) => {
                            if let Some(code) = self.on_message(msg) {
                                close_code = code;
                            }
                        }
                    }
                }
                _ = &mut timer, if timer_at.is_some() && self.confirming.is_none() => {
                    timer_at = None;
                    if !self.paused_past_lease() {
                        self.call.handle(now(), Input::Timeout, &mut self.outputs);
                        self.flush_outputs();
                    }
                }
                _ = tick.tick() => {
                    self.paused_past_lease();
                    self.follow_memory_level();
                    if self.last_inbound.elapsed() > self.state.config.limits.idle_timeout {
                        close_code = self.detach(close::TIMEOUT, "idle_timeout: no input within the idle timeout");
                    } else {
                        self.maybe_checkpoint(false);
                    }
                }
            }
            if self.confirming.is_none()
                && self.stop.is_none()
                && let Some(msg) = self.held.take()
                && let Some(code) = self.on_message(msg)
            {
                close_code = code;
            }
            // A pause that began inside this turn (after its first check) is caught here,
            // before the next input is driven.
            self.paused_past_lease();
            if self.stop.is_none() && self.out.is_closing() {
                // The outbound queue closed itself: the client is not reading.
                close_code = close::SLOW_CONSUMER;
                self.detach(close::SLOW_CONSUMER, "slow_consumer: control queue full");
            }
        }
        self.finish().await;
        close_code
    }

    fn on_message(&mut self, msg: Message) -> Option<u16> {
        if matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            self.last_inbound = Instant::now();
            return None;
        }
        if let Err(e) = charge(&mut self.limiter, &msg) {
            return Some(self.refuse(e));
        }
        self.last_inbound = Instant::now();
        let started = Instant::now();
        let decoded = match &mut self.wire {
            Wire::Native(w) => w.decode(&msg, &self.state),
            Wire::Twilio(w) => w.decode(&msg, &self.state),
        };
        match decoded {
            Decoded::Nothing => None,
            Decoded::Refuse(e) => Some(self.refuse(e)),
            Decoded::Input(input) => {
                let input = match input {
                    Input::End(EndReason::RemoteHangup) if self.transferring => {
                        Input::End(EndReason::Transferred)
                    }
                    input => input,
                };
                self.call.handle(now(), input, &mut self.outputs);
                self.dirty = true;
                self.flush_outputs();
                None
            }
            Decoded::Audio { seq, payload } => {
                let applied = self.call.media.inbound_applied_seq;
                let seq = match seq {
                    // Native: duplicates (replay overlap) are dropped; a forward gap is a
                    // client bug that would silently lose audio, so it is refused.
                    Some(s) if s <= applied => {
                        metrics::counter!(m::WS_REJECTED, "transport" => self.transport.as_str(), "reason" => "duplicate_frame").increment(1);
                        return None;
                    }
                    Some(s) if s > applied + 1 => {
                        return Some(self.refuse(Error::new(
                            ErrorKind::OutOfOrder,
                            "sequence_gap",
                            format!("audio seq {s} after {applied}: frames missing"),
                        )));
                    }
                    Some(s) => s,
                    None => applied + 1,
                };
                self.frames_in.increment(1);
                self.call.handle(now(), Input::Audio { seq, payload: &payload }, &mut self.outputs);
                if self.call.recording.inbound && self.call.media.inbound_applied_seq == seq {
                    self.recording.inbound.extend_from_slice(&payload);
                }
                self.dirty = true;
                self.flush_outputs();
                self.frame_seconds.record(started.elapsed().as_secs_f64());
                None
            }
        }
    }

    /// The agent leg's news, or the agent's message, for the call.
    fn on_agent(&mut self, event: agent::AgentEvent) {
        use agent::AgentEvent;
        use callworker_call::program::AgentInput;
        let now = now();
        match event {
            AgentEvent::RetryDue => {
                self.agent.sync(&self.call);
                return;
            }
            AgentEvent::Up => self.call.handle(now, Input::Agent(AgentInput::Connected), &mut self.outputs),
            AgentEvent::Audio(audio) => {
                self.call.handle(now, Input::Agent(AgentInput::Audio(&audio)), &mut self.outputs);
            }
            AgentEvent::Message(msg) => {
                self.call.handle(now, Input::Agent(AgentInput::Message(msg)), &mut self.outputs);
            }
            AgentEvent::Lost { reason } => {
                let input = AgentInput::Lost { reason: reason.to_owned() };
                self.call.handle(now, Input::Agent(input), &mut self.outputs);
            }
            AgentEvent::Failed { reason } => {
                let input = AgentInput::Failed { reason: reason.to_owned() };
                self.call.handle(now, Input::Agent(input), &mut self.outputs);
            }
        }
        self.dirty = true;
        self.flush_outputs();
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Snapshot(reply) => {
                let _ = reply.send(self.call.clone());
            }
            Command::Action(action, reply) => {
                let result = match action.validate() {
                    Err(e) => Err(Error::new(ErrorKind::InvalidRequest, "invalid_action", e.to_string())),
                    Ok(()) => {
                        self.call.handle(now(), Input::Action(action), &mut self.outputs);
                        self.dirty = true;
                        self.flush_outputs();
                        Ok(self.call.clone())
                    }
                };
                let _ = reply.send(result);
            }
            Command::End(reason, reply) => {
                self.call.handle(now(), Input::End(reason), &mut self.outputs);
                self.flush_outputs();
                let _ = reply.send(Ok(self.call.clone()));
            }
            Command::Superseded { epoch } => {
                info!(call_id = %self.call_id, epoch = %self.epoch, newer = %epoch, "superseded by a newer session");
                self.fenced();
            }
            Command::Migrate { cause } => {
                info!(call_id = %self.call_id, epoch = %self.epoch, cause = cause.as_str(), "migrating the call to another worker");
                self.migrate(cause);
            }
            Command::PrepareTransfer(reply) => {
                self.transferring = true;
                let _ = reply.send(Ok(self.call.clone()));
            }
            Command::CancelTransfer => self.transferring = false,
        }
    }

    /// Handles the outcome of a checkpoint or end write.
    fn on_written(&mut self, written: Written) -> Option<u16> {
        match written.outcome {
            Ok(()) => {
                if self.confirming.is_some_and(|seq| written.seq >= seq) {
                    info!(call_id = %self.call_id, epoch = %self.epoch, "ownership confirmed after a pause");
                    self.confirming = None;
                }
                if written.end.is_none() && written.inbound_applied_seq > self.acked_seq {
                    self.acked_seq = written.inbound_applied_seq;
                    if let Wire::Native(w) = &self.wire {
                        let msg = w.ack(self.acked_seq);
                        self.control(msg);
                    }
                }
                None
            }
            Err(StoreError::Fenced { current }) => {
                info!(call_id = %self.call_id, epoch = %self.epoch, current = %current, "fenced: another session owns the call");
                Some(self.fenced())
            }
            Err(StoreError::Ended { reason }) => {
                if self.stop == Some(Stop::Ended) {
                    return None;
                }
                // Ended elsewhere (control API on another worker, reaper): tell the client.
                info!(call_id = %self.call_id, reason = %reason, "call ended elsewhere");
                self.call.handle(now(), Input::End(reason), &mut self.outputs);
                self.outputs.retain(|o| !matches!(o, Output::Checkpoint));
                self.agent.stop(reason.as_str());
                self.say_goodbye(reason);
                self.stop = Some(Stop::Fenced);
                let (code, reason) = self.closing.take().unwrap_or((close::NORMAL, String::new()));
                self.out.close(code, reason);
                Some(close::NORMAL)
            }
            Err(StoreError::NotFound) => {
                warn!(call_id = %self.call_id, "call vanished from the store");
                Some(self.refuse(Error::internal()))
            }
            Err(_) => None, // retried by the writer; the call keeps running meanwhile
        }
    }

    /// Turns queued outputs into wire messages.
    fn flush_outputs(&mut self) {
        let mut checkpoint_now = false;
        let mut ended = None;
        for output in self.outputs.drain(..) {
            match output {
                Output::Audio { seq, payload } => {
                    if self.call.recording.outbound {
                        self.recording.outbound.extend_from_slice(&payload);
                    }
                    let msg = match &mut self.wire {
                        Wire::Native(w) => w.audio(self.epoch, seq, &payload),
                        Wire::Twilio(w) => w.audio(&payload),
                    };
                    self.frames_out.increment(1);
                    let dropped = self.out.push_audio(msg);
                    if dropped > 0 {
                        self.frames_dropped.increment(dropped as u64);
                    }
                    if let Wire::Twilio(w) = &mut self.wire
                        && let Some(mark) = w.mark_after(seq, self.state.config.twilio.mark_interval_frames)
                    {
                        push_control(&self.out, self.transport, mark);
                    }
                }
                Output::Clear => {
                    self.out.clear_audio();
                    let msg = match &mut self.wire {
                        Wire::Native(w) => Some(w.clear()),
                        Wire::Twilio(w) => Some(w.clear()),
                    };
                    if let Some(msg) = msg {
                        push_control(&self.out, self.transport, msg);
                    }
                }
                Output::Notify { name, detail } => {
                    match name {
                        "dtmf_detected" => {
                            metrics::counter!(m::IVR_DTMF_DETECTED, "transport" => self.transport.as_str())
                                .increment(1)
                        }
                        "barge_in" => {
                            metrics::counter!(m::IVR_BARGE_INS, "transport" => self.transport.as_str())
                                .increment(1)
                        }
                        _ => {}
                    }
                    if let Wire::Native(w) = &self.wire {
                        push_control(&self.out, self.transport, w.event(name, detail));
                    }
                }
                Output::Checkpoint => checkpoint_now = true,
                Output::End(reason) => ended = Some(reason),
                Output::Agent(msg) => self.agent.send(msg),
            }
        }
        if let Some(reason) = ended {
            self.end(reason);
        } else if checkpoint_now {
            self.dirty = true;
            self.maybe_checkpoint(true);
        }
        // The program may have become, or stopped being, an agent.
        self.agent.sync(&self.call);
    }

    fn control(&mut self, msg: Message) {
        push_control(&self.out, self.transport, msg);
    }

    fn pending(&mut self, end: Option<EndReason>) -> Pending {
        self.checkpoint_seq += 1;
        let blob = Bytes::from(envelope::encode(&self.call));
        let agent_audio = match &self.call.program {
            callworker_call::ProgramState::Agent(s) => s.playback_bytes(),
            _ => 0,
        };
        let held = blob.len() + self.recording.len() + self.out.queued_bytes() + agent_audio;
        self.account.store(held as u64, std::sync::atomic::Ordering::Relaxed);
        metrics::histogram!(m::CALL_ACCOUNT_BYTES).record(held as f64);
        let events = if self.webhooks {
            let (events, seen) = crate::webhooks::timeline_events(&self.call, self.events_seen);
            self.events_seen = seen;
            events
        } else {
            Vec::new()
        };
        Pending {
            seq: self.checkpoint_seq,
            inbound_applied_seq: self.call.media.inbound_applied_seq,
            blob,
            recording: std::mem::take(&mut self.recording),
            end,
            events,
        }
    }

    /// Whether this task did not run for longer than a lease (the process was paused or
    /// starved) since its last turn. Another worker may have taken the call over meanwhile
    /// without this session knowing yet, so before it sends anything more (echoing input
    /// queued during the pause, a timer's audio) it writes a checkpoint and waits for the
    /// answer: applied, the call carries on; fenced, the session stops without having
    /// driven the call while someone else did. Input and timers wait meanwhile.
    fn paused_past_lease(&mut self) -> bool {
        if self.confirming.is_some() {
            return true;
        }
        // Measured between two checks, wherever in a turn they are, so a pause inside a
        // turn is not hidden by the turn's end.
        let now = Instant::now();
        let gap = now.saturating_duration_since(self.last_turn);
        self.last_turn = now;
        if gap < self.state.config.checkpoint.lease || self.stop.is_some() {
            return false;
        }
        warn!(call_id = %self.call_id, epoch = %self.epoch, gap_ms = gap.as_millis() as u64, "paused past the lease; confirming ownership before driving the call");
        metrics::counter!(m::PAUSES_PAST_LEASE).increment(1);
        self.maybe_checkpoint(true);
        self.confirming = Some(self.checkpoint_seq);
        true
    }

    /// Submits a checkpoint if the state changed (or `force`), or if the lease needs
    /// renewing (a third of it has passed since the last write).
    fn maybe_checkpoint(&mut self, force: bool) {
        if self.stop.is_some() {
            return;
        }
        let renew_due = self.last_submit.elapsed() >= self.state.config.checkpoint.lease / 3;
        if !(force || self.dirty || renew_due) {
            return;
        }
        let pending = self.pending(None);
        self.writer.submit(pending);
        self.dirty = false;
        self.last_submit = Instant::now();
    }

    /// The call ended: tell the client, persist the end, stop.
    fn end(&mut self, reason: EndReason) {
        if self.stop.is_some() {
            return;
        }
        metrics::counter!(m::CALLS_ENDED, "reason" => reason.as_str()).increment(1);
        info!(call_id = %self.call_id, epoch = %self.epoch, reason = %reason, "call ended");
        let pending = self.pending(Some(reason));
        self.writer.submit(pending);
        self.agent.stop(reason.as_str());
        self.say_goodbye(reason);
        self.stop = Some(Stop::Ended);
    }

    /// Queues `bye` (native) and arranges the close for after the end is durable, so
    /// whatever the client does next (Twilio requests its action URL) sees the end.
    fn say_goodbye(&mut self, reason: EndReason) {
        if let Wire::Native(w) = &self.wire {
            let msg = w.bye(reason);
            self.control(msg);
        }
        self.closing = Some((close::NORMAL, format!("call_ended: {reason}")));
    }

    /// Shrinks this session's per-call caps while the memory governor is above normal
    /// (the outbound audio queue to a quarter of its bound), and restores them after.
    fn follow_memory_level(&mut self) {
        let full = self.state.config.limits.outbound_audio_frames_max;
        let cap = if self.state.admission.memory_level() >= callworker_governor::Level::Elevated {
            (full / 4).max(1)
        } else {
            full
        };
        self.out.set_audio_max(cap);
    }

    /// The worker moves the call away on purpose: checkpoint it as detached with `cause`,
    /// tell a native client to reconnect (`migrate`, close 4302), and close a Twilio stream
    /// so that Twilio requests its action URL and reconnects through the load balancer.
    fn migrate(&mut self, cause: callworker_call::ResumeCause) -> u16 {
        metrics::counter!(m::CALLS_MIGRATED, "reason" => cause.as_str()).increment(1);
        if let Wire::Native(w) = &self.wire {
            let msg = w.migrate(cause.as_str());
            self.control(msg);
        }
        self.detach_because(close::MIGRATE, "migrated: reconnect to another worker", Some(cause))
    }

    /// The session goes away but the call does not: checkpoint it as detached.
    fn detach(&mut self, code: u16, reason: &str) -> u16 {
        let cause = (code == close::GOING_AWAY).then_some(callworker_call::ResumeCause::MigratedDrain);
        self.detach_because(code, reason, cause)
    }

    fn detach_because(
        &mut self,
        code: u16,
        reason: &str,
        cause: Option<callworker_call::ResumeCause>,
    ) -> u16 {
        if self.stop.is_some() {
            return code;
        }
        self.call.handle(now(), Input::Detached { cause }, &mut self.outputs);
        self.outputs.retain(|o| !matches!(o, Output::Checkpoint | Output::Audio { .. }));
        let ended = self.outputs.iter().find_map(|o| match o {
            Output::End(r) => Some(*r),
            _ => None,
        });
        self.outputs.clear();
        if let Some(r) = ended {
            self.end(r);
            return code;
        }
        let pending = self.pending(None);
        self.writer.submit(pending);
        self.agent.stop(cause.map_or("detached", |c| c.as_str()));
        if code == close::GOING_AWAY
            && let Wire::Native(w) = &self.wire
        {
            let msg = w.migrate("worker_shutdown");
            self.control(msg);
        }
        self.closing = Some((code, reason.to_owned()));
        self.stop = Some(Stop::Detach);
        code
    }

    /// Another session owns the call: stop now, write nothing more.
    fn fenced(&mut self) -> u16 {
        self.writer.abort();
        self.agent.abort();
        self.out.clear_audio();
        self.out.close(close::STALE_SESSION, "stale_session: another session owns the call".to_owned());
        self.stop = Some(Stop::Fenced);
        close::STALE_SESSION
    }

    /// Refuses bad input: counted, the session closed with the error's code; the call is
    /// detached (it stays resumable) unless the input was a protocol violation by a client
    /// that is then free to reconnect properly.
    fn refuse(&mut self, e: Error) -> u16 {
        reject(self.transport, &e);
        if let Wire::Native(w) = &self.wire {
            let msg = w.error(&e);
            self.control(msg);
        }
        let code = if e.code == "message_too_large" { close::MESSAGE_TOO_BIG } else { e.kind.close_code() };
        self.detach(code, &e.close_reason())
    }

    /// Waits (bounded) for the last write so a detached or ended call is durable before
    /// the session lets go of it.
    async fn finish(&mut self) {
        self.state.live.deregister(&self.call_id, self.epoch);
        metrics::gauge!(m::CALLS_ACTIVE).decrement(1.0);
        if self.stop == Some(Stop::Fenced) {
            return;
        }
        self.await_last_write().await;
        let (code, reason) = self.closing.take().unwrap_or((close::NORMAL, String::new()));
        self.out.close(code, reason);
        debug!(call_id = %self.call_id, "session finished");
    }

    async fn await_last_write(&mut self) {
        let last_seq = self.checkpoint_seq;
        let deadline = tokio::time::Instant::now() + FINAL_WRITE_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.writer.results.recv()).await {
                Ok(Some(w))
                    if w.seq >= last_seq
                        || w.outcome.is_err() && !matches!(w.outcome, Err(StoreError::Unavailable(_))) =>
                {
                    break;
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => {
                    warn!(call_id = %self.call_id, epoch = %self.epoch, "final checkpoint not confirmed in time");
                    break;
                }
            }
        }
    }
}

fn push_control(out: &OutboundQueue, transport: Transport, msg: Message) {
    if out.push_control(msg) == ControlPush::Overflow {
        metrics::counter!(m::WS_REJECTED, "transport" => transport.as_str(), "reason" => "slow_consumer")
            .increment(1);
        out.clear_audio();
        out.close(close::SLOW_CONSUMER, "slow_consumer: control queue full".to_owned());
    }
}

/// A close frame message.
pub fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}
