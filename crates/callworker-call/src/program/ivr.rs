//! The IVR program: menus of prompts navigated with DTMF or interrupted by the caller's
//! voice.
//!
//! A menu plays its prompt (tone and silence segments, or recorded clips of a named
//! definition; on the program's frame clock), then waits for the caller. A menu with
//! `options` maps single digits to a choice; a menu with `collect` gathers several digits
//! (a terminator, a maximum, an inter-digit timeout) and then takes its `then` choice. No
//! input within the menu's timeout, or an invalid digit, costs one attempt; the prompt plays
//! again until `retries` is spent, then `on_failure` is taken. A choice goes to another
//! menu, switches the call to another program (echo, tone) or hangs up.
//!
//! Digits come signalled (Twilio `dtmf` events, native `dtmf` messages) or are detected in
//! the caller's audio ([`DtmfDetector`]); both take the same path. Once a call has signalled
//! a digit, in-band detection is off for the rest of the call (the gateway signals digits,
//! so detecting them in the audio too would count each twice), and a signalled digit that
//! repeats the digit just detected in-band (within [`DTMF_SAME_PRESS_MS`]) is the same key
//! press.
//!
//! Barge-in: a digit pressed during the prompt interrupts it; so does the caller's voice
//! ([`EnergyVad`]) in a menu with `barge_in` set. Either way the program asks the session
//! to clear the audio already queued, the call records how much of the prompt the caller
//! had heard (`barge_in` in the timeline), and the menu moves on: a digit is handled as
//! input, speech takes the menu's `barge_in.then` or waits for input.
//!
//! Resume: the prompt position is counted in frames, so after a failover the call rewinds
//! by the frames the caller never heard (the last played mark) and plays on from there,
//! sending the very same audio; a menu whose prompt had finished plays the unheard tail
//! again, unless the caller interrupted it. Digits collected so far and the menu the caller
//! is in are part of the checkpointed state; the detectors are not (they start afresh).
//!
//! Named definitions (`{"definition": "main-menu"}`) come from configuration; see
//! [`prompts`] for how a resumed call finds the same definition on another worker.

pub mod prompts;

use std::collections::BTreeMap;
use std::sync::Arc;

use callworker_protocol::AudioFormat;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dsp::dtmf::DtmfDetector;
use crate::dsp::vad::{EnergyVad, VadSettings};
use crate::dsp::{self, ToneGenerator};
use crate::end::EndReason;
use crate::program::{Effects, FRAME_MS, FrameClock, ProgramEvent, ProgramSpec, SpecError};
use crate::time::UnixMillis;

pub use prompts::{Clip, ClipsHandle, IvrClips, IvrDefinitionRef, PromptSegment};
use prompts::{Fnv64, samples_per_frame};

/// Most menus in one IVR.
pub const IVR_MENUS_MAX: usize = 32;
/// Most options in one menu (one per DTMF key).
pub const IVR_OPTIONS_MAX: usize = 16;
/// Longest menu id.
pub const IVR_MENU_ID_CHARS_MAX: usize = 32;
/// Most digits one `collect` gathers.
pub const IVR_DIGITS_MAX: u32 = 32;
/// Most retries of one menu.
pub const IVR_RETRIES_MAX: u32 = 10;
/// Bounds of every IVR timeout, in milliseconds.
pub const IVR_TIMEOUT_MS_MIN: u32 = 100;
pub const IVR_TIMEOUT_MS_MAX: u32 = 60_000;
/// Most segments in one prompt.
pub const IVR_PROMPT_SEGMENTS_MAX: usize = 32;
/// Longest definition name.
pub const IVR_DEFINITION_NAME_CHARS_MAX: usize = 64;
/// A signalled digit this soon after the same digit was detected in-band is the same key
/// press, in milliseconds.
pub const DTMF_SAME_PRESS_MS: u64 = 500;
/// Bounds of a menu's `barge_in` settings.
pub const BARGE_IN_THRESHOLD_DBFS_MIN: i32 = -70;
pub const BARGE_IN_MIN_SPEECH_MS_MIN: u32 = 20;
pub const BARGE_IN_MIN_SPEECH_MS_MAX: u32 = 5_000;
pub const BARGE_IN_HANGOVER_MS_MAX: u32 = 2_000;

/// Parameters of the IVR program: inline menus, `{"start": "main", "menus": {"main": {…}}}`,
/// or a named definition from configuration, `{"definition": "main-menu"}`, which the
/// worker resolves into its menus before the call starts ([`ProgramSpec::resolve_ivr`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvrParams {
    /// The menu the call starts in.
    pub start: String,
    pub menus: BTreeMap<String, IvrMenu>,
    /// The named definition these menus come from (name and content hash), if any.
    pub definition: Option<IvrDefinitionRef>,
    /// The definition's recorded prompts (bound by the worker, never serialized).
    pub clips: ClipsHandle,
}

/// The JSON/TOML shape of [`IvrParams`]: either `definition` alone, or `start` and `menus`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IvrParamsText {
    #[serde(default)]
    definition: Option<String>,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    menus: Option<BTreeMap<String, IvrMenu>>,
}

/// The binary (checkpoint) shape of [`IvrParams`]: every field, by position.
#[derive(Deserialize)]
struct IvrParamsBinary {
    start: String,
    menus: BTreeMap<String, IvrMenu>,
    definition: Option<IvrDefinitionRef>,
}

/// [`IvrParamsBinary`] by reference, so a checkpoint does not copy the menus.
#[derive(Serialize)]
struct IvrParamsBinaryRef<'a> {
    start: &'a String,
    menus: &'a BTreeMap<String, IvrMenu>,
    definition: &'a Option<IvrDefinitionRef>,
}

impl Serialize for IvrParams {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if !serializer.is_human_readable() {
            let binary =
                IvrParamsBinaryRef { start: &self.start, menus: &self.menus, definition: &self.definition };
            return binary.serialize(serializer);
        }
        let mut map = serializer.serialize_map(None)?;
        match &self.definition {
            Some(d) => map.serialize_entry("definition", &d.name)?,
            None => {
                map.serialize_entry("start", &self.start)?;
                map.serialize_entry("menus", &self.menus)?;
            }
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for IvrParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let t = IvrParamsText::deserialize(deserializer)?;
            match (t.definition, t.start, t.menus) {
                (Some(name), None, None) => Ok(IvrParams::named(name)),
                (None, Some(start), Some(menus)) => Ok(IvrParams::inline(start, menus)),
                _ => Err(serde::de::Error::custom(
                    "IVR params are either {\"definition\": name} or {\"start\": id, \"menus\": {...}}",
                )),
            }
        } else {
            let b = IvrParamsBinary::deserialize(deserializer)?;
            Ok(IvrParams {
                start: b.start,
                menus: b.menus,
                definition: b.definition,
                clips: ClipsHandle(None),
            })
        }
    }
}

