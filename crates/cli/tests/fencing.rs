//! Fencing of a lost host, on several (namespaced) machines: token
//! fencing, fence devices, and the lease path they must not break.
//!
//! Each test builds a fresh cluster with the partitions harness
//! (`partitions/harness.rs`): three etcd members, agent hosts h1, h2, h3
//! (h3 runs no pair instance and is started first, so it is the
//! controller), each in its own network namespace running the real `tandem
//! agent`; and for the hot-standby case a real PostgreSQL server in a
//! namespace of its own (`db`). The topology (see `fencing/support.rs`)
//! has a 10 s lease, so that an isolated primary is still alive and acting
//! when it is healed. Then:
//!
//! a. h1, holding the primary of a token-fenced hot-standby aggregator
//!    pair writing to PostgreSQL, is cut off: b is promoted at a higher
//!    epoch before h1's lease could have expired; h1 is healed before its
//!    lease ends; the sink refuses every write at the old epoch and ends
//!    with every record exactly once, in order, epochs never going down.
//! b. h1 has a fence device and the app the default lease fencing: the
//!    device runs and confirms, the app is promoted before h1's lease
//!    could have expired, and h1's processes are really gone.
//! c. Neither token nor device: the app is promoted only after h1's lease
//!    ended.
//! d. A fence device that fails: `fence_failed`, and the app is promoted
//!    only after h1's lease ended.
//! e. 30 % random loss on every agent host for a minute, default
//!    heartbeat settings: no suspicion, no promotion, no epoch change; and
//!    the same with the etcd members lossy too. (With the default 3 s lease
//!    instead of this file's 10 s, loss on the etcd members too makes
//!    leases expire and the app fail over on the lease path within the
//!    minute; with loss on the agent hosts only, nothing changes either.)
//!
//! "Before h1's lease could have expired" is an ordering against etcd, not
//! a duration: a witness key bound to a lease that etcd expires no later
//! than h1's own lease could have (see `support::Witness`) is still there
//! after the promotion. Tests assert behaviour and ordering, never
//! durations. They need root, `ip`, `iptables`, `etcd`, `etcdctl` and
//! PostgreSQL; they run one at a time, and each removes its namespaces
//! even when it fails.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "partitions/harness.rs"]
mod harness;
#[path = "fencing/support.rs"]
mod support;

use std::time::{Duration, Instant};

use harness::{Cluster, app, inst, run_with};
use support::{
    AGG_PORT, Device, Pg, Spec, TABLE, Witness, describe, events, is, lease_ended, mentions_host,
    promotion, topology,
};
use tandem_api::types::{AppDoc, Health, Role, StatusDoc};
use tandem_sink::{FencedWriter, PostgresSink, Record, Sink, SinkError};

/// `app`'s primary is `primary`, acknowledged, every instance healthy and
/// the other one a backup; the status is fresh.
fn pair_settled(doc: &StatusDoc, name: &str, primary: &str) -> bool {
    let a = app(doc, name);
    let backup = harness::other(primary);
    !doc.stale
        && a.primary.as_deref() == Some(primary)
        && a.instances.iter().all(|i| i.health == Health::Healthy)
        && inst(a, backup).role == Role::Backup
}

/// Applies the topology and starts h3 (the controller), h1 (the
/// primaries) and h2; waits until every app of `apps` is settled on `a`.
async fn start(c: &Cluster, spec: &Spec, apps: &[&str]) {
    c.apply_topology_text("fencing.toml", &topology(c, spec));
    c.start_agent("h3");
    c.wait_controller("h3 to be elected controller", 30, |h| h == "h3")
        .await;
    c.start_agent("h1");
    c.wait_status("h3", "h1's instances to be primaries", 40, |d| {
        apps.iter()
            .all(|a| app(d, a).primary.as_deref() == Some("a"))
    })
    .await;
    c.start_agent("h2");
    c.wait_status("h3", "a settled cluster (a primary, b backup)", 60, |d| {
        apps.iter().all(|a| pair_settled(d, a, "a"))
    })
    .await;
}

