//! Load-balancer checks on the agent port (see [`crate::peer`]): a load
//! balancer that knows nothing of tandem asks the agent of an instance's
//! host about that one instance, and gets an answer from the agent's own
//! view of its host ([`HostView`]), so the answers stay right while the
//! store is unreachable.
//!
//! Three questions, each about one instance:
//!
//! - `primary`: is it the app's acknowledged primary (granted the role,
//!   acknowledged it at the granted epoch, running, healthy)? While it
//!   drains before a planned switchover (the app's `drain` period: it keeps
//!   its grant) and while it then steps down, it *drains*: it is still the
//!   only instance acting, but should get no new work.
//! - `backup`: is it a running, healthy backup (read-only traffic)?
//! - `member`: does it serve as a member of its app: a healthy N+1 member,
//!   the instance of an app without HA, a free pool worker (a busy one
//!   drains), or the acknowledged primary of an app that has one?
//!
//! Two ways to ask, both on the agent port:
//!
//! - HTTP (`GET`, `HEAD` or `OPTIONS`): `/lb/{app}/{check}` answers for the
//!   one instance of `app` on this host (the host is the address the check
//!   was sent to), `/lb/{app}/{instance}/{check}` for a named one (HAProxy:
//!   `http-check send meth GET uri-lf /lb/web/%[srv_name]/primary`). 200
//!   when up or draining, 503 when down, with a JSON [`Answer`]; 404 for an
//!   unknown app, instance or check, 400 when the app has several instances
//!   here and none is named.
//! - HAProxy's agent-check protocol: the connection's first line (HAProxy's
//!   `agent-send`) is `APP[/INSTANCE] [CHECK]`, the answer one line:
//!   `up 100%`, `up 0%` (drain: weight 0, shown as draining by HAProxy) or
//!   `down#why`. Weights rather than the words `ready`/`drain` leave the
//!   server's administrative state (MAINT or DRAIN set by an operator on
//!   HAProxy's admin socket) alone: `ready` would cancel it at every check.
//!
//! The port tells the two apart by the first byte: an HTTP request starts
//! with an upper-case method, an agent-check line with an app name, which
//! is lower case.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde_json::json;
use tandem_core::model::{AppRoles, Health, InstanceStatus, ProcessState, Role};
use tandem_core::topology::HaMode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{debug, warn};

use crate::peer::{HostView, InstanceView, PeerState};

/// How long a new connection may take to send its first byte.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an agent-check line may pause before it counts as complete
/// (an `agent-send` without a trailing newline).
const LINE_IDLE_TIMEOUT: Duration = Duration::from_millis(200);
/// How long writing an agent-check answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest agent-check line read.
const MAX_LINE_BYTES: usize = 256;
/// The longest reason sent in an agent-check answer.
const MAX_REASON_CHARS: usize = 200;
/// New connections whose first byte is awaited at once; beyond this the
/// port accepts nothing more until some have spoken.
const MAX_SNIFFING: usize = 256;
/// Agent-check connections answered at once; more are closed unanswered.
const MAX_AGENT_CHECKS: usize = 256;

/// What a load balancer asks about one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Is it the app's acknowledged primary?
    Primary,
    /// Is it a running, healthy backup?
    Backup,
    /// Does it serve as a member of its app?
    Member,
}

impl Check {
    /// The check named `s` (`primary`, `backup` or `member`).
    pub fn parse(s: &str) -> Option<Check> {
        match s {
            "primary" => Some(Check::Primary),
            "backup" => Some(Check::Backup),
            "member" => Some(Check::Member),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Primary => "primary",
            Check::Backup => "backup",
            Check::Member => "member",
        }
    }

    /// The check an agent-check line that names none asks: `primary` for
    /// the modes with a primary, `member` for the others.
    pub fn serving(ha: HaMode) -> Check {
        match ha {
            HaMode::WarmStandby | HaMode::HotStandby | HaMode::ColdStandby | HaMode::Singleton => {
                Check::Primary
            }
            HaMode::NPlus1 | HaMode::Pool | HaMode::None => Check::Member,
        }
    }
}

/// The verdict of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Send it work.
    Up,
    /// It may finish what it has, but send it nothing new.
    Drain,
    /// Send it nothing.
    Down,
}

/// A check's answer about one instance (the JSON body of the HTTP answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The app.
    pub app: String,
    /// The instance.
    pub instance: String,
    /// The host whose agent answers.
    pub host: String,
    /// The question.
    pub check: Check,
    /// The verdict.
    pub state: Verdict,
    /// The role the instance acts in.
    pub role: Role,
    /// The epoch that came with that role.
    pub epoch: u64,
    /// Its health.
    pub health: Health,
    /// Its process.
    pub process: ProcessState,
    /// Whether the agent reaches the store (the answer holds either way).
    pub store_reachable: bool,
    /// Why, in a few words.
    pub reason: String,
}

