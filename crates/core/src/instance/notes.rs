//! What the instance machine decided and why: one typed value per kind of
//! note and per reason to kill, each with a stable name (a metric label)
//! and the sentence the log shows.

use std::fmt;
use std::time::Duration;

use crate::host::Level;
use crate::model::{Health, Role};

/// A decision of an instance's machine, for the log ([`super::Step::notes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The process's combined health changed.
    HealthChanged {
        /// `app/instance`.
        instance: String,
        /// Its health now.
        health: Health,
    },
    /// A crash-looping process has run for `stable_after`: it may be
    /// promoted again.
    StableAgain {
        /// `app/instance`.
        instance: String,
    },
    /// Its role no longer lets the process run: it is stopped gracefully.
    RoleChanged {
        /// `app/instance`.
        instance: String,
        /// The role it is assigned now.
        role: Role,
    },
    /// The process ended unasked and is restarted after a backoff.
    Exited {
        /// `app/instance`.
        instance: String,
        /// How it ended ("exited with code 1", "failed to start: …").
        how: String,
        /// The backoff before the restart.
        restart_in: Duration,
    },
    /// Quick exits in a row: it is crash-looping and not promoted.
    CrashLooping {
        /// `app/instance`.
        instance: String,
        /// The quick exits in a row.
        quick_exits: u32,
        /// How long it must run to be trusted again.
        stable_after: Duration,
    },
    /// The host lease cannot be renewed: the instance steps down.
    Fenced {
        /// `app/instance`.
        instance: String,
    },
    /// The process acknowledged a role delivered by the hook.
    RoleAcknowledged {
        /// `app/instance`.
        instance: String,
        /// The role.
        role: Role,
        /// Its epoch.
        epoch: u64,
    },
    /// A frozen primary could not be told to step down: it counts as
    /// fenced until it answers.
    FrozenFenced {
        /// `app/instance`.
        instance: String,
        /// What went wrong with the hook.
        error: String,
    },
    /// The primary drains for a planned switchover: no new work for
    /// `period`, then it reports it has drained.
    Draining {
        /// `app/instance`.
        instance: String,
        /// How long.
        period: Duration,
    },
    /// The drain period ended: reported, so that the controller withdraws
    /// the grant.
    Drained {
        /// `app/instance`.
        instance: String,
        /// How long it drained.
        period: Duration,
    },
    /// A link's target became reachable or unreachable from this
    /// instance's host.
    LinkChanged {
        /// `app/instance`.
        instance: String,
        /// The link's name.
        link: String,
        /// The target (instance id or endpoint name).
        target: String,
        /// Its new state.
        state: crate::model::Reach,
        /// Why the last probe failed, if it did.
        detail: Option<String>,
    },
    /// A link of an exclusive group was enabled and confirmed.
    LinkEnabled {
        /// `app/instance`.
        instance: String,
        /// The group.
        group: String,
        /// The link.
        link: String,
    },
    /// A link of an exclusive group was disabled and confirmed.
    LinkDisabled {
        /// `app/instance`.
        instance: String,
        /// The group.
        group: String,
        /// The link.
        link: String,
    },
    /// Enabling a link failed: it is disabled again and left alone for a
    /// while.
    LinkEnableFailed {
        /// `app/instance`.
        instance: String,
        /// The group.
        group: String,
        /// The link.
        link: String,
        /// What went wrong with the hook.
        error: String,
        /// When it may be tried again.
        retry_in: Duration,
    },
    /// The process no longer lists the group's active link: it lost it by
    /// itself.
    LinkLostByProcess {
        /// `app/instance`.
        instance: String,
        /// The group.
        group: String,
        /// The link.
        link: String,
    },
    /// A group moves from one link to another: the first is disabled now.
    LinkSwitching {
        /// `app/instance`.
        instance: String,
        /// The group.
        group: String,
        /// The link being disabled.
        from: String,
        /// The link to enable once that is confirmed.
        to: String,
        /// Whether `from` is down (else `to` is preferred).
        from_down: bool,
    },
    /// Delivering a role failed: it is delivered again after a backoff.
    HookRetry {
        /// `app/instance`.
        instance: String,
        /// The role being delivered.
        role: Role,
        /// What went wrong with the hook.
        error: String,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
}

