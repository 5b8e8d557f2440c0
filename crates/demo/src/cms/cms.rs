//! The demo CMS reporting server (`tandem demo-cms`): keeps reporting
//! sessions to the switches through the links tandem enables, and plays the
//! role tandem hands it (only a primary takes admin edits).
//!
//! tandem's agent starts it with `TANDEM_APP`, `TANDEM_INSTANCE`,
//! `TANDEM_ROLE`, `TANDEM_EPOCH` and `TANDEM_LINKS_DIR` in its environment.
//!
//! # HTTP API
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | `{"app","instance","role","epoch","pid","active":[link..],"links":{link:{"connected","since_ms","address","why","data_lines","reported"}},"admin_edits"}` (`reported`: the link's last reachability report, `null` before the first or without a links directory) |
//! | `GET /health` | 200 `{"status":"ok"}` |
//! | `POST /tandem/role` `{"role","epoch"}` | 200 with the state; 400 bad body or role; 409 stale epoch |
//! | `POST /tandem/link` `{"app","instance","link","action"}` | the link hook, answered once done: 200 `{"link","active"}`; 400 bad body; 404 unknown link; 409 refused by the switch; 502 unexpected answer; 503 switch unreachable |
//! | `POST /misbehave/both` | enables every link at once (tests of fencing); 200 `{"results":{link:{"status","body"}}}` |
//! | `POST /admin/edit` `{"key","value"}` | primary only: writes `<admin-dir>/<key>` atomically; 200 `{"seq","key","bytes"}`; 400 bad key or body; 409 not primary; 503 no `--admin-dir` |
//!
//! # Links
//!
//! Enabling a link sends `LINK app/instance` and waits (1 s) for `OK`.
//! While the session is open the CMS sends `ALIVE` every `liveness / 3` and
//! reads `DATA`. Disabling sends `BYE` and stops sending `ALIVE`; the
//! disable is confirmed at the first of: `BYE-OK`, the switch closing the
//! connection, or `liveness + 100 ms` after the last `ALIVE` (the switch's
//! silence timer has closed the session by then; the socket is reset). A
//! session that dies by itself (the switch closed it, or fell silent for
//! `liveness`) is reported inactive at once; a later enable or disable of
//! that link waits until it is certainly closed on the switch.
//!
//! Whenever a link becomes active or inactive,
//! `$TANDEM_LINKS_DIR/.active` is replaced (temporary file + rename) by the
//! active links' names, one per line.
//!
//! # Reachability reports
//!
//! For tandem's `probe = "reported"` link probes, the CMS tells whether it
//! *could* use each link, active or not: with a links directory, every
//! `--probe-ms` (default 200) a task per link decides:
//!
//! - the link's session is open and well: `up`;
//! - otherwise it opens a new connection to the link's switch (the whole
//!   probe bounded by `--probe-ms`, at most 1 s), sends
//!   `PROBE app/instance` and reads the answer: `OK` is `up`,
//!   `REFUSED WHY` is `down WHY` (e.g. `down cut`), and a connect error, a
//!   timeout or any other answer is `down` and what happened.
//!
//! After each probe, `$TANDEM_LINKS_DIR/<link>` is replaced by that one
//! line (a temporary file renamed over it) when it differs from what was
//! last written. Until the first probe of a link ends, its file is not
//! written.
//!
//! # Journal
//!
//! With `--journal FILE`, JSON lines `{"at_ns","app","instance","event",..}`
//! with `event` one of `link-active` (`link`), `link-inactive` (`link`,
//! `reason`), `role` (`role`, `epoch`) and `edit` (`seq`, `key`, `epoch`).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::line::{LineReader, check_who, shorten, write_line};
use super::{JsonLines, unix_ns, write_atomic};
use crate::role::Role;
use crate::state::{HookBody, HookError, Shared, unix_ms};

/// How long an enable waits for the switch's `OK`.
const ENABLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on sending one line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Added to the liveness before a session not closed by the switch is
/// taken as closed: the time a line may take to reach the switch.
const DELIVERY_MARGIN: Duration = Duration::from_millis(100);
/// Bound on a request body (an admin edit and its value).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The longest admin edit key.
const MAX_KEY_BYTES: usize = 100;
/// The longest link name.
const MAX_LINK_NAME_BYTES: usize = 100;
/// How long a graceful stop waits for the links to be disabled.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The longest a reachability probe of a link waits (`--probe-ms` if less).
const MAX_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One `--link NAME=ADDR:PORT`: a link of the CMS and the switch at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    /// The link's name, as in tandem's topology (e.g. `acd-main`).
    pub name: String,
    /// The switch's line-protocol address.
    pub addr: SocketAddr,
}

impl FromStr for LinkSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (name, addr) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not a link: expected NAME=ADDR:PORT"))?;
        check_link_name(name)?;
        let addr = addr
            .parse()
            .map_err(|e| format!("{addr:?} is not an ADDR:PORT ({e}) in link {text:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            addr,
        })
    }
}

