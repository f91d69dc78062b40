//! Memory signals for the call-worker's memory governor.
//!
//! A worker that the kernel OOM-kills loses every live call at once. The governor's job is
//! to shed load before that, and this crate's first layer is what it measures: the
//! worker's own memory cgroup, read the way the kernel and Kubernetes see it. This layer
//! only reports signals; deciding what to do about them is a separate layer.
//!
//! Layout:
//! - [`cgroup`]: [`find_memory_cgroup`] resolves this process's memory cgroup
//!   ([`CgroupMemory`]: [`CgroupVersion`] + directory) from the text of `/proc/self/cgroup`
//!   and `/proc/self/mountinfo`, for v1, v2 and hybrid hosts; [`cgroup::v2`] and
//!   [`cgroup::v1`] parse the memory files of each version into [`MemoryStat`],
//!   [`MemoryEvents`], [`OomControl`] and limits.
//! - [`psi`]: [`Pressure`] from `memory.pressure` or `/proc/pressure/memory`.
//! - [`sample`]: [`MemorySample`], one reading of everything;
//!   [`working_set_bytes`] and [`effective_limit_bytes`], the arithmetic the governor's
//!   pressure ratio is built from; and the thin blocking I/O layer: [`discover`],
//!   [`read_sample`], [`read_system_pressure`].
//! - [`policy`]: [`Policy`], the pure decision layer: [`Observation`]s in, a [`Level`]
//!   with hysteresis and growth projection and a [`Decision`] (purge, migrate, last
//!   resort) out; table-tested with a fake clock.
//! - [`error`]: [`ParseError`] (what was wrong with a text) and [`SignalError`] (which
//!   file, or which discovery step).
//!
//! Invariants:
//! - Parsers are pure functions of `&str`, never panic, and allocate at most an error
//!   excerpt of bounded length; odd input is a typed error, and unknown keys are ignored.
//! - All I/O is in [`sample`]: `std::fs` only, files capped at [`TEXT_BYTES_MAX`], every
//!   error naming the file. Nothing assumes the cgroup is at a fixed path.
//! - Sizes are bytes and say so (`*_bytes`); `None` as a limit means "unlimited", never 0
//!   or a sentinel: v2 `max` and v1's huge "unlimited" number both become `None`.
//! - Working set = usage − inactive file pages, saturating: cAdvisor's and the kubelet's
//!   definition, so the worker and Kubernetes agree on how full the container is.
//! - The effective limit is the smallest of the hard limit, v2 `memory.high` and a
//!   configured limit: configuration can lower the limit, never raise it above the kernel's.

pub mod cgroup;
pub mod error;
pub mod policy;
pub mod psi;
pub mod sample;
mod text;

pub use cgroup::v1::OomControl;
pub use cgroup::v2::MemoryEvents;
pub use cgroup::{CgroupMemory, CgroupVersion, MemoryStat, find_memory_cgroup};
pub use error::{ParseError, SignalError};
pub use policy::{Decision, Level, Observation, Policy, Thresholds};
pub use psi::{Pressure, parse_pressure};
pub use sample::{
    MemorySample, TEXT_BYTES_MAX, discover, effective_limit_bytes, read_sample, read_system_pressure,
    working_set_bytes,
};
