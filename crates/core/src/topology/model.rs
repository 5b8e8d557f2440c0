//! The validated topology: what [`parse`](super::parse) returns and what is
//! stored, as JSON, in the coordination store.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::duration_ms;
use crate::model::EventKind;

fn one() -> u32 {
    1
}

/// HA modes that tandem can run today. The others parse, but validation
/// rejects them (see `check_ha_mode_supported` in the validator); lift them
/// one by one by adding them here.
pub const SUPPORTED_HA_MODES: &[HaMode] = &[
    HaMode::WarmStandby,
    HaMode::HotStandby,
    HaMode::ColdStandby,
    HaMode::Singleton,
    HaMode::NPlus1,
    HaMode::Pool,
    HaMode::None,
];

/// A whole platform: sites, hosts, apps with their instances, and the links
/// between apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// `[cluster].name`, else the stem of the file name.
    pub name: String,
    /// Cluster-wide timing of leases and fencing.
    pub cluster: Cluster,
    /// Data centres, in file order.
    pub sites: Vec<Site>,
    /// Machines, each running one agent, in file order.
    pub hosts: Vec<Host>,
    /// Components, in file order.
    pub apps: Vec<App>,
    /// Declared connections from apps to apps or endpoints, in file order.
    pub links: Vec<Link>,
    /// Services tandem does not run that links may go to (a telephony
    /// switch), in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Where events are sent as HTTP notifications, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
}

impl Topology {
    /// The app called `name`.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The fence device of host `name`: its own, else its site's.
    pub fn fence_device(&self, name: &str) -> Option<&FenceDevice> {
        let host = self.host(name)?;
        host.fence
            .as_ref()
            .or_else(|| self.site(&host.site).and_then(|s| s.fence.as_ref()))
    }

    /// Every instance placed on `host`, with its app, in file order (what one agent runs).
    pub fn instances_on<'a>(
        &'a self,
        host: &'a str,
    ) -> impl Iterator<Item = (&'a App, &'a Instance)> + 'a {
        self.apps
            .iter()
            .flat_map(move |app| app.instances_on(host).map(move |i| (app, i)))
    }

    /// The links whose `from` is `app` (what `app` connects to).
    pub fn links_from<'a>(&'a self, app: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links.iter().filter(move |l| l.from == app)
    }

    /// The endpoint called `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }

    /// The link called `name`.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Where an instance of `link.from` probes `link` from: each target
    /// (an instance id of the app it goes to, or the endpoint's name) with
    /// the address and port to reach. Targets without a port (an instance
    /// with none of the port named) are left out.
    pub fn link_targets(&self, link: &Link) -> Vec<LinkTarget> {
        if let Some(e) = self.endpoint(&link.to) {
            return vec![LinkTarget {
                name: e.name.clone(),
                address: e.address,
                port: e.port,
            }];
        }
        let Some(app) = self.app(&link.to) else {
            return Vec::new();
        };
        app.instances
            .iter()
            .filter_map(|i| {
                let host = self.host(&i.host)?;
                let port = match &link.port {
                    Some(name) => i.ports.get(name).copied(),
                    None => i
                        .ports
                        .get("main")
                        .or_else(|| i.ports.values().next())
                        .copied(),
                }?;
                Some(LinkTarget {
                    name: i.id.clone(),
                    address: host.address,
                    port,
                })
            })
            .collect()
    }

    /// The exclusive groups of `app`'s links: each group's name with its
    /// links in the order declared (the first is preferred), groups in the
    /// order their first link is declared.
    pub fn exclusive_groups<'a>(&'a self, app: &'a str) -> Vec<(String, Vec<&'a Link>)> {
        let mut groups: Vec<(String, Vec<&'a Link>)> = Vec::new();
        for link in self.links_from(app) {
            let Some(group) = &link.exclusive else {
                continue;
            };
            match groups.iter_mut().find(|(g, _)| g == group) {
                Some((_, links)) => links.push(link),
                None => groups.push((group.clone(), vec![link])),
            }
        }
        groups
    }

    /// The links whose `to` is `app` (who connects to `app`).
    pub fn links_to<'a>(&'a self, app: &'a str) -> impl Iterator<Item = &'a Link> + 'a {
        self.links.iter().filter(move |l| l.to == app)
    }
}

