//! Why the controller decided what it did: one typed value per kind of
//! reason, each with a stable name (a metric label, and the `reason` of the
//! events it causes) and the sentence the log and the events show.

use std::fmt;

use crate::model::CauseName;

/// Why an instance cannot keep or take an app's primary role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfit {
    /// No status: its host's lease expired.
    HostLost {
        /// The instance's host.
        host: String,
    },
    /// Its host is suspected lost (its heartbeats stopped or its agent's
    /// connection closed) and the app is `fencing = "token"`: whatever it
    /// may still do is refused downstream once a higher epoch exists.
    HostSuspected {
        /// The instance's host.
        host: String,
    },
    /// Its host's fence device confirmed the host is off or cut off.
    HostFenced {
        /// The instance's host.
        host: String,
    },
    /// Its site may not hold the app's primary or active members:
    /// declared failed, or not an active site that is up for a pinned app.
    SiteBarred {
        /// The instance's host.
        host: String,
        /// Why ([`crate::sites::HostSite::barred`]).
        why: String,
    },
    /// Quick exits in a row.
    CrashLooping,
    /// Being started.
    Starting,
    /// Not running.
    NotRunning {
        /// How its last run ended, if known.
        last_exit: Option<String>,
    },
    /// Its checks fail.
    Unhealthy {
        /// Why the last check failed, if known.
        detail: Option<String>,
    },
    /// Its checks have not answered often enough yet.
    HealthUnknown,
    /// On-grant modes: it runs without holding the grant.
    AlreadyRunning,
    /// The grant's holder is no longer in the topology.
    RemovedFromTopology,
    /// The grant's agent began a new session.
    SessionEnded {
        /// The session the grant was made for.
        old: i64,
        /// The agent's session now.
        new: i64,
    },
    /// The grant's holder restarted since it was granted.
    Restarted {
        /// The incarnation the grant was made for.
        from: u64,
        /// The incarnation now.
        to: u64,
    },
}

impl Unfit {
    /// A stable name, usable as a metric label.
    pub fn name(&self) -> &'static str {
        self.cause_name().as_str()
    }

    /// Its name, as a primary's failure is stored.
    pub fn cause_name(&self) -> CauseName {
        match self {
            Unfit::HostLost { .. } => CauseName::HostLost,
            Unfit::HostSuspected { .. } => CauseName::HostSuspected,
            Unfit::HostFenced { .. } => CauseName::HostFenced,
            Unfit::SiteBarred { .. } => CauseName::SiteBarred,
            Unfit::CrashLooping => CauseName::CrashLooping,
            Unfit::Starting => CauseName::Starting,
            Unfit::NotRunning { .. } => CauseName::NotRunning,
            Unfit::Unhealthy { .. } => CauseName::Unhealthy,
            Unfit::HealthUnknown => CauseName::HealthUnknown,
            Unfit::AlreadyRunning => CauseName::AlreadyRunning,
            Unfit::RemovedFromTopology => CauseName::Removed,
            Unfit::SessionEnded { .. } => CauseName::SessionEnded,
            Unfit::Restarted { .. } => CauseName::Restarted,
        }
    }
}

impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unfit::HostLost { host } => {
                write!(f, "host {host} lost (no status: its lease expired)")
            }
            Unfit::HostSuspected { host } => write!(
                f,
                "host {host} suspected lost (heartbeats); its writes are fenced by epoch (fencing = \"token\")"
            ),
            Unfit::HostFenced { host } => {
                write!(f, "host {host} fenced by its fence device")
            }
            Unfit::SiteBarred { host, why } => write!(f, "on host {host}: {why}"),
            Unfit::CrashLooping => f.write_str("crash-looping"),
            Unfit::Starting => f.write_str("starting"),
            Unfit::NotRunning {
                last_exit: Some(how),
            } => write!(f, "not running: {how}"),
            Unfit::NotRunning { last_exit: None } => f.write_str("not running"),
            Unfit::Unhealthy { detail: Some(d) } => write!(f, "unhealthy: {d}"),
            Unfit::Unhealthy { detail: None } => f.write_str("unhealthy"),
            Unfit::HealthUnknown => f.write_str("health not yet known"),
            Unfit::AlreadyRunning => f.write_str("already running without the grant"),
            Unfit::RemovedFromTopology => f.write_str("removed from the topology"),
            Unfit::SessionEnded { old, new } => write!(
                f,
                "its agent's session ended (lease {old} replaced by {new})"
            ),
            Unfit::Restarted { from, to } => write!(
                f,
                "restarted since it was granted (incarnation {from} → {to})"
            ),
        }
    }
}

