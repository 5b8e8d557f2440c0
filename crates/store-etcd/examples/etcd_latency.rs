#![allow(clippy::disallowed_methods)]
//! Latency of `EtcdStore` calls against a running cluster (a benchmark,
//! not a test: tests do not time things). With a 3-member loopback
//! cluster:
//!
//! ```text
//! scripts/etcd-cluster.sh start /tmp/tandem-etcd 20000
//! cargo run --release -p tandem-store-etcd --example etcd_latency -- etcd://127.0.0.1:20001,127.0.0.1:20002,127.0.0.1:20003
//! scripts/etcd-cluster.sh stop /tmp/tandem-etcd
//! ```

use std::error::Error;
use std::time::{Duration, Instant};

use tandem_store::{Compare, Op, Store, Txn};
use tandem_store_etcd::{EtcdOptions, EtcdStore, parse_store_url};

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<48} n={:<5} p50={:>8.2?} p90={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        samples.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

async fn timed<T, F, Fut>(n: usize, mut call: F) -> Result<Vec<Duration>, Box<dyn Error>>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, tandem_store::StoreError>>,
{
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        call(i).await?;
        samples.push(start.elapsed());
    }
    Ok(samples)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: latency etcd://host:port[,host:port...]")?;
    let endpoints = parse_store_url(&url)?;
    let store = EtcdStore::connect(&endpoints, EtcdOptions::default()).await?;
    println!("etcd members: {}", endpoints.join(", "));
    let prefix = format!("/tandem-latency/{}/", std::process::id());
    let key = format!("{prefix}k");
    let lease = store.grant_lease(Duration::from_secs(60)).await?;

    timed(50, |i| store.put(&key, vec![i as u8; 200], None)).await?; // warm-up
    report(
        "put, 200 B value",
        timed(500, |i| store.put(&key, vec![i as u8; 200], None)).await?,
    );
    report("get (linearizable)", timed(500, |_| store.get(&key)).await?);
    report("CAS txn (compare mod_revision + put)", {
        let mut samples = Vec::new();
        for i in 0..500 {
            let current = store.get(&key).await?.ok_or("key vanished")?;
            let start = Instant::now();
            let r = store
                .txn(Txn {
                    compares: vec![Compare::ModRevision(key.clone(), current.mod_revision)],
                    success: vec![Op::put(&key, vec![i as u8; 200])],
                    failure: vec![],
                })
                .await?;
            samples.push(start.elapsed());
            if !r.succeeded {
                return Err("uncontended CAS failed".into());
            }
        }
        samples
    });
    report("leased create-if-absent txn (take a primary key)", {
        timed(500, |i| {
            let k = format!("{prefix}primary/{i}");
            store.txn(Txn {
                compares: vec![Compare::ModRevision(k.clone(), 0)],
                success: vec![Op::Put {
                    key: k,
                    value: b"me".to_vec(),
                    lease: Some(lease.id),
                }],
                failure: vec![],
            })
        })
        .await?
    });
    report(
        "keep_alive",
        timed(500, |_| store.keep_alive(lease.id)).await?,
    );
    report("put, then its watch event arrives", {
        let mut watch = store.watch(&prefix, 0).await?;
        let mut samples = Vec::new();
        use futures::StreamExt;
        for i in 0..200 {
            let start = Instant::now();
            store.put(&key, vec![i as u8], None).await?;
            watch.next().await.ok_or("watch ended")??;
            samples.push(start.elapsed());
        }
        samples
    });

    store.revoke_lease(lease.id).await?;
    let listing = store.list(&prefix).await?;
    for kv in listing.kvs {
        store.delete(&kv.key).await?;
    }
    Ok(())
}