/// One menu: a prompt, then what the caller may press.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrMenu {
    /// Played on entry and on every retry (tones, silences and clips).
    pub prompt: Vec<PromptSegment>,
    /// Single-digit choices: `{"1": {"menu": "sales"}, "0": {"hangup": true}}`.
    #[serde(default)]
    pub options: BTreeMap<char, IvrChoice>,
    /// Several digits instead of a single choice.
    #[serde(default)]
    pub collect: Option<IvrCollect>,
    /// Wait for the first digit after the prompt has played, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u32,
    /// Times the prompt is played again after no input or an invalid digit.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Taken once the retries are spent (default: hang up).
    #[serde(default)]
    pub on_failure: IvrChoice,
    /// The caller's voice interrupts the prompt (off when absent: a DTMF-only menu).
    #[serde(default)]
    pub barge_in: Option<IvrBargeIn>,
}

/// Voice barge-in settings of a menu (see [`crate::dsp::vad`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrBargeIn {
    /// Frame level that counts as speech, in dBFS.
    #[serde(default = "default_threshold_dbfs")]
    pub threshold_dbfs: i32,
    /// Speech needed to interrupt, in milliseconds.
    #[serde(default = "default_min_speech_ms")]
    pub min_speech_ms: u32,
    /// Longest pause inside speech that does not start the count over, in milliseconds.
    #[serde(default = "default_hangover_ms")]
    pub hangover_ms: u32,
    /// Taken on barge-in; when absent the menu waits for input as if the prompt had ended.
    #[serde(default)]
    pub then: Option<IvrChoice>,
}

impl IvrBargeIn {
    fn vad(&self) -> VadSettings {
        VadSettings {
            threshold_dbfs: self.threshold_dbfs,
            min_speech_ms: self.min_speech_ms,
            hangover_ms: self.hangover_ms,
        }
    }
}

/// Digit collection: ends on the terminator, at `max_digits`, or when the caller pauses
/// longer than `inter_digit_timeout_ms` with at least `min_digits` entered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrCollect {
    pub max_digits: u32,
    #[serde(default = "default_min_digits")]
    pub min_digits: u32,
    /// Key that ends the input early (not part of the digits), e.g. `#`.
    #[serde(default)]
    pub terminator: Option<char>,
    #[serde(default = "default_inter_digit_timeout_ms")]
    pub inter_digit_timeout_ms: u32,
    /// Taken with the digits stored under the menu's id.
    pub then: IvrChoice,
}
/// Where a menu leads: exactly one of `{"menu": id}`, `{"program": {…}}`, `{"hangup": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "IvrChoiceFields")]
pub enum IvrChoice {
    Menu(String),
    /// Switch the call to another program (not an IVR).
    Program(Box<ProgramSpec>),
    #[default]
    Hangup,
}

/// The wire shape of [`IvrChoice`]: a plain struct, so JSON, TOML and postcard share it.
/// Human-readable formats write only the field that is set; binary ones write every field
/// (postcard is positional and cannot skip one).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IvrChoiceFields {
    #[serde(default)]
    menu: Option<String>,
    #[serde(default)]
    program: Option<Box<ProgramSpec>>,
    #[serde(default)]
    hangup: bool,
}

impl Serialize for IvrChoice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if !serializer.is_human_readable() {
            return IvrChoiceFields::from(self.clone()).serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            IvrChoice::Menu(menu) => map.serialize_entry("menu", menu)?,
            IvrChoice::Program(program) => map.serialize_entry("program", program)?,
            IvrChoice::Hangup => map.serialize_entry("hangup", &true)?,
        }
        map.end()
    }
}

impl TryFrom<IvrChoiceFields> for IvrChoice {
    type Error = String;

    fn try_from(f: IvrChoiceFields) -> Result<IvrChoice, String> {
        match (f.menu, f.program, f.hangup) {
            (Some(menu), None, false) => Ok(IvrChoice::Menu(menu)),
            (None, Some(program), false) => Ok(IvrChoice::Program(program)),
            (None, None, true) => Ok(IvrChoice::Hangup),
            _ => Err("a choice is exactly one of {\"menu\": id}, {\"program\": {...}}, {\"hangup\": true}"
                .to_owned()),
        }
    }
}

impl From<IvrChoice> for IvrChoiceFields {
    fn from(c: IvrChoice) -> IvrChoiceFields {
        match c {
            IvrChoice::Menu(menu) => IvrChoiceFields { menu: Some(menu), program: None, hangup: false },
            IvrChoice::Program(program) => {
                IvrChoiceFields { menu: None, program: Some(program), hangup: false }
            }
            IvrChoice::Hangup => IvrChoiceFields { menu: None, program: None, hangup: true },
        }
    }
}

fn default_timeout_ms() -> u32 {
    5_000
}
fn default_retries() -> u32 {
    2
}
fn default_min_digits() -> u32 {
    1
}
fn default_inter_digit_timeout_ms() -> u32 {
    3_000
}
fn default_threshold_dbfs() -> i32 {
    -35
}
fn default_min_speech_ms() -> u32 {
    120
}
fn default_hangover_ms() -> u32 {
    80
}

fn invalid(field: &'static str, reason: String) -> SpecError {
    SpecError::InvalidParam { field, reason }
}

impl IvrParams {
    /// Inline menus.
    pub fn inline(start: String, menus: BTreeMap<String, IvrMenu>) -> IvrParams {
        IvrParams { start, menus, definition: None, clips: ClipsHandle(None) }
    }

    /// A reference to a named definition, to be resolved by the worker.
    pub fn named(name: String) -> IvrParams {
        IvrParams {
            start: String::new(),
            menus: BTreeMap::new(),
            definition: Some(IvrDefinitionRef { name, hash: 0 }),
            clips: ClipsHandle(None),
        }
    }

    /// A named definition (loaded from configuration): its menus, its clips, and its content
    /// hash over both. Validated, so a bad file is refused when the worker starts.
    pub fn definition(
        name: &str,
        start: String,
        menus: BTreeMap<String, IvrMenu>,
        clips: IvrClips,
    ) -> Result<IvrParams, SpecError> {
        validate_definition_name(name)?;
        let mut hash = Fnv64::new();
        // Menus hash through their binary encoding (stable: postcard is positional).
        let menus_bytes = postcard::to_allocvec(&(&start, &menus))
            .map_err(|e| invalid("menus", format!("cannot encode the menus: {e}")))?;
        hash.write(&menus_bytes);
        for (clip_name, clip) in &clips.clips {
            hash.write(clip_name.as_bytes());
            for rate in callworker_protocol::codec::SAMPLE_RATES_HZ {
                for s in clip.samples(rate) {
                    hash.write(&s.to_le_bytes());
                }
            }
        }
        let params = IvrParams {
            start,
            menus,
            definition: Some(IvrDefinitionRef { name: name.to_owned(), hash: hash.finish() }),
            clips: ClipsHandle(Some(Arc::new(clips))),
        };
        params.validate()?;
        Ok(params)
    }

    /// Whether this is a reference still waiting to be resolved into menus.
    pub fn is_unresolved(&self) -> bool {
        self.definition.is_some() && self.menus.is_empty()
    }

