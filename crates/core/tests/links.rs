//! Links as an instance's host sees them (the machine's hysteresis per
//! target), as events, and as judged per cardinality.

use std::collections::BTreeMap;
use std::time::Duration;

use tandem_core::controller::status_events;
use tandem_core::instance::{Action, Input, InstanceMachine, InstanceSpec, LinkSpec, Note};
use tandem_core::links::judge;
use tandem_core::model::{
    AppRoles, CertSeen, EventKind, InstanceStatus, LinkReach, PrimaryGrant, ProcessState, Reach,
};
use tandem_core::topology::{HaMode, RestartPolicy, Topology, parse};

const MS: Duration = Duration::from_millis(1);

const TOPOLOGY: &str = r#"
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
host = "h2"
ports = { http = 8080 }
[apps.web]
ha = "none"
command = ["run"]
[[apps.web.instances]]
id = "w"
host = "h1"
ports = { http = 8090 }
[[endpoints]]
name = "switch"
address = "10.0.0.9"
port = 5022
[[links]]
name = "acd"
from = "cms"
to = "switch"
cardinality = "one"
failures_before_down = 2
successes_before_up = 2
[[links]]
from = "web"
to = "cms"
cardinality = "one"
[[links]]
name = "any-cms"
from = "web"
to = "cms"
cardinality = "one-or-more"
[[links]]
name = "maybe-cms"
from = "web"
to = "cms"
cardinality = "optional"
"#;

fn topology() -> Topology {
    parse("links.toml", TOPOLOGY).expect("the test topology parses")
}

fn running_cms() -> InstanceMachine {
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
    m.handle(Input::Tick, Duration::ZERO);
    m.handle(Input::Spawned { pid: 100 }, Duration::ZERO);
    assert_eq!(m.status().process, ProcessState::Running);
    m
}

fn probe(link: &str, target: &str, incarnation: u64, result: Result<(), String>) -> Input {
    Input::LinkProbe {
        link: link.into(),
        target: target.into(),
        incarnation,
        result,
        cert: None,
    }
}

fn reach_of(m: &InstanceMachine, link: &str, target: &str) -> LinkReach {
    m.status().links[link][target].clone()
}

#[test]
fn a_target_goes_down_and_up_only_after_its_consecutive_results() {
    let mut m = running_cms();
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Unknown);
    let step = m.handle(probe("acd", "switch", 1, Ok(())), MS);
    assert!(
        step.actions.is_empty(),
        "one success is not enough: {step:?}"
    );
    let step = m.handle(probe("acd", "switch", 1, Ok(())), 2 * MS);
    assert_eq!(step.actions, [Action::Publish]);
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Up);

    let refused = || Err("tcp connect to 10.0.0.9:5022 failed: refused".to_string());
    let step = m.handle(probe("acd", "switch", 1, refused()), 3 * MS);
    assert!(step.actions.is_empty(), "one failure is a blip: {step:?}");
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Up);
    // A success in between starts the count again.
    m.handle(probe("acd", "switch", 1, Ok(())), 4 * MS);
    m.handle(probe("acd", "switch", 1, refused()), 5 * MS);
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Up);
    let step = m.handle(probe("acd", "switch", 1, refused()), 6 * MS);
    assert_eq!(step.actions, [Action::Publish]);
    assert!(
        step.notes.iter().any(|n| matches!(
            n,
            Note::LinkChanged {
                state: Reach::Down,
                ..
            }
        )),
        "{step:?}"
    );
    let down = reach_of(&m, "acd", "switch");
    assert_eq!(down.state, Reach::Down);
    assert_eq!(
        down.detail.as_deref(),
        Some("tcp connect to 10.0.0.9:5022 failed: refused")
    );
}

#[test]
fn results_of_another_incarnation_or_link_change_nothing() {
    let mut m = running_cms();
    let before = m.status();
    for input in [
        probe("acd", "switch", 0, Ok(())),
        probe("acd", "switch", 2, Ok(())),
        probe("acd", "nowhere", 1, Ok(())),
        probe("nolink", "switch", 1, Ok(())),
    ] {
        m.handle(input.clone(), MS);
        m.handle(input, 2 * MS);
    }
    assert_eq!(m.status(), before);
}

