//! Property test of the modes with a primary (warm and hot standby, cold
//! standby, singleton): the real controller decision function and the real
//! host machines (each with its real per-instance machine), composed in a
//! simulated world of hosts, a coordination store with leases, a network
//! and processes. Every effect (spawn, hook, peer question, delivery of an
//! assignment) happens in an order chosen by proptest, interleaved with
//! crashes, freezes (SIGSTOP) of processes and of agents, hangs, probes,
//! cuts between a host and the store, isolated hosts, a store without
//! quorum, switchovers and time.
//!
//! Nothing about fencing is idealised: a host's agent learns of the store
//! only through its lease keeper's reports, fences by its own clock, asks
//! its peers for failsafe, and its watchdog kills its primaries when the
//! agent is frozen; the store expires a lease a TTL after the last renewal
//! it received and deletes the statuses bound to it.
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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tandem_core::controller::{AppInput, HostsState, Style, decide, style};
use tandem_core::host::{
    FailsafeAnswer, HostAction, HostConfig, HostInput, HostMachine, HostStep, LeaseInput, PeerAsk,
};
use tandem_core::instance::{Action, HookFailure, Input};
use tandem_core::model::{AppRoles, InstanceStatus, Intent, IntentKind, IntentState, Role};
use tandem_core::topology::{
    App, Check, CheckKind, Cluster, HaMode, Hook, Host, Instance, RestartPolicy, Site, Topology,
};

const TTL: Duration = Duration::from_millis(3000);
const RENEW: Duration = Duration::from_millis(500);
const MARGIN: Duration = Duration::from_millis(1000);
const HOOK_TIMEOUT: Duration = Duration::from_millis(500);
const STOP_TIMEOUT: Duration = Duration::from_millis(1000);

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
    /// The host's link to the store is cut (its peers still reach it).
    Cut(usize),
    /// The host is cut off from the store and from its peers.
    Isolate(usize),
    Heal(usize),
    /// The agent process is frozen (SIGSTOP): its watchdog still runs.
    Pause(usize),
    Resume(usize),
    /// The store loses its quorum: no write, no renewal, no expiry.
    StoreDown,
    StoreUp,
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
        3 => (1u64..3000).prop_map(Op::Advance),
        10 => (0..16usize).prop_map(Op::Exec),
        6 => Just(Op::Decide),
        6 => (0..n).prop_map(Op::Deliver),
        1 => (0..n).prop_map(Op::Cut),
        1 => (0..n).prop_map(Op::Isolate),
        2 => (0..n).prop_map(Op::Heal),
        1 => (0..n).prop_map(Op::Pause),
        2 => (0..n).prop_map(Op::Resume),
        1 => Just(Op::StoreDown),
        2 => Just(Op::StoreUp),
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

/// What an agent has started and not finished, with when it must be done.
#[derive(Debug, Clone)]
enum Effect {
    Spawn {
        incarnation: u64,
        role: Role,
        epoch: u64,
    },
    Hook {
        role: Role,
        epoch: u64,
        incarnation: u64,
        deadline: Duration,
    },
    /// SIGTERM was sent; the process exits when it handles it, or its
    /// machine is told at the deadline that it did not stop in time (and
    /// must kill it).
    Terminate {
        deadline: Duration,
        incarnation: u64,
    },
    Ask {
        asks: Vec<PeerAsk>,
        deadline: Duration,
    },
}

impl Effect {
    fn deadline(&self) -> Option<Duration> {
        match self {
            Effect::Spawn { .. } => None,
            Effect::Hook { deadline, .. }
            | Effect::Terminate { deadline, .. }
            | Effect::Ask { deadline, .. } => Some(*deadline),
        }
    }
}

