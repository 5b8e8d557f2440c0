//! The demo telephony switch (`tandem demo-switch`): serves the line
//! protocol of [`crate::cms`] to CMS clients and journals every session it
//! opens, closes or refuses.
//!
//! A *survivable* switch (started with `--main`) asks the main switch
//! `QUERY app/instance` before it accepts a `LINK`, and refuses a client
//! the main switch has a session with. If the main switch does not answer
//! within 300 ms, the survivable accepts.
//!
//! A `PROBE app/instance` (what a CMS sends to learn whether it could use a
//! link it does not hold) is answered `OK`, or `REFUSED <why>` while the
//! switch is down or the client is cut (below); a probe is never journaled,
//! nor is a connection that closes without a line. While the switch is down
//! its listener is closed, so a probe mostly fails to connect at all.
//!
//! # Cuts
//!
//! `POST /cut?who=app/instance` cuts one client off, as a broken cable
//! between it and the switch would: its session, if it has one, is closed
//! (journaled `close` with reason `cut`), and its `LINK` and `PROBE` are
//! answered `REFUSED cut` (a `LINK` journaled `refused`, reason `cut`)
//! until `POST /uncut?who=app/instance`. Other clients are not affected:
//! an operator can take away the link of one CMS and leave the others'.
//!
//! # Journal
//!
//! With `--journal FILE`, one JSON line per event, written before the
//! client hears of it: `{"at_ns","switch","event","who","reason"}`, with
//! `event` one of `open` (before `OK`), `close` (before `BYE-OK`, or before
//! the switch closes the connection) and `refused` (before the `REFUSED`
//! of a `LINK`). Probes and queries are not journaled.
//!
//! # Control API (`--control`)
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | `{"name","up","stalled","sessions":[who..],"cuts":[who..]}` |
//! | `POST /down` | closes every session (journaled `switch down`) and the listener: a connect is refused |
//! | `POST /up` | listens again on the same address |
//! | `POST /cut?who=app/instance` | cuts that client off (see Cuts): closes its session (journaled `close`, reason `cut`), refuses its `LINK` and `PROBE`; the state and `"closed": true` if a session was closed; 400 if `who` is missing or not `app/instance` |
//! | `POST /uncut?who=app/instance` | ends the cut; the state and `"was_cut"`; 400 as above |
//! | `POST /stall` | a network partition: every byte received is dropped, nothing is sent (not even the FIN of a session closed meanwhile), a connection closed by the client goes unnoticed; silence timers keep running |
//! | `POST /unstall` | ends the partition |

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::line::{LineReader, check_who, shorten, write_line};
use super::{JsonLines, unix_ns};

/// How often a session sends `DATA`.
const DATA_EVERY: Duration = Duration::from_millis(100);
/// How long a survivable switch waits for the main switch's answer.
const QUERY_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a connection may stay without its first line.
const FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on sending one line.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a session closed during a stall keeps its socket open.
const MAX_STALL_HOLD: Duration = Duration::from_secs(60);
/// Bound on the connections open at once; more are closed at once.
const MAX_CONNECTIONS: usize = 1024;
/// Why a cut client is refused, and the journaled reason of the close of
/// its session.
const CUT: &str = "cut";
/// Why a client is refused while the switch is down.
const DOWN: &str = "the switch is down";

/// Command-line flags of `tandem demo-switch`.
#[derive(clap::Args, Debug, Clone)]
pub struct SwitchArgs {
    /// Address of the line protocol (CMS links and probes), e.g. 127.0.0.1:7000.
    #[arg(long)]
    pub listen: SocketAddr,

    /// Name of this switch in the journal, e.g. "main" or "survivable".
    #[arg(long, value_parser = parse_switch_name)]
    pub name: String,

    /// A survivable switch: the main switch asked before accepting a link.
    #[arg(long)]
    pub main: Option<SocketAddr>,

    /// Append a JSON line per session event (open, close, refused).
    #[arg(long)]
    pub journal: Option<PathBuf>,

    /// Address of the HTTP control API (state, down/up, stall/unstall).
    #[arg(long)]
    pub control: Option<SocketAddr>,

    /// A session with no line from its client for this long is closed.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(200..=60_000))]
    pub liveness_ms: u64,
}

