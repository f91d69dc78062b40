//! [`Call`]: the state of one call and the sans-IO step function that drives it.

use callworker_protocol::AudioFormat;
use serde::{Deserialize, Serialize};

use crate::dsp;
use crate::end::{EndReason, ResumeCause};
use crate::ids::{CallId, TenantId};
use crate::program::{
    Action, AgentInput, Effects, MuteDirection, Overlay, ProgramEvent, ProgramSpec, ProgramState, SpecError,
    ToneSegment,
};
use crate::time::UnixMillis;
use crate::timeline::{EventKind, Timeline};

/// Who placed the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Which media protocol carries the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Native,
    Twilio,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Native => "native",
            Transport::Twilio => "twilio",
        }
    }
}

/// Where a call is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// Created through the API; no media session has attached yet.
    Created,
    /// A media session has attached at least once; the call is live.
    Active,
    /// Ended, with [`Call::end_reason`] set.
    Ended,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Created => "created",
            CallStatus::Active => "active",
            CallStatus::Ended => "ended",
        }
    }
}

/// Per-call bounds, from configuration, carried in the call so a resumed call keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallLimits {
    /// The call ends with `max_duration` this long after it was created.
    pub max_duration_ms: u64,
    /// Timeline entries kept; when full the oldest is dropped and counted.
    pub timeline_events_max: u32,
    /// Frames the echo program may hold back for its delay; when full the oldest is dropped
    /// and counted in `media.outbound_dropped_frames`.
    pub delay_frames_max: u32,
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits { max_duration_ms: 4 * 60 * 60 * 1000, timeline_events_max: 256, delay_frames_max: 250 }
    }
}

/// Which directions of a call's audio are recorded (stored with its checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSettings {
    #[serde(default)]
    /// Caller audio, as applied (in inbound sequence order).
    pub inbound: bool,
    /// Audio sent to the caller.
    #[serde(default)]
    pub outbound: bool,
}

impl RecordingSettings {
    pub fn any(self) -> bool {
        self.inbound || self.outbound
    }
}

/// The Twilio call behind a Media Streams session, kept so the call can be rescued through
/// Twilio's REST API when its worker hangs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwilioLeg {
    pub account_sid: String,
    pub call_sid: String,
    pub stream_sid: String,
}

/// What the control API (or a Twilio webhook) asks for when creating a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSpec {
    pub tenant: TenantId,
    pub direction: Direction,
    pub from: Option<String>,
    pub to: Option<String>,
    pub program: ProgramSpec,
    /// Audio format of the call's media (both directions).
    pub audio: AudioFormat,
    pub limits: CallLimits,
    pub recording: RecordingSettings,
}

/// A resume: the call moved to a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub cause: ResumeCause,
    /// Milliseconds between the previous session's last input and this attach.
    pub gap_ms: u64,
}

/// Where the call's media stands. Sequence numbers are the call's own, stable across
/// sessions and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MediaPositions {
    /// Highest inbound audio sequence number applied (0 before the first frame).
    pub inbound_applied_seq: u64,
    /// Inbound frames that arrived with an already-applied sequence number (dropped).
    pub inbound_duplicate_frames: u64,
    /// Inbound frames skipped over by a forward jump in sequence numbers.
    pub inbound_missing_frames: u64,
    /// Sequence number the next outbound audio frame will carry (starts at 1).
    pub outbound_next_seq: u64,
    /// Highest outbound sequence number the client reported as played (0 if none).
    pub outbound_played_seq: u64,
    /// Outbound frames dropped because a per-call bound was full.
    pub outbound_dropped_frames: u64,
}

/// Which ways of the call's audio are silenced by `mute` actions (format 3). Part of the
/// call's state, so a mute survives a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mute {
    /// The program hears silence instead of the caller (the recording keeps what the caller
    /// sent: it is the session that records inbound audio, before the program).
    pub inbound: bool,
    /// The caller hears silence instead of the program (and the outbound recording holds
    /// that silence, since it records what was sent).
    pub outbound: bool,
}

