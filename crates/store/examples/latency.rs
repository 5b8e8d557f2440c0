#![allow(clippy::disallowed_methods)]
//! Latency figures of the embedded store on this machine (a benchmark, not
//! a test: tests do not time things). Run with
//!
//! ```text
//! cargo run --release -p tandem-store --example latency
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tandem_store::{Compare, EmbeddedStore, Op, Store, Txn};
use tokio::time::Instant;

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<58} n={:<6} p50={:>8.1?} p90={:>8.1?} p99={:>8.1?} max={:>8.1?}",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

async fn time_puts(
    store: &Arc<EmbeddedStore>,
    n: usize,
    lease: Option<i64>,
    key: &str,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        store
            .put(key, i.to_string().into_bytes(), lease)
            .await
            .unwrap();
        samples.push(start.elapsed());
    }
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!("store file: {}", dir.path().display());
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let lease = store.grant_lease(Duration::from_secs(600)).await.unwrap();

    // Warm up.
    time_puts(&store, 50, None, "/warm").await;
    report("durable put (fsync), 200 B value", {
        let mut samples = Vec::new();
        for i in 0..1000 {
            let start = Instant::now();
            store
                .put("/durable", vec![i as u8; 200], None)
                .await
                .unwrap();
            samples.push(start.elapsed());
        }
        samples
    });
    report(
        "leased put (memory only)",
        time_puts(&store, 20_000, Some(lease.id), "/leased").await,
    );
    report("keep_alive", {
        let mut samples = Vec::new();
        for _ in 0..20_000 {
            let start = Instant::now();
            store.keep_alive(lease.id).await.unwrap();
            samples.push(start.elapsed());
        }
        samples
    });
    report("get", {
        let mut samples = Vec::new();
        for _ in 0..20_000 {
            let start = Instant::now();
            store.get("/durable").await.unwrap();
            samples.push(start.elapsed());
        }
        samples
    });
    report("durable CAS txn (compare mod_revision + put)", {
        let mut samples = Vec::new();
        for i in 0..1000 {
            let cur = store.get("/durable").await.unwrap().unwrap();
            let start = Instant::now();
            let r = store
                .txn(Txn {
                    compares: vec![Compare::ModRevision("/durable".into(), cur.mod_revision)],
                    success: vec![Op::put("/durable", vec![i as u8; 200])],
                    failure: vec![],
                })
                .await
                .unwrap();
            assert!(r.succeeded);
            samples.push(start.elapsed());
        }
        samples
    });
    report("leased create-if-absent txn (acquire a primary key)", {
        let mut samples = Vec::new();
        for i in 0..10_000 {
            let key = format!("/primary/{i}");
            let start = Instant::now();
            let r = store
                .txn(Txn {
                    compares: vec![Compare::ModRevision(key.clone(), 0)],
                    success: vec![Op::Put {
                        key,
                        value: b"me".to_vec(),
                        lease: Some(lease.id),
                    }],
                    failure: vec![],
                })
                .await
                .unwrap();
            assert!(r.succeeded);
            samples.push(start.elapsed());
        }
        samples
    });

    // The same, while another task writes durably as fast as it can.
    let stop = Arc::new(AtomicBool::new(false));
    let background = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                store
                    .put("/busy", n.to_be_bytes().to_vec(), None)
                    .await
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    report("keep_alive during concurrent durable writes", {
        let mut samples = Vec::new();
        for _ in 0..2_000 {
            let start = Instant::now();
            store.keep_alive(lease.id).await.unwrap();
            samples.push(start.elapsed());
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples
    });
    report("get during concurrent durable writes", {
        let mut samples = Vec::new();
        for _ in 0..2_000 {
            let start = Instant::now();
            store.get("/durable").await.unwrap();
            samples.push(start.elapsed());
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples
    });
    report(
        "leased put during concurrent durable writes (waits 1 fsync)",
        {
            let mut samples = Vec::new();
            for i in 0..500 {
                let start = Instant::now();
                store
                    .put("/leased", vec![i as u8], Some(lease.id))
                    .await
                    .unwrap();
                samples.push(start.elapsed());
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            samples
        },
    );
    stop.store(true, Ordering::Relaxed);
    let n = background.await.unwrap();
    println!("background durable writes: {n}");

    let memory = EmbeddedStore::in_memory();
    time_puts(&memory, 1000, None, "/warm").await;
    report(
        "in-memory store put",
        time_puts(&memory, 20_000, None, "/k").await,
    );
}
