//! The `capacity` mode: ramp through levels of concurrent Twilio echo calls against our
//! worker and against the bare echo ceiling (`echo-ceiling` in benches/), alternating at
//! each level so both see the same machine at about the same moment, and report per level
//! delivery, echo lag, server CPU and RSS, Redis commands, and the largest level meeting the
//! SLO (delivered ≥ 99.9 %, echo lag p99 ≤ 50 ms), with worker/ceiling ratios.
//!
//! One level on one server: N calls start evenly over `--ramp-s`, each streaming so that all
//! of them end together `--hold-s` after the ramp; the hold is the window where all N are
//! live. Echo lag quantiles are those recorded during the hold (the histogram at its end
//! minus the one at its start; calls record in batches of [`crate::report::SAMPLES_BATCH`], so
//! the window edges are blurred by up to ~2.5 s). CPU, RSS and Redis are sampled at the
//! hold's start and end.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::call::{self, CallPlan, Clients};
use crate::calls::{frames_for, seconds, start_offset};
use crate::probe::{MachineSample, ProcSample, RedisSample};
use crate::report::{CallSummary, Protocol, Quantiles, SharedHistograms};
use std::fmt::Write as _;

/// SLO: smallest delivered ratio at a level.
pub const SLO_DELIVERED_MIN: f64 = 0.999;
/// SLO: largest echo lag p99 at a level, in ms.
pub const SLO_ECHO_LAG_P99_MS: f64 = 50.0;
/// Levels accepted in one run.
const LEVELS_MAX: usize = 64;
/// Largest level (calls) accepted.
const LEVEL_CALLS_MAX: u32 = 100_000;
/// Lead time before a level's first call, so every task is spawned first.
const START_LEAD: Duration = Duration::from_millis(50);
/// The hold window starts this long after the ramp, so the last calls are set up.
const HOLD_SETTLE: Duration = Duration::from_millis(500);

/// Options of the `capacity` mode.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("servers").required(true).multiple(true).args(["target", "ceiling"])))]
pub struct CapacityArgs {
    /// Base URL of the callworker worker under test.
    #[arg(long)]
    pub target: Option<String>,
    /// PID of the worker, for CPU and RSS.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Base URL of the bare echo ceiling (`echo-ceiling`).
    #[arg(long)]
    pub ceiling: Option<String>,
    /// PID of the ceiling, for CPU and RSS.
    #[arg(long)]
    pub ceiling_pid: Option<u32>,
    /// Port of the worker's Redis on 127.0.0.1, for INFO / DBSIZE samples.
    #[arg(long)]
    pub redis_port: Option<u16>,
    /// Concurrent calls at each level, ascending.
    #[arg(long, value_delimiter = ',', default_value = "100,200,400,600,800,1000",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(LEVEL_CALLS_MAX)))]
    pub levels: Vec<u32>,
    /// Seconds over which a level's calls start.
    #[arg(long, default_value_t = 5.0, value_parser = ramp_s)]
    pub ramp_s: f64,
    /// Seconds all of a level's calls stream together (the measured window).
    #[arg(long, default_value_t = 10.0, value_parser = hold_s)]
    pub hold_s: f64,
    /// Pause between runs, so closes and server clean-up finish.
    #[arg(long, default_value_t = 2.0, value_parser = ramp_s)]
    pub settle_s: f64,
    /// Stop raising a server's level after it missed the SLO at this many levels in a row.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub misses_max: u32,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn ramp_s(text: &str) -> Result<f64, String> {
    seconds(text, None, 3_600.0)
}

fn hold_s(text: &str) -> Result<f64, String> {
    seconds(text, Some(0.0), 86_400.0)
}

/// A server measured in a run.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    pub name: &'static str,
    pub base_url: String,
    pub pid: Option<u32>,
    pub redis_port: Option<u16>,
}

