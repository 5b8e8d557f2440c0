//! A Rust client of tandem's HTTP/JSON API (crate `tandem-api`): what the
//! `tandem` CLI, dashboards and tools use to read the cluster's status,
//! find an app's current primary, ask for a switchover and read or follow
//! the event log.
//!
//! The documents are the API's own types (crate `tandem-wire`, re-exported
//! here as [`types`]), so both ends always agree on the JSON, and a client
//! does not pull in the server.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tandem_client::ClientError> {
//! use std::time::Duration;
//! let api = tandem_client::ApiClient::new("127.0.0.1:7420")?;
//! for app in api.status().await?.apps {
//!     println!("{}: primary {:?}", app.name, app.primary);
//! }
//! let outcome = api.switchover("web", None, Duration::from_secs(10)).await?;
//! println!("{outcome:?}");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // a client keeps time: request timeouts

pub mod browser;
pub mod discovery;
pub mod endpoint;
pub mod pool;
pub mod proxy;
mod sse;

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

pub use tandem_wire as types;
pub use tandem_wire::{
    AppDoc, ErrorDoc, Event, EventsDoc, InstanceDoc, MemberDoc, MembersDoc, PrimaryDoc, ReadOnly,
    StatusDoc, SwitchoverProgress, SwitchoverRequest, SwitchoverResponse,
};

use sse::SseParser;

/// The API's port when an address names none (`"127.0.0.1"`).
pub const DEFAULT_PORT: u16 = 7420;
/// How long connecting to the API may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a plain request (status, app, primary, events) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A switchover request may take its own timeout plus this much.
pub const SWITCHOVER_GRACE: Duration = Duration::from_secs(5);
/// Error bodies longer than this are cut in error messages.
const MAX_ERROR_CHARS: usize = 300;