impl Note {
    /// A stable name, usable as a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            Note::HealthChanged { .. } => "health_changed",
            Note::StableAgain { .. } => "stable_again",
            Note::RoleChanged { .. } => "role_changed",
            Note::Exited { .. } => "exited",
            Note::CrashLooping { .. } => "crash_looping",
            Note::Fenced { .. } => "fenced",
            Note::RoleAcknowledged { .. } => "role_acknowledged",
            Note::FrozenFenced { .. } => "frozen_fenced",
            Note::HookRetry { .. } => "hook_retry",
            Note::Draining { .. } => "draining",
            Note::Drained { .. } => "drained",
            Note::LinkChanged { .. } => "link_changed",
            Note::LinkEnabled { .. } => "link_enabled",
            Note::LinkDisabled { .. } => "link_disabled",
            Note::LinkEnableFailed { .. } => "link_enable_failed",
            Note::LinkSwitching { .. } => "link_switching",
            Note::LinkLostByProcess { .. } => "link_lost_by_process",
        }
    }

    /// How loudly to log it: exits, crash-looping and fencing are warnings.
    pub fn level(&self) -> Level {
        match self {
            Note::Exited { .. }
            | Note::CrashLooping { .. }
            | Note::Fenced { .. }
            | Note::FrozenFenced { .. }
            | Note::LinkEnableFailed { .. } => Level::Warn,
            _ => Level::Info,
        }
    }

    /// The instance it is about (`app/instance`).
    pub fn instance(&self) -> &str {
        match self {
            Note::HealthChanged { instance, .. }
            | Note::StableAgain { instance }
            | Note::RoleChanged { instance, .. }
            | Note::Exited { instance, .. }
            | Note::CrashLooping { instance, .. }
            | Note::Fenced { instance }
            | Note::RoleAcknowledged { instance, .. }
            | Note::FrozenFenced { instance, .. }
            | Note::HookRetry { instance, .. }
            | Note::Draining { instance, .. }
            | Note::Drained { instance, .. }
            | Note::LinkChanged { instance, .. }
            | Note::LinkEnabled { instance, .. }
            | Note::LinkDisabled { instance, .. }
            | Note::LinkEnableFailed { instance, .. }
            | Note::LinkSwitching { instance, .. }
            | Note::LinkLostByProcess { instance, .. } => instance,
        }
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::HealthChanged { instance, health } => write!(f, "{instance} is {health}"),
            Note::StableAgain { instance } => {
                write!(f, "{instance} runs stably again: no longer crash-looping")
            }
            Note::RoleChanged { instance, role } => {
                write!(f, "{instance}: its role is now {role}: stopping it")
            }
            Note::Exited {
                instance,
                how,
                restart_in,
            } => write!(
                f,
                "{instance} {how}; restarting in {} ms",
                restart_in.as_millis()
            ),
            Note::CrashLooping {
                instance,
                quick_exits,
                stable_after,
            } => write!(
                f,
                "{instance} is crash-looping ({quick_exits} quick exits in a row): it will not be promoted until it runs for {} ms",
                stable_after.as_millis()
            ),
            Note::Fenced { instance } => write!(
                f,
                "{instance}: host lease cannot be renewed: stepping down before it can expire"
            ),
            Note::RoleAcknowledged {
                instance,
                role,
                epoch,
            } => write!(f, "{instance} is now {role} (epoch {epoch})"),
            Note::FrozenFenced { instance, error } => write!(
                f,
                "{instance} is frozen and could not be told to step down ({error}): fenced until it answers"
            ),
            Note::Draining { instance, period } => write!(
                f,
                "{instance} drains for {} ms before stepping down for a planned switchover: no new work",
                period.as_millis()
            ),
            Note::LinkChanged {
                instance,
                link,
                target,
                state,
                detail,
            } => {
                write!(f, "{instance}: link {link} to {target} is {state}")?;
                match detail {
                    Some(d) if *state != crate::model::Reach::Up => write!(f, " ({d})"),
                    _ => Ok(()),
                }
            }
            Note::Drained { instance, period } => write!(
                f,
                "{instance} drained for {} ms: ready to step down",
                period.as_millis()
            ),
            Note::HookRetry {
                instance,
                role,
                error,
                retry_in,
            } => write!(
                f,
                "{instance}: delivering role {role} failed ({error}); retrying in {} ms",
                retry_in.as_millis()
            ),
            Note::LinkEnabled {
                instance,
                group,
                link,
            } => write!(
                f,
                "{instance}: enabled link {link} of exclusive group {group}"
            ),
            Note::LinkDisabled {
                instance,
                group,
                link,
            } => write!(
                f,
                "{instance}: disabled link {link} of exclusive group {group}"
            ),
            Note::LinkEnableFailed {
                instance,
                group,
                link,
                error,
                retry_in,
            } => write!(
                f,
                "{instance}: enabling link {link} of exclusive group {group} failed ({error}); disabling it, and trying it again in {} ms at the earliest",
                retry_in.as_millis()
            ),
            Note::LinkLostByProcess {
                instance,
                group,
                link,
            } => write!(
                f,
                "{instance}: no longer reports link {link} of exclusive group {group} active: it lost it by itself; choosing again"
            ),
            Note::LinkSwitching {
                instance,
                group,
                from,
                to,
                from_down,
            } => {
                let why = if *from_down {
                    format!("{from} is down and {to} is up")
                } else {
                    format!("{to} is up again and comes first")
                };
                write!(
                    f,
                    "{instance}: exclusive group {group} moves from {from} to {to} ({why}): disabling {from} first"
                )
            }
        }
    }
}

