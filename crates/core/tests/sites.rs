//! Sites judged from their hosts' leases, and the events of a site lost or
//! up again.

use tandem_core::model::EventKind;
use tandem_core::sites::{site_events, site_states};
use tandem_core::topology::{SiteRole, parse};

const TOPOLOGY: &str = r#"
[[sites]]
name = "dc1"
[[sites]]
name = "dc2"
role = "spare"
[[sites]]
name = "dc3"
[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"
[[hosts]]
name = "h2"
site = "dc1"
address = "10.0.0.2"
[[hosts]]
name = "h3"
site = "dc2"
address = "10.0.1.1"
"#;

#[test]
fn a_site_is_lost_when_every_host_lease_ended_and_says_so_once() {
    let t = parse("sites.toml", TOPOLOGY).expect("parses");
    assert_eq!(t.site("dc2").map(|s| s.role), Some(SiteRole::Spare));
    assert_eq!(t.site("dc1").map(|s| s.role), Some(SiteRole::Active));
    let none = tandem_core::model::SitesRecord::default();
    let judge = |up: &[&str]| site_states(&t, &none, |h| up.contains(&h));
    let all = judge(&["h1", "h2", "h3"]);
    assert!(all.iter().all(|s| !s.lost), "{all:?}");
    // One host of dc1 gone: dc1 still stands.
    let one = judge(&["h2", "h3"]);
    assert!(site_events(&all, &one).is_empty());
    // Both gone: dc1 is lost, once; dc3 has no hosts and is never lost.
    let lost = judge(&["h3"]);
    let dc1 = lost.iter().find(|s| s.name == "dc1").expect("dc1");
    assert!(dc1.lost && dc1.hosts_up.is_empty());
    assert!(!lost.iter().find(|s| s.name == "dc3").expect("dc3").lost);
    let evs = site_events(&one, &lost);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].kind, EventKind::Site);
    assert_eq!(evs[0].reason, Some("site_lost"));
    assert_eq!(
        evs[0].message,
        "site dc1 (active) lost: the lease of every one of its hosts ended (h1, h2)"
    );
    assert!(site_events(&lost, &lost).is_empty(), "said once");
    // A host comes back: the site is up.
    let back = judge(&["h1", "h3"]);
    let evs = site_events(&lost, &back);
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].reason, Some("site_up"));
    assert_eq!(evs[0].message, "site dc1 (active) is up: h1 holds a lease");
    // A site first judged has no event (nothing to compare with); a
    // controller taking the lead says which sites it finds lost.
    assert!(site_events(&[], &lost).is_empty());
    let found = tandem_core::sites::sites_found_lost(&lost);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].reason, Some("site_lost"));
    assert!(
        found[0].message.starts_with("site dc1 (active) is lost"),
        "{}",
        found[0].message
    );
    assert!(tandem_core::sites::sites_found_lost(&all).is_empty());
}

// ---- site intents, pinned apps, read-only ----

use std::collections::BTreeMap;

use tandem_core::controller::{AppInput, AppLinks, HostsState, decide};
use tandem_core::model::{
    AppRoles, Health, InstanceStatus, IntentState, ProcessState, Role, SiteAction, SiteIntent,
    SitesRecord,
};
use tandem_core::sites::{SiteState, host_sites, resolve};
use tandem_core::topology::Topology;

