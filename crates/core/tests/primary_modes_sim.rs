//! Property test of the modes with a primary (warm and hot standby, cold
//! standby, singleton): the real controller decision function and
//! the real per-instance state machines, composed in a simulated world where
//! every effect (spawn, hook, kill, delivery of an assignment to an agent)
//! happens in an order chosen by proptest, interleaved with crashes,
//! freezes (SIGSTOP), hangs, probes, host partitions, switchovers and time.
//!
//! Invariants checked after every step:
//! - the assignment never names two primaries, and every new grant has a
//!   strictly higher epoch than every earlier one;
//! - warm and hot standby: at most one live, unfrozen process believes it is
//!   primary, except a process that was frozen while primary and has just
//!   been thawed: it believes an older epoch, and its agent already knows it
//!   as fenced;
//! - cold standby and singleton: at most one process is alive at all,
//!   frozen or not;
//! - every published status that says `primary` carries an epoch that was
//!   granted to that instance (never 0, never another's);
//! - after the faults stop, the app converges to exactly one primary.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use tandem_core::controller::{AppInput, Style, decide, style};
use tandem_core::instance::{
    Action, HookFailure, Input, InstanceMachine, InstanceSpec, assignment,
};
use tandem_core::model::{AppRoles, InstanceStatus, Intent, IntentKind, IntentState, Role};
use tandem_core::topology::{App, HaMode, Instance, RestartPolicy};

#[derive(Debug, Clone)]
enum Op {
    Crash(usize),
    Freeze(usize),
    Thaw(usize),
    Hang(usize),
    Unhang(usize),
    Probe(usize),
    Advance(u64),
    Exec(usize),
    Decide,
    Deliver(usize),
    Partition(usize),
    Heal(usize),
    Switchover(Option<usize>),
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..n).prop_map(Op::Crash),
        1 => (0..n).prop_map(Op::Freeze),
        1 => (0..n).prop_map(Op::Thaw),
        1 => (0..n).prop_map(Op::Hang),
        1 => (0..n).prop_map(Op::Unhang),
        6 => (0..n).prop_map(Op::Probe),
        2 => (1u64..3000).prop_map(Op::Advance),
        10 => (0..16usize).prop_map(Op::Exec),
        6 => Just(Op::Decide),
        6 => (0..n).prop_map(Op::Deliver),
        1 => (0..n).prop_map(Op::Partition),
        2 => (0..n).prop_map(Op::Heal),
        1 => proptest::option::of(0..n).prop_map(Op::Switchover),
    ]
}

#[derive(Debug, Clone)]
struct Process {
    alive: bool,
    frozen: bool,
    hung: bool,
    believes: (Role, u64),
    incarnation: u64,
}

struct World {
    app: App,
    now: Duration,
    machines: Vec<InstanceMachine>,
    procs: Vec<Process>,
    effects: Vec<(usize, Action)>,
    store: BTreeMap<String, InstanceStatus>,
    roles: AppRoles,
    intent: Option<Intent>,
    connected: Vec<bool>,
    sessions: Vec<i64>,
    next_session: i64,
    inbox: Vec<VecDeque<AppRoles>>,
    last_epoch: u64,
    intents: u64,
    /// Every (instance, epoch) ever granted.
    granted: BTreeSet<(String, u64)>,
}

fn app(n: usize, priorities: &[i64]) -> App {
    app_in(HaMode::WarmStandby, n, priorities)
}

fn app_in(ha: HaMode, n: usize, priorities: &[i64]) -> App {
    App {
        name: "web".into(),
        ha,
        command: vec!["demo".into()],
        env: BTreeMap::new(),
        workdir: None,
        checks: Vec::new(),
        hook: None,
        restart: RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            stable_after: Duration::from_secs(5),
            crashloop_after: 3,
        },
        stop_timeout: Duration::from_secs(1),
        replicas: n as u32,
        min_healthy: n as u32,
        instances: (0..n)
            .map(|i| Instance {
                id: format!("i{i}"),
                // One host per instance, so a partition isolates one.
                host: format!("h{i}"),
                priority: priorities[i],
                ports: BTreeMap::new(),
            })
            .collect(),
    }
}

