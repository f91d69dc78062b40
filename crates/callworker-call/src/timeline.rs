//! The call's bounded event timeline (served by `GET /v1/calls/{id}/events`).

use std::collections::VecDeque;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::call::Transport;
use crate::end::{EndReason, ResumeCause};
use crate::time::UnixMillis;

/// What happened.
///
/// JSON (the API): internally tagged, `{"type": "dtmf", "digit": "5"}`. Binary formats such
/// as the postcard checkpoint payload cannot decode internally tagged enums (they need
/// `deserialize_any`), so there the enum is externally tagged (variant index, then fields).
/// The choice is made by `is_human_readable`, the same way serde encodes `IpAddr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Created {
        program: String,
    },
    /// A media session attached (first time).
    Attached {
        transport: Transport,
    },
    /// A media session attached to a call that had been attached before.
    Resumed {
        transport: Transport,
        cause: ResumeCause,
        gap_ms: u64,
    },
    /// The media session went away; the call waits for a resume.
    Detached,
    Dtmf {
        digit: char,
    },
    ProgramSwitched {
        program: String,
    },
    /// An API action was applied (`play_tone`, `switch_program`, `hangup`).
    ActionApplied {
        action: String,
    },
    Ended {
        reason: EndReason,
    },
    /// An IVR moved to another menu.
    MenuEntered {
        menu: String,
    },
    /// An IVR menu collected digits.
    DigitsCollected {
        menu: String,
        digits: String,
    },
    /// A DTMF digit injected by the control API (`inject_dtmf`), delivered to the program
    /// as if the caller had pressed it. JSON: `{"type": "dtmf", "digit": "5", "source": "api"}`.
    DtmfInjected {
        digit: char,
    },
    /// A DTMF digit detected in the caller's audio (in-band); signalled digits are `dtmf`.
    DtmfDetected {
        digit: char,
    },
    /// The caller interrupted an IVR prompt, `by` `speech` or `dtmf`. The caller had heard
    /// `prompt_frames_heard` frames of it: those sent up to `played_upto_seq`, the last
    /// outbound audio the client reported as played.
    BargeIn {
        menu: String,
        by: String,
        played_upto_seq: u64,
        prompt_frames_heard: u64,
    },
    /// The call resumed on a worker whose copy of its IVR definition differs from the one
    /// it started with; it continues in the new one, from the start of the menu's prompt.
    IvrDefinitionChanged {
        definition: String,
    },
    /// The agent leg (agent program): `connected`, `resumed`, `lost`, `failed` (with the
    /// error code as detail), `transfer` (the target), `hangup` (the agent's reason).
    Agent {
        event: String,
        detail: Option<String>,
    },
}

impl EventKind {
    /// The snake_case `type` of the event in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Created { .. } => "created",
            EventKind::Attached { .. } => "attached",
            EventKind::Resumed { .. } => "resumed",
            EventKind::Detached => "detached",
            EventKind::Dtmf { .. } => "dtmf",
            EventKind::ProgramSwitched { .. } => "program_switched",
            EventKind::ActionApplied { .. } => "action_applied",
            EventKind::Ended { .. } => "ended",
            EventKind::MenuEntered { .. } => "menu_entered",
            EventKind::DigitsCollected { .. } => "digits_collected",
            EventKind::DtmfInjected { .. } => "dtmf",
            EventKind::DtmfDetected { .. } => "dtmf_detected",
            EventKind::BargeIn { .. } => "barge_in",
            EventKind::IvrDefinitionChanged { .. } => "ivr_definition_changed",
            EventKind::Agent { .. } => "agent",
        }
    }
}

