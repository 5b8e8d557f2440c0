//! Sites end to end, on namespaced hosts with a real etcd of three
//! members, one per site plus a witness: dc1 (active) is h1 and etcd e1,
//! dc2 (spare) is h2, h3 and e2, and e3 is the witness (no agent). The
//! configuration server `conf` (demo components, journaling when primary)
//! is pinned to the active site: live on h1, its cold standby on h2. A
//! configuration proxy (`tandem proxy`, which finds conf's primary through
//! discovery) runs in each site and is told through its link's hook when
//! conf is read-only; `web` is n-plus-1 in both sites.
//!
//! Isolating dc1 (h1 and e1) leaves etcd its quorum in dc2 and the
//! witness: dc1's leases end, dc1 is reported lost, conf is read-only (a
//! write through the client library is refused with the clear error) and
//! does not move by itself; `tandem site promote dc2` starts conf in dc2
//! with a new epoch and the proxy there reaches it. Healed, dc1 comes back
//! as a spare and failed until restored, and conf never runs twice
//! (checked from the components' own journals). Needs root, `ip`,
//! `iptables` and etcd.
#![allow(clippy::disallowed_methods)]

mod common;
#[path = "partitions/harness.rs"]
mod harness;
#[path = "fencing/support.rs"]
mod support;

use std::time::{Duration, Instant};

use harness::{Cluster, app, run_with};
use support::{describe, events, is};
use tandem_api::types::{Health, Role, SiteRequest, StatusDoc};
use tandem_client::{ClientError, SwitchoverOutcome};
use tandem_core::model::Event;
use tandem_demo::topology::app_block;

const CONF_PORT: u16 = 8401;
const PROXY_PORT: u16 = 8402;
const WEB_PORT: u16 = 8403;
const LEASE_TTL_MS: u64 = 2000;

fn topology(c: &Cluster) -> String {
    let addr = |h: &str| c.host(h).addr.to_string();
    let dir = c.dir.path().display().to_string();
    let tandem = common::tandem().display().to_string();
    let mut t = format!(
        r#"
[cluster]
lease_ttl = "{LEASE_TTL_MS}ms"
renew_interval = "300ms"
fence_margin = "800ms"

[[sites]]
name = "dc1"

[[sites]]
name = "dc2"
role = "spare"

[[hosts]]
name = "h1"
site = "dc1"
address = "{h1}"

[[hosts]]
name = "h2"
site = "dc2"
address = "{h2}"

[[hosts]]
name = "h3"
site = "dc2"
address = "{h3}"
"#,
        h1 = addr("h1"),
        h2 = addr("h2"),
        h3 = addr("h3"),
    );
    let mut conf = c.pair("conf", "cold-standby", CONF_PORT);
    conf.stop_timeout_ms = Some(1000);
    let block = app_block(&conf, ["h1", "h2"]).replacen(
        "ha = \"cold-standby\"\n",
        "ha = \"cold-standby\"\npinned = true\n",
        1,
    );
    t.push_str(&block);
    // The proxies: each follows conf through its own site's API, and
    // writes what its link's hook tells it to a file of its own.
    t.push_str(&format!(
        r#"
[apps.confproxy]
ha = "n-plus-1"
command = ["{tandem}", "proxy", "--listen", "{{address}}:{{ports.main}}", "--app", "conf",
           "--api", "{{address}}:{api}"]

[[apps.confproxy.instances]]
id = "p1"
host = "h1"
ports = {{ main = {PROXY_PORT} }}

[[apps.confproxy.instances]]
id = "p2"
host = "h2"
ports = {{ main = {PROXY_PORT} }}

[[links]]
from = "confproxy"
to = "conf"
cardinality = "optional"
hook = {{ kind = "command", command = ["sh", "-c", "echo \"$1 $2\" >> {dir}/notices.{{instance}}", "notice"], timeout = "2s" }}

[apps.web]
ha = "n-plus-1"
replicas = 2
command = ["{tandem}", "demo-app", "--port", "{{ports.http}}", "--bind", "{{address}}"]

[[apps.web.checks]]
kind = "http"
port = "http"
path = "/health"
interval = "200ms"
timeout = "150ms"

[[apps.web.instances]]
id = "w1"
host = "h1"
ports = {{ http = {WEB_PORT} }}

[[apps.web.instances]]
id = "w2"
host = "h2"
ports = {{ http = {WEB_PORT} }}
"#,
        api = harness::API_PORT,
    ));
    t
}

