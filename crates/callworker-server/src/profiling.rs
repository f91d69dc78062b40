//! On-demand heap profiles from jemalloc, served in pprof format
//! (`GET /v1/admin/memory/profile?seconds=N`), so a memory incident can be diagnosed on the
//! running worker in minutes.
//!
//! Two switches must both be on, and the endpoint says which one is off:
//! - configuration `[profiling] enabled = true` (`CALLWORKER_PROFILING__ENABLED=true`);
//!   otherwise 404 `profiling_disabled`;
//! - jemalloc started with profiling compiled in *and* enabled: its runtime options are read
//!   from the `_RJEM_MALLOC_CONF` environment variable when the process starts, before any
//!   code of ours runs, so the worker cannot turn it on itself (setting the variable later
//!   is too late and unsound; a `malloc_conf` symbol needs `unsafe`, which this workspace
//!   forbids). Start the worker with [`MALLOC_CONF_RECOMMENDED`]; otherwise 409
//!   `profiling_unavailable`. With `prof_active:false` the cost until a profile is asked for
//!   is a branch per allocation; while active, one allocation per 2^19 bytes (512 KiB) is
//!   sampled with its stack.
//!
//! A profile activates sampling (`prof.active`), waits the requested window, dumps the heap
//! (`prof.dump`, through a temporary file), converts it to gzipped pprof protobuf
//! (`jemalloc_pprof`, Polar Signals) and deactivates sampling again, discarding the samples
//! (`prof.reset`) so the next profile starts clean. It therefore shows memory allocated
//! during the window and still live at its end — what is growing. A worker started with
//! `prof_active:true` is left active and its profiles cover everything since start.
//!
//! Invariants: at most one profile at a time (the controller's lock, taken without
//! waiting: a second request gets 409 `profile_in_progress`); the window is bounded by
//! [`PROFILE_SECONDS_MAX`]; the capture runs in its own task, so a client that disconnects
//! mid-window cannot leave sampling switched on; dumping and converting run on the blocking
//! pool, never on the async workers. Profiles carry addresses and mappings (no symbols):
//! `go tool pprof <callworker binary> profile.pb.gz` or `pprof` symbolizes them.

use std::time::Duration;

use jemalloc_pprof::JemallocProfCtl;
use tokio::sync::OwnedMutexGuard;

/// The `_RJEM_MALLOC_CONF` value to start a profilable worker with: profiling on, sampling
/// inactive until a profile is asked for, one sample per 512 KiB allocated.
pub const MALLOC_CONF_RECOMMENDED: &str = "prof:true,prof_active:false,lg_prof_sample:19";

/// Window used when `seconds` is not given.
pub const PROFILE_SECONDS_DEFAULT: u64 = 30;
/// Shortest window accepted.
pub const PROFILE_SECONDS_MIN: u64 = 1;
/// Longest window accepted: an operator's request should not hold sampling (and the one
/// profile slot) on for longer than five minutes.
pub const PROFILE_SECONDS_MAX: u64 = 300;

/// Why a profile could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// `seconds` outside [`PROFILE_SECONDS_MIN`]..=[`PROFILE_SECONDS_MAX`].
    #[error("seconds = {0} is outside {PROFILE_SECONDS_MIN}..={PROFILE_SECONDS_MAX}")]
    WindowOutOfBounds(u64),
    /// jemalloc was not started with `prof:true` (or lacks profiling support).
    #[error(
        "jemalloc heap profiling is off in this process; start the worker with _RJEM_MALLOC_CONF={MALLOC_CONF_RECOMMENDED}"
    )]
    Unavailable,
    /// Another profile is being taken.
    #[error("a heap profile is already being taken on this worker; retry when it completes")]
    InProgress,
    /// jemalloc refused a control, or the dump could not be read or converted.
    #[error("heap profile failed: {0}")]
    Failed(String),
}

