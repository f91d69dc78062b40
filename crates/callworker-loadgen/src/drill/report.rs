//! The drill's report: per-run figures, the verdict, a table, and the side-by-side summary
//! of several runs (`callworker-loadgen drill-report`).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::call::CallOutcome;
use super::sampler::{Sample, Summary};
use super::{DrillArgs, GovernorMode};

/// Drop reasons listed in the report (the full list is in `calls`).
const DROP_REASONS_MAX: usize = 10;

/// Calls by how they fared.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    pub tried: u32,
    pub placed: u32,
    /// 503 at creation.
    pub refused: u32,
    pub create_failed: u32,
    pub not_attempted: u32,
    pub live_on_target: u32,
    pub resumed_elsewhere: u32,
    pub dropped: u32,
    /// Placed calls whose client got at least one `migrate` message.
    pub migrated_seen_by_clients: u32,
}

/// One drill run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub governor: &'static str,
    pub target: String,
    pub others: Vec<String>,
    pub cgroup: String,
    pub cgroup_version: u8,
    pub calls_max: u32,
    pub rate_per_s: f64,
    pub hold_s: f64,
    pub program: Value,
    pub audio: String,
    pub stopped_at_ms: u64,
    pub limit_bytes: Option<u64>,
    pub baseline_working_set_bytes: Option<u64>,
    pub peak_working_set_bytes: u64,
    /// Peak sampled working set as a percentage of the limit.
    pub peak_pct_of_limit: f64,
    /// The kernel's high-water mark of usage (page cache included), as % of the limit.
    pub kernel_max_usage_pct_of_limit: Option<f64>,
    pub oom_kill_delta: u64,
    pub target_survived: bool,
    pub counts: Counts,
    /// The target's governor counters over the run.
    pub governor_migrations: f64,
    pub governor_purges: f64,
    pub governor_sheds: f64,
    pub refused_memory_pressure: f64,
    /// The other workers' `callworker_calls_resumed_total` by cause.
    pub resumed_elsewhere_migrated_memory: f64,
    pub resumed_elsewhere_worker_lost: f64,
    pub threshold: f64,
    /// Milliseconds from the drill's start.
    pub first_crossing_ms: Option<u64>,
    pub first_level_ms: Option<u64>,
    pub first_level: Option<String>,
    pub max_level: Option<String>,
    pub first_action_ms: Option<u64>,
    pub first_action: Option<&'static str>,
    pub first_refusal_ms: Option<u64>,
    /// First level above normal → first governor action (the governor's own reaction).
    pub level_to_action_ms: Option<u64>,
    /// Working set first at `threshold` of the limit (sampled here) → first action.
    pub crossing_to_action_ms: Option<i64>,
    pub drop_reasons: Vec<String>,
    pub pass: bool,
    pub failures: Vec<String>,
    pub warnings: Vec<String>,
    pub samples_dropped: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallOutcome>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<Sample>,
}

fn pct(part: u64, whole: Option<u64>) -> Option<f64> {
    whole.filter(|w| *w > 0).map(|w| 100.0 * part as f64 / w as f64)
}

