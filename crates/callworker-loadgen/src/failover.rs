//! The `failover` mode: place N native echo calls on one worker (the victim), stream audio
//! on every call, kill the victim mid-stream, and measure how the calls resume on the
//! other workers.
//!
//! Timeline of a run:
//! 1. Setup: every call is created through the victim's control API (recording its inbound
//!    track) and connected with a [`ResilientCall`] whose media URLs list the victim first,
//!    then the other workers (rotated per call, as a load balancer would spread them). With
//!    `--media-url` (a load balancer in front of the fleet) the list is the victim, then that
//!    URL only: every call still lands on the victim, and every resume goes through the
//!    load balancer, which picks the survivor.
//! 2. Streaming starts for all calls at once, each on its own 20 ms open-loop clock offset
//!    by a phase within the period. Each frame names its client `seq` in its first bytes.
//! 3. After `--before-s` the fault: `--signal` (SIGKILL by default) to `--victim-pid`, or
//!    with `--drop-connections` every client drops its own connection (a drill that needs
//!    no second worker). Its instant is taken just before the signal is sent.
//! 4. Streaming goes on for `--after-s`; then each call waits (bounded) for the ack of its
//!    last frame and hangs up.
//! 5. Optionally the inbound recording of each call is fetched from a surviving worker and
//!    compared with the frames sent.
//!
//! With `--no-fault` (the rolling-restart mode of `scripts/fleet`) nothing is injected: the
//! calls are created round-robin over every worker (each connects first to its own worker,
//! then resumes through `--media-url` or the others), stream for `--before-s` plus
//! `--after-s`, and whatever happens to the workers meanwhile (someone else SIGTERMs them in
//! turn) is what the run measures: a call is dropped when it did not end by its own
//! hang-up, and resumed when it saw a session of a later epoch. Resume times need a fault
//! instant and are not reported then.
//!
//! The resume time of a call is from the fault's instant to the first echoed frame of a
//! new epoch: the first audio the new worker processed. The client's own `Resumed.gap_ms`
//! (session lost → `welcome`) is reported beside it.

mod call;
mod frames;
mod report;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use callworker_client::api::ControlApi;
use callworker_client::resilient::ResilientConfig;
use clap::{ArgGroup, Args, ValueEnum};
use rustix::process::{Pid, Signal, kill_process, test_kill_process};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use self::call::{CallOutcome, CallPlan, RecordingCheck, Shared};
use self::frames::{FRAMES_PLANNED_MAX, FramePayloads, recording_mismatch, wav_data};
use self::report::{Report, RunInfo, verdict};
use crate::calls::{frames_for, seconds};

/// Longest `--before-s` or `--after-s` (30 min each; together at most
/// [`FRAMES_PLANNED_MAX`] frames, 1 h).
const PHASE_S_MAX: f64 = 1_800.0;
/// Setups (creation + handshake) running at once.
const SETUP_CONCURRENCY: usize = 32;
/// Lead time between the last setup and the first frame, so every call is waiting on the
/// start instant before it comes.
const START_LEAD: Duration = Duration::from_millis(200);
/// Recordings fetched at once after the run.
const RECORDING_FETCHES_MAX: usize = 8;
/// Time allowed for one recording fetch.
const RECORDING_TIMEOUT: Duration = Duration::from_secs(15);

/// The signal sent to the victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultSignal {
    /// SIGKILL: the worker dies at once; its sockets are reset by the kernel.
    Kill,
    /// SIGTERM: the worker drains (checkpoints, sends `migrate`, closes with 1001).
    Term,
}

/// Which recordings to check after the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingSample {
    All,
    /// The first N calls set up (0: none).
    First(u32),
}

fn recording_sample(text: &str) -> Result<RecordingSample, String> {
    match text {
        "all" => Ok(RecordingSample::All),
        "none" => Ok(RecordingSample::First(0)),
        n => n.parse().map(RecordingSample::First).map_err(|_| format!("`{n}` is not all, none or a count")),
    }
}