fn parse_switch_name(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{name:?} is not a switch name: 1 to 64 printable ASCII characters without spaces"
        ));
    }
    Ok(name.to_owned())
}

/// Serves the switch until SIGTERM or SIGINT.
///
/// Prints one line to stdout once it listens:
/// `demo-switch {name} listening on {addr}` (and `, control on {addr}`).
pub async fn run_switch(args: SwitchArgs) -> anyhow::Result<()> {
    parse_switch_name(&args.name).map_err(anyhow::Error::msg)?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let control = match args.control {
        Some(control) => Some(
            TcpListener::bind(control)
                .await
                .with_context(|| format!("cannot listen on {control} (--control)"))?,
        ),
        None => None,
    };
    let control_addr = control
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("cannot read the bound control address")?;
    {
        let mut stdout = std::io::stdout().lock();
        let control = control_addr
            .map(|a| format!(", control on {a}"))
            .unwrap_or_default();
        writeln!(
            stdout,
            "demo-switch {} listening on {addr}{control}",
            args.name
        )
        .and_then(|()| stdout.flush())
        .context("cannot write the startup line to stdout")?;
    }
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    serve_switch(args, listener, control, shutdown).await
}

/// Serves the switch on `listener` (and the control API on `control`) until
/// `shutdown` yields a reason. The caller binds (tests use port 0);
/// `args.listen` and `args.control` are ignored. After `POST /down`,
/// `POST /up` listens again on `listener`'s address.
pub async fn serve_switch(
    args: SwitchArgs,
    listener: TcpListener,
    control: Option<TcpListener>,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    parse_switch_name(&args.name).map_err(anyhow::Error::msg)?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let journal = args.journal.as_deref().map(JsonLines::open).transpose()?;
    let (stall, _) = watch::channel(false);
    let switch = Arc::new(Switch {
        name: args.name.clone(),
        main: args.main,
        liveness: Duration::from_millis(args.liveness_ms),
        addr,
        journal,
        state: Mutex::new(SwitchState {
            up: true,
            sessions: BTreeMap::new(),
            cuts: BTreeSet::new(),
            next_id: 0,
        }),
        acceptor: tokio::sync::Mutex::new(None),
        stall,
        connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    });
    *switch.acceptor.lock().await = Some(spawn_acceptor(Arc::clone(&switch), listener));

    let mut server = match control {
        Some(control) => {
            let app = control_router(Arc::clone(&switch));
            Some(tokio::spawn(async move { axum::serve(control, app).await }))
        }
        None => None,
    };
    tracing::info!(name = %args.name, %addr, main = ?args.main, liveness_ms = args.liveness_ms, "demo switch started");

    let control_ended = async {
        match &mut server {
            Some(server) => server.await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        reason = shutdown => {
            tracing::info!("{reason}: shutting down");
            Ok(())
        }
        ended = control_ended => match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("the control HTTP server stopped unexpectedly")),
            Ok(Err(err)) => Err(err).context("the control HTTP server failed"),
            Err(err) => Err(err).context("the control HTTP server task failed"),
        },
    };
    switch.down("switch stopping").await;
    if let Some(server) = server {
        server.abort();
    }
    outcome
}

/// One open session in the switch's table.
struct SessionEntry {
    id: u64,
    /// Fired (or dropped) when the session is closed from outside (down,
    /// cut); its close is journaled already.
    kill: oneshot::Sender<()>,
}

struct SwitchState {
    /// Whether the switch listens and accepts links.
    up: bool,
    /// Open sessions by client (`app/instance`).
    sessions: BTreeMap<String, SessionEntry>,
    /// Clients cut off (`POST /cut`): their `LINK` and `PROBE` are refused.
    cuts: BTreeSet<String>,
    next_id: u64,
}

impl SwitchState {
    /// Why `who` cannot use the switch now, whatever it asks: the switch
    /// is down or `who` is cut.
    fn refusal(&self, who: &str) -> Option<&'static str> {
        if !self.up {
            Some(DOWN)
        } else if self.cuts.contains(who) {
            Some(CUT)
        } else {
            None
        }
    }
}