impl Report {
    pub fn build(
        args: &DrillArgs,
        target: &str,
        others: &[String],
        stopped_at_ms: u64,
        target_survived: bool,
        calls: Vec<CallOutcome>,
        summary: Summary,
    ) -> Report {
        let mut counts = Counts::default();
        let mut drop_reasons = Vec::new();
        for c in &calls {
            match c.placement {
                "placed" => counts.placed += 1,
                "refused" => counts.refused += 1,
                "create_failed" => counts.create_failed += 1,
                _ => counts.not_attempted += 1,
            }
            match c.outcome {
                Some("live_on_target") => counts.live_on_target += 1,
                Some("resumed_elsewhere") => counts.resumed_elsewhere += 1,
                Some("dropped") => counts.dropped += 1,
                _ => {}
            }
            if c.migrate_messages > 0 {
                counts.migrated_seen_by_clients += 1;
            }
            if let Some(why) = &c.drop_reason
                && drop_reasons.len() < DROP_REASONS_MAX
            {
                drop_reasons.push(format!(
                    "call {} ({}): {why}",
                    c.index,
                    c.call_id.as_deref().unwrap_or("?")
                ));
            }
        }
        counts.tried = counts.placed + counts.refused + counts.create_failed;
        let oom_kill_delta = match (&summary.first, &summary.last) {
            (Some(first), Some(last)) => last.oom_kill.saturating_sub(first.oom_kill),
            _ => 0,
        };
        let limit = summary.limit_bytes;
        let kernel_max = summary.last.and_then(|r| r.max_usage_bytes);
        let mut report = Report {
            mode: "drill",
            governor: args.governor.as_str(),
            target: target.to_owned(),
            others: others.to_vec(),
            cgroup: args.cgroup.display().to_string(),
            cgroup_version: if args.cgroup.join("memory.current").is_file() { 2 } else { 1 },
            calls_max: args.calls,
            rate_per_s: args.rate,
            hold_s: args.hold_s,
            program: args.program.clone(),
            audio: format!("{:?}", args.audio.format()),
            stopped_at_ms,
            limit_bytes: limit,
            baseline_working_set_bytes: summary.first.map(|r| r.working_set_bytes),
            peak_working_set_bytes: summary.peak_working_set_bytes,
            peak_pct_of_limit: 100.0 * summary.peak_ratio,
            kernel_max_usage_pct_of_limit: kernel_max.and_then(|m| pct(m, limit)),
            oom_kill_delta,
            target_survived,
            counts,
            governor_migrations: summary.migrate_total,
            governor_purges: summary.purge_total,
            governor_sheds: summary.shed_total,
            refused_memory_pressure: summary.refused_memory_total,
            resumed_elsewhere_migrated_memory: summary.resumed_migrated_memory,
            resumed_elsewhere_worker_lost: summary.resumed_worker_lost,
            threshold: args.threshold,
            first_crossing_ms: summary.first_crossing_ms,
            first_level_ms: summary.first_level_ms,
            first_level: summary.first_level.clone(),
            max_level: summary.max_level.clone(),
            first_action_ms: summary.first_action_ms,
            first_action: summary.first_action,
            first_refusal_ms: summary.first_refusal_ms,
            level_to_action_ms: match (summary.first_level_ms, summary.first_action_ms) {
                (Some(l), Some(a)) => Some(a.saturating_sub(l)),
                _ => None,
            },
            crossing_to_action_ms: match (summary.first_crossing_ms, summary.first_action_ms) {
                (Some(c), Some(a)) => i64::try_from(a).ok().zip(i64::try_from(c).ok()).map(|(a, c)| a - c),
                _ => None,
            },
            drop_reasons,
            pass: true,
            failures: Vec::new(),
            warnings: Vec::new(),
            samples_dropped: summary.samples_dropped,
            calls,
            samples: summary.samples,
        };
        report.judge(args.governor);
        report
    }

    fn judge(&mut self, governor: GovernorMode) {
        let c = self.counts;
        if c.dropped > 0 {
            self.failures.push(format!("{} calls dropped", c.dropped));
        }
        if self.limit_bytes.is_none() {
            self.warnings.push("the cgroup had no memory limit: nothing was at stake".to_owned());
        }
        if c.placed == 0 {
            self.failures.push("no call was placed".to_owned());
        }
        match governor {
            GovernorMode::On => {
                if self.oom_kill_delta > 0 {
                    self.failures.push(format!("the kernel OOM-killed {} process(es)", self.oom_kill_delta));
                }
                if !self.target_survived {
                    self.failures.push("the target did not survive".to_owned());
                }
                if self.governor_migrations == 0.0 {
                    self.warnings.push(
                        "the governor migrated nothing: the load never pushed the target far enough \
                         (raise --calls or lower the headroom)"
                            .to_owned(),
                    );
                }
            }
            GovernorMode::Off => {
                if self.oom_kill_delta == 0 {
                    self.warnings.push(
                        "the target was not OOM-killed: the load never reached the limit (raise --calls)"
                            .to_owned(),
                    );
                }
            }
        }
        self.pass = self.failures.is_empty();
    }

    /// The report without the per-call and per-sample detail.
    pub fn without_detail(&self) -> Report {
        Report { calls: Vec::new(), samples: Vec::new(), ..self.clone() }
    }

    pub fn table(&self) -> String {
        table(&[serde_json::to_value(self.without_detail()).unwrap_or(Value::Null)])
    }
}

