//! The failover URL parser: pure, no I/O, every error pointing at the byte
//! range that caused it.
//!
//! Grammar (whitespace around the whole input and around each endpoint of a
//! list is ignored; nothing else is):
//!
//! ```text
//! url       = "failover:" ["//"] "(" list ")" ["?" query]
//!           | "failover:" ["//"] list          (bare list: no options)
//!           | list                             (no prefix: no options)
//! list      = endpoint *("," endpoint)
//! endpoint  = [scheme "://"] host ":" port     (no scheme means tcp)
//! scheme    = "tcp" | "tls"                    (case-insensitive)
//! host      = hostname | ipv4 | "[" ipv6 "]"
//! query     = option *("&" option)
//! option    = name "=" value                   (names are case-sensitive)
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::time::Duration;

use crate::url::{Endpoint, FailoverUrl, Options, Scheme};

/// Why a failover URL was rejected, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {position}: {kind}")]
pub struct ParseError {
    /// Byte offset in the input of the offending part.
    pub position: usize,
    /// Length in bytes of the offending part (0 when something is missing
    /// at `position`).
    pub len: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    fn new(span: Range<usize>, kind: ParseErrorKind) -> Self {
        ParseError {
            position: span.start,
            len: span.end.saturating_sub(span.start),
            kind,
        }
    }

    /// Renders the error for a person: the input, a line of `^` under the
    /// offending part, and the message.
    ///
    /// ```text
    /// failover:(tcp://a:1)?initialReconectDelay=10
    ///                      ^^^^^^^^^^^^^^^^^^^^
    /// at byte 21: unknown option "initialReconectDelay" (did you mean initialReconnectDelay?)
    /// ```
    pub fn render(&self, input: &str) -> String {
        let start = floor_char_boundary(input, self.position);
        let end = floor_char_boundary(input, self.position.saturating_add(self.len)).max(start);
        let visible: String = input
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let indent = input[..start].chars().count();
        let width = input[start..end].chars().count().max(1);
        format!(
            "{visible}\n{}{}\n{self}",
            " ".repeat(indent),
            "^".repeat(width)
        )
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// What is wrong with a failover URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// The input is empty (or only whitespace).
    Empty,
    /// Something other than `failover:` stands before the `(`.
    UnknownPrefix {
        /// The prefix as written, without the colon.
        prefix: String,
    },
    /// A `(` has no matching `)`.
    UnclosedParenthesis,
    /// A `)` without a `(`, or a parenthesis inside an endpoint.
    UnexpectedParenthesis,
    /// Something other than `?options` follows the closing `)`.
    TrailingGarbage,
    /// A `?` after a bare list: options need the parenthesised form.
    OptionsNeedParentheses,
    /// A `failover:` URL inside a failover URL.
    NestedFailover,
    /// No endpoint at all: `failover:()` or `failover:`.
    EmptyEndpointList,
    /// An empty slot in a list (`a:1,,b:2`, a trailing comma).
    EmptyEndpoint,
    /// A scheme other than `tcp` and `tls`.
    UnknownScheme {
        /// The scheme as written (may be empty).
        scheme: String,
    },
    /// `scheme:` not followed by `//`.
    MissingSlashes {
        /// The scheme as written.
        scheme: String,
    },
    /// No `:port` after the host.
    MissingPort,
    /// The port is not a number.
    BadPort {
        /// The port as written.
        text: String,
    },
    /// The port is 0 or above 65535.
    PortOutOfRange {
        /// The port as written.
        text: String,
    },
    /// Something follows the port (a path, `@`, ...).
    UnexpectedAfterPort {
        /// What follows the port.
        text: String,
    },
    /// Per-endpoint options (`tcp://a:1?x=y`) are not supported.
    EndpointOptions,
    /// The host is not a valid host name, IPv4 address or bracketed IPv6
    /// address.
    BadHost {
        /// The host as written.
        host: String,
        /// Why it is not valid.
        reason: &'static str,
    },
    /// The same endpoint is listed twice.
    DuplicateEndpoint {
        /// The endpoint, in canonical form.
        endpoint: String,
    },
    /// A `?` with no option after it.
    EmptyQuery,
    /// An empty option between `&`s (or a trailing `&`).
    EmptyOption,
    /// `=value` with no name.
    EmptyOptionName,
    /// An option without a value (`randomize` or `randomize=`).
    EmptyOptionValue {
        /// The option's name.
        name: String,
    },
    /// An option name the failover transport does not have.
    UnknownOption {
        /// The name as written.
        name: String,
        /// The closest known name, if any is close.
        suggestion: Option<&'static str>,
        /// True when `name` differs from `suggestion` only in case.
        case_mismatch: bool,
    },
    /// A broker option this connector does not implement (message
    /// tracking, cluster URI updates, backup pools, `nested.*`).
    UnsupportedOption {
        /// The name as written.
        name: String,
    },
    /// The same option twice (`backOffMultiplier` and
    /// `reconnectDelayExponent` are one option).
    DuplicateOption {
        /// The name as written the second time.
        name: String,
        /// Byte offset of the first occurrence.
        first_position: usize,
    },
    /// A value that should be a number is not a valid one.
    BadNumber {
        /// The option's name.
        name: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        problem: NumberProblem,
    },
    /// A value that should be `true` or `false`.
    BadBoolean {
        /// The option's name.
        name: String,
        /// The value as written.
        value: String,
    },
    /// The backoff multiplier is at most 1 while the backoff is exponential.
    MultiplierTooSmall {
        /// The value as written.
        value: String,
    },
    /// `initialReconnectDelay` is above `maxReconnectDelay`.
    DelayOrder {
        /// The initial delay, in ms.
        initial_ms: u128,
        /// The maximum delay, in ms.
        max_ms: u128,
    },
    /// A `priorityURIs` entry that is not one of the endpoints.
    PriorityUriNotListed {
        /// The entry, in canonical form.
        endpoint: String,
    },
    /// `priorityURIs` without `priorityBackup=true` (it would do nothing).
    PriorityUrisWithoutPriorityBackup,
}

/// What is wrong with a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberProblem {
    /// Not an integer (letters, a fraction, empty digits).
    NotAnInteger,
    /// Not a decimal number (`digits[.digits]`).
    NotADecimal,
    /// Negative where the option does not allow it.
    Negative,
    /// Too large for the option.
    Overflow,
}

