//! The task behind a [`super::ResilientCall`]: it owns the socket, the replay buffer and
//! the resume loop. Everything here runs on one task, so the state needs no locks; the
//! handle reaches it through the bounded command queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use callworker_protocol::AudioFormat;
use callworker_protocol::close;
use callworker_protocol::native::{ClientControl, Hello, ServerControl, Welcome};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until};
use tracing::{debug, info, warn};

use super::backoff::SendPacer;
use super::replay::{ReplayBuffer, ResumePlan, ServerAudioFilter, Verdict, silence_payload};
use super::{CallEvent, Command, Counters, EndCause, ResilientConfig, SessionInfo, add, bump};
use crate::ClientError;
use crate::native::{self, Inbound, NativeReceiver, NativeSender, encode_audio_frame, first_hello};

/// What [`super::ResilientCall::connect`] hands to the task.
pub(super) struct Setup {
    pub media_urls: Vec<String>,
    pub call_id: String,
    pub resume_token: String,
    pub from: super::ResumeFrom,
    pub audio: AudioFormat,
    pub config: ResilientConfig,
    pub commands: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<CallEvent>,
    pub session: watch::Sender<SessionInfo>,
    pub counters: Arc<Counters>,
}

/// The call's state between and across sessions.
pub(super) struct Driver {
    media_urls: Vec<String>,
    /// Round-robin position: the next attempt uses `media_urls[url_index % len]`.
    url_index: usize,
    call_id: String,
    audio: AudioFormat,
    config: ResilientConfig,
    /// Token for the next `hello` (from creation, then from the latest `welcome`).
    resume_token: String,
    /// Epoch of the latest `welcome` (0 before the first): `hello.epoch_seen`.
    epoch: u64,
    sessions: u64,
    buffer: ReplayBuffer,
    filter: ServerAudioFilter,
    /// Highest server seq reported played: `hello.last_played_server_seq`.
    last_played: u64,
    /// Highest client seq written to any socket (to tell replays from first sends).
    highest_sent_seq: u64,
    /// Payload of a silence frame (20 ms in the call's format).
    silence: Vec<u8>,
    /// Bounded by `config.commands_max`; closed when the handle is dropped.
    commands: mpsc::Receiver<Command>,
    /// A connection given up by `debug_abandon_connection` but left open: closed once the
    /// next session is welcomed (by then the server has fenced it out).
    abandoned: Option<(NativeSender, NativeReceiver)>,
    /// `Some` once the handle asked to hang up (with the optional `bye` reason).
    hangup: Option<Option<String>>,
    /// Bounded by `config.events_max`; audio and acks are dropped (counted) when full.
    events: mpsc::Sender<CallEvent>,
    session: watch::Sender<SessionInfo>,
    counters: Arc<Counters>,
    rng: StdRng,
}

/// One attached session.
struct Live {
    tx: NativeSender,
    rx: NativeReceiver,
    /// Next client seq to write on this session (from `welcome.resume_from_seq`).
    cursor: u64,
    pacer: SendPacer,
    /// When anything last arrived; a connection silent for the liveness timeout is dead.
    last_rx: Instant,
    bye_sent: bool,
    server_bye: Option<String>,
    migrate_after: Option<Duration>,
    /// After `bye` or `migrate`: when to stop waiting for the server's close.
    closing_deadline: Option<Instant>,
}

/// A session was lost and should be resumed.
struct Lost {
    code: u16,
    reason: String,
    migrate_after: Option<Duration>,
    at: Instant,
}

enum SessionEnd {
    Lost(Lost),
    Final(EndCause),
}

/// How a session stops, and what to do with its socket.
enum Exit {
    /// Drop the socket at once (reset): it is dead, or a test says so.
    Abort { code: u16, reason: String },
    /// The server closed (or answered `bye`/`migrate` and then did not close in time).
    Closed { code: u16, reason: String },
    /// The handle is gone: close the socket politely, without `bye`.
    Abandoned,
    /// Leave the socket open but unused (`debug_abandon_connection`).
    Leave { code: u16, reason: String },
}

enum Resume {
    /// Boxed: a session is large, and the other outcomes happen once per call.
    Attached {
        live: Box<Live>,
        welcome: Welcome,
        attempts: u32,
    },
    Final(EndCause),
    GaveUp {
        attempts: u32,
        last_error: ClientError,
    },
}