/// Waits until `name`/b is the primary at an epoch above `epoch`.
async fn wait_b_promoted(c: &Cluster, name: &str, epoch: u64, secs: u64) -> AppDoc {
    let doc = c
        .wait_status("h3", &format!("{name}/b to be promoted"), secs, |d| {
            let a = app(d, name);
            a.primary.as_deref() == Some("b") && a.epoch > epoch
        })
        .await;
    app(&doc, name).clone()
}

/// Heals h1: rules flushed, interface up.
fn restore_h1(c: &Cluster) {
    let h1 = c.host("h1");
    c.net.heal(h1).expect("heal h1");
    let out = std::process::Command::new("ip")
        .args(["-n", &h1.ns, "link", "set", "eth0", "up"])
        .output()
        .expect("ip link set up");
    assert!(out.status.success(), "{out:?}");
}

// ---- a. token fencing, hot standby, PostgreSQL -----------------------------

/// Records the statistics source emits.
const RECORDS: u64 = 4000;
/// Records per second.
const RATE: u64 = 200;

#[test]
fn token_fenced_hot_standby_promotes_before_the_lease_and_the_sink_refuses_the_old_primary() {
    run_with("token_hot_standby", &["db"], async |c| {
        let pg = Pg::start(c, "db");
        let spec = Spec {
            agg: Some((pg.conninfo.clone(), RATE, RECORDS)),
            ..Spec::default()
        };
        start(c, &spec, &["agg"]).await;
        // Let the stream flow to the sink through a.
        let a_url = format!("http://{}:{AGG_PORT}/", c.host("h1").addr);
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(1000))
            .build()
            .expect("http");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let v: Option<serde_json::Value> = match http.get(&a_url).send().await {
                Ok(r) => r.json().await.ok(),
                Err(_) => None,
            };
            if v.as_ref()
                .and_then(|v| v["last_written"].as_u64())
                .is_some_and(|p| p >= 400)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "agg/a never wrote 400 records: {v:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let before = c.status("h3").await;
        let epoch0 = app(&before, "agg").epoch;
        let seq0 = events(c, "h3").await.last().map_or(0, |e| e.seq);

        let witness = Witness::grant(c);
        c.net.isolate(c.host("h1")).expect("isolate h1");
        let after = wait_b_promoted(c, "agg", epoch0, 60).await;
        // Ordered against etcd: is the witness (gone no later than h1's
        // lease could have expired) still there, and h1's registration?
        let witness_alive = witness.alive(c);
        let h1_registered = !support::etcdctl(c, &["get", "/tandem/hosts/h1", "--keys-only"])
            .trim()
            .is_empty();
        let evs: Vec<_> = events(c, "h3")
            .await
            .into_iter()
            .filter(|e| e.seq > seq0)
            .collect();
        let promoted = promotion(&evs, "agg", "b", epoch0)
            .unwrap_or_else(|| panic!("no promotion event of agg/b:\n{}", describe(&evs)));
        assert!(
            witness_alive && h1_registered,
            "agg/b was promoted (epoch {}) only after h1's lease could have expired (witness alive: {witness_alive}, h1 registered: {h1_registered}): token fencing must not wait for the lease\n{}",
            after.epoch,
            describe(&evs)
        );
        assert!(
            !evs.iter()
                .any(|e| e.seq < promoted.seq && lease_ended(e, "h1")),
            "h1's lease ended before the promotion:\n{}",
            describe(&evs)
        );
        assert_eq!(
            promoted.reason.as_deref(),
            Some("host_suspected"),
            "the promotion's reason:\n{}",
            describe(&evs)
        );
        assert!(
            evs.iter().any(|e| is(e, "host", "host_suspected")
                && mentions_host(&e.message, "h1")
                && e.seq <= promoted.seq),
            "no host_suspected event for h1 before the promotion:\n{}",
            describe(&evs)
        );

        // Heal while h1's lease is still valid: its agent, and agg/a,
        // are still alive and a still believes it is primary.
        assert!(
            witness.alive(c),
            "h1's lease could have expired before the heal"
        );
        c.net.heal(c.host("h1")).expect("heal h1");
        c.wait_status("h3", "agg settled on b after the heal", 60, |d| {
            pair_settled(d, "agg", "b")
        })
        .await;
        let a_state: serde_json::Value = http
            .get(&a_url)
            .send()
            .await
            .expect("agg/a answers after the heal")
            .json()
            .await
            .expect("agg/a's state");
        assert_eq!(a_state["role"], "backup", "agg/a after the heal: {a_state}");

        // What the old primary attempted with the old epoch, from its log.
        let a_log = std::fs::read_to_string(c.instance_log("h1", "agg", "a")).unwrap_or_default();
        let refused = a_log
            .lines()
            .filter(|l| {
                l.contains("write refused: a newer primary owns the sink")
                    || l.contains("the sink has a newer writer: deposed")
            })
            .count();
        let a_log_path = c.instance_log("h1", "agg", "a");
        assert!(
            a_log_path.exists(),
            "no log of agg/a at {}",
            a_log_path.display()
        );
        println!(
            "[token_hot_standby] agg/a's writes (or takeovers) at epoch {epoch0} refused by PostgreSQL after the heal: {refused} (deposed_at {}); agg/a's state: {a_state}",
            a_state["deposed_at"]
        );

        // The sink itself: wait for the whole stream, then check it (off
        // the runtime: PostgreSQL's client is blocking).
        let conninfo = pg.conninfo.clone();
        let pg_log = pg.log();
        support::off_runtime(move || check_sink(&conninfo, epoch0, &pg_log));
    });
}

