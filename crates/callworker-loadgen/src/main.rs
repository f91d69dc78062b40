//! `callworker-loadgen`: parse the command line, run the chosen mode on one tokio runtime,
//! exit 0 (pass), 1 (the run failed its verdict) or 2 (the run could not be carried out).

use std::process::ExitCode;

use callworker_loadgen::{Cli, init_tracing, run};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("callworker-loadgen: start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.credentials, cli.mode)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("callworker-loadgen: {e:#}");
            ExitCode::from(2)
        }
    }
}
