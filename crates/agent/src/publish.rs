//! Writes an agent's keys (its host record and instance statuses) to the
//! store, bound to its current lease, without ever blocking the agent's
//! loop: the newest value of each key wins, writes are retried while the
//! store is unavailable, and wait for a new lease when the old one is gone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_store::{LeaseId, Store, StoreError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

#[derive(Default)]
struct Pending {
    order: VecDeque<String>,
    /// The newest value of each queued key; `None` deletes it.
    values: HashMap<String, Option<Vec<u8>>>,
    lease: Option<LeaseId>,
}

/// A handle to queue writes.
#[derive(Clone)]
pub struct Publisher {
    pending: Arc<Mutex<Pending>>,
    notify: Arc<Notify>,
}

impl Publisher {
    /// Starts the writer task.
    pub fn start(store: Arc<dyn Store>, cancel: CancellationToken) -> Publisher {
        let p = Publisher {
            pending: Arc::new(Mutex::new(Pending::default())),
            notify: Arc::new(Notify::new()),
        };
        let task = p.clone();
        tokio::spawn(async move { task.run(store, cancel).await });
        p
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a write of `key` (replacing any queued value of it).
    pub fn put(&self, key: String, value: Vec<u8>) {
        self.queue(key, Some(value));
    }

    /// Queues a deletion of `key` (an instance no longer in the topology).
    pub fn delete(&self, key: String) {
        self.queue(key, None);
    }

    fn queue(&self, key: String, value: Option<Vec<u8>>) {
        {
            let mut p = self.lock();
            if p.values.insert(key.clone(), value).is_none() {
                p.order.push_back(key);
            }
        }
        self.notify.notify_one();
    }

    /// Sets the lease to bind keys to (`None`: hold writes).
    pub fn set_lease(&self, lease: Option<LeaseId>) {
        self.lock().lease = lease;
        self.notify.notify_one();
    }

    async fn run(self, store: Arc<dyn Store>, cancel: CancellationToken) {
        loop {
            let next = {
                let mut p = self.lock();
                match p.lease {
                    Some(lease) => p.order.pop_front().map(|k| {
                        let v = p.values.remove(&k).unwrap_or_default();
                        (k, v, lease)
                    }),
                    None => None,
                }
            };
            let Some((key, value, lease)) = next else {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.notify.notified() => continue,
                }
            };
            let result = match &value {
                Some(v) => store.put(&key, v.clone(), Some(lease)).await.map(drop),
                None => store.delete(&key).await.map(drop),
            };
            match result {
                Ok(()) => {}
                Err(e) => {
                    // Requeue unless a newer value is already queued.
                    {
                        let mut p = self.lock();
                        if !p.values.contains_key(&key) {
                            p.values.insert(key.clone(), value);
                            p.order.push_front(key.clone());
                        }
                        if matches!(e, StoreError::LeaseNotFound(_)) && p.lease == Some(lease) {
                            p.lease = None;
                        }
                    }
                    if !matches!(e, StoreError::LeaseNotFound(_)) {
                        warn!(key = %key, error = %e, "status write failed; retrying");
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            }
        }
    }
}
