//! The shared vocabulary: roles, instance statuses, role assignments,
//! intents and events, exactly as they are stored in the coordination store
//! (JSON) and shown by the API.
//!
//! Who writes what:
//! - an agent writes the [`InstanceStatus`] of each instance it runs, bound
//!   to its host lease (so it vanishes when the host is lost);
//! - the controller writes each app's [`AppRoles`] (durable: it carries the
//!   app's epoch) and the [`Event`] log;
//! - the API writes [`Intent`]s, which the controller resolves.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What an instance is doing now (DESIGN.md, "Role").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Serving, holding the app's current epoch.
    Primary,
    /// Running, not serving; ready to be promoted.
    Backup,
    /// Stopped on purpose (cold spare).
    Standby,
    /// An N+1 member, or the one instance of an app without HA.
    Active,
    /// A pool worker ready for a job.
    Free,
    /// A pool worker on a job.
    Busy,
    /// Not running.
    Stopped,
    /// Not running and crash-looping: not restarted for now, never promoted.
    Failed,
    /// Told to step down but could not confirm it (e.g. frozen by SIGSTOP):
    /// not acting, waiting to be told its role again.
    Fenced,
}

impl Role {
    /// The spelling used in the store, the API and the environment.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Standby => "standby",
            Role::Active => "active",
            Role::Free => "free",
            Role::Busy => "busy",
            Role::Stopped => "stopped",
            Role::Failed => "failed",
            Role::Fenced => "fenced",
        }
    }
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 9] = [
        Role::Primary,
        Role::Backup,
        Role::Standby,
        Role::Active,
        Role::Free,
        Role::Busy,
        Role::Stopped,
        Role::Failed,
        Role::Fenced,
    ];
}

/// A role string that names no [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}: expected one of primary, backup, standby, active, free, busy, stopped, failed, fenced"
)]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;

    /// Parses the spelling of [`Role::as_str`] (case-sensitive).
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of an instance's process, as its agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessState {
    /// Not started yet.
    Pending,
    /// Being started: counts as running for every safety rule.
    Starting,
    /// Running (it may still be unhealthy).
    Running,
    /// Exited; waiting for its restart backoff to elapse.
    Backoff,
    /// Stopped on purpose and not to be restarted.
    Stopped,
}

impl ProcessState {
    /// Running or about to run: it may act.
    pub fn is_live(self) -> bool {
        matches!(self, ProcessState::Running | ProcessState::Starting)
    }
}

/// Health as judged by the app's checks, with hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Not yet judged (just started).
    Unknown,
    /// Every check passes.
    Healthy,
    /// At least one check failed often enough.
    Unhealthy,
}

impl Health {
    /// The spelling used in the store, the API and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an agent reports about one instance it runs. Stored at
/// `status/{app}/{instance}`, bound to the host's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The host whose agent runs the instance.
    pub host: String,
    /// The process's state.
    pub process: ProcessState,
    /// Its pid while running.
    pub pid: Option<u32>,
    /// The agent's session: the id of the host lease it holds. A grant names
    /// the session it was made in; a new session never acts on an old grant.
    pub session: i64,
    /// Counts the starts of this instance by this agent; a role grant names
    /// the incarnation it was made for.
    pub incarnation: u64,
    /// The generation of the newest role assignment of the app the agent
    /// has applied to this instance.
    pub seen_generation: u64,
    /// Health, with hysteresis.
    pub health: Health,
    /// Why the last check failed, if it did.
    pub health_detail: Option<String>,
    /// The role the running process has been told and acknowledged.
    pub acting: Role,
    /// The epoch that came with `acting`. Never 0 while `acting` is
    /// `primary`: a promotion being delivered reports its new epoch.
    pub acting_epoch: u64,
    /// The primary role at `acting_epoch` is being delivered (its hook is in
    /// flight) and not yet acknowledged: the process may already act on it,
    /// so `acting` says `primary`, but it does not serve yet.
    #[serde(default)]
    pub promoting: bool,
    /// The generation of the newest drain request ([`Drain::generation`])
    /// this instance has finished: it drained for the period asked while
    /// primary, and may now be told to step down. 0: none.
    #[serde(default)]
    pub drained: u64,
    /// Restarted too often in a row: never promoted until stable again.
    pub crash_looping: bool,
    /// Restarts since the agent started.
    pub restarts: u32,
    /// What the instance's host sees of each link of its app (by link
    /// name), per target (an instance id of the app linked to, or the
    /// endpoint's name): probed while the process runs, with hysteresis.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub links: BTreeMap<String, BTreeMap<String, LinkReach>>,
    /// The link of each exclusive group (by group name) that tandem has
    /// enabled on the running process and seen confirmed; a group with
    /// none active is absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active_links: BTreeMap<String, String>,
    /// Its app's admin data, as its agent mirrors it (apps with an
    /// `admin_dir`): on the primary, each backup's state; on a backup, what
    /// it holds.
    #[serde(default, skip_serializing_if = "AdminSync::is_empty")]
    pub admin: AdminSync,
    /// How the last run ended ("exited with code 1", "killed by signal 9");
    /// when tandem asked for it, followed by [`BY_TANDEM`] and why
    /// ("killed by signal 9 (SIGKILL), by tandem: promotion hook failed
    /// (timeout); …").
    pub last_exit: Option<String>,
}

