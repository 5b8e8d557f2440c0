//! Helpers shared by the integration tests: a receiver server on
//! 127.0.0.1, an event log, tree comparison, waiting for convergence.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_sync::{ReceiverSet, Source, SourceStatus, SyncConfig, SyncEvent, router};
use tokio::sync::{mpsc, oneshot};

/// A receiver server bound on 127.0.0.1.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `set` on a free port, or on `addr` when given.
    pub async fn start(set: ReceiverSet, addr: Option<SocketAddr>) -> Server {
        let bind = addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(set))
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Server {
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops it, closing every connection.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
        self.task.abort();
    }
}

/// Collects every event.
#[derive(Clone, Default)]
pub struct Log(pub Arc<Mutex<Vec<SyncEvent>>>);

impl Log {
    pub fn events(&self) -> Vec<SyncEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn messages(&self) -> Vec<String> {
        self.events().iter().map(|e| e.message()).collect()
    }

    pub fn count(&self, f: impl Fn(&SyncEvent) -> bool) -> usize {
        self.events().iter().filter(|e| f(e)).count()
    }
}

/// An event channel whose events land in a [`Log`].
pub fn events() -> (mpsc::Sender<SyncEvent>, Log) {
    let (tx, mut rx) = mpsc::channel(100_000);
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            l.0.lock().unwrap().push(e);
        }
    });
    (tx, log)
}

pub fn cfg(dir: &Path, secret: Option<&[u8]>) -> SyncConfig {
    SyncConfig {
        app: "cms".into(),
        dir: dir.to_path_buf(),
        secret: secret.map(|s| s.to_vec()),
    }
}

/// Every file (with its content) and directory (`None`) under `root`,
/// tandem's own files left out.
pub fn tree(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ft = entry.file_type().unwrap();
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(".tandem-sync")
            {
                out.insert(rel, Some(b"<tandem temporary file>".to_vec()));
            } else if ft.is_dir() {
                out.insert(rel, None);
                stack.push(path);
            } else if ft.is_file() {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// Polls `check` every 20 ms until it holds, failing after `secs`.
pub async fn wait_until(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs} s waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `dst` mirrors `src` and `receiver` is in sync with nothing
/// pending.
pub async fn converge(source: &Source, receiver: &str, src: &Path, dst: &Path) -> SourceStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = source.status();
        let ok = status
            .receivers
            .get(receiver)
            .is_some_and(|r| r.in_sync && r.pending == 0);
        if ok && tree(src) == tree(dst) {
            return status;
        }
        if tokio::time::Instant::now() > deadline {
            let a = tree(src);
            let b = tree(dst);
            let only_src: Vec<_> = a.keys().filter(|k| b.get(*k) != a.get(*k)).collect();
            let only_dst: Vec<_> = b.keys().filter(|k| a.get(*k) != b.get(*k)).collect();
            panic!(
                "no convergence after 30 s: differing on the source {only_src:?}, on the receiver {only_dst:?}; status {:?}",
                status.receivers.get(receiver)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic pseudo-random bytes.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}