/// dc1's hosts: h1 and etcd member e1.
fn dc1(c: &Cluster) -> Vec<tandem_testnet::Host> {
    vec![c.host("h1").clone(), c.etcd[0].clone()]
}

/// Everything outside dc1 that dc1 could reach.
fn outside(c: &Cluster) -> Vec<tandem_testnet::Host> {
    vec![
        c.host("h2").clone(),
        c.host("h3").clone(),
        c.etcd[1].clone(),
        c.etcd[2].clone(),
        c.ctl.clone(),
    ]
}

fn site<'a>(d: &'a StatusDoc, name: &str) -> &'a tandem_api::types::SiteDoc {
    d.sites
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no site {name}: {:?}", d.sites))
}

fn healthy_on(d: &StatusDoc, app_name: &str, id: &str, role: Role) -> bool {
    app(d, app_name)
        .instances
        .iter()
        .any(|i| i.id == id && i.role == role && i.health == Health::Healthy)
}

/// `GET /` through the proxy of host `h`: the instance that answered.
async fn through_proxy(c: &Cluster, h: &str) -> Option<String> {
    let url = format!("http://{}:{PROXY_PORT}/", c.host(h).addr);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(1000))
        .build()
        .ok()?;
    let v: serde_json::Value = client.get(url).send().await.ok()?.json().await.ok()?;
    v["instance"].as_str().map(str::to_owned)
}

