//! Call programs: what a call *does*. Each program is a pure state machine whose state is
//! serializable, so it resumes exactly on another worker.
//!
//! - [`echo`]: plays the caller's audio back, byte for byte, optionally delayed.
//! - [`tone`]: plays a configured tone/silence pattern and reacts to DTMF.
//! - [`ivr`]: menus of prompts navigated with DTMF, digit collection, retries, and choices
//!   that lead to other menus, other programs or a hang-up.
//! - [`overlay`]: a tone injected by the `play_tone` action over the program's audio.
//! - [`agent`]: a conversation with an external voice agent (the leg is the session's).
//!
//! Programs never see sequence numbers or the timeline: they produce frames and an optional
//! end into [`Effects`], and the [`Call`](crate::Call) numbers, filters and records them.

pub mod agent;
pub mod echo;
pub mod ivr;
pub mod overlay;
pub mod tone;

use callworker_protocol::AudioFormat;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::call::CallLimits;
use crate::dsp;
use crate::end::EndReason;
use crate::time::UnixMillis;

pub use agent::{AgentInput, AgentParams, AgentState, Secret, Transcript, TranscriptEntry};
pub use echo::{EchoParams, EchoState};
pub use ivr::{
    BindOutcome, Clip, IvrBargeIn, IvrChoice, IvrClips, IvrCollect, IvrDefinitionRef, IvrMenu, IvrParams,
    IvrState, PromptSegment,
};
pub use overlay::Overlay;
pub use tone::{ToneParams, ToneSegment, ToneState};

/// Length of one generated audio frame, in milliseconds (the telephony norm, and Twilio's).
pub const FRAME_MS: u64 = 20;
/// Frames a clocked program emits per step at most. A stalled actor that falls further
/// behind skips the excess (counted as dropped) instead of bursting seconds of audio into
/// the session's bounded send queue.
pub const FRAMES_PER_STEP_MAX: u64 = 10;
/// Longest echo delay, in milliseconds.
pub const ECHO_DELAY_MS_MAX: u32 = 5_000;
/// Most segments in a tone pattern.
pub const TONE_SEGMENTS_MAX: usize = 32;
/// Shortest tone segment or `play_tone`, in milliseconds (one frame).
pub const TONE_MS_MIN: u32 = 20;
/// Longest tone segment or `play_tone`, in milliseconds.
pub const TONE_MS_MAX: u32 = 60_000;
/// Highest tone frequency, in hertz: below the Nyquist frequency of 8 kHz audio, the lowest
/// supported rate. A spec does not know the call's rate, so it is checked against this.
pub const TONE_FREQ_HZ_MAX: u32 = 3_999;

/// A program and its parameters, as given to `POST /v1/calls` or a `switch_program` action:
/// `{"name": "echo", "params": {"delay_ms": 0}}`.
///
/// Binary formats get an externally tagged shape instead (postcard cannot decode adjacently
/// tagged enums: their tag is an identifier), chosen by `is_human_readable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgramSpec {
    Echo(EchoParams),
    Tone(ToneParams),
    Ivr(IvrParams),
    Agent(AgentParams),
}

#[derive(Serialize, Deserialize)]
#[serde(
    remote = "ProgramSpec",
    tag = "name",
    content = "params",
    rename_all = "snake_case",
    deny_unknown_fields
)]
enum ProgramSpecJson {
    Echo(EchoParams),
    Tone(ToneParams),
    Ivr(IvrParams),
    Agent(AgentParams),
}

#[derive(Serialize, Deserialize)]
#[serde(remote = "ProgramSpec")]
enum ProgramSpecBinary {
    Echo(EchoParams),
    Tone(ToneParams),
    Ivr(IvrParams),
    Agent(AgentParams),
}

impl Serialize for ProgramSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            ProgramSpecJson::serialize(self, serializer)
        } else {
            ProgramSpecBinary::serialize(self, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for ProgramSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            ProgramSpecJson::deserialize(deserializer)
        } else {
            ProgramSpecBinary::deserialize(deserializer)
        }
    }
}

