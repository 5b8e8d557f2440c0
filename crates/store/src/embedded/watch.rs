//! Watchers of the embedded store: a bounded channel per watcher, and the
//! stream handed to the caller.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::{Revision, StoreError, WatchEvent};

/// The store's side of one watch.
pub(crate) struct Watcher {
    /// Only keys starting with this are delivered.
    pub prefix: String,
    /// Only events with at least this revision are delivered (a watch may
    /// start at a future revision).
    pub min_revision: Revision,
    /// Live events.
    pub tx: mpsc::Sender<WatchEvent>,
    /// Why the store stopped feeding this watcher; set before `tx` is dropped.
    pub ended: Arc<OnceLock<StoreError>>,
}

impl Watcher {
    /// Delivers the events of one committed revision that match this
    /// watcher, all or none. Returns `false` if the watcher must be dropped
    /// (its consumer is gone, or fell behind: then `ended` says why).
    pub(crate) fn deliver(&self, events: &[WatchEvent]) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let matches = |e: &&WatchEvent| {
            e.kv.mod_revision >= self.min_revision && e.kv.key.starts_with(&self.prefix)
        };
        let n = events.iter().filter(matches).count();
        if n == 0 {
            return true;
        }
        // Only the store sends, under its lock, so capacity cannot shrink
        // between this check and the sends: a revision is delivered whole.
        if self.tx.capacity() < n {
            let _ = self.ended.set(StoreError::WatchLost(format!(
                "watcher on prefix {:?} fell behind: more than {} undelivered events; \
                 resume from the last revision seen + 1",
                self.prefix,
                self.tx.max_capacity()
            )));
            return false;
        }
        for e in events.iter().filter(matches) {
            if self.tx.try_send(e.clone()).is_err() {
                return false;
            }
        }
        true
    }
}

/// The caller's side of one watch: replayed history first, then live events,
/// then (if the store stopped feeding it) one error.
pub(crate) struct WatchReceiver {
    pub replay: VecDeque<WatchEvent>,
    pub rx: mpsc::Receiver<WatchEvent>,
    pub ended: Arc<OnceLock<StoreError>>,
    pub done: bool,
}

impl Stream for WatchReceiver {
    type Item = crate::Result<WatchEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(e) = this.replay.pop_front() {
            return Poll::Ready(Some(Ok(e)));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(e)) => Poll::Ready(Some(Ok(e))),
            Poll::Ready(None) => {
                this.done = true;
                let err =
                    this.ended.get().cloned().unwrap_or_else(|| {
                        StoreError::Unavailable("embedded store closed".to_owned())
                    });
                Poll::Ready(Some(Err(err)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