/// What every call of one load shares, and the load's tasks.
pub(crate) struct Load {
    pub tasks: JoinSet<CallSummary>,
    pub histograms: Arc<SharedHistograms>,
    /// When the last call has started.
    pub ramp_end: Instant,
    /// When every call has sent its last frame.
    pub end: Instant,
}

/// Starts `calls` Twilio echo calls on `base_url`, spread over `ramp_s`, all streaming until
/// `ramp_s + hold_s` after the first.
pub(crate) fn start_load(base_url: &str, calls: u32, ramp_s: f64, hold_s: f64, seed_base: u64) -> Load {
    let histograms = Arc::new(SharedHistograms::default());
    let clients = Clients {
        api: crate::api(base_url),
        twilio: crate::twilio(base_url),
        create_body: Arc::new(json!({"program": {"name": "echo", "params": {"delay_ms": 0}}})),
        histograms: histograms.clone(),
    };
    let first_at = Instant::now() + START_LEAD;
    let mut tasks = JoinSet::new();
    for index in 0..calls {
        let offset = start_offset(index, calls, ramp_s);
        let plan = CallPlan {
            index,
            protocol: Protocol::Twilio,
            start_at: first_at + offset,
            frames: frames_for((ramp_s - offset.as_secs_f64()).max(0.0) + hold_s),
            seed: seed_base + u64::from(index) + 1,
        };
        tasks.spawn(call::run(plan, clients.clone()));
    }
    let ramp_end = first_at + Duration::from_secs_f64(ramp_s);
    Load { tasks, histograms, ramp_end, end: ramp_end + Duration::from_secs_f64(hold_s) }
}

impl Load {
    pub async fn join(mut self) -> anyhow::Result<Vec<CallSummary>> {
        let mut summaries = Vec::with_capacity(self.tasks.len());
        while let Some(joined) = self.tasks.join_next().await {
            summaries.push(joined.context("a call task panicked")?);
        }
        summaries.sort_by_key(|s| s.index);
        Ok(summaries)
    }
}

/// Redis during a hold window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RedisWindow {
    pub commands: u64,
    /// Commands / (live calls × window seconds).
    pub commands_per_call_s: f64,
    pub ops_per_sec: u64,
    pub used_memory_bytes: u64,
    pub keys: u64,
}

impl RedisWindow {
    pub fn between(a: &RedisSample, b: &RedisSample, calls: u32) -> RedisWindow {
        let wall_s = match (a.at, b.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let commands = b.total_commands_processed.saturating_sub(a.total_commands_processed);
        let call_s = f64::from(calls) * wall_s;
        RedisWindow {
            commands,
            commands_per_call_s: if call_s > 0.0 { commands as f64 / call_s } else { 0.0 },
            ops_per_sec: b.instantaneous_ops_per_sec,
            used_memory_bytes: b.used_memory_bytes,
            keys: b.keys,
        }
    }
}

/// One server at one level.
#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub server: &'static str,
    pub calls: u32,
    pub calls_failed_setup: u64,
    /// Calls that did not end with a 1000 close, or hit an error after setup.
    pub calls_troubled: u64,
    pub delivered_ratio: f64,
    pub mismatched_frames: u64,
    /// Echo lag during the hold, against the real-time send schedule.
    pub echo_lag: Quantiles,
    /// Echo lag over the whole run (ramp included).
    pub echo_lag_run: Quantiles,
    pub send_lateness: Quantiles,
    /// Server CPU over the hold, in % of one core, and per live call.
    pub cpu_pct: Option<f64>,
    pub cpu_per_call_pct: Option<f64>,
    /// Server RSS at the end of the hold.
    pub rss_bytes: Option<u64>,
    /// CPU of this load generator, of the whole machine, and of everything else (Redis,
    /// other processes) over the hold, in % of one core: who else used the cores.
    pub loadgen_cpu_pct: Option<f64>,
    pub machine_cpu_pct: Option<f64>,
    pub others_cpu_pct: Option<f64>,
    pub redis: Option<RedisWindow>,
    pub slo_met: bool,
    /// Why the SLO was missed (empty when met).
    pub slo_missed: String,
}

