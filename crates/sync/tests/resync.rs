//! A receiver that was down catches up with a full resynchronisation.

// Tests wait on the wall clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;

use common::{Server, bytes, cfg, converge, events, wait_until};
use tandem_sync::{Receiver, ReceiverSet, Source, SyncEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_while_200_files_are_written_catches_up_by_resync() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (tx, log) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(dst.path(), None), "b".into(), tx.clone()).unwrap();
    r.set_primary(Some(("a".into(), 3)));
    set.insert(r);
    let server = Server::start(set, None).await;
    let addr = server.addr;
    let url = server.url();

    let s = src.path();
    fs::write(s.join("keep"), b"keep").unwrap();
    fs::write(s.join("change"), b"before").unwrap();
    fs::write(s.join("drop"), b"drop").unwrap();
    let source = Source::start(cfg(s, None), "a".into(), 3, tx.clone())
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), url)]);
    converge(&source, "b", s, dst.path()).await;
    let resyncs_before = source.status().receivers["b"].resyncs;

    // The receiver's agent goes down.
    server.stop().await;
    for i in 0..200 {
        let dir = s.join(format!("d{}", i % 7));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), bytes(100 + i, i as u64)).unwrap();
    }
    fs::write(s.join("change"), b"after").unwrap();
    fs::remove_file(s.join("drop")).unwrap();
    wait_until(20, "the source notices the receiver is down", || {
        let st = source.status();
        let b = &st.receivers["b"];
        b.last_error.is_some() && !b.in_sync && b.pending > 0
    })
    .await;
    let error = source.status().receivers["b"].last_error.clone().unwrap();
    assert!(error.contains("cannot reach cms/b"), "{error}");

    // It comes back (a new process: a new receiver on the same port).
    let (tx2, log2) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(dst.path(), None), "b".into(), tx2).unwrap();
    r.set_primary(Some(("a".into(), 3)));
    set.insert(r.clone());
    let server = Server::start(set, Some(addr)).await;
    let status = converge(&source, "b", s, dst.path()).await;
    let b = &status.receivers["b"];
    assert_eq!(b.pending, 0);
    assert!(b.in_sync);
    assert!(b.last_error.is_none());
    assert!(b.resyncs > resyncs_before);
    assert_eq!(fs::read(dst.path().join("change")).unwrap(), b"after");
    assert!(!dst.path().join("drop").exists());
    assert!(r.state().resynced_at_ms.is_some());

    // The resynchronisation sent the 200 new files and the changed one,
    // removed one, and left "keep" alone.
    let resynced = log
        .events()
        .into_iter()
        .rev()
        .find_map(|e| match e {
            SyncEvent::Resynced {
                sent,
                removed,
                unchanged,
                ..
            } => Some((sent, removed, unchanged)),
            _ => None,
        })
        .unwrap();
    assert_eq!(resynced, (201, 1, 1), "{:?}", log.messages());
    assert!(
        log.count(|e| matches!(
            e,
            SyncEvent::PushFailed { .. } | SyncEvent::ResyncFailed { .. }
        )) > 0
    );
    assert_eq!(
        log2.count(|e| matches!(e, SyncEvent::WriteFailed { .. })),
        0
    );

    // Live mirroring goes on afterwards.
    fs::write(s.join("later"), b"later").unwrap();
    converge(&source, "b", s, dst.path()).await;
    source.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_source_at_the_same_epoch_continues_above_what_the_receiver_holds() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (tx, _log) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(dst.path(), None), "b".into(), tx.clone()).unwrap();
    r.set_primary(Some(("a".into(), 2)));
    set.insert(r.clone());
    let server = Server::start(set, None).await;
    let s = src.path();
    let source = Source::start(cfg(s, None), "a".into(), 2, tx.clone())
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), server.url())]);
    for i in 0..5 {
        fs::write(s.join(format!("f{i}")), [i]).unwrap();
        converge(&source, "b", s, dst.path()).await;
    }
    let held = r.state().applied_seq;
    assert!(held >= 5);
    source.stop().await;

    // The agent restarts: a new source at the same epoch numbers from 0.
    let source = Source::start(cfg(s, None), "a".into(), 2, tx)
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), server.url())]);
    converge(&source, "b", s, dst.path()).await;
    assert!(source.seq() >= held);
    fs::write(s.join("f0"), b"changed after restart").unwrap();
    converge(&source, "b", s, dst.path()).await;
    assert_eq!(
        fs::read(dst.path().join("f0")).unwrap(),
        b"changed after restart"
    );
    source.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_the_backup_itself_is_undone_by_the_next_verification() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (tx, log) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(dst.path(), None), "b".into(), tx.clone()).unwrap();
    r.set_primary(Some(("a".into(), 2)));
    set.insert(r);
    let server = Server::start(set, None).await;
    let s = src.path();
    fs::write(s.join("agents"), b"from the primary").unwrap();
    let source = Source::start(cfg(s, None), "a".into(), 2, tx)
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), server.url())]);
    converge(&source, "b", s, dst.path()).await;
    // The first resynchronisation is over (said), so whatever is written
    // now can only be found by a later verification.
    wait_until(20, "the first resynchronisation is said", || {
        log.messages()
            .iter()
            .any(|m| m.starts_with("resynchronised cms/b:"))
    })
    .await;
    // A late write of a deposed primary, or a person, on the backup: the
    // mirror does not see it happen, and nothing is pushed meanwhile.
    fs::write(dst.path().join("stray"), b"never on the primary").unwrap();
    fs::write(dst.path().join("agents"), b"changed on the backup").unwrap();
    wait_until(
        tandem_sync::source::VERIFY_EVERY_MS / 1000 + 20,
        "the backup's tree is the primary's again",
        || common::tree(s) == common::tree(dst.path()),
    )
    .await;
    // Its event reaches the log a moment after the last write.
    wait_until(20, "the verification is said", || {
        log.messages()
            .iter()
            .any(|m| m == "resynchronised cms/b: 1 file sent, 1 removed, 0 unchanged")
    })
    .await;
    server.stop().await;
}