/// A link name is also a file name in `$TANDEM_LINKS_DIR`.
fn check_link_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_LINK_NAME_BYTES
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '>'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a link name: 1 to {MAX_LINK_NAME_BYTES} of A-Z a-z 0-9 - _ . >, not starting with a dot",
            shorten(name)
        ))
    }
}

/// Command-line flags of `tandem demo-cms`. Identity, role, epoch and the
/// links directory fall back to the variables tandem's agent sets.
#[derive(clap::Args, Debug, Clone)]
pub struct CmsArgs {
    /// Address of the HTTP API, e.g. 127.0.0.1:8300.
    #[arg(long)]
    pub listen: SocketAddr,

    /// A link to a switch, NAME=ADDR:PORT (repeat for each link).
    #[arg(long = "link", required = true)]
    pub links: Vec<LinkSpec>,

    /// Directory of the admin data that only a primary edits.
    #[arg(long)]
    pub admin_dir: Option<PathBuf>,

    /// Append a JSON line per event (link-active, link-inactive, role, edit).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// Liveness of a session in milliseconds: the same as the switches'.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(200..=60_000))]
    pub liveness_ms: u64,

    /// How often each link's reachability is probed for its report in the
    /// links directory, in ms; a probe gives up after this long (at most 1 s).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub probe_ms: u64,

    /// While primary, write an admin edit `edit-<seq>` this often by itself.
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub edits_every_ms: Option<u64>,

    /// Name of the app this instance belongs to.
    #[arg(long, env = "TANDEM_APP", default_value = "cms")]
    pub app: String,

    /// Name of this instance.
    #[arg(long, env = "TANDEM_INSTANCE", default_value = "0")]
    pub instance: String,

    /// Role at start.
    #[arg(long, env = "TANDEM_ROLE", default_value = "free")]
    pub role: Role,

    /// Epoch at start.
    #[arg(long, env = "TANDEM_EPOCH", default_value_t = 0)]
    pub epoch: u64,

    /// Directory of the link reports (`.active` and one file per link).
    #[arg(long, env = "TANDEM_LINKS_DIR")]
    pub links_dir: Option<PathBuf>,
}

/// Serves the CMS until SIGTERM or SIGINT, then disables its links.
///
/// Prints one line to stdout once it listens:
/// `demo-cms {app}/{instance} listening on {addr}`.
pub async fn run_cms(args: CmsArgs) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
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
            "demo-cms {}/{} listening on {addr}",
            args.app, args.instance
        )
        .and_then(|()| stdout.flush())
        .context("cannot write the startup line to stdout")
    };
    serve_cms(args.clone(), listener, announce, shutdown).await
}

/// Serves the CMS on `listener` (the caller binds; tests use port 0) until
/// `shutdown` yields a reason, then disables every link. `ready` runs once
/// the CMS serves. `args.listen` is ignored.
pub async fn serve_cms(
    args: CmsArgs,
    listener: TcpListener,
    ready: impl FnOnce() -> anyhow::Result<()>,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let cms = Arc::new(Cms::new(&args)?);
    cms.write_active(&cms.lock());

    let edits = args.edits_every_ms.map(|every_ms| {
        tokio::spawn(write_edits(
            Arc::clone(&cms),
            Duration::from_millis(every_ms),
        ))
    });
    let probe_every = Duration::from_millis(args.probe_ms);
    let probes: Vec<_> = match &cms.links_dir {
        Some(_) => cms
            .links
            .keys()
            .map(|name| {
                tokio::spawn(report_reachability(
                    Arc::clone(&cms),
                    name.clone(),
                    probe_every,
                ))
            })
            .collect(),
        None => Vec::new(),
    };
    let app = router(Arc::clone(&cms));
    let mut server = tokio::spawn(async move { axum::serve(listener, app).await });
    if let Err(err) = ready() {
        server.abort();
        for probe in &probes {
            probe.abort();
        }
        return Err(err);
    }
    tracing::info!(app = %args.app, instance = %args.instance, links = ?args.links, "demo CMS started");

    let outcome = tokio::select! {
        reason = shutdown => {
            tracing::info!("{reason}: disabling the links and stopping");
            Ok(())
        }
        ended = &mut server => match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
            Ok(Err(err)) => Err(err).context("the HTTP server failed"),
            Err(err) => Err(err).context("the HTTP server task failed"),
        },
    };
    if let Some(edits) = edits {
        edits.abort();
    }
    for probe in &probes {
        probe.abort();
    }
    server.abort();
    let disables: Vec<_> = cms
        .links
        .keys()
        .map(|name| tokio::spawn(Arc::clone(&cms).disable(name.clone())))
        .collect();
    let all = join_tasks(disables);
    if tokio::time::timeout(STOP_GRACE, all).await.is_err() {
        tracing::warn!(
            "links not all disabled within {} ms; stopping anyway",
            STOP_GRACE.as_millis()
        );
    }
    outcome
}