/// Whether a link's target answers its probes, with hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// Not probed enough yet to say.
    Unknown,
    /// It answers.
    Up,
    /// It does not.
    Down,
}

impl Reach {
    /// Its name in the API and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Unknown => "unknown",
            Reach::Up => "up",
            Reach::Down => "down",
        }
    }
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Admin-data mirroring of one instance ([`InstanceStatus::admin`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSync {
    /// On the primary: what it ships, and to whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AdminSource>,
    /// On a backup: the admin data it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<AdminPosition>,
    /// Why mirroring cannot run on this host (the directory cannot be
    /// watched or created), if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AdminSync {
    /// Nothing mirrored (an app without admin data).
    pub fn is_empty(&self) -> bool {
        self.source.is_none() && self.applied.is_none() && self.error.is_none()
    }

    /// How far this instance's admin data goes: its own changes on a
    /// primary, what it applied on a backup.
    pub fn position(&self) -> Option<AdminPosition> {
        match (&self.source, &self.applied) {
            (Some(s), _) => Some(AdminPosition {
                epoch: s.epoch,
                seq: s.seq,
                at_ms: 0,
            }),
            (None, Some(a)) => Some(a.clone()),
            (None, None) => None,
        }
    }
}

/// How far an instance's admin data goes: every change of the primary of
/// `epoch` up to `seq`. Ordered by epoch, then sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminPosition {
    /// The epoch of the primary whose changes it holds.
    pub epoch: u64,
    /// That primary's change sequence number it holds everything up to.
    pub seq: u64,
    /// When it last applied a change (wall ms; 0: unknown).
    #[serde(default)]
    pub at_ms: u64,
}

impl AdminPosition {
    /// (epoch, seq), for comparing positions.
    pub fn key(&self) -> (u64, u64) {
        (self.epoch, self.seq)
    }
}

/// The primary's side of admin-data mirroring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSource {
    /// Its epoch.
    pub epoch: u64,
    /// The sequence number of its newest change.
    pub seq: u64,
    /// Each backup by instance id.
    pub backups: BTreeMap<String, AdminBackup>,
}

/// How one backup's admin data stands, as the primary sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminBackup {
    /// Every change up to this sequence number is durable on it.
    pub acked_seq: u64,
    /// Changes not acknowledged yet.
    pub pending: u64,
    /// Resynchronised since its last failure, and nothing pending.
    pub in_sync: bool,
    /// Write on the primary to acknowledged on the backup, last push (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_us: Option<u64>,
    /// Median of the recent lags (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_p50_us: Option<u64>,
    /// 99th percentile of the recent lags (µs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_p99_us: Option<u64>,
    /// Why the last attempt failed, until a resynchronisation succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What an instance's host sees of one target of a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkReach {
    /// Up, down or not known yet.
    pub state: Reach,
    /// Why the last probe failed, while it counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a TLS link: the certificate its last successful handshake saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<CertSeen>,
}