impl ProgramSpec {
    pub fn name(&self) -> &'static str {
        match self {
            ProgramSpec::Echo(_) => "echo",
            ProgramSpec::Tone(_) => "tone",
            ProgramSpec::Ivr(_) => "ivr",
            ProgramSpec::Agent(_) => "agent",
        }
    }

    /// Checks every parameter against its bound.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            ProgramSpec::Echo(p) => {
                if p.delay_ms > ECHO_DELAY_MS_MAX {
                    return Err(invalid(
                        "delay_ms",
                        format!("{} ms is above the maximum of {ECHO_DELAY_MS_MAX} ms", p.delay_ms),
                    ));
                }
                Ok(())
            }
            ProgramSpec::Tone(p) => {
                validate_segments("segments", &p.segments)?;
                if let Some(digit) = p.hangup_digit
                    && !dsp::is_dtmf_digit(digit)
                {
                    return Err(invalid(
                        "hangup_digit",
                        format!("{digit:?} is not a DTMF digit (0-9, *, #, A-D)"),
                    ));
                }
                Ok(())
            }
            ProgramSpec::Ivr(p) => p.validate(),
            ProgramSpec::Agent(p) => p.validate(),
        }
    }

    /// Replaces a reference to a named IVR definition (`{"definition": "main-menu"}`) with
    /// the definition itself, from `definitions` (this worker's configuration). Any other
    /// program is left as it is.
    pub fn resolve_ivr(
        &mut self,
        definitions: &std::collections::BTreeMap<String, IvrParams>,
    ) -> Result<(), SpecError> {
        if let ProgramSpec::Ivr(p) = self
            && let Some(d) = &p.definition
            && p.is_unresolved()
        {
            match definitions.get(&d.name) {
                Some(found) => *p = found.clone(),
                None => return Err(invalid("definition", format!("no IVR definition named {:?}", d.name))),
            }
        }
        Ok(())
    }
}

/// Checks a tone pattern (a tone program's segments, an IVR prompt): 1 to
/// [`TONE_SEGMENTS_MAX`] segments of whole frames, each within the tone bounds. `field` is
/// `"segments"` or `"prompt"`; errors name the part at fault below it.
pub(crate) fn validate_segments(field: &'static str, segments: &[ToneSegment]) -> Result<(), SpecError> {
    let (duration_field, freqs_field) = match field {
        "prompt" => ("prompt.duration_ms", "prompt.freqs_hz"),
        _ => ("segments.duration_ms", "segments.freqs_hz"),
    };
    if segments.is_empty() || segments.len() > TONE_SEGMENTS_MAX {
        return Err(invalid(
            field,
            format!("{} segments given; 1 to {TONE_SEGMENTS_MAX} allowed", segments.len()),
        ));
    }
    for (i, segment) in segments.iter().enumerate() {
        validate_duration_ms(duration_field, segment.duration_ms).map_err(|e| at_index(e, i))?;
        if u64::from(segment.duration_ms) % FRAME_MS != 0 {
            return Err(invalid(
                duration_field,
                format!(
                    "segment {i}: {} ms is not a multiple of the {FRAME_MS} ms frame",
                    segment.duration_ms
                ),
            ));
        }
        validate_freqs_hz(freqs_field, &segment.freqs_hz).map_err(|e| at_index(e, i))?;
    }
    Ok(())
}

fn invalid(field: &'static str, reason: String) -> SpecError {
    SpecError::InvalidParam { field, reason }
}

fn at_index(e: SpecError, i: usize) -> SpecError {
    match e {
        SpecError::InvalidParam { field, reason } => invalid(field, format!("segment {i}: {reason}")),
        other => other,
    }
}

pub(crate) fn validate_duration_ms(field: &'static str, duration_ms: u32) -> Result<(), SpecError> {
    if !(TONE_MS_MIN..=TONE_MS_MAX).contains(&duration_ms) {
        return Err(invalid(field, format!("{duration_ms} ms is outside {TONE_MS_MIN}..={TONE_MS_MAX} ms")));
    }
    Ok(())
}

pub(crate) fn validate_freqs_hz(field: &'static str, freqs_hz: &[u32]) -> Result<(), SpecError> {
    if freqs_hz.len() > dsp::TONE_FREQS_MAX {
        return Err(invalid(
            field,
            format!("{} frequencies given; at most {} allowed", freqs_hz.len(), dsp::TONE_FREQS_MAX),
        ));
    }
    if let Some(f) = freqs_hz.iter().find(|f| !(1..=TONE_FREQ_HZ_MAX).contains(*f)) {
        return Err(invalid(field, format!("{f} Hz is outside 1..={TONE_FREQ_HZ_MAX} Hz")));
    }
    Ok(())
}