/// Waits for every task (a tiny `join_all`).
async fn join_tasks<T>(tasks: Vec<tokio::task::JoinHandle<T>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// A link and what serializes the operations on it.
struct Link {
    addr: SocketAddr,
    /// Held by an enable or a disable from start to confirmation.
    op: tokio::sync::Mutex<()>,
    /// `DATA` lines received on this link, over every session.
    data_lines: AtomicU64,
}

/// The handle on a link's session task.
#[derive(Clone)]
struct SessionCtl {
    id: u64,
    /// Asks the task to disable the session.
    disable: mpsc::Sender<()>,
    /// `Some(why)` once the session is certainly closed on the switch.
    ended: watch::Receiver<Option<String>>,
}

struct LinkState {
    /// The session is open and well (reported as active).
    active: bool,
    /// Unix ms of the last change of `active`.
    since_ms: u64,
    /// Why the link is not active.
    why: String,
    /// The session task, until the session is certainly closed.
    session: Option<SessionCtl>,
    /// The last reachability report (`up` or `down WHY`), once probed.
    reported: Option<String>,
}

struct CmsState {
    links: BTreeMap<String, LinkState>,
}

/// Everything the handlers and the session tasks share.
struct Cms {
    app: String,
    instance: String,
    role: Shared,
    links: BTreeMap<String, Link>,
    liveness: Duration,
    journal: Option<JsonLines>,
    links_dir: Option<PathBuf>,
    admin_dir: Option<PathBuf>,
    state: Mutex<CmsState>,
    /// The next edit's sequence number; held while an edit is written.
    next_seq: tokio::sync::Mutex<u64>,
    admin_edits: AtomicU64,
    next_session: AtomicU64,
}

/// Why a link operation failed, with its HTTP status.
struct OpError {
    status: StatusCode,
    message: String,
}

impl OpError {
    fn new(status: StatusCode, message: String) -> Self {
        Self { status, message }
    }
}

/// How a session ended (on the CMS's side).
enum End {
    /// tandem asked for a disable.
    Disable,
    /// The switch closed the connection: the session is closed there.
    Closed(String),
    /// Nothing certain about the switch's side: wait out its liveness.
    Uncertain(String),
}

fn peer_closed(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

impl Cms {
    fn new(args: &CmsArgs) -> anyhow::Result<Self> {
        let mut links = BTreeMap::new();
        let mut states = BTreeMap::new();
        for spec in &args.links {
            check_link_name(&spec.name).map_err(anyhow::Error::msg)?;
            let link = Link {
                addr: spec.addr,
                op: tokio::sync::Mutex::new(()),
                data_lines: AtomicU64::new(0),
            };
            if links.insert(spec.name.clone(), link).is_some() {
                anyhow::bail!("link {} is given twice (--link)", spec.name);
            }
            states.insert(
                spec.name.clone(),
                LinkState {
                    active: false,
                    since_ms: unix_ms(),
                    why: "not enabled yet".into(),
                    session: None,
                    reported: None,
                },
            );
        }
        // The switches know the CMS by this name.
        check_who(&format!("{}/{}", args.app, args.instance))
            .map_err(|e| anyhow::anyhow!("app and instance (TANDEM_APP, TANDEM_INSTANCE): {e}"))?;
        if links.is_empty() {
            anyhow::bail!("a CMS needs at least one --link NAME=ADDR:PORT");
        }
        if args.edits_every_ms.is_some() && args.admin_dir.is_none() {
            anyhow::bail!("--edits-every-ms needs --admin-dir");
        }
        let mut next_seq = 1;
        if let Some(dir) = &args.admin_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the admin directory {}", dir.display()))?;
            next_seq = highest_edit(dir)? + 1;
        }
        if let Some(dir) = &args.links_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the links directory {}", dir.display()))?;
        }
        let journal = args.journal.as_deref().map(JsonLines::open).transpose()?;
        Ok(Self {
            app: args.app.clone(),
            instance: args.instance.clone(),
            // No ticker: the freeze check of the demo app is not used here.
            role: Shared::new(
                args.app.clone(),
                args.instance.clone(),
                args.role,
                args.epoch,
                u64::MAX,
                None,
            ),
            links,
            liveness: Duration::from_millis(args.liveness_ms),
            journal,
            links_dir: args.links_dir.clone(),
            admin_dir: args.admin_dir.clone(),
            state: Mutex::new(CmsState { links: states }),
            next_seq: tokio::sync::Mutex::new(next_seq),
            admin_edits: AtomicU64::new(0),
            next_session: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CmsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn who(&self) -> String {
        format!("{}/{}", self.app, self.instance)
    }

    fn record(&self, event: &str, mut fields: Value) {
        let Some(journal) = &self.journal else {
            return;
        };
        if let Value::Object(map) = &mut fields {
            map.insert("at_ns".into(), json!(unix_ns()));
            map.insert("app".into(), json!(self.app));
            map.insert("instance".into(), json!(self.instance));
            map.insert("event".into(), json!(event));
        }
        journal.append_or_warn(&fields);
    }

    /// Rewrites `.active`; called under the state lock so the file follows
    /// the order of the changes.
    fn write_active(&self, state: &CmsState) {
        let Some(dir) = &self.links_dir else {
            return;
        };
        let mut active = String::new();
        for (name, link) in &state.links {
            if link.active {
                active.push_str(name);
                active.push('\n');
            }
        }
        if let Err(err) = write_atomic(dir, ".active", active.as_bytes(), false) {
            tracing::warn!(dir = %dir.display(), %err, "cannot write the active links report");
        }
    }

    /// The session `ctl` of `name` is open: the link is active.
    fn activate(&self, name: &str, ctl: SessionCtl) {
        let mut state = self.lock();
        let Some(link) = state.links.get_mut(name) else {
            return;
        };
        link.active = true;
        link.since_ms = unix_ms();
        link.why.clear();
        link.session = Some(ctl);
        tracing::info!(link = name, "link active");
        self.record("link-active", json!({ "link": name }));
        self.write_active(&state);
    }

    /// Session `id` of `name` is no longer usable: the link is inactive.
    /// With `finished`, the session is also certainly closed on the switch.
    fn deactivate(&self, name: &str, id: u64, why: &str, finished: bool) {
        let mut state = self.lock();
        let Some(link) = state.links.get_mut(name) else {
            return;
        };
        if link.session.as_ref().is_none_or(|s| s.id != id) {
            return;
        }
        if finished {
            link.session = None;
        }
        if !link.active {
            return;
        }
        link.active = false;
        link.since_ms = unix_ms();
        link.why = why.to_owned();
        tracing::info!(link = name, why, "link inactive");
        self.record("link-inactive", json!({ "link": name, "reason": why }));
        self.write_active(&state);
    }

    fn state_json(&self) -> Value {
        let role = self.role.snapshot();
        let state = self.lock();
        let active: Vec<&String> = state
            .links
            .iter()
            .filter(|(_, link)| link.active)
            .map(|(name, _)| name)
            .collect();
        let links: serde_json::Map<String, Value> = state
            .links
            .iter()
            .map(|(name, link)| {
                let data_lines = self
                    .links
                    .get(name)
                    .map_or(0, |l| l.data_lines.load(Ordering::Relaxed));
                let address = self.links.get(name).map(|l| l.addr.to_string());
                let entry = json!({
                    "connected": link.active,
                    "since_ms": link.since_ms,
                    "address": address,
                    "why": link.why,
                    "data_lines": data_lines,
                    "reported": link.reported,
                });
                (name.clone(), entry)
            })
            .collect();
        json!({
            "app": self.app,
            "instance": self.instance,
            "role": role.role,
            "epoch": role.epoch,
            "pid": std::process::id(),
            "active": active,
            "links": links,
            "admin_edits": self.admin_edits.load(Ordering::Relaxed),
        })
    }

    /// Enables link `name`; answers once the switch said `OK`.
    async fn enable(self: Arc<Self>, name: String) -> Result<Value, OpError> {
        let Some(link) = self.links.get(&name) else {
            return Err(unknown_link(&name));
        };
        let _op = link.op.lock().await;
        let current = self
            .lock()
            .links
            .get(&name)
            .and_then(|l| l.session.clone().map(|s| (s, l.active)));
        if let Some((ctl, active)) = current {
            if active {
                return Ok(json!({ "link": name, "active": true, "already": true }));
            }
            // A session dying by itself: wait until it is closed on the switch.
            wait_ended(ctl, self.liveness).await?;
        }

        let addr = link.addr;
        let deadline = Instant::now() + ENABLE_TIMEOUT;
        let stream =
            match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    return Err(OpError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("link {name}: cannot connect to the switch {addr}: {err}"),
                    ));
                }
                Err(_) => {
                    return Err(OpError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "link {name}: no connection to the switch {addr} within {} ms",
                            ENABLE_TIMEOUT.as_millis()
                        ),
                    ));
                }
            };
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        let mut reader = LineReader::new(read);
        let who = self.who();
        let sent = write_line(&mut write, &format!("LINK {who}"), WRITE_TIMEOUT).await;
        // From here on the switch may have opened a session.
        let last_sent = Instant::now();
        let answer = match sent {
            Ok(()) => match tokio::time::timeout_at(deadline, reader.next_line()).await {
                Ok(Ok(Some(line))) => Ok(line),
                Ok(Ok(None)) => Err("the switch closed the connection without answering".into()),
                Ok(Err(err)) => Err(format!("no answer from the switch: {err}")),
                Err(_) => Err(format!(
                    "no answer from the switch within {} ms",
                    ENABLE_TIMEOUT.as_millis()
                )),
            },
            Err(err) => Err(format!("cannot send LINK: {err}")),
        };
        let line = match answer {
            Ok(line) => line,
            Err(why) => {
                let why = format!("link {name} to {addr}: {why}");
                give_up(reader, write, last_sent + self.liveness).await;
                return Err(OpError::new(StatusCode::SERVICE_UNAVAILABLE, why));
            }
        };
        if line == "OK" {
            let id = self.next_session.fetch_add(1, Ordering::Relaxed);
            let (disable_tx, disable_rx) = mpsc::channel(1);
            let (ended_tx, ended_rx) = watch::channel(None);
            self.activate(
                &name,
                SessionCtl {
                    id,
                    disable: disable_tx,
                    ended: ended_rx,
                },
            );
            let session = ClientSession {
                cms: Arc::clone(&self),
                name: name.clone(),
                id,
                reader,
                write,
                last_sent,
            };
            tokio::spawn(session.run(disable_rx, ended_tx));
            return Ok(json!({ "link": name, "active": true }));
        }
        if let Some(reason) = line.strip_prefix("REFUSED") {
            return Err(OpError::new(
                StatusCode::CONFLICT,
                format!(
                    "link {name}: the switch {addr} refused: {}",
                    shorten(reason.trim())
                ),
            ));
        }
        if let Some(error) = line.strip_prefix("ERROR") {
            return Err(OpError::new(
                StatusCode::BAD_GATEWAY,
                format!(
                    "link {name}: the switch {addr} answered an error: {}",
                    shorten(error.trim())
                ),
            ));
        }
        let why = format!(
            "link {name}: the switch {addr} gave an unexpected answer {:?}",
            shorten(&line)
        );
        give_up(reader, write, last_sent + self.liveness).await;
        Err(OpError::new(StatusCode::BAD_GATEWAY, why))
    }

    /// Disables link `name`; answers once the session is certainly closed
    /// on the switch.
    async fn disable(self: Arc<Self>, name: String) -> Result<Value, OpError> {
        let Some(link) = self.links.get(&name) else {
            return Err(unknown_link(&name));
        };
        let _op = link.op.lock().await;
        let current = self.lock().links.get(&name).and_then(|l| l.session.clone());
        let Some(ctl) = current else {
            return Ok(json!({ "link": name, "active": false, "confirmed": "not active" }));
        };
        // Full or closed: the task is ending by itself; wait for it either way.
        let _ = ctl.disable.try_send(());
        let why = wait_ended(ctl, self.liveness).await?;
        Ok(json!({ "link": name, "active": false, "confirmed": why }))
    }

    /// Writes an admin edit: `key` (a manual edit) or `edit-<seq>`.
    async fn edit(&self, key: Option<String>, value: Option<String>) -> Result<Value, OpError> {
        let Some(dir) = &self.admin_dir else {
            return Err(OpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this CMS has no admin directory (--admin-dir)".into(),
            ));
        };
        let mut next_seq = self.next_seq.lock().await;
        let role = self.role.snapshot();
        if role.role != Role::Primary {
            return Err(OpError::new(
                StatusCode::CONFLICT,
                format!("not primary (role {}, epoch {})", role.role, role.epoch),
            ));
        }
        let seq = *next_seq;
        let key = key.unwrap_or_else(|| format!("edit-{seq}"));
        let value = value.unwrap_or_else(|| format!("{seq} {} {}\n", role.epoch, self.instance));
        let bytes = value.len();
        let (dir_owned, key_owned) = (dir.clone(), key.clone());
        let written = tokio::task::spawn_blocking(move || {
            write_atomic(&dir_owned, &key_owned, value.as_bytes(), true)
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return Err(OpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot write {}: {err}", dir.join(&key).display()),
                ));
            }
            Err(err) => {
                return Err(OpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the write of {key} failed: {err}"),
                ));
            }
        }
        *next_seq = seq + 1;
        self.admin_edits.fetch_add(1, Ordering::Relaxed);
        self.record(
            "edit",
            json!({ "seq": seq, "key": key, "epoch": role.epoch, "role": role.role }),
        );
        Ok(json!({ "seq": seq, "key": key, "bytes": bytes }))
    }
}

