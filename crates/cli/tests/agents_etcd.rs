//! Production mode: a real 3-member etcd cluster, `tandem topology apply`,
//! and one `tandem agent` process per host (hosts h1 and h2 on 127.0.0.1
//! and 127.0.0.2). A warm-standby pair spans the hosts: killing the
//! primary fails over through etcd; killing the primary's whole agent (its
//! instances die with it) fails over once its lease has expired, and the
//! controller role moves to the surviving agent if it had it.
#![allow(clippy::disallowed_methods)]

mod common;
// The etcd crate's test cluster (real etcd members on free loopback ports).
#[path = "../../store-etcd/tests/common/mod.rs"]
mod etcd;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{demo_get, free_port, signal, tandem};
use tandem_api::types::{AppDoc, Health, Role};
use tandem_client::ApiClient;

fn topology(ports: [u16; 2]) -> String {
    format!(
        r#"
[cluster]
lease_ttl = "2s"
renew_interval = "300ms"
fence_margin = "800ms"
agent_port = {agent_port}

[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "127.0.0.1"

[[hosts]]
name = "h2"
site = "dc1"
address = "127.0.0.2"

[apps.web]
ha = "warm-standby"
command = ["tandem", "demo-app", "--port", "{{ports.http}}", "--bind", "{{address}}",
           "--journal", "journal.{{instance}}.jsonl", "--acting-every-ms", "5"]

[[apps.web.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "100ms"
timeout = "80ms"
failures_before_unhealthy = 2
successes_before_healthy = 1

[apps.web.hook]
kind = "http"
port = "http"
path = "/tandem/role"
timeout = "300ms"

[[apps.web.instances]]
id = "a"
host = "h1"
priority = 10
ports = {{ http = {pa} }}

[[apps.web.instances]]
id = "b"
host = "h2"
ports = {{ http = {pb} }}
"#,
        pa = ports[0],
        pb = ports[1],
        agent_port = free_port(),
    )
}

fn store_url(cluster: &etcd::Cluster) -> String {
    let hosts: Vec<String> = cluster
        .endpoints()
        .iter()
        .map(|e| e.trim_start_matches("http://").to_string())
        .collect();
    format!("etcd://{}", hosts.join(","))
}

/// A `tandem agent` process, killed when dropped (a failing test leaves
/// no agent behind; its instances die with it).
struct AgentProc(Child);

impl std::ops::Deref for AgentProc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for AgentProc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(dir: &Path, store: &str, host: &str, api: Option<&str>) -> AgentProc {
    let log = std::fs::File::create(dir.join(format!("agent-{host}.log"))).expect("log");
    let mut cmd = Command::new(tandem());
    cmd.args(["agent", "--store", store, "--host", host])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    if let Some(api) = api {
        cmd.args(["--api", api]);
    }
    AgentProc(cmd.spawn().expect("spawn tandem agent"))
}

async fn wait_for(
    api: &ApiClient,
    what: &str,
    secs: u64,
    pred: impl Fn(&AppDoc) -> bool,
) -> AppDoc {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(app) = api.app("web").await
            && pred(&app)
        {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            api.app("web").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A production setup: a real 3-member etcd cluster, the topology applied
/// with `tandem topology apply`, agents h1 and h2 (h2 serves the API: it
/// survives what the tests do to h1), and a primary on h1, b backup on h2.
struct Prod {
    store: String,
    dir: tempfile::TempDir,
    ports: [u16; 2],
    base: String,
    h1: AgentProc,
    h2: AgentProc,
    api: ApiClient,
    /// The app once a is primary and b a healthy backup.
    ready: AppDoc,
    /// Last: fields drop in order, the agents before etcd.
    _cluster: etcd::Cluster,
}

impl Prod {
    async fn start() -> Prod {
        Prod::start_with(|_, text| text).await
    }

    /// The same, with the topology edited by `edit` (given the directory).
    async fn start_with(edit: impl FnOnce(&Path, String) -> String) -> Prod {
        let cluster = tokio::task::spawn_blocking(|| etcd::Cluster::start_with(3))
            .await
            .expect("etcd cluster");
        let store = store_url(&cluster);
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = [free_port(), free_port()];
        let base = edit(dir.path(), topology(ports));
        apply(dir.path(), &store, &base);
        let api_addr = format!("127.0.0.1:{}", free_port());
        let h1 = start_agent(dir.path(), &store, "h1", None);
        let h2 = start_agent(dir.path(), &store, "h2", Some(&api_addr));
        let api = ApiClient::new(&api_addr).expect("client");
        let ready = wait_for(&api, "a primary on h1, b backup on h2", 40, |a| {
            a.primary.as_deref() == Some("a")
                && a.instances.iter().all(|i| i.health == Health::Healthy)
                && a.instances[1].role == Role::Backup
        })
        .await;
        Prod {
            _cluster: cluster,
            store,
            dir,
            ports,
            base,
            h1,
            h2,
            api,
            ready,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_etcd_fail_over_a_killed_primary_and_a_killed_host() {
    let p = Prod::start().await;
    let (api, doc, ports) = (&p.api, p.ready.clone(), p.ports);
    let mut h1 = p.h1;
    let _h2 = p.h2;
    assert_eq!(api.status().await.expect("status").store, "etcd");

    // 1. Kill the primary process: b, on the other host, takes over.
    signal(doc.instances[0].pid.expect("pid"), "KILL");
    let after = wait_for(api, "b promoted", 20, |a| a.primary.as_deref() == Some("b")).await;
    assert!(after.epoch > doc.epoch);
    let seen: serde_json::Value = reqwest::Client::new()
        .get(format!("http://127.0.0.2:{}/", ports[1]))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .expect("b answers")
        .json()
        .await
        .expect("json");
    assert_eq!(seen["role"], "primary");

    // a comes back as a backup; switch back to it so the primary is on h1.
    wait_for(api, "a back as a healthy backup", 20, |a| {
        a.instances[0].role == Role::Backup && a.instances[0].health == Health::Healthy
    })
    .await;
    let out = api
        .switchover("web", Some("a"), Duration::from_secs(10))
        .await
        .expect("switchover");
    assert!(
        matches!(out, tandem_client::SwitchoverOutcome::Done { .. }),
        "{out:?}"
    );
    let before_kill = wait_for(api, "a primary again", 10, |a| {
        a.primary.as_deref() == Some("a")
    })
    .await;

    // 2. Kill the whole host h1 (its agent; its instances die with it).
    let t0 = Instant::now();
    let _ = h1.kill();
    let _ = h1.wait();
    let after = wait_for(api, "b promoted after h1's lease expired", 30, |a| {
        a.primary.as_deref() == Some("b") && a.epoch > before_kill.epoch
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "promoted {took:?} after the host died: before its lease (2 s) could have expired"
    );
    assert!(after.instances[0].pid.is_none() || after.instances[0].role != Role::Primary);
    assert!(
        demo_get(ports[0]).await.is_none(),
        "h1's instance died with its agent"
    );
}

/// The journal times (ms) at which `instance` said it acted as primary.
fn primary_times(dir: &Path, instance: &str) -> Vec<(u64, u64)> {
    std::fs::read_to_string(dir.join(format!("journal.{instance}.jsonl")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["role"] == "primary")
        .filter_map(|v| Some((v["t_ms"].as_u64()?, v["epoch"].as_u64()?)))
        .collect()
}

/// SIGSTOP of the primary's agent: the agent cannot fence anything, but
/// its watchdog kills the primary before the lease can expire, so that
/// when b is promoted on the other host, a has stopped acting. Thawed, h1
/// comes back with its instance as a backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_agents_primary_is_killed_by_its_watchdog_before_the_backup_takes_over() {
    let p = Prod::start().await;
    let (api, doc, dir) = (&p.api, p.ready.clone(), p.dir.path());
    let (h1, _h2) = (&p.h1, &p.h2);
    let a_pid = doc.instances[0].pid.expect("a's pid");

    signal(h1.id(), "STOP");
    let after = wait_for(api, "b promoted after h1's lease expired", 30, |a| {
        a.primary.as_deref() == Some("b") && a.epoch > doc.epoch
    })
    .await;
    // Let b act for a while, then look at both journals.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !common::alive(a_pid),
        "the frozen agent's primary is still running"
    );
    let a_last = primary_times(dir, "a")
        .into_iter()
        .filter(|(_, e)| *e == doc.epoch)
        .map(|(t, _)| t)
        .max()
        .expect("a acted as primary");
    let b_first = primary_times(dir, "b")
        .into_iter()
        .filter(|(_, e)| *e == after.epoch)
        .map(|(t, _)| t)
        .min()
        .expect("b acts as primary");
    assert!(
        a_last < b_first,
        "a acted at {a_last} ms, after b began at {b_first} ms: two primaries at once"
    );

    // Thawed, h1 finds its instance gone and its lease expired: a comes
    // back as a backup, b stays primary.
    signal(h1.id(), "CONT");
    let back = wait_for(api, "a back as a healthy backup", 30, |a| {
        a.instances[0].role == Role::Backup && a.instances[0].health == Health::Healthy
    })
    .await;
    assert_eq!(back.primary.as_deref(), Some("b"));
    assert_eq!(back.epoch, after.epoch, "no promotion after the thaw");
}

fn apply(dir: &Path, store: &str, text: &str) {
    let file = dir.join("prod.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(tandem())
        .args(["topology", "apply"])
        .arg(&file)
        .args(["--store", store])
        .output()
        .expect("topology apply");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A topology change is applied per instance: adding or removing another
/// app, or changing one instance, leaves every other instance running
/// (same pid, same role, same epoch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_change_restarts_only_what_it_changes() {
    let p = Prod::start().await;
    let (api, before, store, base) = (&p.api, p.ready.clone(), &p.store, &p.base);
    let dir = p.dir.path();
    let pids = |d: &AppDoc| -> Vec<Option<u32>> { d.instances.iter().map(|i| i.pid).collect() };

    // 1. Add an app on h2.
    let extra_port = free_port();
    let extra = format!(
        r#"
[apps.extra]
ha = "none"
command = ["tandem", "demo-app", "--port", "{{ports.http}}"]

[[apps.extra.instances]]
id = "x"
host = "h2"
ports = {{ http = {extra_port} }}
"#
    );
    apply(dir, store, &format!("{base}{extra}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while demo_get(extra_port).await.is_none() {
        assert!(Instant::now() < deadline, "the new app never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = api.app("web").await.expect("web");
    assert_eq!(pids(&now), pids(&before), "web's instances were restarted");
    assert_eq!(
        (now.primary.as_deref(), now.epoch),
        (Some("a"), before.epoch)
    );

    // 2. Remove it again: it stops and leaves the status.
    apply(dir, store, base);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let gone = demo_get(extra_port).await.is_none()
            && api.status().await.is_ok_and(|s| {
                s.apps
                    .iter()
                    .all(|a| a.name != "extra" || a.instances.is_empty())
            });
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "the removed app is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let now = api.app("web").await.expect("web");
    assert_eq!(pids(&now), pids(&before), "web's instances were restarted");

    // 3. Change b only (its priority): b restarts, a keeps running as primary.
    let changed = base.replacen(
        "id = \"b\"\nhost = \"h2\"",
        "id = \"b\"\nhost = \"h2\"\npriority = 5",
        1,
    );
    assert_ne!(&changed, base, "the topology has instance b on h2");
    apply(dir, store, &changed);
    let after = wait_for(api, "b restarted and healthy", 30, |a| {
        a.instances[1].pid.is_some()
            && a.instances[1].pid != before.instances[1].pid
            && a.instances[1].health == Health::Healthy
            && a.instances[1].role == Role::Backup
    })
    .await;
    assert_eq!(
        after.instances[0].pid, before.instances[0].pid,
        "a was restarted"
    );
    assert_eq!(
        (after.primary.as_deref(), after.epoch),
        (Some("a"), before.epoch)
    );
}

/// The lease as the store granted it: stock etcd (election timeout 1 s)
/// grants no lease under 2 s, so a topology asking for 1 s gets 2 s; the
/// agent warns and `tandem status` shows both. With etcd's heartbeat
/// interval at 50 ms and election timeout at 500 ms (the README's
/// Timings), a 1 s lease is granted as asked and nothing warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_the_store_granted_is_reported_when_longer_than_asked() {
    for (timing, granted) in [(None, 2000), (Some((50, 500)), 1000)] {
        let cluster = tokio::task::spawn_blocking(move || match timing {
            None => etcd::Cluster::start_with(3),
            Some(t) => etcd::Cluster::start_timed(3, t),
        })
        .await
        .expect("etcd cluster");
        let store = store_url(&cluster);
        let dir = tempfile::tempdir().expect("tempdir");
        let text = topology([free_port(), free_port()])
            .replace("lease_ttl = \"2s\"", "lease_ttl = \"1s\"")
            .replace("renew_interval = \"300ms\"", "renew_interval = \"200ms\"")
            .replace("fence_margin = \"800ms\"", "fence_margin = \"500ms\"");
        apply(dir.path(), &store, &text);
        let api_addr = format!("127.0.0.1:{}", free_port());
        let agent = start_agent(dir.path(), &store, "h1", Some(&api_addr));
        let api = ApiClient::new(&api_addr).expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        let hosts = loop {
            if let Ok(s) = api.status().await
                && s.hosts.iter().any(|h| h.name == "h1" && h.up)
            {
                break s.hosts;
            }
            assert!(Instant::now() < deadline, "h1 never came up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let h1 = hosts.iter().find(|h| h.name == "h1").expect("h1");
        let h2 = hosts.iter().find(|h| h.name == "h2").expect("h2");
        assert_eq!(
            (h1.lease_ttl_ms, h1.asked_lease_ttl_ms),
            (Some(granted), 1000),
            "etcd timing {timing:?}"
        );
        assert!(
            !h2.up && h2.lease_ttl_ms.is_none(),
            "h2 has no agent: {h2:?}"
        );
        let shown = Command::new(tandem())
            .args(["status", "--api", &api_addr])
            .output()
            .expect("tandem status");
        let shown = String::from_utf8_lossy(&shown.stdout);
        let h1_row = shown
            .lines()
            .find(|l| l.starts_with("h1 "))
            .unwrap_or_else(|| panic!("no h1 row in:\n{shown}"));
        assert!(h1_row.contains(&format!("{granted} ms")), "{shown}");
        assert_eq!(
            h1_row.contains("lease_ttl asks 1000 ms"),
            granted > 1000,
            "{shown}"
        );
        drop(agent);
        let log = std::fs::read_to_string(dir.path().join("agent-h1.log")).expect("log");
        let warned = log.contains("lease_longer") || log.contains("grants no lease shorter");
        assert_eq!(
            warned,
            granted > 1000,
            "etcd timing {timing:?}, the agent's log:\n{log}"
        );
    }
}

/// `tandem fence HOST`: the host's fence device runs through the
/// controller; once it confirms, the host's primaries are replaced at once
/// (reason `host_fenced`), long before its lease could expire. An unknown
/// host, or no confirmation, is refused before anything is recorded; a
/// device that keeps failing is reported and the request refused, nothing
/// promoted. The fenced host is the one without the controller (a
/// controller that fences its own host dies with it: its successor, once
/// elected, finds the lease gone and nothing left to fence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_fences_a_host_and_its_primaries_move_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let p = Prod::start_with(|dir, text| {
        // Each host's device kills its agent (its instances die with it),
        // or fails while the file `fail` exists.
        let path = dir.join("fence.sh");
        let d = dir.display();
        std::fs::write(
            &path,
            format!("#!/bin/sh\nif [ -e {d}/fail ]; then echo no power switch answers >&2; exit 1; fi\nkill -9 \"$(cat {d}/$1.pid)\"\n"),
        )
        .expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let device = format!("fence = {{ command = [\"{}\", \"{{host}}\"], timeout = \"5s\" }}\n", path.display());
        text.replace("address = \"127.0.0.1\"\n", &format!("address = \"127.0.0.1\"\n{device}"))
            .replace("address = \"127.0.0.2\"\n", &format!("address = \"127.0.0.2\"\n{device}"))
    })
    .await;
    let api = &p.api;
    let dir = p.dir.path();
    let api_addr = api.base_url().to_string();
    let fence = |host: &str| {
        Command::new(tandem())
            .args([
                "fence",
                host,
                "--yes",
                "--timeout",
                "20s",
                "--api",
                &api_addr,
            ])
            .output()
            .expect("tandem fence")
    };
    // h1 is fenced; h2 serves the API and must hold the controller: if h1
    // holds it, h1's agent is restarted (the role moves to h2 for good).
    let controller = |events: &[tandem_core::model::Event]| {
        events
            .iter()
            .rev()
            .find(|e| e.kind == tandem_core::model::EventKind::Controller)
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    let mut h1 = p.h1;
    let events = api.events(None, Some(1000)).await.expect("events");
    if controller(&events).ends_with("h1") {
        let _ = h1.kill();
        let _ = h1.wait();
        wait_for(api, "b promoted after h1's lease ended", 30, |a| {
            a.primary.as_deref() == Some("b")
        })
        .await;
        h1 = start_agent(dir, &p.store, "h1", None);
        wait_for(api, "a back as a healthy backup", 30, |a| {
            a.instances[0].role == Role::Backup && a.instances[0].health == Health::Healthy
        })
        .await;
        let out = api
            .switchover("web", Some("a"), Duration::from_secs(10))
            .await
            .expect("switchover");
        assert!(
            matches!(out, tandem_client::SwitchoverOutcome::Done { .. }),
            "{out:?}"
        );
    }
    let events = api.events(None, Some(1000)).await.expect("events");
    assert!(controller(&events).ends_with("h2"), "{events:#?}");
    std::fs::write(dir.join("h1.pid"), h1.id().to_string()).expect("pid file");
    let (target, on_target) = ("h1", "a");
    let before = wait_for(api, "a primary on h1", 10, |a| {
        a.primary.as_deref() == Some("a")
    })
    .await;

    // Unknown host, and no confirmation (stdin is not a terminal).
    let out = fence("h9");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no host named \"h9\""),
        "{out:?}"
    );
    let out = Command::new(tandem())
        .args(["fence", target, "--api", &api_addr])
        .stdin(Stdio::null())
        .output()
        .expect("tandem fence");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{out:?}"
    );

    let runs_before = fence_runs(&api_addr).await;
    // The device fails three times: refused, nothing promoted.
    std::fs::write(dir.join("fail"), "").expect("fail file");
    let out = fence(target);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("failed 3 times")
            && stderr.contains("exit")
            && stderr.contains("it said: no power switch answers"),
        "{stderr}"
    );
    let now = api.app("web").await.expect("web");
    assert_eq!(
        (now.primary.as_deref(), now.epoch),
        (Some(on_target), before.epoch)
    );

    // The device works: the target's agent is killed, the other instance
    // promoted with reason host_fenced.
    std::fs::remove_file(dir.join("fail")).expect("fail file");
    let t0 = Instant::now();
    let out = fence(target);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = wait_for(api, "the other instance promoted", 20, |a| {
        a.primary.is_some() && a.primary.as_deref() != Some(on_target)
    })
    .await;
    let took = t0.elapsed();
    assert!(after.epoch > before.epoch);
    let events = api.events(None, Some(1000)).await.expect("events");
    let reasons: Vec<&str> = events.iter().filter_map(|e| e.reason.as_deref()).collect();
    let at = |r: &str| reasons.iter().rposition(|x| *x == r);
    assert!(at("fence_failed").is_some(), "{reasons:?}");
    let confirmed = events
        .iter()
        .rposition(|e| e.reason.as_deref() == Some("fence_confirmed"))
        .expect("fence_confirmed event");
    let promoted = events
        .iter()
        .rposition(|e| {
            e.kind == tandem_core::model::EventKind::Promoted
                && e.reason.as_deref() == Some("host_fenced")
        })
        .unwrap_or_else(|| panic!("no promotion for host_fenced: {reasons:?}"));
    assert!(confirmed < promoted, "{reasons:?}");
    // Counted in the controller's metrics (h2's process serves the API):
    // the runs asked here, beyond any run before (when h1's agent was
    // restarted above, h1 was suspected and its device run too).
    let after = fence_runs(&api_addr).await;
    assert_eq!(
        (after.0 - runs_before.0, after.1 - runs_before.1),
        (3, 1),
        "fence runs (failed, confirmed) before {runs_before:?}, after {after:?}"
    );
    eprintln!("tandem fence {target} → the other instance promoted: {took:?} (lease TTL 2 s)");
}

/// The controller's host is lost: the surviving agent suspects it at once
/// (its agent's connection closed) and takes the controller role over
/// without waiting for the lost host's lease (10 s here): it is elected,
/// and records the suspicion, within half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_controllers_role_is_taken_over_before_its_lease_ends() {
    let cluster = tokio::task::spawn_blocking(|| etcd::Cluster::start_with(3))
        .await
        .expect("etcd cluster");
    let store = store_url(&cluster);
    let dir = tempfile::tempdir().expect("tempdir");
    let text = topology([free_port(), free_port()])
        .replace("lease_ttl = \"2s\"", "lease_ttl = \"10s\"")
        .replace("renew_interval = \"300ms\"", "renew_interval = \"1s\"")
        .replace("fence_margin = \"800ms\"", "fence_margin = \"3s\"");
    apply(dir.path(), &store, &text);
    let addrs = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.2:{}", free_port()),
    ];
    let mut agents = [
        Some(start_agent(dir.path(), &store, "h1", Some(&addrs[0]))),
        Some(start_agent(dir.path(), &store, "h2", Some(&addrs[1]))),
    ];
    let apis = [
        ApiClient::new(&addrs[0]).expect("client"),
        ApiClient::new(&addrs[1]).expect("client"),
    ];
    wait_for(&apis[1], "a primary, b backup", 40, |a| {
        a.primary.as_deref() == Some("a") && a.instances[1].role == Role::Backup
    })
    .await;
    let controller = |events: &[tandem_core::model::Event]| {
        events
            .iter()
            .rev()
            .find(|e| e.kind == tandem_core::model::EventKind::Controller)
            .cloned()
    };
    let events = apis[1].events(None, Some(1000)).await.expect("events");
    let first = controller(&events).expect("a controller was elected");
    let lost = usize::from(first.message.ends_with("h2"));
    let (lost_host, survivor) = (["h1", "h2"][lost], ["h1", "h2"][1 - lost]);
    let killed_ms = now_ms();
    if let Some(mut agent) = agents[lost].take() {
        let _ = agent.kill();
        let _ = agent.wait();
    }
    let api = &apis[1 - lost];
    let deadline = Instant::now() + Duration::from_secs(30);
    let (elected, events) = loop {
        let events = api.events(None, Some(1000)).await.unwrap_or_default();
        if let Some(e) = controller(&events).filter(|e| e.message.ends_with(survivor)) {
            break (e, events);
        }
        assert!(
            Instant::now() < deadline,
            "{survivor} never became controller"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        elected.t_ms < killed_ms + 5_000,
        "{survivor} became controller {} ms after {lost_host}'s agent was killed: it waited for the 10 s lease",
        elected.t_ms.saturating_sub(killed_ms)
    );
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("host_suspected")
            && e.message.contains(lost_host)),
        "no host_suspected event for {lost_host}: {events:#?}"
    );
    eprintln!(
        "{lost_host}'s agent killed → {survivor} controller: {} ms",
        elected.t_ms.saturating_sub(killed_ms)
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `tandem_fence_runs_total` of host h1 on the API's `/metrics`: (failed,
/// confirmed).
async fn fence_runs(api: &str) -> (u64, u64) {
    let text = reqwest::get(format!("{}/metrics", api.trim_end_matches('/')))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |outcome: &str| {
        let prefix = format!("tandem_fence_runs_total{{host=\"h1\",outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.trim().parse().expect("a counter"))
    };
    (value("failed"), value("confirmed"))
}