/// What a call can fail with. `Display` is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address given to [`ApiClient::new`] is not an API address.
    #[error("invalid tandem API address {addr:?}: {reason}")]
    InvalidAddress {
        /// What was given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The API could not be reached (nothing listening, host unknown,
    /// connection dropped).
    #[error("cannot reach the tandem API at {addr}: {reason} ({hint})")]
    Unreachable {
        /// The API's address (host:port).
        addr: String,
        /// The underlying cause, short ("connection refused").
        reason: String,
        /// What to check.
        hint: &'static str,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The API did not answer in time.
    #[error("the tandem API at {addr} did not answer within {timeout_ms} ms")]
    Timeout {
        /// The API's address (host:port).
        addr: String,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// The API answered with an error (its `{"error": ...}` message).
    #[error("{message}")]
    Api {
        /// The HTTP status code.
        status: u16,
        /// The API's explanation.
        message: String,
    },
    /// The API answered something this client does not understand.
    #[error("unexpected answer from the tandem API: {0}")]
    Protocol(String),
    /// A write to an app pinned to the active site while that site is lost
    /// ([`ApiClient::primary_for_write`], [`PrimaryState::writable`]):
    /// read what you have; writes wait until the site returns or an
    /// operator promotes a spare site.
    #[error(
        "read-only: {reason} ({app} takes no writes until the site returns or an operator promotes a spare site)"
    )]
    ReadOnly {
        /// The app.
        app: String,
        /// The active site that is lost.
        site: String,
        /// Why: `site dc1 is lost`.
        reason: String,
    },
    /// A write to an app that has no primary right now (one is being
    /// promoted, or none can run): ask again shortly.
    #[error("no primary for {app} right now: {reason}")]
    NoPrimary {
        /// The app.
        app: String,
        /// Why, as the controller last explained it.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Api`] error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Where an app's primary stands ([`ApiClient::primary_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrimaryState {
    /// It serves: send it work.
    Serving(PrimaryDoc),
    /// It drains before a planned switchover: it takes no new work, but
    /// work already under way there may finish.
    Draining(PrimaryDoc),
    /// The app has no primary right now.
    None,
    /// The app is pinned to the active site and that site is lost: it has
    /// no primary, and takes no writes until the site returns or an
    /// operator promotes a spare site.
    ReadOnly(tandem_wire::ReadOnly),
}

impl PrimaryState {
    /// The primary to send new work to, if any.
    pub fn serving(self) -> Option<PrimaryDoc> {
        match self {
            PrimaryState::Serving(doc) => Some(doc),
            PrimaryState::Draining(_) | PrimaryState::None | PrimaryState::ReadOnly(_) => None,
        }
    }

    /// The primary of `app` to send a write to: an error that says why
    /// there is none ([`ClientError::ReadOnly`] while its site is lost).
    pub fn writable(&self, app: &str) -> Result<&PrimaryDoc, ClientError> {
        match self {
            PrimaryState::Serving(doc) => Ok(doc),
            PrimaryState::ReadOnly(ro) => Err(ClientError::ReadOnly {
                app: app.to_string(),
                site: ro.site.clone(),
                reason: ro.reason.clone(),
            }),
            PrimaryState::Draining(doc) => Err(ClientError::NoPrimary {
                app: app.to_string(),
                reason: format!("{} drains before a planned switchover", doc.instance),
            }),
            PrimaryState::None => Err(ClientError::NoPrimary {
                app: app.to_string(),
                reason: "none is serving".to_string(),
            }),
        }
    }
}

/// What an intent's answer holds, whichever it is about (an app's
/// switchover or maintenance, a host's fencing).
#[derive(Debug, serde::Deserialize)]
struct IntentAnswer {
    intent: String,
    outcome: SwitchoverProgress,
    #[serde(default)]
    message: Option<String>,
}

/// How a switchover request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchoverOutcome {
    /// The controller carried it out.
    Done {
        /// The intent's id.
        intent: String,
        /// What the controller did.
        message: String,
    },
    /// The controller refused it; nothing changed.
    Refused {
        /// The intent's id.
        intent: String,
        /// Why.
        reason: String,
    },
    /// Still pending or running when the timeout passed; it goes on.
    InProgress {
        /// The intent's id.
        intent: String,
        /// Where it stood.
        progress: SwitchoverProgress,
    },
}

/// How a client talks to the API beyond its address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// The API token to present (`Authorization: Bearer TOKEN`), when the
    /// API requires one.
    pub token: Option<String>,
    /// The CA (PEM) the API's HTTPS certificate must chain to. With it, an
    /// address without a scheme means `https://`, and no other CA is
    /// trusted; without it, `https://` addresses are checked against the
    /// system's CAs.
    pub ca: Option<Vec<u8>>,
}

/// A stream of events from [`ApiClient::follow_events`].
pub type EventStream = Pin<Box<dyn Stream<Item = Result<Event, ClientError>> + Send>>;

/// A client of one tandem API. Cheap to clone (connections are pooled and
/// shared).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    /// host:port, for messages.
    addr: String,
}

impl ApiClient {
    /// A client of the API at `addr`: `"host:port"`, `"host"` (port
    /// [`DEFAULT_PORT`]) or `"http://host:port"`. Refuses anything else
    /// (other schemes, paths, queries, credentials) with a clear error.
    pub fn new(addr: &str) -> Result<ApiClient, ClientError> {
        ApiClient::with_options(addr, &ClientOptions::default())
    }

