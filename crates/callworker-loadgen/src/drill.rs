//! The `drill` mode: the load and the measurements of the OOM drill (issue 4;
//! `scripts/oom-drill` sets up the workers and the cgroup and runs this twice).
//!
//! Calls are created on the target worker (the one in a memory cgroup) at `--rate` per
//! second up to `--calls`, each with `--program` and `--audio`, and connected with a
//! resilient native client that knows every worker's media URL (target first). Every call
//! streams real-time 20 ms frames until the drill stops (`--hold-s` after the last call's
//! turn), waits for the ack of its last frame, and hangs up. Meanwhile a sampler reads the
//! target's cgroup, governor level and counters every `--sample-ms`.
//!
//! Each call ends as one of: refused (503 at creation), create_failed, or, once placed,
//! live on the target, resumed elsewhere, or dropped (it ended other than by our hang-up,
//! or never got the ack of its last frame).
//!
//! Verdict: with `--governor on`, the kernel's OOM-kill count must not move, the target
//! must survive and no call may be dropped; with `--governor off`, no call may be dropped
//! (the target is expected to be OOM-killed and its calls to resume elsewhere).

mod call;
pub mod report;
pub mod sampler;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use callworker_protocol::{AudioFormat, Encoding};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::report::Report;
use self::sampler::{Cgroup, Sources};
use crate::calls::seconds;
use crate::failover::media_url;

/// Longest `--hold-s`.
const HOLD_S_MAX: f64 = 3_600.0;
/// Longest `--ack-wait-s`.
const ACK_WAIT_S_MAX: f64 = 120.0;
/// Lead time before the first call, so the sampler has a baseline.
const START_LEAD: Duration = Duration::from_millis(500);
/// Time the sampler keeps going after every call finished, so the counters of the other
/// workers settle.
const SETTLE: Duration = Duration::from_millis(500);

/// Whether the target's governor is enabled in this run (it decides the verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GovernorMode {
    On,
    Off,
}

impl GovernorMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GovernorMode::On => "on",
            GovernorMode::Off => "off",
        }
    }
}

/// Audio format of the drill's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DrillAudio {
    /// L16 at 16 kHz: 640 bytes per frame, the heaviest.
    #[value(name = "l16-16k")]
    L16k16,
    /// L16 at 8 kHz.
    #[value(name = "l16-8k")]
    L16k8,
    /// μ-law at 8 kHz (Twilio's format).
    #[value(name = "pcmu-8k")]
    Pcmu8k,
}

impl DrillAudio {
    pub fn format(self) -> AudioFormat {
        match self {
            DrillAudio::L16k16 => AudioFormat { encoding: Encoding::L16, sample_rate_hz: 16_000 },
            DrillAudio::L16k8 => AudioFormat { encoding: Encoding::L16, sample_rate_hz: 8_000 },
            DrillAudio::Pcmu8k => AudioFormat { encoding: Encoding::Pcmu, sample_rate_hz: 8_000 },
        }
    }
}

fn program(text: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() || !v["name"].is_string() {
        return Err("a program is a JSON object with a \"name\"".to_owned());
    }
    Ok(v)
}

fn rate(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of calls per second"))?;
    if !v.is_finite() || v <= 0.0 || v > 10_000.0 {
        return Err(format!("{v} is outside (0, 10000] calls per second"));
    }
    Ok(v)
}

fn fraction(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !(v > 0.0 && v <= 1.0) {
        return Err(format!("{v} is outside (0, 1]"));
    }
    Ok(v)
}