#[test]
fn a_restarted_process_starts_with_every_target_unknown_and_a_stopped_one_reports_none() {
    let mut m = running_cms();
    m.handle(probe("acd", "switch", 1, Ok(())), MS);
    m.handle(probe("acd", "switch", 1, Ok(())), 2 * MS);
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Up);
    m.handle(
        Input::Exited {
            how: "exited with code 1".into(),
        },
        3 * MS,
    );
    assert!(m.status().links.is_empty(), "{:?}", m.status().links);
    // Restarted after its backoff.
    let t = m.next_wakeup().expect("a restart is due");
    m.handle(Input::Tick, t);
    m.handle(Input::Spawned { pid: 101 }, t);
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Unknown);
}

#[test]
fn set_links_keeps_what_unchanged_links_have_seen() {
    let mut m = running_cms();
    m.handle(probe("acd", "switch", 1, Ok(())), MS);
    m.handle(probe("acd", "switch", 1, Ok(())), 2 * MS);
    let mut specs = LinkSpec::of_app(&topology(), "cms");
    m.set_links(specs.clone());
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Up);
    specs[0].failures = 5;
    m.set_links(specs);
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Unknown);
    m.set_links(Vec::new());
    assert!(m.status().links.is_empty());
}

fn status_with(links: &[(&str, &[(&str, Reach)])]) -> InstanceStatus {
    let mut m = running_cms();
    m.set_links(Vec::new());
    let mut s = m.status();
    s.links = links
        .iter()
        .map(|(l, targets)| {
            let t: BTreeMap<String, LinkReach> = targets
                .iter()
                .map(|(name, state)| {
                    (
                        name.to_string(),
                        LinkReach {
                            state: *state,
                            detail: (*state == Reach::Down).then(|| "refused".to_string()),
                            cert: None,
                        },
                    )
                })
                .collect();
            (l.to_string(), t)
        })
        .collect();
    s
}

fn roles_with_primary(instance: &str) -> AppRoles {
    AppRoles {
        primary: Some(PrimaryGrant {
            instance: instance.into(),
            epoch: 3,
            incarnation: 1,
            session: 7,
        }),
        ..AppRoles::default()
    }
}

/// (link, what the host sees, where the target's primary is, verdict)
type Case<'a> = (
    &'a tandem_core::topology::Link,
    &'a [(&'a str, Reach)],
    Option<&'a AppRoles>,
    Reach,
);

#[test]
fn each_cardinality_is_judged_from_the_targets_that_count() {
    use Reach::{Down, Unknown, Up};
    let t = topology();
    let one = t.link("web->cms").expect("one");
    let any = t.link("any-cms").expect("one-or-more");
    let maybe = t.link("maybe-cms").expect("optional");
    let acd = t.link("acd").expect("endpoint");
    let primary_a = roles_with_primary("a");
    // (link, what the host sees, where the target's primary is, verdict)
    let cases: &[Case<'_>] = &[
        // `one` to an app with a primary: only the primary counts.
        (one, &[("a", Up), ("b", Down)], Some(&primary_a), Up),
        (one, &[("a", Down), ("b", Up)], Some(&primary_a), Down),
        (one, &[("a", Unknown), ("b", Up)], Some(&primary_a), Unknown),
        (one, &[("a", Up), ("b", Up)], None, Unknown),
        // `one-or-more` and `optional`: any target.
        (any, &[("a", Down), ("b", Up)], Some(&primary_a), Up),
        (any, &[("a", Down), ("b", Down)], Some(&primary_a), Down),
        (any, &[("a", Down), ("b", Unknown)], None, Unknown),
        (maybe, &[("a", Down), ("b", Down)], None, Down),
        // An endpoint: the endpoint.
        (acd, &[("switch", Up)], None, Up),
        (acd, &[("switch", Down)], None, Down),
    ];
    for (link, seen, roles, want) in cases {
        let status = status_with(&[(link.name.as_str(), seen)]);
        let got = judge(&t, link, Some(&status), *roles);
        assert_eq!(
            got.state, *want,
            "{} seeing {seen:?} with roles {roles:?}: {got:?}",
            link.name
        );
        assert_eq!(got.required, link.name != "maybe-cms");
    }
    let down = judge(
        &t,
        one,
        Some(&status_with(&[("web->cms", &[("a", Down), ("b", Up)])])),
        Some(&primary_a),
    );
    assert_eq!(down.detail, "cms/a (the primary) is unreachable: refused");
    let not_running = judge(&t, one, None, Some(&primary_a));
    assert_eq!(not_running.state, Unknown);
    assert_eq!(not_running.detail, "the instance is not running");
}

