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
    ($($group:ident: [$($check:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let store = store().await;
                checks::$check(&store, &config()).await;
            }
        )*)*
    };
}

tandem_store::for_each_conformance_check!(check_tests);

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