struct SimHost {
    machine: HostMachine,
    /// The agent is frozen: no input, no action, no renewal.
    paused: bool,
    /// Its link to the store is cut.
    cut: bool,
    /// Its peers cannot reach it, nor it them.
    isolated: bool,
    /// The lease its keeper holds.
    lease: Option<i64>,
    next_renew: Duration,
    /// Assignments on their way from the store.
    inbox: VecDeque<AppRoles>,
    /// Inputs that arrived while the agent was frozen.
    backlog: VecDeque<HostInput>,
    /// The watchdog: process group → deadline.
    armed: BTreeMap<u32, Duration>,
    /// The lease the publisher binds statuses to.
    bound: Option<i64>,
    /// The newest status not yet written (the publisher retries it).
    unpublished: Option<InstanceStatus>,
}

struct Store {
    /// It has a quorum.
    up: bool,
    /// Live leases and when they expire.
    leases: BTreeMap<i64, Duration>,
    next_lease: i64,
    /// Statuses, with the lease each is bound to.
    statuses: BTreeMap<String, (i64, InstanceStatus)>,
}

struct World {
    app: App,
    now: Duration,
    hosts: Vec<SimHost>,
    procs: Vec<Process>,
    /// Effects in flight: (host, effect).
    effects: Vec<(usize, Effect)>,
    store: Store,
    roles: AppRoles,
    intent: Option<Intent>,
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
        // One check: the simulation feeds its results.
        checks: vec![Check {
            kind: CheckKind::Tcp {
                port: "http".into(),
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            failures_before_unhealthy: 2,
            successes_before_healthy: 1,
        }],
        fencing: Default::default(),
        hook: (style(ha) == Style::Hooked).then(|| Hook::Command {
            command: vec!["hook".into()],
            timeout: HOOK_TIMEOUT,
        }),
        restart: RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            stable_after: Duration::from_secs(5),
            crashloop_after: 3,
        },
        stop_timeout: STOP_TIMEOUT,
        drain: std::time::Duration::ZERO,
        link_failover: Default::default(),
        admin_dir: None,
        pinned: false,
        replicas: n as u32,
        min_healthy: n as u32,
        instances: (0..n)
            .map(|i| Instance {
                id: format!("i{i}"),
                // One host per instance, so a fault isolates one.
                host: format!("h{i}"),
                priority: priorities[i],
                ports: BTreeMap::new(),
            })
            .collect(),
    }
}

fn address(h: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, h as u8 + 1))
}

fn topology(app: &App) -> Arc<Topology> {
    Arc::new(Topology {
        name: "sim".into(),
        cluster: Cluster {
            lease_ttl: TTL,
            renew_interval: RENEW,
            fence_margin: MARGIN,
            agent_port: 7400,
            failsafe: true,
            ..Cluster::default()
        },
        sites: vec![Site {
            name: "dc1".into(),
            role: Default::default(),
            fence: None,
        }],
        hosts: (0..app.instances.len())
            .map(|h| Host {
                name: format!("h{h}"),
                site: "dc1".into(),
                address: address(h),
                fence: None,
            })
            .collect(),
        apps: vec![app.clone()],
        links: Vec::new(),
        endpoints: Vec::new(),
        webhooks: Vec::new(),
    })
}

impl World {
    fn new(app: App) -> World {
        let n = app.instances.len();
        let topology = topology(&app);
        let hosts = (0..n)
            .map(|h| SimHost {
                machine: HostMachine::new(
                    topology.clone(),
                    HostConfig {
                        host: format!("h{h}"),
                        watchdog: true,
                    },
                ),
                paused: false,
                cut: false,
                isolated: false,
                lease: None,
                next_renew: Duration::ZERO,
                inbox: VecDeque::new(),
                backlog: VecDeque::new(),
                armed: BTreeMap::new(),
                bound: None,
                unpublished: None,
            })
            .collect();
        let mut w = World {
            now: Duration::ZERO,
            hosts,
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
            store: Store {
                up: true,
                leases: BTreeMap::new(),
                next_lease: 100,
                statuses: BTreeMap::new(),
            },
            roles: AppRoles::default(),
            intent: None,
            last_epoch: 0,
            intents: 0,
            granted: BTreeSet::new(),
            app,
        };
        // Every agent holds a lease, then starts its instances.
        for h in 0..n {
            w.renew(h);
            w.input(h, HostInput::Begin);
        }
        w
    }

