//! Step 2b: a link-driven switchover. A warm- or hot-standby primary that
//! has lost a required link for the app's hold-down, while a fit backup
//! has had every one of its required links up for the hold-down, is
//! switched over to that
//! backup through the planned-switchover path (drained if the app drains,
//! demoted first: never two primaries). At most one link-driven switchover
//! of an app begins per `link_switchover_interval`, by the wall clock
//! stored with the roles, whichever controller decides. When nobody fit
//! has the link, nothing moves and the event says why, once.

use std::time::Duration;

use super::Pass;
use crate::controller::{LinkLoss, Style, pending, style};
use crate::model::{EventDraft, EventKind};
use crate::topology::HaMode;

impl Pass<'_, '_> {
    /// Starts a link-driven switchover if the primary lost a required link
    /// that a fit backup has; otherwise records why nothing moves.
    pub(super) fn link_switchover(&mut self) {
        let input = self.input;
        let app = input.app;
        let policy = app.link_failover;
        if !policy.enabled || !matches!(app.ha, HaMode::WarmStandby | HaMode::HotStandby) {
            return;
        }
        let Some(grant) = self.next.primary.clone() else {
            return;
        };
        if self.next.switchover.is_some()
            || self.next.stepping_down.is_some()
            || self.intent.is_some()
            || pending(input.intent).is_some()
        {
            return;
        }
        let serving = input
            .status
            .get(&grant.instance)
            .is_some_and(|s| s.has_acknowledged(&grant));
        let lost: Vec<(&String, &LinkLoss)> = input
            .links
            .down
            .get(&grant.instance)
            .map(|d| {
                d.iter()
                    .filter(|(_, l)| l.lost_for >= policy.hold_down)
                    .collect()
            })
            .unwrap_or_default();
        if !serving || lost.is_empty() {
            self.next.link_held = None;
            return;
        }
        let name = app.name.as_str();
        let from = grant.instance.as_str();
        let what = lost
            .iter()
            .map(|(link, loss)| format!("{link} for {} ({})", seconds(loss.lost_for), loss.detail))
            .collect::<Vec<_>>()
            .join(", ");
        let its = if lost.len() == 1 {
            "its link"
        } else {
            "its links"
        };
        let lost_what = format!("{name}/{from} lost {its} {what}");
        // A backup has a link once it has had it for the hold-down too: a
        // link coming back everywhere at once moves nothing.
        let has_them = |id: &str| {
            let up = input.links.up.get(id);
            lost.iter().all(|(link, _)| {
                up.and_then(|u| u.get(*link))
                    .is_some_and(|up_for| *up_for >= policy.hold_down)
            }) && input.links.down.get(id).is_none_or(|d| d.is_empty())
        };
        let fit = style(app.ha);
        let target = app
            .instances
            .iter()
            .filter(|i| i.id != from && has_them(&i.id))
            .filter(|i| {
                input
                    .status
                    .get(&i.id)
                    .is_some_and(|s| fit.fit(s) && !s.crash_looping)
            })
            .max_by(|a, b| a.priority.cmp(&b.priority).then_with(|| b.id.cmp(&a.id)));
        let Some(target) = target else {
            let everyone = app.instances.iter().filter(|i| i.id != from).all(|i| {
                let down = input.links.down.get(&i.id);
                lost.iter()
                    .any(|(link, _)| down.is_some_and(|d| d.contains_key(*link)))
            });
            let why = if everyone {
                format!("every instance of {name} has lost it too")
            } else {
                format!(
                    "no fit backup of {name} has had it for the hold-down ({})",
                    seconds(policy.hold_down)
                )
            };
            let key = format!(
                "{from} lost {}; {}",
                names(&lost),
                if everyone { "everyone" } else { "nobody fit" }
            );
            self.hold(key, format!("{lost_what}; {why}: nothing moves"));
            return;
        };
        if let Some(at) = input.roles.link_switched_at_ms {
            let since = Duration::from_millis(input.links.now_ms.saturating_sub(at));
            if since < policy.interval {
                let key = format!("{from} lost {}; interval", names(&lost));
                self.hold(key, format!(
                    "{lost_what}; {name}/{} has it, but the last link-driven switchover of {name} began {} ago (at least {} apart): nothing moves yet",
                    target.id,
                    seconds(since),
                    seconds(policy.interval)
                ));
                return;
            }
        }
        debug_assert!(matches!(fit, Style::Hooked));
        let why = format!("primary {lost_what}; {name}/{} has it", target.id);
        self.next.link_held = None;
        self.next.link_switched_at_ms = Some(input.links.now_ms);
        let target = target.id.clone();
        self.start_switchover(
            from,
            &target,
            String::new(),
            Some(why.clone()),
            &format!("link-driven switchover: {why}"),
        );
    }

    /// Nothing moves for the primary's lost link: says so (`sentence`)
    /// once per `key` (who lost which links, and why nothing moves).
    fn hold(&mut self, key: String, sentence: String) {
        if self.next.link_held.as_deref() == Some(key.as_str()) {
            return;
        }
        let app = self.input.app.name.as_str();
        let from = self
            .next
            .primary
            .as_ref()
            .map(|g| g.instance.clone())
            .unwrap_or_default();
        self.events.push(
            EventDraft::instance(EventKind::Link, app, &from, &sentence).with_reason("link_held"),
        );
        self.next.link_held = Some(key);
    }
}

/// The names of the lost links, for [`Pass::hold`]'s key.
fn names(lost: &[(&String, &LinkLoss)]) -> String {
    lost.iter()
        .map(|(l, _)| l.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A duration as an operator reads it: "1.2 s", "45 s", "350 ms".
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 10_000 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} s", d.as_secs())
    }
}
