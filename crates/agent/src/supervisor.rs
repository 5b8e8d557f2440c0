//! One host's agent on a shared store (`tandem agent`), run under the
//! topology stored at `/tandem/topology` and following it without
//! restarting.
//!
//! The supervisor reads the topology at start (waiting for one to be
//! applied), runs the host's agent and controller candidate ([`Local`]),
//! and when the stored topology changes applies it in place: only the
//! instances whose settings changed restart, removed ones stop, new ones
//! start, and the controller candidates start again with it. A change of
//! the cluster settings or of this host's own record restarts every
//! instance of the host. A [`Companion`] (the CLI's API server) is started
//! with each topology the host runs.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_core::model::keys;
use tandem_core::topology::Topology;
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{EventKind, Store};
use tokio_util::sync::CancellationToken;

use crate::local::{Local, LocalOptions};

/// Pause between reads while no topology is stored or the store fails.
const READ_RETRY: Duration = Duration::from_millis(500);
/// Pause before re-reading the topology after its watch broke.
const TOPOLOGY_RETRY: Duration = Duration::from_millis(500);

/// A service that runs beside the agent and serves the topology it runs
/// (`tandem agent --api`: the HTTP API). Started with each topology the
/// host runs, stopped before the next one and at the end.
pub trait Companion: Send {
    /// Starts serving `topology`, beside the agents and controller
    /// candidates of `local`.
    fn start(
        &mut self,
        topology: &Arc<Topology>,
        local: &Local,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Stops serving, and returns once stopped (what `start` took, such as
    /// a listening port, is free again).
    fn stop(&mut self) -> impl Future<Output = ()> + Send;
}

/// No companion.
impl Companion for () {
    async fn start(&mut self, _topology: &Arc<Topology>, _local: &Local) -> anyhow::Result<()> {
        Ok(())
    }

    async fn stop(&mut self) {}
}

/// How to run this host's agent.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// This machine's host name in the topology.
    pub host: String,
    /// Where instance logs and role files go.
    pub data_dir: PathBuf,
    /// The agent's options (the API address given to instances, the
    /// watchdog command).
    pub local: LocalOptions,
}

/// Runs this host's agent under the stored topology, following its
/// changes, until `stop` is cancelled; then stops every instance and the
/// companion. Fails if the stored topology is unreadable or does not name
/// this host, or if the agent or the companion cannot start.
pub async fn run(
    store: Arc<dyn Store>,
    config: SupervisorConfig,
    companion: &mut impl Companion,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let host = config.host.as_str();
    let mut next: Option<(Arc<Topology>, u64)> = None;
    'restart: loop {
        let (topology, revision) = match next.take() {
            Some(t) => t,
            None => match stored_topology(&store, &stop).await? {
                Some(t) => t,
                None => break,
            },
        };
        check_host(&topology, host)?;
        tracing::info!(host, topology = %topology.name, revision, "running");
        let mut local = Local::start_with(
            store.clone(),
            topology.clone(),
            std::slice::from_ref(&config.host),
            config.data_dir.clone(),
            config.local.clone(),
        )?;
        companion.start(&topology, &local).await?;
        // Tell systemd (Type=notify) the agent runs; nothing without
        // NOTIFY_SOCKET.
        if let Err(e) = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("running topology {}", topology.name)),
        ]) {
            tracing::warn!(error = %e, "cannot tell systemd the agent is ready");
        }
        let (mut current, mut revision) = (topology, revision);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                    local.stop().await?;
                    companion.stop().await;
                    break 'restart;
                }
                _ = topology_changed(&store, revision) => {}
            }
            let Some((new, new_revision)) = stored_topology(&store, &stop).await? else {
                continue;
            };
            check_host(&new, host)?;
            // The companion serves the topology it was given: serve the new one.
            companion.stop().await;
            if new.cluster == current.cluster && new.host(host) == current.host(host) {
                tracing::info!(
                    revision = new_revision,
                    "the topology changed: applying it to the instances it changes"
                );
                local.update(new.clone()).await;
                companion.start(&new, &local).await?;
                (current, revision) = (new, new_revision);
            } else {
                tracing::warn!(
                    revision = new_revision,
                    "the cluster settings or this host changed: restarting this host's instances with the new topology"
                );
                local.stop().await?;
                next = Some((new, new_revision));
                continue 'restart;
            }
        }
    }
    Ok(())
}

/// Reads the stored topology, waiting for one; returns it with its
/// revision, or `None` once `stop` is cancelled.
async fn stored_topology(
    store: &Arc<dyn Store>,
    stop: &CancellationToken,
) -> anyhow::Result<Option<(Arc<Topology>, u64)>> {
    let mut said = false;
    loop {
        match store.get(keys::TOPOLOGY).await {
            Ok(Some(kv)) => {
                let t: Topology = serde_json::from_slice(&kv.value)
                    .context("the stored topology is unreadable")?;
                return Ok(Some((Arc::new(t), kv.mod_revision)));
            }
            Ok(None) if !said => {
                tracing::warn!("no topology stored yet: waiting for `tandem topology apply FILE`");
                said = true;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the topology; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(READ_RETRY) => {}
        }
    }
}

/// Waits until the stored topology changes after `revision`.
async fn topology_changed(store: &Arc<dyn Store>, revision: u64) {
    let mut topology = follow(
        store.clone(),
        keys::TOPOLOGY,
        Start::At(revision + 1),
        AfterBreak::Relist,
    )
    .retry_delay(TOPOLOGY_RETRY, TOPOLOGY_RETRY);
    loop {
        match topology.next().await {
            FollowItem::Change(ev) if ev.kv.key == keys::TOPOLOGY && ev.kind == EventKind::Put => {
                return;
            }
            FollowItem::Snapshot(listing)
                if listing
                    .kvs
                    .iter()
                    .any(|kv| kv.key == keys::TOPOLOGY && kv.mod_revision > revision) =>
            {
                return;
            }
            FollowItem::Change(_) | FollowItem::Snapshot(_) | FollowItem::Interrupted(_) => {}
        }
    }
}

/// Fails if `host` is not in `topology`.
fn check_host(topology: &Topology, host: &str) -> anyhow::Result<()> {
    if topology.host(host).is_none() {
        let hosts: Vec<&str> = topology.hosts.iter().map(|h| h.name.as_str()).collect();
        bail!(
            "host {host:?} is not in topology {} (its hosts: {})",
            topology.name,
            hosts.join(", ")
        );
    }
    Ok(())
}
