//! Health probes: TCP connect, HTTP GET expecting 2xx, or a command exiting
//! 0, each bounded by the check's timeout. An HTTP answer whose JSON body
//! has a boolean `busy` also says whether a pool worker is busy.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::model::CertSeen;
use tandem_core::topology::{
    App, Check, CheckKind, Host, Instance, LinkProbe, LinkProbeKind, LinkTarget, TlsCheck,
    expand_all,
};

/// Runs one probe of `check` against an instance. `Ok(Some(busy))` when
/// the answer said whether the instance is busy.
pub async fn probe(
    check: &Check,
    app: &App,
    instance: &Instance,
    host: &Host,
    http: &reqwest::Client,
) -> Result<Option<bool>, String> {
    let bounded = tokio::time::timeout(check.timeout, run(check, app, instance, host, http));
    match bounded.await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} check timed out after {} ms",
            kind_name(&check.kind),
            check.timeout.as_millis()
        )),
    }
}

fn kind_name(kind: &CheckKind) -> &'static str {
    match kind {
        CheckKind::Tcp { .. } => "tcp",
        CheckKind::Http { .. } => "http",
        CheckKind::Exec { .. } => "exec",
    }
}

fn port_of(instance: &Instance, name: &str) -> Result<u16, String> {
    instance
        .ports
        .get(name)
        .copied()
        .ok_or_else(|| format!("instance {} has no port {name}", instance.id))
}

/// The address probes and hooks use to reach an instance: its host's
/// address, or loopback for an unspecified one.
pub fn reach(address: IpAddr) -> IpAddr {
    if address.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        address
    }
}

/// The largest answer body read for the `busy` flag.
const MAX_BODY_BYTES: usize = 16 * 1024;

async fn run(
    check: &Check,
    app: &App,
    instance: &Instance,
    host: &Host,
    http: &reqwest::Client,
) -> Result<Option<bool>, String> {
    match &check.kind {
        CheckKind::Tcp { port } => {
            let addr = SocketAddr::new(reach(host.address), port_of(instance, port)?);
            tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| None)
                .map_err(|e| format!("tcp connect to {addr} failed: {e}"))
        }
        CheckKind::Http { port, path } => {
            let addr = SocketAddr::new(reach(host.address), port_of(instance, port)?);
            let url = format!("http://{addr}{path}");
            let resp = http
                .get(&url)
                .timeout(check.timeout)
                .send()
                .await
                .map_err(|e| format!("GET {url} failed: {}", without_url(&e)))?;
            let code = resp.status();
            if !code.is_success() {
                return Err(format!("GET {url} answered {code}"));
            }
            let body = resp.bytes().await.unwrap_or_default();
            if body.len() > MAX_BODY_BYTES {
                return Ok(None);
            }
            Ok(serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("busy").and_then(serde_json::Value::as_bool)))
        }
        CheckKind::Exec { command } => {
            let argv = expand_all(command, app, instance, host);
            let Some(first) = argv.first().cloned() else {
                return Err("empty check command".into());
            };
            let env = vec![
                ("TANDEM_APP".to_string(), app.name.clone()),
                ("TANDEM_INSTANCE".to_string(), instance.id.clone()),
            ];
            let mut child = crate::process::spawn_helper(argv, env)
                .await
                .map_err(|e| format!("cannot run check {e}"))?;
            let status = child
                .wait()
                .await
                .map_err(|e| format!("check {first}: {e}"))?;
            if status.success() {
                Ok(None)
            } else {
                Err(format!(
                    "check {first} {}",
                    crate::process::describe_exit(status)
                ))
            }
        }
    }
}

/// How a TLS link is checked: its CA, the name its certificate must
/// carry, and the expiry warning. Built once per link from the topology's
/// [`TlsCheck`] (reading the CA file on this host).
pub struct TlsProbe {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<rustls::pki_types::ServerName<'static>>,
    warning: Duration,
}

impl TlsProbe {
    /// Reads the CA file of `check`.
    pub fn new(check: &TlsCheck) -> Result<TlsProbe, String> {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&check.ca)
            .map_err(|e| format!("cannot read the link's CA {}: {e}", check.ca))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot read the link's CA {}: {e}", check.ca))?;
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("the link's CA {} holds no certificate", check.ca));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = match &check.server_name {
            None => None,
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| format!("invalid tls_server_name {n:?}: {e}"))?,
            ),
        };
        Ok(TlsProbe {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            warning: check.expiry_warning,
        })
    }

    /// A TLS handshake with `addr`; the certificate it saw.
    async fn handshake(&self, addr: SocketAddr) -> Result<CertSeen, String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("tcp connect to {addr} failed: {e}"))?;
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(addr.ip().into()));
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
        let (_, session) = tls.get_ref();
        let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) else {
            return Err(format!("TLS handshake with {addr}: no certificate"));
        };
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("TLS handshake with {addr}: unreadable certificate: {e}"))?;
        let not_after = cert.validity().not_after;
        let expires = u64::try_from(not_after.timestamp()).unwrap_or(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dt = not_after.to_datetime();
        Ok(CertSeen {
            not_after: format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second()
            ),
            expiring: expires.saturating_sub(now) < self.warning.as_secs(),
        })
    }
}