/// The human-readable (JSON) shape of [`EventKind`]. A remote derive: the compiler checks
/// that it lists exactly the variants and fields of [`EventKind`].
#[derive(Serialize, Deserialize)]
#[serde(remote = "EventKind", tag = "type", rename_all = "snake_case")]
enum EventKindJson {
    Created {
        program: String,
    },
    Attached {
        transport: Transport,
    },
    Resumed {
        transport: Transport,
        cause: ResumeCause,
        gap_ms: u64,
    },
    Detached,
    Dtmf {
        digit: char,
    },
    ProgramSwitched {
        program: String,
    },
    ActionApplied {
        action: String,
    },
    Ended {
        reason: EndReason,
    },
    MenuEntered {
        menu: String,
    },
    DigitsCollected {
        menu: String,
        digits: String,
    },
    /// Written as a `dtmf` event with `"source": "api"`. Read back (nothing in the worker
    /// reads events from JSON) it is the `dtmf_injected` type, so one JSON `type` never
    /// names two variants.
    #[serde(rename(serialize = "dtmf", deserialize = "dtmf_injected"), serialize_with = "injected_dtmf_json")]
    DtmfInjected {
        digit: char,
    },
    DtmfDetected {
        digit: char,
    },
    BargeIn {
        menu: String,
        by: String,
        played_upto_seq: u64,
        prompt_frames_heard: u64,
    },
    IvrDefinitionChanged {
        definition: String,
    },
    Agent {
        event: String,
        detail: Option<String>,
    },
}

/// The JSON fields of an injected digit: the digit and where it came from.
fn injected_dtmf_json<S: Serializer>(digit: &char, serializer: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Injected {
        digit: char,
        source: &'static str,
    }
    Injected { digit: *digit, source: "api" }.serialize(serializer)
}

/// The binary (checkpoint) shape of [`EventKind`]: externally tagged, positional.
/// Variants may only be appended; reordering them changes the checkpoint format.
#[derive(Serialize, Deserialize)]
#[serde(remote = "EventKind")]
enum EventKindBinary {
    Created { program: String },
    Attached { transport: Transport },
    Resumed { transport: Transport, cause: ResumeCause, gap_ms: u64 },
    Detached,
    Dtmf { digit: char },
    ProgramSwitched { program: String },
    ActionApplied { action: String },
    Ended { reason: EndReason },
    MenuEntered { menu: String },
    DigitsCollected { menu: String, digits: String },
    DtmfInjected { digit: char },
    DtmfDetected { digit: char },
    BargeIn { menu: String, by: String, played_upto_seq: u64, prompt_frames_heard: u64 },
    IvrDefinitionChanged { definition: String },
    Agent { event: String, detail: Option<String> },
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            EventKindJson::serialize(self, serializer)
        } else {
            EventKindBinary::serialize(self, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            EventKindJson::deserialize(deserializer)
        } else {
            EventKindBinary::deserialize(deserializer)
        }
    }
}

/// One timeline entry.
///
/// JSON: the event's fields next to `at`, e.g.
/// `{"at": 1700000000000, "type": "resumed", "transport": "native", "cause": "worker_lost",
/// "gap_ms": 840}`. Binary: `at`, then the [`EventKind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEvent {
    pub at: UnixMillis,
    pub kind: EventKind,
}

/// JSON shape of [`CallEvent`]: `flatten` is fine for JSON but unsupported by postcard.
#[derive(Serialize, Deserialize)]
#[serde(remote = "CallEvent")]
struct CallEventJson {
    at: UnixMillis,
    #[serde(flatten)]
    kind: EventKind,
}

/// Binary shape of [`CallEvent`].
#[derive(Serialize, Deserialize)]
#[serde(remote = "CallEvent")]
struct CallEventBinary {
    at: UnixMillis,
    kind: EventKind,
}

impl Serialize for CallEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            CallEventJson::serialize(self, serializer)
        } else {
            CallEventBinary::serialize(self, serializer)
        }
    }
}

impl<'de> Deserialize<'de> for CallEvent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            CallEventJson::deserialize(deserializer)
        } else {
            CallEventBinary::deserialize(deserializer)
        }
    }
}

/// Events in order, at most `cap` of them. When full the oldest is dropped and counted in
/// `dropped`: the newest events matter most to someone debugging a live call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    events: VecDeque<CallEvent>,
    dropped: u64,
    cap: u32,
}

impl Timeline {
    /// An empty timeline holding at most `cap` events (at least 1).
    pub fn new(cap: u32) -> Timeline {
        let cap = cap.max(1);
        Timeline {
            // Preallocate a little, not `cap`: most calls log a handful of events.
            events: VecDeque::with_capacity((cap as usize).min(16)),
            dropped: 0,
            cap,
        }
    }