    /// Checks every bound and that every menu a choice names exists, and every clip a
    /// prompt plays is bound.
    pub fn validate(&self) -> Result<(), SpecError> {
        if let Some(d) = &self.definition
            && self.menus.is_empty()
        {
            return Err(invalid("definition", format!("no IVR definition named {:?}", d.name)));
        }
        if self.menus.is_empty() || self.menus.len() > IVR_MENUS_MAX {
            return Err(invalid(
                "menus",
                format!("{} menus given; 1 to {IVR_MENUS_MAX} allowed", self.menus.len()),
            ));
        }
        if !self.menus.contains_key(&self.start) {
            return Err(invalid("start", format!("no menu named {:?}", self.start)));
        }
        for (id, menu) in &self.menus {
            let at = |e: SpecError| match e {
                SpecError::InvalidParam { field, reason } => invalid(field, format!("menu {id:?}: {reason}")),
                other => other,
            };
            validate_menu_id(id).map_err(at)?;
            menu.validate(&self.menus, self.clips.get()).map_err(at)?;
        }
        Ok(())
    }
}

fn validate_definition_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= IVR_DEFINITION_NAME_CHARS_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "definition",
            format!(
                "name {name:?}: 1 to {IVR_DEFINITION_NAME_CHARS_MAX} characters of a-z, A-Z, 0-9, _ and -"
            ),
        ))
    }
}

fn validate_menu_id(id: &str) -> Result<(), SpecError> {
    let ok = !id.is_empty()
        && id.len() <= IVR_MENU_ID_CHARS_MAX
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "menus",
            format!("menu id {id:?}: 1 to {IVR_MENU_ID_CHARS_MAX} characters of a-z, A-Z, 0-9, _ and -"),
        ))
    }
}

fn validate_timeout(field: &'static str, ms: u32) -> Result<(), SpecError> {
    if (IVR_TIMEOUT_MS_MIN..=IVR_TIMEOUT_MS_MAX).contains(&ms) {
        Ok(())
    } else {
        Err(invalid(field, format!("{ms} ms is outside {IVR_TIMEOUT_MS_MIN}..={IVR_TIMEOUT_MS_MAX} ms")))
    }
}

/// Checks a prompt: 1 to [`IVR_PROMPT_SEGMENTS_MAX`] segments, each a tone segment within
/// the tone bounds or a clip that `clips` holds.
fn validate_prompt(prompt: &[PromptSegment], clips: Option<&IvrClips>) -> Result<(), SpecError> {
    if prompt.is_empty() || prompt.len() > IVR_PROMPT_SEGMENTS_MAX {
        return Err(invalid(
            "prompt",
            format!("{} segments given; 1 to {IVR_PROMPT_SEGMENTS_MAX} allowed", prompt.len()),
        ));
    }
    for (i, segment) in prompt.iter().enumerate() {
        let at = |e: SpecError| match e {
            SpecError::InvalidParam { field, reason } => invalid(field, format!("segment {i}: {reason}")),
            other => other,
        };
        match &segment.wav {
            Some(name) => {
                if segment.duration_ms != 0 || !segment.freqs_hz.is_empty() {
                    return Err(at(invalid(
                        "prompt.wav",
                        "a clip segment has no freqs_hz or duration_ms (the clip sets its length)".to_owned(),
                    )));
                }
                match clips {
                    None => {
                        return Err(at(invalid(
                            "prompt.wav",
                            "recorded prompts are only available in IVR definitions from configuration"
                                .to_owned(),
                        )));
                    }
                    Some(c) if c.get(name).is_none() => {
                        return Err(at(invalid("prompt.wav", format!("no prompt named {name:?}"))));
                    }
                    Some(_) => {}
                }
            }
            None => {
                super::validate_duration_ms("prompt.duration_ms", segment.duration_ms).map_err(at)?;
                if u64::from(segment.duration_ms) % FRAME_MS != 0 {
                    return Err(at(invalid(
                        "prompt.duration_ms",
                        format!("{} ms is not a multiple of the {FRAME_MS} ms frame", segment.duration_ms),
                    )));
                }
                super::validate_freqs_hz("prompt.freqs_hz", &segment.freqs_hz).map_err(at)?;
            }
        }
    }
    Ok(())
}

impl IvrMenu {
    fn validate(&self, menus: &BTreeMap<String, IvrMenu>, clips: Option<&IvrClips>) -> Result<(), SpecError> {
        validate_prompt(&self.prompt, clips)?;
        if self.options.len() > IVR_OPTIONS_MAX {
            return Err(invalid(
                "options",
                format!("{} options; at most {IVR_OPTIONS_MAX}", self.options.len()),
            ));
        }
        if !self.options.is_empty() && self.collect.is_some() {
            return Err(invalid("collect", "a menu has options or collect, not both".to_owned()));
        }
        for (digit, choice) in &self.options {
            if !dsp::is_dtmf_digit(*digit) {
                return Err(invalid("options", format!("{digit:?} is not a DTMF digit (0-9, *, #, A-D)")));
            }
            choice.validate("options", menus)?;
        }
        if let Some(c) = &self.collect {
            if !(1..=IVR_DIGITS_MAX).contains(&c.max_digits) || c.min_digits > c.max_digits {
                return Err(invalid(
                    "collect",
                    format!(
                        "min_digits {} and max_digits {}: need 0 <= min <= max, 1 <= max <= {IVR_DIGITS_MAX}",
                        c.min_digits, c.max_digits
                    ),
                ));
            }
            if let Some(t) = c.terminator
                && !dsp::is_dtmf_digit(t)
            {
                return Err(invalid("collect.terminator", format!("{t:?} is not a DTMF digit")));
            }
            validate_timeout("collect.inter_digit_timeout_ms", c.inter_digit_timeout_ms)?;
            c.then.validate("collect.then", menus)?;
        }
        validate_timeout("timeout_ms", self.timeout_ms)?;
        if self.retries > IVR_RETRIES_MAX {
            return Err(invalid("retries", format!("{} retries; at most {IVR_RETRIES_MAX}", self.retries)));
        }
        if let Some(b) = &self.barge_in {
            if !(BARGE_IN_THRESHOLD_DBFS_MIN..=0).contains(&b.threshold_dbfs) {
                return Err(invalid(
                    "barge_in.threshold_dbfs",
                    format!("{} dBFS is outside {BARGE_IN_THRESHOLD_DBFS_MIN}..=0", b.threshold_dbfs),
                ));
            }
            if !(BARGE_IN_MIN_SPEECH_MS_MIN..=BARGE_IN_MIN_SPEECH_MS_MAX).contains(&b.min_speech_ms) {
                return Err(invalid(
                    "barge_in.min_speech_ms",
                    format!(
                        "{} ms is outside {BARGE_IN_MIN_SPEECH_MS_MIN}..={BARGE_IN_MIN_SPEECH_MS_MAX} ms",
                        b.min_speech_ms
                    ),
                ));
            }
            if b.hangover_ms > BARGE_IN_HANGOVER_MS_MAX {
                return Err(invalid(
                    "barge_in.hangover_ms",
                    format!("{} ms is above {BARGE_IN_HANGOVER_MS_MAX} ms", b.hangover_ms),
                ));
            }
            if let Some(then) = &b.then {
                then.validate("barge_in.then", menus)?;
            }
        }
        self.on_failure.validate("on_failure", menus)
    }
}