fn unknown_link(name: &str) -> OpError {
    OpError::new(
        StatusCode::NOT_FOUND,
        format!("no link named {:?} here", shorten(name)),
    )
}

/// Waits until a session task says its session is closed on the switch;
/// its own bounds end it within the liveness plus a few seconds.
async fn wait_ended(mut ctl: SessionCtl, liveness: Duration) -> Result<String, OpError> {
    let bound = liveness + DELIVERY_MARGIN + ENABLE_TIMEOUT + WRITE_TIMEOUT * 2;
    match tokio::time::timeout(bound, ctl.ended.wait_for(Option::is_some)).await {
        Ok(Ok(why)) => Ok(why.clone().unwrap_or_default()),
        Ok(Err(_)) => Err(OpError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the session task ended without confirming the close".into(),
        )),
        Err(_) => Err(OpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the close was not confirmed within {} ms",
                bound.as_millis()
            ),
        )),
    }
}

/// Reports the reachability of link `name` in `$TANDEM_LINKS_DIR/<name>`
/// every `every`: `up` while its session is open and well, else what a
/// `PROBE` of its switch says. The file is rewritten only when its
/// contents change (or the last write failed).
async fn report_reachability(cms: Arc<Cms>, name: String, every: Duration) {
    let (Some(dir), Some(link)) = (cms.links_dir.clone(), cms.links.get(&name)) else {
        return;
    };
    let addr = link.addr;
    let who = cms.who();
    let timeout = every.min(MAX_PROBE_TIMEOUT);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: Option<String> = None;
    loop {
        ticks.tick().await;
        let active = cms.lock().links.get(&name).is_some_and(|l| l.active);
        let verdict = if active {
            Ok(())
        } else {
            probe(addr, &who, timeout).await
        };
        let report = match verdict {
            Ok(()) => "up\n".to_owned(),
            // One line: the reason must not break it.
            Err(why) => format!("down {}\n", why.replace(['\n', '\r'], " ")),
        };
        if let Some(link) = cms.lock().links.get_mut(&name) {
            link.reported = Some(report.trim_end().to_owned());
        }
        if written.as_deref() == Some(report.as_str()) {
            continue;
        }
        tracing::debug!(link = %name, report = report.trim_end(), "link reachability changed");
        // This task is the only writer of the file: no lock needed.
        let (dir, file) = (dir.clone(), name.clone());
        let bytes = report.clone().into_bytes();
        let write =
            tokio::task::spawn_blocking(move || write_atomic(&dir, &file, &bytes, false)).await;
        match write {
            Ok(Ok(())) => written = Some(report),
            Ok(Err(err)) => {
                written = None;
                tracing::warn!(link = %name, %err, "cannot write the link report");
            }
            Err(err) => {
                written = None;
                tracing::warn!(link = %name, %err, "the write of the link report failed");
            }
        }
    }
}

