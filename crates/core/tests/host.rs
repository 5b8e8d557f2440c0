//! Table tests of the host machine: lease renewal timing, fence deadlines,
//! failsafe rounds and answers, promotion holds, watchdog deadlines and
//! topology changes, each asserting the exact actions and notes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem_core::host::{
    FailsafeAnswer, FailsafeAsk, HostAction, HostConfig, HostInput, HostMachine, HostNote,
    HostStep, LeaseInput,
};
use tandem_core::instance::{Action, Input};
use tandem_core::model::{AppRoles, PrimaryGrant, Role};
use tandem_core::topology::{Topology, parse};

const MS: Duration = Duration::from_millis(1);
const LEASE: i64 = 7;

/// Two hosts, one warm-standby app `web` with `a` on h1 and `b` on h2,
/// and `c` (a second app) on h1. Lease 3 s, renew 500 ms, margin 1 s.
const TOPOLOGY: &str = r#"
[cluster]
agent_port = 7400

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

[apps.web]
ha = "warm-standby"
command = ["demo"]

[apps.web.hook]
kind = "command"
command = ["hook"]
timeout = "500ms"

[[apps.web.instances]]
id = "a"
host = "h1"
priority = 2

[[apps.web.instances]]
id = "b"
host = "h2"
priority = 1

[apps.other]
ha = "none"
command = ["demo"]

[[apps.other.instances]]
id = "c"
host = "h1"
"#;

fn topology(text: &str) -> Arc<Topology> {
    Arc::new(parse("t.toml", text).expect("topology"))
}

fn machine(host: &str, watchdog: bool) -> HostMachine {
    HostMachine::new(
        topology(TOPOLOGY),
        HostConfig {
            host: host.into(),
            watchdog,
        },
    )
}

fn granted(sent_at: Duration) -> HostInput {
    HostInput::Lease(LeaseInput::Granted {
        lease: LEASE,
        sent_at,
        ttl: 3000 * MS,
    })
}

fn renewed(sent_at: Duration) -> HostInput {
    HostInput::Lease(LeaseInput::Renewed {
        lease: LEASE,
        sent_at,
    })
}

fn grant_web(instance: &str, epoch: u64, generation: u64) -> HostInput {
    HostInput::Assigned {
        app: "web".into(),
        roles: Box::new(AppRoles {
            generation,
            epoch,
            primary: Some(PrimaryGrant {
                instance: instance.into(),
                epoch,
                incarnation: 1,
                session: LEASE,
            }),
            roles: [
                (
                    "a".to_string(),
                    if instance == "a" {
                        Role::Primary
                    } else {
                        Role::Backup
                    },
                ),
                (
                    "b".to_string(),
                    if instance == "b" {
                        Role::Primary
                    } else {
                        Role::Backup
                    },
                ),
            ]
            .into(),
            ..AppRoles::default()
        }),
    }
}

/// Carries out the instance actions of a step the way a runtime would:
/// spawns succeed (pid 100 + index), hooks succeed, kills exit.
fn run(m: &mut HostMachine, step: HostStep, now: Duration) -> Vec<HostStep> {
    let mut steps = vec![];
    let mut pending = vec![step];
    while let Some(step) = pending.pop() {
        for a in &step.actions {
            let feedback = match a {
                HostAction::Instance(i, Action::Spawn { .. }) => Some(Input::Spawned {
                    pid: 100 + *i as u32,
                }),
                HostAction::Instance(
                    i,
                    Action::RunHook {
                        role,
                        epoch,
                        incarnation,
                    },
                ) => {
                    let _ = i;
                    Some(Input::HookDone {
                        role: *role,
                        epoch: *epoch,
                        incarnation: *incarnation,
                        result: Ok(()),
                    })
                }
                HostAction::Instance(_, Action::Kill { .. } | Action::Terminate) => {
                    Some(Input::Exited {
                        how: "killed by signal 9".into(),
                    })
                }
                _ => None,
            };
            if let (Some(input), HostAction::Instance(i, _)) = (feedback, a) {
                pending.push(m.handle(HostInput::Instance(*i, input), now));
            }
        }
        steps.push(step);
    }
    steps
}

