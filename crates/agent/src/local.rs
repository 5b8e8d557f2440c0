//! Runs, in this process, an agent and a controller candidate for every
//! host of the topology whose address is on this machine.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tandem_core::topology::Topology;
use tandem_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentConfig, AgentHandle};
use crate::controller;
use crate::heartbeat::Heartbeats;
use crate::webhook;
use tandem_telemetry::controller::ControllerMetrics;

/// The addresses of this machine: loopback and every interface address.
pub fn local_addresses() -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            let Some(sa) = ifa.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                out.insert(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                out.insert(IpAddr::V6(v6.ip()));
            }
        }
    }
    out
}

/// The hosts of `topology` that live on this machine: a loopback address
/// (all of 127.0.0.0/8 is local) or an address of one of its interfaces.
pub fn local_hosts(topology: &Topology) -> Vec<String> {
    let mine = local_addresses();
    topology
        .hosts
        .iter()
        .filter(|h| {
            h.address.is_loopback() || h.address.is_unspecified() || mine.contains(&h.address)
        })
        .map(|h| h.name.clone())
        .collect()
}

/// How long the controller waits for every local agent to hold its lease.
pub const STARTUP_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// An agent's session as its controller candidate follows it.
type Session = tokio::sync::watch::Receiver<Option<tandem_store::LeaseId>>;

/// Options of [`Local::start_with`].
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// The API address given to instances as `TANDEM_API`.
    pub api: Option<String>,
    /// The watchdog command each agent runs (see [`crate::watchdog`]).
    pub watchdog: Option<Vec<std::ffi::OsString>>,
    /// The cluster secret every agent signs and checks failsafe messages
    /// with (see [`crate::sign`]); `None`: unauthenticated agent ports.
    pub secret: Option<crate::sign::ClusterSecret>,
}

/// Agents and controller candidates running in this process.
pub struct Local {
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    side: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    store: Arc<dyn Store>,
    agents: Vec<AgentHandle>,
    sessions: Vec<(String, Session)>,
    /// Cancels the controller candidates (a new topology restarts them).
    candidates: CancellationToken,
    /// The controller candidates' metrics (whichever leads).
    controller_metrics: Arc<ControllerMetrics>,
    /// The hosts this process's heartbeats suspect (see [`Suspects`]).
    suspected: Suspects,
    /// The heartbeat service that publishes them.
    heartbeats: Heartbeats,
    /// The webhooks' secrets, read at start.
    secrets: webhook::Secrets,
}

/// The hosts whose agents this process suspects to be lost (heartbeats
/// missed, or their agent's connection closed), by name.
pub type Suspects = watch::Receiver<BTreeSet<String>>;

impl Local {
    /// Starts an agent and a controller candidate for each of `hosts`. Each
    /// agent keeps its files under `data_dir/hosts/HOST`.
    pub fn start(
        store: Arc<dyn Store>,
        topology: Arc<Topology>,
        hosts: &[String],
        data_dir: PathBuf,
    ) -> anyhow::Result<Local> {
        Local::start_with_api(store, topology, hosts, data_dir, None)
    }

    /// The same, telling instances where the API is (`TANDEM_API`).
    pub fn start_with_api(
        store: Arc<dyn Store>,
        topology: Arc<Topology>,
        hosts: &[String],
        data_dir: PathBuf,
        api: Option<String>,
    ) -> anyhow::Result<Local> {
        let options = LocalOptions {
            api,
            ..LocalOptions::default()
        };
        Local::start_with(store, topology, hosts, data_dir, options)
    }

