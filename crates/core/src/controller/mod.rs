//! The controller's decision function: observed state + intents → desired
//! roles, with the reason for every change.
//!
//! [`decide`] is pure. The controller runtime calls it for an app whenever
//! that app's statuses, role assignment or intent change, writes the
//! returned [`AppRoles`] by compare-and-swap together with the events, and
//! agents carry the roles out.
//!
//! # Modes
//!
//! - `warm-standby`, `hot-standby`: every instance runs; one is granted the
//!   primary role through its hook ([`Style::Hooked`]).
//! - `cold-standby`, `singleton`: an instance runs only while it holds the
//!   grant; the grant names the next incarnation its agent is to start, and
//!   the start is the promotion ([`Style::OnGrant`]).
//! - `n-plus-1`: `replicas` instances are active, on live hosts; the others
//!   wait stopped ([`Style::OnAssign`]).
//! - `none`, `pool`: every instance runs in its one role ([`Style::Always`]).
//!
//! # Safety rules enforced here
//!
//! - At most one grant per app ([`AppRoles::primary`]), and a new grant is
//!   made only when **no other instance may still act as primary, or every
//!   action of one that may is fenced**: the holder of a withdrawn grant
//!   has confirmed it
//!   ([`SteppingDown::is_done`](crate::model::SteppingDown::is_done):
//!   acknowledged, not running, or its host lease expired), and no other
//!   instance reports acting (hooked modes) or running (on-grant modes) —
//!   where an instance whose host a fence device confirmed off
//!   ([`HostsState::fenced`]) does not count, nor, for an app whose every
//!   action is checked downstream against its epoch (`fencing = "token"`),
//!   one whose host is suspected lost ([`HostsState::suspected`]): the new
//!   grant's higher epoch makes whatever it still does refused. A crashed
//!   primary is replaced at once; a live one is told to step down first
//!   and replaced once it has.
//! - Every grant carries `epoch = previous epoch + 1`: epochs strictly
//!   increase.
//! - A grant names the incarnation and agent session it is for; a restarted
//!   process or an agent in a new session never acts on an old grant.
//! - Only a fit instance is granted: running, healthy and not crash-looping
//!   (hooked), or on a live host, stopped and not crash-looping (on-grant).
//! - While an app is in maintenance, nothing about its roles changes.
//!
//! # Layout
//!
//! One handler per concern, each a file: `maintenance` (on, off, and the
//! freeze while on), `primary` (modes with a primary, in four steps: the
//! current grant, a planned switchover, a promotion, the others' roles),
//! `candidates` (who is fit, whether a grant holds, the best candidate),
//! `reasons` (why: [`Unfit`], the [`Cause`] of a promotion),
//! `n_plus_1` and `static_roles` (modes without a primary), and
//! `status_events` (events from status changes). What each mode means
//! lives in [`crate::mode`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    AppRoles, EventDraft, EventKind, Health, InstanceStatus, Intent, IntentState, ProcessState,
    Role,
};
use crate::topology::{App, Fencing};

pub use crate::mode::{Style, default_role, style};
pub use reasons::{Cause, Unfit};
pub use status_events::{status_events, status_events_with};

mod candidates;
pub mod fence;
mod maintenance;
mod n_plus_1;
mod primary;
mod reasons;
mod static_roles;
mod status_events;

/// What [`decide`] looks at for one app.
#[derive(Debug, Clone, Copy)]
pub struct AppInput<'a> {
    /// The app as the topology declares it.
    pub app: &'a App,
    /// The current role assignment (default if none was ever written).
    pub roles: &'a AppRoles,
    /// Status of each instance whose agent reports one. An instance absent
    /// here is not running as far as anyone can tell: its host's lease has
    /// expired (its agent fenced it) or its agent has not started. A status
    /// that [`HostsState::discounts`] counts as absent too.
    pub status: &'a BTreeMap<String, InstanceStatus>,
    /// The app's intent, if any is recorded.
    pub intent: Option<&'a Intent>,
    /// What is known of hosts beyond their leases ([`HostsState::NONE`]
    /// when nothing is).
    pub hosts: &'a HostsState,
    /// The app's links as judged now ([`AppLinks::NONE`] when none are).
    pub links: &'a AppLinks,
}