/// h1 with its lease granted at 0 and every instance started.
fn started(watchdog: bool) -> HostMachine {
    let mut m = machine("h1", watchdog);
    let s = m.handle(granted(Duration::ZERO), Duration::ZERO);
    run(&mut m, s, Duration::ZERO);
    let s = m.handle(HostInput::Begin, Duration::ZERO);
    run(&mut m, s, Duration::ZERO);
    m
}

/// h1 with `web/a` primary at epoch 1.
fn primary(watchdog: bool) -> HostMachine {
    let mut m = started(watchdog);
    let s = m.handle(grant_web("a", 1, 1), MS);
    run(&mut m, s, MS);
    let st = m.status(0);
    assert_eq!((st.acting, st.acting_epoch), (Role::Primary, 1));
    m
}

fn has_fence(step: &HostStep, i: usize) -> bool {
    // A fenced warm-standby primary is demoted through its hook.
    step.actions.iter().any(|a| {
        matches!(a, HostAction::Instance(j, Action::RunHook { role: Role::Backup, .. }) if *j == i)
    })
}

fn notes(step: &HostStep) -> Vec<&'static str> {
    step.notes.iter().map(HostNote::name).collect()
}

#[test]
fn first_grant_builds_the_locals_binds_the_lease_and_offers_the_session() {
    let mut m = machine("h1", false);
    assert!(m.locals().is_empty());
    let s = m.handle(granted(Duration::ZERO), Duration::ZERO);
    assert_eq!(m.locals().len(), 2);
    assert_eq!(m.locals()[0].name(), "web/a");
    assert_eq!(m.locals()[1].name(), "other/c");
    assert!(s.actions.contains(&HostAction::Added(0)));
    assert!(s.actions.contains(&HostAction::BindLease(Some(LEASE))));
    assert!(s.actions.contains(&HostAction::PublishHost));
    assert_eq!(s.actions.last(), Some(&HostAction::Session(Some(LEASE))));
    // Nothing starts before the stored assignments are read.
    assert!(
        !s.actions
            .iter()
            .any(|a| matches!(a, HostAction::Instance(_, Action::Spawn { .. })))
    );
    let s = m.handle(HostInput::Begin, Duration::ZERO);
    let spawns = s
        .actions
        .iter()
        .filter(|a| matches!(a, HostAction::Instance(_, Action::Spawn { .. })))
        .count();
    assert_eq!(spawns, 2);
}

#[test]
fn fence_deadline_is_the_last_sent_renewal_plus_ttl_minus_margin() {
    let cases: &[(&[u32], u32)] = &[
        // (renewals sent at, in ms) → fence at (ms)
        (&[], 2000),
        (&[500], 2500),
        (&[500, 1000], 3000),
        // A renewal sent earlier than the grant's moves nothing back.
        (&[1000, 400], 3000),
    ];
    for (sent, fence_ms) in cases {
        let mut m = primary(false);
        for s in *sent {
            let step = m.handle(renewed(*s * MS), *s * MS + 5 * MS);
            assert!(!has_fence(&step, 0));
        }
        assert_eq!(m.next_wakeup(), Some(*fence_ms * MS), "renewals {sent:?}");
        let early = m.handle(HostInput::Tick, (*fence_ms - 1) * MS);
        assert!(!has_fence(&early, 0), "fenced early with renewals {sent:?}");
        let due = m.handle(HostInput::Tick, *fence_ms * MS);
        assert!(has_fence(&due, 0), "not fenced at {fence_ms} ms: {due:?}");
        assert!(due.actions.contains(&HostAction::Session(None)));
        assert_eq!(notes(&due)[0], "session_fenced");
        assert!(m.locals()[0].fenced());
    }
}

