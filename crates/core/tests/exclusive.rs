//! Exclusive link groups in the instance's machine: the first healthy link
//! is enabled; the active one is always disabled and confirmed before
//! another is enabled; an unconfirmed disable or two links reported active
//! get the process killed. A property test drives a simulated process
//! (whose hooks succeed, fail, or half happen) through random flaps.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;
use tandem_core::instance::{
    Action, ENABLE_RETRY, GroupSpec, Input, InstanceMachine, InstanceSpec, KillReason, LinkSpec,
};
use tandem_core::model::ProcessState;
use tandem_core::topology::{HaMode, LinkAction, RestartPolicy, Topology, parse};

const MS: Duration = Duration::from_millis(1);

const TOPOLOGY: &str = r#"
[[sites]]
name = "dc1"
[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"
[apps.cms]
ha = "warm-standby"
command = ["run"]
[apps.cms.hook]
kind = "http"
port = "http"
path = "/role"
[[apps.cms.instances]]
id = "a"
host = "h1"
ports = { http = 8080 }
[[apps.cms.instances]]
id = "b"
host = "h1"
ports = { http = 8081 }
[[endpoints]]
name = "switch-main"
address = "10.0.0.9"
port = 7000
[[endpoints]]
name = "switch-survivable"
address = "10.0.0.9"
port = 7001
[[links]]
name = "main"
from = "cms"
to = "switch-main"
cardinality = "one"
exclusive = "acd"
failures_before_down = 1
successes_before_up = 1
hook = { kind = "http", port = "http", path = "/link" }
[[links]]
name = "surv"
from = "cms"
to = "switch-survivable"
cardinality = "one"
exclusive = "acd"
failures_before_down = 1
successes_before_up = 1
hook = { kind = "http", port = "http", path = "/link" }
"#;

fn topology() -> Topology {
    parse("exclusive.toml", TOPOLOGY).expect("the test topology parses")
}

fn machine() -> InstanceMachine {
    let t = topology();
    let mut m = InstanceMachine::new(InstanceSpec {
        name: "cms/a".into(),
        host: "h1".into(),
        ha: HaMode::WarmStandby,
        has_hook: true,
        restart: RestartPolicy::default(),
        checks: Vec::new(),
        session: 7,
    });
    m.set_links(LinkSpec::of_app(&t, "cms"));
    m.set_groups(GroupSpec::of_app(&t, "cms"));
    m.handle(Input::Tick, Duration::ZERO);
    m.handle(Input::Spawned { pid: 100 }, Duration::ZERO);
    assert_eq!(m.status().process, ProcessState::Running);
    m
}

fn target(link: &str) -> &'static str {
    if link == "main" {
        "switch-main"
    } else {
        "switch-survivable"
    }
}

fn probe(m: &InstanceMachine, link: &str, up: bool) -> Input {
    Input::LinkProbe {
        link: link.into(),
        target: target(link).into(),
        incarnation: m.incarnation(),
        result: if up { Ok(()) } else { Err("refused".into()) },
        cert: None,
    }
}

fn done(m: &InstanceMachine, link: &str, action: LinkAction, ok: bool) -> Input {
    Input::LinkHookDone {
        link: link.into(),
        action,
        incarnation: m.incarnation(),
        result: if ok {
            Ok(())
        } else {
            Err("POST answered 503".into())
        },
    }
}

/// The link hooks of a step.
fn hooks(actions: &[Action]) -> Vec<(String, LinkAction)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::LinkHook { link, action, .. } => Some((link.clone(), *action)),
            _ => None,
        })
        .collect()
}

fn hook(link: &str, action: LinkAction) -> Vec<(String, LinkAction)> {
    vec![(link.to_string(), action)]
}

fn active(m: &InstanceMachine) -> Option<String> {
    m.status().active_links.get("acd").cloned()
}

/// A machine with `main` enabled and confirmed, `surv` up too.
fn on_main() -> InstanceMachine {
    let mut m = machine();
    let step = m.handle(probe(&m, "main", true), MS);
    assert_eq!(hooks(&step.actions), hook("main", LinkAction::Enable));
    let step = m.handle(probe(&m, "surv", true), 2 * MS);
    assert_eq!(hooks(&step.actions), [], "one action at a time");
    let step = m.handle(done(&m, "main", LinkAction::Enable, true), 3 * MS);
    assert_eq!(hooks(&step.actions), []);
    assert!(step.actions.contains(&Action::Publish));
    assert_eq!(active(&m).as_deref(), Some("main"));
    m
}