/// Everything the connections and the control API share.
struct Switch {
    name: String,
    main: Option<SocketAddr>,
    liveness: Duration,
    /// The address the line protocol listens on (again, after `/up`).
    addr: SocketAddr,
    journal: Option<JsonLines>,
    state: Mutex<SwitchState>,
    /// The task accepting connections, while up. Locked across down/up.
    acceptor: tokio::sync::Mutex<Option<JoinHandle<()>>>,
    /// `true` while stalled (a simulated network partition).
    stall: watch::Sender<bool>,
    connections: Arc<Semaphore>,
}

impl Switch {
    fn lock(&self) -> std::sync::MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stalled(&self) -> bool {
        *self.stall.borrow()
    }

    /// Appends a journal line. Callers hold the state lock, so the journal
    /// follows the order of the table's changes.
    fn record(&self, event: &str, who: &str, reason: &str) -> std::io::Result<()> {
        tracing::info!(switch = %self.name, event, who, reason, "session event");
        match &self.journal {
            Some(journal) => journal.append(&json!({
                "at_ns": unix_ns(),
                "switch": self.name,
                "event": event,
                "who": who,
                "reason": reason,
            })),
            None => Ok(()),
        }
    }

    fn record_or_warn(&self, event: &str, who: &str, reason: &str) {
        if let (Err(err), Some(journal)) = (self.record(event, who, reason), &self.journal) {
            tracing::warn!(journal = %journal.path().display(), %err, "cannot write journal line");
        }
    }

    /// Why `who` cannot use the switch now (down, or `who` cut); a refusal
    /// is journaled when `journal` (a `LINK`, not a `PROBE`).
    fn refusal(&self, who: &str, journal: bool) -> Option<&'static str> {
        let state = self.lock();
        let refusal = state.refusal(who)?;
        if journal {
            self.record_or_warn("refused", who, refusal);
        }
        Some(refusal)
    }

    /// Opens a session for `who`: refused when down, when `who` is cut or
    /// already has a session here, or when the `open` line cannot be
    /// journaled.
    fn open(&self, who: &str, reason: &str) -> Result<(u64, oneshot::Receiver<()>), String> {
        let mut state = self.lock();
        let refusal = if let Some(refusal) = state.refusal(who) {
            Some(refusal.to_owned())
        } else if state.sessions.contains_key(who) {
            Some(format!("{who} already has a session here"))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.record_or_warn("refused", who, &refusal);
            return Err(refusal);
        }
        self.record("open", who, reason)
            .map_err(|err| format!("the switch cannot write its journal: {err}"))?;
        let id = state.next_id;
        state.next_id += 1;
        let (kill, killed) = oneshot::channel();
        state
            .sessions
            .insert(who.to_owned(), SessionEntry { id, kill });
        Ok((id, killed))
    }

    /// Removes session `id` of `who` and journals its close, unless it was
    /// closed already (by `/down`). Returns whether this call closed it.
    fn close(&self, who: &str, id: u64, reason: &str) -> bool {
        let mut state = self.lock();
        if state.sessions.get(who).is_none_or(|entry| entry.id != id) {
            return false;
        }
        self.record_or_warn("close", who, reason);
        state.sessions.remove(who);
        true
    }

    /// Cuts `who` off: closes its session if it has one (journaled `close`,
    /// reason `cut`) and refuses it until [`Switch::uncut`]. Returns whether
    /// a session was closed.
    fn cut(&self, who: &str) -> bool {
        let entry = {
            let mut state = self.lock();
            state.cuts.insert(who.to_owned());
            let entry = state.sessions.remove(who);
            if entry.is_some() {
                self.record_or_warn("close", who, CUT);
            }
            entry
        };
        match entry {
            Some(entry) => {
                let _ = entry.kill.send(());
                true
            }
            None => false,
        }
    }

    /// Ends the cut of `who`; returns whether it was cut.
    fn uncut(&self, who: &str) -> bool {
        self.lock().cuts.remove(who)
    }

    /// Closes every session (journaled with `reason`) and the listener; a
    /// connect is refused once this returns.
    async fn down(&self, reason: &str) -> Vec<String> {
        let mut acceptor = self.acceptor.lock().await;
        let closed: Vec<(String, SessionEntry)> = {
            let mut state = self.lock();
            state.up = false;
            let sessions = std::mem::take(&mut state.sessions);
            for who in sessions.keys() {
                self.record_or_warn("close", who, reason);
            }
            sessions.into_iter().collect()
        };
        let names = closed.iter().map(|(who, _)| who.clone()).collect();
        for (_, entry) in closed {
            let _ = entry.kill.send(());
        }
        if let Some(task) = acceptor.take() {
            task.abort();
            // The listener is dropped (closed) once the task is gone.
            let _ = task.await;
        }
        names
    }

    /// Listens again on the switch's address.
    async fn up(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut acceptor = self.acceptor.lock().await;
        if acceptor.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("cannot listen on {} again", self.addr))?;
        *acceptor = Some(spawn_acceptor(Arc::clone(self), listener));
        self.lock().up = true;
        Ok(())
    }

    /// Asks the main switch whether `who` has a session there:
    /// `Ok(true)` for CONNECTED, `Ok(false)` for FREE, `Err` otherwise.
    async fn ask_main(&self, main: SocketAddr, who: &str) -> Result<bool, String> {
        let ask = async {
            let mut stream = TcpStream::connect(main)
                .await
                .map_err(|e| format!("cannot connect to the main switch {main}: {e}"))?;
            let (read, mut write) = stream.split();
            write_line(&mut write, &format!("QUERY {who}"), QUERY_TIMEOUT)
                .await
                .map_err(|e| format!("cannot ask the main switch {main}: {e}"))?;
            let answer = LineReader::new(read)
                .next_line()
                .await
                .map_err(|e| format!("no answer from the main switch {main}: {e}"))?;
            match answer.as_deref() {
                Some("CONNECTED") => Ok(true),
                Some("FREE") => Ok(false),
                Some(other) => Err(format!(
                    "the main switch {main} answered {:?}",
                    shorten(other)
                )),
                None => Err(format!(
                    "the main switch {main} closed the connection without answering"
                )),
            }
        };
        match tokio::time::timeout(QUERY_TIMEOUT, ask).await {
            Ok(answer) => answer,
            Err(_) => Err(format!(
                "the main switch {main} did not answer within {} ms",
                QUERY_TIMEOUT.as_millis()
            )),
        }
    }
}

