//! Stand-alone demo app, for this crate's tests: the same as
//! `tandem demo-app`.
use std::io::IsTerminal;

use clap::Parser;
use tandem_demo::DemoArgs;

/// Command line of the stand-alone demo app.
#[derive(Parser, Debug)]
#[command(name = "tandem-demo", about = "tandem's demo component")]
struct Cli {
    #[command(flatten)]
    demo: DemoArgs,
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
    tandem_demo::run(Cli::parse().demo).await
}