/// Runs one level on one server.
pub(crate) async fn run_level(
    server: &Server,
    calls: u32,
    args: &CapacityArgs,
    seed_base: u64,
) -> anyhow::Result<LevelResult> {
    let load = start_load(&server.base_url, calls, args.ramp_s, args.hold_s, seed_base);
    let hold_start = load.ramp_end + HOLD_SETTLE;
    let hold_end = load.end;
    let histograms = load.histograms.clone();
    sleep_until(hold_start).await;
    let proc_a =
        server.pid.map(ProcSample::read).transpose().context("sample the server at the hold start")?;
    let redis_a = match server.redis_port {
        Some(port) => Some(RedisSample::read(port).await?),
        None => None,
    };
    let lag_a = histograms.snapshot().echo_lag_us;
    let own_a = ProcSample::read(std::process::id()).ok();
    let machine_a = MachineSample::read().ok();
    sleep_until(hold_end).await;
    let proc_b = server.pid.map(ProcSample::read).transpose().context("sample the server at the hold end")?;
    let own_b = ProcSample::read(std::process::id()).ok();
    let machine_b = MachineSample::read().ok();
    let redis_b = match server.redis_port {
        Some(port) => Some(RedisSample::read(port).await?),
        None => None,
    };
    let summaries = load.join().await?;
    let h = histograms.snapshot();
    let mut hold_lag: Histogram<u64> = h.echo_lag_us.clone();
    // Both come from the same histogram, later minus earlier: counts only grow.
    hold_lag.subtract(&lag_a).context("subtract the ramp's echo lags")?;

    let bytes_sent: u64 = summaries.iter().map(|c| c.bytes_sent).sum();
    let bytes_echoed: u64 = summaries.iter().map(CallSummary::bytes_echoed).sum();
    let delivered_ratio = if bytes_sent == 0 { 0.0 } else { bytes_echoed as f64 / bytes_sent as f64 };
    let calls_failed_setup = summaries.iter().filter(|c| !c.set_up()).count() as u64;
    let calls_troubled = summaries
        .iter()
        .filter(|c| c.set_up() && (c.abnormal_close().is_some() || c.error.is_some()))
        .count() as u64;
    let mismatched_frames = summaries.iter().map(|c| c.mismatched_frames).sum();
    let echo_lag = Quantiles::of(&hold_lag);
    let (cpu_pct, rss_bytes) = match (proc_a, proc_b) {
        (Some(a), Some(b)) => (Some(b.cores_since(&a) * 100.0), Some(b.rss_bytes)),
        _ => (None, None),
    };
    let redis = match (redis_a, redis_b) {
        (Some(a), Some(b)) => Some(RedisWindow::between(&a, &b, calls)),
        _ => None,
    };
    let loadgen_cpu_pct = own_a.zip(own_b).map(|(a, b)| b.cores_since(&a) * 100.0);
    let machine_cpu_pct = machine_a.zip(machine_b).map(|(a, b)| b.cores_since(&a) * 100.0);
    let others_cpu_pct = match (machine_cpu_pct, loadgen_cpu_pct, cpu_pct) {
        (Some(m), Some(l), Some(s)) => Some((m - l - s).max(0.0)),
        _ => None,
    };
    let mut missed = Vec::new();
    if calls_failed_setup > 0 {
        missed.push(format!("{calls_failed_setup} setups failed"));
    }
    if mismatched_frames > 0 {
        missed.push(format!("{mismatched_frames} frames mismatched"));
    }
    if delivered_ratio < SLO_DELIVERED_MIN {
        missed.push(format!("delivered {:.3} %", delivered_ratio * 100.0));
    }
    if echo_lag.p99_ms > SLO_ECHO_LAG_P99_MS {
        missed.push(format!("p99 {:.1} ms", echo_lag.p99_ms));
    }
    Ok(LevelResult {
        server: server.name,
        calls,
        calls_failed_setup,
        calls_troubled,
        delivered_ratio,
        mismatched_frames,
        echo_lag,
        echo_lag_run: Quantiles::of(&h.echo_lag_us),
        send_lateness: Quantiles::of(&h.send_lateness_us),
        cpu_pct,
        cpu_per_call_pct: cpu_pct.map(|c| c / f64::from(calls)),
        rss_bytes,
        loadgen_cpu_pct,
        machine_cpu_pct,
        others_cpu_pct,
        redis,
        slo_met: missed.is_empty(),
        slo_missed: missed.join(", "),
    })
}

