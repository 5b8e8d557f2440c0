//! `n-plus-1`: keep `replicas` instances active on live hosts (not on a
//! failed site's); the others wait stopped.

use std::collections::BTreeMap;

use super::{AppInput, Decision, HostsState, assign_roles, pending};
use crate::model::{EventDraft, EventKind, InstanceStatus, IntentState, Role};
use crate::topology::App;

/// Decides which instances are active.
pub(super) fn decide_n_plus_1(input: &AppInput<'_>) -> Decision {
    let app = input.app;
    let name = &app.name;
    let mut events = Vec::new();
    let active_before: Vec<&str> = app
        .instances
        .iter()
        .filter(|i| input.roles.roles.get(&i.id) == Some(&Role::Active))
        .map(|i| i.id.as_str())
        .collect();
    let mut keep = still_active(app, input.hosts, input.status, &active_before, &mut events);
    let want = app.replicas as usize;
    // Too many (fewer replicas declared): drop the lowest priority.
    by_priority(app, &mut keep);
    keep.truncate(want);
    // Too few: add the best instances on live hosts.
    let announce = !active_before.is_empty() || input.roles.generation > 0;
    add_spares(
        app,
        input.hosts,
        input.status,
        &mut keep,
        want,
        announce,
        &mut events,
    );
    let mut next = input.roles.clone();
    next.primary = None;
    next.stepping_down = None;
    next.switchover = None;
    let role_of = |id: &str| {
        if keep.contains(&id) {
            Role::Active
        } else {
            Role::Standby
        }
    };
    assign_roles(&mut next.roles, app, role_of);
    let mut d = Decision::new(input.roles, next);
    if d.changed {
        d.roles.reason = reason(name, &keep, want);
    }
    d.events = events;
    if pending(input.intent).is_some() {
        d.intent = Some(IntentState::Refused {
            reason: format!("app \"{name}\" is n-plus-1: it has no primary to switch over"),
        });
    }
    d.settle(input.roles)
}

/// The active instances that stay active: those whose host lives and that
/// are not crash-looping. The others are replaced, with an event each.
fn still_active<'a>(
    app: &App,
    hosts: &HostsState,
    status: &BTreeMap<String, InstanceStatus>,
    active: &[&'a str],
    events: &mut Vec<EventDraft>,
) -> Vec<&'a str> {
    let name = &app.name;
    let mut keep = Vec::new();
    for id in active {
        let barred = app.instance(id).and_then(|i| hosts.barred(app, &i.host));
        if let Some(why) = barred {
            events.push(
                EventDraft::instance(
                    EventKind::Site,
                    name,
                    id,
                    format!("{name}/{id} is {why}: replacing it"),
                )
                .with_reason(why.name()),
            );
            continue;
        }
        match status.get(*id) {
            Some(s) if !s.crash_looping => keep.push(*id),
            Some(_) => events.push(
                EventDraft::instance(
                    EventKind::CrashLoop,
                    name,
                    id,
                    format!("{name}/{id} is crash-looping: replacing it"),
                )
                .with_reason("crash_looping"),
            ),
            None => events.push(
                EventDraft::instance(
                    EventKind::Host,
                    name,
                    id,
                    format!("{name}/{id}'s host is lost: replacing it"),
                )
                .with_reason("host_lost"),
            ),
        }
    }
    keep
}

/// Makes the best spares on live hosts active until `want` are; with an
/// event each if `announce` (not the app's first assignment).
fn add_spares<'a>(
    app: &'a App,
    hosts: &HostsState,
    status: &BTreeMap<String, InstanceStatus>,
    keep: &mut Vec<&'a str>,
    want: usize,
    announce: bool,
    events: &mut Vec<EventDraft>,
) {
    let name = &app.name;
    let mut spares: Vec<&str> = app
        .instances
        .iter()
        .map(|i| i.id.as_str())
        .filter(|id| !keep.contains(id))
        .filter(|id| {
            app.instance(id)
                .is_some_and(|i| hosts.barred(app, &i.host).is_none())
        })
        .filter(|id| status.get(*id).is_some_and(|s| !s.crash_looping))
        .collect();
    by_priority(app, &mut spares);
    for id in spares {
        if keep.len() >= want {
            break;
        }
        keep.push(id);
        if announce {
            events.push(
                EventDraft::instance(
                    EventKind::InstanceStarted,
                    name,
                    id,
                    format!("{name}/{id} made active to keep {want} replica(s)"),
                )
                .with_reason("made_active"),
            );
        }
    }
}

/// Sorts instance ids by priority, highest first, then by id.
fn by_priority(app: &App, ids: &mut [&str]) {
    let prio = |id: &str| app.instance(id).map_or(i64::MIN, |i| i.priority);
    ids.sort_by(|a, b| prio(b).cmp(&prio(a)).then_with(|| a.cmp(b)));
}

/// Why the active set is what it is.
fn reason(name: &str, keep: &[&str], want: usize) -> String {
    let mut active: Vec<&str> = keep.to_vec();
    active.sort();
    if keep.len() < want {
        format!(
            "{name}: only {} of {want} replica(s) can run (active: {})",
            keep.len(),
            active.join(", ")
        )
    } else {
        format!("{name}: {want} replica(s) active: {}", active.join(", "))
    }
}
