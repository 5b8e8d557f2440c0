//! Property tests of the controller's safety rule with what it knows of
//! hosts beyond their leases ([`HostsState`]): a new grant is made only
//! when no other instance may still act as primary, *or* every one that
//! may is fenced — its host's fence device confirmed it off in that
//! session, or its host is suspected and the app's every action is
//! checked downstream against its epoch (`fencing = "token"`).
//!
//! Arbitrary apps (every mode with a primary, both fencings), arbitrary
//! statuses (absent, every process state and acting role, sessions and
//! incarnations that match the grant or not), arbitrary earlier
//! assignments (a grant, a withdrawal in progress) and arbitrary
//! suspicions and fencings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use tandem_core::controller::{AppInput, HostsState, Style, decide, style, token_fenced};
use tandem_core::model::{
    AppRoles, Health, InstanceStatus, PrimaryGrant, ProcessState, Role, SteppingDown,
};
use tandem_core::topology::{App, Fencing, HaMode, Instance, RestartPolicy};

const N: usize = 3;

fn app(ha: HaMode, fencing: Fencing) -> App {
    App {
        name: "web".into(),
        ha,
        command: vec!["run".into()],
        env: BTreeMap::new(),
        workdir: None,
        checks: Vec::new(),
        hook: None,
        fencing,
        restart: RestartPolicy::default(),
        stop_timeout: Duration::from_secs(1),
        drain: std::time::Duration::ZERO,
        link_failover: Default::default(),
        admin_dir: None,
        pinned: false,
        replicas: 1,
        min_healthy: 1,
        instances: (0..N)
            .map(|i| Instance {
                id: format!("i{i}"),
                host: format!("h{i}"),
                priority: 0,
                ports: BTreeMap::new(),
            })
            .collect(),
    }
}

fn arb_status() -> impl Strategy<Value = Option<InstanceStatus>> {
    let process = prop_oneof![
        Just(ProcessState::Running),
        Just(ProcessState::Starting),
        Just(ProcessState::Stopped),
        Just(ProcessState::Backoff),
        Just(ProcessState::Pending),
    ];
    let health = prop_oneof![
        Just(Health::Healthy),
        Just(Health::Unhealthy),
        Just(Health::Unknown)
    ];
    let acting = prop_oneof![Just(Role::Primary), Just(Role::Backup), Just(Role::Standby)];
    proptest::option::weighted(
        0.85,
        (
            process,
            health,
            acting,
            1i64..3,
            1u64..3,
            0u64..4,
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(
                |(process, health, acting, session, incarnation, seen, promoting, looping)| {
                    InstanceStatus {
                        host: String::new(),
                        process,
                        pid: process.is_live().then_some(1),
                        session,
                        incarnation,
                        seen_generation: seen,
                        health,
                        health_detail: None,
                        acting,
                        acting_epoch: 1,
                        promoting,
                        drained: 0,
                        links: Default::default(),
                        active_links: Default::default(),
                        admin: Default::default(),
                        crash_looping: looping,
                        restarts: 0,
                        last_exit: None,
                    }
                },
            ),
    )
}

fn arb_grant() -> impl Strategy<Value = PrimaryGrant> {
    (0..N, 1i64..3, 1u64..3).prop_map(|(i, session, incarnation)| PrimaryGrant {
        instance: format!("i{i}"),
        epoch: 1,
        incarnation,
        session,
    })
}

/// An earlier assignment: a grant, a withdrawal in progress, or nothing.
fn arb_roles() -> impl Strategy<Value = AppRoles> {
    (
        proptest::option::of(arb_grant()),
        proptest::option::of(arb_grant()),
    )
        .prop_map(|(primary, down)| {
            let stepping_down = match (&primary, down) {
                (Some(_), _) | (None, None) => None,
                (None, Some(grant)) => Some(SteppingDown {
                    grant,
                    generation: 2,
                }),
            };
            AppRoles {
                epoch: 1,
                generation: 1,
                primary,
                stepping_down,
                ..AppRoles::default()
            }
        })
}

fn arb_hosts() -> impl Strategy<Value = HostsState> {
    (
        proptest::collection::btree_set(0..N, 0..=N),
        proptest::collection::btree_map(0..N, 1i64..3, 0..=2),
        // Hosts whose site was declared failed (or, for a pinned app,
        // is not an active site that is up): nothing may be placed there.
        proptest::collection::btree_set(0..N, 0..=1),
    )
        .prop_map(|(suspected, fenced, failed)| HostsState {
            suspected: suspected.into_iter().map(|h| format!("h{h}")).collect(),
            fenced: fenced
                .into_iter()
                .map(|(h, s)| (format!("h{h}"), s))
                .collect(),
            sites: failed
                .into_iter()
                .map(|h| {
                    (
                        format!("h{h}"),
                        tandem_core::sites::HostSite {
                            site: format!("s{h}"),
                            active: true,
                            out: Some(format!("site s{h} was declared failed")),
                            failed: true,
                        },
                    )
                })
                .collect(),
        })
}

fn arb_case() -> impl Strategy<Value = (App, AppRoles, BTreeMap<String, InstanceStatus>, HostsState)>
{
    let ha = prop_oneof![
        Just(HaMode::HotStandby),
        Just(HaMode::WarmStandby),
        Just(HaMode::ColdStandby),
        Just(HaMode::Singleton),
    ];
    let fencing = prop_oneof![Just(Fencing::Lease), Just(Fencing::Token)];
    (
        ha,
        fencing,
        arb_roles(),
        proptest::collection::vec(arb_status(), N),
        arb_hosts(),
    )
        .prop_map(|(ha, fencing, roles, statuses, hosts)| {
            let app = app(ha, fencing);
            let status = statuses
                .into_iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    s.map(|mut s| {
                        s.host = format!("h{i}");
                        (format!("i{i}"), s)
                    })
                })
                .collect();
            (app, roles, status, hosts)
        })
}

