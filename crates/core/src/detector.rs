//! The heartbeat failure detector: which peer hosts' agents this process
//! suspects to be lost, from the heartbeats it hears and the liveness
//! connections it holds to them.
//!
//! The runtime (`tandem-agent`'s heartbeat service) owns one [`Detector`]
//! per process. It feeds it what happened ([`DetectorInput`]: a heartbeat
//! heard, a liveness connection opened or closed by the peer, time passing)
//! and gets back a [`DetectorStep`]: the hosts that became suspected or
//! cleared, each with a typed [`Reason`], and the next moment time must be
//! fed in again. Time is an argument: `now` is a monotonic duration since an
//! origin the runtime chooses, the same for every input.
//!
//! # Rules
//!
//! With `suspect_after = heartbeat_interval × missed_heartbeats` (30 ms by
//! default):
//!
//! - **Never heard, never suspected.** A host is never suspected before one
//!   of its heartbeats was heard: an agent that never started is the host
//!   lease's business.
//! - **Silence.** A host is suspected once no heartbeat of it was heard for
//!   `suspect_after` ([`Reason::Silent`]). Silence is judged on
//!   [`DetectorInput::Tick`] only: a runtime feeds every queued heartbeat
//!   first, one by one, then a tick, and no host is judged while its
//!   heartbeats still wait in the queue behind another host's.
//! - **Closed connection.** A host is suspected at once when its liveness
//!   connection is closed by the peer (EOF or reset: its agent process
//!   ended; [`Reason::ConnectionClosed`]), unless a heartbeat of a new
//!   session (a restarted agent) was heard since that connection opened:
//!   then the closed connection was the old agent's, and the new one lives.
//! - **Duplicates and reordering.** A heartbeat carries its sender's session
//!   (one per agent run) and sequence number. Within a session, a heartbeat
//!   whose sequence number is not above the highest heard is stale and
//!   ignored; a heartbeat of another session starts that session.
//! - **Hysteresis.** A suspected host is cleared ([`Reason::HeardAgain`])
//!   only once heartbeats have come again steadily for `suspect_after`: from
//!   the first heartbeat heard after the suspicion, every following one
//!   arrives less than `suspect_after / 2` after the previous, until one
//!   arrives `suspect_after` after that first one (16 heartbeats at least
//!   with the defaults). A gap longer than that starts the count again. A
//!   burst of queued heartbeats spans no time, so it clears nothing, and a
//!   link that flaps faster than `suspect_after` keeps the host suspected.
//! - **Own pauses.** Time in which the detector's own runtime could not run
//!   ([`DetectorInput::Stalled`]: it woke later than it asked) is not a
//!   peer's silence: every unsuspected peer's silence restarts from when it
//!   was last heard plus the stall. A machine paused as a whole (a VM
//!   descheduled by its hypervisor) heard nothing, and nobody could have
//!   been heard: it must not wake up suspecting every peer.
//!
//! The detector never allocates for a heartbeat (hosts are looked up by
//! `&str`; a step without changes carries an empty vector).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::topology::Cluster;

/// The detector's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// How long a host may stay silent before it is suspected.
    pub suspect_after: Duration,
}

impl DetectorConfig {
    /// The timing of `cluster` (`heartbeat_interval × missed_heartbeats`).
    pub fn from_cluster(cluster: &Cluster) -> DetectorConfig {
        DetectorConfig {
            suspect_after: cluster.suspect_after(),
        }
    }

    /// The longest gap between two heartbeats that still counts as steady
    /// while a suspected host is heard again: `suspect_after / 2`.
    pub fn steady_gap(&self) -> Duration {
        self.suspect_after / 2
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorInput<'a> {
    /// A heartbeat of `host` was heard.
    Heard {
        /// The sending host.
        host: &'a str,
        /// The sending agent's session (one per agent run).
        session: u64,
        /// Its sequence number within the session.
        seq: u64,
    },
    /// The liveness connection to `host` is open.
    Opened {
        /// The peer host.
        host: &'a str,
    },
    /// The liveness connection to `host` was closed by the peer (EOF or
    /// reset): its agent process ended, unless it restarted.
    Closed {
        /// The peer host.
        host: &'a str,
    },
    /// Time passed (the runtime feeds this at [`DetectorStep::next_deadline`]
    /// at the latest).
    Tick,
    /// The runtime itself could not run for this long (it woke this much
    /// later than it asked: the process or the whole machine was paused).
    Stalled {
        /// How much later than asked.
        for_time: Duration,
    },
}

/// Why a host became suspected or was cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No heartbeat was heard for this long.
    Silent {
        /// Since the last heartbeat heard, in ms.
        for_ms: u64,
    },
    /// Its liveness connection was closed by the peer and no new agent of
    /// it was heard since.
    ConnectionClosed,
    /// Its heartbeats came again steadily for this long.
    HeardAgain {
        /// Since the first heartbeat heard again, in ms.
        for_ms: u64,
    },
}

