//! Behaviour specific to the embedded backend: persistence across restarts
//! (persisted keys come back with their revisions, leased keys do not,
//! revisions never go backwards), closing, history bounds, and lease expiry
//! under tokio's clock.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tandem_store::embedded::EmbeddedOptions;
use tandem_store::{Compare, EmbeddedStore, KeyValue, Op, Store, StoreError, Txn};

fn put_leased(key: &str, value: &[u8], lease: i64) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
        lease: Some(lease),
    }
}

async fn current_revision(store: &EmbeddedStore) -> u64 {
    store.list("/").await.unwrap().revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_restores_persisted_keys_with_their_revisions_and_drops_leased_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (before, max_seen) = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put("/a", b"a1".to_vec(), None).await.unwrap();
        store.put("/b", b"b".to_vec(), None).await.unwrap();
        store.put("/gone", b"x".to_vec(), None).await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        // One txn mixing persisted and leased keys, and a delete.
        store
            .txn(Txn {
                compares: vec![],
                success: vec![
                    Op::put("/a", b"a2".to_vec()),
                    put_leased("/leased", b"l", lease.id),
                    Op::delete("/gone"),
                ],
                failure: vec![],
            })
            .await
            .unwrap();
        // Memory-only writes after the last durable one push the revision on.
        let mut max_seen = 0;
        for i in 0..100u32 {
            max_seen = store
                .put("/leased-too", i.to_be_bytes().to_vec(), Some(lease.id))
                .await
                .unwrap();
        }
        let before = store.list("/").await.unwrap();
        assert!(before.revision >= max_seen);
        store.close().await;
        (before, max_seen)
    };

    let store = EmbeddedStore::open(dir.path()).unwrap();
    let after = store.list("/").await.unwrap();
    let persisted: Vec<KeyValue> = before
        .kvs
        .iter()
        .filter(|kv| kv.lease.is_none())
        .cloned()
        .collect();
    assert_eq!(
        persisted
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        ["/a", "/b"]
    );
    assert_eq!(after.kvs, persisted, "persisted keys come back unchanged");
    assert_eq!(after.kvs[0].version, 2);
    assert!(after.revision >= max_seen);
    let next = store.put("/c", b"c".to_vec(), None).await.unwrap();
    assert!(
        next > max_seen,
        "revision {next} after restart not above {max_seen} seen before"
    );
}

#[tokio::test]
async fn dropping_the_last_arc_releases_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u8 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        store
            .put("/leased", vec![round], Some(lease.id))
            .await
            .unwrap();
        let _watch = store.watch("/", 0).await.unwrap();
        if round > 0 {
            assert_eq!(
                store.get("/round").await.unwrap().map(|kv| kv.value),
                Some(vec![round - 1])
            );
        }
        store.put("/round", vec![round], None).await.unwrap();
        drop(store); // the expiry task and the watch stream do not keep it open
    }
}

#[tokio::test]
async fn leased_rewrite_of_a_persisted_key_is_not_resurrected_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        store
            .put("/was-plain", b"old".to_vec(), None)
            .await
            .unwrap();
        store
            .put("/was-plain", b"new".to_vec(), Some(lease.id))
            .await
            .unwrap();
        store
            .put("/was-leased", b"old".to_vec(), Some(lease.id))
            .await
            .unwrap();
        store
            .put("/was-leased", b"new".to_vec(), None)
            .await
            .unwrap();
        store.close().await;
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.get("/was-plain").await.unwrap(), None);
    let kv = store.get("/was-leased").await.unwrap().unwrap();
    assert_eq!((kv.value, kv.version, kv.lease), (b"new".to_vec(), 2, None));
}

#[tokio::test]
async fn revisions_never_go_backwards_across_restarts_even_for_memory_only_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for _ in 0..3 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        for i in 0..50u32 {
            let rev = store
                .put("/l", i.to_be_bytes().to_vec(), Some(lease.id))
                .await
                .unwrap();
            assert!(rev > last, "revision {rev} not above {last}");
            last = rev;
        }
        store.close().await;
    }
}

#[tokio::test]
async fn watch_from_before_a_restart_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let old = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let rev = store.put("/k", b"v".to_vec(), None).await.unwrap();
        store.close().await;
        rev
    };
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let listing = store.list("/").await.unwrap();
    match store.watch("/", old).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!(requested, old);
            assert_eq!(oldest, listing.revision + 1);
        }
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
    let mut watch = store.watch("/", listing.revision + 1).await.unwrap();
    let rev = store.put("/k", b"v2".to_vec(), None).await.unwrap();
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.kv.key.as_str(), e.revision()), ("/k", rev));
}