    fn id(&self, i: usize) -> String {
        self.app.instances[i].id.clone()
    }

    fn status(&self, i: usize) -> InstanceStatus {
        self.hosts[i].machine.status(0)
    }

    /// Feeds an input to host `h`'s machine, or keeps it for later if the
    /// agent is frozen.
    fn input(&mut self, h: usize, input: HostInput) {
        if self.hosts[h].paused {
            self.hosts[h].backlog.push_back(input);
            return;
        }
        let step = self.hosts[h].machine.handle(input, self.now);
        self.carry_out(h, step);
    }

    /// Carries out a step's actions as the agent runtime does: signals,
    /// publications and watchdog commands at once, everything else later.
    fn carry_out(&mut self, h: usize, step: HostStep) {
        for action in step.actions {
            match action {
                HostAction::Instance(_, Action::Publish) => self.publish(h),
                HostAction::Instance(_, Action::Kill { .. }) => self.kill(h),
                // The simulated topology has no exclusive link group.
                HostAction::Instance(_, Action::LinkHook { .. }) => {
                    unreachable!("no exclusive link group here")
                }
                HostAction::Instance(
                    _,
                    Action::Spawn {
                        incarnation,
                        role,
                        epoch,
                    },
                ) => self.effects.push((
                    h,
                    Effect::Spawn {
                        incarnation,
                        role,
                        epoch,
                    },
                )),
                HostAction::Instance(
                    _,
                    Action::RunHook {
                        role,
                        epoch,
                        incarnation,
                    },
                ) => self.effects.push((
                    h,
                    Effect::Hook {
                        role,
                        epoch,
                        incarnation,
                        deadline: self.now + HOOK_TIMEOUT,
                    },
                )),
                HostAction::Instance(_, Action::Terminate) => {
                    if self.procs[h].alive {
                        self.effects.push((
                            h,
                            Effect::Terminate {
                                deadline: self.now + STOP_TIMEOUT,
                                incarnation: self.procs[h].incarnation,
                            },
                        ));
                    }
                }
                HostAction::AskPeers { asks, timeout } => self.effects.push((
                    h,
                    Effect::Ask {
                        asks,
                        deadline: self.now + timeout,
                    },
                )),
                HostAction::Arm { pgid, deadline } => {
                    self.hosts[h].armed.insert(pgid, deadline);
                }
                HostAction::Disarm { pgid } => {
                    self.hosts[h].armed.remove(&pgid);
                }
                HostAction::Removed(_) => {
                    let id = self.id(h);
                    self.store.statuses.remove(&id);
                }
                HostAction::BindLease(lease) => {
                    self.hosts[h].bound = lease;
                    self.flush(h);
                }
                HostAction::Added(_)
                | HostAction::PublishHost
                | HostAction::Session(_)
                | HostAction::Answer(_) => {}
            }
        }
    }

    /// The host's agent can write to the store.
    fn reaches_store(&self, h: usize) -> bool {
        self.store.up && !self.hosts[h].cut && !self.hosts[h].isolated
    }

    fn publish(&mut self, h: usize) {
        let status = self.status(h);
        let id = self.id(h);
        if status.acting == Role::Primary {
            assert!(
                self.granted.contains(&(id.clone(), status.acting_epoch)),
                "{id} published primary at epoch {}, never granted to it (grants: {:?}): {status:?}",
                status.acting_epoch,
                self.granted
            );
        }
        self.hosts[h].unpublished = Some(status);
        self.flush(h);
    }

