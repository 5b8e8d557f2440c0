//! `EtcdStore` while etcd members die (SIGKILL) or its history is
//! compacted: each test starts its own 3-member cluster.

#![allow(clippy::disallowed_methods)] // tests keep time

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use futures::StreamExt;
use tandem_store::{
    Compare, EventKind, Op, Revision, Store, StoreError, Txn, WatchEvent, WatchStream,
};
use tandem_store_etcd::EtcdStore;

/// How long the cluster may take to elect a leader again.
const HEAL: Duration = Duration::from_secs(20);

/// Runs blocking cluster control (process kills, health polls) off the
/// runtime's async path.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn others(cluster: &Cluster, but: &[usize]) -> Vec<usize> {
    (0..cluster.len()).filter(|i| !but.contains(i)).collect()
}

/// Retries `op` while it fails with `Unavailable` (for at most `within`).
async fn until_available<T, F, Fut>(what: &str, within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                eprintln!("{what}: unavailable, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

/// A watch that resumes from the last revision seen + 1 whenever it
/// breaks, counting the breaks.
struct ResumingWatch {
    store: Arc<EtcdStore>,
    prefix: String,
    next: Revision,
    stream: WatchStream,
    breaks: usize,
}

impl ResumingWatch {
    async fn open(store: Arc<EtcdStore>, prefix: &str, from: Revision) -> ResumingWatch {
        let stream = store.watch(prefix, from).await.expect("open the watch");
        ResumingWatch {
            store,
            prefix: prefix.to_owned(),
            next: from,
            stream,
            breaks: 0,
        }
    }

    async fn next(&mut self) -> WatchEvent {
        loop {
            let item = tokio::time::timeout(Duration::from_secs(30), self.stream.next())
                .await
                .expect("no watch event or error within 30 s");
            match item {
                Some(Ok(e)) => {
                    assert!(
                        e.revision() >= self.next,
                        "event at revision {} before the resume point {}",
                        e.revision(),
                        self.next
                    );
                    self.next = e.revision() + 1;
                    return e;
                }
                Some(Err(StoreError::WatchLost(why))) => {
                    eprintln!("watch lost ({why}); resuming from {}", self.next);
                }
                None => eprintln!("watch ended; resuming from {}", self.next),
                Some(Err(e)) => panic!("watch failed: {e:?}"),
            }
            self.breaks += 1;
            let (store, prefix, next) = (&self.store, &self.prefix, self.next);
            self.stream = until_available("re-watch", HEAL, || store.watch(prefix, next)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_member_down_reads_writes_cas_and_keep_alive_still_work() {
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(5)).await;
    let (k, leased) = ("/one-down/k", "/one-down/leased");
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    let r0 = store.put(k, b"v0".to_vec(), None).await.unwrap();
    store
        .put(leased, b"x".to_vec(), Some(lease.id))
        .await
        .unwrap();

    // Kill the member the store talks to; wait until the others have a
    // leader (it may have been the leader).
    let down = cluster.member_of(store.preferred_endpoint());
    blocking(|| {
        cluster.kill_member(down);
        cluster.wait_healthy(&others(&cluster, &[down]), HEAL);
    });

    let got = store.get(k).await.expect("get with a member down");
    assert_eq!(got.map(|kv| kv.value), Some(b"v0".to_vec()));
    assert_ne!(
        store.preferred_endpoint(),
        cluster.endpoint(down),
        "the store moved to a live member"
    );
    let r1 = store
        .put(k, b"v1".to_vec(), None)
        .await
        .expect("put with a member down");
    assert!(r1 > r0);
    let cas = store
        .txn(Txn {
            compares: vec![Compare::ModRevision(k.into(), r1)],
            success: vec![Op::put(k, b"v2".to_vec())],
            failure: vec![],
        })
        .await
        .expect("CAS with a member down");
    assert!(cas.succeeded, "CAS on the current revision");
    let ttl = store
        .keep_alive(lease.id)
        .await
        .expect("keep-alive with a member down");
    assert_eq!(ttl, lease.ttl);
    let listing = store.list("/one-down/").await.expect("list");
    assert_eq!(listing.kvs.len(), 2);
    let mut watch = store.watch("/one-down/", r0).await.expect("watch");
    let first = watch.next().await.expect("an event").expect("no error");
    assert_eq!((first.revision(), first.kind), (r0, EventKind::Put));
    let other = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    store.revoke_lease(other.id).await.expect("revoke");
    assert!(store.delete(k).await.expect("delete"));

    // A new store connects although the first endpoint it is given is dead.
    let fresh = cluster.store(Duration::from_secs(5)).await;
    assert_ne!(fresh.preferred_endpoint(), cluster.endpoint(down));
    fresh
        .put(k, b"fresh".to_vec(), None)
        .await
        .expect("put through a new store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_keep_alives_ride_out_a_leader_kill() {
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(5)).await;
    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    store
        .put("/leader-kill/k", b"v".to_vec(), None)
        .await
        .unwrap();
    let leader = blocking(|| cluster.leader()).expect("a leader");
    blocking(|| cluster.kill_member(leader));

    // No wait for the election: idempotent calls retry through it.
    let got = store
        .get("/leader-kill/k")
        .await
        .expect("get during the election");
    assert!(got.is_some());
    store
        .keep_alive(lease.id)
        .await
        .expect("keep-alive during the election");
    // A write sent while there is no leader may fail with Unavailable
    // (etcd cannot say whether it will apply); it never fails otherwise,
    // and succeeds once a leader is elected.
    let mut n = 0;
    until_available("put after a leader kill", HEAL, || {
        n += 1;
        store.put("/leader-kill/k", n.to_string().into_bytes(), None)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_loss_makes_calls_unavailable_within_the_timeout_then_recovers() {
    let cluster = blocking(Cluster::start);
    let timeout = Duration::from_secs(2);
    let store = cluster.store(timeout).await;
    let k = "/quorum/k";
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap();
    let r0 = store.put(k, b"v0".to_vec(), None).await.unwrap();
    let mut open_watch = store.watch("/quorum/", r0 + 1).await.unwrap();

    let survivor = cluster.member_of(store.preferred_endpoint());
    let killed = others(&cluster, &[survivor]);
    blocking(|| killed.iter().for_each(|&i| cluster.kill_member(i)));

    // Every call fails with Unavailable, and within the request timeout
    // (plus scheduling slack): none hangs.
    async fn unavailable<T: std::fmt::Debug>(
        wave: &str,
        what: &str,
        timeout: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) {
        let start = Instant::now();
        let result = tokio::time::timeout(timeout * 5, call)
            .await
            .unwrap_or_else(|_| panic!("{what} hangs without quorum"));
        let took = start.elapsed();
        println!("without quorum ({wave}), {what} after {took:?}: {result:?}");
        // The exception: a leader renews leases on its own, until it
        // notices (within an election timeout) that it lost its quorum.
        // Safe: a new leader restarts every lease's full TTL.
        let renewed_by_the_old_leader =
            what == "keep-alive" && wave == RIGHT_AFTER && result.is_ok();
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))) || renewed_by_the_old_leader,
            "{what} without quorum ({wave}): expected Unavailable, got {result:?}"
        );
        assert!(
            took <= timeout + Duration::from_secs(1),
            "{what} took {took:?}, beyond the request timeout of {timeout:?}"
        );
    }
    const RIGHT_AFTER: &str = "right after the kill";
    // Every kind of call, all at once: right after the kill (the survivor
    // may still believe in a leader: calls wait for an answer), and again
    // once the survivor knows it has none (it refuses at once, and the
    // store keeps trying until its timeout).
    let every_call = |wave: &'static str| {
        let store = &store;
        let cas = Txn {
            compares: vec![Compare::ModRevision(k.into(), r0)],
            success: vec![Op::put(k, b"v2".to_vec())],
            failure: vec![],
        };
        async move {
            tokio::join!(
                unavailable(wave, "put", timeout, store.put(k, b"v1".to_vec(), None)),
                unavailable(wave, "get", timeout, store.get(k)),
                unavailable(wave, "list", timeout, store.list("/quorum/")),
                unavailable(wave, "CAS", timeout, store.txn(cas)),
                unavailable(wave, "delete", timeout, store.delete(k)),
                unavailable(wave, "keep-alive", timeout, store.keep_alive(lease.id)),
                unavailable(
                    wave,
                    "grant",
                    timeout,
                    store.grant_lease(Duration::from_secs(5))
                ),
                unavailable(wave, "watch", timeout, async {
                    store.watch("/quorum/", r0).await.map(|_| "a watch stream")
                }),
            );
        }
    };
    every_call(RIGHT_AFTER).await;
    // The watch opened before loses its stream once the survivor gives up
    // on a leader (etcd cancels streams after 3 election timeouts).
    let item = tokio::time::timeout(Duration::from_secs(20), open_watch.next())
        .await
        .expect("the open watch breaks without quorum");
    assert!(
        matches!(item, Some(Err(StoreError::WatchLost(_))) | None),
        "open watch without quorum: {item:?}"
    );
    every_call("once no leader is known").await;

    // Bring them back: everything works again, the lease included.
    blocking(|| {
        killed.iter().for_each(|&i| cluster.restart_member(i));
        cluster.wait_healthy(&[0, 1, 2], HEAL);
    });
    // The members that come back may still hold an election or two
    // (calls fail with Unavailable meanwhile); then everything works.
    let r1 = until_available("put after recovery", HEAL, || {
        store.put(k, b"back".to_vec(), None)
    })
    .await;
    assert!(r1 > r0);
    assert_eq!(
        store.get(k).await.expect("get").map(|kv| kv.value),
        Some(b"back".to_vec())
    );
    store
        .keep_alive(lease.id)
        .await
        .expect("the lease survived the outage");
    let mut watch = store.watch("/quorum/", r1).await.expect("watch");
    let e = watch.next().await.expect("event").expect("no error");
    assert_eq!(e.revision(), r1);
}

/// Creates `prefix/00000` .. `prefix/{n-1}` in order, each with its number
/// as value, exactly once: create-if-absent, retried while the store is
/// unavailable (a retry finding the key was an attempt that did apply).
async fn write_sequence(store: Arc<EtcdStore>, prefix: String, n: usize) {
    for i in 0..n {
        let key = format!("{prefix}{i:05}");
        let txn = Txn {
            compares: vec![Compare::ModRevision(key.clone(), 0)],
            success: vec![Op::put(&key, i.to_string().into_bytes())],
            failure: vec![],
        };
        until_available("sequence write", HEAL, || store.txn(txn.clone())).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_across_a_member_kill_sees_every_change_exactly_once_in_order() {
    const N: usize = 300;
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(3)).await;
    let prefix = "/watch-kill/";
    let from = store.list(prefix).await.unwrap().revision + 1;
    let mut watch = ResumingWatch::open(store.clone(), prefix, from).await;
    let watched = cluster.member_of(store.preferred_endpoint());
    let writer = tokio::spawn(write_sequence(store.clone(), prefix.to_owned(), N));

    let mut seen = Vec::with_capacity(N);
    while seen.len() < N {
        if seen.len() == N / 3 {
            blocking(|| cluster.kill_member(watched));
        }
        seen.push(watch.next().await);
    }
    writer.await.expect("writer");
    // Nothing after the sequence but what comes next.
    let sentinel = store
        .put("/watch-kill/~sentinel", b"s".to_vec(), None)
        .await
        .expect("sentinel");
    let e = watch.next().await;
    assert_eq!(e.revision(), sentinel, "no extra event after the sequence");

    let revisions: Vec<Revision> = seen.iter().map(|e| e.revision()).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions strictly increase across resumptions"
    );
    let got: Vec<(EventKind, String, Vec<u8>)> = seen
        .into_iter()
        .map(|e| (e.kind, e.kv.key, e.kv.value))
        .collect();
    let expected: Vec<(EventKind, String, Vec<u8>)> = (0..N)
        .map(|i| {
            (
                EventKind::Put,
                format!("{prefix}{i:05}"),
                i.to_string().into_bytes(),
            )
        })
        .collect();
    assert_eq!(got, expected, "every change once, in order");
    println!(
        "watch on member {watched} killed after {} events: the watch broke {} time(s) and resumed",
        N / 3,
        watch.breaks
    );
}

/// Sends `signal` (`STOP`, `CONT`) to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_member_that_stops_answering_breaks_at_its_next_unanswered_request() {
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(3)).await;
    let prefix = "/watch-stop/";
    let from = store.list(prefix).await.unwrap().revision + 1;
    let mut stream = store.watch(prefix, from).await.expect("watch");
    let watched = cluster.member_of(store.preferred_endpoint());
    let pid = cluster.pid(watched).expect("the watched member runs");
    // Frozen: its connections stay open, nothing answers (as a member cut
    // off by a partition).
    signal(pid, "STOP");
    let frozen = Instant::now();
    // A read finds it silent and is answered by another member.
    until_available("a read", HEAL, || store.get("/watch-stop/x")).await;
    // The watch breaks now, not after the HTTP/2 pings (up to 15 s).
    let item = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    let broke_after = frozen.elapsed();
    signal(pid, "CONT");
    match item {
        Ok(Some(Err(StoreError::WatchLost(why)))) => {
            assert!(why.contains("left another request unanswered"), "{why}")
        }
        other => panic!("the watch on the frozen member did not break: {other:?}"),
    }
    println!(
        "a watch on a frozen member broke {} ms after the freeze",
        broke_after.as_millis()
    );
    // Resumed elsewhere, it sees what is written next.
    let mut watch = ResumingWatch::open(store.clone(), prefix, from).await;
    let rev = store
        .put("/watch-stop/after", b"1".to_vec(), None)
        .await
        .expect("put");
    assert_eq!(watch.next().await.revision(), rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn epochs_bumped_by_cas_from_several_tasks_strictly_increase_across_a_member_kill() {
    const TASKS: usize = 4;
    const BUMPS: usize = 25;
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(3)).await;
    let key = "/epoch/app";
    let r0 = store.put(key, b"0".to_vec(), None).await.unwrap();
    let mut watch = ResumingWatch::open(store.clone(), key, r0 + 1).await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let read = || async {
                    let kv = until_available("read epoch", HEAL, || store.get(key))
                        .await
                        .expect("the epoch key exists");
                    let n: u64 = String::from_utf8(kv.value.clone())
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .expect("a number");
                    (n, kv.mod_revision)
                };
                let mut wins = Vec::new();
                let (mut n, mut rev) = read().await;
                while wins.len() < BUMPS {
                    let txn = Txn {
                        compares: vec![Compare::ModRevision(key.into(), rev)],
                        success: vec![Op::put(key, (n + 1).to_string().into_bytes())],
                        failure: vec![],
                    };
                    match store.txn(txn).await {
                        Ok(r) if r.succeeded => {
                            wins.push((r.revision, n + 1));
                            (n, rev) = (n + 1, r.revision);
                        }
                        // Lost the race, or unknown outcome: read again.
                        Ok(_) | Err(StoreError::Unavailable(_)) => (n, rev) = read().await,
                        Err(e) => panic!("CAS: {e:?}"),
                    }
                }
                wins
            })
        })
        .collect();

    // Kill the member the store talks to once a third of the bumps are in.
    let mut values = Vec::new();
    let mut killed = None;
    let mut wins: Vec<(Revision, u64)> = Vec::new();
    let mut tasks = tasks.into_iter().peekable();
    while tasks.peek().is_some() {
        if killed.is_none() && values.len() >= TASKS * BUMPS / 3 {
            let victim = cluster.member_of(store.preferred_endpoint());
            blocking(|| cluster.kill_member(victim));
            killed = Some(victim);
        }
        if values.len() < TASKS * BUMPS {
            let e = watch.next().await;
            values.push(String::from_utf8(e.kv.value).expect("utf-8"));
        } else if let Some(task) = tasks.next() {
            wins.extend(task.await.expect("task"));
        }
    }
    assert!(killed.is_some(), "a member was killed mid-way");

    // Each successful CAS has its own revision and value, and values grow
    // with revisions.
    wins.sort();
    assert_eq!(wins.len(), TASKS * BUMPS);
    assert!(
        wins.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1),
        "epochs strictly increase with revisions: {wins:?}"
    );
    let distinct: BTreeSet<u64> = wins.iter().map(|w| w.1).collect();
    assert_eq!(distinct.len(), wins.len(), "no epoch handed out twice");
    // The store's history is +1 per committed bump, with no gap, even
    // counting bumps whose caller saw Unavailable.
    let last = store.get(key).await.unwrap().expect("epoch key");
    let last: u64 = String::from_utf8(last.value).unwrap().parse().unwrap();
    while (values.len() as u64) < last {
        values.push(String::from_utf8(watch.next().await.kv.value).unwrap());
    }
    let expected: Vec<String> = (1..=last).map(|v| v.to_string()).collect();
    assert_eq!(values, expected, "watched epochs go up by one per bump");
    assert!(last >= (TASKS * BUMPS) as u64);
    println!(
        "{} CAS wins, final epoch {last} ({} bumps whose callers saw Unavailable), watch broke {} time(s)",
        wins.len(),
        last - wins.len() as u64,
        watch.breaks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_from_a_compacted_revision_fails_with_compacted() {
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(5)).await;
    let k = "/compacted/k";
    let r1 = store.put(k, b"1".to_vec(), None).await.unwrap();
    let r2 = store.put(k, b"2".to_vec(), None).await.unwrap();
    let r3 = store.put(k, b"3".to_vec(), None).await.unwrap();
    let mut etcd = etcd_client::Client::connect([cluster.endpoint(0)], None)
        .await
        .expect("connect a plain etcd client");
    etcd.compact(
        r2 as i64,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .expect("compact");

    match store.watch("/compacted/", r1).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (r1, r2))
        }
        Err(e) => panic!("watch from a compacted revision: {e:?}"),
        Ok(_) => panic!("watch from a compacted revision succeeded"),
    }
    // From the oldest kept revision on, history replays.
    let mut watch = store.watch("/compacted/", r2).await.expect("watch");
    let revisions = [
        watch.next().await.unwrap().unwrap().revision(),
        watch.next().await.unwrap().unwrap().revision(),
    ];
    assert_eq!(revisions, [r2, r3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_empty_prefix_lists_and_watches_every_key() {
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(5)).await;
    let ra = store.put("/a", b"a".to_vec(), None).await.unwrap();
    store.put("b", b"b".to_vec(), None).await.unwrap();
    store.put("\u{7f}z", b"z".to_vec(), None).await.unwrap();
    let listing = store.list("").await.expect("list everything");
    let keys: Vec<&str> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a", "b", "\u{7f}z"]);
    let mut watch = store.watch("", ra).await.expect("watch everything");
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(watch.next().await.unwrap().unwrap().kv.key);
    }
    assert_eq!(seen, ["/a", "b", "\u{7f}z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn list_pages_through_a_large_prefix_at_one_revision() {
    let cluster = blocking(Cluster::start);
    let store = cluster.store(Duration::from_secs(5)).await;
    let n = tandem_store_etcd::LIST_PAGE_KEYS * 2 + 7;
    // 64 keys per transaction: etcd's default limit is 128 ops.
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let txn = Txn {
            compares: vec![],
            success: chunk
                .iter()
                .map(|i| Op::put(format!("/big/{i:05}"), vec![b'x'; 100]))
                .collect(),
            failure: vec![],
        };
        store.txn(txn).await.expect("txn");
    }
    // A write racing the listing lands after its revision or not at all.
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                store
                    .put(&format!("/big/late-{i:02}"), b"late".to_vec(), None)
                    .await
                    .expect("late put");
            }
        })
    };
    let listing = store.list("/big/").await.expect("list");
    writer.await.unwrap();
    let late = listing
        .kvs
        .iter()
        .filter(|kv| kv.key.starts_with("/big/late-"))
        .count();
    assert_eq!(listing.kvs.len(), n + late);
    assert!(
        listing.kvs.windows(2).all(|w| w[0].key < w[1].key),
        "sorted, no duplicates"
    );
    assert!(
        listing
            .kvs
            .iter()
            .all(|kv| kv.mod_revision <= listing.revision)
    );
    // Every late write the listing missed has a revision after it.
    let after = store.list("/big/late-").await.unwrap();
    for kv in after.kvs {
        let listed = listing.kvs.iter().any(|l| l.key == kv.key);
        assert_eq!(listed, kv.mod_revision <= listing.revision, "{}", kv.key);
    }
}