#[test]
fn a_renewal_in_time_lifts_fencing_a_late_one_does_not() {
    // Fenced at 2 s; a renewal sent at 2.5 s is valid until 5.5 s.
    for (sent_ms, now_ms, lifted) in [(2500u32, 2600u32, true), (2500, 4600, false)] {
        let mut m = primary(false);
        let s = m.handle(HostInput::Tick, 2000 * MS);
        run(&mut m, s, 2000 * MS);
        assert_eq!(m.status(0).acting, Role::Backup);
        let s = m.handle(renewed(sent_ms * MS), now_ms * MS);
        assert_eq!(
            s.actions.contains(&HostAction::Session(Some(LEASE))),
            lifted,
            "{s:?}"
        );
        assert_eq!(notes(&s).contains(&"fencing_lifted"), lifted);
        assert_eq!(!m.locals()[0].fenced(), lifted);
        // Lifted, it acts on its grant again (the lease never ended, so no
        // one else can have been promoted); not lifted, it stays down.
        run(&mut m, s, now_ms * MS);
        let want = if lifted { Role::Primary } else { Role::Backup };
        assert_eq!(m.status(0).acting, want);
    }
}

#[test]
fn an_expired_lease_fences_everything_at_once_and_unbinds_statuses() {
    let mut m = primary(false);
    let s = m.handle(
        HostInput::Lease(LeaseInput::Expired { lease: LEASE }),
        500 * MS,
    );
    assert!(has_fence(&s, 0));
    assert!(s.actions.contains(&HostAction::BindLease(None)));
    assert!(s.actions.contains(&HostAction::Session(None)));
    assert_eq!(m.session(), None);
    assert!(!m.store_reachable());
    // Another lease's expiry changes nothing.
    let mut m = primary(false);
    let s = m.handle(
        HostInput::Lease(LeaseInput::Expired { lease: 99 }),
        500 * MS,
    );
    assert!(!has_fence(&s, 0));
    assert_eq!(m.session(), Some(LEASE));
}

fn peers() -> Vec<SocketAddr> {
    vec!["10.0.0.2:7400".parse().expect("addr")]
}

fn promise(host: &str, ms: u64) -> Option<FailsafeAnswer> {
    Some(FailsafeAnswer {
        host: host.into(),
        store_reachable: false,
        promised_ms: Some(ms),
        refused: None,
    })
}

#[test]
fn a_failed_renewal_asks_the_peers_of_each_primarys_app_at_once() {
    let mut m = primary(false);
    let s = m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
    assert!(!m.store_reachable());
    assert!(s.actions.is_empty(), "{s:?}");
    assert_eq!(m.next_wakeup(), Some(600 * MS));
    let s = m.handle(HostInput::Tick, 600 * MS);
    let [HostAction::AskPeers { asks, timeout }] = &s.actions[..] else {
        panic!("expected one round: {s:?}");
    };
    assert_eq!(*timeout, 500 * MS);
    assert_eq!(asks.len(), 1, "only web has a primary here");
    assert_eq!(
        asks[0].ask,
        FailsafeAsk {
            from: "h1".into(),
            app: "web".into(),
            hold_ms: 3000
        }
    );
    assert_eq!(asks[0].peers, peers());
    // A second failure while the round is out starts no other round.
    let s = m.handle(HostInput::Lease(LeaseInput::Failed), 700 * MS);
    assert!(s.actions.is_empty());
}

