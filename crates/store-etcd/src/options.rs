//! How to reach an etcd cluster: [`EtcdOptions`], [`EtcdTls`] and the
//! `etcd://` store URL that the CLI accepts ([`parse_store_url`]).

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

/// The client port etcd listens on unless told otherwise.
pub const DEFAULT_CLIENT_PORT: u16 = 2379;

/// TLS material for `https://` endpoints (`etcd+tls://` URLs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// PEM file of the CA that signed the members' server certificates.
    pub ca: PathBuf,
    /// PEM client certificate, for clusters that require client
    /// certificates (`--client-cert-auth`). Needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// How [`crate::EtcdStore`] talks to the cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// How long [`crate::EtcdStore::connect`] waits for a first answer from
    /// any member, and the TCP connect timeout of every later connection.
    pub connect_timeout: Duration,
    /// Upper bound of every store call, retries across members included.
    /// A call that cannot finish in time fails with
    /// [`tandem_store::StoreError::Unavailable`]. Keep it below the lease
    /// TTLs the callers use, so a renewal that cannot succeed fails while
    /// the lease is still valid.
    pub request_timeout: Duration,
    /// TLS settings; required for `https://` endpoints, refused for
    /// `http://` ones.
    pub tls: Option<EtcdTls>,
    /// User name and password, for clusters with authentication enabled.
    pub user: Option<(String, String)>,
}

impl Default for EtcdOptions {
    /// 5 s to connect and per call: long enough to ride out an etcd leader
    /// election (1–2 s with etcd's default election timeout), short enough
    /// to fail well inside tandem's lease TTLs.
    fn default() -> Self {
        EtcdOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            tls: None,
            user: None,
        }
    }
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("tls", &self.tls)
            // Never print the password.
            .field("user", &self.user.as_ref().map(|(name, _)| name))
            .finish()
    }
}

const URL_FORM: &str = "etcd://host[:port][,host[:port]...] or etcd+tls://...";

/// Parses a store URL naming the members of one etcd cluster into client
/// endpoints: `etcd://h1:2379,h2:2379` gives `["http://h1:2379",
/// "http://h2:2379"]`, `etcd+tls://...` gives `https://` endpoints. The
/// port defaults to 2379; IPv6 addresses go in brackets
/// (`etcd://[::1]:2379`). Credentials, paths, queries, empty or duplicate
/// members are refused with a message that says what is wrong.
pub fn parse_store_url(url: &str) -> Result<Vec<String>, String> {
    if url.is_empty() {
        return Err(format!("empty store URL: expected {URL_FORM}"));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!(
            "store URL {url:?} contains whitespace: expected {URL_FORM}"
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "store URL {url:?} has no scheme: expected {URL_FORM}"
        ));
    };
    let http = match scheme {
        "etcd" => "http",
        "etcd+tls" => "https",
        other => {
            return Err(format!(
                "store URL {url:?} has scheme {other:?}: expected {URL_FORM}"
            ));
        }
    };
    if rest.contains('@') {
        // Not quoted: it holds a password.
        return Err(format!(
            "store URL of scheme {scheme:?} contains credentials ('@'): give the etcd user \
             separately, not in the URL"
        ));
    }
    // One trailing slash is harmless; anything after it is not.
    let hosts = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(at) = hosts.find(['/', '?', '#']) {
        return Err(format!(
            "store URL {url:?} has a path, query or fragment ({:?}): only comma-separated \
             members may follow the scheme",
            &hosts[at..]
        ));
    }
    if hosts.is_empty() {
        return Err(format!(
            "store URL {url:?} names no etcd member: expected {URL_FORM}"
        ));
    }
    let mut endpoints = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, member) in hosts.split(',').enumerate() {
        if member.is_empty() {
            return Err(format!(
                "store URL {url:?}: member {} is empty (a stray comma?)",
                i + 1
            ));
        }
        let (host, port) = parse_member(member).map_err(|e| format!("store URL {url:?}: {e}"))?;
        if !seen.insert((host.clone(), port)) {
            return Err(format!(
                "store URL {url:?}: member {host}:{port} is listed twice"
            ));
        }
        endpoints.push(format!("{http}://{host}:{port}"));
    }
    Ok(endpoints)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host as written in a URL,
/// port).
fn parse_member(member: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(bracketed) = member.strip_prefix('[') {
        let Some((addr, after)) = bracketed.split_once(']') else {
            return Err(format!("member {member:?} has an unclosed '['"));
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "member {member:?}: {addr:?} is not an IPv6 address"
            ));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => {
                    return Err(format!(
                        "member {member:?}: expected ':port' after ']', found {after:?}"
                    ));
                }
            },
        };
        (format!("[{addr}]"), port)
    } else {
        let (host, port) = match member.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (member, None),
        };
        if port.is_some_and(|p| p.contains(':')) {
            return Err(format!(
                "member {member:?} has more than one ':' (write IPv6 addresses as [addr]:port)"
            ));
        }
        if host.is_empty() {
            return Err(format!("member {member:?} has no host before the port"));
        }
        if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(format!(
                "member {member:?}: host {host:?} contains {bad:?} (letters, digits, '.', '-' \
                 and '_' only)"
            ));
        }
        (host.to_owned(), port)
    };
    let port = match port {
        None => DEFAULT_CLIENT_PORT,
        Some("") => return Err(format!("member {member:?} has ':' but no port")),
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err(format!("member {member:?}: port 0 is not a valid port")),
            Ok(port) => port,
            Err(_) => {
                return Err(format!(
                    "member {member:?}: port {p:?} is not a number from 1 to 65535"
                ));
            }
        },
    };
    Ok((host, port))
}
