//! The call, as a sans-IO state machine.
//!
//! A [`Call`] is everything callworker must remember about one phone call: who it belongs
//! to, where its media stands, what its program is doing, a bounded timeline of what
//! happened, and why it ended. It is driven by [`Call::handle`]`(now, input, outputs)` and
//! asks to be woken at [`Call::poll_timeout`]; it never reads a clock, a socket or Redis.
//! Its whole state is `serde`-serializable and is what [`checkpoint`] persists, so a call
//! resumed on another worker continues exactly where the checkpoint left it.
//!
//! Layout:
//! - [`ids`]: validated identifiers ([`CallId`], [`TenantId`], [`WorkerId`], [`Epoch`]).
//! - [`time`]: [`UnixMillis`], the only notion of time in here (passed in by the caller).
//! - [`end`]: [`EndReason`] (DESIGN.md §4) and [`ResumeCause`].
//! - [`call`]: [`Call`], [`CallSpec`], [`Input`], [`Output`], media positions, limits.
//! - [`timeline`]: the bounded event timeline.
//! - [`program`]: call programs (`echo`, `tone`, `ivr`, `agent`), the `play_tone`
//!   [`Overlay`], and [`Action`]s injected by the API (tones and tone sequences, program
//!   switches, DTMF, mute, transfer, hang-up).
//! - [`dsp`]: tone generation, Goertzel tone detection, in-band DTMF detection, voice
//!   activity detection and prompt resampling.
//! - [`checkpoint`]: the versioned checkpoint envelope around a postcard-encoded [`Call`].
//! - `fuzzing` (feature `fuzzing`): the check the checkpoint fuzz target in `fuzz/` runs,
//!   shared with the stable corpus replay.
//!
//! Invariants:
//! - An ended call stays ended: every input after the end is ignored and yields no output.
//! - Every call that ends has exactly one [`EndReason`], recorded once in the timeline.
//! - Inbound audio sequence numbers are applied at most once (duplicates are dropped) and
//!   `media.inbound_applied_seq` never decreases.
//! - Outbound audio sequence numbers increase by one per frame, across resumes.
//! - Every collection in a call has a bound from [`CallLimits`]; when full, the oldest entry
//!   is dropped and counted.

pub mod call;
pub mod checkpoint;
pub mod dsp;
pub mod end;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ids;
pub mod program;
pub mod time;
pub mod timeline;

pub use call::{
    Call, CallLimits, CallSpec, CallStatus, Direction, Input, MediaPositions, Mute, Output,
    RecordingSettings, Resume, Transport, TwilioLeg,
};
pub use end::{EndReason, ResumeCause};
pub use ids::{CallId, Epoch, IdError, TenantId, WorkerId};
pub use program::{Action, MuteDirection, Overlay, ProgramSpec, ProgramState, SpecError, TransferTarget};
pub use time::UnixMillis;
pub use timeline::{CallEvent, EventKind, Timeline};
