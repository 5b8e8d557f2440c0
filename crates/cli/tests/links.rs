//! Links observed at run time, end to end through `tandem up`: each
//! running instance probes its links from its host; `tandem links` and
//! `GET /v1/links` judge them per instance; a lost or regained target is
//! an event; observing links moves no role.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{DemoHook, Up, free_port, pair_topology, signal, tandem};
use tandem_api::types::{LinkDoc, LinksDoc};
use tokio::net::TcpListener;

/// The pair `web` (a, b), a `client` app linked to web's primary, and an
/// endpoint `switch` (a listener of the test's) that web links to.
fn topology(ports: [u16; 2], client: u16, switch: u16) -> String {
    format!(
        r#"{pair}
[apps.client]
ha = "none"
command = ["tandem", "demo-app", "--port", "{{ports.http}}"]

[[apps.client.instances]]
id = "c"
host = "local"
ports = {{ http = {client} }}

{switch}
[[links]]
from = "client"
to = "web"
cardinality = "one"
port = "http"
interval = "100ms"
timeout = "80ms"
failures_before_down = 2
successes_before_up = 1
"#,
        pair = pair_topology(ports[0], ports[1], DemoHook::Http),
        switch = common::switch_link(switch),
    )
}

/// Accepts connections on `port` until dropped.
async fn switch(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the switch");
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }
    })
}

fn link<'a>(doc: &'a LinksDoc, name: &str) -> &'a LinkDoc {
    doc.links
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no link {name} in {doc:?}"))
}

/// Waits until `pred` holds for the links document.
async fn wait_links(up: &Up, what: &str, pred: impl Fn(&LinksDoc) -> bool) -> LinksDoc {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let doc = up.client().links().await.expect("GET /v1/links");
        if pred(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "{what}: never; last {doc:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn states(l: &LinkDoc) -> Vec<(String, String)> {
    l.instances
        .iter()
        .map(|i| (i.instance.clone(), i.state.clone()))
        .collect()
}

fn all(l: &LinkDoc, state: &str) -> bool {
    l.instances.iter().all(|i| i.state == state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_endpoint_shows_down_on_every_instance_is_an_event_and_moves_no_role() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port()];
    let switch_port = free_port();
    let text = topology(ports, free_port(), switch_port);
    let file = dir.path().join("links.toml");
    std::fs::write(&file, text).expect("write topology");
    let listener = switch(switch_port).await;
    let up = Up::start_in(dir, file, ports);
    let (primary, _) = up.wait_pair().await;
    let epoch = up.app("web").await.epoch;

    wait_links(&up, "uplink up on a and b", |d| {
        all(link(d, "uplink"), "up")
    })
    .await;
    let out = Command::new(tandem())
        .args(["links", "--api", &up.api, "--app", "web"])
        .output()
        .expect("tandem links");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("uplink") && table.contains("web/a") && table.contains("UP"),
        "{table}"
    );

    // The switch goes away: every instance's uplink goes down.
    listener.abort();
    let _ = listener.await;
    let doc = wait_links(&up, "uplink down on a and b", |d| {
        all(link(d, "uplink"), "down")
    })
    .await;
    let uplink = link(&doc, "uplink");
    assert_eq!(uplink.to_kind, "endpoint");
    for i in &uplink.instances {
        assert!(
            i.detail.contains("switch is unreachable") && i.detail.contains("refused"),
            "{i:?}"
        );
    }
    let events = up.client().events(None, Some(200)).await.expect("events");
    for instance in ["a", "b"] {
        assert!(
            events.iter().any(|e| e.kind.as_str() == "link"
                && e.reason.as_deref() == Some("link_down")
                && e.instance.as_deref() == Some(instance)
                && e.message.contains("link uplink to switch is down")),
            "no link_down event for web/{instance}: {events:#?}"
        );
    }
    // Observing links moves no role (link-aware failover is not asked).
    let now = up.app("web").await;
    assert_eq!(
        (now.primary.as_deref(), now.epoch),
        (Some(primary.id.as_str()), epoch),
        "{now:?}"
    );

    // The switch returns: up again, with an event each.
    let _listener = switch(switch_port).await;
    wait_links(&up, "uplink up again", |d| all(link(d, "uplink"), "up")).await;
    let events = up.client().events(None, Some(200)).await.expect("events");
    let ups = events
        .iter()
        .filter(|e| e.kind.as_str() == "link" && e.reason.as_deref() == Some("link_up"))
        .count();
    assert!(ups >= 2, "{events:#?}");

    let out = Command::new(tandem())
        .args(["links", "--api", &up.api, "--app", "nope"])
        .output()
        .expect("tandem links");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no link goes from or to \"nope\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_link_follows_the_primary_of_the_app_it_goes_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port()];
    let switch_port = free_port();
    let file = dir.path().join("links.toml");
    std::fs::write(&file, topology(ports, free_port(), switch_port)).expect("write topology");
    let up = Up::start_in(dir, file, ports);
    let (primary, backup) = up.wait_pair().await;
    let want = format!("web/{} (the primary) is reachable", primary.id);
    wait_links(&up, "client's link judged by web's primary", |d| {
        let l = link(d, "client->web");
        all(l, "up") && l.instances.iter().all(|i| i.detail == want)
    })
    .await;

    // The primary is killed: until it restarts, the client's link is
    // judged by the new primary, which it reaches.
    signal(primary.pid.expect("pid"), "KILL");
    let want = format!("web/{} (the primary) is reachable", backup.id);
    let doc = wait_links(&up, "client's link judged by the new primary", |d| {
        let l = link(d, "client->web");
        l.instances.iter().all(|i| i.detail == want)
    })
    .await;
    let l = link(&doc, "client->web");
    assert_eq!(states(l), [("c".to_string(), "up".to_string())]);
}

