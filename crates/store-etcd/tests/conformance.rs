//! The store conformance suite against `EtcdStore` on a real 3-member etcd
//! cluster (started by this test binary, shared by its tests): one test
//! per check, plus the whole suite in one call.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tandem_store::Store;
use tandem_store::testing::{self, ConformanceConfig, checks};

/// etcd's smallest lease TTL with its default election timeout (1.5 ×
/// 1 s, rounded up to whole seconds).
const MIN_LEASE_TTL: Duration = Duration::from_secs(2);

fn config() -> ConformanceConfig {
    ConformanceConfig::new(MIN_LEASE_TTL)
}

/// A fresh store (its connections live on this test's runtime) on the
/// shared cluster.
async fn store() -> Arc<dyn Store> {
    let cluster = tokio::task::block_in_place(common::shared);
    cluster.store(Duration::from_secs(5)).await
}

macro_rules! check_tests {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let store = store().await;
                checks::$check(&store, &config()).await;
            }
        )*
    };
}

check_tests!(
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
    lease_expires_without_keep_alive,
    lease_survives_with_keep_alive,
    lease_revoke_deletes_keys_at_once,
    watch_replays_history_then_live,
    watch_from_listing_revision_misses_nothing,
    watch_filters_by_prefix,
    watch_txn_events_in_op_order,
    watch_delete_event_shape,
    watch_from_zero_sees_only_new_changes,
    concurrent_cas_increments_are_linearizable,
    invalid_arguments_are_rejected,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_passes_the_whole_suite() {
    let store = store().await;
    assert_eq!(store.backend(), "etcd");
    testing::conformance(store, config()).await;
}

/// Beyond the suite: a transaction binding keys to two leases, one of them
/// revoked, fails with `LeaseNotFound` naming the revoked one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_with_a_revoked_lease_among_two_names_the_revoked_one() {
    use tandem_store::{Op, StoreError, Txn};
    let store = store().await;
    let prefix = config().prefix;
    let live = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let gone = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    store.revoke_lease(gone.id).await.unwrap();
    for (first, second) in [(live.id, gone.id), (gone.id, live.id)] {
        let put = |k: &str, lease| Op::Put {
            key: format!("{prefix}{k}"),
            value: b"v".to_vec(),
            lease: Some(lease),
        };
        let result = store
            .txn(Txn {
                compares: vec![],
                success: vec![put("a", first), put("b", second)],
                failure: vec![],
            })
            .await;
        assert_eq!(result, Err(StoreError::LeaseNotFound(gone.id)));
    }
    store.revoke_lease(live.id).await.unwrap();
}
