//! Step 2: a planned switchover asked by an operator.

use std::collections::BTreeMap;

use super::Pass;
use crate::controller::candidates::{best_candidate, unfit};
use crate::controller::{HostsState, pending};
use crate::model::{
    AppRoles, CauseName, Drain, EventDraft, EventKind, InstanceStatus, IntentKind, IntentState,
    PendingSwitchover, asked_by,
};
use crate::topology::App;

impl Pass<'_, '_> {
    /// Starts the switchover a pending intent asks for, or refuses it;
    /// moves a draining switchover on.
    ///
    /// Without a `drain` period the grant is withdrawn at once and the
    /// target recorded, to be promoted once the primary has stepped down.
    /// With one the primary keeps its grant and is asked to drain
    /// ([`Drain`]); once it reports it has drained, the grant is withdrawn
    /// and the switchover goes on as without. A target that becomes unfit
    /// meanwhile ends the switchover, refused, with the primary kept.
    pub(super) fn switchover(&mut self) {
        if self.next.primary.is_some()
            && self
                .next
                .switchover
                .as_ref()
                .is_some_and(|sw| sw.drain.is_some())
        {
            self.drained();
        }
        let input = self.input;
        let name = input.app.name.as_str();
        let Some(intent) = pending(input.intent) else {
            return;
        };
        let IntentKind::Switchover { to } = &intent.kind else {
            return;
        };
        match plan_switchover(
            input.app,
            input.hosts,
            &self.next,
            input.status,
            to.as_deref(),
        ) {
            Ok((from, target)) => {
                let by = asked_by(intent.by.as_deref());
                self.intent = Some(IntentState::Running);
                let at = self.events.len();
                self.start_switchover(
                    &from,
                    &target,
                    intent.id.clone(),
                    None,
                    &format!("switchover requested{by}"),
                );
                self.events.insert(
                    at,
                    EventDraft::instance(EventKind::Intent, name, &from, &self.next.reason)
                        .with_reason("running"),
                );
            }
            Err(reason) => {
                self.events.push(
                    EventDraft::app(
                        EventKind::Intent,
                        name,
                        format!(
                            "switchover refused{}: {reason}",
                            asked_by(intent.by.as_deref())
                        ),
                    )
                    .with_reason("refused"),
                );
                self.intent = Some(IntentState::Refused { reason });
            }
        }
    }

    /// Starts a switchover from `from` to `target`: with the app's `drain`
    /// period the primary keeps its grant and drains first, without one
    /// its grant is withdrawn at once; the target is promoted once it has
    /// stepped down. `why` heads the reason recorded; `link` is set for a
    /// link-driven switchover (`intent` empty).
    pub(super) fn start_switchover(
        &mut self,
        from: &str,
        target: &str,
        intent: String,
        link: Option<String>,
        why: &str,
    ) {
        let app = self.input.app;
        let name = app.name.as_str();
        let drain_ms = u64::try_from(app.drain.as_millis()).unwrap_or(u64::MAX);
        let what = if link.is_some() {
            "link-driven"
        } else {
            "planned"
        };
        let (cause, demoted_reason) = if link.is_some() {
            (CauseName::LinkLost, "link_lost")
        } else {
            (CauseName::Switchover, "switchover")
        };
        self.next.cause = Some(cause);
        if drain_ms > 0 {
            self.next.switchover = Some(PendingSwitchover {
                intent,
                to: target.to_string(),
                drain: Some(Box::new(Drain {
                    ms: drain_ms,
                    generation: self.input.roles.generation + 1,
                    asked_at_ms: Some(self.input.links.now_ms).filter(|t| *t > 0),
                })),
                link,
            });
            self.next.reason = format!(
                "{why}: draining {name}/{from} for {drain_ms} ms (no new work), then demoting it and promoting {name}/{target}"
            );
            // A demotion announced: clients following the primary look
            // again, and see it draining.
            self.events.push(
                EventDraft::instance(
                    EventKind::Demoted,
                    name,
                    from,
                    format!(
                        "draining {name}/{from} for {drain_ms} ms before demoting it for a {what} switchover to {target}"
                    ),
                )
                .with_reason("draining"),
            );
            return;
        }
        self.withdraw();
        self.next.switchover = Some(PendingSwitchover {
            intent,
            to: target.to_string(),
            drain: None,
            link,
        });
        self.next.reason = format!("{why}: demoting {name}/{from}, then promoting {name}/{target}");
        self.events.push(
            EventDraft::instance(
                EventKind::Demoted,
                name,
                from,
                format!("demoting {name}/{from} for a {what} switchover to {target}"),
            )
            .with_reason(demoted_reason),
        );
    }

