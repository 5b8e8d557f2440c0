//! Draining: a primary asked to drain before a planned switchover keeps
//! its role for the period asked (its load-balancer checks say drain, and
//! it gets no new work), then reports it has drained
//! ([`crate::model::InstanceStatus::drained`]) so that the controller
//! withdraws its grant. The period is timed here, from when the agent sees
//! the request: `now` is the runtime's monotonic clock.

use std::time::Duration;

use super::{Action, InstanceMachine, Note, Step};

impl InstanceMachine {
    /// [`super::Input::Drain`]: starts the drain asked, unless it is the
    /// one under way or already finished; cancels it when none is asked.
    pub(super) fn drain(&mut self, asked: Option<(u64, Duration)>, now: Duration, step: &mut Step) {
        let Some((generation, period)) = asked else {
            self.draining = None;
            return;
        };
        let same = self.draining.is_some_and(|(g, _, _)| g == generation);
        if same || self.drained >= generation {
            return;
        }
        self.draining = Some((generation, period, now + period));
        step.notes.push(Note::Draining {
            instance: self.name.clone(),
            period,
        });
        self.drain_tick(now, step);
    }

    /// Time passed: a drain whose period ended is reported finished.
    pub(super) fn drain_tick(&mut self, now: Duration, step: &mut Step) {
        let Some((generation, period, until)) = self.draining else {
            return;
        };
        if now < until {
            return;
        }
        self.draining = None;
        self.drained = generation;
        step.notes.push(Note::Drained {
            instance: self.name.clone(),
            period,
        });
        step.act(Action::Publish);
    }
}
