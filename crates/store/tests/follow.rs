//! `tandem_store::watch::follow` against the embedded store where it really
//! loses watches: a consumer that falls behind its watch buffer
//! (`WatchLost`), history compacted past the resume point (`Compacted`),
//! and the retry delay's bound and cancel safety. (The conformance suite's
//! `follow_*` checks cover the broken-on-purpose watches for every
//! backend.)

use std::sync::Arc;
use std::time::Duration;

use tandem_store::embedded::EmbeddedOptions;
use tandem_store::testing::WatchBreaker;
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{EmbeddedStore, EventKind, Op, Store, StoreError, Txn, WatchEvent};

/// How long one item may take to come.
const ITEM_TIMEOUT: Duration = Duration::from_secs(10);

fn store_with(watch_buffer_events: usize, history_max_events: usize) -> Arc<dyn Store> {
    EmbeddedStore::in_memory_with(EmbeddedOptions {
        watch_buffer_events,
        history_max_events,
        ..EmbeddedOptions::default()
    })
}

/// Writes `txns` transactions of `per_txn` puts under `/p/`; returns every
/// (revision, key) written, in order.
async fn write(store: &Arc<dyn Store>, txns: usize, per_txn: usize) -> Vec<(u64, String)> {
    let mut written = Vec::new();
    for t in 0..txns {
        let keys: Vec<String> = (0..per_txn).map(|i| format!("/p/{t:04}-{i}")).collect();
        let r = store
            .txn(Txn {
                compares: vec![],
                success: keys.iter().map(|k| Op::put(k, b"v".to_vec())).collect(),
                failure: vec![],
            })
            .await
            .expect("txn");
        written.extend(keys.into_iter().map(|k| (r.revision, k)));
    }
    written
}

async fn next(follow: &mut tandem_store::watch::Follow) -> FollowItem {
    tokio::time::timeout(ITEM_TIMEOUT, follow.next())
        .await
        .expect("an item in time")
}

fn key_of(e: &WatchEvent) -> (u64, String) {
    (e.revision(), e.kv.key.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_loses_its_watch_and_follow_resumes_without_gap_or_repeat() {
    let store = store_with(16, 100_000);
    let start = store.put("/other", b"x".to_vec(), None).await.expect("put") + 1;
    let mut f = follow(store.clone(), "/p/", Start::At(start), AfterBreak::Resume);
    // Set the watch up, then fall far behind it.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), f.next())
            .await
            .is_err()
    );
    let written = write(&store, 40, 5).await;
    let mut got = Vec::new();
    let mut lost = 0;
    while got.len() < written.len() {
        match next(&mut f).await {
            FollowItem::Change(e) => {
                assert_eq!(e.kind, EventKind::Put);
                got.push(key_of(&e));
            }
            FollowItem::Interrupted(StoreError::WatchLost(_)) => lost += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, written);
    assert!(lost >= 1, "the slow consumer's watch was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_past_compacted_history_hands_over_a_snapshot() {
    let store = store_with(4, 8);
    let start = store.put("/other", b"x".to_vec(), None).await.expect("put") + 1;
    let mut f = follow(store.clone(), "/p/", Start::At(start), AfterBreak::Resume);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), f.next())
            .await
            .is_err()
    );
    let written = write(&store, 50, 1).await;
    let mut changes = Vec::new();
    let snapshot = loop {
        match next(&mut f).await {
            FollowItem::Change(e) => changes.push(key_of(&e)),
            FollowItem::Interrupted(_) => {}
            FollowItem::Snapshot(l) => break l,
        }
    };
    assert_eq!(
        changes,
        written[..changes.len()],
        "changes before the break"
    );
    assert!(changes.len() < written.len());
    let keys: Vec<&str> = snapshot.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let all: Vec<&str> = written.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(keys, all, "the snapshot holds every key");
    assert!(snapshot.revision >= written.last().expect("written").0);
    // And it goes on from there.
    let r = store
        .put("/p/after", b"v".to_vec(), None)
        .await
        .expect("put");
    match next(&mut f).await {
        FollowItem::Change(e) => assert_eq!(key_of(&e), (r, "/p/after".to_owned())),
        other => panic!("expected the change after the snapshot, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_from_zero_that_breaks_before_its_first_change_lists_again() {
    let store: Arc<dyn Store> = EmbeddedStore::in_memory();
    store.put("/p/a", b"a".to_vec(), None).await.expect("put");
    let breaker = WatchBreaker::new(store.clone(), vec![0, 100]);
    let mut f = follow(breaker, "/p/", Start::At(0), AfterBreak::Resume)
        .retry_delay(Duration::from_millis(1), Duration::from_millis(1));
    assert!(matches!(
        next(&mut f).await,
        FollowItem::Interrupted(StoreError::WatchLost(_))
    ));
    match next(&mut f).await {
        FollowItem::Snapshot(l) => assert_eq!(l.kvs.len(), 1),
        other => panic!("expected a snapshot, got {other:?}"),
    }
    let r = store.put("/p/b", b"b".to_vec(), None).await.expect("put");
    match next(&mut f).await {
        FollowItem::Change(e) => assert_eq!(key_of(&e), (r, "/p/b".to_owned())),
        other => panic!("expected a change, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_delay_doubles_up_to_its_bound_and_survives_cancellation() {
    let store: Arc<dyn Store> = EmbeddedStore::in_memory();
    // Every watch breaks at once: no progress, so every retry waits.
    let breaker = WatchBreaker::new(store, vec![0]);
    let mut f = follow(breaker, "/p/", Start::At(1), AfterBreak::Resume)
        .retry_delay(Duration::from_millis(100), Duration::from_millis(400));
    let mut at = tokio::time::Instant::now();
    let mut waits = Vec::new();
    for _ in 0..6 {
        // Polled in short slices: a dropped `next` keeps its deadline.
        let item = loop {
            if let Ok(item) = tokio::time::timeout(Duration::from_millis(30), f.next()).await {
                break item;
            }
        };
        assert!(matches!(item, FollowItem::Interrupted(_)));
        let now = tokio::time::Instant::now();
        waits.push((now - at).as_millis());
        at = now;
    }
    assert_eq!(waits, [0, 100, 200, 400, 400, 400]);
}
