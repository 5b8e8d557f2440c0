//! Failover under partitions, on several (namespaced) machines.
//!
//! Each test builds a fresh cluster with `tandem-testnet`: three etcd
//! members (e1, e2, e3) and three agent hosts (h1, h2, h3), each in its own
//! network namespace, running the real `tandem agent` against the real
//! etcd (see `partitions/harness.rs`). The topology has a warm-standby
//! pair `web` and a singleton `daemon`, each with instance `a` on h1 and
//! `b` on h2; h3 runs no instance. Then one fault:
//!
//! 1. the primaries' host dies;
//! 2. the primaries' host is cut off from everything;
//! 3. the controller's agent is frozen (SIGSTOP), on a host without a
//!    primary (nothing may change) and on the host holding the primaries;
//! 4. one etcd member dies, a follower or the raft leader (nothing may
//!    change, writes go through);
//! 5. two etcd members die: no quorum (primaries keep serving, nothing is
//!    promoted, the API is read-only and its status stale);
//! 6. the primaries' host and the etcd members are cut off from each other
//!    (both directions), while h1 still reaches its peers h2 and h3.
//!
//! Every test then heals the fault (7.) and checks that normal operation
//! returns (a planned switchover through the API works, every `web`
//! instance is healthy), and checks from the demo components' own
//! journals that no two primary intervals of one app ever overlapped.
//! Every agent is started with the same `--cluster-secret-file`: their
//! failsafe requests and answers (scenario 5) are signed.
//! Tests assert behaviour and ordering, never durations. They need root,
//! `ip`, `iptables`, `etcd` and `etcdctl`; they run one at a time.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "partitions/harness.rs"]
mod harness;

use std::time::Duration;

use common::{PrimaryInterval, alive};
use harness::{
    APPS, Cluster, FENCE_MARGIN, LEASE_TTL, app, is_read_only, now_ms, roles_of, run, settled_on,
};
use tandem_api::types::StatusDoc;
use tandem_client::SwitchoverOutcome;
use tandem_testnet::Net;

/// Waits until instance `b` is the primary of both apps with a higher
/// epoch than in `before`.
async fn wait_b_primary(c: &Cluster, what: &str, before: &StatusDoc) -> StatusDoc {
    c.wait_status("h3", what, 30, |d| {
        APPS.iter().all(|a| {
            let now = app(d, a);
            now.primary.as_deref() == Some("b") && now.epoch > app(before, a).epoch
        })
    })
    .await
}

/// h2's instances answer, themselves, as primaries at the new epochs. A
/// singleton's successor is started as primary: it may still be opening
/// its port when the API already names it (bounded wait).
async fn assert_b_serves(c: &Cluster, after: &StatusDoc) {
    for a in APPS {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let seen = loop {
            match c.demo("h2", a).await {
                Some(seen) => break seen,
                None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                None => panic!("{a}/b on h2 does not answer"),
            }
        };
        assert_eq!(seen["role"], "primary", "{a}/b: {seen}");
        assert_eq!(seen["epoch"], app(after, a).epoch, "{a}/b: {seen}");
    }
}

/// The last interval of `app`/`id` that began before `t_ms`.
fn interval_before(c: &Cluster, app: &str, id: &str, t_ms: u64) -> PrimaryInterval {
    c.intervals(app)
        .into_iter()
        .rfind(|i| i.instance == id && i.first_ms < t_ms)
        .unwrap_or_else(|| panic!("{app}/{id} never acted as primary before {t_ms}"))
}

/// The interval of `app`/`id` at `epoch`.
fn interval_at(c: &Cluster, app: &str, id: &str, epoch: u64) -> PrimaryInterval {
    c.intervals(app)
        .into_iter()
        .find(|i| i.instance == id && i.epoch == epoch)
        .unwrap_or_else(|| panic!("{app}/{id} never acted as primary at epoch {epoch}"))
}