/// An app's required links as the controller judges them
/// ([`crate::links::judge`]), timed by its own clock: what a link-driven
/// switchover looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppLinks {
    /// Per instance: each required link judged down, since when and why.
    pub down: BTreeMap<String, BTreeMap<String, LinkLoss>>,
    /// Per instance: the required links judged up, and for how long (by
    /// the controller's clock).
    pub up: BTreeMap<String, BTreeMap<String, std::time::Duration>>,
    /// The controller's wall clock (ms since the Unix epoch), against
    /// [`AppRoles::link_switched_at_ms`] and a drain's
    /// [`asked_at_ms`](crate::model::Drain::asked_at_ms) (0: unknown, and
    /// neither bound applies).
    pub now_ms: u64,
}

impl AppLinks {
    /// No link known.
    pub const NONE: &'static AppLinks = &AppLinks {
        down: BTreeMap::new(),
        up: BTreeMap::new(),
        now_ms: 0,
    };
}

/// A required link an instance has lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkLoss {
    /// How long it has been judged down, by the controller's clock (from
    /// when this controller first saw it down).
    pub lost_for: std::time::Duration,
    /// Why ([`crate::links::LinkJudgement::detail`]).
    pub detail: String,
}

/// What the controller knows of hosts beyond their leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostsState {
    /// Hosts suspected lost: their agent's heartbeats stopped or its
    /// connection closed. Their leases may still be valid, so what runs
    /// there may still act.
    pub suspected: BTreeSet<String>,
    /// Hosts whose fence device confirmed them off or cut off, each with
    /// the agent session (lease) it fenced: statuses of that session are
    /// void; a later session is a host that came back.
    pub fenced: BTreeMap<String, i64>,
    /// Each host's site as judged now ([`crate::sites::host_sites`]; empty:
    /// sites bar nothing and no app is read-only).
    pub sites: BTreeMap<String, crate::sites::HostSite>,
}

impl HostsState {
    /// Nothing known: every status counts until its lease expires.
    pub const NONE: &'static HostsState = &HostsState {
        suspected: BTreeSet::new(),
        fenced: BTreeMap::new(),
        sites: BTreeMap::new(),
    };

    /// Why the status `s` of an instance of `app` on `host` no longer
    /// counts as a sign of life, if it does not: its host was fenced in
    /// that session, or it is suspected and every action of the app's
    /// primary is fenced by epoch.
    pub fn discounts(&self, app: &App, host: &str, s: &InstanceStatus) -> Option<Unfit> {
        if self.fenced.get(host) == Some(&s.session) {
            Some(Unfit::HostFenced {
                host: host.to_string(),
            })
        } else if token_fenced(app) && self.suspected.contains(host) {
            Some(Unfit::HostSuspected {
                host: host.to_string(),
            })
        } else {
            None
        }
    }

    /// Why an instance of `app` on `host` may not hold its primary or be
    /// an active member, if it may not: its site's state
    /// ([`crate::sites::HostSite::barred`]).
    pub fn barred(&self, app: &App, host: &str) -> Option<Unfit> {
        let why = self.sites.get(host)?.barred(app)?;
        Some(Unfit::SiteBarred {
            host: host.to_string(),
            why,
        })
    }

    /// Why an instance of `app` on `host` has no status.
    pub fn absent(&self, app: &App, host: &str) -> Unfit {
        let host = host.to_string();
        if self.fenced.contains_key(&host) {
            Unfit::HostFenced { host }
        } else if token_fenced(app) && self.suspected.contains(&host) {
            Unfit::HostSuspected { host }
        } else {
            Unfit::HostLost { host }
        }
    }
}

/// True if every action of `app`'s primary is checked downstream against
/// its epoch, in a mode where that lets a replacement be promoted while
/// the old primary may still run.
pub fn token_fenced(app: &App) -> bool {
    app.fencing == Fencing::Token && Fencing::TOKEN_MODES.contains(&app.ha)
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The role assignment to hold from now on.
    pub roles: AppRoles,
    /// True if `roles` differs from the input in anything but `reason` and
    /// `cause`: the runtime must write it.
    pub changed: bool,
    /// What happened, for the event log.
    pub events: Vec<EventDraft>,
    /// The intent's new state, if it changed.
    pub intent: Option<IntentState>,
}

