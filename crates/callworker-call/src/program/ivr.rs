//! The IVR program: menus of prompts navigated with DTMF.
//!
//! A menu plays its prompt (tone and silence segments, on the program's frame clock), then
//! waits for the caller. A menu with `options` maps single digits to a choice; a menu with
//! `collect` gathers several digits (a terminator, a maximum, an inter-digit timeout) and then
//! takes its `then` choice. A digit pressed during the prompt interrupts it (DTMF barge-in:
//! the program asks the session to clear the audio already queued). No input within the
//! menu's timeout, or an invalid digit, costs one attempt; the prompt plays again until
//! `retries` is spent, then `on_failure` is taken. A choice goes to another menu, switches the
//! call to another program (echo, tone) or hangs up.
//!
//! Resume: the prompt position is counted in frames, so after a failover the call rewinds
//! by the frames the caller never heard (the last played mark) and plays on from there; a
//! menu whose prompt had finished plays the unheard tail again. Digits collected so far and
//! the menu the caller is in are part of the checkpointed state.

use std::collections::BTreeMap;

use callworker_protocol::AudioFormat;
use serde::{Deserialize, Serialize};

use crate::dsp::{self, ToneGenerator};
use crate::end::EndReason;
use crate::program::{Effects, FRAME_MS, FrameClock, ProgramEvent, ProgramSpec, SpecError, ToneSegment};
use crate::time::UnixMillis;

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

/// Parameters of the IVR program: `{"start": "main", "menus": {"main": {…}, …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrParams {
    /// The menu the call starts in.
    pub start: String,
    pub menus: BTreeMap<String, IvrMenu>,
}

/// One menu: a prompt, then what the caller may press.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IvrMenu {
    /// Played on entry and on every retry (tones and silences).
    pub prompt: Vec<ToneSegment>,
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

fn invalid(field: &'static str, reason: String) -> SpecError {
    SpecError::InvalidParam { field, reason }
}

impl IvrParams {
    /// Checks every bound and that every menu a choice names exists.
    pub fn validate(&self) -> Result<(), SpecError> {
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
            menu.validate(&self.menus).map_err(at)?;
        }
        Ok(())
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

impl IvrMenu {
    fn validate(&self, menus: &BTreeMap<String, IvrMenu>) -> Result<(), SpecError> {
        super::validate_segments("prompt", &self.prompt)?;
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
    generator: ToneGenerator,
    /// Paces prompt frames; stopped while waiting for input and while detached.
    clock: FrameClock,
    /// When waiting for input gives up; `None` while prompting or detached.
    input_deadline: Option<UnixMillis>,
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
            generator: ToneGenerator::new(),
            clock: FrameClock::default(),
            input_deadline: None,
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

    fn current(&self) -> Option<&IvrMenu> {
        self.params.menus.get(&self.menu)
    }

    pub(crate) fn attach(&mut self, now: UnixMillis) {
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

    /// Steps the prompt back `frames` frames that were sent but never played. A finished
    /// prompt that is still waiting for its first digit plays its unheard tail again; a prompt
    /// never rewinds past its start (earlier frames belonged to another menu).
    pub(crate) fn rewind(&mut self, frames: u64) {
        if frames == 0 {
            return;
        }
        let Some(menu) = self.current() else { return };
        let lengths: Vec<u64> = menu.prompt.iter().map(|s| u64::from(s.frames())).collect();
        let total: u64 = lengths.iter().sum();
        let position = match self.phase {
            Phase::Prompt { segment, frames_played } => {
                lengths[..(segment as usize).min(lengths.len())].iter().sum::<u64>()
                    + u64::from(frames_played)
            }
            Phase::Input if self.digits.is_empty() => total,
            // The caller is already keying in digits: they heard enough.
            Phase::Input => return,
        };
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
    fn next_prompt_frame(&mut self, audio: AudioFormat, fx: &mut Effects) -> bool {
        let Phase::Prompt { segment, frames_played } = self.phase else { return false };
        let Some(menu) = self.params.menus.get(&self.menu) else { return false };
        let Some(seg) = menu.prompt.get(segment as usize) else { return false };
        fx.push_tone_frame(&mut self.generator, &seg.freqs_hz, audio);
        self.phase = if frames_played + 1 >= seg.frames() {
            Phase::Prompt { segment: segment + 1, frames_played: 0 }
        } else {
            Phase::Prompt { segment, frames_played: frames_played + 1 }
        };
        true
    }

    pub(crate) fn dtmf(&mut self, now: UnixMillis, digit: char, fx: &mut Effects) {
        let Some(menu) = self.current() else { return };
        let collect = menu.collect.clone();
        let option = menu.options.get(&digit).cloned();
        if matches!(self.phase, Phase::Prompt { .. }) {
            // DTMF barge-in: stop the prompt and drop what is queued for the caller.
            self.clock.stop();
            self.phase = Phase::Input;
            fx.clear = true;
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
        s.dtmf(UnixMillis(300), '1', &mut fx);
        assert_eq!(s.menu(), "account");
        assert_eq!(fx.events, vec![ProgramEvent::MenuEntered { menu: "account".into() }]);
        assert!(!fx.clear, "the prompt had finished: nothing to clear");
        // Barge in on the account prompt with digits, then the terminator.
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(320), '4', &mut fx);
        assert!(fx.clear, "a digit during a prompt stops it");
        for d in ['2', '#'] {
            s.dtmf(UnixMillis(340), d, &mut fx);
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
        s.dtmf(UnixMillis(10), '1', &mut Effects::default());
        let mut fx = Effects::default();
        for d in ['1', '2', '3', '4'] {
            s.dtmf(UnixMillis(100), d, &mut fx);
        }
        assert_eq!(s.collected()["account"], "1234");
        s.dtmf(UnixMillis(200), '1', &mut Effects::default());
        s.dtmf(UnixMillis(220), '9', &mut Effects::default());
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
        s.dtmf(UnixMillis(1_200), '7', &mut fx);
        assert_eq!(fx.end, Some(EndReason::Completed), "second failure with retries = 1 hangs up");
    }

    #[test]
    fn a_choice_can_switch_program_or_hang_up() {
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(0), '2', &mut fx);
        assert_eq!(fx.switch_to, Some(ProgramSpec::Echo(EchoParams { delay_ms: 0 })));
        assert_eq!(s.next_deadline(), None);
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        let mut fx = Effects::default();
        s.dtmf(UnixMillis(0), '0', &mut fx);
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
        s.rewind(3);
        assert_eq!(s.prompt_position(), Some((0, 2)));
        s.attach(UnixMillis(5_000));
        let (frames, _) = run(&mut s, 5_000, 5_200);
        assert_eq!(frames, 5, "3 + 2 frames left of the prompt");
        // A finished prompt plays its unheard tail again; never past the menu's start.
        s.detach();
        s.rewind(2);
        assert_eq!(s.prompt_position(), Some((1, 0)));
        s.rewind(100);
        assert_eq!(s.prompt_position(), Some((0, 0)));
        // While the caller keys in digits, nothing is replayed.
        let mut s = IvrState::new(params());
        s.attach(UnixMillis(0));
        s.dtmf(UnixMillis(0), '1', &mut Effects::default());
        s.dtmf(UnixMillis(10), '5', &mut Effects::default());
        s.detach();
        s.rewind(10);
        assert_eq!(s.prompt_position(), None);
        s.attach(UnixMillis(100));
        assert_eq!(s.next_deadline(), Some(UnixMillis(600)), "the inter-digit wait starts over");
    }
}