/// Cluster-wide timing. Validation guarantees
/// `renew_interval + fence_margin < lease_ttl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// How long an agent's lease (and so a primary role) stays valid without renewal (default 3s).
    #[serde(rename = "lease_ttl_ms", with = "duration_ms")]
    pub lease_ttl: Duration,
    /// How often an agent renews its lease (default 500ms).
    #[serde(rename = "renew_interval_ms", with = "duration_ms")]
    pub renew_interval: Duration,
    /// A primary that cannot renew its lease demotes itself this long before the lease can expire (default 1s).
    #[serde(rename = "fence_margin_ms", with = "duration_ms")]
    pub fence_margin: Duration,
    /// The TCP port every agent listens on, at its host's address, for its
    /// peers (failsafe confirmations) and for load-balancer checks
    /// (default 7400).
    #[serde(default = "Cluster::default_agent_port")]
    pub agent_port: u16,
    /// Failsafe mode (default on): while the store cannot be reached, a
    /// primary keeps its role as long as every other agent running an
    /// instance of its app confirms it cannot reach the store either and
    /// promises to refuse that app's promotion meanwhile.
    #[serde(default = "Cluster::default_failsafe")]
    pub failsafe: bool,
    /// How often every agent sends a heartbeat to every other agent, on
    /// the agent port over UDP (default 2ms).
    #[serde(
        rename = "heartbeat_interval_ms",
        with = "duration_ms",
        default = "Cluster::default_heartbeat_interval"
    )]
    pub heartbeat_interval: Duration,
    /// A host whose agent sent no heartbeat for this many intervals is
    /// suspected (default 15: 30 ms with the default interval).
    #[serde(default = "Cluster::default_missed_heartbeats")]
    pub missed_heartbeats: u32,
}

impl Cluster {
    /// Default `lease_ttl`.
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);
    /// Default `renew_interval`.
    pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_millis(500);
    /// Default `fence_margin`.
    pub const DEFAULT_FENCE_MARGIN: Duration = Duration::from_secs(1);
    /// Default `agent_port`.
    pub const DEFAULT_AGENT_PORT: u16 = 7400;

    fn default_agent_port() -> u16 {
        Self::DEFAULT_AGENT_PORT
    }

    fn default_failsafe() -> bool {
        true
    }

    /// Default `heartbeat_interval`.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(2);
    /// Default `missed_heartbeats`.
    pub const DEFAULT_MISSED_HEARTBEATS: u32 = 15;

    fn default_heartbeat_interval() -> Duration {
        Self::DEFAULT_HEARTBEAT_INTERVAL
    }

    fn default_missed_heartbeats() -> u32 {
        Self::DEFAULT_MISSED_HEARTBEATS
    }

    /// How long a host may stay silent before it is suspected:
    /// `heartbeat_interval × missed_heartbeats`.
    pub fn suspect_after(&self) -> Duration {
        self.heartbeat_interval
            .saturating_mul(self.missed_heartbeats)
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            lease_ttl: Self::DEFAULT_LEASE_TTL,
            renew_interval: Self::DEFAULT_RENEW_INTERVAL,
            fence_margin: Self::DEFAULT_FENCE_MARGIN,
            agent_port: Self::DEFAULT_AGENT_PORT,
            failsafe: true,
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
            missed_heartbeats: Self::DEFAULT_MISSED_HEARTBEATS,
        }
    }
}

/// A data centre.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Unique site name.
    pub name: String,
    /// `active` (serves) or `spare` (takes over when an active site is
    /// lost); default `active`.
    #[serde(default)]
    pub role: SiteRole,
    /// The fence device of every host of the site that declares none of
    /// its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceDevice>,
}

/// What a site is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteRole {
    /// It serves.
    #[default]
    Active,
    /// It stands by to take over from a lost active site.
    Spare,
}

impl SiteRole {
    /// Every role.
    pub const ALL: [SiteRole; 2] = [SiteRole::Active, SiteRole::Spare];

