//! Stand-alone builder worker, for tests: the demo member of a `pool` app
//! (see [`tandem_demo::pool`]).
use std::io::IsTerminal;

use clap::Parser;
use tandem_demo::pool::BuilderArgs;

/// Command line of the stand-alone builder worker.
#[derive(Parser, Debug)]
#[command(
    name = "tandem-demo-builder",
    about = "tandem's demo builder worker (a pool member)"
)]
struct Cli {
    #[command(flatten)]
    builder: BuilderArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tandem_demo::pool::run_builder(Cli::parse().builder).await
}
