//! Failover URLs for tandem's clients: a strict parser and a tokio connector.
//!
//! Applications reach a tandem-managed service through a *failover URL*, in
//! the form established broker clients already use (ActiveMQ Classic's
//! failover transport):
//!
//! ```text
//! failover:(tcp://primary:61616,tcp://backup:61616)?randomize=false&priorityBackup=true
//! ```
//!
//! This crate is part of the client library layer (see the design's
//! architecture): [`parse`] turns such a URL into a [`FailoverUrl`] or a
//! [`ParseError`] that points at the offending bytes
//! ([`ParseError::render`] draws a caret under them); [`Connector`] connects
//! to the first endpoint that answers with the URL's backoff, attempt limits
//! and timeout, reconnects after a loss, and notices when the priority
//! endpoint is back ([`Connector::should_move_back`], [`Connector::run`]).
//! `tls://` endpoints use rustls with a caller-supplied configuration
//! ([`Connector::with_tls`]).
//!
//! The parser and [`Options::reconnect_delay`] are pure; only [`Connector`]
//! does I/O.
//!
//! # Options
//!
//! Names are case-sensitive, as in the broker. Defaults are the broker's
//! (ActiveMQ Classic's failover transport reference and
//! `FailoverTransport.java`); an *attempt* is one pass over every endpoint.
//!
//! | option | default | meaning |
//! | --- | --- | --- |
//! | `initialReconnectDelay` | `10` ms | delay before the first reconnect attempt |
//! | `maxReconnectDelay` | `30000` ms | cap on the delay between attempts; must be >= `initialReconnectDelay` |
//! | `useExponentialBackOff` | `true` | `delay(n) = min(initial * multiplier^n, max)`; `false`: always `initial` |
//! | `reconnectDelayExponent`, alias `backOffMultiplier` | `2.0` | the multiplier; must be > 1 with exponential backoff |
//! | `maxReconnectAttempts` | `-1` | reconnect passes after a loss; `-1` unlimited, `0` no reconnection |
//! | `startupMaxReconnectAttempts` | `-1` | retry passes after the first one at startup; `-1` unlimited, `0` try once |
//! | `randomize` | `true` | shuffle the endpoints before each pass |
//! | `priorityBackup` | `false` | prefer priority endpoints; move back to them when they return |
//! | `priorityURIs` | (first endpoint) | comma-separated priority endpoints, each one of the list |
//! | `timeout` | `-1` | ms one `connect`/`reconnect` may take; `-1` and `0`: no limit |
//! | `warnAfterReconnectAttempts` | `10` | log a warning every N failed passes; `<= 0` never |
//!
//! Broker options that only make sense inside a JMS client (`backup`,
//! `trackMessages`, `maxCacheSize`, `updateURIsSupported`, `nested.*`, ...)
//! are rejected with [`ParseErrorKind::UnsupportedOption`], and other
//! unknown names with a did-you-mean.
//!
//! ```
//! use std::time::Duration;
//! use tandem_failover::{FailoverUrl, Scheme};
//!
//! let url: FailoverUrl = "failover:(tcp://localhost:61616,tls://[::1]:61617)?timeout=5000"
//!     .parse()
//!     .unwrap();
//! assert_eq!(url.endpoints[1].scheme, Scheme::Tls);
//! assert_eq!(url.endpoints[1].host, "::1");
//! assert_eq!(url.options.timeout, Some(Duration::from_secs(5)));
//! assert_eq!(url.to_string().parse::<FailoverUrl>().unwrap(), url);
//!
//! let err = "failover:(tcp://a:1)?initialReconectDelay=10".parse::<FailoverUrl>().unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "at byte 21: unknown option \"initialReconectDelay\" (did you mean initialReconnectDelay?)"
//! );
//! ```

#![deny(missing_docs)]
// The connector does I/O and uses tokio's clock; the parser stays pure by
// construction (no clock, no I/O in `parse` or `url`).
#![allow(clippy::disallowed_methods)]

mod connect;
mod parse;
mod url;

pub use connect::{
    ConnectError, Connection, Connector, DEFAULT_CONNECT_TIMEOUT, EndpointFailure, Stream,
};
pub use parse::{NumberProblem, ParseError, ParseErrorKind, parse};
pub use url::{Endpoint, FailoverUrl, Options, Scheme};