/// A TLS link target's certificate, as a probe's handshake saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSeen {
    /// When it expires ("2027-01-05 12:00:00 UTC").
    pub not_after: String,
    /// It expires within the link's `tls_expiry_warning`.
    #[serde(default)]
    pub expiring: bool,
}

/// What separates how a run ended from why tandem ended it, in
/// [`InstanceStatus::last_exit`]: `"{how}, by tandem: {why}"`. An exit
/// nobody in tandem asked for has no such part.
pub const BY_TANDEM: &str = ", by tandem: ";

impl InstanceStatus {
    /// True if this process may be acting as primary right now: it runs and
    /// has acknowledged (or is being told) a primary role it has not
    /// acknowledged leaving.
    pub fn may_act_as_primary(&self) -> bool {
        self.process == ProcessState::Running && self.acting == Role::Primary
    }

    /// True if this process has acknowledged `grant`: it runs, acts as
    /// primary at the grant's epoch, and is the incarnation and agent
    /// session the grant was made for.
    pub fn has_acknowledged(&self, grant: &PrimaryGrant) -> bool {
        self.may_act_as_primary()
            && !self.promoting
            && self.acting_epoch == grant.epoch
            && self.incarnation == grant.incarnation
            && self.session == grant.session
    }

    /// True if the last run ended because tandem asked it to (see
    /// [`BY_TANDEM`]).
    pub fn exit_by_tandem(&self) -> bool {
        self.last_exit
            .as_deref()
            .is_some_and(|how| how.contains(BY_TANDEM))
    }

    /// True if it could take the primary role: running, healthy, and not
    /// crash-looping.
    pub fn eligible(&self) -> bool {
        self.process == ProcessState::Running
            && self.health == Health::Healthy
            && !self.crash_looping
    }
}

/// The grant of an app's primary role to one incarnation of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryGrant {
    /// The instance id.
    pub instance: String,
    /// The fencing epoch handed with the role.
    pub epoch: u64,
    /// The incarnation the grant is for; a restarted process is not primary.
    pub incarnation: u64,
    /// The agent session the grant is for (see [`InstanceStatus::session`]).
    pub session: i64,
}

/// A withdrawn grant whose holder may still act on it: no other instance is
/// promoted until the holder is confirmed to have stepped down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteppingDown {
    /// The withdrawn grant.
    pub grant: PrimaryGrant,
    /// The generation of the assignment that withdrew it: the holder has
    /// stepped down once it reports a non-primary role having seen it.
    pub generation: u64,
}

impl SteppingDown {
    /// True once the holder can no longer act on the withdrawn grant.
    ///
    /// A grant names an incarnation: the running one (warm and hot
    /// standby) or the next one its agent is to start (cold standby,
    /// singleton). The holder is done when its host lease ended, its agent
    /// began a new session, a later incarnation exists, the granted
    /// incarnation is not running, or — if it never started or still runs —
    /// its agent has seen the withdrawal and reports a non-primary role.
    pub fn is_done(&self, status: Option<&InstanceStatus>) -> bool {
        let g = &self.grant;
        let Some(s) = status else {
            // Its host lease ended: its agent fenced it before that.
            return true;
        };
        let seen = s.seen_generation >= self.generation;
        let running = s.process.is_live();
        s.session != g.session
            || s.incarnation > g.incarnation
            || (s.incarnation == g.incarnation && (!running || (seen && s.acting != Role::Primary)))
            || (s.incarnation < g.incarnation && seen && !running)
    }
}

/// A planned switchover the controller is carrying out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSwitchover {
    /// The intent being executed.
    pub intent: String,
    /// The instance to promote once the old primary has stepped down.
    pub to: String,
    /// Set while the primary drains before its grant is withdrawn: it keeps
    /// the grant, gets no new work, and reports when it has drained.
    /// (Boxed: an assignment travels by value in the agent's inputs.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Box<Drain>>,
    /// For a link-driven switchover (`intent` empty): why, as the
    /// promotion's event says it ("primary cms/a lost its link acd for
    /// 1.2 s (...); cms/b has it").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// A primary asked to drain before a planned switchover withdraws its
