//! Parsers for the cgroup v2 memory files (kernel `Documentation/admin-guide/cgroup-v2.rst`).
//! Pure: each takes the file's text.

use serde::{Deserialize, Serialize};

use crate::cgroup::MemoryStat;
use crate::error::ParseError;
use crate::text::{keyed_u64, parse_u64_file, required_u64};

/// `memory.max` or `memory.high`: bytes, or `None` for `max` (no limit).
///
/// `memory.max` is where the OOM killer runs; `memory.high` is where the kernel throttles
/// the cgroup and reclaims hard, which for a realtime worker is as bad as a limit.
pub fn parse_max(text: &str) -> Result<Option<u64>, ParseError> {
    if text.trim() == "max" { Ok(None) } else { parse_u64_file(text).map(Some) }
}

/// `memory.current`: bytes charged to the cgroup and its descendants (anonymous memory,
/// page cache, kernel memory, socket buffers).
pub fn parse_current(text: &str) -> Result<u64, ParseError> {
    parse_u64_file(text)
}

/// `memory.stat`: the keys of [`MemoryStat`]; `inactive_file` is required, all other keys
/// are optional and unknown keys are ignored (new ones appear between kernel releases,
/// even in the middle of the file).
pub fn parse_stat(text: &str) -> Result<MemoryStat, ParseError> {
    Ok(MemoryStat {
        inactive_file_bytes: required_u64(text, "inactive_file")?,
        active_file_bytes: keyed_u64(text, "active_file")?,
        anon_bytes: keyed_u64(text, "anon")?,
        file_bytes: keyed_u64(text, "file")?,
        hierarchical_limit_raw: None,
    })
}

/// `memory.events`: counters since the cgroup was created, hierarchical (they include
/// descendants). The governor looks at how they change between samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryEvents {
    /// Times usage was reclaimed while under `memory.low` protection.
    pub low: u64,
    /// Times the cgroup was throttled for going over `memory.high`.
    pub high: u64,
    /// Times usage was about to go over `memory.max`.
    pub max: u64,
    /// Times an allocation was about to fail at `memory.max` (the OOM killer ran or was about to).
    pub oom: u64,
    /// Processes killed by an OOM killer in this cgroup.
    pub oom_kill: u64,
}

/// `memory.events`. A key the running kernel does not have yet (`oom_kill` arrived in 4.13)
/// reads as 0, but a file holding none of the five keys is an error: it is not this file.
pub fn parse_events(text: &str) -> Result<MemoryEvents, ParseError> {
    let low = keyed_u64(text, "low")?;
    let high = keyed_u64(text, "high")?;
    let max = keyed_u64(text, "max")?;
    let oom = keyed_u64(text, "oom")?;
    let oom_kill = keyed_u64(text, "oom_kill")?;
    if [low, high, max, oom, oom_kill].iter().all(Option::is_none) {
        return Err(ParseError::NoKnownKeys { expected: "low high max oom oom_kill" });
    }
    Ok(MemoryEvents {
        low: low.unwrap_or(0),
        high: high.unwrap_or(0),
        max: max.unwrap_or(0),
        oom: oom.unwrap_or(0),
        oom_kill: oom_kill.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_files() {
        assert_eq!(parse_max("max\n"), Ok(None));
        assert_eq!(parse_max("536870912\n"), Ok(Some(536_870_912)));
        assert_eq!(parse_max("0\n"), Ok(Some(0)));
        assert!(parse_max("MAX\n").is_err());
        assert!(parse_max("").is_err());
    }

    #[test]
    fn events_with_old_and_new_keys() {
        let old_kernel = "low 0\nhigh 3\nmax 2\noom 1\n";
        assert_eq!(
            parse_events(old_kernel),
            Ok(MemoryEvents { high: 3, max: 2, oom: 1, ..Default::default() })
        );
        let new_kernel = "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\noom_group_kill 0\nsock_throttled 4\n";
        assert_eq!(parse_events(new_kernel).map(|e| e.oom_kill), Ok(1));
        assert!(matches!(parse_events("something 1\n"), Err(ParseError::NoKnownKeys { .. })));
    }
}