/// Nothing changed: same primaries and epochs as `before`, and each app
/// still has its one primary interval (a on h1), still going on.
fn assert_unchanged(c: &Cluster, before: &StatusDoc, now: &StatusDoc, since_ms: u64) {
    assert_eq!(
        roles_of(now),
        roles_of(before),
        "a primary or an epoch changed"
    );
    for a in APPS {
        let intervals = c.intervals(a);
        assert_eq!(
            intervals.len(),
            1,
            "{a}: a role changed (expected a's single primary interval):\n{}",
            harness::describe(&intervals)
        );
        let only = &intervals[0];
        assert_eq!(only.instance, "a", "{a}: {only:?}");
        assert_eq!(only.epoch, app(before, a).epoch, "{a}: {only:?}");
        assert!(
            only.last_ms >= since_ms,
            "{a}/a stopped acting as primary at {} (before {since_ms})",
            only.last_ms
        );
    }
}

/// Scenarios 2 and 6: h1 (both primaries) loses the store — and, with
/// `isolate`, everything else too. It must fence itself before its lease
/// can expire; b takes over once it has; after the heal h1 is a backup.
async fn primary_host_cut_off(c: &Cluster, isolate: bool) {
    let h1 = c.host("h1").clone();
    let before = c.status("h3").await;
    let t_fault = now_ms();
    if isolate {
        c.net.isolate(&h1).expect("isolate h1");
    } else {
        // Both directions: with only h1's packets dropped, h1 would still
        // hear the role watch (etcd's data arrives, its ACKs do not).
        for member in &c.etcd {
            c.net.cut_addr(&h1, member.addr).expect("cut h1 from etcd");
            c.net.cut(member, &h1).expect("cut etcd from h1");
        }
    }
    let after = wait_b_primary(c, "b primary of both apps after h1 lost the store", &before).await;
    assert_b_serves(c, &after).await;
    // Let an old primary that did not step down journal a few more ticks.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for a in APPS {
        let old = interval_before(c, a, "a", t_fault);
        let new = interval_at(c, a, "b", app(&after, a).epoch);
        println!(
            "  {a}: fault → a stopped acting {} ms, → b acting {} ms (gap {} ms; lease TTL {} ms, fence margin {} ms)",
            old.last_ms as i64 - t_fault as i64,
            new.first_ms as i64 - t_fault as i64,
            new.first_ms as i64 - old.last_ms as i64,
            LEASE_TTL.as_millis(),
            FENCE_MARGIN.as_millis()
        );
        assert!(
            new.first_ms > t_fault,
            "{a}/b acted as primary at {} before the fault at {t_fault}",
            new.first_ms
        );
        assert!(
            new.first_ms > old.last_ms,
            "{a}/b started acting at {} before the fenced {a}/a stopped at {}",
            new.first_ms,
            old.last_ms
        );
    }
    // web/a stepped down on its own agent's word (a hook, or a kill when
    // the hook could not be trusted) before b took over; daemon/a, a
    // singleton, was stopped.
    let web_old = interval_before(c, "web", "a", t_fault);
    let web_new = interval_at(c, "web", "b", app(&after, "web").epoch);
    let stepped_down = c.journal_lines("web", "a").iter().any(|l| {
        l["pid"].as_u64() == Some(web_old.pid)
            && l["role"] != "primary"
            && l["t_ms"]
                .as_u64()
                .is_some_and(|t| t >= web_old.last_ms && t < web_new.first_ms)
    });
    let web_old_pid = u32::try_from(web_old.pid).expect("pid");
    assert!(
        stepped_down || !alive(web_old_pid),
        "web/a (pid {}) neither stepped down nor died before web/b took over",
        web_old.pid
    );
    let daemon_old = interval_before(c, "daemon", "a", t_fault);
    assert!(
        !alive(u32::try_from(daemon_old.pid).expect("pid")),
        "daemon/a (pid {}) still runs on the cut-off host",
        daemon_old.pid
    );
    // The controller promoted b because h1's lease expired, not earlier.
    let events = c.api("h3").events(None, Some(200)).await.expect("events");
    assert!(
        events.iter().any(|e| e
            .message
            .contains("host h1 lost (no status: its lease expired)")),
        "no event says h1's lease expired: {events:#?}"
    );
    c.assert_no_overlap();

    // Heal: h1 rejoins as a backup (seen through h3's API and by itself).
    c.net.heal(&h1).expect("heal h1");
    for member in &c.etcd {
        c.net.heal(member).expect("heal an etcd member");
    }
    c.wait_status(
        "h3",
        "h1 back: web/a a healthy backup, daemon/a not running",
        45,
        |d| settled_on(d, "b"),
    )
    .await;
    let seen = c.demo("h1", "web").await.expect("web/a answers");
    assert_eq!(seen["role"], "backup", "web/a after the heal: {seen}");
    c.assert_normal_operation("h3").await;
}

