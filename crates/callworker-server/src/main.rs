//! `callworker`: parse the CLI, load and validate configuration (exit 64 when invalid,
//! before binding anything), start telemetry, run until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use callworker_server::config::{Config, EXIT_CONFIG_INVALID};
use clap::Parser;

// Only binaries choose the allocator; jemalloc's statistics feed the memory governor.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A callworker worker process.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Directory holding default.toml and <env>.toml.
    #[arg(long, env = "CALLWORKER_CONFIG_DIR", default_value = "config")]
    config_dir: PathBuf,
    /// Environment overlay to load after default.toml (config/<env>.toml).
    #[arg(long, env = "CALLWORKER_ENV")]
    env: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config_dir, cli.env.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("callworker: {e}");
            return ExitCode::from(EXIT_CONFIG_INVALID as u8);
        }
    };
    if cli.check_config {
        println!("callworker: configuration is valid");
        return ExitCode::SUCCESS;
    }
    callworker_server::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callworker: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(callworker_server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "callworker failed");
            eprintln!("callworker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