/// Asks the switch at `addr` whether `who` could link to it now, on a
/// connection of its own, within `timeout`: `Ok` for `OK`, else why not
/// (`REFUSED WHY` gives `WHY`).
async fn probe(addr: SocketAddr, who: &str, timeout: Duration) -> Result<(), String> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to the switch {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read, mut write) = stream.into_split();
        write_line(&mut write, &format!("PROBE {who}"), timeout)
            .await
            .map_err(|e| format!("cannot send PROBE to the switch {addr}: {e}"))?;
        match LineReader::new(read).next_line().await {
            Ok(Some(line)) if line == "OK" => Ok(()),
            Ok(Some(line)) => match refused(&line) {
                Some(why) if !why.is_empty() => Err(shorten(why)),
                Some(_) => Err(format!("the switch {addr} refused")),
                None => Err(format!(
                    "the switch {addr} answered {:?} to PROBE",
                    shorten(&line)
                )),
            },
            Ok(None) => Err(format!(
                "the switch {addr} closed the connection without answering"
            )),
            Err(err) => Err(format!("no answer from the switch {addr}: {err}")),
        }
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(verdict) => verdict,
        Err(_) => Err(format!(
            "no answer from the switch {addr} within {} ms",
            timeout.as_millis()
        )),
    }
}

