//! `tandem up`: a whole topology on this machine, in the foreground.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_agent::local::{Local, LocalOptions, local_hosts};
use tandem_agent::sign::ClusterSecret;
use tandem_api::ApiState;
use tandem_core::model::{Event, keys};
use tandem_core::topology::Topology;
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{EmbeddedStore, EventKind, Store};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::commands::event_line;
use crate::{DEFAULT_API, LogFormat, init_logging};

/// Flags of `tandem up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The topology file.
    pub topology: PathBuf,
    /// Where the store and instance logs live (default: ./NAME.tandem, NAME
    /// being the topology file's stem).
    #[arg(long, env = "TANDEM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address the API listens on.
    #[arg(long, env = "TANDEM_API", default_value = DEFAULT_API)]
    pub api: SocketAddr,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (RUST_LOG overrides). Default: warn for text, info for json.
    #[arg(long)]
    pub log_level: Option<String>,
    /// Do not print the live summary of events on stdout.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub access: crate::access::AccessArgs,
}

/// Reads and validates a topology file, printing every problem.
pub fn load_topology(path: &Path) -> anyhow::Result<Topology> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match tandem_core::topology::parse_checked(
        &path.display().to_string(),
        &text,
        crate::program::LOCAL_CHECKS,
    ) {
        Ok(t) => Ok(t),
        Err(diags) => {
            for d in &diags.0 {
                eprintln!("{d}");
            }
            bail!(
                "{} is not a valid topology ({} problem(s)); `tandem validate` checks a file",
                path.display(),
                diags.0.len()
            )
        }
    }
}

/// The default data directory: `./NAME.tandem`.
pub fn default_data_dir(topology: &Path) -> PathBuf {
    let stem = topology
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tandem".into());
    PathBuf::from(format!("{stem}.tandem"))
}

/// Runs `tandem up` until Ctrl-C or SIGTERM.
pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let level = args
        .log_level
        .clone()
        .unwrap_or_else(|| match args.log_format {
            LogFormat::Text => "warn".into(),
            LogFormat::Json => "info".into(),
        });
    init_logging(args.log_format, &level);
    let topology = Arc::new(load_topology(&args.topology)?);
    let hosts = local_hosts(&topology);
    if hosts.is_empty() {
        let listed: Vec<String> = topology
            .hosts
            .iter()
            .map(|h| format!("{} ({})", h.name, h.address))
            .collect();
        bail!(
            "no host of the topology has an address on this machine (hosts: {}); `tandem up` runs the local ones",
            listed.join(", ")
        );
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| default_data_dir(&args.topology));
    let listener = tokio::net::TcpListener::bind(args.api).await.with_context(|| {
        format!(
            "cannot listen on {} (is another `tandem up` running? choose another address with --api)",
            args.api
        )
    })?;
    let store: Arc<dyn Store> = EmbeddedStore::open(&data_dir)
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let topo_json = serde_json::to_vec(&*topology)?;
    store
        .put(keys::TOPOLOGY, topo_json, None)
        .await
        .context("cannot store the topology")?;

    let guard = args.access.load(false)?;
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let api_addr = listener.local_addr().unwrap_or(args.api);
    // Every agent here shares a secret made for this run: the agent
    // ports are authenticated as in production.
    let secret = ClusterSecret::generate().context("cannot make the agents' cluster secret")?;
    let local = Local::start_with(
        store.clone(),
        topology.clone(),
        &hosts,
        data_dir.clone(),
        LocalOptions {
            api: Some(api_addr.to_string()),
            secret: Some(secret),
            ..LocalOptions::default()
        },
    )?;
    let api_stop = CancellationToken::new();
    let api_task = {
        let stop = api_stop.clone();
        let state = ApiState::new(store.clone(), topology.clone())
            .with_controller_metrics(local.controller_metrics().clone());
        let state = guard.apply(state);
        tokio::spawn(
            async move { tandem_api::serve(listener, state, stop.cancelled_owned()).await },
        )
    };

    if !args.quiet {
        print_banner(&topology, &hosts, &data_dir, api_addr, guard.scheme());
    }
    let summary_stop = CancellationToken::new();
    let summary =
        (!args.quiet).then(|| tokio::spawn(follow_events(store.clone(), summary_stop.clone())));

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    // The live summary ends here: the exits the stop itself causes are in
    // the event log (`tandem events`), not news on the terminal.
    summary_stop.cancel();
    if let Some(s) = summary {
        let _ = s.await;
    }
    if !args.quiet {
        println!("stopping: terminating every instance…");
    }
    let stopped = local.stop().await;
    api_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    stopped?;
    if !args.quiet {
        println!("stopped.");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_banner(
    topology: &Topology,
    hosts: &[String],
    data_dir: &Path,
    api: SocketAddr,
    scheme: &str,
) {
    let instances: usize = topology.apps.iter().map(|a| a.instances.len()).sum();
    println!(
        "tandem up: topology {} — {} app(s), {} instance(s) on host(s) {}",
        topology.name,
        topology.apps.len(),
        instances,
        hosts.join(", ")
    );
    println!("  store: embedded, in {}", data_dir.display());
    println!(
        "  API:   {scheme}://{api}   (instance logs in {}/hosts/*/logs)",
        data_dir.display()
    );
    println!("  dashboard: {scheme}://{api}/   (live, in a browser)");
    if let Some(app) = topology
        .apps
        .iter()
        .find(|a| a.ha == tandem_core::topology::HaMode::WarmStandby)
    {
        let flag = if api.to_string() == DEFAULT_API {
            String::new()
        } else {
            format!(" --api {api}")
        };
        println!("  try:   tandem status{flag}");
        println!(
            "         curl -s {scheme}://{api}/v1/apps/{}/primary    # then kill -9 the primary's pid and watch",
            app.name
        );
        println!("         tandem switchover {}{flag}", app.name);
    }
    println!("  Ctrl-C stops everything.\n");
}

/// Prints every event as it is written.
async fn follow_events(store: Arc<dyn Store>, stop: CancellationToken) {
    let mut log = follow(store, keys::EVENTS, Start::Listing, AfterBreak::Resume);
    // The newest event printed or passed over; none before the first
    // listing.
    let mut seen: Option<u64> = None;
    loop {
        let item = tokio::select! {
            _ = stop.cancelled() => return,
            item = log.next() => item,
        };
        match item {
            FollowItem::Change(ev) => {
                if ev.kind == EventKind::Put
                    && let Ok(e) = serde_json::from_slice::<Event>(&ev.kv.value)
                {
                    seen = Some(e.seq);
                    println!("{}", event_line(&e));
                }
            }
            // The log as it is: at the start (its events are older than the
            // summary: none printed), or after its history was lost.
            FollowItem::Snapshot(listing) => {
                let mut events: Vec<Event> = listing
                    .kvs
                    .iter()
                    .filter(|kv| keys::parse_event(&kv.key).is_some())
                    .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                    .collect();
                events.sort_by_key(|e| e.seq);
                let after = seen.unwrap_or(u64::MAX);
                for e in events.iter().filter(|e| e.seq > after) {
                    println!("{}", event_line(e));
                }
                seen = events.iter().map(|e| e.seq).chain(seen).max().or(Some(0));
            }
            FollowItem::Interrupted(e) => {
                tracing::debug!(error = %e, "event watch broke; resuming")
            }
        }
    }
}
