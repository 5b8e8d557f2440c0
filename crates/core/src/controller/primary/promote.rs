//! Step 3: no primary: promote one, once nobody else may still be acting.

use std::collections::BTreeMap;

use super::Pass;
use crate::controller::candidates::{admin_behind, best_candidate, grant_for, unfit};
use crate::controller::{Cause, Style, style};
use crate::model::{EventDraft, EventKind, InstanceStatus, IntentState, SteppingDown};
use crate::topology::App;

/// An instance to promote, its status, and why it is promoted.
type Choice<'a> = (String, &'a InstanceStatus, Cause);

impl<'a> Pass<'_, 'a> {
    /// Grants the primary role to the switchover's target or the best
    /// candidate, unless an instance may still be acting as primary.
    pub(super) fn promote(&mut self) {
        let (app, status) = (self.input.app, self.input.status);
        if self
            .next
            .stepping_down
            .as_ref()
            .is_some_and(|sd| sd.is_done(status.get(&sd.grant.instance)))
        {
            self.next.stepping_down = None;
        }
        if let Some(still) = still_acting(app, status, self.next.stepping_down.as_ref()) {
            let name = &app.name;
            self.next.reason = format!("waiting for {name}/{still} to step down before promoting");
            return;
        }
        let choice = match self.switchover_target() {
            Some(choice) => Some(choice),
            None => self.best_choice(),
        };
        match choice {
            Some((id, s, cause)) => self.grant(&id, s, &cause),
            None => self.no_candidate(),
        }
    }

    /// The target of the switchover in progress if it is still fit; the
    /// switchover ends either way, and its intent with it.
    fn switchover_target(&mut self) -> Option<Choice<'a>> {
        let (app, status) = (self.input.app, self.input.status);
        let name = &app.name;
        let sw = self.next.switchover.take()?;
        // A link-driven switchover has no intent to settle.
        let operator = sw.link.is_none();
        match status.get(&sw.to).filter(|s| style(app.ha).fit(s)) {
            Some(s) => {
                if operator {
                    self.intent = Some(IntentState::Done {
                        message: format!("{name}/{} is primary", sw.to),
                    });
                }
                let cause = match sw.link {
                    Some(why) => Cause::LinkLost { why },
                    None => Cause::Switchover { intent: sw.intent },
                };
                Some((sw.to, s, cause))
            }
            None => {
                let why = unfit(app, self.input.hosts, &sw.to, status.get(&sw.to))
                    .map_or_else(|| "not eligible".to_string(), |u| u.to_string());
                if operator {
                    self.intent = Some(IntentState::Refused {
                        reason: format!(
                            "switchover target {name}/{} became unfit ({why}); promoted the best other instance instead",
                            sw.to
                        ),
                    });
                }
                None
            }
        }
    }

    /// The best candidate, preferring anyone over the holder that just
    /// failed or was withdrawn (now, or in an earlier decision).
    fn best_choice(&self) -> Option<Choice<'a>> {
        let input = self.input;
        // Why a promotion is needed: a failure seen now, else the
        // withdrawal decided earlier, else there was no primary.
        let cause = self.failure.clone().unwrap_or_else(|| {
            if input.roles.stepping_down.is_some() || input.roles.switchover.is_some() {
                Cause::Earlier {
                    reason: input.roles.reason.clone(),
                    name: input.roles.cause,
                }
            } else {
                Cause::NoPrimary {
                    app: input.app.name.clone(),
                }
            }
        });
        let avoid = self.failed_holder.clone().or_else(|| {
            input
                .roles
                .stepping_down
                .as_ref()
                .map(|sd| sd.grant.instance.clone())
        });
        best_candidate(input.app, input.hosts, input.status, None, avoid.as_deref())
            .map(|(id, s)| (id.to_string(), s, cause))
    }

    /// Grants the primary role to `id`, at the next epoch.
    fn grant(&mut self, id: &str, s: &InstanceStatus, cause: &Cause) {
        let app = self.input.app;
        let name = &app.name;
        let epoch = self.next.epoch + 1;
        self.next.epoch = epoch;
        self.next.primary = Some(grant_for(app, id, s, epoch));
        self.next.reason = if style(app.ha) == Style::OnGrant {
            format!("starting {name}/{id} as primary (epoch {epoch}): {cause}")
        } else {
            format!("promoted {name}/{id} (epoch {epoch}): {cause}")
        };
        if let Some(behind) = admin_behind(app, self.input.status, s) {
            self.next.reason.push_str(&format!("; {behind}"));
        }
        self.next.cause = Some(cause.cause_name());
        self.events.push(
            EventDraft::instance(EventKind::Promoted, name, id, &self.next.reason)
                .with_epoch(epoch)
                .with_reason(cause.name()),
        );
    }

    /// Nobody can be promoted; says why each instance is unfit if the app
    /// just lost its primary or switchover.
    fn no_candidate(&mut self) {
        let input = self.input;
        let app = input.app;
        let name = &app.name;
        self.next.reason = format!("no instance of {name} is fit to be primary");
        if input.roles.primary.is_none() && input.roles.switchover.is_none() {
            return;
        }
        let detail = app
            .instances
            .iter()
            .map(|i| {
                let why = unfit(app, input.hosts, &i.id, input.status.get(&i.id))
                    .map_or_else(|| "fit".to_string(), |u| u.to_string());
                format!("{}: {why}", i.id)
            })
            .collect::<Vec<_>>()
            .join("; ");
        self.events.push(
            EventDraft::app(
                EventKind::NoCandidate,
                name,
                format!("{} ({detail})", self.next.reason),
            )
            .with_reason("no_candidate"),
        );
    }
}

/// Who may still be acting as primary: the holder of the withdrawn grant
/// first, then (defence in depth) anyone who reports acting as primary.
fn still_acting<'s>(
    app: &'s App,
    status: &BTreeMap<String, InstanceStatus>,
    stepping_down: Option<&'s SteppingDown>,
) -> Option<&'s str> {
    let style = style(app.ha);
    stepping_down
        .map(|sd| sd.grant.instance.as_str())
        .or_else(|| {
            app.instances
                .iter()
                .find(|i| status.get(&i.id).is_some_and(|s| style.may_act(s)))
                .map(|i| i.id.as_str())
        })
}