/// One call: identity, status, media positions, program state and timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: CallId,
    pub tenant: TenantId,
    pub direction: Direction,
    pub from: Option<String>,
    pub to: Option<String>,
    pub audio: AudioFormat,
    pub limits: CallLimits,
    pub status: CallStatus,
    pub created_at: UnixMillis,
    /// When a media session first attached.
    pub started_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    pub end_reason: Option<EndReason>,
    /// Transport of the current (or last) media session.
    pub transport: Option<Transport>,
    /// Whether a media session is attached right now.
    pub attached: bool,
    pub media: MediaPositions,
    pub program: ProgramState,
    /// A `play_tone` action's tone, replacing the program's audio while it plays.
    pub overlay: Option<Overlay>,
    pub timeline: Timeline,
    /// Which tracks are recorded (format 2).
    pub recording: RecordingSettings,
    /// The Twilio call carrying this one, once a Twilio stream attached (format 2).
    pub twilio: Option<TwilioLeg>,
    /// Why the last session let go of the call when it moved it on purpose (migration,
    /// drain); the next attach reports it as the resume cause (format 2).
    pub detach_cause: Option<ResumeCause>,
    /// Which ways of the audio are muted (format 3).
    pub mute: Mute,
    /// Segments of a `play` action still to come after the current overlay, in order
    /// (format 3). Bounded by the action's own bound (`TONE_SEGMENTS_MAX`).
    pub play_queue: std::collections::VecDeque<ToneSegment>,
}