/// Why a program specification or action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("invalid parameter {field}: {reason}")]
    InvalidParam { field: &'static str, reason: String },
    #[error("unsupported audio format: {0}")]
    UnsupportedAudio(String),
}

/// Running state of the call's current program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProgramState {
    Echo(EchoState),
    Tone(ToneState),
    Ivr(IvrState),
    /// Boxed: the largest state by far (params, transcript, queues), and encoded the same.
    Agent(Box<AgentState>),
}

impl ProgramState {
    /// A program at its start, not yet attached (its clock, if any, is stopped).
    pub fn new(spec: &ProgramSpec) -> ProgramState {
        match spec {
            ProgramSpec::Echo(p) => ProgramState::Echo(EchoState::new(p.clone())),
            ProgramSpec::Tone(p) => ProgramState::Tone(ToneState::new(p.clone())),
            ProgramSpec::Ivr(p) => ProgramState::Ivr(IvrState::new(p.clone())),
            ProgramSpec::Agent(p) => ProgramState::Agent(Box::new(AgentState::new(p.clone()))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            ProgramState::Echo(_) => "echo",
            ProgramState::Tone(_) => "tone",
            ProgramState::Ivr(_) => "ivr",
            ProgramState::Agent(_) => "agent",
        }
    }

    /// A media session attached at `now`: clocked programs start producing frames.
    pub(crate) fn attach(&mut self, now: UnixMillis) {
        match self {
            ProgramState::Echo(_) => {}
            ProgramState::Tone(s) => s.attach(now),
            ProgramState::Ivr(s) => s.attach(now),
            ProgramState::Agent(s) => s.attach(now),
        }
    }

    /// `frames` frames already sent were never played (the session carrying them died):
    /// programs that generate their audio step back to play them again. Echo cannot
    /// regenerate the caller's audio and does nothing.
    pub(crate) fn rewind(&mut self, frames: u64, audio: AudioFormat) {
        match self {
            // The agent's audio cannot be regenerated either; the agent hears of it through
            // its marks and the resuming `start`.
            ProgramState::Echo(_) | ProgramState::Agent(_) => {}
            ProgramState::Tone(s) => s.rewind(frames),
            ProgramState::Ivr(s) => s.rewind(frames, audio),
        }
    }

    /// The media session went away: nothing is produced until the next attach.
    pub(crate) fn detach(&mut self) {
        match self {
            ProgramState::Echo(_) => {}
            ProgramState::Tone(s) => s.detach(),
            ProgramState::Ivr(s) => s.detach(),
            ProgramState::Agent(s) => s.detach(),
        }
    }

    /// Caller audio (already deduplicated by the call), in the call's format `audio`.
    pub(crate) fn audio(
        &mut self,
        now: UnixMillis,
        payload: &[u8],
        limits: &CallLimits,
        audio: AudioFormat,
        fx: &mut Effects,
    ) {
        match self {
            ProgramState::Echo(s) => s.audio(now, payload, limits, fx),
            ProgramState::Ivr(s) => s.audio(now, payload, audio, fx),
            ProgramState::Agent(s) => s.audio(payload, fx),
            ProgramState::Tone(_) => {}
        }
    }

    /// A valid, signalled DTMF digit.
    pub(crate) fn dtmf(&mut self, now: UnixMillis, digit: char, audio: AudioFormat, fx: &mut Effects) {
        match self {
            ProgramState::Echo(_) => {}
            ProgramState::Tone(s) => s.dtmf(digit, fx),
            ProgramState::Ivr(s) => s.dtmf(now, digit, audio, fx),
            ProgramState::Agent(s) => s.dtmf(digit, fx),
        }
    }

    /// Runs every timer due at `now` (only called while attached).
    pub(crate) fn run_due(&mut self, now: UnixMillis, audio: AudioFormat, fx: &mut Effects) {
        match self {
            ProgramState::Echo(s) => s.run_due(now, fx),
            ProgramState::Tone(s) => s.run_due(now, audio, fx),
            ProgramState::Ivr(s) => s.run_due(now, audio, fx),
            ProgramState::Agent(s) => s.run_due(now, fx),
        }
    }

    /// The client played outbound audio; `unplayed` frames sent are not yet heard.
    pub(crate) fn played(&mut self, unplayed: u64, fx: &mut Effects) {
        if let ProgramState::Agent(s) = self {
            s.played(unplayed, fx);
        }
    }

    /// The agent leg's news, or the agent's message; other programs ignore it (a message
    /// still in flight when the call switched away from its agent).
    pub(crate) fn agent(
        &mut self,
        now: UnixMillis,
        input: AgentInput<'_>,
        audio: AudioFormat,
        fx: &mut Effects,
    ) {
        if let ProgramState::Agent(s) = self {
            s.input(now, input, audio, fx);
        }
    }

    /// When the program next needs [`run_due`](Self::run_due), if attached.
    pub(crate) fn next_deadline(&self) -> Option<UnixMillis> {
        match self {
            ProgramState::Echo(s) => s.next_deadline(),
            ProgramState::Tone(s) => s.next_deadline(),
            ProgramState::Ivr(s) => s.next_deadline(),
            ProgramState::Agent(s) => s.next_deadline(),
        }
    }
}

/// What one program step produced; the call numbers the frames and applies the rest.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Audio frames in the call's format, in order.
    pub frames: Vec<Vec<u8>>,
    /// Frames lost to a bound (echo delay queue full, clock too far behind).
    pub dropped_frames: u64,
    /// The program wants the call to end.
    pub end: Option<EndReason>,
    /// The program hands the call to another program (an IVR choice).
    pub switch_to: Option<ProgramSpec>,
    /// Audio already queued for the caller is obsolete (DTMF barge-in on a prompt).
    pub clear: bool,
    /// What happened, for the call's timeline.
    pub events: Vec<ProgramEvent>,
    /// Messages for the agent leg (the agent program), in order.
    pub to_agent: Vec<callworker_protocol::agent::ToAgent>,
    /// The state changed in a way worth a checkpoint at once (a transcript entry, a turn).
    pub durable: bool,
    /// Reused PCM buffer for frame generation.
    pub pcm: Vec<i16>,
}

