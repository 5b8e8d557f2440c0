//! The data aggregator: a hot-standby component. Every instance consumes
//! the statistics stream into a bounded buffer; the primary writes it to
//! the sink through a [`FencedWriter`] claimed with its epoch, so that at a
//! takeover it resumes exactly after the last committed record, and a
//! deposed primary's writes are refused by the sink itself.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tandem_core::model::Role;
use tandem_sink::{FencedWriter, PostgresSink, Record, Sink, SinkError, SqliteSink, StoredRow};
use tokio::signal::unix::{SignalKind, signal};

use super::source::StreamRecord;

/// The most records an aggregator buffers; older ones are dropped and, if
/// the writer still needs them, read again from the source.
pub const BUFFER_CAP: usize = 200_000;

/// Flags of `tandem demo-aggregator`.
#[derive(clap::Args, Debug, Clone)]
pub struct AggregatorArgs {
    /// TCP port of the HTTP API (role hook, health, state).
    #[arg(long)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub bind: IpAddr,
    /// Base URL of the statistics source, e.g. http://127.0.0.1:9000.
    #[arg(long)]
    pub source: String,
    /// Where to write: `sqlite:PATH` or `postgres:CONNINFO`.
    #[arg(long)]
    pub sink: String,
    /// Table name in the sink.
    #[arg(long, default_value = "stats")]
    pub table: String,
    /// Records per write.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=5000))]
    pub batch: u64,
    /// App name (default `$TANDEM_APP`).
    #[arg(long, env = "TANDEM_APP", default_value = "aggregator")]
    pub app: String,
    /// Instance id (default `$TANDEM_INSTANCE`).
    #[arg(long, env = "TANDEM_INSTANCE", default_value = "0")]
    pub instance: String,
    /// Role at start (default `$TANDEM_ROLE`).
    #[arg(long, env = "TANDEM_ROLE", default_value = "backup")]
    pub role: Role,
    /// Epoch at start (default `$TANDEM_EPOCH`).
    #[arg(long, env = "TANDEM_EPOCH", default_value_t = 0)]
    pub epoch: u64,
}

/// A sink chosen on the command line.
pub enum AnySink {
    /// SQLite.
    Sqlite(SqliteSink),
    /// PostgreSQL.
    Postgres(PostgresSink),
}

impl AnySink {
    /// Opens `sqlite:PATH` or `postgres:CONNINFO`.
    pub fn open(spec: &str, table: &str) -> Result<AnySink, SinkError> {
        if let Some(path) = spec.strip_prefix("sqlite:") {
            Ok(AnySink::Sqlite(SqliteSink::open(
                &PathBuf::from(path),
                table,
            )?))
        } else if let Some(conninfo) = spec.strip_prefix("postgres:") {
            Ok(AnySink::Postgres(PostgresSink::connect(conninfo, table)?))
        } else {
            Err(SinkError::Invalid(format!(
                "unknown sink {spec:?}: expected sqlite:PATH or postgres:CONNINFO"
            )))
        }
    }

    fn inner(&mut self) -> &mut dyn Sink {
        match self {
            AnySink::Sqlite(s) => s,
            AnySink::Postgres(s) => s,
        }
    }
}

impl Sink for AnySink {
    fn claim(&mut self, epoch: u64) -> Result<Option<u64>, SinkError> {
        self.inner().claim(epoch)
    }
    fn write(&mut self, epoch: u64, records: &[Record]) -> Result<(), SinkError> {
        self.inner().write(epoch, records)
    }
    fn last_position(&mut self) -> Result<Option<u64>, SinkError> {
        self.inner().last_position()
    }
    fn rows(&mut self, from: u64, limit: usize) -> Result<Vec<StoredRow>, SinkError> {
        self.inner().rows(from, limit)
    }
}

struct State_ {
    role: Role,
    epoch: u64,
    /// The highest epoch the sink refused us at: never write with it again.
    deposed_at: Option<u64>,
    buffer: VecDeque<StreamRecord>,
    /// Next position the consumer asks the source for.
    next_read: u64,
    last_written: Option<u64>,
    written: u64,
    takeovers: u64,
}

type Shared = Arc<Mutex<State_>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State_> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
struct Ctx {
    shared: Shared,
    app: String,
    instance: String,
}

#[derive(Deserialize)]
struct Hook {
    role: String,
    epoch: u64,
}

async fn root(State(ctx): State<Ctx>) -> Json<serde_json::Value> {
    let s = lock(&ctx.shared);
    Json(json!({
        "app": ctx.app, "instance": ctx.instance, "role": s.role, "epoch": s.epoch,
        "next_read": s.next_read, "buffered": s.buffer.len(),
        "last_written": s.last_written, "written": s.written, "takeovers": s.takeovers,
        "deposed_at": s.deposed_at, "pid": std::process::id(),
    }))
}

async fn role_hook(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let hook: Hook = match serde_json::from_slice(&body) {
        Ok(h) => h,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("bad role hook: {e}")})),
            )
                .into_response();
        }
    };
    let role: Role = match hook.role.parse() {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            )
                .into_response();
        }
    };
    let mut s = lock(&ctx.shared);
    if hook.epoch < s.epoch {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": format!("stale epoch {} (current {})", hook.epoch, s.epoch)})),
        )
            .into_response();
    }
    s.role = role;
    s.epoch = hook.epoch;
    Json(json!({"role": role, "epoch": hook.epoch})).into_response()
}

