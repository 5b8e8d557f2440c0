//! Events an operator wants to see when an instance's status changes.

use crate::model::{EventDraft, EventKind, InstanceStatus, ProcessState, Reach, Role};

/// Events an operator wants to see when an instance's status changes
/// (`old`/`new` of `None`: no status, i.e. the host's lease is gone), each
/// with its reason's name: `host_lost`, `started`, `by_tandem` (an exit
/// tandem asked for) or `crashed`, `crash_looping`, the new health, and
/// `fenced`.
pub fn status_events(
    app: &str,
    instance: &str,
    old: Option<&InstanceStatus>,
    new: Option<&InstanceStatus>,
) -> Vec<EventDraft> {
    status_events_with(app, instance, old, new, |_, _| false)
}

/// [`status_events`], without the link events of targets that are not
/// meant to run now (`resting(link, target)`: a cold standby or a
/// singleton's spare, stopped by design): their reachability changes are
/// no news.
pub fn status_events_with(
    app: &str,
    instance: &str,
    old: Option<&InstanceStatus>,
    new: Option<&InstanceStatus>,
    resting: impl Fn(&str, &str) -> bool,
) -> Vec<EventDraft> {
    match (old, new) {
        (Some(o), None) => vec![
            EventDraft::instance(
                EventKind::Host,
                app,
                instance,
                format!(
                    "{app}/{instance}: status gone with host {}'s lease (host lost or agent stopped)",
                    o.host
                ),
            )
            .with_reason("host_lost"),
        ],
        (None, Some(_)) | (None, None) => Vec::new(),
        (Some(o), Some(n)) => changes(app, instance, o, n, &resting),
    }
}

/// A link's target that became unreachable (from up or not yet known), or
/// reachable again after being down. A target that becomes unknown (the
/// process restarted) or is first seen up is no event.
fn link_events(
    app: &str,
    instance: &str,
    o: &InstanceStatus,
    n: &InstanceStatus,
    resting: &dyn Fn(&str, &str) -> bool,
) -> Vec<EventDraft> {
    let mut out = Vec::new();
    for (link, targets) in &n.links {
        for (target, now) in targets {
            if resting(link, target) {
                continue;
            }
            let old = o.links.get(link).and_then(|t| t.get(target));
            let was_expiring = old
                .and_then(|r| r.cert.as_ref())
                .is_some_and(|c| c.expiring);
            if let Some(cert) = now.cert.as_ref().filter(|c| c.expiring && !was_expiring) {
                out.push(
                    EventDraft::instance(
                        EventKind::Link,
                        app,
                        instance,
                        format!(
                            "{app}/{instance}: link {link} to {target}: its certificate expires soon (not after {})",
                            cert.not_after
                        ),
                    )
                    .with_reason("cert_expiring"),
                );
            }
            let before = old.map_or(Reach::Unknown, |r| r.state);
            let (reason, msg) = match (before, now.state) {
                (Reach::Up | Reach::Unknown, Reach::Down) => (
                    "link_down",
                    format!(
                        "{app}/{instance}: link {link} to {target} is down{}",
                        now.detail
                            .as_deref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                ),
                (Reach::Down, Reach::Up) => (
                    "link_up",
                    format!("{app}/{instance}: link {link} to {target} is up again"),
                ),
                _ => continue,
            };
            out.push(EventDraft::instance(EventKind::Link, app, instance, msg).with_reason(reason));
        }
    }
    out
}

/// The active link of an exclusive group that changed: enabled, moved, or
/// disabled while the same process runs (an exit says the rest).
fn active_link_events(
    app: &str,
    instance: &str,
    o: &InstanceStatus,
    n: &InstanceStatus,
) -> Vec<EventDraft> {
    let same_process = o.incarnation == n.incarnation && n.process == ProcessState::Running;
    let groups: std::collections::BTreeSet<&String> =
        o.active_links.keys().chain(n.active_links.keys()).collect();
    let mut out = Vec::new();
    for group in groups {
        let before = o.active_links.get(group).filter(|_| same_process);
        let (reason, msg) = match (before, n.active_links.get(group)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => (
                "link_switched",
                format!("{app}/{instance}: exclusive group {group} now uses link {b} (was {a})"),
            ),
            (None, Some(b)) => (
                "link_enabled",
                format!("{app}/{instance}: enabled link {b} of exclusive group {group}"),
            ),
            (Some(a), None) => (
                "link_disabled",
                format!("{app}/{instance}: disabled link {a} of exclusive group {group}"),
            ),
            (None, None) => continue,
        };
        out.push(EventDraft::instance(EventKind::Link, app, instance, msg).with_reason(reason));
    }
    out
}

/// Admin-data mirroring that starts failing or recovers, from the
/// primary's side (one event per backup), or that cannot run on a host.
fn admin_events(
    app: &str,
    instance: &str,
    o: &InstanceStatus,
    n: &InstanceStatus,
) -> Vec<EventDraft> {
    let mut out = Vec::new();
    let mut ev = |reason: &'static str, msg: String| {
        out.push(
            EventDraft::instance(EventKind::AdminData, app, instance, msg).with_reason(reason),
        );
    };
    if let Some(err) = n
        .admin
        .error
        .as_ref()
        .filter(|e| o.admin.error.as_ref() != Some(*e))
    {
        ev(
            "admin_error",
            format!("{app}/{instance}: admin data cannot be mirrored: {err}"),
        );
    }
    let Some(src) = &n.admin.source else {
        return out;
    };
    let before = o.admin.source.as_ref().filter(|s| s.epoch == src.epoch);
    for (to, b) in &src.backups {
        let was = before.and_then(|s| s.backups.get(to));
        match (&b.last_error, was.and_then(|w| w.last_error.as_ref())) {
            (Some(e), None) => ev(
                "admin_failing",
                format!("{app}/{instance}: admin data to {app}/{to} is failing: {e}"),
            ),
            (None, Some(_)) => ev(
                "admin_in_sync",
                format!("{app}/{instance}: admin data to {app}/{to} goes through again"),
            ),
            _ => {}
        }
    }
    out
}