impl Effects {
    /// Generates one [`FRAME_MS`] frame of `freqs_hz` with `generator`, encoded in `audio`.
    pub(crate) fn push_tone_frame(
        &mut self,
        generator: &mut dsp::ToneGenerator,
        freqs_hz: &[u32],
        audio: AudioFormat,
    ) {
        let samples = (u64::from(audio.sample_rate_hz) * FRAME_MS / 1000) as usize;
        self.pcm.clear();
        generator.fill(freqs_hz, audio.sample_rate_hz, samples, &mut self.pcm);
        let mut frame = Vec::with_capacity(samples * 2);
        callworker_protocol::codec::encode(audio.encoding, &self.pcm, &mut frame);
        self.frames.push(frame);
    }
}

/// A program-level event the call records in its timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProgramEvent {
    /// An IVR moved to another menu.
    MenuEntered { menu: String },
    /// An IVR menu finished collecting digits.
    DigitsCollected { menu: String, digits: String },
    /// A DTMF digit detected in the caller's audio (in-band).
    DtmfDetected { digit: char },
    /// The caller interrupted an IVR prompt (`by` "speech" or "dtmf") after
    /// `prompt_frames_sent` of its frames had been sent.
    BargeIn { menu: String, by: &'static str, prompt_frames_sent: u64 },
    /// The agent leg connected, resumed, was lost or failed; the agent transferred or hung up.
    Agent { event: &'static str, detail: Option<String> },
}

/// A [`FRAME_MS`] frame clock that runs only while a session is attached.
///
/// It counts frames, not elapsed time, so a detach pauses it and the next attach resumes
/// from the same pattern position instead of fast-forwarding through the gap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FrameClock {
    /// When the next frame is due; `None` while stopped.
    next_frame_at: Option<UnixMillis>,
}

impl FrameClock {
    pub(crate) fn start(&mut self, now: UnixMillis) {
        self.next_frame_at = Some(now);
    }

    pub(crate) fn stop(&mut self) {
        self.next_frame_at = None;
    }

