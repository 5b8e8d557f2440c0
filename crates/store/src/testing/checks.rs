//! The individual checks of the conformance suite, each runnable on its own
//! (e.g. as one `#[tokio::test]` per check). Each panics with a message
//! naming it when the store fails it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::{Check, ConformanceConfig, EVENT_TIMEOUT};
use crate::{
    Compare, EventKind, KeyValue, LeaseId, Op, OpResult, Revision, Store, StoreError, Txn,
    WatchEvent,
};

fn put_event(kv: KeyValue) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Put,
        kv,
    }
}

fn delete_event(key: &str, revision: Revision) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_owned(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: revision,
            version: 0,
            lease: None,
        },
    }
}

fn kv(key: &str, value: &[u8], create: Revision, modified: Revision, version: u64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_vec(),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: None,
    }
}

fn put_leased(key: &str, value: &[u8], lease: LeaseId) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
        lease: Some(lease),
    }
}

/// Put, get, overwrite, delete and re-create one key; every field of
/// [`KeyValue`] is as documented (revisions, version, lease), values are
/// opaque bytes (empty and non-UTF-8 included).
pub async fn kv_put_get_delete_round_trip(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("kv_put_get_delete_round_trip", config);
    let k = c.key("k");
    c.eq(
        c.ok(store.get(&k).await, "get absent key"),
        None,
        "get of a never-written key",
    );

    let r1 = c.ok(store.put(&k, b"v1".to_vec(), None).await, "first put");
    let got = c.ok(store.get(&k).await, "get after put");
    c.eq(
        got,
        Some(kv(&k, b"v1", r1, r1, 1)),
        "key after the first put",
    );

    let r2 = c.ok(store.put(&k, b"v2".to_vec(), None).await, "second put");
    c.ensure(
        r2 > r1,
        format_args!("second put's revision {r2} not above the first's {r1}"),
    );
    let got = c.ok(store.get(&k).await, "get after overwrite");
    c.eq(
        got,
        Some(kv(&k, b"v2", r1, r2, 2)),
        "key after an overwrite",
    );

    c.eq(
        c.ok(store.delete(&k).await, "delete"),
        true,
        "delete of an existing key",
    );
    c.eq(
        c.ok(store.get(&k).await, "get after delete"),
        None,
        "key after delete",
    );
    c.eq(
        c.ok(store.delete(&k).await, "second delete"),
        false,
        "delete of an absent key",
    );

    let r3 = c.ok(store.put(&k, b"v3".to_vec(), None).await, "re-create");
    c.ensure(
        r3 > r2,
        format_args!("re-create's revision {r3} not above {r2}"),
    );
    let got = c.ok(store.get(&k).await, "get after re-create");
    c.eq(
        got,
        Some(kv(&k, b"v3", r3, r3, 1)),
        "re-created key (version restarts at 1)",
    );

    let bin = c.key("binary");
    let bytes = vec![0u8, 255, 128, 10, 0];
    let rb = c.ok(
        store.put(&bin, bytes.clone(), None).await,
        "put binary value",
    );
    c.eq(
        c.ok(store.get(&bin).await, "get binary").map(|kv| kv.value),
        Some(bytes),
        "binary value",
    );
    let empty = c.key("empty");
    let re = c.ok(store.put(&empty, Vec::new(), None).await, "put empty value");
    c.ensure(re > rb, "revisions increase");
    c.eq(
        c.ok(store.get(&empty).await, "get empty value"),
        Some(kv(&empty, b"", re, re, 1)),
        "key with an empty value exists",
    );

    let lease = c.long_lease(store).await;
    let leased = c.key("leased");
    let rl = c.ok(
        store.put(&leased, b"x".to_vec(), Some(lease.id)).await,
        "leased put",
    );
    let mut expected = kv(&leased, b"x", rl, rl, 1);
    expected.lease = Some(lease.id);
    c.eq(
        c.ok(store.get(&leased).await, "get leased key"),
        Some(expected),
        "leased key",
    );
    c.ok(store.revoke_lease(lease.id).await, "revoke");
}

/// Every write gets a revision above every revision observed before it,
/// and a key's `mod_revision` is the revision its write returned.
pub async fn revisions_strictly_increase(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("revisions_strictly_increase", config);
    let mut last = c.ok(store.list(&c.scope).await, "initial list").revision;
    for i in 0..20 {
        let k = c.key(&format!("k{}", i % 3));
        let rev = if i % 2 == 0 {
            c.ok(store.put(&k, vec![i], None).await, "put")
        } else {
            let r = c.ok(
                store
                    .txn(Txn {
                        compares: vec![],
                        success: vec![Op::put(&k, vec![i])],
                        failure: vec![],
                    })
                    .await,
                "txn put",
            );
            r.revision
        };
        c.ensure(
            rev > last,
            format_args!("write {i} got revision {rev}, not above the last observed {last}"),
        );
        let got = c.ok(store.get(&k).await, "get").map(|kv| kv.mod_revision);
        c.eq(got, Some(rev), "mod_revision of the key just written");
        let listed = c.ok(store.list(&c.scope).await, "list").revision;
        c.ensure(
            listed >= rev,
            format_args!("list revision {listed} below the write's revision {rev}"),
        );
        last = listed;
    }
}

/// `list` returns exactly the keys under the prefix (not siblings that
/// share a string prefix without it), sorted, with a revision at least as
/// new as every listed key and every write that returned before it.
pub async fn list_returns_sorted_keys_under_prefix(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
) {
    let c = Check::new("list_returns_sorted_keys_under_prefix", config);
    let prefix = c.key("list/");
    let mut last = 0;
    for k in [
        "list/c",
        "list/a",
        "list/b/x",
        "list/b",
        "list/ab",
        "lis",
        "list",
        "listing/a",
    ] {
        last = c.ok(
            store.put(&c.key(k), k.as_bytes().to_vec(), None).await,
            "put",
        );
    }
    let gone = c.key("list/deleted");
    c.ok(store.put(&gone, b"x".to_vec(), None).await, "put");
    c.ok(store.delete(&gone).await, "delete");

    let listing = c.ok(store.list(&prefix).await, "list");
    let keys: Vec<String> = listing.kvs.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<String> = ["list/a", "list/ab", "list/b", "list/b/x", "list/c"]
        .iter()
        .map(|k| c.key(k))
        .collect();
    c.eq(
        keys,
        expected,
        "listed keys (sorted, under the prefix only)",
    );
    for kv in &listing.kvs {
        c.ensure(
            listing.revision >= kv.mod_revision,
            format_args!(
                "listing revision {} below {}'s mod_revision {}",
                listing.revision, kv.key, kv.mod_revision
            ),
        );
        let got = c.ok(store.get(&kv.key).await, "get listed key");
        c.eq(got.as_ref(), Some(kv), "listed key equals get");
    }
    c.ensure(
        listing.revision >= last,
        format_args!(
            "listing revision {} below a write that returned before it ({last})",
            listing.revision
        ),
    );

    let empty = c.ok(
        store.list(&c.key("nothing-here/")).await,
        "list empty prefix",
    );
    c.ensure(empty.kvs.is_empty(), "listing of an unused prefix is empty");
    c.ensure(
        empty.revision >= listing.revision,
        "listing revisions do not go back",
    );
}