    /// Its spelling in the topology file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteRole::Active => "active",
            SiteRole::Spare => "spare",
        }
    }
}

impl fmt::Display for SiteRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fence device: a command that powers a host off or cuts it from the
/// network (an IPMI call, a cloud API, a switch port), run by the
/// controller. Exit status 0 confirms that the host can no longer act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceDevice {
    /// Program and arguments; `{host}`, `{address}` and `{site}` are
    /// replaced by the fenced host's.
    pub command: Vec<String>,
    /// A run that takes longer is killed and counts as failed (default 5s).
    #[serde(rename = "timeout_ms", with = "duration_ms")]
    pub timeout: Duration,
}

impl FenceDevice {
    /// Default `timeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
}

/// How tandem knows that a deposed primary of an app can no longer act.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fencing {
    /// Wait until its host's lease has expired (its agent stepped it down
    /// before), unless a fence device confirmed the host is off.
    #[default]
    Lease,
    /// Every action of the app's primary is checked downstream against
    /// its epoch (tandem's fenced writer, or a service that refuses a lower
    /// epoch): a suspected host's primary is replaced at once.
    Token,
}

impl Fencing {
    /// Every way of fencing.
    pub const ALL: [Fencing; 2] = [Fencing::Lease, Fencing::Token];

    /// The spelling used in the topology file.
    pub fn as_str(self) -> &'static str {
        match self {
            Fencing::Lease => "lease",
            Fencing::Token => "token",
        }
    }

    /// The fencing spelled `s` in the topology file.
    pub fn from_name(s: &str) -> Option<Fencing> {
        Fencing::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The HA modes whose primary `fencing = "token"` can fence: those with
    /// one primary at a time holding an epoch, where a second instance
    /// running for a while is allowed (not `singleton`, which promises
    /// never to run two).
    pub const TOKEN_MODES: [HaMode; 3] =
        [HaMode::HotStandby, HaMode::WarmStandby, HaMode::ColdStandby];
}

/// A machine in a site, running one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Unique host name (what `tandem agent --host` names).
    pub name: String,
    /// The site this host is in.
    pub site: String,
    /// The address other hosts and clients reach it at.
    pub address: IpAddr,
    /// Its own fence device (else its site's, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceDevice>,
}

/// A component, made redundant by its HA mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Unique app name (its key under `[apps]`).
    pub name: String,
    /// How the instances are made redundant.
    pub ha: HaMode,
    /// Program and arguments, with placeholders unexpanded (see [`expand`](super::expand)).
    pub command: Vec<String>,
    /// Extra environment variables; values may hold placeholders.
    pub env: BTreeMap<String, String>,
    /// Working directory of the process, if not the agent's.
    pub workdir: Option<String>,
    /// Health checks, all of which must pass for an instance to be healthy.
    pub checks: Vec<Check>,
    /// What the agent does to tell an instance its role changed.
    pub hook: Option<Hook>,
    /// How a deposed primary is known to no longer act (default `lease`).
    #[serde(default)]
    pub fencing: Fencing,
    /// Restart backoff and crash-loop detection.
    pub restart: RestartPolicy,
    /// `n-plus-1`: how many instances run at once (default: all of them).
    #[serde(default = "one")]
    pub replicas: u32,
    /// `n-plus-1`: the app is healthy while at least this many active
    /// instances pass their checks (default: `replicas`).
    #[serde(default = "one")]
    pub min_healthy: u32,
    /// On stop: SIGTERM, then SIGKILL after this long (default 5s).
    #[serde(rename = "stop_timeout_ms", with = "duration_ms")]
    pub stop_timeout: Duration,
    /// Modes with a primary: in a planned switchover, how long the primary
    /// drains (gets no new work, finishes what it has) before it steps
    /// down. Zero (the default): it steps down at once.
    #[serde(default, rename = "drain_ms", with = "duration_ms")]
    pub drain: Duration,
    /// Link-driven switchovers (warm and hot standby): a primary that lost
    /// a required link while a fit backup has it is switched over.
    #[serde(default)]
    pub link_failover: LinkFailover,
    /// Warm and hot standby: the app's admin data, a directory on each
    /// instance's host (placeholders expanded per instance; relative to
    /// the agent's working directory) that tandem mirrors from the primary
    /// to every backup in real time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_dir: Option<String>,
    /// Modes with a primary: the primary runs only in an active site and
    /// never moves to another site by itself. While every active site
    /// with an instance of it is lost, the app is read-only
    /// ([`AppRoles::read_only`](crate::model::AppRoles::read_only)) until
    /// an operator promotes a spare site (`tandem site promote`).
    pub pinned: bool,
    /// The copies of this app, in file order.
    pub instances: Vec<Instance>,
}