/// Whether an app that was never decided should wait before its first
/// decision: some instance has not reported yet, has not started yet, or
/// runs without a health verdict yet. Deciding then would place the role
/// on whichever instance came up first rather than the best one. The
/// runtime bounds this wait (a host may never report).
pub fn awaits_first_reports(app: &App, status: &BTreeMap<String, InstanceStatus>) -> bool {
    app.instances.iter().any(|i| match status.get(&i.id) {
        None => true,
        Some(s) => {
            s.process == ProcessState::Pending
                || (s.process.is_live() && s.health == Health::Unknown)
        }
    })
}

/// Decides the roles of one app.
pub fn decide(input: &AppInput<'_>) -> Decision {
    let d = match counted_status(input) {
        Cow::Borrowed(_) => decide_counted(input),
        Cow::Owned(status) => decide_counted(&AppInput {
            status: &status,
            ..*input
        }),
    };
    read_only(input, d)
}

/// Says whether a pinned app is read-only now (no active site that is up
/// has an instance of it), with an event when that changes.
fn read_only(input: &AppInput<'_>, mut d: Decision) -> Decision {
    let app = input.app;
    let now = crate::sites::read_only(app, &input.hosts.sites);
    if now == d.roles.read_only {
        return d;
    }
    let name = &app.name;
    let event = match &now {
        Some(ro) => {
            let spares: Vec<&str> = app
                .instances
                .iter()
                .filter_map(|i| input.hosts.sites.get(&i.host))
                .filter(|h| !h.active && h.out.is_none())
                .map(|h| h.site.as_str())
                .collect();
            let mut m = format!(
                "{name} is read-only: {}; it is pinned to the active site and does not move by itself",
                ro.reason
            );
            if let Some(spare) = spares.first() {
                m.push_str(&format!("; `tandem site promote {spare}` starts it there"));
            }
            EventDraft::app(EventKind::Site, name, m).with_reason("read_only")
        }
        None => EventDraft::app(
            EventKind::Site,
            name,
            format!("{name} is writable again: an active site that is up has an instance of it"),
        )
        .with_reason("writable"),
    };
    d.roles.read_only = now;
    if !d.changed {
        d.changed = true;
        d.roles.generation = input.roles.generation + 1;
        d.roles.reason = event.message.clone();
    }
    d.events.push(event);
    d
}

/// The statuses that count as signs of life: without those
/// [`HostsState::discounts`].
fn counted_status<'s>(input: &AppInput<'s>) -> Cow<'s, BTreeMap<String, InstanceStatus>> {
    let (app, hosts) = (input.app, input.hosts);
    if hosts.suspected.is_empty() && hosts.fenced.is_empty() {
        return Cow::Borrowed(input.status);
    }
    let void = |id: &str, s: &InstanceStatus| {
        app.instance(id)
            .is_some_and(|i| hosts.discounts(app, &i.host, s).is_some())
    };
    if !input.status.iter().any(|(id, s)| void(id, s)) {
        return Cow::Borrowed(input.status);
    }
    Cow::Owned(
        input
            .status
            .iter()
            .filter(|(id, s)| !void(id, s))
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect(),
    )
}

fn decide_counted(input: &AppInput<'_>) -> Decision {
    if let Some(d) = maintenance::maintenance(input) {
        return d;
    }
    match style(input.app.ha) {
        Style::Hooked | Style::OnGrant => primary::decide_primary(input),
        Style::OnAssign => n_plus_1::decide_n_plus_1(input),
        Style::Always => static_roles::decide_static(input),
    }
}

/// The intent, if it still waits to be acted on.
fn pending(intent: Option<&Intent>) -> Option<&Intent> {
    intent.filter(|i| i.outcome == IntentState::Pending)
}

