//! End to end, the modes beyond warm standby: cold standby, singleton,
//! N+1, and maintenance. Real `tandem up`, real demo processes, real
//! signals; singleton's "never two" is checked from the components' own
//! journals, not by asking tandem.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::{Up, alive, demo_get, free_port, overlapping_intervals, primary_intervals, signal};
use tandem_api::types::{Health, Role};
use tandem_client::SwitchoverOutcome;

const HEAD: &str = r#"
[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"
"#;

/// An app block of demo components, one instance per port. Each keeps
/// working (acting) 400 ms after SIGTERM, as a component finishing its work
/// would, so that a successor started too early would overlap it.
fn app(name: &str, ha: &str, ports: &[u16], extra: &str) -> String {
    let mut s = format!(
        r#"
[apps.{name}]
ha = "{ha}"
command = ["tandem", "demo-app", "--port", "{{ports.http}}", "--journal", "{name}.{{instance}}.jsonl", "--freeze-threshold-ms", "500", "--stop-delay-ms", "400"]
stop_timeout = "1s"
{extra}

[apps.{name}.restart]
initial_backoff = "100ms"
stable_after = "1s"

[[apps.{name}.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "100ms"
timeout = "80ms"
failures_before_unhealthy = 2
successes_before_healthy = 1
"#
    );
    for (i, port) in ports.iter().enumerate() {
        let id = (b'a' + i as u8) as char;
        let priority = 100 - 10 * i as i64;
        s.push_str(&format!(
            "\n[[apps.{name}.instances]]\nid = \"{id}\"\nhost = \"local\"\npriority = {priority}\nports = {{ http = {port} }}\n"
        ));
    }
    s
}

fn ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_standby_starts_the_spare_as_primary_when_the_primary_dies() {
    let p = ports(2);
    let up = Up::topology(&format!("{HEAD}{}", app("runtime", "cold-standby", &p, "")));
    let doc = up
        .wait_for_app(
            "runtime",
            "a running as primary, b a stopped spare",
            20,
            |a| {
                a.primary.as_deref() == Some("a")
                    && a.instances[1].role == Role::Standby
                    && a.instances[1].pid.is_none()
            },
        )
        .await;
    assert_eq!(doc.instances[0].role, Role::Primary);
    assert!(demo_get(p[1]).await.is_none(), "the spare is not running");
    let old_epoch = doc.epoch;
    let pid = doc.instances[0].pid.expect("pid");

    signal(pid, "KILL");
    let doc = up
        .wait_for_app("runtime", "the spare started as primary", 15, |a| {
            a.primary.as_deref() == Some("b")
        })
        .await;
    assert!(doc.epoch > old_epoch);
    let seen = demo_get(p[1]).await.expect("b answers");
    assert_eq!(seen["role"], "primary");
    assert_eq!(seen["epoch"], doc.epoch);
    // The failed one is not restarted: it is the new spare.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let doc = up.client().app("runtime").await.expect("app");
    assert_eq!(doc.instances[0].role, Role::Standby);
    assert!(doc.instances[0].pid.is_none());
    assert!(demo_get(p[0]).await.is_none());
}

/// Per process (pid), the span of journal times in which it acted as
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn singleton_never_runs_two_instances_through_kill_and_sigstop() {
    let p = ports(3);
    let up = Up::topology(&format!("{HEAD}{}", app("daemon", "singleton", &p, "")));
    let running = |a: &tandem_api::types::AppDoc| {
        a.primary.is_some() && a.instances.iter().filter(|i| i.pid.is_some()).count() == 1
    };
    let doc = up
        .wait_for_app("daemon", "one instance running", 20, running)
        .await;

    // kill -9, twice; then a live but unhealthy one (it must stop, and
    // finish, before another starts); then SIGSTOP (a frozen singleton is
    // stopped, not joined by a second one).
    let mut killed = Vec::new();
    for round in 0..4 {
        let current = up.client().app("daemon").await.expect("app");
        let holder = current
            .instances
            .iter()
            .find(|i| i.role == Role::Primary)
            .expect("primary");
        let pid = holder.pid.expect("pid");
        tokio::time::sleep(Duration::from_millis(400)).await; // let it act a while
        match round {
            0 | 1 => signal(pid, "KILL"),
            2 => {
                let port = p[current
                    .instances
                    .iter()
                    .position(|i| i.id == holder.id)
                    .expect("index")];
                reqwest::Client::new()
                    .post(format!("http://127.0.0.1:{port}/unhealthy"))
                    .send()
                    .await
                    .expect("make it unhealthy");
            }
            _ => signal(pid, "STOP"),
        }
        killed.push(pid);
        up.wait_for_app("daemon", "another instance running", 20, |a| {
            a.primary.is_some()
                && a.instances
                    .iter()
                    .any(|i| i.role == Role::Primary && i.pid.is_some_and(|p| p != pid))
        })
        .await;
    }
    let frozen = *killed.last().expect("frozen pid");
    let _ = doc;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !alive(frozen),
        "the frozen instance was stopped before another was started"
    );

    let paths: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| up.dir.path().join(format!("daemon.{id}.jsonl")))
        .collect();
    let intervals = primary_intervals(&paths);
    assert!(
        intervals.len() >= 5,
        "expected at least 5 acting processes: {intervals:?}"
    );
    let overlaps = overlapping_intervals(&intervals);
    assert!(overlaps.is_empty(), "two acted at once: {overlaps:?}");
    let last = up.client().app("daemon").await.expect("app");
    assert_eq!(
        last.instances.iter().filter(|i| i.pid.is_some()).count(),
        1,
        "{last:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_plus_1_keeps_its_replicas_and_lists_healthy_members() {
    let p = ports(3);
    let up = Up::topology(&format!(
        "{HEAD}{}",
        app("web", "n-plus-1", &p, "replicas = 2\nmin_healthy = 1")
    ));
    let healthy_two = |a: &tandem_api::types::AppDoc| {
        a.instances
            .iter()
            .filter(|i| i.role == Role::Active && i.health == Health::Healthy)
            .count()
            == 2
    };
    let doc = up
        .wait_for_app("web", "two active, healthy members", 20, healthy_two)
        .await;
    assert_eq!(doc.instances[2].role, Role::Standby, "the +1 waits stopped");
    let members = up.client().members("web").await.expect("members");
    assert_eq!(members.healthy, 2);
    assert_eq!(members.min_healthy, 1);
    let mut ports_seen: Vec<u16> = members.members.iter().filter_map(|m| m.port).collect();
    ports_seen.sort();
    let mut want = vec![p[0], p[1]];
    want.sort();
    assert_eq!(ports_seen, want);

    // Kill a member: it is restarted and the count comes back.
    let pid = doc.instances[0].pid.expect("pid");
    signal(pid, "KILL");
    up.wait_for_app("web", "the killed member restarted and healthy", 15, |a| {
        healthy_two(a) && a.instances[0].pid.is_some_and(|p| p != pid)
    })
    .await;
    assert_eq!(
        up.client().members("web").await.expect("members").healthy,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_holds_every_role_until_it_is_turned_off() {
    let up = Up::pair();
    let (p, b) = up.wait_pair().await;
    let epoch = p.epoch.unwrap();
    let out = up
        .client()
        .maintenance("web", true, Duration::from_secs(10))
        .await
        .expect("maintenance on");
    assert!(matches!(out, SwitchoverOutcome::Done { .. }), "{out:?}");

    // The primary dies: nothing is promoted while in maintenance.
    signal(p.pid.unwrap(), "KILL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let doc = up.app("web").await;
    assert_eq!(doc.epoch, epoch, "a role changed during maintenance");
    assert!(doc.reason.contains("maintenance"), "{}", doc.reason);
    assert_ne!(doc.primary.as_deref(), Some(b.id.as_str()));
    // A switchover is refused, saying why.
    let refused = up
        .client()
        .switchover("web", Some(&b.id), Duration::from_secs(5))
        .await
        .expect("answer");
    assert!(
        matches!(&refused, SwitchoverOutcome::Refused { reason, .. } if reason.contains("maintenance")),
        "{refused:?}"
    );
    let events = up.client().events(None, Some(100)).await.expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("maintenance of web")),
        "{events:#?}"
    );

    // Off: tandem acts again.
    up.client()
        .maintenance("web", false, Duration::from_secs(10))
        .await
        .expect("maintenance off");
    let doc = up
        .wait_for("a primary again after maintenance", 10, |a| {
            a.primary.is_some() && a.epoch > epoch
        })
        .await;
    assert!(doc.epoch > epoch);
}

/// The shipped iWD example runs as its comments say: N+1 members active by
/// priority, the runtime node as a cold standby that fails over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_iwd_example_runs_and_its_runtime_node_fails_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/iwd.toml"
    ));
    let up = Up::start_in(dir, example, [0, 0]);
    for app in ["history", "manager", "web"] {
        let doc = up
            .wait_for_app(app, "two healthy active members", 30, |a| {
                a.instances
                    .iter()
                    .filter(|i| i.role == Role::Active && i.health == Health::Healthy)
                    .count()
                    == 2
            })
            .await;
        // The spare is the one with the lowest priority.
        let spare = doc
            .instances
            .iter()
            .find(|i| i.role == Role::Standby)
            .expect("a spare");
        assert!(spare.priority < 0, "{app}: {spare:?}");
    }
    let doc = up
        .wait_for_app("runtime", "the runtime node running", 30, |a| {
            a.primary.as_deref() == Some("r1")
        })
        .await;
    signal(doc.instances[0].pid.expect("pid"), "KILL");
    let doc = up
        .wait_for_app("runtime", "the spare runtime node started", 20, |a| {
            a.primary.as_deref() == Some("r2")
        })
        .await;
    // r2 is on node2, which listens on 127.0.0.2.
    let seen: serde_json::Value = reqwest::Client::new()
        .get("http://127.0.0.2:8132/")
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("r2 answers")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["role"], "primary");
    assert_eq!(seen["epoch"], doc.epoch);
}