impl World {
    fn new(app: App) -> World {
        let n = app.instances.len();
        let machines = app
            .instances
            .iter()
            .enumerate()
            .map(|(i, inst)| {
                InstanceMachine::new(InstanceSpec {
                    name: format!("web/{}", inst.id),
                    host: inst.host.clone(),
                    ha: app.ha,
                    has_hook: style(app.ha) == Style::Hooked,
                    restart: app.restart.clone(),
                    // One check: the simulation feeds its results.
                    checks: vec![(2, 1)],
                    session: 100 + i as i64,
                })
            })
            .collect();
        let mut w = World {
            now: Duration::ZERO,
            machines,
            procs: vec![
                Process {
                    alive: false,
                    frozen: false,
                    hung: false,
                    believes: (Role::Stopped, 0),
                    incarnation: 0,
                };
                n
            ],
            effects: Vec::new(),
            store: BTreeMap::new(),
            roles: AppRoles::default(),
            intent: None,
            connected: vec![true; n],
            sessions: (0..n).map(|i| 100 + i as i64).collect(),
            next_session: 1000,
            inbox: vec![VecDeque::new(); n],
            last_epoch: 0,
            intents: 0,
            granted: BTreeSet::new(),
            app,
        };
        for i in 0..n {
            w.feed(i, Input::Tick);
        }
        w
    }

    fn id(&self, i: usize) -> String {
        self.app.instances[i].id.clone()
    }

    /// Feeds an input; publishes at once, queues every other action.
    fn feed(&mut self, i: usize, input: Input) {
        let step = self.machines[i].handle(input, self.now);
        for a in step.actions {
            if a == Action::Publish {
                self.publish(i);
            } else {
                self.effects.push((i, a));
            }
        }
    }

    fn publish(&mut self, i: usize) {
        if self.connected[i] {
            let id = self.id(i);
            let status = self.machines[i].status();
            if status.acting == Role::Primary {
                assert!(
                    self.granted.contains(&(id.clone(), status.acting_epoch)),
                    "{id} published primary at epoch {}, never granted to it (grants: {:?}): {status:?}",
                    status.acting_epoch,
                    self.granted
                );
            }
            self.store.insert(id, status);
        }
    }

    fn exec(&mut self, k: usize) {
        if self.effects.is_empty() {
            return;
        }
        let (i, action) = self.effects.remove(k % self.effects.len());
        self.run(i, action);
    }

    fn run(&mut self, i: usize, action: Action) {
        match action {
            Action::Spawn {
                incarnation,
                role,
                epoch,
            } => {
                self.procs[i] = Process {
                    alive: true,
                    frozen: false,
                    hung: false,
                    believes: (role, epoch),
                    incarnation,
                };
                self.feed(
                    i,
                    Input::Spawned {
                        pid: 1000 + incarnation as u32,
                    },
                );
            }
            Action::RunHook {
                role,
                epoch,
                incarnation,
            } => {
                let p = &mut self.procs[i];
                let result = if !p.alive || p.incarnation != incarnation {
                    Err(HookFailure {
                        error: "no such process".into(),
                        process_stopped: false,
                    })
                } else if p.frozen {
                    Err(HookFailure {
                        error: "timeout".into(),
                        process_stopped: true,
                    })
                } else if p.hung {
                    Err(HookFailure {
                        error: "timeout".into(),
                        process_stopped: false,
                    })
                } else {
                    p.believes = (role, epoch);
                    Ok(())
                };
                self.feed(
                    i,
                    Input::HookDone {
                        role,
                        epoch,
                        incarnation,
                        result,
                    },
                );
            }
            Action::Kill { .. } | Action::Terminate => self.crash(i),
            Action::Publish => self.publish(i),
        }
    }

    fn crash(&mut self, i: usize) {
        if self.procs[i].alive {
            self.procs[i].alive = false;
            self.feed(
                i,
                Input::Exited {
                    how: "killed by signal 9".into(),
                },
            );
        }
    }