/// `Compare::ModRevision`: `0` means absent (create-if-absent), a matching
/// revision lets a CAS through, a stale one does not; all compares must hold.
pub async fn txn_compare_mod_revision(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("txn_compare_mod_revision", config);
    let k = c.key("k");
    let other = c.key("other");
    let create = |v: &[u8]| Txn {
        compares: vec![Compare::ModRevision(k.clone(), 0)],
        success: vec![Op::put(&k, v.to_vec())],
        failure: vec![Op::get(&k)],
    };

    let r = c.ok(store.txn(create(b"v1")).await, "create-if-absent");
    c.ensure(
        r.succeeded,
        "create-if-absent on an absent key must succeed",
    );
    c.eq(
        r.results.clone(),
        vec![OpResult::Put],
        "results of create-if-absent",
    );
    let r1 = r.revision;
    c.eq(
        c.ok(store.get(&k).await, "get"),
        Some(kv(&k, b"v1", r1, r1, 1)),
        "created key",
    );

    let r = c.ok(
        store.txn(create(b"v-again")).await,
        "second create-if-absent",
    );
    c.ensure(
        !r.succeeded,
        "create-if-absent on an existing key must fail",
    );
    c.eq(
        r.results,
        vec![OpResult::Get(Some(kv(&k, b"v1", r1, r1, 1)))],
        "failure branch's get",
    );

    let cas = |rev: Revision, v: &[u8]| Txn {
        compares: vec![Compare::ModRevision(k.clone(), rev)],
        success: vec![Op::put(&k, v.to_vec())],
        failure: vec![],
    };
    let r = c.ok(
        store.txn(cas(r1, b"v2")).await,
        "CAS with the current mod_revision",
    );
    c.ensure(
        r.succeeded,
        "CAS with the current mod_revision must succeed",
    );
    let r2 = r.revision;
    c.ensure(r2 > r1, "CAS bumps the revision");
    let r = c.ok(
        store.txn(cas(r1, b"v3")).await,
        "CAS with a stale mod_revision",
    );
    c.ensure(!r.succeeded, "CAS with a stale mod_revision must fail");
    c.eq(r.results, vec![], "empty failure branch gives no results");
    c.eq(
        c.ok(store.get(&k).await, "get"),
        Some(kv(&k, b"v2", r1, r2, 2)),
        "key after a failed CAS",
    );

    // All compares must hold.
    let both = |rev_k: Revision| Txn {
        compares: vec![
            Compare::ModRevision(k.clone(), rev_k),
            Compare::ModRevision(other.clone(), 0),
        ],
        success: vec![Op::put(&other, b"o".to_vec())],
        failure: vec![],
    };
    let r = c.ok(store.txn(both(r1)).await, "two compares, one false");
    c.ensure(!r.succeeded, "a txn with one false compare must fail");
    c.eq(
        c.ok(store.get(&other).await, "get"),
        None,
        "nothing written by a failed txn",
    );
    let r = c.ok(store.txn(both(r2)).await, "two compares, both true");
    c.ensure(r.succeeded, "a txn whose compares all hold must succeed");

    c.ok(store.delete(&k).await, "delete");
    let r = c.ok(
        store.txn(create(b"v4")).await,
        "create-if-absent after delete",
    );
    c.ensure(r.succeeded, "create-if-absent after a delete must succeed");
}

/// `Compare::Value` holds only when the key exists with exactly that value.
pub async fn txn_compare_value(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("txn_compare_value", config);
    let k = c.key("k");
    let marker = c.key("marker");
    let when = |v: &[u8]| Txn {
        compares: vec![Compare::Value(k.clone(), v.to_vec())],
        success: vec![Op::put(&marker, v.to_vec())],
        failure: vec![],
    };
    let r = c.ok(store.txn(when(b"")).await, "compare value of an absent key");
    c.ensure(
        !r.succeeded,
        "Compare::Value on an absent key must fail (even for an empty value)",
    );
    c.ok(store.put(&k, b"abc".to_vec(), None).await, "put");
    let r = c.ok(store.txn(when(b"abc")).await, "compare equal value");
    c.ensure(
        r.succeeded,
        "Compare::Value with the current value must hold",
    );
    let r = c.ok(store.txn(when(b"abd")).await, "compare other value");
    c.ensure(!r.succeeded, "Compare::Value with another value must fail");
    let r = c.ok(store.txn(when(b"ab")).await, "compare value prefix");
    c.ensure(
        !r.succeeded,
        "Compare::Value with a prefix of the value must fail",
    );
    c.ok(store.put(&k, Vec::new(), None).await, "put empty");
    let r = c.ok(store.txn(when(b"")).await, "compare empty value");
    c.ensure(
        r.succeeded,
        "Compare::Value with an empty current value must hold",
    );
}

/// The success branch runs when every compare holds, the failure branch
/// otherwise; results come one per op, in order, with the documented shapes.
pub async fn txn_success_and_failure_branches(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("txn_success_and_failure_branches", config);
    let (a, b, absent, flag) = (c.key("a"), c.key("b"), c.key("absent"), c.key("flag"));
    let rb = c.ok(store.put(&b, b"b".to_vec(), None).await, "put b");
    let rf = c.ok(store.put(&flag, b"on".to_vec(), None).await, "put flag");
    let txn = |flag_value: &[u8]| Txn {
        compares: vec![Compare::Value(flag.clone(), flag_value.to_vec())],
        success: vec![
            Op::put(&a, b"from-success".to_vec()),
            Op::delete(&b),
            Op::delete(&absent),
            Op::get(&flag),
        ],
        failure: vec![
            Op::get(&b),
            Op::put(&a, b"from-failure".to_vec()),
            Op::get(&absent),
        ],
    };

    let r = c.ok(
        store.txn(txn(b"off")).await,
        "txn taking the failure branch",
    );
    c.ensure(!r.succeeded, "false compare: failure branch");
    c.eq(
        r.results,
        vec![
            OpResult::Get(Some(kv(&b, b"b", rb, rb, 1))),
            OpResult::Put,
            OpResult::Get(None),
        ],
        "failure branch results",
    );
    let ra = r.revision;
    c.eq(
        c.ok(store.get(&a).await, "get a"),
        Some(kv(&a, b"from-failure", ra, ra, 1)),
        "a written by the failure branch",
    );
    c.ensure(
        c.ok(store.get(&b).await, "get b").is_some(),
        "b untouched by the failure branch",
    );

    let r = c.ok(store.txn(txn(b"on")).await, "txn taking the success branch");
    c.ensure(r.succeeded, "true compare: success branch");
    c.eq(
        r.results,
        vec![
            OpResult::Put,
            OpResult::Delete(true),
            OpResult::Delete(false),
            OpResult::Get(Some(kv(&flag, b"on", rf, rf, 1))),
        ],
        "success branch results",
    );
    let rs = r.revision;
    c.ensure(rs > ra, "the success txn got a new revision");
    c.eq(
        c.ok(store.get(&a).await, "get a"),
        Some(kv(&a, b"from-success", ra, rs, 2)),
        "a written by the success branch",
    );
    c.eq(
        c.ok(store.get(&b).await, "get b"),
        None,
        "b deleted by the success branch",
    );
}

