//! The store conformance suite against the embedded backend, in memory and
//! persisted in a temporary directory: one test per check and backend, plus
//! the whole suite in one call, plus the bounded-watcher check.

use std::sync::Arc;
use std::time::Duration;

use tandem_store::testing::{self, ConformanceConfig, checks};
use tandem_store::{EmbeddedStore, Store};

/// Lease TTL the checks use: short, to keep the suite fast.
const MIN_LEASE_TTL: Duration = Duration::from_millis(300);

fn config() -> ConformanceConfig {
    ConformanceConfig::new(MIN_LEASE_TTL)
}

/// An in-memory store.
fn memory() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    (EmbeddedStore::in_memory(), None)
}

/// A store persisted in a fresh temporary directory (kept alive with it).
fn disk() -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = EmbeddedStore::open(dir.path()).expect("open the embedded store");
    (store, Some(dir))
}

/// One `#[tokio::test]` per check and backend.
macro_rules! check_tests {
    ($($group:ident: [$($check:ident),* $(,)?]),* $(,)?) => {
        mod in_memory {
            use super::*;
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let (store, _dir) = memory();
                    checks::$check(&store, &config()).await;
                }
            )*)*
        }
        mod on_disk {
            use super::*;
            $($(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let (store, _dir) = disk();
                    checks::$check(&store, &config()).await;
                }
            )*)*
        }
    };
}

tandem_store::for_each_conformance_check!(check_tests);

/// Enough events to overflow the default per-watcher buffer (4096) several
/// times over, while staying inside the default history (100 000 events)
/// so the resumed watch can replay.
const SLOW_CONSUMER_EVENTS: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_slow_watcher_is_dropped_with_watch_lost() {
    let (store, _dir) = memory();
    checks::watch_slow_consumer_is_dropped(&store, &config(), SLOW_CONSUMER_EVENTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_disk_slow_watcher_is_dropped_with_watch_lost() {
    let (store, _dir) = disk();
    checks::watch_slow_consumer_is_dropped(&store, &config(), SLOW_CONSUMER_EVENTS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_passes_the_whole_suite() {
    let (store, _dir) = memory();
    testing::conformance(store, config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_disk_store_passes_the_whole_suite() {
    let (store, _dir) = disk();
    testing::conformance(store, config()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_suites_share_one_store_without_interfering() {
    let (store, _dir) = memory();
    tokio::join!(
        testing::conformance(store.clone(), config()),
        testing::conformance(store.clone(), config()),
    );
}
