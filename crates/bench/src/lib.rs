//! tandem's benchmarks: the measurements behind `tandem bench`, which print
//! the figures of DESIGN.md's performance targets (tests never time
//! anything).
//!
//! Each bench runs real components and kills them with SIGKILL, trial after
//! trial: on this machine under an in-process agent and controller
//! ([`failover`], [`cold`], [`singleton`], [`hot`], [`discovery`],
//! [`proxy`], and [`pool`] for dispatch), or as `tandem agent`
//! processes on an etcd cluster ([`etcd_load`]; [`host_loss`] and
//! [`site_loss`] on a cluster of network namespaces they build
//! themselves); and what
//! N apps cost a real `tandem up` ([`scale`]); admin-data mirroring's
//! lag ([`admin_sync`]) and an exclusive link group's switch
//! ([`exclusive_switch`]). The `tandem`
//! binary parses the flags and calls these functions; they run inside it:
//! the components they start are `tandem` subcommands (this executable, or
//! `tandem` on the `PATH`).
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // a benchmark reads clocks

mod admin_sync;
mod exclusive;
pub mod figures;
mod host_loss;
mod hosts;
mod local;
mod netrig;
mod scale;
mod site_loss;

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;

use tandem_store::Store;

pub use admin_sync::{AdminSync, admin_sync};
pub use exclusive::exclusive_switch;
pub use host_loss::{Fault, Fencing, HostLoss, host_loss};
pub use hosts::{EtcdLoad, etcd_load};
pub use local::{cold, discovery, failover, hot, pool, proxy, singleton};
pub use scale::{Scale, scale};
pub use site_loss::{SiteLoss, site_loss};

/// The trials of a bench on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trials {
    /// Number of trials.
    pub trials: usize,
    /// Print the figures as JSON.
    pub json: bool,
    /// Run on this etcd cluster (etcd://h1:2379,...) instead of the
    /// embedded store.
    pub store: Option<String>,
}

/// How a bench reaches the etcd cluster of a store URL
/// (`etcd://h1:2379,...`): the caller's (the CLI connects as
/// `tandem agent --store URL` does, so the figures are production's).
pub trait Connect: Sync {
    /// Connects to the cluster `url` names.
    fn connect(&self, url: &str) -> impl Future<Output = anyhow::Result<Arc<dyn Store>>> + Send;
}

/// A free TCP port on loopback.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