/// All writes of one transaction are applied atomically at one revision.
pub async fn txn_ops_share_one_revision(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("txn_ops_share_one_revision", config);
    let keys: Vec<String> = (0..4).map(|i| c.key(&format!("k{i}"))).collect();
    let before = c.ok(store.put(&keys[3], b"old".to_vec(), None).await, "put k3");
    let r = c.ok(
        store
            .txn(Txn {
                compares: vec![Compare::ModRevision(keys[3].clone(), before)],
                success: vec![
                    Op::put(&keys[0], b"0".to_vec()),
                    Op::put(&keys[1], b"1".to_vec()),
                    Op::put(&keys[2], b"2".to_vec()),
                    Op::delete(&keys[3]),
                ],
                failure: vec![],
            })
            .await,
        "multi-op txn",
    );
    c.ensure(r.succeeded, "multi-op txn must succeed");
    c.ensure(r.revision > before, "the txn got a new revision");
    let listing = c.ok(store.list(&c.scope).await, "list");
    c.eq(listing.kvs.len(), 3, "keys after the txn");
    for (i, kv_) in listing.kvs.iter().enumerate() {
        c.eq(
            kv_.clone(),
            kv(
                &keys[i],
                i.to_string().as_bytes(),
                r.revision,
                r.revision,
                1,
            ),
            "every key written by the txn carries its revision",
        );
    }
}

/// A `Get` inside a transaction returns the key as the compares saw it; a
/// read-only transaction writes nothing.
pub async fn txn_get_reads_current_value(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("txn_get_reads_current_value", config);
    let (k, absent) = (c.key("k"), c.key("absent"));
    let r1 = c.ok(store.put(&k, b"1".to_vec(), None).await, "put");
    let r2 = c.ok(store.put(&k, b"2".to_vec(), None).await, "put");
    let r = c.ok(
        store
            .txn(Txn {
                compares: vec![Compare::ModRevision(k.clone(), r2)],
                success: vec![Op::get(&k), Op::get(&absent)],
                failure: vec![],
            })
            .await,
        "read-only txn",
    );
    c.ensure(r.succeeded, "compare on the current mod_revision must hold");
    c.eq(
        r.results,
        vec![
            OpResult::Get(Some(kv(&k, b"2", r1, r2, 2))),
            OpResult::Get(None),
        ],
        "gets inside a txn",
    );
    c.ensure(
        r.revision >= r2,
        "txn response revision not below an earlier write",
    );
    c.eq(
        c.ok(store.get(&k).await, "get").map(|kv| kv.mod_revision),
        Some(r2),
        "a read-only txn does not modify the key",
    );
}

/// A transaction whose compares fail and whose failure branch is empty
/// changes nothing and emits no watch event.
pub async fn txn_failed_compare_writes_nothing(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("txn_failed_compare_writes_nothing", config);
    let (k, n, d, sentinel) = (c.key("k"), c.key("new"), c.key("d"), c.key("sentinel"));
    let rd = c.ok(store.put(&d, b"d".to_vec(), None).await, "put d");
    let r1 = c.ok(store.put(&k, b"1".to_vec(), None).await, "put");
    let mut watch = c.ok(store.watch(&c.scope, r1 + 1).await, "watch");
    let r = c.ok(
        store
            .txn(Txn {
                compares: vec![Compare::ModRevision(k.clone(), 0)],
                success: vec![
                    Op::put(&k, b"2".to_vec()),
                    Op::put(&n, b"x".to_vec()),
                    Op::delete(&d),
                ],
                failure: vec![],
            })
            .await,
        "failing txn",
    );
    c.ensure(!r.succeeded, "compare must fail");
    c.eq(r.results, vec![], "no results from an empty failure branch");
    c.eq(
        c.ok(store.get(&k).await, "get k"),
        Some(kv(&k, b"1", r1, r1, 1)),
        "k untouched",
    );
    c.eq(
        c.ok(store.get(&n).await, "get new"),
        None,
        "new key not written",
    );
    c.eq(
        c.ok(store.get(&d).await, "get d"),
        Some(kv(&d, b"d", rd, rd, 1)),
        "d not deleted",
    );
    let rs = c.ok(
        store.put(&sentinel, b"s".to_vec(), None).await,
        "put sentinel",
    );
    let e = c
        .next_event(
            &mut watch,
            EVENT_TIMEOUT,
            "first event after the failed txn",
        )
        .await;
    c.eq(
        e,
        put_event(kv(&sentinel, b"s", rs, rs, 1)),
        "the failed txn emitted no event",
    );
}

/// A transaction branch that writes one key twice is rejected with
/// `InvalidArgument` (as etcd does) and writes nothing.
pub async fn txn_writing_a_key_twice_is_invalid(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
) {
    let c = Check::new("txn_writing_a_key_twice_is_invalid", config);
    let (k, other) = (c.key("k"), c.key("other"));
    for (what, ops) in [
        (
            "put twice",
            vec![
                Op::put(&other, b"o".to_vec()),
                Op::put(&k, b"1".to_vec()),
                Op::put(&k, b"2".to_vec()),
            ],
        ),
        (
            "put then delete",
            vec![
                Op::put(&other, b"o".to_vec()),
                Op::put(&k, b"1".to_vec()),
                Op::delete(&k),
            ],
        ),
    ] {
        let e = c.err(
            store
                .txn(Txn {
                    compares: vec![],
                    success: ops,
                    failure: vec![],
                })
                .await,
            what,
        );
        c.ensure(
            matches!(e, StoreError::InvalidArgument(_)),
            format_args!("{what}: expected InvalidArgument, got {e:?}"),
        );
        c.eq(
            c.ok(store.get(&other).await, "get"),
            None,
            "a rejected txn writes nothing",
        );
    }
}

