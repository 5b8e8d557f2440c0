//! Two agents (hosts h1 and h2) sharing one store, each behind its own
//! link: cutting h1's link makes it fence its primary before its lease can
//! expire, the controller role moves to h2, h2's instance is promoted with
//! a higher epoch, and when the link heals h1 rejoins with a new session,
//! as a backup, without any role flapping back.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{Pair, get, now_ns, wait_until};
use futures::StreamExt;
use tandem_core::model::{AppRoles, Role, keys};
use tandem_store::EventKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_off_host_fences_its_primary_and_the_other_host_takes_over_then_it_rejoins_as_backup() {
    // h1 starts first: it holds the controller role and its instance a
    // (the higher priority) is primary.
    let Pair {
        dir,
        store,
        link1,
        link2: _link2,
        l1,
        l2,
    } = Pair::start().await;
    let log = dir.path().join("hooks.log");
    let roles: AppRoles = get(&store, &keys::roles("web")).await.expect("roles");
    let epoch = roles.epoch;

    // Note when h1's lease expires on the store (a's status vanishes).
    let expired = {
        let store = store.clone();
        tokio::spawn(async move {
            let key = keys::status("web", "a");
            let mut w = store.watch(&key, 0).await.expect("watch");
            while let Some(Ok(ev)) = w.next().await {
                if ev.kv.key == key && ev.kind == EventKind::Delete {
                    return now_ns();
                }
            }
            panic!("watch ended");
        })
    };

    let cut_at = now_ns();
    link1.cut(true);
    let (roles, _, b) = wait_until(
        &store,
        "b promoted by a controller on h2",
        15,
        |r, _, b, c| {
            r.primary.as_ref().is_some_and(|g| g.instance == "b")
                && b.is_some_and(|b| {
                    b.acting == Role::Primary && b.acting_epoch == r.epoch && !b.promoting
                })
                && c.is_some_and(|c| c.host == "h2")
        },
    )
    .await;
    assert!(
        roles.epoch > epoch,
        "epoch {} not above {epoch}",
        roles.epoch
    );
    assert_eq!(b.expect("b").acting_epoch, roles.epoch);
    let expired_at = expired.await.expect("expiry watcher");

    // a was told to step down before its lease could expire, and b was
    // told to take over only after that.
    let lines = common::hook_lines(&log);
    let demoted = lines
        .iter()
        .find(|(i, r, _, t)| i == "a" && r == "backup" && *t > cut_at)
        .unwrap_or_else(|| panic!("a never stepped down: {lines:?}"));
    let promoted = lines
        .iter()
        .find(|(i, r, e, _)| i == "b" && r == "primary" && *e == roles.epoch)
        .unwrap_or_else(|| panic!("b never told: {lines:?}"));
    assert!(
        demoted.3 < expired_at,
        "a stepped down after its lease expired"
    );
    assert!(
        expired_at <= promoted.3,
        "b promoted before a's lease expired"
    );

    // Heal: h1 gets a new session; a comes back as a backup; b stays.
    let session_before = roles.primary.as_ref().map(|g| g.session);
    link1.cut(false);
    let (after, a, _) = wait_until(&store, "a back as a backup", 15, |r, a, _, _| {
        a.is_some_and(|a| a.acting == Role::Backup && a.seen_generation >= r.generation)
    })
    .await;
    assert_eq!(
        after.primary.as_ref().map(|g| g.instance.as_str()),
        Some("b"),
        "no failback"
    );
    assert_eq!(after.epoch, roles.epoch, "no new promotion after the heal");
    assert_ne!(Some(a.expect("a").session), session_before);
    // And it stays that way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let still: AppRoles = get(&store, &keys::roles("web")).await.expect("roles");
    assert_eq!(still.epoch, roles.epoch);

    l2.stop().await.expect("stop h2");
    l1.stop().await.expect("stop h1");
}
