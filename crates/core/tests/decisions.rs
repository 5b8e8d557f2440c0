//! Table tests of core's decisions: for a given state and observation, the
//! exact actions (agent) or assignment and reason (controller).

use std::collections::BTreeMap;
use std::time::Duration;

use tandem_core::controller::{AppInput, HostsState, decide, status_events};
use tandem_core::instance::{
    Action, HookFailure, Input, InstanceMachine, InstanceSpec, KillReason, Note,
};
use tandem_core::model::{
    AppRoles, CauseName, EventKind, Health, InstanceStatus, Intent, IntentKind, IntentState,
    PrimaryGrant, ProcessState, Role,
};
use tandem_core::topology::{App, HaMode, Instance, RestartPolicy};

const MS: Duration = Duration::from_millis(1);

fn policy() -> RestartPolicy {
    RestartPolicy {
        initial_backoff: 100 * MS,
        max_backoff: 800 * MS,
        stable_after: 5000 * MS,
        crashloop_after: 3,
    }
}

fn machine(ha: HaMode) -> InstanceMachine {
    InstanceMachine::new(InstanceSpec {
        name: "web/a".into(),
        host: "h1".into(),
        ha,
        has_hook: true,
        restart: policy(),
        checks: vec![(2, 1)],
        session: 7,
    })
}

/// A machine whose process (incarnation 1, pid 100) runs, healthy.
fn running() -> InstanceMachine {
    let mut m = machine(HaMode::WarmStandby);
    m.handle(Input::Tick, Duration::ZERO);
    m.handle(Input::Spawned { pid: 100 }, Duration::ZERO);
    m.handle(
        Input::Probe {
            check: 0,
            incarnation: 1,
            result: Ok(()),
        },
        MS,
    );
    assert_eq!(m.status().health, Health::Healthy);
    m
}

fn grant(epoch: u64) -> Input {
    Input::Assigned {
        role: Role::Primary,
        epoch,
        grant: Some((1, 7)),
        generation: epoch,
    }
}

fn backup(epoch: u64, generation: u64) -> Input {
    Input::Assigned {
        role: Role::Backup,
        epoch,
        grant: None,
        generation,
    }
}

fn hook_done(role: Role, epoch: u64, result: Result<(), HookFailure>) -> Input {
    Input::HookDone {
        role,
        epoch,
        incarnation: 1,
        result,
    }
}

fn failed(stopped: bool) -> Result<(), HookFailure> {
    Err(HookFailure {
        error: "timeout".into(),
        process_stopped: stopped,
    })
}

fn primary_machine() -> InstanceMachine {
    let mut m = running();
    m.handle(grant(3), 2 * MS);
    m.handle(hook_done(Role::Primary, 3, Ok(())), 3 * MS);
    assert_eq!(m.status().acting, Role::Primary);
    m
}

