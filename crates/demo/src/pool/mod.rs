//! The demo builder worker: a member of a `pool` app (the WFM Builder).
//!
//! Any number of workers run side by side. A dispatcher (see
//! `tandem_client::pool`) sends *IS ALIVE* to all of them; only a worker
//! that is alive **and free** answers 200, and build requests go only to
//! those. A worker builds one job at a time; a build takes `--build-ms`.
//!
//! # HTTP API
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /alive` | IS ALIVE: 200 `{"instance","free":true}` when free; 503 `{"instance","free":false,"job"}` when busy |
//! | `GET /health` | 200 `{"status":"ok","busy","job"}` while the process works (tandem's probe; `busy` shows the worker as free or busy) |
//! | `POST /jobs` `{"id","payload"}` | 202 `{"id","state":"running"}` when the build starts or this job is already building here; 200 `{"id","state":"done","result"}` when this worker already built it (the duplicate is ignored); 409 `{"error":"busy with j0","job":"j0"}` when building another job; 400 bad body or id; 503 shutting down |
//! | `GET /jobs/{id}` | 200 `{"id","state":"running"\|"done","result"}`; 404 unknown here; 400 bad id |
//! | `GET /` | `{"app","instance","pid","busy","job","build_ms","jobs_done"}` |
//!
//! Job ids match `[A-Za-z0-9_.-]{1,128}`. Answers about a job also carry
//! the worker's `instance`. The result depends on the payload only, so a
//! job rebuilt on another worker after a crash yields the same result.
//!
//! # Journal
//!
//! With `--journal FILE`, one JSON line per event, flushed as it happens
//! (so it survives SIGKILL): `{"t_ms","pid","app","instance","event",
//! "role","epoch","job"}` with `event` one of `start`, `build-started`,
//! `build-done`, `exit` (and `role` `free` or `busy`). A build cut short by
//! a crash or a shutdown has no `build-done` line: counting `build-done`
//! per job id over every worker's journal proves a job was built once.

mod http;
mod state;

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::SHUTDOWN_GRACE;
use crate::journal::Journal;
use state::Builder;

/// Command-line flags of the builder worker. Identity falls back to the
/// variables tandem's agent sets.
#[derive(clap::Args, Debug, Clone)]
pub struct BuilderArgs {
    /// TCP port of the HTTP API (0: any free port, printed at start).
    #[arg(long)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Name of the pool app this worker belongs to.
    #[arg(long, env = "TANDEM_APP", default_value = "builder")]
    pub app: String,

    /// Name of this worker.
    #[arg(long, env = "TANDEM_INSTANCE", default_value = "0")]
    pub instance: String,

    /// Append a JSON line per event (start, build-started, build-done,
    /// exit) to this file.
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// How long one build takes, in milliseconds (at most one hour).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    pub build_ms: u64,
}

/// Serves the builder worker until SIGTERM or SIGINT, then exits
/// gracefully (a build in progress is abandoned: it has no `build-done`).
///
/// Prints one line to stdout once it listens:
/// `builder {app}/{instance} listening on {addr} (build {build_ms} ms)`.
pub async fn run_builder(args: BuilderArgs) -> anyhow::Result<()> {
    // Handlers first, so that a signal sent right after the startup line
    // cannot hit the default action (which would kill the process).
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    let announce = || {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "builder {}/{} listening on {addr} (build {} ms)",
            args.app, args.instance, args.build_ms
        )
        .and_then(|()| stdout.flush())
        .context("cannot write the startup line to stdout")
    };
    serve_builder(listener, &args, announce, shutdown).await
}

/// Serves the builder worker on `listener` (the caller binds; tests use
/// port 0) until `shutdown` yields a reason, which goes to the `exit`
/// journal line. `ready` runs once the worker serves (the journal has its
/// `start` line); an error from it stops the worker. Ignores `args.port`
/// and `args.bind`.
pub async fn serve_builder(
    listener: TcpListener,
    args: &BuilderArgs,
    ready: impl FnOnce() -> anyhow::Result<()>,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let journal = args
        .journal
        .as_deref()
        .map(|path| Journal::open(path, &args.app, &args.instance))
        .transpose()?;
    let builder = Arc::new(Builder::new(
        args.app.clone(),
        args.instance.clone(),
        args.build_ms,
        journal,
    ));
    builder.record_start();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = http::router(Arc::clone(&builder), shutdown_rx.clone());
    let mut server_shutdown = shutdown_rx;
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_shutdown.wait_for(|down| *down).await;
            })
            .await
    });

    if let Err(err) = ready() {
        builder.stop("startup failed");
        let _ = shutdown_tx.send(true);
        server.abort();
        return Err(err);
    }
    tracing::info!(app = %args.app, instance = %args.instance, build_ms = args.build_ms, "builder worker started");

    let reason = tokio::select! {
        reason = shutdown => reason,
        ended = &mut server => {
            builder.stop("HTTP server stopped");
            return match ended {
                Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
                Ok(Err(err)) => Err(err).context("the HTTP server failed"),
                Err(err) => Err(err).context("the HTTP server task failed"),
            };
        }
    };

    tracing::info!("{reason}: shutting down");
    // First stop taking and finishing jobs: a build that cannot be reported
    // any more must not count as done.
    builder.stop(reason);
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::warn!(%err, "HTTP server failed while shutting down"),
        Ok(Err(err)) => tracing::warn!(%err, "HTTP server task failed while shutting down"),
        Err(_) => {
            tracing::warn!("requests still open after {SHUTDOWN_GRACE:?}; dropping them");
            server.abort();
        }
    }
    Ok(())
}
