//! The agent's per-instance state machine: observations in, actions out.
//!
//! The agent runtime owns one [`InstanceMachine`] per local instance. It
//! feeds it what happened ([`Input`]: the process started or exited, a probe
//! answered, a hook finished, the controller assigned a role, the host lease
//! is about to be lost, time passed) and executes the returned [`Action`]s
//! (spawn, run the role hook, kill), publishing [`InstanceMachine::status`]
//! whenever a step says so. Time is an argument: `now` is a monotonic
//! duration since an origin the runtime chooses.
//!
//! # Rules
//!
//! - Warm and hot standby: a process always starts in its app's
//!   non-primary role; it becomes primary only through the hook, and only
//!   for the incarnation and session the grant names.
//! - Cold standby and singleton: a process is started only for a grant that
//!   names the incarnation about to start and the agent's session, with its
//!   primary role in its environment; it is stopped when the grant is
//!   withdrawn, and killed at once when the host lease may be lost. It is
//!   never restarted without a new grant.
//! - N+1: a process runs while its instance is assigned `active`.
//! - The role a process has *acknowledged* ([`InstanceStatus::acting`]) is
//!   what the controller relies on: it changes when the hook succeeds.
//! - A primary that cannot confirm stepping down is killed, unless its
//!   process is frozen (stopped by a signal): then it is `fenced` and told
//!   again as soon as it answers.
//! - A failed promotion may have half-happened: the process is killed.
//! - Exits are restarted with exponential backoff; quick exits in a row
//!   mark the instance crash-looping (the controller never promotes it).
//! - An exit that tandem asked for (a kill, or a stop for the role or for
//!   the agent's shutdown) says so in `last_exit` (see [`EndReason`]); a
//!   stop that times out becomes a kill, decided here.
//!
//! # Layout
//!
//! [`InstanceMachine::handle`] hands each input to one method, in files by
//! concern: `process` (start, exits and backoff, stop, time passing, why
//! tandem ended a process),
//! `health` (probes, pool load), `roles` (the assignment, the role the
//! process should have, delivering it through the hook) and `fencing`
//! (stepping down when the host lease may be lost, resuming after), `drain`
//! (timing a primary's drain before a planned switchover). What
//! each mode means lives in [`crate::mode`].

use std::time::Duration;

use crate::health::{CheckTracker, combine};
use crate::mode::{Style, default_role, style};
use crate::model::{Health, InstanceStatus, ProcessState, Role};
use crate::topology::{HaMode, RestartPolicy};

mod drain;
mod exclusive;
mod fencing;
mod health;
mod links;
mod notes;
mod process;
mod roles;

pub use exclusive::{ENABLE_RETRY, GroupSpec, MISSING_REPORTS};
pub use links::LinkSpec;
pub use notes::{EndReason, KillReason, Note};

/// Longest wait between two attempts to deliver a role that failed.
pub const MAX_HOOK_RETRY: Duration = Duration::from_secs(5);
/// First wait before re-delivering a role that failed.
pub const FIRST_HOOK_RETRY: Duration = Duration::from_millis(250);

/// Why a hook failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFailure {
    /// What went wrong (timeout, exit code, HTTP status).
    pub error: String,
    /// The process was stopped (frozen by a signal) when the hook failed.
    pub process_stopped: bool,
}

