//! Several machines: `tandem topology apply|show` and `tandem agent`, on a
//! shared etcd cluster.
//!
//! The topology lives in the store (`/tandem/topology`); every agent reads
//! it at start and follows it without restarting: when it changes, only the
//! instances whose settings changed restart, removed ones stop, new ones
//! start, and the controller candidates start again with it. A change of
//! the cluster settings or of this host's own record restarts every
//! instance of the host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_agent::local::{Local, LocalOptions};
use tandem_api::ApiState;
use tandem_core::model::keys;
use tandem_core::topology::Topology;
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{EventKind, Store};
use tandem_store_etcd::{EtcdOptions, EtcdStore, EtcdTls, parse_store_url};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::up::load_topology;
use crate::{LogFormat, init_logging};

/// Pause before re-reading the topology after its watch broke.
const TOPOLOGY_RETRY: Duration = Duration::from_millis(500);

/// How to reach the coordination store.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// The etcd cluster: etcd://h1:2379,h2:2379,h3:2379 (etcd+tls:// for TLS).
    #[arg(long, env = "TANDEM_STORE")]
    pub store: String,
    /// CA certificate (PEM) of the etcd members (TLS).
    #[arg(long, env = "TANDEM_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM), for clusters that require one.
    #[arg(long, env = "TANDEM_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) of --etcd-cert.
    #[arg(long, env = "TANDEM_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
}

impl StoreArgs {
    /// Connects to the store.
    pub async fn connect(&self) -> anyhow::Result<Arc<dyn Store>> {
        let endpoints =
            parse_store_url(&self.store).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
        let tls = match (&self.etcd_ca, &self.etcd_cert, &self.etcd_key) {
            (None, None, None) => None,
            (Some(ca), cert, key) => Some(EtcdTls {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, _, _) => bail!("--etcd-cert and --etcd-key need --etcd-ca"),
        };
        let options = EtcdOptions {
            // Below every lease TTL: a call that cannot finish fails while
            // the lease is still valid.
            request_timeout: Duration::from_secs(2),
            tls,
            ..EtcdOptions::default()
        };
        let store = EtcdStore::connect(&endpoints, options)
            .await
            .with_context(|| format!("cannot reach the store {}", self.store))?;
        Ok(store)
    }
}

/// `tandem topology apply FILE`: validates the file and stores it.
pub async fn apply(file: &std::path::Path, store: &StoreArgs) -> anyhow::Result<ExitCode> {
    let topology = load_topology(file)?;
    let store = store.connect().await?;
    let value = serde_json::to_vec(&topology)?;
    let revision = store
        .put(keys::TOPOLOGY, value, None)
        .await
        .context("cannot store the topology")?;
    let instances: usize = topology.apps.iter().map(|a| a.instances.len()).sum();
    println!(
        "applied topology {} ({} apps, {instances} instances, {} hosts) at revision {revision}; agents pick it up now",
        topology.name,
        topology.apps.len(),
        topology.hosts.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `tandem topology show`: prints the stored topology as JSON.
pub async fn show(store: &StoreArgs) -> anyhow::Result<ExitCode> {
    let store = store.connect().await?;
    match store.get(keys::TOPOLOGY).await? {
        Some(kv) => {
            let t: Topology =
                serde_json::from_slice(&kv.value).context("the stored topology is unreadable")?;
            println!("{}", serde_json::to_string_pretty(&t)?);
            Ok(ExitCode::SUCCESS)
        }
        None => bail!("no topology is stored yet: run `tandem topology apply FILE`"),
    }
}

/// Flags of `tandem agent`.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// This machine's host name in the topology.
    #[arg(long, env = "TANDEM_HOST")]
    pub host: String,
    /// Where instance logs and role files go (default ./HOST.tandem-agent).
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Also serve the API on this address (any agent can).
    #[arg(long)]
    pub api: Option<SocketAddr>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Reads the stored topology, waiting for one; returns it with its revision.
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
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
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

/// The API, when this agent serves it.
struct Api {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Api {
    fn start(
        listener: Option<tokio::net::TcpListener>,
        store: &Arc<dyn Store>,
        topology: &Arc<Topology>,
    ) -> Api {
        let stop = CancellationToken::new();
        let task = listener.map(|l| {
            let state = ApiState::new(store.clone(), topology.clone());
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = tandem_api::serve(l, state, stop.cancelled_owned()).await;
            })
        });
        Api { stop, task }
    }

    /// Stops it (its listener is closed with it).
    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// `tandem agent`: this machine's agent, a controller candidate, and
/// optionally the API, until SIGTERM or Ctrl-C.
pub async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.log_format, &args.log_level);
    let store = args.store.connect().await?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.tandem-agent", args.host)));
    let listener = match args.api {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?,
        ),
        None => None,
    };
    let api_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm.recv() => {}
            }
            stop.cancel();
        });
    }
    // A frozen agent's primaries are killed by the watchdog before its
    // lease can expire.
    let exe = std::env::current_exe().context("cannot find tandem's own executable")?;
    let watchdog = vec![exe.into_os_string(), "watchdog".into()];
    let mut listener = listener;
    let mut next: Option<(Arc<Topology>, u64)> = None;
    'restart: loop {
        let (topology, revision) = match next.take() {
            Some(t) => t,
            None => match stored_topology(&store, &stop).await? {
                Some(t) => t,
                None => break,
            },
        };
        check_host(&topology, &args.host)?;
        tracing::info!(host = %args.host, topology = %topology.name, revision, "running");
        let mut local = Local::start_with(
            store.clone(),
            topology.clone(),
            std::slice::from_ref(&args.host),
            data_dir.clone(),
            LocalOptions {
                api: api_addr.map(|a| a.to_string()),
                watchdog: Some(watchdog.clone()),
            },
        )?;
        let mut api = Api::start(listener.take(), &store, &topology);
        let (mut current, mut revision) = (topology, revision);
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    local.stop().await?;
                    api.stop().await;
                    break 'restart;
                }
                _ = topology_changed(&store, revision) => {}
            }
            let Some((new, new_revision)) = stored_topology(&store, &stop).await? else {
                continue;
            };
            check_host(&new, &args.host)?;
            // The API answers from the topology it was given: serve the new one.
            api.stop().await;
            if let Some(addr) = api_addr {
                listener = Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr} again"))?,
                );
            }
            if new.cluster == current.cluster && new.host(&args.host) == current.host(&args.host) {
                tracing::info!(
                    revision = new_revision,
                    "the topology changed: applying it to the instances it changes"
                );
                local.update(new.clone()).await;
                api = Api::start(listener.take(), &store, &new);
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
    Ok(ExitCode::SUCCESS)
}
