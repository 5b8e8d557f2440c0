//! Modes with a primary (warm, hot and cold standby, singleton): one
//! decision is four steps over a [`Pass`], in this order:
//!
//! 1. [`current`]: is the current grant still good? If not, withdraw it.
//! 2. [`switchover`]: a planned switchover asked by an operator; then
//!    [`links`]: a link-driven one, if the primary lost a required link
//!    that a fit backup has.
//! 3. [`promote`]: no primary: promote one, once nobody else may still be
//!    acting.
//! 4. [`others`]: every other instance has the mode's non-primary role.

use super::{AppInput, Cause, Decision};
use crate::model::{AppRoles, EventDraft, IntentState, SteppingDown};

mod current;
mod links;
mod others;
mod promote;
mod switchover;

/// Decides the roles of an app with a primary.
pub(super) fn decide_primary(input: &AppInput<'_>) -> Decision {
    let mut pass = Pass::new(input);
    pass.check_grant();
    pass.switchover();
    pass.link_switchover();
    if pass.next.primary.is_none() {
        pass.promote();
    }
    pass.assign_others();
    pass.finish()
}

/// What the steps of one decision share.
struct Pass<'i, 'a> {
    /// What is decided on.
    input: &'i AppInput<'a>,
    /// The assignment being built.
    next: AppRoles,
    /// What happened, for the event log.
    events: Vec<EventDraft>,
    /// The intent's new state, if it changed.
    intent: Option<IntentState>,
    /// Why the current grant failed in this decision, if it did.
    failure: Option<Cause>,
    /// The holder of the grant that failed in this decision.
    failed_holder: Option<String>,
}

impl<'i, 'a> Pass<'i, 'a> {
    /// Starts from the current assignment, without the instances that left
    /// the topology.
    fn new(input: &'i AppInput<'a>) -> Pass<'i, 'a> {
        let mut next = input.roles.clone();
        next.roles.retain(|id, _| input.app.instance(id).is_some());
        Pass {
            input,
            next,
            events: Vec::new(),
            intent: None,
            failure: None,
            failed_holder: None,
        }
    }

    /// Withdraws the current grant; its holder must confirm stepping down
    /// before anyone else is promoted.
    fn withdraw(&mut self) {
        if let Some(grant) = self.next.primary.take() {
            self.next.stepping_down = Some(SteppingDown {
                grant,
                generation: self.input.roles.generation + 1,
            });
        }
    }

    /// The decision.
    fn finish(self) -> Decision {
        let mut d = Decision::new(self.input.roles, self.next);
        d.events = self.events;
        d.intent = self.intent;
        d.settle(self.input.roles)
    }
}