impl IvrChoice {
    fn validate(&self, field: &'static str, menus: &BTreeMap<String, IvrMenu>) -> Result<(), SpecError> {
        match self {
            IvrChoice::Menu(id) if !menus.contains_key(id) => {
                Err(invalid(field, format!("no menu named {id:?}")))
            }
            IvrChoice::Program(p) if matches!(**p, ProgramSpec::Ivr(_)) => {
                Err(invalid(field, "an IVR cannot switch to another IVR (use a menu)".to_owned()))
            }
            IvrChoice::Program(p) => p.validate(),
            IvrChoice::Menu(_) | IvrChoice::Hangup => Ok(()),
        }
    }
}

/// Where the current menu stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Phase {
    /// Playing the prompt: the next frame comes from `segment`, `frames_played` into it.
    Prompt { segment: u32, frames_played: u32 },
    /// Prompt done (or interrupted); waiting for input.
    Input,
}

/// How a [`Call`](crate::Call) binds a resumed IVR to this worker's definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindOutcome {
    /// Nothing to bind (inline menus), or the same definition: the call continues exactly.
    Same,
    /// The definition changed since the call started: the call continues in the new one,
    /// in the same menu if it still exists (else the start menu), from the prompt's start.
    Changed { name: String },
}

/// Running state of the IVR program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IvrState {
    pub params: IvrParams,
    menu: String,
    phase: Phase,
    /// Failed attempts in this menu (no input, invalid digit, too few digits).
    failures: u32,
    /// Digits gathered so far by this menu's `collect`.
    digits: String,
    /// The last digits each collecting menu gathered (at most one entry per menu).
    collected: BTreeMap<String, String>,
    /// Paces prompt frames; stopped while waiting for input and while detached.
    clock: FrameClock,
    /// When waiting for input gives up; `None` while prompting or detached.
    input_deadline: Option<UnixMillis>,
    /// The caller cut the current prompt short (voice or a digit): a resume does not play
    /// its tail again.
    interrupted: bool,
    /// A digit was signalled on this call: in-band detection is off from then on.
    signalled_dtmf: bool,
    /// Detectors and buffers, in memory only (they start afresh on another worker); boxed,
    /// as they are most of the state's size.
    #[serde(skip)]
    runtime: Box<Runtime>,
}

/// The IVR's in-memory helpers: not checkpointed, not part of the call's identity.
#[derive(Clone, Default)]
struct Runtime {
    dtmf: DtmfDetector,
    vad: EnergyVad,
    /// Decoded caller audio (reused).
    pcm: Vec<i16>,
    /// Digits the detector found in the current frame (reused).
    digits: Vec<char>,
    /// The last digit detected in-band, and when.
    last_inband: Option<(char, UnixMillis)>,
}

impl PartialEq for Runtime {
    fn eq(&self, _: &Runtime) -> bool {
        true
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime { .. }")
    }
}

impl IvrState {
    pub fn new(params: IvrParams) -> IvrState {
        let menu = params.start.clone();
        IvrState {
            params,
            menu,
            phase: Phase::Prompt { segment: 0, frames_played: 0 },
            failures: 0,
            digits: String::new(),
            collected: BTreeMap::new(),
            clock: FrameClock::default(),
            input_deadline: None,
            interrupted: false,
            signalled_dtmf: false,
            runtime: Box::default(),
        }
    }

    /// The menu the caller is in.
    pub fn menu(&self) -> &str {
        &self.menu
    }

    /// The prompt is playing, `Some((segment, frames into it))`; `None` while waiting.
    pub fn prompt_position(&self) -> Option<(u32, u32)> {
        match self.phase {
            Phase::Prompt { segment, frames_played } => Some((segment, frames_played)),
            Phase::Input => None,
        }
    }

    /// Digits a collecting menu gathered, by menu id.
    pub fn collected(&self) -> &BTreeMap<String, String> {
        &self.collected
    }

    /// Binds a resumed call's named definition to `definition`, this worker's copy of it
    /// (see [`BindOutcome`]). Inline menus need nothing.
    pub fn bind(&mut self, definition: &IvrParams) -> BindOutcome {
        let Some(mine) = &self.params.definition else { return BindOutcome::Same };
        if definition.definition.as_ref() == Some(mine) {
            self.params.clips = definition.clips.clone();
            return BindOutcome::Same;
        }
        let name = mine.name.clone();
        self.params = definition.clone();
        if !self.params.menus.contains_key(&self.menu) {
            self.menu = self.params.start.clone();
        }
        self.phase = Phase::Prompt { segment: 0, frames_played: 0 };
        self.digits.clear();
        self.failures = 0;
        self.interrupted = false;
        self.input_deadline = None;
        BindOutcome::Changed { name }
    }

    fn current(&self) -> Option<&IvrMenu> {
        self.params.menus.get(&self.menu)
    }

    pub(crate) fn attach(&mut self, now: UnixMillis) {
        self.runtime.dtmf.reset();
        self.runtime.vad.reset();
        match self.phase {
            Phase::Prompt { .. } => self.clock.start(now),
            // The wait starts over: the caller may have heard nothing for a while.
            Phase::Input => self.input_deadline = Some(now.add_ms(u64::from(self.wait_ms()))),
        }
    }

    pub(crate) fn detach(&mut self) {
        self.clock.stop();
        self.input_deadline = None;
    }

    pub(crate) fn next_deadline(&self) -> Option<UnixMillis> {
        match self.phase {
            Phase::Prompt { .. } => self.clock.deadline(),
            Phase::Input => self.input_deadline,
        }
    }

    /// How long to wait for the next digit in the current state of the menu.
    fn wait_ms(&self) -> u32 {
        match self.current() {
            Some(menu) => match &menu.collect {
                Some(c) if !self.digits.is_empty() => c.inter_digit_timeout_ms,
                _ => menu.timeout_ms,
            },
            None => default_timeout_ms(),
        }
    }

    /// Frames of each segment of the current prompt at `rate_hz`.
    fn segment_lengths(&self, rate_hz: u32) -> Vec<u64> {
        let clips = self.params.clips.get();
        self.current().map_or_else(Vec::new, |m| m.prompt.iter().map(|s| s.frames(clips, rate_hz)).collect())
    }

    /// Frames of the current prompt already sent (its position), at `rate_hz`.
    fn prompt_frames_sent(&self, rate_hz: u32) -> u64 {
        let lengths = self.segment_lengths(rate_hz);
        match self.phase {
            Phase::Prompt { segment, frames_played } => {
                lengths[..(segment as usize).min(lengths.len())].iter().sum::<u64>()
                    + u64::from(frames_played)
            }
            Phase::Input => lengths.iter().sum(),
        }
    }

