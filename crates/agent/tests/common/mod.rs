//! A store wrapper for fault tests: the embedded store, made unreachable on
//! demand, as a network partition or a store without quorum would make it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tandem_store::{
    KeyValue, Lease, LeaseId, Listing, Revision, Store, StoreError, Txn, TxnResponse, WatchStream,
};

/// The embedded store behind a switch.
pub struct Flaky {
    pub inner: Arc<dyn Store>,
    /// While set, calls fail with `Unavailable` (only keep-alives and lease
    /// grants with `keepalive_only`) and open watches break.
    pub unreachable: Arc<AtomicBool>,
    keepalive_only: bool,
}

impl Flaky {
    /// Every call fails while unreachable: a host cut off from the store.
    pub fn partitioned(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            unreachable: Arc::new(AtomicBool::new(false)),
            keepalive_only: false,
        })
    }

    /// Only lease renewal fails while unreachable.
    pub fn keepalive_only(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            unreachable: Arc::new(AtomicBool::new(false)),
            keepalive_only: true,
        })
    }

    pub fn cut(&self, on: bool) {
        self.unreachable.store(on, Ordering::SeqCst);
    }

    fn check(&self, lease_call: bool) -> tandem_store::Result<()> {
        if self.unreachable.load(Ordering::SeqCst) && (lease_call || !self.keepalive_only) {
            Err(StoreError::Unavailable("test: store unreachable".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn get(&self, key: &str) -> tandem_store::Result<Option<KeyValue>> {
        self.check(false)?;
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> tandem_store::Result<Listing> {
        self.check(false)?;
        self.inner.list(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> tandem_store::Result<Revision> {
        self.check(false)?;
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> tandem_store::Result<bool> {
        self.check(false)?;
        self.inner.delete(key).await
    }
    async fn txn(&self, txn: Txn) -> tandem_store::Result<TxnResponse> {
        self.check(false)?;
        self.inner.txn(txn).await
    }
    async fn grant_lease(&self, ttl: Duration) -> tandem_store::Result<Lease> {
        self.check(true)?;
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> tandem_store::Result<Duration> {
        self.check(true)?;
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> tandem_store::Result<()> {
        self.check(false)?;
        self.inner.revoke_lease(lease).await
    }
    async fn watch(&self, prefix: &str, start: Revision) -> tandem_store::Result<WatchStream> {
        self.check(false)?;
        let inner = self.inner.watch(prefix, start).await?;
        if self.keepalive_only {
            return Ok(inner);
        }
        // A watch through a cut link breaks.
        Ok(breakable(inner, self.unreachable.clone()))
    }
}

/// Breaks `stream` (one `WatchLost`, then the end) as soon as `cut` is set.
pub fn breakable(stream: WatchStream, cut: Arc<AtomicBool>) -> WatchStream {
    let ticks = tokio::time::interval(Duration::from_millis(20));
    let s = futures::stream::unfold(
        (stream, cut, ticks, false),
        |(mut stream, cut, mut ticks, done)| async move {
            if done {
                return None;
            }
            loop {
                if cut.load(Ordering::SeqCst) {
                    return Some((
                        Err(StoreError::WatchLost("test: link cut".into())),
                        (stream, cut, ticks, true),
                    ));
                }
                tokio::select! {
                    item = stream.next() => return item.map(|i| (i, (stream, cut, ticks, false))),
                    _ = ticks.tick() => {}
                }
            }
        },
    );
    Box::pin(s)
}

/// The lines a test hook wrote as `instance role epoch time_ns`.
pub fn hook_lines(path: &std::path::Path) -> Vec<(String, String, u64, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}