/// grant. Its agent times the drain and reports it done in
/// [`InstanceStatus::drained`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// How long to drain, from when its agent sees the request (the app's
    /// `drain`).
    pub ms: u64,
    /// The generation of the assignment that asked it: the primary has
    /// drained once it reports `drained >= generation`.
    pub generation: u64,
    /// When the controller asked it (its wall clock, ms since the Unix
    /// epoch), if it knew: a primary that has not reported it drained by
    /// [`Drain::limit_ms`] later is demoted anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_at_ms: Option<u64>,
}

impl Drain {
    /// How long after it was asked a drain is waited for at most: twice
    /// the period, plus 5 s for the agent to see the request and report.
    pub fn limit_ms(&self) -> u64 {
        self.ms.saturating_mul(2).saturating_add(5_000)
    }

    /// True once `status` (the primary's) reports this drain finished.
    pub fn is_done(&self, status: Option<&InstanceStatus>) -> bool {
        status.is_some_and(|s| s.drained >= self.generation)
    }
}

/// The controller's role assignment for one app. Stored durably at
/// `roles/{app}`; only the controller writes it, by compare-and-swap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRoles {
    /// Counts the writes of this assignment; agents report the generation
    /// they have applied.
    pub generation: u64,
    /// The last epoch handed out for this app (0: never). Strictly
    /// increases with every grant, across restarts.
    pub epoch: u64,
    /// The current grant, if any.
    pub primary: Option<PrimaryGrant>,
    /// The role each instance should have (instances absent here: the
    /// app's default non-primary role).
    pub roles: BTreeMap<String, Role>,
    /// A withdrawn grant whose holder has not yet confirmed stepping down.
    pub stepping_down: Option<SteppingDown>,
    /// While true, the controller changes no role of the app.
    #[serde(default)]
    pub maintenance: bool,
    /// A switchover in progress.
    pub switchover: Option<PendingSwitchover>,
    /// Why the last change was made.
    pub reason: String,
    /// The name of the last cause of a change of the primary, kept so that
    /// a promotion decided later names it
    /// ([`Cause`](crate::controller::Cause)). Like `reason`, it does not
    /// make an assignment differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<CauseName>,
    /// When the last link-driven switchover of the app began (the
    /// controller's wall clock, ms since the Unix epoch): the next waits
    /// the app's link switchover interval, whichever controller decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_switched_at_ms: Option<u64>,
    /// A primary's link loss that moved nothing, as last reported (who
    /// lost which links, and why nothing moved): reported again only when
    /// that changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_held: Option<String>,
    /// A pinned app (`pinned = true`) while no active site can hold its
    /// primary: why its clients may read but not write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<ReadOnly>,
}

/// Why an app pinned to the active site is read-only now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOnly {
    /// The active site that is lost.
    pub site: String,
    /// One line: `site dc1 is lost` or `site dc1 was declared failed`.
    pub reason: String,
}

/// The name of why an app's primary changed, as stored in
/// [`AppRoles::cause`]: why the primary was unfit
/// ([`Unfit`](crate::controller::Unfit)), a planned switchover, or no
/// primary before. Spelled in snake case, as event reasons and metric
/// labels are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseName {
    /// Its host was lost (no status).
    HostLost,
    /// It is crash-looping.
    CrashLooping,
    /// It is being started.
    Starting,
    /// It is not running.
    NotRunning,
    /// Its checks fail.
    Unhealthy,
    /// Its health is not yet known.
    HealthUnknown,
    /// It runs without the grant.
    AlreadyRunning,
    /// It left the topology.
    Removed,
    /// Its agent began a new session.
    SessionEnded,
    /// It restarted since it was granted.
    Restarted,
    /// A planned switchover.
    Switchover,
    /// The app had no primary.
    NoPrimary,
    /// Its host is suspected lost (heartbeats), and the app's writes are
    /// fenced by epoch (`fencing = "token"`).
    HostSuspected,
    /// Its host was fenced by its fence device.
    HostFenced,
    /// It lost a required link that a fit backup has (a link-driven
    /// switchover).
    LinkLost,
    /// Its site may not hold the app's primary: declared failed by an
    /// operator, or not active for an app pinned to the active site.
    SiteBarred,
    /// A withdrawal whose cause is not known (stored by another version).
    #[serde(other)]
    Withdrawn,
}

