//! The cluster as the API sees it in the store: failovers, their duration,
//! intents, and every instance's role and epoch.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tandem_core::model::{Event, EventKind, InstanceStatus};

use tandem_core::topology::Topology;

use crate::seconds_histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailoverLabels {
    app: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntentLabels {
    app: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    why: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// An instance: its app, its id within the app (`id`, not `instance`,
/// which Prometheus gives the scrape target), and its host.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    app: String,
    id: String,
    host: String,
}

/// Admin-data mirroring from a primary (`from`) to a backup (`to`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLabels {
    app: String,
    from: String,
    to: String,
}

/// [`AdminLabels`] and a quantile of the recent lags (`last`, `0.5`,
/// `0.99`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminLagLabels {
    app: String,
    from: String,
    to: String,
    quantile: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    app: String,
    id: String,
    host: String,
    role: String,
}

/// What the API counts from the event log.
#[derive(Debug)]
pub struct ClusterMetrics {
    registry: Registry,
    failovers: Family<FailoverLabels, Counter>,
    failover_seconds: Family<AppLabels, Histogram, fn() -> Histogram>,
    intents: Family<IntentLabels, Counter>,
    events: Family<KindLabels, Counter>,
    auth_refused: Family<WhyLabels, Counter>,
    /// When each app's primary was last found failed or withdrawn (ms),
    /// until a new one serves.
    detected: std::sync::Mutex<BTreeMap<String, u64>>,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics::new()
    }
}

impl ClusterMetrics {
    /// Fresh metrics.
    pub fn new() -> ClusterMetrics {
        let mut registry = Registry::with_prefix("tandem");
        let m = ClusterMetrics {
            failovers: Family::default(),
            failover_seconds: Family::new_with_constructor(seconds_histogram),
            intents: Family::default(),
            events: Family::default(),
            auth_refused: Family::default(),
            detected: Default::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "failovers",
            "Primaries granted, by app and reason (the cause the controller stored: no_primary for a first primary; not_running, unhealthy, host_lost, crash_looping, restarted, session_ended, removed, switchover, withdrawn, ...)",
            m.failovers.clone(),
        );
        r.register(
            "failover_seconds",
            "Time from a primary found failed (or withdrawn for a switchover) to its successor serving, by app",
            m.failover_seconds.clone(),
        );
        r.register(
            "intents",
            "Operator requests answered by this API, by app, kind (switchover, maintenance) and outcome (done, refused, accepted: still under way at the request's timeout)",
            m.intents.clone(),
        );
        r.register("events", "Events in the log, by kind", m.events.clone());
        r.register(
            "api_auth_refused",
            "Requests the API refused for their token, by why (missing, unknown, malformed, forbidden: a read token on a mutation)",
            m.auth_refused.clone(),
        );
        ClusterMetrics { registry, ..m }
    }

    /// The registry of counters and histograms.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one event of the log (each once, in order).
    pub fn observe(&self, ev: &Event) {
        self.events
            .get_or_create(&KindLabels {
                kind: ev.kind.as_str().into(),
            })
            .inc();
        let Some(app) = &ev.app else {
            return;
        };
        let mut detected = self.detected.lock().unwrap_or_else(|e| e.into_inner());
        match ev.kind {
            EventKind::PrimaryFailed => {
                detected.entry(app.clone()).or_insert(ev.t_ms);
            }
            EventKind::Demoted if ev.reason.as_deref() == Some("switchover") => {
                detected.entry(app.clone()).or_insert(ev.t_ms);
            }
            EventKind::Promoted => {
                self.failovers
                    .get_or_create(&FailoverLabels {
                        app: app.clone(),
                        reason: ev.reason.clone().unwrap_or_else(|| "unknown".into()),
                    })
                    .inc();
            }
            EventKind::Serving => {
                if let Some(t) = detected.remove(app) {
                    let seconds = ev.t_ms.saturating_sub(t) as f64 / 1000.0;
                    self.failover_seconds
                        .get_or_create(&AppLabels { app: app.clone() })
                        .observe(seconds);
                }
            }
            _ => {}
        }
    }

    /// Counts a request refused for its token.
    pub fn auth_refused(&self, why: &'static str) {
        self.auth_refused.get_or_create(&WhyLabels { why }).inc();
    }

    /// Counts an operator request this API answered.
    pub fn intent_answered(&self, app: &str, kind: &'static str, outcome: &'static str) {
        tracing::debug!(app, kind, outcome, "intent answered");
        self.intents
            .get_or_create(&IntentLabels {
                app: app.into(),
                kind,
                outcome,
            })
            .inc();
    }
}