/// Why the machine kills the process at once ([`super::Action::Kill`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillReason {
    /// On-grant modes: the process started after its grant was withdrawn
    /// or the host was fenced.
    GrantEnded {
        /// `app/instance`.
        instance: String,
    },
    /// On-grant modes: the host lease may be lost, and the process runs
    /// only under a grant: no grace period.
    LeaseMayBeLost {
        /// `app/instance`.
        instance: String,
    },
    /// The host lease may be lost while a promotion is being delivered.
    LeaseLostWhilePromoting {
        /// `app/instance`.
        instance: String,
    },
    /// The promotion hook failed: the process may or may not act as
    /// primary.
    PromotionFailed {
        /// `app/instance`.
        instance: String,
        /// What went wrong with the hook.
        error: String,
    },
    /// A primary could not confirm stepping down and is not frozen (or the
    /// host is fenced).
    StepDownUnconfirmed {
        /// `app/instance`.
        instance: String,
        /// What went wrong with the hook.
        error: String,
    },
    /// A process being stopped has not exited within its app's stop
    /// timeout ([`super::Input::StopTimedOut`]).
    StopTimeout {
        /// `app/instance`.
        instance: String,
    },
    /// Disabling a link of an exclusive group was not confirmed: it may
    /// still be active, and another one is needed.
    LinkNotDisabled {
        /// `app/instance`.
        instance: String,
        /// The link.
        link: String,
        /// What went wrong with the hook.
        error: String,
    },
    /// The process reported two links of one exclusive group active.
    TwoLinksActive {
        /// `app/instance`.
        instance: String,
        /// The group.
        group: String,
        /// The links it reported active.
        links: Vec<String>,
    },
}

impl KillReason {
    /// A stable name, usable as a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            KillReason::GrantEnded { .. } => "grant_ended",
            KillReason::LeaseMayBeLost { .. } => "lease_may_be_lost",
            KillReason::LeaseLostWhilePromoting { .. } => "lease_lost_while_promoting",
            KillReason::PromotionFailed { .. } => "promotion_failed",
            KillReason::StepDownUnconfirmed { .. } => "step_down_unconfirmed",
            KillReason::StopTimeout { .. } => "stop_timeout",
            KillReason::LinkNotDisabled { .. } => "link_not_disabled",
            KillReason::TwoLinksActive { .. } => "two_links_active",
        }
    }

    /// The instance it is about (`app/instance`).
    pub fn instance(&self) -> &str {
        match self {
            KillReason::GrantEnded { instance }
            | KillReason::LeaseMayBeLost { instance }
            | KillReason::LeaseLostWhilePromoting { instance }
            | KillReason::PromotionFailed { instance, .. }
            | KillReason::StepDownUnconfirmed { instance, .. }
            | KillReason::StopTimeout { instance }
            | KillReason::LinkNotDisabled { instance, .. }
            | KillReason::TwoLinksActive { instance, .. } => instance,
        }
    }

    /// The sentence without the instance's name: why it is killed
    /// ("promotion hook failed (timeout); …").
    pub fn why(&self) -> impl fmt::Display + '_ {
        Why(self)
    }
}