#[test]
fn killed_primary_host_fails_both_apps_over_to_the_other_host() {
    run("kill-host", ["h1", "h2", "h3"], async |c: &Cluster| {
        let before = c.status("h3").await;
        let t_fault = now_ms();
        c.kill_host("h1");
        let after = wait_b_primary(c, "b primary of both apps after h1 died", &before).await;
        assert_b_serves(c, &after).await;
        for a in APPS {
            let new = interval_at(c, a, "b", app(&after, a).epoch);
            assert!(new.first_ms > t_fault, "{a}/b acted before the kill");
        }
        c.assert_no_overlap();

        // Heal: h1's agent starts again; its instances come back as
        // backup (web) and not running (daemon).
        c.start_agent("h1");
        c.wait_status("h3", "h1 back: web/a a healthy backup", 45, |d| {
            settled_on(d, "b")
        })
        .await;
        c.assert_normal_operation("h3").await;
    });
}

#[test]
fn isolated_primary_host_fences_itself_before_the_backup_takes_over() {
    run("isolate", ["h1", "h2", "h3"], async |c: &Cluster| {
        primary_host_cut_off(c, true).await;
    });
}

#[test]
fn primary_host_cut_off_from_etcd_only_fences_itself_and_fails_over() {
    run("cut-etcd", ["h1", "h2", "h3"], async |c: &Cluster| {
        primary_host_cut_off(c, false).await;
    });
}