/// Every record in the sink exactly once, in order, epochs never going
/// down, both the old and the new primary wrote; and a writer at the old
/// epoch is refused.
fn check_sink(conninfo: &str, epoch0: u64, pg_log: &str) {
    let mut sink = PostgresSink::connect(conninfo, TABLE).expect("connect to the sink");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if sink.last_position().expect("last position") == Some(RECORDS - 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never reached {RECORDS} records (last {:?})\n{pg_log}",
            sink.last_position(),
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rows = sink.rows(0, RECORDS as usize + 10).expect("rows");
    assert_eq!(rows.len() as u64, RECORDS, "rows in the sink");
    let mut last_epoch = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.position, i as u64, "a gap or a duplicate at {i}");
        assert_eq!(row.payload, format!("stat-{i}").into_bytes(), "payload {i}");
        assert!(row.epoch >= last_epoch, "epoch went down at {i}");
        last_epoch = row.epoch;
    }
    assert!(
        rows.iter().any(|r| r.epoch == epoch0) && rows.iter().any(|r| r.epoch > epoch0),
        "both the old and the new primary wrote"
    );
    let stale = FencedWriter::take_over(
        PostgresSink::connect(conninfo, TABLE).expect("connect"),
        epoch0,
    );
    assert!(
        matches!(stale, Err(SinkError::Fenced { .. })),
        "the sink accepted a writer at the old epoch {epoch0}"
    );
    let mut raw = PostgresSink::connect(conninfo, TABLE).expect("connect");
    let r = raw.write(
        epoch0,
        &[Record {
            position: RECORDS,
            payload: b"stale".to_vec(),
        }],
    );
    assert!(
        matches!(r, Err(SinkError::Fenced { .. })),
        "a write at the old epoch {epoch0} was not refused: {r:?}"
    );
}

// ---- b. a fence device ------------------------------------------------------