#[test]
fn failsafe_answers_decide_whether_the_primary_keeps_its_role() {
    let reachable = Some(FailsafeAnswer {
        host: "h2".into(),
        store_reachable: true,
        promised_ms: None,
        refused: Some("this agent reaches the store".into()),
    });
    let refused = Some(FailsafeAnswer {
        host: "h2".into(),
        store_reachable: false,
        promised_ms: None,
        refused: Some("an instance of web here is primary or being promoted".into()),
    });
    // (answer, kept, the note's reason, the fence deadline in ms)
    let cases = [
        (
            promise("h2", 3000),
            true,
            "failsafe_kept",
            600 + 3000 - 1000,
        ),
        (promise("h2", 1000), false, "failsafe_not_confirmed", 2000),
        (None, false, "failsafe_not_confirmed", 2000),
        (reachable, false, "failsafe_not_confirmed", 2000),
        (refused, false, "failsafe_not_confirmed", 2000),
    ];
    for (answer, kept, note, fence_ms) in cases {
        let mut m = primary(false);
        m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
        m.handle(HostInput::Tick, 600 * MS);
        let s = m.handle(HostInput::Answers(vec![vec![answer.clone()]]), 650 * MS);
        assert_eq!(notes(&s), [note], "{answer:?}");
        // The next round in one renew interval.
        assert!(m.next_wakeup() <= Some(1150 * MS));
        let s = m.handle(HostInput::Tick, 1150 * MS);
        assert!(matches!(s.actions[..], [HostAction::AskPeers { .. }]));
        // The session (controller candidate) is fenced at the lease's end
        // in any case; the primary at its app's end.
        let s = m.handle(HostInput::Tick, 2000 * MS);
        assert!(s.actions.contains(&HostAction::Session(None)));
        assert_eq!(has_fence(&s, 0), !kept, "{answer:?}: {s:?}");
        if kept {
            let s = m.handle(HostInput::Tick, (fence_ms - 1) * MS);
            assert!(!has_fence(&s, 0));
            let s = m.handle(HostInput::Tick, fence_ms * MS);
            assert!(has_fence(&s, 0), "extension not ended at {fence_ms} ms");
            assert!(
                matches!(
                    &s.notes[..],
                    [HostNote::FailsafeEnded { .. }, HostNote::Instance { .. }]
                ),
                "{:?}",
                s.notes
            );
            // An instance's note is named by its own machine.
            assert_eq!(notes(&s), ["failsafe_ended", "fenced"]);
        }
    }
}

#[test]
fn a_renewal_ends_the_extensions_and_the_rounds() {
    let mut m = primary(false);
    m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
    m.handle(HostInput::Tick, 600 * MS);
    m.handle(
        HostInput::Answers(vec![vec![promise("h2", 3000)]]),
        650 * MS,
    );
    let s = m.handle(renewed(700 * MS), 710 * MS);
    assert_eq!(notes(&s), ["store_answers_again"]);
    assert!(m.store_reachable());
    // Back to the lease's own deadline: 700 + 3000 - 1000.
    assert_eq!(m.next_wakeup(), Some(2700 * MS));
}

fn ask(hold_ms: u64) -> HostInput {
    HostInput::Asked(FailsafeAsk {
        from: "h2".into(),
        app: "web".into(),
        hold_ms,
    })
}

fn answer(step: &HostStep) -> FailsafeAnswer {
    match step.actions.last() {
        Some(HostAction::Answer(a)) => a.clone(),
        other => panic!("no answer: {other:?}"),
    }
}

#[test]
fn a_peer_is_promised_only_when_the_store_is_unreachable_here_and_nothing_here_acts() {
    // The store answers here: no promise.
    let mut m = started(false);
    let a = answer(&m.handle(ask(3000), MS));
    assert!(a.store_reachable);
    assert_eq!(a.promised_ms, None);
    // Unreachable, and web/a here is primary: refused.
    let mut m = primary(false);
    m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
    let a = answer(&m.handle(ask(3000), 610 * MS));
    assert!(!a.store_reachable);
    assert_eq!(a.promised_ms, None);
    assert!(
        a.refused
            .expect("why")
            .contains("primary or being promoted")
    );
    // Unreachable, nothing acting: promised, never more than a lease.
    let mut m = started(false);
    m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
    let s = m.handle(ask(60_000), 610 * MS);
    assert_eq!(answer(&s).promised_ms, Some(3000));
    assert_eq!(notes(&s), ["failsafe_promised"]);
}

