//! A resilient native-protocol call: it survives lost sessions by resuming them
//! (`docs/protocol.md` §4.2–4.4), so a dead worker or a broken network loses no caller
//! audio.
//!
//! ```text
//! let (mut call, mut events) =
//!     ResilientCall::connect(urls, call_id, resume_token, audio, ResilientConfig::default()).await?;
//! call.send_audio(&frame).await?;                  // seq 1, 2, … across sessions
//! while let Some(event) = events.recv().await { … } // audio, acks, resumes, the end
//! call.hangup().await;
//! ```
//!
//! One task per call (`driver.rs`) owns the socket and all state; the [`ResilientCall`]
//! handle talks to it through a bounded command queue, and the task reports to the
//! application through a bounded event queue. What the task does:
//!
//! - **Client audio.** [`ResilientCall::send_audio`] numbers each frame (from 1, continuous
//!   across sessions), encodes it once and hands it to the task, which keeps it in a
//!   [`ReplayBuffer`] (unacknowledged frames plus a retained tail of acknowledged ones,
//!   bounded; on overflow the oldest is dropped and counted) and sends it when connected.
//!   While disconnected, frames are buffered, not lost. On `welcome` it sends again from
//!   `resume_from_seq`; frames it no longer holds are sent as silence (§4.2), counted.
//!   Sends are paced ([`ResilientConfig::send_frames_per_second`]) so a replay burst stays
//!   under the server's message-rate bound.
//! - **Server audio** is de-duplicated by `(epoch, seq)`: frames from another epoch than
//!   the session's `welcome`, and frames at or below the highest sequence number already
//!   accepted, are dropped and counted (§4.3).
//! - **Resume.** A close with a code for which [`close::should_reconnect`] holds, a
//!   connection lost without a close frame, a connection silent for
//!   [`ResilientConfig::liveness_timeout`] despite pings, or a `migrate`, starts a resume
//!   under the [`ReconnectPolicy`]: backoff with jitter, bounded attempts and window,
//!   round-robin over the media URLs, a timeout per attempt. Any other close code ends the
//!   call for this client — in particular 4409 (another connection owns the call), so two
//!   connections never take a call from each other in turn.
//!
//! Invariants: every queue and buffer is bounded; a frame keeps its sequence number when it
//! is sent again; frames go out in sequence order within a session; the task ends exactly
//! once, with a [`CallEvent::Ended`] naming the [`EndCause`].
//!
//! [`close::should_reconnect`]: callworker_protocol::close::should_reconnect

mod backoff;
mod driver;
mod replay;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use callworker_protocol::AudioFormat;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use backoff::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_ATTEMPTS_MAX, DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_STEP, DEFAULT_JITTER,
    DEFAULT_RESUME_WINDOW, ReconnectPolicy, SendPacer,
};
pub use replay::{
    DEFAULT_REPLAY_FRAMES_MAX, DEFAULT_RETAINED_TAIL_FRAMES, ReplayBuffer, ResumePlan, SILENCE_FRAME_MS,
    SeqMismatch, ServerAudioFilter, Verdict, silence_payload,
};

use crate::ClientError;
use crate::native::encode_audio_frame;