    pub(crate) fn deadline(&self) -> Option<UnixMillis> {
        self.next_frame_at
    }

    /// Frames due at `now`, as `(to_emit, skipped)`: at most [`FRAMES_PER_STEP_MAX`] to emit,
    /// the rest skipped. The clock moves past all of them.
    pub(crate) fn take_due(&mut self, now: UnixMillis) -> (u64, u64) {
        let Some(next) = self.next_frame_at else {
            return (0, 0);
        };
        if now < next {
            return (0, 0);
        }
        let due = now.since(next) / FRAME_MS + 1;
        self.next_frame_at = Some(next.add_ms(due.saturating_mul(FRAME_MS)));
        let emit = due.min(FRAMES_PER_STEP_MAX);
        (emit, due - emit)
    }
}

/// Most digits one `inject_dtmf` action carries.
pub const INJECT_DTMF_DIGITS_MAX: usize = 32;
/// Longest `transfer` target (a SIP URI), in bytes.
pub const TRANSFER_TARGET_BYTES_MAX: usize = 256;

/// Which way of a call's audio a `mute`/`unmute` action acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MuteDirection {
    /// The caller's audio: the program hears silence instead.
    Inbound,
    /// Audio to the caller: the caller hears silence instead.
    Outbound,
    /// Both ways.
    Both,
}

impl MuteDirection {
    pub fn as_str(self) -> &'static str {
        match self {
            MuteDirection::Inbound => "inbound",
            MuteDirection::Outbound => "outbound",
            MuteDirection::Both => "both",
        }
    }

    /// `(inbound, outbound)`: which ways this direction covers.
    pub fn ways(self) -> (bool, bool) {
        match self {
            MuteDirection::Inbound => (true, false),
            MuteDirection::Outbound => (false, true),
            MuteDirection::Both => (true, true),
        }
    }
}

/// An action the control API injects into a live call: `{"type": "play_tone", …}`.
///
/// JSON shapes: `{"type": "play_tone", "freqs_hz": [440], "duration_ms": 500}`,
/// `{"type": "switch_program", "program": {"name": "echo", "params": {"delay_ms": 0}}}`,
/// `{"type": "hangup"}`, `{"type": "play", "segments": [{"freqs_hz": [440], "duration_ms": 200}]}`,
/// `{"type": "inject_dtmf", "digits": "12#"}`, `{"type": "mute", "direction": "inbound"}`,
/// `{"type": "unmute", "direction": "both"}`, `{"type": "transfer", "to": "+15550100"}`.
/// Binary formats get an externally tagged shape (see [`ProgramSpec`]); variants are only
/// ever appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Play a tone (one or two frequencies; empty = silence) over the program's audio.
    PlayTone { freqs_hz: Vec<u32>, duration_ms: u32 },
    /// Replace the running program.
    SwitchProgram { program: ProgramSpec },
    /// End the call with `api_ended`.
    Hangup,
    /// Play a sequence of tones and silences over the program's audio, in order.
    Play { segments: Vec<ToneSegment> },
    /// Deliver DTMF digits to the program as if the caller had pressed them.
    InjectDtmf { digits: String },
    /// Silence one or both ways of the call's audio until `unmute`.
    Mute { direction: MuteDirection },
    /// Undo `mute` for one or both ways.
    Unmute { direction: MuteDirection },
    /// Hand the caller to `to` (an E.164 number or a SIP URI) and end the call with
    /// `transferred`. How the caller is connected depends on the transport (the server's
    /// business: a native client is told, a Twilio call is redirected to `<Dial>`).
    Transfer { to: String },
}

/// `Hangup {}` rather than `Hangup`: serde's `deny_unknown_fields` does not reach the unit
/// variants of an internally tagged enum, so `{"type": "hangup", "extra": 1}` was accepted.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Action", tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ActionJson {
    PlayTone { freqs_hz: Vec<u32>, duration_ms: u32 },
    SwitchProgram { program: ProgramSpec },
    Hangup {},
    Play { segments: Vec<ToneSegment> },
    InjectDtmf { digits: String },
    Mute { direction: MuteDirection },
    Unmute { direction: MuteDirection },
    Transfer { to: String },
}

