//! Apps without a primary whose instances all run in one role (`none`,
//! `pool`).

use super::{AppInput, Decision, assign_roles, default_role, pending};
use crate::model::IntentState;

/// Every instance has its mode's default role.
pub(super) fn decide_static(input: &AppInput<'_>) -> Decision {
    let role = default_role(input.app.ha);
    let mut roles = input.roles.clone();
    roles.primary = None;
    roles.stepping_down = None;
    roles.switchover = None;
    assign_roles(&mut roles.roles, input.app, |_| role);
    let mut d = Decision::new(input.roles, roles);
    if d.changed {
        d.roles.reason = format!("every instance of a {} app is {role}", input.app.ha);
    }
    if pending(input.intent).is_some() {
        d.intent = Some(IntentState::Refused {
            reason: format!(
                "app \"{}\" is {}: it has no primary to switch over",
                input.app.name, input.app.ha
            ),
        });
    }
    d
}