/// The shipped WFM example runs as its comments say: every component in
/// its role, builds dispatched by the server primary through the pool, and
/// they go on from the new primary after the server fails over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wfm_example_runs_and_builds_go_on_across_a_server_failover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/wfm.toml"
    ));
    let up = Up::start_in(dir, example, [0, 0]);
    let server = up
        .wait_for_app("server", "s1 primary, s2 backup", 30, |a| {
            a.primary.as_deref() == Some("s1") && a.instances[1].role == Role::Backup
        })
        .await;
    up.wait_for_app("aggregator", "a primary aggregator", 30, |a| {
        a.primary.is_some()
    })
    .await;
    for app in ["etl", "daemon"] {
        up.wait_for_app(app, "exactly one instance running", 30, |a| {
            a.primary.is_some() && a.instances.iter().filter(|i| i.pid.is_some()).count() == 1
        })
        .await;
    }
    up.wait_for_app("builder", "three workers, free or busy", 30, |a| {
        a.instances
            .iter()
            .all(|i| matches!(i.role, Role::Free | Role::Busy) && i.health == Health::Healthy)
    })
    .await;
    up.wait_for_app("web", "two web members", 30, |a| {
        a.instances
            .iter()
            .filter(|i| i.role == Role::Active)
            .count()
            == 2
    })
    .await;

    wait_built(&up, "s1", server.epoch).await;

    // The server primary dies: s2 takes over and builds go on, under its epoch.
    signal(server.instances[0].pid.expect("pid"), "KILL");
    let after = up
        .wait_for_app("server", "s2 promoted", 20, |a| {
            a.primary.as_deref() == Some("s2")
        })
        .await;
    wait_built(&up, "s2", after.epoch).await;

    // The aggregator primary writes the statistics stream to SQLite.
    let db = up.dir.path().join("wfm-stats.db");
    let rows = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut sink) = tandem_sink::SqliteSink::open(&db, "stats")
                && let Ok(Some(last)) = tandem_sink::Sink::last_position(&mut sink)
                && last > 100
            {
                return last;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the aggregator wrote nothing"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .expect("reader");
    assert!(rows > 100);

    // The links are observed live: every link of a running instance is
    // up; freeze every builder and the server's one-or-more builder link
    // goes down on both servers (and nothing moves: both lost it); thaw
    // them and it comes back.
    let links_state = |doc: &tandem_api::types::LinksDoc, name: &str| -> Vec<String> {
        doc.links
            .iter()
            .filter(|l| l.name == name)
            .flat_map(|l| {
                l.instances
                    .iter()
                    .map(|i| format!("{}={}", i.instance, i.state))
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let doc = up.client().links().await.expect("links");
        let judged: Vec<_> = doc.links.iter().flat_map(|l| l.instances.iter()).collect();
        if judged.iter().all(|i| i.state != "down")
            && judged.iter().filter(|i| i.state == "up").count() >= 10
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "links never all up: {doc:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let builders: Vec<u32> = up
        .app("builder")
        .await
        .instances
        .iter()
        .filter_map(|i| i.pid)
        .collect();
    assert_eq!(builders.len(), 3, "{builders:?}");
    let server_before = up.app("server").await;
    for pid in &builders {
        signal(*pid, "STOP");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let doc = up.client().links().await.expect("links");
        if links_state(&doc, "server->builder") == ["s1=down", "s2=down"] {
            break;
        }
        if std::time::Instant::now() > deadline {
            for pid in &builders {
                signal(*pid, "CONT");
            }
            panic!("the builder link never went down: {doc:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for pid in &builders {
        signal(*pid, "CONT");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let doc = up.client().links().await.expect("links");
        if links_state(&doc, "server->builder") == ["s1=up", "s2=up"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the builder link never came back: {doc:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server_after = up.app("server").await;
    assert_eq!(
        (server_after.primary, server_after.epoch),
        (server_before.primary, server_before.epoch),
        "a link every server lost moved the server's primary"
    );
}

/// Waits until the server instance `id` journaled a completed build at
/// `epoch`.
async fn wait_built(up: &Up, id: &str, epoch: u64) {
    let path = up.dir.path().join(format!("server.{id}.jsonl"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let built = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["event"] == "built" && v["epoch"] == epoch);
        if built {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no build by {id} at epoch {epoch}\n{}",
            up.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The shipped Workspace example runs as its comments say: conf pinned to
/// dc1, a forced site failure makes it read-only and moves web to dc2, a
/// promotion starts conf in dc2 where the proxy reaches it, and the
/// restored dc1 comes back as a spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workspace_example_runs_and_a_failed_site_is_promoted_over_and_restored() {
    use tandem_api::types::SiteRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let example = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/workspace.toml"
    ));
    let up = Up::start_in(dir, example, [0, 0]);
    let api = up.client();
    up.wait_for_app("conf", "conf/a primary", 30, |a| {
        a.primary.as_deref() == Some("a")
    })
    .await;
    let active = |a: &tandem_api::types::AppDoc, ids: &[&str]| {
        ids.iter().all(|id| {
            a.instances
                .iter()
                .any(|i| i.id == *id && i.role == Role::Active && i.health == Health::Healthy)
        })
    };
    up.wait_for_app("web", "d1a, d1b and d2a serving", 30, |a| {
        active(a, &["d1a", "d1b", "d2a"])
    })
    .await;
    let through_proxy = async |addr: &str| -> Option<String> {
        let v: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{addr}:8631/"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["instance"].as_str().map(str::to_owned)
    };
    let ask = async |action: &str, site: &str, confirm: Option<&str>| {
        let request = SiteRequest {
            force: confirm.is_some(),
            confirm: confirm.map(str::to_owned),
        };
        api.site_action(site, action, &request, Duration::from_secs(10))
            .await
            .expect("asked")
    };
    // Refused while dc1 holds its leases.
    assert!(matches!(
        ask("promote", "dc2", None).await,
        SwitchoverOutcome::Refused { .. }
    ));
    assert!(matches!(
        ask("fail", "dc1", None).await,
        SwitchoverOutcome::Refused { .. }
    ));
    // Forced: dc1 declared failed.
    assert!(matches!(
        ask("fail", "dc1", Some("dc1")).await,
        SwitchoverOutcome::Done { .. }
    ));
    up.wait_for_app("web", "web serving from dc2 only", 30, |a| {
        active(a, &["d2a", "d2b"])
            && a.instances
                .iter()
                .filter(|i| i.id.starts_with("d1"))
                .all(|i| i.role != Role::Active)
    })
    .await;
    // The proxy in dc1, stopped by tandem (SIGTERM), stops cleanly.
    up.wait_for_app("confproxy", "p1 stopped cleanly", 30, |a| {
        a.instances.iter().any(|i| {
            i.id == "p1"
                && i.role != Role::Active
                && i.last_exit
                    .as_deref()
                    .is_some_and(|e| e.starts_with("exited with code 0"))
        })
    })
    .await;
    let doc = up
        .wait_for_app("conf", "conf read-only", 30, |a| a.read_only.is_some())
        .await;
    assert!(doc.primary.is_none());
    let err = api.primary_for_write("conf").await.expect_err("read-only");
    assert!(
        err.to_string()
            .starts_with("read-only: site dc1 was declared failed"),
        "{err}"
    );
    let notices = up.dir.path().join("workspace-notices.p2");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&notices)
        .unwrap_or_default()
        .contains("read-only confproxy->conf")
    {
        assert!(std::time::Instant::now() < deadline, "p2 was never told");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Promote dc2: conf starts there with the next epoch, the proxy there
    // reaches it.
    assert!(matches!(
        ask("promote", "dc2", None).await,
        SwitchoverOutcome::Done { .. }
    ));
    let doc = up
        .wait_for_app("conf", "conf/b primary", 30, |a| {
            a.primary.as_deref() == Some("b")
        })
        .await;
    assert_eq!(doc.epoch, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while through_proxy("127.0.0.2").await.as_deref() != Some("b") {
        assert!(
            std::time::Instant::now() < deadline,
            "the dc2 proxy never reached conf/b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Restored: dc1 a spare, its desktop runs again, conf stays in dc2.
    assert!(matches!(
        ask("restore", "dc1", None).await,
        SwitchoverOutcome::Done { .. }
    ));
    up.wait_for_app("web", "d1a serving again", 30, |a| active(a, &["d1a"]))
        .await;
    let status = up.status().await;
    let dc1 = status.sites.iter().find(|s| s.name == "dc1").expect("dc1");
    assert_eq!((dc1.role.as_str(), dc1.state.as_str()), ("spare", "up"));
    let conf = status.apps.iter().find(|a| a.name == "conf").expect("conf");
    assert_eq!(conf.primary.as_deref(), Some("b"));
    assert_eq!(conf.epoch, 2);
}