impl CauseName {
    /// Every name.
    pub const ALL: [CauseName; 17] = [
        CauseName::HostLost,
        CauseName::CrashLooping,
        CauseName::Starting,
        CauseName::NotRunning,
        CauseName::Unhealthy,
        CauseName::HealthUnknown,
        CauseName::AlreadyRunning,
        CauseName::Removed,
        CauseName::SessionEnded,
        CauseName::Restarted,
        CauseName::Switchover,
        CauseName::NoPrimary,
        CauseName::HostSuspected,
        CauseName::HostFenced,
        CauseName::LinkLost,
        CauseName::SiteBarred,
        CauseName::Withdrawn,
    ];

    /// The spelling used in the store, in events and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CauseName::HostLost => "host_lost",
            CauseName::CrashLooping => "crash_looping",
            CauseName::Starting => "starting",
            CauseName::NotRunning => "not_running",
            CauseName::Unhealthy => "unhealthy",
            CauseName::HealthUnknown => "health_unknown",
            CauseName::AlreadyRunning => "already_running",
            CauseName::Removed => "removed",
            CauseName::SessionEnded => "session_ended",
            CauseName::Restarted => "restarted",
            CauseName::Switchover => "switchover",
            CauseName::NoPrimary => "no_primary",
            CauseName::HostSuspected => "host_suspected",
            CauseName::HostFenced => "host_fenced",
            CauseName::LinkLost => "link_lost",
            CauseName::SiteBarred => "site_barred",
            CauseName::Withdrawn => "withdrawn",
        }
    }
}

impl fmt::Display for CauseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl AppRoles {
    /// The desired role of `instance`, defaulting to `fallback`.
    pub fn role_of(&self, instance: &str, fallback: Role) -> Role {
        self.roles.get(instance).copied().unwrap_or(fallback)
    }
}

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum IntentKind {
    /// A planned switchover, to the given instance or the best other one.
    Switchover {
        /// The target instance, if named.
        to: Option<String>,
    },
    /// Maintenance on or off: while on, no role of the app changes.
    Maintenance {
        /// On or off.
        on: bool,
    },
}

/// Where an intent stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum IntentState {
    /// Recorded, not yet acted on.
    Pending,
    /// Under way.
    Running,
    /// Carried out.
    Done {
        /// What happened.
        message: String,
    },
    /// Refused; nothing changed.
    Refused {
        /// Why.
        reason: String,
    },
}

/// An operator's request, recorded in the store at `intents/{app}` and
/// resolved by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Unique id, chosen by whoever records it.
    pub id: String,
    /// The app it is about.
    pub app: String,
    /// What is asked.
    #[serde(flatten)]
    pub kind: IntentKind,
    /// Where it stands.
    pub outcome: IntentState,
    /// The name of the API token that asked, when the API requires tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// How an event names who asked: ` (asked with token "ops")`, or nothing
/// when the request carried no token (an API open to all).
pub fn asked_by(by: Option<&str>) -> String {
    by.map(|t| format!(" (asked with token {t:?})"))
        .unwrap_or_default()
}

/// An operator's request to fence a host with its fence device, recorded
/// at `fence-intents/{host}` and resolved by the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceIntent {
    /// Unique id, chosen by whoever records it.
    pub id: String,
    /// The host to fence.
    pub host: String,
    /// Where it stands.
    pub outcome: IntentState,
    /// The name of the API token that asked, when the API requires tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// An operator's request about a site, recorded at `site-intents/{site}`
/// and resolved by the controller ([`crate::sites::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteIntent {
    /// Unique id, chosen by whoever records it.
    pub id: String,
    /// The site it is about.
    pub site: String,
    /// What is asked.
    pub action: SiteAction,
    /// Set by an operator who confirmed that the site concerned may be
    /// treated as gone although its hosts still hold leases: for `fail`,
    /// the site itself; for `promote`, the active site it replaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
    /// Where it stands.
    pub outcome: IntentState,
    /// The name of the API token that asked, when the API requires tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// What an operator asks of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteAction {
    /// Declare it lost: nothing is placed there until it is restored.
    Fail,
    /// Make a spare site the active one (the old active site becomes a
    /// spare, failed until restored).
    Promote,
    /// Take a failed site back, as a spare if another site is active.
    Restore,
}