    /// The publisher of host `h` writes the newest status, if the store
    /// can be reached and still has the lease it binds to; otherwise it
    /// keeps it and tries again (a lease the store no longer has: once the
    /// agent binds a new one).
    fn flush(&mut self, h: usize) {
        let host = &self.hosts[h];
        if host.paused || host.unpublished.is_none() || !self.reaches_store(h) {
            return;
        }
        let Some(lease) = host.bound else {
            return;
        };
        if !self.store.leases.contains_key(&lease) {
            self.hosts[h].bound = None;
            return;
        }
        if let Some(status) = self.hosts[h].unpublished.take() {
            let id = self.id(h);
            self.store.statuses.insert(id, (lease, status));
        }
    }

    fn kill(&mut self, h: usize) {
        if self.procs[h].alive {
            self.procs[h].alive = false;
            self.effects
                .retain(|(j, e)| !(*j == h && matches!(e, Effect::Terminate { .. })));
            self.input(
                h,
                HostInput::Instance(
                    0,
                    Input::Exited {
                        how: "killed by signal 9".into(),
                    },
                ),
            );
        }
    }

    /// Carries out effect `k` (of those whose agent is not frozen).
    fn exec(&mut self, k: usize) {
        let runnable: Vec<usize> = (0..self.effects.len())
            .filter(|&e| !self.hosts[self.effects[e].0].paused)
            .collect();
        if runnable.is_empty() {
            return;
        }
        let (h, effect) = self.effects.remove(runnable[k % runnable.len()]);
        self.run(h, effect);
    }

    fn run(&mut self, h: usize, effect: Effect) {
        match effect {
            Effect::Spawn {
                incarnation,
                role,
                epoch,
            } => {
                self.procs[h] = Process {
                    alive: true,
                    frozen: false,
                    hung: false,
                    believes: (role, epoch),
                    incarnation,
                };
                self.input(
                    h,
                    HostInput::Instance(
                        0,
                        Input::Spawned {
                            pid: 1000 + incarnation as u32,
                        },
                    ),
                );
            }
            Effect::Hook {
                role,
                epoch,
                incarnation,
                ..
            } => {
                let p = &mut self.procs[h];
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
                self.input(
                    h,
                    HostInput::Instance(
                        0,
                        Input::HookDone {
                            role,
                            epoch,
                            incarnation,
                            result,
                        },
                    ),
                );
            }
            Effect::Terminate {
                deadline,
                incarnation,
            } if self.now >= deadline => {
                self.input(
                    h,
                    HostInput::Instance(0, Input::StopTimedOut { incarnation }),
                );
                assert!(
                    !self.procs[h].alive,
                    "{}: incarnation {incarnation} did not stop in time and was not killed",
                    self.id(h)
                );
            }
            Effect::Terminate { .. } => self.kill(h),
            Effect::Ask { asks, .. } => {
                let answers = asks
                    .iter()
                    .map(|a| a.peers.iter().map(|p| self.ask(h, *p, a)).collect())
                    .collect();
                self.input(h, HostInput::Answers(answers));
            }
        }
    }

    /// Host `from` asks the agent at `peer`: `None` if it cannot be reached
    /// or does not answer.
    fn ask(&mut self, from: usize, peer: SocketAddr, ask: &PeerAsk) -> Option<FailsafeAnswer> {
        let to = (0..self.hosts.len()).find(|&h| address(h) == peer.ip())?;
        let reachable = !self.hosts[from].isolated && !self.hosts[to].isolated;
        if !reachable || self.hosts[to].paused {
            return None;
        }
        let step = self.hosts[to]
            .machine
            .handle(HostInput::Asked(ask.ask.clone()), self.now);
        let answer = step.actions.iter().find_map(|a| match a {
            HostAction::Answer(a) => Some(a.clone()),
            _ => None,
        });
        self.carry_out(to, step);
        answer
    }