/// Positional: variants may only be appended.
#[derive(Serialize, Deserialize)]
#[serde(remote = "Action")]
enum ActionBinary {
    PlayTone { freqs_hz: Vec<u32>, duration_ms: u32 },
    SwitchProgram { program: ProgramSpec },
    Hangup,
    Play { segments: Vec<ToneSegment> },
    InjectDtmf { digits: String },
    Mute { direction: MuteDirection },
    Unmute { direction: MuteDirection },
    Transfer { to: String },
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            ActionJson::serialize(self, serializer)
        } else {
            ActionBinary::serialize(self, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            ActionJson::deserialize(deserializer)
        } else {
            ActionBinary::deserialize(deserializer)
        }
    }
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::PlayTone { .. } => "play_tone",
            Action::SwitchProgram { .. } => "switch_program",
            Action::Hangup => "hangup",
            Action::Play { .. } => "play",
            Action::InjectDtmf { .. } => "inject_dtmf",
            Action::Mute { .. } => "mute",
            Action::Unmute { .. } => "unmute",
            Action::Transfer { .. } => "transfer",
        }
    }

    /// Checks every parameter against its bound.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self {
            Action::PlayTone { freqs_hz, duration_ms } => {
                validate_freqs_hz("freqs_hz", freqs_hz)?;
                validate_duration_ms("duration_ms", *duration_ms)
            }
            Action::SwitchProgram { program } => program.validate(),
            Action::Hangup | Action::Mute { .. } | Action::Unmute { .. } => Ok(()),
            Action::Play { segments } => validate_segments("segments", segments),
            Action::InjectDtmf { digits } => {
                let count = digits.chars().count();
                if count == 0 || count > INJECT_DTMF_DIGITS_MAX {
                    return Err(invalid(
                        "digits",
                        format!("{count} digits given; 1 to {INJECT_DTMF_DIGITS_MAX} allowed"),
                    ));
                }
                if let Some(bad) = digits.chars().find(|d| !dsp::is_dtmf_digit(*d)) {
                    return Err(invalid("digits", format!("{bad:?} is not a DTMF digit (0-9, *, #, A-D)")));
                }
                Ok(())
            }
            Action::Transfer { to } => validate_transfer_target(to),
        }
    }
}

/// What a `transfer` target is, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferTarget<'a> {
    /// An E.164 number: `+` and 2 to 15 digits.
    Number(&'a str),
    /// A `sip:` or `sips:` URI of printable ASCII without spaces, quotes or angle brackets.
    Sip(&'a str),
}

impl<'a> TransferTarget<'a> {
    /// Classifies a target, or says why it is not one.
    pub fn parse(to: &'a str) -> Result<TransferTarget<'a>, SpecError> {
        if let Some(digits) = to.strip_prefix('+') {
            if (2..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
                return Ok(TransferTarget::Number(to));
            }
            return Err(invalid("to", "an E.164 number is + and 2 to 15 digits".to_owned()));
        }
        let lower = to.get(..5).map(str::to_ascii_lowercase).unwrap_or_default();
        if lower.starts_with("sip:") || lower == "sips:" {
            let rest = to.split_once(':').map_or("", |(_, r)| r);
            let printable =
                to.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b'\'' | b'`'));
            if to.len() <= TRANSFER_TARGET_BYTES_MAX && !rest.is_empty() && printable {
                return Ok(TransferTarget::Sip(to));
            }
            return Err(invalid(
                "to",
                format!(
                    "a SIP URI is at most {TRANSFER_TARGET_BYTES_MAX} bytes of printable ASCII, without spaces, quotes or angle brackets"
                ),
            ));
        }
        Err(invalid("to", "the target is neither an E.164 number (+15550100) nor a sip: URI".to_owned()))
    }
}

