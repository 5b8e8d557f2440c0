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
//!   made only when **no other instance may still act as primary**: the
//!   holder of a withdrawn grant has confirmed it ([`SteppingDown::is_done`]:
//!   acknowledged, not running, or its host lease expired), and no other
//!   instance reports acting (hooked modes) or running (on-grant modes). A
//!   crashed primary is replaced at once; a live one is told to step down
//!   first and replaced once it has.
//! - Every grant carries `epoch = previous epoch + 1`: epochs strictly
//!   increase.
//! - A grant names the incarnation and agent session it is for; a restarted
//!   process or an agent in a new session never acts on an old grant.
//! - Only a fit instance is granted: running, healthy and not crash-looping
//!   (hooked), or on a live host, stopped and not crash-looping (on-grant).
//! - While an app is in maintenance, nothing about its roles changes.

use std::collections::BTreeMap;

use crate::model::{
    AppRoles, EventDraft, EventKind, Health, InstanceStatus, Intent, IntentKind, IntentState,
    PendingSwitchover, PrimaryGrant, ProcessState, Role, SteppingDown,
};
use crate::topology::App;

pub use crate::mode::{Style, default_role, style};

/// What [`decide`] looks at for one app.
#[derive(Debug, Clone, Copy)]
pub struct AppInput<'a> {
    /// The app as the topology declares it.
    pub app: &'a App,
    /// The current role assignment (default if none was ever written).
    pub roles: &'a AppRoles,
    /// Status of each instance whose agent reports one. An instance absent
    /// here is not running as far as anyone can tell: its host's lease has
    /// expired (its agent fenced it) or its agent has not started.
    pub status: &'a BTreeMap<String, InstanceStatus>,
    /// The app's intent, if any is recorded.
    pub intent: Option<&'a Intent>,
}

/// What [`decide`] concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The role assignment to hold from now on.
    pub roles: AppRoles,
    /// True if `roles` differs from the input in anything but `reason`:
    /// the runtime must write it.
    pub changed: bool,
    /// What happened, for the event log.
    pub events: Vec<EventDraft>,
    /// The intent's new state, if it changed.
    pub intent: Option<IntentState>,
}

/// Decides the roles of one app.
pub fn decide(input: &AppInput<'_>) -> Decision {
    if let Some(d) = maintenance(input) {
        return d;
    }
    match style(input.app.ha) {
        Style::Hooked | Style::OnGrant => decide_primary(input),
        Style::OnAssign => decide_n_plus_1(input),
        Style::Always => decide_static(input),
    }
}

fn pending(intent: Option<&Intent>) -> Option<&Intent> {
    intent.filter(|i| i.outcome == IntentState::Pending)
}

impl Decision {
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

    /// Keeps the stored reason and drops events when nothing is written.
    fn settle(mut self, before: &AppRoles) -> Decision {
        if !self.changed && self.intent.is_none() {
            self.roles.reason = before.reason.clone();
            self.events.clear();
        }
        self
    }
}

fn same_assignment(a: &AppRoles, b: &AppRoles) -> bool {
    a.epoch == b.epoch
        && a.primary == b.primary
        && a.roles == b.roles
        && a.switchover == b.switchover
        && a.stepping_down == b.stepping_down
        && a.maintenance == b.maintenance
}