/// What changed between two statuses of a running agent.
fn changes(
    app: &str,
    instance: &str,
    o: &InstanceStatus,
    n: &InstanceStatus,
    resting: &dyn Fn(&str, &str) -> bool,
) -> Vec<EventDraft> {
    let mut out = link_events(app, instance, o, n, resting);
    out.extend(active_link_events(app, instance, o, n));
    out.extend(admin_events(app, instance, o, n));
    let mut ev = |kind, reason: &'static str, msg: String| {
        out.push(EventDraft::instance(kind, app, instance, msg).with_reason(reason));
    };
    if o.incarnation != n.incarnation && n.process == ProcessState::Running {
        let pid = n.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        ev(
            EventKind::InstanceStarted,
            "started",
            format!(
                "{app}/{instance} started (pid {pid}, start #{})",
                n.incarnation
            ),
        );
    }
    if o.process == ProcessState::Running && n.process != ProcessState::Running {
        let how = n.last_exit.as_deref().unwrap_or("stopped");
        let reason = if n.exit_by_tandem() {
            "by_tandem"
        } else {
            "crashed"
        };
        ev(
            EventKind::InstanceExited,
            reason,
            format!("{app}/{instance} {how}"),
        );
    }
    if n.crash_looping && !o.crash_looping {
        ev(
            EventKind::CrashLoop,
            "crash_looping",
            format!(
                "{app}/{instance} is crash-looping ({} restarts): it will not be promoted until it runs stably",
                n.restarts
            ),
        );
    }
    if o.health != n.health && n.process == ProcessState::Running {
        let detail = n
            .health_detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        ev(
            EventKind::HealthChanged,
            n.health.as_str(),
            format!("{app}/{instance} is {}{detail}", n.health),
        );
    }
    if n.acting == Role::Fenced && o.acting != Role::Fenced {
        ev(
            EventKind::Demoted,
            "fenced",
            format!(
                "{app}/{instance} did not confirm it stepped down and is frozen: fenced (epoch {})",
                n.acting_epoch
            ),
        );
    }
    out
}