impl Answer {
    /// The HTTP status: 200 up or draining, 503 down.
    pub fn http_status(&self) -> StatusCode {
        match self.state {
            Verdict::Up | Verdict::Drain => StatusCode::OK,
            Verdict::Down => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The agent-check answer line, newline included.
    pub fn agent_reply(&self) -> String {
        match self.state {
            Verdict::Up => "up 100%\n".to_owned(),
            Verdict::Drain => "up 0%\n".to_owned(),
            Verdict::Down => down_reply(&self.reason),
        }
    }
}

/// A request that names no instance this agent can answer for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No instance of the app runs on this host.
    #[error("no instance of {app} runs on host {host}")]
    NoApp {
        /// The app asked for.
        app: String,
        /// This host.
        host: String,
    },
    /// The named instance does not run on this host.
    #[error("no instance {instance} of {app} runs on host {host} (here: {here})")]
    NoInstance {
        /// The app asked for.
        app: String,
        /// The instance asked for.
        instance: String,
        /// This host.
        host: String,
        /// The app's instances on this host.
        here: String,
    },
    /// Several instances of the app run here and none was named.
    #[error(
        "instances {here} of {app} run on host {host}: name one (/lb/{app}/INSTANCE/CHECK, or \"{app}/INSTANCE CHECK\" for an agent-check)"
    )]
    Ambiguous {
        /// The app asked for.
        app: String,
        /// This host.
        host: String,
        /// The app's instances on this host.
        here: String,
    },
}