/// [`KillReason::why`].
struct Why<'a>(&'a KillReason);

impl fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            KillReason::GrantEnded { .. } => f.write_str("started after its grant ended: killed"),
            KillReason::LeaseMayBeLost { .. } => f.write_str(
                "host lease may be lost: killed before it can expire (it runs only under a grant)",
            ),
            KillReason::LeaseLostWhilePromoting { .. } => {
                f.write_str("lease about to be lost while a promotion is in flight")
            }
            KillReason::PromotionFailed { error, .. } => write!(
                f,
                "promotion hook failed ({error}); the process may or may not act as primary, so it is killed"
            ),
            KillReason::StepDownUnconfirmed { error, .. } => write!(
                f,
                "could not confirm stepping down ({error}): killed so that it cannot act as primary"
            ),
            KillReason::StopTimeout { .. } => {
                f.write_str("did not stop within its stop timeout: SIGKILL")
            }
            KillReason::LinkNotDisabled { link, error, .. } => write!(
                f,
                "could not confirm disabling link {link} ({error}): killed so that two links of its exclusive group are never active at once"
            ),
            KillReason::TwoLinksActive { group, links, .. } => write!(
                f,
                "reported links {} of exclusive group {group} active at once: killed (fenced)",
                links.join(" and ")
            ),
        }
    }
}

impl fmt::Display for KillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The sentence the runtime logged when it decided this itself.
            KillReason::StopTimeout { instance } => write!(f, "{instance} {}", self.why()),
            _ => write!(f, "{}: {}", self.instance(), self.why()),
        }
    }
}

/// Why tandem asked the current process to end ([`super::InstanceMachine::ending`]).
///
/// When the process then exits, its `last_exit` reads `"{how}, by tandem:
/// {reason}"` ([`crate::model::BY_TANDEM`]), `{reason}` being this value's
/// sentence: the kill reason's sentence without the instance's name, or
/// what a graceful stop was for:
///
/// - `killed by signal 9 (SIGKILL), by tandem: promotion hook failed
///   (timeout); the process may or may not act as primary, so it is killed`
/// - `exited with code 0, by tandem: stopped because its role is now
///   standby`
/// - `exited with code 0, by tandem: stopped because its agent is shutting
///   down`
/// - `killed by signal 9 (SIGKILL), by tandem: stopped because its role is
///   now standby, then killed after its stop timeout`
///
/// The first request stands, except that a kill replaces a graceful stop
/// (the kill is what ends the process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Killed at once ([`super::Action::Kill`]).
    Killed(KillReason),
    /// Stopped gracefully ([`super::Action::Terminate`]) because its role
    /// no longer lets it run.
    RoleChanged {
        /// The role it is assigned.
        role: Role,
        /// It did not stop within its stop timeout and was killed
        /// ([`KillReason::StopTimeout`]).
        killed_after_timeout: bool,
    },
    /// Stopped gracefully because the agent is shutting down
    /// ([`super::Input::Stop`]).
    AgentStopping {
        /// It did not stop within its stop timeout and was killed
        /// ([`KillReason::StopTimeout`]).
        killed_after_timeout: bool,
    },
}