    fn decide(&mut self) {
        let d = decide(&AppInput {
            app: &self.app,
            roles: &self.roles,
            status: &self.store,
            intent: self.intent.as_ref(),
        });
        if let Some(state) = d.intent.clone()
            && let Some(intent) = &mut self.intent
        {
            intent.outcome = state;
        }
        if !d.changed {
            return;
        }
        assert!(d.roles.epoch >= self.roles.epoch, "epoch went backwards");
        assert_eq!(d.roles.generation, self.roles.generation + 1);
        if let Some(g) = &d.roles.primary
            && self.roles.primary.as_ref() != Some(g)
        {
            assert!(
                g.epoch > self.last_epoch,
                "new grant epoch {} not above {}",
                g.epoch,
                self.last_epoch
            );
            self.last_epoch = g.epoch;
            self.granted.insert((g.instance.clone(), g.epoch));
        }
        let primaries = d
            .roles
            .roles
            .values()
            .filter(|r| **r == Role::Primary)
            .count();
        assert!(primaries <= 1, "two primaries assigned: {:?}", d.roles);
        self.roles = d.roles;
        for h in 0..self.inbox.len() {
            if self.connected[h] {
                self.inbox[h].push_back(self.roles.clone());
            }
        }
    }

    fn deliver(&mut self, h: usize) {
        if let Some(doc) = self.inbox[h].pop_front() {
            let id = self.id(h);
            let input = assignment(&doc, self.app.ha, &id);
            self.feed(h, input);
        }
    }

    fn probe(&mut self, i: usize, healthy: bool) {
        let p = &self.procs[i];
        let result = if p.alive && !p.frozen && !p.hung && healthy {
            Ok(())
        } else {
            Err("timeout".to_string())
        };
        let incarnation = self.machines[i].incarnation();
        self.feed(
            i,
            Input::Probe {
                check: 0,
                incarnation,
                result,
            },
        );
    }

    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        for i in 0..self.machines.len() {
            if self.machines[i]
                .next_wakeup()
                .is_some_and(|t| t <= self.now)
            {
                self.feed(i, Input::Tick);
            }
        }
    }

    /// The host loses the store: its agent fences its instances, finishing
    /// before the lease can expire (the fence margin), then the lease
    /// expires and its statuses vanish.
    fn partition(&mut self, h: usize) {
        if !self.connected[h] {
            return;
        }
        self.feed(h, Input::Fence);
        self.drain_host(h);
        self.connected[h] = false;
        self.inbox[h].clear();
        let id = self.id(h);
        self.store.remove(&id);
    }

    fn drain_host(&mut self, h: usize) {
        for _ in 0..100 {
            let Some(k) = self.effects.iter().position(|(i, _)| *i == h) else {
                return;
            };
            let (i, a) = self.effects.remove(k);
            self.run(i, a);
        }
        panic!("effects of host {h} never settle");
    }

    fn heal(&mut self, h: usize) {
        if self.connected[h] {
            return;
        }
        self.connected[h] = true;
        self.next_session += 1;
        self.sessions[h] = self.next_session;
        self.feed(
            h,
            Input::Unfence {
                session: self.next_session,
            },
        );
        self.publish(h);
        self.inbox[h].push_back(self.roles.clone());
    }

    fn switchover(&mut self, to: Option<usize>) {
        if self
            .intent
            .as_ref()
            .is_some_and(|i| matches!(i.outcome, IntentState::Pending | IntentState::Running))
        {
            return;
        }
        self.intents += 1;
        self.intent = Some(Intent {
            id: format!("sw{}", self.intents),
            app: "web".into(),
            kind: IntentKind::Switchover {
                to: to.map(|i| self.id(i)),
            },
            outcome: IntentState::Pending,
        });
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Crash(i) => self.crash(i),
            Op::Freeze(i) => self.procs[i].frozen = self.procs[i].alive,
            Op::Thaw(i) => self.procs[i].frozen = false,
            Op::Hang(i) => self.procs[i].hung = self.procs[i].alive,
            Op::Unhang(i) => self.procs[i].hung = false,
            Op::Probe(i) => self.probe(i, true),
            Op::Advance(ms) => self.advance(ms),
            Op::Exec(k) => self.exec(k),
            Op::Decide => self.decide(),
            Op::Deliver(h) => self.deliver(h),
            Op::Partition(h) => self.partition(h),
            Op::Heal(h) => self.heal(h),
            Op::Switchover(to) => self.switchover(to),
        }
    }

    /// Warm: at most one live, unfrozen process believes it is primary, but
    /// for a thawed one with an older epoch that its agent knows as fenced.
    /// On-grant modes: at most one process alive.
    fn check_safety(&self) {
        if style(self.app.ha) == Style::OnGrant {
            let alive: Vec<usize> = (0..self.procs.len())
                .filter(|&i| self.procs[i].alive)
                .collect();
            assert!(
                alive.len() <= 1,
                "two {} instances alive: {alive:?}; procs {:?}; roles {:?}",
                self.app.ha,
                self.procs,
                self.roles
            );
            return;
        }
        let mut acting: Vec<(u64, usize)> = self
            .procs
            .iter()
            .enumerate()
            .filter(|(_, p)| p.alive && !p.frozen && p.believes.0 == Role::Primary)
            .map(|(i, p)| (p.believes.1, i))
            .collect();
        acting.sort();
        if acting.len() > 1 {
            let (top_epoch, _) = *acting.last().unwrap();
            for &(epoch, i) in &acting[..acting.len() - 1] {
                assert!(
                    epoch < top_epoch && self.machines[i].status().acting == Role::Fenced,
                    "two acting primaries: {:?}; procs {:?}; roles {:?}",
                    acting,
                    self.procs,
                    self.roles
                );
            }
        }
    }

    /// Ends every fault and lets the system run; it must converge.
    fn settle(&mut self) {
        for i in 0..self.procs.len() {
            self.procs[i].frozen = false;
            self.procs[i].hung = false;
            self.heal(i);
        }
        for _ in 0..60 {
            while !self.effects.is_empty() {
                self.exec(0);
                self.check_safety();
            }
            for h in 0..self.inbox.len() {
                while !self.inbox[h].is_empty() {
                    self.deliver(h);
                }
            }
            for i in 0..self.procs.len() {
                self.probe(i, true);
            }
            self.advance(1000);
            self.decide();
            self.check_safety();
        }
    }
}

