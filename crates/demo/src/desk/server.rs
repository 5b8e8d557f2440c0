//! The desktop's HTTP server: the page and the library, logins (password
//! or token), the real-time channel, registration and initialisation, the
//! voice poller and the fault switches. The module root documents the API.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{self, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use super::token::{self, Claims, Secret, TOKEN_TTL_S};
use super::{DeskArgs, parse_site};

/// How often every open channel gets a `ping`.
const PING_EVERY: Duration = Duration::from_millis(250);
/// How often the voice service's health URL is polled.
const VOICE_EVERY: Duration = Duration::from_millis(200);
/// Bound on one poll of the voice service.
const VOICE_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound on a request body.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Channels open at once, at most.
const MAX_CHANNELS: usize = 1000;
/// Registered sessions remembered, at most.
const MAX_REGISTERED: usize = 10_000;
/// Channel events buffered per channel before it lags.
const EVENT_BUFFER: usize = 64;
/// How long a stop waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// The session cookie's name.
const COOKIE: &str = "tandem_desk_session";
/// The longest detail echoed from a failed poll.
const MAX_DETAIL_CHARS: usize = 200;
/// The desktop page; `__SITE__`, `__HYSTERESIS_MS__` and `__MIN_DWELL_MS__`
/// are filled in.
const PAGE: &str = include_str!("page.html");

/// What a service's state is, as the channel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ServiceState {
    service: String,
    available: bool,
    detail: String,
}

/// What goes out on every open channel.
#[derive(Debug, Clone)]
enum ChannelEvent {
    Service(ServiceState),
    Unregistered(String),
}

impl ChannelEvent {
    fn to_sse(&self) -> sse::Event {
        match self {
            ChannelEvent::Service(state) => service_event(state),
            ChannelEvent::Unregistered(detail) => sse::Event::default()
                .event("unregistered")
                .data(json!({ "detail": detail }).to_string()),
        }
    }
}

fn service_event(state: &ServiceState) -> sse::Event {
    sse::Event::default()
        .event("service")
        .data(json!(state).to_string())
}

/// One line per login, each written with one `write` on an `O_APPEND`
/// file (it survives a SIGKILL once the login is answered).
struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