    /// The lease keeper of host `h`: renews (or gets) the lease, and
    /// reports to the agent.
    fn renew(&mut self, h: usize) {
        self.hosts[h].next_renew = self.now + RENEW;
        if !self.reaches_store(h) {
            self.input(h, HostInput::Lease(LeaseInput::Failed));
            return;
        }
        if let Some(lease) = self.hosts[h].lease {
            if self.store.leases.contains_key(&lease) {
                self.store.leases.insert(lease, self.now + TTL);
                self.input(
                    h,
                    HostInput::Lease(LeaseInput::Renewed {
                        lease,
                        sent_at: self.now,
                    }),
                );
                return;
            }
            self.hosts[h].lease = None;
            self.input(h, HostInput::Lease(LeaseInput::Expired { lease }));
        }
        let lease = self.store.next_lease;
        self.store.next_lease += 1;
        self.store.leases.insert(lease, self.now + TTL);
        self.hosts[h].lease = Some(lease);
        self.input(
            h,
            HostInput::Lease(LeaseInput::Granted {
                lease,
                sent_at: self.now,
                ttl: TTL,
            }),
        );
    }

    /// The next moment something is due, no later than `until`.
    fn next_due(&self, until: Duration) -> Duration {
        let mut next = until;
        for (h, host) in self.hosts.iter().enumerate() {
            for d in host.armed.values() {
                next = next.min(*d);
            }
            if host.paused {
                continue;
            }
            next = next.min(host.next_renew);
            if let Some(t) = host.machine.next_wakeup() {
                next = next.min(t);
            }
            for (j, e) in &self.effects {
                if *j == h
                    && let Some(d) = e.deadline()
                {
                    next = next.min(d);
                }
            }
        }
        if self.store.up {
            for exp in self.store.leases.values() {
                next = next.min(*exp);
            }
        }
        next.max(self.now)
    }

    /// Lets `ms` pass, handling everything that falls due in time order.
    fn advance(&mut self, ms: u64) {
        let until = self.now + Duration::from_millis(ms);
        for _ in 0..100_000 {
            self.now = self.next_due(until);
            self.due();
            if self.now >= until {
                return;
            }
        }
        panic!("time does not pass: something stays due at {:?}", self.now);
    }

    /// Handles what is due now: effects past their deadline, the
    /// watchdogs, agent wake-ups, renewals, lease expiries (in that order:
    /// what a host does at an instant happens before the store's expiry).
    fn due(&mut self) {
        while let Some(k) = self.effects.iter().position(|(h, e)| {
            !self.hosts[*h].paused && e.deadline().is_some_and(|d| d <= self.now)
        }) {
            let (h, effect) = self.effects.remove(k);
            self.run(h, effect);
        }
        for h in 0..self.hosts.len() {
            let fired: Vec<u32> = self.hosts[h]
                .armed
                .iter()
                .filter(|(_, d)| **d <= self.now)
                .map(|(p, _)| *p)
                .collect();
            for pgid in fired {
                self.hosts[h].armed.remove(&pgid);
                if self.procs[h].alive && 1000 + self.procs[h].incarnation as u32 == pgid {
                    self.kill(h);
                }
            }
        }
        for h in 0..self.hosts.len() {
            if self.hosts[h].paused {
                continue;
            }
            if self.hosts[h]
                .machine
                .next_wakeup()
                .is_some_and(|t| t <= self.now)
            {
                self.input(h, HostInput::Tick);
            }
            if self.hosts[h].next_renew <= self.now {
                self.renew(h);
            }
            self.flush(h);
        }
        if self.store.up {
            let expired: Vec<i64> = self
                .store
                .leases
                .iter()
                .filter(|(_, t)| **t <= self.now)
                .map(|(l, _)| *l)
                .collect();
            for lease in expired {
                self.store.leases.remove(&lease);
                self.store.statuses.retain(|_, (l, _)| *l != lease);
            }
        }
    }

