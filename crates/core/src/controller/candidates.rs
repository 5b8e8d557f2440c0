//! Who may hold or take an app's primary role: why an instance is unfit,
//! whether a grant still holds, the best candidate and the grant it gets.

use std::collections::BTreeMap;

use super::{HostsState, Style, Unfit, style};
use crate::model::{Health, InstanceStatus, PrimaryGrant, ProcessState};
use crate::topology::App;

/// Why an instance cannot keep or take the primary role, if it cannot.
pub(super) fn unfit(
    app: &App,
    hosts: &HostsState,
    id: &str,
    status: Option<&InstanceStatus>,
) -> Option<Unfit> {
    let host = app.instance(id).map(|i| i.host.as_str()).unwrap_or("?");
    let Some(s) = status else {
        return Some(hosts.absent(app, host));
    };
    if let Some(barred) = hosts.barred(app, host) {
        return Some(barred);
    }
    if style(app.ha) == Style::OnGrant {
        return s.process.is_live().then_some(Unfit::AlreadyRunning);
    }
    if s.crash_looping {
        return Some(Unfit::CrashLooping);
    }
    match s.process {
        ProcessState::Running => {}
        ProcessState::Starting => return Some(Unfit::Starting),
        ProcessState::Backoff | ProcessState::Stopped | ProcessState::Pending => {
            return Some(not_running(s));
        }
    }
    match s.health {
        Health::Healthy => None,
        Health::Unhealthy => Some(unhealthy(s)),
        Health::Unknown => Some(Unfit::HealthUnknown),
    }
}

/// Whether the holder of `grant` still holds it well; `Some(why)` if not.
pub(super) fn grant_broken(
    app: &App,
    hosts: &HostsState,
    grant: &PrimaryGrant,
    s: Option<&InstanceStatus>,
) -> Option<Unfit> {
    let Some(instance) = app.instance(&grant.instance) else {
        return Some(Unfit::RemovedFromTopology);
    };
    let Some(st) = s else {
        return unfit(app, hosts, &grant.instance, s);
    };
    if let Some(barred) = hosts.barred(app, &instance.host) {
        return Some(barred);
    }
    if st.session != grant.session {
        return Some(Unfit::SessionEnded {
            old: grant.session,
            new: st.session,
        });
    }
    match style(app.ha) {
        Style::OnGrant => on_grant_broken(grant, st),
        _ => running_grant_broken(grant, st),
    }
}

/// On-grant modes: the grant names the incarnation its agent starts next;
/// it holds while that one is about to start or runs, not unhealthy.
fn on_grant_broken(grant: &PrimaryGrant, st: &InstanceStatus) -> Option<Unfit> {
    let running = st.process.is_live();
    if st.incarnation + 1 == grant.incarnation && !running {
        // Its agent is about to start it (after its backoff).
        None
    } else if st.incarnation == grant.incarnation && running {
        (st.health == Health::Unhealthy).then(|| unhealthy(st))
    } else if st.incarnation == grant.incarnation {
        Some(not_running(st))
    } else {
        Some(restarted(grant, st))
    }
}

/// Hooked modes: the grant names the running incarnation; it holds while
/// that one runs, not unhealthy.
fn running_grant_broken(grant: &PrimaryGrant, st: &InstanceStatus) -> Option<Unfit> {
    if st.incarnation != grant.incarnation {
        Some(restarted(grant, st))
    } else if !st.process.is_live() {
        Some(not_running(st))
    } else if st.health == Health::Unhealthy {
        Some(unhealthy(st))
    } else {
        None
    }
}

fn restarted(grant: &PrimaryGrant, st: &InstanceStatus) -> Unfit {
    Unfit::Restarted {
        from: grant.incarnation,
        to: st.incarnation,
    }
}

fn not_running(s: &InstanceStatus) -> Unfit {
    Unfit::NotRunning {
        last_exit: s.last_exit.clone(),
    }
}

fn unhealthy(s: &InstanceStatus) -> Unfit {
    Unfit::Unhealthy {
        detail: s.health_detail.clone(),
    }
}

/// The grant `s` would get.
pub(super) fn grant_for(app: &App, id: &str, s: &InstanceStatus, epoch: u64) -> PrimaryGrant {
    PrimaryGrant {
        instance: id.to_string(),
        epoch,
        incarnation: style(app.ha).granted_incarnation(s),
        session: s.session,
    }
}

/// The best instance to promote: fit, not barred by its site
/// ([`HostsState::barred`]), not crash-looping, not the one that
/// just failed, with the most current admin data (apps with an
/// `admin_dir`), highest priority, then lowest id; failing that, the one
/// that just failed; failing that (on-grant modes: one must run), a
/// crash-looping one.
pub(super) fn best_candidate<'a>(
    app: &'a App,
    hosts: &HostsState,
    status: &'a BTreeMap<String, InstanceStatus>,
    exclude: Option<&str>,
    avoid: Option<&str>,
) -> Option<(&'a str, &'a InstanceStatus)> {
    let style = style(app.ha);
    let pick = |skip_avoided: bool, allow_looping: bool| {
        app.instances
            .iter()
            .filter(|i| Some(i.id.as_str()) != exclude)
            .filter(|i| hosts.barred(app, &i.host).is_none())
            .filter(|i| !skip_avoided || Some(i.id.as_str()) != avoid)
            .filter_map(|i| {
                let s = status.get(&i.id)?;
                (style.fit(s) && (allow_looping || !s.crash_looping)).then_some((i, s))
            })
            .max_by(|(a, sa), (b, sb)| {
                admin_key(sa)
                    .cmp(&admin_key(sb))
                    .then_with(|| a.priority.cmp(&b.priority))
                    .then_with(|| b.id.cmp(&a.id))
            })
            .map(|(i, s)| (i.id.as_str(), s))
    };
    pick(true, false)
        .or_else(|| pick(false, false))
        .or_else(|| pick(false, true))
}

/// How far an instance's admin data goes, for ordering candidates (none:
/// lowest, and equal for every instance of an app without admin data).
pub(super) fn admin_key(s: &InstanceStatus) -> Option<(u64, u64)> {
    s.admin.position().map(|p| p.key())
}

/// Why `s`'s admin data is behind the newest any instance of the app is
/// known to have, if it is ("applied seq 12 of epoch 3; cms/a had reached
/// seq 15").
pub(super) fn admin_behind(
    app: &App,
    status: &BTreeMap<String, InstanceStatus>,
    s: &InstanceStatus,
) -> Option<String> {
    let mine = admin_key(s).unwrap_or((0, 0));
    let (who, newest) = status
        .iter()
        .filter_map(|(id, st)| Some((id, st.admin.position()?)))
        .max_by_key(|(_, p)| p.key())?;
    (newest.key() > mine).then(|| {
        format!(
            "its admin data was behind: it holds seq {} of epoch {}, {}/{who} had reached seq {} of epoch {}",
            mine.1, mine.0, app.name, newest.seq, newest.epoch
        )
    })
}
