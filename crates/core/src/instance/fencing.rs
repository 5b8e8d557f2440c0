//! Self-fencing: stepping down when the host lease may be lost, and
//! resuming once it is held again.

use std::time::Duration;

use super::{Action, HookState, InstanceMachine, KillReason, Note, Proc, Step};
use crate::mode::Style;
use crate::model::Role;

impl InstanceMachine {
    /// [`super::Input::Fence`]: step down before the host lease can expire.
    pub(super) fn fence(&mut self, now: Duration, step: &mut Step) {
        if !self.fenced {
            self.fenced = true;
            step.notes.push(Note::Fenced {
                instance: self.name.clone(),
            });
        }
        if self.style == Style::OnGrant {
            // It runs only under the lease: no grace period.
            if matches!(self.proc, Proc::Running | Proc::Terminating) {
                self.proc = Proc::Terminating;
                self.kill(
                    KillReason::LeaseMayBeLost {
                        instance: self.name.clone(),
                    },
                    step,
                );
            }
        } else if self.style == Style::Hooked && self.proc == Proc::Running {
            match self.hook {
                HookState::InFlight {
                    role: Role::Primary,
                    ..
                } => self.kill(
                    KillReason::LeaseLostWhilePromoting {
                        instance: self.name.clone(),
                    },
                    step,
                ),
                HookState::InFlight { .. } => {}
                _ => {
                    self.hook = HookState::Idle;
                    self.reconcile(now, step);
                }
            }
        }
    }

    /// [`super::Input::Unfence`]: the host lease is held again, in
    /// `session`.
    pub(super) fn unfence(&mut self, session: i64, now: Duration, step: &mut Step) {
        if session != self.session {
            self.session = session;
            step.act(Action::Publish);
        }
        if self.fenced {
            self.fenced = false;
            self.tick(now, step);
        }
    }
}