/// When the store cannot be read: only `tandem_api_store_reachable 0`.
pub fn unreachable_registry() -> Registry {
    let mut registry = Registry::with_prefix("tandem");
    let reachable: Gauge = Gauge::default();
    registry.register(
        "api_store_reachable",
        "1 when the API could read the coordination store for this scrape, else 0",
        reachable,
    );
    registry
}

/// What the store says now, as gauges: every instance's role and epoch,
/// and whether each app with a primary mode has an acknowledged primary.
pub fn state_registry(
    topology: &Topology,
    statuses: &BTreeMap<(String, String), InstanceStatus>,
    primaries: &BTreeMap<String, Option<u64>>,
) -> Registry {
    let mut registry = Registry::with_prefix("tandem");
    let reachable: Gauge = Gauge::default();
    reachable.set(1);
    registry.register(
        "api_store_reachable",
        "1 when the API could read the coordination store for this scrape, else 0",
        reachable,
    );
    let role: Family<RoleLabels, Gauge> = Family::default();
    let epoch: Family<InstanceLabels, Gauge> = Family::default();
    let looping: Family<InstanceLabels, Gauge> = Family::default();
    let has_primary: Family<AppLabels, Gauge> = Family::default();
    let app_epoch: Family<AppLabels, Gauge> = Family::default();
    let admin_lag: Family<AdminLagLabels, Gauge<f64, std::sync::atomic::AtomicU64>> =
        Family::default();
    let admin_pending: Family<AdminLabels, Gauge> = Family::default();
    let admin_in_sync: Family<AdminLabels, Gauge> = Family::default();
    for app in &topology.apps {
        for i in &app.instances {
            let status = statuses.get(&(app.name.clone(), i.id.clone()));
            let labels = InstanceLabels {
                app: app.name.clone(),
                id: i.id.clone(),
                host: i.host.clone(),
            };
            let acting = status.map_or("stopped".to_string(), |s| s.acting.to_string());
            role.get_or_create(&RoleLabels {
                app: labels.app.clone(),
                id: labels.id.clone(),
                host: labels.host.clone(),
                role: acting,
            })
            .set(1);
            epoch
                .get_or_create(&labels)
                .set(status.map_or(0, |s| s.acting_epoch as i64));
            looping
                .get_or_create(&labels)
                .set(i64::from(status.is_some_and(|s| s.crash_looping)));
            let Some(source) = status.and_then(|s| s.admin.source.as_ref()) else {
                continue;
            };
            for (to, b) in &source.backups {
                let l = AdminLabels {
                    app: app.name.clone(),
                    from: i.id.clone(),
                    to: to.clone(),
                };
                admin_pending.get_or_create(&l).set(b.pending as i64);
                admin_in_sync.get_or_create(&l).set(i64::from(b.in_sync));
                for (quantile, us) in [
                    ("last", b.lag_us),
                    ("0.5", b.lag_p50_us),
                    ("0.99", b.lag_p99_us),
                ] {
                    if let Some(us) = us {
                        admin_lag
                            .get_or_create(&AdminLagLabels {
                                app: l.app.clone(),
                                from: l.from.clone(),
                                to: l.to.clone(),
                                quantile: quantile.into(),
                            })
                            .set(us as f64 / 1e6);
                    }
                }
            }
        }
        if let Some(p) = primaries.get(&app.name) {
            let labels = AppLabels {
                app: app.name.clone(),
            };
            has_primary
                .get_or_create(&labels)
                .set(i64::from(p.is_some()));
            app_epoch.get_or_create(&labels).set(p.unwrap_or(0) as i64);
        }
    }
    registry.register(
        "instance_role",
        "1 for each instance's current role (the one its process acknowledged); `id` is the instance's id within its app",
        role,
    );
    registry.register(
        "instance_epoch",
        "The epoch that came with each instance's role",
        epoch,
    );
    registry.register(
        "instance_crash_looping",
        "1 while an instance restarts too often in a row (it is not promoted until it runs stably)",
        looping,
    );
    registry.register(
        "app_primary",
        "1 while an app with a primary mode has an acknowledged primary, else 0",
        has_primary,
    );
    registry.register(
        "app_epoch",
        "The epoch of each app's acknowledged primary (0: none)",
        app_epoch,
    );
    registry.register(
        "admin_sync_lag_seconds",
        "Admin data: write on the primary (`from`) to durable on the backup (`to`), last push and quantiles of the recent ones",
        admin_lag,
    );
    registry.register(
        "admin_sync_pending",
        "Admin data: changes of the primary not yet acknowledged by the backup",
        admin_pending,
    );
    registry.register(
        "admin_sync_in_sync",
        "Admin data: 1 while the backup holds everything the primary has, else 0",
        admin_in_sync,
    );
    registry
}