#[test]
fn fence_device_confirms_and_the_app_is_promoted_before_the_lease() {
    run_with("device_confirms", &[], async |c| {
        let spec = Spec {
            devices: vec![("h1", Device::Works)],
            web: Some(None),
            ..Spec::default()
        };
        start(c, &spec, &["web"]).await;
        let epoch0 = app(&c.status("h3").await, "web").epoch;
        let seq0 = events(c, "h3").await.last().map_or(0, |e| e.seq);
        let witness = Witness::grant(c);
        c.net.isolate(c.host("h1")).expect("isolate h1");
        let after = wait_b_promoted(c, "web", epoch0, 60).await;
        let witness_alive = witness.alive(c);
        let evs: Vec<_> = events(c, "h3")
            .await
            .into_iter()
            .filter(|e| e.seq > seq0)
            .collect();
        let promoted = promotion(&evs, "web", "b", epoch0)
            .unwrap_or_else(|| panic!("no promotion event of web/b:\n{}", describe(&evs)));
        let started = evs
            .iter()
            .find(|e| is(e, "fence", "fence_started") && mentions_host(&e.message, "h1"));
        let confirmed = evs
            .iter()
            .find(|e| is(e, "fence", "fence_confirmed") && mentions_host(&e.message, "h1"));
        let (Some(started), Some(confirmed)) = (started, confirmed) else {
            panic!(
                "no fence_started and fence_confirmed events for h1:\n{}",
                describe(&evs)
            );
        };
        assert!(
            started.seq < confirmed.seq && confirmed.seq < promoted.seq,
            "expected fence_started, fence_confirmed, then the promotion:\n{}",
            describe(&evs)
        );
        assert_eq!(
            promoted.reason.as_deref(),
            Some("host_fenced"),
            "{}",
            describe(&evs)
        );
        assert!(
            !evs.iter()
                .any(|e| e.seq < confirmed.seq && lease_ended(e, "h1")),
            "h1's lease ended before the device confirmed:\n{}",
            describe(&evs)
        );
        assert!(
            witness_alive,
            "web/b was promoted (epoch {}) only after h1's lease could have expired\n{}",
            after.epoch,
            describe(&evs)
        );
        // The device's effect is real: nothing runs on h1, its link is down.
        let pids = c.net.pids(c.host("h1")).expect("pids");
        assert!(pids.is_empty(), "processes left on h1: {pids:?}");
        let link = std::process::Command::new("ip")
            .args(["-n", &c.host("h1").ns, "link", "show", "eth0"])
            .output()
            .expect("ip link show");
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("state DOWN"), "h1's eth0: {link}");
        // web/b serves alone.
        let now = c.status("h3").await;
        assert_eq!(app(&now, "web").primary.as_deref(), Some("b"));

        // The host comes back (powered on again): its new agent rejoins as
        // a backup and is not fenced again.
        let seq1 = events(c, "h3").await.last().map_or(0, |e| e.seq);
        restore_h1(c);
        c.start_agent("h1");
        c.wait_status("h3", "web/a back as a healthy backup", 60, |d| {
            pair_settled(d, "web", "b")
        })
        .await;
        let evs: Vec<_> = events(c, "h3")
            .await
            .into_iter()
            .filter(|e| e.seq > seq1)
            .collect();
        assert!(
            !evs.iter().any(|e| is(e, "fence", "fence_started")),
            "the rejoining h1 was fenced again:\n{}",
            describe(&evs)
        );
        assert_eq!(
            app(&c.status("h3").await, "web").primary.as_deref(),
            Some("b")
        );
    });
}

// ---- c. neither token nor device -------------------------------------------