#[test]
fn a_promise_holds_a_grant_back_until_it_ends() {
    let mut m = started(false);
    m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
    m.handle(ask(3000), 1000 * MS);
    // The store comes back here; the controller grants web/a.
    m.handle(renewed(1100 * MS), 1100 * MS);
    let s = m.handle(grant_web("a", 2, 5), 1200 * MS);
    assert_eq!(notes(&s), ["promotion_held"]);
    assert!(s.actions.is_empty(), "{s:?}");
    assert_eq!(m.status(0).acting, Role::Backup);
    // Peers asking now are refused: a promotion is pending here.
    m.handle(HostInput::Lease(LeaseInput::Failed), 1300 * MS);
    let a = answer(&m.handle(ask(3000), 1300 * MS));
    assert_eq!(a.promised_ms, None);
    m.handle(renewed(1400 * MS), 1400 * MS);
    m.handle(renewed(3000 * MS), 3000 * MS);
    // Released when the promise (1000 + 3000) ends, not before.
    assert_eq!(m.next_wakeup(), Some(4000 * MS));
    let s = m.handle(HostInput::Tick, 3999 * MS);
    assert!(!notes(&s).contains(&"hold_ended"));
    let s = m.handle(HostInput::Tick, 4000 * MS);
    assert_eq!(notes(&s)[0], "hold_ended");
    assert!(s.actions.iter().any(|a| matches!(
        a,
        HostAction::Instance(
            0,
            Action::RunHook {
                role: Role::Primary,
                epoch: 2,
                ..
            }
        )
    )));
}

#[test]
fn the_watchdog_is_armed_with_the_roles_end_minus_a_quarter_margin() {
    let arms = |s: &HostStep| -> Vec<(u32, Duration)> {
        s.actions
            .iter()
            .filter_map(|a| match a {
                HostAction::Arm { pgid, deadline } => Some((*pgid, *deadline)),
                _ => None,
            })
            .collect()
    };
    let mut m = started(true);
    let s = m.handle(grant_web("a", 1, 1), MS);
    // The promotion is in flight: it may act already.
    assert_eq!(arms(&s), [(100, 2750 * MS)]);
    let steps = run(&mut m, s, MS);
    assert!(
        steps.iter().skip(1).all(|s| arms(s).is_empty()),
        "re-armed for nothing"
    );
    // Each renewal moves it.
    let s = m.handle(renewed(500 * MS), 510 * MS);
    assert_eq!(arms(&s), [(100, 3250 * MS)]);
    // Nothing else re-arms it.
    let s = m.handle(HostInput::Tick, 600 * MS);
    assert!(arms(&s).is_empty());
    // A failsafe extension moves it to the extension's end.
    m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
    m.handle(HostInput::Tick, 600 * MS);
    let s = m.handle(
        HostInput::Answers(vec![vec![promise("h2", 3000)]]),
        650 * MS,
    );
    assert_eq!(arms(&s), [(100, 3350 * MS)]);
    // Demoted: disarmed.
    let s = m.handle(grant_web("b", 2, 2), 700 * MS);
    let steps = run(&mut m, s, 700 * MS);
    let disarmed: Vec<_> = steps
        .iter()
        .flat_map(|s| &s.actions)
        .filter(|a| matches!(a, HostAction::Disarm { pgid: 100 }))
        .collect();
    assert_eq!(disarmed.len(), 1);
    // Without a watchdog, nothing is armed.
    let mut m = started(false);
    let s = m.handle(grant_web("a", 1, 1), MS);
    assert!(arms(&s).is_empty());
}