impl Journal {
    fn open(path: &Path) -> anyhow::Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open journal {}", path.display()))?;
        Ok(Journal {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    fn line(&self, text: &str) {
        let mut line = String::with_capacity(text.len() + 1);
        line.push_str(text);
        line.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = file.write_all(line.as_bytes()).and_then(|()| file.flush()) {
            tracing::warn!(journal = %self.path.display(), %err, "cannot write journal line");
        }
    }
}

/// Everything the handlers share.
struct Desk {
    site: String,
    secret: Secret,
    password: String,
    page: String,
    journal: Option<Journal>,
    register_fault: AtomicBool,
    init_fault: AtomicBool,
    events: broadcast::Sender<ChannelEvent>,
    services: Mutex<BTreeMap<String, ServiceState>>,
    channels: AtomicUsize,
    /// Registered sessions: session id -> user.
    registered: Mutex<HashMap<String, String>>,
    /// Becomes `true` when the desk stops: ends every channel.
    shutdown: watch::Receiver<bool>,
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

impl Desk {
    fn services(&self) -> Vec<ServiceState> {
        self.services
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Records a service's availability; a change goes out on every channel.
    fn set_service(&self, service: &str, available: bool, detail: String) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let changed = services
            .get(service)
            .is_none_or(|old| old.available != available);
        if !changed {
            return;
        }
        let state = ServiceState {
            service: service.to_owned(),
            available,
            detail,
        };
        tracing::info!(site = %self.site, service, available, detail = %state.detail, "service state changed");
        services.insert(service.to_owned(), state.clone());
        // No channel open: nobody to tell.
        let _ = self.events.send(ChannelEvent::Service(state));
    }

    /// The claims of the request's session cookie; a 401 without a valid one.
    fn session(&self, headers: &HeaderMap) -> Result<Claims, Unauthorized> {
        let now = unix_now_s();
        let mut refused = None;
        let candidates = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().strip_prefix(COOKIE)?.strip_prefix('='));
        for candidate in candidates {
            match token::verify(&self.secret, candidate, now) {
                Ok(claims) => return Ok(claims),
                Err(err) => refused = Some(err),
            }
        }
        Err(Unauthorized(match refused {
            None => "no session: log in first (POST /login)".to_owned(),
            Some(err) => format!("the session is not valid at site {}: {err}", self.site),
        }))
    }
}

/// A request without a valid session: answered 401 with the reason.
struct Unauthorized(String);

impl IntoResponse for Unauthorized {
    fn into_response(self) -> Response {
        error(StatusCode::UNAUTHORIZED, self.0)
    }
}

/// Serves the desk; see [`super::serve_desk`].
pub(super) async fn serve(
    args: DeskArgs,
    listener: TcpListener,
    ready: impl FnOnce() -> anyhow::Result<()>,
    shutdown: impl Future<Output = &'static str>,
) -> anyhow::Result<()> {
    let site = parse_site(&args.site).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!args.password.is_empty(), "the demo password is empty");
    let secret = match (&args.sso_secret_file, &args.sso_secret) {
        (Some(path), _) => Secret::read(path),
        (None, Some(text)) => Secret::new(text.trim().as_bytes()),
        (None, None) => Err(
            "no single-sign-on secret: give --sso-secret-file or --sso-secret (TANDEM_DESK_SSO_SECRET)"
                .to_owned(),
        ),
    }
    .map_err(anyhow::Error::msg)?;
    let journal = args.journal.as_deref().map(Journal::open).transpose()?;
    let voice = match args.voice.as_deref() {
        Some(url) => Some(voice_poller(url)?),
        None => None,
    };
    let page = PAGE
        .replace("__SITE__", &site)
        .replace("__HYSTERESIS_MS__", &args.hysteresis_ms.to_string())
        .replace("__MIN_DWELL_MS__", &args.min_dwell_ms.to_string());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let desk = Arc::new(Desk {
        site: site.clone(),
        secret,
        password: args.password.clone(),
        page,
        journal,
        register_fault: AtomicBool::new(false),
        init_fault: AtomicBool::new(false),
        events: broadcast::channel(EVENT_BUFFER).0,
        services: Mutex::new(BTreeMap::new()),
        channels: AtomicUsize::new(0),
        registered: Mutex::new(HashMap::new()),
        shutdown: shutdown_rx.clone(),
    });
    let poller =
        voice.map(|(client, url)| tokio::spawn(poll_voice(Arc::clone(&desk), client, url)));

    let app = router(Arc::clone(&desk));
    let mut server_shutdown = shutdown_rx;
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_shutdown.wait_for(|down| *down).await;
            })
            .await
    });
    if let Err(err) = ready() {
        server.abort();
        if let Some(poller) = &poller {
            poller.abort();
        }
        return Err(err);
    }
    tracing::info!(%site, voice = ?args.voice, "demo desk started");

    let (outcome, server_done) = tokio::select! {
        reason = shutdown => {
            tracing::info!("{reason}: stopping");
            (Ok(()), false)
        }
        ended = &mut server => (match ended {
            Ok(Ok(())) => Err(anyhow::anyhow!("the HTTP server stopped unexpectedly")),
            Ok(Err(err)) => Err(err).context("the HTTP server failed"),
            Err(err) => Err(err).context("the HTTP server task failed"),
        }, true),
    };
    if let Some(poller) = &poller {
        poller.abort();
    }
    // Ends the channels too; nobody may be listening any more.
    let _ = shutdown_tx.send(true);
    if !server_done
        && tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
            .await
            .is_err()
    {
        tracing::warn!("requests still open after {SHUTDOWN_GRACE:?}; dropping them");
        server.abort();
    }
    outcome
}

fn router(desk: Arc<Desk>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/tandem-site.js", get(site_js))
        .route("/login", post(login))
        .route("/rt", get(channel))
        .route("/register", post(register))
        .route("/init", get(init))
        .route("/healthz", get(healthz))
        .route("/fault/register", post(fault_register))
        .route("/fault/init", post(fault_init))
        .route("/fault/unregister", post(fault_unregister))
        .route("/fault/clear", post(fault_clear))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(desk)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such resource")
}

async fn page(State(desk): State<Arc<Desk>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        desk.page.clone(),
    )
        .into_response()
}

async fn site_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        tandem_client::browser::SITE_JS,
    )
        .into_response()
}

async fn healthz(State(desk): State<Arc<Desk>>) -> Response {
    Json(json!({ "status": "ok", "site": desk.site })).into_response()
}

/// `POST /login`'s body: a password login or a token login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
}

const LOGIN_SHAPE: &str = r#"expected JSON {"user": "..", "password": ".."} or {"token": ".."}"#;

