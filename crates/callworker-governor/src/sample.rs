//! One reading of all memory signals ([`MemorySample`]), the pure arithmetic on it, and the
//! thin blocking I/O layer: [`discover`], [`read_sample`], [`read_system_pressure`].
//!
//! The I/O functions use `std::fs` and block for microseconds (a few small pseudo-files);
//! an async caller runs them on a blocking thread.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::v1::{self, OomControl};
use crate::cgroup::v2::{self, MemoryEvents};
use crate::cgroup::{CgroupMemory, CgroupVersion, MemoryStat, find_memory_cgroup};
use crate::error::{ParseError, SignalError};
use crate::psi::{Pressure, parse_pressure};

/// Largest file the I/O layer reads. `memory.stat` is a few KiB; `/proc/self/mountinfo` on
/// a busy Kubernetes node can reach hundreds of KiB. Anything bigger is not the file we
/// meant, and reading it whole every 250 ms would be a cost the governor must not have.
pub const TEXT_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// How many ancestor cgroups [`read_sample`] visits for v2 limits. Real trees are under ten
/// deep (`/kubepods.slice/…/cri-containerd-….scope`); the bound keeps a strange mount
/// layout from turning one sample into an unbounded walk.
pub const ANCESTORS_MAX: usize = 32;

/// `EOPNOTSUPP` on Linux: what reading a PSI file returns when the kernel was booted with
/// `psi=0`. Spelled out here because the crate does not depend on `libc` for one constant.
const EOPNOTSUPP_LINUX: i32 = 95;

/// Working set: usage minus inactive page cache, never below zero.
///
/// This is the definition cAdvisor uses for `container_memory_working_set_bytes` and the
/// kubelet uses for eviction, so the governor and Kubernetes agree on what "full" means:
/// inactive file pages are the first thing the kernel reclaims, so they are not pressure.
pub fn working_set_bytes(usage_bytes: u64, inactive_file_bytes: u64) -> u64 {
    usage_bytes.saturating_sub(inactive_file_bytes)
}

/// The limit the governor measures against: the smallest of those that are set.
///
/// - `cgroup_limit`: v2 `memory.max` / v1 `memory.limit_in_bytes` (the OOM line).
/// - `high`: v2 `memory.high`. Not an OOM line, but above it the kernel throttles the
///   cgroup's allocations and reclaims hard, which stalls live audio just the same.
/// - `configured`: an operator's override. It applies when there is no cgroup limit (a
///   bare host or a container without one) and when it is lower than the cgroup's; it can
///   never raise the limit above what the kernel enforces.
///
/// `None` only when none of the three is set: nothing to measure against.
pub fn effective_limit_bytes(
    cgroup_limit: Option<u64>,
    high: Option<u64>,
    configured: Option<u64>,
) -> Option<u64> {
    [cgroup_limit, high, configured].into_iter().flatten().min()
}

/// One reading of the memory signals of this process's cgroup.
///
/// Counters (`oom_kill_count`, `events`, PSI `total`) are cumulative since the cgroup was
/// created; the governor compares consecutive samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemorySample {
    pub version: CgroupVersion,
    /// Hard limit, the smallest along the path to the root: v2 `memory.max` of this cgroup
    /// and its visible ancestors; v1 `memory.limit_in_bytes` and `hierarchical_memory_limit`.
    /// `None` = unlimited. An ancestor's limit is shared with its other descendants
    /// (sidecars in the same pod, other services in a slice), whose usage this sample does
    /// not include.
    pub limit_bytes: Option<u64>,
    /// v2 `memory.high`, smallest along the visible path to the root; always `None` on v1.
    pub high_bytes: Option<u64>,
    /// v2 `memory.current` / v1 `memory.usage_in_bytes`.
    pub usage_bytes: u64,
    /// From `memory.stat` (see [`MemoryStat`]).
    pub inactive_file_bytes: u64,
    pub active_file_bytes: Option<u64>,
    pub anon_bytes: Option<u64>,
    pub file_bytes: Option<u64>,
    /// [`working_set_bytes`] of the two fields above: the governor's main signal.
    pub working_set_bytes: u64,
    /// Processes the OOM killer has killed in this cgroup: v2 `memory.events` `oom_kill`,
    /// v1 `memory.oom_control` `oom_kill`.
    pub oom_kill_count: u64,
    /// v2 `memory.events`; `None` on v1.
    pub events: Option<MemoryEvents>,
    /// v1 `memory.oom_control`; `None` on v2.
    pub oom_control: Option<OomControl>,
    /// The cgroup's own PSI (v2 `memory.pressure`); `None` on v1 and when PSI is disabled.
    /// Machine-wide PSI is [`read_system_pressure`].
    pub pressure: Option<Pressure>,
}