impl EndReason {
    /// A stable name, usable as a metric label: the kill reason's name,
    /// `role_changed` or `agent_stopping` (a stop timeout does not change
    /// it).
    pub fn name(&self) -> &'static str {
        match self {
            EndReason::Killed(k) => k.name(),
            EndReason::RoleChanged { .. } => "role_changed",
            EndReason::AgentStopping { .. } => "agent_stopping",
        }
    }

    /// Records that the graceful stop ended in a kill after the stop
    /// timeout.
    pub(super) fn timed_out(&mut self) {
        match self {
            EndReason::Killed(_) => {}
            EndReason::RoleChanged {
                killed_after_timeout,
                ..
            }
            | EndReason::AgentStopping {
                killed_after_timeout,
            } => *killed_after_timeout = true,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timed_out = match self {
            EndReason::Killed(k) => return k.why().fmt(f),
            EndReason::RoleChanged {
                role,
                killed_after_timeout,
            } => {
                write!(f, "stopped because its role is now {role}")?;
                killed_after_timeout
            }
            EndReason::AgentStopping {
                killed_after_timeout,
            } => {
                f.write_str("stopped because its agent is shutting down")?;
                killed_after_timeout
            }
        };
        if *timed_out {
            f.write_str(", then killed after its stop timeout")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn web_a() -> String {
        "web/a".to_string()
    }

    #[test]
    fn notes_have_a_name_a_level_and_the_logged_sentence() {
        let cases = [
            (
                Note::HealthChanged {
                    instance: web_a(),
                    health: Health::Unhealthy,
                },
                "health_changed",
                Level::Info,
                "web/a is unhealthy",
            ),
            (
                Note::StableAgain { instance: web_a() },
                "stable_again",
                Level::Info,
                "web/a runs stably again: no longer crash-looping",
            ),
            (
                Note::RoleChanged {
                    instance: web_a(),
                    role: Role::Standby,
                },
                "role_changed",
                Level::Info,
                "web/a: its role is now standby: stopping it",
            ),
            (
                Note::Exited {
                    instance: web_a(),
                    how: "exited with code 1".into(),
                    restart_in: 200 * MS,
                },
                "exited",
                Level::Warn,
                "web/a exited with code 1; restarting in 200 ms",
            ),
            (
                Note::CrashLooping {
                    instance: web_a(),
                    quick_exits: 3,
                    stable_after: 5000 * MS,
                },
                "crash_looping",
                Level::Warn,
                "web/a is crash-looping (3 quick exits in a row): it will not be promoted until it runs for 5000 ms",
            ),
            (
                Note::Fenced { instance: web_a() },
                "fenced",
                Level::Warn,
                "web/a: host lease cannot be renewed: stepping down before it can expire",
            ),
            (
                Note::RoleAcknowledged {
                    instance: web_a(),
                    role: Role::Primary,
                    epoch: 3,
                },
                "role_acknowledged",
                Level::Info,
                "web/a is now primary (epoch 3)",
            ),
            (
                Note::FrozenFenced {
                    instance: web_a(),
                    error: "timeout".into(),
                },
                "frozen_fenced",
                Level::Warn,
                "web/a is frozen and could not be told to step down (timeout): fenced until it answers",
            ),
            (
                Note::HookRetry {
                    instance: web_a(),
                    role: Role::Backup,
                    error: "exit code 1".into(),
                    retry_in: 250 * MS,
                },
                "hook_retry",
                Level::Info,
                "web/a: delivering role backup failed (exit code 1); retrying in 250 ms",
            ),
        ];
        for (note, name, level, sentence) in cases {
            assert_eq!(
                (note.name(), note.level(), note.to_string().as_str()),
                (name, level, sentence)
            );
            assert_eq!(note.instance(), "web/a");
        }
    }

    #[test]
    fn kill_reasons_have_a_name_and_the_logged_sentence() {
        let error = || "timeout".to_string();
        let cases = [
            (
                KillReason::GrantEnded { instance: web_a() },
                "grant_ended",
                "web/a: started after its grant ended: killed",
            ),
            (
                KillReason::LeaseMayBeLost { instance: web_a() },
                "lease_may_be_lost",
                "web/a: host lease may be lost: killed before it can expire (it runs only under a grant)",
            ),
            (
                KillReason::LeaseLostWhilePromoting { instance: web_a() },
                "lease_lost_while_promoting",
                "web/a: lease about to be lost while a promotion is in flight",
            ),
            (
                KillReason::PromotionFailed {
                    instance: web_a(),
                    error: error(),
                },
                "promotion_failed",
                "web/a: promotion hook failed (timeout); the process may or may not act as primary, so it is killed",
            ),
            (
                KillReason::StepDownUnconfirmed {
                    instance: web_a(),
                    error: error(),
                },
                "step_down_unconfirmed",
                "web/a: could not confirm stepping down (timeout): killed so that it cannot act as primary",
            ),
            (
                KillReason::StopTimeout { instance: web_a() },
                "stop_timeout",
                "web/a did not stop within its stop timeout: SIGKILL",
            ),
        ];
        for (reason, name, sentence) in cases {
            assert_eq!(
                (reason.name(), reason.to_string().as_str()),
                (name, sentence)
            );
            let why = reason.why().to_string();
            assert!(sentence.ends_with(&why) && !why.contains("web/a"), "{why}");
        }
    }
}
