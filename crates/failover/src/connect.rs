//! The tokio connector: tries the endpoints of a [`FailoverUrl`] with the
//! URL's backoff and limits, and watches for a priority endpoint to return.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::url::{Endpoint, FailoverUrl, Scheme};

/// How long one TCP connect (plus the TLS handshake) may take by default:
/// the broker's TCP transport default `connectionTimeout` of 30 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected byte stream: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// A `tcp://` endpoint.
    Tcp(TcpStream),
    /// A `tls://` endpoint, after a completed handshake.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The underlying TCP stream (for addresses and socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection made by a [`Connector`].
#[derive(Debug)]
pub struct Connection {
    /// The connected stream.
    pub stream: Stream,
    /// The endpoint it is connected to.
    pub endpoint: Endpoint,
    /// The endpoint's position in the URL's list (0 is the first one, the
    /// priority endpoint when `priorityBackup=true` and no `priorityURIs`).
    pub index: usize,
    /// Whether the endpoint is a priority endpoint
    /// ([`FailoverUrl::is_priority`]).
    pub priority: bool,
}

/// What went wrong with one endpoint during a `connect` or `reconnect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointFailure {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// How many times it was tried and failed.
    pub failures: u32,
    /// The kind of the last error.
    pub last_error_kind: io::ErrorKind,
    /// The last error's message.
    pub last_error: String,
}

impl fmt::Display for EndpointFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} failure{}, last: {})",
            self.endpoint,
            self.failures,
            if self.failures == 1 { "" } else { "s" },
            self.last_error
        )
    }
}

/// Lists every endpoint failure, or says that none finished.
struct Failures<'a>(&'a [EndpointFailure]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no connection attempt finished");
        }
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

/// Why [`Connector::connect`] or [`Connector::reconnect`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The attempt limit (`startupMaxReconnectAttempts` or
    /// `maxReconnectAttempts`) was reached; every endpoint tried is listed.
    #[error("no endpoint answered after {attempts} attempt(s): {}", Failures(.failures))]
    Exhausted {
        /// Passes made over the endpoint list.
        attempts: u32,
        /// Each endpoint tried, with its last error.
        failures: Vec<EndpointFailure>,
    },
    /// The URL's `timeout` ran out first.
    #[error("no connection within the {} ms timeout: {}", .timeout.as_millis(), Failures(.failures))]
    Timeout {
        /// The `timeout` option.
        timeout: Duration,
        /// Each endpoint tried so far, with its last error.
        failures: Vec<EndpointFailure>,
    },
    /// `maxReconnectAttempts=0`: reconnection is disabled.
    #[error("reconnection is disabled (maxReconnectAttempts=0)")]
    ReconnectDisabled,
    /// A `tls://` endpoint, but no TLS configuration was given.
    #[error(
        "endpoint {endpoint} uses TLS: give the connector a rustls ClientConfig with Connector::with_tls"
    )]
    TlsNotConfigured {
        /// The first `tls://` endpoint of the URL.
        endpoint: Endpoint,
    },
}

