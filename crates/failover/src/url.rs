//! The parsed form of a failover URL: endpoints, options, their defaults, and
//! the canonical `Display` that [`crate::parse`] reads back to the same value.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::parse::{ParseError, parse, parse_endpoint};

/// A parsed failover URL: the endpoints to try and how to retry them.
///
/// `Display` writes the canonical form
/// `failover:(tcp://a:1,tls://b:2)?option=value&...`, listing only the
/// options that differ from their defaults (and `backOffMultiplier` under its
/// current broker name, `reconnectDelayExponent`). For every value that
/// [`parse`] returns, `parse(&url.to_string()) == Ok(url)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverUrl {
    /// The endpoints, in the order written. Never empty, no duplicates.
    pub endpoints: Vec<Endpoint>,
    /// How to choose among the endpoints and how to retry.
    pub options: Options,
}

impl FailoverUrl {
    /// Whether `endpoint` is a priority endpoint, as the broker decides it:
    /// only when `priorityBackup=true`, and then the `priorityURIs` if any
    /// were given, else the first endpoint of the list.
    pub fn is_priority(&self, endpoint: &Endpoint) -> bool {
        if !self.options.priority_backup {
            return false;
        }
        if self.options.priority_uris.is_empty() {
            self.endpoints.first() == Some(endpoint)
        } else {
            self.options.priority_uris.contains(endpoint)
        }
    }
}

impl FromStr for FailoverUrl {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

impl fmt::Display for FailoverUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failover:(")?;
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{endpoint}")?;
        }
        f.write_str(")")?;
        let defaults = Options::default();
        let o = &self.options;
        let mut sep = '?';
        let mut opt = |f: &mut fmt::Formatter<'_>, name: &str, value: &dyn fmt::Display| {
            let r = write!(f, "{sep}{name}={value}");
            sep = '&';
            r
        };
        if o.initial_reconnect_delay != defaults.initial_reconnect_delay {
            opt(
                f,
                "initialReconnectDelay",
                &o.initial_reconnect_delay.as_millis(),
            )?;
        }
        if o.max_reconnect_delay != defaults.max_reconnect_delay {
            opt(f, "maxReconnectDelay", &o.max_reconnect_delay.as_millis())?;
        }
        if o.use_exponential_backoff != defaults.use_exponential_backoff {
            opt(f, "useExponentialBackOff", &o.use_exponential_backoff)?;
        }
        if o.backoff_multiplier != defaults.backoff_multiplier {
            opt(f, "reconnectDelayExponent", &o.backoff_multiplier)?;
        }
        if o.max_reconnect_attempts != defaults.max_reconnect_attempts {
            opt(
                f,
                "maxReconnectAttempts",
                &Attempts(o.max_reconnect_attempts),
            )?;
        }
        if o.startup_max_reconnect_attempts != defaults.startup_max_reconnect_attempts {
            opt(
                f,
                "startupMaxReconnectAttempts",
                &Attempts(o.startup_max_reconnect_attempts),
            )?;
        }
        if o.randomize != defaults.randomize {
            opt(f, "randomize", &o.randomize)?;
        }
        if o.priority_backup != defaults.priority_backup {
            opt(f, "priorityBackup", &o.priority_backup)?;
        }
        if !o.priority_uris.is_empty() {
            opt(f, "priorityURIs", &EndpointList(&o.priority_uris))?;
        }
        if o.timeout != defaults.timeout {
            let ms = o
                .timeout
                .map_or(-1, |d| i128::try_from(d.as_millis()).unwrap_or(i128::MAX));
            opt(f, "timeout", &ms)?;
        }
        if o.warn_after_reconnect_attempts != defaults.warn_after_reconnect_attempts {
            opt(
                f,
                "warnAfterReconnectAttempts",
                &o.warn_after_reconnect_attempts.unwrap_or(0),
            )?;
        }
        Ok(())
    }
}

/// Writes an attempt limit the broker's way: `-1` for unlimited.
struct Attempts(Option<u32>);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("-1"),
            Some(n) => write!(f, "{n}"),
        }
    }
}

/// Writes endpoints separated by commas (the `priorityURIs` value).
struct EndpointList<'a>(&'a [Endpoint]);

impl fmt::Display for EndpointList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, endpoint) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{endpoint}")?;
        }
        Ok(())
    }
}

/// How to reach one endpoint: plain TCP or TLS over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `tcp://` (also what an endpoint without a scheme means).
    Tcp,
    /// `tls://`: TCP, then a TLS handshake with the configuration given to
    /// [`crate::Connector::with_tls`].
    Tls,
}

impl Scheme {
    /// The scheme's name as written in a URL (`tcp` or `tls`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Tls => "tls",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One endpoint of a failover URL: `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// TCP or TLS.
    pub scheme: Scheme,
    /// A host name (lower-cased), an IPv4 address, or an IPv6 address
    /// (canonical form, without the brackets it is written in).
    pub host: String,
    /// The TCP port, 1 to 65535.
    pub port: u16,
}

impl Endpoint {
    /// Whether the host is an IPv6 address (written in brackets).
    pub fn is_ipv6(&self) -> bool {
        self.host.contains(':')
    }
}

impl FromStr for Endpoint {
    type Err = ParseError;

