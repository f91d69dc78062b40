//! The agent program: the call talks to an external voice agent.
//!
//! The agent leg itself (a WebSocket to the agent service, its reconnects and bounds) is
//! I/O and lives in the server's session. This program is what the call remembers of the
//! conversation, and what it does with the agent's messages: caller audio and DTMF go out
//! to the agent ([`Effects::to_agent`]); the agent's audio is cut into frames and played on
//! the program's frame clock; its `mark`s are answered once the caller has heard the audio
//! before them (the client's played position, as for IVR prompts); `transcript` entries are
//! kept, bounded, in the checkpointed state; `clear`, `transfer` and `hangup` act on the
//! call.
//!
//! Resume: the transcript, the turn count and the last mark heard are checkpointed, so the
//! next worker reconnects to the agent with a `start` that says `resume: true` and carries
//! them ([`start_message`]). The agent audio not yet played is *not* checkpointed (it can be
//! seconds of audio, and rewriting it with every checkpoint would cost more than it saves):
//! it is lost with a worker, and the marks waiting on it are reported `cleared`.

use std::collections::VecDeque;
use std::fmt;

use callworker_protocol::AudioFormat;
use callworker_protocol::agent::{
    AGENT_PROTOCOL_VERSION, FromAgent, Start, ToAgent, TranscriptLine, TranscriptRole,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::call::Call;
use crate::end::EndReason;
use crate::program::{Effects, FRAME_MS, FrameClock, ProgramEvent, ProgramSpec, ProgramState, SpecError};
use crate::time::UnixMillis;

/// Longest agent URL, in bytes.
pub const AGENT_URL_BYTES_MAX: usize = 512;
/// Longest agent token, in bytes.
pub const AGENT_TOKEN_BYTES_MAX: usize = 1024;
/// Longest context handed to the agent, in bytes.
pub const AGENT_CONTEXT_BYTES_MAX: usize = 4096;
/// Most transcript entries a call may be configured to keep.
pub const AGENT_TRANSCRIPT_ENTRIES_MAX: u32 = 10_000;
/// Most transcript bytes (entry texts) a call may be configured to keep.
pub const AGENT_TRANSCRIPT_BYTES_MAX: u32 = 1 << 20;
/// Transcript entries kept when neither the call nor the worker says.
pub const DEFAULT_TRANSCRIPT_ENTRIES_MAX: u32 = 200;
/// Transcript bytes kept when neither the call nor the worker says.
pub const DEFAULT_TRANSCRIPT_BYTES_MAX: u32 = 32 * 1024;
/// Most agent audio frames a call may be configured to hold for playing (5 min).
pub const AGENT_PLAYBACK_FRAMES_MAX: u32 = 15_000;
/// Agent audio frames waiting to be played when neither the call nor the worker says
/// (60 s); when full the oldest is dropped and counted in `media.outbound_dropped_frames`.
pub const DEFAULT_PLAYBACK_FRAMES_MAX: u32 = 3_000;
/// Marks waiting for their audio to be played; when full the oldest is reported `cleared`.
pub const AGENT_MARKS_MAX: usize = 64;

/// A secret (an agent token). It is kept in the checkpoint, which the next worker needs,
/// but never shown: `Debug` and human-readable serialization (the API's JSON, logs) write
/// `"[redacted]"`. Only binary formats (the checkpoint) carry the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// What a secret looks like wherever it is shown.
pub const REDACTED: &str = "[redacted]";

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it (the agent leg's `Authorization`).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(REDACTED)
        } else {
            serializer.serialize_str(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Parameters of the agent program: `{"url": "ws://agent:9000/v1", "token": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentParams {
    /// `ws://` URL of the agent. Absent: the tenant's agent from the worker's configuration.
    #[serde(default)]
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer <token>`. Absent: the tenant's configured token, if
    /// any. Never shown in views or logs.
    #[serde(default)]
    pub token: Option<Secret>,
    /// Opaque text handed to the agent in every `start` (e.g. JSON), at most 4 KiB.
    #[serde(default)]
    pub context: Option<String>,
    /// Transcript entries kept; the oldest are dropped (and counted) beyond it. Absent: the
    /// worker's `agent.transcript_entries_max`.
    #[serde(default)]
    pub transcript_entries_max: Option<u32>,
    /// Transcript text bytes kept, likewise.
    #[serde(default)]
    pub transcript_bytes_max: Option<u32>,
    /// Agent audio frames held for playing; the oldest are dropped (and counted) beyond
    /// it. Absent: the worker's `agent.playback_frames_max`.
    #[serde(default)]
    pub playback_frames_max: Option<u32>,
    /// Program the call switches to when the agent cannot be reached (its reconnect
    /// attempts spent). Absent: the call ends with `agent_unavailable`.
    #[serde(default)]
    pub fallback: Option<Box<ProgramSpec>>,
}

fn invalid(field: &'static str, reason: String) -> SpecError {
    SpecError::InvalidParam { field, reason }
}

impl AgentParams {
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(url) = &self.url {
            validate_url(url)?;
        }
        if let Some(token) = &self.token {
            let t = token.expose();
            if t.is_empty() || t.len() > AGENT_TOKEN_BYTES_MAX || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid(
                    "token",
                    format!("1 to {AGENT_TOKEN_BYTES_MAX} printable ASCII characters without spaces"),
                ));
            }
        }
        if let Some(context) = &self.context
            && context.len() > AGENT_CONTEXT_BYTES_MAX
        {
            return Err(invalid(
                "context",
                format!("{} bytes; at most {AGENT_CONTEXT_BYTES_MAX}", context.len()),
            ));
        }
        if let Some(n) = self.transcript_entries_max
            && !(1..=AGENT_TRANSCRIPT_ENTRIES_MAX).contains(&n)
        {
            return Err(invalid(
                "transcript_entries_max",
                format!("{n} is outside 1..={AGENT_TRANSCRIPT_ENTRIES_MAX}"),
            ));
        }
        if let Some(n) = self.transcript_bytes_max
            && !(1..=AGENT_TRANSCRIPT_BYTES_MAX).contains(&n)
        {
            return Err(invalid(
                "transcript_bytes_max",
                format!("{n} is outside 1..={AGENT_TRANSCRIPT_BYTES_MAX}"),
            ));
        }
        if let Some(n) = self.playback_frames_max
            && !(1..=AGENT_PLAYBACK_FRAMES_MAX).contains(&n)
        {
            return Err(invalid(
                "playback_frames_max",
                format!("{n} is outside 1..={AGENT_PLAYBACK_FRAMES_MAX}"),
            ));
        }
        if let Some(fallback) = &self.fallback {
            if matches!(**fallback, ProgramSpec::Agent(_)) {
                return Err(invalid("fallback", "an agent cannot fall back to another agent".to_owned()));
            }
            fallback.validate()?;
        }
        Ok(())
    }
}

/// Checks an agent URL: `ws://host[:port][/path]`, printable, bounded. (`wss://` is not
/// supported yet: the worker's agent client is built without TLS.)
pub fn validate_url(url: &str) -> Result<(), SpecError> {
    let Some(rest) = url.strip_prefix("ws://") else {
        return Err(invalid("url", "must start with ws://".to_owned()));
    };
    if url.len() > AGENT_URL_BYTES_MAX {
        return Err(invalid("url", format!("{} bytes; at most {AGENT_URL_BYTES_MAX}", url.len())));
    }
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("url", "needs a host and printable ASCII only".to_owned()));
    }
    Ok(())
}

/// One kept transcript entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    pub index: u64,
    pub at: UnixMillis,
    pub role: TranscriptRole,
    pub text: String,
}