impl ConnectError {
    /// The per-endpoint failures, when the error has them.
    pub fn failures(&self) -> &[EndpointFailure] {
        match self {
            ConnectError::Exhausted { failures, .. } | ConnectError::Timeout { failures, .. } => {
                failures
            }
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Startup,
    Reconnect,
}

/// Connects to the endpoints of a failover URL, the way the broker's
/// failover transport does.
///
/// * [`connect`](Self::connect) makes a first pass over the endpoints at
///   once, then retries after `delay(0)`, `delay(1)`, ... (see
///   [`Options::reconnect_delay`](crate::Options::reconnect_delay)) up to `startupMaxReconnectAttempts`
///   further passes.
/// * [`reconnect`](Self::reconnect), after a connection was lost, waits
///   `delay(0)` before its first pass and makes up to `maxReconnectAttempts`
///   passes; the endpoint just lost is tried last.
/// * Both give up with [`ConnectError::Timeout`] when the URL has a
///   `timeout` and it runs out.
/// * With `randomize=true` the endpoints are shuffled before each pass;
///   with `priorityBackup=true` the priority endpoints come first.
///
/// # Moving back to the priority endpoint
///
/// With `priorityBackup=true`, while the connection is to another endpoint,
/// [`should_move_back`](Self::should_move_back) completes once a priority
/// endpoint accepts connections again; the caller then drops its connection
/// and calls `reconnect`, which tries the priority endpoints first.
/// [`run`](Self::run) packages that loop:
///
/// ```no_run
/// use std::ops::ControlFlow;
/// use tandem_failover::{Connector, FailoverUrl};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let url: FailoverUrl =
///     "failover:(tcp://local:61616,tcp://remote:61616)?randomize=false&priorityBackup=true"
///         .parse()?;
/// let mut connector = Connector::new(url);
/// // Runs the session on a connection; when the connection is lost (the
/// // session returns Continue) or the priority endpoint is back (the
/// // session is dropped), reconnects and runs it again.
/// let total: u64 = connector
///     .run(|mut conn| async move {
///         let mut buf = [0u8; 1024];
///         let mut seen = 0u64;
///         if conn.stream.write_all(b"hello\n").await.is_err() {
///             return ControlFlow::Continue(());
///         }
///         loop {
///             match conn.stream.read(&mut buf).await {
///                 Ok(0) | Err(_) => return ControlFlow::Continue(()), // lost: reconnect
///                 Ok(n) => seen += n as u64,
///             }
///             if seen > 1 << 20 {
///                 return ControlFlow::Break(seen); // done
///             }
///         }
///     })
///     .await?;
/// # let _ = total;
/// # Ok(())
/// # }
/// ```
///
/// The same by hand, with the probe future kept across `select!` rounds so
/// that its backoff is not reset by every read:
///
/// ```no_run
/// # use tandem_failover::{Connector, FailoverUrl};
/// # use tokio::io::AsyncReadExt;
/// # async fn demo(mut connector: Connector) -> Result<(), tandem_failover::ConnectError> {
/// let mut conn = connector.connect().await?;
/// loop {
///     let move_back = connector.should_move_back();
///     tokio::pin!(move_back);
///     let mut buf = [0u8; 1024];
///     loop {
///         tokio::select! {
///             read = conn.stream.read(&mut buf) => match read {
///                 Ok(0) | Err(_) => break,          // connection lost
///                 Ok(_n) => { /* handle the bytes */ }
///             },
///             _back = &mut move_back => break,      // priority endpoint is back
///         }
///     }
///     drop(conn);
///     conn = connector.reconnect().await?;
/// }
/// # }
/// ```
pub struct Connector {
    url: FailoverUrl,
    tls: Option<TlsConnector>,
    connect_timeout: Duration,
    /// Index of the endpoint of the last connection handed out.
    current: Option<usize>,
    connected_once: bool,
    rng: u64,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.url.to_string())
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("current", &self.current)
            .finish()
    }
}