#[test]
fn a_topology_change_restarts_the_changed_stops_the_removed_and_starts_the_new() {
    let mut m = primary(false);
    let changed = TOPOLOGY
        .replace(
            "command = [\"demo\"]\n\n[apps.web.hook]",
            "command = [\"demo2\"]\n\n[apps.web.hook]",
        )
        .replace(
            "[[apps.other.instances]]\nid = \"c\"\nhost = \"h1\"\n",
            "[[apps.other.instances]]\nid = \"d\"\nhost = \"h1\"\n",
        );
    assert_ne!(changed, TOPOLOGY);
    let s = m.handle(HostInput::Topology(topology(&changed)), MS);
    assert_eq!(
        notes(&s),
        ["settings_changed", "left_topology", "joined_topology"]
    );
    // The new instance d starts at once; a and c are stopped first.
    assert!(s.actions.contains(&HostAction::Added(2)));
    assert!(
        s.actions
            .contains(&HostAction::Instance(0, Action::Terminate))
    );
    assert!(
        s.actions
            .contains(&HostAction::Instance(1, Action::Terminate))
    );
    assert!(
        s.actions
            .iter()
            .any(|a| matches!(a, HostAction::Instance(2, Action::Spawn { .. })))
    );
    // Once a has stopped, its replacement is added; once c has, its status
    // is deleted.
    let s = m.handle(
        HostInput::Instance(
            0,
            Input::Exited {
                how: "exited with code 0".into(),
            },
        ),
        2 * MS,
    );
    assert!(s.actions.contains(&HostAction::Added(3)));
    assert_eq!(m.locals()[3].name(), "web/a");
    assert_eq!(m.locals()[3].app.command, ["demo2"]);
    let s = m.handle(
        HostInput::Instance(
            1,
            Input::Exited {
                how: "exited with code 0".into(),
            },
        ),
        3 * MS,
    );
    assert!(s.actions.contains(&HostAction::Removed(1)));
    assert!(m.locals()[1].gone());
}

#[test]
fn stop_stops_every_instance_for_good() {
    let mut m = primary(false);
    assert!(!m.stopped());
    let s = m.handle(HostInput::Stop, MS);
    assert!(m.stopping());
    run(&mut m, s, MS);
    assert!(m.stopped());
}

#[test]
fn a_grant_held_by_this_hosts_own_extension_is_applied_once_a_renewal_ends_it() {
    // web/a here is primary, the store is lost, every peer confirms.
    let mut m = primary(false);
    m.handle(HostInput::Lease(LeaseInput::Failed), 600 * MS);
    m.handle(HostInput::Tick, 600 * MS);
    m.handle(
        HostInput::Answers(vec![vec![promise("h2", 3000)]]),
        650 * MS,
    );
    // a crashes and restarts; the controller grants it again (a new
    // incarnation): held back by this host's own extension.
    let s = m.handle(
        HostInput::Instance(
            0,
            Input::Exited {
                how: "killed by signal 9".into(),
            },
        ),
        700 * MS,
    );
    run(&mut m, s, 700 * MS);
    let s = m.handle(HostInput::Tick, 900 * MS);
    run(&mut m, s, 900 * MS);
    let mut regrant = grant_web("a", 2, 2);
    if let HostInput::Assigned { roles, .. } = &mut regrant {
        roles.primary.as_mut().expect("grant").incarnation = 2;
    }
    let s = m.handle(regrant, 1000 * MS);
    assert_eq!(notes(&s), ["promotion_held"]);
    // The store answers again: the extension ends, and so does the hold.
    m.handle(renewed(1100 * MS), 1100 * MS);
    assert_eq!(m.next_wakeup(), Some(Duration::ZERO));
    let s = m.handle(HostInput::Tick, 1100 * MS);
    assert_eq!(notes(&s)[0], "hold_ended");
    assert!(s.actions.iter().any(|a| matches!(
        a,
        HostAction::Instance(
            0,
            Action::RunHook {
                role: Role::Primary,
                epoch: 2,
                ..
            }
        )
    )));
}

#[test]
fn a_lease_longer_than_asked_is_reported_once_per_grant() {
    let mut m = machine("h1", false);
    // The topology asks 3 s; the store grants 4 s (etcd rounds up).
    let s = m.handle(
        HostInput::Lease(LeaseInput::Granted {
            lease: LEASE,
            sent_at: Duration::ZERO,
            ttl: 4000 * MS,
        }),
        Duration::ZERO,
    );
    assert_eq!(notes(&s), ["lease_longer"]);
    assert_eq!(m.lease_ttl(), Some(4000 * MS));
    // Fencing follows the granted lease: 4 s − 1 s.
    assert_eq!(m.next_wakeup(), Some(3000 * MS));
    // As asked: nothing to say.
    let mut m = machine("h1", false);
    let s = m.handle(granted(Duration::ZERO), Duration::ZERO);
    assert!(!notes(&s).contains(&"lease_longer"));
    assert_eq!(m.lease_ttl(), Some(3000 * MS));
}