/// Default for [`ResilientConfig::ping_interval`].
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Default for [`ResilientConfig::liveness_timeout`].
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);
/// Default for [`ResilientConfig::send_frames_per_second`]: live audio's 50 plus 100 for
/// catching up, under the server's default bound of 200 messages a second.
pub const DEFAULT_SEND_FRAMES_PER_SECOND: u32 = 150;
/// Default for [`ResilientConfig::send_burst_frames`].
pub const DEFAULT_SEND_BURST_FRAMES: u32 = 100;
/// Default for [`ResilientConfig::events_max`].
pub const DEFAULT_EVENTS_MAX: usize = 256;
/// Default for [`ResilientConfig::commands_max`].
pub const DEFAULT_COMMANDS_MAX: usize = 64;
/// Default for [`ResilientConfig::close_timeout`].
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything a [`ResilientCall`] bounds, with the defaults `docs/protocol.md` suggests.
#[derive(Debug, Clone, PartialEq)]
pub struct ResilientConfig {
    pub reconnect: ReconnectPolicy,
    /// Frames the replay buffer holds at most (unacknowledged + retained tail). When full,
    /// the oldest frame is dropped and counted ([`Stats::frames_dropped_overflow`]).
    pub replay_frames_max: usize,
    /// Acknowledged frames kept anyway, for a worker that asks for them again after its
    /// store lost writes.
    pub retained_tail_frames: usize,
    /// WebSocket ping period while connected.
    pub ping_interval: Duration,
    /// A connection from which nothing (not even a pong) arrived for this long is dead: it
    /// is dropped and the session resumed. Also bounds each send.
    pub liveness_timeout: Duration,
    /// Audio frames sent per second at most, replays included.
    pub send_frames_per_second: u32,
    /// Audio frames sent back to back at most before the rate applies.
    pub send_burst_frames: u32,
    /// Events queued for the application. When full, audio and ack events are dropped and
    /// counted ([`Stats::events_dropped`]); other events wait for room (they are rare, and
    /// never dropped).
    pub events_max: usize,
    /// Commands (audio frames, `played`, …) queued from the handle to the call's task. When
    /// full, [`ResilientCall::send_audio`] waits.
    pub commands_max: usize,
    /// After `bye` (either side), how long to wait for the server to close the socket.
    pub close_timeout: Duration,
}

impl Default for ResilientConfig {
    fn default() -> ResilientConfig {
        ResilientConfig {
            reconnect: ReconnectPolicy::default(),
            replay_frames_max: DEFAULT_REPLAY_FRAMES_MAX,
            retained_tail_frames: DEFAULT_RETAINED_TAIL_FRAMES,
            ping_interval: DEFAULT_PING_INTERVAL,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            send_frames_per_second: DEFAULT_SEND_FRAMES_PER_SECOND,
            send_burst_frames: DEFAULT_SEND_BURST_FRAMES,
            events_max: DEFAULT_EVENTS_MAX,
            commands_max: DEFAULT_COMMANDS_MAX,
            close_timeout: DEFAULT_CLOSE_TIMEOUT,
        }
    }
}

/// What the call reports to the application, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// Server audio, de-duplicated: `seq` grows strictly across the whole call.
    Audio { epoch: u64, seq: u64, payload: Bytes },
    /// Client audio up to `upto_seq` is durable on the server.
    Acked { upto_seq: u64 },
    /// The session was lost and a resume begins. `migrate_after_ms` is set when the server
    /// asked for it with `migrate`.
    Disconnected { code: u16, reason: String, migrate_after_ms: Option<u64> },
    /// A resume succeeded.
    Resumed {
        epoch: u64,
        /// Connection attempts this resume took (1 when the first one worked).
        attempts: u32,
        /// From losing the session to the `welcome` of the new one.
        gap_ms: u64,
        resume_from_seq: u64,
        /// Frames the buffer held from `resume_from_seq` on, sent on the new session (those
        /// sent before the loss are counted in [`Stats::frames_replayed`] as they go out).
        replayed_frames: u64,
        /// Frames the buffer no longer held, sent as silence (a lossy resume when > 0).
        silence_frames: u64,
    },
    /// Discard server audio buffered but not yet played (then report `played`).
    Clear,
    /// Something happened on the call (`dtmf_received`, `program_switched`, …).
    Event { name: String, detail: Option<String> },
    /// The server refused something; the close that follows decides what happens.
    ServerError { code: String, message: String },
    /// The call is over for this client; nothing follows.
    Ended(EndCause),
}

