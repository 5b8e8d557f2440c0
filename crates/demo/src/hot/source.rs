//! The statistics source: a numbered stream, replayable from any position.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{SignalKind, signal};

/// Flags of `tandem demo-stats`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatsArgs {
    /// TCP port of the HTTP API.
    #[arg(long)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Records per second.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rate: u64,
    /// Stop producing after this many records (default: never).
    #[arg(long)]
    pub count: Option<u64>,
}

/// One record of the stream, as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    /// Its position (0, 1, 2, ...).
    pub position: u64,
    /// Its content.
    pub payload: String,
}

/// The content of record `position`: the same on every read.
pub fn payload(position: u64) -> String {
    format!("stat-{position}")
}

/// The longest answer of `GET /records`.
pub const MAX_BATCH: u64 = 5000;

#[derive(Clone)]
struct Ctx {
    produced: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct RecordsQuery {
    from: u64,
    max: Option<u64>,
}

/// `GET /records?from=N&max=M`: the produced records from N on.
async fn records(State(ctx): State<Ctx>, Query(q): Query<RecordsQuery>) -> Json<Vec<StreamRecord>> {
    let produced = ctx.produced.load(Ordering::SeqCst);
    let max = q.max.unwrap_or(MAX_BATCH).clamp(1, MAX_BATCH);
    let end = produced.min(q.from.saturating_add(max));
    Json(
        (q.from..end)
            .map(|position| StreamRecord {
                position,
                payload: payload(position),
            })
            .collect(),
    )
}

/// `GET /status`: how many records exist, and whether the stream is done.
async fn status(State(ctx): State<Ctx>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "produced": ctx.produced.load(Ordering::SeqCst) }))
}

/// Serves the source until SIGTERM or SIGINT.
pub async fn run(args: StatsArgs) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let produced = Arc::new(AtomicU64::new(0));
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let ctx = Ctx {
        produced: produced.clone(),
    };
    let app = Router::new()
        .route("/records", get(records))
        .route("/status", get(status))
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .with_state(ctx);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("demo-stats listening on {addr}: {} records/s", args.rate);
    // Production follows the clock, so a slow tick does not slow the stream.
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = tick.tick() => {
                let due = (start.elapsed().as_micros() as u64).saturating_mul(args.rate) / 1_000_000;
                let due = args.count.map_or(due, |c| due.min(c));
                produced.fetch_max(due, Ordering::SeqCst);
            }
        }
    }
    server.abort();
    Ok(())
}
