//! The agent's per-host state machine: the host lease, self-fencing, the
//! failsafe peer protocol, promotion holds, topology changes and watchdog
//! deadlines, around one [`InstanceMachine`] per local instance.
//!
//! The agent runtime owns one [`HostMachine`]. It feeds it what happened
//! ([`HostInput`]: the lease keeper's reports, an instance's process or
//! probe or hook, a role assignment, a peer's question or answers, a new
//! topology, time) and carries out the returned [`HostAction`]s, logging
//! each [`HostNote`]. Time is an argument: `now` is a monotonic duration
//! since an origin the runtime chooses, the same for every input.
//!
//! # Rules
//!
//! - **Lease.** The store expires the host lease no earlier than its TTL
//!   after it received the last keep-alive, which is after the agent sent
//!   it: the lease is valid until at least `sent + ttl` of the last
//!   successful renewal. Every instance is fenced (told to step down, see
//!   [`Input::Fence`]) at that moment minus `fence_margin`, and the host
//!   stops being a controller candidate then too.
//! - **Failsafe.** While renewals fail, the host asks, every
//!   `renew_interval`, every other agent running an instance of each app
//!   it has a primary of, to confirm it cannot reach the store either and
//!   to promise to hold back that app's promotions for a lease TTL. Only
//!   when every one of them promises is the app's primary here extended,
//!   until the round's send time plus the TTL (minus the margin, as for the
//!   lease). A peer promises only when it cannot reach the store and none of
//!   its instances of the app is or is becoming primary.
//! - **Holds.** A grant to an instance here that is not already acting
//!   primary is held back while a promise made to a peer, or this host's
//!   own failsafe extension of the app, lasts; it is applied when both end.
//! - **Watchdog.** Every process that may act as primary is armed with the
//!   moment its role can end (lease or extension) minus a quarter margin:
//!   a frozen agent cannot keep it acting past that.

mod failsafe;
mod lease;
mod notes;
mod topology;
mod watchdog;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use notes::{HostNote, Level};

use crate::instance::{Action, Input, InstanceMachine};
use crate::model::{AppRoles, InstanceStatus};
use crate::topology::{App, Instance, Topology};

/// A failsafe confirmation request, from the agent of a primary that
/// cannot renew its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeAsk {
    /// The asking host.
    pub from: String,
    /// The app whose primary runs on the asking host.
    pub app: String,
    /// How long the asked agent must refuse any promotion of `app`,
    /// counted from when it receives the request.
    pub hold_ms: u64,
}

/// The answer to a [`FailsafeAsk`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailsafeAnswer {
    /// The answering host.
    pub host: String,
    /// True if the answering agent can reach the store itself: then the
    /// asking primary must step down (the controller can replace it).
    pub store_reachable: bool,
    /// Set when the agent promised: it refuses every promotion of the app
    /// for this long from receipt.
    pub promised_ms: Option<u64>,
    /// Why it did not promise, if it did not.
    pub refused: Option<String>,
}

/// One app's question of a failsafe round, to every peer running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAsk {
    /// The question.
    pub ask: FailsafeAsk,
    /// The agent ports of every other host running an instance of the app.
    pub peers: Vec<SocketAddr>,
}

/// What the lease keeper reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseInput {
    /// A new lease is held: a new session.
    Granted {
        /// The lease.
        lease: i64,
        /// When the grant request was sent.
        sent_at: Duration,
        /// The TTL the store granted.
        ttl: Duration,
    },
    /// A keep-alive sent at `sent_at` succeeded.
    Renewed {
        /// The lease.
        lease: i64,
        /// When the keep-alive was sent.
        sent_at: Duration,
    },
    /// A grant or keep-alive failed or timed out: the store may be
    /// unreachable (the lease, if any, is still held until it expires).
    Failed,
    /// The store says the lease is gone.
    Expired {
        /// The lease.
        lease: i64,
    },
}

