//! The store conformance suite: what every [`Store`] backend must pass.
//!
//! A backend runs the whole suite with one call,
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use tandem_store::testing::{conformance, ConformanceConfig};
//! let store = tandem_store::EmbeddedStore::in_memory();
//! conformance(store, ConformanceConfig::new(Duration::from_millis(300))).await;
//! # }
//! ```
//!
//! or each check of [`checks`] as its own test. A failed check panics with
//! a message that names it.
//!
//! The suite is written to run against a store that other clients use at
//! the same time (one etcd cluster shared by many test runs): every key it
//! writes is under [`ConformanceConfig::prefix`] plus a fresh sub-prefix per
//! check run, it never assumes the store is empty, and it compares
//! revisions only with revisions it observed.
//!
//! [`checks::watch_slow_consumer_is_dropped`] is not part of
//! [`conformance`]: only a backend that bounds each watcher's buffer can
//! meet it the same way (the embedded one does).

pub mod checks;

use std::fmt::{Debug, Display};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::{Result, Store, StoreError, WatchEvent, WatchStream};

/// How the suite runs against one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConformanceConfig {
    /// Every key the suite writes starts with this (e.g.
    /// `/tandem-conformance/1234-5678/`).
    pub prefix: String,
    /// The smallest lease TTL the backend honours (embedded: ~200 ms; etcd:
    /// 2 s). Lease checks use it, so it sets their duration.
    pub min_lease_ttl: Duration,
}

impl ConformanceConfig {
    /// A config with a prefix unique to this process and moment, so runs
    /// sharing one store do not collide.
    pub fn new(min_lease_ttl: Duration) -> ConformanceConfig {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or_default();
        ConformanceConfig {
            prefix: format!("/tandem-conformance/{}-{micros}/", std::process::id()),
            min_lease_ttl,
        }
    }
}

/// Runs every check of [`checks`] that belongs to the conformance suite
/// (all but [`checks::watch_slow_consumer_is_dropped`]). The lease checks,
/// which wait for TTLs, run concurrently with the others. Panics with a
/// message naming the first check that failed.
pub async fn conformance(store: Arc<dyn Store>, config: ConformanceConfig) {
    let (s, c) = (&store, &config);
    let lease_checks = async {
        tokio::join!(
            checks::lease_expires_without_keep_alive(s, c),
            checks::lease_survives_with_keep_alive(s, c),
            checks::lease_revoke_deletes_keys_at_once(s, c),
        );
    };
    let other_checks = async {
        checks::kv_put_get_delete_round_trip(s, c).await;
        checks::revisions_strictly_increase(s, c).await;
        checks::list_returns_sorted_keys_under_prefix(s, c).await;
        checks::txn_compare_mod_revision(s, c).await;
        checks::txn_compare_value(s, c).await;
        checks::txn_success_and_failure_branches(s, c).await;
        checks::txn_ops_share_one_revision(s, c).await;
        checks::txn_get_reads_current_value(s, c).await;
        checks::txn_failed_compare_writes_nothing(s, c).await;
        checks::txn_writing_a_key_twice_is_invalid(s, c).await;
        checks::put_with_unknown_lease_fails(s, c).await;
        checks::put_without_lease_detaches_key(s, c).await;
        checks::watch_replays_history_then_live(s, c).await;
        checks::watch_from_listing_revision_misses_nothing(s, c).await;
        checks::watch_filters_by_prefix(s, c).await;
        checks::watch_txn_events_in_op_order(s, c).await;
        checks::watch_delete_event_shape(s, c).await;
        checks::watch_from_zero_sees_only_new_changes(s, c).await;
        checks::concurrent_cas_increments_are_linearizable(s, c).await;
        checks::invalid_arguments_are_rejected(s, c).await;
    };
    tokio::join!(lease_checks, other_checks);
}

/// How long the suite waits for a watch event that should come promptly.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One run of one check: its name (for failure messages) and the key
/// sub-prefix it owns.
struct Check {
    name: &'static str,
    scope: String,
}

impl Check {
    fn new(name: &'static str, config: &ConformanceConfig) -> Check {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        Check {
            name,
            scope: format!("{}{name}/{run}/", config.prefix),
        }
    }

    /// A key under this check's sub-prefix.
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.scope)
    }

    #[track_caller]
    fn fail(&self, msg: impl Display) -> ! {
        panic!("store conformance check `{}` failed: {msg}", self.name)
    }

    #[track_caller]
    fn ensure(&self, cond: bool, msg: impl Display) {
        if !cond {
            self.fail(msg)
        }
    }

    #[track_caller]
    fn eq<T: PartialEq + Debug>(&self, actual: T, expected: T, what: impl Display) {
        if actual != expected {
            self.fail(format_args!(
                "{what}:\n  expected: {expected:?}\n    actual: {actual:?}"
            ))
        }
    }

    /// The value of a call that must succeed.
    #[track_caller]
    fn ok<T>(&self, result: Result<T>, what: impl Display) -> T {
        match result {
            Ok(v) => v,
            Err(e) => self.fail(format_args!("{what}: unexpected error: {e:?}")),
        }
    }

    /// The error of a call that must fail.
    #[track_caller]
    fn err<T: Debug>(&self, result: Result<T>, what: impl Display) -> StoreError {
        match result {
            Ok(v) => self.fail(format_args!("{what}: expected an error, got Ok({v:?})")),
            Err(e) => e,
        }
    }

    /// The next event of `stream`, which must come within `within`.
    async fn next_event(
        &self,
        stream: &mut WatchStream,
        within: Duration,
        what: impl Display,
    ) -> WatchEvent {
        match tokio::time::timeout(within, stream.next()).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => self.fail(format_args!("{what}: watch broke: {e:?}")),
            Ok(None) => self.fail(format_args!("{what}: watch stream ended")),
            Err(_) => self.fail(format_args!("{what}: no watch event within {within:?}")),
        }
    }

    /// The next `n` events of `stream`.
    async fn next_events(
        &self,
        stream: &mut WatchStream,
        n: usize,
        what: impl Display,
    ) -> Vec<WatchEvent> {
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            events.push(
                self.next_event(stream, EVENT_TIMEOUT, format_args!("{what} (event {i})"))
                    .await,
            );
        }
        events
    }

    /// Grants a lease that outlives the check (it revokes it itself).
    async fn long_lease(&self, store: &Arc<dyn Store>) -> crate::Lease {
        self.ok(
            store.grant_lease(Duration::from_secs(60)).await,
            "grant a 60 s lease",
        )
    }
}
