//! Following a prefix through broken watches: the one place that resumes a
//! [`Store::watch`] after [`StoreError::WatchLost`], a stream that ends, a
//! watch call that fails or an unreachable store.
//!
//! A [`WatchStream`] ends at its first error and never restarts by itself;
//! every reader of the store that follows changes needs the same loop
//! around it. [`follow`] is that loop, in the two styles tandem uses:
//!
//! - **a log** ([`AfterBreak::Resume`]): the caller needs every change (the
//!   event log, a cache fed change by change). After a break the helper
//!   watches again from where it stopped.
//! - **state** ([`AfterBreak::Relist`]): the caller needs the current value
//!   of each key (role assignments, an intent, the topology). After a break
//!   the helper lists the prefix again and hands over that
//!   [`FollowItem::Snapshot`], then the changes after it.
//!
//! ```no_run
//! # async fn demo(store: std::sync::Arc<dyn tandem_store::Store>) {
//! use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
//! let mut roles = follow(store, "/tandem/roles/", Start::Listing, AfterBreak::Relist);
//! loop {
//!     match roles.next().await {
//!         FollowItem::Snapshot(listing) => println!("{} roles", listing.kvs.len()),
//!         FollowItem::Change(event) => println!("{} changed", event.kv.key),
//!         FollowItem::Interrupted(error) => tracing::warn!(%error, "role watch broke; re-reading"),
//!     }
//! }
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use crate::{Listing, Revision, Store, StoreError, WatchEvent, WatchStream};

/// The first retry delay after a failure (unless [`Follow::retry_delay`]
/// sets another).
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest retry delay: the delay doubles from [`RETRY_MIN`] on each
/// failure in a row, up to this (unless [`Follow::retry_delay`] sets
/// another).
pub const RETRY_MAX: Duration = Duration::from_secs(2);

/// Where following starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Changes from this revision on (inclusive), as [`Store::watch`]: a
    /// listing's `revision + 1` continues exactly after it. `0` means "from
    /// the next change".
    At(Revision),
    /// A [`FollowItem::Snapshot`] of the prefix first, then every change
    /// after it.
    Listing,
}

/// What the helper does after a break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterBreak {
    /// Watch again from the revision after the last change delivered: the
    /// caller sees every change. When that history is gone ([`StoreError::Compacted`]), or
    /// when following started at revision 0 and broke before its first
    /// change, a [`FollowItem::Snapshot`] comes instead.
    Resume,
    /// List the prefix again: a [`FollowItem::Snapshot`], then the changes
    /// after it. Changes between the last one delivered and the snapshot
    /// are folded into it.
    Relist,
}

/// What [`Follow::next`] hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowItem {
    /// Every key under the prefix as of `listing.revision`: the caller's
    /// view of the prefix is replaced by it. The changes that follow all
    /// have a higher revision.
    Snapshot(Listing),
    /// One change under the prefix.
    Change(WatchEvent),
    /// The watch broke, could not be set up, or a listing failed. Nothing
    /// is lost: the next call resumes (or lists again) as [`AfterBreak`]
    /// says, after the retry delay when nothing was delivered since the
    /// previous interruption. For the caller's log (or to stop following).
    Interrupted(StoreError),
}