impl SiteAction {
    /// Every action.
    pub const ALL: [SiteAction; 3] = [SiteAction::Fail, SiteAction::Promote, SiteAction::Restore];

    /// Its spelling in the API, the CLI and the store.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteAction::Fail => "fail",
            SiteAction::Promote => "promote",
            SiteAction::Restore => "restore",
        }
    }

    /// Parses its spelling.
    pub fn parse(s: &str) -> Option<SiteAction> {
        SiteAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for SiteAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What operators decided about sites beyond the topology, stored at
/// `sites` and written only by the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SitesRecord {
    /// Counts the writes.
    pub generation: u64,
    /// Sites whose role was changed by `site promote`, with their role now
    /// (the others have the topology's).
    #[serde(default)]
    pub roles: BTreeMap<String, crate::topology::SiteRole>,
    /// Sites declared failed, until restored.
    #[serde(default)]
    pub failed: BTreeMap<String, SiteFailure>,
}

/// A site declared failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteFailure {
    /// When (ms since the Unix epoch, the controller's clock).
    pub at_ms: u64,
    /// Why: `declared failed by an operator`, `replaced by dc2`.
    pub why: String,
}

/// Kinds of events in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// An instance was granted the primary role.
    Promoted,
    /// The granted primary acknowledged its role and epoch: it serves now
    /// (clients following events re-resolve the primary on this).
    Serving,
    /// A primary was told to step down.
    Demoted,
    /// A primary failed (exited, unhealthy, host lost).
    PrimaryFailed,
    /// An instance's process exited.
    InstanceExited,
    /// An instance started (or restarted).
    InstanceStarted,
    /// An instance's health changed.
    HealthChanged,
    /// An instance is crash-looping.
    CrashLoop,
    /// A host's agent joined or its lease expired.
    Host,
    /// Nothing can be promoted.
    NoCandidate,
    /// An operator's intent was recorded, carried out or refused.
    Intent,
    /// The controller role moved.
    Controller,
    /// Maintenance of an app began or ended.
    Maintenance,
    /// A fence device was run, confirmed or failed.
    Fence,
    /// A webhook delivery was given up (reason `delivery_failed`) or events
    /// were skipped (reason `events_skipped`). Never delivered by webhooks
    /// themselves, so a failing receiver cannot feed a loop.
    Webhook,
    /// A link's target became unreachable (reason `link_down`) or
    /// reachable again (`link_up`) from an instance's host.
    Link,
    /// Admin-data mirroring to a backup started failing (reason
    /// `admin_failing`) or is in sync again (`admin_in_sync`), or cannot
    /// run on a host (`admin_error`).
    AdminData,
    /// A site was lost (reason `site_lost`: every one of its hosts' leases
    /// ended) or is up (again: `site_up`).
    Site,
}

