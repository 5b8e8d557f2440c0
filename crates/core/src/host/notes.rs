//! What the host machine decided and why: one typed value per kind, with a
//! stable name (a metric label) and the sentence the log shows.

use std::fmt;
use std::time::Duration;

use crate::instance::Note;

/// How loudly a note is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Routine detail.
    Debug,
    /// A decision an operator may want to follow.
    Info,
    /// Something is wrong or about to be.
    Warn,
}

/// A decision of the host machine, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNote {
    /// A new lease is held after the previous one was lost.
    SessionGranted {
        /// The lease.
        lease: i64,
    },
    /// The store granted a longer lease than the topology asked for (etcd
    /// grants no lease shorter than about 1.5 election timeouts): a lost
    /// host fails over later than `lease_ttl` says.
    LeaseLonger {
        /// What the topology asks (`lease_ttl`).
        asked: Duration,
        /// What the store granted.
        granted: Duration,
    },
    /// A renewal succeeded after failures.
    StoreAnswersAgain {
        /// The lease.
        lease: i64,
    },
    /// The lease was renewed in time again: fenced instances may act again.
    FencingLifted {
        /// The lease.
        lease: i64,
    },
    /// The lease may end within the margin: the host stops being a
    /// controller candidate.
    SessionFenced {
        /// The host.
        host: String,
        /// The fence margin.
        margin: Duration,
    },
    /// An app's failsafe extension is about to end unconfirmed: its primary
    /// steps down.
    FailsafeEnded {
        /// The app.
        app: String,
    },
    /// Every peer confirmed: the app's primary here keeps its role.
    FailsafeKept {
        /// The app.
        app: String,
        /// How many peers confirmed.
        peers: usize,
    },
    /// Every peer confirmed again.
    FailsafeConfirmedAgain {
        /// The app.
        app: String,
        /// How many peers confirmed.
        peers: usize,
    },
    /// A round did not confirm the app's extension.
    FailsafeNotConfirmed {
        /// The app.
        app: String,
        /// Why.
        why: String,
    },
    /// This host promised a peer to hold back the app's promotions.
    Promised {
        /// The app.
        app: String,
        /// The asking host.
        to: String,
        /// For how long.
        promised: Duration,
    },
    /// A grant to an instance here is held back by a promise or extension.
    PromotionHeld {
        /// The app.
        app: String,
        /// The held assignment's generation.
        generation: u64,
    },
    /// The hold ended: the held-back assignment is applied.
    HoldEnded {
        /// The app.
        app: String,
    },
    /// A local instance's settings changed in the topology.
    SettingsChanged {
        /// `app/instance`.
        instance: String,
    },
    /// A local instance left the topology.
    LeftTopology {
        /// `app/instance`.
        instance: String,
    },
    /// A new local instance in the topology.
    JoinedTopology {
        /// `app/instance`.
        instance: String,
    },
    /// A note of one instance's machine.
    Instance {
        /// `app/instance`.
        instance: String,
        /// The machine's note.
        note: Note,
    },
}