    /// Steps the prompt back `frames` frames that were sent but never played. A finished
    /// prompt that is still waiting for its first digit plays its unheard tail again; a prompt
    /// never rewinds past its start (earlier frames belonged to another menu), and one the
    /// caller interrupted is not played again.
    pub(crate) fn rewind(&mut self, frames: u64, audio: AudioFormat) {
        if frames == 0 || self.current().is_none() {
            return;
        }
        if matches!(self.phase, Phase::Input) && (!self.digits.is_empty() || self.interrupted) {
            // The caller is already keying in digits, or cut the prompt short: they heard
            // enough.
            return;
        }
        let lengths = self.segment_lengths(audio.sample_rate_hz);
        let position = self.prompt_frames_sent(audio.sample_rate_hz);
        let mut rest = position.saturating_sub(frames);
        for (index, len) in lengths.iter().enumerate() {
            if rest < *len {
                self.phase = Phase::Prompt { segment: index as u32, frames_played: rest as u32 };
                self.input_deadline = None;
                return;
            }
            rest -= len;
        }
    }

    pub(crate) fn run_due(&mut self, now: UnixMillis, audio: AudioFormat, fx: &mut Effects) {
        match self.phase {
            Phase::Prompt { .. } => {
                let first_due = self.clock.deadline().unwrap_or(now);
                let (emit, skipped) = self.clock.take_due(now);
                fx.dropped_frames += skipped;
                // Skipped frames (counted as dropped) do not move the prompt on: it carries
                // on from the frame the caller would have heard next.
                for i in 0..emit {
                    if !self.next_prompt_frame(audio, fx) {
                        // The wait runs from when the last frame has finished playing: the
                        // instant this frame, which the prompt no longer has, was due.
                        let played_at = first_due.add_ms((skipped + i) * FRAME_MS);
                        self.clock.stop();
                        self.phase = Phase::Input;
                        self.input_deadline = Some(played_at.add_ms(u64::from(self.wait_ms())));
                        break;
                    }
                }
            }
            Phase::Input => {
                if self.input_deadline.is_some_and(|d| now >= d) {
                    self.input_deadline = None;
                    self.on_input_timeout(now, fx);
                }
            }
        }
    }

    /// Produces the next prompt frame; `false` once the prompt is over (nothing produced).
    ///
    /// Every frame is a function of its position alone: a clip's frame is a slice of it, a
    /// tone's phase is computed from the samples before it in the segment.
    fn next_prompt_frame(&mut self, audio: AudioFormat, fx: &mut Effects) -> bool {
        let rate = audio.sample_rate_hz;
        loop {
            let Phase::Prompt { segment, frames_played } = self.phase else { return false };
            let Some(menu) = self.params.menus.get(&self.menu) else { return false };
            let Some(seg) = menu.prompt.get(segment as usize) else { return false };
            let clips = self.params.clips.get();
            let length = seg.frames(clips, rate);
            if u64::from(frames_played) >= length {
                // An empty (unbound) clip, or a position past the end: next segment.
                self.phase = Phase::Prompt { segment: segment + 1, frames_played: 0 };
                continue;
            }
            match (&seg.wav, clips) {
                (Some(name), Some(clips)) => {
                    if let Some(clip) = clips.get(name) {
                        fx.pcm.clear();
                        clip.frame(rate, u64::from(frames_played), &mut fx.pcm);
                        let mut frame = Vec::with_capacity(fx.pcm.len() * 2);
                        callworker_protocol::codec::encode(audio.encoding, &fx.pcm, &mut frame);
                        fx.frames.push(frame);
                    }
                }
                _ => {
                    let mut generator = ToneGenerator::new();
                    let spf = samples_per_frame(rate) as u64;
                    generator.skip(&seg.freqs_hz, rate, u64::from(frames_played) * spf);
                    fx.push_tone_frame(&mut generator, &seg.freqs_hz, audio);
                }
            }
            self.phase = if u64::from(frames_played) + 1 >= length {
                Phase::Prompt { segment: segment + 1, frames_played: 0 }
            } else {
                Phase::Prompt { segment, frames_played: frames_played + 1 }
            };
            return true;
        }
    }

    /// Caller audio: in-band DTMF, and voice barge-in while a prompt plays.
    pub(crate) fn audio(&mut self, now: UnixMillis, payload: &[u8], audio: AudioFormat, fx: &mut Effects) {
        // Voice counts only while a prompt of a barge-in menu plays.
        let barge_in =
            match (&self.phase, self.params.menus.get(&self.menu).and_then(|m| m.barge_in.as_ref())) {
                (Phase::Prompt { .. }, Some(b)) => Some(b.vad()),
                _ => None,
            };
        let rt = &mut *self.runtime;
        rt.pcm.clear();
        rt.digits.clear();
        let mut voice = false;
        if callworker_protocol::codec::decode(audio.encoding, payload, &mut rt.pcm).is_ok() {
            if !self.signalled_dtmf {
                rt.dtmf.push(&rt.pcm, audio.sample_rate_hz, &mut rt.digits);
            }
            match barge_in {
                // A DTMF tone is not voice.
                Some(settings) if !rt.dtmf.tone_present() => {
                    let frame_ms =
                        (rt.pcm.len() as u64 * 1000 / u64::from(audio.sample_rate_hz.max(1))) as u32;
                    voice = rt.vad.push(&rt.pcm, frame_ms, settings);
                    if voice {
                        rt.vad.reset();
                    }
                }
                _ => rt.vad.reset(),
            }
        }
        let digits = std::mem::take(&mut rt.digits);
        if let Some(&last) = digits.last() {
            rt.last_inband = Some((last, now));
        }
        if voice && let Some(b) = self.current().and_then(|m| m.barge_in.clone()) {
            self.barge_in_by_voice(now, b, audio, fx);
        }
        for &digit in &digits {
            fx.events.push(ProgramEvent::DtmfDetected { digit });
            self.press(now, digit, audio, fx);
        }
        self.runtime.digits = digits;
    }

    /// A signalled digit (Twilio `dtmf`, native `dtmf`).
    pub(crate) fn dtmf(&mut self, now: UnixMillis, digit: char, audio: AudioFormat, fx: &mut Effects) {
        self.signalled_dtmf = true;
        if let Some((last, at)) = self.runtime.last_inband
            && last == digit
            && now.since(at) <= DTMF_SAME_PRESS_MS
        {
            // The key press the detector already reported, signalled as well.
            self.runtime.last_inband = None;
            return;
        }
        self.press(now, digit, audio, fx);
    }

    /// The caller spoke over the prompt.
    fn barge_in_by_voice(&mut self, now: UnixMillis, b: IvrBargeIn, audio: AudioFormat, fx: &mut Effects) {
        self.interrupt("speech", audio, fx);
        match b.then {
            Some(choice) => self.take(now, choice, fx),
            None => self.input_deadline = Some(now.add_ms(u64::from(self.wait_ms()))),
        }
    }

