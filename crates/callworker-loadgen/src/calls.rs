//! The `calls` mode: place N echo calls against a worker or load balancer, stream audio for
//! D seconds on each, and report delivery, byte-exactness and latency.
//!
//! Call starts are spread evenly over the ramp; each call then runs on its own 20 ms
//! open-loop clock (see [`crate::call`]). The run passes when every call set up, every
//! echoed byte was exact and at least 99 % of the audio came back ([`report::verdict`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use callworker_client::audio::FRAME;
use clap::{Args, ValueEnum};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::call::{self, CallPlan, Clients};
use crate::report::{self, Protocol, Report, RunInfo, SharedHistograms};

/// Longest streaming time per call this mode accepts (1 day).
const DURATION_S_MAX: f64 = 86_400.0;
/// Longest ramp accepted (1 h).
const RAMP_S_MAX: f64 = 3_600.0;
/// Lead time before the first call starts, so every task is spawned before the ramp begins.
const START_LEAD: Duration = Duration::from_millis(20);

/// Which protocol the calls speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolMix {
    Native,
    Twilio,
    /// Alternate: even calls native, odd calls Twilio.
    Mixed,
}

impl ProtocolMix {
    fn for_call(self, index: u32) -> Protocol {
        match self {
            ProtocolMix::Native => Protocol::Native,
            ProtocolMix::Twilio => Protocol::Twilio,
            ProtocolMix::Mixed if index.is_multiple_of(2) => Protocol::Native,
            ProtocolMix::Mixed => Protocol::Twilio,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ProtocolMix::Native => "native",
            ProtocolMix::Twilio => "twilio",
            ProtocolMix::Mixed => "mixed",
        }
    }
}

/// The call program to run. Only `echo` can be measured for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Program {
    Echo,
}

/// Options of the `calls` mode.
#[derive(Debug, Clone, Args)]
pub struct CallsArgs {
    /// Base URL of a worker or of a load balancer in front of workers.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Calls to place.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub calls: u32,
    /// Seconds of audio each call streams.
    #[arg(long, default_value_t = 10.0, value_parser = duration_s)]
    pub duration_s: f64,
    /// Protocol of the calls.
    #[arg(long, value_enum, default_value_t = ProtocolMix::Mixed)]
    pub protocol: ProtocolMix,
    /// Seconds over which call starts are spread evenly.
    #[arg(long, default_value_t = 2.0, value_parser = ramp_s)]
    pub ramp_s: f64,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Program the calls run (Twilio calls get the worker's configured default program,
    /// which should be echo too).
    #[arg(long, value_enum, default_value_t = Program::Echo)]
    pub program: Program,
}

pub(crate) fn seconds(text: &str, min_exclusive: Option<f64>, max: f64) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|_| format!("`{text}` is not a number of seconds"))?;
    let low_ok = match min_exclusive {
        Some(min) => v > min,
        None => v >= 0.0,
    };
    if !v.is_finite() || !low_ok || v > max {
        return Err(format!("{v} is outside the accepted range (up to {max} s)"));
    }
    Ok(v)
}

fn duration_s(text: &str) -> Result<f64, String> {
    seconds(text, Some(0.0), DURATION_S_MAX)
}

fn ramp_s(text: &str) -> Result<f64, String> {
    seconds(text, None, RAMP_S_MAX)
}

/// Frames a call sends for `duration_s` seconds of audio (at least one).
pub fn frames_for(duration_s: f64) -> u64 {
    // Bounded by DURATION_S_MAX: at most 4.32 million frames, exact in f64.
    ((duration_s / FRAME.as_secs_f64()).round() as u64).max(1)
}

/// When call `index` of `calls` starts, relative to the first.
pub fn start_offset(index: u32, calls: u32, ramp_s: f64) -> Duration {
    if calls <= 1 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(ramp_s * f64::from(index) / f64::from(calls))
}

/// Runs the mode and prints its report; `Ok(false)` when the run failed its verdict (the
/// reason is printed in one line on stderr).
pub async fn run(args: CallsArgs) -> anyhow::Result<bool> {
    if !(args.target.starts_with("http://") || args.target.starts_with("https://")) {
        anyhow::bail!("--target must be an http:// or https:// base URL, not `{}`", args.target);
    }
    let frames = frames_for(args.duration_s);
    let histograms = Arc::new(SharedHistograms::default());
    let clients = Clients {
        api: crate::api(&args.target),
        twilio: crate::twilio(&args.target),
        create_body: Arc::new(json!({"program": {"name": "echo", "params": {"delay_ms": 0}}})),
        histograms: histograms.clone(),
    };
    let started = Instant::now();
    let first_at = started + START_LEAD;
    let mut tasks = JoinSet::new();
    for index in 0..args.calls {
        let plan = CallPlan {
            index,
            protocol: args.protocol.for_call(index),
            start_at: first_at + start_offset(index, args.calls, args.ramp_s),
            frames,
            seed: u64::from(index) + 1,
        };
        tasks.spawn(call::run(plan, clients.clone()));
    }
    let mut summaries = Vec::with_capacity(args.calls as usize);
    while let Some(joined) = tasks.join_next().await {
        summaries.push(joined.context("a call task panicked")?);
    }
    summaries.sort_by_key(|s| s.index);
    let info = RunInfo {
        mode: "calls",
        target: args.target.clone(),
        program: "echo",
        protocol: args.protocol.as_str(),
        calls_planned: args.calls,
        duration_s: args.duration_s,
        ramp_s: args.ramp_s,
        frames_per_call: frames,
    };
    let report = Report::build(info, started.elapsed().as_secs_f64(), summaries, &histograms.snapshot());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encode the report")?);
    } else {
        print!("{}", report.table());
    }
    match report::verdict(&report) {
        Ok(()) => Ok(true),
        Err(why) => {
            eprintln!("callworker-loadgen: FAIL: {why}");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_to_the_20_ms_grid() {
        assert_eq!(frames_for(10.0), 500);
        assert_eq!(frames_for(0.5), 25);
        assert_eq!(frames_for(0.001), 1);
        assert_eq!(frames_for(0.031), 2);
    }

    #[test]
    fn starts_spread_evenly_over_the_ramp() {
        assert_eq!(start_offset(0, 4, 2.0), Duration::ZERO);
        assert_eq!(start_offset(1, 4, 2.0), Duration::from_millis(500));
        assert_eq!(start_offset(3, 4, 2.0), Duration::from_millis(1_500));
        assert_eq!(start_offset(0, 1, 2.0), Duration::ZERO);
        assert_eq!(start_offset(5, 10, 0.0), Duration::ZERO);
    }

    #[test]
    fn mixed_alternates_protocols() {
        let p: Vec<Protocol> = (0..4).map(|i| ProtocolMix::Mixed.for_call(i)).collect();
        assert_eq!(p, [Protocol::Native, Protocol::Twilio, Protocol::Native, Protocol::Twilio]);
        assert_eq!(ProtocolMix::Twilio.for_call(0), Protocol::Twilio);
    }

    #[test]
    fn seconds_are_validated() {
        assert_eq!(duration_s("2.5"), Ok(2.5));
        assert!(duration_s("0").is_err());
        assert!(duration_s("NaN").is_err());
        assert!(duration_s("1e9").is_err());
        assert_eq!(ramp_s("0"), Ok(0.0));
        assert!(ramp_s("-1").is_err());
    }
}
