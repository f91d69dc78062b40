//! The allocator (jemalloc, installed by the `callworker` binary): its statistics for the
//! memory governor, and releasing its unused memory to the kernel.
//!
//! Purging goes through each arena's decay setting rather than `arena.<i>.purge`: the crate's
//! safe write of a value to `arena.4096.purge` is refused by jemalloc (EPERM, the control
//! takes no value), and calling `mallctl` with null pointers needs `unsafe`, which this
//! workspace forbids. Setting an arena's `dirty_decay_ms` (then `muzzy_decay_ms`) to 0 makes
//! jemalloc purge that arena's unused pages at once; the old value is then restored.
//! `tests/governor.rs` checks that a purge lowers `stats.resident` in the real worker.
//!
//! In a process whose global allocator is not jemalloc (unit tests), these read and purge a
//! jemalloc that holds nothing.

use serde::Serialize;
use tikv_jemalloc_ctl::{Access, AsName, arenas, epoch, stats};

/// jemalloc's view of the heap, in bytes (`stats.*` after an `epoch` refresh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AllocatorStats {
    /// Bytes the application holds.
    pub allocated: u64,
    /// Bytes in active pages (allocated plus fragmentation within them).
    pub active: u64,
    /// Bytes in physically resident pages jemalloc maps (what a purge lowers).
    pub resident: u64,
    /// Bytes of virtual memory retained for reuse (not resident).
    pub retained: u64,
    pub mapped: u64,
    pub metadata: u64,
}

/// Reads the allocator's statistics.
pub fn stats() -> Result<AllocatorStats, String> {
    epoch::advance().map_err(|e| format!("jemalloc epoch: {e}"))?;
    let read =
        |r: tikv_jemalloc_ctl::Result<usize>| r.map(|v| v as u64).map_err(|e| format!("jemalloc stats: {e}"));
    Ok(AllocatorStats {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        resident: read(stats::resident::read())?,
        retained: read(stats::retained::read())?,
        mapped: read(stats::mapped::read())?,
        metadata: read(stats::metadata::read())?,
    })
}

/// What a purge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PurgeReport {
    pub resident_before: u64,
    pub resident_after: u64,
    /// Arenas purged (arenas not initialised yet are skipped).
    pub arenas: u32,
}

/// Returns every arena's unused dirty and muzzy pages to the kernel. Blocking (it walks the
/// arenas); run it off the async workers.
pub fn purge() -> Result<PurgeReport, String> {
    let before = stats()?;
    let narenas = arenas::narenas::read().map_err(|e| format!("jemalloc arenas.narenas: {e}"))?;
    let mut purged = 0;
    for i in 0..narenas {
        let mut ok = true;
        for kind in ["dirty", "muzzy"] {
            // Decay times are jemalloc's `ssize_t`.
            let name = format!("arena.{i}.{kind}_decay_ms\0");
            let name = name.as_bytes().name();
            let Ok(old) = Access::<isize>::read(name) else {
                ok = false; // an arena not initialised yet
                break;
            };
            if name.write(0isize).is_err() || name.write(old).is_err() {
                ok = false;
            }
        }
        if ok {
            purged += 1;
        }
    }
    let after = stats()?;
    Ok(PurgeReport { resident_before: before.resident, resident_after: after.resident, arenas: purged })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_purge_answer() {
        let s = stats().expect("jemalloc stats are readable");
        assert!(s.mapped >= s.resident || s.mapped == 0, "{s:?}");
        let report = purge().expect("purge works");
        assert!(report.arenas >= 1, "{report:?}");
    }
}