    fn decide(&mut self) {
        if !self.store.up {
            return;
        }
        let status: BTreeMap<String, InstanceStatus> = self
            .store
            .statuses
            .iter()
            .map(|(id, (_, s))| (id.clone(), s.clone()))
            .collect();
        let d = decide(&AppInput {
            app: &self.app,
            roles: &self.roles,
            status: &status,
            intent: self.intent.as_ref(),
            hosts: HostsState::NONE,
            links: tandem_core::controller::AppLinks::NONE,
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
        for h in 0..self.hosts.len() {
            self.hosts[h].inbox.push_back(self.roles.clone());
        }
    }

    /// The next assignment reaches host `h`'s agent, if its watch can.
    fn deliver(&mut self, h: usize) {
        if self.hosts[h].paused || !self.reaches_store(h) {
            return;
        }
        if let Some(roles) = self.hosts[h].inbox.pop_front() {
            self.input(
                h,
                HostInput::Assigned {
                    app: "web".into(),
                    roles: Box::new(roles),
                },
            );
        }
    }

    fn probe(&mut self, i: usize, healthy: bool) {
        if self.hosts[i].paused {
            return;
        }
        let p = &self.procs[i];
        let result = if p.alive && !p.frozen && !p.hung && healthy {
            Ok(())
        } else {
            Err("timeout".to_string())
        };
        let incarnation = self.hosts[i].machine.locals()[0].machine().incarnation();
        self.input(
            i,
            HostInput::Instance(
                0,
                Input::Probe {
                    check: 0,
                    incarnation,
                    result,
                },
            ),
        );
    }

    fn pause(&mut self, h: usize) {
        self.hosts[h].paused = true;
    }

    fn resume(&mut self, h: usize) {
        if !self.hosts[h].paused {
            return;
        }
        self.hosts[h].paused = false;
        // Everything it missed, in order; then its timers and keeper.
        while let Some(input) = self.hosts[h].backlog.pop_front() {
            let step = self.hosts[h].machine.handle(input, self.now);
            self.carry_out(h, step);
        }
        self.due();
    }

    fn heal(&mut self, h: usize) {
        self.hosts[h].cut = false;
        self.hosts[h].isolated = false;
        // The watch resumes with the current assignment.
        self.hosts[h].inbox.clear();
        self.hosts[h].inbox.push_back(self.roles.clone());
    }

    fn store_up(&mut self) {
        if self.store.up {
            return;
        }
        self.store.up = true;
        // A new leader refreshes every lease it knows.
        for exp in self.store.leases.values_mut() {
            *exp = self.now + TTL;
        }
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
            by: None,
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
            Op::Crash(i) => self.kill(i),
            Op::Freeze(i) => self.procs[i].frozen = self.procs[i].alive,
            Op::Thaw(i) => self.procs[i].frozen = false,
            Op::Hang(i) => self.procs[i].hung = self.procs[i].alive,
            Op::Unhang(i) => self.procs[i].hung = false,
            Op::Probe(i) => self.probe(i, true),
            Op::Advance(ms) => self.advance(ms),
            Op::Exec(k) => self.exec(k),
            Op::Decide => self.decide(),
            Op::Deliver(h) => self.deliver(h),
            Op::Cut(h) => self.hosts[h].cut = true,
            Op::Isolate(h) => self.hosts[h].isolated = true,
            Op::Heal(h) => self.heal(h),
            Op::Pause(h) => self.pause(h),
            Op::Resume(h) => self.resume(h),
            Op::StoreDown => self.store.up = false,
            Op::StoreUp => self.store_up(),
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
                    epoch < top_epoch && self.status(i).acting == Role::Fenced,
                    "two acting primaries at {:?}: {:?}; procs {:?}; roles {:?}",
                    self.now,
                    acting,
                    self.procs,
                    self.roles
                );
            }
        }
    }

    /// Ends every fault and lets the system run; it must converge.
    fn settle(&mut self) {
        self.store_up();
        for i in 0..self.procs.len() {
            self.procs[i].frozen = false;
            self.procs[i].hung = false;
            self.heal(i);
            self.resume(i);
        }
        for _ in 0..60 {
            while !self.effects.is_empty() {
                self.exec(0);
                self.check_safety();
            }
            for h in 0..self.hosts.len() {
                while !self.hosts[h].inbox.is_empty() {
                    self.deliver(h);
                }
            }
            for i in 0..self.procs.len() {
                self.probe(i, true);
            }
            self.advance(1000);
            self.check_safety();
            self.decide();
            self.check_safety();
        }
    }
}

