//! The memory governor's wiring: a task samples this worker's memory cgroup every
//! `governor.sample_interval_ms`, feeds the [`Policy`], and publishes the level, which
//! admission and readiness obey:
//!
//! - below `shed`: admit as usual;
//! - `shed`: no new calls (`POST /v1/calls` and the Twilio voice webhook answer 503
//!   `memory_pressure` with `Retry-After`, `/readyz` is false); media sessions are still
//!   admitted, so calls from dead or draining workers can resume here;
//! - `migrate` and `emergency`: no media sessions either (so a migrated call cannot come
//!   back here), and every sample migrates the calls with the largest memory accounts (a
//!   few per sample, twice as many at `emergency`): each is checkpointed and its client told
//!   to reconnect elsewhere; the resume there records `migrated_memory`;
//! - `emergency` held at the last-resort pressure: the heaviest call is ended with
//!   `shed_memory` (one per stretch) — a controlled loss of one call instead of a kernel
//!   OOM kill of all of them.
//!
//! A call's memory account is what its driver holds: the encoded state (program buffers,
//! timeline), unwritten recording and queued output, refreshed at every checkpoint.
//!
//! The last snapshot is served by `GET /v1/admin/memory` and exported as metrics.
//!
//! From `elevated` on, the allocator's unused memory is returned to the kernel (rate-limited
//! by the policy; see `allocator.rs`).
//!
//! Not wired yet (issue 4): shrinking per-call caps at `elevated`.

use std::sync::Mutex;
use std::time::Instant;

use callworker_call::{CallId, EndReason, ResumeCause};
use callworker_governor::{CgroupMemory, Decision, Level, Observation, Policy, discover, read_sample};
use serde::Serialize;
use tracing::{info, warn};

use crate::live::Command;
use crate::metrics as m;
use crate::state::{AppState, now};

/// What the governor last saw and decided (`GET /v1/admin/memory`).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub level: Level,
    /// `working_set_bytes / limit_bytes`.
    pub pressure: f64,
    pub working_set_bytes: u64,
    pub usage_bytes: u64,
    /// The effective limit: the smallest of the cgroup's hard limit, v2 `memory.high` and
    /// `governor.memory_limit_bytes`.
    pub limit_bytes: u64,
    pub cgroup: String,
    pub oom_kill_count: u64,
    pub growth_bytes_per_s: f64,
    pub sampled_at_ms: u64,
}

/// Allocator statistics are exported every this many samples (about once a second).
const ALLOCATOR_EVERY: u64 = 4;

/// Calls this worker migrated away and remembers, so it can refuse their return.
const MIGRATED_AWAY_MAX: usize = 10_000;
/// How long a migrated call is remembered.
const MIGRATED_AWAY_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// The governor's published state.
#[derive(Debug, Default)]
pub struct MemoryState {
    snapshot: Mutex<Option<Snapshot>>,
    /// Why the governor is idle, when it is.
    idle_reason: Mutex<Option<String>>,
    /// Calls migrated away for memory, and when (bounded; oldest forgotten first).
    migrated_away: Mutex<std::collections::HashMap<CallId, Instant>>,
}