/// Runs the call: the first connection, then sessions and resumes until the call ends for
/// this client. Reports the first connection's outcome on `first`.
pub(super) async fn task_main(mut d: Driver, first: oneshot::Sender<Result<(), ClientError>>) -> EndCause {
    let mut live = match d.resume(None, Instant::now()).await {
        Resume::Attached { live, welcome, attempts } => {
            d.attached(&welcome);
            info!(call_id = %d.call_id, epoch = welcome.epoch, attempts, "call connected");
            let _ = first.send(Ok(()));
            live
        }
        Resume::Final(cause) => {
            let error = match &cause {
                EndCause::Closed { code, reason } => {
                    ClientError::Closed { code: *code, reason: reason.clone() }
                }
                other => ClientError::Protocol(format!("connect stopped: {other:?}")),
            };
            let _ = first.send(Err(error));
            return cause;
        }
        Resume::GaveUp { attempts, last_error } => {
            let cause = EndCause::GaveUp { attempts, last_error: last_error.to_string() };
            let _ = first.send(Err(last_error));
            return cause;
        }
    };
    loop {
        let lost = match d.run(*live).await {
            SessionEnd::Final(cause) => return d.finish(cause).await,
            SessionEnd::Lost(lost) => lost,
        };
        bump(&d.counters.disconnects);
        d.session.send_modify(|s| s.connected = false);
        info!(call_id = %d.call_id, epoch = d.epoch, code = lost.code, reason = %lost.reason, "session lost; resuming");
        d.emit(CallEvent::Disconnected {
            code: lost.code,
            reason: lost.reason.clone(),
            migrate_after_ms: lost.migrate_after.map(|m| m.as_millis() as u64),
        })
        .await;
        live = match d.resume(lost.migrate_after, lost.at).await {
            Resume::Attached { live, welcome, attempts } => {
                let plan = d.attached(&welcome);
                bump(&d.counters.reconnects);
                let gap_ms = lost.at.elapsed().as_millis() as u64;
                info!(
                    call_id = %d.call_id, epoch = welcome.epoch, attempts, gap_ms,
                    resume_from_seq = welcome.resume_from_seq, replayed_frames = plan.replay_frames,
                    silence_frames = plan.silence_frames, "session resumed"
                );
                d.emit(CallEvent::Resumed {
                    epoch: welcome.epoch,
                    attempts,
                    gap_ms,
                    resume_from_seq: welcome.resume_from_seq,
                    replayed_frames: plan.replay_frames,
                    silence_frames: plan.silence_frames,
                })
                .await;
                live
            }
            Resume::Final(cause) => return d.finish(cause).await,
            Resume::GaveUp { attempts, last_error } => {
                warn!(call_id = %d.call_id, attempts, error = %last_error, "resume gave up");
                return d.finish(EndCause::GaveUp { attempts, last_error: last_error.to_string() }).await;
            }
        };
    }
}

impl Driver {
    pub(super) fn new(s: Setup) -> Driver {
        let buffer = ReplayBuffer::new(
            s.config.replay_frames_max,
            s.config.retained_tail_frames,
            s.from.next_seq.max(1),
        );
        Driver {
            media_urls: s.media_urls,
            url_index: 0,
            call_id: s.call_id,
            silence: silence_payload(s.audio),
            audio: s.audio,
            config: s.config,
            resume_token: s.resume_token,
            epoch: s.from.epoch_seen,
            sessions: 0,
            buffer,
            filter: ServerAudioFilter::new(s.from.last_server_seq_rx),
            last_played: s.from.last_played_server_seq,
            highest_sent_seq: 0,
            commands: s.commands,
            abandoned: None,
            hangup: None,
            events: s.events,
            session: s.session,
            counters: s.counters,
            rng: StdRng::from_rng(&mut rand::rng()),
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            epoch_seen: self.epoch,
            next_seq: self.buffer.next_seq(),
            last_server_seq_rx: self.filter.last_seq_rx(),
            last_played_server_seq: self.last_played,
            ..first_hello(&self.call_id, &self.resume_token, self.audio)
        }
    }

