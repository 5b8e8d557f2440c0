//! Live mirroring: edits, nested directories, removes, renames, a large
//! file, and lag measurement.

// Tests wait on the wall clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;

use common::{Server, bytes, cfg, converge, events, tree};
use tandem_sync::{Receiver, ReceiverSet, Source, SyncEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_nested_dirs_removes_and_renames_are_mirrored_byte_for_byte() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (tx, log) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(dst.path(), None), "b".into(), tx.clone()).unwrap();
    r.set_primary(Some(("a".into(), 7)));
    set.insert(r.clone());
    let server = Server::start(set, None).await;

    // Present before the source starts: the first resynchronisation sends
    // it, and removes what the receiver has and the source does not.
    fs::write(src.path().join("agents"), b"v1").unwrap();
    fs::write(dst.path().join("stale"), b"old").unwrap();
    let source = Source::start(cfg(src.path(), None), "a".into(), 7, tx)
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), server.url())]);
    converge(&source, "b", src.path(), dst.path()).await;
    assert!(!dst.path().join("stale").exists());
    let resynced = log
        .messages()
        .into_iter()
        .find(|m| m.starts_with("resynchronised cms/b"));
    assert_eq!(
        resynced.as_deref(),
        Some("resynchronised cms/b: 1 file sent, 1 removed, 0 unchanged")
    );

    let s = src.path();
    // Small edits.
    fs::write(s.join("agents"), b"v2").unwrap();
    fs::write(s.join("skills"), b"sales\nsupport\n").unwrap();
    converge(&source, "b", s, dst.path()).await;
    // Nested directories, created in one go.
    fs::create_dir_all(s.join("vdn/east/tier1")).unwrap();
    fs::write(s.join("vdn/east/tier1/routing"), b"route 1").unwrap();
    fs::write(s.join("vdn/east/map"), b"map").unwrap();
    fs::create_dir_all(s.join("empty/dir")).unwrap();
    converge(&source, "b", s, dst.path()).await;
    // Removes.
    fs::remove_file(s.join("skills")).unwrap();
    fs::remove_dir_all(s.join("empty")).unwrap();
    converge(&source, "b", s, dst.path()).await;
    // Renames: a file, then a whole directory.
    fs::rename(s.join("agents"), s.join("agents.old")).unwrap();
    fs::rename(s.join("vdn/east"), s.join("vdn/west")).unwrap();
    converge(&source, "b", s, dst.path()).await;
    // A file replaced by a directory and the reverse.
    fs::remove_file(s.join("agents.old")).unwrap();
    fs::create_dir(s.join("agents.old")).unwrap();
    fs::write(s.join("agents.old/inner"), b"x").unwrap();
    fs::remove_dir_all(s.join("vdn/west/tier1")).unwrap();
    fs::write(s.join("vdn/west/tier1"), b"now a file").unwrap();
    converge(&source, "b", s, dst.path()).await;
    // Permission bits follow.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(s.join("vdn/west/map"), fs::Permissions::from_mode(0o600)).unwrap();
    converge(&source, "b", s, dst.path()).await;
    common::wait_until(10, "the mode is mirrored", || {
        fs::metadata(dst.path().join("vdn/west/map"))
            .map(|m| m.permissions().mode() & 0o777 == 0o600)
            .unwrap_or(false)
    })
    .await;

    // The receiver's state follows the source's sequence numbers.
    source.wait_acked("b", source.seq()).await.unwrap();
    let status = source.status();
    let state = r.state();
    assert_eq!(state.applied_source.as_deref(), Some("a"));
    assert_eq!(state.applied_epoch, 7);
    assert_eq!(state.highest_epoch, 7);
    assert_eq!(state.applied_seq, status.receivers["b"].acked_seq);
    assert!(state.resynced_at_ms.is_some());
    assert!(state.last_applied_ms.is_some());
    assert_eq!(status.receivers["b"].acked_seq, status.seq);
    assert!(status.receivers["b"].last_error.is_none());

    // Lag is measured for live pushes: positive samples, p50 <= p99.
    let rs = &status.receivers["b"];
    assert!(!rs.lag_samples_ms.is_empty());
    assert!(
        rs.lag_samples_ms.iter().all(|l| *l > 0.0),
        "{:?}",
        rs.lag_samples_ms
    );
    let (p50, p99) = (rs.lag_p50_ms.unwrap(), rs.lag_p99_ms.unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
    assert!(rs.last_lag_ms.is_some());

    // Nothing went wrong on the way.
    let bad = log.count(|e| {
        matches!(
            e,
            SyncEvent::PushFailed { .. }
                | SyncEvent::ResyncFailed { .. }
                | SyncEvent::WriteFailed { .. }
                | SyncEvent::BadPush { .. }
                | SyncEvent::Refused { .. }
        )
    });
    assert_eq!(bad, 0, "{:?}", log.messages());
    source.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_mib_file_mirrors_intact() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let (tx, _log) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(dst.path(), None), "b".into(), tx.clone()).unwrap();
    r.set_primary(Some(("a".into(), 1)));
    set.insert(r);
    let server = Server::start(set, None).await;
    let source = Source::start(cfg(src.path(), None), "a".into(), 1, tx)
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), server.url())]);
    converge(&source, "b", src.path(), dst.path()).await;

    let big = bytes(10 * 1024 * 1024, 42);
    fs::write(src.path().join("big.bin"), &big).unwrap();
    converge(&source, "b", src.path(), dst.path()).await;
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), big);
    // And again, changed in place.
    let big2 = bytes(10 * 1024 * 1024 + 17, 43);
    fs::write(src.path().join("big.bin"), &big2).unwrap();
    converge(&source, "b", src.path(), dst.path()).await;
    assert_eq!(fs::read(dst.path().join("big.bin")).unwrap(), big2);
    source.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_are_left_out_and_vanishing_files_are_no_error() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"do not copy").unwrap();
    let (tx, log) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(dst.path(), None), "b".into(), tx.clone()).unwrap();
    r.set_primary(Some(("a".into(), 1)));
    set.insert(r);
    let server = Server::start(set, None).await;
    let source = Source::start(cfg(src.path(), None), "a".into(), 1, tx)
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), server.url())]);
    converge(&source, "b", src.path(), dst.path()).await;

    std::os::unix::fs::symlink(outside.path(), src.path().join("dirlink")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), src.path().join("filelink")).unwrap();
    fs::write(src.path().join("real"), b"real").unwrap();
    common::wait_until(20, "the real file is mirrored", || {
        dst.path().join("real").exists()
    })
    .await;
    common::wait_until(20, "both links are reported", || {
        log.count(|e| matches!(e, SyncEvent::Skipped { path, .. } if path == "dirlink" || path == "filelink")) >= 2
    })
    .await;
    assert!(!dst.path().join("dirlink").exists());
    assert!(!dst.path().join("filelink").exists());
    let msg = log
        .messages()
        .into_iter()
        .find(|m| m.contains("filelink"))
        .unwrap();
    assert_eq!(
        msg,
        "left filelink of cms/a out of the admin data mirror: symbolic links are not followed"
    );

    // Files that appear and vanish at once: no error, nothing left over.
    for i in 0..100 {
        let p = src.path().join(format!("flash{i}"));
        fs::write(&p, bytes(4096, i)).unwrap();
        fs::remove_file(&p).unwrap();
    }
    fs::write(src.path().join("after"), b"after").unwrap();
    common::wait_until(20, "the last file is mirrored", || {
        dst.path().join("after").exists()
    })
    .await;
    common::wait_until(20, "the flashes are gone", || {
        (0..100).all(|i| !dst.path().join(format!("flash{i}")).exists())
    })
    .await;
    let mut want = tree(src.path());
    want.remove("dirlink");
    want.remove("filelink");
    assert_eq!(want, tree(dst.path()));
    let bad = log.count(|e| {
        matches!(
            e,
            SyncEvent::PushFailed { .. }
                | SyncEvent::ResyncFailed { .. }
                | SyncEvent::WriteFailed { .. }
        )
    });
    assert_eq!(bad, 0, "{:?}", log.messages());
    source.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_admin_directory_that_is_a_file_is_refused_and_a_missing_one_created() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("x");
    fs::write(&file, b"").unwrap();
    let (tx, _log) = events();
    let err = Receiver::new(cfg(&file, None), "b".into(), tx.clone())
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!("admin directory {} is a file", file.display())
    );
    let err = Source::start(cfg(&file, None), "a".into(), 1, tx.clone())
        .await
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!("admin directory {} is a file", file.display())
    );
    let missing = d.path().join("new/admin");
    Receiver::new(cfg(&missing, None), "b".into(), tx).unwrap();
    assert!(missing.is_dir());
}