/// Equal in time independent of where `a` and `b` differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn login(State(desk): State<Arc<Desk>>, body: Bytes) -> Response {
    if body.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("the login has no body: {LOGIN_SHAPE}"),
        );
    }
    let body: LoginBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid login body ({err}): {LOGIN_SHAPE}"),
            );
        }
    };
    let now = unix_now_s();
    let (claims, token, via) = match (body.user, body.password, body.token) {
        (None, None, Some(token)) => match token::verify(&desk.secret, &token, now) {
            Ok(claims) => (claims, token, "token"),
            Err(err) => {
                tracing::warn!(site = %desk.site, %err, "token login refused");
                return error(
                    StatusCode::UNAUTHORIZED,
                    format!("the token is refused at site {}: {err}", desk.site),
                );
            }
        },
        (Some(user), Some(password), None) => {
            if let Err(err) = token::check_user(&user) {
                return error(StatusCode::BAD_REQUEST, err);
            }
            if !same_secret(&password, &desk.password) {
                tracing::warn!(site = %desk.site, %user, "password login refused");
                return error(StatusCode::UNAUTHORIZED, "wrong user name or password");
            }
            let session = match token::new_session() {
                Ok(session) => session,
                Err(err) => return error(StatusCode::INTERNAL_SERVER_ERROR, err),
            };
            let claims = Claims {
                user,
                session,
                expiry_unix_s: now.saturating_add(TOKEN_TTL_S),
            };
            let token = token::sign(&desk.secret, &claims);
            (claims, token, "password")
        }
        (_, _, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "give either a user and a password or a token, not both",
            );
        }
        (Some(_), None, None) => {
            return error(StatusCode::BAD_REQUEST, "missing field \"password\"");
        }
        (None, Some(_), None) => {
            return error(StatusCode::BAD_REQUEST, "missing field \"user\"");
        }
        (None, None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("missing fields: {LOGIN_SHAPE}"),
            );
        }
    };
    let line = format!(
        "login user={} session={} site={} via={via}",
        claims.user, claims.session, desk.site
    );
    tracing::info!("{line}");
    if let Some(journal) = &desk.journal {
        journal.line(&line);
    }
    let max_age = claims.expiry_unix_s.saturating_sub(now);
    let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    let mut response = Json(json!({
        "user": claims.user,
        "session": claims.session,
        "token": token,
        "site": desk.site,
    }))
    .into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        Err(err) => {
            // A token is base64url and a dot: this cannot happen.
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot set the session cookie: {err}"),
            );
        }
    }
    response
}

/// Counts an open channel while it lives.
struct OpenChannel(Arc<Desk>);

impl OpenChannel {
    fn acquire(desk: &Arc<Desk>) -> Option<OpenChannel> {
        desk.channels
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_CHANNELS).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenChannel(Arc::clone(desk)))
    }
}

impl Drop for OpenChannel {
    fn drop(&mut self) {
        self.0.channels.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One open channel's state.
struct Feed {
    first: VecDeque<sse::Event>,
    events: broadcast::Receiver<ChannelEvent>,
    ping: tokio::time::Interval,
    shutdown: watch::Receiver<bool>,
    open: OpenChannel,
}

enum Next {
    End,
    Ping,
    Got(Result<ChannelEvent, RecvError>),
}

impl Feed {
    async fn next(mut self) -> Option<(Result<sse::Event, Infallible>, Feed)> {
        loop {
            if let Some(event) = self.first.pop_front() {
                return Some((Ok(event), self));
            }
            let next = tokio::select! {
                biased;
                _ = self.shutdown.wait_for(|down| *down) => Next::End,
                got = self.events.recv() => Next::Got(got),
                _ = self.ping.tick() => Next::Ping,
            };
            match next {
                Next::End | Next::Got(Err(RecvError::Closed)) => return None,
                Next::Ping => {
                    let ping = sse::Event::default().event("ping").data("{}");
                    return Some((Ok(ping), self));
                }
                Next::Got(Ok(event)) => return Some((Ok(event.to_sse()), self)),
                Next::Got(Err(RecvError::Lagged(_))) => {
                    // Missed changes: the current state says it all.
                    self.first
                        .extend(self.open.0.services().iter().map(service_event));
                }
            }
        }
    }
}

async fn channel(State(desk): State<Arc<Desk>>, headers: HeaderMap) -> Response {
    let claims = match desk.session(&headers) {
        Ok(claims) => claims,
        Err(refused) => return refused.into_response(),
    };
    let Some(open) = OpenChannel::acquire(&desk) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many open channels (at most {MAX_CHANNELS})"),
        );
    };
    // Subscribed before the state is read: no change falls in between.
    let events = desk.events.subscribe();
    let mut first = VecDeque::new();
    first.push_back(
        sse::Event::default()
            .event("hello")
            .retry(Duration::from_millis(500))
            .data(
                json!({ "site": desk.site, "user": claims.user, "session": claims.session })
                    .to_string(),
            ),
    );
    first.extend(desk.services().iter().map(service_event));
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: `hello` already says the channel is up.
    ping.reset();
    let feed = Feed {
        first,
        events,
        ping,
        shutdown: desk.shutdown.clone(),
        open,
    };
    Sse::new(futures::stream::unfold(feed, Feed::next)).into_response()
}