    /// Stops the prompt, asks for queued audio to be cleared and reports the interruption
    /// with the prompt frames sent so far (the call works out how many were heard).
    fn interrupt(&mut self, by: &'static str, audio: AudioFormat, fx: &mut Effects) {
        let sent = self.prompt_frames_sent(audio.sample_rate_hz);
        self.clock.stop();
        self.phase = Phase::Input;
        self.interrupted = true;
        fx.clear = true;
        fx.events.push(ProgramEvent::BargeIn { menu: self.menu.clone(), by, prompt_frames_sent: sent });
    }

    /// One key press, however it was recognised.
    fn press(&mut self, now: UnixMillis, digit: char, audio: AudioFormat, fx: &mut Effects) {
        let Some(menu) = self.current() else { return };
        let collect = menu.collect.clone();
        let option = menu.options.get(&digit).cloned();
        if matches!(self.phase, Phase::Prompt { .. }) {
            // DTMF barge-in: stop the prompt and drop what is queued for the caller.
            self.interrupt("dtmf", audio, fx);
        }
        match collect {
            None => match option {
                Some(choice) => self.take(now, choice, fx),
                None => self.fail(now, fx),
            },
            Some(c) => {
                if c.terminator == Some(digit) {
                    self.finish_collect(now, &c, fx);
                    return;
                }
                self.digits.push(digit);
                if self.digits.len() as u32 >= c.max_digits {
                    self.finish_collect(now, &c, fx);
                } else {
                    self.input_deadline = Some(now.add_ms(u64::from(c.inter_digit_timeout_ms)));
                }
            }
        }
    }

    fn on_input_timeout(&mut self, now: UnixMillis, fx: &mut Effects) {
        match self.current().and_then(|m| m.collect.clone()) {
            Some(c) if !self.digits.is_empty() => self.finish_collect(now, &c, fx),
            _ => self.fail(now, fx),
        }
    }

    fn finish_collect(&mut self, now: UnixMillis, c: &IvrCollect, fx: &mut Effects) {
        if (self.digits.len() as u32) < c.min_digits.max(1) {
            self.fail(now, fx);
            return;
        }
        let digits = std::mem::take(&mut self.digits);
        fx.events.push(ProgramEvent::DigitsCollected { menu: self.menu.clone(), digits: digits.clone() });
        self.collected.insert(self.menu.clone(), digits);
        self.take(now, c.then.clone(), fx);
    }

    /// One failed attempt: the prompt again, or `on_failure` once the retries are spent.
    fn fail(&mut self, now: UnixMillis, fx: &mut Effects) {
        let Some(menu) = self.current() else { return };
        let (retries, on_failure) = (menu.retries, menu.on_failure.clone());
        self.failures += 1;
        self.digits.clear();
        if self.failures > retries {
            self.take(now, on_failure, fx);
        } else {
            self.start_prompt(now);
        }
    }

    fn take(&mut self, now: UnixMillis, choice: IvrChoice, fx: &mut Effects) {
        match choice {
            IvrChoice::Menu(id) => {
                self.menu = id;
                self.failures = 0;
                self.digits.clear();
                fx.events.push(ProgramEvent::MenuEntered { menu: self.menu.clone() });
                self.start_prompt(now);
            }
            IvrChoice::Program(program) => {
                self.clock.stop();
                self.input_deadline = None;
                fx.switch_to = Some(*program);
            }
            IvrChoice::Hangup => {
                self.clock.stop();
                self.input_deadline = None;
                fx.end = Some(EndReason::Completed);
            }
        }
    }

    fn start_prompt(&mut self, now: UnixMillis) {
        self.phase = Phase::Prompt { segment: 0, frames_played: 0 };
        self.input_deadline = None;
        self.interrupted = false;
        self.runtime.vad.reset();
        self.clock.start(now);
    }
}

#[cfg(test)]
mod tests {
    use callworker_protocol::Encoding;
    use serde_json::json;

    use super::*;
    use crate::program::{EchoParams, ProgramState};

