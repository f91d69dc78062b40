//! callworker-loadgen: load benchmarks over the client SDK (`callworker-client`).
//!
//! Layout: one module per mode, each with its clap `Args` and an async `run`; shared
//! building blocks beside them.
//! - [`calls`]: the `calls` mode — N echo calls (native, Twilio or mixed) for D seconds.
//! - [`failover`]: the `failover` mode — N resilient native echo calls on one worker, which
//!   is killed mid-stream; resume time (fault → first echo from the new worker), dropped
//!   calls, caller audio lost, echo duplicates and gaps, recordings checked.
//! - [`capacity`]: the `capacity` mode — levels of concurrent Twilio echo calls against the
//!   worker and the bare echo ceiling alternately; SLO capacity, CPU, RSS and Redis per call.
//! - [`drill`]: the `drill` mode — the OOM drill's load: ramp calls onto a worker in a memory
//!   cgroup, sample its cgroup and governor, and classify every call (live / resumed
//!   elsewhere / dropped); `drill-report` puts several runs side by side.
//! - [`soak`]: the `soak` mode — steady calls for a duration; drift of RSS, latency, Redis.
//! - [`probe`]: `/proc` CPU and RSS of a server, Redis `INFO` over raw RESP.
//! - [`call`]: one simulated call on an open-loop 20 ms clock ([`call::run`]).
//! - [`echo`]: pure per-call bookkeeping: the cyclic test pattern, echo lag by byte offset,
//!   byte-exactness ([`echo::EchoTracker`]).
//! - [`report`]: run-wide HdrHistograms, per-call summaries, the [`report::Report`] (table or
//!   JSON) and the pass/fail [`report::verdict`].
//!
//! Invariants:
//! - Latency is measured from the *scheduled* send instant of an open-loop schedule, never
//!   from the actual send, so a generator that falls behind cannot hide server latency
//!   (research/reliability.md §2); lateness of the generator itself is reported apart.
//! - Every per-call buffer is bounded ([`echo::WINDOW_FRAMES_MAX`], [`echo::PATTERN_BYTES`],
//!   [`report::SAMPLES_BATCH`]); so is every wait (setup, close, a whole call's budget).
//! - The per-frame path allocates nothing beyond what the SDK forces: on a 2-core machine
//!   the generator shares the CPU with the server it measures (DESIGN.md §7).

pub mod call;
pub mod calls;
pub mod capacity;
pub mod drill;
pub mod echo;
pub mod failover;
pub mod probe;
pub mod report;
pub mod soak;

use clap::{Parser, Subcommand};

/// Command line of `callworker-loadgen`.
#[derive(Debug, Parser)]
#[command(name = "callworker-loadgen", version, about = "Load generator for callworker")]
pub struct Cli {
    #[command(flatten)]
    pub credentials: Credentials,
    #[command(subcommand)]
    pub mode: Mode,
}

/// What the load generator authenticates with (the worker refuses unauthenticated API
/// calls and unsigned Twilio requests).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Credentials {
    /// Control-API key for creating and reading calls (`callworker keys new --tenant …`).
    #[arg(long, env = "CALLWORKER_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Operator key for `/v1/admin/*` (the drill's memory samples); the API key when absent.
    #[arg(long, env = "CALLWORKER_OPERATOR_KEY", global = true, hide_env_values = true)]
    pub operator_key: Option<String>,
    /// The workers' `twilio.auth_token`: simulated Twilio requests are signed with it.
    #[arg(long, env = "CALLWORKER_TWILIO_AUTH_TOKEN", global = true, hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
}

static CREDENTIALS: std::sync::OnceLock<Credentials> = std::sync::OnceLock::new();

fn credentials() -> Credentials {
    CREDENTIALS.get().cloned().unwrap_or_default()
}

/// A control-API client for `base_url` with the configured API key.
pub fn api(base_url: &str) -> callworker_client::api::ControlApi {
    let api = callworker_client::api::ControlApi::new(base_url);
    match credentials().api_key {
        Some(key) => api.with_key(&key),
        None => api,
    }
}

/// A control-API client for `base_url` with the operator key (else the API key).
pub fn operator_api(base_url: &str) -> callworker_client::api::ControlApi {
    let c = credentials();
    let api = callworker_client::api::ControlApi::new(base_url);
    match c.operator_key.or(c.api_key) {
        Some(key) => api.with_key(&key),
        None => api,
    }
}

/// A Twilio simulator for `base_url` signing with the configured auth token.
pub fn twilio(base_url: &str) -> callworker_client::twilio::TwilioSimulator {
    let sim = callworker_client::twilio::TwilioSimulator::new(base_url);
    match credentials().twilio_auth_token {
        Some(token) => sim.with_auth_token(&token),
        None => sim,
    }
}

/// The modes; each is a module.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Place N echo calls, stream audio for D seconds each, report delivery and latency.
    Calls(calls::CallsArgs),
    /// Place N resilient echo calls on one worker, kill it mid-stream, and measure how the
    /// calls resume on the others.
    Failover(failover::FailoverArgs),
    /// Ramp through levels of concurrent Twilio echo calls against the worker and the bare
    /// echo ceiling, alternately, and report the largest level meeting the SLO for each.
    Capacity(capacity::CapacityArgs),
    /// Hold N Twilio echo calls for a duration and report drift in RSS, latency and Redis.
    Soak(soak::SoakArgs),
    /// The OOM drill's load: ramp calls onto a worker in a memory cgroup past what fits,
    /// sample its memory and governor, and report how every call fared.
    Drill(drill::DrillArgs),
    /// Print several `drill --out` reports side by side; fails if any run failed.
    DrillReport(drill::report::DrillReportArgs),
}

