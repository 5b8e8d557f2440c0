//! Events an operator wants to see when an instance's status changes.

use crate::model::{EventDraft, EventKind, InstanceStatus, ProcessState, Role};

/// Events an operator wants to see when an instance's status changes
/// (`old`/`new` of `None`: no status, i.e. the host's lease is gone).
pub fn status_events(
    app: &str,
    instance: &str,
    old: Option<&InstanceStatus>,
    new: Option<&InstanceStatus>,
) -> Vec<EventDraft> {
    match (old, new) {
        (Some(o), None) => vec![EventDraft::instance(
            EventKind::Host,
            app,
            instance,
            format!(
                "{app}/{instance}: status gone with host {}'s lease (host lost or agent stopped)",
                o.host
            ),
        )],
        (None, Some(_)) | (None, None) => Vec::new(),
        (Some(o), Some(n)) => changes(app, instance, o, n),
    }
}

/// What changed between two statuses of a running agent.
fn changes(app: &str, instance: &str, o: &InstanceStatus, n: &InstanceStatus) -> Vec<EventDraft> {
    let mut out = Vec::new();
    let mut ev = |kind, msg: String| out.push(EventDraft::instance(kind, app, instance, msg));
    if o.incarnation != n.incarnation && n.process == ProcessState::Running {
        let pid = n.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        ev(
            EventKind::InstanceStarted,
            format!(
                "{app}/{instance} started (pid {pid}, start #{})",
                n.incarnation
            ),
        );
    }
    if o.process == ProcessState::Running && n.process != ProcessState::Running {
        let how = n.last_exit.as_deref().unwrap_or("stopped");
        ev(EventKind::InstanceExited, format!("{app}/{instance} {how}"));
    }
    if n.crash_looping && !o.crash_looping {
        ev(
            EventKind::CrashLoop,
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
            format!("{app}/{instance} is {}{detail}", n.health),
        );
    }
    if n.acting == Role::Fenced && o.acting != Role::Fenced {
        ev(
            EventKind::Demoted,
            format!(
                "{app}/{instance} did not confirm it stepped down and is frozen: fenced (epoch {})",
                n.acting_epoch
            ),
        );
    }
    out
}