#[test]
fn nothing_is_enabled_before_a_link_is_seen_up_and_the_first_one_is_preferred() {
    let mut m = machine();
    assert_eq!(hooks(&m.handle(Input::Tick, MS).actions), []);
    // The second link is up before the first is judged: it waits.
    let step = m.handle(probe(&m, "surv", true), MS);
    assert_eq!(hooks(&step.actions), []);
    // The first is down: the second is used.
    let step = m.handle(probe(&m, "main", false), MS);
    assert_eq!(hooks(&step.actions), hook("surv", LinkAction::Enable));
    m.handle(done(&m, "surv", LinkAction::Enable, true), 2 * MS);
    assert_eq!(active(&m).as_deref(), Some("surv"));
    // The first comes up: disabled the second first, then enabled.
    let step = m.handle(probe(&m, "main", true), 3 * MS);
    assert_eq!(hooks(&step.actions), hook("surv", LinkAction::Disable));
    assert_eq!(active(&m).as_deref(), Some("surv"), "not yet confirmed");
    let step = m.handle(done(&m, "surv", LinkAction::Disable, true), 4 * MS);
    assert_eq!(hooks(&step.actions), hook("main", LinkAction::Enable));
    assert_eq!(active(&m), None);
    m.handle(done(&m, "main", LinkAction::Enable, true), 5 * MS);
    assert_eq!(active(&m).as_deref(), Some("main"));
}

#[test]
fn a_new_process_starts_on_its_first_link_when_the_second_is_seen_up_first() {
    let mut m = machine();
    assert_eq!(hooks(&m.handle(probe(&m, "surv", true), MS).actions), []);
    let step = m.handle(probe(&m, "main", true), 2 * MS);
    assert_eq!(hooks(&step.actions), hook("main", LinkAction::Enable));
}

#[test]
fn the_active_link_going_down_is_disabled_and_confirmed_before_the_next_is_enabled() {
    let mut m = on_main();
    let step = m.handle(probe(&m, "main", false), 10 * MS);
    assert_eq!(hooks(&step.actions), hook("main", LinkAction::Disable));
    // Flaps while the disable runs change nothing.
    for (i, up) in [true, false, true, false].into_iter().enumerate() {
        let step = m.handle(probe(&m, "main", up), (11 + i as u32) * MS);
        assert_eq!(hooks(&step.actions), [], "{step:?}");
    }
    let step = m.handle(done(&m, "main", LinkAction::Disable, true), 20 * MS);
    assert_eq!(hooks(&step.actions), hook("surv", LinkAction::Enable));
    m.handle(done(&m, "surv", LinkAction::Enable, true), 21 * MS);
    assert_eq!(active(&m).as_deref(), Some("surv"));
}

#[test]
fn with_every_link_down_the_active_one_stays() {
    let mut m = on_main();
    let step = m.handle(probe(&m, "surv", false), 10 * MS);
    assert_eq!(hooks(&step.actions), []);
    let step = m.handle(probe(&m, "main", false), 11 * MS);
    assert_eq!(hooks(&step.actions), [], "nothing better to move to");
    assert_eq!(active(&m).as_deref(), Some("main"));
}

#[test]
fn a_disable_not_confirmed_kills_the_process_and_enables_nothing() {
    let mut m = on_main();
    m.handle(probe(&m, "main", false), 10 * MS);
    let step = m.handle(done(&m, "main", LinkAction::Disable, false), 11 * MS);
    assert_eq!(hooks(&step.actions), []);
    assert!(
        step.actions.iter().any(|a| matches!(
            a,
            Action::Kill {
                reason: KillReason::LinkNotDisabled { link, .. }
            } if link == "main"
        )),
        "{step:?}"
    );
    // Nothing more is enabled while it dies.
    assert_eq!(hooks(&m.handle(Input::Tick, 12 * MS).actions), []);
    assert_eq!(
        hooks(&m.handle(probe(&m, "surv", true), 13 * MS).actions),
        []
    );
    // The next process starts with nothing active.
    m.handle(
        Input::Exited {
            how: "killed by signal 9".into(),
        },
        14 * MS,
    );
    assert_eq!(active(&m), None);
}

#[test]
fn a_failed_enable_is_undone_and_the_link_left_alone_for_a_while() {
    let mut m = machine();
    m.handle(probe(&m, "main", true), MS);
    m.handle(probe(&m, "surv", true), MS);
    let step = m.handle(done(&m, "main", LinkAction::Enable, false), 2 * MS);
    assert_eq!(
        hooks(&step.actions),
        hook("main", LinkAction::Disable),
        "it may be half enabled"
    );
    let step = m.handle(done(&m, "main", LinkAction::Disable, true), 3 * MS);
    assert_eq!(hooks(&step.actions), hook("surv", LinkAction::Enable));
    m.handle(done(&m, "surv", LinkAction::Enable, true), 4 * MS);
    assert_eq!(active(&m).as_deref(), Some("surv"));
    // Once the retry time is past, the preferred link is tried again.
    let wake = m.next_wakeup().expect("a retry is planned");
    assert_eq!(wake, 2 * MS + ENABLE_RETRY);
    assert_eq!(hooks(&m.handle(Input::Tick, wake - MS).actions), []);
    let step = m.handle(Input::Tick, wake);
    assert_eq!(hooks(&step.actions), hook("surv", LinkAction::Disable));
    assert_eq!(m.next_wakeup(), None, "no retry left to wait for");
}