/// Maintenance: turning it on or off, and freezing the roles while on.
/// `None` when the app is not in maintenance and no maintenance intent is
/// pending: the mode decides.
fn maintenance(input: &AppInput<'_>) -> Option<Decision> {
    let name = &input.app.name;
    let intent = pending(input.intent);
    let asked = intent.and_then(|i| match i.kind {
        IntentKind::Maintenance { on } => Some(on),
        IntentKind::Switchover { .. } => None,
    });
    let unchanged = || Decision::new(input.roles, input.roles.clone());
    let done = |message: String| Some(IntentState::Done { message });
    let toggled = |on: bool, reason: String| {
        let mut roles = input.roles.clone();
        roles.maintenance = on;
        roles.reason = reason;
        let mut d = Decision::new(input.roles, roles);
        d.events.push(EventDraft::app(
            EventKind::Maintenance,
            name,
            &d.roles.reason,
        ));
        d
    };
    match (input.roles.maintenance, asked) {
        (false, None) => None,
        (false, Some(false)) => {
            let mut d = unchanged();
            d.intent = done(format!("{name} is not in maintenance"));
            Some(d)
        }
        (false, Some(true)) => {
            let mut d = toggled(
                true,
                format!(
                    "maintenance of {name}: no role changes until it is turned off (failures are not acted on)"
                ),
            );
            d.intent = done(format!("maintenance of {name} is on"));
            Some(d)
        }
        (true, Some(false)) => {
            let mut d = toggled(
                false,
                format!("maintenance of {name} ended: roles are managed again"),
            );
            d.intent = done(format!("maintenance of {name} is off"));
            Some(d)
        }
        (true, Some(true)) => {
            let mut d = unchanged();
            d.intent = done(format!("maintenance of {name} is on"));
            Some(d)
        }
        (true, None) => {
            let mut d = unchanged();
            if intent.is_some() {
                d.intent = Some(IntentState::Refused {
                    reason: format!(
                        "{name} is in maintenance: no role changes until `tandem maintenance {name} off`"
                    ),
                });
            }
            Some(d)
        }
    }
}

/// Apps without a primary: every instance has its mode's default role.
fn decide_static(input: &AppInput<'_>) -> Decision {
    let role = default_role(input.app.ha);
    let mut roles = input.roles.clone();
    roles.primary = None;
    roles.stepping_down = None;
    roles.switchover = None;
    roles.roles = input
        .app
        .instances
        .iter()
        .map(|i| (i.id.clone(), role))
        .collect();
    let mut d = Decision::new(input.roles, roles);
    if d.changed {
        d.roles.reason = format!("every instance of a {} app is {role}", input.app.ha);
    }
    if pending(input.intent).is_some() {
        d.intent = Some(IntentState::Refused {
            reason: format!(
                "app \"{}\" is {}: it has no primary to switch over",
                input.app.name, input.app.ha
            ),
        });
    }
    d
}

/// `n-plus-1`: keep `replicas` instances active on live hosts.
fn decide_n_plus_1(input: &AppInput<'_>) -> Decision {
    let app = input.app;
    let name = &app.name;
    let status = input.status;
    let mut next = input.roles.clone();
    next.primary = None;
    next.stepping_down = None;
    next.switchover = None;
    let mut events = Vec::new();
    let active_before: Vec<&str> = app
        .instances
        .iter()
        .filter(|i| input.roles.roles.get(&i.id) == Some(&Role::Active))
        .map(|i| i.id.as_str())
        .collect();
    // Keep an active instance while its host lives and it is not
    // crash-looping; otherwise it is replaced.
    let mut keep: Vec<&str> = Vec::new();
    for id in &active_before {
        match status.get(*id) {
            Some(s) if !s.crash_looping => keep.push(id),
            Some(_) => events.push(EventDraft::instance(
                EventKind::CrashLoop,
                name,
                id,
                format!("{name}/{id} is crash-looping: replacing it"),
            )),
            None => events.push(EventDraft::instance(
                EventKind::Host,
                name,
                id,
                format!("{name}/{id}'s host is lost: replacing it"),
            )),
        }
    }
    let want = app.replicas as usize;
    // Too many (fewer replicas declared): drop the lowest priority.
    let prio = |id: &str| app.instance(id).map_or(i64::MIN, |i| i.priority);
    keep.sort_by(|a, b| prio(b).cmp(&prio(a)).then_with(|| a.cmp(b)));
    keep.truncate(want);
    // Too few: add the best instances on live hosts.
    let mut spares: Vec<&str> = app
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| !keep.contains(id))
        .filter(|id| status.get(*id).is_some_and(|s| !s.crash_looping))
        .collect();
    spares.sort_by(|a, b| prio(b).cmp(&prio(a)).then_with(|| a.cmp(b)));
    for id in spares {
        if keep.len() >= want {
            break;
        }
        keep.push(id);
        if !active_before.is_empty() || input.roles.generation > 0 {
            events.push(EventDraft::instance(
                EventKind::InstanceStarted,
                name,
                id,
                format!("{name}/{id} made active to keep {want} replica(s)"),
            ));
        }
    }
    next.roles = app
        .instances
        .iter()
        .map(|i| {
            let role = if keep.contains(&i.id.as_str()) {
                Role::Active
            } else {
                Role::Standby
            };
            (i.id.clone(), role)
        })
        .collect();
    let mut d = Decision::new(input.roles, next);
    if d.changed {
        let mut active: Vec<&str> = keep.clone();
        active.sort();
        d.roles.reason = if keep.len() < want {
            format!(
                "{name}: only {} of {want} replica(s) can run (active: {})",
                keep.len(),
                active.join(", ")
            )
        } else {
            format!("{name}: {want} replica(s) active: {}", active.join(", "))
        };
    }
    d.events = events;
    if pending(input.intent).is_some() {
        d.intent = Some(IntentState::Refused {
            reason: format!("app \"{name}\" is n-plus-1: it has no primary to switch over"),
        });
    }
    d.settle(input.roles)
}