/// Writing with a lease that does not exist fails with `LeaseNotFound`, in
/// a put and in a transaction (which then writes nothing).
pub async fn put_with_unknown_lease_fails(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("put_with_unknown_lease_fails", config);
    let (k, other) = (c.key("k"), c.key("other"));
    let lease = c.long_lease(store).await;
    c.ok(store.revoke_lease(lease.id).await, "revoke");
    let e = c.err(
        store.put(&k, b"v".to_vec(), Some(lease.id)).await,
        "put with a revoked lease",
    );
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "error of a put with a revoked lease",
    );
    let e = c.err(
        store
            .txn(Txn {
                compares: vec![],
                success: vec![
                    Op::put(&other, b"o".to_vec()),
                    put_leased(&k, b"v", lease.id),
                ],
                failure: vec![],
            })
            .await,
        "txn with a revoked lease",
    );
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "error of a txn with a revoked lease",
    );
    c.eq(
        c.ok(store.get(&other).await, "get"),
        None,
        "the failed txn wrote nothing",
    );
    c.eq(
        c.ok(store.get(&k).await, "get"),
        None,
        "the failed put wrote nothing",
    );
    let e = c.err(
        store.keep_alive(lease.id).await,
        "keep_alive of a revoked lease",
    );
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "keep_alive of a revoked lease",
    );
    let e = c.err(store.revoke_lease(lease.id).await, "second revoke");
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "revoke of a revoked lease",
    );
}

/// Rewriting a leased key without a lease detaches it (it survives the
/// lease), and rewriting a plain key with a lease binds it.
pub async fn put_without_lease_detaches_key(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("put_without_lease_detaches_key", config);
    let (k, j) = (c.key("k"), c.key("j"));
    let l1 = c.long_lease(store).await;
    let l2 = c.long_lease(store).await;
    c.ok(
        store.put(&k, b"leased".to_vec(), Some(l1.id)).await,
        "put k with lease 1",
    );
    c.ok(
        store.put(&k, b"plain".to_vec(), None).await,
        "put k without lease",
    );
    let got = c.ok(store.get(&k).await, "get k");
    c.eq(
        got.as_ref().map(|kv| (kv.lease, kv.version)),
        Some((None, 2)),
        "k's lease and version after a plain put",
    );
    c.ok(
        store.put(&j, b"plain".to_vec(), None).await,
        "put j without lease",
    );
    c.ok(
        store.put(&j, b"leased".to_vec(), Some(l2.id)).await,
        "put j with lease 2",
    );
    c.ok(store.revoke_lease(l1.id).await, "revoke lease 1");
    c.ok(store.revoke_lease(l2.id).await, "revoke lease 2");
    c.ensure(
        c.ok(store.get(&k).await, "get k").is_some(),
        "a key rewritten without a lease survives its old lease",
    );
    c.eq(
        c.ok(store.get(&j).await, "get j"),
        None,
        "a key rewritten with a lease is deleted with it",
    );
}

/// Keys bound to a lease that is not kept alive are deleted (all in one
/// revision, with Delete events) no earlier than the TTL, and promptly
/// after; then the lease is gone for `keep_alive`, `put` and `revoke`.
pub async fn lease_expires_without_keep_alive(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("lease_expires_without_keep_alive", config);
    let ttl = config.min_lease_ttl;
    let (a, b, plain) = (c.key("a"), c.key("b"), c.key("plain"));
    let start = Instant::now();
    let lease = c.ok(store.grant_lease(ttl).await, "grant");
    c.ensure(
        lease.ttl >= ttl,
        format_args!("granted TTL {:?} below the requested {ttl:?}", lease.ttl),
    );
    let r = c.ok(
        store
            .txn(Txn {
                compares: vec![],
                success: vec![
                    put_leased(&a, b"a", lease.id),
                    put_leased(&b, b"b", lease.id),
                    Op::put(&plain, b"p".to_vec()),
                ],
                failure: vec![],
            })
            .await,
        "put leased keys",
    );
    let mut watch = c.ok(store.watch(&c.scope, r.revision + 1).await, "watch");
    let within = lease.ttl * 3 + Duration::from_secs(5);
    let first = c
        .next_event(&mut watch, within, "delete event of a lease that expires")
        .await;
    let elapsed = start.elapsed();
    c.ensure(
        elapsed >= ttl,
        format_args!("leased key deleted after {elapsed:?}, before the TTL of {ttl:?}"),
    );
    let second = c
        .next_event(&mut watch, EVENT_TIMEOUT, "second delete event")
        .await;
    let rev = first.revision();
    c.ensure(rev > r.revision, "expiry gets a new revision");
    let mut got = vec![first, second];
    got.sort_by(|x, y| x.kv.key.cmp(&y.kv.key));
    c.eq(
        got,
        vec![delete_event(&a, rev), delete_event(&b, rev)],
        "expiry deletes both keys in one revision",
    );
    c.eq(
        c.ok(store.get(&a).await, "get a"),
        None,
        "leased key after expiry",
    );
    c.ensure(
        c.ok(store.get(&plain).await, "get plain").is_some(),
        "a key without lease survives",
    );
    let e = c.err(store.keep_alive(lease.id).await, "keep_alive after expiry");
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "keep_alive after expiry",
    );
    let e = c.err(
        store.put(&a, b"again".to_vec(), Some(lease.id)).await,
        "put with an expired lease",
    );
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "put with an expired lease",
    );
    let e = c.err(store.revoke_lease(lease.id).await, "revoke after expiry");
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "revoke after expiry",
    );
}

/// Keys bound to a lease survive as long as `keep_alive` is called in time
/// (here: for twice the TTL, renewing every quarter TTL).
pub async fn lease_survives_with_keep_alive(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("lease_survives_with_keep_alive", config);
    let ttl = config.min_lease_ttl;
    let k = c.key("k");
    let lease = c.ok(store.grant_lease(ttl).await, "grant");
    let r = c.ok(
        store.put(&k, b"v".to_vec(), Some(lease.id)).await,
        "leased put",
    );
    let mut watch = c.ok(store.watch(&c.scope, r + 1).await, "watch");
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        let left = c.ok(store.keep_alive(lease.id).await, "keep_alive in time");
        c.ensure(!left.is_zero(), "keep_alive returned a zero TTL");
        c.ensure(
            c.ok(store.get(&k).await, "get").is_some(),
            "leased key vanished while kept alive",
        );
    }
    c.ok(store.revoke_lease(lease.id).await, "revoke");
    let e = c
        .next_event(&mut watch, EVENT_TIMEOUT, "event after revoke")
        .await;
    c.eq(
        e.kind,
        EventKind::Delete,
        "the first event is the revoke's delete (none while kept alive)",
    );
}

