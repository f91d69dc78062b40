//! The drill's sampler: every period it reads the target's memory cgroup (working set,
//! limit, the kernel's OOM-kill count), the target's governor (`GET /v1/admin/memory`) and
//! the counters of every worker, and notes when the first crossing, level change, refusal
//! and governor action were seen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use callworker_client::api::{ControlApi, metric_sum};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval, timeout};

/// Samples kept for the report (at 250 ms, almost three hours); later ones still update the
/// summary.
pub const SAMPLES_MAX: usize = 40_000;
/// A cgroup v1 limit at or above this is "no limit" (the kernel reports a huge page-aligned
/// number, not u64::MAX).
const V1_UNLIMITED_BYTES: u64 = 1 << 62;

/// A memory cgroup's files, v1 or v2.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub dir: PathBuf,
    pub v2: bool,
}

/// What one read of the cgroup gave.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CgroupReading {
    pub usage_bytes: u64,
    /// Usage less inactive file cache: what the kernel cannot simply drop.
    pub working_set_bytes: u64,
    pub limit_bytes: Option<u64>,
    pub oom_kill: u64,
    /// The kernel's high-water mark of usage (v1 `memory.max_usage_in_bytes`, v2
    /// `memory.peak`), where there is one.
    pub max_usage_bytes: Option<u64>,
}

fn read_u64(path: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim().parse()?)
}

fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key { v.trim().parse().ok() } else { None }
    })
}

impl Cgroup {
    /// A cgroup directory: v1 when it has `memory.usage_in_bytes`, v2 when `memory.current`.
    pub fn open(dir: &Path) -> anyhow::Result<Cgroup> {
        if dir.join("memory.usage_in_bytes").is_file() {
            Ok(Cgroup { dir: dir.to_owned(), v2: false })
        } else if dir.join("memory.current").is_file() {
            Ok(Cgroup { dir: dir.to_owned(), v2: true })
        } else {
            anyhow::bail!(
                "{} is not a memory cgroup (no memory.usage_in_bytes or memory.current)",
                dir.display()
            )
        }
    }

    /// Reads the cgroup's memory figures (blocking: a few small files).
    pub fn read(&self) -> anyhow::Result<CgroupReading> {
        let d = &self.dir;
        let stat = std::fs::read_to_string(d.join("memory.stat"))?;
        if self.v2 {
            let usage = read_u64(&d.join("memory.current"))?;
            let inactive = field(&stat, "inactive_file").unwrap_or(0);
            let max = std::fs::read_to_string(d.join("memory.max"))?;
            let events = std::fs::read_to_string(d.join("memory.events")).unwrap_or_default();
            Ok(CgroupReading {
                usage_bytes: usage,
                working_set_bytes: usage.saturating_sub(inactive),
                limit_bytes: max.trim().parse().ok(),
                oom_kill: field(&events, "oom_kill").unwrap_or(0),
                max_usage_bytes: read_u64(&d.join("memory.peak")).ok(),
            })
        } else {
            let usage = read_u64(&d.join("memory.usage_in_bytes"))?;
            let inactive = field(&stat, "total_inactive_file").unwrap_or(0);
            let limit = read_u64(&d.join("memory.limit_in_bytes"))?;
            let oom = std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            Ok(CgroupReading {
                usage_bytes: usage,
                working_set_bytes: usage.saturating_sub(inactive),
                limit_bytes: (limit < V1_UNLIMITED_BYTES).then_some(limit),
                oom_kill: field(&oom, "oom_kill").unwrap_or(0),
                max_usage_bytes: read_u64(&d.join("memory.max_usage_in_bytes")).ok(),
            })
        }
    }
}

/// One sample. Fields are `None` when their source did not answer in time.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub t_ms: u64,
    pub working_set_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub oom_kill: Option<u64>,
    /// The target's governor level (`normal`, `elevated`, `shed`, `migrate`, `emergency`).
    pub level: Option<String>,
    pub governor_pressure: Option<f64>,
    /// The target's `callworker_governor_actions_total` by action.
    pub migrate_total: Option<f64>,
    pub purge_total: Option<f64>,
    pub shed_total: Option<f64>,
    /// The target's `callworker_admission_refused_total{reason="memory_pressure"}`.
    pub refused_memory_total: Option<f64>,
    pub calls_active_target: Option<f64>,
    /// Summed over the other workers: `callworker_calls_resumed_total` by cause.
    pub resumed_migrated_memory: Option<f64>,
    pub resumed_worker_lost: Option<f64>,
    pub calls_active_others: Option<f64>,
}