/// Something that happened to the call, fed to [`Call::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Input<'a> {
    /// A media session attached and drives the call from now on; `resume` is set when the
    /// call had been attached before.
    Attached { transport: Transport, resume: Option<Resume> },
    /// The media session went away without ending the call. The call waits for a resume;
    /// `cause` is set when the worker moved the call on purpose (migration, drain), and
    /// becomes the cause of the next resume.
    Detached { cause: Option<ResumeCause> },
    /// Caller audio in the call's format, with the call's inbound sequence number.
    Audio { seq: u64, payload: &'a [u8] },
    /// A DTMF digit (`0-9`, `*`, `#`, `A-D`).
    Dtmf { digit: char },
    /// Outbound audio up to and including `upto_seq` has been played to the caller.
    Played { upto_seq: u64 },
    /// An action from the control API.
    Action(Action),
    /// The call is ended from outside the program (hang-up, API, limits, governor).
    End(EndReason),
    /// The deadline returned by [`Call::poll_timeout`] has passed.
    Timeout,
    /// The agent leg's news or an agent message (agent program; ignored otherwise).
    Agent(AgentInput<'a>),
}

/// What the call asks its session and actor to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this audio (in the call's format) to the caller.
    Audio { seq: u64, payload: Vec<u8> },
    /// Discard audio sent but not yet played.
    Clear,
    /// Tell the client about an event (native `event` message).
    Notify { name: &'static str, detail: Option<String> },
    /// A semantic transition happened: checkpoint soon.
    Checkpoint,
    /// The call ended with this reason; close the session.
    End(EndReason),
    /// Send this to the call's agent leg (agent program).
    Agent(callworker_protocol::agent::ToAgent),
}

impl Call {
    /// A new call in status `created`, its program validated.
    pub fn new(id: CallId, spec: CallSpec, now: UnixMillis) -> Result<Call, SpecError> {
        spec.program.validate()?;
        spec.audio.validate().map_err(|e| SpecError::UnsupportedAudio(e.to_string()))?;
        let mut timeline = Timeline::new(spec.limits.timeline_events_max);
        timeline.push(now, EventKind::Created { program: spec.program.name().to_owned() });
        Ok(Call {
            id,
            tenant: spec.tenant,
            direction: spec.direction,
            from: spec.from,
            to: spec.to,
            audio: spec.audio,
            limits: spec.limits,
            status: CallStatus::Created,
            created_at: now,
            started_at: None,
            ended_at: None,
            end_reason: None,
            transport: None,
            attached: false,
            media: MediaPositions { outbound_next_seq: 1, ..MediaPositions::default() },
            program: ProgramState::new(&spec.program),
            overlay: None,
            timeline,
            recording: spec.recording,
            twilio: None,
            detach_cause: None,
            mute: Mute::default(),
            play_queue: std::collections::VecDeque::new(),
        })
    }

    /// Applies one input at time `now`, appending what the call wants done to `out`.
    /// Inputs to an ended call are ignored.
    ///
    /// Timers (program frames, the overlay, the maximum duration) run only on
    /// [`Input::Timeout`], so every other input's outputs depend on that input alone.
    pub fn handle(&mut self, now: UnixMillis, input: Input<'_>, out: &mut Vec<Output>) {
        if self.status == CallStatus::Ended {
            return;
        }
        match input {
            Input::Attached { transport, resume } => self.on_attached(now, transport, resume, out),
            Input::Detached { cause } => self.on_detached(now, cause, out),
            Input::Audio { seq, payload } => self.on_audio(now, seq, payload, out),
            Input::Dtmf { digit } => self.on_dtmf(now, digit, out),
            Input::Played { upto_seq } => {
                // A position at or beyond the next sequence number was never sent: ignore
                // it rather than let a confused client claim audio it cannot have heard.
                if upto_seq < self.media.outbound_next_seq {
                    self.media.outbound_played_seq = self.media.outbound_played_seq.max(upto_seq);
                    let unplayed = self.media.outbound_next_seq - 1 - self.media.outbound_played_seq;
                    let mut fx = Effects::default();
                    self.program.played(unplayed, &mut fx);
                    self.apply_program_effects(now, fx, out);
                }
            }
            Input::Action(action) => self.on_action(now, action, out),
            Input::End(reason) => self.end(now, reason, out),
            Input::Timeout => self.on_timeout(now, out),
            Input::Agent(input) => {
                if !self.attached {
                    return;
                }
                let mut fx = Effects::default();
                self.program.agent(now, input, self.audio, &mut fx);
                self.apply_program_effects(now, fx, out);
            }
        }
    }

    /// When the call next needs [`Input::Timeout`] (program timers, max duration).
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        if self.status == CallStatus::Ended {
            return None;
        }
        let mut deadline = self.max_duration_at();
        if self.attached {
            let timers =
                [self.program.next_deadline(), self.overlay.as_ref().and_then(Overlay::next_deadline)];
            for t in timers.into_iter().flatten() {
                deadline = deadline.min(t);
            }
        }
        Some(deadline)
    }

    /// Binds a call loaded from a checkpoint to this worker's IVR definitions: a call running
    /// a named definition gets its recorded prompts from `definitions`. When this worker's
    /// copy differs from the one the call started with, the call continues in the new one
    /// (same menu if it still exists, prompt from its start) and the timeline says so.
    /// `Err(name)` when this worker has no definition of that name: the session must not
    /// take the call over (another worker may have it).
    pub fn bind_ivr(
        &mut self,
        now: UnixMillis,
        definitions: &std::collections::BTreeMap<String, crate::program::IvrParams>,
    ) -> Result<(), String> {
        let ProgramState::Ivr(state) = &mut self.program else { return Ok(()) };
        let Some(wanted) = state.params.definition.clone() else { return Ok(()) };
        let Some(found) = definitions.get(&wanted.name) else { return Err(wanted.name) };
        if let crate::program::BindOutcome::Changed { name } = state.bind(found) {
            self.timeline.push(now, EventKind::IvrDefinitionChanged { definition: name });
        }
        Ok(())
    }

    /// The client already holds server audio numbered up to `upto_seq`, sent by a session
    /// whose last checkpoint did not cover it: new audio is numbered after it, so the
    /// client, which drops numbers it has already seen, plays the regenerated frames. Call
    /// it after the attach (whose rewind counts from the checkpoint's own numbering).
    pub fn skip_outbound_seq_past(&mut self, upto_seq: u64) {
        self.media.outbound_next_seq = self.media.outbound_next_seq.max(upto_seq.saturating_add(1));
    }

    /// Whether the audio this call regenerates after a resume, from its last checkpoint, is
    /// byte for byte what the previous session sent under the same numbers: the echo of the
    /// caller audio the client replays is; then the client's dedup by number must drop what
    /// it already has, so numbering must not skip ([`Call::skip_outbound_seq_past`]). Tone
    /// and IVR step back to the frame the caller heard and an agent sends new audio: their
    /// numbers must move past what the client has seen.
    pub fn regenerates_sent_audio(&self) -> bool {
        matches!(self.program, ProgramState::Echo(_))
    }

    /// Name of the running program (`"echo"`, `"tone"`).
    pub fn program_name(&self) -> &'static str {
        self.program.name()
    }

    /// When the call reaches its maximum duration.
    pub fn max_duration_at(&self) -> UnixMillis {
        self.created_at.add_ms(self.limits.max_duration_ms)
    }

    fn on_attached(
        &mut self,
        now: UnixMillis,
        transport: Transport,
        resume: Option<Resume>,
        out: &mut Vec<Output>,
    ) {
        self.status = CallStatus::Active;
        self.started_at.get_or_insert(now);
        self.attached = true;
        self.detach_cause = None;
        self.transport = Some(transport);
        let kind = match resume {
            None => EventKind::Attached { transport },
            Some(r) => EventKind::Resumed { transport, cause: r.cause, gap_ms: r.gap_ms },
        };
        self.timeline.push(now, kind);
        // Frames sent but never played died with the previous session: the caller continues
        // from what they actually heard (the last played position), on a fresh clock.
        if resume.is_some() {
            let unplayed =
                self.media.outbound_next_seq.saturating_sub(1).saturating_sub(self.media.outbound_played_seq);
            self.program.rewind(unplayed, self.audio);
        }
        self.program.attach(now);
        if let Some(overlay) = &mut self.overlay {
            overlay.attach(now);
        }
        out.push(Output::Checkpoint);
    }

    fn on_detached(&mut self, now: UnixMillis, cause: Option<ResumeCause>, out: &mut Vec<Output>) {
        if !self.attached {
            return;
        }
        self.attached = false;
        self.detach_cause = cause;
        self.timeline.push(now, EventKind::Detached);
        self.program.detach();
        if let Some(overlay) = &mut self.overlay {
            overlay.detach();
        }
        // The call's position matters most now: another worker may resume it next.
        out.push(Output::Checkpoint);
    }

    fn on_audio(&mut self, now: UnixMillis, seq: u64, payload: &[u8], out: &mut Vec<Output>) {
        let applied = self.media.inbound_applied_seq;
        if seq <= applied {
            self.media.inbound_duplicate_frames += 1;
            return;
        }
        self.media.inbound_missing_frames += seq - applied - 1;
        self.media.inbound_applied_seq = seq;
        if !self.attached {
            // Nobody to play to; the position still counts so a resume does not replay it.
            return;
        }
        let mut fx = Effects::default();
        if self.mute.inbound {
            // The program hears silence of the same length, so its timing is unchanged.
            let silence = vec![silence_byte(self.audio.encoding); payload.len()];
            self.program.audio(now, &silence, &self.limits, self.audio, &mut fx);
        } else {
            self.program.audio(now, payload, &self.limits, self.audio, &mut fx);
        }
        self.apply_program_effects(now, fx, out);
    }

    fn on_dtmf(&mut self, now: UnixMillis, digit: char, out: &mut Vec<Output>) {
        // The protocol layer validates digits; anything else that slips through is ignored
        // rather than recorded, so the timeline only ever holds real key presses.
        if !dsp::is_dtmf_digit(digit) {
            return;
        }
        self.timeline.push(now, EventKind::Dtmf { digit });
        out.push(Output::Notify { name: "dtmf_received", detail: Some(digit.to_string()) });
        out.push(Output::Checkpoint);
        let mut fx = Effects::default();
        self.program.dtmf(now, digit, self.audio, &mut fx);
        self.apply_program_effects(now, fx, out);
    }

    /// Digits of an `inject_dtmf` action, delivered one by one as key presses would be,
    /// recorded with source `api`. A digit that ends the call (a hang-up digit) ends it, and
    /// the rest are not delivered.
    fn inject_dtmf(&mut self, now: UnixMillis, digits: &str, out: &mut Vec<Output>) {
        for digit in digits.chars() {
            if self.status == CallStatus::Ended {
                return;
            }
            self.timeline.push(now, EventKind::DtmfInjected { digit });
            let mut fx = Effects::default();
            self.program.dtmf(now, digit, self.audio, &mut fx);
            self.apply_program_effects(now, fx, out);
        }
        out.push(Output::Checkpoint);
    }

    fn on_action(&mut self, now: UnixMillis, action: Action, out: &mut Vec<Output>) {
        // The API refuses invalid actions with a reason; one that reaches the call anyway
        // (a bug, or a hand-made request) is ignored rather than half-applied.
        if action.validate().is_err() {
            return;
        }
        self.timeline.push(now, EventKind::ActionApplied { action: action.name().to_owned() });
        match action {
            Action::PlayTone { freqs_hz, duration_ms } => {
                self.play_queue.clear();
                self.start_overlay(now, ToneSegment { freqs_hz, duration_ms });
                out.push(Output::Checkpoint);
            }
            Action::SwitchProgram { program } => self.switch_program(now, &program, out),
            Action::Hangup => self.end(now, EndReason::ApiEnded, out),
            Action::Play { segments } => {
                self.play_queue = segments.into();
                if let Some(first) = self.play_queue.pop_front() {
                    self.start_overlay(now, first);
                }
                out.push(Output::Checkpoint);
            }
            Action::InjectDtmf { digits } => self.inject_dtmf(now, &digits, out),
            Action::Mute { direction } => self.set_mute(direction, true, out),
            Action::Unmute { direction } => self.set_mute(direction, false, out),
            Action::Transfer { to } => {
                out.push(Output::Notify { name: "transfer", detail: Some(to) });
                self.end(now, EndReason::Transferred, out);
            }
        }
    }

    /// Plays `segment` over the program from `now` (replacing any overlay playing).
    fn start_overlay(&mut self, now: UnixMillis, segment: ToneSegment) {
        let mut overlay = Overlay::new(segment.freqs_hz, segment.duration_ms);
        if self.attached {
            overlay.attach(now);
        }
        self.overlay = Some(overlay);
    }

    fn set_mute(&mut self, direction: MuteDirection, on: bool, out: &mut Vec<Output>) {
        let (inbound, outbound) = direction.ways();
        if inbound {
            self.mute.inbound = on;
        }
        if outbound {
            self.mute.outbound = on;
        }
        out.push(Output::Checkpoint);
    }

    fn on_timeout(&mut self, now: UnixMillis, out: &mut Vec<Output>) {
        if now >= self.max_duration_at() {
            self.end(now, EndReason::MaxDuration, out);
            return;
        }
        if !self.attached {
            return;
        }
        if let Some(overlay) = &mut self.overlay {
            let mut fx = Effects::default();
            overlay.run_due(now, self.audio, &mut fx);
            // Cleared only once its last frame has played, so the program's frames due at
            // the same instant take over without overlapping it.
            let finished = overlay.is_finished(now);
            self.media.outbound_dropped_frames += fx.dropped_frames;
            for frame in fx.frames {
                self.emit_audio(frame, out);
            }
            if finished {
                // The next segment of a `play` takes over at once; its first frame is due
                // now and is emitted on the next timeout, at this same instant.
                self.overlay = None;
                if let Some(next) = self.play_queue.pop_front() {
                    self.start_overlay(now, next);
                }
            }
        }
        let mut fx = Effects::default();
        self.program.run_due(now, self.audio, &mut fx);
        self.apply_program_effects(now, fx, out);
    }

    /// Numbers and emits a program's frames (unless an overlay replaces them), counts its
    /// drops and ends the call if the program asked to.
    fn apply_program_effects(&mut self, now: UnixMillis, fx: Effects, out: &mut Vec<Output>) {
        self.media.outbound_dropped_frames += fx.dropped_frames;
        if fx.clear {
            out.push(Output::Clear);
        }
        if self.overlay.is_none() {
            for frame in fx.frames {
                self.emit_audio(frame, out);
            }
        }
        out.extend(fx.to_agent.into_iter().map(Output::Agent));
        let transition = !fx.events.is_empty() || fx.durable;
        for event in fx.events {
            let kind = match event {
                ProgramEvent::MenuEntered { menu } => EventKind::MenuEntered { menu },
                ProgramEvent::DigitsCollected { menu, digits } => EventKind::DigitsCollected { menu, digits },
                ProgramEvent::DtmfDetected { digit } => {
                    out.push(Output::Notify { name: "dtmf_detected", detail: Some(digit.to_string()) });
                    EventKind::DtmfDetected { digit }
                }
                ProgramEvent::BargeIn { menu, by, prompt_frames_sent } => {
                    // What the caller heard of the prompt: the frames sent, less those sent
                    // after the last position the client reported as played (now cleared).
                    let played_upto_seq = self.media.outbound_played_seq;
                    let unplayed =
                        self.media.outbound_next_seq.saturating_sub(1).saturating_sub(played_upto_seq);
                    let prompt_frames_heard = prompt_frames_sent.saturating_sub(unplayed);
                    out.push(Output::Notify {
                        name: "barge_in",
                        detail: Some(prompt_frames_heard.to_string()),
                    });
                    EventKind::BargeIn { menu, by: by.to_owned(), played_upto_seq, prompt_frames_heard }
                }
                ProgramEvent::Agent { event, detail } => EventKind::Agent { event: event.to_owned(), detail },
            };
            self.timeline.push(now, kind);
        }
        if let Some(reason) = fx.end {
            self.end(now, reason, out);
        } else if let Some(program) = fx.switch_to {
            self.switch_program(now, &program, out);
        } else if transition {
            // Where the caller stands in a menu is a semantic transition: durable at once.
            out.push(Output::Checkpoint);
        }
    }

    /// Replaces the running program (an API action, or a program's own choice).
    fn switch_program(&mut self, now: UnixMillis, program: &ProgramSpec, out: &mut Vec<Output>) {
        self.program = ProgramState::new(program);
        if self.attached {
            self.program.attach(now);
        }
        self.timeline.push(now, EventKind::ProgramSwitched { program: program.name().to_owned() });
        out.push(Output::Clear);
        out.push(Output::Checkpoint);
    }

    fn emit_audio(&mut self, mut payload: Vec<u8>, out: &mut Vec<Output>) {
        if self.mute.outbound {
            // Same length and numbering: the caller hears silence, the positions stay true.
            payload.fill(silence_byte(self.audio.encoding));
        }
        let seq = self.media.outbound_next_seq;
        self.media.outbound_next_seq += 1;
        out.push(Output::Audio { seq, payload });
    }

    /// Ends the call once: later calls (and every later input) do nothing.
    fn end(&mut self, now: UnixMillis, reason: EndReason, out: &mut Vec<Output>) {
        if self.status == CallStatus::Ended {
            return;
        }
        self.status = CallStatus::Ended;
        self.ended_at = Some(now);
        self.end_reason = Some(reason);
        self.attached = false;
        self.program.detach();
        self.overlay = None;
        self.play_queue.clear();
        self.timeline.push(now, EventKind::Ended { reason });
        out.push(Output::Checkpoint);
        out.push(Output::End(reason));
    }
}

/// The byte that encodes silence in `encoding` (every sample of L16 silence is two zeros).
fn silence_byte(encoding: callworker_protocol::Encoding) -> u8 {
    use callworker_protocol::Encoding;
    match encoding {
        Encoding::Pcmu => callworker_protocol::codec::ULAW_SILENCE,
        Encoding::Pcma => callworker_protocol::codec::ALAW_SILENCE,
        Encoding::L16 => 0,
    }
}