impl EventKind {
    /// Its name in the store and the API (kebab-case), and as a metric
    /// label.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Promoted => "promoted",
            EventKind::Serving => "serving",
            EventKind::Demoted => "demoted",
            EventKind::PrimaryFailed => "primary-failed",
            EventKind::InstanceExited => "instance-exited",
            EventKind::InstanceStarted => "instance-started",
            EventKind::HealthChanged => "health-changed",
            EventKind::CrashLoop => "crash-loop",
            EventKind::Host => "host",
            EventKind::NoCandidate => "no-candidate",
            EventKind::Intent => "intent",
            EventKind::Controller => "controller",
            EventKind::Maintenance => "maintenance",
            EventKind::Fence => "fence",
            EventKind::Webhook => "webhook",
            EventKind::Link => "link",
            EventKind::AdminData => "admin-data",
            EventKind::Site => "site",
        }
    }

    /// Every kind, in the order they are declared.
    pub const ALL: [EventKind; 18] = [
        EventKind::Promoted,
        EventKind::Serving,
        EventKind::Demoted,
        EventKind::PrimaryFailed,
        EventKind::InstanceExited,
        EventKind::InstanceStarted,
        EventKind::HealthChanged,
        EventKind::CrashLoop,
        EventKind::Host,
        EventKind::NoCandidate,
        EventKind::Intent,
        EventKind::Controller,
        EventKind::Maintenance,
        EventKind::Fence,
        EventKind::Webhook,
        EventKind::Link,
        EventKind::AdminData,
        EventKind::Site,
    ];

    /// The kind spelled `s` (as [`EventKind::as_str`] spells it).
    pub fn from_name(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the append-only event log, stored at `events/{seq}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, strictly increasing.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// What kind of event.
    pub kind: EventKind,
    /// The app concerned, if any.
    pub app: Option<String>,
    /// The instance concerned, if any.
    pub instance: Option<String>,
    /// The epoch concerned, if any.
    pub epoch: Option<u64>,
    /// A sentence an operator can read: what happened and why.
    pub message: String,
    /// Why, as a stable name (`not_running`, `switchover`, `host_lost`,
    /// ...), if the event has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An event as decided by core, before the runtime stamps it with a
/// sequence number and a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDraft {
    /// What kind of event.
    pub kind: EventKind,
    /// The app concerned, if any.
    pub app: Option<String>,
    /// The instance concerned, if any.
    pub instance: Option<String>,
    /// The epoch concerned, if any.
    pub epoch: Option<u64>,
    /// What happened and why.
    pub message: String,
    /// Why, as a stable name, if the event has one.
    pub reason: Option<&'static str>,
}

impl EventDraft {
    /// An event about an app.
    pub fn app(kind: EventKind, app: &str, message: impl Into<String>) -> EventDraft {
        EventDraft {
            kind,
            app: Some(app.to_string()),
            instance: None,
            epoch: None,
            message: message.into(),
            reason: None,
        }
    }

    /// An event about one instance.
    pub fn instance(
        kind: EventKind,
        app: &str,
        instance: &str,
        message: impl Into<String>,
    ) -> EventDraft {
        EventDraft {
            instance: Some(instance.to_string()),
            ..EventDraft::app(kind, app, message)
        }
    }

    /// Sets the epoch.
    pub fn with_epoch(mut self, epoch: u64) -> EventDraft {
        self.epoch = Some(epoch);
        self
    }

    /// Sets the reason's stable name.
    pub fn with_reason(mut self, reason: &'static str) -> EventDraft {
        self.reason = Some(reason);
        self
    }

    /// Stamps the draft into a log entry.
    pub fn stamp(self, seq: u64, t_ms: u64) -> Event {
        Event {
            seq,
            t_ms,
            kind: self.kind,
            app: self.app,
            instance: self.instance,
            epoch: self.epoch,
            message: self.message,
            reason: self.reason.map(str::to_string),
        }
    }
}

/// The agent's registration, stored at `hosts/{host}` bound to its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's name in the topology.
    pub host: String,
    /// The agent's pid.
    pub pid: u32,
    /// The agent's version.
    pub version: String,
    /// The TTL of its lease, as the store granted it (ms); it may be longer
    /// than the topology's `lease_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl_ms: Option<u64>,
}

/// Store key layout, in one place.
pub mod keys {
    /// Prefix of every key tandem writes.
    pub const ROOT: &str = "/tandem/";
    /// The stored topology (JSON).
    pub const TOPOLOGY: &str = "/tandem/topology";
    /// The controller election key.
    pub const CONTROLLER: &str = "/tandem/controller";
    /// Prefix of host registrations.
    pub const HOSTS: &str = "/tandem/hosts/";
    /// Prefix of instance statuses.
    pub const STATUS: &str = "/tandem/status/";
    /// Prefix of role assignments.
    pub const ROLES: &str = "/tandem/roles/";
    /// Prefix of intents.
    pub const INTENTS: &str = "/tandem/intents/";
    /// Prefix of the event log.
    pub const EVENTS: &str = "/tandem/events/";
    /// Prefix of operators' requests to fence a host.
    pub const FENCE_INTENTS: &str = "/tandem/fence-intents/";
    /// Operators' decisions about sites ([`super::SitesRecord`]).
    pub const SITES: &str = "/tandem/sites";
    /// Prefix of operators' requests about a site.
    pub const SITE_INTENTS: &str = "/tandem/site-intents/";
    /// Prefix of webhook cursors: the last event seq each webhook is done
    /// with (delivered or given up), written by the controller.
    pub const WEBHOOKS: &str = "/tandem/webhooks/";