/// What happened on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostInput {
    /// The lease keeper's report.
    Lease(LeaseInput),
    /// The role assignments stored when the agent started have been read
    /// (fed as [`HostInput::Assigned`]): start every instance.
    Begin,
    /// Something happened to local instance `.0`.
    Instance(usize, Input),
    /// The controller's assignment of an app.
    Assigned {
        /// The app.
        app: String,
        /// Its assignment (boxed: inputs travel by value).
        roles: Box<AppRoles>,
    },
    /// The answers to the round of [`HostAction::AskPeers`], one list per
    /// ask, aligned with its peers (`None`: no answer in time).
    Answers(Vec<Vec<Option<FailsafeAnswer>>>),
    /// A peer's failsafe question: answered by [`HostAction::Answer`].
    Asked(FailsafeAsk),
    /// A new topology whose cluster settings and record of this host are
    /// unchanged.
    Topology(Arc<Topology>),
    /// Time passed (the runtime calls this at [`HostMachine::next_wakeup`]).
    Tick,
    /// The agent is shutting down: stop every instance for good.
    Stop,
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// Carry out an action of local instance `.0`'s machine
    /// ([`Action::Publish`]: publish its status).
    Instance(usize, Action),
    /// Local instance `.0` is new: set up what the runtime keeps for it.
    Added(usize),
    /// Local instance `.0` left the topology and has stopped: delete its
    /// published status.
    Removed(usize),
    /// Bind published statuses to this lease (`None`: none is held).
    BindLease(Option<i64>),
    /// Publish the host's record under the lease.
    PublishHost,
    /// The controller candidate of this host may campaign with this session
    /// (`None`: it must not, or must stop leading).
    Session(Option<i64>),
    /// Ask every peer of each app and feed back [`HostInput::Answers`].
    AskPeers {
        /// One ask per app.
        asks: Vec<PeerAsk>,
        /// How long to wait for each answer.
        timeout: Duration,
    },
    /// The answer to the last [`HostInput::Asked`].
    Answer(FailsafeAnswer),
    /// Kill process group `pgid` at `deadline` unless armed again or
    /// disarmed (the watchdog).
    Arm {
        /// The process group.
        pgid: u32,
        /// When.
        deadline: Duration,
    },
    /// Forget process group `pgid` (the watchdog).
    Disarm {
        /// The process group.
        pgid: u32,
    },
}

/// The result of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStep {
    /// Actions, in order.
    pub actions: Vec<HostAction>,
    /// What was decided and why, for the log.
    pub notes: Vec<HostNote>,
    /// Local instances whose status or fencing may have changed.
    pub touched: BTreeSet<usize>,
    /// Apps whose role assignment applied here changed.
    pub roles_changed: BTreeSet<String>,
    /// Whether the store is reachable may have changed.
    pub store_changed: bool,
}

/// One local instance.
#[derive(Debug, Clone)]
pub struct Local {
    /// Its app, as the topology has it.
    pub app: Arc<App>,
    /// The instance.
    pub instance: Instance,
    machine: InstanceMachine,
    /// Told to step down because its lease (or failsafe extension) may end.
    fenced: bool,
    /// No longer in the topology as it is: stopping, then gone.
    retired: bool,
    /// What starts in its place once it has stopped (a changed instance).
    replacement: Option<(Arc<App>, Instance)>,
    /// Retired and stopped: only kept so that indices stay valid.
    gone: bool,
}

impl Local {
    /// Its state machine.
    pub fn machine(&self) -> &InstanceMachine {
        &self.machine
    }

    /// Told to step down because the lease (or a failsafe extension) may
    /// end.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// Gone from the topology and stopped.
    pub fn gone(&self) -> bool {
        self.gone
    }

    /// `app/instance`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.app.name, self.instance.id)
    }
}

/// Settings of a host machine.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The host (a host of the topology).
    pub host: String,
    /// Whether a watchdog is armed ([`HostAction::Arm`]).
    pub watchdog: bool,
}

/// A failsafe round whose answers are awaited.
#[derive(Debug, Clone)]
struct Round {
    sent_at: Duration,
    hold: Duration,
    asks: Vec<PeerAsk>,
}

