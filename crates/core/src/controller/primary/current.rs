//! Step 1: is the current grant still good?

use super::Pass;
use crate::controller::Cause;
use crate::controller::candidates::grant_broken;
use crate::model::{EventDraft, EventKind, IntentState};

impl Pass<'_, '_> {
    /// Withdraws the current grant if its holder no longer holds it well,
    /// and interrupts the switchover in progress, if any.
    pub(super) fn check_grant(&mut self) {
        let input = self.input;
        let name = input.app.name.as_str();
        let Some(grant) = &self.next.primary else {
            return;
        };
        let Some(why) = grant_broken(
            input.app,
            input.hosts,
            grant,
            input.status.get(&grant.instance),
        ) else {
            return;
        };
        let grant = grant.clone();
        self.withdraw();
        let failure = Cause::Failed {
            app: name.to_string(),
            instance: grant.instance.clone(),
            why,
        };
        self.next.reason = failure.to_string();
        self.next.cause = Some(failure.cause_name());
        self.failed_holder = Some(grant.instance.clone());
        self.events.push(
            EventDraft::instance(
                EventKind::PrimaryFailed,
                name,
                &grant.instance,
                &self.next.reason,
            )
            .with_epoch(grant.epoch)
            .with_reason(failure.name()),
        );
        if let Some(sw) = self.next.switchover.take()
            && input.intent.is_some_and(|i| i.id == sw.intent)
        {
            self.intent = Some(IntentState::Refused {
                reason: format!("switchover interrupted: {failure}"),
            });
        }
        self.failure = Some(failure);
    }
}
