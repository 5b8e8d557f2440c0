//! tandem's typed internal events and the Prometheus metrics they update.
//!
//! Every observable thing the runtime does is a typed event defined once
//! here (vector's `internal_events/` is the model): emitting it logs it with
//! `tracing` and updates its metric, so a log line and a metric never
//! disagree and a new event cannot forget either.
//!
//! - [`host`]: one agent's view ([`host::HostMetrics`]): lease renewals and
//!   their latency, decisions of the host machine by reason (fencing,
//!   failsafe rounds, holds), processes started, exited and killed, probe
//!   and hook latency. Served on the agent's port.
//! - [`controller`]: the elected controller's work
//!   ([`controller::ControllerMetrics`]): decision passes, store request
//!   latency, events written by kind.
//! - [`cluster`]: the cluster as the API sees it in the store
//!   ([`cluster::ClusterMetrics`]): failovers by app and reason, time from
//!   detection to the new primary serving, intents by outcome, and each
//!   instance's role and epoch at scrape time. Served on the API.
//!
//! Metric names follow Prometheus conventions: the `tandem_` prefix, base
//! units (`_seconds`), and `_total` on counters (added by the encoder).
//! Each component owns its [`Registry`]: several agents in one process
//! (`tandem up`) each expose their own.
#![deny(missing_docs)]

pub mod cluster;
pub mod controller;
pub mod host;

use std::time::Duration;

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::Registry;

/// The media type of [`encode`]'s output (OpenMetrics text, which
/// Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Encodes registries as one OpenMetrics text exposition.
pub fn encode(registries: &[&Registry]) -> String {
    let mut out = String::new();
    for r in registries {
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, r);
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

/// A histogram of durations in seconds, from 0.5 ms to about 16 s.
pub(crate) fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// A duration in seconds, for a histogram.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