/// Why an instance cannot keep or take the primary role, if it cannot.
fn unfit(app: &App, id: &str, status: Option<&InstanceStatus>) -> Option<String> {
    let Some(s) = status else {
        let host = app.instance(id).map(|i| i.host.as_str()).unwrap_or("?");
        return Some(format!("host {host} lost (no status: its lease expired)"));
    };
    if style(app.ha) == Style::OnGrant {
        return s
            .process
            .is_live()
            .then(|| "already running without the grant".to_string());
    }
    if s.crash_looping {
        return Some("crash-looping".to_string());
    }
    match s.process {
        ProcessState::Running => {}
        ProcessState::Starting => return Some("starting".to_string()),
        ProcessState::Backoff | ProcessState::Stopped | ProcessState::Pending => {
            return Some(match &s.last_exit {
                Some(how) => format!("not running: {how}"),
                None => "not running".to_string(),
            });
        }
    }
    match s.health {
        Health::Healthy => None,
        Health::Unhealthy => Some(match &s.health_detail {
            Some(d) => format!("unhealthy: {d}"),
            None => "unhealthy".to_string(),
        }),
        Health::Unknown => Some("health not yet known".to_string()),
    }
}

/// Whether the holder of `grant` still holds it well; `Some(why)` if not.
fn grant_broken(app: &App, grant: &PrimaryGrant, s: Option<&InstanceStatus>) -> Option<String> {
    if app.instance(&grant.instance).is_none() {
        return Some("removed from the topology".to_string());
    }
    let Some(st) = s else {
        return unfit(app, &grant.instance, s);
    };
    if st.session != grant.session {
        return Some(format!(
            "its agent's session ended (lease {} replaced by {})",
            grant.session, st.session
        ));
    }
    let running = st.process.is_live();
    let unhealthy = || {
        Some(match &st.health_detail {
            Some(d) => format!("unhealthy: {d}"),
            None => "unhealthy".to_string(),
        })
    };
    let exited = || {
        Some(match &st.last_exit {
            Some(how) => format!("not running: {how}"),
            None => "not running".to_string(),
        })
    };
    match style(app.ha) {
        Style::OnGrant => {
            if st.incarnation + 1 == grant.incarnation && !running {
                // Its agent is about to start it (after its backoff).
                None
            } else if st.incarnation == grant.incarnation && running {
                (st.health == Health::Unhealthy).then(unhealthy).flatten()
            } else if st.incarnation == grant.incarnation {
                exited()
            } else {
                Some(format!(
                    "restarted since it was granted (incarnation {} → {})",
                    grant.incarnation, st.incarnation
                ))
            }
        }
        _ => {
            if st.incarnation != grant.incarnation {
                Some(format!(
                    "restarted since it was granted (incarnation {} → {})",
                    grant.incarnation, st.incarnation
                ))
            } else if !running {
                exited()
            } else if st.health == Health::Unhealthy {
                unhealthy()
            } else {
                None
            }
        }
    }
}