#[test]
fn instance_machine_table() {
    struct Case {
        name: &'static str,
        machine: fn() -> InstanceMachine,
        input: Input,
        actions: Vec<Action>,
        acting: Role,
    }
    // The typed reason, checked against the sentence the log shows.
    let kill = |reason: KillReason, sentence: &str| {
        assert_eq!(reason.to_string(), sentence);
        Action::Kill { reason }
    };
    let web_a = || "web/a".to_string();
    let cases = vec![
        Case {
            name: "a new instance starts in its non-primary role",
            machine: || machine(HaMode::WarmStandby),
            input: Input::Tick,
            actions: vec![Action::Spawn {
                incarnation: 1,
                role: Role::Backup,
                epoch: 0,
            }],
            acting: Role::Stopped,
        },
        Case {
            name: "an instance of an app without HA starts active",
            machine: || machine(HaMode::None),
            input: Input::Tick,
            actions: vec![Action::Spawn {
                incarnation: 1,
                role: Role::Active,
                epoch: 0,
            }],
            acting: Role::Stopped,
        },
        Case {
            name: "a grant for its incarnation and session runs the promotion hook",
            machine: running,
            input: grant(3),
            actions: vec![
                Action::Publish,
                Action::RunHook {
                    role: Role::Primary,
                    epoch: 3,
                    incarnation: 1,
                },
            ],
            acting: Role::Primary, // reported while the promotion is in flight
        },
        Case {
            name: "a grant for another incarnation promotes nothing",
            machine: running,
            input: Input::Assigned {
                role: Role::Primary,
                epoch: 3,
                grant: Some((2, 7)),
                generation: 3,
            },
            actions: vec![Action::Publish],
            acting: Role::Backup,
        },
        Case {
            name: "a grant from another agent session promotes nothing",
            machine: running,
            input: Input::Assigned {
                role: Role::Primary,
                epoch: 3,
                grant: Some((1, 6)),
                generation: 3,
            },
            actions: vec![Action::Publish],
            acting: Role::Backup,
        },
        Case {
            name: "an older generation is ignored",
            machine: || {
                let mut m = running();
                m.handle(backup(3, 9), 2 * MS);
                m
            },
            input: grant(3),
            actions: vec![],
            acting: Role::Backup,
        },
        Case {
            name: "a failed promotion hook kills the process",
            machine: || {
                let mut m = running();
                m.handle(grant(3), 2 * MS);
                m
            },
            input: hook_done(Role::Primary, 3, failed(false)),
            actions: vec![
                Action::Publish,
                kill(
                    KillReason::PromotionFailed {
                        instance: web_a(),
                        error: "timeout".into(),
                    },
                    "web/a: promotion hook failed (timeout); the process may or may not act as primary, so it is killed",
                ),
            ],
            acting: Role::Primary,
        },
        Case {
            name: "a demotion runs the hook; the primary stays acting until it confirms",
            machine: primary_machine,
            input: backup(3, 4),
            actions: vec![
                Action::Publish,
                Action::RunHook {
                    role: Role::Backup,
                    epoch: 3,
                    incarnation: 1,
                },
            ],
            acting: Role::Primary,
        },
        Case {
            name: "a demotion that fails on a live process kills it",
            machine: || {
                let mut m = primary_machine();
                m.handle(backup(3, 4), 4 * MS);
                m
            },
            input: hook_done(Role::Backup, 3, failed(false)),
            actions: vec![kill(
                KillReason::StepDownUnconfirmed {
                    instance: web_a(),
                    error: "timeout".into(),
                },
                "web/a: could not confirm stepping down (timeout): killed so that it cannot act as primary",
            )],
            acting: Role::Primary,
        },
        Case {
            name: "a demotion that fails on a frozen process fences it and retries",
            machine: || {
                let mut m = primary_machine();
                m.handle(backup(3, 4), 4 * MS);
                m
            },
            input: hook_done(Role::Backup, 3, failed(true)),
            actions: vec![Action::Publish],
            acting: Role::Fenced,
        },
        Case {
            name: "losing the lease demotes a primary",
            machine: primary_machine,
            input: Input::Fence,
            actions: vec![Action::RunHook {
                role: Role::Backup,
                epoch: 3,
                incarnation: 1,
            }],
            acting: Role::Primary,
        },
        Case {
            name: "losing the lease with a promotion in flight kills",
            machine: || {
                let mut m = running();
                m.handle(grant(3), 2 * MS);
                m
            },
            input: Input::Fence,
            actions: vec![kill(
                KillReason::LeaseLostWhilePromoting { instance: web_a() },
                "web/a: lease about to be lost while a promotion is in flight",
            )],
            acting: Role::Primary,
        },
        Case {
            name: "while fenced, a frozen primary that cannot confirm is killed",
            machine: || {
                let mut m = primary_machine();
                m.handle(Input::Fence, 4 * MS);
                m
            },
            input: hook_done(Role::Backup, 3, failed(true)),
            actions: vec![kill(
                KillReason::StepDownUnconfirmed {
                    instance: web_a(),
                    error: "timeout".into(),
                },
                "web/a: could not confirm stepping down (timeout): killed so that it cannot act as primary",
            )],
            acting: Role::Primary,
        },
        Case {
            name: "an exit schedules a restart and publishes",
            machine: running,
            input: Input::Exited {
                how: "killed by signal 9".into(),
            },
            actions: vec![Action::Publish],
            acting: Role::Stopped,
        },
        Case {
            name: "stop terminates a running process",
            machine: running,
            input: Input::Stop,
            actions: vec![Action::Terminate],
            acting: Role::Backup,
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let mut m = (c.machine)();
        let step = m.handle(c.input.clone(), 10 * MS);
        if step.actions != c.actions || m.status().acting != c.acting {
            failures.push(format!(
                "{}: got {:?} acting {:?}, want {:?} acting {:?}",
                c.name,
                step.actions,
                m.status().acting,
                c.actions,
                c.acting
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn quick_exits_back_off_exponentially_then_mark_the_instance_crash_looping() {
    let mut m = running();
    let mut now = 10 * MS;
    let mut delays = Vec::new();
    for round in 0..4 {
        m.handle(
            Input::Exited {
                how: "exited with code 1".into(),
            },
            now,
        );
        let at = m.next_wakeup().expect("a restart is scheduled");
        delays.push((at - now).as_millis());
        assert_eq!(m.status().crash_looping, round >= 2, "round {round}");
        now = at;
        let step = m.handle(Input::Tick, now);
        assert!(
            matches!(step.actions[..], [Action::Spawn { .. }]),
            "{step:?}"
        );
        m.handle(Input::Spawned { pid: 200 + round }, now);
    }
    assert_eq!(delays, [100, 200, 400, 800]);
    assert_eq!(m.status().acting, Role::Backup);
    assert!(m.status().crash_looping);
    // Running stably clears it and resets the backoff.
    let step = m.handle(Input::Tick, now + 5000 * MS);
    assert!(step.actions.contains(&Action::Publish));
    assert!(!m.status().crash_looping);
    m.handle(
        Input::Exited {
            how: "exited with code 1".into(),
        },
        now + 6000 * MS,
    );
    assert_eq!(m.next_wakeup(), Some(now + 6100 * MS));
}

// ---- exits tandem asked for ----

/// An on-grant machine (`ha`) whose process (incarnation 1, pid 100) runs
/// under its grant.
fn granted_in(ha: HaMode) -> InstanceMachine {
    let mut m = InstanceMachine::new(InstanceSpec {
        has_hook: false,
        checks: vec![],
        ..spec(ha)
    });
    m.handle(
        Input::Assigned {
            role: Role::Primary,
            epoch: 1,
            grant: Some((1, 7)),
            generation: 1,
        },
        Duration::ZERO,
    );
    m.handle(Input::Spawned { pid: 100 }, Duration::ZERO);
    assert_eq!(m.status().process, ProcessState::Running);
    m
}

fn spec(ha: HaMode) -> InstanceSpec {
    InstanceSpec {
        name: "web/a".into(),
        host: "h1".into(),
        ha,
        has_hook: true,
        restart: policy(),
        checks: vec![(2, 1)],
        session: 7,
    }
}

/// A cold spare whose grant was withdrawn: its process is being stopped.
fn withdrawn() -> InstanceMachine {
    let mut m = granted_in(HaMode::ColdStandby);
    let step = m.handle(
        Input::Assigned {
            role: Role::Standby,
            epoch: 1,
            grant: None,
            generation: 2,
        },
        MS,
    );
    assert!(step.actions.contains(&Action::Terminate), "{step:?}");
    m
}

fn stopping() -> InstanceMachine {
    let mut m = running();
    assert_eq!(m.handle(Input::Stop, 2 * MS).actions, [Action::Terminate]);
    m
}

#[test]
fn an_exit_tandem_asked_for_says_why_in_last_exit() {
    struct Case {
        name: &'static str,
        machine: fn() -> InstanceMachine,
        how: &'static str,
        /// The name of [`InstanceMachine::ending`] before the exit.
        ending: Option<&'static str>,
        last_exit: &'static str,
    }
    let cases = [
        Case {
            name: "an exit nobody in tandem asked for is as the runtime saw it",
            machine: running,
            how: "killed by signal 9 (SIGKILL)",
            ending: None,
            last_exit: "killed by signal 9 (SIGKILL)",
        },
        Case {
            name: "killed after a failed promotion",
            machine: || {
                let mut m = running();
                m.handle(grant(3), 2 * MS);
                m.handle(hook_done(Role::Primary, 3, failed(false)), 3 * MS);
                m
            },
            how: "killed by signal 9 (SIGKILL)",
            ending: Some("promotion_failed"),
            last_exit: "killed by signal 9 (SIGKILL), by tandem: promotion hook failed (timeout); the process may or may not act as primary, so it is killed",
        },
        Case {
            name: "killed because it could not confirm stepping down",
            machine: || {
                let mut m = primary_machine();
                m.handle(backup(3, 4), 4 * MS);
                m.handle(hook_done(Role::Backup, 3, failed(false)), 5 * MS);
                m
            },
            how: "killed by signal 9 (SIGKILL)",
            ending: Some("step_down_unconfirmed"),
            last_exit: "killed by signal 9 (SIGKILL), by tandem: could not confirm stepping down (timeout): killed so that it cannot act as primary",
        },
        Case {
            name: "stopped because the agent is shutting down",
            machine: stopping,
            how: "exited with code 0",
            ending: Some("agent_stopping"),
            last_exit: "exited with code 0, by tandem: stopped because its agent is shutting down",
        },
        Case {
            name: "stopped because its grant was withdrawn",
            machine: withdrawn,
            how: "exited with code 0",
            ending: Some("role_changed"),
            last_exit: "exited with code 0, by tandem: stopped because its role is now standby",
        },
        Case {
            name: "stopped, then killed after its stop timeout",
            machine: || {
                let mut m = withdrawn();
                m.handle(Input::StopTimedOut { incarnation: 1 }, 2 * MS);
                m
            },
            how: "killed by signal 9 (SIGKILL)",
            ending: Some("role_changed"),
            last_exit: "killed by signal 9 (SIGKILL), by tandem: stopped because its role is now standby, then killed after its stop timeout",
        },
        Case {
            name: "killed on lease loss: it runs only under a grant",
            machine: || {
                let mut m = granted_in(HaMode::Singleton);
                m.handle(Input::Fence, MS);
                m
            },
            how: "killed by signal 9 (SIGKILL)",
            ending: Some("lease_may_be_lost"),
            last_exit: "killed by signal 9 (SIGKILL), by tandem: host lease may be lost: killed before it can expire (it runs only under a grant)",
        },
        Case {
            name: "a kill replaces the reason of a graceful stop",
            machine: || {
                let mut m = withdrawn();
                m.handle(Input::Fence, 2 * MS);
                m
            },
            how: "killed by signal 9 (SIGKILL)",
            ending: Some("lease_may_be_lost"),
            last_exit: "killed by signal 9 (SIGKILL), by tandem: host lease may be lost: killed before it can expire (it runs only under a grant)",
        },
        Case {
            name: "a graceful stop does not replace the reason of a kill",
            machine: || {
                let mut m = running();
                m.handle(grant(3), 2 * MS);
                m.handle(hook_done(Role::Primary, 3, failed(false)), 3 * MS);
                m.handle(Input::Stop, 4 * MS);
                m
            },
            how: "killed by signal 9 (SIGKILL)",
            ending: Some("promotion_failed"),
            last_exit: "killed by signal 9 (SIGKILL), by tandem: promotion hook failed (timeout); the process may or may not act as primary, so it is killed",
        },
        Case {
            name: "the next incarnation's exit owes nothing to an earlier kill",
            machine: || {
                let mut m = running();
                m.handle(grant(3), 2 * MS);
                m.handle(hook_done(Role::Primary, 3, failed(false)), 3 * MS);
                m.handle(
                    Input::Exited {
                        how: "killed by signal 9 (SIGKILL)".into(),
                    },
                    4 * MS,
                );
                let at = m.next_wakeup().expect("a restart is scheduled");
                m.handle(Input::Tick, at);
                m.handle(Input::Spawned { pid: 101 }, at);
                assert_eq!(m.incarnation(), 2);
                m
            },
            how: "exited with code 1",
            ending: None,
            last_exit: "exited with code 1",
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let mut m = (c.machine)();
        let ending = m.ending().map(|e| e.name());
        let step = m.handle(Input::Exited { how: c.how.into() }, time(10));
        let last_exit = m.status().last_exit;
        if ending != c.ending
            || last_exit.as_deref() != Some(c.last_exit)
            || !step.actions.contains(&Action::Publish)
            || m.ending().is_some()
        {
            failures.push(format!(
                "{}:\n  got ending {ending:?} last_exit {last_exit:?} {step:?}\n  want ending {:?} last_exit {:?}",
                c.name, c.ending, c.last_exit
            ));
        }
        // The logged note says how it ended, as before.
        for note in &step.notes {
            if let Note::Exited { how, .. } = note {
                assert_eq!(how, c.how, "{}", c.name);
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn time(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[test]
fn a_stop_that_times_out_is_killed_only_while_that_incarnation_is_being_stopped() {
    let stop_timeout = KillReason::StopTimeout {
        instance: "web/a".into(),
    };
    assert_eq!(
        stop_timeout.to_string(),
        "web/a did not stop within its stop timeout: SIGKILL"
    );
    let kill = vec![Action::Kill {
        reason: stop_timeout,
    }];
    // (case, machine, incarnation timed out, actions)
    type Case = (&'static str, fn() -> InstanceMachine, u64, Vec<Action>);
    let cases: Vec<Case> = vec![
        (
            "stopped for the agent's shutdown",
            stopping,
            1,
            kill.clone(),
        ),
        (
            "stopped because its grant was withdrawn",
            withdrawn,
            1,
            kill,
        ),
        ("an older incarnation", stopping, 0, vec![]),
        ("a process that is not being stopped", running, 1, vec![]),
        (
            "a process that already exited",
            || {
                let mut m = stopping();
                m.handle(
                    Input::Exited {
                        how: "exited with code 0".into(),
                    },
                    3 * MS,
                );
                m
            },
            1,
            vec![],
        ),
        (
            "a process started again since",
            || {
                let mut m = withdrawn();
                m.handle(
                    Input::Exited {
                        how: "exited with code 0".into(),
                    },
                    2 * MS,
                );
                m.handle(
                    Input::Assigned {
                        role: Role::Primary,
                        epoch: 2,
                        grant: Some((2, 7)),
                        generation: 3,
                    },
                    3 * MS,
                );
                m.handle(Input::Spawned { pid: 101 }, 3 * MS);
                assert_eq!(m.incarnation(), 2);
                m
            },
            1,
            vec![],
        ),
    ];
    let mut failures = Vec::new();
    for (name, machine, incarnation, want) in cases {
        let mut m = machine();
        let step = m.handle(Input::StopTimedOut { incarnation }, time(10));
        if step.actions != want {
            failures.push(format!("{name}: got {:?}, want {want:?}", step.actions));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---- the controller ----

fn app() -> App {
    App {
        name: "web".into(),
        ha: HaMode::WarmStandby,
        command: vec!["run".into()],
        env: BTreeMap::new(),
        workdir: None,
        checks: Vec::new(),
        fencing: Default::default(),
        hook: None,
        restart: policy(),
        stop_timeout: Duration::from_secs(1),
        drain: std::time::Duration::ZERO,
        link_failover: Default::default(),
        admin_dir: None,
        pinned: false,
        replicas: 3,
        min_healthy: 3,
        instances: [("a", 100), ("b", 50), ("c", 50)]
            .into_iter()
            .map(|(id, priority)| Instance {
                id: id.into(),
                host: "h1".into(),
                priority,
                ports: BTreeMap::new(),
            })
            .collect(),
    }
}

fn st(acting: Role, health: Health) -> InstanceStatus {
    InstanceStatus {
        host: "h1".into(),
        process: ProcessState::Running,
        pid: Some(1),
        session: 7,
        incarnation: 1,
        seen_generation: 1,
        health,
        health_detail: (health == Health::Unhealthy).then(|| "GET /health timed out".into()),
        acting,
        acting_epoch: 1,
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

fn exited() -> InstanceStatus {
    InstanceStatus {
        process: ProcessState::Backoff,
        pid: None,
        acting: Role::Stopped,
        last_exit: Some("killed by signal 9 (SIGKILL)".into()),
        ..st(Role::Stopped, Health::Unknown)
    }
}

fn held_by_a() -> AppRoles {
    AppRoles {
        generation: 1,
        epoch: 1,
        primary: Some(PrimaryGrant {
            instance: "a".into(),
            epoch: 1,
            incarnation: 1,
            session: 7,
        }),
        ..AppRoles::default()
    }
}

fn statuses(list: &[(&str, InstanceStatus)]) -> BTreeMap<String, InstanceStatus> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn controller_table() {
    use Health::*;
    use Role::*;
    struct Case {
        name: &'static str,
        roles: AppRoles,
        status: BTreeMap<String, InstanceStatus>,
        intent: Option<Intent>,
        primary: Option<&'static str>,
        epoch: u64,
        reason: &'static str,
        intent_state: Option<&'static str>,
    }
    let switchover = |to: Option<&str>| {
        Some(Intent {
            by: None,
            id: "i1".into(),
            app: "web".into(),
            kind: IntentKind::Switchover {
                to: to.map(str::to_string),
            },
            outcome: IntentState::Pending,
        })
    };
    let cases = vec![
        Case {
            name: "first promotion picks the highest priority",
            roles: AppRoles::default(),
            status: statuses(&[("a", st(Backup, Healthy)), ("b", st(Backup, Healthy))]),
            intent: None,
            primary: Some("a"),
            epoch: 1,
            reason: "promoted web/a (epoch 1): web had no primary",
            intent_state: None,
        },
        Case {
            name: "equal priority: the lowest id",
            roles: AppRoles::default(),
            status: statuses(&[("c", st(Backup, Healthy)), ("b", st(Backup, Healthy))]),
            intent: None,
            primary: Some("b"),
            epoch: 1,
            reason: "promoted web/b (epoch 1): web had no primary",
            intent_state: None,
        },
        Case {
            name: "nothing healthy: no promotion",
            roles: AppRoles::default(),
            status: statuses(&[("a", st(Backup, Unknown)), ("b", st(Backup, Unhealthy))]),
            intent: None,
            primary: None,
            epoch: 0,
            reason: "no instance of web is fit to be primary",
            intent_state: None,
        },
        Case {
            name: "a crashed primary is replaced in the same decision",
            roles: held_by_a(),
            status: statuses(&[("a", exited()), ("b", st(Backup, Healthy))]),
            intent: None,
            primary: Some("b"),
            epoch: 2,
            reason: "promoted web/b (epoch 2): primary web/a failed: not running: killed by signal 9 (SIGKILL)",
            intent_state: None,
        },
        Case {
            name: "a lost host's primary is replaced in the same decision",
            roles: held_by_a(),
            status: statuses(&[("b", st(Backup, Healthy))]),
            intent: None,
            primary: Some("b"),
            epoch: 2,
            reason: "promoted web/b (epoch 2): primary web/a failed: host h1 lost (no status: its lease expired)",
            intent_state: None,
        },
        Case {
            name: "an unhealthy primary is withdrawn first; nobody is promoted while it may act",
            roles: held_by_a(),
            status: statuses(&[("a", st(Primary, Unhealthy)), ("b", st(Backup, Healthy))]),
            intent: None,
            primary: None,
            epoch: 1,
            reason: "waiting for web/a to step down before promoting",
            intent_state: None,
        },
        Case {
            name: "a crash-looping backup is never promoted",
            roles: held_by_a(),
            status: statuses(&[
                ("a", exited()),
                (
                    "b",
                    InstanceStatus {
                        crash_looping: true,
                        ..st(Backup, Healthy)
                    },
                ),
                ("c", st(Backup, Unhealthy)),
            ]),
            intent: None,
            primary: None,
            epoch: 1,
            reason: "no instance of web is fit to be primary",
            intent_state: None,
        },
        Case {
            name: "a restarted primary loses its grant; another fit instance is preferred",
            roles: held_by_a(),
            status: statuses(&[
                (
                    "a",
                    InstanceStatus {
                        incarnation: 2,
                        ..st(Backup, Healthy)
                    },
                ),
                ("b", st(Backup, Healthy)),
            ]),
            intent: None,
            primary: Some("b"),
            epoch: 2,
            reason: "promoted web/b (epoch 2): primary web/a failed: restarted since it was granted (incarnation 1 → 2)",
            intent_state: None,
        },
        Case {
            name: "a restarted primary gets a new grant when it is the only fit one",
            roles: held_by_a(),
            status: statuses(&[(
                "a",
                InstanceStatus {
                    incarnation: 2,
                    ..st(Backup, Healthy)
                },
            )]),
            intent: None,
            primary: Some("a"),
            epoch: 2,
            reason: "promoted web/a (epoch 2): primary web/a failed: restarted since it was granted (incarnation 1 → 2)",
            intent_state: None,
        },
        Case {
            name: "switchover to an unhealthy target is refused and changes nothing",
            roles: held_by_a(),
            status: statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Unhealthy))]),
            intent: switchover(Some("b")),
            primary: Some("a"),
            epoch: 1,
            reason: "",
            intent_state: Some(
                "target web/b is not fit to be primary: unhealthy: GET /health timed out",
            ),
        },
        Case {
            name: "switchover to an unknown instance is refused",
            roles: held_by_a(),
            status: statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
            intent: switchover(Some("zz")),
            primary: Some("a"),
            epoch: 1,
            reason: "",
            intent_state: Some("web has no instance \"zz\" (instances: a, b, c)"),
        },
        Case {
            name: "switchover to the primary itself is refused",
            roles: held_by_a(),
            status: statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
            intent: switchover(Some("a")),
            primary: Some("a"),
            epoch: 1,
            reason: "",
            intent_state: Some("web/a is already the primary"),
        },
        Case {
            name: "an accepted switchover demotes first",
            roles: held_by_a(),
            status: statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
            intent: switchover(None),
            primary: None,
            epoch: 1,
            reason: "waiting for web/a to step down before promoting",
            intent_state: Some("running"),
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let app = app();
        let d = decide(&AppInput {
            app: &app,
            roles: &c.roles,
            status: &c.status,
            intent: c.intent.as_ref(),
            hosts: HostsState::NONE,
            links: tandem_core::controller::AppLinks::NONE,
        });
        let primary = d.roles.primary.as_ref().map(|g| g.instance.as_str());
        let intent = d.intent.as_ref().map(|s| match s {
            IntentState::Refused { reason } => reason.clone(),
            IntentState::Running => "running".into(),
            IntentState::Done { message } => message.clone(),
            IntentState::Pending => "pending".into(),
        });
        let roles_ok = d
            .roles
            .roles
            .iter()
            .all(|(id, r)| (Some(id.as_str()) == primary) == (*r == Primary));
        if primary != c.primary
            || d.roles.epoch != c.epoch
            || d.roles.reason != c.reason
            || intent.as_deref() != c.intent_state
            || !roles_ok
        {
            failures.push(format!(
                "{}:\n  got primary {:?} epoch {} reason {:?} intent {:?} roles {:?}\n  want primary {:?} epoch {} reason {:?} intent {:?}",
                c.name, primary, d.roles.epoch, d.roles.reason, intent, d.roles.roles, c.primary, c.epoch, c.reason, c.intent_state
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn a_promotion_is_logged_with_its_reason_and_epoch() {
    let app = app();
    let d = decide(&AppInput {
        app: &app,
        roles: &held_by_a(),
        status: &statuses(&[("a", exited()), ("b", st(Role::Backup, Health::Healthy))]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(d.changed);
    assert_eq!(d.roles.generation, 2);
    let kinds: Vec<EventKind> = d.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::PrimaryFailed, EventKind::Promoted]);
    assert_eq!(d.events[1].epoch, Some(2));
    assert_eq!(d.events[1].instance.as_deref(), Some("b"));
}

/// A status whose admin data goes up to `seq` of `epoch` (a backup's).
fn holding(mut s: InstanceStatus, epoch: u64, seq: u64) -> InstanceStatus {
    s.admin.applied = Some(tandem_core::model::AdminPosition {
        epoch,
        seq,
        at_ms: 0,
    });
    s
}

#[test]
fn a_promotion_prefers_the_backup_whose_admin_data_is_current_and_says_when_it_was_behind() {
    let app = app();
    // a (priority 100) failed; b and c (priority 50): c holds more admin
    // data than b, so c is promoted although b comes first by id.
    let mut failed = exited();
    failed.admin.source = Some(tandem_core::model::AdminSource {
        epoch: 1,
        seq: 9,
        backups: BTreeMap::new(),
    });
    let status = statuses(&[
        ("a", failed.clone()),
        ("b", holding(st(Role::Backup, Health::Healthy), 1, 7)),
        ("c", holding(st(Role::Backup, Health::Healthy), 1, 9)),
    ]);
    let roles = held_by_a();
    let input = |status| AppInput {
        app: &app,
        roles: &roles,
        status,
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    };
    let d = decide(&input(&status));
    assert_eq!(
        d.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("c")
    );
    assert!(!d.roles.reason.contains("behind"), "{}", d.roles.reason);
    // Only b is fit, and it is behind a's last known position: promoted,
    // and the event says so.
    let mut down = exited();
    down.process = ProcessState::Stopped;
    let status = statuses(&[
        ("a", failed),
        ("b", holding(st(Role::Backup, Health::Healthy), 1, 7)),
        ("c", holding(down, 1, 8)),
    ]);
    let d = decide(&input(&status));
    assert_eq!(
        d.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("b")
    );
    let promoted = d
        .events
        .iter()
        .find(|e| e.kind == EventKind::Promoted)
        .expect("a promotion event");
    assert!(
        promoted.message.ends_with(
            "; its admin data was behind: it holds seq 7 of epoch 1, web/a had reached seq 9 of epoch 1"
        ),
        "{}",
        promoted.message
    );
}

#[test]
fn an_unchanged_situation_writes_nothing() {
    let app = app();
    let roles = decide(&AppInput {
        app: &app,
        roles: &AppRoles::default(),
        status: &statuses(&[("a", st(Role::Backup, Health::Healthy))]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    })
    .roles;
    let mut st_a = st(Role::Primary, Health::Healthy);
    st_a.seen_generation = roles.generation;
    let again = decide(&AppInput {
        app: &app,
        roles: &roles,
        status: &statuses(&[("a", st_a)]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(!again.changed);
    assert!(again.events.is_empty());
    assert_eq!(again.roles, roles);
}

/// The roles `decide` holds after one decision.
fn decided(
    roles: &AppRoles,
    status: &BTreeMap<String, InstanceStatus>,
    intent: Option<&Intent>,
) -> AppRoles {
    let app = app();
    decide(&AppInput {
        app: &app,
        roles,
        status,
        intent,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    })
    .roles
}

fn switchover_intent() -> Intent {
    Intent {
        by: None,
        id: "i1".into(),
        app: "web".into(),
        kind: IntentKind::Switchover { to: None },
        outcome: IntentState::Pending,
    }
}

/// `a` has stepped down: it reports a non-primary role having seen
/// generation `seen`.
fn stepped_down(seen: u64) -> InstanceStatus {
    InstanceStatus {
        seen_generation: seen,
        ..st(Role::Backup, Health::Healthy)
    }
}

#[test]
fn controller_events_carry_the_name_of_their_reason() {
    use Health::*;
    use Role::*;
    struct Case {
        name: &'static str,
        roles: fn() -> AppRoles,
        status: fn() -> BTreeMap<String, InstanceStatus>,
        intent: Option<Intent>,
        /// Each event's kind and reason.
        events: Vec<(EventKind, Option<&'static str>)>,
    }
    let cases = vec![
        Case {
            name: "first promotion: the app had no primary",
            roles: AppRoles::default,
            status: || statuses(&[("a", st(Backup, Healthy)), ("b", st(Backup, Healthy))]),
            intent: None,
            events: vec![(EventKind::Promoted, Some("no_primary"))],
        },
        Case {
            name: "the primary was killed: it is not running",
            roles: held_by_a,
            status: || statuses(&[("a", exited()), ("b", st(Backup, Healthy))]),
            intent: None,
            events: vec![
                (EventKind::PrimaryFailed, Some("not_running")),
                (EventKind::Promoted, Some("not_running")),
            ],
        },
        Case {
            name: "the primary's host was lost",
            roles: held_by_a,
            status: || statuses(&[("b", st(Backup, Healthy))]),
            intent: None,
            events: vec![
                (EventKind::PrimaryFailed, Some("host_lost")),
                (EventKind::Promoted, Some("host_lost")),
            ],
        },
        Case {
            name: "the primary restarted since it was granted",
            roles: held_by_a,
            status: || {
                statuses(&[
                    (
                        "a",
                        InstanceStatus {
                            incarnation: 2,
                            ..st(Backup, Healthy)
                        },
                    ),
                    ("b", st(Backup, Healthy)),
                ])
            },
            intent: None,
            events: vec![
                (EventKind::PrimaryFailed, Some("restarted")),
                (EventKind::Promoted, Some("restarted")),
            ],
        },
        Case {
            name: "an unhealthy primary is withdrawn: nobody is promoted yet",
            roles: held_by_a,
            status: || statuses(&[("a", st(Primary, Unhealthy)), ("b", st(Backup, Healthy))]),
            intent: None,
            events: vec![(EventKind::PrimaryFailed, Some("unhealthy"))],
        },
        Case {
            name: "once it has stepped down, the promotion names the earlier failure",
            roles: || {
                decided(
                    &held_by_a(),
                    &statuses(&[("a", st(Primary, Unhealthy)), ("b", st(Backup, Healthy))]),
                    None,
                )
            },
            status: || statuses(&[("a", stepped_down(2)), ("b", st(Backup, Healthy))]),
            intent: None,
            events: vec![(EventKind::Promoted, Some("unhealthy"))],
        },
        Case {
            name: "an accepted switchover demotes the primary",
            roles: held_by_a,
            status: || statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
            intent: Some(switchover_intent()),
            events: vec![
                (EventKind::Intent, Some("running")),
                (EventKind::Demoted, Some("switchover")),
            ],
        },
        Case {
            name: "once the primary has stepped down, the target is promoted for the switchover",
            roles: || {
                decided(
                    &held_by_a(),
                    &statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
                    Some(&switchover_intent()),
                )
            },
            status: || statuses(&[("a", stepped_down(2)), ("b", st(Backup, Healthy))]),
            intent: Some(IntentState::Running).map(|outcome| Intent {
                outcome,
                ..switchover_intent()
            }),
            events: vec![(EventKind::Promoted, Some("switchover"))],
        },
        Case {
            name: "a switchover that became impossible promotes the best other for it",
            roles: || {
                decided(
                    &held_by_a(),
                    &statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
                    Some(&switchover_intent()),
                )
            },
            status: || {
                statuses(&[
                    ("a", stepped_down(2)),
                    ("b", st(Backup, Unhealthy)),
                    ("c", st(Backup, Healthy)),
                ])
            },
            intent: Some(IntentState::Running).map(|outcome| Intent {
                outcome,
                ..switchover_intent()
            }),
            events: vec![(EventKind::Promoted, Some("switchover"))],
        },
        Case {
            name: "a refused switchover",
            roles: held_by_a,
            status: || statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Unhealthy))]),
            intent: Some(Intent {
                kind: IntentKind::Switchover {
                    to: Some("b".into()),
                },
                ..switchover_intent()
            }),
            events: vec![(EventKind::Intent, Some("refused"))],
        },
        Case {
            name: "the primary failed and nobody is fit",
            roles: held_by_a,
            status: || statuses(&[("a", exited()), ("b", st(Backup, Unhealthy))]),
            intent: None,
            events: vec![
                (EventKind::PrimaryFailed, Some("not_running")),
                (EventKind::NoCandidate, Some("no_candidate")),
            ],
        },
        Case {
            name: "maintenance on",
            roles: held_by_a,
            status: || statuses(&[("a", st(Primary, Healthy))]),
            intent: Some(Intent {
                kind: IntentKind::Maintenance { on: true },
                ..switchover_intent()
            }),
            events: vec![(EventKind::Maintenance, Some("on"))],
        },
        Case {
            name: "maintenance off",
            roles: || AppRoles {
                maintenance: true,
                ..held_by_a()
            },
            status: || statuses(&[("a", st(Primary, Healthy))]),
            intent: Some(Intent {
                kind: IntentKind::Maintenance { on: false },
                ..switchover_intent()
            }),
            events: vec![(EventKind::Maintenance, Some("off"))],
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let app = app();
        let d = decide(&AppInput {
            app: &app,
            roles: &(c.roles)(),
            status: &(c.status)(),
            intent: c.intent.as_ref(),
            hosts: HostsState::NONE,
            links: tandem_core::controller::AppLinks::NONE,
        });
        let got: Vec<_> = d.events.iter().map(|e| (e.kind, e.reason)).collect();
        if got != c.events {
            failures.push(format!(
                "{}:\n  got {got:?}\n  want {:?}\n  {:?}",
                c.name, c.events, d.events
            ));
        }
        // Stamped, the reason is stored with the event (and omitted when
        // there is none).
        for e in &d.events {
            let stored = serde_json::to_value(e.clone().stamp(1, 2)).unwrap();
            assert_eq!(stored.get("reason").and_then(|r| r.as_str()), e.reason);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_cause_of_a_withdrawal_survives_until_the_promotion() {
    let app = app();
    let status = statuses(&[
        ("a", st(Role::Primary, Health::Unhealthy)),
        ("b", st(Role::Backup, Health::Healthy)),
    ]);
    let withdrawn = decide(&AppInput {
        app: &app,
        roles: &held_by_a(),
        status: &status,
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert_eq!(withdrawn.roles.cause, Some(CauseName::Unhealthy));
    // A decision that changes nothing keeps it.
    let waiting = decide(&AppInput {
        app: &app,
        roles: &withdrawn.roles,
        status: &status,
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(!waiting.changed);
    assert_eq!(waiting.roles, withdrawn.roles);
    // The cause alone does not make an assignment differ.
    let other_cause = AppRoles {
        cause: Some(CauseName::HostLost),
        ..withdrawn.roles.clone()
    };
    let same = decide(&AppInput {
        app: &app,
        roles: &other_cause,
        status: &status,
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(!same.changed);
    assert_eq!(same.roles.cause, Some(CauseName::HostLost));
    // Stepped down: the promotion names it.
    let promoted = decide(&AppInput {
        app: &app,
        roles: &withdrawn.roles,
        status: &statuses(&[
            ("a", stepped_down(withdrawn.roles.generation)),
            ("b", st(Role::Backup, Health::Healthy)),
        ]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert_eq!(promoted.roles.primary.map(|g| g.instance), Some("b".into()));
    assert_eq!(promoted.events[0].reason, Some("unhealthy"));
    assert_eq!(promoted.roles.cause, Some(CauseName::Unhealthy));
}

#[test]
fn status_changes_are_logged_with_the_name_of_their_reason() {
    use Health::*;
    use Role::*;
    let by_tandem = InstanceStatus {
        last_exit: Some(
            "killed by signal 9 (SIGKILL), by tandem: promotion hook failed (timeout); the process may or may not act as primary, so it is killed"
                .into(),
        ),
        ..exited()
    };
    let looping = InstanceStatus {
        crash_looping: true,
        restarts: 3,
        ..exited()
    };
    let restarted = InstanceStatus {
        incarnation: 2,
        pid: Some(2),
        ..st(Backup, Unknown)
    };
    let frozen = InstanceStatus {
        acting: Fenced,
        ..st(Primary, Healthy)
    };
    // (case, old status, new status, each event's kind and reason)
    type Case = (
        &'static str,
        Option<InstanceStatus>,
        Option<InstanceStatus>,
        Vec<(EventKind, Option<&'static str>)>,
    );
    let cases: Vec<Case> = vec![
        (
            "an exit tandem asked for",
            Some(st(Primary, Healthy)),
            Some(by_tandem),
            vec![(EventKind::InstanceExited, Some("by_tandem"))],
        ),
        (
            "a crash",
            Some(st(Primary, Healthy)),
            Some(exited()),
            vec![(EventKind::InstanceExited, Some("crashed"))],
        ),
        (
            "a crash that makes it crash-looping",
            Some(st(Backup, Healthy)),
            Some(looping),
            vec![
                (EventKind::InstanceExited, Some("crashed")),
                (EventKind::CrashLoop, Some("crash_looping")),
            ],
        ),
        (
            "a restart",
            Some(exited()),
            Some(restarted.clone()),
            vec![(EventKind::InstanceStarted, Some("started"))],
        ),
        (
            "its health is known",
            Some(restarted.clone()),
            Some(InstanceStatus {
                health: Healthy,
                ..restarted.clone()
            }),
            vec![(EventKind::HealthChanged, Some("healthy"))],
        ),
        (
            "unhealthy",
            Some(st(Backup, Healthy)),
            Some(st(Backup, Unhealthy)),
            vec![(EventKind::HealthChanged, Some("unhealthy"))],
        ),
        (
            "frozen and fenced",
            Some(st(Primary, Healthy)),
            Some(frozen),
            vec![(EventKind::Demoted, Some("fenced"))],
        ),
        (
            "its status is gone with its host's lease",
            Some(st(Backup, Healthy)),
            None,
            vec![(EventKind::Host, Some("host_lost"))],
        ),
    ];
    let mut failures = Vec::new();
    for (name, old, new, want) in cases {
        let events = status_events("web", "a", old.as_ref(), new.as_ref());
        let got: Vec<_> = events.iter().map(|e| (e.kind, e.reason)).collect();
        if got != want {
            failures.push(format!("{name}:\n  got {got:?}\n  want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// From the kill to the event log: an exit tandem asked for says so in the
/// status, the status events and the promotion that follows.
#[test]
fn a_kill_by_tandem_reads_as_such_down_to_the_promotion() {
    let mut m = running();
    m.handle(grant(3), 2 * MS);
    m.handle(hook_done(Role::Primary, 3, failed(false)), 3 * MS);
    let before = m.status();
    m.handle(
        Input::Exited {
            how: "killed by signal 9 (SIGKILL)".into(),
        },
        4 * MS,
    );
    let after = InstanceStatus {
        seen_generation: 1,
        ..m.status()
    };
    assert!(after.exit_by_tandem(), "{after:?}");
    let events = status_events("web", "a", Some(&before), Some(&after));
    assert_eq!(events[0].reason, Some("by_tandem"));
    assert_eq!(
        events[0].message,
        "web/a killed by signal 9 (SIGKILL), by tandem: promotion hook failed (timeout); the process may or may not act as primary, so it is killed"
    );
    let app = app();
    let d = decide(&AppInput {
        app: &app,
        roles: &held_by_a(),
        status: &statuses(&[("a", after), ("b", st(Role::Backup, Health::Healthy))]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    let promoted = &d.events[1];
    assert_eq!(
        (promoted.kind, promoted.reason),
        (EventKind::Promoted, Some("not_running"))
    );
    assert_eq!(
        promoted.message,
        "promoted web/b (epoch 2): primary web/a failed: not running: killed by signal 9 (SIGKILL), by tandem: promotion hook failed (timeout); the process may or may not act as primary, so it is killed"
    );
}

// ---- on-grant modes (cold standby, singleton), n-plus-1, maintenance ----

fn app_in(ha: HaMode, replicas: u32) -> App {
    App {
        ha,
        replicas,
        min_healthy: replicas,
        ..app()
    }
}

fn idle() -> InstanceStatus {
    InstanceStatus {
        process: ProcessState::Stopped,
        pid: None,
        acting: Role::Standby,
        incarnation: 0,
        ..st(Role::Standby, Health::Unknown)
    }
}

#[test]
fn a_cold_spare_is_granted_its_next_start() {
    let app = app_in(HaMode::ColdStandby, 1);
    let d = decide(&AppInput {
        app: &app,
        roles: &AppRoles::default(),
        status: &statuses(&[("a", idle()), ("b", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    let g = d.roles.primary.expect("a grant");
    assert_eq!((g.instance.as_str(), g.epoch, g.incarnation), ("a", 1, 1));
    assert_eq!(d.roles.roles["b"], Role::Standby);
    assert_eq!(
        d.roles.reason,
        "starting web/a as primary (epoch 1): web had no primary"
    );
}

#[test]
fn a_singleton_is_not_started_elsewhere_while_the_old_one_still_runs() {
    let app = app_in(HaMode::Singleton, 1);
    let roles = AppRoles {
        generation: 1,
        epoch: 1,
        primary: Some(PrimaryGrant {
            instance: "a".into(),
            epoch: 1,
            incarnation: 1,
            session: 7,
        }),
        ..AppRoles::default()
    };
    // a runs but is unhealthy: its grant is withdrawn; b must wait.
    let d = decide(&AppInput {
        app: &app,
        roles: &roles,
        status: &statuses(&[("a", st(Role::Primary, Health::Unhealthy)), ("b", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(d.roles.primary.is_none());
    assert_eq!(
        d.roles.reason,
        "waiting for web/a to step down before promoting"
    );
    // Once a has stopped, b is started with the next epoch.
    let mut a_stopped = idle();
    a_stopped.incarnation = 1;
    a_stopped.seen_generation = d.roles.generation;
    let d2 = decide(&AppInput {
        app: &app,
        roles: &d.roles,
        status: &statuses(&[("a", a_stopped), ("b", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    let g = d2.roles.primary.expect("b granted");
    assert_eq!((g.instance.as_str(), g.epoch, g.incarnation), ("b", 2, 1));
}

#[test]
fn a_crash_looping_singleton_is_still_started_when_nothing_else_can_run() {
    let app = app_in(HaMode::Singleton, 1);
    let looping = InstanceStatus {
        crash_looping: true,
        ..idle()
    };
    let d = decide(&AppInput {
        app: &app,
        roles: &AppRoles::default(),
        status: &statuses(&[("a", looping.clone()), ("b", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert_eq!(
        d.roles.primary.map(|g| g.instance),
        Some("b".into()),
        "b is preferred"
    );
    let d = decide(&AppInput {
        app: &app,
        roles: &AppRoles::default(),
        status: &statuses(&[("a", looping)]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert_eq!(
        d.roles.primary.map(|g| g.instance),
        Some("a".into()),
        "one must run"
    );
}

#[test]
fn on_grant_machine_starts_only_for_its_next_incarnation_and_is_killed_on_lease_loss() {
    let mut m = InstanceMachine::new(InstanceSpec {
        name: "daemon/a".into(),
        host: "h1".into(),
        ha: HaMode::Singleton,
        has_hook: false,
        restart: policy(),
        checks: vec![],
        session: 7,
    });
    let step = m.handle(Input::Tick, Duration::ZERO);
    assert_eq!(
        step.actions,
        vec![Action::Publish],
        "a spare does not start"
    );
    assert_eq!(m.status().acting, Role::Standby);
    assert_eq!(m.status().process, ProcessState::Stopped);
    // A grant for the wrong incarnation or session starts nothing.
    for grant in [(2, 7), (1, 6)] {
        let step = m.handle(
            Input::Assigned {
                role: Role::Primary,
                epoch: 4,
                grant: Some(grant),
                generation: 1,
            },
            MS,
        );
        assert!(
            !step
                .actions
                .iter()
                .any(|a| matches!(a, Action::Spawn { .. })),
            "{grant:?}"
        );
    }
    let step = m.handle(
        Input::Assigned {
            role: Role::Primary,
            epoch: 4,
            grant: Some((1, 7)),
            generation: 2,
        },
        MS,
    );
    assert!(step.actions.contains(&Action::Spawn {
        incarnation: 1,
        role: Role::Primary,
        epoch: 4
    }));
    assert_eq!(m.status().process, ProcessState::Starting);
    m.handle(Input::Spawned { pid: 9 }, MS);
    assert_eq!(
        (m.status().acting, m.status().acting_epoch),
        (Role::Primary, 4)
    );
    let step = m.handle(Input::Fence, 2 * MS);
    assert!(
        matches!(step.actions[..], [Action::Kill { .. }]),
        "{step:?}"
    );
    // It exits; without a new grant it is not restarted.
    m.handle(
        Input::Exited {
            how: "killed by signal 9".into(),
        },
        3 * MS,
    );
    m.handle(Input::Unfence { session: 8 }, 4 * MS);
    let later = m.next_wakeup().unwrap_or(Duration::from_secs(1));
    let step = m.handle(Input::Tick, later);
    assert!(
        !step
            .actions
            .iter()
            .any(|a| matches!(a, Action::Spawn { .. })),
        "{step:?}"
    );
    assert!(!m.status().process.is_live());
}

#[test]
fn a_withdrawn_grant_stops_the_instance_gracefully() {
    let mut m = InstanceMachine::new(InstanceSpec {
        name: "etl/a".into(),
        host: "h1".into(),
        ha: HaMode::ColdStandby,
        has_hook: false,
        restart: policy(),
        checks: vec![],
        session: 7,
    });
    m.handle(Input::Tick, Duration::ZERO);
    m.handle(
        Input::Assigned {
            role: Role::Primary,
            epoch: 1,
            grant: Some((1, 7)),
            generation: 1,
        },
        MS,
    );
    m.handle(Input::Spawned { pid: 9 }, MS);
    let step = m.handle(
        Input::Assigned {
            role: Role::Standby,
            epoch: 1,
            grant: None,
            generation: 2,
        },
        2 * MS,
    );
    assert!(step.actions.contains(&Action::Terminate), "{step:?}");
    let step = m.handle(
        Input::Exited {
            how: "exited with code 0".into(),
        },
        3 * MS,
    );
    assert_eq!(step.actions, vec![Action::Publish]);
    assert_eq!(m.status().acting, Role::Standby);
    assert_eq!(m.status().restarts, 0, "a requested stop is not a crash");
}

#[test]
fn n_plus_1_keeps_replicas_active_on_live_hosts() {
    let app = app_in(HaMode::NPlus1, 2);
    let d = decide(&AppInput {
        app: &app,
        roles: &AppRoles::default(),
        status: &statuses(&[("a", idle()), ("b", idle()), ("c", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    let active = |r: &AppRoles| {
        r.roles
            .iter()
            .filter(|(_, r)| **r == Role::Active)
            .map(|(i, _)| i.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(active(&d.roles), ["a", "b"]);
    assert_eq!(d.roles.epoch, 0, "n-plus-1 hands out no epochs");
    // b's host is lost: c replaces it; a stays.
    let d2 = decide(&AppInput {
        app: &app,
        roles: &d.roles,
        status: &statuses(&[("a", st(Role::Active, Health::Healthy)), ("c", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert_eq!(active(&d2.roles), ["a", "c"]);
    assert!(
        d2.events
            .iter()
            .any(|e| e.message.contains("b's host is lost")),
        "{:?}",
        d2.events
    );
    // b comes back: nothing moves (no flapping back).
    let d3 = decide(&AppInput {
        app: &app,
        roles: &d2.roles,
        status: &statuses(&[
            ("a", st(Role::Active, Health::Healthy)),
            ("b", idle()),
            ("c", st(Role::Active, Health::Healthy)),
        ]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(!d3.changed);
}

#[test]
fn maintenance_freezes_roles_until_turned_off() {
    let app = app();
    let maint = |on: bool| {
        Some(Intent {
            by: None,
            id: format!("m{on}"),
            app: "web".into(),
            kind: IntentKind::Maintenance { on },
            outcome: IntentState::Pending,
        })
    };
    let d = decide(&AppInput {
        app: &app,
        roles: &held_by_a(),
        status: &statuses(&[
            ("a", st(Role::Primary, Health::Healthy)),
            ("b", st(Role::Backup, Health::Healthy)),
        ]),
        intent: maint(true).as_ref(),
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(d.roles.maintenance && d.changed);
    assert!(matches!(d.intent, Some(IntentState::Done { .. })));
    assert_eq!(d.events[0].kind, EventKind::Maintenance);
    // The primary crashes: nothing happens while in maintenance.
    let frozen = decide(&AppInput {
        app: &app,
        roles: &d.roles,
        status: &statuses(&[("a", exited()), ("b", st(Role::Backup, Health::Healthy))]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(!frozen.changed);
    assert_eq!(
        frozen.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("a")
    );
    // A switchover is refused, saying why.
    let refused = decide(&AppInput {
        app: &app,
        roles: &d.roles,
        status: &statuses(&[
            ("a", st(Role::Primary, Health::Healthy)),
            ("b", st(Role::Backup, Health::Healthy)),
        ]),
        intent: Some(&Intent {
            by: None,
            id: "s".into(),
            app: "web".into(),
            kind: IntentKind::Switchover { to: None },
            outcome: IntentState::Pending,
        }),
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(
        matches!(&refused.intent, Some(IntentState::Refused { reason }) if reason.contains("in maintenance"))
    );
    // Off: the failure is acted on at the next decision.
    let off = decide(&AppInput {
        app: &app,
        roles: &d.roles,
        status: &statuses(&[("a", exited()), ("b", st(Role::Backup, Health::Healthy))]),
        intent: maint(false).as_ref(),
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert!(!off.roles.maintenance);
    let after = decide(&AppInput {
        app: &app,
        roles: &off.roles,
        status: &statuses(&[("a", exited()), ("b", st(Role::Backup, Health::Healthy))]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert_eq!(after.roles.primary.map(|g| g.instance), Some("b".into()));
}

#[test]
fn a_pool_worker_is_free_or_busy_as_its_health_answer_says() {
    let mut m = machine(HaMode::Pool);
    let step = m.handle(Input::Tick, Duration::ZERO);
    assert_eq!(
        step.actions,
        vec![Action::Spawn {
            incarnation: 1,
            role: Role::Free,
            epoch: 0
        }]
    );
    m.handle(Input::Spawned { pid: 5 }, MS);
    assert_eq!(m.status().acting, Role::Free);
    let step = m.handle(
        Input::Load {
            incarnation: 1,
            busy: true,
        },
        2 * MS,
    );
    assert_eq!(step.actions, vec![Action::Publish]);
    assert_eq!(m.status().acting, Role::Busy);
    assert!(
        m.handle(
            Input::Load {
                incarnation: 1,
                busy: true
            },
            3 * MS
        )
        .actions
        .is_empty()
    );
    assert!(
        m.handle(
            Input::Load {
                incarnation: 0,
                busy: false
            },
            3 * MS
        )
        .actions
        .is_empty(),
        "stale incarnation"
    );
    m.handle(
        Input::Load {
            incarnation: 1,
            busy: false,
        },
        4 * MS,
    );
    assert_eq!(m.status().acting, Role::Free);
    // Other modes ignore it.
    let mut w = running();
    assert!(
        w.handle(
            Input::Load {
                incarnation: 1,
                busy: true
            },
            5 * MS
        )
        .actions
        .is_empty()
    );
    assert_eq!(w.status().acting, Role::Backup);
}

/// The runtime may start a process asynchronously: inputs can arrive
/// between the spawn action and its outcome.
#[test]
fn a_stop_or_a_role_change_during_a_start_takes_effect_once_it_runs() {
    // Stopped while starting: terminated as soon as it runs.
    let mut m = machine(HaMode::WarmStandby);
    let step = m.handle(Input::Tick, Duration::ZERO);
    assert!(matches!(step.actions[..], [Action::Spawn { .. }]));
    let step = m.handle(Input::Stop, MS);
    assert!(step.actions.is_empty(), "{step:?}");
    assert!(!m.is_stopped(), "its start is under way");
    let step = m.handle(Input::Spawned { pid: 5 }, 2 * MS);
    assert_eq!(step.actions, vec![Action::Publish, Action::Terminate]);
    m.handle(
        Input::Exited {
            how: "exited with code 0".into(),
        },
        3 * MS,
    );
    assert!(m.is_stopped());
    // Stopped while starting, and the start failed: stopped, not retried.
    let mut m = machine(HaMode::WarmStandby);
    m.handle(Input::Tick, Duration::ZERO);
    m.handle(Input::Stop, MS);
    m.handle(
        Input::SpawnFailed {
            error: "ENOENT".into(),
        },
        2 * MS,
    );
    assert!(m.is_stopped());
    assert_eq!(m.next_wakeup(), None);
    // An n-plus-1 member made standby while starting: stopped once it runs.
    let mut m = InstanceMachine::new(InstanceSpec {
        name: "web/a".into(),
        host: "h1".into(),
        ha: HaMode::NPlus1,
        has_hook: false,
        restart: policy(),
        checks: vec![],
        session: 7,
    });
    let active = |role, generation| Input::Assigned {
        role,
        epoch: 0,
        grant: None,
        generation,
    };
    m.handle(active(Role::Active, 1), Duration::ZERO);
    let step = m.handle(active(Role::Standby, 2), MS);
    assert!(!step.actions.contains(&Action::Terminate));
    let step = m.handle(Input::Spawned { pid: 6 }, 2 * MS);
    assert!(step.actions.contains(&Action::Terminate), "{step:?}");
}

#[test]
fn n_plus_1_replacements_are_logged_with_the_name_of_their_reason() {
    let app = app_in(HaMode::NPlus1, 2);
    let first = decide(&AppInput {
        app: &app,
        roles: &AppRoles::default(),
        status: &statuses(&[("a", idle()), ("b", idle()), ("c", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    let looping = InstanceStatus {
        crash_looping: true,
        ..st(Role::Active, Health::Healthy)
    };
    let d = decide(&AppInput {
        app: &app,
        roles: &first.roles,
        status: &statuses(&[("a", looping), ("c", idle())]),
        intent: None,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    let got: Vec<_> = d.events.iter().map(|e| (e.kind, e.reason)).collect();
    assert_eq!(
        got,
        [
            (EventKind::CrashLoop, Some("crash_looping")),
            (EventKind::Host, Some("host_lost")),
            (EventKind::InstanceStarted, Some("made_active")),
        ]
    );
}

#[test]
fn a_first_decision_awaits_every_instance_started_and_judged() {
    use tandem_core::controller::awaits_first_reports;
    let mut app = app();
    app.instances.truncate(2);
    let s = |process, health| InstanceStatus {
        process,
        ..st(Role::Backup, health)
    };
    let cases = [
        // (a, b, wait?)
        (None, None, true),
        (Some(s(ProcessState::Running, Health::Healthy)), None, true),
        (
            Some(s(ProcessState::Running, Health::Healthy)),
            Some(s(ProcessState::Pending, Health::Unknown)),
            true,
        ),
        (
            Some(s(ProcessState::Running, Health::Healthy)),
            Some(s(ProcessState::Starting, Health::Unknown)),
            true,
        ),
        (
            Some(s(ProcessState::Running, Health::Healthy)),
            Some(s(ProcessState::Running, Health::Unknown)),
            true,
        ),
        (
            Some(s(ProcessState::Running, Health::Healthy)),
            Some(s(ProcessState::Running, Health::Unhealthy)),
            false,
        ),
        // A spare that stays stopped (cold standby) or crashed has reported.
        (
            Some(s(ProcessState::Running, Health::Healthy)),
            Some(s(ProcessState::Stopped, Health::Unknown)),
            false,
        ),
        (
            Some(s(ProcessState::Backoff, Health::Unknown)),
            Some(s(ProcessState::Running, Health::Healthy)),
            false,
        ),
    ];
    for (n, (a, b, wait)) in cases.into_iter().enumerate() {
        let status: BTreeMap<String, InstanceStatus> = [("a", a), ("b", b)]
            .into_iter()
            .filter_map(|(id, s)| Some((id.to_string(), s?)))
            .collect();
        assert_eq!(awaits_first_reports(&app, &status), wait, "case {n}");
    }
}

/// The events of an operator's request name the API token that made it.
#[test]
fn operator_events_name_the_token_that_asked() {
    use Health::Healthy;
    use Role::{Backup, Primary};
    let app = app();
    let status = statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]);
    let decide_with = |intent: &Intent| {
        decide(&AppInput {
            app: &app,
            roles: &held_by_a(),
            status: &status,
            intent: Some(intent),
            hosts: HostsState::NONE,
            links: tandem_core::controller::AppLinks::NONE,
        })
    };
    let asked = Intent {
        by: Some("ops".into()),
        ..switchover_intent()
    };
    let d = decide_with(&asked);
    let intent_event = d
        .events
        .iter()
        .find(|e| e.kind == EventKind::Intent)
        .expect("an intent event");
    assert!(
        intent_event.message.contains("token \"ops\""),
        "{}",
        intent_event.message
    );
    let refused = Intent {
        by: Some("ops".into()),
        kind: IntentKind::Switchover {
            to: Some("nobody".into()),
        },
        ..switchover_intent()
    };
    let d = decide_with(&refused);
    assert!(
        d.events
            .iter()
            .any(|e| e.message.contains("refused") && e.message.contains("token \"ops\"")),
        "{:?}",
        d.events
    );
    let maintenance = Intent {
        by: Some("ops".into()),
        kind: IntentKind::Maintenance { on: true },
        ..switchover_intent()
    };
    let d = decide_with(&maintenance);
    assert!(
        d.events
            .iter()
            .any(|e| e.kind == EventKind::Maintenance && e.message.contains("token \"ops\"")),
        "{:?}",
        d.events
    );
    // Without a token, no name.
    let d = decide_with(&switchover_intent());
    assert!(d.events.iter().all(|e| !e.message.contains("token")));
}

// ---- a planned switchover that drains the primary first ----

/// `app()` with a 300 ms drain.
fn draining_app() -> App {
    App {
        drain: 300 * MS,
        ..app()
    }
}

fn decide_drain(
    roles: &AppRoles,
    status: &BTreeMap<String, InstanceStatus>,
    intent: Option<&Intent>,
) -> tandem_core::controller::Decision {
    let app = draining_app();
    decide(&AppInput {
        app: &app,
        roles,
        status,
        intent,
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    })
}

/// The roles once a switchover to `b` was accepted with a drain
/// (generation 2, drain asked at generation 2).
fn drain_started() -> AppRoles {
    decide_drain(
        &held_by_a(),
        &statuses(&[
            ("a", st(Role::Primary, Health::Healthy)),
            ("b", st(Role::Backup, Health::Healthy)),
        ]),
        Some(&switchover_intent()),
    )
    .roles
}

/// `a`, acting primary, having drained the drain asked at `generation`.
fn drained(generation: u64) -> InstanceStatus {
    InstanceStatus {
        seen_generation: generation,
        drained: generation,
        ..st(Role::Primary, Health::Healthy)
    }
}

fn running_intent() -> Intent {
    Intent {
        outcome: IntentState::Running,
        ..switchover_intent()
    }
}

#[test]
fn a_planned_switchover_with_a_drain_withdraws_the_grant_only_once_the_primary_has_drained() {
    use Health::*;
    use Role::*;
    struct Case {
        name: &'static str,
        roles: fn() -> AppRoles,
        status: fn() -> BTreeMap<String, InstanceStatus>,
        intent: Option<Intent>,
        /// The grant's holder after the decision.
        primary: Option<&'static str>,
        /// Who steps down after the decision.
        stepping_down: Option<&'static str>,
        /// The drain asked after the decision: (ms, generation).
        drain: Option<(u64, u64)>,
        /// The switchover's target after the decision.
        switchover_to: Option<&'static str>,
        intent_state: Option<&'static str>,
        events: Vec<(EventKind, &'static str)>,
        reason: &'static str,
    }
    let cases = vec![
        Case {
            name: "accepted: the primary keeps its grant and is asked to drain",
            roles: held_by_a,
            status: || statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
            intent: Some(switchover_intent()),
            primary: Some("a"),
            stepping_down: None,
            drain: Some((300, 2)),
            switchover_to: Some("b"),
            intent_state: Some("running"),
            events: vec![
                (EventKind::Intent, "running"),
                (EventKind::Demoted, "draining"),
            ],
            reason: "switchover requested: draining web/a for 300 ms (no new work), then demoting it and promoting web/b",
        },
        Case {
            name: "still draining: nothing changes",
            roles: drain_started,
            status: || statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
            intent: Some(running_intent()),
            primary: Some("a"),
            stepping_down: None,
            drain: Some((300, 2)),
            switchover_to: Some("b"),
            intent_state: None,
            events: vec![],
            reason: "switchover requested: draining web/a for 300 ms (no new work), then demoting it and promoting web/b",
        },
        Case {
            name: "an earlier drain's report does not count",
            roles: drain_started,
            status: || statuses(&[("a", drained(1)), ("b", st(Backup, Healthy))]),
            intent: Some(running_intent()),
            primary: Some("a"),
            stepping_down: None,
            drain: Some((300, 2)),
            switchover_to: Some("b"),
            intent_state: None,
            events: vec![],
            reason: "switchover requested: draining web/a for 300 ms (no new work), then demoting it and promoting web/b",
        },
        Case {
            name: "drained: the grant is withdrawn, the target waits for the step-down",
            roles: drain_started,
            status: || statuses(&[("a", drained(2)), ("b", st(Backup, Healthy))]),
            intent: Some(running_intent()),
            primary: None,
            stepping_down: Some("a"),
            drain: None,
            switchover_to: Some("b"),
            intent_state: None,
            events: vec![(EventKind::Demoted, "switchover")],
            reason: "waiting for web/a to step down before promoting",
        },
        Case {
            name: "the primary fails while draining: a failover, the switchover refused",
            roles: drain_started,
            status: || statuses(&[("a", exited()), ("b", st(Backup, Healthy))]),
            intent: Some(running_intent()),
            primary: Some("b"),
            stepping_down: None,
            drain: None,
            switchover_to: None,
            intent_state: Some(
                "switchover interrupted: primary web/a failed: not running: killed by signal 9 (SIGKILL)",
            ),
            events: vec![
                (EventKind::PrimaryFailed, "not_running"),
                (EventKind::Promoted, "not_running"),
            ],
            reason: "promoted web/b (epoch 2): primary web/a failed: not running: killed by signal 9 (SIGKILL)",
        },
        Case {
            name: "the primary turns unhealthy while draining: withdrawn as a failure, the switchover refused",
            roles: drain_started,
            status: || statuses(&[("a", st(Primary, Unhealthy)), ("b", st(Backup, Healthy))]),
            intent: Some(running_intent()),
            primary: None,
            stepping_down: Some("a"),
            drain: None,
            switchover_to: None,
            intent_state: Some(
                "switchover interrupted: primary web/a failed: unhealthy: GET /health timed out",
            ),
            events: vec![(EventKind::PrimaryFailed, "unhealthy")],
            reason: "waiting for web/a to step down before promoting",
        },
        Case {
            name: "the target becomes unfit while the primary drains: aborted, the primary stays",
            roles: drain_started,
            status: || statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Unhealthy))]),
            intent: Some(running_intent()),
            primary: Some("a"),
            stepping_down: None,
            drain: None,
            switchover_to: None,
            intent_state: Some(
                "switchover aborted while web/a drained: target web/b became unfit (unhealthy: GET /health timed out); web/a stays primary",
            ),
            events: vec![(EventKind::Intent, "refused")],
            reason: "switchover aborted while web/a drained: target web/b became unfit (unhealthy: GET /health timed out); web/a stays primary",
        },
        Case {
            name: "another switchover while one drains is refused",
            roles: drain_started,
            status: || statuses(&[("a", st(Primary, Healthy)), ("b", st(Backup, Healthy))]),
            intent: Some(Intent {
                id: "i2".into(),
                ..switchover_intent()
            }),
            primary: Some("a"),
            stepping_down: None,
            drain: Some((300, 2)),
            switchover_to: Some("b"),
            intent_state: Some("a switchover of web is already in progress"),
            events: vec![(EventKind::Intent, "refused")],
            reason: "switchover requested: draining web/a for 300 ms (no new work), then demoting it and promoting web/b",
        },
    ];
    let mut failures = Vec::new();
    for c in cases {
        let d = decide_drain(&(c.roles)(), &(c.status)(), c.intent.as_ref());
        let primary = d.roles.primary.as_ref().map(|g| g.instance.as_str());
        let stepping_down = d
            .roles
            .stepping_down
            .as_ref()
            .map(|s| s.grant.instance.as_str());
        let sw = d.roles.switchover.as_ref();
        let drain = sw
            .and_then(|s| s.drain.as_ref())
            .map(|d| (d.ms, d.generation));
        let switchover_to = sw.map(|s| s.to.as_str());
        let intent = d.intent.as_ref().map(|s| match s {
            IntentState::Refused { reason } => reason.clone(),
            IntentState::Running => "running".into(),
            IntentState::Done { message } => message.clone(),
            IntentState::Pending => "pending".into(),
        });
        let events: Vec<(EventKind, &str)> = d
            .events
            .iter()
            .map(|e| (e.kind, e.reason.unwrap_or("")))
            .collect();
        let got = format!(
            "primary {primary:?} stepping_down {stepping_down:?} drain {drain:?} to {switchover_to:?} intent {intent:?} events {events:?} reason {:?}",
            d.roles.reason
        );
        let want = format!(
            "primary {:?} stepping_down {:?} drain {:?} to {:?} intent {:?} events {:?} reason {:?}",
            c.primary,
            c.stepping_down,
            c.drain,
            c.switchover_to,
            c.intent_state,
            c.events,
            c.reason
        );
        if got != want {
            failures.push(format!("{}:\n  got  {got}\n  want {want}", c.name));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn after_a_drain_the_target_is_promoted_and_the_intent_is_done() {
    let roles = decide_drain(
        &drain_started(),
        &statuses(&[("a", drained(2)), ("b", st(Role::Backup, Health::Healthy))]),
        Some(&running_intent()),
    )
    .roles;
    assert_eq!(roles.generation, 3);
    let d = decide_drain(
        &roles,
        &statuses(&[
            ("a", stepped_down(3)),
            ("b", st(Role::Backup, Health::Healthy)),
        ]),
        Some(&running_intent()),
    );
    assert_eq!(
        d.roles
            .primary
            .as_ref()
            .map(|g| (g.instance.as_str(), g.epoch)),
        Some(("b", 2))
    );
    assert_eq!(d.roles.switchover, None);
    assert_eq!(
        d.intent,
        Some(IntentState::Done {
            message: "web/b is primary".into()
        })
    );
}

#[test]
fn without_a_drain_a_switchover_demotes_at_once() {
    let d = decide(&AppInput {
        app: &app(),
        roles: &held_by_a(),
        status: &statuses(&[
            ("a", st(Role::Primary, Health::Healthy)),
            ("b", st(Role::Backup, Health::Healthy)),
        ]),
        intent: Some(&switchover_intent()),
        hosts: HostsState::NONE,
        links: tandem_core::controller::AppLinks::NONE,
    });
    assert_eq!(d.roles.primary, None);
    assert_eq!(
        d.roles.switchover.as_ref().map(|s| s.drain.clone()),
        Some(None)
    );
}

#[test]
fn a_primary_asked_to_drain_reports_it_once_the_period_has_passed_from_when_it_was_asked() {
    let mut m = running();
    let t = |ms: u32| ms * MS;
    let step = m.handle(Input::Drain(Some((5, 300 * MS))), t(10));
    assert!(step.actions.is_empty(), "{step:?}");
    assert_eq!(
        step.notes.iter().map(Note::name).collect::<Vec<_>>(),
        ["draining"]
    );
    assert_eq!(m.next_wakeup(), Some(t(310)));
    // Asked again (a later assignment carries the same drain): the timer
    // is not restarted.
    m.handle(Input::Drain(Some((5, 300 * MS))), t(200));
    assert_eq!(m.next_wakeup(), Some(t(310)));
    let step = m.handle(Input::Tick, t(309));
    assert!(!step.actions.contains(&Action::Publish), "{step:?}");
    assert_eq!(m.status().drained, 0);
    let step = m.handle(Input::Tick, t(310));
    assert!(step.actions.contains(&Action::Publish), "{step:?}");
    assert_eq!(
        step.notes.iter().map(Note::name).collect::<Vec<_>>(),
        ["drained"]
    );
    assert_eq!(m.status().drained, 5);
    assert_eq!(m.next_wakeup(), None);
    // A finished drain asked again is not redone.
    let step = m.handle(Input::Drain(Some((5, 300 * MS))), t(400));
    assert!(step.notes.is_empty(), "{step:?}");
    // A drain no longer asked is cancelled: no report.
    m.handle(Input::Drain(Some((9, 300 * MS))), t(500));
    m.handle(Input::Drain(None), t(600));
    assert_eq!(m.next_wakeup(), None);
    m.handle(Input::Tick, t(900));
    assert_eq!(m.status().drained, 5);
}

#[test]
fn a_drain_is_asked_of_the_granted_primary_only() {
    let roles = drain_started();
    assert_eq!(
        tandem_core::instance::drain_request(&roles, "a"),
        Input::Drain(Some((2, 300 * MS)))
    );
    assert_eq!(
        tandem_core::instance::drain_request(&roles, "b"),
        Input::Drain(None)
    );
    assert_eq!(
        tandem_core::instance::drain_request(&held_by_a(), "a"),
        Input::Drain(None)
    );
}

/// A primary whose agent never reports that it drained (an agent of an
/// older version, a bug) is demoted anyway once the drain's limit has
/// passed by the controller's clock; before that, it keeps draining. With
/// no clock known, nothing is bounded.
#[test]
fn a_drain_never_reported_is_ended_at_its_limit() {
    let app = draining_app();
    let at = 1_000_000;
    let clock = |now_ms| tandem_core::controller::AppLinks {
        now_ms,
        ..Default::default()
    };
    let status = statuses(&[
        ("a", st(Role::Primary, Health::Healthy)),
        ("b", st(Role::Backup, Health::Healthy)),
    ]);
    let decide_at = |roles: &AppRoles, intent: Option<&Intent>, now_ms| {
        decide(&AppInput {
            app: &app,
            roles,
            status: &status,
            intent,
            hosts: HostsState::NONE,
            links: &clock(now_ms),
        })
    };
    let started = decide_at(&held_by_a(), Some(&switchover_intent()), at).roles;
    let drain = started
        .switchover
        .as_ref()
        .and_then(|sw| sw.drain.clone())
        .expect("a drain");
    assert_eq!(drain.asked_at_ms, Some(at));
    assert_eq!(drain.limit_ms(), 5_600);
    let waiting = decide_at(&started, Some(&running_intent()), at + 5_599);
    assert!(!waiting.changed, "{waiting:?}");
    assert_eq!(
        waiting.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("a")
    );
    let ended = decide_at(&started, Some(&running_intent()), at + 5_600);
    assert!(ended.changed);
    assert_eq!(ended.roles.primary, None, "demoted");
    assert_eq!(
        ended
            .roles
            .stepping_down
            .as_ref()
            .map(|sd| sd.grant.instance.as_str()),
        Some("a")
    );
    let demoted: Vec<_> = ended
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Demoted)
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(
        demoted,
        ["demoting web/a for a planned switchover to b, without its drain report after 5600 ms"]
    );
    // Without a clock (a controller that knows none), it waits for the
    // report as before.
    let unbounded = decide_at(&started, Some(&running_intent()), 0);
    assert!(!unbounded.changed);
}