impl Connector {
    /// A connector for `url`, without TLS, with the default per-endpoint
    /// connect timeout ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn new(url: FailoverUrl) -> Connector {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Connector {
            url,
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            current: None,
            connected_once: false,
            rng: seed,
        }
    }

    /// Uses `config` for `tls://` endpoints (the server name checked is the
    /// endpoint's host). The config brings its own crypto provider.
    pub fn with_tls(mut self, config: Arc<rustls::ClientConfig>) -> Connector {
        self.tls = Some(TlsConnector::from(config));
        self
    }

    /// Bounds one TCP connect plus TLS handshake to one endpoint.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Connector {
        self.connect_timeout = timeout;
        self
    }

    /// Seeds the shuffle of `randomize=true` (tests, simulations).
    pub fn with_seed(mut self, seed: u64) -> Connector {
        self.rng = seed;
        self
    }

    /// The URL this connector follows.
    pub fn url(&self) -> &FailoverUrl {
        &self.url
    }

    /// The endpoint of the last connection handed out, if any.
    pub fn current(&self) -> Option<&Endpoint> {
        self.current.and_then(|i| self.url.endpoints.get(i))
    }

    /// Connects to the first endpoint that answers, retrying up to
    /// `startupMaxReconnectAttempts` times after the first pass, within the
    /// URL's `timeout` if it has one.
    pub async fn connect(&mut self) -> Result<Connection, ConnectError> {
        self.bounded(Mode::Startup).await
    }

    /// After a connection was lost (or to move back to a priority
    /// endpoint): reconnects with backoff, up to `maxReconnectAttempts`
    /// passes, within the URL's `timeout` if it has one. Before any
    /// successful `connect`, this is `connect`.
    pub async fn reconnect(&mut self) -> Result<Connection, ConnectError> {
        if !self.connected_once {
            return self.connect().await;
        }
        if self.url.options.max_reconnect_attempts == Some(0) {
            return Err(ConnectError::ReconnectDisabled);
        }
        self.bounded(Mode::Reconnect).await
    }

    /// Completes when a priority endpoint accepts a connection again while
    /// the current connection is to a non-priority endpoint (with
    /// `priorityBackup=true`); otherwise never completes. Probes follow the
    /// URL's backoff (`delay(0)`, `delay(1)`, ...); a probe opens a
    /// connection (with the TLS handshake for `tls://`) and closes it.
    ///
    /// The future borrows nothing: keep it across `select!` rounds, and call
    /// [`reconnect`](Self::reconnect) when it completes.
    pub fn should_move_back(&self) -> impl Future<Output = Endpoint> + Send + 'static {
        let url = &self.url;
        let away = self
            .current
            .and_then(|i| url.endpoints.get(i))
            .is_some_and(|e| !url.is_priority(e));
        let candidates: Vec<Endpoint> = if away {
            url.endpoints
                .iter()
                .filter(|e| url.is_priority(e))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let options = url.options.clone();
        let tls = self.tls.clone();
        let connect_timeout = self.connect_timeout;
        async move {
            if candidates.is_empty() {
                return std::future::pending().await;
            }
            let mut n = 0u32;
            loop {
                tokio::time::sleep(options.reconnect_delay(n)).await;
                for endpoint in &candidates {
                    match open(endpoint, tls.as_ref(), connect_timeout).await {
                        Ok(_probe) => {
                            tracing::info!(%endpoint, "priority endpoint accepts connections again");
                            return endpoint.clone();
                        }
                        Err(error) => {
                            tracing::trace!(%endpoint, %error, "priority endpoint still down");
                        }
                    }
                }
                n = n.saturating_add(1);
            }
        }
    }

    /// Runs `session` on a connection until it returns
    /// `ControlFlow::Break(t)`, reconnecting whenever it returns
    /// `ControlFlow::Continue(())` (connection lost), and moving back to the
    /// priority endpoint when it returns (the running session is dropped).
    /// Fails when `connect` or `reconnect` gives up.
    pub async fn run<T, F, Fut>(&mut self, mut session: F) -> Result<T, ConnectError>
    where
        F: FnMut(Connection) -> Fut,
        Fut: Future<Output = ControlFlow<T>>,
    {
        let mut conn = self.connect().await?;
        loop {
            let move_back = self.should_move_back();
            let from = conn.endpoint.clone();
            tokio::select! {
                flow = session(conn) => match flow {
                    ControlFlow::Break(t) => return Ok(t),
                    ControlFlow::Continue(()) => {
                        tracing::info!(endpoint = %from, "connection lost; reconnecting");
                    }
                },
                back = move_back => {
                    tracing::info!(%from, to = %back, "moving back to the priority endpoint");
                }
            }
            conn = self.reconnect().await?;
        }
    }

    async fn bounded(&mut self, mode: Mode) -> Result<Connection, ConnectError> {
        if self.tls.is_none()
            && let Some(endpoint) = self.url.endpoints.iter().find(|e| e.scheme == Scheme::Tls)
        {
            return Err(ConnectError::TlsNotConfigured {
                endpoint: endpoint.clone(),
            });
        }
        if self.url.endpoints.is_empty() {
            // Only a hand-built URL can be empty; `parse` refuses it.
            return Err(ConnectError::Exhausted {
                attempts: 0,
                failures: Vec::new(),
            });
        }
        let mut failures = Vec::new();
        let result = match self.url.options.timeout {
            None => self.passes(mode, &mut failures).await,
            Some(timeout) => {
                let outcome = tokio::time::timeout(timeout, self.passes(mode, &mut failures)).await;
                match outcome {
                    Ok(result) => result,
                    Err(_elapsed) => Err(ConnectError::Timeout { timeout, failures }),
                }
            }
        };
        if let Ok(conn) = &result {
            self.current = Some(conn.index);
            self.connected_once = true;
        }
        result
    }

    /// Passes over the endpoints until one answers or the limit is reached.
    async fn passes(
        &mut self,
        mode: Mode,
        failures: &mut Vec<EndpointFailure>,
    ) -> Result<Connection, ConnectError> {
        let options = &self.url.options;
        // The total number of passes allowed.
        let limit = match mode {
            Mode::Startup => options
                .startup_max_reconnect_attempts
                .map(|n| n.saturating_add(1)),
            Mode::Reconnect => options.max_reconnect_attempts,
        };
        let warn_every = options.warn_after_reconnect_attempts;
        let mut pass: u32 = 0;
        loop {
            let wait = match (mode, pass) {
                (Mode::Startup, 0) => None,
                (Mode::Startup, n) => Some(self.url.options.reconnect_delay(n - 1)),
                (Mode::Reconnect, n) => Some(self.url.options.reconnect_delay(n)),
            };
            if let Some(wait) = wait {
                tracing::debug!(
                    wait_ms = wait.as_millis() as u64,
                    pass,
                    "waiting before the next attempt"
                );
                tokio::time::sleep(wait).await;
            }
            for index in self.connect_order(mode) {
                let endpoint = &self.url.endpoints[index];
                match open(endpoint, self.tls.as_ref(), self.connect_timeout).await {
                    Ok(stream) => {
                        let priority = self.url.is_priority(endpoint);
                        tracing::info!(%endpoint, index, priority, "connected");
                        return Ok(Connection {
                            stream,
                            endpoint: endpoint.clone(),
                            index,
                            priority,
                        });
                    }
                    Err(error) => {
                        tracing::debug!(%endpoint, %error, "connect failed");
                        record(failures, endpoint, &error);
                    }
                }
            }
            pass = pass.saturating_add(1);
            if let Some(limit) = limit
                && pass >= limit
            {
                tracing::warn!(attempts = pass, "giving up: {}", Failures(failures));
                return Err(ConnectError::Exhausted {
                    attempts: pass,
                    failures: std::mem::take(failures),
                });
            }
            if let Some(every) = warn_every
                && pass.is_multiple_of(every)
            {
                tracing::warn!(
                    attempts = pass,
                    "still not connected, retrying: {}",
                    Failures(failures)
                );
            }
        }
    }

    /// The order of one pass: priority endpoints first (with
    /// `priorityBackup`), each group shuffled when `randomize`, and on a
    /// reconnect the endpoint just lost last.
    fn connect_order(&mut self, mode: Mode) -> Vec<usize> {
        let url = &self.url;
        let (mut first, mut rest): (Vec<usize>, Vec<usize>) =
            (0..url.endpoints.len()).partition(|&i| url.is_priority(&url.endpoints[i]));
        if url.options.randomize {
            shuffle(&mut first, &mut self.rng);
            shuffle(&mut rest, &mut self.rng);
        }
        first.append(&mut rest);
        if mode == Mode::Reconnect
            && let Some(lost) = self.current
            && let Some(at) = first.iter().position(|&i| i == lost)
        {
            first.remove(at);
            first.push(lost);
        }
        first
    }
}