    /// Connection attempts under the policy, until one is welcomed, one is refused for
    /// good, or the attempts or the window run out. Commands keep being served meanwhile
    /// (audio is buffered), so the application never stalls on a resume.
    async fn resume(&mut self, migrate_after: Option<Duration>, lost_at: Instant) -> Resume {
        let policy = self.config.reconnect.clone();
        let deadline = lost_at + policy.resume_window;
        let mut attempts = 0;
        let mut last_error = ClientError::Timeout("resume window");
        for attempt in 0..policy.attempts_max.max(1) {
            let delay = match migrate_after {
                Some(after) if attempt == 0 => after,
                _ => policy.delay(attempt, &mut self.rng),
            };
            let start_at = Instant::now() + delay;
            if start_at >= deadline {
                break;
            }
            if let Err(cause) = self.idle_until(start_at).await {
                return Resume::Final(cause);
            }
            let url = self.media_urls[self.url_index % self.media_urls.len()].clone();
            self.url_index = self.url_index.wrapping_add(1);
            let timeout = policy.attempt_timeout.min(deadline.saturating_duration_since(Instant::now()));
            attempts += 1;
            debug!(call_id = %self.call_id, attempt = attempts, url = %url, "connecting");
            let result = match self.attempt(&url, self.hello(), timeout).await {
                Ok(result) => result,
                Err(cause) => return Resume::Final(cause),
            };
            match result {
                Ok((tx, rx, welcome)) => {
                    self.session.send_modify(|s| s.media_url = url);
                    let live = Live {
                        tx,
                        rx,
                        cursor: welcome.resume_from_seq,
                        pacer: SendPacer::new(
                            self.config.send_frames_per_second,
                            self.config.send_burst_frames,
                            Instant::now(),
                        ),
                        last_rx: Instant::now(),
                        bye_sent: false,
                        server_bye: None,
                        migrate_after: None,
                        closing_deadline: None,
                    };
                    return Resume::Attached { live: Box::new(live), welcome, attempts };
                }
                Err(ClientError::Closed { code, reason }) if !close::should_reconnect(code) => {
                    info!(call_id = %self.call_id, code, reason = %reason, "refused for good; not reconnecting");
                    return Resume::Final(EndCause::Closed { code, reason });
                }
                Err(e) => {
                    bump(&self.counters.failed_attempts);
                    debug!(call_id = %self.call_id, attempt = attempts, error = %e, "connection attempt failed");
                    last_error = e;
                }
            }
        }
        Resume::GaveUp { attempts, last_error }
    }