impl MemorySample {
    /// [`effective_limit_bytes`] for this sample and an optional configured limit.
    pub fn effective_limit_bytes(&self, configured: Option<u64>) -> Option<u64> {
        effective_limit_bytes(self.limit_bytes, self.high_bytes, configured)
    }
}

/// Find this process's memory cgroup by reading `/proc/self/cgroup` and
/// `/proc/self/mountinfo` (see [`find_memory_cgroup`]).
///
/// `Ok(None)`: no memory cgroup to watch — no `/proc/self/cgroup` (not Linux, or no
/// procfs), no memory controller in it, or a v2 cgroup without the memory controller
/// enabled (no `memory.current`, which is also the case for the root cgroup).
/// [`SignalError::NotMounted`]: in a memory cgroup that no mount shows.
pub fn discover() -> Result<Option<CgroupMemory>, SignalError> {
    let Some(proc_self_cgroup) = read_optional(Path::new("/proc/self/cgroup"))? else {
        return Ok(None);
    };
    let mountinfo = read_text(Path::new("/proc/self/mountinfo"))?;
    let Some(found) = find_memory_cgroup(&proc_self_cgroup, &mountinfo)? else {
        return Ok(None);
    };
    if found.version == CgroupVersion::V2 && !found.dir.join("memory.current").is_file() {
        return Ok(None);
    }
    Ok(Some(found))
}

/// Read every signal of `cg` once. Fails if a file every memory cgroup has is missing or
/// malformed (the error names it); PSI is optional.
pub fn read_sample(cg: &CgroupMemory) -> Result<MemorySample, SignalError> {
    match cg.version {
        CgroupVersion::V2 => read_sample_v2(&cg.dir),
        CgroupVersion::V1 => read_sample_v1(&cg.dir),
    }
}

/// Machine-wide memory PSI from `/proc/pressure/memory`; `Ok(None)` when the kernel has no
/// PSI (file missing, or booted with `psi=0`). Inside a container this is the host's
/// pressure, not the container's.
pub fn read_system_pressure() -> Result<Option<Pressure>, SignalError> {
    read_optional_parsed(Path::new("/proc/pressure/memory"), parse_pressure)
}

fn read_sample_v2(dir: &Path) -> Result<MemorySample, SignalError> {
    let usage_bytes = read_parsed(&dir.join("memory.current"), v2::parse_current)?;
    let stat = read_parsed(&dir.join("memory.stat"), v2::parse_stat)?;
    let events = read_parsed(&dir.join("memory.events"), v2::parse_events)?;
    let pressure = read_optional_parsed(&dir.join("memory.pressure"), parse_pressure)?;
    let limit_bytes = min_over_ancestors(dir, "memory.max")?;
    let high_bytes = min_over_ancestors(dir, "memory.high")?;
    Ok(MemorySample {
        limit_bytes,
        high_bytes,
        oom_kill_count: events.oom_kill,
        events: Some(events),
        oom_control: None,
        pressure,
        ..sample_from(CgroupVersion::V2, usage_bytes, &stat)
    })
}

fn read_sample_v1(dir: &Path) -> Result<MemorySample, SignalError> {
    let usage_bytes = read_parsed(&dir.join("memory.usage_in_bytes"), v1::parse_usage)?;
    let stat = read_parsed(&dir.join("memory.stat"), v1::parse_stat)?;
    let oom_control = read_parsed(&dir.join("memory.oom_control"), v1::parse_oom_control)?;
    let own_limit = read_parsed(&dir.join("memory.limit_in_bytes"), |text| v1::parse_limit(text, None))?;
    let hierarchical_limit = stat.hierarchical_limit_raw.and_then(|raw| v1::limit_from_raw(raw, None));
    Ok(MemorySample {
        limit_bytes: [own_limit, hierarchical_limit].into_iter().flatten().min(),
        high_bytes: None,
        oom_kill_count: oom_control.oom_kill,
        events: None,
        oom_control: Some(oom_control),
        pressure: None,
        ..sample_from(CgroupVersion::V1, usage_bytes, &stat)
    })
}