    const PCMU: AudioFormat = AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 };

    fn params() -> IvrParams {
        serde_json::from_value(json!({
            "start": "main",
            "menus": {
                "main": {
                    "prompt": [{"freqs_hz": [440], "duration_ms": 100}, {"duration_ms": 40}],
                    "options": {"1": {"menu": "account"}, "2": {"program": {"name": "echo", "params": {"delay_ms": 0}}}, "0": {"hangup": true}},
                    "timeout_ms": 1000,
                    "retries": 1
                },
                "account": {
                    "prompt": [{"freqs_hz": [620], "duration_ms": 60}],
                    "collect": {"max_digits": 4, "terminator": "#", "inter_digit_timeout_ms": 500, "then": {"menu": "main"}},
                    "timeout_ms": 800,
                    "on_failure": {"menu": "main"}
                }
            }
        }))
        .unwrap()
    }

    /// Runs the program's timers from `from` to `to` in 20 ms steps; frames played, effects.
    fn run(s: &mut IvrState, from: u64, to: u64) -> (usize, Effects) {
        let mut fx = Effects::default();
        let mut t = from;
        while t <= to {
            s.run_due(UnixMillis(t), PCMU, &mut fx);
            t += 20;
        }
        (fx.frames.len(), fx)
    }

    #[test]
    fn the_spec_round_trips_through_json_and_postcard_and_validates() {
        let p = params();
        assert_eq!(p.validate(), Ok(()));
        let spec = ProgramSpec::Ivr(p.clone());
        let back: ProgramSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        let bytes = postcard::to_allocvec(&spec).unwrap();
        assert_eq!(postcard::from_bytes::<ProgramSpec>(&bytes).unwrap(), spec);
        let state = ProgramState::new(&spec);
        let json = serde_json::to_value(&spec).unwrap();
        assert!(json["params"].get("definition").is_none(), "inline params have no definition: {json}");
        let bytes = postcard::to_allocvec(&state).unwrap();
        assert_eq!(postcard::from_bytes::<ProgramState>(&bytes).unwrap(), state);
    }

    #[test]
    fn bad_specs_are_refused_with_the_field_at_fault() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"start": "nope", "menus": {"m": {"prompt": [{"duration_ms": 20}]}}}), "start"),
            (json!({"start": "m", "menus": {}}), "menus"),
            (json!({"start": "m", "menus": {"m": {"prompt": []}}}), "prompt"),
            (
                json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "options": {"x": {"hangup": true}}}}}),
                "options",
            ),
            (
                json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "options": {"1": {"menu": "gone"}}}}}),
                "options",
            ),
            (
                json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "timeout_ms": 10}}}),
                "timeout_ms",
            ),
            (
                json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "retries": 11}}}),
                "retries",
            ),
            (
                json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "collect": {"max_digits": 0, "then": {"hangup": true}}}}}),
                "collect",
            ),
            (
                json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "collect": {"max_digits": 2, "terminator": "x", "then": {"hangup": true}}}}}),
                "collect.terminator",
            ),
            (
                json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "on_failure": {"program": {"name": "ivr", "params": {"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}]}}}}}}}}),
                "on_failure",
            ),
            (json!({"start": "bad id", "menus": {"bad id": {"prompt": [{"duration_ms": 20}]}}}), "menus"),
        ];
        for (value, field) in cases {
            let p: IvrParams = serde_json::from_value(value.clone()).unwrap();
            match p.validate() {
                Err(SpecError::InvalidParam { field: f, .. }) => assert_eq!(f, field, "{value}"),
                other => panic!("{value} gave {other:?}"),
            }
        }
        let two = json!({"menu": "m", "hangup": true});
        assert!(serde_json::from_value::<IvrChoice>(two).is_err());
        assert!(serde_json::from_value::<IvrChoice>(json!({})).is_err());
    }

    #[test]
    fn a_digit_leads_to_its_menu_and_collected_digits_are_kept() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        // The prompt is 5 + 2 frames; then the wait.
        let (frames, _) = run(&mut s, 0, 200);
        assert_eq!(frames, 7);
        assert_eq!(s.prompt_position(), None);
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(300), '1', PCMU, &mut fx);
        assert_eq!(s.menu(), "account");
        assert_eq!(fx.events, vec![ProgramEvent::MenuEntered { menu: "account".into() }]);
        assert!(!fx.clear, "the prompt had finished: nothing to clear");
        // Barge in on the account prompt with digits, then the terminator.
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(320), '4', PCMU, &mut fx);
        assert!(fx.clear, "a digit during a prompt stops it");
        for d in ['2', '#'] {
            s.dtmf(UnixMillis(340), d, PCMU, &mut fx);
        }
        assert_eq!(s.collected().get("account").map(String::as_str), Some("42"));
        assert!(
            fx.events
                .contains(&ProgramEvent::DigitsCollected { menu: "account".into(), digits: "42".into() })
        );
        assert_eq!(s.menu(), "main");
        assert_eq!(s.prompt_position(), Some((0, 0)));
    }

    #[test]
    fn collection_ends_at_max_digits_or_after_a_pause() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        s.dtmf(UnixMillis(10), '1', PCMU, &mut Effects::default());
        let mut fx = Effects::default();
        for d in ['1', '2', '3', '4'] {
            s.dtmf(UnixMillis(100), d, PCMU, &mut fx);
        }
        assert_eq!(s.collected()["account"], "1234");
        s.dtmf(UnixMillis(200), '1', PCMU, &mut Effects::default());
        s.dtmf(UnixMillis(220), '9', PCMU, &mut Effects::default());
        assert_eq!(s.next_deadline(), Some(UnixMillis(720)));
        let (_, fx) = run(&mut s, 700, 740);
        assert_eq!(s.collected()["account"], "9");
        assert!(fx.events.contains(&ProgramEvent::MenuEntered { menu: "main".into() }));
    }

    #[test]
    fn no_input_and_invalid_digits_retry_then_fail() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        run(&mut s, 0, 140);
        // The last frame was due at 120 ms and plays until 140: the wait ends at 1140.
        assert_eq!(s.next_deadline(), Some(UnixMillis(1_140)));
        let (_, _) = run(&mut s, 160, 1_140);
        assert_eq!(s.prompt_position(), Some((0, 0)), "prompted again after no input");
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(1_200), '7', PCMU, &mut fx);
        assert_eq!(fx.end, Some(EndReason::Completed), "second failure with retries = 1 hangs up");
    }

    #[test]
    fn a_choice_can_switch_program_or_hang_up() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(0), '2', PCMU, &mut fx);
        assert_eq!(fx.switch_to, Some(ProgramSpec::Echo(EchoParams { delay_ms: 0 })));
        assert_eq!(s.next_deadline(), None);
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(0), '0', PCMU, &mut fx);
        assert_eq!(fx.end, Some(EndReason::Completed));
    }

    #[test]
    fn a_resume_replays_what_the_caller_never_heard() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        run(&mut s, 0, 80);
        assert_eq!(s.prompt_position(), Some((1, 0)));
        // Three frames were lost with the session.
        s.detach();
        s.rewind(3, PCMU);
        assert_eq!(s.prompt_position(), Some((0, 2)));
        s.attach(UnixMillis(5_000));
        let (frames, _) = run(&mut s, 5_000, 5_200);
        assert_eq!(frames, 5, "3 + 2 frames left of the prompt");
        // A finished prompt plays its unheard tail again; never past the menu's start.
        s.detach();
        s.rewind(2, PCMU);
        assert_eq!(s.prompt_position(), Some((1, 0)));
        s.rewind(100, PCMU);
        assert_eq!(s.prompt_position(), Some((0, 0)));
        // While the caller keys in digits, nothing is replayed.
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        s.dtmf(UnixMillis(0), '1', PCMU, &mut Effects::default());
        s.dtmf(UnixMillis(10), '5', PCMU, &mut Effects::default());
        s.detach();
        s.rewind(10, PCMU);
        assert_eq!(s.prompt_position(), None);
        s.attach(UnixMillis(100));
        assert_eq!(s.next_deadline(), Some(UnixMillis(600)), "the inter-digit wait starts over");
    }

    /// `frames` frames of caller audio at `t0`, 20 ms apart, each made by `make(i)`.
    fn feed(s: &mut IvrState, t0: u64, frames: usize, make: impl Fn(usize) -> Vec<i16>) -> Effects {
        let mut fx = Effects::default();
        for i in 0..frames {
            let mut payload = Vec::new();
            callworker_protocol::codec::encode(PCMU.encoding, &make(i), &mut payload);
            s.audio(UnixMillis(t0 + 20 * i as u64), &payload, PCMU, &mut fx);
        }
        fx
    }

    /// Frame `i` of a key press: 100 ms of the digit's pair, then silence.
    fn key_frame(digit: char, i: usize) -> Vec<i16> {
        let (low, high) = dsp::dtmf_freqs_hz(digit).unwrap();
        let mut pcm = Vec::new();
        if i < 5 {
            let mut g = ToneGenerator::new();
            g.skip(&[low, high], 8_000, 160 * i as u64);
            g.fill(&[low, high], 8_000, 160, &mut pcm);
        } else {
            pcm.resize(160, 0);
        }
        pcm
    }

    fn loud_noise(i: usize) -> Vec<i16> {
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (0..160)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % 16_000) as i32 - 8_000) as i16
            })
            .collect()
    }

    #[test]
    fn replayed_prompt_frames_are_the_same_bytes() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        let (_, first) = run(&mut s, 0, 80);
        assert_eq!(first.frames.len(), 5);
        s.detach();
        s.rewind(3, PCMU);
        s.attach(UnixMillis(1_000));
        let (_, again) = run(&mut s, 1_000, 1_040);
        assert_eq!(again.frames[..3], first.frames[2..5], "frames 2..5 again, byte for byte");
    }

    #[test]
    fn in_band_dtmf_navigates_like_signalled_dtmf() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        run(&mut s, 0, 40);
        let fx = feed(&mut s, 60, 10, |i| key_frame('1', i));
        assert_eq!(s.menu(), "account");
        assert_eq!(
            fx.events.iter().filter(|e| matches!(e, ProgramEvent::DtmfDetected { digit: '1' })).count(),
            1
        );
        assert!(fx.clear, "the key interrupted the prompt");
        // The gateway signals the same press right after: it is not a second digit.
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(400), '1', PCMU, &mut fx);
        assert!(fx.events.is_empty() && s.digits.is_empty(), "{:?}", fx.events);
        // From now on digits are signalled: in-band detection is off.
        let fx = feed(&mut s, 500, 10, |i| key_frame('7', i));
        assert!(fx.events.is_empty());
        assert!(s.digits.is_empty());
    }

    fn barge_in_params(then: Option<IvrChoice>) -> IvrParams {
        let mut p = params();
        let main = p.menus.get_mut("main").unwrap();
        main.prompt = vec![PromptSegment { freqs_hz: vec![440], duration_ms: 2_000, wav: None }];
        main.barge_in = Some(IvrBargeIn { threshold_dbfs: -35, min_speech_ms: 100, hangover_ms: 60, then });
        p
    }

    #[test]
    fn speech_during_a_prompt_barges_in_and_is_not_replayed_on_resume() {
        let mut s = IvrState::new(barge_in_params(None));
        s.attach(UnixMillis(0));
        run(&mut s, 0, 580); // 30 frames
        // Quiet audio does nothing.
        let fx = feed(&mut s, 600, 20, |_| vec![3; 160]);
        assert!(!fx.clear && s.prompt_position().is_some());
        let fx = feed(&mut s, 1_000, 8, loud_noise);
        assert!(fx.clear, "speech cleared the prompt");
        let barge: Vec<_> = fx.events.iter().filter(|e| matches!(e, ProgramEvent::BargeIn { .. })).collect();
        assert_eq!(
            barge,
            [&ProgramEvent::BargeIn { menu: "main".into(), by: "speech", prompt_frames_sent: 30 }],
            "after 100 ms of speech, with 30 frames sent"
        );
        assert_eq!(s.prompt_position(), None, "waiting for input");
        assert!(s.next_deadline().is_some());
        s.detach();
        s.rewind(5, PCMU);
        assert_eq!(s.prompt_position(), None, "an interrupted prompt is not played again");
        // With `then`, barge-in takes the choice.
        let mut s = IvrState::new(barge_in_params(Some(IvrChoice::Menu("account".into()))));
        s.attach(UnixMillis(0));
        run(&mut s, 0, 100);
        let fx = feed(&mut s, 120, 8, loud_noise);
        assert!(fx.events.contains(&ProgramEvent::MenuEntered { menu: "account".into() }));
        // A menu without barge_in ignores speech.
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        let fx = feed(&mut s, 0, 20, loud_noise);
        assert!(!fx.clear && fx.events.is_empty());
    }

    fn definition() -> IvrParams {
        let mut clips = IvrClips::default();
        let samples: Vec<i16> = (0..1_000).map(|i| (i * 13 % 2_000) as i16 - 1_000).collect();
        clips.clips.insert("welcome".into(), Clip::from_pcm(&samples, 8_000));
        let mut menus = params().menus;
        menus.get_mut("main").unwrap().prompt =
            vec![PromptSegment { wav: Some("welcome".into()), ..PromptSegment::default() }];
        IvrParams::definition("main-menu", "main".into(), menus, clips).unwrap()
    }

    #[test]
    fn named_definitions_play_their_clips_and_rebind_after_a_checkpoint() {
        let def = definition();
        let spec = ProgramSpec::Ivr(def.clone());
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"name": "ivr", "params": {"definition": "main-menu"}})
        );
        let mut s = IvrState::new(def.clone());
        s.attach(UnixMillis(0));
        let (frames, fx) = run(&mut s, 0, 200);
        assert_eq!(frames, 7, "1000 samples are 7 frames (the last padded)");
        let clip = def.clips.get().unwrap().get("welcome").unwrap();
        let mut expected = Vec::new();
        callworker_protocol::codec::encode(PCMU.encoding, &clip.samples(8_000)[160..320], &mut expected);
        assert_eq!(fx.frames[1], expected);
        // Through a checkpoint the clips are gone; binding brings them back.
        let bytes = postcard::to_allocvec(&s).unwrap();
        let mut back: IvrState = postcard::from_bytes(&bytes).unwrap();
        assert!(back.params.clips.get().is_none());
        assert_eq!(back.params.definition, def.definition);
        assert_eq!(back.bind(&def), BindOutcome::Same);
        assert!(back.params.clips.get().is_some());
        // Another version of the definition: the call moves to it, prompt from the start.
        let mut other = def.clone();
        other.definition.as_mut().unwrap().hash ^= 1;
        back.rewind(3, PCMU);
        assert_eq!(back.bind(&other), BindOutcome::Changed { name: "main-menu".into() });
        assert_eq!(back.prompt_position(), Some((0, 0)));
        // Resolving a reference.
        let mut named: ProgramSpec =
            serde_json::from_value(json!({"name": "ivr", "params": {"definition": "main-menu"}})).unwrap();
        assert!(named.validate().is_err(), "unresolved");
        let mut missing = named.clone();
        let mut library = BTreeMap::new();
        assert!(missing.resolve_ivr(&library).is_err());
        library.insert("main-menu".to_owned(), def.clone());
        named.resolve_ivr(&library).unwrap();
        assert_eq!(named, spec);
        assert_eq!(named.validate(), Ok(()));
    }

    #[test]
    fn clips_are_refused_inline_and_barge_in_is_bounded() {
        let wav_inline = json!({"start": "m", "menus": {"m": {"prompt": [{"wav": "hello"}]}}});
        let p: IvrParams = serde_json::from_value(wav_inline).unwrap();
        assert!(matches!(p.validate(), Err(SpecError::InvalidParam { field: "prompt.wav", .. })));
        let both = json!({"definition": "x", "start": "m", "menus": {}});
        assert!(serde_json::from_value::<IvrParams>(both).is_err());
        for (barge_in, field) in [
            (json!({"threshold_dbfs": 3}), "barge_in.threshold_dbfs"),
            (json!({"min_speech_ms": 0}), "barge_in.min_speech_ms"),
            (json!({"hangover_ms": 9_000}), "barge_in.hangover_ms"),
            (json!({"then": {"menu": "nope"}}), "barge_in.then"),
        ] {
            let v = json!({"start": "m", "menus": {"m": {"prompt": [{"duration_ms": 20}], "barge_in": barge_in}}});
            let p: IvrParams = serde_json::from_value(v).unwrap();
            match p.validate() {
                Err(SpecError::InvalidParam { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{other:?}"),
            }
        }
    }
}