impl App {
    /// Default `stop_timeout`.
    pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
    /// The longest `drain` accepted: a planned switchover should not wait
    /// longer than this for requests in flight.
    pub const MAX_DRAIN: Duration = Duration::from_secs(5 * 60);

    /// The instance with id `id`.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// The instances placed on `host`, in file order.
    pub fn instances_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances.iter().filter(move |i| i.host == host)
    }
}

/// One copy of an app, placed on a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Id, unique within its app.
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// Preference for the primary role: higher wins (default 0).
    pub priority: i64,
    /// Named ports, referenced by checks, hooks and `{ports.NAME}` placeholders.
    pub ports: BTreeMap<String, u16>,
}

impl Instance {
    /// The number of the port called `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.get(name).copied()
    }
}

/// How an app's instances are made redundant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HaMode {
    /// A running backup that also consumes input, taking over where the primary stopped.
    #[serde(rename = "hot-standby")]
    HotStandby,
    /// A running backup that is told to act as primary when the primary fails.
    #[serde(rename = "warm-standby")]
    WarmStandby,
    /// A stopped spare, started only when needed.
    #[serde(rename = "cold-standby")]
    ColdStandby,
    /// All instances active, one more than needed.
    #[serde(rename = "n-plus-1")]
    NPlus1,
    /// At most one instance running anywhere, ever.
    #[serde(rename = "singleton")]
    Singleton,
    /// Workers that are free or busy.
    #[serde(rename = "pool")]
    Pool,
    /// No redundancy: every instance just runs and is restarted.
    #[serde(rename = "none")]
    None,
}

impl HaMode {
    /// Every mode, in the order the docs list them.
    pub const ALL: [HaMode; 7] = [
        HaMode::HotStandby,
        HaMode::WarmStandby,
        HaMode::ColdStandby,
        HaMode::NPlus1,
        HaMode::Singleton,
        HaMode::Pool,
        HaMode::None,
    ];

    /// The spelling used in the topology file and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            HaMode::HotStandby => "hot-standby",
            HaMode::WarmStandby => "warm-standby",
            HaMode::ColdStandby => "cold-standby",
            HaMode::NPlus1 => "n-plus-1",
            HaMode::Singleton => "singleton",
            HaMode::Pool => "pool",
            HaMode::None => "none",
        }
    }

    /// The mode spelled `s` in the topology file.
    pub fn from_name(s: &str) -> Option<HaMode> {
        HaMode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether tandem can run this mode today (see [`SUPPORTED_HA_MODES`]).
    pub fn is_supported(self) -> bool {
        SUPPORTED_HA_MODES.contains(&self)
    }
}

impl fmt::Display for HaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A health check of an instance, with its hysteresis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What is probed.
    pub kind: CheckKind,
    /// Time between probes (default 1s).
    #[serde(rename = "interval_ms", with = "duration_ms")]
    pub interval: Duration,
    /// A probe that takes longer has failed (default 500ms; less than `interval`).
    #[serde(rename = "timeout_ms", with = "duration_ms")]
    pub timeout: Duration,
    /// Consecutive failures that make a healthy instance unhealthy (default 3).
    pub failures_before_unhealthy: u32,
    /// Consecutive successes that make an unhealthy instance healthy (default 2).
    pub successes_before_healthy: u32,
}

