//! Fence devices: when the controller runs a host's device, what its exit
//! means, and when it tries again.
//!
//! A host may declare a fence device (a command that powers it off or cuts
//! it from the network; exit status 0 confirms). The controller runs it
//! when heartbeats suspect the host, or when an operator asks
//! (`tandem fence HOST`). Rules:
//!
//! - A device is run for one agent session (lease) of the host at a time;
//!   a host without a lease has nothing left to fence (its agent stepped
//!   down before its lease ended).
//! - Exit 0 confirms: the host is [`FenceBook::fenced`] in that session
//!   (statuses of the session no longer count, see
//!   [`HostsState`](super::HostsState)), and its lease is revoked so that
//!   everything it held goes at once.
//! - A failed or timed-out run is reported and retried after a backoff
//!   (`RETRY_FIRST`, doubling up to `RETRY_MAX`) while the host is still
//!   suspected and its lease still lives; meanwhile the host is not
//!   assumed dead: its apps stay on the lease path.
//! - A suspicion cleared before the device ran again stops the retries; a
//!   run already started is let finish (its confirmation still counts).
//! - An operator's request is answered once: done when the device
//!   confirms (or at once when the host holds no lease: nothing is left to
//!   fence), refused after `MANUAL_ATTEMPTS` failed runs or at once when
//!   there is no device.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{EventDraft, EventKind, IntentState};

/// First pause before running a failed device again.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest pause between runs of a failing device.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// Runs an operator's request gets before it is refused.
pub const MANUAL_ATTEMPTS: u32 = 3;

/// What happened that concerns fencing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceInput {
    /// Heartbeats suspect `host`; `lease` is its agent's lease, if it holds
    /// one; `device` tells whether the host (or its site) declares one.
    Suspected {
        /// The host.
        host: String,
        /// Its agent's lease, if any.
        lease: Option<i64>,
        /// Whether it has a fence device.
        device: bool,
    },
    /// Heartbeats no longer suspect `host`.
    Cleared {
        /// The host.
        host: String,
    },
    /// An operator asks to fence `host` (intent `intent`).
    Asked {
        /// The host.
        host: String,
        /// Its agent's lease, if any.
        lease: Option<i64>,
        /// Whether it has a fence device.
        device: bool,
        /// The request's id.
        intent: String,
        /// The name of the API token that asked, if any.
        by: Option<String>,
    },
    /// A run of `host`'s device for `lease` ended.
    Exited {
        /// The host.
        host: String,
        /// The session it fenced.
        lease: i64,
        /// Ok: it confirmed; Err: how it failed (exit status, timeout,
        /// could not start).
        result: Result<(), String>,
    },
    /// `host`'s lease `lease` ended (expired, revoked or replaced).
    LeaseEnded {
        /// The host.
        host: String,
        /// The lease.
        lease: i64,
    },
    /// Time passed.
    Tick,
}

/// What the controller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceAction {
    /// Run `host`'s device (attempt number `attempt`, from 1).
    Run {
        /// The host.
        host: String,
        /// The session it fences.
        lease: i64,
        /// Which attempt.
        attempt: u32,
    },
    /// Revoke `lease`: the device confirmed `host` is off.
    Revoke {
        /// The host.
        host: String,
        /// Its lease.
        lease: i64,
    },
    /// Record this event.
    Event(EventDraft),
    /// Answer the operator's request `intent` about `host`.
    Answer {
        /// The host.
        host: String,
        /// The request's id.
        intent: String,
        /// The outcome.
        outcome: IntentState,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running,
    RetryAt(Duration),
    Confirmed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fence {
    lease: i64,
    state: State,
    attempt: u32,
    asked_by: Option<String>,
    /// Heartbeats suspect the host (else only an operator asked).
    suspected: bool,
}

/// The fence devices the controller is running or has run, per host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FenceBook {
    hosts: BTreeMap<String, Fence>,
}

fn event(reason: &'static str, message: String) -> FenceAction {
    FenceAction::Event(EventDraft {
        kind: EventKind::Fence,
        app: None,
        instance: None,
        epoch: None,
        message,
        reason: Some(reason),
    })
}

/// The pause before attempt `attempt + 1`.
fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

impl FenceBook {
    /// The hosts a device confirmed, with the session it fenced.
    pub fn fenced(&self) -> BTreeMap<String, i64> {
        self.hosts
            .iter()
            .filter(|(_, f)| f.state == State::Confirmed)
            .map(|(h, f)| (h.clone(), f.lease))
            .collect()
    }

