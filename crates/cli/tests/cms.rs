//! The CMS deployment end to end, on namespaced hosts with a real etcd: a
//! warm-standby pair of demo CMS (`tandem demo-cms`: a on h1, b on h2),
//! each with two switch links in the exclusive group `acd` — to the main
//! switch on host sw1 and to the survivable one on sw2 (`tandem
//! demo-switch`, which tandem does not run) — and admin data that tandem
//! mirrors from the primary to the backup.
//!
//! The survivable switch here does not consult the main one before it
//! accepts a CMS (it would refuse a second link itself): the switches'
//! journals then show what tandem alone did, and they are the ground truth
//! of "two links of a group are never active at once". Needs root, `ip`,
//! `iptables` and etcd.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "partitions/harness.rs"]
mod harness;
#[path = "fencing/support.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use harness::{Cluster, app, run_with};
use support::{describe, events, is};
use tandem_api::types::{Health, StatusDoc};
use tandem_core::model::Event;

const CMS_PORT: u16 = 8301;
const MAIN_PORT: u16 = 7001;
const SURV_PORT: u16 = 7002;
const MAIN_CTL: u16 = 7101;
const SURV_CTL: u16 = 7102;
/// `link_switchover_interval`: link-driven switchovers never closer.
const INTERVAL_MS: u64 = 3000;
const LINKS: [&str; 2] = ["acd-main", "acd-survivable"];