fn phase_s(text: &str) -> Result<f64, String> {
    seconds(text, Some(0.0), PHASE_S_MAX)
}

/// Options of the `failover` mode.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("fault").required(true).args(["victim_pid", "drop_connections", "no_fault"])))]
pub struct FailoverArgs {
    /// Base URLs of the workers (http://host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub workers: Vec<String>,
    /// The worker to fail, where every call is created: its 0-based index in --workers, or
    /// its base URL.
    #[arg(long, default_value = "0")]
    pub victim: String,
    /// PID of the victim's process; the fault sends it --signal.
    #[arg(long)]
    pub victim_pid: Option<u32>,
    /// A load balancer in front of the workers (http(s):// base URL, or its ws(s):// media
    /// URL). Each client connects first to the victim directly, so that every call is on
    /// it, and then resumes only through this URL (the client alternates between its URLs
    /// on failed attempts, so a refused attempt at the dead victim costs one backoff step).
    #[arg(long)]
    pub media_url: Option<String>,
    /// Signal sent to --victim-pid at the fault.
    #[arg(long, value_enum, default_value_t = FaultSignal::Kill)]
    pub signal: FaultSignal,
    /// Instead of signalling a process, every client drops its connection at the fault (a
    /// network-failure drill; works with one worker and the memory store).
    #[arg(long)]
    pub drop_connections: bool,
    /// Inject no fault: create the calls round-robin over every worker and stream for
    /// --before-s plus --after-s while something else restarts the workers (a rolling
    /// restart); prints "streaming started" on stderr when the audio starts.
    #[arg(long)]
    pub no_fault: bool,
    /// Calls to place.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub calls: u32,
    /// Seconds of audio before the fault.
    #[arg(long, default_value_t = 5.0, value_parser = phase_s)]
    pub before_s: f64,
    /// Seconds of audio after the fault.
    #[arg(long, default_value_t = 10.0, value_parser = phase_s)]
    pub after_s: f64,
    /// Inbound recordings to compare with the audio sent after hang-up: `all`, `none` or a
    /// count (the first N calls).
    #[arg(long, default_value = "all", value_parser = recording_sample)]
    pub verify_recordings: RecordingSample,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `http://host:port` → `ws://host:port/v1/media` (`https` → `wss`).
pub fn media_url(base_url: &str) -> anyhow::Result<String> {
    let base = base_url.trim_end_matches('/');
    if let Some(rest) = base.strip_prefix("http://") {
        Ok(format!("ws://{rest}/v1/media"))
    } else if let Some(rest) = base.strip_prefix("https://") {
        Ok(format!("wss://{rest}/v1/media"))
    } else {
        bail!("a worker must be an http:// or https:// base URL, not `{base_url}`")
    }
}

/// `--media-url` as a media URL: a ws(s):// URL is taken as it is, an http(s):// base URL
/// becomes its `/v1/media`.
pub fn lb_media_url(url: &str) -> anyhow::Result<String> {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        Ok(url.to_owned())
    } else {
        media_url(url).context("--media-url must be an http(s):// base URL or a ws(s):// media URL")
    }
}

/// The victim's index in `workers`: `victim` is a 0-based index or one of the URLs.
pub fn victim_index(workers: &[String], victim: &str) -> anyhow::Result<usize> {
    if let Ok(index) = victim.parse::<usize>() {
        if index < workers.len() {
            return Ok(index);
        }
        bail!("--victim {index} is out of range: there are {} workers (indexes from 0)", workers.len());
    }
    let want = victim.trim_end_matches('/');
    workers
        .iter()
        .position(|w| w.trim_end_matches('/') == want)
        .with_context(|| format!("--victim `{victim}` is neither an index nor one of --workers"))
}

