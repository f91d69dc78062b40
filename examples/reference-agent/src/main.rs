//! `reference-agent --listen 127.0.0.1:9000 [--token T] [--turn-frames 25]`: serves the
//! reference agent until interrupted (see the library docs for what it does).

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// Bearer token the worker must send; none = any.
    #[arg(long, env = "REFERENCE_AGENT_TOKEN")]
    token: Option<String>,
    /// Caller audio frames (20 ms) that make one caller turn.
    #[arg(long, default_value_t = reference_agent::DEFAULT_TURN_FRAMES)]
    turn_frames: usize,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = reference_agent::Options { token: args.token, turn_frames: args.turn_frames };
    let agent = reference_agent::ReferenceAgent::start(&args.listen, options).await?;
    println!("reference agent listening on {}", agent.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