/// The conversation, bounded by entries and by text bytes. When either bound is reached
/// the oldest entries are dropped and counted: the newest context matters most to an agent
/// that resumes the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    entries: VecDeque<TranscriptEntry>,
    /// Sum of the kept entries' text lengths.
    bytes: u64,
    /// Entries dropped for the bounds.
    dropped: u64,
    /// The index of the next entry.
    next_index: u64,
    /// Entries the agent sent again (an index already stored), ignored.
    duplicates: u64,
    /// Indexes skipped by an agent that sent a higher index than the next one.
    missing: u64,
    entries_max: u32,
    bytes_max: u32,
}

impl Transcript {
    pub fn new(entries_max: u32, bytes_max: u32) -> Transcript {
        Transcript {
            entries: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            next_index: 0,
            duplicates: 0,
            missing: 0,
            entries_max: entries_max.max(1),
            bytes_max: bytes_max.max(1),
        }
    }

    /// Appends an entry at `index` (the next one when `None`). Returns whether it was
    /// stored: an index below the next one is a duplicate and is ignored.
    pub fn push(&mut self, at: UnixMillis, index: Option<u64>, role: TranscriptRole, text: String) -> bool {
        let index = index.unwrap_or(self.next_index);
        if index < self.next_index {
            self.duplicates += 1;
            return false;
        }
        self.missing += index - self.next_index;
        self.next_index = index + 1;
        let len = text.len() as u64;
        while !self.entries.is_empty()
            && (self.entries.len() >= self.entries_max as usize
                || self.bytes + len > u64::from(self.bytes_max))
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.text.len() as u64;
                self.dropped += 1;
            }
        }
        if len > u64::from(self.bytes_max) {
            // Larger than the whole bound on its own: counted, not kept.
            self.dropped += 1;
            return true;
        }
        self.bytes += len;
        self.entries.push_back(TranscriptEntry { index, at, role, text });
        true
    }

    pub fn entries(&self) -> impl Iterator<Item = &TranscriptEntry> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn missing(&self) -> u64 {
        self.missing
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// A mark waiting for the caller to hear the agent audio before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingMark {
    name: String,
    /// Played when the caller has heard this many agent frames.
    at_frame: u64,
}

