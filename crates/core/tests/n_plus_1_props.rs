//! Property test of N+1: over arbitrary sequences of hosts lost and
//! regained and members crash-looping or recovering, the controller never
//! makes more than `replicas` instances active, keeps every active member
//! on a live host, and — as soon as enough instances are fit — has exactly
//! `replicas` active; a healthy active member is never moved (no flapping).

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use tandem_core::controller::{AppInput, HostsState, decide};
use tandem_core::model::{AppRoles, Health, InstanceStatus, ProcessState, Role};
use tandem_core::topology::{App, HaMode, Instance, RestartPolicy};

fn app(n: usize, replicas: u32, priorities: &[i64]) -> App {
    App {
        name: "web".into(),
        ha: HaMode::NPlus1,
        command: vec!["run".into()],
        env: BTreeMap::new(),
        workdir: None,
        checks: Vec::new(),
        fencing: Default::default(),
        hook: None,
        restart: RestartPolicy::default(),
        stop_timeout: Duration::from_secs(1),
        drain: std::time::Duration::ZERO,
        link_failover: Default::default(),
        admin_dir: None,
        pinned: false,
        replicas,
        min_healthy: replicas,
        instances: (0..n)
            .map(|i| Instance {
                id: format!("i{i}"),
                host: format!("h{i}"),
                priority: priorities[i],
                ports: BTreeMap::new(),
            })
            .collect(),
    }
}

fn status(crash_looping: bool) -> InstanceStatus {
    InstanceStatus {
        host: "h".into(),
        process: ProcessState::Running,
        pid: Some(1),
        session: 1,
        incarnation: 1,
        seen_generation: 0,
        health: Health::Healthy,
        health_detail: None,
        acting: Role::Active,
        acting_epoch: 0,
        promoting: false,
        drained: 0,
        links: Default::default(),
        active_links: Default::default(),
        admin: Default::default(),
        crash_looping,
        restarts: 0,
        last_exit: None,
    }
}

#[derive(Debug, Clone)]
enum Op {
    HostDown(usize),
    HostUp(usize),
    Loop(usize),
    Stable(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1000)
    ))]

    #[test]
    fn replicas_are_kept_on_live_hosts_without_flapping(
        n in 1usize..=5,
        replicas in 1u32..=5,
        priorities in proptest::collection::vec(0i64..3, 5),
        ops in proptest::collection::vec(
            prop_oneof![
                (0usize..5).prop_map(Op::HostDown),
                (0usize..5).prop_map(Op::HostUp),
                (0usize..5).prop_map(Op::Loop),
                (0usize..5).prop_map(Op::Stable),
            ],
            0..60,
        ),
    ) {
        let replicas = replicas.min(n as u32);
        let app = app(n, replicas, &priorities);
        let mut up = vec![true; n];
        let mut looping = vec![false; n];
        let mut roles = AppRoles::default();
        for op in ops.iter().chain(std::iter::once(&Op::Stable(0))) {
            match *op {
                Op::HostDown(i) => up[i % n] = false,
                Op::HostUp(i) => up[i % n] = true,
                Op::Loop(i) => looping[i % n] = true,
                Op::Stable(i) => looping[i % n] = false,
            }
            let statuses: BTreeMap<String, InstanceStatus> = (0..n)
                .filter(|&i| up[i])
                .map(|i| (format!("i{i}"), status(looping[i])))
                .collect();
            let before = roles.clone();
            let d = decide(&AppInput { app: &app, roles: &roles, status: &statuses, intent: None, hosts: HostsState::NONE, links: tandem_core::controller::AppLinks::NONE });
            roles = d.roles;
            let active: Vec<usize> = (0..n)
                .filter(|&i| roles.roles.get(&format!("i{i}")) == Some(&Role::Active))
                .collect();
            prop_assert!(active.len() <= replicas as usize, "too many active: {active:?}");
            for &i in &active {
                prop_assert!(up[i], "i{i} is active on a lost host");
            }
            let fit = (0..n).filter(|&i| up[i] && !looping[i]).count();
            prop_assert_eq!(
                active.len(),
                fit.min(replicas as usize),
                "fit {} replicas {} active {:?}", fit, replicas, active
            );
            // No flapping: a member that was active and is still fit stays.
            for i in 0..n {
                let id = format!("i{i}");
                if before.roles.get(&id) == Some(&Role::Active) && up[i] && !looping[i] {
                    prop_assert_eq!(roles.roles.get(&id), Some(&Role::Active), "i{} moved", i);
                }
            }
            prop_assert_eq!(roles.epoch, 0);
        }
    }
}