/// What the sampler saw over the whole drill.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub first: Option<CgroupReading>,
    pub last: Option<CgroupReading>,
    pub peak_working_set_bytes: u64,
    /// Highest working set / limit seen in one sample.
    pub peak_ratio: f64,
    pub limit_bytes: Option<u64>,
    /// First sample at which working set / limit reached `threshold`.
    pub first_crossing_ms: Option<u64>,
    /// First sample at which the governor's level was above `normal`.
    pub first_level_ms: Option<u64>,
    pub first_level: Option<String>,
    /// Highest level seen.
    pub max_level: Option<String>,
    /// First sample at which a governor action counter (migrate, purge, shed) had moved.
    pub first_action_ms: Option<u64>,
    pub first_action: Option<&'static str>,
    /// First sample at which a `memory_pressure` refusal had been counted.
    pub first_refusal_ms: Option<u64>,
    /// Last value seen of each counter (the target's survive its death this way).
    pub migrate_total: f64,
    pub purge_total: f64,
    pub shed_total: f64,
    pub refused_memory_total: f64,
    pub resumed_migrated_memory: f64,
    pub resumed_worker_lost: f64,
    pub samples: Vec<Sample>,
    pub samples_dropped: u64,
}

const LEVELS: [&str; 5] = ["normal", "elevated", "shed", "migrate", "emergency"];

fn level_rank(level: &str) -> usize {
    LEVELS.iter().position(|l| *l == level).unwrap_or(0)
}

/// Where to sample.
#[derive(Debug, Clone)]
pub struct Sources {
    pub cgroup: Cgroup,
    pub target: ControlApi,
    pub others: Vec<ControlApi>,
    pub period: Duration,
    /// working set / limit at which the crossing is noted (the governor's first threshold).
    pub threshold: f64,
    pub started: Instant,
}

async fn get_json(api: &ControlApi, path: &str, within: Duration) -> Option<Value> {
    let url = format!("{}{path}", api.base_url());
    let fetch = async { api.http().get(url).send().await.ok()?.json::<Value>().await.ok() };
    timeout(within, fetch).await.ok().flatten()
}

async fn get_metrics(api: &ControlApi, within: Duration) -> Option<String> {
    timeout(within, api.metrics()).await.ok().and_then(Result::ok)
}