/// Media URLs of call `index`: the victim's, then the others rotated by `index`, so the
/// clients of the dead worker spread over the survivors (the client tries the next URL on
/// each attempt).
pub fn media_urls_for(victim: &str, others: &[String], index: u32) -> Vec<String> {
    let mut urls = Vec::with_capacity(others.len() + 1);
    urls.push(victim.to_owned());
    if !others.is_empty() {
        let shift = index as usize % others.len();
        urls.extend(others[shift..].iter().chain(&others[..shift]).cloned());
    }
    urls
}

fn pid_of(raw: u32) -> anyhow::Result<Pid> {
    let raw = i32::try_from(raw).context("--victim-pid is too large")?;
    Pid::from_raw(raw).context("--victim-pid must be positive")
}

/// Runs the mode and prints its report; `Ok(false)` when the run failed its verdict.
pub async fn run(args: FailoverArgs) -> anyhow::Result<bool> {
    let workers: Vec<String> = args.workers.iter().map(|w| w.trim_end_matches('/').to_owned()).collect();
    let media: Vec<String> = workers.iter().map(|w| media_url(w)).collect::<anyhow::Result<_>>()?;
    let victim = victim_index(&workers, &args.victim)?;
    // Where clients go after their first connection: the load balancer alone, or the
    // surviving workers.
    let others: Vec<String> = match &args.media_url {
        Some(url) => vec![lb_media_url(url)?],
        None => media.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, m)| m.clone()).collect(),
    };
    let frames = frames_for(args.before_s) + frames_for(args.after_s);
    if frames > FRAMES_PLANNED_MAX {
        bail!("--before-s plus --after-s must be at most {} s", FRAMES_PLANNED_MAX / 50);
    }
    let victim_pid = args.victim_pid.map(pid_of).transpose()?;
    if let Some(pid) = victim_pid {
        test_kill_process(pid)
            .with_context(|| format!("--victim-pid {}: no such process", pid.as_raw_nonzero()))?;
    }
    let fault = match (victim_pid, args.signal) {
        (None, _) if args.no_fault => "none",
        (None, _) => "drop_connections",
        (Some(_), FaultSignal::Kill) => "sigkill",
        (Some(_), FaultSignal::Term) => "sigterm",
    };

    let (ready_tx, mut ready_rx) = mpsc::channel(args.calls as usize);
    let (start_tx, start_rx) = watch::channel(None);
    let (drop_tx, drop_rx) = watch::channel(None);
    let shared = Shared {
        create_body: Arc::new(json!({
            "program": {"name": "echo", "params": {"delay_ms": 0}},
            "record": {"inbound": true},
        })),
        setup_permits: Arc::new(Semaphore::new(SETUP_CONCURRENCY)),
        ready: ready_tx,
        start: start_rx,
        drop_at: (victim_pid.is_none() && !args.no_fault).then_some(drop_rx),
        config: ResilientConfig::default(),
    };
    let apis: Vec<ControlApi> = workers.iter().map(|w| crate::api(w)).collect();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..args.calls {
        // Without a fault every worker is a home in turn, so the calls are spread over all.
        let home = if args.no_fault { index as usize % workers.len() } else { victim };
        let home_others: Vec<String> = match &args.media_url {
            Some(_) => others.clone(),
            None => media.iter().enumerate().filter(|(i, _)| *i != home).map(|(_, m)| m.clone()).collect(),
        };
        let plan = CallPlan {
            index,
            frames,
            seed: u64::from(index) + 1,
            phase: crate::calls::start_offset(index, args.calls, 0.02),
            media_urls: media_urls_for(&media[home], &home_others, index),
            api: apis[home].clone(),
        };
        tasks.spawn(call::run(plan, shared.clone()));
    }
    drop(shared);

    // Every call reports once, set up or not; each setup is bounded, so this is too.
    let setup_bound = call::SETUP_TIMEOUT * (args.calls / SETUP_CONCURRENCY as u32 + 2);
    let mut ready = 0;
    while ready < args.calls {
        match timeout(setup_bound, ready_rx.recv()).await {
            Ok(Some(_)) => ready += 1,
            Ok(None) => break,
            Err(_) => bail!("calls did not finish setting up within {} s", setup_bound.as_secs()),
        }
    }
    let start_at = Instant::now() + START_LEAD;
    start_tx.send_replace(Some(start_at));
    let fault_due = start_at + Duration::from_secs_f64(args.before_s);
    if args.no_fault {
        eprintln!(
            "callworker-loadgen: {ready} calls set up; streaming started ({:.1} s per call, no fault injected)",
            args.before_s + args.after_s
        );
    }
    sleep_until(fault_due).await;
    let fault_at = Instant::now();
    match victim_pid {
        None if args.no_fault => {}
        Some(pid) => {
            let signal = match args.signal {
                FaultSignal::Kill => Signal::KILL,
                FaultSignal::Term => Signal::TERM,
            };
            kill_process(pid, signal)
                .with_context(|| format!("signal the victim (pid {})", pid.as_raw_nonzero()))?;
        }
        None => {
            drop_tx.send_replace(Some(fault_at));
        }
    }
    let fault_late_ms = fault_at.saturating_duration_since(fault_due).as_secs_f64() * 1_000.0;
    if !args.json && !args.no_fault {
        eprintln!(
            "callworker-loadgen: {ready} calls set up; fault ({fault}) injected {:.1} s into streaming",
            fault_at.saturating_duration_since(start_at).as_secs_f64()
        );
    }

    let mut outcomes = Vec::with_capacity(args.calls as usize);
    while let Some(joined) = tasks.join_next().await {
        outcomes.push(joined.context("a call task panicked")?);
    }
    outcomes.sort_by_key(|o| o.index);

    // Recordings from a worker that is still up: any survivor when the victim was
    // signalled, the victim itself in the drill.
    let recordings_from = match (victim_pid, workers.iter().enumerate().find(|(i, _)| *i != victim)) {
        (Some(_), Some((_, survivor))) => Some(survivor.clone()),
        (Some(_), None) => None,
        (None, _) => Some(workers[victim].clone()),
    };
    if let Some(base) = recordings_from {
        verify_recordings(&crate::api(&base), &mut outcomes, args.verify_recordings).await;
    }

    let info = RunInfo {
        mode: "failover",
        workers,
        victim: args.workers.get(victim).cloned().unwrap_or_default(),
        victim_pid: args.victim_pid,
        fault,
        calls_planned: args.calls,
        before_s: args.before_s,
        after_s: args.after_s,
        frames_per_call: frames,
    };
    let fault_at = (!args.no_fault).then_some(fault_at);
    let report = Report::build(info, started.elapsed().as_secs_f64(), fault_at, fault_late_ms, outcomes);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).context("encode the report")?);
    } else {
        print!("{}", report.table());
    }
    match verdict(&report) {
        Ok(()) => Ok(true),
        Err(why) => {
            eprintln!("callworker-loadgen: FAIL: {why}");
            Ok(false)
        }
    }
}