/// What the session reports about the agent leg, or what the agent sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentInput<'a> {
    /// The leg is up and its `start` was sent.
    Connected,
    /// Audio to play to the caller, in the call's format.
    Audio(&'a [u8]),
    /// A text message from the agent.
    Message(FromAgent),
    /// The leg went down; the session reconnects (`reason` is the error code).
    Lost { reason: String },
    /// The session gave up on the agent (reconnect attempts spent, or no agent configured).
    Failed { reason: String },
}

/// Running state of the agent program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub params: AgentParams,
    transcript: Transcript,
    /// An agent leg was established for this call before: the next `start` resumes.
    connected_before: bool,
    /// A leg is up in this session (not checkpointed in effect: every attach clears it).
    connected: bool,
    /// `end_of_turn` messages received.
    turns: u64,
    /// Agent frames handed to the call for playing.
    frames_emitted: u64,
    /// Agent frames the caller has heard (as far as the played position tells).
    frames_heard: u64,
    marks: VecDeque<PendingMark>,
    /// The last mark whose audio the caller heard.
    last_mark: Option<String>,
    clock: FrameClock,
    /// Agent audio cut into frames, waiting to be played. Not checkpointed (see the module
    /// docs): a resumed call starts with none.
    #[serde(skip)]
    playback: VecDeque<Vec<u8>>,
    /// The tail of agent audio shorter than a frame, played once more audio or a mark or
    /// the end of the turn follows.
    #[serde(skip)]
    partial: Vec<u8>,
}

impl AgentState {
    pub fn new(params: AgentParams) -> AgentState {
        let transcript = Transcript::new(
            params.transcript_entries_max.unwrap_or(DEFAULT_TRANSCRIPT_ENTRIES_MAX),
            params.transcript_bytes_max.unwrap_or(DEFAULT_TRANSCRIPT_BYTES_MAX),
        );
        AgentState {
            params,
            transcript,
            connected_before: false,
            connected: false,
            turns: 0,
            frames_emitted: 0,
            frames_heard: 0,
            marks: VecDeque::new(),
            last_mark: None,
            clock: FrameClock::default(),
            playback: VecDeque::new(),
            partial: Vec::new(),
        }
    }

    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// Whether a leg is up in this session.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether a leg was ever established for the call.
    pub fn connected_before(&self) -> bool {
        self.connected_before
    }

    pub fn last_mark(&self) -> Option<&str> {
        self.last_mark.as_deref()
    }

    /// Agent frames waiting to be played.
    pub fn playback_frames(&self) -> usize {
        self.playback.len()
    }

    /// Bytes of agent audio held for playing (the call's memory account counts them: they
    /// are not in the checkpoint).
    pub fn playback_bytes(&self) -> usize {
        self.playback.iter().map(Vec::len).sum::<usize>() + self.partial.len()
    }

    pub(crate) fn attach(&mut self, now: UnixMillis) {
        self.connected = false;
        // Marks whose audio was queued in a session that is gone will never be heard; no
        // leg is up yet to tell, and the next `start` carries the last mark heard.
        let mut fx = Effects::default();
        self.clear_marks(&mut fx);
        // A checkpoint taken while audio played holds a running clock: start afresh.
        self.clock.stop();
        self.start_clock(now);
    }