/// Samples until `stop` becomes true, then once more, and returns the summary.
pub async fn task_main(sources: Sources, mut stop: watch::Receiver<bool>) -> Summary {
    let mut summary = Summary::default();
    let mut tick = interval(sources.period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Each source must answer within the period, so a stuck worker cannot stall sampling.
    let within = sources.period.max(Duration::from_millis(100));
    let mut baseline_actions: Option<(f64, f64, f64)> = None;
    loop {
        let last = *stop.borrow();
        let t_ms = u64::try_from(sources.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let cgroup = sources.cgroup.clone();
        let reading =
            async { tokio::task::spawn_blocking(move || cgroup.read()).await.ok().and_then(Result::ok) };
        let others = others_counters(&sources.others, within);
        let (reading, memory, metrics, others) = tokio::join!(
            reading,
            get_json(&sources.target, "/v1/admin/memory", within),
            get_metrics(&sources.target, within),
            others
        );
        let mut s = Sample { t_ms, ..Sample::default() };
        if let Some(r) = reading {
            s.working_set_bytes = Some(r.working_set_bytes);
            s.limit_bytes = r.limit_bytes;
            s.oom_kill = Some(r.oom_kill);
            summary.first.get_or_insert(r);
            summary.last = Some(r);
            summary.peak_working_set_bytes = summary.peak_working_set_bytes.max(r.working_set_bytes);
            if let Some(limit) = r.limit_bytes.filter(|l| *l > 0) {
                summary.limit_bytes = Some(limit);
                let ratio = r.working_set_bytes as f64 / limit as f64;
                summary.peak_ratio = summary.peak_ratio.max(ratio);
                if ratio >= sources.threshold && summary.first_crossing_ms.is_none() {
                    summary.first_crossing_ms = Some(t_ms);
                }
            }
        }
        if let Some(memory) = memory {
            s.level = memory["level"].as_str().map(str::to_owned);
            s.governor_pressure = memory["sample"]["pressure"].as_f64();
            if let Some(level) = &s.level {
                if level != "normal" && summary.first_level_ms.is_none() {
                    summary.first_level_ms = Some(t_ms);
                    summary.first_level = Some(level.clone());
                }
                let max = summary.max_level.as_deref().map_or(0, level_rank);
                if summary.max_level.is_none() || level_rank(level) > max {
                    summary.max_level = Some(level.clone());
                }
            }
        }
        if let Some(text) = metrics {
            let action = |a: &str| metric_sum(&text, "callworker_governor_actions_total", &[("action", a)]);
            let (migrate, purge, shed) = (action("migrate"), action("purge"), action("shed"));
            s.migrate_total = Some(migrate);
            s.purge_total = Some(purge);
            s.shed_total = Some(shed);
            let refused =
                metric_sum(&text, "callworker_admission_refused_total", &[("reason", "memory_pressure")]);
            s.refused_memory_total = Some(refused);
            s.calls_active_target = Some(metric_sum(&text, "callworker_calls_active", &[]));
            let base = *baseline_actions.get_or_insert((migrate, purge, shed));
            if summary.first_action_ms.is_none() {
                let moved =
                    [("migrate", migrate > base.0), ("purge", purge > base.1), ("shed", shed > base.2)];
                if let Some((name, _)) = moved.iter().find(|(_, m)| *m) {
                    summary.first_action_ms = Some(t_ms);
                    summary.first_action = Some(name);
                }
            }
            if refused > 0.0 && summary.first_refusal_ms.is_none() {
                summary.first_refusal_ms = Some(t_ms);
            }
            summary.migrate_total = migrate - base.0;
            summary.purge_total = purge - base.1;
            summary.shed_total = shed - base.2;
            summary.refused_memory_total = refused;
        }
        if let Some((migrated, lost, active)) = others {
            s.resumed_migrated_memory = Some(migrated);
            s.resumed_worker_lost = Some(lost);
            s.calls_active_others = Some(active);
            summary.resumed_migrated_memory = migrated;
            summary.resumed_worker_lost = lost;
        }
        if summary.samples.len() < SAMPLES_MAX {
            summary.samples.push(s);
        } else {
            summary.samples_dropped += 1;
        }
        if last {
            return summary;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = async { let _ = stop.wait_for(|s| *s).await.map(|_| ()); } => {}
        }
    }
}

/// The other workers' resume counters (migrated_memory, worker_lost) and active calls,
/// summed; `None` unless every one answered.
async fn others_counters(others: &[ControlApi], within: Duration) -> Option<(f64, f64, f64)> {
    let mut sum = (0.0, 0.0, 0.0);
    let mut set = tokio::task::JoinSet::new();
    for api in others {
        let api = api.clone();
        set.spawn(async move { get_metrics(&api, within).await });
    }
    let mut all = true;
    while let Some(joined) = set.join_next().await {
        match joined.ok().flatten() {
            Some(text) => {
                let resumed =
                    |cause: &str| metric_sum(&text, "callworker_calls_resumed_total", &[("cause", cause)]);
                sum.0 += resumed("migrated_memory");
                sum.1 += resumed("worker_lost");
                sum.2 += metric_sum(&text, "callworker_calls_active", &[]);
            }
            None => all = false,
        }
    }
    all.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_v1_and_a_v2_cgroup_directory() {
        let base = std::env::temp_dir().join(format!("cw-drill-sampler-{}", std::process::id()));
        let v1 = base.join("v1");
        let v2 = base.join("v2");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "1000\n").unwrap();
        std::fs::write(v1.join("memory.stat"), "cache 5\ninactive_file 1\ntotal_inactive_file 200\n")
            .unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(v1.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
            .unwrap();
        std::fs::write(v1.join("memory.max_usage_in_bytes"), "4096\n").unwrap();
        let r = Cgroup::open(&v1).unwrap().read().unwrap();
        assert_eq!((r.usage_bytes, r.working_set_bytes, r.limit_bytes, r.oom_kill), (1000, 800, None, 2));
        assert_eq!(r.max_usage_bytes, Some(4096));

        std::fs::write(v2.join("memory.current"), "1000\n").unwrap();
        std::fs::write(v2.join("memory.stat"), "anon 5\ninactive_file 300\n").unwrap();
        std::fs::write(v2.join("memory.max"), "2000\n").unwrap();
        std::fs::write(v2.join("memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        let c = Cgroup::open(&v2).unwrap();
        assert!(c.v2);
        let r = c.read().unwrap();
        assert_eq!(
            (r.working_set_bytes, r.limit_bytes, r.oom_kill, r.max_usage_bytes),
            (700, Some(2000), 1, None)
        );
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        assert_eq!(c.read().unwrap().limit_bytes, None);
        assert!(Cgroup::open(&base).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn levels_rank_in_order() {
        assert!(level_rank("emergency") > level_rank("migrate"));
        assert_eq!(level_rank("normal"), 0);
    }
}