/// The local instance a check is about: the named one, else the app's only
/// instance on this host.
pub fn lookup<'v>(
    view: &'v HostView,
    app: &str,
    instance: Option<&str>,
) -> Result<&'v InstanceView, LookupError> {
    let mut of_app = view.instances.iter().filter(|i| i.app == app).peekable();
    if of_app.peek().is_none() {
        return Err(LookupError::NoApp {
            app: app.to_owned(),
            host: view.host.clone(),
        });
    }
    let here = || {
        view.instances
            .iter()
            .filter(|i| i.app == app)
            .map(|i| i.instance.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match instance {
        Some(id) => of_app
            .find(|i| i.instance == id)
            .ok_or_else(|| LookupError::NoInstance {
                app: app.to_owned(),
                instance: id.to_owned(),
                host: view.host.clone(),
                here: here(),
            }),
        None => {
            let first = of_app.next();
            match (first, of_app.next()) {
                (Some(only), None) => Ok(only),
                _ => Err(LookupError::Ambiguous {
                    app: app.to_owned(),
                    host: view.host.clone(),
                    here: here(),
                }),
            }
        }
    }
}

/// Answers `check` about the local instance `instance` of `app` (or the
/// app's only local instance), from the agent's view alone.
pub fn answer(
    view: &HostView,
    app: &str,
    instance: Option<&str>,
    check: Check,
) -> Result<Answer, LookupError> {
    let iv = lookup(view, app, instance)?;
    let (state, reason) = judge(iv, view.roles.get(&iv.app), check);
    let s = &iv.status;
    Ok(Answer {
        app: iv.app.clone(),
        instance: iv.instance.clone(),
        host: view.host.clone(),
        check,
        state,
        role: s.acting,
        epoch: s.acting_epoch,
        health: s.health,
        process: s.process,
        store_reachable: view.store_reachable,
        reason,
    })
}

/// The verdict of `check` on one instance, given the last role assignment
/// of its app the agent applied, and why.
pub fn judge(iv: &InstanceView, roles: Option<&AppRoles>, check: Check) -> (Verdict, String) {
    let s = &iv.status;
    if iv.fenced && s.acting == Role::Primary && check != Check::Backup {
        return (
            Verdict::Down,
            "stepping down: its host's lease may be lost".to_owned(),
        );
    }
    match check {
        Check::Primary => judge_primary(s, &iv.instance, roles),
        Check::Backup => {
            if s.process != ProcessState::Running {
                (Verdict::Down, not_running(s))
            } else if s.acting != Role::Backup {
                (
                    Verdict::Down,
                    format!("not a backup: {} (epoch {})", s.acting, s.acting_epoch),
                )
            } else if let Some(why) = unhealthy(s) {
                (Verdict::Down, format!("backup, but {why}"))
            } else {
                (Verdict::Up, format!("backup (epoch {})", s.acting_epoch))
            }
        }
        Check::Member => {
            if s.acting == Role::Primary {
                return judge_primary(s, &iv.instance, roles);
            }
            if s.process != ProcessState::Running {
                return (Verdict::Down, not_running(s));
            }
            let verdict = match s.acting {
                Role::Active | Role::Free => Verdict::Up,
                Role::Busy => Verdict::Drain,
                other => return (Verdict::Down, format!("not a member: {other}")),
            };
            match unhealthy(s) {
                Some(why) => (Verdict::Down, format!("{}, but {why}", s.acting)),
                None if verdict == Verdict::Drain => {
                    (verdict, "busy: finishing its work, no new work".to_owned())
                }
                None => (verdict, s.acting.to_string()),
            }
        }
    }
}

fn judge_primary(s: &InstanceStatus, id: &str, roles: Option<&AppRoles>) -> (Verdict, String) {
    if s.process != ProcessState::Running {
        return (Verdict::Down, not_running(s));
    }
    if s.acting != Role::Primary {
        return (
            Verdict::Down,
            format!("not primary: {} (epoch {})", s.acting, s.acting_epoch),
        );
    }
    let Some(roles) = roles else {
        return (
            Verdict::Down,
            "no role assignment of its app received yet".to_owned(),
        );
    };
    if let Some(grant) = roles.primary.as_ref().filter(|g| g.instance == id) {
        // The same test as the API's acknowledged primary (a promotion in
        // flight reports the new epoch, but as promoting).
        if !s.has_acknowledged(grant) {
            return (
                Verdict::Down,
                format!(
                    "granted the primary role at epoch {}, not acknowledged yet",
                    grant.epoch
                ),
            );
        }
        let draining = roles.switchover.as_ref().filter(|sw| sw.drain.is_some());
        return match (unhealthy(s), draining) {
            (Some(why), _) => (
                Verdict::Down,
                format!("primary (epoch {}), but {why}", grant.epoch),
            ),
            // Still the only primary, but about to step down: requests in
            // flight finish, new ones wait for the next primary.
            (None, Some(sw)) => (
                Verdict::Drain,
                format!(
                    "draining before a planned switchover to {} (epoch {}): no new work",
                    sw.to, grant.epoch
                ),
            ),
            (None, None) => (Verdict::Up, format!("primary (epoch {})", grant.epoch)),
        };
    }
    let stepping_down = roles
        .stepping_down
        .as_ref()
        .is_some_and(|sd| sd.grant.instance == id);
    if stepping_down {
        if let Some(why) = unhealthy(s) {
            return (
                Verdict::Down,
                format!("stepping down (epoch {}), and {why}", s.acting_epoch),
            );
        }
        // Withdrawn but not yet demoted: still the only instance acting.
        if let Some(sw) = &roles.switchover {
            return (
                Verdict::Drain,
                format!(
                    "stepping down for a planned switchover to {} (epoch {})",
                    sw.to, s.acting_epoch
                ),
            );
        }
        return (Verdict::Down, format!("stepping down: {}", roles.reason));
    }
    (
        Verdict::Down,
        format!("the primary role is not granted to it: {}", roles.reason),
    )
}

fn not_running(s: &InstanceStatus) -> String {
    let process = match s.process {
        ProcessState::Pending => "not started yet",
        ProcessState::Starting => "starting",
        ProcessState::Running => "running",
        ProcessState::Backoff => "exited, waiting to restart",
        ProcessState::Stopped => "stopped",
    };
    match &s.last_exit {
        Some(exit) if s.process == ProcessState::Backoff => format!("{process} ({exit})"),
        _ => process.to_owned(),
    }
}

fn unhealthy(s: &InstanceStatus) -> Option<String> {
    match s.health {
        Health::Healthy => None,
        Health::Unknown => Some("its health is not known yet".to_owned()),
        Health::Unhealthy => Some(match &s.health_detail {
            Some(detail) => format!("unhealthy: {detail}"),
            None => "unhealthy".to_owned(),
        }),
    }
}

/// `down#why`, on one line.
fn down_reply(why: &str) -> String {
    let why: String = why
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_REASON_CHARS)
        .collect();
    format!("down#{why}\n")
}

/// A parsed agent-check line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRequest {
    /// The app.
    pub app: String,
    /// The instance, if named.
    pub instance: Option<String>,
    /// The check, if named.
    pub check: Option<Check>,
}

/// The usage sent back with a malformed agent-check line.
const AGENT_USAGE: &str = "expected \"APP[/INSTANCE] [primary|backup|member]\" (HAProxy: agent-send \"web/a primary\\n\")";