/// The grant `s` would get.
fn grant_for(app: &App, id: &str, s: &InstanceStatus, epoch: u64) -> PrimaryGrant {
    PrimaryGrant {
        instance: id.to_string(),
        epoch,
        incarnation: style(app.ha).granted_incarnation(s),
        session: s.session,
    }
}

/// The best instance to promote: fit, not crash-looping, not the one that
/// just failed, highest priority, then lowest id; failing that, the one
/// that just failed; failing that (on-grant modes: one must run), a
/// crash-looping one.
fn best_candidate<'a>(
    app: &'a App,
    status: &'a BTreeMap<String, InstanceStatus>,
    exclude: Option<&str>,
    avoid: Option<&str>,
) -> Option<(&'a str, &'a InstanceStatus)> {
    let pick = |skip_avoided: bool, allow_looping: bool| {
        app.instances
            .iter()
            .filter(|i| Some(i.id.as_str()) != exclude)
            .filter(|i| !skip_avoided || Some(i.id.as_str()) != avoid)
            .filter_map(|i| {
                let s = status.get(&i.id)?;
                (style(app.ha).fit(s) && (allow_looping || !s.crash_looping)).then_some((i, s))
            })
            .max_by(|(a, _), (b, _)| a.priority.cmp(&b.priority).then_with(|| b.id.cmp(&a.id)))
            .map(|(i, s)| (i.id.as_str(), s))
    };
    pick(true, false)
        .or_else(|| pick(false, false))
        .or_else(|| pick(false, true))
}

/// Withdraws the current grant; its holder must confirm stepping down
/// before anyone else is promoted.
fn withdraw(before: &AppRoles, next: &mut AppRoles) {
    if let Some(grant) = next.primary.take() {
        next.stepping_down = Some(SteppingDown {
            grant,
            generation: before.generation + 1,
        });
    }
}