    pub(crate) fn detach(&mut self) {
        self.connected = false;
        self.clock.stop();
    }

    pub(crate) fn next_deadline(&self) -> Option<UnixMillis> {
        self.clock.deadline()
    }

    /// Caller audio goes to the agent while a leg is up (the session bounds the queue).
    pub(crate) fn audio(&mut self, payload: &[u8], fx: &mut Effects) {
        if self.connected {
            fx.to_agent.push(ToAgent::Audio(payload.to_vec()));
        }
    }

    pub(crate) fn dtmf(&mut self, digit: char, fx: &mut Effects) {
        if self.connected {
            fx.to_agent.push(ToAgent::Dtmf { digit });
        }
    }

    /// The client reports what it played: `unplayed` frames sent are still unheard.
    pub(crate) fn played(&mut self, unplayed: u64, fx: &mut Effects) {
        self.frames_heard = self.frames_heard.max(self.frames_emitted.saturating_sub(unplayed));
        self.fire_heard_marks(fx);
    }

    pub(crate) fn run_due(&mut self, now: UnixMillis, fx: &mut Effects) {
        let (emit, skipped) = self.clock.take_due(now);
        fx.dropped_frames += skipped.min(self.playback.len() as u64);
        for _ in 0..skipped {
            if self.playback.pop_front().is_none() {
                break;
            }
            // Skipped frames count as emitted: they were due, and the marks after them
            // must not wait for audio that will never come.
            self.frames_emitted += 1;
        }
        for _ in 0..emit {
            let Some(frame) = self.playback.pop_front() else { break };
            self.frames_emitted += 1;
            fx.frames.push(frame);
        }
        if self.playback.is_empty() {
            self.clock.stop();
        }
    }

    pub(crate) fn input(
        &mut self,
        now: UnixMillis,
        input: AgentInput<'_>,
        audio: AudioFormat,
        fx: &mut Effects,
    ) {
        match input {
            AgentInput::Connected => {
                let resumed = self.connected_before;
                self.connected = true;
                self.connected_before = true;
                fx.events.push(ProgramEvent::Agent {
                    event: if resumed { "resumed" } else { "connected" },
                    detail: None,
                });
            }
            AgentInput::Lost { reason } => {
                self.connected = false;
                fx.events.push(ProgramEvent::Agent { event: "lost", detail: Some(reason) });
            }
            AgentInput::Failed { reason } => {
                self.connected = false;
                fx.events.push(ProgramEvent::Agent { event: "failed", detail: Some(reason) });
                match self.params.fallback.take() {
                    Some(program) => fx.switch_to = Some(*program),
                    None => fx.end = Some(EndReason::AgentUnavailable),
                }
            }
            AgentInput::Audio(payload) => self.queue_audio(now, payload, audio, fx),
            AgentInput::Message(msg) => self.message(now, msg, fx),
        }
    }

    fn message(&mut self, now: UnixMillis, msg: FromAgent, fx: &mut Effects) {
        match msg {
            FromAgent::Mark { name } => {
                self.flush_partial(now);
                let at_frame = self.frames_emitted + self.playback.len() as u64;
                if at_frame <= self.frames_heard {
                    self.last_mark = Some(name.clone());
                    fx.to_agent.push(ToAgent::Mark { name, cleared: false });
                    fx.durable = true;
                    return;
                }
                if self.marks.len() >= AGENT_MARKS_MAX
                    && let Some(old) = self.marks.pop_front()
                {
                    fx.to_agent.push(ToAgent::Mark { name: old.name, cleared: true });
                }
                self.marks.push_back(PendingMark { name, at_frame });
            }
            FromAgent::Clear {} => {
                self.playback.clear();
                self.partial.clear();
                self.clock.stop();
                self.clear_marks(fx);
                fx.clear = true;
            }
            FromAgent::Transfer { target } => {
                fx.events.push(ProgramEvent::Agent { event: "transfer", detail: Some(target) });
                fx.end = Some(EndReason::Transferred);
            }
            FromAgent::Hangup { reason } => {
                fx.events.push(ProgramEvent::Agent { event: "hangup", detail: reason });
                fx.end = Some(EndReason::Completed);
            }
            FromAgent::EndOfTurn {} => {
                self.flush_partial(now);
                self.turns += 1;
                fx.durable = true;
            }
            FromAgent::Transcript { index, role, text } => {
                if self.transcript.push(now, index, role, text) {
                    fx.durable = true;
                }
            }
        }
    }