/// Revoking a lease deletes its keys at once, in one revision, with events;
/// keys not bound to it stay.
pub async fn lease_revoke_deletes_keys_at_once(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("lease_revoke_deletes_keys_at_once", config);
    let (a, b, plain, sentinel) = (c.key("a"), c.key("b"), c.key("plain"), c.key("sentinel"));
    let lease = c.long_lease(store).await;
    let other = c.long_lease(store).await;
    let ra = c.ok(store.put(&a, b"a".to_vec(), Some(lease.id)).await, "put a");
    c.ok(store.put(&b, b"b".to_vec(), Some(lease.id)).await, "put b");
    c.ok(
        store.put(&plain, b"p".to_vec(), Some(other.id)).await,
        "put plain",
    );
    let mut watch = c.ok(store.watch(&c.scope, ra).await, "watch");
    c.next_events(&mut watch, 3, "puts").await;
    c.ok(store.revoke_lease(lease.id).await, "revoke");
    c.eq(
        c.ok(store.get(&a).await, "get a"),
        None,
        "a right after revoke",
    );
    c.eq(
        c.ok(store.get(&b).await, "get b"),
        None,
        "b right after revoke",
    );
    c.ensure(
        c.ok(store.get(&plain).await, "get").is_some(),
        "a key of another lease stays",
    );
    let mut got = c.next_events(&mut watch, 2, "revoke's deletes").await;
    let rev = got[0].revision();
    got.sort_by(|x, y| x.kv.key.cmp(&y.kv.key));
    c.eq(
        got,
        vec![delete_event(&a, rev), delete_event(&b, rev)],
        "revoke deletes both keys in one revision",
    );
    let rs = c.ok(store.put(&sentinel, b"s".to_vec(), None).await, "sentinel");
    let e = c.next_event(&mut watch, EVENT_TIMEOUT, "sentinel").await;
    c.eq(e.revision(), rs, "no other event from the revoke");
    let e = c.err(store.keep_alive(lease.id).await, "keep_alive after revoke");
    c.eq(
        e,
        StoreError::LeaseNotFound(lease.id),
        "keep_alive after revoke",
    );
    c.ok(store.revoke_lease(other.id).await, "revoke other");
}

/// A watch from revision `r` first replays every change under its prefix
/// with revision `>= r` made before the watch call, then delivers live
/// changes, in order, each once.
pub async fn watch_replays_history_then_live(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("watch_replays_history_then_live", config);
    let keys: Vec<String> = (0..6).map(|i| c.key(&format!("k{i}"))).collect();
    let mut revs = Vec::new();
    for k in &keys[..5] {
        revs.push(c.ok(store.put(k, k.as_bytes().to_vec(), None).await, "put"));
    }
    let rd = c
        .ok(
            store
                .txn(Txn {
                    compares: vec![],
                    success: vec![Op::delete(&keys[1])],
                    failure: vec![],
                })
                .await,
            "delete k1",
        )
        .revision;
    let mut watch = c.ok(
        store.watch(&c.scope, revs[2]).await,
        "watch from the third put",
    );
    let r5 = c.ok(
        store.put(&keys[5], b"live".to_vec(), None).await,
        "live put",
    );
    let got = c.next_events(&mut watch, 4, "replay and live").await;
    let expected = vec![
        put_event(kv(&keys[2], keys[2].as_bytes(), revs[2], revs[2], 1)),
        put_event(kv(&keys[3], keys[3].as_bytes(), revs[3], revs[3], 1)),
        put_event(kv(&keys[4], keys[4].as_bytes(), revs[4], revs[4], 1)),
        delete_event(&keys[1], rd),
    ];
    c.eq(
        got,
        expected,
        "replayed events (from the start revision on, in order)",
    );
    let live = c.next_event(&mut watch, EVENT_TIMEOUT, "live event").await;
    c.eq(
        live,
        put_event(kv(&keys[5], b"live", r5, r5, 1)),
        "live event after the replay",
    );
}

/// Watching from a listing's revision + 1 sees every later change and none
/// that the listing already reflects.
pub async fn watch_from_listing_revision_misses_nothing(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
) {
    let c = Check::new("watch_from_listing_revision_misses_nothing", config);
    c.ok(store.put(&c.key("a"), b"a".to_vec(), None).await, "put a");
    c.ok(store.put(&c.key("b"), b"b".to_vec(), None).await, "put b");
    let listing = c.ok(store.list(&c.scope).await, "list");
    c.eq(listing.kvs.len(), 2, "listed keys");
    let rc = c.ok(
        store.put(&c.key("c"), b"c".to_vec(), None).await,
        "put c after the listing",
    );
    let mut watch = c.ok(store.watch(&c.scope, listing.revision + 1).await, "watch");
    let e = c
        .next_event(&mut watch, EVENT_TIMEOUT, "first event after the listing")
        .await;
    c.eq(
        e,
        put_event(kv(&c.key("c"), b"c", rc, rc, 1)),
        "first event after the listing",
    );
}

/// A watch delivers only keys that start with its prefix.
pub async fn watch_filters_by_prefix(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("watch_filters_by_prefix", config);
    let mut watch = c.ok(store.watch(&c.key("in/"), 0).await, "watch");
    for k in ["in/a", "inx", "in", "out/b", "in/c"] {
        c.ok(store.put(&c.key(k), b"v".to_vec(), None).await, "put");
    }
    c.ok(store.delete(&c.key("out/b")).await, "delete outside");
    c.ok(store.delete(&c.key("in/a")).await, "delete inside");
    c.ok(
        store.put(&c.key("in/zz"), b"v".to_vec(), None).await,
        "sentinel",
    );
    let got: Vec<(EventKind, String)> = c
        .next_events(&mut watch, 4, "events under the prefix")
        .await
        .into_iter()
        .map(|e| (e.kind, e.kv.key))
        .collect();
    let expected = vec![
        (EventKind::Put, c.key("in/a")),
        (EventKind::Put, c.key("in/c")),
        (EventKind::Delete, c.key("in/a")),
        (EventKind::Put, c.key("in/zz")),
    ];
    c.eq(got, expected, "only keys under the prefix, in order");
}