    /// The same, with every option.
    pub fn start_with(
        store: Arc<dyn Store>,
        topology: Arc<Topology>,
        hosts: &[String],
        data_dir: PathBuf,
        options: LocalOptions,
    ) -> anyhow::Result<Local> {
        let LocalOptions {
            api,
            watchdog,
            secret,
        } = options;
        // A webhook's secret file that cannot be used stops the start.
        let secrets = webhook::load_secrets(&topology)?;
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut sessions = Vec::new();
        let mut agents = Vec::new();
        for host in hosts {
            let started = agent::start(
                store.clone(),
                AgentConfig {
                    host: host.clone(),
                    topology: topology.clone(),
                    data_dir: data_dir.join("hosts").join(host),
                    api: api.clone(),
                    watchdog: watchdog.clone(),
                    secret: secret.clone(),
                },
                cancel.clone(),
            )
            .with_context(|| format!("cannot start the agent of host {host}"));
            let (handle, task) = match started {
                Ok(started) => started,
                Err(e) => {
                    // Stop the agents already started.
                    cancel.cancel();
                    return Err(e);
                }
            };
            tasks.push(task);
            sessions.push((host.clone(), handle.session.clone()));
            agents.push(handle);
        }
        let candidates = cancel.child_token();
        let controller_metrics = Arc::new(ControllerMetrics::new());
        // Heartbeats to and from every host not run here (none at all
        // when this process runs every host: nobody to hear).
        let metrics = agents.iter().map(|a| a.metrics.clone()).collect();
        let (heartbeats, suspected) = match Heartbeats::start(
            &topology,
            hosts,
            metrics,
            secret.as_ref(),
            cancel.child_token(),
        ) {
            Ok(started) => started,
            Err(e) => {
                cancel.cancel();
                return Err(e);
            }
        };
        // The controller decides once every local agent holds its lease and
        // has published its instances (bounded), so that a first decision
        // does not place everything on whichever host reported first.
        let side = vec![tokio::spawn({
            let cancel = candidates.clone();
            let sessions = sessions.clone();
            let store = store.clone();
            let metrics = controller_metrics.clone();
            let suspected = suspected.clone();
            let secrets = secrets.clone();
            async move {
                let all_up = futures::future::join_all(sessions.iter().map(|(_, rx)| {
                    let mut rx = rx.clone();
                    async move {
                        let _ = rx.wait_for(Option::is_some).await;
                    }
                }));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::timeout(STARTUP_SETTLE, all_up) => {}
                }
                run_candidates(
                    store, topology, sessions, suspected, metrics, secrets, cancel,
                )
                .await;
            }
        })];
        Ok(Local {
            tasks,
            side,
            cancel,
            store,
            agents,
            sessions,
            candidates,
            controller_metrics,
            suspected,
            heartbeats,
            secrets,
        })
    }

    /// The agents running in this process.
    pub fn agents(&self) -> &[AgentHandle] {
        &self.agents
    }

    /// The metrics of this process's controller candidates.
    pub fn controller_metrics(&self) -> &Arc<ControllerMetrics> {
        &self.controller_metrics
    }

    /// Applies a new topology whose cluster settings and local hosts'
    /// records are unchanged (see [`AgentHandle::update_topology`]): each
    /// agent changes only what changed, and the controller candidates
    /// start again with it (a leader resigns; another is elected at once).
    pub async fn update(&mut self, topology: Arc<Topology>) {
        for agent in &self.agents {
            agent.update_topology(topology.clone()).await;
        }
        if let Err(e) = self.heartbeats.update(&topology).await {
            tracing::warn!(error = %e, "heartbeats: cannot follow the new topology; stopped");
        }
        match webhook::load_secrets(&topology) {
            Ok(secrets) => self.secrets = secrets,
            Err(e) => tracing::error!(
                error = %format!("{e:#}"),
                "webhooks: cannot read a secret file of the new topology; a webhook whose secret is missing is not delivered"
            ),
        }
        self.candidates.cancel();
        self.candidates = self.cancel.child_token();
        self.side.push(tokio::spawn(run_candidates(
            self.store.clone(),
            topology,
            self.sessions.clone(),
            self.suspected.clone(),
            self.controller_metrics.clone(),
            self.secrets.clone(),
            self.candidates.clone(),
        )));
    }

    /// Stops every instance, then every agent; returns once all are done.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        let mut first_err = None;
        for t in self.tasks {
            match t.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => first_err = first_err.or(Some(anyhow::anyhow!("agent task failed: {e}"))),
            }
        }
        for t in self.side {
            let _ = t.await;
        }
        self.heartbeats.stop().await;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Runs a controller candidate for each (host, session) until `cancel`.
async fn run_candidates(
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    sessions: Vec<(String, Session)>,
    suspected: Suspects,
    metrics: Arc<ControllerMetrics>,
    secrets: webhook::Secrets,
    cancel: CancellationToken,
) {
    let candidates = sessions.into_iter().map(|(host, rx)| {
        controller::run_candidate(
            store.clone(),
            topology.clone(),
            host,
            rx,
            suspected.clone(),
            metrics.clone(),
            secrets.clone(),
            cancel.clone(),
        )
    });
    futures::future::join_all(candidates).await;
}
