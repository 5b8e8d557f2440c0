//! `tandem://` endpoints: an app resolved through tandem's API, with the
//! API addresses to use, in order of preference.
//!
//! | form | meaning |
//! | --- | --- |
//! | `tandem://web` | app `web`, through the API at `127.0.0.1:7420` |
//! | `tandem://web@api1:7420,api2:7420` | through `api1`, else `api2` (e.g. one per site) |
//! | `tandem://web@agents.dc1.example?site-1=agents.dc2.example` | through the preferred site's API, the backup site given as a parameter (`site-1`, `site-2`, … in order) |
//!
//! A port may be left out (7420). Errors name the offending part.

use std::fmt;

use crate::DEFAULT_PORT;

/// A parsed `tandem://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TandemUrl {
    /// The app whose primary is wanted.
    pub app: String,
    /// API addresses (`host:port`), most preferred first.
    pub apis: Vec<String>,
}

/// Why a `tandem://` endpoint is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tandem URL {url:?}: {reason}")]
pub struct EndpointError {
    /// The URL as given.
    pub url: String,
    /// What is wrong, naming the part.
    pub reason: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn api_address(part: &str) -> Result<String, String> {
    if part.is_empty() {
        return Err("empty API address".into());
    }
    // host, [v6] or host:port, [v6]:port
    let (host, port) = if let Some(rest) = part.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("API address {part:?} has an unclosed '['"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("API address {part:?}: expected ':' after ']'"))?,
            ),
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("API address {part:?} has an invalid host {v6:?}"));
        }
        (format!("[{v6}]"), port)
    } else {
        let (host, port) = match part.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (part, None),
        };
        if host.is_empty() {
            return Err(format!("API address {part:?} has no host"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        {
            return Err(format!("API address {part:?} has an invalid host {host:?}"));
        }
        (host.to_string(), port)
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(format!("API address {part:?} has an invalid port {p:?}"));
            }
            Ok(p) => p,
        },
    };
    Ok(format!("{host}:{port}"))
}

/// Parses a `tandem://` endpoint.
pub fn parse(url: &str) -> Result<TandemUrl, EndpointError> {
    let fail = |reason: String| EndpointError {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("tandem://")
        .ok_or_else(|| fail("it must start with tandem://".into()))?;
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    let (app, apis) = match main.split_once('@') {
        Some((app, apis)) => (app, Some(apis)),
        None => (main, None),
    };
    if !valid_name(app) {
        return Err(fail(format!(
            "app name {app:?} is not a tandem name (lowercase letters, digits, '-' and '_')"
        )));
    }
    let mut list = Vec::new();
    match apis {
        None => list.push(format!("127.0.0.1:{DEFAULT_PORT}")),
        Some(apis) => {
            for part in apis.split(',') {
                list.push(api_address(part).map_err(fail)?);
            }
        }
    }
    if let Some(query) = query {
        if query.is_empty() {
            return Err(fail("'?' with no parameters".into()));
        }
        let mut sites: Vec<(u32, String)> = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                fail(format!(
                    "parameter {pair:?} has no value (expected site-N=HOST)"
                ))
            })?;
            let n = key
                .strip_prefix("site-")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    fail(format!(
                        "unknown parameter {key:?} (expected site-1, site-2, …)"
                    ))
                })?;
            if sites.iter().any(|(m, _)| *m == n) {
                return Err(fail(format!("parameter {key:?} is given twice")));
            }
            sites.push((n, api_address(value).map_err(fail)?));
        }
        sites.sort();
        list.extend(sites.into_iter().map(|(_, a)| a));
    }
    let mut seen = std::collections::BTreeSet::new();
    for a in &list {
        if !seen.insert(a) {
            return Err(fail(format!("API address {a} is listed twice")));
        }
    }
    Ok(TandemUrl {
        app: app.to_string(),
        apis: list,
    })
}

impl fmt::Display for TandemUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tandem://{}@{}", self.app, self.apis.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_forms() {
        let u = parse("tandem://web").unwrap();
        assert_eq!(u.apis, ["127.0.0.1:7420"]);
        let u = parse("tandem://web@api1:7421,api2").unwrap();
        assert_eq!(
            (u.app.as_str(), u.apis.clone()),
            ("web", vec!["api1:7421".to_string(), "api2:7420".into()])
        );
        let u = parse(
            "tandem://web@agents.dc1.example?site-2=agents.dc3.example&site-1=agents.dc2.example",
        )
        .unwrap();
        assert_eq!(
            u.apis,
            [
                "agents.dc1.example:7420",
                "agents.dc2.example:7420",
                "agents.dc3.example:7420"
            ]
        );
        assert_eq!(parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn malformed_endpoints_name_the_offending_part() {
        let cases = [
            ("http://web", "must start with tandem://"),
            ("tandem://", "app name \"\""),
            ("tandem://Web", "app name \"Web\""),
            ("tandem://web@", "empty API address"),
            ("tandem://web@a:1,,b:2", "empty API address"),
            ("tandem://web@a:0", "invalid port \"0\""),
            ("tandem://web@a:99999", "invalid port \"99999\""),
            ("tandem://web@a:x", "invalid port \"x\""),
            ("tandem://web@:7420", "has no host"),
            ("tandem://web@a b", "invalid host"),
            ("tandem://web@a?", "'?' with no parameters"),
            ("tandem://web@a?site-1", "has no value"),
            ("tandem://web@a?backup=b", "unknown parameter \"backup\""),
            ("tandem://web@a?site-0=b", "unknown parameter \"site-0\""),
            ("tandem://web@a?site-1=b&site-1=c", "given twice"),
            ("tandem://web@a?site-1=a", "listed twice"),
        ];
        for (url, want) in cases {
            let err = parse(url).expect_err(url).to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
    }
}