    /// A client of the API at `addr` (as for [`ApiClient::new`]) that
    /// presents `options.token` on every request.
    pub fn with_options(addr: &str, options: &ClientOptions) -> Result<ApiClient, ClientError> {
        let base = parse_addr(addr, options.ca.is_some())?;
        let host = base.host_str().unwrap_or_default();
        let display = match base.port_or_known_default() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let invalid = |reason: String| ClientError::InvalidAddress {
            addr: addr.to_owned(),
            reason,
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &options.token {
            let token = token.trim();
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .ok()
                .filter(|_| !token.is_empty() && !token.contains(char::is_whitespace))
                .ok_or_else(|| {
                    invalid(
                        "the token is empty or holds spaces or control characters (check --token / TANDEM_TOKEN)"
                            .to_owned(),
                    )
                })?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .user_agent(concat!("tandem-client/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers);
        if let Some(pem) = &options.ca {
            if base.scheme() != "https" {
                return Err(invalid(
                    "a CA is given but the address says http://: give host:port or https://host:port"
                        .to_owned(),
                ));
            }
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| invalid(format!("the CA is not a PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(invalid(
                    "the CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
                ));
            }
            // Only the given CA: the API's certificate is the cluster's
            // own, not one of the web's.
            builder = builder.tls_certs_only(certs);
        }
        let http = builder
            .build()
            .map_err(|e| invalid(format!("cannot set up an HTTP client: {e}")))?;
        Ok(ApiClient {
            http,
            base,
            addr: display,
        })
    }

    /// The base URL requests go to (e.g. `http://127.0.0.1:7420/`).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /v1/status`: every app and instance.
    pub async fn status(&self) -> Result<StatusDoc, ClientError> {
        self.get_json(self.url(&["v1", "status"], &[])).await
    }

    /// `GET /v1/links`: every link, judged for each instance of the app it
    /// goes from.
    pub async fn links(&self) -> Result<tandem_wire::LinksDoc, ClientError> {
        self.get_json(self.url(&["v1", "links"], &[])).await
    }

    /// `GET /v1/apps/{app}`: one app, with its switchover and recorded
    /// intent.
    pub async fn app(&self, app: &str) -> Result<AppDoc, ClientError> {
        self.get_json(self.url(&["v1", "apps", app], &[])).await
    }

    /// `GET /v1/apps/{app}/primary`: the app's acknowledged primary, or
    /// `None` when it has none right now (the API's 503 "no primary").
    /// A primary draining before a planned switchover is `None` here (it
    /// takes no new work); [`ApiClient::primary_state`] tells it apart.
    pub async fn primary(&self, app: &str) -> Result<Option<PrimaryDoc>, ClientError> {
        self.primary_state(app).await.map(PrimaryState::serving)
    }

    /// `GET /v1/apps/{app}/primary`, telling a primary that drains before
    /// a planned switchover from none at all.
    pub async fn primary_state(&self, app: &str) -> Result<PrimaryState, ClientError> {
        let url = self.url(&["v1", "apps", app, "primary"], &[]);
        let response = self.send(self.http.get(url), REQUEST_TIMEOUT).await?;
        let status = response.status();
        let body = self.body(response, REQUEST_TIMEOUT).await?;
        if status.is_success() {
            return decode(&body, "the primary").map(PrimaryState::Serving);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE
            && let Ok(doc) = serde_json::from_slice::<ErrorDoc>(&body)
            && (doc.reason.is_some() || doc.read_only.is_some())
        {
            return Ok(match (doc.read_only, doc.draining) {
                (Some(ro), _) => PrimaryState::ReadOnly(*ro),
                (None, Some(doc)) => PrimaryState::Draining(*doc),
                (None, None) => PrimaryState::None,
            });
        }
        Err(api_error(status, &body))
    }

    /// The primary of `app` to send a write to: [`ClientError::ReadOnly`]
    /// ("read-only: site dc1 is lost ...") while the app is pinned to a
    /// lost active site, [`ClientError::NoPrimary`] while it has none.
    pub async fn primary_for_write(&self, app: &str) -> Result<PrimaryDoc, ClientError> {
        let state = self.primary_state(app).await?;
        state.writable(app).cloned()
    }

    /// `POST /v1/apps/{app}/switchover`: asks for a switchover, to `to` or
    /// (with `None`) to the best backup, and waits up to `timeout` (at most
    /// 60 s) for the controller's outcome. Validation failures (unknown app
    /// or instance, an app without a primary, a switchover already in
    /// progress) are [`ClientError::Api`]; a refusal by the controller is
    /// [`SwitchoverOutcome::Refused`].
    pub async fn switchover(
        &self,
        app: &str,
        to: Option<&str>,
        timeout: Duration,
    ) -> Result<SwitchoverOutcome, ClientError> {
        let request = SwitchoverRequest {
            to: to.map(str::to_owned),
        };
        self.intent(app, "switchover", &request, timeout).await
    }

    /// `POST /v1/apps/{app}/maintenance`: turns maintenance on or off and
    /// waits up to `timeout` for the controller to confirm.
    pub async fn maintenance(
        &self,
        app: &str,
        on: bool,
        timeout: Duration,
    ) -> Result<SwitchoverOutcome, ClientError> {
        let request = tandem_wire::MaintenanceRequest { on };
        self.intent(app, "maintenance", &request, timeout).await
    }

    /// `GET /v1/apps/{app}/members`: the instances serving now.
    pub async fn members(&self, app: &str) -> Result<MembersDoc, ClientError> {
        let url = self.url(&["v1", "apps", app, "members"], &[]);
        let response = self.send(self.http.get(url), REQUEST_TIMEOUT).await?;
        let status = response.status();
        let body = self.body(response, REQUEST_TIMEOUT).await?;
        if status.is_success() {
            return decode(&body, "the members document");
        }
        Err(api_error(status, &body))
    }

    /// Records an operator intent (`verb` is the endpoint) and waits for
    /// its outcome.
    async fn intent<B: serde::Serialize>(
        &self,
        app: &str,
        verb: &str,
        request: &B,
        timeout: Duration,
    ) -> Result<SwitchoverOutcome, ClientError> {
        self.intent_at(&["v1", "apps", app, verb], verb, request, timeout)
            .await
    }

    /// `POST /v1/hosts/{host}/fence`: asks the controller to fence `host`
    /// with its fence device and waits up to `timeout` (at most 60 s) for
    /// the device to confirm. A host without a device, or a device that
    /// keeps failing, is [`SwitchoverOutcome::Refused`] (or
    /// [`ClientError::Api`] when refused before recording).
    pub async fn fence(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<SwitchoverOutcome, ClientError> {
        self.intent_at(
            &["v1", "hosts", host, "fence"],
            "fence",
            &serde_json::json!({}),
            timeout,
        )
        .await
    }

    /// `POST /v1/sites/{site}/{action}` (`fail`, `promote`, `restore`):
    /// asks the controller and waits up to `timeout` (at most 60 s) for
    /// the outcome. A refusal (a site whose hosts still hold leases,
    /// promoting an active site, ...) is [`SwitchoverOutcome::Refused`];
    /// an unknown site or action, or a bad confirmation, is
    /// [`ClientError::Api`].
    pub async fn site_action(
        &self,
        site: &str,
        action: &str,
        request: &tandem_wire::SiteRequest,
        timeout: Duration,
    ) -> Result<SwitchoverOutcome, ClientError> {
        self.intent_at(&["v1", "sites", site, action], action, request, timeout)
            .await
    }

    async fn intent_at<B: serde::Serialize>(
        &self,
        path: &[&str],
        verb: &str,
        request: &B,
        timeout: Duration,
    ) -> Result<SwitchoverOutcome, ClientError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let url = self.url(path, &[("timeout_ms", timeout_ms.to_string())]);
        let total = timeout.saturating_add(SWITCHOVER_GRACE);
        let response = self.send(self.http.post(url).json(request), total).await?;
        let status = response.status();
        let body = self.body(response, total).await?;
        if status.is_success() {
            let doc: IntentAnswer = decode(&body, &format!("the {verb} answer"))?;
            return Ok(match doc.outcome {
                SwitchoverProgress::Done => SwitchoverOutcome::Done {
                    intent: doc.intent,
                    message: doc.message.unwrap_or_default(),
                },
                progress => SwitchoverOutcome::InProgress {
                    intent: doc.intent,
                    progress,
                },
            });
        }
        if status == StatusCode::CONFLICT
            && let Ok(ErrorDoc {
                error,
                intent: Some(intent),
                ..
            }) = serde_json::from_slice::<ErrorDoc>(&body)
        {
            return Ok(SwitchoverOutcome::Refused {
                intent,
                reason: error,
            });
        }
        Err(api_error(status, &body))
    }

    /// `GET /v1/events`: with `since`, the first `limit` events after that
    /// sequence number; without, the last `limit` (the API's default: 100).
    /// Oldest first.
    pub async fn events(
        &self,
        since: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Vec<Event>, ClientError> {
        let mut query = Vec::new();
        if let Some(since) = since {
            query.push(("since", since.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        let doc: EventsDoc = self.get_json(self.url(&["v1", "events"], &query)).await?;
        Ok(doc.events)
    }

    /// `GET /v1/events?follow=true`: the recent backlog (after `since` if
    /// given), then every new event as the controller writes it. The stream
    /// connects when first polled and ends when the server closes it (e.g.
    /// on shutdown) or after yielding a transport error; to resume, follow
    /// again with `since` = the last `seq` received. An event the client
    /// cannot decode is yielded as an error and the stream goes on.
    pub fn follow_events(&self, since: Option<u64>) -> EventStream {
        let mut query = vec![("follow", "true".to_owned())];
        if let Some(since) = since {
            query.push(("since", since.to_string()));
        }
        let start = Follow::Connect {
            client: self.clone(),
            url: self.url(&["v1", "events"], &query),
        };
        Box::pin(futures::stream::unfold(start, Follow::next))
    }

    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.clear().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    async fn get_json<T: DeserializeOwned>(&self, url: Url) -> Result<T, ClientError> {
        let what = url.path().to_owned();
        let response = self.send(self.http.get(url), REQUEST_TIMEOUT).await?;
        let status = response.status();
        let body = self.body(response, REQUEST_TIMEOUT).await?;
        if !status.is_success() {
            return Err(api_error(status, &body));
        }
        decode(&body, &format!("GET {what}"))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport_error(e, timeout))
    }

    async fn body(
        &self,
        response: reqwest::Response,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        response
            .bytes()
            .await
            .map(|b| b.to_vec())
            .map_err(|e| self.transport_error(e, timeout))
    }

    fn transport_error(&self, e: reqwest::Error, timeout: Duration) -> ClientError {
        if e.is_timeout() {
            return ClientError::Timeout {
                addr: self.addr.clone(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            };
        }
        let reason = root_cause(&e);
        let hint = if reason.contains("certificate") {
            "the API's certificate must chain to the CA given with --ca / TANDEM_CA"
        } else if reason.contains("HTTP version") || reason.contains("tls handshake eof") {
            "the API may serve HTTPS: give its CA with --ca / TANDEM_CA"
        } else if self.base.scheme() == "https" && reason.contains("InvalidContentType") {
            "the API may serve plain HTTP: drop --ca and https://"
        } else {
            "is `tandem up` running?"
        };
        ClientError::Unreachable {
            addr: self.addr.clone(),
            reason,
            hint,
            source: e,
        }
    }
}

/// Parses an API address into a base URL.
fn parse_addr(addr: &str, https: bool) -> Result<Url, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        addr: addr.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = addr.trim();
    if trimmed.is_empty() {
        return Err(invalid(
            "it is empty; expected host:port, e.g. 127.0.0.1:7420",
        ));
    }
    let bare = !trimmed.contains("://");
    let text = if bare {
        format!("{}://{trimmed}", if https { "https" } else { "http" })
    } else {
        trimmed.to_owned()
    };
    let mut url = Url::parse(&text).map_err(|e| {
        invalid(&format!(
            "{e}; expected host:port, http://host:port or https://host:port, e.g. 127.0.0.1:7420"
        ))
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(invalid(&format!(
                "scheme {other:?} is not supported; use host:port, http://host:port or https://host:port"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials are not supported in the address"));
    }
    if url.path() != "/" {
        return Err(invalid("it must not have a path; give host:port only"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    // "host" alone means the API's default port; "host:80" keeps 80 (the
    // URL parser drops a scheme's default port, so look at the text).
    let default_port = if https { ":443" } else { ":80" };
    if bare && url.port().is_none() && !trimmed.trim_end_matches('/').ends_with(default_port) {
        url.set_port(Some(DEFAULT_PORT))
            .map_err(|()| invalid("it cannot take a port"))?;
    }
    Ok(url)
}

/// The innermost cause of a transport error, short: "connection refused".
fn root_cause(e: &reqwest::Error) -> String {
    let mut current: &(dyn std::error::Error + 'static) = e;
    let mut deepest = e.to_string();
    loop {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionRefused => "connection refused".to_owned(),
                K::ConnectionReset => "connection reset".to_owned(),
                K::ConnectionAborted => "connection aborted".to_owned(),
                K::TimedOut => "connection timed out".to_owned(),
                K::AddrNotAvailable => "address not available".to_owned(),
                _ => io.to_string(),
            };
        }
        match current.source() {
            Some(next) => {
                deepest = next.to_string();
                current = next;
            }
            None => return deepest,
        }
    }
}

/// An error answer: the API's `{"error": ...}`, or the raw body.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorDoc>(body) {
        Ok(doc) => doc.error,
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!(
                    "the tandem API answered {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                )
                .trim_end()
                .to_owned()
            } else {
                let cut: String = text.chars().take(MAX_ERROR_CHARS).collect();
                format!("the tandem API answered {}: {cut}", status.as_u16())
            }
        }
    };
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ClientError> {
    serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("cannot decode {what}: {e}")))
}

/// The state of a followed event stream.
enum Follow {
    /// Not connected yet.
    Connect { client: ApiClient, url: Url },
    /// Reading the body.
    Bytes {
        body: Pin<Box<dyn Stream<Item = Result<Vec<u8>, reqwest::Error>> + Send>>,
        parser: SseParser,
        ready: VecDeque<Result<Event, ClientError>>,
        client: ApiClient,
    },
    /// Ended.
    Done,
}

impl Follow {
    async fn next(self) -> Option<(Result<Event, ClientError>, Follow)> {
        let mut state = self;
        loop {
            state = match state {
                Follow::Done => return None,
                Follow::Connect { client, url } => {
                    // No overall timeout: the stream lasts; connecting is
                    // bounded by the client's connect timeout.
                    let response = match client.http.get(url).send().await {
                        Ok(r) => r,
                        Err(e) => {
                            return Some((
                                Err(client.transport_error(e, CONNECT_TIMEOUT)),
                                Follow::Done,
                            ));
                        }
                    };
                    let status = response.status();
                    if !status.is_success() {
                        let body = client
                            .body(response, REQUEST_TIMEOUT)
                            .await
                            .unwrap_or_default();
                        return Some((Err(api_error(status, &body)), Follow::Done));
                    }
                    let content_type = response
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    if !content_type.starts_with("text/event-stream") {
                        return Some((
                            Err(ClientError::Protocol(format!(
                                "expected an event stream, got content type {content_type:?}"
                            ))),
                            Follow::Done,
                        ));
                    }
                    Follow::Bytes {
                        body: Box::pin(response.bytes_stream().map(|r| r.map(|b| b.to_vec()))),
                        parser: SseParser::default(),
                        ready: VecDeque::new(),
                        client,
                    }
                }
                Follow::Bytes {
                    mut body,
                    mut parser,
                    mut ready,
                    client,
                } => {
                    if let Some(item) = ready.pop_front() {
                        return Some((
                            item,
                            Follow::Bytes {
                                body,
                                parser,
                                ready,
                                client,
                            },
                        ));
                    }
                    match body.next().await {
                        None => return None,
                        Some(Err(e)) => {
                            return Some((
                                Err(client.transport_error(e, REQUEST_TIMEOUT)),
                                Follow::Done,
                            ));
                        }
                        Some(Ok(chunk)) => match parser.push(&chunk) {
                            Err(message) => {
                                return Some((Err(ClientError::Protocol(message)), Follow::Done));
                            }
                            Ok(messages) => {
                                ready.extend(
                                    messages
                                        .into_iter()
                                        .filter(|m| {
                                            matches!(m.event.as_deref(), None | Some("event"))
                                        })
                                        .map(|m| decode::<Event>(m.data.as_bytes(), "an event")),
                                );
                                Follow::Bytes {
                                    body,
                                    parser,
                                    ready,
                                    client,
                                }
                            }
                        },
                    }
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(addr: &str) -> String {
        match ApiClient::new(addr) {
            Ok(c) => c.base_url().to_owned(),
            Err(e) => panic!("{addr:?} refused: {e}"),
        }
    }

    fn refused(addr: &str) -> String {
        match ApiClient::new(addr) {
            Ok(c) => panic!("{addr:?} accepted as {}", c.base_url()),
            Err(e) => {
                assert!(matches!(e, ClientError::InvalidAddress { .. }), "{e:?}");
                e.to_string()
            }
        }
    }

    #[test]
    fn accepts_host_port_and_http_urls() {
        assert_eq!(base("127.0.0.1:7420"), "http://127.0.0.1:7420/");
        assert_eq!(base(" http://127.0.0.1:7420 "), "http://127.0.0.1:7420/");
        assert_eq!(base("http://127.0.0.1:7420/"), "http://127.0.0.1:7420/");
        assert_eq!(base("localhost"), "http://localhost:7420/");
        assert_eq!(base("localhost:80"), "http://localhost/");
        assert_eq!(base("[::1]:9000"), "http://[::1]:9000/");
        assert_eq!(base("http://api.example"), "http://api.example/");
    }

    #[test]
    fn refuses_garbage_with_a_clear_error() {
        assert!(refused("").contains("empty"));
        assert_eq!(base("https://h:1"), "https://h:1/");
        assert!(refused("ftp://h:1").contains("\"ftp\""));
        assert!(refused("h:1/v1").contains("path"));
        assert!(refused("h:1?x=1").contains("query"));
        assert!(refused("u:p@h:1").contains("credentials"));
        assert!(refused("h:99999").contains("invalid tandem API address \"h:99999\""));
        assert!(refused("not an address").contains("invalid tandem API address"));
    }

    #[test]
    fn urls_encode_names_as_single_segments() {
        let c = ApiClient::new("127.0.0.1:7420").expect("valid");
        let url = c.url(
            &["v1", "apps", "a/b c", "primary"],
            &[("since", "3".into())],
        );
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7420/v1/apps/a%2Fb%20c/primary?since=3"
        );
    }

    #[test]
    fn error_answers_become_one_line() {
        let e = api_error(
            StatusCode::NOT_FOUND,
            br#"{"error":"no app named \"x\" in topology \"t\""}"#,
        );
        assert_eq!(e.to_string(), r#"no app named "x" in topology "t""#);
        assert_eq!(e.status(), Some(404));
        let e = api_error(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(e.to_string(), "the tandem API answered 502 Bad Gateway");
        let e = api_error(StatusCode::INTERNAL_SERVER_ERROR, b"oops\n");
        assert_eq!(e.to_string(), "the tandem API answered 500: oops");
    }
}