proptest! {
    // PROPTEST_CASES raises the count for a longer hunt.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1500)
    ))]

    #[test]
    fn no_two_primaries_act_and_the_app_converges(
        ha in prop_oneof![
            Just(HaMode::WarmStandby),
            Just(HaMode::HotStandby),
            Just(HaMode::ColdStandby),
            Just(HaMode::Singleton),
        ],
        n in 2usize..=4,
        priorities in proptest::collection::vec(0i64..3, 4),
        ops in (2usize..=4).prop_flat_map(|n| proptest::collection::vec(op(n), 0..300)),
    ) {
        let n = n.min(priorities.len());
        let mut w = World::new(app_in(ha, n, &priorities));
        for o in &ops {
            let o = match *o {
                Op::Crash(i) => Op::Crash(i % n),
                Op::Freeze(i) => Op::Freeze(i % n),
                Op::Thaw(i) => Op::Thaw(i % n),
                Op::Hang(i) => Op::Hang(i % n),
                Op::Unhang(i) => Op::Unhang(i % n),
                Op::Probe(i) => Op::Probe(i % n),
                Op::Deliver(i) => Op::Deliver(i % n),
                Op::Partition(i) => Op::Partition(i % n),
                Op::Heal(i) => Op::Heal(i % n),
                Op::Switchover(to) => Op::Switchover(to.map(|i| i % n)),
                ref other => other.clone(),
            };
            w.apply(&o);
            w.check_safety();
        }
        w.settle();
        let grant = w.roles.primary.clone();
        prop_assert!(grant.is_some(), "no primary after settling: {:?}", w.roles);
        let grant = grant.unwrap();
        let acting: Vec<usize> = (0..n)
            .filter(|&i| w.procs[i].alive && w.procs[i].believes.0 == Role::Primary)
            .collect();
        prop_assert_eq!(acting.len(), 1, "acting primaries after settling: {:?} roles {:?}", w.procs, w.roles);
        if style(ha) == Style::OnGrant {
            let alive = (0..n).filter(|&i| w.procs[i].alive).count();
            prop_assert_eq!(alive, 1, "{} must run exactly one instance: {:?}", ha, w.procs);
        }
        prop_assert_eq!(w.id(acting[0]), grant.instance.clone());
        prop_assert_eq!(w.procs[acting[0]].believes.1, grant.epoch);
        if let Some(intent) = &w.intent {
            prop_assert!(
                !matches!(intent.outcome, IntentState::Pending | IntentState::Running),
                "intent never resolved: {:?}", intent
            );
        }
    }
}