/// The events of one transaction share its revision and come in op order.
pub async fn watch_txn_events_in_op_order(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("watch_txn_events_in_op_order", config);
    let (a, b, cc, d) = (c.key("a"), c.key("b"), c.key("c"), c.key("d"));
    let lease = c.long_lease(store).await;
    let rd = c.ok(store.put(&d, b"d".to_vec(), None).await, "put d");
    let mut watch = c.ok(store.watch(&c.scope, rd + 1).await, "watch");
    let r = c.ok(
        store
            .txn(Txn {
                compares: vec![Compare::ModRevision(d.clone(), rd)],
                success: vec![
                    Op::put(&b, b"b".to_vec()),
                    Op::put(&a, b"a".to_vec()),
                    Op::get(&d),
                    Op::delete(&d),
                    put_leased(&cc, b"c", lease.id),
                ],
                failure: vec![],
            })
            .await,
        "txn",
    );
    c.ensure(r.succeeded, "txn must succeed");
    let rev = r.revision;
    let mut leased = kv(&cc, b"c", rev, rev, 1);
    leased.lease = Some(lease.id);
    let expected = vec![
        put_event(kv(&b, b"b", rev, rev, 1)),
        put_event(kv(&a, b"a", rev, rev, 1)),
        delete_event(&d, rev),
        put_event(leased),
    ];
    let got = c.next_events(&mut watch, 4, "txn events").await;
    c.eq(got, expected, "txn events in op order, one revision");
    c.ok(store.revoke_lease(lease.id).await, "revoke");
}

/// A delete event carries the key, an empty value, the deleting revision as
/// `mod_revision`, and zero `create_revision` and `version`.
pub async fn watch_delete_event_shape(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("watch_delete_event_shape", config);
    let k = c.key("k");
    let r1 = c.ok(store.put(&k, b"value".to_vec(), None).await, "put");
    c.ok(store.put(&k, b"value2".to_vec(), None).await, "put again");
    let mut watch = c.ok(store.watch(&c.scope, r1 + 1).await, "watch");
    let rd = c
        .ok(
            store
                .txn(Txn {
                    compares: vec![],
                    success: vec![Op::delete(&k)],
                    failure: vec![],
                })
                .await,
            "delete",
        )
        .revision;
    c.ensure(rd > r1, "delete gets a new revision");
    let e = c.next_event(&mut watch, EVENT_TIMEOUT, "second put").await;
    c.eq(e.kind, EventKind::Put, "kind of the second put's event");
    let e = c.next_event(&mut watch, EVENT_TIMEOUT, "delete").await;
    c.eq(e, delete_event(&k, rd), "delete event");
}

/// A watch from revision 0 sees only changes made after the call returned.
pub async fn watch_from_zero_sees_only_new_changes(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
) {
    let c = Check::new("watch_from_zero_sees_only_new_changes", config);
    let k = c.key("k");
    c.ok(
        store.put(&k, b"old".to_vec(), None).await,
        "put before the watch",
    );
    let mut watch = c.ok(store.watch(&c.scope, 0).await, "watch from 0");
    let r = c.ok(
        store.put(&k, b"new".to_vec(), None).await,
        "put after the watch",
    );
    let e = c.next_event(&mut watch, EVENT_TIMEOUT, "first event").await;
    c.eq(e.kind, EventKind::Put, "kind");
    c.eq(
        e.kv.value,
        b"new".to_vec(),
        "the first event is the change after the watch call",
    );
    c.eq(e.kv.mod_revision, r, "revision of the first event");
}

/// Tasks incrementing one counter by CAS (compare `mod_revision`, retry on
/// failure) lose no increment: the final count is exact, every successful
/// CAS has its own revision, and a watch sees the values in order.
pub async fn concurrent_cas_increments_are_linearizable(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
) {
    const TASKS: usize = 8;
    const INCREMENTS: usize = 50;
    const MAX_ATTEMPTS: usize = 20_000;
    let c = Check::new("concurrent_cas_increments_are_linearizable", config);
    let key = c.key("counter");
    let r0 = c.ok(store.put(&key, b"0".to_vec(), None).await, "create counter");
    let mut watch = c.ok(store.watch(&key, r0 + 1).await, "watch counter");
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let name = "concurrent_cas_increments_are_linearizable";
            let fail = |msg: String| -> ! {
                panic!("store conformance check `{name}` failed: task {t}: {msg}")
            };
            let mut seen = match store.get(&key).await {
                Ok(Some(kv)) => kv,
                other => fail(format!("get counter: {other:?}")),
            };
            let mut wins: Vec<(Revision, u64)> = Vec::new();
            let mut attempts = 0;
            while wins.len() < INCREMENTS {
                attempts += 1;
                if attempts > MAX_ATTEMPTS {
                    fail(format!(
                        "{attempts} CAS attempts for {INCREMENTS} increments"
                    ));
                }
                let n: u64 = match std::str::from_utf8(&seen.value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                {
                    Some(n) => n,
                    None => fail(format!("counter holds {:?}", seen.value)),
                };
                let next = (n + 1).to_string().into_bytes();
                let r = match store
                    .txn(Txn {
                        compares: vec![Compare::ModRevision(key.clone(), seen.mod_revision)],
                        success: vec![Op::put(&key, next.clone())],
                        failure: vec![Op::get(&key)],
                    })
                    .await
                {
                    Ok(r) => r,
                    Err(e) => fail(format!("txn: {e:?}")),
                };
                if r.succeeded {
                    wins.push((r.revision, n + 1));
                    seen.value = next;
                    seen.mod_revision = r.revision;
                } else {
                    match r.results.as_slice() {
                        [OpResult::Get(Some(kv))] => seen = kv.clone(),
                        other => fail(format!("failure branch results {other:?}")),
                    }
                }
            }
            wins
        }));
    }
    let mut wins = Vec::new();
    for task in tasks {
        match task.await {
            Ok(w) => wins.extend(w),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => c.fail(format_args!("task failed: {e}")),
        }
    }
    let total = (TASKS * INCREMENTS) as u64;
    let last = c.ok(store.get(&key).await, "get counter");
    c.eq(
        last.as_ref().map(|kv| (kv.value.clone(), kv.version)),
        Some((total.to_string().into_bytes(), total + 1)),
        "final counter value and version",
    );
    wins.sort();
    let values: Vec<u64> = wins.iter().map(|&(_, v)| v).collect();
    c.eq(
        values,
        (1..=total).collect::<Vec<_>>(),
        "successful CAS values in revision order",
    );
    c.ensure(
        wins.windows(2).all(|w| w[0].0 < w[1].0),
        "every successful CAS has its own revision",
    );
    for (i, (rev, value)) in wins.iter().enumerate() {
        let e = c
            .next_event(&mut watch, EVENT_TIMEOUT, format_args!("watch event {i}"))
            .await;
        c.eq(
            (e.revision(), e.kv.value),
            (*rev, value.to_string().into_bytes()),
            "watched increments in order",
        );
    }
}