fn notices(c: &Cluster, instance: &str) -> Vec<String> {
    std::fs::read_to_string(c.dir.path().join(format!("notices.{instance}")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn since(c: &Cluster, via: &str, seq: u64) -> Vec<Event> {
    events(c, via)
        .await
        .into_iter()
        .filter(|e| e.seq > seq)
        .collect()
}

async fn wait_for(what: &str, secs: u64, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out ({secs} s) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[test]
fn a_lost_site_is_reported_its_pinned_app_read_only_until_promotion_and_it_returns_as_a_spare() {
    run_with("sites", &[], async |c| {
        c.apply_topology_text("sites.toml", &topology(c));
        // dc2's agents first: the controller is elected there.
        c.start_agent("h2");
        c.wait_controller("h2 to be elected controller", 30, |h| h == "h2")
            .await;
        c.start_agent("h3");
        c.start_agent("h1");
        c.wait_status("h2", "conf/a primary, both proxies and webs up", 60, |d| {
            app(d, "conf").primary.as_deref() == Some("a")
                && healthy_on(d, "web", "w1", Role::Active)
                && healthy_on(d, "web", "w2", Role::Active)
                && d.sites.iter().all(|s| s.state == "up")
        })
        .await;
        wait_for("the dc2 proxy to reach conf/a", 30, async || {
            through_proxy(c, "h2").await.as_deref() == Some("a")
        })
        .await;
        let api = c.api("h2");

        // Promoting dc2 while dc1 holds its leases is refused, and changes
        // nothing.
        let seq0 = events(c, "h2").await.last().map_or(0, |e| e.seq);
        match api
            .site_action(
                "dc2",
                "promote",
                &SiteRequest::default(),
                Duration::from_secs(10),
            )
            .await
            .expect("asked")
        {
            SwitchoverOutcome::Refused { reason, .. } => assert!(
                reason.contains("the active site dc1 is up")
                    && reason.contains("--force --confirm dc1"),
                "{reason}"
            ),
            other => panic!("promote dc2 while dc1 is up: {other:?}"),
        }
        for (action, site, code, says) in [
            ("promote", "dc9", 404, "no site named \"dc9\""),
            ("explode", "dc2", 404, "no site action \"explode\""),
        ] {
            match api
                .site_action(
                    site,
                    action,
                    &SiteRequest::default(),
                    Duration::from_secs(5),
                )
                .await
            {
                Err(e) => {
                    assert_eq!(e.status(), Some(code), "{e}");
                    assert!(e.to_string().contains(says), "{e}");
                }
                other => panic!("{action} {site}: {other:?}"),
            }
        }
        let d = c.status("h2").await;
        assert_eq!(app(&d, "conf").primary.as_deref(), Some("a"));
        assert_eq!(app(&d, "conf").epoch, 1);
        assert_eq!(site(&d, "dc2").role, "spare");
        let evs = since(c, "h2", seq0).await;
        assert!(
            evs.iter().any(|e| is(e, "site", "site_intent_refused")),
            "the refusal is logged: {}",
            describe(&evs)
        );
        assert!(
            !evs.iter().any(|e| e.kind.as_str() == "promoted"),
            "{}",
            describe(&evs)
        );

        // Isolate dc1: h1 and its etcd member.
        let seq1 = events(c, "h2").await.last().map_or(0, |e| e.seq);
        let cut = Instant::now();
        for a in dc1(c) {
            for b in outside(c) {
                c.net.cut(&a, &b).expect("cut");
            }
        }
        wait_for("dc1 reported lost", 30, async || {
            api.status()
                .await
                .is_ok_and(|d| site(&d, "dc1").state == "lost")
        })
        .await;
        // (The etcd members of dc2 and the witness may first have to elect
        // a leader, and the agents to leave dc1's member: seconds.)
        let lost_after = cut.elapsed();
        wait_for("conf read-only", 30, async || {
            matches!(
                api.primary_for_write("conf").await,
                Err(ClientError::ReadOnly { .. })
            )
        })
        .await;
        println!(
            "site cut → dc1 reported lost after {:.0} ms, conf read-only after {:.0} ms (lease TTL {LEASE_TTL_MS} ms)",
            lost_after.as_secs_f64() * 1000.0,
            cut.elapsed().as_secs_f64() * 1000.0
        );
        let err = api.primary_for_write("conf").await.expect_err("read-only");
        assert!(
            err.to_string().starts_with("read-only: site dc1 is lost"),
            "{err}"
        );
        // web keeps serving from dc2; conf does not move by itself.
        let d = c
            .wait_status("h2", "w2 serving in dc2", 20, |d| {
                healthy_on(d, "web", "w2", Role::Active)
            })
            .await;
        assert!(app(&d, "conf").primary.is_none(), "{:?}", app(&d, "conf"));
        assert_eq!(
            app(&d, "conf").read_only.as_ref().map(|r| r.site.as_str()),
            Some("dc1")
        );
        wait_for("p2 told conf is read-only", 20, async || {
            notices(c, "p2")
                .iter()
                .any(|l| l == "read-only confproxy->conf")
        })
        .await;
        tokio::time::sleep(Duration::from_millis(3 * LEASE_TTL_MS)).await;
        let d = c.status("h2").await;
        assert!(app(&d, "conf").primary.is_none(), "it moved by itself");
        let evs = since(c, "h2", seq1).await;
        assert!(
            evs.iter().any(|e| is(e, "site", "site_lost")),
            "{}",
            describe(&evs)
        );
        assert!(
            evs.iter().any(|e| is(e, "site", "read_only")),
            "{}",
            describe(&evs)
        );
        assert!(
            !evs.iter().any(|e| e.kind.as_str() == "promoted"),
            "{}",
            describe(&evs)
        );

        // Promote dc2: conf starts there with a new epoch, and the proxy
        // in dc2 reaches it by itself.
        let asked = Instant::now();
        match api
            .site_action(
                "dc2",
                "promote",
                &SiteRequest::default(),
                Duration::from_secs(10),
            )
            .await
            .expect("promote dc2")
        {
            SwitchoverOutcome::Done { message, .. } => {
                assert!(message.contains("site dc2 promoted to active"), "{message}")
            }
            other => panic!("promote dc2: {other:?}"),
        }
        wait_for("conf/b serving", 30, async || {
            api.primary_for_write("conf")
                .await
                .is_ok_and(|p| p.instance == "b")
        })
        .await;
        let serving = asked.elapsed();
        wait_for("the dc2 proxy to reach conf/b", 30, async || {
            through_proxy(c, "h2").await.as_deref() == Some("b")
        })
        .await;
        let proxied = asked.elapsed();
        println!(
            "site promote → conf serving in dc2 after {:.0} ms, the dc2 proxy reconnected after {:.0} ms",
            serving.as_secs_f64() * 1000.0,
            proxied.as_secs_f64() * 1000.0
        );
        let d = c.status("h2").await;
        assert_eq!(app(&d, "conf").epoch, 2);
        assert_eq!(app(&d, "conf").read_only, None);
        assert_eq!(site(&d, "dc2").role, "active");
        assert_eq!(site(&d, "dc1").role, "spare");
        wait_for("p2 told conf is writable", 20, async || {
            notices(c, "p2")
                .iter()
                .any(|l| l == "read-write confproxy->conf")
        })
        .await;
        // Promoting an active site is refused.
        match api
            .site_action(
                "dc2",
                "promote",
                &SiteRequest::default(),
                Duration::from_secs(10),
            )
            .await
            .expect("asked")
        {
            SwitchoverOutcome::Refused { reason, .. } => {
                assert!(reason.contains("already active"), "{reason}")
            }
            other => panic!("promote an active site: {other:?}"),
        }

        // Heal: dc1 returns as a spare, failed until restored, and conf/a
        // is never started again.
        for a in dc1(c) {
            for b in outside(c) {
                c.net.uncut(&a, &b).expect("uncut");
            }
        }
        let d = c
            .wait_status("h2", "dc1 back (its hosts hold leases)", 60, |d| {
                site(d, "dc1").hosts_up == ["h1"]
            })
            .await;
        assert_eq!(site(&d, "dc1").state, "failed", "{:?}", d.sites);
        assert_eq!(site(&d, "dc1").role, "spare");
        match api
            .site_action(
                "dc1",
                "restore",
                &SiteRequest::default(),
                Duration::from_secs(10),
            )
            .await
            .expect("restore dc1")
        {
            SwitchoverOutcome::Done { message, .. } => {
                assert!(message.contains("restored as a spare"), "{message}")
            }
            other => panic!("restore dc1: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(2 * LEASE_TTL_MS)).await;
        let d = c.status("h2").await;
        assert_eq!(app(&d, "conf").primary.as_deref(), Some("b"));
        assert_eq!(site(&d, "dc1").state, "up");
        assert_eq!(site(&d, "dc1").role, "spare");
        let a = app(&d, "conf")
            .instances
            .iter()
            .find(|i| i.id == "a")
            .expect("conf/a");
        assert_ne!(a.role, Role::Primary, "{a:?}");

        // From the components' own journals: conf never had two primaries
        // at once, and a never acted after the cut.
        c.assert_no_overlap_of("conf");
        let after_cut = c
            .intervals("conf")
            .into_iter()
            .filter(|iv| iv.instance == "a")
            .count();
        assert_eq!(after_cut, 1, "conf/a acted as primary once, before the cut");
    });
}

/// Two more rows of the README's witness table: the witness lost (the two
/// sites keep etcd's quorum), and the spare site cut off (reported lost).
/// Neither moves conf out of dc1 nor makes it read-only. When the etcd
/// member lost was the leader, the others first elect a new one: with the
/// tests' 2 s lease, dc1's agent may not renew in time and step conf down,
/// and conf is granted again in dc1 at a new epoch (said, not asserted
/// away).
#[test]
fn losing_the_witness_or_the_spare_site_leaves_the_active_site_serving() {
    run_with("sites_witness", &[], async |c| {
        c.apply_topology_text("sites.toml", &topology(c));
        c.start_agent("h2");
        c.wait_controller("h2 to be elected controller", 30, |h| h == "h2")
            .await;
        c.start_agent("h3");
        c.start_agent("h1");
        let settled = |d: &StatusDoc| {
            app(d, "conf").primary.as_deref() == Some("a")
                && app(d, "conf").read_only.is_none()
                && healthy_on(d, "web", "w1", Role::Active)
        };
        c.wait_status("h1", "conf/a primary, everything up", 60, |d| {
            settled(d) && d.sites.iter().all(|s| s.state == "up")
        })
        .await;
        let api = c.api("h1");
        let seq0 = events(c, "h1").await.last().map_or(0, |e| e.seq);
        let writable_in_dc1 = async || {
            api.primary_for_write("conf")
                .await
                .is_ok_and(|p| p.instance == "a")
        };

        // The witness (etcd e3) lost.
        let leader = c.etcd_leader().await;
        c.kill_etcd(2);
        tokio::time::sleep(Duration::from_millis(3 * LEASE_TTL_MS)).await;
        c.wait_status("h1", "conf/a serving with the witness gone", 30, settled)
            .await;
        wait_for("conf writable in dc1", 30, writable_in_dc1).await;
        println!(
            "witness lost (etcd leader was e{}): conf epoch {}",
            leader.map_or(0, |i| i + 1),
            app(&c.status("h1").await, "conf").epoch
        );
        c.start_etcd(2);
        c.wait_etcd(&[0, 1, 2], 30).await;

        // The spare site cut off (h2, h3 and etcd e2).
        let leader = c.etcd_leader().await;
        let dc2 = [
            c.host("h2").clone(),
            c.host("h3").clone(),
            c.etcd[1].clone(),
        ];
        let rest = [
            c.host("h1").clone(),
            c.etcd[0].clone(),
            c.etcd[2].clone(),
            c.ctl.clone(),
        ];
        for a in &dc2 {
            for b in &rest {
                c.net.cut(a, b).expect("cut");
            }
        }
        let d = c
            .wait_status("h1", "dc2 reported lost", 60, |d| {
                d.sites.iter().any(|s| s.name == "dc2" && s.state == "lost")
            })
            .await;
        assert_eq!(app(&d, "conf").read_only, None);
        c.wait_status("h1", "conf/a serving with dc2 gone", 30, settled)
            .await;
        wait_for("conf writable in dc1", 30, writable_in_dc1).await;
        println!(
            "spare site cut off (etcd leader was e{}): conf epoch {}",
            leader.map_or(0, |i| i + 1),
            app(&c.status("h1").await, "conf").epoch
        );
        for a in &dc2 {
            for b in &rest {
                c.net.uncut(a, b).expect("uncut");
            }
        }
        c.wait_status("h1", "dc2 back", 60, |d| {
            d.sites.iter().all(|s| s.state == "up")
        })
        .await;
        let evs = since(c, "h1", seq0).await;
        // conf only ever in dc1: never granted to b, never read-only.
        assert!(
            !evs.iter().any(|e| {
                e.app.as_deref() == Some("conf")
                    && (e.instance.as_deref() == Some("b") || is(e, "site", "read_only"))
                    && e.kind.as_str() != "link"
            }),
            "{}",
            describe(&evs)
        );
        assert!(
            evs.iter().any(|e| is(e, "site", "site_lost")),
            "{}",
            describe(&evs)
        );
        c.assert_no_overlap_of("conf");
        assert!(
            c.intervals("conf").iter().all(|iv| iv.instance == "a"),
            "conf ran outside dc1: {:?}",
            c.intervals("conf")
        );
    });
}