impl Check {
    /// Default `interval`.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
    /// Default `timeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
    /// Default `failures_before_unhealthy`.
    pub const DEFAULT_FAILURES_BEFORE_UNHEALTHY: u32 = 3;
    /// Default `successes_before_healthy`.
    pub const DEFAULT_SUCCESSES_BEFORE_HEALTHY: u32 = 2;
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect to the instance's port called `port`.
    Tcp {
        /// Name of one of the instance's ports.
        port: String,
    },
    /// An HTTP GET of `path` on the instance's port called `port`; 2xx is healthy.
    Http {
        /// Name of one of the instance's ports.
        port: String,
        /// Request path (default "/").
        path: String,
    },
    /// A command run by the agent; exit status 0 is healthy.
    Exec {
        /// Program and arguments, with placeholders unexpanded.
        command: Vec<String>,
    },
}

/// How the agent tells an instance its role changed (one per app).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Hook {
    /// Run a command; the agent appends ROLE and EPOCH as the last two arguments.
    Command {
        /// Program and arguments, with placeholders unexpanded.
        command: Vec<String>,
        /// The hook has failed if it has not exited by then.
        #[serde(rename = "timeout_ms", with = "duration_ms")]
        timeout: Duration,
    },
    /// POST JSON `{app, instance, role, epoch}` to `path` on the instance's port called `port`.
    Http {
        /// Name of one of the instance's ports.
        port: String,
        /// Request path.
        path: String,
        /// The hook has failed if it has not answered by then.
        #[serde(rename = "timeout_ms", with = "duration_ms")]
        timeout: Duration,
    },
    /// Write the role to `$TANDEM_ROLE_FILE`, then send the signal to the process.
    Signal {
        /// Canonical signal name, e.g. "SIGHUP".
        signal: String,
        /// Linux signal number.
        number: i32,
        /// How long the instance gets to act on the signal.
        #[serde(rename = "timeout_ms", with = "duration_ms")]
        timeout: Duration,
    },
}

impl Hook {
    /// Default hook `timeout`: below the default `fence_margin`, which every hook timeout must be.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

    /// How long the hook may take.
    pub fn timeout(&self) -> Duration {
        match self {
            Hook::Command { timeout, .. }
            | Hook::Http { timeout, .. }
            | Hook::Signal { timeout, .. } => *timeout,
        }
    }
}

/// Signals a signal hook may send: canonical name and Linux number.
pub const HOOK_SIGNALS: &[(&str, i32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGCONT", 18),
    ("SIGWINCH", 28),
];

/// The canonical name and Linux number of a hook signal spelled `name`
/// ("SIGHUP", "HUP", "hup" all give `("SIGHUP", 1)`).
pub fn hook_signal(name: &str) -> Option<(&'static str, i32)> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    HOOK_SIGNALS.iter().copied().find(|(n, _)| *n == full)
}

/// How a crashed instance is restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubles on each quick exit (default 100ms).
    #[serde(rename = "initial_backoff_ms", with = "duration_ms")]
    pub initial_backoff: Duration,
    /// The backoff never grows beyond this (default 10s).
    #[serde(rename = "max_backoff_ms", with = "duration_ms")]
    pub max_backoff: Duration,
    /// Running this long resets the backoff; exiting sooner is a quick exit (default 10s).
    #[serde(rename = "stable_after_ms", with = "duration_ms")]
    pub stable_after: Duration,
    /// This many consecutive quick exits mean the instance is crash-looping (default 3).
    pub crashloop_after: u32,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
            crashloop_after: 3,
        }
    }
}

