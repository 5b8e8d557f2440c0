//! tandem's demo component (`tandem demo-app`).
//!
//! A small HTTP service that stands in for a real component managed by
//! tandem, so a user can watch a failover happen and tests can provoke one.
//! tandem's agent starts it as a child process with `TANDEM_APP`,
//! `TANDEM_INSTANCE`, `TANDEM_ROLE`, `TANDEM_EPOCH` and optionally
//! `TANDEM_ROLE_FILE` in its environment, and tells it about role changes
//! through one of three hooks:
//!
//! - **HTTP**: `POST /tandem/role` with `{"role": "primary", "epoch": 7}`;
//! - **signal**: SIGHUP or SIGUSR1, after writing the same JSON to
//!   `$TANDEM_ROLE_FILE`;
//! - **command**: `tandem demo-app-role --port P ROLE EPOCH`, which calls
//!   [`set_role`].
//!
//! A hook with an epoch lower than the current one is refused: an instance
//! never goes back to an older epoch.
//!
//! It behaves like a well-made component: after being frozen (SIGSTOP, a
//! long pause) for longer than `--freeze-threshold-ms` while primary, it
//! fences itself and never again reports `primary` at its old epoch until
//! tandem hands it a role again. Fault switches (`POST /crash`, `/hang`,
//! `/unhealthy`) let tests provoke every kind of failure tandem must detect,
//! and the optional journal (`--journal`) records, line by line, when the
//! process acted as primary.
//!
//! # HTTP API
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | `{"app","instance","role","epoch","pid","since_ms"}` |
//! | `GET /health` | 200 `{"status":"ok"}`; 503 when unhealthy or self-fenced |
//! | `POST /tandem/role` | 200 with the new state; 400 bad role or body; 409 stale epoch |
//! | `POST /crash` | exits at once with code 1 |
//! | `POST /hang` | every later request hangs; the process stays alive |
//! | `POST /unhealthy`, `POST /healthy` | toggle `/health` |
#![deny(missing_docs)]
// An I/O crate: it reads clocks by design.
#![allow(clippy::disallowed_methods)]

mod client;
pub mod cms;
pub mod desk;
pub mod hot;
mod http;
mod journal;
pub mod pool;
mod role;
mod state;
mod ticker;
pub mod topology;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

pub use client::set_role;
pub use role::{Role, UnknownRole};

use journal::Journal;
use state::{HookBody, Shared};
use ticker::Ticker;

/// How long a graceful exit waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Bound on the size of the role file.
const MAX_ROLE_FILE_BYTES: u64 = 64 * 1024;

/// Command-line flags of `tandem demo-app`. Identity, role and epoch fall
/// back to the variables tandem's agent sets.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// TCP port of the HTTP API.
    #[arg(long)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,

    /// Name of the app this instance belongs to.
    #[arg(long, env = "TANDEM_APP", default_value = "demo")]
    pub app: String,

    /// Name of this instance.
    #[arg(long, env = "TANDEM_INSTANCE", default_value = "0")]
    pub instance: String,

    /// Role at start: primary, backup, standby, active, free, busy, stopped,
    /// failed or fenced.
    #[arg(long, env = "TANDEM_ROLE", default_value = "free")]
    pub role: Role,

    /// Epoch at start (the fencing token that comes with the primary role).
    #[arg(long, env = "TANDEM_EPOCH", default_value_t = 0)]
    pub epoch: u64,

    /// JSON file `{"role": .., "epoch": ..}` read on SIGHUP or SIGUSR1.
    #[arg(long, env = "TANDEM_ROLE_FILE")]
    pub role_file: Option<PathBuf>,

    /// Append a JSON line per event (start, role, acting, fenced, exit) to
    /// this file; `acting` every 100 ms while primary.
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// Self-fence when frozen longer than this while primary (at least 50).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    pub freeze_threshold_ms: u64,

    /// While primary, journal an `acting` line this often (milliseconds).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub acting_every_ms: u64,

    /// While primary, send a numbered notification this often (a scheduler
    /// daemon's job): journaled as `notification` lines with the epoch.
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub notify_every_ms: Option<u64>,

    /// While primary, dispatch a build to the pool app of this name (found
    /// through tandem's API, `--api`) every `--dispatch-every-ms`: what the
    /// WFM server does with its builders.
    #[arg(long)]
    pub dispatch_to: Option<String>,

    /// Address of tandem's API (for `--dispatch-to`).
    #[arg(long, env = "TANDEM_API", default_value = "127.0.0.1:7420")]
    pub api: String,

    /// How often a primary dispatches a build.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub dispatch_every_ms: u64,

    /// On SIGTERM, go on working (and acting, if primary) this long before
    /// stopping, as a component finishing its work would.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(..=60_000))]
    pub stop_delay_ms: u64,
}

