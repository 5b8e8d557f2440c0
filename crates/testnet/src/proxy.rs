//! A TCP proxy that delays every byte, since `tc netem` is unavailable.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::net::in_netns;

/// Largest read, and so largest chunk held in a queue.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks in flight per direction of a connection: at most 1 MiB buffered,
/// so a direction carries at most ~1 MiB per delay period.
const MAX_CHUNKS_IN_FLIGHT: usize = 64;
/// Connections proxied at once; more are refused (closed at once).
const MAX_CONNECTIONS: usize = 1024;
/// How long to wait for the target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// A userspace TCP proxy that adds a delay to each direction.
///
/// It listens on `listen` and, for each connection, connects to `target` and
/// forwards bytes both ways, each chunk held back by the delay in force when it
/// was read (changeable at runtime with [`DelayProxy::set_delay`]; order is
/// always kept). A half-close is forwarded after the same delay. Dropping the
/// proxy closes its listener and every connection.
#[derive(Debug)]
pub struct DelayProxy {
    local_addr: SocketAddr,
    delay_ns: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Binds `listen` (port 0 picks one; see [`DelayProxy::local_addr`]) and
    /// starts forwarding to `target` with `delay` each way. Needs a tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> io::Result<DelayProxy> {
        let listener = TcpListener::bind(listen).await?;
        Self::start_on(listener, target, delay, None)
    }

    /// Starts on a bound std listener; with `netns`, connections to the
    /// target are made from that network namespace. Needs a tokio runtime.
    pub(crate) fn from_listener(
        listener: std::net::TcpListener,
        target: SocketAddr,
        delay: Duration,
        netns: Option<Arc<File>>,
    ) -> io::Result<DelayProxy> {
        listener.set_nonblocking(true)?;
        Self::start_on(TcpListener::from_std(listener)?, target, delay, netns)
    }

    fn start_on(
        listener: TcpListener,
        target: SocketAddr,
        delay: Duration,
        netns: Option<Arc<File>>,
    ) -> io::Result<DelayProxy> {
        let local_addr = listener.local_addr()?;
        let delay_ns = Arc::new(AtomicU64::new(nanos(delay)));
        let connector = Connector { target, netns };
        let task = tokio::spawn(accept_loop(listener, connector, Arc::clone(&delay_ns)));
        tracing::debug!(%local_addr, %target, ?delay, "delay proxy started");
        Ok(DelayProxy {
            local_addr,
            delay_ns,
            task,
        })
    }

    /// Changes the delay of every byte read from now on, on all connections.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ns.store(nanos(delay), Ordering::Relaxed);
    }

    /// The delay currently added to each direction.
    pub fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Opens connections to the target, from a given network namespace or this one.
#[derive(Debug, Clone)]
struct Connector {
    target: SocketAddr,
    netns: Option<Arc<File>>,
}

impl Connector {
    async fn connect(&self) -> io::Result<TcpStream> {
        let Some(ns) = &self.netns else {
            return TcpStream::connect(self.target).await;
        };
        let ns = Arc::clone(ns);
        let v4 = self.target.is_ipv4();
        // A socket belongs to the namespace of the thread that creates it.
        let socket = tokio::task::spawn_blocking(move || {
            in_netns(&ns, || {
                if v4 {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                }
            })
        })
        .await
        .map_err(io::Error::other)???;
        socket.connect(self.target).await
    }
}

async fn accept_loop(listener: TcpListener, connector: Connector, delay_ns: Arc<AtomicU64>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, peer)) => {
                    if connections.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, "delay proxy: {MAX_CONNECTIONS} connections open, refusing");
                        continue;
                    }
                    connections.spawn(proxy_connection(inbound, peer, connector.clone(), Arc::clone(&delay_ns)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "delay proxy: accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn proxy_connection(
    inbound: TcpStream,
    peer: SocketAddr,
    connector: Connector,
    delay_ns: Arc<AtomicU64>,
) {
    let target = connector.target;
    let outbound = match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, %target, error = %e, "delay proxy: cannot reach target");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, %target, "delay proxy: connecting to target timed out");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // An error in one direction ends both: the sockets close together.
    let result = tokio::try_join!(
        pipe(in_read, out_write, Arc::clone(&delay_ns)),
        pipe(out_read, in_write, delay_ns),
    );
    if let Err(e) = result {
        tracing::debug!(%peer, %target, error = %e, "delay proxy: connection ended");
    }
}

/// Copies `from` to `to`, holding each chunk until `read time + delay`.
/// An empty chunk stands for end of stream (forwarded as a shutdown).
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay_ns: Arc<AtomicU64>,
) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(MAX_CHUNKS_IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = from.read(&mut buf).await?;
            let due = Instant::now() + Duration::from_nanos(delay_ns.load(Ordering::Relaxed));
            // The writer is gone only after an error, which it reports.
            if tx.send((due, buf[..n].to_vec())).await.is_err() || n == 0 {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if chunk.is_empty() {
                break;
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(drop)
}