/// The reason of a `REFUSED` or `REFUSED WHY` line (trimmed), `None` for
/// any other line.
fn refused(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("REFUSED")?;
    (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim())
}

/// After a `LINK` without a clear answer, the switch may hold a session
/// the CMS does not know of: resets the connection and waits until the
/// switch's silence timer (`silent_from` + its liveness) has closed it.
async fn give_up(reader: LineReader<OwnedReadHalf>, write: OwnedWriteHalf, silent_from: Instant) {
    reset(reader, write);
    tokio::time::sleep_until(silent_from + DELIVERY_MARGIN).await;
}

/// Closes a connection with a reset (`SO_LINGER` 0): lines not yet sent are
/// dropped rather than delivered late.
fn reset(reader: LineReader<OwnedReadHalf>, write: OwnedWriteHalf) {
    let read = reader.into_inner();
    if let Ok(stream) = read.reunite(write) {
        let _ = stream.set_zero_linger();
    }
}

/// The CMS's side of an open session.
struct ClientSession {
    cms: Arc<Cms>,
    name: String,
    id: u64,
    reader: LineReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    /// When the CMS last sent a line that keeps the session alive.
    last_sent: Instant,
}

impl ClientSession {
    async fn run(mut self, mut disable: mpsc::Receiver<()>, ended: watch::Sender<Option<String>>) {
        let liveness = self.cms.liveness;
        let mut alive = tokio::time::interval(liveness / 3);
        alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let data_lines = self.cms.links.get(&self.name).map(|l| &l.data_lines);

        let end = loop {
            tokio::select! {
                biased;
                Some(()) = disable.recv() => break End::Disable,
                _ = alive.tick() => {
                    let sent = write_line(&mut self.write, "ALIVE", liveness / 3).await;
                    // Even a failed write may have sent bytes.
                    self.last_sent = Instant::now();
                    if let Err(err) = sent {
                        let why = format!("cannot send ALIVE: {err}");
                        break if peer_closed(&err) { End::Closed(why) } else { End::Uncertain(why) };
                    }
                }
                line = self.reader.next_line() => match line {
                    Ok(Some(line)) => {
                        last_heard = Instant::now();
                        if line.starts_with("DATA ") {
                            if let Some(count) = data_lines {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            tracing::warn!(link = %self.name, "unexpected line from the switch: {:?}", shorten(&line));
                        }
                    }
                    Ok(None) => break End::Closed("the switch closed the session".into()),
                    Err(err) if peer_closed(&err) => {
                        break End::Closed(format!("the switch closed the connection: {err}"));
                    }
                    Err(err) => break End::Uncertain(format!("connection lost: {err}")),
                },
                () = tokio::time::sleep_until(last_heard + liveness) => {
                    break End::Uncertain(format!(
                        "the switch was silent for {} ms",
                        last_heard.elapsed().as_millis()
                    ));
                }
            }
        };
        let (cms, name, id) = (Arc::clone(&self.cms), self.name.clone(), self.id);
        let why = match end {
            End::Closed(why) => why,
            End::Uncertain(why) => {
                // Unusable now; closed on the switch only after its timer.
                cms.deactivate(&name, id, &why, false);
                self.wait_out(&why).await
            }
            End::Disable => self.bye().await,
        };
        cms.deactivate(&name, id, &why, true);
        ended.send_replace(Some(why));
    }

    /// Sends `BYE` and waits for the first of `BYE-OK`, the switch closing
    /// the connection, or the end of the switch's silence timer.
    async fn bye(mut self) -> String {
        let drain = self.last_sent + self.cms.liveness + DELIVERY_MARGIN;
        let reader = &mut self.reader;
        let write = &mut self.write;
        let exchange = async {
            write_line(write, "BYE", WRITE_TIMEOUT).await?;
            loop {
                match reader.next_line().await? {
                    Some(line) if line == "BYE-OK" => return Ok(true),
                    Some(_) => continue,
                    None => return Ok(false),
                }
            }
        };
        let outcome = tokio::time::timeout_at(drain, exchange).await;
        match outcome {
            Ok(Ok(true)) => "disabled: the switch confirmed the close (BYE-OK)".into(),
            Ok(Ok(false)) => "disabled: the switch closed the session".into(),
            Ok(Err(err)) if peer_closed(&err) => {
                format!("disabled: the switch closed the connection ({err})")
            }
            Ok(Err(err)) => {
                let why = format!("disabled: no BYE-OK ({err})");
                self.wait_out(&why).await
            }
            Err(_) => {
                let why = "disabled: no BYE-OK".to_owned();
                self.wait_out(&why).await
            }
        }
    }

    /// Resets the connection and waits until the switch's silence timer has
    /// certainly closed the session: liveness + margin after the last line
    /// sent.
    async fn wait_out(self, why: &str) -> String {
        let drain = self.last_sent + self.cms.liveness + DELIVERY_MARGIN;
        reset(self.reader, self.write);
        tokio::time::sleep_until(drain).await;
        format!(
            "{why}; closed by the switch's liveness timer ({} ms after the last ALIVE)",
            (self.cms.liveness + DELIVERY_MARGIN).as_millis()
        )
    }
}

/// The highest `N` of the `edit-N` files in `dir` (0 if none).
fn highest_edit(dir: &Path) -> anyhow::Result<u64> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the admin directory {}", dir.display()))?;
    let mut highest = 0;
    for entry in entries {
        let entry =
            entry.with_context(|| format!("cannot read the admin directory {}", dir.display()))?;
        let name = entry.file_name();
        let seq = name
            .to_str()
            .and_then(|n| n.strip_prefix("edit-"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            highest = highest.max(seq);
        }
    }
    Ok(highest)
}

/// While primary, writes an edit every `every`.
async fn write_edits(cms: Arc<Cms>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if cms.role.snapshot().role != Role::Primary {
            continue;
        }
        match cms.edit(None, None).await {
            Ok(_) => {}
            // Demoted meanwhile.
            Err(err) if err.status == StatusCode::CONFLICT => {}
            Err(err) => tracing::warn!("automatic admin edit failed: {}", err.message),
        }
    }
}

