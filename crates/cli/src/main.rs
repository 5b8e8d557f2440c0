//! `tandem`: the one binary. It parses arguments, sets up logging and
//! calls the libraries; every subcommand lives in a module of its own.
#![allow(clippy::disallowed_methods)] // a binary reads clocks

mod access;
mod bench;
mod certs;
mod cluster;
mod commands;
mod program;
mod secret;
mod table;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Where client commands find the API, unless told otherwise.
pub const DEFAULT_API: &str = "127.0.0.1:7420";

#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    version,
    about = "High availability for multi-component services: one topology, an agent per host, a controller that decides, fencing so two primaries never act at once."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole topology on this machine: embedded store, controller, an
    /// agent for every local host, and the API. Ctrl-C stops everything.
    Up(up::UpArgs),
    /// Run this machine's agent against a shared etcd cluster (production).
    Agent(cluster::AgentArgs),
    /// Store or show the topology in the shared store.
    Topology {
        #[command(subcommand)]
        what: TopologyCmd,
    },
    /// A TCP proxy to an app's current primary: new connections go to the
    /// primary of the moment; connections to a deposed one are closed.
    Proxy {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The app whose primary receives the connections.
        #[arg(long)]
        app: String,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Show apps, instances, roles, health and epochs.
    Status {
        /// Print the JSON document of GET /v1/status.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Show every link and its state for each instance it goes from.
    Links {
        /// Only the links from or to this app (or endpoint).
        #[arg(long)]
        app: Option<String>,
        /// Print the JSON document of GET /v1/links.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Show every site: its role (active or spare) and whether it is lost.
    Sites {
        /// Print the sites of GET /v1/status as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Site actions: declare a site failed, promote a spare site, restore
    /// a returned one.
    Site {
        #[command(subcommand)]
        what: SiteCmd,
    },
    /// Show the event log (role changes, failures, operator actions).
    Events {
        /// Keep printing events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// Only events after this sequence number.
        #[arg(long)]
        since: Option<u64>,
        /// How many of the latest events to show (without --since).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// One JSON object per event.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Planned switchover: demote the primary, then promote the target.
    Switchover {
        /// The app (warm-standby).
        app: String,
        /// The instance to promote (default: the best healthy backup).
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for the outcome, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Fence a host with its fence device (power it off or cut it off):
    /// once the device confirms, the host's lease is revoked and every
    /// primary it held is promoted elsewhere.
    Fence {
        /// The host.
        host: String,
        /// Do not ask for confirmation (the device really runs).
        #[arg(long)]
        yes: bool,
        /// How long to wait for the outcome, e.g. 30s.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Maintenance on or off: while on, tandem changes no role of the app.
    Maintenance {
        /// The app.
        app: String,
        /// `on` or `off`.
        state: OnOff,
        /// How long to wait for the outcome, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArg,
    },
    /// Make the cluster secret that authenticates agents to each other.
    Secret {
        #[command(subcommand)]
        what: secret::SecretCmd,
    },
    /// Check a topology file; print every problem with file:line:column.
    Validate {
        /// The topology file.
        file: PathBuf,
        /// Print {"valid", "problems"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// API tokens: make one and add its hash to a token file.
    Token {
        #[command(subcommand)]
        what: TokenCmd,
    },
    /// Make a CA and an API certificate signed by it (PEM files in DIR),
    /// for a test cluster or a first try of HTTPS.
    Certs {
        /// Where to write ca.pem, ca-key.pem, api.pem and api-key.pem.
        dir: PathBuf,
        /// A host name or IP address the API is reached by (repeat it;
        /// default: 127.0.0.1 and localhost).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), or write one per command into a directory.
    Man {
        /// Write tandem.1 and tandem-COMMAND.1 pages here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measure tandem (failover latency) and print the figures.
    Bench(bench::BenchArgs),
    /// The demo component: an HTTP service that plays the role tandem gives it.
    DemoApp(tandem_demo::DemoArgs),
    /// Demo: a statistics source (a numbered stream, replayable).
    DemoStats(tandem_demo::hot::source::StatsArgs),
    /// Demo: a hot-standby data aggregator writing through the fenced writer.
    DemoAggregator(tandem_demo::hot::aggregator::AggregatorArgs),
    /// Demo: a builder worker of a pool (IS ALIVE only when free).
    DemoBuilder(tandem_demo::pool::BuilderArgs),
    /// Demo: a telephony switch (main or survivable) for the CMS deployment.
    DemoSwitch(tandem_demo::cms::SwitchArgs),
    /// Demo: a CMS reporting server with two switch links, enabled by tandem.
    DemoCms(tandem_demo::cms::CmsArgs),
    /// Demo: an agent desktop (web) whose browser client fails over between sites by itself.
    DemoDesk(tandem_demo::desk::DeskArgs),
    /// Deliver a role to a demo component (a command hook).
    #[command(hide = true)]
    DemoAppRole {
        /// The demo component's port.
        #[arg(long)]
        port: u16,
        /// The role.
        role: String,
        /// The epoch.
        epoch: u64,
    },
    /// The agent's watchdog (started by `tandem agent`; reads its stdin).
    #[command(hide = true)]
    Watchdog,
}

/// `tandem topology` subcommands.
#[derive(Subcommand, Debug)]
enum TopologyCmd {
    /// Validate FILE and store it; every agent picks it up.
    Apply {
        /// The topology file.
        file: PathBuf,
        #[command(flatten)]
        store: cluster::StoreArgs,
    },
    /// Print the stored topology (JSON).
    Show {
        #[command(flatten)]
        store: cluster::StoreArgs,
    },
}

/// `tandem token` subcommands.
#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Make a random token NAME with ROLE, add its hash to FILE (created
    /// with mode 0600), and print the token once.
    New {
        /// The token's name: the events of its operator actions name it.
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: access::RoleArg,
        /// The API's token file.
        #[arg(long, env = "TANDEM_TOKENS")]
        file: PathBuf,
    },
}

/// `tandem site` subcommands.
#[derive(Subcommand, Debug)]
enum SiteCmd {
    /// Declare SITE failed: nothing is placed there (its primaries step
    /// down, its n-plus-1 members are replaced) until `tandem site
    /// restore`. Refused while its hosts hold leases, unless forced.
    Fail {
        /// The site.
        site: String,
        #[command(flatten)]
        opts: SiteOpts,
    },
    /// Make spare SITE the active one: apps pinned to the active site
    /// start there with a new epoch; the old active site becomes a spare,
    /// failed until restored. Refused while the active site is up, unless
    /// forced with --confirm naming it.
    Promote {
        /// The spare site.
        site: String,
        #[command(flatten)]
        opts: SiteOpts,
    },
    /// Take back a failed site whose hosts hold leases again (a site
    /// replaced by a promotion comes back as a spare).
    Restore {
        /// The site.
        site: String,
        #[command(flatten)]
        opts: SiteOpts,
    },
}

/// What every site action takes.
#[derive(clap::Args, Debug)]
struct SiteOpts {
    /// Act although the site concerned still has hosts holding leases (its
    /// agents may still act there): needs --confirm.
    #[arg(long)]
    force: bool,
    /// With --force: the name of the site that may be treated as gone
    /// (`fail`: the site itself; `promote`: the active site it replaces).
    #[arg(long, requires = "force")]
    confirm: Option<String>,
    /// How long to wait for the outcome, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArg,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Where the API is, and how to talk to it.
#[derive(clap::Args, Clone)]
pub struct ApiArg {
    /// Address of the tandem API.
    #[arg(long, env = "TANDEM_API", default_value = DEFAULT_API)]
    pub api: String,
    /// The API token, when the API requires one (`tandem token new`).
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA (PEM) the API's HTTPS certificate must chain to (`tandem
    /// certs`); with it, an address without a scheme means https.
    #[arg(long, env = "TANDEM_CA")]
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for ApiArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiArg")
            .field("api", &self.api)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("ca", &self.ca)
            .finish()
    }
}

impl ApiArg {
    /// A client of the API with these settings.
    pub fn client(&self) -> anyhow::Result<tandem_client::ApiClient> {
        Ok(tandem_client::ApiClient::with_options(
            &self.api,
            &self.options()?,
        )?)
    }

    /// The token and the CA's certificates, read from their file.
    pub fn options(&self) -> anyhow::Result<tandem_client::ClientOptions> {
        use anyhow::Context;
        let ca = match &self.ca {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read the CA file {}", path.display()))?,
            ),
            None => None,
        };
        Ok(tandem_client::ClientOptions {
            token: self.token.clone(),
            ca,
        })
    }
}

/// Parses `500ms`, `2s`, `1m` with the topology's rules.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    tandem_core::topology::parse_duration(s)
}

/// Sets up `tracing` on stderr. `RUST_LOG` overrides `default_level`.
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Up(_) | Command::Agent(_)) {
        // glibc gives each thread that allocates an arena of its own; for
        // a daemon of a few threads holding thousands of small objects,
        // two arenas keep the resident size down (about 15 MiB at 1,000
        // apps) at no measurable cost.
        // SAFETY: mallopt only sets a malloc parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    if let Command::Watchdog = cli.command {
        // No runtime: a plain loop on stdin.
        tandem_agent::watchdog::run(std::io::BufReader::new(std::io::stdin()));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up::run(args).await,
            Command::Agent(args) => cluster::agent(args).await,
            Command::Topology { what } => match what {
                TopologyCmd::Apply { file, store } => cluster::apply(&file, &store).await,
                TopologyCmd::Show { store } => cluster::show(&store).await,
            },
            Command::Status { json, api } => commands::status(&api, json).await,
            Command::Links { app, json, api } => commands::links(&api, app.as_deref(), json).await,
            Command::Sites { json, api } => commands::sites(&api, json).await,
            Command::Site { what } => {
                let (action, site, o) = match what {
                    SiteCmd::Fail { site, opts } => ("fail", site, opts),
                    SiteCmd::Promote { site, opts } => ("promote", site, opts),
                    SiteCmd::Restore { site, opts } => ("restore", site, opts),
                };
                let request = tandem_client::types::SiteRequest {
                    force: o.force,
                    confirm: o.confirm,
                };
                commands::site(&o.api, action, &site, &request, o.timeout, o.json).await
            }
            Command::Proxy { listen, app, api } => commands::proxy(listen, &app, &api).await,
            Command::Events {
                follow,
                since,
                limit,
                json,
                api,
            } => commands::events(&api, follow, since, limit, json).await,
            Command::Switchover {
                app,
                to,
                timeout,
                json,
                api,
            } => commands::switchover(&api, &app, to.as_deref(), timeout, json).await,
            Command::Fence {
                host,
                yes,
                timeout,
                json,
                api,
            } => commands::fence(&api, &host, yes, timeout, json).await,
            Command::Maintenance {
                app,
                state,
                timeout,
                json,
                api,
            } => commands::maintenance(&api, &app, state == OnOff::On, timeout, json).await,
            Command::Secret { what } => secret::run(what),
            Command::Validate { file, json } => commands::validate(&file, json),
            Command::Token {
                what: TokenCmd::New { name, role, file },
            } => access::new_token(&name, role, &file),
            Command::Certs { dir, names } => certs::run(&dir, &names),
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "tandem", &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
            Command::Man { dir } => man(dir.as_deref()).map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => bench::run(args).await,
            Command::DemoApp(args) => {
                init_logging(LogFormat::Text, "warn");
                tandem_demo::run(args).await.map(|()| ExitCode::SUCCESS)
            }
            Command::DemoStats(args) => {
                init_logging(LogFormat::Text, "warn");
                tandem_demo::hot::source::run(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::DemoAggregator(args) => {
                init_logging(LogFormat::Text, "info");
                tandem_demo::hot::aggregator::run(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::DemoBuilder(args) => {
                init_logging(LogFormat::Text, "warn");
                tandem_demo::pool::run_builder(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::DemoSwitch(args) => {
                init_logging(LogFormat::Text, "warn");
                tandem_demo::cms::run_switch(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::DemoCms(args) => {
                init_logging(LogFormat::Text, "warn");
                tandem_demo::cms::run_cms(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::DemoDesk(args) => {
                init_logging(LogFormat::Text, "warn");
                tandem_demo::desk::run_desk(args)
                    .await
                    .map(|()| ExitCode::SUCCESS)
            }
            Command::DemoAppRole { port, role, epoch } => tandem_demo::set_role(port, &role, epoch)
                .await
                .map(|()| ExitCode::SUCCESS),
            Command::Watchdog => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `tandem man`: the manual page on stdout, or one page per command (and
/// subcommand) written into `dir`.
fn man(dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("cannot write the manual page")?;
        return Ok(());
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    Ok(())
}