#[test]
fn frozen_controller_without_primaries_moves_and_no_role_changes() {
    // h3 starts first, so it is the controller; it runs no instance.
    run(
        "pause-controller",
        ["h3", "h1", "h2"],
        async |c: &Cluster| {
            assert_eq!(c.controller().as_deref(), Some("h3"));
            let before = c.status("h1").await;
            let pid = c.agent_pid("h3");
            Net::pause(pid).expect("SIGSTOP h3's agent");
            let moved = c
                .wait_controller("another agent elected controller", 20, |h| h != "h3")
                .await;
            println!("  controller moved to {moved}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            Net::resume(pid).expect("SIGCONT h3's agent");
            let t_resume = now_ms();
            // h3's agent notices it lost its lease and the controller role.
            tokio::time::sleep(LEASE_TTL).await;
            let now = c
                .wait_status("h3", "h3's API answering again", 20, |d| !d.stale)
                .await;
            assert_unchanged(c, &before, &now, t_resume);
            assert_ne!(c.controller().as_deref(), None, "a controller is elected");
            c.assert_no_overlap();
            c.assert_normal_operation("h3").await;
        },
    );
}

#[test]
fn frozen_agent_holding_the_primaries_is_replaced_without_overlap() {
    // h1 starts first: it is the controller and holds both primaries.
    run(
        "pause-primary-agent",
        ["h1", "h2", "h3"],
        async |c: &Cluster| {
            assert_eq!(c.controller().as_deref(), Some("h1"));
            let before = c.status("h3").await;
            let pid = c.agent_pid("h1");
            let t_fault = now_ms();
            Net::pause(pid).expect("SIGSTOP h1's agent");
            let after =
                wait_b_primary(c, "b primary of both apps after h1's agent froze", &before).await;
            c.wait_controller("another agent elected controller", 20, |h| h != "h1")
                .await;
            assert_b_serves(c, &after).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Net::resume(pid).expect("SIGCONT h1's agent");
            for a in APPS {
                let new = interval_at(c, a, "b", app(&after, a).epoch);
                assert!(new.first_ms > t_fault, "{a}/b acted before the freeze");
            }
            // The frozen agent's instances went on running: they must not
            // have acted as primary once b did.
            c.assert_no_overlap();
            c.wait_status("h3", "h1 back: web/a a healthy backup", 45, |d| {
                settled_on(d, "b")
            })
            .await;
            c.assert_normal_operation("h3").await;
        },
    );
}

/// Scenario 4: one etcd member dies (the raft leader, or a follower):
/// the other two keep quorum, so nothing may change, and writes still go
/// through; the member then comes back.
async fn one_member_lost(c: &Cluster, leader: bool) {
    let before = c.status("h3").await;
    let current = c.etcd_leader().await.expect("an etcd leader");
    let victim = if leader {
        current
    } else {
        (0..3).find(|&i| i != current).expect("a follower")
    };
    let t_fault = now_ms();
    c.kill_etcd(victim);
    // Longer than a lease: anything that would fail over has.
    tokio::time::sleep(LEASE_TTL * 2).await;
    let now = c.status("h3").await;
    assert!(!now.stale, "the store has quorum: {now:#?}");
    assert_unchanged(c, &before, &now, t_fault);
    // Writes go through: maintenance on and off.
    let api = c.api("h3");
    for on in [true, false] {
        let out = api
            .maintenance("web", on, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("maintenance {on} without one member: {e}"));
        assert!(matches!(out, SwitchoverOutcome::Done { .. }), "{out:?}");
    }
    c.assert_no_overlap();

    c.start_etcd(victim);
    c.wait_etcd(&[0, 1, 2], 30).await;
    c.assert_normal_operation("h3").await;
}

#[test]
fn one_etcd_follower_lost_changes_nothing() {
    run("etcd-follower", ["h1", "h2", "h3"], async |c: &Cluster| {
        one_member_lost(c, false).await;
    });
}

#[test]
fn etcd_leader_lost_changes_nothing() {
    run("etcd-leader", ["h1", "h2", "h3"], async |c: &Cluster| {
        one_member_lost(c, true).await;
    });
}

#[test]
fn quorum_lost_keeps_primaries_serving_and_the_api_read_only() {
    run("etcd-quorum", ["h1", "h2", "h3"], async |c: &Cluster| {
        // Read through h3's API first: the status it answers stale later.
        let before = c.status("h3").await;
        let leader = c.etcd_leader().await.expect("an etcd leader");
        let victims: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let t_fault = now_ms();
        for &v in &victims {
            c.kill_etcd(v);
        }
        // Longer than a lease: an agent that fences on a lost lease has.
        tokio::time::sleep(LEASE_TTL * 2 + Duration::from_secs(1)).await;

        // The API: the last known status, marked stale; writes refused.
        let api = c.api("h3");
        let status = api.status().await.expect("status without quorum");
        assert!(
            status.stale,
            "status without quorum is marked stale: {status:#?}"
        );
        assert_eq!(roles_of(&status), roles_of(&before));
        let err = api
            .maintenance("web", true, Duration::from_secs(5))
            .await
            .expect_err("a write without quorum must fail");
        assert!(is_read_only(&err), "write without quorum answered: {err}");

        // The primaries keep serving, at their epochs; nothing is promoted.
        for a in APPS {
            let seen = c.demo("h1", a).await.expect("a answers");
            assert_eq!(seen["role"], "primary", "{a}/a without quorum: {seen}");
            assert_eq!(seen["epoch"], app(&before, a).epoch, "{a}/a: {seen}");
            let b = c.demo("h2", a).await;
            assert!(
                b.as_ref().is_none_or(|v| v["role"] != "primary"),
                "{a}/b was promoted without quorum: {b:?}"
            );
        }
        let since = now_ms().saturating_sub(1000);
        assert_unchanged(c, &before, &status, since.max(t_fault));

        for &v in &victims {
            c.start_etcd(v);
        }
        c.wait_etcd(&[0, 1, 2], 60).await;
        c.assert_no_overlap();
        c.assert_normal_operation("h3").await;
    });
}