/// Runs a mode; `Ok(false)` when its verdict failed.
pub async fn run(credentials: Credentials, mode: Mode) -> anyhow::Result<bool> {
    let _ = CREDENTIALS.set(credentials);
    match mode {
        Mode::Calls(args) => calls::run(args).await,
        Mode::Failover(args) => failover::run(args).await,
        Mode::Capacity(args) => capacity::run(args).await,
        Mode::Soak(args) => soak::run(args).await,
        Mode::Drill(args) => drill::run(args).await,
        Mode::DrillReport(args) => drill::report::run_compare(args),
    }
}

/// Logs go to stderr (stdout carries the report); `RUST_LOG` overrides the `warn` default.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent_and_parses_the_calls_mode() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "callworker-loadgen",
            "calls",
            "--calls",
            "5",
            "--duration-s",
            "1.5",
            "--protocol",
            "twilio",
            "--json",
        ])
        .unwrap();
        let Mode::Calls(args) = cli.mode else { panic!("calls mode expected") };
        assert_eq!((args.calls, args.duration_s, args.ramp_s), (5, 1.5, 2.0));
        assert_eq!(args.protocol, calls::ProtocolMix::Twilio);
        assert!(args.json);
        assert_eq!(args.target, "http://127.0.0.1:8080");
        assert!(Cli::try_parse_from(["callworker-loadgen", "calls", "--program", "tone"]).is_err());
        assert!(Cli::try_parse_from(["callworker-loadgen", "calls", "--calls", "0"]).is_err());
    }

    #[test]
    fn the_capacity_and_soak_modes_parse() {
        let cli = Cli::try_parse_from([
            "callworker-loadgen",
            "capacity",
            "--target",
            "http://127.0.0.1:1",
            "--ceiling",
            "http://127.0.0.1:2",
            "--target-pid",
            "10",
            "--redis-port",
            "6379",
            "--levels",
            "400,100",
        ])
        .unwrap();
        let Mode::Capacity(args) = cli.mode else { panic!("capacity mode expected") };
        assert_eq!(args.levels, [400, 100]);
        assert_eq!((args.target_pid, args.ceiling_pid, args.redis_port), (Some(10), None, Some(6379)));
        assert_eq!((args.ramp_s, args.hold_s, args.misses_max), (5.0, 10.0, 2));
        assert!(Cli::try_parse_from(["callworker-loadgen", "capacity"]).is_err(), "a server is required");
        assert!(
            Cli::try_parse_from(["callworker-loadgen", "capacity", "--ceiling", "http://h", "--levels", "0"])
                .is_err()
        );
        let cli = Cli::try_parse_from(["callworker-loadgen", "soak", "--calls", "50", "--duration-s", "30"])
            .unwrap();
        let Mode::Soak(args) = cli.mode else { panic!("soak mode expected") };
        assert_eq!((args.calls, args.duration_s, args.interval_s), (50, 30.0, 5.0));
    }

    #[test]
    fn the_failover_mode_parses_and_needs_exactly_one_fault() {
        let cli = Cli::try_parse_from([
            "callworker-loadgen",
            "failover",
            "--workers",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--victim",
            "1",
            "--victim-pid",
            "123",
            "--calls",
            "300",
            "--signal",
            "term",
            "--verify-recordings",
            "10",
            "--json",
        ])
        .unwrap();
        let Mode::Failover(args) = cli.mode else { panic!("failover mode expected") };
        assert_eq!(args.workers, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        assert_eq!((args.victim.as_str(), args.victim_pid, args.calls), ("1", Some(123), 300));
        assert_eq!((args.before_s, args.after_s), (5.0, 10.0));
        assert_eq!(args.signal, failover::FaultSignal::Term);
        assert_eq!(args.verify_recordings, failover::RecordingSample::First(10));
        assert!(args.json && !args.drop_connections);
        assert_eq!(args.media_url, None);
        let base = ["callworker-loadgen", "failover", "--workers", "http://127.0.0.1:1"];
        assert!(Cli::try_parse_from(base).is_err(), "a fault is required");
        assert!(Cli::try_parse_from([&base[..], &["--drop-connections"]].concat()).is_ok());
        let cli = Cli::try_parse_from(
            [&base[..], &["--victim-pid", "1", "--media-url", "http://127.0.0.1:3"]].concat(),
        )
        .unwrap();
        let Mode::Failover(args) = cli.mode else { panic!("failover mode expected") };
        assert_eq!(args.media_url.as_deref(), Some("http://127.0.0.1:3"));
        assert!(
            Cli::try_parse_from([&base[..], &["--drop-connections", "--victim-pid", "1"]].concat()).is_err(),
            "only one fault"
        );
        assert!(
            Cli::try_parse_from([&base[..], &["--drop-connections", "--before-s", "0"]].concat()).is_err()
        );
        let cli =
            Cli::try_parse_from([&base[..], &["--no-fault", "--before-s", "1", "--after-s", "60"]].concat())
                .unwrap();
        let Mode::Failover(args) = cli.mode else { panic!("failover mode expected") };
        assert!(args.no_fault && args.victim_pid.is_none());
        assert!(
            Cli::try_parse_from([&base[..], &["--no-fault", "--victim-pid", "1"]].concat()).is_err(),
            "no fault excludes a fault"
        );
    }
}