impl HostNote {
    /// A stable name, usable as a metric label; an instance's note has its
    /// own ([`Note::name`]).
    pub fn name(&self) -> &'static str {
        match self {
            HostNote::SessionGranted { .. } => "session_granted",
            HostNote::LeaseLonger { .. } => "lease_longer",
            HostNote::StoreAnswersAgain { .. } => "store_answers_again",
            HostNote::FencingLifted { .. } => "fencing_lifted",
            HostNote::SessionFenced { .. } => "session_fenced",
            HostNote::FailsafeEnded { .. } => "failsafe_ended",
            HostNote::FailsafeKept { .. } => "failsafe_kept",
            HostNote::FailsafeConfirmedAgain { .. } => "failsafe_confirmed_again",
            HostNote::FailsafeNotConfirmed { .. } => "failsafe_not_confirmed",
            HostNote::Promised { .. } => "failsafe_promised",
            HostNote::PromotionHeld { .. } => "promotion_held",
            HostNote::HoldEnded { .. } => "hold_ended",
            HostNote::SettingsChanged { .. } => "settings_changed",
            HostNote::LeftTopology { .. } => "left_topology",
            HostNote::JoinedTopology { .. } => "joined_topology",
            HostNote::Instance { note, .. } => note.name(),
        }
    }

    /// How loudly to log it.
    pub fn level(&self) -> Level {
        match self {
            HostNote::SessionFenced { .. }
            | HostNote::LeaseLonger { .. }
            | HostNote::FailsafeEnded { .. }
            | HostNote::FailsafeKept { .. }
            | HostNote::FailsafeNotConfirmed { .. } => Level::Warn,
            HostNote::FailsafeConfirmedAgain { .. } | HostNote::Promised { .. } => Level::Debug,
            HostNote::Instance { note, .. } => note.level(),
            _ => Level::Info,
        }
    }

    /// The app or instance it is about, if one.
    pub fn subject(&self) -> Option<&str> {
        match self {
            HostNote::FailsafeEnded { app }
            | HostNote::FailsafeKept { app, .. }
            | HostNote::FailsafeConfirmedAgain { app, .. }
            | HostNote::FailsafeNotConfirmed { app, .. }
            | HostNote::Promised { app, .. }
            | HostNote::PromotionHeld { app, .. }
            | HostNote::HoldEnded { app } => Some(app),
            HostNote::SettingsChanged { instance }
            | HostNote::LeftTopology { instance }
            | HostNote::JoinedTopology { instance }
            | HostNote::Instance { instance, .. } => Some(instance),
            HostNote::SessionFenced { host, .. } => Some(host),
            _ => None,
        }
    }
}

impl fmt::Display for HostNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostNote::SessionGranted { lease } => {
                write!(f, "new session: lease {lease} granted")
            }
            HostNote::LeaseLonger { asked, granted } => write!(
                f,
                "the store granted a {} ms lease where lease_ttl asks {} ms: a lost host fails over that much later (etcd grants no lease shorter than about 1.5 times its election timeout; see the README)",
                granted.as_millis(),
                asked.as_millis()
            ),
            HostNote::StoreAnswersAgain { lease } => {
                write!(f, "the store answers again (lease {lease})")
            }
            HostNote::FencingLifted { lease } => {
                write!(f, "lease {lease} renewed again: fencing lifted")
            }
            HostNote::SessionFenced { margin, .. } => write!(
                f,
                "host lease not renewed in time (fence margin {} ms): this host stops being a controller candidate",
                margin.as_millis()
            ),
            HostNote::FailsafeEnded { .. } => f.write_str(
                "failsafe: no longer confirmed by every peer: stepping down before the extension ends",
            ),
            HostNote::FailsafeKept { peers, .. } => write!(
                f,
                "failsafe: the store is unreachable and every peer ({peers}) confirms it cannot reach it either: keeping the primary role"
            ),
            HostNote::FailsafeConfirmedAgain { peers, .. } => {
                write!(f, "failsafe: confirmed again by {peers} peer(s)")
            }
            HostNote::FailsafeNotConfirmed { why, .. } => {
                write!(f, "failsafe: not confirmed ({why})")
            }
            HostNote::Promised { to, promised, .. } => write!(
                f,
                "failsafe: promised {to} to hold back promotions for {} ms",
                promised.as_millis()
            ),
            HostNote::PromotionHeld { generation, .. } => write!(
                f,
                "failsafe: holding back a promotion here (generation {generation}) until the promise made to the primary's host ends"
            ),
            HostNote::HoldEnded { .. } => {
                f.write_str("failsafe: promise ended: applying the held-back assignment")
            }
            HostNote::SettingsChanged { .. } => {
                f.write_str("its settings changed: restarting it with the new ones")
            }
            HostNote::LeftTopology { .. } => f.write_str("no longer in the topology: stopping it"),
            HostNote::JoinedTopology { .. } => f.write_str("new in the topology: starting it"),
            HostNote::Instance { note, .. } => note.fmt(f),
        }
    }
}
