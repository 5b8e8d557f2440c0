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
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_never_sends_a_new_connection_to_a_deposed_primary() {
    let up = Up::pair();
    up.wait_pair().await;
    let listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(up.dir.path().join("proxy.log")).expect("log");
    let mut proxy = Command::new(tandem())
        .args([
            "proxy", "--listen", &listen, "--app", "web", "--api", &up.api,
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("tandem proxy");

    // A fresh connection per request (no pooling): each one is routed anew.
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
    let _ = proxy.kill();
    let _ = proxy.wait();
}