/// dc1 active (h1, h2), dc2 spare (h3, h4); the configuration server is
/// pinned: live in dc1, its cold standby in dc2; web is n-plus-1 in both.
const WORKSPACE: &str = r#"
[[sites]]
name = "dc1"
[[sites]]
name = "dc2"
role = "spare"
[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"
[[hosts]]
name = "h2"
site = "dc1"
address = "10.0.0.2"
[[hosts]]
name = "h3"
site = "dc2"
address = "10.0.1.1"
[[hosts]]
name = "h4"
site = "dc2"
address = "10.0.1.2"

[apps.conf]
ha = "cold-standby"
pinned = true
command = ["conf"]
[[apps.conf.instances]]
id = "a"
host = "h1"
[[apps.conf.instances]]
id = "b"
host = "h3"

[apps.web]
ha = "n-plus-1"
replicas = 2
command = ["web"]
[[apps.web.instances]]
id = "w1"
host = "h1"
[[apps.web.instances]]
id = "w2"
host = "h2"
[[apps.web.instances]]
id = "w3"
host = "h3"
"#;

fn status(host: &str, process: ProcessState, acting: Role, epoch: u64) -> InstanceStatus {
    InstanceStatus {
        host: host.into(),
        process,
        pid: (process == ProcessState::Running).then_some(1),
        session: 7,
        incarnation: u64::from(process == ProcessState::Running),
        seen_generation: 0,
        health: if process == ProcessState::Running {
            Health::Healthy
        } else {
            Health::Unknown
        },
        health_detail: None,
        acting,
        acting_epoch: epoch,
        promoting: false,
        drained: 0,
        links: Default::default(),
        active_links: Default::default(),
        admin: Default::default(),
        crash_looping: false,
        restarts: 0,
        last_exit: None,
    }
}

fn idle(host: &str) -> InstanceStatus {
    status(host, ProcessState::Stopped, Role::Standby, 0)
}

/// The cluster as the controller sees it: which hosts hold leases, what
/// operators decided, and each app's roles.
struct World {
    t: Topology,
    up: Vec<&'static str>,
    record: SitesRecord,
    roles: BTreeMap<String, AppRoles>,
}

impl World {
    fn new() -> World {
        World {
            t: parse("workspace.toml", WORKSPACE).expect("parses"),
            up: vec!["h1", "h2", "h3", "h4"],
            record: SitesRecord::default(),
            roles: BTreeMap::new(),
        }
    }

    fn sites(&self) -> Vec<SiteState> {
        site_states(&self.t, &self.record, |h| self.up.contains(&h))
    }

    fn hosts(&self) -> HostsState {
        HostsState {
            sites: host_sites(&self.sites()),
            ..HostsState::default()
        }
    }

    /// Decides `app` with these statuses (only those on hosts holding a
    /// lease count) and keeps the roles.
    fn decide(
        &mut self,
        app: &str,
        statuses: &[(&str, InstanceStatus)],
    ) -> tandem_core::controller::Decision {
        let a = self.t.app(app).expect("app").clone();
        let status: BTreeMap<String, InstanceStatus> = statuses
            .iter()
            .filter(|(_, s)| self.up.contains(&s.host.as_str()))
            .map(|(id, s)| (id.to_string(), s.clone()))
            .collect();
        let roles = self.roles.get(app).cloned().unwrap_or_default();
        let hosts = self.hosts();
        let d = decide(&AppInput {
            app: &a,
            roles: &roles,
            status: &status,
            intent: None,
            hosts: &hosts,
            links: AppLinks::NONE,
        });
        self.roles.insert(app.to_string(), d.roles.clone());
        d
    }

    /// Resolves a site intent; keeps the record if it changed.
    fn ask(&mut self, action: SiteAction, site: &str, forced: Option<&str>) -> IntentState {
        let intent = SiteIntent {
            id: "i".into(),
            site: site.into(),
            action,
            forced: forced.map(str::to_owned),
            outcome: IntentState::Pending,
            by: None,
        };
        let r = resolve(&intent, &self.t, &self.sites(), &self.record, 1_000);
        match &r.outcome {
            IntentState::Refused { reason } => {
                assert!(r.record.is_none(), "a refusal changes nothing");
                assert!(r.event.message.contains(reason.as_str()), "{r:?}");
            }
            IntentState::Done { .. } => {}
            other => panic!("unexpected outcome {other:?}"),
        }
        if let Some(next) = r.record {
            assert_eq!(next.generation, self.record.generation + 1);
            self.record = next;
        }
        r.outcome
    }
}

fn refused(outcome: IntentState, says: &str) {
    match outcome {
        IntentState::Refused { reason } => assert!(reason.contains(says), "{reason}"),
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
}

fn done(outcome: IntentState, says: &str) {
    match outcome {
        IntentState::Done { message } => assert!(message.contains(says), "{message}"),
        other => panic!("expected done saying {says:?}, got {other:?}"),
    }
}

#[test]
fn a_pinned_app_stays_in_the_active_site_is_read_only_while_it_is_lost_and_moves_only_by_promotion()
{
    let mut w = World::new();
    // All up: conf starts in dc1, never in the spare dc2.
    let d = w.decide("conf", &[("a", idle("h1")), ("b", idle("h3"))]);
    let g = d.roles.primary.clone().expect("granted");
    assert_eq!((g.instance.as_str(), g.epoch), ("a", 1));
    assert_eq!(d.roles.read_only, None);
    let a_primary = status("h1", ProcessState::Running, Role::Primary, 1);

    // dc1's leases end: the grant is withdrawn, conf is read-only, and
    // nothing starts in dc2 by itself.
    w.up = vec!["h3", "h4"];
    let d = w.decide("conf", &[("a", a_primary.clone()), ("b", idle("h3"))]);
    assert!(d.roles.primary.is_none(), "{:?}", d.roles);
    let ro = d.roles.read_only.clone().expect("read-only");
    assert_eq!(ro.site, "dc1");
    assert_eq!(ro.reason, "site dc1 is lost");
    let said = d
        .events
        .iter()
        .find(|e| e.reason == Some("read_only"))
        .expect("a read-only event");
    assert!(
        said.message
            .contains("`tandem site promote dc2` starts it there"),
        "{}",
        said.message
    );
    // Decided again: still nothing in dc2, and read-only said once.
    let d = w.decide("conf", &[("b", idle("h3"))]);
    assert!(d.roles.primary.is_none());
    assert!(!d.changed, "{:?}", d.events);

    // Bad requests are refused and change nothing.
    refused(w.ask(SiteAction::Promote, "dc1", None), "already active");
    refused(
        w.ask(SiteAction::Promote, "dc9", None),
        "no site named \"dc9\"",
    );
    refused(
        w.ask(SiteAction::Fail, "dc2", None),
        "h3, h4 still hold leases",
    );
    refused(w.ask(SiteAction::Restore, "dc2", None), "not failed");
    assert_eq!(w.record, SitesRecord::default());

    // Promote dc2: conf starts there with the next epoch.
    done(
        w.ask(SiteAction::Promote, "dc2", None),
        "site dc2 promoted to active",
    );
    assert_eq!(w.record.roles.get("dc2"), Some(&SiteRole::Active));
    assert_eq!(w.record.roles.get("dc1"), Some(&SiteRole::Spare));
    assert!(w.record.failed.contains_key("dc1"));
    let d = w.decide("conf", &[("b", idle("h3"))]);
    let g = d.roles.primary.clone().expect("b granted");
    assert_eq!((g.instance.as_str(), g.epoch), ("b", 2));
    assert_eq!(d.roles.read_only, None);
    assert!(d.events.iter().any(|e| e.reason == Some("writable")));
    let b_primary = status("h3", ProcessState::Running, Role::Primary, 2);

    // dc1 returns: a spare, failed until restored; a is not started.
    w.up = vec!["h1", "h2", "h3", "h4"];
    let back = w.sites();
    let dc1 = back.iter().find(|s| s.name == "dc1").expect("dc1");
    assert_eq!((dc1.role, dc1.condition()), (SiteRole::Spare, "failed"));
    let d = w.decide("conf", &[("a", idle("h1")), ("b", b_primary.clone())]);
    assert_eq!(d.roles.primary.map(|g| g.instance), Some("b".into()));
    refused(
        w.ask(SiteAction::Promote, "dc1", None),
        "site dc1 is failed (replaced by site dc2): take it back first with `tandem site restore dc1`",
    );
    done(
        w.ask(SiteAction::Restore, "dc1", None),
        "restored as a spare",
    );
    let d = w.decide("conf", &[("a", idle("h1")), ("b", b_primary)]);
    assert_eq!(
        d.roles.primary.map(|g| g.instance),
        Some("b".into()),
        "never a second live site"
    );
}

#[test]
fn a_site_whose_hosts_hold_leases_is_promoted_over_or_failed_only_when_forced_and_what_runs_there_steps_down_first()
 {
    let mut w = World::new();
    w.decide("conf", &[("a", idle("h1")), ("b", idle("h3"))]);
    let a_primary = status("h1", ProcessState::Running, Role::Primary, 1);
    refused(
        w.ask(SiteAction::Promote, "dc2", None),
        "--force --confirm dc1",
    );
    assert_eq!(w.record, SitesRecord::default());
    done(
        w.ask(SiteAction::Promote, "dc2", Some("dc1")),
        "site dc2 promoted to active",
    );
    // a still runs: its grant is withdrawn, b waits for it to stop.
    let d = w.decide("conf", &[("a", a_primary), ("b", idle("h3"))]);
    assert!(d.roles.primary.is_none(), "{:?}", d.roles);
    assert!(d.roles.stepping_down.is_some());
    let mut a_stopped = idle("h1");
    a_stopped.incarnation = 1;
    a_stopped.seen_generation = d.roles.generation;
    let d = w.decide("conf", &[("a", a_stopped), ("b", idle("h3"))]);
    let g = d.roles.primary.expect("b granted once a stopped");
    assert_eq!((g.instance.as_str(), g.epoch), ("b", 2));

    // web: a failed site's members are replaced in the other one.
    let mut w = World::new();
    let running = |h| status(h, ProcessState::Running, Role::Active, 0);
    let all = [
        ("w1", running("h1")),
        ("w2", running("h2")),
        ("w3", running("h3")),
    ];
    let d = w.decide("web", &all);
    assert_eq!(d.roles.roles["w3"], Role::Standby, "{:?}", d.roles.roles);
    refused(
        w.ask(SiteAction::Fail, "dc1", None),
        "--force --confirm dc1",
    );
    refused(
        w.ask(SiteAction::Fail, "dc1", Some("dc2")),
        "still hold leases",
    );
    done(
        w.ask(SiteAction::Fail, "dc1", Some("dc1")),
        "declared failed",
    );
    let d = w.decide("web", &all);
    assert_eq!(d.roles.roles["w1"], Role::Standby);
    assert_eq!(d.roles.roles["w2"], Role::Standby);
    assert_eq!(d.roles.roles["w3"], Role::Active);
    assert!(
        d.events
            .iter()
            .any(|e| e.reason == Some("site_barred") && e.message.contains("declared failed")),
        "{:?}",
        d.events
    );
    // Failed dc1 was the active site: conf is read-only.
    let d = w.decide("conf", &[("a", idle("h1")), ("b", idle("h3"))]);
    assert_eq!(
        d.roles.read_only.map(|r| r.reason),
        Some("site dc1 was declared failed".into())
    );
    done(
        w.ask(SiteAction::Restore, "dc1", None),
        "restored as active",
    );
    let d = w.decide("conf", &[("a", idle("h1")), ("b", idle("h3"))]);
    assert_eq!(d.roles.primary.map(|g| g.instance), Some("a".into()));
}

#[test]
fn a_pinned_app_needs_a_primary_and_an_instance_in_an_active_and_a_spare_site() {
    let cases = [
        (
            WORKSPACE.replace(
                "ha = \"n-plus-1\"\nreplicas = 2",
                "ha = \"n-plus-1\"\nreplicas = 2\npinned = true",
            ),
            "\"pinned\" applies to the modes with a primary",
        ),
        (
            WORKSPACE.replace("id = \"b\"\nhost = \"h3\"", "id = \"b\"\nhost = \"h2\""),
            "app \"conf\" is pinned but has no instance in a spare site (spare sites: dc2)",
        ),
        (
            WORKSPACE.replace("id = \"a\"\nhost = \"h1\"", "id = \"a\"\nhost = \"h4\""),
            "app \"conf\" is pinned but has no instance in an active site (active sites: dc1)",
        ),
        (
            WORKSPACE.replace("pinned = true", "pinned = \"yes\""),
            "\"pinned\"",
        ),
    ];
    for (text, says) in cases {
        let e = parse("workspace.toml", &text).expect_err(says);
        let all = e.to_string();
        assert!(all.contains(says), "{all}");
        assert!(all.contains("workspace.toml:"), "a place: {all}");
    }
}

#[test]
fn followers_of_a_pinned_app_are_told_once_per_incarnation_when_it_turns_read_only_and_back() {
    let with_proxy = format!(
        "{WORKSPACE}
[apps.proxy]
ha = \"n-plus-1\"
command = [\"proxy\"]
[[apps.proxy.instances]]
id = \"p1\"
host = \"h2\"

[[links]]
from = \"proxy\"
to = \"conf\"
cardinality = \"optional\"
hook = {{ kind = \"command\", command = [\"notify\"] }}

[[links]]
from = \"proxy\"
to = \"web\"
cardinality = \"optional\"
"
    );
    let t = parse("workspace.toml", &with_proxy).expect("a hook on a link to a pinned app");
    use tandem_core::sites::{follower_links, follower_notices};
    let links: Vec<&str> = follower_links(&t, "proxy")
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(
        links,
        ["proxy->conf"],
        "only the hooked link to the pinned app"
    );
    let ro = |on: bool| move |app: &str| on && app == "conf";
    // Writable, nothing told yet: nothing to tell a new process.
    assert!(follower_notices(&t, "proxy", 1, ro(false), |_| None).is_empty());
    // Read-only: tell it.
    assert_eq!(
        follower_notices(&t, "proxy", 1, ro(true), |_| None),
        [("proxy->conf".to_string(), true)]
    );
    // Told in this incarnation: nothing more; a restarted process is told again.
    assert!(follower_notices(&t, "proxy", 1, ro(true), |_| Some((1, true))).is_empty());
    assert_eq!(
        follower_notices(&t, "proxy", 2, ro(true), |_| Some((1, true))).len(),
        1
    );
    // Writable again: told so; a new process was never told otherwise.
    assert_eq!(
        follower_notices(&t, "proxy", 2, ro(false), |_| Some((2, true))),
        [("proxy->conf".to_string(), false)]
    );
    assert!(follower_notices(&t, "proxy", 3, ro(false), |_| Some((2, true))).is_empty());

    // A hook on a link to an app that is not pinned (nor exclusive) is refused.
    let bad = with_proxy.replace(
        "to = \"web\"\ncardinality = \"optional\"\n",
        "to = \"web\"\ncardinality = \"optional\"\nhook = { kind = \"command\", command = [\"notify\"] }\n",
    );
    let e = parse("workspace.toml", &bad).expect_err("refused");
    assert!(
        e.to_string()
            .contains("link \"proxy->web\" has a hook but no exclusive group"),
        "{e}"
    );
}