fn topology(c: &Cluster) -> String {
    let addr = |h: &str| c.host(h).addr.to_string();
    let dir = c.dir.path().display().to_string();
    let tandem = common::tandem().display().to_string();
    let mut t = c.topology_head();
    t.push_str(&format!(
        r#"
[apps.cms]
ha = "warm-standby"
command = ["{tandem}", "demo-cms", "--listen", "{{address}}:{{ports.http}}",
           "--link", "acd-main={sw1}:{MAIN_PORT}",
           "--link", "acd-survivable={sw2}:{SURV_PORT}",
           "--probe-ms", "100",
           "--journal", "{dir}/cms.{{instance}}.jsonl",
           "--admin-dir", "{dir}/admin.{{instance}}"]
admin_dir = "{dir}/admin.{{instance}}"
link_hold_down = "300ms"
link_switchover_interval = "{INTERVAL_MS}ms"
stop_timeout = "2s"

[[apps.cms.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "200ms"
timeout = "150ms"
failures_before_unhealthy = 3
successes_before_healthy = 1

[apps.cms.hook]
kind = "http"
port = "http"
path = "/tandem/role"
timeout = "500ms"

[[apps.cms.instances]]
id = "a"
host = "h1"
priority = 10
ports = {{ http = {CMS_PORT} }}

[[apps.cms.instances]]
id = "b"
host = "h2"
ports = {{ http = {CMS_PORT} }}

[[endpoints]]
name = "switch-main"
address = "{sw1}"
port = {MAIN_PORT}

[[endpoints]]
name = "switch-survivable"
address = "{sw2}"
port = {SURV_PORT}
"#,
        sw1 = addr("sw1"),
        sw2 = addr("sw2"),
    ));
    for (name, to) in [
        ("acd-main", "switch-main"),
        ("acd-survivable", "switch-survivable"),
    ] {
        t.push_str(&format!(
            r#"
[[links]]
name = "{name}"
from = "cms"
to = "{to}"
cardinality = "one"
exclusive = "acd"
probe = "reported"
interval = "100ms"
timeout = "80ms"
failures_before_down = 2
successes_before_up = 2
hook = {{ kind = "http", port = "http", path = "/tandem/link", timeout = "3s" }}
"#
        ));
    }
    t
}

/// The two switches, each on its own host, journaling every session.
fn start_switches(c: &Cluster) -> Vec<Child> {
    let dir = c.dir.path();
    [
        ("sw1", "main", MAIN_PORT, MAIN_CTL),
        ("sw2", "survivable", SURV_PORT, SURV_CTL),
    ]
    .into_iter()
    .map(|(h, name, port, ctl)| {
        let host = c.host(h);
        let mut cmd = Command::new(common::tandem());
        cmd.args(["demo-switch", "--name", name])
            .args(["--listen", &format!("{}:{port}", host.addr)])
            .args(["--control", &format!("{}:{ctl}", host.addr)])
            .arg("--journal")
            .arg(dir.join(format!("switch-{name}.jsonl")))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        harness::die_with_parent(&mut cmd);
        c.net.spawn(host, &mut cmd).expect("spawn a switch")
    })
    .collect()
}

/// Starts etcd's users: the topology, the switches, the agents (h3 first:
/// it becomes controller), and waits for a settled pair with a primary.
async fn start(c: &Cluster) -> Vec<Child> {
    let switches = start_switches(c);
    c.apply_topology_text("cms.toml", &topology(c));
    c.start_agent("h3");
    c.wait_controller("h3 to be elected controller", 30, |h| h == "h3")
        .await;
    c.start_agent("h1");
    c.wait_status("h3", "cms/a primary", 40, |d| {
        app(d, "cms").primary.as_deref() == Some("a")
    })
    .await;
    c.start_agent("h2");
    c.wait_status("h3", "a settled pair", 60, |d| settled(d).is_some())
        .await;
    wait_active(c, "a", "acd-main", 30).await;
    wait_active(c, "b", "acd-main", 30).await;
    switches
}

/// The primary, once both instances are healthy.
fn settled(d: &StatusDoc) -> Option<String> {
    let a = app(d, "cms");
    (!d.stale && a.instances.iter().all(|i| i.health == Health::Healthy))
        .then(|| a.primary.clone())
        .flatten()
}

/// The link of group `acd` that tandem shows active on `instance`.
async fn active_of(c: &Cluster, instance: &str) -> Option<String> {
    let doc = c.api("h3").links().await.ok()?;
    doc.links
        .iter()
        .filter(|l| LINKS.contains(&l.name.as_str()))
        .find(|l| {
            l.instances
                .iter()
                .any(|i| i.instance == instance && i.active == Some(true))
        })
        .map(|l| l.name.clone())
}

async fn wait_active(c: &Cluster, instance: &str, link: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = active_of(c, instance).await;
        if now.as_deref() == Some(link) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cms/{instance} never had {link} active (it has {now:?}): {:#?}",
            c.api("h3").links().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Events after `seq`.
async fn events_after(c: &Cluster, seq: u64) -> Vec<Event> {
    events(c, "h3")
        .await
        .into_iter()
        .filter(|e| e.seq > seq)
        .collect()
}

async fn last_seq(c: &Cluster) -> u64 {
    events(c, "h3").await.last().map_or(0, |e| e.seq)
}

/// One session of a CMS on a switch, from the switch's journal.
#[derive(Debug, Clone)]
struct Session {
    switch: String,
    open_ns: u64,
    /// `u64::MAX` while it is open.
    close_ns: u64,
}

/// Every session of each CMS on either switch, from their journals.
fn sessions(dir: &Path) -> BTreeMap<String, Vec<Session>> {
    let mut out: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    for name in ["main", "survivable"] {
        let path = dir.join(format!("switch-{name}.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: bad line {line:?}: {e}", path.display()));
            let who = v["who"].as_str().unwrap_or_default().to_string();
            let at = v["at_ns"].as_u64().unwrap_or_default();
            let list = out.entry(who).or_default();
            match v["event"].as_str() {
                Some("open") => list.push(Session {
                    switch: name.into(),
                    open_ns: at,
                    close_ns: u64::MAX,
                }),
                Some("close") => {
                    if let Some(s) = list
                        .iter_mut()
                        .rev()
                        .find(|s| s.switch == name && s.close_ns == u64::MAX)
                    {
                        s.close_ns = at;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// From the switches' own journals: no CMS ever had a session open on
/// both switches at once. Returns how many sessions were checked.
fn assert_never_two_active(dir: &Path) -> usize {
    let all = sessions(dir);
    let mut checked = 0;
    for (who, list) in &all {
        checked += list.len();
        for (i, x) in list.iter().enumerate() {
            for y in &list[i + 1..] {
                let overlap = x.open_ns < y.close_ns && y.open_ns < x.close_ns;
                assert!(
                    !(overlap && x.switch != y.switch),
                    "{who} had sessions on both switches at once: {x:?} and {y:?}"
                );
            }
        }
    }
    checked
}

/// The start times of link-driven switchovers (their demotions).
fn link_switchovers(evs: &[Event]) -> Vec<u64> {
    evs.iter()
        .filter(|e| is(e, "demoted", "link_lost"))
        .map(|e| e.t_ms)
        .collect()
}

/// A small deterministic generator (no dependency for a test's dice).
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn other(id: &str) -> &'static str {
    if id == "a" { "b" } else { "a" }
}

fn host_of(id: &str) -> &'static str {
    if id == "a" { "h1" } else { "h2" }
}

#[test]
fn cms_links_move_fail_over_survive_flapping_and_fence_two_active() {
    run_with("cms_links", &["sw1", "sw2"], async |c| {
        let mut switches = start(c).await;
        let (h1, h2) = (c.host("h1"), c.host("h2"));
        let (sw1, sw2) = (c.host("sw1"), c.host("sw2"));

        // 1. cms/a loses the main switch only: it moves to the survivable
        //    link (main disabled first), and nothing fails over.
        let seq0 = last_seq(c).await;
        let epoch0 = app(&c.status("h3").await, "cms").epoch;
        c.net.cut(h1, sw1).expect("cut h1 from sw1");
        wait_active(c, "a", "acd-survivable", 20).await;
        let evs = events_after(c, seq0).await;
        let disabled = evs
            .iter()
            .find(|e| is(e, "link", "link_disabled") && e.instance.as_deref() == Some("a"))
            .unwrap_or_else(|| panic!("acd-main was not disabled:\n{}", describe(&evs)));
        let enabled = evs
            .iter()
            .find(|e| is(e, "link", "link_enabled") && e.instance.as_deref() == Some("a"))
            .unwrap_or_else(|| panic!("acd-survivable was not enabled:\n{}", describe(&evs)));
        assert!(
            disabled.seq < enabled.seq && enabled.message.contains("acd-survivable"),
            "{}",
            describe(&evs)
        );
        let now = c.status("h3").await;
        assert_eq!(
            (app(&now, "cms").primary.as_deref(), app(&now, "cms").epoch),
            (Some("a"), epoch0),
            "the primary moved although it still reaches the switch"
        );
        c.net.heal(h1).expect("heal h1");
        wait_active(c, "a", "acd-main", 20).await;

        // 2. The primary loses the whole switch while the backup has it:
        //    switched over without a human; the event names the group.
        let seq1 = last_seq(c).await;
        c.net.cut(h1, sw1).expect("cut h1 from sw1");
        c.net.cut(h1, sw2).expect("cut h1 from sw2");
        c.wait_status("h3", "cms/b promoted for the lost switch", 30, |d| {
            let a = app(d, "cms");
            a.primary.as_deref() == Some("b") && a.epoch > epoch0
        })
        .await;
        let evs = events_after(c, seq1).await;
        let promoted = evs
            .iter()
            .find(|e| e.kind.as_str() == "promoted" && e.instance.as_deref() == Some("b"))
            .unwrap_or_else(|| panic!("no promotion of cms/b:\n{}", describe(&evs)));
        assert_eq!(
            promoted.reason.as_deref(),
            Some("link_lost"),
            "{}",
            describe(&evs)
        );
        assert!(
            promoted
                .message
                .contains("primary cms/a lost its link group acd for")
                && promoted.message.contains("cms/b has it"),
            "{}",
            promoted.message
        );
        // The switch lost everywhere: nothing moves, and the event says so.
        let epoch2 = app(&c.status("h3").await, "cms").epoch;
        let seq2 = evs.last().map_or(seq1, |e| e.seq);
        c.net.cut(h2, sw1).expect("cut h2 from sw1");
        c.net.cut(h2, sw2).expect("cut h2 from sw2");
        tokio::time::sleep(Duration::from_millis(INTERVAL_MS + 2000)).await;
        let now = c.status("h3").await;
        assert_eq!(
            (app(&now, "cms").primary.as_deref(), app(&now, "cms").epoch),
            (Some("b"), epoch2),
            "the primary moved although every instance lost the switch"
        );
        let evs = events_after(c, seq2).await;
        assert!(
            evs.iter().any(|e| is(e, "link", "link_held")
                && e.message.contains("every instance of cms has lost it too")),
            "{}",
            describe(&evs)
        );
        c.net.heal(h1).expect("heal h1");
        c.net.heal(h2).expect("heal h2");
        wait_active(c, "a", "acd-main", 30).await;
        wait_active(c, "b", "acd-main", 30).await;

        // 3. 100 random flaps of the links of either CMS, one switch or
        //    both at a time.
        let seq3 = last_seq(c).await;
        let mut dice = Dice(0x5eed_cafe);
        for _ in 0..100 {
            let h = if dice.below(2) == 0 { h1 } else { h2 };
            let mask = 1 + dice.below(3);
            let cut: Vec<_> = [(1, sw1), (2, sw2)]
                .into_iter()
                .filter(|(bit, _)| mask & bit != 0)
                .map(|(_, s)| s)
                .collect();
            for s in &cut {
                c.net.cut(h, s).expect("cut");
            }
            tokio::time::sleep(Duration::from_millis(100 + dice.below(800))).await;
            for s in &cut {
                c.net.uncut(h, s).expect("uncut");
            }
            tokio::time::sleep(Duration::from_millis(dice.below(300))).await;
        }
        c.wait_status("h3", "a settled pair after the flaps", 60, |d| {
            settled(d).is_some()
        })
        .await;
        wait_active(c, "a", "acd-main", 30).await;
        wait_active(c, "b", "acd-main", 30).await;
        let evs = events_after(c, seq3).await;
        let starts = link_switchovers(&evs);
        for w in starts.windows(2) {
            assert!(
                w[1] - w[0] >= INTERVAL_MS,
                "two link-driven switchovers {} ms apart (interval {INTERVAL_MS} ms):\n{}",
                w[1] - w[0],
                describe(&evs)
            );
        }
        let checked = assert_never_two_active(c.dir.path());
        let moves = evs.iter().filter(|e| is(e, "link", "link_enabled")).count();
        println!(
            "[cms_links] 100 flaps: {moves} links enabled, {} link-driven switchovers, {checked} switch sessions, never two at once",
            starts.len()
        );
        assert!(
            moves >= 20,
            "the flaps moved almost nothing:\n{}",
            describe(&evs)
        );

        // 4. A CMS that opens both links at once is fenced (killed), and
        //    the event says why.
        let primary = settled(&c.status("h3").await).expect("a primary");
        let victim = other(&primary);
        let seq4 = last_seq(c).await;
        let url = format!(
            "http://{}:{CMS_PORT}/misbehave/both",
            c.host(host_of(victim)).addr
        );
        let _ = reqwest::Client::new().post(&url).send().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let evs = events_after(c, seq4).await;
            if evs.iter().any(|e| {
                e.kind.as_str() == "instance-exited"
                    && e.instance.as_deref() == Some(victim)
                    && e.message.contains(
                        "reported links acd-main and acd-survivable of exclusive group acd active at once: killed (fenced)",
                    )
            }) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cms/{victim} was not fenced:\n{}",
                describe(&evs)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.wait_status("h3", "the fenced CMS back", 60, |d| settled(d).is_some())
            .await;

        // 5. A backup frozen for longer than the switch's liveness loses its
        //    session on the switch; thawed, it says so (`.active`), and
        //    tandem enables its link again.
        let d = c.status("h3").await;
        let primary = settled(&d).expect("a settled pair");
        let frozen = other(&primary);
        wait_active(c, frozen, "acd-main", 30).await;
        let pid = app(&d, "cms")
            .instances
            .iter()
            .find(|i| i.id == frozen)
            .and_then(|i| i.pid)
            .expect("the backup's pid");
        let seq5 = last_seq(c).await;
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let evs = events_after(c, seq5).await;
            let again = evs
                .iter()
                .any(|e| is(e, "link", "link_enabled") && e.instance.as_deref() == Some(frozen));
            if again && active_of(c, frozen).await.as_deref() == Some("acd-main") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cms/{frozen}'s link was not enabled again after its session was lost:\n{}",
                describe(&evs)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let open: Vec<_> = sessions(c.dir.path())
            .remove(&format!("cms/{frozen}"))
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.close_ns == u64::MAX)
            .collect();
        assert_eq!(
            open.len(),
            1,
            "cms/{frozen} should have one open session: {open:?}"
        );
        for s in &mut switches {
            let _ = s.kill();
            let _ = s.wait();
        }
    });
}

/// The admin edits present in `dir` (`edit-N` files), by number.
fn edits(dir: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("edit-")?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn admin_dir(c: &Cluster, id: &str) -> PathBuf {
    c.dir.path().join(format!("admin.{id}"))
}

/// Writes edit `n` into `dir` whole (written beside it, renamed in), and
/// appends `n` to its log.
fn write_edit(c: &Cluster, dir: &Path, n: u64) {
    let staged = c.dir.path().join(format!("staged-{n}"));
    if std::fs::write(&staged, format!("edit {n}\n")).is_ok() {
        let _ = std::fs::rename(&staged, dir.join(format!("edit-{n}")));
    }
}

#[test]
fn admin_data_written_continuously_survives_twenty_switchovers() {
    run_with("cms_admin", &["sw1", "sw2"], async |c| {
        let mut switches = start(c).await;
        let (sw1, sw2) = (c.host("sw1"), c.host("sw2"));
        let mut n = 0u64;
        let mut lost_unacked = 0usize;
        for round in 0..20 {
            let before = c.status("h3").await;
            let primary = settled(&before).expect("a settled pair");
            let backup = other(&primary);
            let epoch = app(&before, "cms").epoch;
            // Edits go on while the pair is settled: an edit counts as
            // acknowledged once it is on the backup.
            for _ in 0..25 {
                n += 1;
                write_edit(c, &admin_dir(c, &primary), n);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let acked = edits(&admin_dir(c, backup));
            let written: BTreeSet<u64> = edits(&admin_dir(c, &primary));
            // Then the switchover, with edits still being written on the
            // old primary while it happens.
            let kind = ["planned", "crash", "link"][round % 3];
            match kind {
                "planned" => {
                    let out = c
                        .api("h3")
                        .switchover("cms", Some(backup), Duration::from_secs(10))
                        .await;
                    assert!(out.is_ok(), "switchover to {backup}: {out:?}");
                }
                "crash" => {
                    let pid = app(&before, "cms")
                        .instances
                        .iter()
                        .find(|i| i.id == primary)
                        .and_then(|i| i.pid)
                        .expect("the primary's pid");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                _ => {
                    let h = c.host(host_of(&primary));
                    c.net.cut(h, sw1).expect("cut");
                    c.net.cut(h, sw2).expect("cut");
                }
            }
            let mut during = 0;
            let after = loop {
                let d = c.status("h3").await;
                let a = app(&d, "cms");
                if a.primary.as_deref() == Some(backup) && a.epoch > epoch {
                    break d;
                }
                n += 1;
                during += 1;
                write_edit(c, &admin_dir(c, &primary), n);
                assert!(
                    during < 2000,
                    "round {round} ({kind}): {backup} never promoted"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            // Edits on the deposed primary never reach the new one.
            let stale: Vec<u64> = (0..5).map(|k| 1_000_000 * (round as u64 + 1) + k).collect();
            for s in &stale {
                write_edit(c, &admin_dir(c, &primary), *s);
            }
            if kind == "link" {
                c.net.heal(c.host(host_of(&primary))).expect("heal");
            }
            // The promoted backup has every edit acknowledged before.
            let has = edits(&admin_dir(c, backup));
            let missing: Vec<_> = acked.difference(&has).collect();
            assert!(
                missing.is_empty(),
                "round {round} ({kind}): {backup} promoted without acknowledged edits {missing:?}"
            );
            // Once the old primary is back as the backup, its admin data is
            // the new primary's: what it had that was never acknowledged is
            // gone, nothing flowed back.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let d = c.status("h3").await;
                let synced = settled(&d).as_deref() == Some(backup)
                    && edits(&admin_dir(c, &primary)) == edits(&admin_dir(c, backup));
                if synced {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round} ({kind}): {primary} never caught up with {backup}: {:?} vs {:?}",
                    edits(&admin_dir(c, &primary)).len(),
                    edits(&admin_dir(c, backup)).len(),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let flowed_back: Vec<_> = stale
                .iter()
                .filter(|s| edits(&admin_dir(c, backup)).contains(s))
                .collect();
            assert!(
                flowed_back.is_empty(),
                "round {round} ({kind}): edits {flowed_back:?} written on the deposed {primary} reached {backup}"
            );
            lost_unacked += written.difference(&edits(&admin_dir(c, backup))).count();
            let _ = after;
        }
        let final_edits = edits(&admin_dir(c, "a"));
        println!(
            "[cms_admin] 20 switchovers, {n} edits written, {} kept, {lost_unacked} written but never acknowledged before a switchover",
            final_edits.len()
        );
        // Every promotion with admin data behind says so; here none was.
        let evs = events(c, "h3").await;
        let behind: Vec<_> = evs
            .iter()
            .filter(|e| {
                e.kind.as_str() == "promoted" && e.message.contains("admin data was behind")
            })
            .collect();
        println!(
            "[cms_admin] promotions with admin data behind: {}",
            behind.len()
        );
        // The lag per backup, in the status and as metrics, once the last
        // primary has shipped a few edits.
        let d = c.status("h3").await;
        let primary = settled(&d).expect("a settled pair");
        let backup = other(&primary);
        for k in 0..5 {
            write_edit(c, &admin_dir(c, &primary), 9_000_000 + k);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !edits(&admin_dir(c, backup)).contains(&9_000_004) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the last edits never reached {backup}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let d = c.status("h3").await;
        let src = app(&d, "cms")
            .instances
            .iter()
            .find(|i| i.id == primary)
            .and_then(|i| i.admin.as_ref())
            .and_then(|a| a.source.clone())
            .expect("the primary's admin source in the status");
        assert!(src.backups[backup].lag_p99_us.is_some(), "{src:?}");
        let url = format!("http://{}:{}/metrics", c.host("h3").addr, harness::API_PORT);
        let text = reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics");
        let series = format!(
            "tandem_admin_sync_lag_seconds{{app=\"cms\",from=\"{primary}\",to=\"{backup}\",quantile=\"0.99\"}}"
        );
        assert!(text.contains(&series), "no {series} in:\n{text}");
        for s in &mut switches {
            let _ = s.kill();
            let _ = s.wait();
        }
    });
}

/// The journal check itself can fail: overlapping sessions of one CMS on
/// both switches are caught, sessions of two CMS are not confused.
#[test]
fn the_journal_check_catches_two_sessions_at_once() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let line = |event: &str, who: &str, at: u64| {
        format!(r#"{{"at_ns":{at},"switch":"x","event":"{event}","who":"{who}","reason":""}}"#)
    };
    let write = |name: &str, lines: &[String]| {
        std::fs::write(
            dir.path().join(format!("switch-{name}.jsonl")),
            lines.join("\n"),
        )
        .expect("write a journal");
    };
    write(
        "main",
        &[
            line("open", "cms/a", 10),
            line("close", "cms/a", 20),
            line("open", "cms/b", 15),
        ],
    );
    write(
        "survivable",
        &[
            line("open", "cms/a", 20),
            line("open", "cms/b", 5),
            line("close", "cms/b", 15),
        ],
    );
    assert_eq!(assert_never_two_active(dir.path()), 4);
    write("survivable", &[line("open", "cms/a", 19)]);
    let caught = std::panic::catch_unwind(|| assert_never_two_active(dir.path()));
    assert!(caught.is_err(), "an overlap of 1 ns went unnoticed");
}
