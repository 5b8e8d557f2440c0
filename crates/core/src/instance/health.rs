//! What the process's health checks and load reports change.

use std::time::Duration;

use super::{Action, HookState, InstanceMachine, Note, Proc, Step};
use crate::health::combine;
use crate::mode::reports_load;
use crate::model::{Health, Role};

impl InstanceMachine {
    /// [`super::Input::Probe`]: a check of the running incarnation answered.
    pub(super) fn probe(
        &mut self,
        check: usize,
        incarnation: u64,
        result: Result<(), String>,
        now: Duration,
        step: &mut Step,
    ) {
        if self.proc != Proc::Running || incarnation != self.incarnation {
            return;
        }
        let before = combine(&self.trackers);
        let Some(t) = self.trackers.get_mut(check) else {
            return;
        };
        t.record(result);
        let after = combine(&self.trackers);
        if after != before {
            step.act(Action::Publish);
            step.notes.push(Note::HealthChanged {
                instance: self.name.clone(),
                health: after,
            });
            if after == Health::Healthy && matches!(self.hook, HookState::RetryAt(_)) {
                // It answers again: deliver its role at once.
                self.hook = HookState::Idle;
                self.reconcile(now, step);
            }
        }
    }

    /// [`super::Input::Load`]: a pool worker is busy or free.
    pub(super) fn load(&mut self, incarnation: u64, busy: bool, step: &mut Step) {
        let role = if busy { Role::Busy } else { Role::Free };
        if reports_load(self.ha)
            && self.proc == Proc::Running
            && incarnation == self.incarnation
            && self.acting != role
        {
            self.acting = role;
            step.act(Action::Publish);
        }
    }
}