fn spawn_acceptor(switch: Arc<Switch>, listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(%err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&switch.connections).try_acquire_owned() else {
                tracing::warn!(%peer, "too many connections ({MAX_CONNECTIONS}); closing this one");
                continue;
            };
            let switch = Arc::clone(&switch);
            tokio::spawn(async move {
                handle_connection(&switch, stream, peer).await;
                drop(permit);
            });
        }
    })
}

/// One connection: a bare probe (no line), a `PROBE`, a `LINK` (then a
/// session), a `QUERY`, or an error.
async fn handle_connection(switch: &Switch, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = LineReader::new(read);
    let mut stall = switch.stall.subscribe();

    // The first line; bytes that arrive while stalled are dropped.
    let deadline = Instant::now() + FIRST_LINE_TIMEOUT;
    let first = loop {
        tokio::select! {
            line = reader.next_line() => match line {
                // A bare probe: it connected and closed.
                Ok(None) => return,
                Ok(Some(_)) if *stall.borrow_and_update() => continue,
                Ok(Some(line)) => break line,
                Err(err) => {
                    if !switch.stalled() {
                        let _ = write_line(&mut write, &format!("ERROR {err}"), WRITE_TIMEOUT).await;
                    }
                    return;
                }
            },
            () = tokio::time::sleep_until(deadline) => return,
        }
    };
    let received = Instant::now();

    let (verb, arg) = first.split_once(' ').unwrap_or((first.as_str(), ""));
    match verb {
        "LINK" | "QUERY" | "PROBE" => {
            if let Err(err) = check_who(arg) {
                let _ = write_line(&mut write, &format!("ERROR {err}"), WRITE_TIMEOUT).await;
                return;
            }
        }
        _ => {
            let error = format!(
                "ERROR unknown request {:?}: expected LINK, PROBE or QUERY app/instance",
                shorten(&first)
            );
            let _ = write_line(&mut write, &error, WRITE_TIMEOUT).await;
            return;
        }
    }
    let who = arg;

    if verb == "PROBE" {
        // Nothing journaled: a probe changes nothing.
        let answer = match switch.refusal(who, false) {
            Some(refusal) => format!("REFUSED {refusal}"),
            None => "OK".to_owned(),
        };
        let _ = write_line(&mut write, &answer, WRITE_TIMEOUT).await;
        let _ = write.shutdown().await;
        return;
    }

    if verb == "QUERY" {
        let connected = switch.lock().sessions.contains_key(who);
        let answer = if connected { "CONNECTED" } else { "FREE" };
        let _ = write_line(&mut write, answer, WRITE_TIMEOUT).await;
        let _ = write.shutdown().await;
        return;
    }

    // LINK: refused at once when down or cut (checked again on opening).
    if let Some(refusal) = switch.refusal(who, true) {
        let _ = write_line(&mut write, &format!("REFUSED {refusal}"), WRITE_TIMEOUT).await;
        return;
    }
    // A survivable switch first asks the main switch.
    let mut reason = format!("link from {peer}");
    if let Some(main) = switch.main {
        match switch.ask_main(main, who).await {
            Ok(true) => {
                let refusal = format!("{who} is connected to the main switch");
                {
                    let _state = switch.lock();
                    switch.record_or_warn("refused", who, &refusal);
                }
                let _ = write_line(&mut write, &format!("REFUSED {refusal}"), WRITE_TIMEOUT).await;
                return;
            }
            Ok(false) => reason.push_str("; the main switch says FREE"),
            Err(why) => {
                tracing::info!(switch = %switch.name, who, "accepting: {why}");
                reason.push_str(&format!("; accepted without the main switch: {why}"));
            }
        }
    }
    let (id, killed) = match switch.open(who, &reason) {
        Ok(opened) => opened,
        Err(refusal) => {
            let _ = write_line(&mut write, &format!("REFUSED {refusal}"), WRITE_TIMEOUT).await;
            return;
        }
    };
    let session = Session {
        switch,
        who,
        id,
        write,
    };
    session.run(reader, killed, stall, received).await;
}