/// Follows one prefix of a store across broken watches. Made by [`follow`];
/// read with [`Follow::next`].
///
/// # Correctness
///
/// Given a backend that keeps [`Store`]'s ordered-watch guarantee, across
/// any number of interruptions ([`StoreError::WatchLost`], a stream that
/// ends, a watch or list call that fails):
///
/// - **No change missed**: every change under the prefix from the start on
///   is delivered as a [`FollowItem::Change`], or folded into a
///   [`FollowItem::Snapshot`] delivered after it (only where
///   [`AfterBreak`] says a snapshot comes).
/// - **None delivered twice**: a resumed watch starts at the revision
///   after the last change delivered. A broken watch has delivered whole
///   revisions (the store's contract for [`StoreError::WatchLost`]: "resume
///   from the last revision seen + 1"; the embedded backend drops a slow
///   watcher between revisions, etcd sends a revision's events in one
///   response), so nothing of a transaction is lost or repeated.
/// - **In revision order**: changes come in revision order, in op order
///   within one transaction; a snapshot's revision is at or above every
///   change before it and below every change after it.
///
/// # Cancel safety
///
/// [`Follow::next`] is cancel safe: dropping its future (in a
/// `tokio::select!` whose other branch won) loses nothing, and a pending
/// retry delay keeps its deadline for the next call.
pub struct Follow {
    store: Arc<dyn Store>,
    prefix: String,
    after_break: AfterBreak,
    retry_min: Duration,
    retry_max: Duration,
    /// The live watch, if one is set up.
    stream: Option<WatchStream>,
    /// The next call lists the prefix (a snapshot) before watching.
    relist: bool,
    /// Where the next watch starts (inclusive): the revision after the
    /// last change delivered, or the start (`0`: not known).
    resume_at: Revision,
    /// A change was delivered since the last interruption.
    progressed: bool,
    /// The next retry delay.
    delay: Duration,
    /// No store call before this instant (a retry delay in progress).
    retry_at: Option<Instant>,
}

/// Follows `prefix` of `store` from `start`; after a break, resumes or
/// lists again as `after_break` says. See [`Follow`].
pub fn follow(
    store: Arc<dyn Store>,
    prefix: impl Into<String>,
    start: Start,
    after_break: AfterBreak,
) -> Follow {
    let (relist, resume_at) = match start {
        Start::At(revision) => (false, revision),
        Start::Listing => (true, 0),
    };
    Follow {
        store,
        prefix: prefix.into(),
        after_break,
        retry_min: RETRY_MIN,
        retry_max: RETRY_MAX,
        stream: None,
        relist,
        resume_at,
        progressed: false,
        delay: RETRY_MIN,
        retry_at: None,
    }
}

impl Follow {
    /// Sets the retry delay: `min` after the first failure in a row,
    /// doubling on each further one, at most `max` (`min == max` for a fixed
    /// delay). A break after delivered changes resumes at once.
    pub fn retry_delay(mut self, min: Duration, max: Duration) -> Follow {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self.delay = min;
        self
    }

    /// The prefix followed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The next snapshot, change or interruption. Never ends: it retries
    /// (with the bounded delay) until the store answers; stop by dropping
    /// the future (it is cancel safe) or the [`Follow`].
    pub async fn next(&mut self) -> FollowItem {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
        }
        if self.relist {
            return match self.store.list(&self.prefix).await {
                Ok(listing) => {
                    self.relist = false;
                    self.resume_at = listing.revision + 1;
                    FollowItem::Snapshot(listing)
                }
                Err(e) => self.interrupted(e),
            };
        }
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => match self.store.watch(&self.prefix, self.resume_at).await {
                Ok(stream) => self.stream.insert(stream),
                Err(e) => return self.interrupted(e),
            },
        };
        match stream.next().await {
            Some(Ok(event)) => {
                self.resume_at = event.revision() + 1;
                self.progressed = true;
                self.delay = self.retry_min;
                FollowItem::Change(event)
            }
            Some(Err(e)) => self.interrupted(e),
            None => self.interrupted(StoreError::WatchLost(format!(
                "the watch of {:?} ended",
                self.prefix
            ))),
        }
    }

    /// Records a failure: drops the watch, decides how the next call
    /// resumes and when.
    fn interrupted(&mut self, error: StoreError) -> FollowItem {
        self.stream = None;
        let history_gone = matches!(error, StoreError::Compacted { .. });
        // Watching from 0 again would start at the next change, not where
        // this watch stopped.
        let unknown_position = self.resume_at == 0;
        if self.after_break == AfterBreak::Relist || history_gone || unknown_position {
            self.relist = true;
        }
        if self.progressed {
            self.retry_at = None;
        } else {
            self.retry_at = Some(Instant::now() + self.delay);
            self.delay = (self.delay * 2).min(self.retry_max);
        }
        self.progressed = false;
        FollowItem::Interrupted(error)
    }
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("store", &self.store.backend())
            .field("prefix", &self.prefix)
            .field("after_break", &self.after_break)
            .field("resume_at", &self.resume_at)
            .field("relist", &self.relist)
            .finish_non_exhaustive()
    }
}