    /// When [`FenceInput::Tick`] is next due, if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.hosts
            .values()
            .filter_map(|f| match f.state {
                State::RetryAt(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Takes `input` at `now`; appends what to do to `out`.
    pub fn handle(&mut self, input: FenceInput, now: Duration, out: &mut Vec<FenceAction>) {
        match input {
            FenceInput::Suspected {
                host,
                lease: Some(lease),
                device: true,
            } => {
                if let Some(f) = self.hosts.get_mut(&host).filter(|f| f.lease == lease) {
                    f.suspected = true;
                    return;
                }
                self.start(host, lease, None, None, out);
            }
            FenceInput::Suspected { .. } => {}
            FenceInput::Cleared { host } => {
                let Some(f) = self.hosts.get_mut(&host) else {
                    return;
                };
                f.suspected = false;
                if matches!(f.state, State::RetryAt(_)) && f.asked_by.is_none() {
                    self.hosts.remove(&host);
                    out.push(event(
                        "fence_abandoned",
                        format!("host {host} answers again: its fence device is not run again"),
                    ));
                }
            }
            FenceInput::Asked {
                host,
                lease,
                device,
                intent,
                by,
            } => self.asked(host, lease, device, intent, by, out),
            FenceInput::Exited {
                host,
                lease,
                result,
            } => self.exited(host, lease, result, now, out),
            FenceInput::LeaseEnded { host, lease } => {
                if self.hosts.get(&host).is_none_or(|f| f.lease != lease) {
                    return;
                }
                if let Some(f) = self.hosts.remove(&host)
                    && f.state != State::Confirmed
                    && let Some(intent) = f.asked_by
                {
                    out.push(FenceAction::Answer {
                        host: host.clone(),
                        intent,
                        outcome: IntentState::Done {
                            message: format!(
                                "host {host}'s lease ended before its fence device confirmed: its agent had stepped down, nothing is left to fence"
                            ),
                        },
                    });
                }
            }
            FenceInput::Tick => {
                let due: Vec<String> = self
                    .hosts
                    .iter()
                    .filter(|(_, f)| matches!(f.state, State::RetryAt(t) if t <= now))
                    .map(|(h, _)| h.clone())
                    .collect();
                for host in due {
                    if let Some(f) = self.hosts.get_mut(&host) {
                        f.state = State::Running;
                        f.attempt += 1;
                        out.push(FenceAction::Run {
                            host: host.clone(),
                            lease: f.lease,
                            attempt: f.attempt,
                        });
                    }
                }
            }
        }
    }

    fn start(
        &mut self,
        host: String,
        lease: i64,
        asked_by: Option<String>,
        token: Option<&str>,
        out: &mut Vec<FenceAction>,
    ) {
        let by = if asked_by.is_some() {
            format!("an operator asked{}", crate::model::asked_by(token))
        } else {
            "its heartbeats stopped".to_owned()
        };
        out.push(event(
            "fence_started",
            format!("fencing host {host} ({by}): running its fence device"),
        ));
        out.push(FenceAction::Run {
            host: host.clone(),
            lease,
            attempt: 1,
        });
        self.hosts.insert(
            host,
            Fence {
                lease,
                suspected: asked_by.is_none(),
                state: State::Running,
                attempt: 1,
                asked_by,
            },
        );
    }

    fn asked(
        &mut self,
        host: String,
        lease: Option<i64>,
        device: bool,
        intent: String,
        by: Option<String>,
        out: &mut Vec<FenceAction>,
    ) {
        let refuse = |reason: String| FenceAction::Answer {
            host: host.clone(),
            intent: intent.clone(),
            outcome: IntentState::Refused { reason },
        };
        if !device {
            out.push(refuse(format!(
                "host {host} has no fence device (declare fence = {{ command = [...] }} on the host or its site)"
            )));
            return;
        }
        let Some(lease) = lease else {
            out.push(FenceAction::Answer {
                host: host.clone(),
                intent,
                outcome: IntentState::Done {
                    message: format!(
                        "host {host}'s agent holds no lease: its primaries stepped down before it ended, nothing left to fence"
                    ),
                },
            });
            return;
        };
        match self.hosts.get_mut(&host) {
            Some(f) if f.lease == lease && f.state == State::Confirmed => {
                out.push(FenceAction::Answer {
                    host: host.clone(),
                    intent,
                    outcome: IntentState::Done {
                        message: format!("host {host} is already fenced"),
                    },
                });
            }
            Some(f) if f.lease == lease => {
                f.asked_by = Some(intent);
                if let State::RetryAt(_) = f.state {
                    f.state = State::Running;
                    f.attempt += 1;
                    out.push(FenceAction::Run {
                        host,
                        lease,
                        attempt: f.attempt,
                    });
                }
            }
            _ => self.start(host, lease, Some(intent), by.as_deref(), out),
        }
    }

    fn exited(
        &mut self,
        host: String,
        lease: i64,
        result: Result<(), String>,
        now: Duration,
        out: &mut Vec<FenceAction>,
    ) {
        let Some(f) = self
            .hosts
            .get_mut(&host)
            .filter(|f| f.lease == lease && f.state == State::Running)
        else {
            return;
        };
        match result {
            Ok(()) => {
                f.state = State::Confirmed;
                out.push(event(
                    "fence_confirmed",
                    format!(
                        "host {host} fenced: its fence device confirmed (attempt {}); its lease is revoked and its primaries are replaced",
                        f.attempt
                    ),
                ));
                out.push(FenceAction::Revoke {
                    host: host.clone(),
                    lease,
                });
                if let Some(intent) = f.asked_by.take() {
                    out.push(FenceAction::Answer {
                        host: host.clone(),
                        intent,
                        outcome: IntentState::Done {
                            message: format!("host {host} fenced"),
                        },
                    });
                }
            }
            Err(why) => {
                let wait = backoff(f.attempt);
                let attempt = f.attempt;
                match f.asked_by.take() {
                    Some(intent) if attempt >= MANUAL_ATTEMPTS => {
                        out.push(FenceAction::Answer {
                            host: host.clone(),
                            intent,
                            outcome: IntentState::Refused {
                                reason: format!(
                                    "the fence device of host {host} failed {attempt} times, last: {why}"
                                ),
                            },
                        });
                    }
                    other => f.asked_by = other,
                }
                let again = f.suspected || f.asked_by.is_some();
                let next = if again {
                    f.state = State::RetryAt(now + wait);
                    format!("trying again in {} ms", wait.as_millis())
                } else {
                    self.hosts.remove(&host);
                    "not trying again: nobody suspects it or asks".to_string()
                };
                out.push(event(
                    "fence_failed",
                    format!(
                        "fence device of host {host} failed (attempt {attempt}): {why}; the host is not assumed dead: its apps fail over when its lease expires; {next}"
                    ),
                ));
            }
        }
    }
}