/// The profile window for a requested `seconds` (default when absent), bounds checked.
pub fn window(seconds: Option<u64>) -> Result<Duration, ProfileError> {
    let seconds = seconds.unwrap_or(PROFILE_SECONDS_DEFAULT);
    if !(PROFILE_SECONDS_MIN..=PROFILE_SECONDS_MAX).contains(&seconds) {
        return Err(ProfileError::WindowOutOfBounds(seconds));
    }
    Ok(Duration::from_secs(seconds))
}

/// Whether jemalloc runs with heap profiling enabled (`opt.prof`, fixed at process start).
pub fn available() -> bool {
    tikv_jemalloc_ctl::profiling::prof::read().unwrap_or(false)
}

/// The exclusive right to take one profile: held from the request until the profile is
/// dumped and sampling is switched off again.
#[derive(Debug)]
pub struct ProfileSlot(OwnedMutexGuard<JemallocProfCtl>);

/// Claims the single profile slot without waiting.
pub fn claim() -> Result<ProfileSlot, ProfileError> {
    if !available() {
        return Err(ProfileError::Unavailable);
    }
    let ctl = jemalloc_pprof::PROF_CTL.as_ref().ok_or(ProfileError::Unavailable)?;
    ctl.clone().try_lock_owned().map(ProfileSlot).map_err(|_| ProfileError::InProgress)
}

/// Samples for `window`, then returns the heap profile as gzipped pprof protobuf.
///
/// Runs in its own task: dropping the returned future (a client that went away) does not
/// stop it, so sampling is always switched off again.
pub async fn capture(slot: ProfileSlot, window: Duration) -> Result<Vec<u8>, ProfileError> {
    let task = tokio::spawn(async move {
        let ProfileSlot(mut ctl) = slot;
        let was_active = ctl.activated();
        let ctl = tokio::task::spawn_blocking(move || {
            if !was_active {
                ctl.activate().map_err(|e| ProfileError::Failed(format!("activate (prof.active): {e}")))?;
            }
            Ok::<_, ProfileError>(ctl)
        })
        .await
        .map_err(|e| ProfileError::Failed(format!("activate task: {e}")))??;
        tracing::info!(window_s = window.as_secs(), "heap profile started");
        tokio::time::sleep(window).await;
        tokio::task::spawn_blocking(move || {
            let mut ctl = ctl;
            let profile = ctl.dump_pprof().map_err(|e| ProfileError::Failed(format!("dump: {e:#}")));
            if !was_active && let Err(e) = ctl.deactivate() {
                // Sampling stays on (a small cost per sampled allocation) until the next
                // profile switches it off again.
                tracing::warn!(error = %e, "could not deactivate heap profiling");
            }
            profile
        })
        .await
        .map_err(|e| ProfileError::Failed(format!("dump task: {e}")))?
    });
    let profile = task.await.map_err(|e| ProfileError::Failed(format!("profile task: {e}")))??;
    tracing::info!(bytes = profile.len(), "heap profile taken");
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_defaults_and_bounds() {
        assert_eq!(window(None), Ok(Duration::from_secs(PROFILE_SECONDS_DEFAULT)));
        assert_eq!(window(Some(1)), Ok(Duration::from_secs(1)));
        assert_eq!(window(Some(300)), Ok(Duration::from_secs(300)));
        assert_eq!(window(Some(0)), Err(ProfileError::WindowOutOfBounds(0)));
        assert_eq!(window(Some(301)), Err(ProfileError::WindowOutOfBounds(301)));
        assert_eq!(window(Some(u64::MAX)), Err(ProfileError::WindowOutOfBounds(u64::MAX)));
    }

    #[test]
    fn unavailable_names_the_environment_variable() {
        let message = ProfileError::Unavailable.to_string();
        assert!(
            message.contains("_RJEM_MALLOC_CONF=prof:true,prof_active:false,lg_prof_sample:19"),
            "{message}"
        );
    }

    #[test]
    fn without_prof_true_no_slot_is_given() {
        // Unit tests run without `_RJEM_MALLOC_CONF`, so jemalloc's profiling is off.
        if !available() {
            assert_eq!(claim().err(), Some(ProfileError::Unavailable));
        }
    }
}