/// What one server achieved over the run.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    pub server: &'static str,
    pub base_url: String,
    /// Largest level that met the SLO.
    pub capacity_calls: Option<u32>,
    /// Least-squares slope of RSS over live calls, across the levels that met the SLO
    /// (overloaded levels also hold backlog); all levels when fewer than two met it.
    pub rss_per_call_bytes: Option<f64>,
    /// The same slope across every level measured.
    pub rss_per_call_bytes_all_levels: Option<f64>,
    /// Commands per call-second at the capacity level (or the largest level measured).
    pub redis_commands_per_call_s: Option<f64>,
}

/// Worker / ceiling at one level both ran.
#[derive(Debug, Clone, Serialize)]
pub struct LevelRatio {
    pub calls: u32,
    pub cpu_per_call: Option<f64>,
    pub echo_lag_p99: f64,
}

/// Worker / ceiling over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub capacity: Option<f64>,
    pub rss_per_call: Option<f64>,
    pub per_level: Vec<LevelRatio>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityReport {
    pub mode: &'static str,
    pub levels: Vec<u32>,
    pub ramp_s: f64,
    pub hold_s: f64,
    pub slo_delivered_min: f64,
    pub slo_echo_lag_p99_ms: f64,
    pub elapsed_s: f64,
    pub results: Vec<LevelResult>,
    pub servers: Vec<ServerSummary>,
    pub ratios: Option<Ratios>,
}

/// Least-squares slope of y over x; `None` with fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

fn summarize(name: &'static str, base_url: &str, results: &[LevelResult]) -> ServerSummary {
    let mine: Vec<&LevelResult> = results.iter().filter(|r| r.server == name).collect();
    let capacity_calls = mine.iter().filter(|r| r.slo_met).map(|r| r.calls).max();
    let points = |slo_only: bool| -> Vec<(f64, f64)> {
        mine.iter()
            .filter(|r| r.slo_met || !slo_only)
            .filter_map(|r| r.rss_bytes.map(|b| (f64::from(r.calls), b as f64)))
            .collect()
    };
    let rss_per_call_bytes_all_levels = slope(&points(false));
    let at = capacity_calls.or_else(|| mine.iter().map(|r| r.calls).max());
    let redis_commands_per_call_s =
        mine.iter().find(|r| Some(r.calls) == at).and_then(|r| r.redis).map(|w| w.commands_per_call_s);
    ServerSummary {
        server: name,
        base_url: base_url.to_owned(),
        capacity_calls,
        rss_per_call_bytes: slope(&points(true)).or(rss_per_call_bytes_all_levels),
        rss_per_call_bytes_all_levels,
        redis_commands_per_call_s,
    }
}

fn ratios(results: &[LevelResult], worker: &ServerSummary, ceiling: &ServerSummary) -> Ratios {
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut per_level = Vec::new();
    for w in results.iter().filter(|r| r.server == "worker") {
        if let Some(c) = results.iter().find(|r| r.server == "ceiling" && r.calls == w.calls) {
            per_level.push(LevelRatio {
                calls: w.calls,
                cpu_per_call: div(w.cpu_per_call_pct, c.cpu_per_call_pct),
                echo_lag_p99: if c.echo_lag.p99_ms > 0.0 {
                    w.echo_lag.p99_ms / c.echo_lag.p99_ms
                } else {
                    0.0
                },
            });
        }
    }
    Ratios {
        capacity: match (worker.capacity_calls, ceiling.capacity_calls) {
            (Some(w), Some(c)) => Some(f64::from(w) / f64::from(c)),
            (None, Some(_)) => Some(0.0),
            _ => None,
        },
        rss_per_call: div(worker.rss_per_call_bytes, ceiling.rss_per_call_bytes),
        per_level,
    }
}