/// A declared connection from an app to another app or to an
/// [`Endpoint`]. Each running instance of `from` probes it from its host
/// (see [`Topology::link_targets`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Unique name, in events and the API (default `FROM->TO`).
    pub name: String,
    /// The app that connects.
    pub from: String,
    /// The app or endpoint connected to.
    pub to: String,
    /// How many instances of `to` each instance of `from` needs.
    pub cardinality: Cardinality,
    /// Whether the connection uses TLS (default false): then it is probed
    /// with a TLS handshake verified against `tls_ca`.
    pub tls: bool,
    /// With `tls`: how its certificates are checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_check: Option<TlsCheck>,
    /// For a link to an app: the name of the target instances' port to
    /// probe (default: `main`, else the alphabetically first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// How the link is probed.
    pub probe: LinkProbe,
    /// The exclusive group the link belongs to, if any: at most one link
    /// of a group is active on an instance at any moment, chosen by tandem
    /// (the group's first healthy link) through each link's `hook`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<String>,
    /// With `exclusive`: how tandem enables and disables the link on an
    /// instance (a command or HTTP hook; see [`LinkAction`]). A hook that
    /// succeeds confirms the action is done. On a link to an app pinned to
    /// the active site: how its instances are told that app is read-only
    /// (`read-only`) or writable again (`read-write`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<Hook>,
}

/// What a link hook asks of an instance: a command hook gets it as its
/// second-last argument (the link's name last); an HTTP hook POSTs
/// `{app, instance, link, action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkAction {
    /// Connect through the link; succeed once connected.
    Enable,
    /// Disconnect the link; succeed once certainly disconnected.
    Disable,
}

impl LinkAction {
    /// Its spelling in hooks and events.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkAction::Enable => "enable",
            LinkAction::Disable => "disable",
        }
    }
}

impl fmt::Display for LinkAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a TLS link's certificates are checked by its probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsCheck {
    /// The CA file (PEM) the target's certificate must chain to, read by
    /// each agent from its own host.
    pub ca: String,
    /// The name the certificate must carry (default: the target's IP
    /// address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// A certificate that expires within this is reported (an event);
    /// an expired one is a down link (default 14 days).
    #[serde(rename = "expiry_warning_ms", with = "duration_ms")]
    pub expiry_warning: Duration,
}

impl TlsCheck {
    /// Default `expiry_warning`.
    pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);
}

/// How a link is probed, with hysteresis like a health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkProbe {
    /// What is probed.
    pub kind: LinkProbeKind,
    /// Time between probes (default 1s).
    #[serde(rename = "interval_ms", with = "duration_ms")]
    pub interval: Duration,
    /// A probe that takes longer has failed (default 500ms; less than `interval`).
    #[serde(rename = "timeout_ms", with = "duration_ms")]
    pub timeout: Duration,
    /// Consecutive failures that make a link down (default 3).
    pub failures_before_down: u32,
    /// Consecutive successes that make a link up (default 2).
    pub successes_before_up: u32,
}

impl Default for LinkProbe {
    fn default() -> LinkProbe {
        LinkProbe {
            kind: LinkProbeKind::Tcp,
            interval: Check::DEFAULT_INTERVAL,
            timeout: Check::DEFAULT_TIMEOUT,
            failures_before_down: Check::DEFAULT_FAILURES_BEFORE_UNHEALTHY,
            successes_before_up: Check::DEFAULT_SUCCESSES_BEFORE_HEALTHY,
        }
    }
}

/// What a link probe does against each target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LinkProbeKind {
    /// A TCP connect.
    Tcp,
    /// An HTTP GET of `path`; any answer below 500 is up (the target
    /// answers, whatever it thinks of the request).
    Http {
        /// Request path (default "/").
        path: String,
    },
    /// Not probed by the agent: the instance itself reports the link's
    /// state in `$TANDEM_LINKS_DIR/LINK` (the component often knows best),
    /// which the agent reads at each interval: a line `up` or `down WHY`
    /// for every target, or lines `TARGET up` / `TARGET down WHY`.
    Reported,
}

impl LinkProbeKind {
    /// Its name in the topology file.
    pub fn as_str(&self) -> &'static str {
        match self {
            LinkProbeKind::Tcp => "tcp",
            LinkProbeKind::Http { .. } => "http",
            LinkProbeKind::Reported => "reported",
        }
    }
}

/// When a lost link moves an app's primary (warm and hot standby).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFailover {
    /// Whether a lost required link moves the primary (default true).
    pub enabled: bool,
    /// How long a link must have been lost before it counts (default 1s).
    #[serde(rename = "hold_down_ms", with = "duration_ms")]
    pub hold_down: Duration,
    /// The least time between two link-driven switchovers of the app
    /// (default 1m), whatever the flapping.
    #[serde(rename = "interval_ms", with = "duration_ms")]
    pub interval: Duration,
}