/// What happened to the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Time passed (the runtime calls this at [`InstanceMachine::next_wakeup`]).
    Tick,
    /// The controller's assignment for this instance.
    Assigned {
        /// The desired role.
        role: Role,
        /// The app's epoch (for a primary: the grant's epoch).
        epoch: u64,
        /// For a primary: the (incarnation, session) the grant is for.
        grant: Option<(u64, i64)>,
        /// The generation of the assignment.
        generation: u64,
    },
    /// The process of the last [`Action::Spawn`] started.
    Spawned {
        /// Its pid.
        pid: u32,
    },
    /// The last [`Action::Spawn`] failed.
    SpawnFailed {
        /// Why.
        error: String,
    },
    /// The process exited.
    Exited {
        /// How ("exited with code 1", "killed by signal 9").
        how: String,
    },
    /// A health check answered.
    Probe {
        /// Index of the check in the app's list.
        check: usize,
        /// The process incarnation that was probed.
        incarnation: u64,
        /// Its result.
        result: Result<(), String>,
    },
    /// A probe of a link's target answered ([`links`]).
    LinkProbe {
        /// The link's name.
        link: String,
        /// The target probed (instance id or endpoint name).
        target: String,
        /// The process incarnation it was probed for.
        incarnation: u64,
        /// Its result.
        result: Result<(), String>,
        /// For a TLS link: the certificate the handshake saw.
        cert: Option<crate::model::CertSeen>,
    },
    /// A link hook of [`Action::LinkHook`] finished ([`exclusive`]).
    LinkHookDone {
        /// The link.
        link: String,
        /// What the hook was asked.
        action: crate::topology::LinkAction,
        /// The incarnation it was run for.
        incarnation: u64,
        /// Its result: success confirms the action.
        result: Result<(), String>,
    },
    /// The process reported the links it has active right now
    /// (`$TANDEM_LINKS_DIR/.active`, read by the runtime).
    ActiveLinks {
        /// The incarnation that reported.
        incarnation: u64,
        /// The links it says are active.
        links: Vec<String>,
    },
    /// A pool worker's health answer said whether it is busy.
    Load {
        /// The process incarnation that answered.
        incarnation: u64,
        /// Busy (on a job) or free.
        busy: bool,
    },
    /// A hook of [`Action::RunHook`] finished.
    HookDone {
        /// The role it delivered.
        role: Role,
        /// The epoch it delivered.
        epoch: u64,
        /// The incarnation it was run for.
        incarnation: u64,
        /// Its result.
        result: Result<(), HookFailure>,
    },
    /// What the assignment just fed ([`Input::Assigned`]) asks of this
    /// instance's drain in a planned switchover: `Some((generation,
    /// period))` while it is the primary asked to drain (by the assignment
    /// of that generation, for that long), `None` otherwise. See
    /// [`drain_request`].
    Drain(Option<(u64, Duration)>),
    /// The host lease may be lost: step down now (self-fencing).
    Fence,
    /// The host lease is held again, in this session (lease id).
    Unfence {
        /// The new session.
        session: i64,
    },
    /// The agent is shutting down: stop the process for good.
    Stop,
    /// The process of `incarnation`, told to stop ([`Action::Terminate`]),
    /// has not exited within its app's stop timeout: it is killed if it is
    /// still the one being stopped.
    StopTimedOut {
        /// The incarnation that was told to stop.
        incarnation: u64,
    },
}

/// What the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the process with this role in its environment.
    Spawn {
        /// Its incarnation number.
        incarnation: u64,
        /// `TANDEM_ROLE`.
        role: Role,
        /// `TANDEM_EPOCH`.
        epoch: u64,
    },
    /// Deliver a role through the app's hook, then report [`Input::HookDone`].
    RunHook {
        /// The role.
        role: Role,
        /// The epoch.
        epoch: u64,
        /// The incarnation it is for.
        incarnation: u64,
    },
    /// Enable or disable a link of an exclusive group through its hook,
    /// then report [`Input::LinkHookDone`].
    LinkHook {
        /// The link.
        link: String,
        /// What to do.
        action: crate::topology::LinkAction,
        /// The incarnation it is for.
        incarnation: u64,
    },
    /// Kill the process group at once (SIGKILL).
    Kill {
        /// Why, for the log.
        reason: KillReason,
    },
    /// Stop the process gracefully (SIGTERM); if it has not exited within
    /// the app's stop timeout, feed [`Input::StopTimedOut`].
    Terminate,
    /// The status changed: publish [`InstanceMachine::status`].
    Publish,
}

/// The result of one input: actions to run and sentences to log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// Actions, in order.
    pub actions: Vec<Action>,
    /// What was decided and why, for the log.
    pub notes: Vec<Note>,
}