    /// The primary drains for a switchover (its grant held, checked by
    /// step 1): once it reports it has drained, withdraws its grant; if the
    /// target became unfit, ends the switchover and keeps the primary.
    fn drained(&mut self) {
        let input = self.input;
        let (app, status) = (input.app, input.status);
        let name = app.name.as_str();
        let (Some(grant), Some(sw)) = (&self.next.primary, &self.next.switchover) else {
            return;
        };
        let Some(drain) = &sw.drain else {
            return;
        };
        let (from, to) = (grant.instance.clone(), sw.to.clone());
        let what = if sw.link.is_some() {
            "link-driven"
        } else {
            "planned"
        };
        let demoted_reason = if sw.link.is_some() {
            "link_lost"
        } else {
            "switchover"
        };
        if let Some(why) = unfit(app, input.hosts, &to, status.get(&to)) {
            let intent_id = sw.intent.clone();
            self.next.switchover = None;
            let reason = format!(
                "switchover aborted while {name}/{from} drained: target {name}/{to} became unfit ({why}); {name}/{from} stays primary"
            );
            self.next.reason.clone_from(&reason);
            self.events.push(
                EventDraft::instance(EventKind::Intent, name, &from, &reason)
                    .with_reason("refused"),
            );
            if input.intent.is_some_and(|i| i.id == intent_id) {
                self.intent = Some(IntentState::Refused { reason });
            }
            return;
        }
        let overdue = drain
            .asked_at_ms
            .is_some_and(|at| input.links.now_ms >= at.saturating_add(drain.limit_ms()));
        if !drain.is_done(status.get(&from)) && !overdue {
            // Still draining: the reason recorded at the start says so.
            return;
        }
        let ms = drain.ms;
        let (after, how) = if overdue && !drain.is_done(status.get(&from)) {
            let limit = drain.limit_ms();
            (
                format!(
                    "{name}/{from} did not report that it drained within {limit} ms of being asked (drain {ms} ms)"
                ),
                format!("without its drain report after {limit} ms"),
            )
        } else {
            (
                format!("{name}/{from} drained for {ms} ms"),
                format!("after draining for {ms} ms"),
            )
        };
        if let Some(sw) = &mut self.next.switchover {
            sw.drain = None;
        }
        self.withdraw();
        self.next.reason = format!("{after}: demoting it, then promoting {name}/{to}");
        self.events.push(
            EventDraft::instance(
                EventKind::Demoted,
                name,
                &from,
                format!("demoting {name}/{from} for a {what} switchover to {to}, {how}"),
            )
            .with_reason(demoted_reason),
        );
    }
}

/// Checks a switchover request; returns (current primary, target).
fn plan_switchover(
    app: &App,
    hosts: &HostsState,
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
            if let Some(why) = unfit(app, hosts, t, status.get(t)) {
                return Err(format!("target {name}/{t} is not fit to be primary: {why}"));
            }
            t.to_string()
        }
        None => match best_candidate(app, hosts, status, Some(&from), None) {
            Some((id, _)) => id.to_string(),
            None => {
                return Err(format!("{name} has no fit instance to switch over to"));
            }
        },
    };
    Ok((from, target))
}