    fn queue_audio(&mut self, now: UnixMillis, payload: &[u8], audio: AudioFormat, fx: &mut Effects) {
        let frame_bytes = audio.bytes_for_ms(FRAME_MS as u32).max(1);
        let mut rest = payload;
        if !self.partial.is_empty() {
            let take = (frame_bytes - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() == frame_bytes {
                let frame = std::mem::take(&mut self.partial);
                self.push_frame(frame, fx);
            }
        }
        let mut chunks = rest.chunks_exact(frame_bytes);
        for chunk in &mut chunks {
            self.push_frame(chunk.to_vec(), fx);
        }
        self.partial.extend_from_slice(chunks.remainder());
        self.start_clock(now);
    }

    fn push_frame(&mut self, frame: Vec<u8>, fx: &mut Effects) {
        let max = self.params.playback_frames_max.unwrap_or(DEFAULT_PLAYBACK_FRAMES_MAX).max(1) as usize;
        while self.playback.len() >= max {
            self.playback.pop_front();
            // The dropped frame still counts as played out for the marks after it.
            self.frames_emitted += 1;
            fx.dropped_frames += 1;
        }
        self.playback.push_back(frame);
    }

    /// A mark or the end of a turn: the audio tail shorter than a frame plays now.
    fn flush_partial(&mut self, now: UnixMillis) {
        if !self.partial.is_empty() {
            let frame = std::mem::take(&mut self.partial);
            let mut fx = Effects::default();
            self.push_frame(frame, &mut fx);
            self.start_clock(now);
        }
    }

    fn start_clock(&mut self, now: UnixMillis) {
        if self.clock.deadline().is_none() && !self.playback.is_empty() {
            self.clock.start(now);
        }
    }

    fn fire_heard_marks(&mut self, fx: &mut Effects) {
        while let Some(mark) = self.marks.front() {
            if mark.at_frame > self.frames_heard {
                break;
            }
            let Some(mark) = self.marks.pop_front() else { break };
            self.last_mark = Some(mark.name.clone());
            fx.to_agent.push(ToAgent::Mark { name: mark.name, cleared: false });
            fx.durable = true;
        }
    }

    /// Every pending mark is reported `cleared`: its audio will never be heard.
    fn clear_marks(&mut self, fx: &mut Effects) {
        for mark in self.marks.drain(..) {
            fx.to_agent.push(ToAgent::Mark { name: mark.name, cleared: true });
        }
        // Frames queued but never heard are written off, so later marks line up with
        // later audio.
        self.frames_emitted = self.frames_emitted.max(self.frames_heard);
        self.frames_heard = self.frames_emitted;
    }
}

/// The `start` for a new agent connection of `call`, if its program is an agent.
pub fn start_message(call: &Call) -> Option<ToAgent> {
    let ProgramState::Agent(state) = &call.program else {
        return None;
    };
    let t = &state.transcript;
    Some(ToAgent::Start(Box::new(Start {
        version: AGENT_PROTOCOL_VERSION,
        call_id: call.id.as_str().to_owned(),
        tenant: call.tenant.as_str().to_owned(),
        audio: call.audio,
        resume: state.connected_before,
        context: state.params.context.clone(),
        transcript: t
            .entries()
            .map(|e| TranscriptLine { index: e.index, role: e.role, text: e.text.clone(), at_ms: e.at.0 })
            .collect(),
        transcript_next_index: t.next_index(),
        transcript_dropped: t.dropped(),
        turns: state.turns,
        last_mark: state.last_mark.clone(),
    })))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// After every push, in any order of indexes and sizes: both bounds hold, indexes
        /// strictly increase, the byte count is exact, and `next_index` is above them all.
        #[test]
        fn transcript_bounds_hold_after_every_push(
            entries_max in 1u32..6,
            bytes_max in 1u32..40,
            pushes in proptest::collection::vec((proptest::option::of(0u64..30), 0usize..20), 0..60),
        ) {
            let mut t = Transcript::new(entries_max, bytes_max);
            for (i, (index, len)) in pushes.into_iter().enumerate() {
                t.push(UnixMillis(i as u64), index, TranscriptRole::Agent, "x".repeat(len));
                prop_assert!(t.len() <= entries_max as usize);
                prop_assert!(t.bytes() <= u64::from(bytes_max));
                prop_assert_eq!(t.bytes(), t.entries().map(|e| e.text.len() as u64).sum::<u64>());
                let indexes: Vec<u64> = t.entries().map(|e| e.index).collect();
                prop_assert!(indexes.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(indexes.last().is_none_or(|last| *last < t.next_index()));
            }
        }
    }

    #[test]
    fn transcript_drops_oldest_for_either_bound_and_ignores_duplicates() {
        let mut t = Transcript::new(3, 10);
        for (i, text) in ["aa", "bb", "cc", "dd"].into_iter().enumerate() {
            assert!(t.push(UnixMillis(i as u64), None, TranscriptRole::Agent, text.into()));
        }
        assert_eq!(t.entries().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(t.dropped(), 1);
        // Bytes: 6 kept, 8 more need two entries to go (one for the count, one for bytes).
        assert!(t.push(UnixMillis(9), Some(4), TranscriptRole::Caller, "eeeeeeee".into()));
        assert_eq!(t.entries().map(|e| e.index).collect::<Vec<_>>(), [3, 4]);
        assert_eq!((t.dropped(), t.bytes()), (3, 10));
        assert!(!t.push(UnixMillis(10), Some(2), TranscriptRole::Agent, "x".into()));
        assert_eq!(t.duplicates(), 1);
        assert!(t.push(UnixMillis(11), Some(7), TranscriptRole::Agent, "y".into()));
        assert_eq!((t.missing(), t.next_index()), (2, 8));
        // An entry above the whole byte bound is counted, not kept.
        assert!(t.push(UnixMillis(12), None, TranscriptRole::Agent, "z".repeat(11)));
        assert_eq!(t.next_index(), 9);
        assert!(t.is_empty());
    }

    #[test]
    fn params_are_validated() {
        let ok = AgentParams {
            url: Some("ws://127.0.0.1:9000/agent".into()),
            token: Some(Secret::new("abc")),
            context: Some("{}".into()),
            transcript_entries_max: Some(10),
            transcript_bytes_max: None,
            playback_frames_max: Some(100),
            fallback: Some(Box::new(ProgramSpec::Echo(crate::program::EchoParams { delay_ms: 0 }))),
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            (AgentParams { url: Some("http://x".into()), ..ok.clone() }, "url"),
            (AgentParams { url: Some("wss://x".into()), ..ok.clone() }, "url"),
            (AgentParams { url: Some("ws:///path".into()), ..ok.clone() }, "url"),
            (AgentParams { url: Some(format!("ws://{}", "h".repeat(600))), ..ok.clone() }, "url"),
            (AgentParams { token: Some(Secret::new("a b")), ..ok.clone() }, "token"),
            (AgentParams { context: Some("c".repeat(5000)), ..ok.clone() }, "context"),
            (AgentParams { transcript_entries_max: Some(0), ..ok.clone() }, "transcript_entries_max"),
            (AgentParams { transcript_bytes_max: Some(2 << 20), ..ok.clone() }, "transcript_bytes_max"),
            (AgentParams { playback_frames_max: Some(0), ..ok.clone() }, "playback_frames_max"),
            (
                AgentParams { fallback: Some(Box::new(ProgramSpec::Agent(ok.clone()))), ..ok.clone() },
                "fallback",
            ),
        ];
        for (params, field) in bad {
            match params.validate() {
                Err(SpecError::InvalidParam { field: f, .. }) => assert_eq!(f, field, "{params:?}"),
                other => panic!("{params:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_token_is_redacted_everywhere_but_in_the_checkpoint() {
        let params = AgentParams {
            url: Some("ws://a".into()),
            token: Some(Secret::new("s3cret")),
            context: None,
            transcript_entries_max: None,
            transcript_bytes_max: None,
            playback_frames_max: None,
            fallback: None,
        };
        let shown = format!("{params:?} {}", serde_json::to_string(&params).unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(REDACTED));
        let bytes = postcard::to_allocvec(&params).unwrap();
        let back: AgentParams = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.token.unwrap().expose(), "s3cret");
        let parsed: AgentParams = serde_json::from_str(r#"{"url": "ws://a", "token": "t0k"}"#).unwrap();
        assert_eq!(parsed.token.unwrap().expose(), "t0k");
    }
}
