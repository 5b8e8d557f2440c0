//! What a receiver refuses: stale epochs, repeats, paths outside its
//! directory, unsigned requests.

// Tests wait on the wall clock and sign requests with it.
#![allow(clippy::disallowed_methods)]

mod common;

use std::fs;

use common::{Log, Server, cfg, converge, events, tree, wait_until};
use tandem_sync::wire::{self, PushAck, PushHeader, WireChange};
use tandem_sync::{Receiver, ReceiverSet, Source, SyncEvent};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn write(path: &str, content: &[u8]) -> WireChange {
    WireChange::Write {
        path: path.into(),
        size: content.len() as u64,
        sha256: wire::sha256_hex(content),
        mode: 0o644,
        detected_ms: now_ms(),
    }
}

fn header(source: &str, epoch: u64, seq: u64, changes: Vec<WireChange>) -> PushHeader {
    PushHeader {
        source: source.into(),
        epoch,
        seq,
        part: 0,
        complete: true,
        resync: false,
        changes,
    }
}

/// Posts a hand-made push; (status, body).
async fn post(
    base: &str,
    instance: &str,
    header: &PushHeader,
    contents: &[&[u8]],
    secret: Option<&[u8]>,
) -> (u16, String) {
    let body = wire::encode_push(header, contents).unwrap();
    post_raw(base, instance, body, secret).await
}

