//! The controller's view of links, timed by its own clock: which required
//! links each instance has lost and for how long, fed to the pure decision
//! ([`AppLinks`], with the wall clock), and when an app must be decided
//! again because a link's hold-down, the link switchover interval or a
//! drain's limit runs out with nothing else changing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tandem_core::controller::{AppLinks, LinkLoss};
use tandem_core::links::judge_required;
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
        for inst in &app.instances {
            let status = statuses.and_then(|s| s.get(&inst.id));
            for (link, judged) in judge_required(topology, &app.name, status, &roles_of) {
                let key = (app.name.clone(), inst.id.clone(), link.clone());
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
                        link,
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
                        .insert(link, held_for);
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
            // Only while the interval still runs: once it has passed, the
            // decision just made already saw it (a loss held for another
            // reason waits for a change, not for a timer).
            if roles.link_held.is_some()
                && let Some(at) = roles.link_switched_at_ms
            {
                // A clock set back counts as no time passed.
                let since = Duration::from_millis(links.now_ms.saturating_sub(at));
                if since < policy.interval {
                    consider(policy.interval - since);
                }
            }
        }
        // A drain whose report is not yet overdue is decided at its limit.
        if let Some(drain) = roles.switchover.as_ref().and_then(|sw| sw.drain.as_ref())
            && let Some(at) = drain.asked_at_ms
        {
            let due = at.saturating_add(drain.limit_ms());
            if due > links.now_ms {
                consider(Duration::from_millis(due - links.now_ms));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::controller::AppLinks;
    use tandem_core::model::PrimaryGrant;

    fn app() -> App {
        let text = r#"
[[sites]]
name = "dc1"
[[hosts]]
name = "h1"
site = "dc1"
address = "10.0.0.1"
[apps.web]
ha = "warm-standby"
command = ["run"]
link_hold_down = "1s"
link_switchover_interval = "60s"
[apps.web.hook]
kind = "command"
command = ["true"]
[[apps.web.instances]]
id = "a"
host = "h1"
[[apps.web.instances]]
id = "b"
host = "h1"
"#;
        tandem_core::topology::parse("t.toml", text)
            .expect("parses")
            .app("web")
            .expect("web")
            .clone()
    }

    fn held(lost_for: Duration, now_ms: u64, switched_at: u64) -> (AppLinks, AppRoles) {
        let links = AppLinks {
            down: BTreeMap::from([(
                "a".to_string(),
                BTreeMap::from([(
                    "acd".to_string(),
                    LinkLoss {
                        lost_for,
                        detail: "refused".into(),
                    },
                )]),
            )]),
            now_ms,
            ..AppLinks::default()
        };
        let roles = AppRoles {
            primary: Some(PrimaryGrant {
                instance: "a".into(),
                epoch: 1,
                incarnation: 1,
                session: 1,
            }),
            link_held: Some("a lost acd; everyone".into()),
            link_switched_at_ms: Some(switched_at),
            ..AppRoles::default()
        };
        (links, roles)
    }

    #[test]
    fn a_held_loss_wakes_the_controller_only_while_a_timer_still_runs() {
        let app = app();
        let now = Instant::now();
        let mut clock = LinkClock::default();
        // Within the hold-down: wake when it ends.
        let (links, roles) = held(Duration::from_millis(400), 100_000, 1);
        clock.plan(&app, &links, &roles, now);
        assert_eq!(clock.next_wake(), Some(now + Duration::from_millis(600)));
        // Past the hold-down, within the interval: wake when it ends.
        let (links, roles) = held(Duration::from_secs(5), 100_000, 70_000);
        clock.plan(&app, &links, &roles, now);
        assert_eq!(clock.next_wake(), Some(now + Duration::from_secs(30)));
        // Past both: the decision already saw it; no timer (a held loss
        // waits for a change, it does not spin).
        let (links, roles) = held(Duration::from_secs(5), 100_000, 1);
        clock.plan(&app, &links, &roles, now);
        assert_eq!(clock.next_wake(), None);
    }
}