impl CapacityReport {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "callworker-loadgen capacity: twilio echo calls, ramp {:.1} s + hold {:.1} s per level; SLO delivered ≥ {:.1} %, echo lag p99 ≤ {:.0} ms",
            self.ramp_s,
            self.hold_s,
            self.slo_delivered_min * 100.0,
            self.slo_echo_lag_p99_ms
        );
        let _ = writeln!(
            t,
            "  {:<8}{:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9}  slo",
            "server",
            "calls",
            "deliv %",
            "p50 ms",
            "p99 ms",
            "p99.9",
            "max ms",
            "cpu %",
            "%cpu/call",
            "lg %",
            "other %",
            "rss MiB",
            "cmd/c·s",
            "redis MiB",
        );
        for r in &self.results {
            let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
            let _ = writeln!(
                t,
                "  {:<8}{:>6} {:>9.3} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9}  {}",
                r.server,
                r.calls,
                r.delivered_ratio * 100.0,
                r.echo_lag.p50_ms,
                r.echo_lag.p99_ms,
                r.echo_lag.p999_ms,
                r.echo_lag.max_ms,
                opt(r.cpu_pct, 1),
                opt(r.cpu_per_call_pct, 4),
                opt(r.loadgen_cpu_pct, 1),
                opt(r.others_cpu_pct, 1),
                opt(r.rss_bytes.map(|b| b as f64 / 1_048_576.0), 1),
                opt(r.redis.map(|w| w.commands_per_call_s), 2),
                opt(r.redis.map(|w| w.used_memory_bytes as f64 / 1_048_576.0), 1),
                if r.slo_met { "ok".to_owned() } else { format!("MISS ({})", r.slo_missed) }
            );
        }
        for s in &self.servers {
            let _ = writeln!(
                t,
                "  {}: capacity {} calls; RSS slope {} per call ({} over every level); redis {} commands per call-second",
                s.server,
                s.capacity_calls.map_or("none".to_owned(), |c| c.to_string()),
                s.rss_per_call_bytes.map_or("-".to_owned(), |b| format!("{:.1} KiB", b / 1024.0)),
                s.rss_per_call_bytes_all_levels.map_or("-".to_owned(), |b| format!("{:.1} KiB", b / 1024.0)),
                s.redis_commands_per_call_s.map_or("-".to_owned(), |c| format!("{c:.2}")),
            );
        }
        if let Some(r) = &self.ratios {
            let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
            let _ = writeln!(
                t,
                "  worker/ceiling: capacity {}  RSS per call {}",
                opt(r.capacity),
                opt(r.rss_per_call)
            );
            for l in &r.per_level {
                let _ = writeln!(
                    t,
                    "    at {:>5} calls: CPU per call {}  echo lag p99 {:.2}",
                    l.calls,
                    opt(l.cpu_per_call),
                    l.echo_lag_p99
                );
            }
        }
        let _ = writeln!(
            t,
            "  (cpu %, lg % and other % are % of one core over the hold: the server, this load generator, and everything else on the machine)"
        );
        let _ = writeln!(t, "  elapsed {:.1} s", self.elapsed_s);
        t
    }
}

