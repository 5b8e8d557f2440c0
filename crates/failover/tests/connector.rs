//! The connector against real TCP listeners on loopback. Time bounds in
//! these tests are generous and only catch hangs; the backoff schedule is
//! tested on the pure delay function.

use std::io::ErrorKind;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tandem_failover::{ConnectError, Connector, FailoverUrl, Options, parse};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::timeout;

/// Catches hangs only.
const HANG: Duration = Duration::from_secs(20);

/// A loopback port with nothing listening on it (bound, then released).
async fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A listener that accepts and holds every connection until the test ends.
async fn live() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    (port, tokio::spawn(hold(listener)))
}

async fn hold(listener: TcpListener) {
    let mut held = Vec::new();
    while let Ok((stream, _)) = listener.accept().await {
        held.push(stream);
    }
}

fn url(s: &str) -> FailoverUrl {
    parse(s).unwrap_or_else(|e| panic!("{}", e.render(s)))
}

#[tokio::test]
async fn first_endpoint_down_connects_to_the_second() {
    let down = dead_port().await;
    let (up, _server) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{down},tcp://127.0.0.1:{up})?randomize=false&startupMaxReconnectAttempts=0"
    )));
    let conn = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    assert_eq!(conn.index, 1);
    assert_eq!(conn.endpoint.port, up);
    assert!(!conn.priority);
    assert_eq!(conn.stream.tcp().peer_addr().expect("peer").port(), up);
    assert_eq!(connector.current(), Some(&conn.endpoint));
}

#[tokio::test]
async fn startup_keeps_trying_until_an_endpoint_listens() {
    let a = dead_port().await;
    let b = dead_port().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{a},tcp://127.0.0.1:{b})?initialReconnectDelay=10&maxReconnectDelay=40&startupMaxReconnectAttempts=-1"
    )));
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = TcpListener::bind(("127.0.0.1", b)).await.expect("rebind");
        hold(listener).await;
    });
    let conn = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    assert_eq!(conn.endpoint.port, b);
    server.abort();
}

#[tokio::test]
async fn exhausted_attempts_name_every_endpoint_tried() {
    let a = dead_port().await;
    let b = dead_port().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{a},tcp://127.0.0.1:{b})?initialReconnectDelay=1&startupMaxReconnectAttempts=2"
    )));
    let err = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect_err("all down");
    let ConnectError::Exhausted { attempts, failures } = &err else {
        panic!("expected Exhausted, got {err:?}");
    };
    // The first pass and two retries.
    assert_eq!(*attempts, 3);
    let ports: Vec<u16> = failures.iter().map(|f| f.endpoint.port).collect();
    assert_eq!(ports.len(), 2);
    assert!(ports.contains(&a) && ports.contains(&b));
    assert!(failures.iter().all(|f| f.failures == 3));
    assert!(
        failures
            .iter()
            .all(|f| f.last_error_kind == ErrorKind::ConnectionRefused)
    );
    let message = err.to_string();
    assert!(
        message.starts_with("no endpoint answered after 3 attempt(s): "),
        "{message}"
    );
    assert!(
        message.contains(&format!("tcp://127.0.0.1:{a} (3 failures")),
        "{message}"
    );
    assert!(
        message.contains(&format!("tcp://127.0.0.1:{b} (3 failures")),
        "{message}"
    );
}

#[tokio::test]
async fn startup_attempts_zero_tries_once() {
    let a = dead_port().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{a})?startupMaxReconnectAttempts=0"
    )));
    let err = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect_err("down");
    assert!(
        matches!(err, ConnectError::Exhausted { attempts: 1, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn reconnect_follows_max_reconnect_attempts() {
    let (port, server) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{port})?initialReconnectDelay=1&maxReconnectAttempts=2"
    )));
    let conn = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    // The service goes away: its listener closes.
    server.abort();
    let _ = server.await;
    drop(conn);
    let err = timeout(HANG, connector.reconnect())
        .await
        .expect("no hang")
        .expect_err("down");
    assert!(
        matches!(err, ConnectError::Exhausted { attempts: 2, .. }),
        "{err:?}"
    );

    let (port, _server) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{port})?maxReconnectAttempts=0"
    )));
    timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    let err = timeout(HANG, connector.reconnect())
        .await
        .expect("no hang")
        .expect_err("disabled");
    assert!(matches!(err, ConnectError::ReconnectDisabled), "{err:?}");
}

