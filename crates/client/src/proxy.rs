//! A transparent TCP proxy to an app's current primary (`tandem proxy`).
//!
//! It follows the primary with [`Discovery`](crate::discovery::Discovery)
//! (pushed, no polling). Each new connection goes to the primary known at
//! that moment; when the primary changes, the proxy stops sending new
//! connections to the old one at once and closes the connections that still
//! go there, so an unmodified client only sees a reconnect. While there is
//! no primary, a new connection waits for one (at most `wait_for_primary`),
//! then is closed.
//!
//! A primary that drains before a planned switchover gets no new
//! connection (they wait for its successor), but the connections already
//! open to it stay open through the drain, so work under way there can
//! finish; they are closed once it is demoted.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::discovery::Discovery;
use crate::{ApiClient, PrimaryState};

/// A primary's address and epoch.
pub type Endpoint = (SocketAddr, u64);

/// Where connections go now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Target {
    /// The primary new connections go to, if there is one.
    pub serving: Option<Endpoint>,
    /// A primary that drains before a planned switchover: it gets no new
    /// connection, and keeps those already open.
    pub draining: Option<Endpoint>,
}

impl Target {
    /// Whether a connection open to `endpoint` may stay open.
    pub fn keeps(&self, endpoint: Endpoint) -> bool {
        self.serving == Some(endpoint) || self.draining == Some(endpoint)
    }
}

fn endpoint(doc: &crate::PrimaryDoc) -> Option<Endpoint> {
    let port = doc.port?;
    let addr = format!("{}:{port}", doc.address)
        .parse::<SocketAddr>()
        .ok()?;
    Some((addr, doc.epoch))
}

/// Settings of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// How long a new connection waits for a primary when there is none.
    pub wait_for_primary: Duration,
    /// Bound on connecting to the primary.
    pub connect_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> ProxyOptions {
        ProxyOptions {
            wait_for_primary: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Follows the primary of `app` into a watch channel.
pub fn follow_primary(api: ApiClient, app: &str) -> watch::Receiver<Target> {
    let (tx, rx) = watch::channel(Target::default());
    let discovery = Discovery::new(api);
    let mut updates = Box::pin(discovery.watch_state(app));
    let app = app.to_string();
    tokio::spawn(async move {
        while let Some(update) = updates.next().await {
            let target = match update {
                Ok(PrimaryState::Serving(doc)) => {
                    let serving = endpoint(&doc);
                    tracing::info!(%app, instance = %doc.instance, epoch = doc.epoch, "primary is now {:?}", serving.map(|t| t.0));
                    Target {
                        serving,
                        draining: None,
                    }
                }
                Ok(PrimaryState::Draining(doc)) => {
                    tracing::info!(%app, instance = %doc.instance, epoch = doc.epoch, "the primary drains before a planned switchover: new connections wait for its successor");
                    Target {
                        serving: None,
                        draining: endpoint(&doc),
                    }
                }
                Ok(PrimaryState::None) => {
                    tracing::info!(%app, "no primary");
                    Target::default()
                }
                Ok(PrimaryState::ReadOnly(ro)) => {
                    tracing::warn!(%app, site = %ro.site, "no primary: read-only: {}", ro.reason);
                    Target::default()
                }
                Err(e) => {
                    tracing::warn!(%app, error = %e, "cannot follow the primary; retrying");
                    continue;
                }
            };
            if tx.send(target).is_err() {
                return;
            }
        }
    });
    rx
}

/// Serves the proxy on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    target: watch::Receiver<Target>,
    options: ProxyOptions,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let (client, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let target = target.clone();
        let options = options.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(client, target, &options).await {
                tracing::debug!(%peer, "connection closed: {e}");
            }
        });
    }
}

/// Forwards one connection to the current primary; closes it when the
/// primary changes.
async fn forward(
    mut client: TcpStream,
    mut target: watch::Receiver<Target>,
    options: &ProxyOptions,
) -> std::io::Result<()> {
    let current: Option<Endpoint> = {
        let waited = tokio::time::timeout(
            options.wait_for_primary,
            target.wait_for(|t| t.serving.is_some()),
        )
        .await;
        match waited {
            Ok(Ok(t)) => t.serving,
            _ => None,
        }
    };
    let Some((addr, epoch)) = current else {
        return Err(std::io::Error::other("no primary"));
    };
    let mut server = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other(format!("connecting to {addr} timed out")))??;
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let changed = async {
        loop {
            if target.changed().await.is_err() {
                return;
            }
            if !target.borrow().keeps((addr, epoch)) {
                return;
            }
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => r.map(drop),
        _ = changed => Err(std::io::Error::other(format!("primary moved away from {addr} (epoch {epoch})"))),
    }
}
