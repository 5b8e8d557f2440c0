//! One controller decision pass over 10,000 instances: `decide` called for
//! each of 5,000 apps of 2 instances, with a status for every instance.
//!
//! - `steady`: every app already has its primary (or its active members):
//!   the pass changes nothing. Target: 10 ms or less.
//! - `failover`: every primary has just exited (and every active n-plus-1
//!   member's host is lost): the pass promotes every backup of an app with
//!   a primary and makes every n-plus-1 spare active.
//!
//! Run with `cargo bench -p tandem-core --bench decide`. Under
//! `cargo test --all-targets` each case runs once, as a check that the
//! world is set up as described.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_core::controller::{AppInput, HostsState, Style, decide, default_role, style};
use tandem_core::model::{AppRoles, EventKind, Health, InstanceStatus, ProcessState, Role};
use tandem_core::topology::{App, HaMode, Instance, RestartPolicy};

/// Apps in the world; each has two instances.
const APPS: usize = 5_000;

/// The mode of app `i`: mostly warm standby (70 %), then cold standby
/// (10 %), n-plus-1 (10 %), singleton (5 %) and none (5 %).
fn mode(i: usize) -> HaMode {
    match i % 20 {
        0..14 => HaMode::WarmStandby,
        14 | 15 => HaMode::ColdStandby,
        16 | 17 => HaMode::NPlus1,
        18 => HaMode::Singleton,
        _ => HaMode::None,
    }
}

fn app(i: usize) -> App {
    let instance = |id: &str, host: usize, priority: i64| Instance {
        id: id.to_string(),
        host: format!("h{host:03}"),
        priority,
        ports: BTreeMap::new(),
    };
    App {
        name: format!("app-{i:04}"),
        ha: mode(i),
        command: vec!["serve".into()],
        env: BTreeMap::new(),
        workdir: None,
        checks: Vec::new(),
        fencing: Default::default(),
        hook: None,
        restart: RestartPolicy::default(),
        replicas: 1,
        min_healthy: 1,
        stop_timeout: App::DEFAULT_STOP_TIMEOUT,
        drain: std::time::Duration::ZERO,
        link_failover: Default::default(),
        admin_dir: None,
        pinned: false,
        instances: vec![
            instance("a", (2 * i) % 100, 10),
            instance("b", (2 * i + 1) % 100, 0),
        ],
    }
}

/// What a settled agent reports for an instance assigned `role` by `roles`.
fn settled(app: &App, id: &str, roles: &AppRoles) -> InstanceStatus {
    let role = roles.role_of(id, default_role(app.ha));
    let grant = roles.primary.as_ref().filter(|g| g.instance == id);
    let runs = match style(app.ha) {
        Style::Hooked | Style::Always => true,
        Style::OnGrant => grant.is_some(),
        Style::OnAssign => role == Role::Active,
    };
    InstanceStatus {
        host: app.instance(id).unwrap().host.clone(),
        process: if runs {
            ProcessState::Running
        } else {
            ProcessState::Stopped
        },
        pid: runs.then_some(4242),
        session: 1,
        incarnation: grant.map_or(u64::from(runs), |g| g.incarnation),
        seen_generation: roles.generation,
        health: if runs {
            Health::Healthy
        } else {
            Health::Unknown
        },
        health_detail: None,
        acting: role,
        acting_epoch: grant.map_or(roles.epoch, |g| g.epoch),
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

/// One app, its assignment and the statuses of its instances.
struct Case {
    app: App,
    roles: AppRoles,
    status: BTreeMap<String, InstanceStatus>,
}

impl Case {
    fn input(&self) -> AppInput<'_> {
        AppInput {
            app: &self.app,
            roles: &self.roles,
            status: &self.status,
            intent: None,
            hosts: HostsState::NONE,
            links: tandem_core::controller::AppLinks::NONE,
        }
    }
}

/// Every app settled: assigned by the controller and carried out by its
/// agents.
fn steady() -> Vec<Case> {
    (0..APPS)
        .map(|i| {
            let app = app(i);
            // Both instances fresh: the first decision assigns the roles.
            let fresh = AppRoles::default();
            let status = app
                .instances
                .iter()
                .map(|inst| (inst.id.clone(), settled(&app, &inst.id, &fresh)))
                .collect();
            let first = decide(&AppInput {
                app: &app,
                roles: &fresh,
                status: &status,
                intent: None,
                hosts: HostsState::NONE,
                links: tandem_core::controller::AppLinks::NONE,
            });
            assert!(first.changed, "{}: {}", app.name, first.roles.reason);
            let roles = first.roles;
            let status = app
                .instances
                .iter()
                .map(|inst| (inst.id.clone(), settled(&app, &inst.id, &roles)))
                .collect();
            Case { app, roles, status }
        })
        .collect()
}

/// The steady world where every primary has just exited and every active
/// n-plus-1 member's host is lost.
fn failover() -> Vec<Case> {
    let mut world = steady();
    for case in &mut world {
        match style(case.app.ha) {
            Style::Hooked | Style::OnGrant => {
                let id = case.roles.primary.as_ref().unwrap().instance.clone();
                let s = case.status.get_mut(&id).unwrap();
                s.process = ProcessState::Backoff;
                s.pid = None;
                s.health = Health::Unknown;
                s.acting = Role::Stopped;
                s.restarts = 1;
                s.last_exit = Some("killed by signal 9".into());
            }
            Style::OnAssign => {
                let id = case.roles.roles.iter().find(|(_, r)| **r == Role::Active);
                let id = id.unwrap().0.clone();
                case.status.remove(&id);
            }
            Style::Always => {}
        }
    }
    world
}

/// One decision pass over every app; returns how many assignments changed.
fn pass(world: &[Case]) -> usize {
    world
        .iter()
        .map(|case| decide(black_box(&case.input())))
        .filter(|d| d.changed)
        .count()
}

fn bench(c: &mut Criterion) {
    let steady = steady();
    for case in &steady {
        let d = decide(&case.input());
        assert!(!d.changed && d.events.is_empty(), "{}", case.app.name);
    }
    let failover = failover();
    let count = |s: &[Style]| {
        let of = |c: &&Case| s.contains(&style(c.app.ha));
        failover.iter().filter(of).count()
    };
    let with_primary = count(&[Style::Hooked, Style::OnGrant]);
    let promoted = failover
        .iter()
        .filter(|c| {
            let d = decide(&c.input());
            d.events.iter().any(|e| e.kind == EventKind::Promoted)
        })
        .count();
    assert_eq!(promoted, with_primary);
    assert_eq!(pass(&failover), with_primary + count(&[Style::OnAssign]));

    let instances = steady.iter().map(|c| c.app.instances.len()).sum::<usize>();
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(instances as u64));
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("steady pass, 10,000 instances", |b| {
        b.iter(|| assert_eq!(pass(&steady), 0))
    });
    group.bench_function("failover pass, 10,000 instances", |b| {
        b.iter(|| pass(&failover))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
