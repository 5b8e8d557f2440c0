//! One agent's events and metrics (served on its agent port).

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tandem_core::detector::Change;
use tandem_core::host::{HostNote, Level};
use tandem_core::instance::KillReason;
use tracing::{debug, info, warn};

use crate::{seconds_histogram, secs};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    /// The peer host (`host` is the agent's own).
    peer: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    app: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExitLabels {
    app: String,
    /// `tandem` (tandem stopped or killed it), `signal`, `code`.
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    app: String,
    role: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    app: String,
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// How a process ended, for the `cause` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// tandem stopped or killed it (a role change, fencing, shutdown).
    Tandem,
    /// A signal nobody in tandem sent.
    Signal,
    /// It exited by itself.
    Code,
}

impl ExitCause {
    fn label(self) -> &'static str {
        match self {
            ExitCause::Tandem => "tandem",
            ExitCause::Signal => "signal",
            ExitCause::Code => "code",
        }
    }
}

/// One thing an agent did or saw.
#[derive(Debug, Clone, Copy)]
pub enum HostEvent<'a> {
    /// A keep-alive of the host lease succeeded.
    LeaseRenewed {
        /// From sending it to its answer.
        latency: Duration,
    },
    /// A keep-alive (or a grant) failed or timed out.
    LeaseRenewFailed {
        /// Why.
        error: &'a str,
    },
    /// A decision of the host machine.
    Decision(&'a HostNote),
    /// A process was started.
    ProcessStarted {
        /// Its app.
        app: &'a str,
        /// `app/instance`.
        instance: &'a str,
        /// Its pid.
        pid: u32,
        /// Its incarnation (1: the first start).
        incarnation: u64,
        /// The role in its environment.
        role: &'a str,
    },
    /// A process could not be started.
    SpawnFailed {
        /// Its app.
        app: &'a str,
        /// `app/instance`.
        instance: &'a str,
        /// Why.
        error: &'a str,
    },
    /// tandem killed a process (SIGKILL to its group).
    Killed {
        /// Its app.
        app: &'a str,
        /// `app/instance`.
        instance: &'a str,
        /// Why.
        reason: &'a KillReason,
    },
    /// A process ended.
    ProcessExited {
        /// Its app.
        app: &'a str,
        /// `app/instance`.
        instance: &'a str,
        /// How ("killed by signal 9 (SIGKILL)").
        how: &'a str,
        /// Who ended it.
        cause: ExitCause,
    },
    /// A health probe answered.
    Probed {
        /// Its app.
        app: &'a str,
        /// How long it took.
        latency: Duration,
        /// Whether it passed.
        ok: bool,
    },
    /// A role hook finished.
    HookDone {
        /// Its app.
        app: &'a str,
        /// `app/instance`.
        instance: &'a str,
        /// The role it delivered.
        role: &'a str,
        /// The epoch it delivered.
        epoch: u64,
        /// How long it took.
        latency: Duration,
        /// Whether it succeeded.
        ok: bool,
    },
    /// The heartbeat detector suspected a peer host, or cleared it.
    Suspicion(&'a Change),
    /// A heartbeat datagram was dropped.
    HeartbeatDropped {
        /// Why (`malformed`, `unknown_host`, `wrong_address`, `stale`,
        /// `untagged`, `unauthenticated`, `replayed`).
        why: &'static str,
    },
}

/// An agent's metrics, labelled with its host.
#[derive(Debug)]
pub struct HostMetrics {
    registry: Registry,
    lease_renewals: Family<OutcomeLabels, Counter>,
    lease_renewal_seconds: Histogram,
    decisions: Family<ReasonLabels, Counter>,
    processes_started: Family<AppLabels, Counter>,
    process_restarts: Family<AppLabels, Counter>,
    processes_exited: Family<ExitLabels, Counter>,
    spawn_failures: Family<AppLabels, Counter>,
    kills: Family<KillLabels, Counter>,
    probe_seconds: HistogramFamily<ProbeLabels>,
    hook_seconds: HistogramFamily<HookLabels>,
    store_reachable: Gauge,
    suspicions: Family<PeerLabels, Counter>,
    suspicions_cleared: Family<PeerLabels, Counter>,
    hosts_suspected: Gauge,
    liveness_connections: Gauge,
    heartbeats_received: Counter,
    heartbeats_dropped: Family<WhyLabels, Counter>,
}

impl HostMetrics {
    /// The metrics of the agent of `host`.
    pub fn new(host: &str) -> HostMetrics {
        let mut registry = Registry::with_prefix_and_labels(
            "tandem",
            [(Cow::Borrowed("host"), Cow::Owned(host.to_string()))].into_iter(),
        );
        let m = HostMetrics {
            lease_renewals: Family::default(),
            lease_renewal_seconds: seconds_histogram(),
            decisions: Family::default(),
            processes_started: Family::default(),
            process_restarts: Family::default(),
            processes_exited: Family::default(),
            spawn_failures: Family::default(),
            kills: Family::default(),
            probe_seconds: Family::new_with_constructor(seconds_histogram),
            hook_seconds: Family::new_with_constructor(seconds_histogram),
            store_reachable: Gauge::default(),
            suspicions: Family::default(),
            suspicions_cleared: Family::default(),
            hosts_suspected: Gauge::default(),
            liveness_connections: Gauge::default(),
            heartbeats_received: Counter::default(),
            heartbeats_dropped: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "lease_renewals",
            "Keep-alives of the host lease, by outcome (ok, failed)",
            m.lease_renewals.clone(),
        );
        r.register(
            "lease_renewal_seconds",
            "Time from sending a keep-alive of the host lease to its answer",
            m.lease_renewal_seconds.clone(),
        );
        r.register(
            "host_decisions",
            "Decisions of the agent's host machine, by reason (session_fenced: fencing; failsafe_*: failsafe rounds and promises; promotion_held, hold_ended; instance: a note of an instance's machine)",
            m.decisions.clone(),
        );
        r.register(
            "processes_started",
            "Instance processes started, by app",
            m.processes_started.clone(),
        );
        r.register(
            "process_restarts",
            "Instance processes started again after an earlier run, by app",
            m.process_restarts.clone(),
        );
        r.register(
            "processes_exited",
            "Instance processes that ended, by app and cause (tandem: tandem stopped or killed it; signal; code)",
            m.processes_exited.clone(),
        );
        r.register(
            "spawn_failures",
            "Instance processes that could not be started, by app",
            m.spawn_failures.clone(),
        );
        r.register(
            "kills",
            "SIGKILLs tandem sent to instance process groups, by app and reason",
            m.kills.clone(),
        );
        r.register(
            "probe_seconds",
            "Health probe latency, by app and outcome (ok, failed)",
            m.probe_seconds.clone(),
        );
        r.register(
            "hook_seconds",
            "Role hook latency, by app, role delivered and outcome (ok, failed)",
            m.hook_seconds.clone(),
        );
        r.register(
            "store_reachable",
            "1 while the host lease is renewed in time (the store answers), else 0",
            m.store_reachable.clone(),
        );
        r.register(
            "host_suspicions",
            "Peer hosts this agent's heartbeats suspected lost, by peer and reason (silent: no heartbeat for heartbeat_interval x missed_heartbeats; connection_closed: its agent process ended)",
            m.suspicions.clone(),
        );
        r.register(
            "host_suspicions_cleared",
            "Suspected peer hosts cleared, by peer and reason (heard_again: heartbeats steady again)",
            m.suspicions_cleared.clone(),
        );
        r.register(
            "hosts_suspected",
            "Peer hosts suspected lost now",
            m.hosts_suspected.clone(),
        );
        r.register(
            "liveness_connections",
            "Liveness connections open to peer agents (one per peer while it runs)",
            m.liveness_connections.clone(),
        );
        r.register(
            "heartbeats_received",
            "Heartbeat datagrams received from peer agents (dropped ones included)",
            m.heartbeats_received.clone(),
        );
        r.register(
            "heartbeats_dropped",
            "Heartbeat datagrams dropped, by why (malformed, unknown_host, wrong_address, stale)",
            m.heartbeats_dropped.clone(),
        );
        // The decisions alerts follow exist from the start, at 0, so that
        // their first occurrence is an increase.
        for reason in ["session_fenced", "fenced", "crash_looping", "failsafe_kept"] {
            let _ = m.decisions.get_or_create(&ReasonLabels { reason });
        }
        HostMetrics { registry, ..m }
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sets whether the store is reachable from this host.
    pub fn set_store_reachable(&self, reachable: bool) {
        self.store_reachable.set(i64::from(reachable));
    }

    /// Sets how many peer hosts are suspected now.
    pub fn set_hosts_suspected(&self, n: usize) {
        self.hosts_suspected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets how many liveness connections to peer agents are open.
    pub fn set_liveness_connections(&self, n: usize) {
        self.liveness_connections
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts heartbeat datagrams received (no log: hundreds a second).
    pub fn heartbeats_received(&self, n: u64) {
        self.heartbeats_received.inc_by(n);
    }

    /// Updates `ev`'s metric without logging it (for a second agent of the
    /// same process that shares the event, logged once by the first).
    pub fn count(&self, ev: HostEvent<'_>) {
        match ev {
            HostEvent::Suspicion(change) => {
                let labels = PeerLabels {
                    peer: change.host().to_string(),
                    reason: change.reason().name(),
                };
                match change {
                    Change::Suspected { .. } => self.suspicions.get_or_create(&labels).inc(),
                    Change::Cleared { .. } => self.suspicions_cleared.get_or_create(&labels).inc(),
                };
            }
            HostEvent::HeartbeatDropped { why } => {
                self.heartbeats_dropped
                    .get_or_create(&WhyLabels { why })
                    .inc();
            }
            _ => {}
        }
    }

    /// Logs `ev` and updates its metric.
    pub fn emit(&self, ev: HostEvent<'_>) {
        match ev {
            HostEvent::Suspicion(change) => {
                let (peer, reason) = (change.host(), change.reason().name());
                match change {
                    Change::Suspected { .. } => warn!(peer, reason, "{change}"),
                    Change::Cleared { .. } => info!(peer, reason, "{change}"),
                }
                self.count(ev);
            }
            HostEvent::HeartbeatDropped { why } => {
                debug!(why, "heartbeat datagram dropped");
                self.count(ev);
            }
            HostEvent::LeaseRenewed { latency } => {
                self.lease_renewals
                    .get_or_create(&OutcomeLabels { outcome: "ok" })
                    .inc();
                self.lease_renewal_seconds.observe(secs(latency));
            }
            HostEvent::LeaseRenewFailed { error } => {
                debug!(error, "host lease keep-alive failed");
                self.lease_renewals
                    .get_or_create(&OutcomeLabels { outcome: "failed" })
                    .inc();
            }
            HostEvent::Decision(note) => {
                let reason = note.name();
                let subject = note.subject().unwrap_or("");
                match note.level() {
                    Level::Debug => debug!(reason, subject, "{note}"),
                    Level::Info => info!(reason, subject, "{note}"),
                    Level::Warn => warn!(reason, subject, "{note}"),
                }
                self.decisions.get_or_create(&ReasonLabels { reason }).inc();
            }
            HostEvent::ProcessStarted {
                app,
                instance,
                pid,
                incarnation,
                role,
            } => {
                debug!(instance, pid, incarnation, role, "started");
                let labels = AppLabels { app: app.into() };
                self.processes_started.get_or_create(&labels).inc();
                if incarnation > 1 {
                    self.process_restarts.get_or_create(&labels).inc();
                }
            }
            HostEvent::SpawnFailed {
                app,
                instance,
                error,
            } => {
                warn!(instance, error, "cannot start");
                self.spawn_failures
                    .get_or_create(&AppLabels { app: app.into() })
                    .inc();
            }
            HostEvent::Killed {
                app,
                instance,
                reason,
            } => {
                warn!(instance, reason = reason.name(), "{reason}");
                self.kills
                    .get_or_create(&KillLabels {
                        app: app.into(),
                        reason: reason.name(),
                    })
                    .inc();
            }
            HostEvent::ProcessExited {
                app,
                instance,
                how,
                cause,
            } => {
                debug!(instance, how, cause = cause.label(), "exited");
                self.processes_exited
                    .get_or_create(&ExitLabels {
                        app: app.into(),
                        cause: cause.label(),
                    })
                    .inc();
            }
            HostEvent::Probed { app, latency, ok } => {
                self.probe_seconds
                    .get_or_create(&ProbeLabels {
                        app: app.into(),
                        outcome: if ok { "ok" } else { "failed" },
                    })
                    .observe(secs(latency));
            }
            HostEvent::HookDone {
                app,
                instance,
                role,
                epoch,
                latency,
                ok,
            } => {
                debug!(
                    instance,
                    role,
                    epoch,
                    ok,
                    hook_us = latency.as_micros() as u64,
                    "hook finished"
                );
                self.hook_seconds
                    .get_or_create(&HookLabels {
                        app: app.into(),
                        role: role.into(),
                        outcome: if ok { "ok" } else { "failed" },
                    })
                    .observe(secs(latency));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_shows_in_the_exposition_with_the_host_label() {
        let m = HostMetrics::new("h1");
        m.emit(HostEvent::LeaseRenewed {
            latency: Duration::from_millis(2),
        });
        m.emit(HostEvent::LeaseRenewFailed { error: "timeout" });
        m.emit(HostEvent::Decision(&HostNote::SessionFenced {
            host: "h1".into(),
            margin: Duration::from_secs(1),
        }));
        m.emit(HostEvent::ProcessStarted {
            app: "web",
            instance: "web/a",
            pid: 7,
            incarnation: 2,
            role: "backup",
        });
        m.emit(HostEvent::ProcessExited {
            app: "web",
            instance: "web/a",
            how: "killed by signal 9 (SIGKILL)",
            cause: ExitCause::Tandem,
        });
        m.emit(HostEvent::Probed {
            app: "web",
            latency: Duration::from_millis(1),
            ok: false,
        });
        m.set_store_reachable(true);
        let suspected = Change::Suspected {
            host: "h2".into(),
            reason: tandem_core::detector::Reason::ConnectionClosed,
        };
        m.emit(HostEvent::Suspicion(&suspected));
        m.emit(HostEvent::Suspicion(&Change::Cleared {
            host: "h2".into(),
            reason: tandem_core::detector::Reason::HeardAgain { for_ms: 30 },
        }));
        m.emit(HostEvent::HeartbeatDropped { why: "malformed" });
        m.set_hosts_suspected(1);
        m.set_liveness_connections(2);
        m.heartbeats_received(3);
        let text = crate::encode(&[m.registry()]);
        for line in [
            "tandem_lease_renewals_total{host=\"h1\",outcome=\"ok\"} 1",
            "tandem_lease_renewals_total{host=\"h1\",outcome=\"failed\"} 1",
            "tandem_lease_renewal_seconds_count{host=\"h1\"} 1",
            "tandem_host_decisions_total{host=\"h1\",reason=\"session_fenced\"} 1",
            "tandem_processes_started_total{host=\"h1\",app=\"web\"} 1",
            "tandem_process_restarts_total{host=\"h1\",app=\"web\"} 1",
            "tandem_processes_exited_total{host=\"h1\",app=\"web\",cause=\"tandem\"} 1",
            "tandem_probe_seconds_count{host=\"h1\",app=\"web\",outcome=\"failed\"} 1",
            "tandem_store_reachable{host=\"h1\"} 1",
            "tandem_host_suspicions_total{host=\"h1\",peer=\"h2\",reason=\"connection_closed\"} 1",
            "tandem_host_suspicions_cleared_total{host=\"h1\",peer=\"h2\",reason=\"heard_again\"} 1",
            "tandem_heartbeats_dropped_total{host=\"h1\",why=\"malformed\"} 1",
            "tandem_hosts_suspected{host=\"h1\"} 1",
            "tandem_liveness_connections{host=\"h1\"} 2",
            "tandem_heartbeats_received_total{host=\"h1\"} 3",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
