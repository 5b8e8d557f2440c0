//! Step 2: a planned switchover asked by an operator.

use std::collections::BTreeMap;

use super::Pass;
use crate::controller::candidates::{best_candidate, unfit};
use crate::controller::{HostsState, pending};
use crate::model::{
    AppRoles, CauseName, EventDraft, EventKind, InstanceStatus, IntentKind, IntentState,
    PendingSwitchover, asked_by,
};
use crate::topology::App;

impl Pass<'_, '_> {
    /// Starts the switchover a pending intent asks for: withdraws the grant
    /// and records the target, to be promoted once the primary has stepped
    /// down; or refuses it.
    pub(super) fn switchover(&mut self) {
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
                self.withdraw();
                self.next.switchover = Some(PendingSwitchover {
                    intent: intent.id.clone(),
                    to: target.clone(),
                });
                self.next.reason = format!(
                    "switchover requested{}: demoting {name}/{from}, then promoting {name}/{target}",
                    asked_by(intent.by.as_deref())
                );
                self.next.cause = Some(CauseName::Switchover);
                self.events.push(
                    EventDraft::instance(EventKind::Intent, name, &from, &self.next.reason)
                        .with_reason("running"),
                );
                self.events.push(
                    EventDraft::instance(
                        EventKind::Demoted,
                        name,
                        &from,
                        format!("demoting {name}/{from} for a planned switchover to {target}"),
                    )
                    .with_reason("switchover"),
                );
                self.intent = Some(IntentState::Running);
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
        None => match best_candidate(app, status, Some(&from), None) {
            Some((id, _)) => id.to_string(),
            None => {
                return Err(format!("{name} has no fit instance to switch over to"));
            }
        },
    };
    Ok((from, target))
}