#[test]
fn lease_fenced_app_without_device_is_promoted_only_after_the_lease_ended() {
    run_with("lease_only", &[], async |c| {
        let spec = Spec {
            web: Some(None),
            ..Spec::default()
        };
        start(c, &spec, &["web"]).await;
        let epoch0 = app(&c.status("h3").await, "web").epoch;
        let seq0 = events(c, "h3").await.last().map_or(0, |e| e.seq);
        c.net.isolate(c.host("h1")).expect("isolate h1");
        wait_b_promoted(c, "web", epoch0, 60).await;
        let evs: Vec<_> = events(c, "h3")
            .await
            .into_iter()
            .filter(|e| e.seq > seq0)
            .collect();
        let promoted = promotion(&evs, "web", "b", epoch0)
            .unwrap_or_else(|| panic!("no promotion event of web/b:\n{}", describe(&evs)));
        assert!(
            evs.iter()
                .any(|e| e.seq < promoted.seq && lease_ended(e, "h1")),
            "web/b was promoted before h1's lease ended:\n{}",
            describe(&evs)
        );
        assert!(
            !matches!(
                promoted.reason.as_deref(),
                Some("host_suspected" | "host_fenced")
            ),
            "{}",
            describe(&evs)
        );
        restore_h1(c);
        c.wait_status("h3", "web settled on b after the heal", 60, |d| {
            pair_settled(d, "web", "b")
        })
        .await;
    });
}

// ---- d. a failing fence device ---------------------------------------------

#[test]
fn failing_fence_device_is_reported_and_the_app_waits_for_the_lease() {
    run_with("device_fails", &[], async |c| {
        let spec = Spec {
            devices: vec![("h1", Device::Fails)],
            web: Some(None),
            ..Spec::default()
        };
        start(c, &spec, &["web"]).await;
        let epoch0 = app(&c.status("h3").await, "web").epoch;
        let seq0 = events(c, "h3").await.last().map_or(0, |e| e.seq);
        c.net.isolate(c.host("h1")).expect("isolate h1");
        wait_b_promoted(c, "web", epoch0, 60).await;
        let evs: Vec<_> = events(c, "h3")
            .await
            .into_iter()
            .filter(|e| e.seq > seq0)
            .collect();
        let promoted = promotion(&evs, "web", "b", epoch0)
            .unwrap_or_else(|| panic!("no promotion event of web/b:\n{}", describe(&evs)));
        let failed: Vec<_> = evs
            .iter()
            .filter(|e| is(e, "fence", "fence_failed") && mentions_host(&e.message, "h1"))
            .collect();
        assert!(
            failed.iter().any(|e| e.seq < promoted.seq),
            "no fence_failed event for h1 before the promotion:\n{}",
            describe(&evs)
        );
        assert!(
            failed.iter().any(|e| e.message.contains("lease")),
            "no fence_failed event says the lease path still applies:\n{}",
            describe(&evs)
        );
        assert!(
            !evs.iter()
                .any(|e| is(e, "fence", "fence_confirmed") && mentions_host(&e.message, "h1")),
            "a failing device was confirmed:\n{}",
            describe(&evs)
        );
        assert!(
            evs.iter()
                .any(|e| e.seq < promoted.seq && lease_ended(e, "h1")),
            "web/b was promoted before h1's lease ended:\n{}",
            describe(&evs)
        );
        assert_ne!(
            promoted.reason.as_deref(),
            Some("host_fenced"),
            "{}",
            describe(&evs)
        );
        restore_h1(c);
        c.wait_status("h3", "web settled on b after the heal", 60, |d| {
            pair_settled(d, "web", "b")
        })
        .await;
    });
}

// ---- e. random loss must not look like a lost host -------------------------

/// How long the loss lasts.
const LOSS_WINDOW: Duration = Duration::from_secs(60);

