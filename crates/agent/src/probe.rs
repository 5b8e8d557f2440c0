//! Health probes: TCP connect, HTTP GET expecting 2xx, or a command exiting
//! 0, each bounded by the check's timeout. An HTTP answer whose JSON body
//! has a boolean `busy` also says whether a pool worker is busy.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tandem_core::topology::{
    App, Check, CheckKind, Host, Instance, LinkProbe, LinkProbeKind, LinkTarget, expand_all,
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

/// Runs one probe of a link's target, bounded by the probe's timeout: a
/// TCP connect, or an HTTP GET that any answer below 500 passes (the
/// target answers, whatever it thinks of the request).
pub async fn probe_link(
    probe: &LinkProbe,
    target: &LinkTarget,
    http: &reqwest::Client,
) -> Result<(), String> {
    let addr = SocketAddr::new(reach(target.address), target.port);
    let run = async {
        match &probe.kind {
            LinkProbeKind::Tcp => tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
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
                Ok(())
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