/// Serves the demo app until SIGTERM or SIGINT, then exits gracefully.
///
/// Prints one line to stdout once it listens:
/// `demo-app {app}/{instance} listening on {addr} as {role} (epoch {epoch})`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let journal = args
        .journal
        .as_deref()
        .map(|path| Journal::open(path, &args.app, &args.instance))
        .transpose()?;
    let shared = Arc::new(Shared::new(
        args.app.clone(),
        args.instance.clone(),
        args.role,
        args.epoch,
        args.freeze_threshold_ms,
        journal,
    ));

    // Handlers first, so that a signal sent right after the startup line
    // cannot hit the default action (which would kill the process).
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut sigusr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;

    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;

    shared.record_start();
    let dispatcher = match &args.dispatch_to {
        Some(pool) => Some(tokio::spawn(dispatch_builds(
            Arc::clone(&shared),
            tandem_client::ApiClient::new(&args.api).context("--api")?,
            pool.clone(),
            args.instance.clone(),
            Duration::from_millis(args.dispatch_every_ms),
        ))),
        None => None,
    };
    let ticker = Ticker::spawn(
        Arc::clone(&shared),
        args.acting_every_ms,
        args.notify_every_ms,
    )?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let app = http::router(Arc::clone(&shared), shutdown_rx.clone());
    let mut server_shutdown = shutdown_rx;
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_shutdown.wait_for(|down| *down).await;
            })
            .await
    });

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "demo-app {}/{} listening on {addr} as {} (epoch {})",
            args.app, args.instance, args.role, args.epoch
        )
        .and_then(|()| stdout.flush())
        .context("cannot write the startup line to stdout")?;
    }
    tracing::info!(app = %args.app, instance = %args.instance, %addr, role = %args.role, epoch = args.epoch, "demo app started");

    let reason = loop {
        tokio::select! {
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = sighup.recv() => apply_role_file(&shared, args.role_file.as_deref(), "SIGHUP").await,
            _ = sigusr1.recv() => apply_role_file(&shared, args.role_file.as_deref(), "SIGUSR1").await,
            ended = &mut server => {
                drop(ticker);
                return match ended {
                    Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
                    Ok(Err(err)) => Err(err).context("the HTTP server failed"),
                    Err(err) => Err(err).context("the HTTP server task failed"),
                };
            }
        }
    };

    tracing::info!("{reason}: shutting down");
    if let Some(d) = &dispatcher {
        d.abort();
    }
    if args.stop_delay_ms > 0 {
        // Finishing work: still serving, still acting.
        tokio::time::sleep(Duration::from_millis(args.stop_delay_ms)).await;
    }
    // Nobody else waits on the channel if the server already stopped.
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
    drop(ticker);
    shared.record_exit(reason);
    Ok(())
}

/// The signal hook: applies `$TANDEM_ROLE_FILE` with the same rules as the
/// HTTP hook. Problems are logged; the app keeps its role.
async fn apply_role_file(shared: &Shared, path: Option<&Path>, signal: &str) {
    let Some(path) = path else {
        tracing::warn!(
            "{signal} received but no role file is set (TANDEM_ROLE_FILE / --role-file)"
        );
        return;
    };
    match read_role_file(path).await {
        Ok(hook) => {
            let source = format!("{signal} {}", path.display());
            if let Err(err) = shared.apply_hook(&hook, &source) {
                tracing::warn!("{signal}: refused role file {}: {err}", path.display());
            }
        }
        Err(err) => tracing::warn!("{signal}: {err:#}"),
    }
}

async fn read_role_file(path: &Path) -> anyhow::Result<HookBody> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open role file {}", path.display()))?;
    let mut text = Vec::new();
    file.take(MAX_ROLE_FILE_BYTES)
        .read_to_end(&mut text)
        .await
        .with_context(|| format!("cannot read role file {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "invalid role file {}: expected JSON {{\"role\": \"primary\", \"epoch\": 7}}",
            path.display()
        )
    })
}

/// While primary: dispatch a build to the pool `pool` every `every`, and
/// journal `dispatched` and `built` (or `dispatch-failed`) lines.
async fn dispatch_builds(
    shared: Arc<Shared>,
    api: tandem_client::ApiClient,
    pool: String,
    instance: String,
    every: Duration,
) {
    use tandem_client::pool::{DispatchOptions, Dispatcher, Job, WorkerSource};
    let dispatcher = Dispatcher::new(
        WorkerSource::Tandem { api, app: pool },
        DispatchOptions {
            timeout: Duration::from_secs(60),
            ..DispatchOptions::default()
        },
    );
    let mut n: u64 = 0;
    loop {
        tokio::time::sleep(every).await;
        let snap = shared.snapshot_checked();
        if snap.role != Role::Primary {
            continue;
        }
        n += 1;
        let id = format!("{instance}-e{}-{n}", snap.epoch);
        let mut extra = serde_json::Map::new();
        extra.insert("job".into(), id.clone().into());
        shared.record_event("dispatched", extra.clone());
        match dispatcher.run(Job::new(id, format!("schedule {n}"))).await {
            Ok(done) => {
                extra.insert("worker".into(), done.worker.into());
                shared.record_event("built", extra);
            }
            Err(e) => {
                extra.insert("error".into(), e.to_string().into());
                shared.record_event("dispatch-failed", extra);
            }
        }
    }
}