fn decide_primary(input: &AppInput<'_>) -> Decision {
    let app = input.app;
    let name = app.name.as_str();
    let status = input.status;
    let mut next = input.roles.clone();
    let mut events = Vec::new();
    let mut intent_state = None;
    let mut failure: Option<String> = None;
    let mut failed_holder: Option<String> = None;

    // Instances that left the topology lose their entries.
    next.roles.retain(|id, _| app.instance(id).is_some());

    // 1. Is the current grant still good?
    if let Some(grant) = next.primary.clone()
        && let Some(why) = grant_broken(app, &grant, status.get(&grant.instance))
    {
        withdraw(input.roles, &mut next);
        next.reason = format!("primary {name}/{} failed: {why}", grant.instance);
        failure = Some(next.reason.clone());
        failed_holder = Some(grant.instance.clone());
        events.push(
            EventDraft::instance(
                EventKind::PrimaryFailed,
                name,
                &grant.instance,
                &next.reason,
            )
            .with_epoch(grant.epoch),
        );
        if let Some(sw) = next.switchover.take()
            && input.intent.is_some_and(|i| i.id == sw.intent)
        {
            intent_state = Some(IntentState::Refused {
                reason: format!(
                    "switchover interrupted: primary {name}/{} failed: {why}",
                    grant.instance
                ),
            });
        }
    }

    // 2. A planned switchover asked by an operator.
    if let Some(intent) = pending(input.intent)
        && let IntentKind::Switchover { to } = &intent.kind
    {
        match plan_switchover(app, &next, status, to.as_deref()) {
            Ok((from, target)) => {
                withdraw(input.roles, &mut next);
                next.switchover = Some(PendingSwitchover {
                    intent: intent.id.clone(),
                    to: target.clone(),
                });
                next.reason = format!(
                    "switchover requested: demoting {name}/{from}, then promoting {name}/{target}"
                );
                events.push(EventDraft::instance(
                    EventKind::Intent,
                    name,
                    &from,
                    &next.reason,
                ));
                events.push(EventDraft::instance(
                    EventKind::Demoted,
                    name,
                    &from,
                    format!("demoting {name}/{from} for a planned switchover to {target}"),
                ));
                intent_state = Some(IntentState::Running);
            }
            Err(reason) => {
                events.push(EventDraft::app(
                    EventKind::Intent,
                    name,
                    format!("switchover refused: {reason}"),
                ));
                intent_state = Some(IntentState::Refused { reason });
            }
        }
    }

    // 3. No primary: promote one, once nobody else may still be acting.
    if next.primary.is_none() {
        if next
            .stepping_down
            .as_ref()
            .is_some_and(|sd| sd.is_done(status.get(&sd.grant.instance)))
        {
            next.stepping_down = None;
        }
        // The withdrawn holder first, then (defence in depth) anyone who
        // reports acting as primary.
        let still = next
            .stepping_down
            .as_ref()
            .map(|sd| sd.grant.instance.as_str())
            .or_else(|| {
                app.instances
                    .iter()
                    .find(|i| status.get(&i.id).is_some_and(|s| style(app.ha).may_act(s)))
                    .map(|i| i.id.as_str())
            });
        if let Some(still) = still {
            next.reason = format!("waiting for {name}/{still} to step down before promoting");
        } else {
            let mut choice = None;
            if let Some(sw) = next.switchover.take() {
                match status.get(&sw.to).filter(|s| style(app.ha).fit(s)) {
                    Some(s) => {
                        choice = Some((
                            sw.to.clone(),
                            s,
                            format!("planned switchover (intent {})", sw.intent),
                        ));
                        intent_state = Some(IntentState::Done {
                            message: format!("{name}/{} is primary", sw.to),
                        });
                    }
                    None => {
                        let why = unfit(app, &sw.to, status.get(&sw.to))
                            .unwrap_or_else(|| "not eligible".into());
                        intent_state = Some(IntentState::Refused {
                            reason: format!(
                                "switchover target {name}/{} became unfit ({why}); promoted the best other instance instead",
                                sw.to
                            ),
                        });
                    }
                }
            }
            if choice.is_none() {
                // Why a promotion is needed: a failure seen now, else the
                // withdrawal decided earlier, else there was no primary.
                let cause = failure.clone().unwrap_or_else(|| {
                    if input.roles.stepping_down.is_some() || input.roles.switchover.is_some() {
                        input.roles.reason.clone()
                    } else {
                        format!("{name} had no primary")
                    }
                });
                // Prefer anyone over the holder that just failed or was
                // withdrawn (now, or in an earlier decision).
                let avoid = failed_holder.clone().or_else(|| {
                    input
                        .roles
                        .stepping_down
                        .as_ref()
                        .map(|sd| sd.grant.instance.clone())
                });
                choice = best_candidate(app, status, None, avoid.as_deref())
                    .map(|(id, s)| (id.to_string(), s, cause));
            }
            match choice {
                Some((id, s, cause)) => {
                    let epoch = next.epoch + 1;
                    next.epoch = epoch;
                    next.primary = Some(grant_for(app, &id, s, epoch));
                    next.reason = if style(app.ha) == Style::OnGrant {
                        format!("starting {name}/{id} as primary (epoch {epoch}): {cause}")
                    } else {
                        format!("promoted {name}/{id} (epoch {epoch}): {cause}")
                    };
                    events.push(
                        EventDraft::instance(EventKind::Promoted, name, &id, &next.reason)
                            .with_epoch(epoch),
                    );
                }
                None => {
                    next.reason = format!("no instance of {name} is fit to be primary");
                    if input.roles.primary.is_some() || input.roles.switchover.is_some() {
                        let detail = app
                            .instances
                            .iter()
                            .map(|i| {
                                let why = unfit(app, &i.id, status.get(&i.id))
                                    .unwrap_or_else(|| "fit".into());
                                format!("{}: {why}", i.id)
                            })
                            .collect::<Vec<_>>()
                            .join("; ");
                        events.push(EventDraft::app(
                            EventKind::NoCandidate,
                            name,
                            format!("{} ({detail})", next.reason),
                        ));
                    }
                }
            }
        }
    }

    // 4. Every other instance has the mode's non-primary role.
    let primary = next.primary.as_ref().map(|g| g.instance.clone());
    let other = default_role(app.ha);
    next.roles = app
        .instances
        .iter()
        .map(|i| {
            let role = if Some(&i.id) == primary.as_ref() {
                Role::Primary
            } else {
                other
            };
            (i.id.clone(), role)
        })
        .collect();

    let mut d = Decision::new(input.roles, next);
    d.events = events;
    d.intent = intent_state;
    d.settle(input.roles)
}