async fn failed_compare_keeps_the_revision(store: Arc<EmbeddedStore>) {
    let r1 = store.put("/k", b"1".to_vec(), None).await.unwrap();
    let before = current_revision(&store).await;
    let response = store
        .txn(Txn {
            compares: vec![Compare::ModRevision("/k".into(), r1 + 100)],
            success: vec![Op::put("/k", b"2".to_vec()), Op::put("/n", b"n".to_vec())],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(!response.succeeded);
    assert_eq!(response.revision, before, "response revision unchanged");
    assert_eq!(
        current_revision(&store).await,
        before,
        "store revision unchanged"
    );
    assert_eq!(store.get("/n").await.unwrap(), None);
    assert_eq!(store.get("/k").await.unwrap().unwrap().mod_revision, r1);
    // A read-only txn, and a delete of an absent key, do not bump it either.
    store
        .txn(Txn {
            compares: vec![],
            success: vec![Op::get("/k")],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(!store.delete("/absent").await.unwrap());
    assert_eq!(current_revision(&store).await, before);
    assert_eq!(
        store.put("/k", b"3".to_vec(), None).await.unwrap(),
        before + 1
    );
}

#[tokio::test]
async fn failed_compare_writes_nothing_and_keeps_the_revision_in_memory() {
    failed_compare_keeps_the_revision(EmbeddedStore::in_memory()).await;
}

#[tokio::test]
async fn failed_compare_writes_nothing_and_keeps_the_revision_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    failed_compare_keeps_the_revision(EmbeddedStore::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn opening_a_directory_that_is_already_open_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    match EmbeddedStore::open(dir.path()) {
        Err(StoreError::Internal(msg)) => assert!(msg.contains("already open"), "{msg}"),
        other => panic!("expected Internal, got {other:?}"),
    }
}

#[tokio::test]
async fn closed_store_refuses_calls_and_ends_watches_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let mut watch = store.watch("/", 0).await.unwrap();
    store.close().await;
    assert!(matches!(
        watch.next().await,
        Some(Err(StoreError::Unavailable(_)))
    ));
    assert!(watch.next().await.is_none());
    assert!(store.get("/k").await.unwrap_err().is_unavailable());
    assert!(
        store
            .put("/k", vec![], None)
            .await
            .unwrap_err()
            .is_unavailable()
    );
    assert!(
        store
            .grant_lease(Duration::from_secs(1))
            .await
            .unwrap_err()
            .is_unavailable()
    );
    // The file is closed: the directory opens again while the old handle lives.
    let reopened = EmbeddedStore::open(dir.path()).unwrap();
    reopened.put("/k", b"v".to_vec(), None).await.unwrap();
}

#[tokio::test]
async fn history_is_bounded_and_older_watches_are_compacted() {
    let store = EmbeddedStore::in_memory_with(EmbeddedOptions {
        history_max_events: 10,
        ..EmbeddedOptions::default()
    });
    let mut revs = Vec::new();
    for i in 0..25u8 {
        revs.push(store.put("/k", vec![i], None).await.unwrap());
    }
    let oldest = revs[15];
    match store.watch("/", revs[0]).await {
        Err(StoreError::Compacted {
            requested,
            oldest: o,
        }) => {
            assert_eq!((requested, o), (revs[0], oldest));
        }
        _ => panic!("expected Compacted"),
    }
    let mut watch = store.watch("/", oldest).await.unwrap();
    for &rev in &revs[15..] {
        assert_eq!(watch.next().await.unwrap().unwrap().revision(), rev);
    }
}

#[tokio::test]
async fn watch_from_a_future_revision_skips_earlier_changes() {
    let store = EmbeddedStore::in_memory();
    let now = current_revision(&store).await;
    let mut watch = store.watch("/", now + 3).await.unwrap();
    for i in 1..=4u8 {
        store.put("/k", vec![i], None).await.unwrap();
    }
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!((e.revision(), e.kv.value), (now + 3, vec![3]));
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_follows_tokio_time() {
    let store = EmbeddedStore::in_memory();
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let rev = store
        .put("/l", b"v".to_vec(), Some(lease.id))
        .await
        .unwrap();
    let mut watch = store.watch("/", rev + 1).await.unwrap();

    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert!(store.get("/l").await.unwrap().is_some(), "alive before TTL");
    assert_eq!(
        store.keep_alive(lease.id).await.unwrap(),
        Duration::from_secs(10)
    );

    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert!(store.get("/l").await.unwrap().is_some(), "renewed");

    let start = tokio::time::Instant::now();
    let e = watch.next().await.unwrap().unwrap();
    assert_eq!(e.kind, tandem_store::EventKind::Delete);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(100),
        "expires at the deadline"
    );
    assert_eq!(store.get("/l").await.unwrap(), None);
    assert_eq!(
        store.keep_alive(lease.id).await,
        Err(StoreError::LeaseNotFound(lease.id))
    );
}

#[test]
fn store_works_without_a_tokio_runtime() {
    let store = EmbeddedStore::in_memory();
    futures::executor::block_on(async {
        let lease = store.grant_lease(Duration::from_millis(1)).await.unwrap();
        store
            .put("/l", b"v".to_vec(), Some(lease.id))
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // No expiry task: the key is still there, but the lease is dead...
        assert!(store.get("/l").await.unwrap().is_some());
        assert_eq!(
            store.keep_alive(lease.id).await,
            Err(StoreError::LeaseNotFound(lease.id))
        );
        // ...and the next write expires it first.
        assert_eq!(
            store.put("/l", b"again".to_vec(), Some(lease.id)).await,
            Err(StoreError::LeaseNotFound(lease.id))
        );
        assert_eq!(store.get("/l").await.unwrap(), None);
    });
}
