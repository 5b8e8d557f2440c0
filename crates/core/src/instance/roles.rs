//! Roles: the controller's assignment, the role the process should have,
//! and delivering it through the hook.

use std::time::Duration;

use super::{
    Action, FIRST_HOOK_RETRY, HookFailure, HookState, InstanceMachine, KillReason, MAX_HOOK_RETRY,
    Note, Proc, Step,
};
use crate::mode::{Style, default_role};
use crate::model::Role;

impl InstanceMachine {
    /// [`super::Input::Assigned`]: the controller's assignment, unless an
    /// older one than already seen.
    pub(super) fn assigned(
        &mut self,
        role: Role,
        epoch: u64,
        grant: Option<(u64, i64)>,
        generation: u64,
        now: Duration,
        step: &mut Step,
    ) {
        if generation < self.seen_generation {
            return;
        }
        let changed =
            (role, epoch, grant) != (self.desired_role, self.desired_epoch, self.desired_grant);
        if generation != self.seen_generation {
            self.seen_generation = generation;
            step.act(Action::Publish);
        }
        self.desired_role = role;
        self.desired_epoch = epoch;
        self.desired_grant = grant;
        if changed && matches!(self.hook, HookState::RetryAt(_)) {
            self.hook = HookState::Idle;
        }
        self.tick(now, step);
    }

    /// The role the process should have now, as (role, epoch).
    fn target(&self) -> (Role, u64) {
        let fallback = default_role(self.ha);
        if self.desired_role == Role::Primary
            && (self.fenced || self.desired_grant != Some((self.incarnation, self.session)))
        {
            (fallback, self.desired_epoch)
        } else {
            (self.desired_role, self.desired_epoch)
        }
    }

    /// Hooked modes: delivers the target role to the running process if it
    /// does not have it and no delivery is in flight or waiting.
    pub(super) fn reconcile(&mut self, _now: Duration, step: &mut Step) {
        if self.style != Style::Hooked || self.proc != Proc::Running || self.hook != HookState::Idle
        {
            return;
        }
        let (role, epoch) = self.target();
        let needed = if role == Role::Primary {
            self.acting != Role::Primary || self.acting_epoch != epoch
        } else {
            self.acting != role
        };
        if !needed {
            return;
        }
        if !self.has_hook {
            self.acting = role;
            self.acting_epoch = epoch;
            step.act(Action::Publish);
            return;
        }
        self.hook = HookState::InFlight { role, epoch };
        step.act(Action::RunHook {
            role,
            epoch,
            incarnation: self.incarnation,
        });
    }

    /// [`super::Input::HookDone`]: the delivery in flight finished.
    pub(super) fn hook_done(
        &mut self,
        role: Role,
        epoch: u64,
        incarnation: u64,
        result: Result<(), HookFailure>,
        now: Duration,
        step: &mut Step,
    ) {
        if incarnation != self.incarnation
            || !matches!(self.proc, Proc::Running)
            || self.hook != (HookState::InFlight { role, epoch })
        {
            return;
        }
        self.hook = HookState::Idle;
        match result {
            Ok(()) => {
                self.hook_failures = 0;
                self.acting = role;
                self.acting_epoch = epoch;
                step.notes.push(Note::RoleAcknowledged {
                    instance: self.name.clone(),
                    role,
                    epoch,
                });
                step.act(Action::Publish);
                self.reconcile(now, step);
            }
            Err(f) => self.hook_failed(role, epoch, f, now, step),
        }
    }

    /// A delivery failed: a promotion may have half-happened and a primary
    /// that cannot confirm stepping down may still act (killed, unless it
    /// is frozen: fenced); anything else is retried with a backoff.
    fn hook_failed(
        &mut self,
        role: Role,
        epoch: u64,
        f: HookFailure,
        now: Duration,
        step: &mut Step,
    ) {
        self.hook_failures += 1;
        if role == Role::Primary {
            // It may have taken the role or not: it cannot be trusted.
            self.acting = Role::Primary;
            self.acting_epoch = epoch;
            step.act(Action::Publish);
            self.kill(
                KillReason::PromotionFailed {
                    instance: self.name.clone(),
                    error: f.error,
                },
                step,
            );
            return;
        }
        if self.acting == Role::Primary && (self.fenced || !f.process_stopped) {
            self.kill(
                KillReason::StepDownUnconfirmed {
                    instance: self.name.clone(),
                    error: f.error,
                },
                step,
            );
            return;
        }
        if self.acting == Role::Primary {
            self.acting = Role::Fenced;
            step.notes.push(Note::FrozenFenced {
                instance: self.name.clone(),
                error: f.error.clone(),
            });
            step.act(Action::Publish);
        }
        let shift = self.hook_failures.saturating_sub(1).min(5);
        let delay = (FIRST_HOOK_RETRY * (1u32 << shift)).min(MAX_HOOK_RETRY);
        step.notes.push(Note::HookRetry {
            instance: self.name.clone(),
            role,
            error: f.error,
            retry_in: delay,
        });
        self.hook = HookState::RetryAt(now + delay);
    }
}