/// Checks an admin edit key: a plain file name.
fn check_key(key: &str) -> Result<(), String> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && !key.contains('/')
        && !key.contains("..")
        && !key.starts_with('.')
        && !key.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not an admin key: a plain file name (1 to {MAX_KEY_BYTES} bytes, no '/', no '..', not starting with '.')",
            shorten(key)
        ))
    }
}

fn router(cms: Arc<Cms>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/tandem/role", post(role_hook))
        .route("/tandem/link", post(link_hook))
        .route("/misbehave/both", post(misbehave_both))
        .route("/admin/edit", post(admin_edit))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(cms)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn op_result(result: Result<Value, OpError>) -> Response {
    match result {
        Ok(body) => Json(body).into_response(),
        Err(err) => {
            tracing::warn!(status = %err.status, "{}", err.message);
            error(err.status, err.message)
        }
    }
}

async fn root(State(cms): State<Arc<Cms>>) -> Response {
    Json(cms.state_json()).into_response()
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn role_hook(State(cms): State<Arc<Cms>>, body: Bytes) -> Response {
    let hook: HookBody = match serde_json::from_slice(&body) {
        Ok(hook) => hook,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                HookError::BadBody(format!(
                    "{err} (expected JSON {{\"role\": \"primary\", \"epoch\": 7}})"
                ))
                .to_string(),
            );
        }
    };
    match cms.role.apply_hook(&hook, "http") {
        Ok(snapshot) => {
            cms.record(
                "role",
                json!({ "role": snapshot.role, "epoch": snapshot.epoch }),
            );
            Json(cms.state_json()).into_response()
        }
        Err(err) => {
            tracing::warn!("refused role hook: {err}");
            let message = err.to_string();
            match err {
                HookError::Stale { current, .. } => (
                    StatusCode::CONFLICT,
                    Json(json!({ "error": message, "current": current })),
                )
                    .into_response(),
                HookError::BadBody(_)
                | HookError::UnknownRole(_)
                | HookError::WrongTarget { .. } => error(StatusCode::BAD_REQUEST, message),
            }
        }
    }
}

