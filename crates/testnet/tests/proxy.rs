//! The delay proxy on loopback. Only lower bounds on time are asserted: a
//! round trip can never be faster than the delays, but a slow machine may
//! make it slower.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use tandem_testnet::DelayProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// Bounds every wait so a broken proxy fails the test instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// An echo server on loopback; returns its address.
async fn echo_server() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(loopback_any_port()).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Sends `msg` and reads it back; returns how long that took.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> anyhow::Result<Duration> {
    let start = Instant::now();
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    timeout(IO_TIMEOUT, s.read_exact(&mut back))
        .await
        .context("echo through the proxy timed out")??;
    ensure!(back == msg, "echo changed the bytes");
    Ok(start.elapsed())
}

#[tokio::test]
async fn round_trip_takes_at_least_twice_the_delay_and_set_delay_changes_it() -> anyhow::Result<()>
{
    let delay = Duration::from_millis(100);
    let proxy = DelayProxy::start(loopback_any_port(), echo_server().await?, delay).await?;
    let mut s = TcpStream::connect(proxy.local_addr()).await?;

    let rtt = round_trip(&mut s, b"ping").await?;
    ensure!(rtt >= 2 * delay, "round trip {rtt:?} < 2 x {delay:?}");

    let longer = Duration::from_millis(300);
    proxy.set_delay(longer);
    ensure!(proxy.delay() == longer);
    // The same connection slows down, and so does a new one.
    let rtt = round_trip(&mut s, b"pong").await?;
    ensure!(
        rtt >= 2 * longer,
        "round trip {rtt:?} < 2 x {longer:?} after set_delay"
    );
    let mut fresh = TcpStream::connect(proxy.local_addr()).await?;
    let rtt = round_trip(&mut fresh, b"again").await?;
    ensure!(
        rtt >= 2 * longer,
        "new connection: {rtt:?} < 2 x {longer:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bytes_pass_intact_and_in_order_beyond_the_buffer_bound() -> anyhow::Result<()> {
    let proxy = DelayProxy::start(
        loopback_any_port(),
        echo_server().await?,
        Duration::from_millis(5),
    )
    .await?;
    let s = TcpStream::connect(proxy.local_addr()).await?;
    let (mut r, mut w) = s.into_split();
    // 4 MiB: more than the proxy buffers (1 MiB per direction), so
    // backpressure must work rather than the data being dropped or reordered.
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await
    });
    let mut back = Vec::with_capacity(data.len());
    timeout(IO_TIMEOUT, r.read_to_end(&mut back))
        .await
        .context("reading the echo timed out")??;
    writer.await??;
    ensure!(
        back.len() == data.len(),
        "got {} of {} bytes",
        back.len(),
        data.len()
    );
    ensure!(back == data, "bytes changed or reordered");
    Ok(())
}

#[tokio::test]
async fn dropping_the_proxy_closes_listener_and_connections() -> anyhow::Result<()> {
    let proxy =
        DelayProxy::start(loopback_any_port(), echo_server().await?, Duration::ZERO).await?;
    let addr = proxy.local_addr();
    let mut s = TcpStream::connect(addr).await?;
    round_trip(&mut s, b"ping").await?;

    drop(proxy);

    // The open connection is closed (EOF or reset), not left hanging.
    let mut buf = [0u8; 1];
    let n = timeout(IO_TIMEOUT, s.read(&mut buf))
        .await
        .context("connection still open after drop")?;
    ensure!(matches!(n, Ok(0) | Err(_)), "read {n:?} after drop");
    // And nobody listens any more.
    let refused = timeout(IO_TIMEOUT, async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    ensure!(refused.is_ok(), "the proxy still accepts after drop");
    Ok(())
}

#[tokio::test]
async fn unreachable_target_closes_the_client_connection() -> anyhow::Result<()> {
    // Bind then drop a listener: its port refuses connections.
    let dead = TcpListener::bind(loopback_any_port()).await?.local_addr()?;
    let proxy = DelayProxy::start(loopback_any_port(), dead, Duration::ZERO).await?;
    let mut s = TcpStream::connect(proxy.local_addr()).await?;
    let mut buf = [0u8; 1];
    let n = timeout(IO_TIMEOUT, s.read(&mut buf))
        .await
        .context("client left hanging")?;
    ensure!(matches!(n, Ok(0) | Err(_)), "read {n:?}");
    Ok(())
}
