//! Parsers for the cgroup v1 memory controller files (kernel
//! `Documentation/admin-guide/cgroup-v1/memory.rst`). Pure: each takes the file's text.

use serde::{Deserialize, Serialize};

use crate::cgroup::MemoryStat;
use crate::error::ParseError;
use crate::text::{keyed_u64, parse_u64_file};

/// Smallest `memory.limit_in_bytes` value read as "unlimited".
///
/// v1 has no "max" word: an unlimited cgroup reports the page counter's maximum rounded
/// down to whole pages, e.g. `9223372036854771712` (2^63 − 4096) with 4 KiB pages, and
/// other page sizes give other numbers. No real machine has 2^62 bytes (4 EiB), so anything
/// at or above it means "no limit".
pub const UNLIMITED_BYTES_MIN: u64 = 1 << 62;

/// Interpret a raw v1 limit: `None` (unlimited) at or above [`UNLIMITED_BYTES_MIN`], or at
/// or above `host_ram_bytes` when the caller knows it (a limit the host cannot reach never
/// binds; this is how `sysinfo` reads it).
pub fn limit_from_raw(raw_bytes: u64, host_ram_bytes: Option<u64>) -> Option<u64> {
    let unlimited_from = host_ram_bytes.map_or(UNLIMITED_BYTES_MIN, |ram| ram.min(UNLIMITED_BYTES_MIN));
    (raw_bytes < unlimited_from).then_some(raw_bytes)
}

/// `memory.limit_in_bytes`: the hard limit in bytes, or `None` when unlimited (see
/// [`limit_from_raw`]; `-1`, which is what one writes to remove a limit, also reads as
/// unlimited should a kernel ever echo it).
pub fn parse_limit(text: &str, host_ram_bytes: Option<u64>) -> Result<Option<u64>, ParseError> {
    if text.trim() == "-1" {
        return Ok(None);
    }
    parse_u64_file(text).map(|raw| limit_from_raw(raw, host_ram_bytes))
}

/// `memory.usage_in_bytes`: bytes charged to the cgroup (page cache included). The kernel
/// documents it as a "fuzz value" (per-CPU batches); good enough at 250 ms resolution.
pub fn parse_usage(text: &str) -> Result<u64, ParseError> {
    parse_u64_file(text)
}

/// `memory.stat`: the keys of [`MemoryStat`], preferring the hierarchical `total_*` keys
/// (`total_inactive_file`, `total_active_file`, `total_rss`, `total_cache`) and falling
/// back to the plain ones (`inactive_file`, …). The inactive file count is required.
pub fn parse_stat(text: &str) -> Result<MemoryStat, ParseError> {
    let inactive_file_bytes = total_or_plain(text, "total_inactive_file", "inactive_file")?
        .ok_or(ParseError::MissingKey { key: "total_inactive_file" })?;
    Ok(MemoryStat {
        inactive_file_bytes,
        active_file_bytes: total_or_plain(text, "total_active_file", "active_file")?,
        anon_bytes: total_or_plain(text, "total_rss", "rss")?,
        file_bytes: total_or_plain(text, "total_cache", "cache")?,
        hierarchical_limit_raw: keyed_u64(text, "hierarchical_memory_limit")?,
    })
}

fn total_or_plain(text: &str, total: &'static str, plain: &'static str) -> Result<Option<u64>, ParseError> {
    match keyed_u64(text, total)? {
        Some(value) => Ok(Some(value)),
        None => keyed_u64(text, plain),
    }
}

/// `memory.oom_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OomControl {
    /// The OOM killer is disabled for this cgroup: tasks hang at the limit instead.
    pub oom_kill_disable: bool,
    /// The cgroup is at its limit right now and tasks are waiting for memory.
    pub under_oom: bool,
    /// Processes killed by the OOM killer in this cgroup (since 4.13; 0 before).
    pub oom_kill: u64,
}

/// `memory.oom_control`: `oom_kill_disable 0|1`, `under_oom 0|1`, `oom_kill N`. Missing
/// keys read as 0, but a file holding none of them is an error.
pub fn parse_oom_control(text: &str) -> Result<OomControl, ParseError> {
    let oom_kill_disable = flag(text, "oom_kill_disable")?;
    let under_oom = flag(text, "under_oom")?;
    let oom_kill = keyed_u64(text, "oom_kill")?;
    if oom_kill_disable.is_none() && under_oom.is_none() && oom_kill.is_none() {
        return Err(ParseError::NoKnownKeys { expected: "oom_kill_disable under_oom oom_kill" });
    }
    Ok(OomControl {
        oom_kill_disable: oom_kill_disable.unwrap_or(false),
        under_oom: under_oom.unwrap_or(false),
        oom_kill: oom_kill.unwrap_or(0),
    })
}

fn flag(text: &str, key: &'static str) -> Result<Option<bool>, ParseError> {
    match keyed_u64(text, key)? {
        None => Ok(None),
        Some(0) => Ok(Some(false)),
        Some(1) => Ok(Some(true)),
        Some(other) => Err(ParseError::BadValue { key, found: other.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_sentinels() {
        assert_eq!(parse_limit("9223372036854771712\n", None), Ok(None));
        assert_eq!(parse_limit("9223372036854775807\n", None), Ok(None));
        assert_eq!(parse_limit("18446744073709551615\n", None), Ok(None));
        assert_eq!(parse_limit("-1\n", None), Ok(None));
        assert_eq!(parse_limit("536870912\n", None), Ok(Some(536_870_912)));
        // Above host RAM: cannot bind.
        assert_eq!(parse_limit("68719476736\n", Some(25_275_221_504)), Ok(None));
        assert_eq!(parse_limit("1073741824\n", Some(25_275_221_504)), Ok(Some(1_073_741_824)));
        assert!(parse_limit("max\n", None).is_err());
    }

    #[test]
    fn stat_falls_back_to_plain_keys() {
        let flat = "cache 100\nrss 50\ninactive_file 30\nactive_file 70\n";
        let stat = parse_stat(flat).expect("plain keys");
        assert_eq!(stat.inactive_file_bytes, 30);
        assert_eq!(stat.anon_bytes, Some(50));
        let both = "inactive_file 1\ntotal_inactive_file 2\n";
        assert_eq!(parse_stat(both).map(|s| s.inactive_file_bytes), Ok(2));
        assert_eq!(parse_stat("cache 1\n"), Err(ParseError::MissingKey { key: "total_inactive_file" }));
    }

    #[test]
    fn oom_control_flags() {
        assert!(matches!(parse_oom_control("oom_kill_disable 2\n"), Err(ParseError::BadValue { .. })));
        assert_eq!(
            parse_oom_control("oom_kill_disable 0\nunder_oom 1\n"),
            Ok(OomControl { oom_kill_disable: false, under_oom: true, oom_kill: 0 })
        );
    }
}