/// The body of the link hook. Unknown fields are ignored; `app` and
/// `instance`, when present, must name this instance.
#[derive(Debug, Deserialize)]
struct LinkHook {
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    instance: Option<String>,
    link: String,
    action: String,
}

async fn link_hook(State(cms): State<Arc<Cms>>, body: Bytes) -> Response {
    let hook: LinkHook = match serde_json::from_slice(&body) {
        Ok(hook) => hook,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid link hook: {err} (expected JSON {{\"app\": \"cms\", \"instance\": \"a\", \"link\": \"acd-main\", \"action\": \"enable\"}})"
                ),
            );
        }
    };
    let app_differs = hook.app.as_deref().is_some_and(|a| a != cms.app);
    let instance_differs = hook.instance.as_deref().is_some_and(|i| i != cms.instance);
    if app_differs || instance_differs {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "link hook for {}/{} sent to {}/{}",
                shorten(hook.app.as_deref().unwrap_or(&cms.app)),
                shorten(hook.instance.as_deref().unwrap_or(&cms.instance)),
                cms.app,
                cms.instance
            ),
        );
    }
    if !cms.links.contains_key(&hook.link) {
        return op_result(Err(unknown_link(&hook.link)));
    }
    // In a task of its own: a client that gives up must not cut an enable
    // or a disable in the middle.
    let cms = Arc::clone(&cms);
    let task = match hook.action.as_str() {
        "enable" => tokio::spawn(cms.enable(hook.link)),
        "disable" => tokio::spawn(cms.disable(hook.link)),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid link hook: action {:?} is not enable or disable",
                    shorten(other)
                ),
            );
        }
    };
    match task.await {
        Ok(result) => op_result(result),
        Err(err) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the link operation failed: {err}"),
        ),
    }
}

async fn misbehave_both(State(cms): State<Arc<Cms>>) -> Response {
    tracing::warn!("POST /misbehave/both: enabling every link at once");
    let tasks: Vec<(String, _)> = cms
        .links
        .keys()
        .map(|name| {
            let task = tokio::spawn(Arc::clone(&cms).enable(name.clone()));
            (name.clone(), task)
        })
        .collect();
    let mut results = serde_json::Map::new();
    for (name, task) in tasks {
        let (status, body) = match task.await {
            Ok(Ok(body)) => (StatusCode::OK, body),
            Ok(Err(err)) => (err.status, json!({ "error": err.message })),
            Err(err) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": err.to_string() }),
            ),
        };
        results.insert(name, json!({ "status": status.as_u16(), "body": body }));
    }
    Json(json!({ "results": results })).into_response()
}

/// The body of `POST /admin/edit`.
#[derive(Debug, Deserialize)]
struct EditRequest {
    key: String,
    value: String,
}

async fn admin_edit(State(cms): State<Arc<Cms>>, body: Bytes) -> Response {
    let request: EditRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid admin edit: {err} (expected JSON {{\"key\": \"agents\", \"value\": \"...\"}})"
                ),
            );
        }
    };
    if let Err(message) = check_key(&request.key) {
        return error(StatusCode::BAD_REQUEST, message);
    }
    op_result(cms.edit(Some(request.key), Some(request.value)).await)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such endpoint".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_specs_parse_name_and_address() {
        let spec: LinkSpec = "acd-main=127.0.0.1:7000".parse().unwrap();
        assert_eq!(spec.name, "acd-main");
        assert_eq!(spec.addr, "127.0.0.1:7000".parse().unwrap());
        for bad in [
            "acd-main",
            "=127.0.0.1:1",
            ".active=127.0.0.1:1",
            "a/b=127.0.0.1:1",
            "a=nowhere",
        ] {
            assert!(bad.parse::<LinkSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_are_read_from_refused_lines_only() {
        assert_eq!(refused("REFUSED cut"), Some("cut"));
        assert_eq!(
            refused("REFUSED  the switch is down "),
            Some("the switch is down")
        );
        assert_eq!(refused("REFUSED"), Some(""));
        assert_eq!(refused("REFUSEDX"), None);
        assert_eq!(refused("OK"), None);
    }

    #[test]
    fn admin_keys_are_plain_file_names() {
        assert!(check_key("agents").is_ok());
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        for bad in ["", "../x", "a/b", "..", ".hidden", "a..b", long.as_str()] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