/// Why a [`ResilientCall`] stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndCause {
    /// The server ended the call with `bye {reason}` (its end reason).
    ServerBye { reason: String },
    /// The server closed with a code that forbids reconnecting (4409: another connection
    /// owns the call; 4410: the call has ended; 4401, 4404, 4400, …).
    Closed { code: u16, reason: String },
    /// The resume gave up: `attempts` attempts or the resume window were used up.
    GaveUp { attempts: u32, last_error: String },
    /// [`ResilientCall::hangup`]: `bye` was sent (and answered, unless the server did not
    /// close within the close timeout).
    HungUp,
    /// The handle was dropped: the socket was closed without `bye`, so the call stays
    /// resumable on the server.
    Abandoned,
}

/// The current session, as the task last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// A session is attached (between its `welcome` and its loss).
    pub connected: bool,
    /// Epoch of the latest `welcome` (0 before the first).
    pub epoch: u64,
    /// The token for the next `hello` (rotated by every `welcome`).
    pub resume_token: String,
    /// Media URL of the current (or last) session.
    pub media_url: String,
    /// Sessions attached so far (1 after the first `welcome`).
    pub sessions: u64,
}

/// Counters of a [`ResilientCall`], monotonic over the whole call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Audio frames written to a socket: live, replayed and silence.
    pub frames_sent: u64,
    /// Frames written again after a resume (had been written in an earlier session).
    pub frames_replayed: u64,
    /// Silence frames written for audio the replay buffer had dropped.
    pub silence_frames_sent: u64,
    /// Frames dropped from the replay buffer because it was full.
    pub frames_dropped_overflow: u64,
    /// Server audio frames accepted and passed on.
    pub audio_frames_received: u64,
    /// Server audio frames dropped as duplicates (`seq` ≤ last accepted).
    pub duplicates_dropped: u64,
    /// Server audio frames dropped for carrying another epoch than the session's.
    pub stale_epoch_dropped: u64,
    /// Audio and ack events dropped because the application's event queue was full.
    pub events_dropped: u64,
    /// Sessions lost (each starts a resume).
    pub disconnects: u64,
    /// Successful resumes.
    pub reconnects: u64,
    /// Connection attempts that failed (first connection included).
    pub failed_attempts: u64,
}

/// Shared counters behind [`Stats`]; written by the task only.
#[derive(Debug, Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_replayed: AtomicU64,
    silence_frames_sent: AtomicU64,
    frames_dropped_overflow: AtomicU64,
    audio_frames_received: AtomicU64,
    duplicates_dropped: AtomicU64,
    stale_epoch_dropped: AtomicU64,
    events_dropped: AtomicU64,
    disconnects: AtomicU64,
    reconnects: AtomicU64,
    failed_attempts: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            frames_sent: get(&self.frames_sent),
            frames_replayed: get(&self.frames_replayed),
            silence_frames_sent: get(&self.silence_frames_sent),
            frames_dropped_overflow: get(&self.frames_dropped_overflow),
            audio_frames_received: get(&self.audio_frames_received),
            duplicates_dropped: get(&self.duplicates_dropped),
            stale_epoch_dropped: get(&self.stale_epoch_dropped),
            events_dropped: get(&self.events_dropped),
            disconnects: get(&self.disconnects),
            reconnects: get(&self.reconnects),
            failed_attempts: get(&self.failed_attempts),
        }
    }
}

/// Where a client stands in a call, for [`ResilientCall::connect_from`]: what its `hello`
/// says on the first connection it makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeFrom {
    /// Epoch of the last `welcome` this client state saw (0: none).
    pub epoch_seen: u64,
    /// Sequence number of the next client audio frame.
    pub next_seq: u64,
    /// Highest server audio `seq` accepted.
    pub last_server_seq_rx: u64,
    /// Highest server audio `seq` played.
    pub last_played_server_seq: u64,
}

impl ResumeFrom {
    /// A call no client has connected to yet.
    pub const NEW_CALL: ResumeFrom =
        ResumeFrom { epoch_seen: 0, next_seq: 1, last_server_seq_rx: 0, last_played_server_seq: 0 };
}

