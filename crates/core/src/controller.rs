//! The controller's decision function: observed state + intents → desired
//! roles, with the reason for every change.
//!
//! [`decide`] is pure. The controller runtime calls it for an app whenever
//! that app's statuses, role assignment or intent change, writes the
//! returned [`AppRoles`] by compare-and-swap together with the events, and
//! agents carry the roles out.
//!
//! # Safety rules enforced here
//!
//! - At most one grant per app ([`AppRoles::primary`]), and a new grant is
//!   made only when **no other instance may still act as primary**: every
//!   other instance has acknowledged a non-primary role, or its process is
//!   not running, or its host's lease has expired (its agent fenced it
//!   before that could happen). A crashed primary is replaced at once; a
//!   live one (unhealthy, or being switched over) is told to step down
//!   first and replaced once it has.
//! - Every grant carries `epoch = previous epoch + 1`: epochs strictly
//!   increase.
//! - A grant names the incarnation (process start) it was made for; a
//!   restarted process is never primary by an old grant.
//! - Only a running, healthy, non-crash-looping instance is granted.

use std::collections::BTreeMap;

use crate::model::{
    AppRoles, EventDraft, EventKind, Health, InstanceStatus, Intent, IntentKind, IntentState,
    PendingSwitchover, PrimaryGrant, ProcessState, Role, SteppingDown,
};
use crate::topology::{App, HaMode};

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

/// The role an instance of an app in `ha` mode has when it is not primary.
pub fn default_role(ha: HaMode) -> Role {
    match ha {
        HaMode::WarmStandby | HaMode::HotStandby => Role::Backup,
        HaMode::ColdStandby => Role::Standby,
        HaMode::NPlus1 | HaMode::None | HaMode::Singleton => Role::Active,
        HaMode::Pool => Role::Free,
    }
}

/// Decides the roles of one app.
pub fn decide(input: &AppInput<'_>) -> Decision {
    match input.app.ha {
        HaMode::WarmStandby => decide_warm_standby(input),
        _ => decide_static(input),
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
}

fn same_assignment(a: &AppRoles, b: &AppRoles) -> bool {
    a.epoch == b.epoch
        && a.primary == b.primary
        && a.roles == b.roles
        && a.switchover == b.switchover
        && a.stepping_down == b.stepping_down
}

/// Why an instance cannot keep (or take) the primary role, if it cannot.
fn unfit(app: &App, id: &str, status: Option<&InstanceStatus>) -> Option<String> {
    let Some(s) = status else {
        let host = app.instance(id).map(|i| i.host.as_str()).unwrap_or("?");
        return Some(format!("host {host} lost (no status: its lease expired)"));
    };
    match s.process {
        ProcessState::Running => {}
        ProcessState::Backoff | ProcessState::Stopped | ProcessState::Pending => {
            return Some(match &s.last_exit {
                Some(how) => format!("not running: {how}"),
                None => "not running".to_string(),
            });
        }
    }
    if s.crash_looping {
        return Some("crash-looping".to_string());
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

/// The best instance to promote: eligible, highest priority, then lowest id.
fn best_candidate<'a>(
    app: &'a App,
    status: &'a BTreeMap<String, InstanceStatus>,
    exclude: Option<&str>,
) -> Option<(&'a str, &'a InstanceStatus)> {
    app.instances
        .iter()
        .filter(|i| Some(i.id.as_str()) != exclude)
        .filter_map(|i| {
            let s = status.get(&i.id)?;
            s.eligible().then_some((i, s))
        })
        .max_by(|(a, _), (b, _)| a.priority.cmp(&b.priority).then_with(|| b.id.cmp(&a.id)))
        .map(|(i, s)| (i.id.as_str(), s))
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

fn decide_warm_standby(input: &AppInput<'_>) -> Decision {
    let app = input.app;
    let name = app.name.as_str();
    let status = input.status;
    let mut next = input.roles.clone();
    let mut events = Vec::new();
    let mut intent_state = None;

    // Instances that left the topology lose their entries.
    next.roles.retain(|id, _| app.instance(id).is_some());

    let mut failure: Option<String> = None;

    // 1. Is the current grant still good?
    if let Some(grant) = next.primary.clone() {
        let s = status.get(&grant.instance);
        let why = if app.instance(&grant.instance).is_none() {
            Some("removed from the topology".to_string())
        } else {
            match s {
                Some(s) if s.session != grant.session => Some(format!(
                    "its agent's session ended (lease {} replaced by {})",
                    grant.session, s.session
                )),
                Some(s) if s.incarnation != grant.incarnation => Some(format!(
                    "restarted since it was granted (incarnation {} → {})",
                    grant.incarnation, s.incarnation
                )),
                Some(s) if s.process == ProcessState::Running && s.health != Health::Unhealthy => {
                    None
                }
                _ => unfit(app, &grant.instance, s),
            }
        };
        if let Some(why) = why {
            withdraw(input.roles, &mut next);
            next.reason = format!("primary {name}/{} failed: {why}", grant.instance);
            failure = Some(next.reason.clone());
            events.push(
                EventDraft::instance(
                    EventKind::PrimaryFailed,
                    name,
                    &grant.instance,
                    &next.reason,
                )
                .with_epoch(grant.epoch),
            );
            if let Some(sw) = next.switchover.take() {
                // A failure during a switchover: fall back to plain failover.
                if input.intent.is_some_and(|i| i.id == sw.intent) {
                    intent_state = Some(IntentState::Refused {
                        reason: format!(
                            "switchover interrupted: primary {name}/{} failed: {why}",
                            grant.instance
                        ),
                    });
                }
            }
        }
    }

    // 2. A planned switchover asked by an operator.
    if let Some(intent) = pending(input.intent) {
        let IntentKind::Switchover { to } = &intent.kind;
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
                    .find(|i| status.get(&i.id).is_some_and(|s| s.may_act_as_primary()))
                    .map(|i| i.id.as_str())
            });
        if let Some(still) = still {
            next.reason = format!("waiting for {name}/{still} to step down before promoting");
        } else {
            let mut choice = None;
            if let Some(sw) = next.switchover.take() {
                match status.get(&sw.to).filter(|s| s.eligible()) {
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
                choice =
                    best_candidate(app, status, None).map(|(id, s)| (id.to_string(), s, cause));
            }
            match choice {
                Some((id, s, cause)) => {
                    let epoch = next.epoch + 1;
                    next.epoch = epoch;
                    next.primary = Some(PrimaryGrant {
                        instance: id.clone(),
                        epoch,
                        incarnation: s.incarnation,
                        session: s.session,
                    });
                    next.reason = format!("promoted {name}/{id} (epoch {epoch}): {cause}");
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

    // 4. Every other instance is a backup.
    let primary = next.primary.as_ref().map(|g| g.instance.clone());
    next.roles = app
        .instances
        .iter()
        .map(|i| {
            let role = if Some(&i.id) == primary.as_ref() {
                Role::Primary
            } else {
                Role::Backup
            };
            (i.id.clone(), role)
        })
        .collect();

    let mut d = Decision::new(input.roles, next);
    d.events = events;
    d.intent = intent_state;
    if !d.changed && d.intent.is_none() {
        // Nothing to write: keep the stored reason, drop repeated events.
        d.roles.reason = input.roles.reason.clone();
        d.events.clear();
    }
    d
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
        None => match best_candidate(app, status, Some(&from)) {
            Some((id, _)) => id.to_string(),
            None => {
                return Err(format!("{name} has no healthy backup to switch over to"));
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