impl Step {
    fn act(&mut self, a: Action) {
        if a == Action::Publish && self.actions.contains(&Action::Publish) {
            return;
        }
        self.actions.push(a);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proc {
    /// Not started yet.
    Pending,
    /// Not running, by design (a spare, an inactive N+1 member).
    Idle,
    Spawning,
    Running,
    Backoff {
        until: Duration,
    },
    /// Being stopped because its role says so; it may run again.
    Terminating,
    /// Being stopped for good (the agent is shutting down).
    Stopping,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookState {
    Idle,
    InFlight { role: Role, epoch: u64 },
    RetryAt(Duration),
}

/// The state of one local instance, driven by [`Input`]s.
#[derive(Debug, Clone)]
pub struct InstanceMachine {
    name: String,
    host: String,
    ha: HaMode,
    style: Style,
    has_hook: bool,
    policy: RestartPolicy,
    trackers: Vec<CheckTracker>,
    proc: Proc,
    pid: Option<u32>,
    incarnation: u64,
    started_at: Duration,
    desired_role: Role,
    desired_epoch: u64,
    desired_grant: Option<(u64, i64)>,
    seen_generation: u64,
    session: i64,
    acting: Role,
    acting_epoch: u64,
    hook: HookState,
    hook_failures: u32,
    quick_exits: u32,
    backoff: Duration,
    crash_looping: bool,
    restarts: u32,
    last_exit: Option<String>,
    /// Why tandem asked the current process to end, if it did.
    ending: Option<EndReason>,
    fenced: bool,
    /// Asked to stop for good while its start was under way: stopped as
    /// soon as it runs.
    stop_when_started: bool,
    /// The drain under way: (the generation that asked it, its period,
    /// when it ends).
    draining: Option<(u64, Duration, Duration)>,
    /// The generation of the newest drain finished
    /// ([`InstanceStatus::drained`]).
    drained: u64,
    /// What the host sees of each link of the app ([`links`]).
    links: Vec<links::LinkTrackers>,
    /// The app's exclusive link groups ([`exclusive`]).
    groups: Vec<exclusive::Group>,
}

/// Settings of one instance, taken from the topology.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    /// `app/instance`, for messages.
    pub name: String,
    /// The host it runs on.
    pub host: String,
    /// The app's HA mode.
    pub ha: HaMode,
    /// Whether the app has a role hook.
    pub has_hook: bool,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// (failures before unhealthy, successes before healthy) of each check.
    pub checks: Vec<(u32, u32)>,
    /// The agent's session (host lease id) at creation.
    pub session: i64,
}

impl InstanceMachine {
    /// A machine for an instance not started yet.
    pub fn new(spec: InstanceSpec) -> InstanceMachine {
        let role = default_role(spec.ha);
        InstanceMachine {
            backoff: spec.restart.initial_backoff,
            trackers: spec
                .checks
                .iter()
                .map(|&(f, s)| CheckTracker::new(f, s))
                .collect(),
            name: spec.name,
            host: spec.host,
            ha: spec.ha,
            style: style(spec.ha),
            has_hook: spec.has_hook,
            policy: spec.restart,
            proc: Proc::Pending,
            pid: None,
            incarnation: 0,
            started_at: Duration::ZERO,
            desired_role: role,
            desired_epoch: 0,
            desired_grant: None,
            seen_generation: 0,
            session: spec.session,
            acting: Role::Stopped,
            acting_epoch: 0,
            hook: HookState::Idle,
            hook_failures: 0,
            quick_exits: 0,
            crash_looping: false,
            restarts: 0,
            last_exit: None,
            ending: None,
            fenced: false,
            stop_when_started: false,
            draining: None,
            drained: 0,
            links: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// What the agent publishes about this instance.
    pub fn status(&self) -> InstanceStatus {
        let process = match self.proc {
            Proc::Pending => ProcessState::Pending,
            Proc::Spawning => ProcessState::Starting,
            Proc::Running | Proc::Stopping | Proc::Terminating => ProcessState::Running,
            Proc::Backoff { .. } => ProcessState::Backoff,
            Proc::Idle | Proc::Stopped => ProcessState::Stopped,
        };
        let running = process == ProcessState::Running;
        // A promotion in flight may already have taken effect: it counts as
        // acting, at the epoch being delivered.
        let promoting = match self.hook {
            HookState::InFlight {
                role: Role::Primary,
                epoch,
            } if running => Some(epoch),
            _ => None,
        };
        InstanceStatus {
            host: self.host.clone(),
            process,
            pid: if running { self.pid } else { None },
            session: self.session,
            incarnation: self.incarnation,
            seen_generation: self.seen_generation,
            health: if running {
                combine(&self.trackers)
            } else {
                Health::Unknown
            },
            health_detail: self
                .trackers
                .iter()
                .find_map(|t| t.last_failure().map(str::to_string)),
            acting: if promoting.is_some() {
                Role::Primary
            } else if running {
                self.acting
            } else if self.crash_looping {
                Role::Failed
            } else if self.proc == Proc::Idle {
                default_role(self.ha)
            } else {
                Role::Stopped
            },
            acting_epoch: promoting.unwrap_or(self.acting_epoch),
            promoting: promoting.is_some(),
            drained: self.drained,
            links: self.link_status(),
            active_links: self.active_links(),
            admin: Default::default(),
            crash_looping: self.crash_looping,
            restarts: self.restarts,
            last_exit: self.last_exit.clone(),
        }
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The current incarnation (number of starts).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Why tandem asked the current process to end ([`Action::Kill`] or
    /// [`Action::Terminate`]), if it did: an exit of this process fed next
    /// ([`Input::Exited`]) is tandem's doing. `None` while nobody in tandem
    /// asked, and once the exit is fed.
    pub fn ending(&self) -> Option<&EndReason> {
        self.ending.as_ref()
    }

    /// True once the process is stopped for good after [`Input::Stop`].
    pub fn is_stopped(&self) -> bool {
        self.proc == Proc::Stopped
    }

    /// When the runtime must call [`Input::Tick`] next, if ever.
    pub fn next_wakeup(&self) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        let mut consider = |t: Duration| next = Some(next.map_or(t, |n| n.min(t)));
        if let Proc::Backoff { until } = self.proc {
            consider(until);
        }
        if self.proc == Proc::Running && (self.quick_exits > 0 || self.crash_looping) {
            consider(self.started_at + self.policy.stable_after);
        }
        if let HookState::RetryAt(t) = self.hook {
            consider(t);
        }
        if let Some((_, _, until)) = self.draining {
            consider(until);
        }
        if let Some(t) = self.groups_wakeup() {
            consider(t);
        }
        next
    }

    /// Feeds one input; returns what to do.
    pub fn handle(&mut self, input: Input, now: Duration) -> Step {
        let mut step = Step::default();
        let s = &mut step;
        match input {
            Input::Tick => {
                self.tick(now, s);
                self.drain_tick(now, s);
                self.decide_groups(now, s);
            }
            Input::Assigned {
                role,
                epoch,
                grant,
                generation,
            } => self.assigned(role, epoch, grant, generation, now, s),
            Input::Spawned { pid } => self.spawned(pid, now, s),
            Input::SpawnFailed { error } => self.spawn_failed(error, now, s),
            Input::Exited { how } => self.exited(how, now, s),
            Input::Probe {
                check,
                incarnation,
                result,
            } => self.probe(check, incarnation, result, now, s),
            Input::LinkProbe {
                link,
                target,
                incarnation,
                result,
                cert,
            } => {
                self.link_probe(&link, &target, incarnation, result, cert, s);
                self.decide_groups(now, s);
            }
            Input::LinkHookDone {
                link,
                action,
                incarnation,
                result,
            } => self.link_hook_done(&link, action, incarnation, result, now, s),
            Input::ActiveLinks { incarnation, links } => {
                self.active_report(incarnation, &links, now, s)
            }
            Input::Load { incarnation, busy } => self.load(incarnation, busy, s),
            Input::HookDone {
                role,
                epoch,
                incarnation,
                result,
            } => self.hook_done(role, epoch, incarnation, result, now, s),
            Input::Drain(request) => self.drain(request, now, s),
            Input::Fence => self.fence(now, s),
            Input::Unfence { session } => self.unfence(session, now, s),
            Input::Stop => self.stop(s),
            Input::StopTimedOut { incarnation } => self.stop_timed_out(incarnation, s),
        }
        step
    }
}

/// The [`Input::Drain`] that an app's role assignment means for one of its
/// instances, fed right after its [`assignment`].
pub fn drain_request(roles: &crate::model::AppRoles, instance: &str) -> Input {
    let asked = roles
        .primary
        .as_ref()
        .filter(|g| g.instance == instance)
        .and(roles.switchover.as_ref())
        .and_then(|sw| sw.drain.as_ref())
        .map(|d| (d.generation, Duration::from_millis(d.ms)));
    Input::Drain(asked)
}

/// The [`Input::Assigned`] that an app's role assignment means for one of
/// its instances.
pub fn assignment(roles: &crate::model::AppRoles, ha: HaMode, instance: &str) -> Input {
    let grant = roles.primary.as_ref().filter(|g| g.instance == instance);
    Input::Assigned {
        role: roles.role_of(instance, default_role(ha)),
        epoch: grant.map_or(roles.epoch, |g| g.epoch),
        grant: grant.map(|g| (g.incarnation, g.session)),
        generation: roles.generation,
    }
}
