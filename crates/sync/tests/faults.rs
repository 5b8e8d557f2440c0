//! A write error on the backup (a full disk): the old file stays, the
//! source records the error and catches up once the fault is gone.

// Tests wait on the wall clock.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Server, bytes, cfg, converge, events, wait_until};
use tandem_sync::{Receiver, ReceiverSet, Source, SyncEvent};

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot resize the tmpfs at {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_backup_keeps_the_old_file_and_the_source_retries() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("admin");
    fs::create_dir(&mnt).unwrap();
    // Mounting needs root (CAP_SYS_ADMIN), as tandem's tests do.
    let tmpfs =
        Tmpfs::mount(&mnt, "1m").expect("cannot mount a 1 MiB tmpfs: run the tests as root");
    let src = tempfile::tempdir().unwrap();
    let (tx, log) = events();
    let set = ReceiverSet::new();
    let r = Receiver::new(cfg(&mnt, None), "b".into(), tx.clone()).unwrap();
    r.set_primary(Some(("a".into(), 1)));
    set.insert(r);
    let server = Server::start(set, None).await;
    let s = src.path();
    fs::write(s.join("agents"), b"version 1").unwrap();
    let source = Source::start(cfg(s, None), "a".into(), 1, tx)
        .await
        .unwrap();
    source.set_receivers(vec![("b".into(), server.url())]);
    converge(&source, "b", s, &mnt).await;

    // Version 2 does not fit on the backup.
    let v2 = bytes(2 * 1024 * 1024, 7);
    // Written whole (renamed in): a partial write that fits could be
    // shipped before the rest of it.
    let staged = base.path().join("agents.v2");
    fs::write(&staged, &v2).unwrap();
    fs::rename(&staged, s.join("agents")).unwrap();
    wait_until(20, "the write error is reported", || {
        log.count(|e| matches!(e, SyncEvent::WriteFailed { path, .. } if path == "agents")) > 0
    })
    .await;
    let msg = log
        .messages()
        .into_iter()
        .find(|m| m.starts_with("could not write admin data file agents"))
        .unwrap();
    assert_eq!(
        msg,
        "could not write admin data file agents on cms/b: No space left on device (os error 28)"
    );
    wait_until(20, "the source records the error", || {
        source.status().receivers["b"]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("507") && e.contains("agents"))
    })
    .await;
    // The old version is intact and no temporary file is left.
    assert_eq!(fs::read(mnt.join("agents")).unwrap(), b"version 1");
    let names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["agents".to_string()]);
    assert!(!source.status().receivers["b"].in_sync);

    // The fault is removed: the source's retries get through.
    tmpfs.resize("16m");
    converge(&source, "b", s, &mnt).await;
    assert_eq!(fs::read(mnt.join("agents")).unwrap(), v2);
    assert!(source.status().receivers["b"].last_error.is_none());
    source.stop().await;
    server.stop().await;
    drop(tmpfs);
}