/// What the handle asks of the task.
#[derive(Debug)]
enum Command {
    /// A new client frame, already encoded with its sequence number.
    Audio {
        seq: u64,
        frame: Bytes,
    },
    Played {
        upto_seq: u64,
    },
    Dtmf {
        digit: char,
    },
    Hangup {
        reason: Option<String>,
    },
    /// Drop the socket without a close frame, as a network failure would.
    DropConnection,
    /// Stop using the socket but leave it open, as when a middlebox silently loses the flow.
    AbandonConnection,
}

/// A native-protocol call that resumes lost sessions. See the module documentation.
///
/// Dropping it closes the socket without `bye` (the call stays resumable on the server)
/// and stops the task.
#[derive(Debug)]
pub struct ResilientCall {
    commands: mpsc::Sender<Command>,
    /// Sequence number of the next frame [`ResilientCall::send_audio`] sends. Locked only
    /// to number a frame and queue it, so frames are queued in sequence order even when
    /// several tasks send through one handle.
    next_seq: Mutex<u64>,
    session: watch::Receiver<SessionInfo>,
    counters: Arc<Counters>,
    task: Option<JoinHandle<EndCause>>,
    /// How the task ended, once [`ResilientCall::finished`] saw it.
    end: Option<EndCause>,
}

impl ResilientCall {
    /// Connects to a freshly created call (`POST /v1/calls` gave `call_id` and
    /// `resume_token`): tries the media URLs in turn under `config.reconnect` until one
    /// answers `welcome`, and returns the call with its event queue.
    ///
    /// Fails with the last error when every attempt failed, or at once with
    /// [`ClientError::Closed`] when the server refused with a final close code (4401,
    /// 4404, 4409, 4410, …).
    pub async fn connect<U: Into<String>>(
        media_urls: impl IntoIterator<Item = U>,
        call_id: &str,
        resume_token: &str,
        audio: AudioFormat,
        config: ResilientConfig,
    ) -> Result<(ResilientCall, mpsc::Receiver<CallEvent>), ClientError> {
        ResilientCall::connect_from(media_urls, call_id, resume_token, ResumeFrom::NEW_CALL, audio, config)
            .await
    }