impl fmt::Display for ParseErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ParseErrorKind as K;
        match self {
            K::Empty => f.write_str("empty failover URL"),
            K::UnknownPrefix { prefix } => write!(
                f,
                "unknown prefix \"{prefix}:\" (expected failover:(...))"
            ),
            K::UnclosedParenthesis => f.write_str("\"(\" is never closed"),
            K::UnexpectedParenthesis => f.write_str("unexpected parenthesis"),
            K::TrailingGarbage => {
                f.write_str("unexpected text after \")\" (only ?options may follow)")
            }
            K::OptionsNeedParentheses => f.write_str(
                "options need parentheses around the endpoints: failover:(a:1,b:2)?option=value",
            ),
            K::NestedFailover => f.write_str("a failover URL cannot contain another failover URL"),
            K::EmptyEndpointList => f.write_str("no endpoint in the list"),
            K::EmptyEndpoint => f.write_str("empty endpoint in the list"),
            K::UnknownScheme { scheme } if scheme.is_empty() => {
                f.write_str("missing scheme before \"://\" (expected tcp or tls)")
            }
            K::UnknownScheme { scheme } if scheme.eq_ignore_ascii_case("ssl") => write!(
                f,
                "unknown scheme \"{scheme}\" (use tls:// for TLS endpoints)"
            ),
            K::UnknownScheme { scheme } => {
                write!(f, "unknown scheme \"{scheme}\" (expected tcp or tls)")
            }
            K::MissingSlashes { scheme } => {
                write!(f, "expected \"//\" after \"{scheme}:\"")
            }
            K::MissingPort => f.write_str("missing port (write host:port)"),
            K::BadPort { text } => write!(f, "port \"{text}\" is not a number"),
            K::PortOutOfRange { text } => {
                write!(f, "port {text} is out of range (1 to 65535)")
            }
            K::UnexpectedAfterPort { text } => write!(
                f,
                "unexpected \"{text}\" after the port (an endpoint is scheme://host:port)"
            ),
            K::EndpointOptions => f.write_str(
                "options on an endpoint are not supported (put failover options after the closing parenthesis)",
            ),
            K::BadHost { host, reason } => write!(f, "bad host \"{host}\": {reason}"),
            K::DuplicateEndpoint { endpoint } => {
                write!(f, "endpoint {endpoint} is listed twice")
            }
            K::EmptyQuery => f.write_str("\"?\" is not followed by any option"),
            K::EmptyOption => f.write_str("empty option (stray \"&\")"),
            K::EmptyOptionName => f.write_str("option without a name"),
            K::EmptyOptionValue { name } => {
                write!(f, "option \"{name}\" has no value (write {name}=VALUE)")
            }
            K::UnknownOption {
                name,
                suggestion: Some(s),
                case_mismatch: true,
            } => write!(
                f,
                "unknown option \"{name}\" (option names are case-sensitive: {s})"
            ),
            K::UnknownOption {
                name,
                suggestion: Some(s),
                ..
            } => write!(f, "unknown option \"{name}\" (did you mean {s}?)"),
            K::UnknownOption { name, .. } => write!(f, "unknown option \"{name}\""),
            K::UnsupportedOption { name } => write!(
                f,
                "option \"{name}\" of the broker's failover transport is not supported by tandem's connector"
            ),
            K::DuplicateOption {
                name,
                first_position,
            } => write!(
                f,
                "option \"{name}\" is given twice (first at byte {first_position})"
            ),
            K::BadNumber {
                name,
                value,
                problem,
            } => {
                let what = match problem {
                    NumberProblem::NotAnInteger => "is not an integer",
                    NumberProblem::NotADecimal => "is not a decimal number",
                    NumberProblem::Negative if allows_minus_one(name) => {
                        "is negative (the only negative value allowed is -1)"
                    }
                    NumberProblem::Negative => "is negative",
                    NumberProblem::Overflow => "is too large",
                };
                write!(f, "value \"{value}\" of {name} {what}")
            }
            K::BadBoolean { name, value } => {
                write!(f, "value \"{value}\" of {name} is not true or false")
            }
            K::MultiplierTooSmall { value } => write!(
                f,
                "backoff multiplier {value} must be above 1 with useExponentialBackOff=true"
            ),
            K::DelayOrder { initial_ms, max_ms } => write!(
                f,
                "initialReconnectDelay ({initial_ms} ms) is above maxReconnectDelay ({max_ms} ms)"
            ),
            K::PriorityUriNotListed { endpoint } => write!(
                f,
                "priority endpoint {endpoint} is not one of the failover endpoints"
            ),
            K::PriorityUrisWithoutPriorityBackup => {
                f.write_str("priorityURIs has no effect without priorityBackup=true")
            }
        }
    }
}