/// Serves the aggregator until SIGTERM or SIGINT.
pub async fn run(args: AggregatorArgs) -> anyhow::Result<()> {
    if !args.sink.starts_with("sqlite:") && !args.sink.starts_with("postgres:") {
        bail!(
            "--sink {:?}: expected sqlite:PATH or postgres:CONNINFO",
            args.sink
        );
    }
    tandem_sink::validate_table(&args.table).map_err(|e| anyhow::anyhow!("--table: {e}"))?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let shared: Shared = Arc::new(Mutex::new(State_ {
        role: args.role,
        epoch: args.epoch,
        deposed_at: None,
        buffer: VecDeque::new(),
        next_read: 0,
        last_written: None,
        written: 0,
        takeovers: 0,
    }));
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let ctx = Ctx {
        shared: shared.clone(),
        app: args.app.clone(),
        instance: args.instance.clone(),
    };
    let app = Router::new()
        .route("/", get(root))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/tandem/role", post(role_hook))
        .with_state(ctx);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let consumer = tokio::spawn(consume(shared.clone(), args.source.clone()));
    let writer = tokio::spawn(write_loop(shared.clone(), args.clone()));
    println!(
        "demo-aggregator {}/{} listening on {addr}, reading {}, writing {}",
        args.app, args.instance, args.source, args.sink
    );
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    consumer.abort();
    writer.abort();
    server.abort();
    Ok(())
}

/// Reads the stream into the buffer, from wherever `next_read` says.
async fn consume(shared: Shared, source: String) {
    let http = match reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build an HTTP client");
            return;
        }
    };
    loop {
        let from = lock(&shared).next_read;
        let url = format!("{source}/records?from={from}&max=2000");
        let got: Vec<StreamRecord> = match http.get(&url).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(e) => {
                tracing::debug!(error = %e, "source unreachable");
                Vec::new()
            }
        };
        let n = got.len();
        {
            let mut s = lock(&shared);
            // A rewind may have happened while we were reading.
            if s.next_read == from {
                for r in got {
                    if r.position == s.next_read {
                        s.next_read += 1;
                        s.buffer.push_back(r);
                    }
                }
                while s.buffer.len() > BUFFER_CAP {
                    s.buffer.pop_front();
                }
            }
        }
        if n == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// While primary: take over the sink with the current epoch, then write
/// what follows the last committed record.
async fn write_loop(shared: Shared, args: AggregatorArgs) {
    let mut writer: Option<FencedWriter<AnySink>> = None;
    loop {
        let (role, epoch, deposed_at) = {
            let s = lock(&shared);
            (s.role, s.epoch, s.deposed_at)
        };
        let may_write = role == Role::Primary && deposed_at.is_none_or(|d| epoch > d);
        if !may_write {
            writer = None;
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        if writer.as_ref().is_none_or(|w| w.epoch() != epoch) {
            let (spec, table) = (args.sink.clone(), args.table.clone());
            let taken = tokio::task::spawn_blocking(move || {
                let sink = AnySink::open(&spec, &table)?;
                FencedWriter::take_over(sink, epoch)
            })
            .await;
            match taken {
                Ok(Ok((w, last))) => {
                    tracing::info!(epoch, ?last, "took over the sink");
                    let mut s = lock(&shared);
                    s.takeovers += 1;
                    s.last_written = last;
                    writer = Some(w);
                }
                Ok(Err(SinkError::Fenced { current, .. })) => {
                    tracing::warn!(epoch, current, "the sink has a newer writer: deposed");
                    lock(&shared).deposed_at = Some(epoch);
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot take over the sink; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "sink task failed");
                    continue;
                }
            }
        }
        let Some(mut w) = writer.take() else {
            continue;
        };
        let next = w.last_committed().map_or(0, |p| p + 1);
        let batch: Vec<Record> = {
            let mut s = lock(&shared);
            while s.buffer.front().is_some_and(|r| r.position < next) {
                s.buffer.pop_front();
            }
            match s.buffer.front() {
                Some(r) if r.position > next => {
                    // Needed records were dropped: read them again.
                    s.buffer.clear();
                    s.next_read = next;
                    Vec::new()
                }
                None if s.next_read < next => {
                    s.next_read = next;
                    Vec::new()
                }
                _ => s
                    .buffer
                    .iter()
                    .take(args.batch as usize)
                    .map(|r| Record {
                        position: r.position,
                        payload: r.payload.clone().into_bytes(),
                    })
                    .collect(),
            }
        };
        if batch.is_empty() {
            writer = Some(w);
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let done = tokio::task::spawn_blocking(move || {
            let r = w.write(&batch);
            (w, r)
        })
        .await;
        match done {
            Ok((w, Ok(outcome))) => {
                let mut s = lock(&shared);
                s.last_written = outcome.last_committed;
                s.written += outcome.written as u64;
                writer = Some(w);
            }
            Ok((_, Err(SinkError::Fenced { current, .. }))) => {
                tracing::warn!(
                    epoch,
                    current,
                    "write refused: a newer primary owns the sink"
                );
                lock(&shared).deposed_at = Some(epoch);
            }
            Ok((_, Err(e))) => {
                // Reopen and take over again (re-reads the fence).
                tracing::warn!(error = %e, "write failed; taking over again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => tracing::error!(error = %e, "sink task failed"),
        }
    }
}