/// Runs one probe of a link's target, bounded by the probe's timeout: a
/// TCP connect, an HTTP GET that any answer below 500 passes (the target
/// answers, whatever it thinks of the request), or, for a TLS link (`tls`:
/// its check, or why it cannot be made), a TLS handshake whose
/// certificate is returned. An expired or untrusted certificate fails.
///
/// A `reported` link is read from `report` (the instance's
/// `$TANDEM_LINKS_DIR/LINK`) instead ([`read_report`]).
pub async fn probe_link(
    probe: &LinkProbe,
    tls: Option<&Result<TlsProbe, String>>,
    report: &Path,
    target: &LinkTarget,
    http: &reqwest::Client,
) -> Result<Option<CertSeen>, String> {
    let addr = SocketAddr::new(reach(target.address), target.port);
    let run = async {
        if let Some(tls) = tls {
            let tls = tls.as_ref().map_err(Clone::clone)?;
            return tls.handshake(addr).await.map(Some);
        }
        match &probe.kind {
            LinkProbeKind::Reported => {
                let text = read_capped(report).await?;
                read_report(&text, &target.name, report).map(|()| None)
            }
            LinkProbeKind::Tcp => tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| None)
                .map_err(|e| format!("tcp connect to {addr} failed: {e}")),
            LinkProbeKind::Http { path } => {
                let url = format!("http://{addr}{path}");
                let resp = http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| format!("GET {url} failed: {}", without_url(&e)))?;
                let code = resp.status();
                if code.is_server_error() {
                    return Err(format!("GET {url} answered {code}"));
                }
                Ok(None)
            }
        }
    };
    match tokio::time::timeout(probe.timeout, run).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{} probe of {addr} timed out after {} ms",
            probe.kind.as_str(),
            probe.timeout.as_millis()
        )),
    }
}

/// The longest link report read.
const MAX_REPORT_BYTES: u64 = 16 * 1024;

async fn read_capped(path: &Path) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "the instance has not reported this link yet ({} is missing)",
                path.display()
            )
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })?;
    let mut text = String::new();
    file.take(MAX_REPORT_BYTES)
        .read_to_string(&mut text)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text)
}

/// What a link report says of `target`: a line `up` or `down WHY` for
/// every target, or a line `TARGET up` / `TARGET down WHY` for one (the
/// first line that names it). Anything else is a failure that says why.
pub fn read_report(text: &str, target: &str, path: &Path) -> Result<(), String> {
    let verdict = |state: &str, why: &str| match state {
        "up" => Ok(()),
        "down" if why.is_empty() => Err("reported down by the instance".to_string()),
        "down" => Err(format!("reported down by the instance: {why}")),
        other => Err(format!(
            "{}: \"{other}\" is not a link state (expected up or down)",
            path.display()
        )),
    };
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(first) = lines.clone().next() else {
        return Err(format!("{} is empty", path.display()));
    };
    let word = |l: &str| {
        let (w, rest) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
        (w.to_string(), rest.trim().to_string())
    };
    let (w, rest) = word(first);
    if w == "up" || w == "down" {
        return verdict(&w, &rest);
    }
    match lines.find(|l| word(l).0 == target) {
        Some(l) => {
            let (_, rest) = word(l);
            let (state, why) = word(&rest);
            verdict(&state, &why)
        }
        None => Err(format!("{} says nothing of {target}", path.display())),
    }
}

/// The link names of an [`crate::process::ACTIVE_LINKS_FILE`]: one a line, blank lines
/// and `#` comments skipped.
pub fn read_active(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// A reqwest error without the URL (already in our message).
pub fn without_url(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_string();
    }
    let mut msg = if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        src = s.source();
    }
    msg
}

/// The HTTP client the agent shares between probes and hooks.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_report_says_up_or_down_for_every_target_or_per_target() {
        let p = Path::new("/run/web.a.links/acd");
        let cases: &[(&str, &str, Result<(), &str>)] = &[
            ("up\n", "switch", Ok(())),
            ("  up  \n", "switch", Ok(())),
            ("down\n", "switch", Err("reported down by the instance")),
            (
                "down cable unplugged\n",
                "switch",
                Err("reported down by the instance: cable unplugged"),
            ),
            ("# state of the ACD link\nup\n", "switch", Ok(())),
            ("b1 up\nb2 down busy\n", "b1", Ok(())),
            (
                "b1 up\nb2 down busy\n",
                "b2",
                Err("reported down by the instance: busy"),
            ),
            (
                "b1 up\n",
                "b3",
                Err("/run/web.a.links/acd says nothing of b3"),
            ),
            ("", "switch", Err("/run/web.a.links/acd is empty")),
            (
                "b1 sideways\n",
                "b1",
                Err("/run/web.a.links/acd: \"sideways\" is not a link state (expected up or down)"),
            ),
        ];
        for (text, target, want) in cases {
            let got = read_report(text, target, p);
            assert_eq!(
                got.as_ref().map_err(String::as_str),
                want.as_ref().map_err(|e| *e),
                "{text:?} for {target}"
            );
        }
    }
}
