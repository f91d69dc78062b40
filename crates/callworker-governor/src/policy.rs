//! The governor's policy: from memory observations to a level and what to do at it.
//!
//! Pure and clock-free: every [`Policy::observe`] call carries its own time in
//! milliseconds, so tests drive it with a fake clock and tables of observations.
//!
//! Levels, by pressure `p = working set / effective limit` (fractions in [`Thresholds`]):
//!
//! | level | enter at | leave below | what the worker does |
//! |---|---|---|---|
//! | [`Level::Normal`] | — | — | nothing |
//! | [`Level::Elevated`] | 0.75 | 0.70 | release allocator memory (rate-limited), shrink per-call caps |
//! | [`Level::Shed`] | 0.80 | 0.75 | also: admit no new calls (readiness false, 503); resumes of calls from dead workers still admitted |
//! | [`Level::Migrate`] | 0.87 | 0.80 | also: admit nothing; migrate calls, largest account first, a few per tick |
//! | [`Level::Emergency`] | 0.93 | 0.87 | also: migrate harder; at ≥ 0.97 for a sustained stretch, end the heaviest call (`shed_memory`) |
//!
//! Rules:
//! - Escalation is immediate, straight to the highest level whose threshold is crossed.
//!   Growth counts too: when the working set's recent slope projects a crossing of a
//!   level's threshold within [`Thresholds::projection_horizon_ms`], that level is entered
//!   now. A kernel OOM event since the last observation enters [`Level::Emergency`].
//! - De-escalation is one level at a time, and only after the pressure stayed below the
//!   current level's exit threshold for [`Thresholds::dwell_ms`].
//! - Signals that cannot be read for [`Thresholds::failed_reads_max`] observations in a
//!   row are treated as pressure at the [`Level::Shed`] threshold: not knowing is not
//!   "normal".
//! - The policy's own work is bounded: purges at most every
//!   [`Thresholds::purge_interval_ms`], migrations per tick capped, and migration stops as
//!   soon as the pressure is no longer high for the level (below its exit threshold and not
//!   projected to reach its entry), even while the level waits out its dwell.

use serde::Serialize;

/// How hard the worker is shedding load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Normal,
    Elevated,
    Shed,
    Migrate,
    Emergency,
}

impl Level {
    pub const ALL: [Level; 5] =
        [Level::Normal, Level::Elevated, Level::Shed, Level::Migrate, Level::Emergency];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::Shed => "shed",
            Level::Migrate => "migrate",
            Level::Emergency => "emergency",
        }
    }

    /// 0 (normal) to 4 (emergency), for a gauge.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// Whether new calls may be admitted at this level.
    pub fn admits_new_calls(self) -> bool {
        self < Level::Shed
    }

    /// Whether resumes of calls from other (dead or draining) workers may be admitted.
    pub fn admits_resumes(self) -> bool {
        self < Level::Migrate
    }

    fn below(self) -> Level {
        match self {
            Level::Normal | Level::Elevated => Level::Normal,
            Level::Shed => Level::Elevated,
            Level::Migrate => Level::Shed,
            Level::Emergency => Level::Migrate,
        }
    }
}

/// Thresholds and pacing, from configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    /// Pressure at which [`Level::Elevated`], [`Level::Shed`], [`Level::Migrate`] and
    /// [`Level::Emergency`] are entered (strictly increasing, each in (0, 1]).
    pub enter: [f64; 4],
    /// Pressure below which each of those levels may be left (each below its `enter`).
    pub exit: [f64; 4],
    /// How long the pressure must stay below the exit threshold before stepping down.
    pub dwell_ms: u64,
    /// A projected crossing within this horizon counts as a crossing now.
    pub projection_horizon_ms: u64,
    /// Observations the growth slope is computed over (the oldest kept is the base).
    pub slope_window_ms: u64,
    /// Least time between two allocator purges.
    pub purge_interval_ms: u64,
    /// Calls migrated per observation at [`Level::Migrate`] (twice as many at emergency).
    pub migrations_per_tick: u32,
    /// At [`Level::Emergency`], pressure at or above this for `last_resort_after_ms` ends
    /// the heaviest call.
    pub last_resort: f64,
    pub last_resort_after_ms: u64,
    /// Consecutive failed reads after which the pressure is assumed to be at the
    /// [`Level::Shed`] threshold.
    pub failed_reads_max: u32,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            enter: [0.75, 0.80, 0.87, 0.93],
            exit: [0.70, 0.75, 0.80, 0.87],
            dwell_ms: 30_000,
            projection_horizon_ms: 5_000,
            slope_window_ms: 2_000,
            purge_interval_ms: 10_000,
            migrations_per_tick: 2,
            last_resort: 0.97,
            last_resort_after_ms: 1_000,
            failed_reads_max: 4,
        }
    }
}