    /// [`ResilientCall::connect`] for a client that takes over a call mid-way (a restarted
    /// gateway, with the state it saved): the first `hello` carries `from` and the token
    /// that goes with `from.epoch_seen`. Audio the server asks for from before
    /// `from.next_seq` is sent as silence, since this client never held it.
    pub async fn connect_from<U: Into<String>>(
        media_urls: impl IntoIterator<Item = U>,
        call_id: &str,
        resume_token: &str,
        from: ResumeFrom,
        audio: AudioFormat,
        config: ResilientConfig,
    ) -> Result<(ResilientCall, mpsc::Receiver<CallEvent>), ClientError> {
        let media_urls: Vec<String> = media_urls.into_iter().map(Into::into).collect();
        let Some(first_url) = media_urls.first().cloned() else {
            return Err(ClientError::Protocol("no media URL given".into()));
        };
        let (commands_tx, commands) = mpsc::channel(config.commands_max.max(1));
        let (events_tx, events) = mpsc::channel(config.events_max.max(1));
        let (session_tx, session) = watch::channel(SessionInfo {
            connected: false,
            epoch: from.epoch_seen,
            resume_token: resume_token.to_owned(),
            media_url: first_url,
            sessions: 0,
        });
        let counters = Arc::new(Counters::default());
        let (first_tx, first_rx) = oneshot::channel();
        let driver = driver::Driver::new(driver::Setup {
            media_urls,
            call_id: call_id.to_owned(),
            resume_token: resume_token.to_owned(),
            from,
            audio,
            config,
            commands,
            events: events_tx,
            session: session_tx,
            counters: counters.clone(),
        });
        let task = tokio::spawn(driver::task_main(driver, first_tx));
        match first_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = task.await;
                return Err(e);
            }
            Err(_) => return Err(ClientError::Protocol("the call's task stopped during connect".into())),
        }
        let call = ResilientCall {
            commands: commands_tx,
            next_seq: Mutex::new(from.next_seq.max(1)),
            session,
            counters,
            task: Some(task),
            end: None,
        };
        Ok((call, events))
    }

    /// Sends one frame of client audio and returns its sequence number. The frame is kept
    /// for replay until acknowledged; while disconnected it waits in the buffer. Waits only
    /// when the command queue is full. Fails once the call has ended.
    ///
    /// Cancel-safe: a frame is numbered only once it is queued.
    pub async fn send_audio(&self, payload: &[u8]) -> Result<u64, ClientError> {
        let permit = self.commands.reserve().await.map_err(|_| ended())?;
        // Numbered and queued under the lock (no await inside): queue order is seq order.
        // Encoding is the one allocation per frame; the buffer and the socket share it.
        let mut next_seq = self.next_seq.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = *next_seq;
        permit.send(Command::Audio { seq, frame: encode_audio_frame(seq, payload) });
        *next_seq += 1;
        Ok(seq)
    }

    /// Sequence number the next [`ResilientCall::send_audio`] assigns.
    pub fn next_seq(&self) -> u64 {
        *self.next_seq.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reports that server audio up to `upto_seq` has been played to the caller (`played`,
    /// and `last_played_server_seq` in later `hello`s). Call it at least every 200 ms while
    /// audio plays, and after discarding audio on [`CallEvent::Clear`].
    pub async fn played(&self, upto_seq: u64) -> Result<(), ClientError> {
        self.command(Command::Played { upto_seq }).await
    }

    /// Sends a DTMF digit detected by the gateway (sent only while connected: a digit
    /// pressed during a resume is dropped, as it would be on a real line).
    pub async fn dtmf(&self, digit: char) -> Result<(), ClientError> {
        self.command(Command::Dtmf { digit }).await
    }

    /// Ends the call: sends `bye` once the audio already sent has gone out, waits
    /// (bounded) for the server to close, and returns how the call ended. If the session
    /// is lost meanwhile, the resume runs first (bounded by the policy).
    pub async fn hangup(mut self) -> EndCause {
        let _ = self.commands.send(Command::Hangup { reason: None }).await;
        self.finished().await
    }

    /// Drops the current connection without a close frame (a TCP reset), as a network
    /// failure or a crashed peer would; the call then resumes like after any such loss.
    /// For tests and failure drills.
    pub async fn debug_drop_connection(&self) -> Result<(), ClientError> {
        self.command(Command::DropConnection).await
    }

    /// Stops using the current connection without closing it, and resumes on a new one,
    /// as when a NAT or middlebox silently loses the flow: the server still holds the old
    /// session when the resume arrives, and is fenced out by it (no detach checkpoint), so
    /// the resume replays what the last checkpoint missed. The old socket is closed once
    /// the new session is welcomed. For tests and failure drills.
    pub async fn debug_abandon_connection(&self) -> Result<(), ClientError> {
        self.command(Command::AbandonConnection).await
    }

    /// The current session.
    pub fn session(&self) -> SessionInfo {
        self.session.borrow().clone()
    }

    /// A receiver that sees every change of [`ResilientCall::session`].
    pub fn watch_session(&self) -> watch::Receiver<SessionInfo> {
        self.session.clone()
    }

    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Whether the call's task has stopped (the call ended for this client).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the task to stop and returns why it did. Bounded by the task's own
    /// bounds (resume window, close timeout) once the call is ending.
    pub async fn finished(&mut self) -> EndCause {
        if let Some(task) = self.task.take() {
            // A task that panicked has stopped serving the call: the socket is gone.
            self.end = Some(task.await.unwrap_or(EndCause::Abandoned));
        }
        self.end.clone().unwrap_or(EndCause::Abandoned)
    }

    async fn command(&self, command: Command) -> Result<(), ClientError> {
        self.commands.send(command).await.map_err(|_| ended())
    }
}

fn ended() -> ClientError {
    ClientError::Protocol("the call has ended".into())
}
