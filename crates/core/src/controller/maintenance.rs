//! Maintenance: turning it on or off, and freezing the roles while on.

use super::{AppInput, Decision, pending};
use crate::model::{EventDraft, EventKind, IntentKind, IntentState, asked_by};

/// What maintenance decides for the app; `None` when the app is not in
/// maintenance and no maintenance intent is pending: the mode decides.
pub(super) fn maintenance(input: &AppInput<'_>) -> Option<Decision> {
    let name = &input.app.name;
    let intent = pending(input.intent);
    let asked = intent.and_then(|i| match i.kind {
        IntentKind::Maintenance { on } => Some(on),
        IntentKind::Switchover { .. } => None,
    });
    let done = |message: String| Some(IntentState::Done { message });
    let by = asked_by(intent.and_then(|i| i.by.as_deref()));
    let d = match (input.roles.maintenance, asked) {
        (false, None) => return None,
        (false, Some(false)) => {
            let mut d = unchanged(input);
            d.intent = done(format!("{name} is not in maintenance"));
            d
        }
        (false, Some(true)) => {
            let mut d = toggled(
                input,
                true,
                format!(
                    "maintenance of {name}{by}: no role changes until it is turned off (failures are not acted on)"
                ),
            );
            d.intent = done(format!("maintenance of {name} is on"));
            d
        }
        (true, Some(false)) => {
            let mut d = toggled(
                input,
                false,
                format!("maintenance of {name} ended{by}: roles are managed again"),
            );
            d.intent = done(format!("maintenance of {name} is off"));
            d
        }
        (true, Some(true)) => {
            let mut d = unchanged(input);
            d.intent = done(format!("maintenance of {name} is on"));
            d
        }
        (true, None) => {
            let mut d = unchanged(input);
            if intent.is_some() {
                d.intent = Some(IntentState::Refused {
                    reason: format!(
                        "{name} is in maintenance: no role changes until `tandem maintenance {name} off`"
                    ),
                });
            }
            d
        }
    };
    Some(d)
}

/// The roles as they are.
fn unchanged(input: &AppInput<'_>) -> Decision {
    Decision::new(input.roles, input.roles.clone())
}

/// The roles with maintenance turned `on` or off, for `reason`.
fn toggled(input: &AppInput<'_>, on: bool, reason: String) -> Decision {
    let mut roles = input.roles.clone();
    roles.maintenance = on;
    roles.reason = reason;
    let mut d = Decision::new(input.roles, roles);
    d.events.push(
        EventDraft::app(EventKind::Maintenance, &input.app.name, &d.roles.reason)
            .with_reason(if on { "on" } else { "off" }),
    );
    d
}
