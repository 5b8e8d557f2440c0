//! Discovery with push updates: a client learns the primary, is told of a
//! promotion as it happens, and makes no request at all while nothing
//! changes (a counting proxy between the client and the API proves it).
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Up, signal};
use futures::StreamExt;
use tandem_client::ApiClient;
use tandem_client::discovery::Discovery;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy to `target` that counts the HTTP requests sent through it.
async fn counting_proxy(target: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let text = String::from_utf8_lossy(&buf[..n]);
                        let lines = text.matches("GET /").count() + text.matches("POST /").count();
                        counter.fetch_add(lines, Ordering::SeqCst);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                };
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    (addr, requests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_client_is_told_of_a_promotion_without_polling() {
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let (proxy, requests) = counting_proxy(up.api.clone()).await;
    let discovery = Discovery::new(ApiClient::new(&proxy).expect("client"));
    let mut updates = Box::pin(discovery.watch("web"));

    let first = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .expect("a first answer")
        .expect("stream")
        .expect("no error")
        .expect("a primary");
    assert_eq!(first.instance, p.id);

    // Idle: the stream is being polled (it would poll the API now if it
    // did so periodically), nothing changes, so nothing is asked.
    let settle = tokio::time::timeout(Duration::from_millis(300), updates.next()).await;
    assert!(
        settle.is_err(),
        "an update while nothing changed: {settle:?}"
    );
    let before = requests.load(Ordering::SeqCst);
    assert!(
        before >= 3,
        "the proxy counted {before} requests: it does not count"
    );
    let idle = tokio::time::timeout(Duration::from_millis(1500), updates.next()).await;
    assert!(idle.is_err(), "an update while nothing changed: {idle:?}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        before,
        "the discovery client made requests while nothing changed"
    );

    // A promotion is pushed.
    let t0 = Instant::now();
    signal(p.pid.expect("pid"), "KILL");
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let item = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            updates.next(),
        )
        .await
        .expect("an update after the promotion")
        .expect("stream");
        if let Ok(Some(doc)) = item
            && doc.instance == b.id
        {
            break doc;
        }
    };
    eprintln!(
        "discovery saw the new primary {:?} after the kill",
        t0.elapsed()
    );
    assert!(new.epoch > first.epoch);
    // Only a handful of requests for one change: no polling loop.
    let after = requests.load(Ordering::SeqCst);
    assert!(
        after - before <= 4,
        "{} requests for one promotion",
        after - before
    );
}

/// A `tandem://` endpoint with two APIs, the first one dead (its site is
/// down): discovery finds the primary through the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_through_a_list_of_apis_skips_one_that_is_down() {
    let up = Up::pair();
    let (p, _) = up.wait_pair().await;
    let dead = format!("127.0.0.1:{}", common::free_port());
    let url = format!("tandem://web@{dead}?site-1={}", up.api);
    let (discovery, app) = Discovery::from_url(&url).expect("a valid endpoint");
    assert_eq!(app, "web");
    let mut updates = Box::pin(discovery.watch(&app));
    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        let item = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            updates.next(),
        )
        .await
        .expect("an answer through the second API")
        .expect("stream");
        if let Ok(Some(doc)) = item {
            break doc;
        }
    };
    assert_eq!(found.instance, p.id);
}