/// Fetches the inbound recording of the sampled calls (bounded concurrency) and compares
/// each with the frames the call sent.
async fn verify_recordings(api: &ControlApi, outcomes: &mut [CallOutcome], sample: RecordingSample) {
    let limit = match sample {
        RecordingSample::All => usize::MAX,
        RecordingSample::First(n) => n as usize,
    };
    let wanted: Vec<(usize, String, u64, u64)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(at, o)| Some((at, o.id.clone()?, u64::from(o.index) + 1, o.frames_sent)))
        .filter(|(at, ..)| outcomes[*at].set_up())
        .take(limit)
        .collect();
    let mut pending = wanted.into_iter();
    let mut fetches = JoinSet::new();
    loop {
        while fetches.len() < RECORDING_FETCHES_MAX {
            let Some((at, id, seed, frames_sent)) = pending.next() else { break };
            let api = api.clone();
            fetches.spawn(async move { (at, check_recording(&api, &id, seed, frames_sent).await) });
        }
        let Some(joined) = fetches.join_next().await else { break };
        match joined {
            Ok((at, result)) => {
                outcomes[at].recording = match result {
                    None => RecordingCheck::Exact,
                    Some(why) => RecordingCheck::Mismatch(why),
                }
            }
            Err(e) => tracing::warn!(error = %e, "a recording check panicked"),
        }
    }
}