/// An open session on the switch's side.
struct Session<'a> {
    switch: &'a Switch,
    who: &'a str,
    id: u64,
    write: OwnedWriteHalf,
}

impl Session<'_> {
    /// Sends `OK`, then `DATA` every 100 ms, and reads `ALIVE` and `BYE`
    /// until the client leaves, falls silent, or the switch goes down.
    async fn run(
        mut self,
        mut reader: LineReader<tokio::net::tcp::OwnedReadHalf>,
        mut killed: oneshot::Receiver<()>,
        mut stall: watch::Receiver<bool>,
        received: Instant,
    ) {
        let liveness = self.switch.liveness;
        let write_timeout = WRITE_TIMEOUT.min(liveness);
        let mut last_heard = received;
        let mut ok_sent = false;
        let mut data = tokio::time::interval(DATA_EVERY);
        data.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        // A close seen while stalled (a partition) counts only afterwards.
        let mut closed_while_stalled: Option<String> = None;

        let reason = loop {
            let stalled = *stall.borrow_and_update();
            if !stalled {
                if let Some(why) = closed_while_stalled.take() {
                    break Some(why);
                }
                if !ok_sent {
                    if let Err(err) = write_line(&mut self.write, "OK", write_timeout).await {
                        break Some(format!("cannot send OK: {err}"));
                    }
                    ok_sent = true;
                }
            }
            tokio::select! {
                // Closed (and journaled) by /down or /cut.
                _ = &mut killed => break None,
                _ = stall.changed() => {}
                () = tokio::time::sleep_until(last_heard + liveness) => {
                    break Some(format!("silent for {} ms", last_heard.elapsed().as_millis()));
                }
                _ = data.tick(), if ok_sent && !stalled => {
                    n += 1;
                    if let Err(err) = write_line(&mut self.write, &format!("DATA {n}"), write_timeout).await {
                        break Some(format!("cannot send DATA: {err}"));
                    }
                }
                line = reader.next_line(), if closed_while_stalled.is_none() => {
                    let ended = match line {
                        Ok(None) => "connection closed by the client".to_owned(),
                        Err(err) => format!("connection lost: {err}"),
                        Ok(Some(_)) if self.switch.stalled() => continue,
                        Ok(Some(line)) => {
                            last_heard = Instant::now();
                            match line.as_str() {
                                "ALIVE" => continue,
                                "BYE" => {
                                    // Journal first: BYE-OK confirms a closed session.
                                    self.switch.close(self.who, self.id, "bye");
                                    let _ = write_line(&mut self.write, "BYE-OK", write_timeout).await;
                                    let _ = self.write.shutdown().await;
                                    return;
                                }
                                other => {
                                    let why = format!("protocol error: unexpected line {:?}", shorten(other));
                                    self.switch.close(self.who, self.id, &why);
                                    let error = format!("ERROR unexpected line {:?}: expected ALIVE or BYE", shorten(other));
                                    let _ = write_line(&mut self.write, &error, write_timeout).await;
                                    return;
                                }
                            }
                        }
                    };
                    if self.switch.stalled() {
                        closed_while_stalled = Some(ended);
                        continue;
                    }
                    break Some(ended);
                }
            }
        };
        if let Some(reason) = reason {
            self.switch.close(self.who, self.id, &reason);
        }
        if *stall.borrow() {
            // A partition: the client hears nothing, not even the close
            // (dropping the socket would send a FIN).
            let unstalled = stall.wait_for(|stalled| !*stalled);
            let _ = tokio::time::timeout(MAX_STALL_HOLD, unstalled).await;
        }
    }
}

