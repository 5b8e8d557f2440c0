//! Link-driven switchover, decided in the pure core: a warm-standby
//! primary that lost a required link for the hold-down, while a fit backup
//! has it, is switched over through the planned path (demoted first);
//! nothing moves when nobody fit has the link (said once), within the
//! interval since the last link-driven switchover, in maintenance, or when
//! turned off. A property test flaps links at random and checks that there
//! are never two primaries and never two link-driven switchovers closer
//! than the interval.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tandem_core::controller::{AppInput, AppLinks, HostsState, LinkLoss, decide};
use tandem_core::model::{
    AppRoles, EventKind, Health, InstanceStatus, PrimaryGrant, ProcessState, Role,
};
use tandem_core::topology::{App, parse};

const SECOND: u64 = 1000;

fn topology(extra: &str) -> String {
    format!(
        r#"
[[sites]]
name = "dc1"
[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"
[[hosts]]
name = "h2"
site = "dc1"
address = "10.0.0.2"
[apps.cms]
ha = "warm-standby"
command = ["run"]
link_hold_down = "1s"
link_switchover_interval = "60s"
{extra}
[apps.cms.hook]
kind = "http"
port = "http"
path = "/role"
[[apps.cms.instances]]
id = "a"
host = "h1"
priority = 100
ports = {{ http = 8080 }}
[[apps.cms.instances]]
id = "b"
host = "h2"
priority = 50
ports = {{ http = 8080 }}
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
name = "acd"
from = "cms"
to = "switch"
cardinality = "one"
"#
    )
}

fn app(extra: &str) -> App {
    parse("cms.toml", &topology(extra))
        .expect("the test topology parses")
        .app("cms")
        .expect("cms")
        .clone()
}

/// A running, healthy instance acting `role` at `epoch`.
fn status(role: Role, epoch: u64) -> InstanceStatus {
    InstanceStatus {
        host: String::new(),
        process: ProcessState::Running,
        pid: Some(1),
        session: 1,
        incarnation: 1,
        seen_generation: 0,
        health: Health::Healthy,
        health_detail: None,
        acting: role,
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

fn held_by(primary: &str, epoch: u64) -> AppRoles {
    AppRoles {
        generation: 3,
        epoch,
        primary: Some(PrimaryGrant {
            instance: primary.into(),
            epoch,
            incarnation: 1,
            session: 1,
        }),
        ..AppRoles::default()
    }
}

fn statuses(primary: &str, epoch: u64) -> BTreeMap<String, InstanceStatus> {
    ["a", "b"]
        .into_iter()
        .map(|id| {
            let s = if id == primary {
                status(Role::Primary, epoch)
            } else {
                status(Role::Backup, 0)
            };
            (id.to_string(), s)
        })
        .collect()
}

/// What the controller judged: `down` (instance, lost for ms), `up`
/// (instances that have had the link for an hour).
fn links(down: &[(&str, u64)], up: &[&str], now_ms: u64) -> AppLinks {
    let up: Vec<(&str, u64)> = up.iter().map(|id| (*id, 3_600 * SECOND)).collect();
    links_timed(down, &up, now_ms)
}

/// The same, with how long each instance that has the link has had it.
fn links_timed(down: &[(&str, u64)], up: &[(&str, u64)], now_ms: u64) -> AppLinks {
    AppLinks {
        down: down
            .iter()
            .map(|(id, ms)| {
                let loss = LinkLoss {
                    lost_for: Duration::from_millis(*ms),
                    detail: "switch is unreachable: refused".into(),
                };
                (id.to_string(), BTreeMap::from([("acd".to_string(), loss)]))
            })
            .collect(),
        up: up
            .iter()
            .map(|(id, ms)| {
                (
                    id.to_string(),
                    BTreeMap::from([("acd".to_string(), Duration::from_millis(*ms))]),
                )
            })
            .collect(),
        now_ms,
    }
}

fn decide_with(
    app: &App,
    roles: &AppRoles,
    status: &BTreeMap<String, InstanceStatus>,
    links: &AppLinks,
) -> tandem_core::controller::Decision {
    decide(&AppInput {
        app,
        roles,
        status,
        intent: None,
        hosts: HostsState::NONE,
        links,
    })
}

#[test]
fn a_primary_that_lost_its_link_is_demoted_then_the_backup_that_has_it_promoted() {
    let app = app("");
    let now = 1_000 * SECOND;
    let d = decide_with(
        &app,
        &held_by("a", 1),
        &statuses("a", 1),
        &links(&[("a", 1_200)], &["b"], now),
    );
    assert!(d.changed);
    assert_eq!(d.roles.primary, None, "demoted first");
    let sw = d.roles.switchover.as_ref().expect("a switchover");
    assert_eq!(sw.to, "b");
    assert_eq!(sw.intent, "");
    assert_eq!(d.roles.link_switched_at_ms, Some(now));
    let demoted: Vec<_> = d
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Demoted)
        .collect();
    assert_eq!(demoted.len(), 1, "{:?}", d.events);
    assert_eq!(demoted[0].reason, Some("link_lost"));
    assert!(d.intent.is_none(), "no intent to settle: {:?}", d.intent);

    // a has stepped down: b is promoted, and the event names the link.
    let mut st = statuses("a", 1);
    st.insert("a".into(), status(Role::Backup, 0));
    let st_seen: BTreeMap<_, _> = st
        .into_iter()
        .map(|(id, mut s)| {
            s.seen_generation = d.roles.generation;
            (id, s)
        })
        .collect();
    let p = decide_with(
        &app,
        &d.roles,
        &st_seen,
        &links(&[("a", 1_300)], &["b"], now + 100),
    );
    let grant = p.roles.primary.as_ref().expect("b promoted");
    assert_eq!((grant.instance.as_str(), grant.epoch), ("b", 2));
    let promoted = p
        .events
        .iter()
        .find(|e| e.kind == EventKind::Promoted)
        .expect("a promotion event");
    assert_eq!(promoted.reason, Some("link_lost"));
    assert_eq!(
        promoted.message,
        "promoted cms/b (epoch 2): primary cms/a lost its link acd for 1.2 s (switch is unreachable: refused); cms/b has it"
    );
    assert!(p.intent.is_none());
}

#[test]
fn nothing_moves_before_the_hold_down_when_turned_off_or_in_maintenance() {
    let now = 1_000 * SECOND;
    let cases: [(&str, App, AppRoles, u64); 3] = [
        ("within the hold-down", app(""), held_by("a", 1), 999),
        (
            "turned off",
            app("link_failover = false"),
            held_by("a", 1),
            5_000,
        ),
        (
            "in maintenance",
            app(""),
            AppRoles {
                maintenance: true,
                ..held_by("a", 1)
            },
            5_000,
        ),
    ];
    for (what, app, roles, lost_ms) in cases {
        let d = decide_with(
            &app,
            &roles,
            &statuses("a", 1),
            &links(&[("a", lost_ms)], &["b"], now),
        );
        assert_eq!(
            d.roles.primary.as_ref().map(|g| g.instance.as_str()),
            Some("a"),
            "{what}: {d:?}"
        );
        assert!(d.roles.switchover.is_none(), "{what}: {d:?}");
        assert!(
            !d.events.iter().any(|e| e.kind == EventKind::Demoted),
            "{what}: {:?}",
            d.events
        );
    }
}

#[test]
fn when_nobody_fit_has_the_link_nothing_moves_and_it_is_said_once() {
    let app = app("");
    let now = 1_000 * SECOND;
    let cases = [
        (
            "every instance lost it",
            links(&[("a", 3_000), ("b", 3_000)], &[], now),
            statuses("a", 1),
            "every instance of cms has lost it too: nothing moves",
        ),
        (
            "the backup is unhealthy",
            links(&[("a", 3_000)], &["b"], now),
            {
                let mut s = statuses("a", 1);
                if let Some(b) = s.get_mut("b") {
                    b.health = Health::Unhealthy;
                }
                s
            },
            "no fit backup of cms has had it for the hold-down (1.0 s): nothing moves",
        ),
    ];
    for (what, links, st, says) in cases {
        let d = decide_with(&app, &held_by("a", 1), &st, &links);
        assert_eq!(
            d.roles.primary.as_ref().map(|g| g.instance.as_str()),
            Some("a"),
            "{what}"
        );
        assert!(d.roles.switchover.is_none(), "{what}");
        let held: Vec<_> = d
            .events
            .iter()
            .filter(|e| e.kind == EventKind::Link)
            .collect();
        assert_eq!(held.len(), 1, "{what}: {:?}", d.events);
        assert!(
            held[0].message.ends_with(says),
            "{what}: {}",
            held[0].message
        );
        assert!(
            held[0]
                .message
                .starts_with("cms/a lost its link acd for 3.0 s"),
            "{}",
            held[0].message
        );
        // Decided again later, the same loss is not said again.
        let mut later = links.clone();
        for l in later.down.values_mut().flat_map(|m| m.values_mut()) {
            l.lost_for += Duration::from_secs(5);
        }
        let again = decide_with(&app, &d.roles, &st, &later);
        assert!(
            !again.events.iter().any(|e| e.kind == EventKind::Link),
            "{what}: said twice: {:?}",
            again.events
        );
        // Once the primary has its link again, the next loss is said anew.
        let healed = decide_with(&app, &again.roles, &st, &self::links(&[], &["a", "b"], now));
        assert_eq!(healed.roles.link_held, None, "{what}");
    }
}

#[test]
fn a_second_link_driven_switchover_waits_for_the_interval() {
    let app = app("");
    let at = 1_000 * SECOND;
    let roles = AppRoles {
        link_switched_at_ms: Some(at),
        ..held_by("b", 2)
    };
    let st = statuses("b", 2);
    let soon = decide_with(
        &app,
        &roles,
        &st,
        &links(&[("b", 5_000)], &["a"], at + 10 * SECOND),
    );
    assert!(soon.roles.switchover.is_none());
    assert_eq!(
        soon.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("b")
    );
    let held = soon
        .events
        .iter()
        .find(|e| e.kind == EventKind::Link)
        .expect("said why");
    assert!(
        held.message
            .contains("began 10 s ago (at least 60 s apart): nothing moves yet"),
        "{}",
        held.message
    );
    // A clock set back counts as no time passed.
    let back = decide_with(
        &app,
        &roles,
        &st,
        &links(&[("b", 5_000)], &["a"], at - 30 * SECOND),
    );
    assert!(back.roles.switchover.is_none());
    // After the interval: it moves.
    let later = decide_with(
        &app,
        &soon.roles,
        &st,
        &links(&[("b", 65_000)], &["a"], at + 61 * SECOND),
    );
    assert_eq!(
        later.roles.switchover.as_ref().map(|s| s.to.as_str()),
        Some("a")
    );
    assert_eq!(later.roles.link_switched_at_ms, Some(at + 61 * SECOND));
}

#[test]
fn a_backup_that_has_just_regained_the_link_does_not_count_yet() {
    let app = app("");
    let st = statuses("a", 1);
    let roles = held_by("a", 1);
    let soon = decide_with(
        &app,
        &roles,
        &st,
        &links_timed(&[("a", 5_000)], &[("b", 400)], 9),
    );
    assert!(soon.roles.switchover.is_none(), "{soon:?}");
    let later = decide_with(
        &app,
        &soon.roles,
        &st,
        &links_timed(&[("a", 6_000)], &[("b", 1_400)], 9),
    );
    assert_eq!(
        later.roles.switchover.as_ref().map(|s| s.to.as_str()),
        Some("b")
    );
}

#[test]
fn an_app_that_drains_drains_before_a_link_driven_switchover() {
    let app = app("drain = \"300ms\"");
    let d = decide_with(
        &app,
        &held_by("a", 1),
        &statuses("a", 1),
        &links(&[("a", 2_000)], &["b"], 5),
    );
    let sw = d.roles.switchover.as_ref().expect("a switchover");
    assert!(sw.drain.is_some(), "{sw:?}");
    assert_eq!(
        d.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("a"),
        "it keeps its grant while it drains"
    );
}

/// One step of the simulation: time passes, then each instance's link is
/// up or down.
#[derive(Debug, Clone)]
struct Step {
    after_ms: u64,
    a_up: bool,
    b_up: bool,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (0u64..4_000, any::<bool>(), any::<bool>()).prop_map(|(after_ms, a_up, b_up)| Step {
            after_ms,
            a_up,
            b_up,
        }),
        1..120,
    )
}

/// Runs `steps` against the decision, the agents acting on every
/// assignment at once; returns when each link-driven switchover began, or
/// why an invariant broke (two instances acting as primary).
fn simulate(steps: &[Step], interval: Duration) -> Result<Vec<u64>, String> {
    let mut app = app("");
    app.link_failover.interval = interval;
    let mut roles = AppRoles::default();
    let mut st = statuses("none", 0);
    let mut now_ms = 1_000 * SECOND;
    // Per instance: whether its link is up, and since when.
    let mut seen: BTreeMap<&str, (bool, u64)> = BTreeMap::new();
    let mut starts: Vec<u64> = Vec::new();
    for step in steps {
        now_ms += step.after_ms;
        for (id, up) in [("a", step.a_up), ("b", step.b_up)] {
            let e = seen.entry(id).or_insert((up, now_ms));
            if e.0 != up {
                *e = (up, now_ms);
            }
        }
        let timed = |want: bool| -> Vec<(&str, u64)> {
            seen.iter()
                .filter(|(_, (up, _))| *up == want)
                .map(|(id, (_, since))| (*id, now_ms - since))
                .collect()
        };
        let (down, up) = (timed(false), timed(true));
        // Decide until nothing changes.
        for _ in 0..6 {
            let d = decide_with(&app, &roles, &st, &links_timed(&down, &up, now_ms));
            if d.roles.link_switched_at_ms != roles.link_switched_at_ms
                && let Some(at) = d.roles.link_switched_at_ms
            {
                starts.push(at);
            }
            let changed = d.changed;
            roles = d.roles;
            // Agents: the grant holder acts primary at its epoch, every
            // other instance steps down at once.
            for (id, s) in st.iter_mut() {
                match roles.primary.as_ref().filter(|g| &g.instance == id) {
                    Some(g) => {
                        s.acting = Role::Primary;
                        s.acting_epoch = g.epoch;
                    }
                    None => {
                        s.acting = Role::Backup;
                        s.acting_epoch = 0;
                    }
                }
                s.seen_generation = roles.generation;
            }
            if st.values().filter(|s| s.acting == Role::Primary).count() > 1 {
                return Err(format!("two primaries: {st:?}"));
            }
            if !changed {
                break;
            }
        }
    }
    Ok(starts)
}

#[test]
fn the_simulation_switches_over_each_time_the_primary_loses_its_link_after_the_interval() {
    // a is promoted first; then the primary's link fails for 2 s every
    // 15 s while the other has it: a switchover each time.
    let mut steps = vec![Step {
        after_ms: 0,
        a_up: true,
        b_up: true,
    }];
    for round in 0..4 {
        let (a_up, b_up) = if round % 2 == 0 {
            (false, true)
        } else {
            (true, false)
        };
        steps.push(Step {
            after_ms: 13_000,
            a_up,
            b_up,
        });
        steps.push(Step {
            after_ms: 2_000,
            a_up,
            b_up,
        });
    }
    let starts = simulate(&steps, Duration::from_secs(10)).expect("no invariant broken");
    assert_eq!(starts.len(), 4, "{starts:?}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Links flapping at random: never two instances acting as primary,
    /// and link-driven switchovers never begin closer than the interval.
    #[test]
    fn flapping_links_never_make_two_primaries_nor_switch_over_faster_than_the_interval(
        steps in steps()
    ) {
        let starts = simulate(&steps, Duration::from_secs(10));
        prop_assert!(starts.is_ok(), "{starts:?}");
        let starts = starts.unwrap_or_default();
        for pair in starts.windows(2) {
            prop_assert!(
                pair[1] - pair[0] >= 10 * SECOND,
                "link-driven switchovers {} ms apart: {starts:?}",
                pair[1] - pair[0]
            );
        }
    }
}