async fn post_raw(
    base: &str,
    instance: &str,
    body: Vec<u8>,
    secret: Option<&[u8]>,
) -> (u16, String) {
    let path = format!("/v1/sync/cms/{instance}/push");
    let mut req = reqwest::Client::new().post(format!("{base}{path}"));
    if let Some(secret) = secret {
        let ts = now_ms();
        req = req.header(wire::TIMESTAMP_HEADER, ts.to_string()).header(
            wire::SIGNATURE_HEADER,
            wire::signature(secret, "POST", &path, ts, &body),
        );
    }
    let resp = req.body(body).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

struct Backup {
    dir: tempfile::TempDir,
    receiver: Receiver,
    server: Server,
    log: Log,
}

async fn backup(secret: Option<&[u8]>) -> Backup {
    let dir = tempfile::tempdir().unwrap();
    let (tx, log) = events();
    let set = ReceiverSet::new();
    let receiver = Receiver::new(cfg(dir.path(), secret), "c".into(), tx).unwrap();
    set.insert(receiver.clone());
    let server = Server::start(set, None).await;
    Backup {
        dir,
        receiver,
        server,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_source_is_refused_and_writes_nothing() {
    let b = backup(None).await;
    b.receiver.set_primary(Some(("b".into(), 7)));
    let old = tempfile::tempdir().unwrap();
    fs::write(old.path().join("agents"), b"from the deposed primary").unwrap();
    let (tx, log) = events();
    let deposed = Source::start(cfg(old.path(), None), "a".into(), 6, tx.clone())
        .await
        .unwrap();
    deposed.set_receivers(vec![("c".into(), b.server.url())]);
    wait_until(20, "the deposed source is refused", || {
        deposed.status().receivers["c"].last_error.is_some()
    })
    .await;
    let error = deposed.status().receivers["c"].last_error.clone().unwrap();
    assert!(
        error.contains("409") && error.contains("cms/b is primary at epoch 7"),
        "{error}"
    );
    assert!(
        b.log.messages().contains(
            &"refused a push from cms/a at epoch 6 to cms/c: cms/b is primary at epoch 7"
                .to_string()
        ),
        "{:?}",
        b.log.messages()
    );
    assert!(tree(b.dir.path()).is_empty());
    assert!(log.count(|e| matches!(e, SyncEvent::ResyncFailed { .. })) > 0);

    // The new primary's data is accepted.
    let new = tempfile::tempdir().unwrap();
    fs::write(new.path().join("agents"), b"from the new primary").unwrap();
    let primary = Source::start(cfg(new.path(), None), "b".into(), 7, tx)
        .await
        .unwrap();
    primary.set_receivers(vec![("c".into(), b.server.url())]);
    converge(&primary, "c", new.path(), b.dir.path()).await;
    assert_eq!(b.receiver.state().highest_epoch, 7);

    // Even if the agent's knowledge goes back to epoch 6 (or is lost),
    // epoch 6 is refused: a newer primary was seen.
    let stale = "stale epoch 6: a newer primary (epoch 7) exists";
    for primary_known in [Some(("a".to_string(), 6)), None] {
        b.receiver.set_primary(primary_known);
        let (status, body) = post(
            &b.server.url(),
            "c",
            &header("a", 6, 100, vec![write("agents", b"evil")]),
            &[b"evil"],
            None,
        )
        .await;
        assert_eq!(status, 409, "{body}");
        assert!(body.contains(stale), "{body}");
    }
    wait_until(20, "the deposed source is refused as stale", || {
        deposed.status().receivers["c"]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(stale))
    })
    .await;
    assert_eq!(
        fs::read(b.dir.path().join("agents")).unwrap(),
        b"from the new primary"
    );
    deposed.stop().await;
    primary.stop().await;
    b.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_push_is_acknowledged_and_applied_once() {
    let b = backup(None).await;
    b.receiver.set_primary(Some(("b".into(), 7)));
    let h = header("b", 7, 1, vec![write("agents", b"v1")]);
    let (status, body) = post(&b.server.url(), "c", &h, &[b"v1"], None).await;
    assert_eq!(status, 200, "{body}");
    let ack: PushAck = serde_json::from_str(&body).unwrap();
    assert!(ack.applied);
    assert_eq!(ack.written, 1);
    // Someone edits the backup's copy; a replay must not overwrite it.
    fs::write(b.dir.path().join("agents"), b"local").unwrap();
    for _ in 0..3 {
        let (status, body) = post(&b.server.url(), "c", &h, &[b"v1"], None).await;
        assert_eq!(status, 200, "{body}");
        let ack: PushAck = serde_json::from_str(&body).unwrap();
        assert!(!ack.applied);
    }
    assert_eq!(fs::read(b.dir.path().join("agents")).unwrap(), b"local");
    // An older sequence number too.
    let h2 = header("b", 7, 2, vec![write("skills", b"s")]);
    assert_eq!(post(&b.server.url(), "c", &h2, &[b"s"], None).await.0, 200);
    let h1 = header("b", 7, 1, vec![write("skills", b"older")]);
    assert_eq!(
        post(&b.server.url(), "c", &h1, &[b"older"], None).await.0,
        200
    );
    assert_eq!(fs::read(b.dir.path().join("skills")).unwrap(), b"s");

    wait_until(10, "the events arrive", || {
        b.log.count(|e| matches!(e, SyncEvent::Repeated { .. })) == 4
    })
    .await;
    assert_eq!(b.log.count(|e| matches!(e, SyncEvent::Applied { .. })), 2);
    let state = b.receiver.state();
    assert_eq!(state.pushes_applied, 2);
    assert_eq!(state.applied_seq, 2);
    b.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_directory_are_refused_with_400_and_nothing_written() {
    let b = backup(None).await;
    b.receiver.set_primary(Some(("b".into(), 7)));
    // A link inside the backup's directory that points out of it.
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), b.dir.path().join("link")).unwrap();
    let parent = b.dir.path().parent().unwrap().to_path_buf();
    let mut seq = 0;
    for bad in [
        "../evil",
        "/etc/x",
        "a/../../evil",
        "link/evil",
        ".tandem-sync-tmp-1",
        "a//b",
    ] {
        seq += 1;
        // A good change first: nothing of a refused push is written.
        let h = header("b", 7, seq, vec![write("good", b"g"), write(bad, b"evil")]);
        let (status, body) = post(&b.server.url(), "c", &h, &[b"g", b"evil"], None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains(bad), "{bad}: {body}");
        let remove = header(
            "b",
            7,
            seq,
            vec![WireChange::Remove {
                path: bad.into(),
                detected_ms: 0,
            }],
        );
        let (status, body) = post(&b.server.url(), "c", &remove, &[], None).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert!(!parent.join("evil").exists());
    assert!(!b.dir.path().join("good").exists());
    assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
    assert_eq!(b.receiver.state().pushes_applied, 0);
    let msg = b
        .log
        .messages()
        .into_iter()
        .find(|m| m.contains("../evil"))
        .unwrap();
    assert_eq!(
        msg,
        "refused a push from cms/b to cms/c: the path ../evil leaves the admin directory (it contains ..)"
    );
    // A malformed body too.
    let (status, _) = post_raw(
        &b.server.url(),
        "c",
        b"\x00\x00\x00\x05{nope".to_vec(),
        None,
    )
    .await;
    assert_eq!(status, 400);
    // An unknown receiver.
    let (status, body) = post(
        &b.server.url(),
        "zz",
        &header("b", 7, 99, vec![]),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    b.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_signature_is_refused_with_401() {
    let b = backup(Some(b"right secret")).await;
    b.receiver.set_primary(Some(("b".into(), 7)));
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("agents"), b"v1").unwrap();
    let (tx, _log) = events();
    let wrong = Source::start(
        cfg(src.path(), Some(b"wrong secret")),
        "b".into(),
        7,
        tx.clone(),
    )
    .await
    .unwrap();
    wrong.set_receivers(vec![("c".into(), b.server.url())]);
    wait_until(20, "the wrongly signed source is refused", || {
        wrong.status().receivers["c"].last_error.is_some()
    })
    .await;
    let error = wrong.status().receivers["c"].last_error.clone().unwrap();
    assert!(error.contains("401"), "{error}");
    wrong.stop().await;
    assert!(tree(b.dir.path()).is_empty());

    // Hand-made: unsigned, wrong secret, stale timestamp.
    let h = header("b", 7, 1, vec![write("agents", b"evil")]);
    assert_eq!(
        post(&b.server.url(), "c", &h, &[b"evil"], None).await.0,
        401
    );
    assert_eq!(
        post(&b.server.url(), "c", &h, &[b"evil"], Some(b"nope"))
            .await
            .0,
        401
    );
    let body = wire::encode_push(&h, &[b"evil"]).unwrap();
    let path = "/v1/sync/cms/c/push";
    let old = now_ms() - 60_000;
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", b.server.url()))
        .header(wire::TIMESTAMP_HEADER, old.to_string())
        .header(
            wire::SIGNATURE_HEADER,
            wire::signature(b"right secret", "POST", path, old, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let manifest = reqwest::get(format!(
        "{}/v1/sync/cms/c/manifest?source=b&epoch=7",
        b.server.url()
    ))
    .await
    .unwrap();
    assert_eq!(manifest.status().as_u16(), 401);
    assert!(tree(b.dir.path()).is_empty());
    assert!(
        b.log
            .count(|e| matches!(e, SyncEvent::Unauthenticated { .. }))
            >= 4
    );

    // The right secret works.
    let right = Source::start(cfg(src.path(), Some(b"right secret")), "b".into(), 7, tx)
        .await
        .unwrap();
    right.set_receivers(vec![("c".into(), b.server.url())]);
    converge(&right, "c", src.path(), b.dir.path()).await;
    right.stop().await;
    b.server.stop().await;
}
