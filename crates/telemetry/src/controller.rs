//! The elected controller's events and metrics (served with the API of
//! the same process).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::{seconds_histogram, secs};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// One thing the controller did.
#[derive(Debug, Clone, Copy)]
pub enum ControllerEvent<'a> {
    /// This process's controller candidate was elected.
    Elected {
        /// Its host.
        host: &'a str,
    },
    /// It stopped leading.
    Deposed {
        /// Why.
        why: &'a str,
    },
    /// One decision pass over the apps that changed.
    Pass {
        /// How many apps it decided.
        apps: usize,
        /// How long it took, writes included.
        latency: Duration,
    },
    /// A request to the coordination store.
    StoreRequest {
        /// Which (`txn`, `list`, `watch`, ...).
        op: &'static str,
        /// How long it took.
        latency: Duration,
        /// Whether it succeeded.
        ok: bool,
    },
    /// A fence device run ended.
    FenceRun {
        /// The fenced host.
        host: &'a str,
        /// `confirmed` or `failed`.
        outcome: &'static str,
        /// How long it ran.
        latency: Duration,
    },
    /// An event was written to the log.
    EventWritten {
        /// Its kind (`promoted`, `primary-failed`, ...).
        kind: &'a str,
    },
    /// A webhook delivery ended: delivered, or given up after its retries.
    WebhookDelivery {
        /// The webhook's name.
        webhook: &'a str,
        /// The event's sequence number.
        seq: u64,
        /// `delivered` or `failed`.
        outcome: &'static str,
        /// Attempts made.
        attempts: u32,
        /// From the first attempt to the end of the last one.
        latency: Duration,
    },
}

/// The controller's metrics.
#[derive(Debug)]
pub struct ControllerMetrics {
    registry: Registry,
    leading: Gauge,
    passes: Counter,
    pass_seconds: Histogram,
    store_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    events: Family<KindLabels, Counter>,
    fence_runs: Family<FenceLabels, Counter>,
    fence_seconds: Histogram,
    webhook_deliveries: Family<WebhookLabels, Counter>,
    webhook_seconds: Family<WebhookNameLabels, Histogram, fn() -> Histogram>,
}

/// Labels of a webhook delivery.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
    outcome: &'static str,
}

/// A webhook's name, as a label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookNameLabels {
    webhook: String,
}

/// Labels of a fence device run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FenceLabels {
    host: String,
    outcome: &'static str,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        ControllerMetrics::new()
    }
}

impl ControllerMetrics {
    /// Fresh metrics.
    pub fn new() -> ControllerMetrics {
        let mut registry = Registry::with_prefix("tandem");
        let m = ControllerMetrics {
            leading: Gauge::default(),
            passes: Counter::default(),
            pass_seconds: seconds_histogram(),
            store_seconds: Family::new_with_constructor(seconds_histogram),
            events: Family::default(),
            fence_runs: Family::default(),
            fence_seconds: seconds_histogram(),
            webhook_deliveries: Family::default(),
            webhook_seconds: Family::new_with_constructor(seconds_histogram),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "controller_leading",
            "1 while this process's controller candidate leads, else 0",
            m.leading.clone(),
        );
        r.register(
            "controller_passes",
            "Decision passes of the controller over the apps that changed",
            m.passes.clone(),
        );
        r.register(
            "controller_pass_seconds",
            "Duration of a decision pass, the store writes included",
            m.pass_seconds.clone(),
        );
        r.register(
            "store_request_seconds",
            "Latency of the controller's requests to the coordination store, by op and outcome",
            m.store_seconds.clone(),
        );
        r.register(
            "controller_events",
            "Events the controller wrote to the log, by kind",
            m.events.clone(),
        );
        r.register(
            "fence_runs",
            "Fence device runs of the controller, by host and outcome (confirmed, failed)",
            m.fence_runs.clone(),
        );
        r.register(
            "fence_run_seconds",
            "Duration of a fence device run, from its start to its exit",
            m.fence_seconds.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook deliveries of the controller, by webhook and outcome (delivered, failed: given up after its retries)",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "webhook_delivery_seconds",
            "Duration of a webhook delivery, from its first attempt to the end of its last, retries included",
            m.webhook_seconds.clone(),
        );
        ControllerMetrics { registry, ..m }
    }

    /// The registry to serve.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Logs `ev` and updates its metric.
    pub fn emit(&self, ev: ControllerEvent<'_>) {
        match ev {
            ControllerEvent::Elected { host } => {
                info!(host, "this host's controller candidate leads");
                self.leading.set(1);
            }
            ControllerEvent::Deposed { why } => {
                warn!("controller stopped leading: {why}");
                self.leading.set(0);
            }
            ControllerEvent::Pass { apps, latency } => {
                tracing::debug!(apps, pass_us = latency.as_micros() as u64, "decision pass");
                self.passes.inc();
                self.pass_seconds.observe(secs(latency));
            }
            ControllerEvent::StoreRequest { op, latency, ok } => {
                self.store_seconds
                    .get_or_create(&OpLabels {
                        op,
                        outcome: if ok { "ok" } else { "failed" },
                    })
                    .observe(secs(latency));
            }
            ControllerEvent::FenceRun {
                host,
                outcome,
                latency,
            } => {
                self.fence_runs
                    .get_or_create(&FenceLabels {
                        host: host.into(),
                        outcome,
                    })
                    .inc();
                self.fence_seconds.observe(secs(latency));
            }
            ControllerEvent::WebhookDelivery {
                webhook,
                seq,
                outcome,
                attempts,
                latency,
            } => {
                if outcome == "delivered" {
                    tracing::debug!(webhook, seq, attempts, "webhook delivered event {seq}");
                } else {
                    warn!(
                        webhook,
                        seq, attempts, "webhook gave up delivering event {seq}"
                    );
                }
                self.webhook_deliveries
                    .get_or_create(&WebhookLabels {
                        webhook: webhook.into(),
                        outcome,
                    })
                    .inc();
                self.webhook_seconds
                    .get_or_create(&WebhookNameLabels {
                        webhook: webhook.into(),
                    })
                    .observe(secs(latency));
            }
            ControllerEvent::EventWritten { kind } => {
                self.events
                    .get_or_create(&KindLabels { kind: kind.into() })
                    .inc();
            }
        }
    }
}