fn control_router(switch: Arc<Switch>) -> Router {
    Router::new()
        .route("/", get(control_state))
        .route("/down", post(control_down))
        .route("/up", post(control_up))
        .route("/stall", post(control_stall))
        .route("/unstall", post(control_unstall))
        .route("/cut", post(control_cut))
        .route("/uncut", post(control_uncut))
        .fallback(not_found)
        .with_state(switch)
}

fn state_json(switch: &Switch) -> serde_json::Value {
    let state = switch.lock();
    json!({
        "name": switch.name,
        "up": state.up,
        "stalled": switch.stalled(),
        "sessions": state.sessions.keys().collect::<Vec<_>>(),
        "cuts": state.cuts.iter().collect::<Vec<_>>(),
    })
}

async fn control_state(State(switch): State<Arc<Switch>>) -> Response {
    Json(state_json(&switch)).into_response()
}

async fn control_down(State(switch): State<Arc<Switch>>) -> Response {
    let closed = switch.down("switch down").await;
    tracing::warn!(switch = %switch.name, ?closed, "POST /down: not listening any more");
    let mut body = state_json(&switch);
    body["closed"] = json!(closed);
    Json(body).into_response()
}

async fn control_up(State(switch): State<Arc<Switch>>) -> Response {
    match switch.up().await {
        Ok(()) => {
            tracing::info!(switch = %switch.name, "POST /up: listening again");
            Json(state_json(&switch)).into_response()
        }
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": format!("{err:#}") })),
        )
            .into_response(),
    }
}

async fn control_stall(State(switch): State<Arc<Switch>>) -> Response {
    switch.stall.send_replace(true);
    tracing::warn!(switch = %switch.name, "POST /stall: dropping all traffic");
    Json(state_json(&switch)).into_response()
}

async fn control_unstall(State(switch): State<Arc<Switch>>) -> Response {
    switch.stall.send_replace(false);
    tracing::info!(switch = %switch.name, "POST /unstall: traffic flows again");
    Json(state_json(&switch)).into_response()
}

/// The client named by `?who=app/instance`, or why there is none.
fn who_param(
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<String, String> {
    let Query(params) = query.map_err(|err| format!("invalid query: {err}"))?;
    let who = params
        .get("who")
        .ok_or_else(|| "missing ?who=app/instance".to_owned())?;
    check_who(who)?;
    Ok(who.clone())
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
}

async fn control_cut(
    State(switch): State<Arc<Switch>>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let who = match who_param(query) {
        Ok(who) => who,
        Err(message) => return bad_request(message),
    };
    let closed = switch.cut(&who);
    tracing::warn!(switch = %switch.name, who, closed, "POST /cut: refusing this client");
    let mut body = state_json(&switch);
    body["closed"] = json!(closed);
    Json(body).into_response()
}

async fn control_uncut(
    State(switch): State<Arc<Switch>>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Response {
    let who = match who_param(query) {
        Ok(who) => who,
        Err(message) => return bad_request(message),
    };
    let was_cut = switch.uncut(&who);
    tracing::info!(switch = %switch.name, who, was_cut, "POST /uncut: accepting this client again");
    let mut body = state_json(&switch);
    body["was_cut"] = json!(was_cut);
    Json(body).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "no such endpoint" })),
    )
        .into_response()
}