impl MemoryState {
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn idle_reason(&self) -> Option<String> {
        self.idle_reason.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Remembers that `call_id` was migrated away for memory.
    pub fn migrated_away(&self, call_id: &CallId) {
        let mut map = self.migrated_away.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MIGRATED_AWAY_MAX {
            map.retain(|_, at| at.elapsed() < MIGRATED_AWAY_TTL);
            if map.len() >= MIGRATED_AWAY_MAX
                && let Some(oldest) = map.iter().min_by_key(|(_, at)| **at).map(|(id, _)| id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(call_id.clone(), Instant::now());
    }

    /// Whether a call this worker migrated away for memory must be refused now: while the
    /// worker is at or above the admission threshold (`shed`), it goes to another worker.
    pub fn refuses_return(&self, call_id: &CallId, level: Level) -> bool {
        if level.admits_new_calls() {
            return false;
        }
        let map = self.migrated_away.lock().unwrap_or_else(|p| p.into_inner());
        map.get(call_id).is_some_and(|at| at.elapsed() < MIGRATED_AWAY_TTL)
    }

    fn set_idle(&self, reason: String) {
        *self.idle_reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }
}

/// Samples and decides until the worker shuts down.
pub async fn run(state: AppState) {
    let cfg = state.config.governor.clone();
    if !cfg.enabled {
        state.memory.set_idle("disabled by configuration (governor.enabled = false)".into());
        return;
    }
    let cgroup = match tokio::task::spawn_blocking(discover).await {
        Ok(Ok(Some(cg))) => cg,
        Ok(Ok(None)) => {
            let reason = "no memory cgroup found for this process".to_owned();
            warn!(reason, "memory governor idle");
            state.memory.set_idle(reason);
            return;
        }
        Ok(Err(e)) => {
            let reason = format!("memory cgroup discovery failed: {e}");
            warn!(%reason, "memory governor idle");
            state.memory.set_idle(reason);
            return;
        }
        Err(_) => return,
    };
    info!(dir = %cgroup.dir.display(), version = ?cgroup.version, "memory governor watching");
    let mut policy = Policy::new(cfg.thresholds.clone());
    let started = Instant::now();
    let mut last_oom_kills: Option<u64> = None;
    let mut samples: u64 = 0;
    let mut tick = tokio::time::interval(cfg.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let at_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let cg: CgroupMemory = cgroup.clone();
        let sample = match tokio::task::spawn_blocking(move || read_sample(&cg)).await {
            Ok(Ok(sample)) => sample,
            Ok(Err(e)) => {
                metrics::counter!(m::GOVERNOR_READ_FAILURES).increment(1);
                warn!(error = %e, "memory governor could not read its signals");
                let decision = policy.observe_failure(at_ms);
                publish_level(&state, &decision);
                continue;
            }
            Err(_) => return,
        };
        let Some(limit) = sample.effective_limit_bytes(cfg.memory_limit_bytes) else {
            // No cgroup limit and none configured: nothing to measure pressure against.
            if state.memory.idle_reason().is_none() {
                let reason =
                    "no memory limit: neither the cgroup nor governor.memory_limit_bytes sets one".to_owned();
                warn!(reason, "memory governor idle");
                state.memory.set_idle(reason);
            }
            continue;
        };
        let oom_event = last_oom_kills.is_some_and(|n| sample.oom_kill_count > n);
        last_oom_kills = Some(sample.oom_kill_count);
        let decision = policy.observe(Observation {
            at_ms,
            working_set_bytes: sample.working_set_bytes,
            limit_bytes: limit,
            oom_event,
        });
        publish_level(&state, &decision);
        act(&state, &decision);
        samples += 1;
        if samples.is_multiple_of(ALLOCATOR_EVERY)
            && let Ok(a) = crate::allocator::stats()
        {
            for (kind, v) in [
                ("allocated", a.allocated),
                ("active", a.active),
                ("resident", a.resident),
                ("retained", a.retained),
            ] {
                metrics::gauge!(m::ALLOCATOR_BYTES, "kind" => kind).set(v as f64);
            }
        }
        metrics::gauge!(m::GOVERNOR_PRESSURE).set(decision.pressure);
        metrics::gauge!(m::GOVERNOR_MEMORY_BYTES, "kind" => "working_set")
            .set(sample.working_set_bytes as f64);
        metrics::gauge!(m::GOVERNOR_MEMORY_BYTES, "kind" => "usage").set(sample.usage_bytes as f64);
        metrics::gauge!(m::GOVERNOR_LIMIT_BYTES).set(limit as f64);
        *state.memory.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Snapshot {
            level: decision.level,
            pressure: decision.pressure,
            working_set_bytes: sample.working_set_bytes,
            usage_bytes: sample.usage_bytes,
            limit_bytes: limit,
            cgroup: cgroup.dir.display().to_string(),
            oom_kill_count: sample.oom_kill_count,
            growth_bytes_per_s: decision.growth_bytes_per_s,
            sampled_at_ms: now().0,
        });
    }
}

/// Releases allocator memory, migrates the largest calls and, as a last resort, ends the
/// heaviest one.
fn act(state: &AppState, decision: &Decision) {
    if decision.purge {
        tokio::task::spawn_blocking(|| match crate::allocator::purge() {
            Ok(report) => {
                metrics::counter!(m::GOVERNOR_ACTIONS, "action" => "purge").increment(1);
                metrics::counter!(m::ALLOCATOR_PURGED_BYTES)
                    .increment(report.resident_before.saturating_sub(report.resident_after));
                info!(
                    resident_before = report.resident_before,
                    resident_after = report.resident_after,
                    "memory governor released allocator memory"
                );
            }
            Err(e) => warn!(error = %e, "allocator purge failed"),
        });
    }
    if decision.migrate > 0 {
        for call in state.live.largest(decision.migrate as usize) {
            let command = Command::Migrate { cause: ResumeCause::MigratedMemory };
            if call.commands.try_send(command).is_ok() {
                state.memory.migrated_away(&call.call_id);
                metrics::counter!(m::GOVERNOR_ACTIONS, "action" => "migrate").increment(1);
                info!(call_id = %call.call_id, bytes = call.bytes, "memory governor migrating a call");
            }
        }
    }
    if decision.end_heaviest
        && let Some(call) = state.live.largest(1).into_iter().next()
    {
        let (reply, _) = tokio::sync::oneshot::channel();
        if call.commands.try_send(Command::End(EndReason::ShedMemory, reply)).is_ok() {
            metrics::counter!(m::GOVERNOR_ACTIONS, "action" => "shed").increment(1);
            warn!(call_id = %call.call_id, bytes = call.bytes, "memory governor ended the heaviest call (shed_memory)");
        }
    }
}

fn publish_level(state: &AppState, decision: &Decision) {
    state.admission.set_memory_level(decision.level);
    metrics::gauge!(m::GOVERNOR_LEVEL).set(f64::from(decision.level.number()));
    if let Some((from, to)) = decision.transition {
        metrics::counter!(m::GOVERNOR_TRANSITIONS, "from" => from.as_str(), "to" => to.as_str()).increment(1);
        if to > from {
            warn!(
                from = from.as_str(),
                to = to.as_str(),
                pressure = decision.pressure,
                "memory governor level up"
            );
        } else {
            info!(
                from = from.as_str(),
                to = to.as_str(),
                pressure = decision.pressure,
                "memory governor level down"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migrated_call_is_refused_only_while_admission_is_shut() {
        let memory = MemoryState::default();
        let id = CallId::parse("c1").expect("valid id");
        let other = CallId::parse("c2").expect("valid id");
        memory.migrated_away(&id);
        let refused: Vec<bool> = Level::ALL.iter().map(|&l| memory.refuses_return(&id, l)).collect();
        assert_eq!(refused, [false, false, true, true, true]);
        assert!(!memory.refuses_return(&other, Level::Emergency), "only calls it moved away");
    }
}
