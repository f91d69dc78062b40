//! `callworker`: parse the CLI, load and validate configuration (exit 64 when invalid,
//! before binding anything), start telemetry, run until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use callworker_server::config::{Config, EXIT_CONFIG_INVALID};
use clap::{Parser, Subcommand};

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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage control-API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Mint a key: prints the key (shown once, never stored) and the config entry holding
    /// only its SHA-256.
    New {
        /// The tenant whose calls the key may use.
        #[arg(long, conflicts_with = "operator", required_unless_present = "operator")]
        tenant: Option<String>,
        /// An operator key (/v1/admin/*, /v1/workers, every tenant's calls).
        #[arg(long)]
        operator: bool,
        /// The key's id (logs, metrics); default: the tenant or "operator" and a suffix.
        #[arg(long)]
        id: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Keys(KeysCommand::New { tenant, operator: _, id })) = cli.command {
        return match callworker_server::auth::new_key_text(tenant.as_deref(), id.as_deref()) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("callworker: {e}");
                ExitCode::from(EXIT_CONFIG_INVALID as u8)
            }
        };
    }
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