async fn register(State(desk): State<Arc<Desk>>, headers: HeaderMap) -> Response {
    let claims = match desk.session(&headers) {
        Ok(claims) => claims,
        Err(refused) => return refused.into_response(),
    };
    if desk.register_fault.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "registration refused at site {}: the register fault is on",
                desk.site
            ),
        );
    }
    {
        let mut registered = desk.registered.lock().unwrap_or_else(|e| e.into_inner());
        if registered.len() >= MAX_REGISTERED && !registered.contains_key(&claims.session) {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many registrations (at most {MAX_REGISTERED})"),
            );
        }
        registered.insert(claims.session.clone(), claims.user.clone());
    }
    Json(json!({
        "registered": true,
        "user": claims.user,
        "session": claims.session,
        "site": desk.site,
    }))
    .into_response()
}

async fn init(State(desk): State<Arc<Desk>>, headers: HeaderMap) -> Response {
    let claims = match desk.session(&headers) {
        Ok(claims) => claims,
        Err(refused) => return refused.into_response(),
    };
    if desk.init_fault.load(Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "initialisation failed at site {}: the init fault is on",
                desk.site
            ),
        );
    }
    Json(json!({
        "user": claims.user,
        "session": claims.session,
        "site": desk.site,
        "services": desk.services(),
    }))
    .into_response()
}

fn faults(desk: &Desk) -> Response {
    let register = desk.register_fault.load(Ordering::SeqCst);
    let init = desk.init_fault.load(Ordering::SeqCst);
    tracing::info!(site = %desk.site, register, init, "faults");
    Json(json!({ "faults": { "register": register, "init": init } })).into_response()
}

async fn fault_register(State(desk): State<Arc<Desk>>) -> Response {
    desk.register_fault.store(true, Ordering::SeqCst);
    faults(&desk)
}

async fn fault_init(State(desk): State<Arc<Desk>>) -> Response {
    desk.init_fault.store(true, Ordering::SeqCst);
    faults(&desk)
}

async fn fault_clear(State(desk): State<Arc<Desk>>) -> Response {
    desk.register_fault.store(false, Ordering::SeqCst);
    desk.init_fault.store(false, Ordering::SeqCst);
    faults(&desk)
}

async fn fault_unregister(State(desk): State<Arc<Desk>>) -> Response {
    desk.registered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let detail = format!("site {} dropped every registration", desk.site);
    tracing::info!(site = %desk.site, "{detail}");
    let channels = desk
        .events
        .send(ChannelEvent::Unregistered(detail))
        .unwrap_or(0);
    Json(json!({ "channels": channels })).into_response()
}

/// The HTTP client and URL of the voice poller.
fn voice_poller(url: &str) -> anyhow::Result<(reqwest::Client, reqwest::Url)> {
    let parsed = reqwest::Url::parse(url).with_context(|| {
        format!("--voice {url:?} is not a URL (e.g. http://127.0.0.1:8080/health)")
    })?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "--voice {url:?}: only http:// and https:// URLs are polled"
    );
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(VOICE_TIMEOUT)
        .build()
        .context("cannot build the HTTP client of the voice poller")?;
    Ok((client, parsed))
}

/// Polls the voice service's health URL for ever.
async fn poll_voice(desk: Arc<Desk>, client: reqwest::Client, url: reqwest::Url) {
    let mut every = tokio::time::interval(VOICE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let (available, detail) = match client.get(url.clone()).send().await {
            Ok(answer) if answer.status().is_success() => {
                (true, format!("{url} answered {}", answer.status().as_u16()))
            }
            Ok(answer) => (false, format!("{url} answered {}", answer.status())),
            Err(err) if err.is_timeout() => (
                false,
                format!(
                    "{url} did not answer within {} ms",
                    VOICE_TIMEOUT.as_millis()
                ),
            ),
            Err(err) => (false, format!("{url} failed: {}", root_cause(&err))),
        };
        desk.set_service("voice", available, detail);
    }
}

/// The innermost cause of an error, cut to a line.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string().chars().take(MAX_DETAIL_CHARS).collect()
}