/// `None` when the recording holds exactly frames `1..=frames_sent`; otherwise why not.
async fn check_recording(api: &ControlApi, id: &str, seed: u64, frames_sent: u64) -> Option<String> {
    let url = format!("{}/v1/calls/{id}/recording?track=inbound", api.base_url());
    let fetched = timeout(RECORDING_TIMEOUT, async {
        let response = api.http().get(&url).send().await?;
        let status = response.status().as_u16();
        Ok::<_, callworker_client::ClientError>((status, response.bytes().await?))
    })
    .await;
    let (status, body) = match fetched {
        Ok(Ok(fetched)) => fetched,
        Ok(Err(e)) => return Some(format!("fetch failed: {e}")),
        Err(_) => return Some(format!("fetch took over {} s", RECORDING_TIMEOUT.as_secs())),
    };
    if status != 200 {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Some(format!("GET answered {status}: {text}"));
    }
    let Some(data) = wav_data(&body) else {
        return Some("not a WAV file with a data chunk".to_owned());
    };
    recording_mismatch(&FramePayloads::new(seed), frames_sent, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn media_urls_follow_the_base_urls() {
        assert_eq!(media_url("http://127.0.0.1:8080/").unwrap(), "ws://127.0.0.1:8080/v1/media");
        assert_eq!(media_url("https://calls.example.com").unwrap(), "wss://calls.example.com/v1/media");
        assert!(media_url("ws://x").is_err());
    }

    #[test]
    fn the_victim_is_an_index_or_a_url() {
        let w = urls(&["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(victim_index(&w, "0").unwrap(), 0);
        assert_eq!(victim_index(&w, "2").unwrap(), 2);
        assert_eq!(victim_index(&w, "http://b:2/").unwrap(), 1);
        assert!(victim_index(&w, "3").is_err());
        assert!(victim_index(&w, "http://d:4").is_err());
    }

    #[test]
    fn the_load_balancer_url_is_a_media_url() {
        assert_eq!(lb_media_url("http://127.0.0.1:9000").unwrap(), "ws://127.0.0.1:9000/v1/media");
        assert_eq!(lb_media_url("wss://lb.example/v1/media").unwrap(), "wss://lb.example/v1/media");
        assert!(lb_media_url("tcp://lb").is_err());
    }

    #[test]
    fn the_victim_comes_first_and_the_survivors_rotate() {
        let others = urls(&["ws://b", "ws://c"]);
        assert_eq!(media_urls_for("ws://a", &others, 0), urls(&["ws://a", "ws://b", "ws://c"]));
        assert_eq!(media_urls_for("ws://a", &others, 1), urls(&["ws://a", "ws://c", "ws://b"]));
        assert_eq!(media_urls_for("ws://a", &others, 2), urls(&["ws://a", "ws://b", "ws://c"]));
        assert_eq!(media_urls_for("ws://a", &[], 5), urls(&["ws://a"]));
    }

    #[test]
    fn recording_samples_parse() {
        assert_eq!(recording_sample("all"), Ok(RecordingSample::All));
        assert_eq!(recording_sample("none"), Ok(RecordingSample::First(0)));
        assert_eq!(recording_sample("25"), Ok(RecordingSample::First(25)));
        assert!(recording_sample("some").is_err());
    }
}