/// Checks a switchover request; returns (current primary, target).
fn plan_switchover(
    app: &App,
    roles: &AppRoles,
    status: &BTreeMap<String, InstanceStatus>,
    to: Option<&str>,
) -> Result<(String, String), String> {
    let name = &app.name;
    if roles.switchover.is_some() {
        return Err(format!("a switchover of {name} is already in progress"));
    }
    let Some(grant) = &roles.primary else {
        return Err(format!(
            "{name} has no primary to switch over from; it will fail over by itself when an instance is fit"
        ));
    };
    let from = grant.instance.clone();
    let target = match to {
        Some(t) => {
            if app.instance(t).is_none() {
                let known: Vec<&str> = app.instances.iter().map(|i| i.id.as_str()).collect();
                return Err(format!(
                    "{name} has no instance \"{t}\" (instances: {})",
                    known.join(", ")
                ));
            }
            if t == from {
                return Err(format!("{name}/{t} is already the primary"));
            }
            if let Some(why) = unfit(app, t, status.get(t)) {
                return Err(format!("target {name}/{t} is not fit to be primary: {why}"));
            }
            t.to_string()
        }
        None => match best_candidate(app, status, Some(&from), None) {
            Some((id, _)) => id.to_string(),
            None => {
                return Err(format!("{name} has no fit instance to switch over to"));
            }
        },
    };
    Ok((from, target))
}

/// Events an operator wants to see when an instance's status changes
/// (`old`/`new` of `None`: no status, i.e. the host's lease is gone).
pub fn status_events(
    app: &str,
    instance: &str,
    old: Option<&InstanceStatus>,
    new: Option<&InstanceStatus>,
) -> Vec<EventDraft> {
    let mut out = Vec::new();
    let ev = |kind, msg: String| EventDraft::instance(kind, app, instance, msg);
    match (old, new) {
        (Some(o), None) => out.push(ev(
            EventKind::Host,
            format!(
                "{app}/{instance}: status gone with host {}'s lease (host lost or agent stopped)",
                o.host
            ),
        )),
        (None, Some(_)) | (None, None) => {}
        (Some(o), Some(n)) => {
            if o.incarnation != n.incarnation && n.process == ProcessState::Running {
                out.push(ev(
                    EventKind::InstanceStarted,
                    format!(
                        "{app}/{instance} started (pid {}, start #{})",
                        n.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                        n.incarnation
                    ),
                ));
            }
            if o.process == ProcessState::Running && n.process != ProcessState::Running {
                out.push(ev(
                    EventKind::InstanceExited,
                    format!(
                        "{app}/{instance} {}",
                        n.last_exit.as_deref().unwrap_or("stopped")
                    ),
                ));
            }
            if n.crash_looping && !o.crash_looping {
                out.push(ev(
                    EventKind::CrashLoop,
                    format!(
                        "{app}/{instance} is crash-looping ({} restarts): it will not be promoted until it runs stably",
                        n.restarts
                    ),
                ));
            }
            if o.health != n.health && n.process == ProcessState::Running {
                let detail = n
                    .health_detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                out.push(ev(
                    EventKind::HealthChanged,
                    format!("{app}/{instance} is {}{detail}", n.health),
                ));
            }
            if n.acting == Role::Fenced && o.acting != Role::Fenced {
                out.push(ev(
                    EventKind::Demoted,
                    format!(
                        "{app}/{instance} did not confirm it stepped down and is frozen: fenced (epoch {})",
                        n.acting_epoch
                    ),
                ));
            }
        }
    }
    out
}
