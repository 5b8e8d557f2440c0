//! A transparent TCP proxy to an app's current primary (`tandem proxy`).
//!
//! It follows the primary with [`Discovery`](crate::discovery::Discovery)
//! (pushed, no polling). Each new connection goes to the primary known at
//! that moment; when the primary changes, the proxy stops sending new
//! connections to the old one at once and closes the connections that still
//! go there, so an unmodified client only sees a reconnect. While there is
//! no primary, a new connection waits for one (at most `wait_for_primary`),
//! then is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::ApiClient;
use crate::discovery::Discovery;

/// Where connections go now: the primary's address and its epoch.
pub type Target = Option<(SocketAddr, u64)>;

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
    let (tx, rx) = watch::channel(None);
    let discovery = Discovery::new(api);
    let mut updates = Box::pin(discovery.watch(app));
    let app = app.to_string();
    tokio::spawn(async move {
        while let Some(update) = updates.next().await {
            match update {
                Ok(Some(doc)) => {
                    let target = doc.port.and_then(|port| {
                        format!("{}:{port}", doc.address)
                            .parse::<SocketAddr>()
                            .ok()
                            .map(|a| (a, doc.epoch))
                    });
                    tracing::info!(%app, instance = %doc.instance, epoch = doc.epoch, "primary is now {:?}", target.map(|t| t.0));
                    if tx.send(target).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    tracing::info!(%app, "no primary");
                    if tx.send(None).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(%app, error = %e, "cannot follow the primary; retrying"),
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
    let current: Target = {
        let waited =
            tokio::time::timeout(options.wait_for_primary, target.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(t)) => *t,
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
            if *target.borrow() != Some((addr, epoch)) {
                return;
            }
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => r.map(drop),
        _ = changed => Err(std::io::Error::other(format!("primary moved away from {addr} (epoch {epoch})"))),
    }
}