    /// `webhooks/{name}`.
    pub fn webhook(name: &str) -> String {
        format!("{WEBHOOKS}{name}")
    }

    /// `fence-intents/{host}`.
    pub fn fence_intent(host: &str) -> String {
        format!("{FENCE_INTENTS}{host}")
    }

    /// `site-intents/{site}`.
    pub fn site_intent(site: &str) -> String {
        format!("{SITE_INTENTS}{site}")
    }

    /// `hosts/{host}`.
    pub fn host(host: &str) -> String {
        format!("{HOSTS}{host}")
    }
    /// `status/{app}/{instance}`.
    pub fn status(app: &str, instance: &str) -> String {
        format!("{STATUS}{app}/{instance}")
    }
    /// `roles/{app}`.
    pub fn roles(app: &str) -> String {
        format!("{ROLES}{app}")
    }
    /// `intents/{app}`.
    pub fn intent(app: &str) -> String {
        format!("{INTENTS}{app}")
    }
    /// `events/{seq}`, zero-padded so keys sort by sequence.
    pub fn event(seq: u64) -> String {
        format!("{EVENTS}{seq:020}")
    }
    /// Parses `status/{app}/{instance}` into its parts.
    pub fn parse_status(key: &str) -> Option<(&str, &str)> {
        key.strip_prefix(STATUS)?.split_once('/')
    }
    /// Parses the sequence number of an event key.
    pub fn parse_event(key: &str) -> Option<u64> {
        key.strip_prefix(EVENTS)?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_their_spelling() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{role}\""));
        }
        let err = "leader".parse::<Role>().unwrap_err();
        assert!(
            err.to_string().contains("expected one of primary, backup"),
            "{err}"
        );
        assert!("Primary".parse::<Role>().is_err(), "case-sensitive");
    }

    #[test]
    fn status_keys_parse_back() {
        let k = keys::status("wfm-server", "a");
        assert_eq!(keys::parse_status(&k), Some(("wfm-server", "a")));
        assert_eq!(keys::parse_event(&keys::event(42)), Some(42));
        assert!(keys::event(9) < keys::event(10));
    }

    #[test]
    fn cause_names_are_stored_as_spelled_and_unknown_ones_read_as_withdrawn() {
        for name in CauseName::ALL {
            let json = serde_json::to_string(&name).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<CauseName>(&json).unwrap(), name);
        }
        let later: CauseName = serde_json::from_str("\"named_by_a_later_version\"").unwrap();
        assert_eq!(later, CauseName::Withdrawn);
        // An assignment stored without a cause reads as none.
        let roles: AppRoles = serde_json::from_str(
            r#"{"generation":1,"epoch":0,"primary":null,"roles":{},"stepping_down":null,"switchover":null,"reason":""}"#,
        )
        .unwrap();
        assert_eq!(roles.cause, None);
        assert!(!serde_json::to_string(&roles).unwrap().contains("cause"));
    }

    #[test]
    fn event_kinds_round_trip_through_their_spelling() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert_eq!(EventKind::from_name("failed"), None);
    }

    #[test]
    fn intent_serializes_flat() {
        let i = Intent {
            by: None,
            id: "x".into(),
            app: "web".into(),
            kind: IntentKind::Switchover {
                to: Some("b".into()),
            },
            outcome: IntentState::Pending,
        };
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["kind"], "switchover");
        assert_eq!(v["to"], "b");
        assert_eq!(v["outcome"]["state"], "pending");
        let back: Intent = serde_json::from_value(v).unwrap();
        assert_eq!(back, i);
    }
}