/// Parses an agent-check line: `APP[/INSTANCE] [CHECK]`.
pub fn parse_agent_line(line: &str) -> Result<AgentRequest, String> {
    let mut words = line.split_whitespace();
    let Some(target) = words.next() else {
        return Err(format!("empty request: {AGENT_USAGE}"));
    };
    let check = match words.next() {
        None => None,
        Some(word) => Some(
            Check::parse(word).ok_or_else(|| format!("unknown check {word:?}: {AGENT_USAGE}"))?,
        ),
    };
    if words.next().is_some() {
        return Err(format!("too many words: {AGENT_USAGE}"));
    }
    let (app, instance) = match target.split_once('/') {
        Some((app, instance)) => (app, Some(instance)),
        None => (target, None),
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if !name_ok(app) || instance.is_some_and(|i| !name_ok(i)) {
        let shown: String = target.chars().take(64).collect();
        return Err(format!("bad app or instance name {shown:?}: {AGENT_USAGE}"));
    }
    Ok(AgentRequest {
        app: app.to_owned(),
        instance: instance.map(str::to_owned),
        check,
    })
}

/// The agent-check answer (one line, newline included) to `line`.
pub fn agent_reply(view: &HostView, line: &str) -> String {
    let request = match parse_agent_line(line) {
        Ok(r) => r,
        Err(e) => return down_reply(&e),
    };
    let iv = match lookup(view, &request.app, request.instance.as_deref()) {
        Ok(iv) => iv,
        Err(e) => return down_reply(&e.to_string()),
    };
    let check = request.check.unwrap_or_else(|| Check::serving(iv.ha));
    match answer(view, &iv.app, Some(&iv.instance), check) {
        Ok(a) => a.agent_reply(),
        Err(e) => down_reply(&e.to_string()),
    }
}

/// The HTTP check routes.
pub fn router() -> Router<PeerState> {
    Router::new()
        .route(
            "/lb/{app}/{check}",
            get(only_instance).options(only_instance),
        )
        .route(
            "/lb/{app}/{instance}/{check}",
            get(named_instance).options(named_instance),
        )
}

async fn only_instance(
    State(state): State<PeerState>,
    Path((app, check)): Path<(String, String)>,
) -> Response {
    respond(&state, &app, None, &check)
}

async fn named_instance(
    State(state): State<PeerState>,
    Path((app, instance, check)): Path<(String, String, String)>,
) -> Response {
    respond(&state, &app, Some(&instance), &check)
}

fn respond(state: &PeerState, app: &str, instance: Option<&str>, check: &str) -> Response {
    let mut response = match Check::parse(check) {
        None => error(
            StatusCode::NOT_FOUND,
            format!("unknown check {check:?}: expected primary, backup or member"),
        ),
        Some(check) => {
            let view = state.view.borrow();
            match answer(&view, app, instance, check) {
                Ok(a) => (a.http_status(), Json(a)).into_response(),
                Err(e @ LookupError::Ambiguous { .. }) => {
                    error(StatusCode::BAD_REQUEST, e.to_string())
                }
                Err(e) => error(StatusCode::NOT_FOUND, e.to_string()),
            }
        }
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The agent port's listener: HTTP connections go to the HTTP server,
/// HAProxy agent-checks are answered here (see the module docs).
pub struct CheckListener {
    tcp: TcpListener,
    view: watch::Receiver<HostView>,
    sniffing: FuturesUnordered<Pin<Box<dyn Future<Output = Sniff> + Send>>>,
    agent_checks: Arc<Semaphore>,
}

impl CheckListener {
    /// Wraps the agent port's listener; agent-checks are answered from
    /// `view`.
    pub fn new(tcp: TcpListener, view: watch::Receiver<HostView>) -> CheckListener {
        CheckListener {
            tcp,
            view,
            sniffing: FuturesUnordered::new(),
            agent_checks: Arc::new(Semaphore::new(MAX_AGENT_CHECKS)),
        }
    }

    fn spawn_agent_check(&self, stream: TcpStream, first: Option<u8>) {
        let Ok(permit) = self.agent_checks.clone().try_acquire_owned() else {
            debug!("too many agent-checks at once: closing one unanswered");
            return;
        };
        let view = self.view.clone();
        tokio::spawn(async move {
            let _permit = permit;
            agent_check(stream, first, view).await;
        });
    }
}

/// What the first byte of a connection said.
enum Sniff {
    Http(Sniffed, SocketAddr),
    /// An agent-check, with its first byte (none if it sent nothing).
    Agent(TcpStream, Option<u8>),
    Closed,
}

async fn sniff(mut stream: TcpStream, addr: SocketAddr) -> Sniff {
    let mut first = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.read(&mut first)).await {
        // Every HTTP method is upper case; app names are lower case.
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => Sniff::Http(
            Sniffed {
                first: Some(first[0]),
                inner: stream,
            },
            addr,
        ),
        Ok(Ok(1)) => Sniff::Agent(stream, Some(first[0])),
        Ok(_) => Sniff::Closed,
        // Silent: an agent-check without `agent-send`; tell it what to send.
        Err(_) => Sniff::Agent(stream, None),
    }
}

impl axum::serve::Listener for CheckListener {
    type Io = Sniffed;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Sniffed, SocketAddr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.sniffing.len() < MAX_SNIFFING => {
                    match accepted {
                        Ok((stream, addr)) => {
                            let _ = stream.set_nodelay(true);
                            self.sniffing.push(Box::pin(sniff(stream, addr)));
                        }
                        Err(e) => {
                            if !matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionRefused
                                    | io::ErrorKind::ConnectionAborted
                                    | io::ErrorKind::ConnectionReset
                            ) {
                                // E.g. out of file descriptors: wait a little.
                                warn!(error = %e, "agent port: accept failed");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                }
                Some(sniffed) = self.sniffing.next(), if !self.sniffing.is_empty() => {
                    match sniffed {
                        Sniff::Http(io, addr) => return (io, addr),
                        Sniff::Agent(stream, first) => self.spawn_agent_check(stream, first),
                        Sniff::Closed => {}
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Reads one agent-check line (its first byte already read), answers it
/// and closes the connection.
async fn agent_check(mut stream: TcpStream, first: Option<u8>, view: watch::Receiver<HostView>) {
    let reply = match first {
        None => down_reply(&format!("no request received: {AGENT_USAGE}")),
        Some(first) => match read_line(&mut stream, first).await {
            Ok(line) => agent_reply(&view.borrow(), &line),
            Err(e) => down_reply(&e),
        },
    };
    let write = async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await
    };
    if let Ok(Err(e)) | Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(io::Error::other)
    {
        debug!(error = %e, "cannot answer an agent-check");
    }
}

/// The rest of a line that began with `first`: up to a newline, the end of
/// the stream, or a pause.
async fn read_line(stream: &mut TcpStream, first: u8) -> Result<String, String> {
    let mut line = vec![first];
    let mut buf = [0u8; MAX_LINE_BYTES];
    while !line.contains(&b'\n') {
        if line.len() > MAX_LINE_BYTES {
            return Err(format!(
                "request longer than {MAX_LINE_BYTES} bytes: {AGENT_USAGE}"
            ));
        }
        match tokio::time::timeout(LINE_IDLE_TIMEOUT, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => line.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(format!("cannot read the request: {e}")),
        }
    }
    let end = line.iter().position(|b| *b == b'\n').unwrap_or(line.len());
    line.truncate(end);
    String::from_utf8(line).map_err(|_| format!("request is not UTF-8: {AGENT_USAGE}"))
}

/// A connection whose first byte was read to tell HTTP from an
/// agent-check; reading it yields that byte again first.
pub struct Sniffed {
    first: Option<u8>,
    inner: TcpStream,
}

impl AsyncRead for Sniffed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() > 0
            && let Some(b) = this.first.take()
        {
            buf.put_slice(&[b]);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tandem_core::model::{PendingSwitchover, PrimaryGrant, SteppingDown};

    const SESSION: i64 = 7;

    fn status(process: ProcessState, acting: Role, epoch: u64, health: Health) -> InstanceStatus {
        InstanceStatus {
            host: "node1".into(),
            process,
            pid: (process == ProcessState::Running).then_some(100),
            session: SESSION,
            incarnation: 1,
            seen_generation: 1,
            health,
            health_detail: (health == Health::Unhealthy).then(|| "GET /health timed out".into()),
            acting,
            acting_epoch: epoch,
            promoting: false,
            drained: 0,
            links: Default::default(),
            active_links: Default::default(),
            admin: Default::default(),
            crash_looping: false,
            restarts: 0,
            last_exit: None,
        }
    }

    fn running(acting: Role, epoch: u64) -> InstanceStatus {
        status(ProcessState::Running, acting, epoch, Health::Healthy)
    }

    fn inst(app: &str, id: &str, ha: HaMode, status: InstanceStatus) -> InstanceView {
        InstanceView {
            app: app.into(),
            instance: id.into(),
            ha,
            status,
            fenced: false,
        }
    }

    #[test]
    fn a_primary_whose_host_fences_is_down_for_primary_and_member() {
        let roles = roles_with_primary("a", 4);
        let mut iv = inst("web", "a", HaMode::WarmStandby, running(Role::Primary, 4));
        assert_eq!(judge(&iv, Some(&roles), Check::Primary).0, Verdict::Up);
        iv.fenced = true;
        for check in [Check::Primary, Check::Member] {
            let (verdict, why) = judge(&iv, Some(&roles), check);
            assert_eq!(verdict, Verdict::Down, "{check:?}");
            assert!(why.contains("lease may be lost"), "{why}");
        }
    }

    fn grant(id: &str, epoch: u64) -> PrimaryGrant {
        PrimaryGrant {
            instance: id.into(),
            epoch,
            incarnation: 1,
            session: SESSION,
        }
    }

    fn roles_with_primary(id: &str, epoch: u64) -> AppRoles {
        AppRoles {
            generation: 3,
            epoch,
            primary: Some(grant(id, epoch)),
            reason: format!("promoted web/{id} (epoch {epoch})"),
            ..AppRoles::default()
        }
    }

    fn view(instances: Vec<InstanceView>, roles: Vec<(&str, AppRoles)>) -> HostView {
        HostView {
            host: "node1".into(),
            store_reachable: true,
            instances,
            roles: roles
                .into_iter()
                .map(|(a, r)| (a.to_owned(), r))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn web(status: InstanceStatus, roles: AppRoles) -> HostView {
        view(
            vec![inst("web", "a", HaMode::WarmStandby, status)],
            vec![("web", roles)],
        )
    }

    fn verdict(v: &HostView, check: Check) -> (Verdict, String) {
        let a = answer(v, "web", None, check).expect("answer");
        (a.state, a.reason)
    }

    #[test]
    fn the_acknowledged_healthy_primary_is_up_on_primary_and_member_only() {
        let v = web(running(Role::Primary, 4), roles_with_primary("a", 4));
        assert_eq!(
            verdict(&v, Check::Primary),
            (Verdict::Up, "primary (epoch 4)".into())
        );
        assert_eq!(verdict(&v, Check::Member).0, Verdict::Up);
        assert_eq!(
            verdict(&v, Check::Backup),
            (Verdict::Down, "not a backup: primary (epoch 4)".into())
        );
        let a = answer(&v, "web", Some("a"), Check::Primary).expect("answer");
        assert_eq!(a.http_status(), StatusCode::OK);
        assert_eq!(a.agent_reply(), "up 100%\n");
        assert_eq!(
            (a.role, a.epoch, a.host.as_str()),
            (Role::Primary, 4, "node1")
        );
    }

    #[test]
    fn primary_is_down_unless_granted_acknowledged_running_and_healthy() {
        let cases: Vec<(&str, InstanceStatus, AppRoles, &str)> = vec![
            (
                "a backup",
                running(Role::Backup, 4),
                roles_with_primary("b", 4),
                "not primary: backup (epoch 4)",
            ),
            (
                "killed, waiting to restart",
                InstanceStatus {
                    last_exit: Some("killed by signal 9".into()),
                    ..status(ProcessState::Backoff, Role::Stopped, 4, Health::Unknown)
                },
                roles_with_primary("a", 4),
                "exited, waiting to restart (killed by signal 9)",
            ),
            (
                "promotion in flight (still the old epoch)",
                running(Role::Primary, 3),
                roles_with_primary("a", 4),
                "granted the primary role at epoch 4, not acknowledged yet",
            ),
            (
                "granted to another incarnation",
                InstanceStatus {
                    incarnation: 2,
                    ..running(Role::Primary, 4)
                },
                roles_with_primary("a", 4),
                "granted the primary role at epoch 4, not acknowledged yet",
            ),
            (
                "granted in another agent session",
                InstanceStatus {
                    session: SESSION + 1,
                    ..running(Role::Primary, 4)
                },
                roles_with_primary("a", 4),
                "granted the primary role at epoch 4, not acknowledged yet",
            ),
            (
                "unhealthy",
                status(ProcessState::Running, Role::Primary, 4, Health::Unhealthy),
                roles_with_primary("a", 4),
                "primary (epoch 4), but unhealthy: GET /health timed out",
            ),
            (
                "health not known yet",
                status(ProcessState::Running, Role::Primary, 4, Health::Unknown),
                roles_with_primary("a", 4),
                "primary (epoch 4), but its health is not known yet",
            ),
            (
                "acting primary while the grant names another",
                running(Role::Primary, 4),
                AppRoles {
                    reason: "promoted web/b (epoch 5)".into(),
                    ..roles_with_primary("b", 5)
                },
                "the primary role is not granted to it: promoted web/b (epoch 5)",
            ),
            (
                "fenced",
                running(Role::Fenced, 4),
                AppRoles::default(),
                "not primary: fenced (epoch 4)",
            ),
        ];
        for (what, status, roles, reason) in cases {
            let v = web(status, roles);
            let a = answer(&v, "web", None, Check::Primary).expect("answer");
            assert_eq!(
                (a.state, a.reason.as_str()),
                (Verdict::Down, reason),
                "{what}"
            );
            assert_eq!(a.http_status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
            assert_eq!(a.agent_reply(), format!("down#{reason}\n"), "{what}");
        }
    }

    #[test]
    fn a_primary_without_any_role_assignment_is_down() {
        let v = view(
            vec![inst(
                "web",
                "a",
                HaMode::WarmStandby,
                running(Role::Primary, 4),
            )],
            vec![],
        );
        assert_eq!(
            verdict(&v, Check::Primary),
            (
                Verdict::Down,
                "no role assignment of its app received yet".into()
            )
        );
    }

    fn withdrawn(switchover: bool) -> AppRoles {
        AppRoles {
            generation: 4,
            epoch: 4,
            primary: None,
            stepping_down: Some(SteppingDown {
                grant: grant("a", 4),
                generation: 4,
            }),
            switchover: switchover.then(|| PendingSwitchover {
                intent: "i-1".into(),
                to: "b".into(),
                drain: None,
                link: None,
            }),
            reason: "switchover requested: demoting web/a, then promoting web/b".into(),
            ..AppRoles::default()
        }
    }

    #[test]
    fn a_primary_stepping_down_for_a_planned_switchover_drains() {
        let v = web(running(Role::Primary, 4), withdrawn(true));
        let a = answer(&v, "web", None, Check::Primary).expect("answer");
        assert_eq!(a.state, Verdict::Drain);
        assert_eq!(
            a.reason,
            "stepping down for a planned switchover to b (epoch 4)"
        );
        // Still the only one acting: HTTP says 200, HAProxy gets weight 0.
        assert_eq!(a.http_status(), StatusCode::OK);
        assert_eq!(a.agent_reply(), "up 0%\n");
        assert_eq!(verdict(&v, Check::Member).0, Verdict::Drain);
    }

    #[test]
    fn a_primary_draining_before_a_planned_switchover_drains_until_withdrawn() {
        let mut roles = roles_with_primary("a", 4);
        roles.switchover = Some(PendingSwitchover {
            intent: "i-1".into(),
            to: "b".into(),
            drain: Some(Box::new(tandem_core::model::Drain {
                ms: 300,
                generation: 3,
                asked_at_ms: None,
            })),
            link: None,
        });
        let v = web(running(Role::Primary, 4), roles.clone());
        let a = answer(&v, "web", None, Check::Primary).expect("answer");
        assert_eq!(
            (a.state, a.reason.as_str()),
            (
                Verdict::Drain,
                "draining before a planned switchover to b (epoch 4): no new work"
            )
        );
        assert_eq!(a.http_status(), StatusCode::OK);
        assert_eq!(a.agent_reply(), "up 0%\n");
        assert_eq!(verdict(&v, Check::Member).0, Verdict::Drain);
        // Drained, grant not withdrawn yet: still draining.
        let mut drained = running(Role::Primary, 4);
        drained.drained = 3;
        assert_eq!(
            verdict(&web(drained, roles.clone()), Check::Primary).0,
            Verdict::Drain
        );
        // Unhealthy while draining: down.
        let sick = status(ProcessState::Running, Role::Primary, 4, Health::Unhealthy);
        assert_eq!(verdict(&web(sick, roles), Check::Primary).0, Verdict::Down);
    }

    #[test]
    fn a_withdrawn_primary_is_down_once_demoted_or_if_not_planned_or_unhealthy() {
        // Demoted: it acknowledged the backup role.
        let v = web(running(Role::Backup, 4), withdrawn(true));
        assert_eq!(verdict(&v, Check::Primary).0, Verdict::Down);
        // Withdrawn by a failover, not a planned switchover.
        let v = web(running(Role::Primary, 4), withdrawn(false));
        assert_eq!(
            verdict(&v, Check::Primary),
            (
                Verdict::Down,
                "stepping down: switchover requested: demoting web/a, then promoting web/b".into()
            )
        );
        // Planned, but it stopped answering its health checks.
        let v = web(
            status(ProcessState::Running, Role::Primary, 4, Health::Unhealthy),
            withdrawn(true),
        );
        assert_eq!(verdict(&v, Check::Primary).0, Verdict::Down);
    }

    #[test]
    fn backup_is_up_only_for_a_running_healthy_backup() {
        let roles = roles_with_primary("b", 4);
        let v = web(running(Role::Backup, 4), roles.clone());
        assert_eq!(
            verdict(&v, Check::Backup),
            (Verdict::Up, "backup (epoch 4)".into())
        );
        assert_eq!(
            verdict(&v, Check::Member),
            (Verdict::Down, "not a member: backup".into())
        );
        let v = web(
            status(ProcessState::Running, Role::Backup, 4, Health::Unhealthy),
            roles.clone(),
        );
        assert_eq!(verdict(&v, Check::Backup).0, Verdict::Down);
        let v = web(
            status(ProcessState::Stopped, Role::Standby, 0, Health::Unknown),
            roles,
        );
        assert_eq!(
            verdict(&v, Check::Backup),
            (Verdict::Down, "stopped".into())
        );
    }

    #[test]
    fn member_is_up_for_healthy_active_and_free_and_drains_busy_workers() {
        let cases = [
            (HaMode::NPlus1, running(Role::Active, 0), Verdict::Up),
            (HaMode::None, running(Role::Active, 0), Verdict::Up),
            (HaMode::Pool, running(Role::Free, 0), Verdict::Up),
            (HaMode::Pool, running(Role::Busy, 0), Verdict::Drain),
            (
                HaMode::NPlus1,
                status(ProcessState::Running, Role::Active, 0, Health::Unhealthy),
                Verdict::Down,
            ),
            (
                HaMode::NPlus1,
                status(ProcessState::Running, Role::Active, 0, Health::Unknown),
                Verdict::Down,
            ),
            (
                HaMode::NPlus1,
                status(ProcessState::Stopped, Role::Standby, 0, Health::Unknown),
                Verdict::Down,
            ),
            (
                HaMode::Pool,
                status(ProcessState::Starting, Role::Free, 0, Health::Unknown),
                Verdict::Down,
            ),
        ];
        for (ha, status, expected) in cases {
            let v = view(vec![inst("api", "x", ha, status.clone())], vec![]);
            let a = answer(&v, "api", None, Check::Member).expect("answer");
            assert_eq!(a.state, expected, "{ha:?} {status:?}: {}", a.reason);
        }
    }

    fn two_apis() -> HostView {
        view(
            vec![
                inst("web", "a", HaMode::WarmStandby, running(Role::Primary, 4)),
                inst("api", "api1", HaMode::NPlus1, running(Role::Active, 0)),
                inst(
                    "api",
                    "api3",
                    HaMode::NPlus1,
                    status(ProcessState::Stopped, Role::Standby, 0, Health::Unknown),
                ),
            ],
            vec![("web", roles_with_primary("a", 4))],
        )
    }

    #[test]
    fn lookup_names_the_instance_or_takes_the_apps_only_one_here() {
        let v = two_apis();
        assert_eq!(lookup(&v, "web", None).expect("web").instance, "a");
        assert_eq!(
            lookup(&v, "api", Some("api3")).expect("api3").instance,
            "api3"
        );
        assert_eq!(
            lookup(&v, "api", None).map(|i| &i.instance),
            Err(LookupError::Ambiguous {
                app: "api".into(),
                host: "node1".into(),
                here: "api1, api3".into(),
            })
        );
        assert_eq!(
            lookup(&v, "api", Some("api2")).map(|i| &i.instance),
            Err(LookupError::NoInstance {
                app: "api".into(),
                instance: "api2".into(),
                host: "node1".into(),
                here: "api1, api3".into(),
            })
        );
        assert_eq!(
            lookup(&v, "db", None).map(|i| &i.instance),
            Err(LookupError::NoApp {
                app: "db".into(),
                host: "node1".into(),
            })
        );
    }

    #[test]
    fn agent_lines_name_an_app_an_optional_instance_and_an_optional_check() {
        assert_eq!(
            parse_agent_line("web/a primary\r"),
            Ok(AgentRequest {
                app: "web".into(),
                instance: Some("a".into()),
                check: Some(Check::Primary),
            })
        );
        assert_eq!(
            parse_agent_line("  api member "),
            Ok(AgentRequest {
                app: "api".into(),
                instance: None,
                check: Some(Check::Member),
            })
        );
        assert_eq!(
            parse_agent_line("web/b"),
            Ok(AgentRequest {
                app: "web".into(),
                instance: Some("b".into()),
                check: None,
            })
        );
        for bad in [
            "",
            "   ",
            "web primary extra",
            "web leader",
            "web/",
            "/a",
            "Web/a",
            "web/a/b primary",
            "wéb primary",
            "\u{0}",
        ] {
            let err = parse_agent_line(bad).expect_err(bad);
            assert!(err.contains("APP[/INSTANCE]"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn agent_replies_are_one_line_and_never_panic_on_bad_input() {
        let v = two_apis();
        assert_eq!(agent_reply(&v, "web/a primary"), "up 100%\n");
        // Without a check: the serving check of the app's mode.
        assert_eq!(agent_reply(&v, "web"), "up 100%\n");
        assert_eq!(agent_reply(&v, "api/api1"), "up 100%\n");
        assert_eq!(agent_reply(&v, "api/api3 member"), "down#stopped\n");
        assert_eq!(
            agent_reply(&v, "web/a backup"),
            "down#not a backup: primary (epoch 4)\n"
        );
        assert!(agent_reply(&v, "api member").starts_with("down#instances api1, api3 of api"));
        assert!(
            agent_reply(&v, "db primary").starts_with("down#no instance of db runs on host node1")
        );
        let long = "x".repeat(10_000);
        for bad in ["", "GET / HTTP/1.1", long.as_str(), "web/a primary\u{7}"] {
            let reply = agent_reply(&v, bad);
            assert!(reply.starts_with("down#"), "{bad:?}: {reply}");
            assert!(reply.ends_with('\n'), "{bad:?}: {reply}");
            assert_eq!(reply.matches('\n').count(), 1, "{bad:?}: {reply}");
            assert!(reply.len() < 300, "{bad:?}: {reply}");
        }
    }

    #[test]
    fn the_serving_check_follows_the_mode() {
        assert_eq!(Check::serving(HaMode::WarmStandby), Check::Primary);
        assert_eq!(Check::serving(HaMode::HotStandby), Check::Primary);
        assert_eq!(Check::serving(HaMode::ColdStandby), Check::Primary);
        assert_eq!(Check::serving(HaMode::Singleton), Check::Primary);
        assert_eq!(Check::serving(HaMode::NPlus1), Check::Member);
        assert_eq!(Check::serving(HaMode::Pool), Check::Member);
        assert_eq!(Check::serving(HaMode::None), Check::Member);
    }
}
