//! Failsafe: while the store cannot be reached, a primary keeps its role
//! only as long as every peer running its app confirms it cannot reach the
//! store either and promises to hold back that app's promotions.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use super::{
    FailsafeAnswer, FailsafeAsk, HostAction, HostMachine, HostNote, HostStep, PeerAsk, Round,
};

impl HostMachine {
    /// Asks, for every app with a primary here, every other agent running
    /// an instance of it to confirm it cannot reach the store either and to
    /// refuse the app's promotion for a lease TTL.
    pub(super) fn failsafe_round(&mut self, now: Duration, step: &mut HostStep) {
        self.round_at = None;
        let cluster = &self.topology.cluster;
        if !cluster.failsafe
            || !self.renew_failing
            || self.session.is_none()
            || self.round.is_some()
        {
            return;
        }
        let apps: BTreeSet<&str> = self
            .locals
            .iter()
            .filter(|l| !l.fenced && !l.retired && l.machine.status().may_act_as_primary())
            .map(|l| l.app.name.as_str())
            .collect();
        if apps.is_empty() {
            self.round_at = Some(now + cluster.renew_interval);
            return;
        }
        let hold = cluster.lease_ttl;
        let asks: Vec<PeerAsk> = apps
            .into_iter()
            .map(|app| PeerAsk {
                ask: FailsafeAsk {
                    from: self.host.clone(),
                    app: app.to_string(),
                    hold_ms: hold.as_millis() as u64,
                },
                peers: self.peers_of(app),
            })
            .collect();
        step.actions.push(HostAction::AskPeers {
            asks: asks.clone(),
            timeout: cluster.renew_interval,
        });
        self.round = Some(Round {
            sent_at: now,
            hold,
            asks,
        });
    }

    /// The agent ports of every other host running an instance of `app`.
    fn peers_of(&self, app: &str) -> Vec<SocketAddr> {
        let port = self.topology.cluster.agent_port;
        let peers: BTreeSet<SocketAddr> = self
            .topology
            .apps
            .iter()
            .filter(|a| a.name == app)
            .flat_map(|a| a.instances.iter())
            .filter(|i| i.host != self.host)
            .filter_map(|i| self.topology.host(&i.host))
            .map(|h| SocketAddr::new(h.address, port))
            .collect();
        peers.into_iter().collect()
    }

    /// The answers to the round in flight: an app whose every peer promised
    /// is extended until the round's send time plus the hold.
    pub(super) fn on_answers(
        &mut self,
        answers: Vec<Vec<Option<FailsafeAnswer>>>,
        now: Duration,
        step: &mut HostStep,
    ) {
        let Some(round) = self.round.take() else {
            return;
        };
        for (ask, answers) in round.asks.iter().zip(answers) {
            let app = ask.ask.app.clone();
            match confirmation(&ask.peers, &answers, ask.ask.hold_ms) {
                Ok(peers) => {
                    let until = round.sent_at + round.hold;
                    let before = self.failsafe_until.insert(app.clone(), until);
                    step.notes.push(if before.is_none_or(|b| b <= now) {
                        HostNote::FailsafeKept { app, peers }
                    } else {
                        HostNote::FailsafeConfirmedAgain { app, peers }
                    });
                }
                Err(why) => step.notes.push(HostNote::FailsafeNotConfirmed { app, why }),
            }
        }
        if self.renew_failing && self.session.is_some() {
            self.round_at = Some(now + self.topology.cluster.renew_interval);
        }
    }

    /// Answers a primary's failsafe request; promises only when this agent
    /// cannot reach the store and no instance of the app here is or is
    /// becoming primary.
    pub(super) fn answer(
        &mut self,
        ask: &FailsafeAsk,
        now: Duration,
        step: &mut HostStep,
    ) -> FailsafeAnswer {
        let host = self.host.clone();
        if self.session.is_some() && !self.renew_failing {
            return FailsafeAnswer {
                host,
                store_reachable: true,
                promised_ms: None,
                refused: Some("this agent reaches the store".into()),
            };
        }
        let granted = self.roles.get(&ask.app).and_then(|r| r.primary.as_ref());
        let primary_here = self.by_app.get(&ask.app).is_some_and(|idxs| {
            idxs.iter().any(|i| {
                let l = &self.locals[*i];
                l.machine.status().may_act_as_primary()
                    || granted.is_some_and(|g| g.instance == l.instance.id)
            })
        }) || self.deferred.contains_key(&ask.app);
        if primary_here {
            return FailsafeAnswer {
                host,
                store_reachable: false,
                promised_ms: None,
                refused: Some(format!(
                    "an instance of {} here is primary or being promoted",
                    ask.app
                )),
            };
        }
        // Never promise more than a lease: a confused peer cannot block
        // promotions here for long.
        let promised = Duration::from_millis(ask.hold_ms).min(self.topology.cluster.lease_ttl);
        let until = now + promised;
        let entry = self.holds.entry(ask.app.clone()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
        step.notes.push(HostNote::Promised {
            app: ask.app.clone(),
            to: ask.from.clone(),
            promised,
        });
        FailsafeAnswer {
            host,
            store_reachable: false,
            promised_ms: Some(promised.as_millis() as u64),
            refused: None,
        }
    }

    /// When the first held-back assignment may be applied: at once for one
    /// whose hold is gone (a renewal ended the extension that held it).
    pub(super) fn next_hold_release(&self) -> Option<Duration> {
        self.deferred
            .keys()
            .map(|app| self.held_until(app).unwrap_or_default())
            .min()
    }

    /// The end of the later of the promise made for `app` and this host's
    /// own failsafe extension of it.
    pub(super) fn held_until(&self, app: &str) -> Option<Duration> {
        [self.holds.get(app), self.failsafe_until.get(app)]
            .into_iter()
            .flatten()
            .max()
            .copied()
    }

    /// Applies the held-back assignments whose holds have ended.
    pub(super) fn release_holds(&mut self, now: Duration, step: &mut HostStep) {
        let due: Vec<String> = self
            .deferred
            .keys()
            .filter(|app| self.held_until(app).is_none_or(|h| h <= now))
            .cloned()
            .collect();
        for app in due {
            if let Some(roles) = self.deferred.remove(&app) {
                step.notes.push(HostNote::HoldEnded { app: app.clone() });
                self.on_roles(&app, roles, now, step);
            }
        }
    }
}

/// Whether every peer's answer confirms: each answered, cannot reach the
/// store, and promised at least `hold_ms`. Ok(number of peers) or why not.
pub fn confirmation(
    peers: &[SocketAddr],
    answers: &[Option<FailsafeAnswer>],
    hold_ms: u64,
) -> Result<usize, String> {
    for (i, peer) in peers.iter().enumerate() {
        match answers.get(i).and_then(Option::as_ref) {
            None => return Err(format!("the agent at {peer} did not answer")),
            Some(a) if a.store_reachable => {
                return Err(format!("host {} can reach the store", a.host));
            }
            Some(a) => match a.promised_ms {
                Some(ms) if ms >= hold_ms => {}
                _ => {
                    return Err(format!(
                        "host {} did not promise: {}",
                        a.host,
                        a.refused.as_deref().unwrap_or("no reason given")
                    ));
                }
            },
        }
    }
    Ok(peers.len())
}