/// Empty keys and zero TTLs are rejected with `InvalidArgument`.
pub async fn invalid_arguments_are_rejected(store: &Arc<dyn Store>, config: &ConformanceConfig) {
    let c = Check::new("invalid_arguments_are_rejected", config);
    let k = c.key("k");
    let is_invalid = |what: &str, e: StoreError| {
        c.ensure(
            matches!(e, StoreError::InvalidArgument(_)),
            format_args!("{what}: expected InvalidArgument, got {e:?}"),
        )
    };
    is_invalid(
        "get of an empty key",
        c.err(store.get("").await, "get \"\""),
    );
    is_invalid(
        "put of an empty key",
        c.err(store.put("", b"v".to_vec(), None).await, "put \"\""),
    );
    is_invalid(
        "delete of an empty key",
        c.err(store.delete("").await, "delete \"\""),
    );
    let txn = |compares: Vec<Compare>, success: Vec<Op>| Txn {
        compares,
        success,
        failure: vec![],
    };
    is_invalid(
        "txn putting an empty key",
        c.err(
            store
                .txn(txn(
                    vec![],
                    vec![Op::put(&k, b"v".to_vec()), Op::put("", b"v".to_vec())],
                ))
                .await,
            "txn",
        ),
    );
    is_invalid(
        "txn comparing an empty key",
        c.err(
            store
                .txn(txn(
                    vec![Compare::ModRevision(String::new(), 0)],
                    vec![Op::put(&k, b"v".to_vec())],
                ))
                .await,
            "txn",
        ),
    );
    is_invalid(
        "txn getting an empty key",
        c.err(store.txn(txn(vec![], vec![Op::get("")])).await, "txn"),
    );
    c.eq(
        c.ok(store.get(&k).await, "get"),
        None,
        "rejected txns wrote nothing",
    );
    is_invalid(
        "lease with zero TTL",
        c.err(store.grant_lease(Duration::ZERO).await, "grant_lease(0)"),
    );
}

/// A watcher whose consumer never reads is dropped once its bounded buffer
/// fills: its stream delivers what was buffered (in order, whole
/// revisions), then one `WatchLost`, then ends; the store does not buffer
/// without bound. A new watch from the revision after the last one
/// delivered resumes exactly there. Writes `max_events` events (rounded up
/// to whole transactions of 64 leased puts, cheap on a persisting backend):
/// choose it above the backend's per-watcher buffer and below its history.
/// Fails if the watch never breaks.
///
/// Not part of [`super::conformance`]: only backends that bound each
/// watcher's buffer this way can pass it.
pub async fn watch_slow_consumer_is_dropped(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
    max_events: usize,
) {
    const KEYS_PER_TXN: usize = 64;
    let c = Check::new("watch_slow_consumer_is_dropped", config);
    let lease = c.long_lease(store).await;
    let mut watch = c.ok(store.watch(&c.scope, 0).await, "watch");
    let keys: Vec<String> = (0..KEYS_PER_TXN)
        .map(|i| c.key(&format!("k{i:03}")))
        .collect();
    let mut written = 0;
    let mut revisions = Vec::new();
    while written < max_events {
        let r = c.ok(
            store
                .txn(Txn {
                    compares: vec![],
                    success: keys.iter().map(|k| put_leased(k, b"x", lease.id)).collect(),
                    failure: vec![],
                })
                .await,
            "txn",
        );
        revisions.push(r.revision);
        written += KEYS_PER_TXN;
    }
    let mut received = 0;
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await {
            Ok(Some(Ok(e))) => {
                // Whole revisions in order, each in op (key) order.
                let expected = (
                    revisions
                        .get(received / KEYS_PER_TXN)
                        .copied()
                        .unwrap_or_default(),
                    &keys[received % KEYS_PER_TXN],
                );
                c.eq(
                    (e.revision(), &e.kv.key),
                    expected,
                    format_args!("buffered event {received}"),
                );
                received += 1;
            }
            Ok(Some(Err(e))) => {
                c.ensure(
                    matches!(e, StoreError::WatchLost(_)),
                    format_args!("expected WatchLost, got {e:?}"),
                );
                break;
            }
            Ok(None) => c.fail(format_args!(
                "stream ended without an error after {received} of {written} events"
            )),
            Err(_) => c.fail(format_args!(
                "the watch never broke: {received} of {written} events were buffered \
                 for a consumer that did not read"
            )),
        }
    }
    c.ensure(
        received < written,
        "the watch broke before delivering everything",
    );
    c.eq(
        received % KEYS_PER_TXN,
        0,
        "a broken watch delivers whole revisions only",
    );
    let after = tokio::time::timeout(EVENT_TIMEOUT, watch.next()).await;
    c.ensure(
        matches!(after, Ok(None)),
        "the stream ends after its WatchLost error",
    );
    let resume = revisions[received / KEYS_PER_TXN];
    let mut resumed = c.ok(
        store.watch(&c.scope, resume).await,
        "resume from the last seen revision + 1",
    );
    let e = c
        .next_event(&mut resumed, EVENT_TIMEOUT, "first resumed event")
        .await;
    c.eq(
        (e.revision(), e.kv.key),
        (resume, keys[0].clone()),
        "resumed watch continues where the lost one stopped",
    );
    c.ok(store.revoke_lease(lease.id).await, "revoke");
}

/// The retry delay of the follow checks: short, to keep them fast.
const FOLLOW_RETRY: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(10));

/// Writes one batch of changes under `c`'s scope: single puts, two
/// transactions of several ops, deletes. Returns how many watch events it
/// makes.
async fn write_follow_batch(c: &Check, store: &Arc<dyn Store>, tag: &str) -> usize {
    let key = |k: &str| c.key(&format!("{tag}/{k}"));
    c.ok(store.put(&key("k"), b"1".to_vec(), None).await, "put k");
    let txn = |success| Txn {
        compares: vec![],
        success,
        failure: vec![],
    };
    c.ok(
        store
            .txn(txn(vec![
                Op::put(key("a"), b"a".to_vec()),
                Op::put(key("b"), b"b".to_vec()),
                Op::delete(key("k")),
            ]))
            .await,
        "txn of three ops",
    );
    c.ok(store.put(&key("a"), b"a2".to_vec(), None).await, "put a");
    c.ok(
        store
            .txn(txn(vec![
                Op::delete(key("b")),
                Op::put(key("c"), b"c".to_vec()),
            ]))
            .await,
        "txn of two ops",
    );
    c.ok(store.delete(&key("a")).await, "delete a");
    8
}