/// The interleaving that the `promoting` rule of `InstanceMachine::status`
/// exists for: a promotion hook is still in flight when the grant is
/// withdrawn. The controller must not promote anyone else until that hook
/// has finished and the instance has stepped down again.
#[test]
fn withdrawn_grant_with_promotion_in_flight_blocks_the_next_promotion() {
    let mut w = World::new(app(2, &[1, 0]));
    // Start both processes, make them healthy, deliver the first grant.
    while !w.effects.is_empty() {
        w.exec(0);
    }
    w.probe(0, true);
    w.probe(1, true);
    w.decide();
    assert_eq!(
        w.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("i0")
    );
    w.deliver(0);
    w.deliver(1);
    // i0's promotion hook is now queued, not run.
    assert!(matches!(
        w.effects[..],
        [(
            0,
            Action::RunHook {
                role: Role::Primary,
                ..
            }
        )]
    ));
    // An operator switches over to i1 while the hook is in flight.
    w.switchover(Some(1));
    w.decide();
    assert!(w.roles.primary.is_none());
    w.deliver(0);
    w.deliver(1);
    w.decide();
    assert!(
        w.roles.primary.is_none(),
        "promoted while the old holder's promotion hook was in flight: {:?}",
        w.roles
    );
    // The hook lands, then the demotion runs, then i1 may be promoted.
    while !w.effects.is_empty() {
        w.exec(0);
        w.check_safety();
    }
    w.decide();
    w.deliver(1);
    while !w.effects.is_empty() {
        w.exec(0);
        w.check_safety();
    }
    assert_eq!(
        w.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("i1")
    );
    assert_eq!(w.procs[1].believes, (Role::Primary, 2));
    assert_eq!(w.procs[0].believes.0, Role::Backup);
    assert!(matches!(
        w.intent.as_ref().map(|i| &i.outcome),
        Some(IntentState::Done { .. })
    ));
}

/// A cold spare being started (its status says `starting`) is not taken
/// for an exited one: the controller does not start a second instance
/// while the first start is under way.
#[test]
fn a_start_in_flight_is_not_mistaken_for_an_exit() {
    let mut w = World::new(app_in(HaMode::ColdStandby, 2, &[0, 0]));
    w.decide();
    assert_eq!(
        w.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("i0")
    );
    // i0's agent sees the grant; the start is queued, not done.
    w.deliver(0);
    assert!(
        matches!(w.effects[..], [(0, Action::Spawn { .. })]),
        "{:?}",
        w.effects
    );
    assert_eq!(
        w.store["i0"].process,
        tandem_core::model::ProcessState::Starting
    );
    w.decide();
    assert_eq!(
        w.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("i0"),
        "the grant moved while i0 was starting: {:?}",
        w.roles
    );
    for round in 0..5 {
        while !w.effects.is_empty() {
            w.exec(0);
            w.check_safety();
        }
        for h in 0..2 {
            while !w.inbox[h].is_empty() {
                w.deliver(h);
            }
        }
        w.advance(1000);
        w.decide();
        w.check_safety();
        assert!(w.procs[0].alive, "round {round}: i0 should run");
        assert!(!w.procs[1].alive, "round {round}: i1 should not run");
    }
}
