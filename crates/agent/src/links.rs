//! The controller's view of links, timed by its own clock: which required
//! links each instance has lost and for how long, fed to the pure decision
//! ([`AppLinks`], with the wall clock), and when an app must be decided
//! again because a link's hold-down, the link switchover interval or a
//! drain's limit runs out with nothing else changing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tandem_core::controller::{AppLinks, LinkLoss};
use tandem_core::links::judge;
use tandem_core::model::{AppRoles, InstanceStatus, Reach};
use tandem_core::topology::{App, Topology};
use tokio::time::Instant;

/// Since when each required link has been judged down, per (app,
/// instance, link); and when each app must be decided again.
#[derive(Debug, Default)]
pub(crate) struct LinkClock {
    /// Per (app, instance, link): its judged state, and since when.
    since: HashMap<(String, String, String), (Reach, Instant)>,
    wake: BTreeMap<String, Instant>,
}

impl LinkClock {
    /// `app`'s required links as judged now: lost ones timed from when
    /// this clock first saw them down.
    pub(crate) fn judge<'r>(
        &mut self,
        topology: &Topology,
        app: &App,
        statuses: Option<&BTreeMap<String, InstanceStatus>>,
        roles_of: impl Fn(&str) -> Option<&'r AppRoles>,
        now: Instant,
        now_ms: u64,
    ) -> AppLinks {
        let mut links = AppLinks {
            now_ms,
            ..AppLinks::default()
        };
        for link in topology
            .links_from(&app.name)
            .filter(|l| l.cardinality.is_required())
        {
            for inst in &app.instances {
                let status = statuses.and_then(|s| s.get(&inst.id));
                let judged = judge(topology, link, status, roles_of(&link.to));
                let key = (app.name.clone(), inst.id.clone(), link.name.clone());
                if judged.state == Reach::Unknown {
                    self.since.remove(&key);
                    continue;
                }
                let entry = self.since.entry(key).or_insert((judged.state, now));
                if entry.0 != judged.state {
                    *entry = (judged.state, now);
                }
                let held_for = now.saturating_duration_since(entry.1);
                if judged.state == Reach::Down {
                    links.down.entry(inst.id.clone()).or_default().insert(
                        link.name.clone(),
                        LinkLoss {
                            lost_for: held_for,
                            detail: judged.detail,
                        },
                    );
                } else {
                    links
                        .up
                        .entry(inst.id.clone())
                        .or_default()
                        .insert(link.name.clone(), held_for);
                }
            }
        }
        links
    }

    /// After deciding `app` into `roles` from `links`: when to decide it
    /// again if nothing changes (a primary's lost link reaching its
    /// hold-down, or the interval since the last link-driven switchover
    /// running out while a loss is held).
    pub(crate) fn plan(&mut self, app: &App, links: &AppLinks, roles: &AppRoles, now: Instant) {
        let policy = app.link_failover;
        let mut next: Option<Duration> = None;
        let mut consider = |d: Duration| next = Some(next.map_or(d, |n| n.min(d)));
        if policy.enabled
            && let Some(grant) = &roles.primary
            && let Some(lost) = links.down.get(&grant.instance)
        {
            for (link, loss) in lost {
                if loss.lost_for < policy.hold_down {
                    consider(policy.hold_down - loss.lost_for);
                }
                // A backup that has had the link for less than the
                // hold-down counts once it has had it long enough.
                for up in links.up.values() {
                    if let Some(up_for) = up.get(link)
                        && *up_for < policy.hold_down
                    {
                        consider(policy.hold_down - *up_for);
                    }
                }
            }
            if roles.link_held.is_some()
                && let Some(at) = roles.link_switched_at_ms
            {
                let since = Duration::from_millis(links.now_ms.saturating_sub(at));
                // A clock set back counts as no time passed: check again
                // after a whole interval at worst.
                consider(
                    policy
                        .interval
                        .saturating_sub(since)
                        .max(Duration::from_millis(10)),
                );
            }
        }
        // A drain whose report is overdue is decided at its limit.
        if let Some(drain) = roles.switchover.as_ref().and_then(|sw| sw.drain.as_ref())
            && let Some(at) = drain.asked_at_ms
        {
            let due = at.saturating_add(drain.limit_ms());
            consider(Duration::from_millis(
                due.saturating_sub(links.now_ms).max(10),
            ));
        }
        match next {
            Some(d) => {
                self.wake.insert(app.name.clone(), now + d);
            }
            None => {
                self.wake.remove(&app.name);
            }
        }
    }

    /// The earliest time an app must be decided again, if any.
    pub(crate) fn next_wake(&self) -> Option<Instant> {
        self.wake.values().min().copied()
    }

    /// The apps due to be decided again at `now` (forgotten here).
    pub(crate) fn due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .wake
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(a, _)| a.clone())
            .collect();
        for a in &due {
            self.wake.remove(a);
        }
        due
    }
}