/// Options of the `drill` mode.
#[derive(Debug, Clone, Args)]
pub struct DrillArgs {
    /// Base URL of the worker under test (in the memory cgroup); every call is created here.
    #[arg(long)]
    pub target: String,
    /// Base URLs of the other workers, comma-separated: the clients resume there.
    #[arg(long, value_delimiter = ',', required = true)]
    pub others: Vec<String>,
    /// The target's memory cgroup directory (v1 or v2), sampled for working set, limit and
    /// the kernel's OOM-kill count.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// PID of the target's process, to tell whether it survived.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Whether the target's governor is enabled (decides the verdict).
    #[arg(long, value_enum, default_value_t = GovernorMode::On)]
    pub governor: GovernorMode,
    /// Calls to try to place, at most.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub calls: u32,
    /// Calls created per second.
    #[arg(long, default_value_t = 10.0, value_parser = rate)]
    pub rate: f64,
    /// Seconds every placed call keeps streaming after the last call's turn.
    #[arg(long, default_value_t = 15.0, value_parser = |t: &str| seconds(t, None, HOLD_S_MAX))]
    pub hold_s: f64,
    /// The program of every call, as JSON.
    #[arg(long, default_value = r#"{"name":"echo","params":{"delay_ms":4000}}"#, value_parser = program)]
    pub program: Value,
    /// Audio format of every call.
    #[arg(long, value_enum, default_value_t = DrillAudio::L16k16)]
    pub audio: DrillAudio,
    /// Sampling period of the cgroup and the workers, in milliseconds.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(20..=10_000))]
    pub sample_ms: u64,
    /// Working set / limit at which the threshold counts as crossed (the governor's first
    /// `enter` threshold).
    #[arg(long, default_value_t = 0.75, value_parser = fraction)]
    pub threshold: f64,
    /// Seconds a call waits for the ack of its last frame before it counts as dropped.
    #[arg(long, default_value_t = 15.0, value_parser = |t: &str| seconds(t, Some(0.0), ACK_WAIT_S_MAX))]
    pub ack_wait_s: f64,
    /// Write the full report (with every sample and call) as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Runs the mode and prints its report; `Ok(false)` when the run failed its verdict.
pub async fn run(args: DrillArgs) -> anyhow::Result<bool> {
    let target = args.target.trim_end_matches('/').to_owned();
    let others: Vec<String> = args.others.iter().map(|w| w.trim_end_matches('/').to_owned()).collect();
    let mut media_urls = vec![media_url(&target)?];
    for other in &others {
        media_urls.push(media_url(other)?);
    }
    let cgroup = Cgroup::open(&args.cgroup)?;
    let format = args.audio.format();
    let frame_bytes = format.bytes_for_ms(20);
    let encoding = match format.encoding {
        Encoding::L16 => "l16",
        Encoding::Pcmu => "pcmu",
        Encoding::Pcma => "pcma",
    };
    let create_body = json!({
        "program": args.program,
        "audio": {"encoding": encoding, "sample_rate_hz": format.sample_rate_hz},
    });
    let api = crate::operator_api(&target);
    let health =
        tokio::time::timeout(Duration::from_secs(5), api.http().get(format!("{target}/healthz")).send())
            .await
            .context("the target did not answer /healthz within 5 s")?
            .context("the target's /healthz")?;
    if !health.status().is_success() {
        bail!("the target's /healthz answered {}", health.status());
    }

    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (sampler_stop_tx, sampler_stop_rx) = watch::channel(false);
    let sources = Sources {
        cgroup: cgroup.clone(),
        target: api.clone(),
        others: others.iter().map(|o| crate::operator_api(o)).collect(),
        period: Duration::from_millis(args.sample_ms),
        threshold: args.threshold,
        started,
    };
    let sampler = tokio::spawn(sampler::task_main(sources, sampler_stop_rx));
    let shared = call::Shared {
        api,
        create_body: Arc::new(create_body),
        media_urls: Arc::new(media_urls),
        audio: format,
        // A constant mid-level pattern: its content does not matter to the memory a call holds.
        frame: vec![0x11u8; frame_bytes].into(),
        stop: stop_rx,
        ack_wait: Duration::from_secs_f64(args.ack_wait_s),
        started,
    };
    let first_at = started + START_LEAD;
    let spacing = Duration::from_secs_f64(1.0 / args.rate);
    let mut tasks = JoinSet::new();
    for index in 0..args.calls {
        let due = first_at + spacing * index;
        tasks.spawn(call::run(index, due, shared.clone()));
    }
    drop(shared);
    let ramp_end = first_at + spacing * args.calls.saturating_sub(1);
    let stop_at = ramp_end + Duration::from_secs_f64(args.hold_s);
    if !args.json {
        eprintln!(
            "callworker-loadgen: drill (governor {}): up to {} calls at {}/s on {target}, streaming until {:.1} s",
            args.governor.as_str(),
            args.calls,
            args.rate,
            stop_at.saturating_duration_since(started).as_secs_f64()
        );
    }
    tokio::time::sleep_until(stop_at).await;
    let stopped_at_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    stop_tx.send_replace(true);
    let mut outcomes = Vec::with_capacity(args.calls as usize);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.context("a call task panicked")?);
    }
    outcomes.sort_by_key(|o| o.index);
    tokio::time::sleep(SETTLE).await;
    sampler_stop_tx.send_replace(true);
    let summary = sampler.await.context("the sampler panicked")?;
    let survived = survived(args.target_pid, &target).await;

    let report = Report::build(&args, &target, &others, stopped_at_ms, survived, outcomes, summary);
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&report).context("encode the report")?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.without_detail()).context("encode the report")?);
    } else {
        print!("{}", report.table());
    }
    for warning in &report.warnings {
        eprintln!("callworker-loadgen: WARN: {warning}");
    }
    if report.pass {
        Ok(true)
    } else {
        eprintln!("callworker-loadgen: FAIL: {}", report.failures.join("; "));
        Ok(false)
    }
}

/// Whether the target is still running: its process exists and is not a zombie (when the
/// PID is known), and it answers `/healthz`.
async fn survived(pid: Option<u32>, target: &str) -> bool {
    if let Some(pid) = pid {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name in parentheses: `pid (comm) S …`.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, None | Some('Z' | 'X')) {
            return false;
        }
    }
    let api = crate::api(target);
    let probe = api.http().get(format!("{target}/healthz")).send();
    matches!(tokio::time::timeout(Duration::from_secs(3), probe).await, Ok(Ok(r)) if r.status().is_success())
}
