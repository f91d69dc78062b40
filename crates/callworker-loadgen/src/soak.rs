//! The `soak` mode: N Twilio echo calls held steady for a duration against one server,
//! sampled every `--interval-s`: server RSS and CPU, echo lag p99 of the interval, Redis keys
//! and used memory. Reports the drift between the first and the last full interval.
//!
//! Interval echo lags are the run's histogram at the interval's end minus at its start;
//! calls record in batches of [`crate::report::SAMPLES_BATCH`] (~2.5 s of frames), so an
//! interval shorter than ~5 s is smeared into its neighbours.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use tokio::time::{Instant, sleep_until};

use crate::calls::seconds;
use crate::capacity::{slope, start_load};
use crate::probe::{ProcSample, RedisSample};
use crate::report::{CallSummary, Quantiles};

/// Intervals reported at most (longer runs should sample less often).
const INTERVALS_MAX: usize = 10_000;

/// Options of the `soak` mode.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Base URL of the server under test (a worker, or the ceiling).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// PID of the server, for CPU and RSS.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Port of the server's Redis on 127.0.0.1, for DBSIZE and INFO.
    #[arg(long)]
    pub redis_port: Option<u16>,
    /// Concurrent calls.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub calls: u32,
    /// Seconds all calls stream together after the ramp.
    #[arg(long, default_value_t = 60.0, value_parser = duration_s)]
    pub duration_s: f64,
    /// Seconds over which calls start.
    #[arg(long, default_value_t = 5.0, value_parser = ramp_s)]
    pub ramp_s: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 5.0, value_parser = interval_s)]
    pub interval_s: f64,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn duration_s(text: &str) -> Result<f64, String> {
    seconds(text, Some(0.0), 7.0 * 86_400.0)
}

fn ramp_s(text: &str) -> Result<f64, String> {
    seconds(text, None, 3_600.0)
}

fn interval_s(text: &str) -> Result<f64, String> {
    seconds(text, Some(0.5), 3_600.0)
}

/// One sampling interval.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Seconds since the hold began, at the interval's end.
    pub at_s: f64,
    pub echo_lag: Quantiles,
    pub cpu_pct: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub redis: Option<RedisSample>,
}

/// First → last full interval.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub rss_bytes: Option<i64>,
    /// Least-squares RSS slope over the hold, bytes per minute.
    pub rss_bytes_per_min: Option<f64>,
    pub echo_lag_p99_ms: f64,
    pub redis_keys: Option<i64>,
    pub redis_used_memory_bytes: Option<i64>,
}

/// The outcome of a soak.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub mode: &'static str,
    pub target: String,
    pub calls: u32,
    pub duration_s: f64,
    pub calls_failed_setup: u64,
    pub calls_troubled: u64,
    pub delivered_ratio: f64,
    pub echo_lag: Quantiles,
    pub intervals: Vec<Interval>,
    pub drift: Option<Drift>,
    /// Redis after every call ended and the server settled.
    pub redis_after: Option<RedisSample>,
    pub elapsed_s: f64,
}

impl SoakReport {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "callworker-loadgen soak: {} twilio echo calls × {:.0} s on {}",
            self.calls, self.duration_s, self.target
        );
        let _ = writeln!(
            t,
            "  calls failed setup {}  troubled {}  delivered {:.3} %  echo lag p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2} ms",
            self.calls_failed_setup,
            self.calls_troubled,
            self.delivered_ratio * 100.0,
            self.echo_lag.p50_ms,
            self.echo_lag.p99_ms,
            self.echo_lag.p999_ms,
            self.echo_lag.max_ms
        );
        let _ = writeln!(
            t,
            "  {:>7} {:>8} {:>8} {:>7} {:>9} {:>8} {:>10}",
            "t s", "p99 ms", "max ms", "cpu %", "rss MiB", "keys", "redis MiB"
        );
        for i in &self.intervals {
            let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_owned(), |v| format!("{v:.prec$}"));
            let _ = writeln!(
                t,
                "  {:>7.1} {:>8.2} {:>8.2} {:>7} {:>9} {:>8} {:>10}",
                i.at_s,
                i.echo_lag.p99_ms,
                i.echo_lag.max_ms,
                opt(i.cpu_pct, 1),
                opt(i.rss_bytes.map(|b| b as f64 / 1_048_576.0), 1),
                i.redis.map_or("-".to_owned(), |r| r.keys.to_string()),
                opt(i.redis.map(|r| r.used_memory_bytes as f64 / 1_048_576.0), 2),
            );
        }
        if let Some(d) = &self.drift {
            let opt = |v: Option<i64>, div: f64, unit: &str| {
                v.map_or("-".to_owned(), |v| format!("{:+.2} {unit}", v as f64 / div))
            };
            let _ = writeln!(
                t,
                "  drift first→last: RSS {} ({} per min)  echo lag p99 {:+.2} ms  redis keys {}  redis memory {}",
                opt(d.rss_bytes, 1_048_576.0, "MiB"),
                d.rss_bytes_per_min.map_or("-".to_owned(), |b| format!("{:+.1} KiB", b / 1024.0)),
                d.echo_lag_p99_ms,
                opt(d.redis_keys, 1.0, "keys"),
                opt(d.redis_used_memory_bytes, 1_048_576.0, "MiB"),
            );
        }
        if let Some(r) = &self.redis_after {
            let _ = writeln!(
                t,
                "  redis after the calls ended: {} keys, {:.2} MiB",
                r.keys,
                r.used_memory_bytes as f64 / 1_048_576.0
            );
        }
        let _ = writeln!(t, "  elapsed {:.1} s", self.elapsed_s);
        t
    }
}