    /// One connection attempt, serving commands while it runs.
    async fn attempt(
        &mut self,
        url: &str,
        hello: Hello,
        timeout: Duration,
    ) -> Result<Result<(NativeSender, NativeReceiver, Welcome), ClientError>, EndCause> {
        let connecting = native::connect_with_timeout(url, hello, timeout);
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                result = &mut connecting => return Ok(result),
                command = self.commands.recv() => self.command_offline(command)?,
            }
        }
    }

    /// Waits until `at`, serving commands.
    async fn idle_until(&mut self, at: Instant) -> Result<(), EndCause> {
        let sleep = sleep_until(at);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return Ok(()),
                command = self.commands.recv() => self.command_offline(command)?,
            }
        }
    }

    /// A command while no session is attached.
    fn command_offline(&mut self, command: Option<Command>) -> Result<(), EndCause> {
        match command {
            None => return Err(EndCause::Abandoned),
            Some(Command::Audio { seq, frame }) => self.buffer_frame(seq, frame),
            Some(Command::Played { upto_seq }) => self.last_played = self.last_played.max(upto_seq),
            Some(Command::Dtmf { digit }) => {
                debug!(call_id = %self.call_id, %digit, "dtmf while disconnected; dropped")
            }
            Some(Command::Hangup { reason }) => self.hangup = Some(reason),
            Some(Command::DropConnection | Command::AbandonConnection) => {}
        }
        Ok(())
    }

    fn buffer_frame(&mut self, seq: u64, frame: Bytes) {
        match self.buffer.push(seq, frame) {
            Ok(0) => {}
            Ok(dropped) => {
                add(&self.counters.frames_dropped_overflow, dropped as u64);
            }
            // The handle numbers frames in queue order, so this is a bug, not bad input.
            Err(e) => warn!(call_id = %self.call_id, error = %e, "audio frame out of sequence; dropped"),
        }
    }

    /// A `welcome` arrived: take its epoch and token, and plan the replay (the session's
    /// cursor already starts at `resume_from_seq`).
    fn attached(&mut self, welcome: &Welcome) -> ResumePlan {
        self.epoch = welcome.epoch;
        self.resume_token.clone_from(&welcome.resume_token);
        self.sessions += 1;
        self.filter.on_welcome(welcome.epoch);
        let plan = self.buffer.on_welcome(welcome.resume_from_seq);
        self.abandoned = None;
        let (epoch, token, sessions) = (self.epoch, self.resume_token.clone(), self.sessions);
        self.session.send_modify(|s| {
            s.connected = true;
            s.epoch = epoch;
            s.resume_token = token;
            s.sessions = sessions;
        });
        plan
    }

    /// Drives one attached session until it is lost or the call ends.
    async fn run(&mut self, mut live: Live) -> SessionEnd {
        let ping_interval = self.config.ping_interval.max(Duration::from_millis(10));
        let mut ping = interval_at(Instant::now() + ping_interval, ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let exit = loop {
            if let Err(exit) = self.pump(&mut live).await {
                break exit;
            }
            let backlog = live.cursor < self.buffer.next_seq();
            let wake_at = live.pacer.next_at();
            let closing = live.closing_deadline;
            let step = tokio::select! {
                biased;
                inbound = live.rx.next_inbound() => {
                    live.last_rx = Instant::now();
                    self.on_inbound(&mut live, inbound).await
                }
                command = self.commands.recv() => self.on_command(&mut live, command).await,
                _ = sleep_until(wake_at), if backlog => None,
                _ = sleep_until(closing.unwrap_or(wake_at)), if closing.is_some() => {
                    Some(Exit::Closed { code: close::ABNORMAL, reason: "the server did not close in time".into() })
                }
                _ = ping.tick() => {
                    if live.last_rx.elapsed() >= self.config.liveness_timeout {
                        Some(Exit::Abort { code: close::ABNORMAL, reason: "no traffic within the liveness timeout".into() })
                    } else {
                        let timeout = self.config.liveness_timeout;
                        send_timed(timeout, live.tx.ping()).await.err()
                    }
                }
            };
            if let Some(exit) = step {
                break exit;
            }
        };
        let (code, reason) = match exit {
            Exit::Abort { code, reason } => {
                native::abort(live.tx, live.rx);
                (code, reason)
            }
            Exit::Closed { code, reason } => (code, reason),
            Exit::Leave { code, reason } => {
                self.abandoned = Some((live.tx, live.rx));
                (code, reason)
            }
            Exit::Abandoned => {
                let _ = tokio::time::timeout(self.config.close_timeout, live.tx.close()).await;
                return SessionEnd::Final(EndCause::Abandoned);
            }
        };
        if live.bye_sent {
            SessionEnd::Final(EndCause::HungUp)
        } else if let Some(reason) = live.server_bye {
            SessionEnd::Final(EndCause::ServerBye { reason })
        } else if live.migrate_after.is_some() || close::should_reconnect(code) {
            SessionEnd::Lost(Lost { code, reason, migrate_after: live.migrate_after, at: Instant::now() })
        } else {
            SessionEnd::Final(EndCause::Closed { code, reason })
        }
    }

    /// Writes what is due: buffered frames from the session's cursor (paced), then `bye`
    /// once a requested hang-up has nothing left before it.
    async fn pump(&mut self, live: &mut Live) -> Result<(), Exit> {
        let timeout = self.config.liveness_timeout;
        let now = Instant::now();
        while live.cursor < self.buffer.next_seq() && live.pacer.try_take(now) {
            let seq = live.cursor;
            let (frame, silence) = match self.buffer.get(seq) {
                Some(frame) => (frame.clone(), false),
                // Dropped on overflow before it could be (re)sent: §4.2 says silence.
                None => (encode_audio_frame(seq, &self.silence), true),
            };
            send_timed(timeout, live.tx.send_frame(frame)).await?;
            bump(&self.counters.frames_sent);
            if silence {
                bump(&self.counters.silence_frames_sent);
            } else if seq <= self.highest_sent_seq {
                bump(&self.counters.frames_replayed);
            }
            self.highest_sent_seq = self.highest_sent_seq.max(seq);
            live.cursor += 1;
        }
        if !live.bye_sent
            && live.cursor >= self.buffer.next_seq()
            && live.server_bye.is_none()
            && let Some(reason) = &self.hangup
        {
            let bye = ClientControl::Bye { reason: reason.clone() };
            send_timed(timeout, live.tx.send_control(&bye)).await?;
            live.bye_sent = true;
            live.closing_deadline = Some(Instant::now() + self.config.close_timeout);
        }
        Ok(())
    }

    async fn on_command(&mut self, live: &mut Live, command: Option<Command>) -> Option<Exit> {
        let timeout = self.config.liveness_timeout;
        let Some(command) = command else {
            return Some(Exit::Abandoned);
        };
        match command {
            Command::Audio { seq, frame } => self.buffer_frame(seq, frame),
            Command::Played { upto_seq } => {
                if upto_seq > self.last_played {
                    self.last_played = upto_seq;
                    return send_timed(timeout, live.tx.played(upto_seq)).await.err();
                }
            }
            Command::Dtmf { digit } => return send_timed(timeout, live.tx.dtmf(digit)).await.err(),
            Command::Hangup { reason } => self.hangup = Some(reason),
            Command::DropConnection => {
                return Some(Exit::Abort {
                    code: close::ABNORMAL,
                    reason: "connection dropped by debug_drop_connection".into(),
                });
            }
            Command::AbandonConnection => {
                return Some(Exit::Leave {
                    code: close::ABNORMAL,
                    reason: "connection abandoned by debug_abandon_connection".into(),
                });
            }
        }
        None
    }

    async fn on_inbound(&mut self, live: &mut Live, inbound: Option<Inbound>) -> Option<Exit> {
        let Some(inbound) = inbound else {
            return Some(Exit::Closed { code: close::ABNORMAL, reason: "connection lost".into() });
        };
        match inbound {
            Inbound::Audio { epoch, seq, payload } => match self.filter.check(epoch, seq) {
                Verdict::Accept => {
                    bump(&self.counters.audio_frames_received);
                    self.emit_lossy(CallEvent::Audio { epoch, seq, payload });
                }
                Verdict::StaleEpoch => bump(&self.counters.stale_epoch_dropped),
                Verdict::Duplicate => bump(&self.counters.duplicates_dropped),
            },
            Inbound::Control(control) => self.on_control(live, control).await,
            Inbound::Heartbeat => {}
            Inbound::Invalid(e) => {
                warn!(call_id = %self.call_id, error = %e, "undecodable server message ignored")
            }
            Inbound::Closed { code, reason } => return Some(Exit::Closed { code, reason }),
        }
        None
    }

    async fn on_control(&mut self, live: &mut Live, control: ServerControl) {
        match control {
            ServerControl::Ack { upto_seq } => {
                self.buffer.ack(upto_seq);
                self.emit_lossy(CallEvent::Acked { upto_seq });
            }
            ServerControl::Event { name, detail } => self.emit(CallEvent::Event { name, detail }).await,
            ServerControl::Clear => self.emit(CallEvent::Clear).await,
            ServerControl::Migrate { reason, reconnect_after_ms } => {
                info!(call_id = %self.call_id, reason = %reason, reconnect_after_ms, "server asked to migrate");
                live.migrate_after = Some(Duration::from_millis(reconnect_after_ms));
                live.closing_deadline = Some(Instant::now() + self.config.close_timeout);
            }
            ServerControl::Bye { reason } => {
                info!(call_id = %self.call_id, reason = %reason, "the server ended the call");
                live.server_bye = Some(reason);
                live.closing_deadline = Some(Instant::now() + self.config.close_timeout);
            }
            ServerControl::Error { code, message } => {
                self.emit(CallEvent::ServerError { code, message }).await
            }
            ServerControl::Welcome(w) => {
                warn!(call_id = %self.call_id, epoch = w.epoch, "unexpected welcome during a session ignored")
            }
        }
    }

    /// An event the application must see: waits for room in its queue.
    async fn emit(&self, event: CallEvent) {
        // An error means the application dropped its receiver: nobody to tell.
        let _ = self.events.send(event).await;
    }

    /// An event that may be dropped (counted) when the application's queue is full.
    fn emit_lossy(&self, event: CallEvent) {
        if let Err(TrySendError::Full(_)) = self.events.try_send(event) {
            bump(&self.counters.events_dropped);
        }
    }

    async fn finish(&mut self, cause: EndCause) -> EndCause {
        self.session.send_modify(|s| s.connected = false);
        info!(call_id = %self.call_id, cause = ?cause, "call ended for this client");
        self.emit(CallEvent::Ended(cause.clone())).await;
        cause
    }
}

/// A send bounded by `timeout`; a failed or stuck send means a dead connection.
async fn send_timed(
    timeout: Duration,
    send: impl Future<Output = Result<(), ClientError>>,
) -> Result<(), Exit> {
    match tokio::time::timeout(timeout, send).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Exit::Abort { code: close::ABNORMAL, reason: format!("send failed: {e}") }),
        Err(_) => Err(Exit::Abort { code: close::ABNORMAL, reason: "send timed out".into() }),
    }
}