fn validate_transfer_target(to: &str) -> Result<(), SpecError> {
    TransferTarget::parse(to).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tone(segments: Vec<(Vec<u32>, u32)>, hangup_digit: Option<char>) -> ProgramSpec {
        ProgramSpec::Tone(ToneParams {
            segments: segments
                .into_iter()
                .map(|(freqs_hz, duration_ms)| ToneSegment { freqs_hz, duration_ms })
                .collect(),
            repeat: true,
            hangup_digit,
        })
    }

    #[test]
    fn program_specs_are_validated_against_their_bounds() {
        let ok = [
            ProgramSpec::Echo(EchoParams { delay_ms: 0 }),
            ProgramSpec::Echo(EchoParams { delay_ms: 5_000 }),
            tone(vec![(vec![440], 20)], None),
            tone(vec![(vec![], 60_000)], Some('#')),
            tone(vec![(vec![1, 3_999], 40)], Some('D')),
            tone(vec![(vec![440], 20); 32], None),
        ];
        for spec in ok {
            assert_eq!(spec.validate(), Ok(()), "{spec:?}");
        }
        let bad = [
            (ProgramSpec::Echo(EchoParams { delay_ms: 5_001 }), "delay_ms"),
            (tone(vec![], None), "segments"),
            (tone(vec![(vec![440], 20); 33], None), "segments"),
            (tone(vec![(vec![440], 0)], None), "segments.duration_ms"),
            (tone(vec![(vec![440], 30)], None), "segments.duration_ms"),
            (tone(vec![(vec![440], 60_020)], None), "segments.duration_ms"),
            (tone(vec![(vec![0], 20)], None), "segments.freqs_hz"),
            (tone(vec![(vec![4_000], 20)], None), "segments.freqs_hz"),
            (tone(vec![(vec![1, 2, 3], 20)], None), "segments.freqs_hz"),
            (tone(vec![(vec![440], 20)], Some('x')), "hangup_digit"),
        ];
        for (spec, field) in bad {
            match spec.validate() {
                Err(SpecError::InvalidParam { field: f, .. }) => assert_eq!(f, field, "{spec:?}"),
                other => panic!("{spec:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn actions_are_validated_against_their_bounds() {
        let cases = [
            (Action::Hangup, true),
            (Action::PlayTone { freqs_hz: vec![], duration_ms: 20 }, true),
            (Action::PlayTone { freqs_hz: vec![350, 440], duration_ms: 60_000 }, true),
            (Action::PlayTone { freqs_hz: vec![440], duration_ms: 19 }, false),
            (Action::PlayTone { freqs_hz: vec![440], duration_ms: 60_001 }, false),
            (Action::PlayTone { freqs_hz: vec![4_000], duration_ms: 100 }, false),
            (Action::PlayTone { freqs_hz: vec![1, 2, 3], duration_ms: 100 }, false),
            (Action::SwitchProgram { program: tone(vec![(vec![440], 20)], None) }, true),
            (Action::SwitchProgram { program: tone(vec![], None) }, false),
            (Action::Play { segments: vec![ToneSegment { freqs_hz: vec![440], duration_ms: 20 }] }, true),
            (Action::Play { segments: vec![] }, false),
            (Action::Play { segments: vec![ToneSegment { freqs_hz: vec![440], duration_ms: 30 }] }, false),
            (Action::InjectDtmf { digits: "0123456789*#ABCD".into() }, true),
            (Action::InjectDtmf { digits: String::new() }, false),
            (Action::InjectDtmf { digits: "1x".into() }, false),
            (Action::InjectDtmf { digits: "1".repeat(33) }, false),
            (Action::Mute { direction: MuteDirection::Both }, true),
            (Action::Unmute { direction: MuteDirection::Inbound }, true),
            (Action::Transfer { to: "+15550100".into() }, true),
            (Action::Transfer { to: "sip:alice@example.com;transport=tls".into() }, true),
            (Action::Transfer { to: "SIPS:bob@example.com".into() }, true),
            (Action::Transfer { to: "+1".into() }, false),
            (Action::Transfer { to: "+1555010012345678".into() }, false),
            (Action::Transfer { to: "+1555-0100".into() }, false),
            (Action::Transfer { to: "15550100".into() }, false),
            (Action::Transfer { to: "sip:".into() }, false),
            (Action::Transfer { to: "sip:a b@example.com".into() }, false),
            (Action::Transfer { to: "sip:<x>@example.com".into() }, false),
            (Action::Transfer { to: format!("sip:{}", "a".repeat(253)) }, false),
            (Action::Transfer { to: "tel:+15550100".into() }, false),
        ];
        for (action, ok) in cases {
            assert_eq!(action.validate().is_ok(), ok, "{action:?}");
        }
    }

    #[test]
    fn json_shapes_are_tagged_and_binary_shapes_round_trip() {
        let cases = [
            (
                Action::PlayTone { freqs_hz: vec![440], duration_ms: 500 },
                json!({"type": "play_tone", "freqs_hz": [440], "duration_ms": 500}),
            ),
            (
                Action::SwitchProgram { program: ProgramSpec::Echo(EchoParams { delay_ms: 0 }) },
                json!({"type": "switch_program", "program": {"name": "echo", "params": {"delay_ms": 0}}}),
            ),
            (
                Action::SwitchProgram {
                    program: tone(vec![(vec![440, 480], 2_000), (vec![], 4_000)], Some('#')),
                },
                json!({"type": "switch_program", "program": {"name": "tone", "params": {
                    "segments": [{"freqs_hz": [440, 480], "duration_ms": 2000}, {"freqs_hz": [], "duration_ms": 4000}],
                    "repeat": true, "hangup_digit": "#"}}}),
            ),
            (Action::Hangup, json!({"type": "hangup"})),
            (
                Action::Play { segments: vec![ToneSegment { freqs_hz: vec![], duration_ms: 40 }] },
                json!({"type": "play", "segments": [{"freqs_hz": [], "duration_ms": 40}]}),
            ),
            (Action::InjectDtmf { digits: "1#".into() }, json!({"type": "inject_dtmf", "digits": "1#"})),
            (
                Action::Mute { direction: MuteDirection::Inbound },
                json!({"type": "mute", "direction": "inbound"}),
            ),
            (
                Action::Unmute { direction: MuteDirection::Both },
                json!({"type": "unmute", "direction": "both"}),
            ),
            (Action::Transfer { to: "+15550100".into() }, json!({"type": "transfer", "to": "+15550100"})),
        ];
        for (action, expected) in cases {
            assert_eq!(serde_json::to_value(&action).unwrap(), expected);
            assert_eq!(serde_json::from_value::<Action>(expected).unwrap(), action);
            let bytes = postcard::to_allocvec(&action).unwrap();
            assert_eq!(postcard::from_bytes::<Action>(&bytes).unwrap(), action);
        }
        let defaults: ProgramSpec =
            serde_json::from_value(json!({"name": "tone", "params": {"segments": [{"duration_ms": 20}]}}))
                .unwrap();
        assert_eq!(defaults, tone(vec![(vec![], 20)], None));
        let extra = json!({"type": "play_tone", "freqs_hz": [], "duration_ms": 20, "extra": 1});
        assert!(serde_json::from_value::<Action>(extra).is_err());
        // Found by schemathesis: the field-less variant refuses unknown fields too.
        let extra = json!({"type": "hangup", "program": "echo"});
        assert!(serde_json::from_value::<Action>(extra).is_err());
        assert!(
            serde_json::from_value::<ProgramSpec>(json!({"name": "echo", "params": {"delay": 1}})).is_err()
        );
        assert!(serde_json::from_value::<Action>(json!({"type": "dance"})).is_err());
    }

    /// Why the binary shapes exist: postcard refuses the tagged JSON shapes outright.
    #[test]
    fn postcard_cannot_decode_internally_or_adjacently_tagged_enums() {
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        #[serde(tag = "type")]
        enum Internal {
            A { x: u8 },
        }
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        #[serde(tag = "t", content = "c")]
        enum Adjacent {
            A(u8),
        }
        let bytes = postcard::to_allocvec(&Internal::A { x: 1 }).unwrap();
        assert!(postcard::from_bytes::<Internal>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&Adjacent::A(1)).unwrap();
        assert!(postcard::from_bytes::<Adjacent>(&bytes).is_err());
    }

    #[test]
    fn frame_clock_caps_and_skips() {
        let mut clock = FrameClock::default();
        assert_eq!(clock.take_due(UnixMillis(0)), (0, 0));
        clock.start(UnixMillis(1_000));
        let cases = [
            (999, (0, 0)),
            (1_000, (1, 0)),
            (1_019, (0, 0)),
            (1_020, (1, 0)),
            (1_070, (2, 0)),
            (1_500, (10, 12)),
        ];
        for (now, expected) in cases {
            assert_eq!(clock.take_due(UnixMillis(now)), expected, "at {now}");
        }
        assert_eq!(clock.deadline(), Some(UnixMillis(1_520)));
        clock.stop();
        assert_eq!(clock.deadline(), None);
    }
}