/// The link directory of `web/{id}` under `tandem up`'s data directory.
fn links_dir(up: &Up, id: &str) -> std::path::PathBuf {
    fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
            if path.is_dir()
                && let Some(found) = find(&path, name)
            {
                return Some(found);
            }
        }
        None
    }
    let name = format!("web.{id}.links");
    find(up.dir.path(), &name).unwrap_or_else(|| panic!("no {name} under {:?}", up.dir.path()))
}

/// An instance reports its own link (`probe = "reported"`, the file in
/// `$TANDEM_LINKS_DIR`): the primary says its link is down while the
/// backup's is up, and it is switched over, demoted first; the event says
/// what the instance reported; the journals show no two primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_reports_its_link_down_is_switched_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ports = [free_port(), free_port()];
    let text = pair_topology(ports[0], ports[1], DemoHook::Http).replacen(
        "ha = \"warm-standby\"\n",
        "ha = \"warm-standby\"\nlink_hold_down = \"200ms\"\nlink_switchover_interval = \"2s\"\n",
        1,
    ) + &format!(
        r#"
[[endpoints]]
name = "switch"
address = "127.0.0.1"
port = {}

[[links]]
name = "acd"
from = "web"
to = "switch"
cardinality = "one"
probe = "reported"
interval = "100ms"
timeout = "80ms"
failures_before_down = 2
successes_before_up = 1
"#,
        free_port()
    );
    assert!(text.contains("link_hold_down"), "{text}");
    let file = dir.path().join("reported.toml");
    std::fs::write(&file, text).expect("write topology");
    let up = Up::start_in(dir, file, ports);
    let (primary, backup) = up.wait_pair().await;
    let epoch = up.app("web").await.epoch;
    for id in [&primary.id, &backup.id] {
        std::fs::write(links_dir(&up, id).join("acd"), "up\n").expect("report up");
    }
    wait_links(&up, "acd up on a and b", |d| all(link(d, "acd"), "up")).await;
    let seq0 = up
        .client()
        .events(None, Some(1))
        .await
        .expect("events")
        .last()
        .map_or(0, |e| e.seq);

    std::fs::write(
        links_dir(&up, &primary.id).join("acd"),
        "# written by the component\ndown lost the ACD link to the switch\n",
    )
    .expect("report down");
    let now = up
        .wait_for("the backup promoted for the reported link", 15, |a| {
            a.primary.as_deref() == Some(backup.id.as_str()) && a.epoch > epoch
        })
        .await;
    let events = up
        .client()
        .events(Some(seq0), Some(200))
        .await
        .expect("events");
    let promoted = events
        .iter()
        .find(|e| e.kind.as_str() == "promoted")
        .unwrap_or_else(|| panic!("no promotion: {events:#?}"));
    assert_eq!(
        promoted.reason.as_deref(),
        Some("link_lost"),
        "{promoted:?}"
    );
    assert!(
        promoted
            .message
            .contains("reported down by the instance: lost the ACD link to the switch"),
        "{}",
        promoted.message
    );
    assert!(
        events.iter().any(|e| e.kind.as_str() == "demoted"
            && e.reason.as_deref() == Some("link_lost")
            && e.seq < promoted.seq),
        "{events:#?}"
    );
    assert_eq!(now.epoch, epoch + 1, "{now:?}");
    let paths: Vec<_> = ["a", "b"]
        .iter()
        .map(|id| up.dir.path().join(format!("journal.{id}.jsonl")))
        .collect();
    let intervals = common::primary_intervals(&paths);
    let overlaps = common::overlapping_intervals(&intervals);
    assert!(overlaps.is_empty(), "two acted at once: {overlaps:?}");
    assert!(intervals.len() >= 2, "{intervals:?}");
}