/// Runs the mode and prints its report. `Ok(false)` when no server met the SLO at any level.
pub async fn run(args: CapacityArgs) -> anyhow::Result<bool> {
    let mut levels = args.levels.clone();
    if levels.is_empty() || levels.len() > LEVELS_MAX {
        anyhow::bail!("--levels needs 1 to {LEVELS_MAX} levels");
    }
    levels.sort_unstable();
    levels.dedup();
    let mut servers = Vec::new();
    for (name, url, pid, redis_port) in [
        ("worker", &args.target, args.target_pid, args.redis_port),
        ("ceiling", &args.ceiling, args.ceiling_pid, None),
    ] {
        if let Some(url) = url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!(
                    "--{} must be an http:// base URL, not `{url}`",
                    if name == "worker" { "target" } else { "ceiling" }
                );
            }
            servers.push(Server { name, base_url: url.clone(), pid, redis_port });
        }
    }
    let started = Instant::now();
    let mut results = Vec::new();
    let mut misses = vec![0u32; servers.len()];
    let mut seed_base = 0u64;
    for (level_index, &calls) in levels.iter().enumerate() {
        // Alternate which server goes first, so neither always runs on a warmer machine.
        let mut order: Vec<usize> = (0..servers.len()).collect();
        if level_index % 2 == 1 {
            order.reverse();
        }
        for i in order {
            if misses[i] >= args.misses_max {
                continue;
            }
            let server = &servers[i];
            eprintln!(
                "callworker-loadgen capacity: {} calls on {} ({})",
                calls, server.name, server.base_url
            );
            let result = run_level(server, calls, &args, seed_base).await?;
            seed_base += u64::from(calls);
            misses[i] = if result.slo_met { 0 } else { misses[i] + 1 };
            if !args.json {
                eprintln!(
                    "  delivered {:.3} %  echo lag p99 {:.2} ms  cpu {}  {}",
                    result.delivered_ratio * 100.0,
                    result.echo_lag.p99_ms,
                    result.cpu_pct.map_or("-".to_owned(), |c| format!("{c:.1} %")),
                    if result.slo_met { "ok" } else { "MISS" }
                );
            }
            results.push(result);
            tokio::time::sleep(Duration::from_secs_f64(args.settle_s)).await;
        }
    }
    let summaries: Vec<ServerSummary> =
        servers.iter().map(|s| summarize(s.name, &s.base_url, &results)).collect();
    let ratios = match (
        summaries.iter().find(|s| s.server == "worker"),
        summaries.iter().find(|s| s.server == "ceiling"),
    ) {
        (Some(w), Some(c)) => Some(ratios(&results, w, c)),
        _ => None,
    };
    let report = CapacityReport {
        mode: "capacity",
        levels,
        ramp_s: args.ramp_s,
        hold_s: args.hold_s,
        slo_delivered_min: SLO_DELIVERED_MIN,
        slo_echo_lag_p99_ms: SLO_ECHO_LAG_P99_MS,
        elapsed_s: started.elapsed().as_secs_f64(),
        results,
        servers: summaries,
        ratios,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encode the report")?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.servers.iter().any(|s| s.capacity_calls.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_is_least_squares() {
        assert_eq!(slope(&[(100.0, 1_000.0)]), None);
        assert_eq!(slope(&[(100.0, 1.0), (100.0, 2.0)]), None);
        let s = slope(&[(100.0, 10_000.0), (200.0, 17_000.0), (400.0, 31_000.0)]).unwrap();
        assert!((s - 70.0).abs() < 1e-9, "{s}");
    }

    #[test]
    fn redis_window_is_per_call_second() {
        let t0 = Instant::now();
        let a = RedisSample {
            at: Some(t0),
            instantaneous_ops_per_sec: 0,
            used_memory_bytes: 0,
            total_commands_processed: 1_000,
            keys: 0,
        };
        let b = RedisSample {
            at: Some(t0 + Duration::from_secs(10)),
            total_commands_processed: 3_000,
            keys: 5,
            ..a
        };
        let w = RedisWindow::between(&a, &b, 100);
        assert_eq!(w.commands, 2_000);
        assert!((w.commands_per_call_s - 2.0).abs() < 1e-9);
    }
}