/// 30 % loss on the agent hosts (and, with `etcd_too`, the etcd members)
/// for [`LOSS_WINDOW`], on a token-fenced pair with fence devices on every
/// host (a false suspicion would show at once: a fence run and an early
/// promotion).
///
/// With loss on the agent hosts only, nothing changes at all. With loss on
/// etcd too, the heartbeats must still suspect no host; but the store
/// itself may stall longer than a lease (TCP to etcd backs off through
/// lost segments, and etcd's members lose their own raft messages), and
/// then the lease path acts as designed: a primary that cannot renew steps
/// down before its lease can end, and a lease that ends is a lost host. So
/// there a change of role must be explained by such a lease (a host_lost
/// event, or a primary that stepped down on its own without any
/// controller decision), and the pair must settle again after the heal.
async fn random_loss(c: &Cluster, etcd_too: bool) {
    let spec = Spec {
        devices: vec![
            ("h1", Device::Works),
            ("h2", Device::Works),
            ("h3", Device::Works),
        ],
        web: Some(Some("token")),
        ..Spec::default()
    };
    start(c, &spec, &["web"]).await;
    let before = c.status("h3").await;
    let seq0 = events(c, "h3").await.last().map_or(0, |e| e.seq);
    let mut lossy: Vec<_> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| c.host(h).clone())
        .collect();
    if etcd_too {
        lossy.extend(c.etcd.iter().cloned());
    }
    for h in &lossy {
        c.net.loss(h, 0.3).expect("loss");
    }
    tokio::time::sleep(LOSS_WINDOW).await;
    for h in &lossy {
        c.net.heal(h).expect("heal");
    }
    let now = if etcd_too {
        c.wait_status("h3", "the pair to settle again after the heal", 60, |d| {
            !d.stale && (pair_settled(d, "web", "a") || pair_settled(d, "web", "b"))
        })
        .await
    } else {
        c.wait_status("h3", "a fresh status after the loss", 30, |d| !d.stale)
            .await
    };
    let evs: Vec<_> = events(c, "h3")
        .await
        .into_iter()
        .filter(|e| e.seq > seq0)
        .collect();
    // What heartbeats alone would cause: never acceptable.
    let suspicions: Vec<_> = evs
        .iter()
        .filter(|e| is(e, "host", "host_suspected") || e.kind.as_str() == "fence")
        .cloned()
        .collect();
    assert!(
        suspicions.is_empty(),
        "30 % loss made the heartbeats suspect a host:\n{}\nall events:\n{}",
        describe(&suspicions),
        describe(&evs)
    );
    let changes: Vec<_> = evs
        .iter()
        .filter(|e| {
            is(e, "host", "host_lost")
                || e.kind.as_str() == "promoted"
                || e.kind.as_str() == "demoted"
        })
        .cloned()
        .collect();
    if !etcd_too {
        assert!(
            changes.is_empty(),
            "30 % loss on the agent hosts looked like a lost host:\n{}\nall events:\n{}",
            describe(&changes),
            describe(&evs)
        );
        assert_eq!(
            harness::roles_of(&now),
            harness::roles_of(&before),
            "a primary or an epoch changed"
        );
        assert!(pair_settled(&now, "web", "a") || app(&now, "web").primary.as_deref() == Some("a"));
        return;
    }
    let lease_lost = evs.iter().any(|e| is(e, "host", "host_lost"));
    if harness::roles_of(&now) != harness::roles_of(&before) {
        assert!(
            lease_lost,
            "the roles changed under loss on etcd without a lease ending:\nbefore {:?}\nafter {:?}\n{}",
            harness::roles_of(&before),
            harness::roles_of(&now),
            describe(&evs)
        );
    }
    // Never two primaries: the token-fenced sink is not used here, but
    // every promotion must follow the lease that ended.
    if let Some(p) = evs.iter().find(|e| e.kind.as_str() == "promoted") {
        assert!(
            evs.iter()
                .any(|e| is(e, "host", "host_lost") && e.seq < p.seq),
            "a promotion under loss on etcd came before any lease ended:\n{}",
            describe(&evs)
        );
    }
    println!(
        "[loss on etcd] leases ended: {}, promotions: {}",
        evs.iter().filter(|e| is(e, "host", "host_lost")).count(),
        evs.iter().filter(|e| e.kind.as_str() == "promoted").count()
    );
}

#[test]
fn thirty_percent_loss_on_agent_hosts_is_not_a_lost_host() {
    run_with("loss_agents", &[], async |c| random_loss(c, false).await);
}

#[test]
fn thirty_percent_loss_on_agent_hosts_and_etcd_is_not_a_lost_host() {
    run_with("loss_agents_etcd", &[], async |c| {
        random_loss(c, true).await
    });
}