impl LinkFailover {
    /// Default `hold_down`.
    pub const DEFAULT_HOLD_DOWN: Duration = Duration::from_secs(1);
    /// Default `interval`.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
}

impl Default for LinkFailover {
    fn default() -> LinkFailover {
        LinkFailover {
            enabled: true,
            hold_down: LinkFailover::DEFAULT_HOLD_DOWN,
            interval: LinkFailover::DEFAULT_INTERVAL,
        }
    }
}

/// One place a link is probed at ([`Topology::link_targets`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTarget {
    /// The target instance's id, or the endpoint's name.
    pub name: String,
    /// Its address.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
}

/// A service tandem does not run, that links may go to (a telephony
/// switch, an upstream database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Unique name (shared with no app).
    pub name: String,
    /// Its IP address.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// The site it is in, if it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// How many instances of the target app a link needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cardinality {
    /// Exactly one (required).
    One,
    /// At least one (required).
    OneOrMore,
    /// Zero or more (not required).
    Optional,
}

impl Cardinality {
    /// Every cardinality.
    pub const ALL: [Cardinality; 3] = [
        Cardinality::One,
        Cardinality::OneOrMore,
        Cardinality::Optional,
    ];

    /// The spelling used in the topology file and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Cardinality::One => "one",
            Cardinality::OneOrMore => "one-or-more",
            Cardinality::Optional => "optional",
        }
    }

    /// The cardinality spelled `s` in the topology file.
    pub fn from_name(s: &str) -> Option<Cardinality> {
        Cardinality::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a link of this cardinality that is down makes the instance degraded.
    pub fn is_required(self) -> bool {
        !matches!(self, Cardinality::Optional)
    }
}

impl fmt::Display for Cardinality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A receiver of event notifications: each event of one of `events` is
/// POSTed to `url` as JSON by the elected controller (see the agent's
/// `webhook` module), retried with backoff and given up after `retries`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Unique name: in the delivery's log entries, metrics and store key.
    pub name: String,
    /// An absolute `http://` or `https://` URL.
    pub url: String,
    /// The kinds of events delivered (default [`Webhook::DEFAULT_EVENTS`]);
    /// never [`EventKind::Webhook`].
    pub events: Vec<EventKind>,
    /// A file holding the secret that signs every delivery
    /// (`X-Tandem-Signature`), read by the runtime at start; it must not be
    /// readable by group or others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<String>,
    /// How long one attempt may take (default 2s, at most 1m).
    #[serde(rename = "timeout_ms", with = "duration_ms")]
    pub timeout: Duration,
    /// Attempts after the first, with exponential backoff (default 5, at
    /// most [`Webhook::MAX_RETRIES`]).
    pub retries: u32,
}

impl Webhook {
    /// Default `events`: what tells someone outside that a failover
    /// happened, or could not happen.
    pub const DEFAULT_EVENTS: [EventKind; 6] = [
        EventKind::Promoted,
        EventKind::PrimaryFailed,
        EventKind::NoCandidate,
        EventKind::CrashLoop,
        EventKind::Host,
        EventKind::Fence,
    ];
    /// Default `timeout`.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// The longest `timeout` accepted.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default `retries`.
    pub const DEFAULT_RETRIES: u32 = 5;
    /// The most `retries` accepted.
    pub const MAX_RETRIES: u32 = 20;
    /// The wait before the first retry; it doubles on each further one.
    pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
    /// The longest wait between two attempts.
    pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

    /// The wait before retry number `retry` (1 for the first retry):
    /// [`Webhook::FIRST_BACKOFF`] doubling, at most [`Webhook::MAX_BACKOFF`].
    pub fn backoff(retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(16);
        Self::FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(Self::MAX_BACKOFF)
    }

    /// Whether events of `kind` go to this webhook.
    pub fn wants(&self, kind: EventKind) -> bool {
        kind != EventKind::Webhook && self.events.contains(&kind)
    }
}