/// Why thresholds were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("governor thresholds: {0}")]
pub struct ThresholdsError(String);

impl Thresholds {
    /// Checks the ordering rules (see the field docs).
    pub fn validate(&self) -> Result<(), ThresholdsError> {
        let in_range = |x: f64| x > 0.0 && x <= 1.0;
        if !self.enter.iter().chain(self.exit.iter()).all(|&x| in_range(x)) {
            return Err(ThresholdsError("every threshold must be within (0, 1]".into()));
        }
        if !self.enter.windows(2).all(|w| w[0] < w[1]) {
            return Err(ThresholdsError("enter thresholds must increase level by level".into()));
        }
        if !self.enter.iter().zip(self.exit.iter()).all(|(enter, exit)| exit < enter) {
            return Err(ThresholdsError("each exit threshold must be below its enter threshold".into()));
        }
        if !(self.last_resort >= self.enter[3] && self.last_resort <= 1.0) {
            return Err(ThresholdsError("last_resort must be between the emergency threshold and 1".into()));
        }
        if self.migrations_per_tick == 0 || self.failed_reads_max == 0 {
            return Err(ThresholdsError(
                "migrations_per_tick and failed_reads_max must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn enter_of(&self, level: Level) -> f64 {
        match level {
            Level::Normal => 0.0,
            Level::Elevated => self.enter[0],
            Level::Shed => self.enter[1],
            Level::Migrate => self.enter[2],
            Level::Emergency => self.enter[3],
        }
    }

    fn exit_of(&self, level: Level) -> f64 {
        match level {
            Level::Normal => 0.0,
            Level::Elevated => self.exit[0],
            Level::Shed => self.exit[1],
            Level::Migrate => self.exit[2],
            Level::Emergency => self.exit[3],
        }
    }
}

/// One reading of the worker's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Monotonic milliseconds (any origin, never decreasing between observations).
    pub at_ms: u64,
    pub working_set_bytes: u64,
    /// The effective limit (cgroup or configured); never 0.
    pub limit_bytes: u64,
    /// The kernel reported an OOM (or OOM kill) in the cgroup since the last observation.
    pub oom_event: bool,
}

/// What the worker should do after an observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub level: Level,
    /// `Some((from, to))` when this observation changed the level.
    pub transition: Option<(Level, Level)>,
    /// Pressure used for the decision (`working set / limit`, or the assumed value after
    /// failed reads).
    pub pressure: f64,
    /// Growth of the working set, bytes per second (0 when unknown or shrinking).
    pub growth_bytes_per_s: f64,
    /// Release allocator memory now.
    pub purge: bool,
    /// Calls to migrate now (largest memory account first).
    pub migrate: u32,
    /// End the heaviest call with `shed_memory` now.
    pub end_heaviest: bool,
}

/// The governor's state between observations.
#[derive(Debug, Clone)]
pub struct Policy {
    thresholds: Thresholds,
    level: Level,
    /// Since when the pressure has been below the current level's exit threshold.
    clear_since_ms: Option<u64>,
    /// Recent (time, working set) points for the growth slope, oldest first (bounded by
    /// the slope window and [`HISTORY_MAX`]).
    history: std::collections::VecDeque<(u64, u64)>,
    last_purge_ms: Option<u64>,
    last_resort_since_ms: Option<u64>,
    failed_reads: u32,
}

/// Points kept for the slope, whatever the window (a bound on the policy's memory).
const HISTORY_MAX: usize = 64;

impl Policy {
    /// A policy at [`Level::Normal`]. `thresholds` must be valid (see
    /// [`Thresholds::validate`]).
    pub fn new(thresholds: Thresholds) -> Policy {
        Policy {
            thresholds,
            level: Level::Normal,
            clear_since_ms: None,
            history: std::collections::VecDeque::with_capacity(HISTORY_MAX),
            last_purge_ms: None,
            last_resort_since_ms: None,
            failed_reads: 0,
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// The signals could not be read at `at_ms`. After
    /// [`Thresholds::failed_reads_max`] in a row, the pressure is assumed to be at the
    /// [`Level::Shed`] threshold.
    pub fn observe_failure(&mut self, at_ms: u64) -> Decision {
        self.failed_reads = self.failed_reads.saturating_add(1);
        if self.failed_reads < self.thresholds.failed_reads_max {
            return self.hold(at_ms);
        }
        let assumed = self.thresholds.enter_of(Level::Shed);
        self.decide(at_ms, assumed, 0.0, false)
    }

    /// Takes one observation and says what to do.
    pub fn observe(&mut self, obs: Observation) -> Decision {
        self.failed_reads = 0;
        let limit = obs.limit_bytes.max(1) as f64;
        let pressure = obs.working_set_bytes as f64 / limit;
        let growth = self.record(obs.at_ms, obs.working_set_bytes);
        // Where the working set will be at the end of the horizon, as a pressure.
        let projected = pressure + growth * (self.thresholds.projection_horizon_ms as f64 / 1000.0) / limit;
        let mut decision = self.decide(obs.at_ms, pressure, projected, obs.oom_event);
        decision.growth_bytes_per_s = growth;
        decision
    }

    /// The level stays; actions continue (used between unreadable observations).
    fn hold(&mut self, at_ms: u64) -> Decision {
        let pressure = self.thresholds.enter_of(self.level);
        self.actions(at_ms, pressure, pressure, None)
    }

    fn decide(&mut self, at_ms: u64, pressure: f64, projected: f64, oom_event: bool) -> Decision {
        let t = &self.thresholds;
        let crossed = Level::ALL
            .into_iter()
            .rev()
            .find(|&l| l != Level::Normal && (pressure >= t.enter_of(l) || projected >= t.enter_of(l)))
            .unwrap_or(Level::Normal);
        let target = if oom_event { Level::Emergency } else { crossed };
        let from = self.level;
        if target > self.level {
            self.level = target;
            self.clear_since_ms = None;
        } else if self.level != Level::Normal
            && pressure < t.exit_of(self.level)
            && projected < t.enter_of(self.level)
        {
            let since = *self.clear_since_ms.get_or_insert(at_ms);
            if at_ms.saturating_sub(since) >= t.dwell_ms {
                self.level = self.level.below();
                // The next step down needs its own dwell, counted from now (an observation
                // above the new level's exit threshold resets it).
                self.clear_since_ms = Some(at_ms);
            }
        } else {
            self.clear_since_ms = None;
        }
        let transition = (self.level != from).then_some((from, self.level));
        self.actions(at_ms, pressure, projected, transition)
    }

    /// Whether the pressure (or its projection) is still high for `level`: at or above the
    /// level's exit threshold, or projected to reach its entry threshold.
    fn still_high(&self, level: Level, pressure: f64, projected: f64) -> bool {
        pressure >= self.thresholds.exit_of(level) || projected >= self.thresholds.enter_of(level)
    }

    fn actions(
        &mut self,
        at_ms: u64,
        pressure: f64,
        projected: f64,
        transition: Option<(Level, Level)>,
    ) -> Decision {
        let t = &self.thresholds;
        let purge = self.level >= Level::Elevated
            && self.last_purge_ms.is_none_or(|last| at_ms.saturating_sub(last) >= t.purge_interval_ms);
        if purge {
            self.last_purge_ms = Some(at_ms);
        }
        // Migration stops as soon as the pressure is no longer high for the level, even
        // while the level waits out its dwell: the calls already moved are enough.
        let k = t.migrations_per_tick;
        let migrate =
            if self.level == Level::Emergency && self.still_high(Level::Emergency, pressure, projected) {
                k.saturating_mul(2)
            } else if self.level >= Level::Migrate && self.still_high(Level::Migrate, pressure, projected) {
                k
            } else {
                0
            };
        let mut end_heaviest = false;
        if self.level == Level::Emergency && pressure >= t.last_resort {
            let since = *self.last_resort_since_ms.get_or_insert(at_ms);
            if at_ms.saturating_sub(since) >= t.last_resort_after_ms {
                end_heaviest = true;
                // One call per stretch: the next needs the pressure to stay up again.
                self.last_resort_since_ms = Some(at_ms);
            }
        } else {
            self.last_resort_since_ms = None;
        }
        Decision {
            level: self.level,
            transition,
            pressure,
            growth_bytes_per_s: 0.0,
            purge,
            migrate,
            end_heaviest,
        }
    }

    /// Adds a point and returns the growth in bytes per second over the slope window
    /// (0 when shrinking or not yet known).
    fn record(&mut self, at_ms: u64, working_set: u64) -> f64 {
        if self.history.back().is_some_and(|&(t, _)| at_ms < t) {
            self.history.clear(); // time went backwards: start over rather than guess
        }
        self.history.push_back((at_ms, working_set));
        while self.history.len() > HISTORY_MAX
            || self.history.len() > 2
                && self
                    .history
                    .get(1)
                    .is_some_and(|&(t, _)| at_ms.saturating_sub(t) >= self.thresholds.slope_window_ms)
        {
            self.history.pop_front();
        }
        let (Some(&(t0, w0)), Some(&(t1, w1))) = (self.history.front(), self.history.back()) else {
            return 0.0;
        };
        if t1 <= t0 || w1 <= w0 {
            return 0.0;
        }
        (w1 - w0) as f64 / ((t1 - t0) as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn obs(at_ms: u64, pressure: f64) -> Observation {
        Observation {
            at_ms,
            working_set_bytes: (pressure * GIB as f64).ceil() as u64,
            limit_bytes: GIB,
            oom_event: false,
        }
    }

    fn steady() -> Thresholds {
        // No projection: these tables test the plain thresholds.
        Thresholds { projection_horizon_ms: 0, ..Thresholds::default() }
    }

    #[test]
    fn default_thresholds_are_valid_and_bad_ones_are_refused() {
        Thresholds::default().validate().expect("defaults");
        let bad = [
            Thresholds { enter: [0.8, 0.75, 0.87, 0.93], ..Thresholds::default() },
            Thresholds { exit: [0.76, 0.75, 0.80, 0.87], ..Thresholds::default() },
            Thresholds { enter: [0.75, 0.80, 0.87, 1.2], ..Thresholds::default() },
            Thresholds { last_resort: 0.9, ..Thresholds::default() },
            Thresholds { migrations_per_tick: 0, ..Thresholds::default() },
        ];
        for t in bad {
            assert!(t.validate().is_err(), "{t:?}");
        }
    }

    #[test]
    fn escalation_is_immediate_and_goes_straight_to_the_crossed_level() {
        // (pressure, level after observing it), 250 ms apart, no dwell reached.
        let table: &[(f64, Level)] = &[
            (0.50, Level::Normal),
            (0.74, Level::Normal),
            (0.75, Level::Elevated),
            (0.79, Level::Elevated),
            (0.80, Level::Shed),
            (0.95, Level::Emergency),
            (0.60, Level::Emergency), // below every exit, but the dwell has not passed
        ];
        let mut p = Policy::new(steady());
        for (i, &(pressure, level)) in table.iter().enumerate() {
            let d = p.observe(obs(i as u64 * 250, pressure));
            assert_eq!(d.level, level, "step {i}: pressure {pressure}");
        }
    }

    #[test]
    fn stepping_down_needs_the_dwell_and_goes_one_level_at_a_time() {
        let t = steady();
        let dwell = t.dwell_ms;
        let mut p = Policy::new(t);
        assert_eq!(p.observe(obs(0, 0.90)).level, Level::Migrate);
        // Below the migrate exit (0.80) but above the shed one: steps to Shed after the dwell.
        assert_eq!(p.observe(obs(1_000, 0.78)).level, Level::Migrate);
        assert_eq!(p.observe(obs(1_000 + dwell - 1, 0.78)).level, Level::Migrate);
        let d = p.observe(obs(1_000 + dwell, 0.78));
        assert_eq!((d.level, d.transition), (Level::Shed, Some((Level::Migrate, Level::Shed))));
        // 0.78 is not below Shed's exit (0.75): it stays, however long.
        assert_eq!(p.observe(obs(1_000 + 5 * dwell, 0.78)).level, Level::Shed);
        // A blip above the exit threshold restarts the dwell.
        let t0 = 1_000 + 6 * dwell;
        assert_eq!(p.observe(obs(t0, 0.5)).level, Level::Shed);
        assert_eq!(p.observe(obs(t0 + dwell / 2, 0.76)).level, Level::Shed);
        assert_eq!(p.observe(obs(t0 + dwell, 0.5)).level, Level::Shed, "the blip restarted the dwell");
        assert_eq!(p.observe(obs(t0 + 2 * dwell, 0.5)).level, Level::Elevated);
        assert_eq!(p.observe(obs(t0 + 3 * dwell, 0.5)).level, Level::Normal);
    }

    #[test]
    fn growth_escalates_before_the_threshold_is_crossed() {
        let mut p = Policy::new(Thresholds { projection_horizon_ms: 5_000, ..Thresholds::default() });
        // 0.60 → 0.70 in one second: projected 0.70 + 0.10×5 = 1.2 within 5 s → emergency.
        assert_eq!(p.observe(obs(0, 0.60)).level, Level::Normal);
        let d = p.observe(obs(1_000, 0.70));
        assert!(d.growth_bytes_per_s > 0.09 * GIB as f64, "{d:?}");
        assert_eq!(d.level, Level::Emergency);

        // Flat memory at 0.70 does not escalate.
        let mut flat = Policy::new(Thresholds::default());
        for i in 0..20 {
            assert_eq!(flat.observe(obs(i * 250, 0.70)).level, Level::Normal);
        }
    }

    #[test]
    fn an_oom_event_means_emergency() {
        let mut p = Policy::new(steady());
        let d = p.observe(Observation { oom_event: true, ..obs(0, 0.40) });
        assert_eq!(d.level, Level::Emergency);
    }

    #[test]
    fn purges_are_rate_limited_and_migrations_capped() {
        let t = steady();
        let (interval, k) = (t.purge_interval_ms, t.migrations_per_tick);
        let mut p = Policy::new(t);
        assert!(!p.observe(obs(0, 0.5)).purge, "no purge at normal");
        assert!(p.observe(obs(250, 0.76)).purge);
        assert!(!p.observe(obs(500, 0.76)).purge);
        assert!(p.observe(obs(250 + interval, 0.76)).purge);
        assert_eq!(p.observe(obs(20_000, 0.76)).migrate, 0);
        assert_eq!(p.observe(obs(20_250, 0.88)).migrate, k);
        assert_eq!(p.observe(obs(20_500, 0.94)).migrate, 2 * k);
        // Below emergency's exit but still high for migrate: the lower rate.
        assert_eq!(p.observe(obs(20_750, 0.85)).migrate, k);
        // Pressure relieved: the level waits out its dwell, but migration stops.
        let d = p.observe(obs(21_000, 0.60));
        assert_eq!((d.level, d.migrate), (Level::Emergency, 0));
    }

    #[test]
    fn the_last_resort_needs_sustained_extreme_pressure_and_takes_one_call_at_a_time() {
        let t = steady();
        let after = t.last_resort_after_ms;
        let mut p = Policy::new(t);
        assert!(!p.observe(obs(0, 0.98)).end_heaviest);
        assert!(!p.observe(obs(after - 1, 0.98)).end_heaviest);
        assert!(p.observe(obs(after, 0.98)).end_heaviest);
        assert!(!p.observe(obs(after + 250, 0.98)).end_heaviest, "one call per stretch");
        assert!(p.observe(obs(2 * after, 0.98)).end_heaviest);
        assert!(!p.observe(obs(2 * after + 250, 0.95)).end_heaviest);
        assert!(!p.observe(obs(3 * after, 0.98)).end_heaviest, "the stretch restarts below the mark");
    }

    #[test]
    fn unreadable_signals_are_not_normal() {
        let t = steady();
        let n = t.failed_reads_max;
        let mut p = Policy::new(t);
        for i in 0..n - 1 {
            assert_eq!(p.observe_failure(u64::from(i) * 250).level, Level::Normal);
        }
        assert_eq!(p.observe_failure(u64::from(n) * 250).level, Level::Shed);
        // A good reading resets the count; stepping down still needs the dwell.
        assert_eq!(p.observe(obs(10_000, 0.3)).level, Level::Shed);
    }

    #[test]
    fn admission_by_level() {
        let admits: Vec<(bool, bool)> =
            Level::ALL.iter().map(|l| (l.admits_new_calls(), l.admits_resumes())).collect();
        assert_eq!(admits, [(true, true), (true, true), (false, true), (false, false), (false, false)]);
    }
}