    /// Parses one endpoint (`tcp://host:port`, `tls://[::1]:5671`, or
    /// `host:port` meaning TCP); error positions are offsets into `s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_endpoint(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ipv6() {
            write!(f, "{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

/// The failover options, with the defaults ActiveMQ Classic documents for its
/// failover transport (and uses in `FailoverTransport.java`).
///
/// | option (URL name) | field | default | meaning |
/// | --- | --- | --- | --- |
/// | `initialReconnectDelay` | [`initial_reconnect_delay`](Self::initial_reconnect_delay) | 10 ms | delay before the first reconnect attempt |
/// | `maxReconnectDelay` | [`max_reconnect_delay`](Self::max_reconnect_delay) | 30000 ms | cap on the delay between attempts |
/// | `useExponentialBackOff` | [`use_exponential_backoff`](Self::use_exponential_backoff) | `true` | grow the delay after each failed attempt |
/// | `reconnectDelayExponent` (alias `backOffMultiplier`) | [`backoff_multiplier`](Self::backoff_multiplier) | 2.0 | growth factor of the delay |
/// | `maxReconnectAttempts` | [`max_reconnect_attempts`](Self::max_reconnect_attempts) | -1 (unlimited) | reconnect attempts after a lost connection; 0 disables reconnection |
/// | `startupMaxReconnectAttempts` | [`startup_max_reconnect_attempts`](Self::startup_max_reconnect_attempts) | -1 (unlimited) | retries after the first try when starting up |
/// | `randomize` | [`randomize`](Self::randomize) | `true` | try the endpoints in random order |
/// | `priorityBackup` | [`priority_backup`](Self::priority_backup) | `false` | prefer the priority endpoint(s) and move back to them when they return |
/// | `priorityURIs` | [`priority_uris`](Self::priority_uris) | none (the first endpoint) | which endpoints are priority ones |
/// | `timeout` | [`timeout`](Self::timeout) | -1 (none) | how long one connect/reconnect call may wait for a connection; 0 also means none |
/// | `warnAfterReconnectAttempts` | [`warn_after_reconnect_attempts`](Self::warn_after_reconnect_attempts) | 10 | log a warning every N failed attempts; <= 0 disables |
///
/// An *attempt* is one pass over every endpoint in the connect order.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `initialReconnectDelay` (ms, default 10): the delay before the first
    /// reconnect attempt, and the first step of the backoff.
    pub initial_reconnect_delay: Duration,
    /// `maxReconnectDelay` (ms, default 30000): the longest delay between
    /// two attempts. Must not be below `initialReconnectDelay`.
    pub max_reconnect_delay: Duration,
    /// `useExponentialBackOff` (default `true`): multiply the delay by
    /// `backoff_multiplier` after each failed attempt; when `false` every
    /// delay is `initialReconnectDelay`.
    pub use_exponential_backoff: bool,
    /// `reconnectDelayExponent`, also accepted as `backOffMultiplier`
    /// (default 2.0): the factor of the exponential backoff; must be above 1
    /// when the backoff is exponential.
    pub backoff_multiplier: f64,
    /// `maxReconnectAttempts` (default -1 = `None`, unlimited): how many
    /// reconnect attempts [`crate::Connector::reconnect`] makes before it
    /// gives up; `Some(0)` disables reconnection.
    pub max_reconnect_attempts: Option<u32>,
    /// `startupMaxReconnectAttempts` (default -1 = `None`, unlimited): how
    /// many attempts [`crate::Connector::connect`] makes after its first
    /// one before it gives up; `Some(0)` means try once.
    pub startup_max_reconnect_attempts: Option<u32>,
    /// `randomize` (default `true`): shuffle the endpoints before each
    /// attempt (load-balances clients); `false` tries them in order.
    pub randomize: bool,
    /// `priorityBackup` (default `false`): try the priority endpoint(s)
    /// first and, while connected elsewhere, watch for them to come back
    /// ([`crate::Connector::should_move_back`]).
    pub priority_backup: bool,
    /// `priorityURIs` (default empty = the first endpoint is the priority
    /// one): the priority endpoints; each must be one of the endpoints, and
    /// the option needs `priorityBackup=true`.
    pub priority_uris: Vec<Endpoint>,
    /// `timeout` (ms; default -1 = `None`): how long one `connect` or
    /// `reconnect` call may take before it fails; `None` waits as long as
    /// the attempt limit allows. `0` means `None`, as in the broker.
    pub timeout: Option<Duration>,
    /// `warnAfterReconnectAttempts` (default 10): log a warning after every
    /// N failed attempts; a value `<= 0` (`None`) disables the warning.
    pub warn_after_reconnect_attempts: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            initial_reconnect_delay: Duration::from_millis(10),
            max_reconnect_delay: Duration::from_millis(30_000),
            use_exponential_backoff: true,
            backoff_multiplier: 2.0,
            max_reconnect_attempts: None,
            startup_max_reconnect_attempts: None,
            randomize: true,
            priority_backup: false,
            priority_uris: Vec::new(),
            timeout: None,
            warn_after_reconnect_attempts: Some(10),
        }
    }
}

impl Options {
    /// The delay before retry number `n` (0-based):
    /// `min(initial * multiplier^n, max)` with exponential backoff,
    /// `initial` otherwise. Pure; never panics, whatever the fields hold.
    pub fn reconnect_delay(&self, n: u32) -> Duration {
        let initial = self.initial_reconnect_delay;
        if !self.use_exponential_backoff {
            return initial;
        }
        let max = self.max_reconnect_delay.max(initial);
        let exponent = i32::try_from(n).unwrap_or(i32::MAX);
        let nanos = initial.as_nanos() as f64 * self.backoff_multiplier.powi(exponent);
        // NaN (a nonsensical multiplier) and anything at or above the cap
        // give the cap; a negative product gives no delay.
        if nanos.is_nan() || nanos >= max.as_nanos() as f64 {
            return max;
        }
        if nanos <= 0.0 {
            return Duration::ZERO;
        }
        // Below `max` (a Duration), so it fits a u64 of nanoseconds unless
        // `max` is over 584 years; saturate in that case.
        Duration::from_nanos(nanos.round().min(u64::MAX as f64) as u64).min(max)
    }
}