#[test]
fn a_target_lost_or_regained_is_an_event_but_a_first_sighting_or_a_restart_is_not() {
    use Reach::{Down, Unknown, Up};
    let ev = |o: Reach, n: Reach| {
        status_events(
            "cms",
            "a",
            Some(&status_with(&[("acd", &[("switch", o)])])),
            Some(&status_with(&[("acd", &[("switch", n)])])),
        )
        .into_iter()
        .filter(|e| e.kind == EventKind::Link)
        .map(|e| (e.reason.unwrap_or_default().to_string(), e.message.clone()))
        .collect::<Vec<_>>()
    };
    assert_eq!(
        ev(Up, Down),
        [(
            "link_down".to_string(),
            "cms/a: link acd to switch is down (refused)".to_string()
        )]
    );
    assert_eq!(ev(Unknown, Down).len(), 1);
    assert_eq!(
        ev(Down, Up),
        [(
            "link_up".to_string(),
            "cms/a: link acd to switch is up again".to_string()
        )]
    );
    assert!(ev(Unknown, Up).is_empty());
    assert!(ev(Up, Unknown).is_empty());
    assert!(ev(Down, Down).is_empty());
    // A target stopped by design (a cold standby) is no news either way;
    // the others of the same status still are.
    let quiet = tandem_core::controller::status_events_with(
        "cms",
        "a",
        Some(&status_with(&[("acd", &[("switch", Up), ("standby", Up)])])),
        Some(&status_with(&[(
            "acd",
            &[("switch", Down), ("standby", Down)],
        )])),
        |link, target| link == "acd" && target == "standby",
    );
    let messages: Vec<&str> = quiet.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["cms/a: link acd to switch is down (refused)"]);
}

#[test]
fn a_tls_targets_certificate_is_reported_and_one_about_to_expire_is_an_event_once() {
    let mut m = running_cms();
    let cert = |expiring| CertSeen {
        not_after: "2027-01-05 12:00:00 UTC".into(),
        expiring,
    };
    let tls_probe = |expiring| Input::LinkProbe {
        link: "acd".into(),
        target: "switch".into(),
        incarnation: 1,
        result: Ok(()),
        cert: Some(cert(expiring)),
    };
    let step = m.handle(tls_probe(false), MS);
    assert_eq!(step.actions, [Action::Publish], "a certificate first seen");
    assert_eq!(reach_of(&m, "acd", "switch").cert, Some(cert(false)));
    m.handle(tls_probe(false), 2 * MS);
    assert_eq!(reach_of(&m, "acd", "switch").state, Reach::Up);
    let step = m.handle(tls_probe(false), 3 * MS);
    assert!(
        step.actions.is_empty(),
        "the same certificate again: {step:?}"
    );
    let before = m.status();
    m.handle(tls_probe(true), 4 * MS);
    let after = m.status();
    assert_eq!(reach_of(&m, "acd", "switch").cert, Some(cert(true)));
    let events = status_events("cms", "a", Some(&before), Some(&after));
    let expiring: Vec<_> = events
        .iter()
        .filter(|e| e.reason == Some("cert_expiring"))
        .collect();
    assert_eq!(expiring.len(), 1, "{events:?}");
    assert_eq!(
        expiring[0].message,
        "cms/a: link acd to switch: its certificate expires soon (not after 2027-01-05 12:00:00 UTC)"
    );
    assert!(
        status_events("cms", "a", Some(&after), Some(&after)).is_empty(),
        "said once"
    );
}
