//! Link-driven failover on namespaced hosts with a real etcd: a
//! warm-standby pair `web` (a on h1, b on h2) whose instances each need the
//! link `acd` to a "switch" (an endpoint on host `sw`, a listener tandem
//! does not run). Cutting h1's path to the switch with iptables, while
//! everything else works, switches the primary over to b without a human,
//! and the promotion's event names the link; cutting the link everywhere
//! moves nothing and says why; the demo components' own journals show no
//! two primaries at once. Needs root, `ip`, `iptables` and etcd.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "partitions/harness.rs"]
mod harness;
#[path = "fencing/support.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{Cluster, app, run_with};
use support::{describe, events, is};
use tandem_api::types::{Health, StatusDoc};
use tandem_demo::topology::app_block;

const SWITCH_PORT: u16 = 5022;

fn topology(c: &Cluster) -> String {
    let addr = |h: &str| c.host(h).addr.to_string();
    let mut t = c.topology_head();
    let pair = c.pair("web", "warm-standby", harness::WEB_PORT);
    let block = app_block(&pair, ["h1", "h2"]).replacen(
        "ha = \"warm-standby\"\n",
        "ha = \"warm-standby\"\nlink_hold_down = \"300ms\"\nlink_switchover_interval = \"2s\"\n",
        1,
    );
    assert!(block.contains("link_hold_down"), "{block}");
    t.push('\n');
    t.push_str(&block);
    t.push_str(&format!(
        r#"
[[endpoints]]
name = "switch"
address = "{sw}"
port = {SWITCH_PORT}

[[links]]
name = "acd"
from = "web"
to = "switch"
cardinality = "one"
interval = "100ms"
timeout = "80ms"
failures_before_down = 2
successes_before_up = 2
"#,
        sw = addr("sw"),
    ));
    t
}

fn settled(d: &StatusDoc, primary: &str) -> bool {
    let a = app(d, "web");
    !d.stale
        && a.primary.as_deref() == Some(primary)
        && a.instances.iter().all(|i| i.health == Health::Healthy)
}

/// Waits until every instance of `web` sees its link `acd` as `state`.
async fn wait_link(c: &Cluster, state: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let doc = c.api("h3").links().await;
        if let Ok(doc) = &doc
            && let Some(l) = doc.links.iter().find(|l| l.name == "acd")
            && l.instances.iter().all(|i| i.state == state)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acd never {state} everywhere: {doc:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_primary_that_loses_its_link_is_switched_over_and_a_link_lost_everywhere_moves_nothing() {
    run_with("link_failover", &["sw"], async |c| {
        // The switch: a listener on sw, which tandem does not run.
        let sw = c.host("sw");
        let mut cmd = Command::new(common::tandem());
        cmd.args(["demo-app", "--port", &SWITCH_PORT.to_string()])
            .args(["--bind", &sw.addr.to_string()])
            .current_dir(c.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        harness::die_with_parent(&mut cmd);
        let mut switch = c.net.spawn(sw, &mut cmd).expect("spawn the switch");

        c.apply_topology_text("links.toml", &topology(c));
        c.start_agent("h3");
        c.wait_controller("h3 to be elected controller", 30, |h| h == "h3")
            .await;
        c.start_agent("h1");
        c.wait_status("h3", "web/a primary", 40, |d| {
            app(d, "web").primary.as_deref() == Some("a")
        })
        .await;
        c.start_agent("h2");
        let before = c
            .wait_status("h3", "a settled pair", 60, |d| settled(d, "a"))
            .await;
        wait_link(c, "up").await;
        let epoch0 = app(&before, "web").epoch;
        let seq0 = events(c, "h3").await.last().map_or(0, |e| e.seq);

        // h1 loses its path to the switch; everything else works.
        c.net.cut(c.host("h1"), sw).expect("cut h1 from the switch");
        let after = c
            .wait_status("h3", "web/b promoted for the lost link", 30, |d| {
                let a = app(d, "web");
                a.primary.as_deref() == Some("b") && a.epoch > epoch0
            })
            .await;
        let evs: Vec<_> = events(c, "h3")
            .await
            .into_iter()
            .filter(|e| e.seq > seq0)
            .collect();
        let promoted = evs
            .iter()
            .find(|e| e.kind.as_str() == "promoted" && e.instance.as_deref() == Some("b"))
            .unwrap_or_else(|| panic!("no promotion of web/b:\n{}", describe(&evs)));
        assert_eq!(
            promoted.reason.as_deref(),
            Some("link_lost"),
            "{}",
            describe(&evs)
        );
        assert!(
            promoted
                .message
                .contains("primary web/a lost its link acd for")
                && promoted.message.contains("web/b has it"),
            "{}",
            promoted.message
        );
        assert!(
            evs.iter()
                .any(|e| is(e, "demoted", "link_lost") && e.seq < promoted.seq),
            "web/a was not demoted first:\n{}",
            describe(&evs)
        );
        assert!(
            !evs.iter()
                .any(|e| e.kind.as_str() == "primary-failed" || e.kind.as_str() == "host"),
            "nothing failed, only a link was lost:\n{}",
            describe(&evs)
        );

        // The link is lost everywhere: nothing moves, and the event says so.
        let epoch1 = app(&after, "web").epoch;
        let seq1 = evs.last().map_or(seq0, |e| e.seq);
        c.net.cut(c.host("h2"), sw).expect("cut h2 from the switch");
        wait_link(c, "down").await;
        // Longer than the hold-down and the interval together.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let now = c.status("h3").await;
        assert_eq!(
            (app(&now, "web").primary.as_deref(), app(&now, "web").epoch),
            (Some("b"), epoch1),
            "the primary moved although every instance lost the link"
        );
        let evs: Vec<_> = events(c, "h3")
            .await
            .into_iter()
            .filter(|e| e.seq > seq1)
            .collect();
        let held: Vec<_> = evs.iter().filter(|e| is(e, "link", "link_held")).collect();
        assert_eq!(held.len(), 1, "{}", describe(&evs));
        assert!(
            held[0]
                .message
                .contains("every instance of web has lost it too: nothing moves"),
            "{}",
            held[0].message
        );

        // Healed, the primary's host first: both see the switch again, and
        // nothing moves back by itself.
        c.net.heal(c.host("h2")).expect("heal h2");
        c.net.heal(c.host("h1")).expect("heal h1");
        wait_link(c, "up").await;
        let healed = c.status("h3").await;
        assert_eq!(app(&healed, "web").primary.as_deref(), Some("b"));
        c.assert_no_overlap();
        let _ = switch.kill();
        let _ = switch.wait();
    });
}
