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
//!
//! [`WatchBreaker`] wraps any backend and breaks its watches on purpose:
//! the `follow_*` checks use it to test [`crate::watch::follow`] across
//! lost watches on every backend, and other crates' tests can use it to
//! force a `WatchLost`.

pub mod checks;
mod watch_breaker;

use std::fmt::{Debug, Display};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;

use crate::{Result, Store, StoreError, WatchEvent, WatchStream};

pub use watch_breaker::WatchBreaker;

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
    macro_rules! run_all {
        (
            concurrent: [$($con:ident),* $(,)?],
            sequential: [$($seq:ident),* $(,)?] $(,)?
        ) => {{
            let concurrent = async {
                tokio::join!($(checks::$con(s, c)),*);
            };
            let sequential = async {
                $(checks::$seq(s, c).await;)*
            };
            tokio::join!(concurrent, sequential);
        }};
    }
    crate::for_each_conformance_check!(run_all);
}

/// Calls `$callback!` with every check of the suite, in two groups: the
/// lease checks, which only wait and so run concurrently, and the others,
/// which run one after another. The one list of checks: [`conformance`]
/// and the backends' per-check tests all expand it, so a new check cannot
/// be missed by either.
///
/// ```text
/// macro_rules! check_tests {
///     ($($group:ident: [$($check:ident),* $(,)?]),* $(,)?) => { $($(
///         #[tokio::test] async fn $check() { /* checks::$check(&store, &config).await */ }
///     )*)* };
/// }
/// tandem_store::for_each_conformance_check!(check_tests);
/// ```
#[macro_export]
macro_rules! for_each_conformance_check {
    ($callback:ident) => {
        $callback! {
            concurrent: [
                lease_expires_without_keep_alive,
                lease_survives_with_keep_alive,
                lease_revoke_deletes_keys_at_once,
            ],
            sequential: [
                kv_put_get_delete_round_trip,
                revisions_strictly_increase,
                list_returns_sorted_keys_under_prefix,
                txn_compare_mod_revision,
                txn_compare_value,
                txn_success_and_failure_branches,
                txn_ops_share_one_revision,
                txn_get_reads_current_value,
                txn_failed_compare_writes_nothing,
                txn_writing_a_key_twice_is_invalid,
                put_with_unknown_lease_fails,
                put_without_lease_detaches_key,
                watch_replays_history_then_live,
                watch_from_listing_revision_misses_nothing,
                watch_filters_by_prefix,
                watch_txn_events_in_op_order,
                watch_delete_event_shape,
                watch_from_zero_sees_only_new_changes,
                follow_resumes_across_broken_watches,
                follow_relists_after_a_broken_watch,
                concurrent_cas_increments_are_linearizable,
                invalid_arguments_are_rejected,
            ],
        }
    };
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
