//! The host lease: sessions, renewals, and self-fencing before the lease
//! can expire.

use std::time::Duration;

use super::{HostAction, HostMachine, HostNote, HostStep, LeaseInput};
use crate::instance::Input;

impl HostMachine {
    pub(super) fn on_lease(&mut self, ev: LeaseInput, now: Duration, step: &mut HostStep) {
        match ev {
            LeaseInput::Granted {
                lease,
                sent_at,
                ttl,
            } => {
                if !self.built {
                    self.build(lease, step);
                } else {
                    step.notes.push(HostNote::SessionGranted { lease });
                }
                let asked = self.topology.cluster.lease_ttl;
                if ttl > asked {
                    step.notes.push(HostNote::LeaseLonger {
                        asked,
                        granted: ttl,
                    });
                }
                self.on_granted(lease, sent_at, ttl, now, step);
            }
            LeaseInput::Renewed { lease, sent_at } => self.on_renewed(lease, sent_at, now, step),
            LeaseInput::Failed => {
                self.renew_failing = true;
                if self.topology.cluster.failsafe && self.round_at.is_none() && self.round.is_none()
                {
                    self.round_at = Some(now);
                }
            }
            LeaseInput::Expired { lease } => {
                if Some(lease) == self.session {
                    // Gone on the store: failsafe extensions end too.
                    self.failsafe_until.clear();
                    self.fence_everything(now, step);
                    self.session = None;
                    self.valid_until = None;
                    step.actions.push(HostAction::BindLease(None));
                }
            }
        }
        step.store_changed = true;
    }

    fn on_granted(
        &mut self,
        lease: i64,
        sent_at: Duration,
        ttl: Duration,
        now: Duration,
        step: &mut HostStep,
    ) {
        self.session = Some(lease);
        self.ttl = ttl;
        self.valid_until = Some(sent_at + ttl);
        self.session_fenced = false;
        self.renew_failing = false;
        for l in &mut self.locals {
            l.fenced = false;
        }
        step.actions.push(HostAction::BindLease(Some(lease)));
        step.actions.push(HostAction::PublishHost);
        for i in 0..self.locals.len() {
            self.feed(i, Input::Unfence { session: lease }, now, step);
            step.actions
                .push(HostAction::Instance(i, crate::instance::Action::Publish));
        }
        step.actions.push(HostAction::Session(Some(lease)));
    }

    fn on_renewed(&mut self, lease: i64, sent_at: Duration, now: Duration, step: &mut HostStep) {
        if Some(lease) != self.session {
            return;
        }
        if self.renew_failing {
            step.notes.push(HostNote::StoreAnswersAgain { lease });
        }
        self.renew_failing = false;
        self.round_at = None;
        // The lease holds again: this host's primaries need no extension
        // (promises made to peers still stand).
        self.failsafe_until.clear();
        let until = sent_at + self.ttl;
        if self.valid_until.is_none_or(|v| until > v) {
            self.valid_until = Some(until);
        }
        let margin = self.topology.cluster.fence_margin;
        let any_fenced = self.session_fenced || self.locals.iter().any(|l| l.fenced);
        if any_fenced && now + margin < until {
            step.notes.push(HostNote::FencingLifted { lease });
            self.session_fenced = false;
            for i in 0..self.locals.len() {
                self.locals[i].fenced = false;
                step.touched.insert(i);
                self.feed(i, Input::Unfence { session: lease }, now, step);
            }
            step.actions.push(HostAction::Session(Some(lease)));
        }
    }

    /// Until when `app`'s primaries here may act: the lease's end, or a
    /// failsafe extension's if that is later.
    pub(super) fn valid_for(&self, app: &str) -> Option<Duration> {
        let lease = self.valid_until?;
        Some(match self.failsafe_until.get(app) {
            Some(ext) if *ext > lease => *ext,
            _ => lease,
        })
    }

    /// The next moment something must be fenced: the session (controller
    /// candidate) at the lease's end minus the margin, each instance at
    /// its app's end minus the margin.
    pub(super) fn fence_at(&self) -> Option<Duration> {
        self.session?;
        let margin = self.topology.cluster.fence_margin;
        let minus = |t: Duration| t.checked_sub(margin).unwrap_or(t);
        let host = if self.session_fenced {
            None
        } else {
            self.valid_until.map(minus)
        };
        let instances = self
            .locals
            .iter()
            .filter(|l| !l.fenced)
            .filter_map(|l| self.valid_for(&l.app.name).map(minus));
        host.into_iter().chain(instances).min()
    }

    /// Fences whatever is due: the session at the lease's end minus the
    /// margin; each instance at its app's end (the lease, or a failsafe
    /// extension) minus the margin. The margin covers the demotion hook
    /// (or a kill) and clock-rate drift.
    pub(super) fn fence_due(&mut self, now: Duration, step: &mut HostStep) {
        let margin = self.topology.cluster.fence_margin;
        if self.valid_until.is_some_and(|v| now + margin >= v) {
            self.fence_session(step);
        }
        for i in 0..self.locals.len() {
            let app = &self.locals[i].app.name;
            if !self.locals[i].fenced && self.valid_for(app).is_none_or(|v| now + margin >= v) {
                if self.failsafe_until.contains_key(app) {
                    step.notes
                        .push(HostNote::FailsafeEnded { app: app.clone() });
                }
                self.fence_instance(i, now, step);
            }
        }
    }

    /// Fences the session and every instance at once (the lease is gone).
    fn fence_everything(&mut self, now: Duration, step: &mut HostStep) {
        self.fence_session(step);
        for i in 0..self.locals.len() {
            self.fence_instance(i, now, step);
        }
    }

    fn fence_session(&mut self, step: &mut HostStep) {
        if self.session_fenced {
            return;
        }
        self.session_fenced = true;
        step.notes.push(HostNote::SessionFenced {
            host: self.host.clone(),
            margin: self.topology.cluster.fence_margin,
        });
        step.actions.push(HostAction::Session(None));
    }

    pub(super) fn fence_instance(&mut self, i: usize, now: Duration, step: &mut HostStep) {
        if self.locals[i].fenced {
            return;
        }
        self.locals[i].fenced = true;
        self.feed(i, Input::Fence, now, step);
    }
}
