//! `tandem proxy`: new connections always reach the current primary, never
//! a deposed one (the demo components' own answers through the proxy say
//! so, during repeated failovers), and a connection still open to a
//! deposed primary is closed.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Up, free_port, signal, tandem};
use tandem_api::types::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `tandem proxy` process, killed when dropped (also when a test fails).
struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tandem proxy` for `web` of `up`, and waits until it answers;
/// returns it, its address, and an HTTP client that opens a fresh
/// connection per request (each one routed anew).
async fn start_proxy(up: &Up) -> (Proxy, String, reqwest::Client) {
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(up.dir.path().join("proxy.log")).expect("log");
    let proxy = Command::new(tandem())
        .args([
            "proxy", "--listen", &listen, "--app", "web", "--api", &up.api,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("tandem proxy");
    let proxy = Proxy(proxy);
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_millis(500))
        .build()
        .expect("client");
    let url = format!("http://{listen}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(&url).send().await.is_err() {
        assert!(Instant::now() < deadline, "the proxy never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (proxy, listen, http)
}

/// One HTTP/1.1 request on an open (kept-alive) connection; the demo
/// component's answer, or why there is none.
async fn ask(stream: &mut TcpStream) -> Result<serde_json::Value, String> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: proxy\r\nConnection: keep-alive\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| format!("no content-length in {head:?}"))?;
            if buf.len() >= end + 4 + length {
                let body = &buf[end + 4..end + 4 + length];
                return serde_json::from_slice(body).map_err(|e| format!("body: {e}"));
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .map_err(|_| "no answer within 5 s".to_string())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the connection was closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A planned switchover with a drain period: a connection open to the
/// primary stays open through the drain and is answered by it (work under
/// way may finish), a new connection waits and reaches the successor, and
/// the open connection is closed once the old primary is demoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_connections_to_a_draining_primary_and_sends_new_ones_to_its_successor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port()];
    let text = common::pair_topology(ports[0], ports[1], common::DemoHook::Http).replacen(
        "ha = \"warm-standby\"\n",
        "ha = \"warm-standby\"\ndrain = \"2s\"\n",
        1,
    );
    assert!(text.contains("drain = \"2s\""), "no drain in {text}");
    let topology = dir.path().join("pair.toml");
    std::fs::write(&topology, text).expect("write topology");
    let up = Up::start_in(dir, topology, ports);
    up.wait_pair().await;
    let (_proxy, listen, http) = start_proxy(&up).await;
    let url = format!("http://{listen}/");

    let mut held = TcpStream::connect(&listen).await.expect("connect");
    let first = ask(&mut held)
        .await
        .expect("an answer on the held connection");
    assert_eq!(first["role"], "primary", "{first}");
    let epoch = first["epoch"].as_u64().expect("epoch");

    let client = up.client();
    let switchover = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .switchover("web", None, Duration::from_secs(20))
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.primary_state("web").await {
            Ok(tandem_client::PrimaryState::Draining(doc)) => {
                assert_eq!(doc.epoch, epoch, "the draining primary: {doc:?}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "the primary never drained; last answer {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While it drains: a new connection waits for the successor...
    let fresh = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let asked = Instant::now();
            let answer = reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(8))
                .build()
                .expect("client")
                .get(&url)
                .send()
                .await;
            drop(http);
            (asked.elapsed(), answer)
        })
    };
    // ... and the open one is still answered by the draining primary.
    for _ in 0..5 {
        let answer = ask(&mut held)
            .await
            .unwrap_or_else(|e| panic!("the connection open to the draining primary broke: {e}"));
        assert_eq!(answer["role"], "primary", "{answer}");
        assert_eq!(answer["epoch"].as_u64(), Some(epoch), "{answer}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let outcome = switchover.await.expect("join").expect("the switchover");
    assert!(
        matches!(outcome, tandem_client::SwitchoverOutcome::Done { .. }),
        "{outcome:?}"
    );
    let (waited, answer) = fresh.await.expect("join");
    let answer: serde_json::Value = answer
        .expect("the connection opened during the drain")
        .json()
        .await
        .expect("json");
    assert_eq!(answer["role"], "primary", "{answer}");
    assert!(
        answer["epoch"].as_u64().is_some_and(|e| e > epoch),
        "a connection opened during the drain reached the draining primary: {answer} (waited {waited:?})"
    );
    // Once demoted, the old primary's connection is closed.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), held.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a connection to the demoted primary stayed open: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_never_sends_a_new_connection_to_a_deposed_primary() {
    let up = Up::pair();
    up.wait_pair().await;
    let (_proxy, listen, http) = start_proxy(&up).await;
    let url = format!("http://{listen}/");

    // Hammer the proxy with new connections while failing over 5 times.
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = http.get(&url).send().await
                    && let Ok(v) = r.json::<serde_json::Value>().await
                {
                    answers.push(v);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answers
        })
    };
    // One connection held open across the first failover.
    let mut held = tokio::net::TcpStream::connect(&listen)
        .await
        .expect("connect");
    let mut epoch = up.app("web").await.epoch;
    for round in 0..5 {
        let (p, _) = up.wait_pair().await;
        signal(p.pid.expect("pid"), "KILL");
        let doc = up
            .wait_for("a failover", 15, |a| a.primary.is_some() && a.epoch > epoch)
            .await;
        epoch = doc.epoch;
        if round == 0 {
            let mut buf = [0u8; 1];
            let closed = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf)).await;
            assert!(
                matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
                "a connection to the deposed primary stayed open: {closed:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let answers = hammer.await.expect("hammer");
    assert!(
        answers.len() > 50,
        "too few answers through the proxy: {}",
        answers.len()
    );
    for a in &answers {
        assert_eq!(
            a["role"], "primary",
            "the proxy forwarded to a non-primary: {a}"
        );
    }
    let epochs: std::collections::BTreeSet<u64> =
        answers.iter().filter_map(|a| a["epoch"].as_u64()).collect();
    assert!(
        epochs.len() >= 4,
        "answers came from too few primaries: {epochs:?}"
    );
    let _ = Role::Primary;
}