/// Whether instance `id` may still act as primary, judged from its status
/// alone (no knowledge of hosts): it reports acting (on-grant modes:
/// running), or it holds a grant (current or being withdrawn) that it has
/// not confirmed giving up.
fn may_still_act(app: &App, roles: &AppRoles, id: &str, s: &InstanceStatus) -> bool {
    let style = style(app.ha);
    if style.may_act(s) {
        return true;
    }
    let holds = |g: &PrimaryGrant| g.instance == id;
    let withdrawn_not_done = roles
        .stepping_down
        .as_ref()
        .is_some_and(|sd| holds(&sd.grant) && !sd.is_done(Some(s)));
    let current_not_done = roles.primary.as_ref().is_some_and(|g| {
        holds(g)
            && !SteppingDown {
                grant: g.clone(),
                generation: roles.generation + 1,
            }
            .is_done(Some(s))
    });
    withdrawn_not_done || current_not_done
}

/// Whether whatever instance `id` (on host `host`) may still do is fenced.
fn fenced(app: &App, hosts: &HostsState, host: &str, s: &InstanceStatus) -> bool {
    hosts.fenced.get(host) == Some(&s.session)
        || (token_fenced(app) && hosts.suspected.contains(host))
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(4000),
        max_global_rejects: 1_000_000,
        ..ProptestConfig::default()
    })]

    /// A new grant never leaves an unfenced instance able to act.
    #[test]
    fn a_new_grant_leaves_no_unfenced_instance_able_to_act(
        (app, roles, status, hosts) in arb_case()
    ) {
        let d = decide(&AppInput { app: &app, roles: &roles, status: &status, intent: None, hosts: &hosts, links: tandem_core::controller::AppLinks::NONE });
        let Some(grant) = d.roles.primary.as_ref().filter(|_| d.roles.epoch > roles.epoch) else {
            return Ok(());
        };
        prop_assert_eq!(d.roles.epoch, roles.epoch + 1);
        for inst in &app.instances {
            if inst.id == grant.instance {
                continue;
            }
            let Some(s) = status.get(&inst.id) else { continue };
            if may_still_act(&app, &roles, &inst.id, s) {
                prop_assert!(
                    fenced(&app, &hosts, &inst.host, s),
                    "granted {} (epoch {}) while {} may still act unfenced: {:?}, hosts {:?}",
                    grant.instance, d.roles.epoch, inst.id, s, hosts
                );
            }
        }
    }

    /// Suspicion changes nothing for an app that is not token-fenced: it
    /// waits for the lease, exactly as if nothing were suspected.
    #[test]
    fn suspicion_changes_nothing_without_token_fencing(
        (app, roles, status, hosts) in arb_case()
    ) {
        prop_assume!(!token_fenced(&app));
        let only_suspected = HostsState { suspected: hosts.suspected.clone(), fenced: BTreeMap::new(), sites: BTreeMap::new() };
        let with = decide(&AppInput { app: &app, roles: &roles, status: &status, intent: None, hosts: &only_suspected, links: tandem_core::controller::AppLinks::NONE });
        let without = decide(&AppInput { app: &app, roles: &roles, status: &status, intent: None, hosts: HostsState::NONE, links: tandem_core::controller::AppLinks::NONE });
        prop_assert_eq!(with, without);
    }

    /// A token-fenced primary on a suspected host is replaced at once by a
    /// fit instance elsewhere, and so is any primary on a fenced host.
    #[test]
    fn a_suspected_token_primary_or_a_fenced_one_is_replaced_at_once(
        (app, mut roles, mut status, _) in arb_case(),
        by_device in any::<bool>(),
    ) {
        prop_assume!(by_device || token_fenced(&app));
        // i0 on h0 holds the grant and acts; i1 on h1 is a fit backup.
        let holder = InstanceStatus {
            host: "h0".into(),
            process: ProcessState::Running,
            pid: Some(1),
            session: 1,
            incarnation: 1,
            seen_generation: 1,
            health: Health::Healthy,
            health_detail: None,
            acting: Role::Primary,
            acting_epoch: 1,
            promoting: false,
            drained: 0,
            links: Default::default(),
            active_links: Default::default(),
            admin: Default::default(),
            crash_looping: false,
            restarts: 0,
            last_exit: None,
        };
        let backup = InstanceStatus {
            host: "h1".into(),
            process: if style(app.ha) == Style::OnGrant { ProcessState::Stopped } else { ProcessState::Running },
            acting: if style(app.ha) == Style::OnGrant { Role::Standby } else { Role::Backup },
            acting_epoch: 0,
            ..holder.clone()
        };
        roles.primary = Some(PrimaryGrant { instance: "i0".into(), epoch: 1, incarnation: 1, session: 1 });
        roles.stepping_down = None;
        status.insert("i0".into(), holder);
        status.insert("i1".into(), backup);
        status.remove("i2");
        let hosts = if by_device {
            HostsState { suspected: BTreeSet::from(["h0".to_string()]), fenced: BTreeMap::from([("h0".to_string(), 1)]), sites: BTreeMap::new() }
        } else {
            HostsState { suspected: BTreeSet::from(["h0".to_string()]), fenced: BTreeMap::new(), sites: BTreeMap::new() }
        };
        let d = decide(&AppInput { app: &app, roles: &roles, status: &status, intent: None, hosts: &hosts, links: tandem_core::controller::AppLinks::NONE });
        prop_assert_eq!(d.roles.primary.as_ref().map(|g| g.instance.as_str()), Some("i1"), "{:?}", d);
        prop_assert_eq!(d.roles.epoch, 2);
        let cause = d.roles.cause.map(|c| c.as_str());
        prop_assert_eq!(cause, Some(if by_device { "host_fenced" } else { "host_suspected" }));
        // The same without the suspicion: nothing changes.
        let d = decide(&AppInput { app: &app, roles: &roles, status: &status, intent: None, hosts: HostsState::NONE, links: tandem_core::controller::AppLinks::NONE });
        prop_assert_eq!(d.roles.primary.as_ref().map(|g| g.instance.as_str()), Some("i0"));
    }
}