/// The state of one host's agent, driven by [`HostInput`]s.
#[derive(Debug, Clone)]
pub struct HostMachine {
    host: String,
    topology: Arc<Topology>,
    locals: Vec<Local>,
    by_app: BTreeMap<String, Vec<usize>>,
    /// The host lease held, if any.
    session: Option<i64>,
    /// Its TTL, as the store granted it.
    ttl: Duration,
    /// Until when the lease is valid at least.
    valid_until: Option<Duration>,
    /// No longer a controller candidate: the lease may end.
    session_fenced: bool,
    /// The last renewal (or grant) failed: the store may be unreachable.
    renew_failing: bool,
    /// Failsafe extensions of this host's primaries, per app.
    failsafe_until: BTreeMap<String, Duration>,
    /// When to ask the peers again.
    round_at: Option<Duration>,
    /// The round whose answers are awaited.
    round: Option<Round>,
    /// Promises made to other hosts' primaries: no promotion of the app
    /// here before this.
    holds: BTreeMap<String, Duration>,
    /// Assignments held back by a promise, per app.
    deferred: BTreeMap<String, AppRoles>,
    /// The last role assignment applied, per app.
    roles: BTreeMap<String, AppRoles>,
    /// Whether [`HostAction::Arm`] is wanted.
    watchdog: bool,
    /// What the watchdog has been told: local → (process group, deadline).
    armed: BTreeMap<usize, (u32, Duration)>,
    /// Locals retired and not yet gone.
    retiring: usize,
    /// The locals were built (at the first grant).
    built: bool,
    stopping: bool,
}

impl HostMachine {
    /// The machine of `config.host` in `topology`; it has no instance
    /// until its first lease is granted.
    pub fn new(topology: Arc<Topology>, config: HostConfig) -> HostMachine {
        let ttl = topology.cluster.lease_ttl;
        HostMachine {
            host: config.host,
            topology,
            locals: Vec::new(),
            by_app: BTreeMap::new(),
            session: None,
            ttl,
            valid_until: None,
            session_fenced: false,
            renew_failing: false,
            failsafe_until: BTreeMap::new(),
            round_at: None,
            round: None,
            holds: BTreeMap::new(),
            deferred: BTreeMap::new(),
            roles: BTreeMap::new(),
            watchdog: config.watchdog,
            armed: BTreeMap::new(),
            retiring: 0,
            built: false,
            stopping: false,
        }
    }

    /// The host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The topology as it is now.
    pub fn topology(&self) -> &Arc<Topology> {
        &self.topology
    }

    /// Every local instance, by index (gone ones included).
    pub fn locals(&self) -> &[Local] {
        &self.locals
    }

    /// The session (host lease) held, if any.
    pub fn session(&self) -> Option<i64> {
        self.session
    }

    /// The TTL the store granted the lease held, if one is.
    pub fn lease_ttl(&self) -> Option<Duration> {
        self.session.map(|_| self.ttl)
    }

    /// True while the host lease is renewed in time (the store answers).
    pub fn store_reachable(&self) -> bool {
        self.session.is_some() && !self.renew_failing
    }

    /// The last role assignment applied, per app.
    pub fn roles(&self) -> &BTreeMap<String, AppRoles> {
        &self.roles
    }

    /// The status of local instance `i`.
    pub fn status(&self, i: usize) -> InstanceStatus {
        self.locals[i].machine.status()
    }

    /// True once stopping and every instance has stopped for good.
    pub fn stopped(&self) -> bool {
        self.stopping && self.locals.iter().all(|l| l.machine.is_stopped())
    }