/// Why an app gets a new primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The primary failed, seen in this decision.
    Failed {
        /// The app.
        app: String,
        /// The instance whose grant was withdrawn.
        instance: String,
        /// Why.
        why: Unfit,
    },
    /// A planned switchover asked by an operator.
    Switchover {
        /// The intent's id.
        intent: String,
    },
    /// The app had no primary.
    NoPrimary {
        /// The app.
        app: String,
    },
    /// The primary lost a required link that a fit backup has: the
    /// sentence that says which, for how long, and who has it.
    LinkLost {
        /// "primary cms/a lost its link acd for 1.2 s (...); cms/b has it".
        why: String,
    },
    /// The grant was withdrawn (or a switchover began) in an earlier
    /// decision: its stored reason and name ([`crate::model::AppRoles`]'s
    /// `reason` and `cause`).
    Earlier {
        /// The stored sentence.
        reason: String,
        /// The stored name, if one was stored.
        name: Option<CauseName>,
    },
}

impl Cause {
    /// A stable name, usable as a metric label: the failure's
    /// ([`Unfit::name`]), `switchover`, `no_primary`, or the earlier
    /// decision's (`withdrawn` if none was stored).
    pub fn name(&self) -> &'static str {
        self.cause_name().as_str()
    }

    /// Its name, as stored in [`crate::model::AppRoles::cause`].
    pub fn cause_name(&self) -> CauseName {
        match self {
            Cause::Failed { why, .. } => why.cause_name(),
            Cause::Switchover { .. } => CauseName::Switchover,
            Cause::NoPrimary { .. } => CauseName::NoPrimary,
            Cause::LinkLost { .. } => CauseName::LinkLost,
            Cause::Earlier { name, .. } => name.unwrap_or(CauseName::Withdrawn),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Failed { app, instance, why } => {
                write!(f, "primary {app}/{instance} failed: {why}")
            }
            Cause::Switchover { intent } => write!(f, "planned switchover (intent {intent})"),
            Cause::NoPrimary { app } => write!(f, "{app} had no primary"),
            Cause::LinkLost { why } => f.write_str(why),
            Cause::Earlier { reason, .. } => f.write_str(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unfit_reasons_have_a_name_and_the_sentence_shown() {
        let cases = [
            (
                Unfit::HostLost { host: "h1".into() },
                "host_lost",
                "host h1 lost (no status: its lease expired)",
            ),
            (Unfit::CrashLooping, "crash_looping", "crash-looping"),
            (Unfit::Starting, "starting", "starting"),
            (
                Unfit::NotRunning {
                    last_exit: Some("exited with code 1".into()),
                },
                "not_running",
                "not running: exited with code 1",
            ),
            (
                Unfit::NotRunning { last_exit: None },
                "not_running",
                "not running",
            ),
            (
                Unfit::Unhealthy {
                    detail: Some("GET /health timed out".into()),
                },
                "unhealthy",
                "unhealthy: GET /health timed out",
            ),
            (Unfit::Unhealthy { detail: None }, "unhealthy", "unhealthy"),
            (
                Unfit::HealthUnknown,
                "health_unknown",
                "health not yet known",
            ),
            (
                Unfit::AlreadyRunning,
                "already_running",
                "already running without the grant",
            ),
            (
                Unfit::RemovedFromTopology,
                "removed",
                "removed from the topology",
            ),
            (
                Unfit::SessionEnded { old: 7, new: 8 },
                "session_ended",
                "its agent's session ended (lease 7 replaced by 8)",
            ),
            (
                Unfit::Restarted { from: 1, to: 2 },
                "restarted",
                "restarted since it was granted (incarnation 1 → 2)",
            ),
        ];
        for (unfit, name, sentence) in cases {
            assert_eq!((unfit.name(), unfit.to_string().as_str()), (name, sentence));
        }
    }

    #[test]
    fn causes_have_a_name_and_the_sentence_shown() {
        let cases = [
            (
                Cause::Failed {
                    app: "web".into(),
                    instance: "a".into(),
                    why: Unfit::NotRunning {
                        last_exit: Some("killed by signal 9 (SIGKILL)".into()),
                    },
                },
                "not_running",
                "primary web/a failed: not running: killed by signal 9 (SIGKILL)",
            ),
            (
                Cause::Switchover {
                    intent: "i1".into(),
                },
                "switchover",
                "planned switchover (intent i1)",
            ),
            (
                Cause::NoPrimary { app: "web".into() },
                "no_primary",
                "web had no primary",
            ),
            (
                Cause::Earlier {
                    reason: "switchover requested: demoting web/a, then promoting web/b".into(),
                    name: Some(CauseName::Switchover),
                },
                "switchover",
                "switchover requested: demoting web/a, then promoting web/b",
            ),
            (
                Cause::Earlier {
                    reason: "primary web/a failed: unhealthy".into(),
                    name: None,
                },
                "withdrawn",
                "primary web/a failed: unhealthy",
            ),
        ];
        for (cause, name, sentence) in cases {
            assert_eq!((cause.name(), cause.to_string().as_str()), (name, sentence));
        }
    }
}
