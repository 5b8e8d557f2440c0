//! A store wrapper that breaks watches on purpose, to test what follows a
//! prefix across [`StoreError::WatchLost`] (e.g. [`crate::watch::follow`])
//! against any backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::{KeyValue, WatchStream};
use crate::{Lease, LeaseId, Listing, Result, Revision, Store, StoreError, Txn, TxnResponse};

/// Passes every call to the store it wraps, except that each watch breaks
/// with [`StoreError::WatchLost`] after a set number of events: the `i`-th
/// watch call after `cuts[i % cuts.len()]` events (`0`: at once, before any
/// event). Like the real backends it breaks between revisions only: once
/// the count is reached it still delivers the rest of that revision, and
/// breaks when the next revision arrives. With no cuts, watches never
/// break.
pub struct WatchBreaker {
    inner: Arc<dyn Store>,
    cuts: Vec<usize>,
    watches: AtomicUsize,
}

impl WatchBreaker {
    /// Wraps `inner`, breaking its watches after `cuts` events in turn.
    pub fn new(inner: Arc<dyn Store>, cuts: Vec<usize>) -> Arc<WatchBreaker> {
        Arc::new(WatchBreaker {
            inner,
            cuts,
            watches: AtomicUsize::new(0),
        })
    }

    /// How many watches were set up through this wrapper so far.
    pub fn watches(&self) -> usize {
        self.watches.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl Store for WatchBreaker {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.inner.list(prefix).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.inner.put(key, value, lease).await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.inner.txn(txn).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.inner.revoke_lease(lease).await
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        let n = self.watches.fetch_add(1, Ordering::Relaxed);
        let stream = self.inner.watch(prefix, start).await?;
        let Some(&cut) = self.cuts.get(n % self.cuts.len().max(1)) else {
            return Ok(stream);
        };
        let lost = StoreError::WatchLost(format!(
            "watch {n} of {prefix:?} broken on purpose after {cut} event(s)"
        ));
        if cut == 0 {
            return Ok(Box::pin(futures::stream::once(async move { Err(lost) })));
        }
        // (inner stream, events delivered, revision of the last one, error
        // to break with).
        let state = (stream, 0usize, 0, Some(lost));
        Ok(Box::pin(futures::stream::unfold(
            state,
            move |(mut stream, delivered, last, lost)| async move {
                let lost = lost?;
                match stream.next().await {
                    Some(Ok(e)) if delivered < cut || e.revision() == last => {
                        let revision = e.revision();
                        Some((Ok(e), (stream, delivered + 1, revision, Some(lost))))
                    }
                    Some(Ok(_)) => Some((Err(lost), (stream, delivered, last, None))),
                    Some(Err(e)) => Some((Err(e), (stream, delivered, last, None))),
                    None => None,
                }
            },
        )))
    }
}