/// The usage and `memory.stat` fields of a sample; the caller fills in the rest.
fn sample_from(version: CgroupVersion, usage_bytes: u64, stat: &MemoryStat) -> MemorySample {
    MemorySample {
        version,
        limit_bytes: None,
        high_bytes: None,
        usage_bytes,
        inactive_file_bytes: stat.inactive_file_bytes,
        active_file_bytes: stat.active_file_bytes,
        anon_bytes: stat.anon_bytes,
        file_bytes: stat.file_bytes,
        working_set_bytes: working_set_bytes(usage_bytes, stat.inactive_file_bytes),
        oom_kill_count: 0,
        events: None,
        oom_control: None,
        pressure: None,
    }
}

/// The smallest v2 `memory.max`/`memory.high` of `dir` and its ancestors.
///
/// A container's own file often says `max` while its pod (or a systemd slice) has the
/// limit that binds. The walk stops at the first ancestor without the file: the root
/// cgroup has none, and neither does the directory above the mount point. In a container
/// with a cgroup namespace the ancestors are not visible, and the walk ends at once.
fn min_over_ancestors(dir: &Path, file: &str) -> Result<Option<u64>, SignalError> {
    let mut limit = read_parsed(&dir.join(file), v2::parse_max)?;
    for ancestor in dir.ancestors().skip(1).take(ANCESTORS_MAX) {
        let path = ancestor.join(file);
        if !path.is_file() {
            break;
        }
        if let Some(ancestor_limit) = read_parsed(&path, v2::parse_max)? {
            limit = Some(limit.map_or(ancestor_limit, |own| own.min(ancestor_limit)));
        }
    }
    Ok(limit)
}

fn read_parsed<T>(path: &Path, parse: impl FnOnce(&str) -> Result<T, ParseError>) -> Result<T, SignalError> {
    let text = read_text(path)?;
    parse(&text).map_err(|source| SignalError::Parse { path: path.to_path_buf(), source })
}

/// Like [`read_parsed`], but `Ok(None)` if the file does not exist or the kernel says the
/// feature is off (PSI disabled returns `EOPNOTSUPP` on read).
fn read_optional_parsed<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, SignalError> {
    match read_optional(path)? {
        None => Ok(None),
        Some(text) => {
            parse(&text).map(Some).map_err(|source| SignalError::Parse { path: path.to_path_buf(), source })
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, SignalError> {
    match read_text(path) {
        Ok(text) => Ok(Some(text)),
        Err(SignalError::Read { source, .. })
            if source.kind() == io::ErrorKind::NotFound
                || source.raw_os_error() == Some(EOPNOTSUPP_LINUX) =>
        {
            Ok(None)
        }
        Err(other) => Err(other),
    }
}

/// Read a whole text file of at most [`TEXT_BYTES_MAX`] bytes. Pseudo-files report size 0,
/// so the bound is enforced while reading, not from metadata.
fn read_text(path: &Path) -> Result<String, SignalError> {
    let read_error = |source| SignalError::Read { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(TEXT_BYTES_MAX + 1).read_to_string(&mut text).map_err(read_error)?;
    if text.len() as u64 > TEXT_BYTES_MAX {
        return Err(SignalError::TooLarge { path: PathBuf::from(path), limit_bytes: TEXT_BYTES_MAX });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_saturates() {
        assert_eq!(working_set_bytes(100, 30), 70);
        assert_eq!(working_set_bytes(30, 100), 0);
    }

    #[test]
    fn effective_limit_is_the_smallest_set() {
        const GIB: u64 = 1 << 30;
        assert_eq!(effective_limit_bytes(None, None, None), None);
        assert_eq!(effective_limit_bytes(None, None, Some(GIB)), Some(GIB));
        assert_eq!(effective_limit_bytes(Some(2 * GIB), None, Some(GIB)), Some(GIB));
        // A configured limit above the cgroup's cannot raise it.
        assert_eq!(effective_limit_bytes(Some(GIB), None, Some(2 * GIB)), Some(GIB));
        assert_eq!(effective_limit_bytes(Some(2 * GIB), Some(GIB), None), Some(GIB));
    }
}