/// The next `n` changes of `follow`, which must resume by itself (no
/// snapshot) after any number of interruptions.
async fn follow_changes(
    c: &Check,
    follow: &mut crate::watch::Follow,
    n: usize,
    what: &str,
) -> (Vec<WatchEvent>, usize) {
    use crate::watch::FollowItem;
    const MAX_INTERRUPTIONS: usize = 1000;
    let mut changes = Vec::with_capacity(n);
    let mut interruptions = 0;
    while changes.len() < n {
        match tokio::time::timeout(EVENT_TIMEOUT, follow.next()).await {
            Ok(FollowItem::Change(e)) => changes.push(e),
            Ok(FollowItem::Interrupted(_)) => {
                interruptions += 1;
                c.ensure(
                    interruptions < MAX_INTERRUPTIONS,
                    format_args!("{what}: more than {MAX_INTERRUPTIONS} interruptions"),
                );
            }
            Ok(FollowItem::Snapshot(l)) => c.fail(format_args!(
                "{what}: a snapshot (revision {}) instead of resuming after change {}",
                l.revision,
                changes.len()
            )),
            Err(_) => c.fail(format_args!(
                "{what}: no change within {EVENT_TIMEOUT:?} after {} of {n}",
                changes.len()
            )),
        }
    }
    (changes, interruptions)
}

/// [`crate::watch::follow`] resuming after breaks: over watches broken on
/// purpose ([`super::WatchBreaker`]) after 2, 0, 1 and 3 events in turn (so
/// between the events of one transaction, and before any event), it
/// delivers exactly the changes one unbroken watch delivers, each once, in
/// order, from history and live alike.
pub async fn follow_resumes_across_broken_watches(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
) {
    use crate::watch::{AfterBreak, Start, follow};
    let c = Check::new("follow_resumes_across_broken_watches", config);
    let start = c.ok(
        store.put(&c.key("before"), b"x".to_vec(), None).await,
        "put before the start",
    ) + 1;
    let mut plain = c.ok(store.watch(&c.scope, start).await, "unbroken watch");
    let breaker = super::WatchBreaker::new(store.clone(), vec![2, 0, 1, 3]);
    let mut follow = follow(
        breaker.clone(),
        c.scope.clone(),
        Start::At(start),
        AfterBreak::Resume,
    )
    .retry_delay(FOLLOW_RETRY.0, FOLLOW_RETRY.1);
    let mut interruptions = 0;
    for (batch, what) in [("1", "history"), ("2", "live")] {
        let n = write_follow_batch(&c, store, batch).await;
        let expected = c.next_events(&mut plain, n, what).await;
        let (got, broken) = follow_changes(&c, &mut follow, n, what).await;
        c.eq(got, expected, format_args!("followed changes ({what})"));
        interruptions += broken;
    }
    c.ensure(
        interruptions >= 4 && breaker.watches() >= 5,
        format_args!(
            "the watches broke and were resumed ({interruptions} interruptions, {} watches)",
            breaker.watches()
        ),
    );
}

/// [`crate::watch::follow`] following state: it starts with a snapshot of
/// the prefix, and after each break (every watch broken after one event)
/// hands over a new snapshot before any further change. Snapshots and
/// changes come in revision order, and applied in turn they give the
/// prefix's current content.
pub async fn follow_relists_after_a_broken_watch(
    store: &Arc<dyn Store>,
    config: &ConformanceConfig,
) {
    use std::collections::BTreeMap;

    use crate::watch::{AfterBreak, FollowItem, Start, follow};
    let c = Check::new("follow_relists_after_a_broken_watch", config);
    c.ok(store.put(&c.key("a"), b"a".to_vec(), None).await, "put a");
    c.ok(store.put(&c.key("b"), b"b".to_vec(), None).await, "put b");
    let breaker = super::WatchBreaker::new(store.clone(), vec![1]);
    let mut follow = follow(breaker, c.scope.clone(), Start::Listing, AfterBreak::Relist)
        .retry_delay(FOLLOW_RETRY.0, FOLLOW_RETRY.1);
    let mut next = async || match tokio::time::timeout(EVENT_TIMEOUT, follow.next()).await {
        Ok(item) => item,
        Err(_) => c.fail(format_args!("nothing to follow within {EVENT_TIMEOUT:?}")),
    };
    let view = |kvs: &[KeyValue]| -> BTreeMap<String, Vec<u8>> {
        kvs.iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect()
    };
    let mut state = match next().await {
        FollowItem::Snapshot(l) => {
            c.eq(
                l.kvs.clone(),
                c.ok(store.list(&c.scope).await, "list").kvs,
                "the first snapshot",
            );
            l
        }
        other => c.fail(format_args!(
            "the first item must be a snapshot, got {other:?}"
        )),
    };
    c.ok(store.put(&c.key("c"), b"c".to_vec(), None).await, "put c");
    c.ok(
        store
            .txn(Txn {
                compares: vec![],
                success: vec![Op::put(c.key("d"), b"d".to_vec()), Op::delete(c.key("a"))],
                failure: vec![],
            })
            .await,
        "txn",
    );
    c.ok(store.put(&c.key("e"), b"e".to_vec(), None).await, "put e");
    let expected = view(&c.ok(store.list(&c.scope).await, "list at the end").kvs);
    let mut current = view(&state.kvs);
    let mut last_revision = state.revision;
    let (mut snapshots, mut interrupted) = (1, false);
    for _ in 0..1000 {
        if current == expected && snapshots > 1 {
            return;
        }
        match next().await {
            FollowItem::Snapshot(l) => {
                c.ensure(
                    l.revision >= last_revision,
                    format_args!("snapshot at {} after revision {last_revision}", l.revision),
                );
                last_revision = l.revision;
                current = view(&l.kvs);
                state = l;
                snapshots += 1;
                interrupted = false;
            }
            FollowItem::Change(e) => {
                c.ensure(
                    !interrupted,
                    "after a break, a snapshot comes before any change",
                );
                c.ensure(
                    e.revision() > state.revision && e.revision() >= last_revision,
                    format_args!("change at {} after revision {last_revision}", e.revision()),
                );
                last_revision = e.revision();
                match e.kind {
                    EventKind::Put => current.insert(e.kv.key, e.kv.value),
                    EventKind::Delete => current.remove(&e.kv.key),
                };
            }
            FollowItem::Interrupted(_) => interrupted = true,
        }
    }
    c.fail(format_args!(
        "followed state never reached the store's: {current:?} (expected {expected:?}, {snapshots} snapshot(s))"
    ));
}