#[tokio::test]
async fn reconnect_tries_the_lost_endpoint_last() {
    let (a, _sa) = live().await;
    let (b, _sb) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{a},tcp://127.0.0.1:{b})?randomize=false&initialReconnectDelay=1"
    )));
    let first = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    assert_eq!(first.endpoint.port, a);
    let second = timeout(HANG, connector.reconnect())
        .await
        .expect("no hang")
        .expect("reconnects");
    assert_eq!(second.endpoint.port, b);
    let third = timeout(HANG, connector.reconnect())
        .await
        .expect("no hang")
        .expect("reconnects");
    assert_eq!(third.endpoint.port, a);
}

#[tokio::test]
async fn randomize_spreads_connections_over_the_endpoints() {
    let (a, _sa) = live().await;
    let (b, _sb) = live().await;
    let (c, _sc) = live().await;
    let u = url(&format!(
        "failover:(tcp://127.0.0.1:{a},tcp://127.0.0.1:{b},tcp://127.0.0.1:{c})"
    ));
    assert!(u.options.randomize, "the default");
    let mut seen = std::collections::HashSet::new();
    for seed in 0..30 {
        let mut connector = Connector::new(u.clone()).with_seed(seed);
        let conn = timeout(HANG, connector.connect())
            .await
            .expect("no hang")
            .expect("connects");
        seen.insert(conn.index);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn backoff_delays_follow_the_formula() {
    let ms = Duration::from_millis;
    let o = Options::default();
    let delays: Vec<Duration> = (0..14).map(|n| o.reconnect_delay(n)).collect();
    assert_eq!(
        delays,
        [
            10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 20480, 30000, 30000
        ]
        .map(ms)
    );
    assert_eq!(o.reconnect_delay(u32::MAX), ms(30_000));

    let o = url(
        "failover:(a:1)?initialReconnectDelay=100&maxReconnectDelay=1000&backOffMultiplier=1.5",
    )
    .options;
    let delays: Vec<Duration> = (0..8).map(|n| o.reconnect_delay(n)).collect();
    let us = Duration::from_micros;
    assert_eq!(
        delays,
        [
            ms(100),
            ms(150),
            ms(225),
            us(337_500),
            us(506_250),
            us(759_375),
            ms(1000),
            ms(1000)
        ]
    );

    let o = url("failover:(a:1)?initialReconnectDelay=250&useExponentialBackOff=false").options;
    assert!((0..50).all(|n| o.reconnect_delay(n) == ms(250)));

    let o = url("failover:(a:1)?initialReconnectDelay=0").options;
    assert!((0..50).all(|n| o.reconnect_delay(n) == Duration::ZERO));

    // Nonsense set by hand does not panic.
    let o = Options {
        backoff_multiplier: f64::NAN,
        ..Options::default()
    };
    assert_eq!(o.reconnect_delay(3), ms(30_000));
    let o = Options {
        backoff_multiplier: -2.0,
        ..Options::default()
    };
    assert_eq!(o.reconnect_delay(1), Duration::ZERO);
}

#[tokio::test]
async fn priority_endpoint_coming_back_moves_the_connection_back() {
    let priority = dead_port().await;
    let (backup, _sb) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{priority},tcp://127.0.0.1:{backup})?randomize=false&priorityBackup=true&initialReconnectDelay=10&maxReconnectDelay=50"
    )));
    let conn = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    assert_eq!((conn.index, conn.priority), (1, false));

    let move_back = connector.should_move_back();
    // Still down: the watch does not fire.
    let move_back = {
        tokio::pin!(move_back);
        assert!(
            timeout(Duration::from_millis(150), &mut move_back)
                .await
                .is_err()
        );
        let server = tokio::spawn(async move {
            let listener = TcpListener::bind(("127.0.0.1", priority))
                .await
                .expect("rebind");
            hold(listener).await;
        });
        let back = timeout(HANG, &mut move_back)
            .await
            .expect("priority noticed");
        assert_eq!(back.port, priority);
        server
    };
    drop(conn);
    let conn = timeout(HANG, connector.reconnect())
        .await
        .expect("no hang")
        .expect("reconnects");
    assert_eq!((conn.index, conn.priority), (0, true));
    assert_eq!(conn.endpoint.port, priority);
    // On the priority endpoint there is nothing to move back to.
    assert!(
        timeout(Duration::from_millis(100), connector.should_move_back())
            .await
            .is_err()
    );
    move_back.abort();
}