impl Reason {
    /// A stable name, usable as a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Reason::Silent { .. } => "silent",
            Reason::ConnectionClosed => "connection_closed",
            Reason::HeardAgain { .. } => "heard_again",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Silent { for_ms } => write!(f, "no heartbeat heard for {for_ms} ms"),
            Reason::ConnectionClosed => f.write_str(
                "its agent closed the liveness connection (its process ended) and has not been heard since",
            ),
            Reason::HeardAgain { for_ms } => {
                write!(f, "its heartbeats came again steadily for {for_ms} ms")
            }
        }
    }
}

/// A change of one host's suspicion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `host` is now suspected.
    Suspected {
        /// The host.
        host: String,
        /// Why.
        reason: Reason,
    },
    /// `host` is no longer suspected.
    Cleared {
        /// The host.
        host: String,
        /// Why.
        reason: Reason,
    },
}

impl Change {
    /// The host it is about.
    pub fn host(&self) -> &str {
        match self {
            Change::Suspected { host, .. } | Change::Cleared { host, .. } => host,
        }
    }

    /// Its reason.
    pub fn reason(&self) -> Reason {
        match self {
            Change::Suspected { reason, .. } | Change::Cleared { reason, .. } => *reason,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Suspected { host, reason } => {
                write!(f, "host {host} suspected lost: {reason}")
            }
            Change::Cleared { host, reason } => {
                write!(f, "host {host} no longer suspected: {reason}")
            }
        }
    }
}

/// Why an input changed nothing, when that is worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// A heartbeat or connection of a host that is not a peer.
    UnknownHost,
    /// A heartbeat not newer than one already heard (a duplicate or a
    /// reordered one).
    Stale,
}

impl Ignored {
    /// A stable name, usable as a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Ignored::UnknownHost => "unknown_host",
            Ignored::Stale => "stale",
        }
    }
}

/// The result of one input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectorStep {
    /// Hosts that became suspected or were cleared, in host order.
    pub changes: Vec<Change>,
    /// Feed [`DetectorInput::Tick`] at this moment at the latest (`None`:
    /// no deadline; only a heartbeat or a connection can change anything).
    pub next_deadline: Option<Duration>,
    /// Set when the input was ignored.
    pub ignored: Option<Ignored>,
}

/// What the detector knows of one peer host.
#[derive(Debug, Clone, Default)]
struct Peer {
    /// When its last (non-stale) heartbeat was heard.
    last_heard: Option<Duration>,
    /// Its current session and the highest sequence number heard in it.
    session: Option<(u64, u64)>,
    /// The session current when the liveness connection opened, while it
    /// is open (`Some(None)`: open, nothing heard yet).
    open_with: Option<Option<u64>>,
    /// Why it is suspected, if it is.
    suspected: Option<Reason>,
    /// While suspected: when the current run of steady heartbeats began.
    steady_since: Option<Duration>,
}

/// The failure detector of one process: its view of every peer host.
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    peers: BTreeMap<String, Peer>,
}