fn allows_minus_one(name: &str) -> bool {
    matches!(
        name,
        "maxReconnectAttempts" | "startupMaxReconnectAttempts" | "timeout"
    )
}

/// The options this parser knows; aliases map to one id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Opt {
    InitialReconnectDelay,
    MaxReconnectDelay,
    UseExponentialBackOff,
    BackOffMultiplier,
    MaxReconnectAttempts,
    StartupMaxReconnectAttempts,
    Randomize,
    PriorityBackup,
    PriorityUris,
    Timeout,
    WarnAfterReconnectAttempts,
}

/// Every accepted option name (case-sensitive, as in the broker).
const OPTION_NAMES: &[(&str, Opt)] = &[
    ("initialReconnectDelay", Opt::InitialReconnectDelay),
    ("maxReconnectDelay", Opt::MaxReconnectDelay),
    ("useExponentialBackOff", Opt::UseExponentialBackOff),
    ("backOffMultiplier", Opt::BackOffMultiplier),
    ("reconnectDelayExponent", Opt::BackOffMultiplier),
    ("maxReconnectAttempts", Opt::MaxReconnectAttempts),
    (
        "startupMaxReconnectAttempts",
        Opt::StartupMaxReconnectAttempts,
    ),
    ("randomize", Opt::Randomize),
    ("priorityBackup", Opt::PriorityBackup),
    ("priorityURIs", Opt::PriorityUris),
    ("timeout", Opt::Timeout),
    (
        "warnAfterReconnectAttempts",
        Opt::WarnAfterReconnectAttempts,
    ),
];

/// Options of the broker's failover transport that only make sense inside a
/// JMS client (message tracking, broker-pushed URI updates, backup pools).
const UNSUPPORTED_OPTIONS: &[&str] = &[
    "backup",
    "backupPoolSize",
    "maxCacheSize",
    "trackMessages",
    "trackTransactionProducers",
    "updateURIsSupported",
    "updateURIsURL",
    "rebalanceUpdateURIs",
    "reconnectSupported",
    "reconnectDelay",
];

