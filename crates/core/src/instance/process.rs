//! The process's lifecycle: starting it, its exits and restart backoff,
//! stopping it, and what time passing changes.

use std::time::Duration;

use super::{Action, EndReason, HookState, InstanceMachine, KillReason, Note, Proc, Step};
use crate::mode::{Style, default_role, spawn_role};
use crate::model::{BY_TANDEM, Role};

impl InstanceMachine {
    /// Time passed: start what should run, stop what should not, note a
    /// process that has run stably, and deliver a role due again.
    pub(super) fn tick(&mut self, now: Duration, step: &mut Step) {
        match self.proc {
            Proc::Pending | Proc::Idle => {
                if self.should_start() {
                    self.spawn(step);
                } else if self.proc == Proc::Pending {
                    self.proc = Proc::Idle;
                    step.act(Action::Publish);
                }
            }
            Proc::Backoff { until } if now >= until => {
                if self.should_start() {
                    self.spawn(step);
                } else {
                    self.proc = Proc::Idle;
                    step.act(Action::Publish);
                }
            }
            Proc::Running => self.tick_running(now, step),
            _ => {}
        }
    }

    fn tick_running(&mut self, now: Duration, step: &mut Step) {
        if (self.quick_exits > 0 || self.crash_looping)
            && now >= self.started_at + self.policy.stable_after
        {
            self.quick_exits = 0;
            self.backoff = self.policy.initial_backoff;
            if self.crash_looping {
                self.crash_looping = false;
                step.notes.push(Note::StableAgain {
                    instance: self.name.clone(),
                });
                step.act(Action::Publish);
            }
        }
        if !self.should_keep_running() {
            self.proc = Proc::Terminating;
            step.notes.push(Note::RoleChanged {
                instance: self.name.clone(),
                role: self.desired_role,
            });
            self.terminate(
                EndReason::RoleChanged {
                    role: self.desired_role,
                    killed_after_timeout: false,
                },
                step,
            );
            return;
        }
        if let HookState::RetryAt(t) = self.hook
            && now >= t
        {
            self.hook = HookState::Idle;
        }
        self.reconcile(now, step);
    }

    /// Whether a process that is not running should be started now.
    pub(super) fn should_start(&self) -> bool {
        let granted =
            !self.fenced && self.desired_grant == Some((self.incarnation + 1, self.session));
        self.style.runs(self.desired_role, granted)
    }

    /// Whether the running process may go on running.
    pub(super) fn should_keep_running(&self) -> bool {
        let granted = !self.fenced && self.desired_grant == Some((self.incarnation, self.session));
        self.style.runs(self.desired_role, granted)
    }

    fn spawn(&mut self, step: &mut Step) {
        self.incarnation += 1;
        self.proc = Proc::Spawning;
        self.ending = None;
        self.hook = HookState::Idle;
        let role = spawn_role(self.ha);
        self.acting = role;
        self.acting_epoch = self.desired_epoch;
        step.act(Action::Spawn {
            incarnation: self.incarnation,
            role,
            epoch: self.desired_epoch,
        });
    }

    /// [`super::Input::Spawned`]: the process runs.
    pub(super) fn spawned(&mut self, pid: u32, now: Duration, step: &mut Step) {
        if self.proc != Proc::Spawning {
            return;
        }
        self.proc = Proc::Running;
        self.pid = Some(pid);
        self.started_at = now;
        for t in &mut self.trackers {
            t.reset();
        }
        self.reset_links();
        self.reset_groups();
        step.act(Action::Publish);
        if self.stop_when_started {
            self.proc = Proc::Stopping;
            self.terminate(
                EndReason::AgentStopping {
                    killed_after_timeout: false,
                },
                step,
            );
            return;
        }
        if self.style == Style::OnGrant && !self.should_keep_running() {
            // Fenced or withdrawn while it was being started.
            self.proc = Proc::Terminating;
            self.kill(
                KillReason::GrantEnded {
                    instance: self.name.clone(),
                },
                step,
            );
            return;
        }
        // Its role may have changed while it was being started.
        self.tick_running(now, step);
    }

    /// [`super::Input::SpawnFailed`]: counts as a quick exit.
    pub(super) fn spawn_failed(&mut self, error: String, now: Duration, step: &mut Step) {
        if self.proc != Proc::Spawning {
            return;
        }
        self.started_at = now;
        if self.stop_when_started {
            self.proc = Proc::Stopped;
            self.last_exit = Some(format!("failed to start: {error}"));
            step.act(Action::Publish);
            return;
        }
        let how = format!("failed to start: {error}");
        self.back_off(how.clone(), how, now, step);
    }