impl Detector {
    /// A detector of `peers` (the hosts whose agents run elsewhere),
    /// none of them heard yet.
    pub fn new<I, S>(config: DetectorConfig, peers: I) -> Detector
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Detector {
            config,
            peers: peers
                .into_iter()
                .map(|p| (p.into(), Peer::default()))
                .collect(),
        }
    }

    /// Its timing.
    pub fn config(&self) -> DetectorConfig {
        self.config
    }

    /// Follows a new set of peers (a topology change): new ones start
    /// unheard, gone ones are forgotten (and so no longer suspected), the
    /// others keep what is known of them.
    pub fn set_peers<I, S>(&mut self, peers: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut next = BTreeMap::new();
        for p in peers {
            let p = p.into();
            let known = self.peers.remove(&p).unwrap_or_default();
            next.insert(p, known);
        }
        self.peers = next;
    }

    /// The peers, in order.
    pub fn peers(&self) -> impl Iterator<Item = &str> {
        self.peers.keys().map(String::as_str)
    }

    /// The hosts suspected now, in order.
    pub fn suspected(&self) -> impl Iterator<Item = &str> {
        self.peers
            .iter()
            .filter(|(_, p)| p.suspected.is_some())
            .map(|(h, _)| h.as_str())
    }

    /// Why `host` is suspected, if it is.
    pub fn suspicion(&self, host: &str) -> Option<Reason> {
        self.peers.get(host).and_then(|p| p.suspected)
    }

    /// Feeds one input at `now`.
    pub fn step(&mut self, now: Duration, input: DetectorInput<'_>) -> DetectorStep {
        let mut step = DetectorStep::default();
        match input {
            DetectorInput::Heard { host, session, seq } => {
                self.heard(now, host, session, seq, &mut step)
            }
            DetectorInput::Opened { host } => match self.peers.get_mut(host) {
                Some(p) => p.open_with = Some(p.session.map(|(s, _)| s)),
                None => step.ignored = Some(Ignored::UnknownHost),
            },
            DetectorInput::Closed { host } => self.closed(host, &mut step),
            DetectorInput::Tick => self.judge_silence(now, &mut step),
            DetectorInput::Stalled { for_time } => {
                for p in self.peers.values_mut().filter(|p| p.suspected.is_none()) {
                    if let Some(last) = p.last_heard {
                        p.last_heard = Some(last.saturating_add(for_time).min(now));
                    }
                }
            }
        }
        step.next_deadline = self.next_deadline();
        step
    }

    fn heard(
        &mut self,
        now: Duration,
        host: &str,
        session: u64,
        seq: u64,
        step: &mut DetectorStep,
    ) {
        let gap = self.config.steady_gap();
        let clear_after = self.config.suspect_after;
        let Some(p) = self.peers.get_mut(host) else {
            step.ignored = Some(Ignored::UnknownHost);
            return;
        };
        match p.session {
            Some((s, highest)) if s == session && seq <= highest => {
                step.ignored = Some(Ignored::Stale);
                return;
            }
            _ => p.session = Some((session, seq)),
        }
        let previous = p.last_heard.replace(now);
        if p.suspected.is_none() {
            return;
        }
        let steady = match (p.steady_since, previous) {
            (Some(since), Some(prev)) if now.saturating_sub(prev) <= gap => since,
            _ => now,
        };
        p.steady_since = Some(steady);
        let for_time = now.saturating_sub(steady);
        if for_time >= clear_after {
            p.suspected = None;
            p.steady_since = None;
            step.changes.push(Change::Cleared {
                host: host.to_string(),
                reason: Reason::HeardAgain {
                    for_ms: millis(for_time),
                },
            });
        }
    }

    fn closed(&mut self, host: &str, step: &mut DetectorStep) {
        let Some(p) = self.peers.get_mut(host) else {
            step.ignored = Some(Ignored::UnknownHost);
            return;
        };
        let opened_with = p.open_with.take();
        let current = p.session.map(|(s, _)| s);
        // A new session heard since the connection opened: the closed
        // connection was the previous agent's; this one lives.
        let restarted = matches!(opened_with, Some(Some(s)) if current != Some(s));
        if p.last_heard.is_none() || restarted {
            return;
        }
        // Only heartbeats heard from now on count towards clearing.
        p.steady_since = None;
        if p.suspected.is_none() {
            p.suspected = Some(Reason::ConnectionClosed);
            step.changes.push(Change::Suspected {
                host: host.to_string(),
                reason: Reason::ConnectionClosed,
            });
        }
    }

    fn judge_silence(&mut self, now: Duration, step: &mut DetectorStep) {
        let suspect_after = self.config.suspect_after;
        for (name, p) in &mut self.peers {
            let Some(last) = p.last_heard else { continue };
            let silent = now.saturating_sub(last);
            if p.suspected.is_none() && silent >= suspect_after {
                let reason = Reason::Silent {
                    for_ms: millis(silent),
                };
                p.suspected = Some(reason);
                p.steady_since = None;
                step.changes.push(Change::Suspected {
                    host: name.clone(),
                    reason,
                });
            }
        }
    }

    fn next_deadline(&self) -> Option<Duration> {
        self.peers
            .values()
            .filter(|p| p.suspected.is_none())
            .filter_map(|p| p.last_heard)
            .map(|last| last.saturating_add(self.config.suspect_after))
            .min()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Which of this process's suspicions are *corroborated*, the only ones
/// it acts on.
///
/// One observer's silence is weak evidence: its own receiver, its own
/// link, or its own isolation may be at fault. So a suspicion of host `x`
/// counts only when another observer agrees: some peer `o` (not `x`),
/// heard at least once and not suspected by this process, says in its
/// latest heartbeat that it suspects `x` too. Where there is no other
/// observer (no peer but `x` was ever heard: a two-host cluster, or the
/// others' agents never ran), this process's own suspicion counts. A
/// process that suspects every other observer is most likely the one cut
/// off: nothing it suspects is corroborated (so a host healed from
/// isolation does not act on the stale suspicions of its time alone), and
/// when two hosts are lost at once the survivors fall back on the leases.
///
/// `peers` are the other hosts (not run by this process), `suspected` the
/// ones this process suspects, and `reports(o, x)` whether peer `o` said it
/// suspects `x` in its latest heartbeat (`None`: never heard, or it cannot
/// say).
pub fn corroborated<'a>(
    peers: &'a [String],
    suspected: &BTreeSet<&str>,
    reports: impl Fn(&str, &str) -> Option<bool>,
) -> BTreeSet<&'a str> {
    peers
        .iter()
        .map(String::as_str)
        .filter(|x| suspected.contains(x))
        .filter(|x| {
            let mut observers = peers
                .iter()
                .map(String::as_str)
                .filter(|o| o != x)
                .filter_map(|o| reports(o, x).map(|says| (o, says)))
                .peekable();
            observers.peek().is_none() || observers.any(|(o, says)| says && !suspected.contains(o))
        })
        .collect()
}