/// Parses a failover URL.
///
/// Accepted forms: `failover:(uri1,...,uriN)?options`, the broker's bare
/// `failover:uri1,...,uriN` (no options: a `?` there is an error rather
/// than, as in the broker, an option of the last endpoint), the older
/// `failover://(...)`, and a bare list without any prefix
/// (`tcp://a:1,tcp://b:2`, or one endpoint), which means the same as
/// `failover:(...)` with default options. An endpoint without a scheme is
/// TCP. See [`crate::Options`] for the options.
pub fn parse(input: &str) -> Result<FailoverUrl, ParseError> {
    let (start, end) = trim_span(input, 0..input.len());
    if start == end {
        return Err(ParseError::new(0..input.len(), ParseErrorKind::Empty));
    }
    Parser { input }.url(start, end)
}

/// Parses one endpoint (`[scheme://]host:port`).
pub(crate) fn parse_endpoint(input: &str) -> Result<Endpoint, ParseError> {
    let (start, end) = trim_span(input, 0..input.len());
    if start == end {
        return Err(ParseError::new(0..input.len(), ParseErrorKind::Empty));
    }
    Parser { input }.endpoint(start, end)
}

fn trim_span(input: &str, r: Range<usize>) -> (usize, usize) {
    let s = &input[r.clone()];
    let lead = s.len() - s.trim_start().len();
    let trail = s.len() - s.trim_end().len();
    if lead == s.len() {
        return (r.start, r.start);
    }
    (r.start + lead, r.end - trail)
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

struct Parser<'a> {
    input: &'a str,
}

type Res<T> = Result<T, ParseError>;

fn err<T>(span: Range<usize>, kind: ParseErrorKind) -> Res<T> {
    Err(ParseError::new(span, kind))
}