#[tokio::test]
async fn priority_uris_choose_which_endpoints_are_preferred() {
    let (remote, _sr) = live().await;
    let (local, _sl) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{remote},tcp://127.0.0.1:{local})?priorityBackup=true&priorityURIs=tcp://127.0.0.1:{local}"
    )));
    // Priority endpoints come first even with randomize=true.
    let conn = timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    assert_eq!(
        (conn.endpoint.port, conn.index, conn.priority),
        (local, 1, true)
    );
}

#[tokio::test]
async fn without_priority_backup_should_move_back_never_fires() {
    let (a, _sa) = live().await;
    let (b, _sb) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{a},tcp://127.0.0.1:{b})?randomize=false&initialReconnectDelay=1"
    )));
    timeout(HANG, connector.connect())
        .await
        .expect("no hang")
        .expect("connects");
    timeout(HANG, connector.reconnect())
        .await
        .expect("no hang")
        .expect("reconnects to b");
    assert!(
        timeout(Duration::from_millis(100), connector.should_move_back())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn timeout_bounds_an_endless_startup() {
    let a = dead_port().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{a})?initialReconnectDelay=5&maxReconnectDelay=20&timeout=300"
    )));
    let err = timeout(HANG, connector.connect())
        .await
        .expect("timeout honoured")
        .expect_err("down");
    let ConnectError::Timeout {
        timeout: t,
        failures,
    } = &err
    else {
        panic!("expected Timeout, got {err:?}");
    };
    assert_eq!(*t, Duration::from_millis(300));
    assert_eq!(failures.len(), 1);
    assert!(failures[0].failures >= 1);
    assert!(
        err.to_string()
            .starts_with("no connection within the 300 ms timeout: tcp://127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test]
async fn run_reconnects_after_a_loss_and_moves_back_to_priority() {
    // A service that closes every connection at once: each session sees EOF.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let flaky = listener.local_addr().expect("addr").port();
    let _server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{flaky})?initialReconnectDelay=1"
    )));
    let sessions = Arc::new(AtomicU32::new(0));
    let count = sessions.clone();
    let result = timeout(
        HANG,
        connector.run(move |mut conn| {
            let count = count.clone();
            async move {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                if n == 3 {
                    return ControlFlow::Break(n);
                }
                let mut buf = [0u8; 16];
                match conn.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => ControlFlow::Continue(()),
                    Ok(_) => ControlFlow::Break(0),
                }
            }
        }),
    )
    .await
    .expect("no hang");
    assert_eq!(result.expect("runs"), 3);

    // Priority down, backup up: the session runs on the backup until the
    // priority endpoint listens again, then on the priority endpoint.
    let priority = dead_port().await;
    let (backup, _sb) = live().await;
    let mut connector = Connector::new(url(&format!(
        "failover:(tcp://127.0.0.1:{priority},tcp://127.0.0.1:{backup})?randomize=false&priorityBackup=true&initialReconnectDelay=10&maxReconnectDelay=50"
    )));
    let server = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = TcpListener::bind(("127.0.0.1", priority))
            .await
            .expect("rebind");
        hold(listener).await;
    });
    let result = timeout(
        HANG,
        connector.run(|mut conn| async move {
            if conn.priority {
                return ControlFlow::Break(conn.endpoint.port);
            }
            // The backup never sends: this waits until dropped for the move.
            let mut buf = [0u8; 16];
            let _ = conn.stream.read(&mut buf).await;
            ControlFlow::Continue(())
        }),
    )
    .await
    .expect("no hang");
    assert_eq!(result.expect("runs"), priority);
    server.abort();
}
