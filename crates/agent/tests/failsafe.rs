//! Failsafe mode, with two agents (h1, h2) each behind its own link to one
//! store:
//!
//! - the store is lost everywhere: the primary keeps its role (h2 confirms
//!   it cannot reach the store and promises to refuse promotions), nobody
//!   is promoted, and once the links heal no two primaries overlap;
//! - the store is lost everywhere but h2's agent does not answer: the
//!   primary steps down before its lease can expire.
//!
//! (When only the primary's link is cut, h2 reaches the store and refuses
//! to confirm: `two_hosts.rs` covers that the primary then steps down.)
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{Flaky, Pair, hook_lines, now_ns, wait_until};
use tandem_core::model::Role;

/// Hook calls after `since`: (instance, role, epoch, time).
fn hooks_after(dir: &tempfile::TempDir, since: u128) -> Vec<(String, String, u64, u128)> {
    hook_lines(&dir.path().join("hooks.log"))
        .into_iter()
        .filter(|l| l.3 > since)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_any_store_the_primary_keeps_serving_and_nobody_is_promoted() {
    let p = Pair::start().await;
    let cut_at = now_ns();
    p.link1.cut(true);
    p.link2.cut(true);
    // Well past the lease TTL (2 s) and the fencing margin.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = hooks_after(&p.dir, cut_at);
    assert!(
        during.is_empty(),
        "no role may change while every agent has lost the store (failsafe): {during:?}"
    );

    // Heal. The embedded store has expired h1's lease meanwhile (etcd
    // would have kept it): h1 steps down at once and the controller
    // decides again. Whoever ends up primary, a's demotion comes before
    // any promotion of b.
    let healed_at = now_ns();
    p.link1.cut(false);
    p.link2.cut(false);
    let (roles, _, _) = wait_until(&p.store, "a stable primary again", 20, |r, a, b, _| {
        let acting = |s: Option<&tandem_core::model::InstanceStatus>| {
            s.is_some_and(|s| {
                s.acting == Role::Primary && s.acting_epoch == r.epoch && !s.promoting
            })
        };
        r.primary.is_some() && (acting(a) ^ acting(b))
    })
    .await;
    let after = hooks_after(&p.dir, healed_at);
    let b_promoted = after.iter().find(|(i, r, _, _)| i == "b" && r == "primary");
    if let Some(promoted) = b_promoted {
        let a_demoted = after
            .iter()
            .find(|(i, r, _, _)| i == "a" && r == "backup")
            .unwrap_or_else(|| panic!("b promoted but a never stepped down: {after:?}"));
        assert!(
            a_demoted.3 < promoted.3,
            "b was promoted before a stepped down: {after:?}"
        );
        assert_eq!(promoted.2, roles.epoch);
    }
    p.l2.stop().await.expect("stop h2");
    p.l1.stop().await.expect("stop h1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_answer_makes_the_primary_step_down_in_time() {
    let p = Pair::start().await;
    // h2's agent goes away: nobody answers on its agent port.
    p.l2.stop().await.expect("stop h2");
    let cut_at = now_ns();
    p.link1.cut(true);
    p.link2.cut(true);
    let ttl = Duration::from_secs(2);
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    let during = hooks_after(&p.dir, cut_at);
    let demoted = during
        .iter()
        .find(|(i, r, _, _)| i == "a" && r == "backup")
        .unwrap_or_else(|| panic!("a kept its role with a peer that does not answer: {during:?}"));
    // It stepped down before its lease could expire: at most TTL after the
    // cut (its last renewal was sent before the cut).
    assert!(
        demoted.3 < cut_at + ttl.as_nanos(),
        "a stepped down {} ms after the cut, past the lease TTL",
        (demoted.3 - cut_at) / 1_000_000
    );
    p.l1.stop().await.expect("stop h1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_store_comes_back_to_the_peer_first_its_promotion_waits_for_the_promise() {
    let p = Pair::start().await;
    p.link1.cut(true);
    p.link2.cut(true);
    // Long enough for h1's lease to expire on the (embedded) store while a
    // keeps serving under failsafe.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healed_at = now_ns();
    // The store comes back to h2 only: the controller there promotes b,
    // but h2 promised a's host to refuse promotions for a while; h2 now
    // reaches the store, so a is no longer confirmed and steps down.
    p.link2.cut(false);
    let (roles, _, _) = wait_until(&p.store, "b promoted", 20, |r, _, b, _| {
        r.primary.as_ref().is_some_and(|g| g.instance == "b")
            && b.is_some_and(|b| {
                b.acting == Role::Primary && b.acting_epoch == r.epoch && !b.promoting
            })
    })
    .await;
    let after = hooks_after(&p.dir, healed_at);
    let a_demoted = after
        .iter()
        .find(|(i, r, _, _)| i == "a" && r == "backup")
        .unwrap_or_else(|| panic!("a never stepped down: {after:?}"));
    let b_promoted = after
        .iter()
        .find(|(i, r, e, _)| i == "b" && r == "primary" && *e == roles.epoch)
        .unwrap_or_else(|| panic!("b never told: {after:?}"));
    assert!(
        a_demoted.3 < b_promoted.3,
        "b was promoted while a could still act: {after:?}"
    );
    p.link1.cut(false);
    p.l2.stop().await.expect("stop h2");
    p.l1.stop().await.expect("stop h1");
}

/// A store without quorum keeps its leases: h1's controller could not
/// resign while it was fenced, and its key, bound to a lease that lives
/// on, would never be deleted. Once the store answers again, h1 leads
/// again under it (and b is promoted when a dies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_quorum_loss_the_controller_leads_again() {
    let p = Pair::start_with(Flaky::quorum_lost).await;
    p.link1.cut(true);
    p.link2.cut(true);
    // Past the moment the agents stop being controller candidates
    // (lease TTL 2 s − margin 800 ms) and past the TTL itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.link1.cut(false);
    p.link2.cut(false);
    let (roles, a, _) = wait_until(&p.store, "the statuses again", 10, |_, a, b, c| {
        a.is_some() && b.is_some() && c.is_some_and(|c| c.host == "h1")
    })
    .await;
    assert_eq!(
        roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("a"),
        "failsafe kept a primary through the outage"
    );
    // Something only a controller does: a dies, b is promoted.
    let pid = a.and_then(|a| a.pid).expect("a's pid");
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    wait_until(&p.store, "b promoted by a controller", 15, |r, _, b, _| {
        r.primary.as_ref().is_some_and(|g| g.instance == "b")
            && b.is_some_and(|b| {
                b.acting == Role::Primary && b.acting_epoch == r.epoch && !b.promoting
            })
            && r.epoch > roles.epoch
    })
    .await;
    p.l2.stop().await.expect("stop h2");
    p.l1.stop().await.expect("stop h1");
}