    /// [`super::Input::Exited`]: stopped for good, stopped by its role, or
    /// crashed (restarted after a backoff).
    pub(super) fn exited(&mut self, how: String, now: Duration, step: &mut Step) {
        if !matches!(
            self.proc,
            Proc::Stopping | Proc::Terminating | Proc::Running
        ) {
            return;
        }
        // Says so when tandem asked for it.
        let last_exit = match self.ending.take() {
            Some(end) => format!("{how}{BY_TANDEM}{end}"),
            None => how.clone(),
        };
        match self.proc {
            Proc::Stopping => {
                self.proc = Proc::Stopped;
                self.pid = None;
                self.acting = Role::Stopped;
                self.last_exit = Some(last_exit);
                self.hook = HookState::Idle;
                step.act(Action::Publish);
            }
            Proc::Terminating => {
                self.proc = Proc::Idle;
                self.pid = None;
                self.acting = default_role(self.ha);
                self.last_exit = Some(last_exit);
                self.hook = HookState::Idle;
                step.act(Action::Publish);
                // It may have been granted again meanwhile.
                self.tick(now, step);
            }
            Proc::Running => self.back_off(how, last_exit, now, step),
            _ => {}
        }
    }

    /// The process ended unasked: restart it after a backoff that doubles
    /// with each quick exit; quick exits in a row mean crash-looping. `how`
    /// is logged, `last_exit` published.
    fn back_off(&mut self, how: String, last_exit: String, now: Duration, step: &mut Step) {
        let ran = now.saturating_sub(self.started_at);
        if ran < self.policy.stable_after {
            self.quick_exits += 1;
        } else {
            self.quick_exits = 1;
            self.backoff = self.policy.initial_backoff;
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        let was_looping = self.crash_looping;
        self.crash_looping = self.quick_exits >= self.policy.crashloop_after;
        self.restarts += 1;
        self.pid = None;
        self.acting = Role::Stopped;
        self.hook = HookState::Idle;
        self.proc = Proc::Backoff { until: now + delay };
        step.notes.push(Note::Exited {
            instance: self.name.clone(),
            how,
            restart_in: delay,
        });
        if self.crash_looping && !was_looping {
            step.notes.push(Note::CrashLooping {
                instance: self.name.clone(),
                quick_exits: self.quick_exits,
                stable_after: self.policy.stable_after,
            });
        }
        self.last_exit = Some(last_exit);
        step.act(Action::Publish);
    }

    /// [`super::Input::Stop`]: stop the process for good.
    pub(super) fn stop(&mut self, step: &mut Step) {
        match self.proc {
            Proc::Running => {
                self.proc = Proc::Stopping;
                self.terminate(
                    EndReason::AgentStopping {
                        killed_after_timeout: false,
                    },
                    step,
                );
            }
            Proc::Terminating => self.proc = Proc::Stopping,
            Proc::Stopping | Proc::Stopped => {}
            // Its start is under way: it is stopped once it runs (the
            // runtime may start processes asynchronously).
            Proc::Spawning => self.stop_when_started = true,
            Proc::Pending | Proc::Idle | Proc::Backoff { .. } => {
                self.proc = Proc::Stopped;
                step.act(Action::Publish);
            }
        }
    }

    /// [`super::Input::StopTimedOut`]: a process told to stop has not
    /// exited in time: killed, if it is still the one being stopped.
    pub(super) fn stop_timed_out(&mut self, incarnation: u64, step: &mut Step) {
        if incarnation != self.incarnation
            || !matches!(self.proc, Proc::Terminating | Proc::Stopping)
        {
            return;
        }
        let reason = KillReason::StopTimeout {
            instance: self.name.clone(),
        };
        match &mut self.ending {
            // Why it was stopped stays the reason it ended.
            Some(end) => {
                end.timed_out();
                step.act(Action::Kill { reason });
            }
            None => self.kill(reason, step),
        }
    }

    /// Kills the process at once, remembering why (a kill replaces the
    /// reason of a graceful stop, not that of an earlier kill).
    pub(super) fn kill(&mut self, reason: KillReason, step: &mut Step) {
        if !matches!(self.ending, Some(EndReason::Killed(_))) {
            self.ending = Some(EndReason::Killed(reason.clone()));
        }
        step.act(Action::Kill { reason });
    }

    /// Stops the process gracefully, remembering why unless tandem already
    /// asked it to end.
    fn terminate(&mut self, why: EndReason, step: &mut Step) {
        self.ending.get_or_insert(why);
        step.act(Action::Terminate);
    }
}