impl<'a> Parser<'a> {
    fn s(&self, r: Range<usize>) -> &'a str {
        &self.input[r]
    }

    fn url(&self, start: usize, end: usize) -> Res<FailoverUrl> {
        let text = self.s(start..end);
        let mut pos = start;
        let prefixed = starts_with_ignore_case(text, "failover:");
        if prefixed {
            pos += "failover:".len();
            if self.s(pos..end).starts_with("//") {
                pos += 2;
            }
        } else if let Some(colon) = text.find(":(") {
            // `something:(` is a composite URL with a prefix we don't know.
            let prefix = &text[..colon];
            if prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
            {
                return err(
                    start..start + colon + 1,
                    ParseErrorKind::UnknownPrefix {
                        prefix: prefix.to_string(),
                    },
                );
            }
        }

        let rest = self.s(pos..end);
        let (endpoints, query) = if rest.starts_with('(') {
            let open = pos;
            let close = self.matching_paren(open, end)?;
            let endpoints = self.list(open + 1, close, open..close + 1)?;
            let after = close + 1;
            let query = match self.s(after..end).chars().next() {
                None => None,
                Some('?') => Some(after),
                Some(')') => return err(after..after + 1, ParseErrorKind::UnexpectedParenthesis),
                Some(_) => return err(after..end, ParseErrorKind::TrailingGarbage),
            };
            (endpoints, query)
        } else {
            if let Some(q) = rest.find('?') {
                return err(pos + q..end, ParseErrorKind::OptionsNeedParentheses);
            }
            if pos == end {
                return err(start..end, ParseErrorKind::EmptyEndpointList);
            }
            (self.list(pos, end, start..end)?, None)
        };

        let mut options = Options::default();
        if let Some(q) = query {
            self.query(q, end, &endpoints, &mut options)?;
        }
        Ok(FailoverUrl { endpoints, options })
    }

    /// The index of the `)` matching the `(` at `open`.
    fn matching_paren(&self, open: usize, end: usize) -> Res<usize> {
        let mut depth = 0usize;
        for (i, c) in self.s(open..end).char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(open + i);
                    }
                }
                _ => {}
            }
        }
        err(open..open + 1, ParseErrorKind::UnclosedParenthesis)
    }

    /// A comma-separated endpoint list in `start..end`; `whole` is what to
    /// point at when it is empty.
    fn list(&self, start: usize, end: usize, whole: Range<usize>) -> Res<Vec<Endpoint>> {
        if self.s(start..end).trim().is_empty() {
            return err(whole, ParseErrorKind::EmptyEndpointList);
        }
        let mut endpoints: Vec<Endpoint> = Vec::new();
        let mut item_start = start;
        for piece in self.s(start..end).split(',') {
            let item_end = item_start + piece.len();
            let (s, e) = trim_span(self.input, item_start..item_end);
            if s == e {
                // Point at the comma (or parenthesis) that ends the slot.
                let at = item_end.min(self.input.len());
                let len = usize::from(at < self.input.len());
                return err(at..at + len, ParseErrorKind::EmptyEndpoint);
            }
            let endpoint = self.endpoint(s, e)?;
            if endpoints.contains(&endpoint) {
                return err(
                    s..e,
                    ParseErrorKind::DuplicateEndpoint {
                        endpoint: endpoint.to_string(),
                    },
                );
            }
            endpoints.push(endpoint);
            item_start = item_end + 1;
        }
        Ok(endpoints)
    }

    /// One endpoint in `start..end` (already trimmed, non-empty).
    fn endpoint(&self, start: usize, end: usize) -> Res<Endpoint> {
        let text = self.s(start..end);
        if let Some(i) = text.to_ascii_lowercase().find("failover:") {
            return err(start + i..end, ParseErrorKind::NestedFailover);
        }
        if let Some(i) = text.find(['(', ')']) {
            return err(
                start + i..start + i + 1,
                ParseErrorKind::UnexpectedParenthesis,
            );
        }
        if let Some(i) = text.find('?') {
            return err(start + i..end, ParseErrorKind::EndpointOptions);
        }

        // The scheme: `name://`, or `name:/` (a typo), else none (tcp).
        let (scheme, host_start) = if let Some(i) = text.find("://") {
            let name = &text[..i];
            let scheme = if name.eq_ignore_ascii_case("tcp") {
                Scheme::Tcp
            } else if name.eq_ignore_ascii_case("tls") {
                Scheme::Tls
            } else {
                let span = if name.is_empty() {
                    start..start + 3
                } else {
                    start..start + i
                };
                return err(
                    span,
                    ParseErrorKind::UnknownScheme {
                        scheme: name.to_string(),
                    },
                );
            };
            (scheme, start + i + 3)
        } else if let Some(i) = text.find(":/").filter(|&i| is_scheme_name(&text[..i])) {
            return err(
                start + i + 1..start + i + 2,
                ParseErrorKind::MissingSlashes {
                    scheme: text[..i].to_string(),
                },
            );
        } else {
            (Scheme::Tcp, start)
        };

        let rest = self.s(host_start..end);
        let (host, port_colon) = if rest.starts_with('[') {
            let Some(close) = rest.find(']') else {
                return err(
                    host_start..end,
                    ParseErrorKind::BadHost {
                        host: rest.to_string(),
                        reason: "\"[\" without \"]\"",
                    },
                );
            };
            let inner = &rest[1..close];
            let Ok(addr) = inner.parse::<Ipv6Addr>() else {
                return err(
                    host_start..host_start + close + 1,
                    ParseErrorKind::BadHost {
                        host: inner.to_string(),
                        reason: "not an IPv6 address",
                    },
                );
            };
            let after = host_start + close + 1;
            match self.s(after..end).chars().next() {
                Some(':') => (addr.to_string(), after),
                None => return err(host_start..after, ParseErrorKind::MissingPort),
                Some(_) => {
                    return err(
                        after..end,
                        ParseErrorKind::UnexpectedAfterPort {
                            text: self.s(after..end).to_string(),
                        },
                    );
                }
            }
        } else {
            match rest.find(':') {
                None => {
                    self.host(host_start, end)?;
                    return err(host_start..end, ParseErrorKind::MissingPort);
                }
                Some(c) if rest[c + 1..].contains(':') => {
                    return err(
                        host_start..end,
                        ParseErrorKind::BadHost {
                            host: rest.to_string(),
                            reason: "an IPv6 address must be in brackets, e.g. tcp://[::1]:61616",
                        },
                    );
                }
                Some(c) => (self.host(host_start, host_start + c)?, host_start + c),
            }
        };
        let port = self.port(port_colon + 1, end)?;
        Ok(Endpoint { scheme, host, port })
    }

    /// A host name or IPv4 address in `start..end`, normalised.
    fn host(&self, start: usize, end: usize) -> Res<String> {
        let host = self.s(start..end);
        let bad = |span: Range<usize>, reason: &'static str| {
            err(
                span,
                ParseErrorKind::BadHost {
                    host: host.to_string(),
                    reason,
                },
            )
        };
        if host.is_empty() {
            return bad(start..end, "empty host");
        }
        if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return match host.parse::<Ipv4Addr>() {
                Ok(addr) => Ok(addr.to_string()),
                Err(_) => bad(start..end, "not an IPv4 address"),
            };
        }
        if let Some((i, c)) = host
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
        {
            let reason = if c.is_whitespace() {
                "contains whitespace"
            } else {
                "only letters, digits, '-', '_' and '.' are allowed in a host name"
            };
            return bad(start + i..start + i + c.len_utf8(), reason);
        }
        if host.len() > 253 {
            return bad(start..end, "longer than 253 characters");
        }
        let mut label_start = start;
        for label in host.split('.') {
            let span = label_start..label_start + label.len();
            if label.is_empty() {
                return bad(
                    label_start..(label_start + 1).min(end),
                    "empty label (two dots, or a dot at an end)",
                );
            }
            if label.len() > 63 {
                return bad(span, "a label is longer than 63 characters");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad(span, "a label starts or ends with '-'");
            }
            label_start += label.len() + 1;
        }
        Ok(host.to_ascii_lowercase())
    }

    /// A port in `start..end` (the text after the colon).
    fn port(&self, start: usize, end: usize) -> Res<u16> {
        let text = self.s(start..end);
        if text.is_empty() {
            return err(start..start, ParseErrorKind::MissingPort);
        }
        let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return err(
                start..end,
                ParseErrorKind::BadPort {
                    text: text.to_string(),
                },
            );
        }
        if digits < text.len() {
            let tail = &text[digits..];
            if tail.starts_with(['/', '@', '#']) {
                return err(
                    start + digits..end,
                    ParseErrorKind::UnexpectedAfterPort {
                        text: tail.to_string(),
                    },
                );
            }
            return err(
                start..end,
                ParseErrorKind::BadPort {
                    text: text.to_string(),
                },
            );
        }
        match text.parse::<u64>() {
            Ok(n @ 1..=65535) => Ok(n as u16),
            _ => err(
                start..end,
                ParseErrorKind::PortOutOfRange {
                    text: text.to_string(),
                },
            ),
        }
    }

    /// The query after the `?` at `q`, up to `end`.
    fn query(
        &self,
        q: usize,
        end: usize,
        endpoints: &[Endpoint],
        options: &mut Options,
    ) -> Res<()> {
        if q + 1 == end {
            return err(q..q + 1, ParseErrorKind::EmptyQuery);
        }
        // Where each option was first given (name start), and its value span.
        let mut seen: HashMap<Opt, (usize, Range<usize>)> = HashMap::new();
        let mut part_start = q + 1;
        for part in self.s(q + 1..end).split('&') {
            let part_end = part_start + part.len();
            let span = part_start..part_end;
            part_start = part_end + 1;
            if part.is_empty() {
                // Point at the `&` that should not be there: the one that
                // ends this empty slot, or the trailing one.
                let at = if span.start < end {
                    span.start
                } else {
                    span.start - 1
                };
                return err(at..at + 1, ParseErrorKind::EmptyOption);
            }
            let (name_span, value_span) = match part.find('=') {
                Some(eq) => (span.start..span.start + eq, span.start + eq + 1..span.end),
                None => (span.clone(), span.end..span.end),
            };
            let name = self.s(name_span.clone());
            if name.is_empty() {
                return err(span, ParseErrorKind::EmptyOptionName);
            }
            let opt = self.option_name(name, name_span.clone())?;
            if let Some((first, _)) = seen.get(&opt) {
                return err(
                    name_span,
                    ParseErrorKind::DuplicateOption {
                        name: name.to_string(),
                        first_position: *first,
                    },
                );
            }
            let value = self.s(value_span.clone());
            if value.is_empty() {
                return err(
                    value_span,
                    ParseErrorKind::EmptyOptionValue {
                        name: name.to_string(),
                    },
                );
            }
            seen.insert(opt, (name_span.start, value_span.clone()));
            self.option_value(opt, name, value_span, endpoints, options)?;
        }

        // Checks across options, pointing at what the user wrote.
        if options.use_exponential_backoff
            && options.backoff_multiplier <= 1.0
            && let Some((_, value)) = seen.get(&Opt::BackOffMultiplier)
        {
            return err(
                value.clone(),
                ParseErrorKind::MultiplierTooSmall {
                    value: self.s(value.clone()).to_string(),
                },
            );
        }
        if options.initial_reconnect_delay > options.max_reconnect_delay {
            let initial = seen.get(&Opt::InitialReconnectDelay);
            let max = seen.get(&Opt::MaxReconnectDelay);
            let span = match (initial, max) {
                (Some(a), Some(b)) => {
                    if a.0 > b.0 {
                        a.1.clone()
                    } else {
                        b.1.clone()
                    }
                }
                (Some(a), None) => a.1.clone(),
                (None, Some(b)) => b.1.clone(),
                (None, None) => q..end,
            };
            return err(
                span,
                ParseErrorKind::DelayOrder {
                    initial_ms: options.initial_reconnect_delay.as_millis(),
                    max_ms: options.max_reconnect_delay.as_millis(),
                },
            );
        }
        if !options.priority_backup
            && let Some((name_at, _)) = seen.get(&Opt::PriorityUris)
        {
            return err(
                *name_at..*name_at + "priorityURIs".len(),
                ParseErrorKind::PriorityUrisWithoutPriorityBackup,
            );
        }
        Ok(())
    }

    fn option_name(&self, name: &str, span: Range<usize>) -> Res<Opt> {
        if let Some((_, opt)) = OPTION_NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(*opt);
        }
        if name.starts_with("nested.") || UNSUPPORTED_OPTIONS.contains(&name) {
            return err(
                span,
                ParseErrorKind::UnsupportedOption {
                    name: name.to_string(),
                },
            );
        }
        let (suggestion, case_mismatch) = suggest(name);
        err(
            span,
            ParseErrorKind::UnknownOption {
                name: name.to_string(),
                suggestion,
                case_mismatch,
            },
        )
    }

    fn option_value(
        &self,
        opt: Opt,
        name: &str,
        span: Range<usize>,
        endpoints: &[Endpoint],
        o: &mut Options,
    ) -> Res<()> {
        let value = self.s(span.clone());
        let bad_number = |problem| {
            err(
                span.clone(),
                ParseErrorKind::BadNumber {
                    name: name.to_string(),
                    value: value.to_string(),
                    problem,
                },
            )
        };
        let boolean = || match value {
            v if v.eq_ignore_ascii_case("true") => Ok(true),
            v if v.eq_ignore_ascii_case("false") => Ok(false),
            _ => err(
                span.clone(),
                ParseErrorKind::BadBoolean {
                    name: name.to_string(),
                    value: value.to_string(),
                },
            ),
        };
        match opt {
            Opt::InitialReconnectDelay | Opt::MaxReconnectDelay => {
                let ms = match integer(value) {
                    Ok(n) if n < 0 => return bad_number(NumberProblem::Negative),
                    Ok(n) => u64::try_from(n).map_err(|_| ()),
                    Err(p) => return bad_number(p),
                };
                let Ok(ms) = ms else {
                    return bad_number(NumberProblem::Overflow);
                };
                let d = Duration::from_millis(ms);
                if opt == Opt::InitialReconnectDelay {
                    o.initial_reconnect_delay = d;
                } else {
                    o.max_reconnect_delay = d;
                }
            }
            Opt::UseExponentialBackOff => o.use_exponential_backoff = boolean()?,
            Opt::Randomize => o.randomize = boolean()?,
            Opt::PriorityBackup => o.priority_backup = boolean()?,
            Opt::BackOffMultiplier => match decimal(value) {
                Ok(m) => o.backoff_multiplier = m,
                Err(p) => return bad_number(p),
            },
            Opt::MaxReconnectAttempts | Opt::StartupMaxReconnectAttempts => {
                let limit = match integer(value) {
                    Ok(-1) => None,
                    Ok(n) if n < 0 => return bad_number(NumberProblem::Negative),
                    Ok(n) => match u32::try_from(n) {
                        Ok(n) => Some(n),
                        Err(_) => return bad_number(NumberProblem::Overflow),
                    },
                    Err(p) => return bad_number(p),
                };
                if opt == Opt::MaxReconnectAttempts {
                    o.max_reconnect_attempts = limit;
                } else {
                    o.startup_max_reconnect_attempts = limit;
                }
            }
            Opt::Timeout => {
                o.timeout = match integer(value) {
                    Ok(-1 | 0) => None,
                    Ok(n) if n < 0 => return bad_number(NumberProblem::Negative),
                    Ok(n) => match u64::try_from(n) {
                        Ok(ms) => Some(Duration::from_millis(ms)),
                        Err(_) => return bad_number(NumberProblem::Overflow),
                    },
                    Err(p) => return bad_number(p),
                };
            }
            Opt::WarnAfterReconnectAttempts => {
                o.warn_after_reconnect_attempts = match integer(value) {
                    Ok(n) if n <= 0 => None,
                    Ok(n) => match u32::try_from(n) {
                        Ok(n) => Some(n),
                        Err(_) => return bad_number(NumberProblem::Overflow),
                    },
                    Err(p) => return bad_number(p),
                };
            }
            Opt::PriorityUris => {
                let list = self.list(span.start, span.end, span.clone())?;
                for (i, endpoint) in list.iter().enumerate() {
                    if !endpoints.contains(endpoint) {
                        // Find the entry's text again to point at it.
                        let at = self.nth_item(span.clone(), i);
                        return err(
                            at,
                            ParseErrorKind::PriorityUriNotListed {
                                endpoint: endpoint.to_string(),
                            },
                        );
                    }
                }
                o.priority_uris = list;
            }
        }
        Ok(())
    }

    /// The trimmed span of the `n`th comma-separated item in `span`.
    fn nth_item(&self, span: Range<usize>, n: usize) -> Range<usize> {
        let mut start = span.start;
        for (i, piece) in self.s(span.clone()).split(',').enumerate() {
            if i == n {
                let (s, e) = trim_span(self.input, start..start + piece.len());
                return s..e;
            }
            start += piece.len() + 1;
        }
        span
    }
}