fn mib(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
}

fn num(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{f:.0}"),
            Some(f) => format!("{f:.1}"),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    v.as_f64().map_or_else(|| "-".to_owned(), |m| format!("{m:.0} ms"))
}

/// A side-by-side table of run reports (as JSON values).
pub fn table(runs: &[Value]) -> String {
    type Cell = fn(&Value) -> String;
    let rows: [(&str, Cell); 24] = [
        ("governor", |r| num(&r["governor"])),
        ("limit", |r| mib(&r["limit_bytes"])),
        ("baseline working set", |r| mib(&r["baseline_working_set_bytes"])),
        ("peak working set", |r| mib(&r["peak_working_set_bytes"])),
        ("peak working set % of limit", |r| format!("{}%", num(&r["peak_pct_of_limit"]))),
        ("kernel max usage % of limit", |r| {
            r["kernel_max_usage_pct_of_limit"].as_f64().map_or("-".to_owned(), |p| format!("{p:.1}%"))
        }),
        ("OOM kills (delta)", |r| num(&r["oom_kill_delta"])),
        ("target survived", |r| num(&r["target_survived"])),
        ("highest level", |r| num(&r["max_level"])),
        ("calls placed", |r| num(&r["counts"]["placed"])),
        ("calls refused (503)", |r| num(&r["counts"]["refused"])),
        ("calls not created (other)", |r| num(&r["counts"]["create_failed"])),
        ("migrated (governor counter)", |r| num(&r["governor_migrations"])),
        ("migrate seen by clients", |r| num(&r["counts"]["migrated_seen_by_clients"])),
        ("resumed elsewhere: migrated_memory", |r| num(&r["resumed_elsewhere_migrated_memory"])),
        ("resumed elsewhere: worker_lost", |r| num(&r["resumed_elsewhere_worker_lost"])),
        ("ended live on target", |r| num(&r["counts"]["live_on_target"])),
        ("ended resumed elsewhere", |r| num(&r["counts"]["resumed_elsewhere"])),
        ("dropped", |r| num(&r["counts"]["dropped"])),
        ("first crossing (threshold, sampled)", |r| ms(&r["first_crossing_ms"])),
        ("first level above normal", |r| {
            format!("{} ({})", ms(&r["first_level_ms"]), num(&r["first_level"]))
        }),
        ("first action", |r| format!("{} ({})", ms(&r["first_action_ms"]), num(&r["first_action"]))),
        ("level → first action", |r| ms(&r["level_to_action_ms"])),
        ("crossing → first action", |r| ms(&r["crossing_to_action_ms"])),
    ];
    let mut out = String::new();
    let width = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
    for (name, cell) in rows {
        let _ = write!(out, "{name:<width$}");
        for run in runs {
            let _ = write!(out, "  {:>22}", cell(run));
        }
        out.push('\n');
    }
    let _ = write!(out, "{:<width$}", "verdict");
    for run in runs {
        let verdict = if run["pass"].as_bool() == Some(true) { "PASS" } else { "FAIL" };
        let _ = write!(out, "  {verdict:>22}");
    }
    out.push('\n');
    for run in runs {
        let label = num(&run["governor"]);
        for key in ["failures", "warnings", "drop_reasons"] {
            for line in run[key].as_array().into_iter().flatten() {
                let _ = writeln!(out, "  [governor {label}] {key}: {}", num(line));
            }
        }
    }
    out
}

/// Options of the `drill-report` mode.
#[derive(Debug, Clone, Args)]
pub struct DrillReportArgs {
    /// Run reports written by `drill --out`, in the order to show them.
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// Write `{"runs": [...]}` (each without its per-call and per-sample detail) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Prints the runs side by side; `Ok(false)` when any of them failed its verdict.
pub fn run_compare(args: DrillReportArgs) -> anyhow::Result<bool> {
    let mut runs = Vec::with_capacity(args.runs.len());
    for path in &args.runs {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut run: Value =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        if let Some(map) = run.as_object_mut() {
            map.remove("calls");
            map.remove("samples");
        }
        runs.push(run);
    }
    print!("{}", table(&runs));
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "runs": runs })).context("encode")?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(runs.iter().all(|r| r["pass"].as_bool() == Some(true)))
}