impl Decision {
    /// `after`, with its generation counted up if it differs from `before`.
    fn new(before: &AppRoles, mut after: AppRoles) -> Decision {
        let changed = !same_assignment(before, &after);
        after.generation = if changed {
            before.generation + 1
        } else {
            before.generation
        };
        Decision {
            roles: after,
            changed,
            events: Vec::new(),
            intent: None,
        }
    }

    /// Keeps the stored reason and cause and drops events when nothing is
    /// written.
    fn settle(mut self, before: &AppRoles) -> Decision {
        if !self.changed && self.intent.is_none() {
            if self.roles.reason != before.reason {
                self.roles.reason.clone_from(&before.reason);
            }
            if self.roles.cause != before.cause {
                self.roles.cause.clone_from(&before.cause);
            }
            self.events.clear();
        }
        self
    }
}

/// Makes `roles` say `role_of` each instance of `app`, and nothing else.
/// A map that already says exactly that is left as it is (a decision that
/// changes nothing allocates nothing here).
fn assign_roles(roles: &mut BTreeMap<String, Role>, app: &App, role_of: impl Fn(&str) -> Role) {
    let same = roles.len() == app.instances.len()
        && app
            .instances
            .iter()
            .all(|i| roles.get(&i.id) == Some(&role_of(&i.id)))
        && roles.keys().all(|id| app.instance(id).is_some());
    if !same {
        *roles = app
            .instances
            .iter()
            .map(|i| (i.id.clone(), role_of(&i.id)))
            .collect();
    }
}

/// True if `a` and `b` assign the same roles (reasons, causes and
/// generations aside).
fn same_assignment(a: &AppRoles, b: &AppRoles) -> bool {
    a.epoch == b.epoch
        && a.primary == b.primary
        && a.roles == b.roles
        && a.switchover == b.switchover
        && a.stepping_down == b.stepping_down
        && a.maintenance == b.maintenance
        && a.link_switched_at_ms == b.link_switched_at_ms
        && a.link_held == b.link_held
        && a.read_only == b.read_only
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{HaMode, Instance, RestartPolicy};

    fn app(ids: &[&str]) -> App {
        App {
            name: "web".into(),
            ha: HaMode::WarmStandby,
            command: vec!["serve".into()],
            env: BTreeMap::new(),
            workdir: None,
            checks: Vec::new(),
            hook: None,
            fencing: Default::default(),
            restart: RestartPolicy::default(),
            replicas: 1,
            min_healthy: 1,
            stop_timeout: App::DEFAULT_STOP_TIMEOUT,
            drain: std::time::Duration::ZERO,
            link_failover: Default::default(),
            admin_dir: None,
            pinned: false,
            instances: ids
                .iter()
                .map(|id| Instance {
                    id: id.to_string(),
                    host: "h1".into(),
                    priority: 0,
                    ports: BTreeMap::new(),
                })
                .collect(),
        }
    }

    fn map(entries: &[(&str, Role)]) -> BTreeMap<String, Role> {
        entries.iter().map(|(id, r)| (id.to_string(), *r)).collect()
    }

    #[test]
    fn assign_roles_gives_each_instance_its_role_and_drops_the_others() {
        let app = app(&["a", "b"]);
        let role_of = |id: &str| {
            if id == "a" {
                Role::Primary
            } else {
                Role::Backup
            }
        };
        let want = map(&[("a", Role::Primary), ("b", Role::Backup)]);
        let cases = [
            ("already right", want.clone()),
            ("empty", BTreeMap::new()),
            (
                "a role differs",
                map(&[("a", Role::Backup), ("b", Role::Backup)]),
            ),
            ("an instance missing", map(&[("a", Role::Primary)])),
            (
                "an instance that left the topology",
                map(&[("a", Role::Primary), ("c", Role::Backup)]),
            ),
            (
                "one too many",
                map(&[
                    ("a", Role::Primary),
                    ("b", Role::Backup),
                    ("c", Role::Backup),
                ]),
            ),
        ];
        for (name, mut roles) in cases {
            assign_roles(&mut roles, &app, role_of);
            assert_eq!(roles, want, "{name}");
        }
    }
}