    /// True once [`HostInput::Stop`] was fed.
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// When the runtime must feed [`HostInput::Tick`] next, if ever.
    pub fn next_wakeup(&self) -> Option<Duration> {
        let instances = self.locals.iter().filter_map(|l| l.machine.next_wakeup());
        [self.fence_at(), self.round_at, self.next_hold_release()]
            .into_iter()
            .flatten()
            .chain(instances)
            .min()
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: HostInput, now: Duration) -> HostStep {
        let mut step = HostStep::default();
        let deadlines_before = self.deadline_state();
        match input {
            HostInput::Lease(ev) => self.on_lease(ev, now, &mut step),
            HostInput::Begin => {
                for i in 0..self.locals.len() {
                    self.feed(i, Input::Tick, now, &mut step);
                }
            }
            HostInput::Instance(i, input) => {
                if i < self.locals.len() {
                    self.feed(i, input, now, &mut step);
                }
            }
            HostInput::Assigned { app, roles } => self.on_roles(&app, *roles, now, &mut step),
            HostInput::Answers(answers) => self.on_answers(answers, now, &mut step),
            HostInput::Asked(ask) => {
                let answer = self.answer(&ask, now, &mut step);
                step.actions.push(HostAction::Answer(answer));
            }
            HostInput::Topology(t) => self.on_topology(t, now, &mut step),
            HostInput::Tick => self.tick(now, &mut step),
            HostInput::Stop => {
                self.stopping = true;
                for i in 0..self.locals.len() {
                    self.feed(i, Input::Stop, now, &mut step);
                }
            }
        }
        self.replace_stopped(now, &mut step);
        let deadlines_moved = self.deadline_state() != deadlines_before;
        self.arm_watchdog(now, deadlines_moved, &mut step);
        step
    }

    /// Whatever is due at `now`: fencing, a failsafe round, held-back
    /// assignments, instance wake-ups.
    fn tick(&mut self, now: Duration, step: &mut HostStep) {
        if self.fence_at().is_some_and(|t| t <= now) {
            self.fence_due(now, step);
        }
        if self.round_at.is_some_and(|t| t <= now) {
            self.failsafe_round(now, step);
        }
        if self.next_hold_release().is_some_and(|t| t <= now) {
            self.release_holds(now, step);
        }
        for i in 0..self.locals.len() {
            if self.locals[i]
                .machine
                .next_wakeup()
                .is_some_and(|t| t <= now)
            {
                self.feed(i, Input::Tick, now, step);
            }
        }
    }

    /// Feeds an input to local instance `i`'s machine.
    fn feed(&mut self, i: usize, input: Input, now: Duration, step: &mut HostStep) {
        let local = &mut self.locals[i];
        let out = local.machine.handle(input, now);
        step.touched.insert(i);
        if !out.notes.is_empty() {
            let instance = local.name();
            step.notes
                .extend(out.notes.into_iter().map(|note| HostNote::Instance {
                    instance: instance.clone(),
                    note,
                }));
        }
        step.actions
            .extend(out.actions.into_iter().map(|a| HostAction::Instance(i, a)));
    }

    /// Applies an app's assignment to its instances here, unless a promise
    /// or this host's own failsafe extension holds its promotion back.
    fn on_roles(&mut self, app: &str, roles: AppRoles, now: Duration, step: &mut HostStep) {
        let Some(idxs) = self.by_app.get(app).cloned() else {
            return;
        };
        // A grant to an instance here that is not already acting primary.
        let grants_here = roles.primary.as_ref().is_some_and(|g| {
            idxs.iter().any(|i| {
                let l = &self.locals[*i];
                l.instance.id == g.instance && !l.machine.status().may_act_as_primary()
            })
        });
        if grants_here
            && let Some(until) = self.held_until(app)
            && until > now
        {
            step.notes.push(HostNote::PromotionHeld {
                app: app.to_string(),
                generation: roles.generation,
            });
            self.deferred.insert(app.to_string(), roles);
            return;
        }
        self.deferred.remove(app);
        for i in idxs {
            let l = &self.locals[i];
            let input = crate::instance::assignment(&roles, l.app.ha, &l.instance.id);
            let drain = crate::instance::drain_request(&roles, &l.instance.id);
            self.feed(i, input, now, step);
            self.feed(i, drain, now, step);
        }
        self.roles.insert(app.to_string(), roles);
        step.roles_changed.insert(app.to_string());
    }

    /// What moves watchdog deadlines: the lease's end and the extensions.
    fn deadline_state(&self) -> (Option<Duration>, BTreeMap<String, Duration>) {
        (self.valid_until, self.failsafe_until.clone())
    }
}