fn signed(a: u64, b: u64) -> i64 {
    i64::try_from(b).unwrap_or(i64::MAX).saturating_sub(i64::try_from(a).unwrap_or(i64::MAX))
}

/// Runs the mode and prints its report; `Ok(false)` when calls failed or audio was lost.
pub async fn run(args: SoakArgs) -> anyhow::Result<bool> {
    if !(args.target.starts_with("http://") || args.target.starts_with("https://")) {
        anyhow::bail!("--target must be an http:// base URL, not `{}`", args.target);
    }
    if args.duration_s / args.interval_s > INTERVALS_MAX as f64 {
        anyhow::bail!("--duration-s / --interval-s exceeds {INTERVALS_MAX} intervals");
    }
    let started = Instant::now();
    let load = start_load(&args.target, args.calls, args.ramp_s, args.duration_s, 0);
    let histograms = load.histograms.clone();
    let hold_start = load.ramp_end + Duration::from_millis(500);
    let hold_end = load.end;
    let interval = Duration::from_secs_f64(args.interval_s);
    sleep_until(hold_start).await;
    let mut prev_lag = histograms.snapshot().echo_lag_us;
    let mut prev_proc = args.target_pid.map(ProcSample::read).transpose().context("sample the server")?;
    let mut intervals = Vec::new();
    let mut next = hold_start + interval;
    while next <= hold_end {
        sleep_until(next).await;
        let lag = histograms.snapshot().echo_lag_us;
        let mut window = lag.clone();
        window.subtract(&prev_lag).context("subtract the previous interval")?;
        prev_lag = lag;
        let proc_now = args.target_pid.map(ProcSample::read).transpose().context("sample the server")?;
        let cpu_pct = match (&prev_proc, &proc_now) {
            (Some(a), Some(b)) => Some(b.cores_since(a) * 100.0),
            _ => None,
        };
        let rss_bytes = proc_now.map(|p| p.rss_bytes);
        prev_proc = proc_now;
        let redis = match args.redis_port {
            Some(port) => Some(RedisSample::read(port).await?),
            None => None,
        };
        let at_s = next.saturating_duration_since(hold_start).as_secs_f64();
        let i = Interval { at_s, echo_lag: Quantiles::of(&window), cpu_pct, rss_bytes, redis };
        if !args.json {
            eprintln!(
                "  t {:>6.1} s  p99 {:.2} ms  cpu {}  rss {}",
                i.at_s,
                i.echo_lag.p99_ms,
                i.cpu_pct.map_or("-".to_owned(), |c| format!("{c:.1} %")),
                i.rss_bytes.map_or("-".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1_048_576.0))
            );
        }
        intervals.push(i);
        next += interval;
    }
    let summaries = load.join().await?;
    // Let the server end its calls before counting what it left in Redis.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let redis_after = match args.redis_port {
        Some(port) => Some(RedisSample::read(port).await?),
        None => None,
    };
    let h = histograms.snapshot();
    let bytes_sent: u64 = summaries.iter().map(|c| c.bytes_sent).sum();
    let bytes_echoed: u64 = summaries.iter().map(CallSummary::bytes_echoed).sum();
    let drift = match (intervals.first(), intervals.last()) {
        (Some(a), Some(b)) if intervals.len() >= 2 => {
            let points: Vec<(f64, f64)> =
                intervals.iter().filter_map(|i| i.rss_bytes.map(|r| (i.at_s / 60.0, r as f64))).collect();
            Some(Drift {
                rss_bytes: a.rss_bytes.zip(b.rss_bytes).map(|(a, b)| signed(a, b)),
                rss_bytes_per_min: slope(&points),
                echo_lag_p99_ms: b.echo_lag.p99_ms - a.echo_lag.p99_ms,
                redis_keys: a.redis.zip(b.redis).map(|(a, b)| signed(a.keys, b.keys)),
                redis_used_memory_bytes: a
                    .redis
                    .zip(b.redis)
                    .map(|(a, b)| signed(a.used_memory_bytes, b.used_memory_bytes)),
            })
        }
        _ => None,
    };
    let report = SoakReport {
        mode: "soak",
        target: args.target.clone(),
        calls: args.calls,
        duration_s: args.duration_s,
        calls_failed_setup: summaries.iter().filter(|c| !c.set_up()).count() as u64,
        calls_troubled: summaries
            .iter()
            .filter(|c| c.set_up() && (c.abnormal_close().is_some() || c.error.is_some()))
            .count() as u64,
        delivered_ratio: if bytes_sent == 0 { 0.0 } else { bytes_echoed as f64 / bytes_sent as f64 },
        echo_lag: Quantiles::of(&h.echo_lag_us),
        intervals,
        drift,
        redis_after,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encode the report")?);
    } else {
        print!("{}", report.table());
    }
    Ok(report.calls_failed_setup == 0 && report.delivered_ratio >= crate::report::DELIVERED_RATIO_MIN)
}