    /// Appends an event, dropping the oldest when full.
    pub fn push(&mut self, at: UnixMillis, kind: EventKind) {
        // `while`, not `if`: a timeline read from a checkpoint may hold more than `cap`.
        let cap = self.cap.max(1) as usize;
        while self.events.len() >= cap {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(CallEvent { at, kind });
    }

    /// The most events kept.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    pub fn events(&self) -> impl Iterator<Item = &CallEvent> {
        self.events.iter()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Events dropped because the timeline was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn push_drops_oldest_when_full_and_counts() {
        let mut t = Timeline::new(2);
        for at in 1..=5 {
            t.push(UnixMillis(at), EventKind::Detached);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.dropped(), 3);
        let ats: Vec<u64> = t.events().map(|e| e.at.0).collect();
        assert_eq!(ats, [4, 5]);
        let mut zero = Timeline::new(0);
        assert_eq!(zero.cap(), 1);
        zero.push(UnixMillis(1), EventKind::Detached);
        zero.push(UnixMillis(2), EventKind::Detached);
        assert_eq!((zero.len(), zero.dropped()), (1, 1));
    }

    #[test]
    fn events_have_a_flat_json_shape() {
        let cases = [
            (
                EventKind::Created { program: "echo".into() },
                json!({"at": 7, "type": "created", "program": "echo"}),
            ),
            (
                EventKind::Attached { transport: Transport::Twilio },
                json!({"at": 7, "type": "attached", "transport": "twilio"}),
            ),
            (
                EventKind::Resumed {
                    transport: Transport::Native,
                    cause: ResumeCause::WorkerLost,
                    gap_ms: 840,
                },
                json!({"at": 7, "type": "resumed", "transport": "native", "cause": "worker_lost", "gap_ms": 840}),
            ),
            (EventKind::Detached, json!({"at": 7, "type": "detached"})),
            (EventKind::Dtmf { digit: '#' }, json!({"at": 7, "type": "dtmf", "digit": "#"})),
            (
                EventKind::ProgramSwitched { program: "tone".into() },
                json!({"at": 7, "type": "program_switched", "program": "tone"}),
            ),
            (
                EventKind::ActionApplied { action: "hangup".into() },
                json!({"at": 7, "type": "action_applied", "action": "hangup"}),
            ),
            (
                EventKind::Ended { reason: EndReason::MaxDuration },
                json!({"at": 7, "type": "ended", "reason": "max_duration"}),
            ),
            (EventKind::DtmfDetected { digit: '5' }, json!({"at": 7, "type": "dtmf_detected", "digit": "5"})),
            (
                EventKind::BargeIn {
                    menu: "main".into(),
                    by: "speech".into(),
                    played_upto_seq: 31,
                    prompt_frames_heard: 30,
                },
                json!({"at": 7, "type": "barge_in", "menu": "main", "by": "speech", "played_upto_seq": 31, "prompt_frames_heard": 30}),
            ),
            (
                EventKind::IvrDefinitionChanged { definition: "main-menu".into() },
                json!({"at": 7, "type": "ivr_definition_changed", "definition": "main-menu"}),
            ),
        ];
        for (kind, expected) in cases {
            assert_eq!(json!({"type": kind.name()})["type"], expected["type"]);
            let event = CallEvent { at: UnixMillis(7), kind };
            assert_eq!(serde_json::to_value(&event).unwrap(), expected);
            let back: CallEvent = serde_json::from_value(expected).unwrap();
            assert_eq!(back, event);
            let bytes = postcard::to_allocvec(&event).unwrap();
            assert_eq!(postcard::from_bytes::<CallEvent>(&bytes).unwrap(), event);
        }
    }

    #[test]
    fn timeline_round_trips_through_json_and_postcard() {
        let mut t = Timeline::new(3);
        t.push(UnixMillis(1), EventKind::Created { program: "echo".into() });
        t.push(UnixMillis(2), EventKind::Dtmf { digit: '5' });
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timeline>(&json).unwrap(), t);
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<Timeline>(&bytes).unwrap(), t);
    }
}