fn remap(o: &Op, n: usize) -> Op {
    match *o {
        Op::Crash(i) => Op::Crash(i % n),
        Op::Freeze(i) => Op::Freeze(i % n),
        Op::Thaw(i) => Op::Thaw(i % n),
        Op::Hang(i) => Op::Hang(i % n),
        Op::Unhang(i) => Op::Unhang(i % n),
        Op::Probe(i) => Op::Probe(i % n),
        Op::Deliver(i) => Op::Deliver(i % n),
        Op::Cut(i) => Op::Cut(i % n),
        Op::Isolate(i) => Op::Isolate(i % n),
        Op::Heal(i) => Op::Heal(i % n),
        Op::Pause(i) => Op::Pause(i % n),
        Op::Resume(i) => Op::Resume(i % n),
        Op::Switchover(to) => Op::Switchover(to.map(|i| i % n)),
        ref other => other.clone(),
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
            w.apply(&remap(o, n));
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

/// Starts every process and runs every effect, probing each as healthy.
fn start_all(w: &mut World) {
    while !w.effects.is_empty() {
        w.exec(0);
    }
    for i in 0..w.procs.len() {
        w.probe(i, true);
    }
}

/// A warm-standby world of `n` instances whose every process runs, healthy,
/// with i0 (the highest priority) primary at epoch 1.
fn primary_on_i0(n: usize) -> World {
    let priorities: Vec<i64> = (0..n as i64).rev().collect();
    let mut w = World::new(app(n, &priorities));
    start_all(&mut w);
    w.decide();
    for h in 0..n {
        w.deliver(h);
    }
    start_all(&mut w);
    assert_eq!(w.procs[0].believes, (Role::Primary, 1));
    w
}

/// The interleaving that the `promoting` rule of `InstanceMachine::status`
/// exists for: a promotion hook is still in flight when the grant is
/// withdrawn. The controller must not promote anyone else until that hook
/// has finished and the instance has stepped down again.
#[test]
fn withdrawn_grant_with_promotion_in_flight_blocks_the_next_promotion() {
    let mut w = World::new(app(2, &[1, 0]));
    // Start both processes, make them healthy, deliver the first grant.
    start_all(&mut w);
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
            Effect::Hook {
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
        matches!(w.effects[..], [(0, Effect::Spawn { .. })]),
        "{:?}",
        w.effects
    );
    assert_eq!(
        w.store.statuses["i0"].1.process,
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
            while !w.hosts[h].inbox.is_empty() {
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

/// A primary whose host is cut off from the store steps down before its
/// lease can expire on the store; the backup is promoted only after that
/// expiry, with a higher epoch, and the old primary rejoins as a backup.
#[test]
fn a_primary_cut_off_from_the_store_steps_down_before_its_lease_expires() {
    let mut w = primary_on_i0(2);
    w.apply(&Op::Cut(0));
    // Its peer reaches the store: failsafe does not confirm; it steps down
    // by lease end − margin, before the store expires its lease.
    let mut stepped_down_at = None;
    for _ in 0..40 {
        w.advance(100);
        w.check_safety();
        if stepped_down_at.is_none() && w.procs[0].believes.0 != Role::Primary {
            stepped_down_at = Some(w.now);
        }
        w.decide();
        w.deliver(1);
        start_all(&mut w);
    }
    let down = stepped_down_at.expect("the cut-off primary never stepped down");
    assert!(
        down <= Duration::from_millis(3000),
        "stepped down at {down:?}"
    );
    assert_eq!(
        w.roles
            .primary
            .as_ref()
            .map(|g| (g.instance.as_str(), g.epoch)),
        Some(("i1", 2))
    );
    assert_eq!(w.procs[1].believes, (Role::Primary, 2));
    w.heal(0);
    w.settle();
    assert_eq!(w.procs[0].believes.0, Role::Backup);
}

/// A frozen agent cannot renew, fence or demote; its watchdog kills its
/// primary before the lease can expire, so the backup's promotion never
/// overlaps it.
#[test]
fn a_frozen_agents_primary_is_killed_by_its_watchdog_before_the_lease_ends() {
    let mut w = primary_on_i0(2);
    w.apply(&Op::Pause(0));
    for _ in 0..40 {
        w.advance(100);
        w.check_safety();
        w.decide();
        w.deliver(1);
        start_all(&mut w);
    }
    assert!(!w.procs[0].alive, "the watchdog did not kill the primary");
    assert_eq!(w.procs[1].believes, (Role::Primary, 2));
    w.settle();
}

/// The store loses its quorum: no host can renew, every peer confirms,
/// and the primary keeps its role; nothing is promoted.
#[test]
fn without_quorum_failsafe_keeps_the_primary_and_promotes_no_one() {
    let mut w = primary_on_i0(3);
    w.apply(&Op::StoreDown);
    for _ in 0..100 {
        w.advance(100);
        while !w.effects.is_empty() {
            w.exec(0);
        }
        w.check_safety();
    }
    assert_eq!(
        w.procs[0].believes,
        (Role::Primary, 1),
        "demoted without quorum"
    );
    assert!(w.procs[0].alive);
    w.settle();
    assert_eq!(
        w.roles
            .primary
            .as_ref()
            .map(|g| (g.instance.as_str(), g.epoch)),
        Some(("i0", 1))
    );
}

/// Both hosts lose the store; the primary's peer promises to hold back
/// promotions, and the primary keeps its role past its lease's expiry on
/// the store. When the peer gets the store back first, it is granted the
/// role at once, but holds the promotion until its promise has ended and
/// the old primary has stepped down.
#[test]
fn a_promise_holds_back_the_peers_promotion_until_the_old_primary_has_stepped_down() {
    let mut w = primary_on_i0(2);
    w.apply(&Op::Cut(0));
    w.apply(&Op::Cut(1));
    // Well past the lease's expiry on the store: failsafe keeps i0.
    for _ in 0..50 {
        w.advance(100);
        while !w.effects.is_empty() {
            w.exec(0);
        }
        w.check_safety();
    }
    assert!(
        !w.store.statuses.contains_key("i0"),
        "i0's lease should be gone"
    );
    assert_eq!(
        w.procs[0].believes,
        (Role::Primary, 1),
        "failsafe should keep i0"
    );
    // i1's host gets the store back: a new session, and the grant.
    w.heal(1);
    w.advance(RENEW.as_millis() as u64);
    w.decide();
    assert_eq!(
        w.roles.primary.as_ref().map(|g| g.instance.as_str()),
        Some("i1")
    );
    w.deliver(1);
    let mut promoted = false;
    for _ in 0..60 {
        while !w.effects.is_empty() {
            w.exec(0);
            w.check_safety();
        }
        promoted |= w.procs[1].believes == (Role::Primary, 2);
        w.advance(100);
        w.check_safety();
        w.decide();
        w.deliver(1);
        w.probe(1, true);
    }
    assert!(
        promoted,
        "i1 never took over: {:?} {:?} {:?}",
        w.procs, w.roles, w.store.statuses
    );
    assert_ne!(w.procs[0].believes.0, Role::Primary);
}
