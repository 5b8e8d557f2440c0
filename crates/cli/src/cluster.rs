//! Several machines: `tandem topology apply|show` and `tandem agent`, on a
//! shared etcd cluster: flags, connecting to the store, and the API served
//! beside the agent. The agent itself, following the stored topology,
//! runs in `tandem_agent::supervisor`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_agent::local::LocalOptions;
use tandem_agent::supervisor::{self, Companion, SupervisorConfig};
use tandem_api::ApiState;
use tandem_core::model::keys;
use tandem_core::topology::Topology;
use tandem_store::Store;
use tandem_store_etcd::{EtcdOptions, EtcdStore, EtcdTls, parse_store_url};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::up::load_topology;
use crate::{LogFormat, init_logging};

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
    #[command(flatten)]
    pub access: crate::access::AccessArgs,
    /// The cluster secret (the same file on every host; make one with
    /// `tandem secret new FILE`): failsafe requests and answers between
    /// agents are signed with it, and their heartbeats tagged. Without it
    /// the agent port is unauthenticated (development only).
    #[arg(long, env = "TANDEM_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// The API, when this agent serves it: the listener bound at start, then
/// the same address bound again for each new topology.
struct Api {
    store: Arc<dyn Store>,
    listener: Option<tokio::net::TcpListener>,
    addr: Option<SocketAddr>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    guard: crate::access::Guard,
}

impl Companion for Api {
    async fn start(
        &mut self,
        topology: &Arc<Topology>,
        local: &tandem_agent::local::Local,
    ) -> anyhow::Result<()> {
        let listener = match (self.listener.take(), self.addr) {
            (Some(l), _) => Some(l),
            (None, Some(addr)) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} again"))?,
            ),
            (None, None) => None,
        };
        self.stop = CancellationToken::new();
        self.task = listener.map(|l| {
            let state = ApiState::new(self.store.clone(), topology.clone())
                .with_controller_metrics(local.controller_metrics().clone());
            let state = self.guard.apply(state);
            let stop = self.stop.clone();
            tokio::spawn(async move {
                let _ = tandem_api::serve(l, state, stop.cancelled_owned()).await;
            })
        });
        Ok(())
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
    let secret = crate::secret::load(args.cluster_secret_file.as_deref())?;
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
    let guard = args.access.load(true)?;
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
    // systemd's service watchdog (WatchdogSec=): pinged at half its
    // period while the runtime runs.
    if let Some(period) = sd_notify::watchdog_enabled() {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
            }
        });
    }
    // A frozen agent's primaries are killed by the watchdog before its
    // lease can expire.
    let exe = std::env::current_exe().context("cannot find tandem's own executable")?;
    let watchdog = vec![exe.into_os_string(), "watchdog".into()];
    let config = SupervisorConfig {
        host: args.host.clone(),
        data_dir,
        local: LocalOptions {
            api: api_addr.map(|a| a.to_string()),
            watchdog: Some(watchdog),
            secret,
        },
    };
    let mut api = Api {
        store: store.clone(),
        listener,
        addr: api_addr,
        stop: CancellationToken::new(),
        task: None,
        guard,
    };
    supervisor::run(store, config, &mut api, stop).await?;
    Ok(ExitCode::SUCCESS)
}