/// Adds one failure of `endpoint` to the per-endpoint list.
fn record(failures: &mut Vec<EndpointFailure>, endpoint: &Endpoint, error: &io::Error) {
    match failures.iter_mut().find(|f| &f.endpoint == endpoint) {
        Some(f) => {
            f.failures = f.failures.saturating_add(1);
            f.last_error_kind = error.kind();
            f.last_error = error.to_string();
        }
        None => failures.push(EndpointFailure {
            endpoint: endpoint.clone(),
            failures: 1,
            last_error_kind: error.kind(),
            last_error: error.to_string(),
        }),
    }
}

/// Opens one endpoint: TCP connect, then the TLS handshake for `tls://`,
/// all within `connect_timeout`.
async fn open(
    endpoint: &Endpoint,
    tls: Option<&TlsConnector>,
    connect_timeout: Duration,
) -> io::Result<Stream> {
    let attempt = async {
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?;
        match endpoint.scheme {
            Scheme::Tcp => Ok(Stream::Tcp(tcp)),
            Scheme::Tls => {
                let Some(tls) = tls else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "tls endpoint without a TLS configuration",
                    ));
                };
                let name = ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let stream = tls.connect(name, tcp).await?;
                Ok(Stream::Tls(Box::new(stream)))
            }
        }
    };
    match tokio::time::timeout(connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect timed out after {} ms", connect_timeout.as_millis()),
        )),
    }
}

/// Fisher-Yates with splitmix64: no dependency for a shuffle.
fn shuffle(items: &mut [usize], state: &mut u64) {
    for i in (1..items.len()).rev() {
        let j = (next_random(state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