fn is_scheme_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
}

/// An integer: optional `-`, then ASCII digits.
fn integer(value: &str) -> Result<i128, NumberProblem> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberProblem::NotAnInteger);
    }
    // More than 30 digits overflows every option; i128 holds 38.
    if digits.trim_start_matches('0').len() > 30 {
        return Err(NumberProblem::Overflow);
    }
    value
        .parse::<i128>()
        .map_err(|_| NumberProblem::NotAnInteger)
}

/// A decimal number `digits[.digits]`, finite and not negative.
fn decimal(value: &str) -> Result<f64, NumberProblem> {
    if value.starts_with('-') && decimal(&value[1..]).is_ok() {
        return Err(NumberProblem::Negative);
    }
    let (int, frac) = match value.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (value, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || frac.is_some_and(|f| !all_digits(f)) {
        return Err(NumberProblem::NotADecimal);
    }
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(NumberProblem::Overflow),
        Err(_) => Err(NumberProblem::NotADecimal),
    }
}

/// The known option closest to an unknown `name`, and whether it differs
/// only in case.
fn suggest(name: &str) -> (Option<&'static str>, bool) {
    if let Some((n, _)) = OPTION_NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    {
        return (Some(n), true);
    }
    let lower = name.to_ascii_lowercase();
    let best = OPTION_NAMES
        .iter()
        .map(|(n, _)| (levenshtein(&lower, &n.to_ascii_lowercase()), *n))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, n)) if d <= 3 && d * 3 <= n.len() => (Some(n), false),
        _ => (None, false),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    #[test]
    fn integers_reject_fractions_and_huge_values() {
        assert_eq!(integer("12"), Ok(12));
        assert_eq!(integer("-1"), Ok(-1));
        assert_eq!(integer("1.5"), Err(NumberProblem::NotAnInteger));
        assert_eq!(integer("-"), Err(NumberProblem::NotAnInteger));
        assert_eq!(integer(&"9".repeat(40)), Err(NumberProblem::Overflow));
        assert_eq!(integer(&format!("{}1", "0".repeat(50))), Ok(1));
    }

    #[test]
    fn decimals_are_plain_digits() {
        assert_eq!(decimal("2"), Ok(2.0));
        assert_eq!(decimal("1.5"), Ok(1.5));
        assert_eq!(decimal("-2"), Err(NumberProblem::Negative));
        assert_eq!(decimal("inf"), Err(NumberProblem::NotADecimal));
        assert_eq!(decimal("1e5"), Err(NumberProblem::NotADecimal));
        assert_eq!(decimal(".5"), Err(NumberProblem::NotADecimal));
        assert_eq!(decimal(&"9".repeat(400)), Err(NumberProblem::Overflow));
    }
}