#[test]
fn a_refused_link_seen_down_and_up_again_is_tried_at_once() {
    let mut m = machine();
    m.handle(probe(&m, "main", true), MS);
    m.handle(probe(&m, "surv", true), MS);
    // Enabling main fails (its switch just went away), is undone, and
    // surv is used.
    m.handle(done(&m, "main", LinkAction::Enable, false), 2 * MS);
    m.handle(done(&m, "main", LinkAction::Disable, true), 3 * MS);
    m.handle(done(&m, "surv", LinkAction::Enable, true), 4 * MS);
    assert_eq!(active(&m).as_deref(), Some("surv"));
    // Main is seen down, then up again well before the retry time: it is
    // preferred at once.
    assert_eq!(
        hooks(&m.handle(probe(&m, "main", false), 5 * MS).actions),
        []
    );
    let step = m.handle(probe(&m, "main", true), 6 * MS);
    assert_eq!(hooks(&step.actions), hook("surv", LinkAction::Disable));
}

#[test]
fn two_links_of_a_group_reported_active_get_the_process_killed_once() {
    let mut m = on_main();
    let report = |m: &InstanceMachine, links: &[&str]| Input::ActiveLinks {
        incarnation: m.incarnation(),
        links: links.iter().map(|l| l.to_string()).collect(),
    };
    assert!(m.handle(report(&m, &["main"]), 10 * MS).actions.is_empty());
    assert!(m.handle(report(&m, &[]), 11 * MS).actions.is_empty());
    let step = m.handle(report(&m, &["main", "surv"]), 12 * MS);
    let killed: Vec<_> = step
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Kill { reason } => Some(reason.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(
        killed,
        [
            "cms/a: reported links main and surv of exclusive group acd active at once: killed (fenced)"
        ]
    );
    assert!(
        m.handle(report(&m, &["main", "surv"]), 13 * MS)
            .actions
            .is_empty(),
        "killed once"
    );
    // A report of an older process counts for nothing.
    let mut m = on_main();
    let stale = Input::ActiveLinks {
        incarnation: m.incarnation() - 1,
        links: vec!["main".into(), "surv".into()],
    };
    assert!(m.handle(stale, 10 * MS).actions.is_empty());
}

#[test]
fn an_active_link_the_process_stops_reporting_is_lost_and_enabled_again() {
    let mut m = on_main();
    let report = |m: &InstanceMachine, links: &[&str]| Input::ActiveLinks {
        incarnation: m.incarnation(),
        links: links.iter().map(|l| l.to_string()).collect(),
    };
    assert!(m.handle(report(&m, &["main"]), 10 * MS).actions.is_empty());
    // Once may be a report read just before the process wrote it.
    assert!(m.handle(report(&m, &[]), 11 * MS).actions.is_empty());
    assert!(m.handle(report(&m, &["main"]), 12 * MS).actions.is_empty());
    assert!(m.handle(report(&m, &[]), 13 * MS).actions.is_empty());
    let step = m.handle(report(&m, &[]), 14 * MS);
    assert_eq!(hooks(&step.actions), hook("main", LinkAction::Enable));
    assert!(
        step.notes
            .iter()
            .any(|n| n.to_string() == "cms/a: no longer reports link main of exclusive group acd active: it lost it by itself; choosing again"),
        "{step:?}"
    );
    assert_eq!(active(&m), None);
    m.handle(done(&m, "main", LinkAction::Enable, true), 15 * MS);
    assert_eq!(active(&m).as_deref(), Some("main"));
}

#[test]
fn hook_results_of_an_older_process_count_for_nothing() {
    let mut m = machine();
    m.handle(probe(&m, "main", true), MS);
    let old = done(&m, "main", LinkAction::Enable, true);
    m.handle(
        Input::Exited {
            how: "exited with code 1".into(),
        },
        2 * MS,
    );
    let wake = m.next_wakeup().expect("a restart is planned");
    m.handle(Input::Tick, wake);
    m.handle(Input::Spawned { pid: 101 }, wake);
    m.handle(old, wake + MS);
    assert_eq!(active(&m), None);
    // The new process gets its own enable once the link is seen up.
    let step = m.handle(probe(&m, "main", true), wake + 2 * MS);
    assert_eq!(hooks(&step.actions), hook("main", LinkAction::Enable));
}

/// What happens next in the simulation.
#[derive(Debug, Clone)]
enum Event {
    /// A probe result of a link.
    Probe { main: bool, up: bool },
    /// The hook running completes: succeeds, fails cleanly, or fails
    /// having done the action anyway.
    Complete { ok: bool, half: bool },
    /// Time passes.
    Tick(u64),
    /// The process crashes (it is restarted later).
    Crash,
    /// The process loses its active link by itself (the switch closed it).
    Drop,
    /// The runtime reads what the process says it has active.
    Report,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (any::<bool>(), any::<bool>()).prop_map(|(main, up)| Event::Probe { main, up }),
        4 => (prop::bool::weighted(0.85), any::<bool>())
            .prop_map(|(ok, half)| Event::Complete { ok, half }),
        2 => (1u64..3000).prop_map(Event::Tick),
        1 => Just(Event::Crash),
        1 => Just(Event::Drop),
        3 => Just(Event::Report),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Whatever the flapping, the failures and the crashes, the simulated
    /// process never has two links of the group enabled at once, and
    /// tandem never believes a link active that the process does not have.
    #[test]
    fn two_links_are_never_enabled_at_once(events in prop::collection::vec(event(), 1..200)) {
        let mut m = machine();
        let mut now = Duration::ZERO;
        // What the simulated process really has enabled.
        let mut enabled: BTreeSet<String> = BTreeSet::new();
        // The hook running, if any.
        let mut running: Option<(String, LinkAction, u64)> = None;
        let mut alive = true;
        // A link the process lost by itself, and the reports read since
        // while no hook ran.
        let mut dropped: Option<(String, u32)> = None;
        for e in events {
            now += MS;
            let step = match e {
                Event::Probe { main, up } => {
                    let link = if main { "main" } else { "surv" };
                    m.handle(probe(&m, link, up), now)
                }
                Event::Complete { ok, half } => {
                    let Some((link, action, inc)) = running.take() else { continue };
                    if ok || half {
                        match action {
                            LinkAction::Enable => {
                                prop_assert!(
                                    enabled.iter().all(|l| *l == link),
                                    "enabling {link} while {enabled:?} is enabled"
                                );
                                enabled.insert(link.clone());
                            }
                            LinkAction::Disable => {
                                enabled.remove(&link);
                            }
                        }
                    }
                    let result = if ok { Ok(()) } else { Err("failed".to_string()) };
                    m.handle(Input::LinkHookDone { link, action, incarnation: inc, result }, now)
                }
                Event::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    m.handle(Input::Tick, now)
                }
                Event::Crash => {
                    if !alive { continue }
                    alive = false;
                    enabled.clear();
                    m.handle(Input::Exited { how: "exited with code 1".into() }, now)
                }
                Event::Drop => {
                    let Some(l) = enabled.pop_first() else { continue };
                    dropped = Some((l, 0));
                    continue;
                }
                Event::Report => {
                    if !alive { continue }
                    if running.is_none() && let Some((_, n)) = &mut dropped {
                        *n += 1;
                    }
                    let links = enabled.iter().cloned().collect();
                    m.handle(Input::ActiveLinks { incarnation: m.incarnation(), links }, now)
                }
            };
            for a in &step.actions {
                match a {
                    Action::LinkHook { link, action, incarnation } => {
                        prop_assert!(running.is_none(), "a second hook while {running:?} runs");
                        running = Some((link.clone(), *action, *incarnation));
                    }
                    Action::Kill { .. } => {
                        alive = false;
                        enabled.clear();
                        running = None;
                        m.handle(Input::Exited { how: "killed by signal 9".into() }, now);
                    }
                    _ => {}
                }
            }
            if !alive && let Some(wake) = m.next_wakeup() {
                now = now.max(wake);
                m.handle(Input::Tick, now);
                let step = m.handle(Input::Spawned { pid: 100 }, now);
                let hooked = step.actions.iter().any(|a| matches!(a, Action::LinkHook { .. }));
                prop_assert!(!hooked, "a new process enables nothing before a link is seen up");
                alive = m.status().process == ProcessState::Running;
                running = None;
            }
            prop_assert!(enabled.len() <= 1, "two links enabled: {enabled:?}");
            if let Some(a) = active(&m) {
                // Only a link lost by the process and not reported missing
                // enough times yet may be believed active wrongly.
                let unreported = dropped
                    .as_ref()
                    .is_some_and(|(l, n)| *l == a && *n < tandem_core::instance::MISSING_REPORTS);
                prop_assert!(
                    enabled.contains(&a) || unreported,
                    "tandem believes {a} active; the process has {enabled:?} (dropped: {dropped:?})"
                );
            }
            if !alive || active(&m).is_none_or(|a| enabled.contains(&a)) {
                dropped = None;
            }
        }
    }
}
