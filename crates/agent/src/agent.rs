//! The agent of one host: runs the host's instances through their
//! [`InstanceMachine`]s, probes them, runs their hooks, publishes their
//! status bound to the host lease, applies the controller's role
//! assignments, and fences its primaries when the lease may be lost.
//!
//! One task owns every machine; processes, probes and hooks run in tasks of
//! their own and report back through a channel, so the loop never waits on
//! an instance or on the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use nix::sys::signal::Signal;
use tandem_core::instance::{Action, Input, InstanceMachine, InstanceSpec, assignment};
use tandem_core::model::{AppRoles, HostRecord, InstanceStatus, keys};
use tandem_core::topology::{App, Host, Instance, Topology};
use tandem_store::{EventKind, LeaseId, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hook::{HookTarget, run_hook};
use crate::lease::{self, LeaseEvent};
use crate::peer::{
    self, FailsafeAnswer, FailsafeAsk, HostView, InstanceView, PeerRequest, PeerState,
};
use crate::probe::{http_client, probe};
use crate::process::{self, Paths, describe_exit, signal_group};
use crate::publish::Publisher;
use crate::watchdog;

/// Bound of the agent's inbox.
const INBOX: usize = 4096;

/// How an agent is set up.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The host this agent runs (a host of the topology).
    pub host: String,
    /// The topology.
    pub topology: Arc<Topology>,
    /// Where instance logs and role files go.
    pub data_dir: PathBuf,
    /// The API address given to instances as `TANDEM_API`, if known.
    pub api: Option<String>,
    /// The watchdog's command line (program and arguments; see
    /// [`watchdog`]), if the agent runs one.
    pub watchdog: Option<Vec<OsString>>,
}

/// What an agent shares with the rest of its process.
#[derive(Clone)]
pub struct AgentHandle {
    /// The current session (host lease) while it is held and not fenced:
    /// the controller candidate of this host campaigns with it.
    pub session: watch::Receiver<Option<LeaseId>>,
    /// What the agent knows of its host, updated after every change.
    pub view: watch::Receiver<HostView>,
    /// Where the agent port listens (peers and load-balancer checks).
    pub agent_addr: SocketAddr,
    inbox: mpsc::Sender<Msg>,
}

impl AgentHandle {
    /// Applies a new topology whose cluster settings and record of this
    /// host are unchanged: instances whose app and instance settings are
    /// unchanged keep running; changed ones restart, removed ones stop,
    /// new ones start. Returns false if the agent has stopped.
    pub async fn update_topology(&self, topology: Arc<Topology>) -> bool {
        self.inbox.send(Msg::Topology(topology)).await.is_ok()
    }
}

struct Local {
    app: Arc<App>,
    instance: Instance,
    host: Host,
    machine: InstanceMachine,
    pid: Option<u32>,
    probes: Vec<AbortHandle>,
    /// Told to step down because its lease (or failsafe extension) may end.
    fenced: bool,
    /// No longer in the topology as it is: stopping, then gone.
    retired: bool,
    /// What starts in its place once it has stopped (a changed instance).
    replacement: Option<(Arc<App>, Instance)>,
    /// Retired and stopped: only kept so that indices stay valid.
    gone: bool,
}

enum Msg {
    Input(usize, Input),
    Roles(String, AppRoles),
    ForceKill(usize, u64),
    Failsafe(Vec<RoundResult>),
    Topology(Arc<Topology>),
}

/// The outcome of asking every peer of one app for a failsafe confirmation.
struct RoundResult {
    app: String,
    sent_at: Instant,
    hold: Duration,
    /// Ok(peers that confirmed) or why it is not confirmed.
    outcome: Result<usize, String>,
}

struct Agent {
    store: Arc<dyn Store>,
    host: Host,
    topology: Arc<Topology>,
    locals: Vec<Local>,
    by_app: HashMap<String, Vec<usize>>,
    tx: mpsc::Sender<Msg>,
    origin: Instant,
    http: reqwest::Client,
    paths: Paths,
    api: Option<String>,
    publisher: Publisher,
    session: Option<LeaseId>,
    ttl: Duration,
    valid_until: Option<Instant>,
    fenced: bool,
    session_tx: watch::Sender<Option<LeaseId>>,
    stopping: bool,
    view_tx: watch::Sender<HostView>,
    /// The last role assignment fed, per app.
    roles: BTreeMap<String, AppRoles>,
    /// The last renewal (or grant) failed: the store may be unreachable.
    renew_failing: bool,
    /// Failsafe extensions of this host's primaries, per app.
    failsafe_until: HashMap<String, Instant>,
    /// When to ask the peers again.
    failsafe_round_at: Option<Instant>,
    round_in_flight: bool,
    /// Promises made to other hosts' primaries: no promotion of the app
    /// here before this.
    holds: HashMap<String, Instant>,
    /// Assignments held back by a promise, per app.
    deferred: HashMap<String, AppRoles>,
    watchdog: Option<mpsc::UnboundedSender<watchdog::Command>>,
    /// What the watchdog has been told: process group → deadline.
    armed: HashMap<u32, Instant>,
}

/// Starts the agent of `config.host`; it runs until `cancel`, then stops
/// every instance it started, revokes its lease and returns.
pub fn start(
    store: Arc<dyn Store>,
    config: AgentConfig,
    cancel: CancellationToken,
) -> anyhow::Result<(AgentHandle, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let host = config
        .topology
        .host(&config.host)
        .cloned()
        .with_context(|| format!("host {:?} is not in the topology", config.host))?;
    let paths = Paths::create(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let agent_addr = SocketAddr::new(host.address, config.topology.cluster.agent_port);
    let listener = peer::bind(agent_addr)?;
    let (session_tx, session_rx) = watch::channel(None);
    let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
    let (view_tx, view_rx) = watch::channel(HostView {
        host: host.name.clone(),
        ..HostView::default()
    });
    let handle = AgentHandle {
        session: session_rx,
        view: view_rx.clone(),
        agent_addr,
        inbox: inbox_tx.clone(),
    };
    let (peer_tx, peer_rx) = mpsc::channel(64);
    let peer_state = PeerState {
        view: view_rx,
        requests: peer_tx,
    };
    tokio::spawn(peer::serve(listener, peer_state, cancel.child_token()));
    let task = tokio::spawn(run(
        store,
        config.topology,
        host,
        paths,
        Extras {
            api: config.api,
            watchdog: config.watchdog,
            session_tx,
            view_tx,
            peer_rx,
            inbox: (inbox_tx, inbox_rx),
        },
        cancel,
    ));
    Ok((handle, task))
}

/// The rest of what [`run`] needs.
struct Extras {
    api: Option<String>,
    watchdog: Option<Vec<OsString>>,
    session_tx: watch::Sender<Option<LeaseId>>,
    view_tx: watch::Sender<HostView>,
    peer_rx: mpsc::Receiver<PeerRequest>,
    inbox: (mpsc::Sender<Msg>, mpsc::Receiver<Msg>),
}

/// Starts the watchdog process; the returned sender feeds its stdin.
fn start_watchdog(
    command: &[OsString],
) -> anyhow::Result<mpsc::UnboundedSender<watchdog::Command>> {
    use tokio::io::AsyncWriteExt;
    let (program, args) = command
        .split_first()
        .context("the watchdog command is empty")?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start the watchdog {}", program.to_string_lossy()))?;
    let mut stdin = child.stdin.take().context("the watchdog has no stdin")?;
    let (tx, mut rx) = mpsc::unbounded_channel::<watchdog::Command>();
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            if let Err(e) = stdin.write_all(cmd.line().as_bytes()).await {
                warn!(error = %e, "the watchdog is gone");
                return;
            }
        }
        // Closing its stdin tells the watchdog to kill what is still armed
        // and leave.
        drop(stdin);
        let _ = child.wait().await;
    });
    Ok(tx)
}

async fn run(
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    host: Host,
    paths: Paths,
    extras: Extras,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Extras {
        api,
        watchdog,
        session_tx,
        view_tx,
        mut peer_rx,
        inbox: (tx, mut rx),
    } = extras;
    let watchdog = match watchdog {
        Some(cmd) => Some(start_watchdog(&cmd)?),
        None => None,
    };
    let cluster = topology.cluster.clone();
    let (lease_tx, mut lease_rx) = mpsc::channel(16);
    let keeper_cancel = cancel.child_token();
    let keeper = tokio::spawn(lease::keep(
        store.clone(),
        cluster.lease_ttl,
        cluster.renew_interval,
        lease_tx,
        keeper_cancel.clone(),
    ));
    let publisher_cancel = CancellationToken::new();
    let publisher = Publisher::start(store.clone(), publisher_cancel.clone());
    let mut agent = Agent {
        store: store.clone(),
        host,
        topology,
        locals: Vec::new(),
        by_app: HashMap::new(),
        tx,
        origin: Instant::now(),
        http: http_client(),
        paths,
        api,
        publisher,
        session: None,
        ttl: cluster.lease_ttl,
        valid_until: None,
        fenced: false,
        session_tx,
        stopping: false,
        view_tx,
        roles: BTreeMap::new(),
        renew_failing: false,
        failsafe_until: HashMap::new(),
        failsafe_round_at: None,
        round_in_flight: false,
        holds: HashMap::new(),
        deferred: HashMap::new(),
        watchdog,
        armed: HashMap::new(),
    };

    // Hold a lease before starting anything.
    let first = tokio::select! {
        _ = cancel.cancelled() => {
            keeper_cancel.cancel();
            return Ok(());
        }
        ev = lease_rx.recv() => ev,
    };
    let Some(LeaseEvent::Granted {
        lease,
        sent_at,
        ttl,
    }) = first
    else {
        anyhow::bail!("lease keeper stopped before granting a lease");
    };
    agent.build(lease);
    agent.on_granted(lease, sent_at, ttl);

    // Apply the current assignments, then follow them.
    let roles_from = agent.load_roles().await;
    tokio::spawn(watch_roles(
        store.clone(),
        roles_from,
        agent.tx.clone(),
        cancel.child_token(),
    ));
    info!(host = %agent.host.name, instances = agent.locals.len(), "agent started");
    for i in 0..agent.locals.len() {
        agent.feed(i, Input::Tick);
    }

    let mut stop_deadline: Option<Instant> = None;
    loop {
        if agent.stopping && agent.locals.iter().all(|l| l.machine.is_stopped()) {
            break;
        }
        let next_tick = agent.next_tick();
        let fence_at = agent.fence_at();
        let round_at = agent.failsafe_round_at;
        let release_at = agent.next_hold_release();
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if !agent.stopping => {
                agent.stopping = true;
                let grace = agent.locals.iter().map(|l| l.app.stop_timeout).max().unwrap_or_default();
                stop_deadline = Some(Instant::now() + grace + Duration::from_secs(2));
                for i in 0..agent.locals.len() {
                    agent.feed(i, Input::Stop);
                }
            }
            _ = sleep_until_opt(stop_deadline) => {
                warn!("instances did not stop in time; leaving");
                break;
            }
            Some(msg) = rx.recv() => {
                agent.on_msg(msg);
                agent.replace_stopped();
            }
            Some(ev) = lease_rx.recv() => agent.on_lease(ev),
            Some(req) = peer_rx.recv() => agent.on_peer(req),
            _ = sleep_until_opt(fence_at) => agent.fence_due(),
            _ = sleep_until_opt(round_at) => agent.failsafe_round(),
            _ = sleep_until_opt(release_at) => agent.release_holds(),
            _ = sleep_until_opt(next_tick) => {
                let now = agent.now();
                for i in 0..agent.locals.len() {
                    if agent.locals[i].machine.next_wakeup().is_some_and(|t| t <= now) {
                        agent.feed(i, Input::Tick);
                    }
                }
            }
        }
    }
    keeper_cancel.cancel();
    let _ = keeper.await;
    publisher_cancel.cancel();
    if let Some(lease) = agent.session
        && let Err(e) = store.revoke_lease(lease).await
    {
        debug!(error = %e, "revoking the lease on exit failed");
    }
    agent.session_tx.send_replace(None);
    info!(host = %agent.host.name, "agent stopped");
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Follows `roles/` from revision `from`. Role assignments are state, not
/// a log: when the watch breaks, re-reading them all and watching from
/// that read is a complete resume (agents ignore older generations).
async fn watch_roles(
    store: Arc<dyn Store>,
    mut from: u64,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            s = store.watch(keys::ROLES, from) => s,
        };
        match stream {
            Ok(mut stream) => loop {
                let item = tokio::select! {
                    _ = cancel.cancelled() => return,
                    item = stream.next() => item,
                };
                match item {
                    Some(Ok(ev)) if ev.kind == EventKind::Put => {
                        let Some(app) = ev.kv.key.strip_prefix(keys::ROLES) else {
                            continue;
                        };
                        match serde_json::from_slice::<AppRoles>(&ev.kv.value) {
                            Ok(roles) => {
                                if tx.send(Msg::Roles(app.to_string(), roles)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                warn!(key = %ev.kv.key, error = %e, "unreadable role assignment")
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "role watch broke; re-reading");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => warn!(error = %e, "cannot watch role assignments"),
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            let Ok(listing) = store.list(keys::ROLES).await else {
                continue;
            };
            for kv in listing.kvs {
                if let (Some(app), Ok(roles)) = (
                    kv.key.strip_prefix(keys::ROLES),
                    serde_json::from_slice::<AppRoles>(&kv.value),
                ) && tx.send(Msg::Roles(app.to_string(), roles)).await.is_err()
                {
                    return;
                }
            }
            from = listing.revision + 1;
            break;
        }
    }
}

impl Agent {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn build(&mut self, session: LeaseId) {
        let topology = self.topology.clone();
        let host = self.host.name.clone();
        for (app, instance) in topology.instances_on(&host) {
            self.add_local(Arc::new(app.clone()), instance.clone(), session);
        }
    }

    /// Adds a local instance (not started: the next tick starts it).
    fn add_local(&mut self, app: Arc<App>, instance: Instance, session: LeaseId) -> usize {
        let idx = self.locals.len();
        self.by_app.entry(app.name.clone()).or_default().push(idx);
        let machine = InstanceMachine::new(InstanceSpec {
            name: format!("{}/{}", app.name, instance.id),
            host: self.host.name.clone(),
            ha: app.ha,
            has_hook: app.hook.is_some(),
            restart: app.restart.clone(),
            checks: app
                .checks
                .iter()
                .map(|c| (c.failures_before_unhealthy, c.successes_before_healthy))
                .collect(),
            session,
        });
        self.locals.push(Local {
            app,
            instance,
            host: self.host.clone(),
            machine,
            pid: None,
            probes: Vec::new(),
            fenced: false,
            retired: false,
            replacement: None,
            gone: false,
        });
        idx
    }

    /// Applies a new topology (same cluster settings and host record):
    /// only what changed is stopped, restarted or started.
    fn on_topology(&mut self, new: Arc<Topology>) {
        let wanted: Vec<(App, Instance)> = new
            .instances_on(&self.host.name)
            .map(|(a, i)| (a.clone(), i.clone()))
            .collect();
        // An app's own settings, whatever its instances elsewhere.
        let spec = |a: &App| App {
            instances: Vec::new(),
            ..a.clone()
        };
        let mut kept = BTreeSet::new();
        for i in 0..self.locals.len() {
            if self.locals[i].retired {
                continue;
            }
            let (name, id) = (
                self.locals[i].app.name.clone(),
                self.locals[i].instance.id.clone(),
            );
            let found = wanted
                .iter()
                .find(|(a, inst)| a.name == name && inst.id == id);
            match found {
                Some((app, inst))
                    if spec(app) == spec(&self.locals[i].app)
                        && *inst == self.locals[i].instance =>
                {
                    self.locals[i].app = Arc::new(app.clone());
                    kept.insert((name, id));
                }
                Some((app, inst)) => {
                    info!(instance = %format!("{name}/{id}"), "its settings changed: restarting it with the new ones");
                    self.locals[i].retired = true;
                    self.locals[i].replacement = Some((Arc::new(app.clone()), inst.clone()));
                    kept.insert((name, id));
                    self.feed(i, Input::Stop);
                }
                None => {
                    info!(instance = %format!("{name}/{id}"), "no longer in the topology: stopping it");
                    self.locals[i].retired = true;
                    self.feed(i, Input::Stop);
                }
            }
        }
        self.topology = new;
        let session = self.session.unwrap_or_default();
        for (app, inst) in wanted {
            if kept.contains(&(app.name.clone(), inst.id.clone())) {
                continue;
            }
            info!(instance = %format!("{}/{}", app.name, inst.id), "new in the topology: starting it");
            let i = self.add_local(Arc::new(app), inst, session);
            self.start_local(i);
        }
        self.by_app.clear();
        for (i, l) in self.locals.iter().enumerate() {
            if !l.retired {
                self.by_app.entry(l.app.name.clone()).or_default().push(i);
            }
        }
        self.replace_stopped();
    }

    /// Starts a just-added local instance: fenced if the host is, told its
    /// app's current assignment, then ticked.
    fn start_local(&mut self, i: usize) {
        if self.fenced || self.session.is_none() {
            self.locals[i].fenced = true;
            self.feed(i, Input::Fence);
        }
        let app = self.locals[i].app.name.clone();
        if let Some(roles) = self.roles.get(&app).cloned() {
            let (ha, id) = (self.locals[i].app.ha, self.locals[i].instance.id.clone());
            self.feed(i, assignment(&roles, ha, &id));
        }
        self.feed(i, Input::Tick);
    }

    /// Retired instances that have stopped: starts their replacements, and
    /// removes the status of those gone from the topology.
    fn replace_stopped(&mut self) {
        if self.stopping {
            return;
        }
        let mut removed = false;
        for i in 0..self.locals.len() {
            let l = &mut self.locals[i];
            if !l.retired || l.gone || !l.machine.is_stopped() {
                continue;
            }
            l.gone = true;
            match l.replacement.take() {
                Some((app, inst)) => {
                    // Starting it feeds it, which refreshes the view.
                    let j = self.add_local(app, inst, self.session.unwrap_or_default());
                    self.start_local(j);
                }
                None => {
                    let key = keys::status(&l.app.name, &l.instance.id);
                    self.publisher.delete(key);
                    removed = true;
                }
            }
        }
        if removed {
            self.refresh();
        }
    }

    async fn load_roles(&mut self) -> u64 {
        loop {
            match self.store.list(keys::ROLES).await {
                Ok(listing) => {
                    for kv in &listing.kvs {
                        let Some(app) = kv.key.strip_prefix(keys::ROLES) else {
                            continue;
                        };
                        match serde_json::from_slice::<AppRoles>(&kv.value) {
                            Ok(roles) => self.on_roles(app, &roles),
                            Err(e) => {
                                warn!(key = %kv.key, error = %e, "unreadable role assignment")
                            }
                        }
                    }
                    return listing.revision + 1;
                }
                Err(e) => {
                    warn!(error = %e, "cannot read role assignments; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    fn next_tick(&self) -> Option<Instant> {
        self.locals
            .iter()
            .filter_map(|l| l.machine.next_wakeup())
            .min()
            .map(|d| self.origin + d)
    }

    /// Until when `app`'s primaries here may act: the lease's end, or a
    /// failsafe extension's if that is later.
    fn valid_for(&self, app: &str) -> Option<Instant> {
        let lease = self.valid_until?;
        Some(match self.failsafe_until.get(app) {
            Some(ext) if *ext > lease => *ext,
            _ => lease,
        })
    }

    /// The next moment something must be fenced: the session (controller
    /// candidate) at the lease's end minus the margin, each instance at
    /// its app's end minus the margin.
    fn fence_at(&self) -> Option<Instant> {
        self.session?;
        let margin = self.topology.cluster.fence_margin;
        let minus = |t: Instant| t.checked_sub(margin).unwrap_or(t);
        let host = if self.fenced {
            None
        } else {
            self.valid_until.map(minus)
        };
        let instances = self
            .locals
            .iter()
            .filter(|l| !l.fenced)
            .filter_map(|l| self.valid_for(&l.app.name).map(minus));
        host.into_iter().chain(instances).min()
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Input(i, input) => {
                if matches!(input, Input::Exited { .. }) {
                    let local = &mut self.locals[i];
                    local.pid = None;
                    for p in local.probes.drain(..) {
                        p.abort();
                    }
                }
                self.feed(i, input);
            }
            Msg::Roles(app, roles) => self.on_roles(&app, &roles),
            Msg::Failsafe(results) => self.on_failsafe(results),
            Msg::Topology(t) => self.on_topology(t),
            Msg::ForceKill(i, incarnation) => {
                let local = &self.locals[i];
                if local.machine.incarnation() == incarnation
                    && let Some(pid) = local.pid
                {
                    warn!(
                        "{}/{} did not stop within its stop timeout: SIGKILL",
                        local.app.name, local.instance.id
                    );
                    let _ = signal_group(pid, Signal::SIGKILL);
                }
            }
        }
    }

    fn on_roles(&mut self, app: &str, roles: &AppRoles) {
        let Some(idxs) = self.by_app.get(app).cloned() else {
            return;
        };
        // A grant to an instance here that is not already acting primary.
        let grants_here = roles.primary.as_ref().is_some_and(|g| {
            idxs.iter().any(|i| {
                let l = &self.locals[*i];
                l.instance.id == g.instance && !l.machine.status().may_act_as_primary()
            })
        });
        // A promise made to another host's primary, or this host's own
        // primary of the app kept by failsafe: no promotion here before
        // either ends.
        let held_until = self.held_until(app);
        if grants_here
            && let Some(until) = held_until
            && until > Instant::now()
        {
            info!(
                app,
                generation = roles.generation,
                "failsafe: holding back a promotion here until the promise made to the primary's host ends"
            );
            self.deferred.insert(app.to_string(), roles.clone());
            return;
        }
        self.deferred.remove(app);
        self.roles.insert(app.to_string(), roles.clone());
        for i in idxs {
            let (ha, id) = {
                let l = &self.locals[i];
                (l.app.ha, l.instance.id.clone())
            };
            self.feed(i, assignment(roles, ha, &id));
        }
    }

    fn on_granted(&mut self, lease: LeaseId, sent_at: Instant, ttl: Duration) {
        self.session = Some(lease);
        self.ttl = ttl;
        self.valid_until = Some(sent_at + ttl);
        self.fenced = false;
        self.renew_failing = false;
        for l in &mut self.locals {
            l.fenced = false;
        }
        self.publisher.set_lease(Some(lease));
        let record = HostRecord {
            host: self.host.name.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        };
        if let Ok(v) = serde_json::to_vec(&record) {
            self.publisher.put(keys::host(&self.host.name), v);
        }
        for i in 0..self.locals.len() {
            self.feed(i, Input::Unfence { session: lease });
            self.publish(i);
        }
        self.session_tx.send_replace(Some(lease));
        self.refresh();
    }

    fn on_lease(&mut self, ev: LeaseEvent) {
        match ev {
            LeaseEvent::Granted {
                lease,
                sent_at,
                ttl,
            } => {
                info!(lease, "new session: lease granted");
                self.on_granted(lease, sent_at, ttl);
            }
            LeaseEvent::Renewed { lease, sent_at } => {
                if Some(lease) != self.session {
                    return;
                }
                if self.renew_failing {
                    info!(lease, "the store answers again");
                }
                self.renew_failing = false;
                self.failsafe_round_at = None;
                // The lease holds again: this host's primaries need no
                // extension (promises made to peers still stand).
                self.failsafe_until.clear();
                let until = sent_at + self.ttl;
                if self.valid_until.is_none_or(|v| until > v) {
                    self.valid_until = Some(until);
                }
                let margin = self.topology.cluster.fence_margin;
                let any_fenced = self.fenced || self.locals.iter().any(|l| l.fenced);
                if any_fenced && Instant::now() + margin < until {
                    info!(lease, "lease renewed again: fencing lifted");
                    self.fenced = false;
                    for i in 0..self.locals.len() {
                        self.locals[i].fenced = false;
                        self.feed(i, Input::Unfence { session: lease });
                    }
                    self.session_tx.send_replace(Some(lease));
                }
            }
            LeaseEvent::Failed => {
                self.renew_failing = true;
                if self.topology.cluster.failsafe
                    && self.failsafe_round_at.is_none()
                    && !self.round_in_flight
                {
                    self.failsafe_round_at = Some(Instant::now());
                }
            }
            LeaseEvent::Expired { lease } => {
                if Some(lease) == self.session {
                    // Gone on the store: failsafe extensions end too.
                    self.failsafe_until.clear();
                    self.fence_everything();
                    self.session = None;
                    self.valid_until = None;
                    self.publisher.set_lease(None);
                }
            }
        }
        self.refresh();
    }

    /// Fences the session and every instance at once (the lease is gone).
    fn fence_everything(&mut self) {
        self.fence_session();
        for i in 0..self.locals.len() {
            self.fence_instance(i);
        }
    }

    fn fence_session(&mut self) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        warn!(
            host = %self.host.name,
            margin_ms = self.topology.cluster.fence_margin.as_millis() as u64,
            "host lease not renewed in time: this host stops being a controller candidate"
        );
        self.session_tx.send_replace(None);
    }

    fn fence_instance(&mut self, i: usize) {
        if self.locals[i].fenced {
            return;
        }
        self.locals[i].fenced = true;
        self.feed(i, Input::Fence);
    }

    /// Fences whatever is due: the session at the lease's end minus the
    /// margin; each instance at its app's end (the lease, or a failsafe
    /// extension) minus the margin. The margin covers the demotion hook
    /// (or a kill) and clock-rate drift.
    fn fence_due(&mut self) {
        let now = Instant::now();
        let margin = self.topology.cluster.fence_margin;
        if self.valid_until.is_some_and(|v| now + margin >= v) {
            self.fence_session();
        }
        for i in 0..self.locals.len() {
            let app = self.locals[i].app.name.clone();
            if !self.locals[i].fenced && self.valid_for(&app).is_none_or(|v| now + margin >= v) {
                if self.failsafe_until.contains_key(&app) {
                    warn!(
                        app,
                        "failsafe: no longer confirmed by every peer: stepping down before the extension ends"
                    );
                }
                self.fence_instance(i);
            }
        }
    }

    /// Asks, for every app with a primary here, every other agent running
    /// an instance of it to confirm it cannot reach the store either and to
    /// refuse the app's promotion for a lease TTL.
    fn failsafe_round(&mut self) {
        self.failsafe_round_at = None;
        let cluster = self.topology.cluster.clone();
        if !cluster.failsafe
            || !self.renew_failing
            || self.session.is_none()
            || self.round_in_flight
        {
            return;
        }
        let apps: BTreeSet<String> = self
            .locals
            .iter()
            .filter(|l| !l.fenced && !l.retired && l.machine.status().may_act_as_primary())
            .map(|l| l.app.name.clone())
            .collect();
        if apps.is_empty() {
            self.failsafe_round_at = Some(Instant::now() + cluster.renew_interval);
            return;
        }
        let mut asks = Vec::new();
        for app in apps {
            let peers: BTreeSet<SocketAddr> = self
                .topology
                .apps
                .iter()
                .filter(|a| a.name == app)
                .flat_map(|a| a.instances.iter())
                .filter(|i| i.host != self.host.name)
                .filter_map(|i| self.topology.host(&i.host))
                .map(|h| SocketAddr::new(h.address, cluster.agent_port))
                .collect();
            asks.push((app, peers));
        }
        self.round_in_flight = true;
        let http = self.http.clone();
        let tx = self.tx.clone();
        let from = self.host.name.clone();
        let hold = cluster.lease_ttl;
        let timeout = cluster.renew_interval;
        tokio::spawn(async move {
            let sent_at = Instant::now();
            let mut results = Vec::new();
            for (app, peers) in asks {
                let ask = FailsafeAsk {
                    from: from.clone(),
                    app: app.clone(),
                    hold_ms: hold.as_millis() as u64,
                };
                let answers = futures::future::join_all(
                    peers.iter().map(|p| peer::ask(&http, *p, &ask, timeout)),
                )
                .await;
                let outcome = confirmation(&peers, &answers, ask.hold_ms);
                results.push(RoundResult {
                    app,
                    sent_at,
                    hold,
                    outcome,
                });
            }
            let _ = tx.send(Msg::Failsafe(results)).await;
        });
    }

    fn on_failsafe(&mut self, results: Vec<RoundResult>) {
        self.round_in_flight = false;
        let now = Instant::now();
        for r in results {
            match r.outcome {
                Ok(peers) => {
                    let until = r.sent_at + r.hold;
                    let before = self.failsafe_until.insert(r.app.clone(), until);
                    if before.is_none_or(|b| b <= now) {
                        warn!(
                            app = %r.app,
                            peers,
                            "failsafe: the store is unreachable and every peer confirms it cannot reach it either: keeping the primary role"
                        );
                    } else {
                        debug!(app = %r.app, peers, "failsafe: confirmed again");
                    }
                }
                Err(why) => warn!(app = %r.app, "failsafe: not confirmed ({why})"),
            }
        }
        if self.renew_failing && self.session.is_some() {
            self.failsafe_round_at = Some(now + self.topology.cluster.renew_interval);
        }
        self.refresh();
    }

    fn on_peer(&mut self, req: PeerRequest) {
        match req {
            PeerRequest::Failsafe(ask, reply) => {
                let answer = self.failsafe_answer(&ask);
                let _ = reply.send(answer);
            }
        }
    }

    /// Answers a primary's failsafe request; promises only when this agent
    /// cannot reach the store and no instance of the app here is or is
    /// becoming primary.
    fn failsafe_answer(&mut self, ask: &FailsafeAsk) -> FailsafeAnswer {
        let host = self.host.name.clone();
        if self.session.is_some() && !self.renew_failing {
            return FailsafeAnswer {
                host,
                store_reachable: true,
                promised_ms: None,
                refused: Some("this agent reaches the store".into()),
            };
        }
        let idxs = self.by_app.get(&ask.app).cloned().unwrap_or_default();
        let granted = self.roles.get(&ask.app).and_then(|r| r.primary.as_ref());
        let primary_here = idxs.iter().any(|i| {
            let l = &self.locals[*i];
            l.machine.status().may_act_as_primary()
                || granted.is_some_and(|g| g.instance == l.instance.id)
        }) || self.deferred.contains_key(&ask.app);
        if primary_here {
            return FailsafeAnswer {
                host,
                store_reachable: false,
                promised_ms: None,
                refused: Some(format!(
                    "an instance of {} here is primary or being promoted",
                    ask.app
                )),
            };
        }
        // Never promise more than a lease: a confused peer cannot block
        // promotions here for long.
        let promised = Duration::from_millis(ask.hold_ms).min(self.topology.cluster.lease_ttl);
        let until = Instant::now() + promised;
        let entry = self.holds.entry(ask.app.clone()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
        debug!(app = %ask.app, from = %ask.from, promised_ms = promised.as_millis() as u64, "failsafe: promised");
        FailsafeAnswer {
            host,
            store_reachable: false,
            promised_ms: Some(promised.as_millis() as u64),
            refused: None,
        }
    }

    /// When the first held-back assignment may be applied.
    fn next_hold_release(&self) -> Option<Instant> {
        self.deferred
            .keys()
            .filter_map(|app| self.held_until(app))
            .min()
    }

    /// The end of the later of the promise made for `app` and this host's
    /// own failsafe extension of it.
    fn held_until(&self, app: &str) -> Option<Instant> {
        [self.holds.get(app), self.failsafe_until.get(app)]
            .into_iter()
            .flatten()
            .max()
            .copied()
    }

    fn release_holds(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .deferred
            .keys()
            .filter(|app| self.held_until(app).is_none_or(|h| h <= now))
            .cloned()
            .collect();
        for app in due {
            if let Some(roles) = self.deferred.remove(&app) {
                info!(
                    app,
                    "failsafe: promise ended: applying the held-back assignment"
                );
                self.on_roles(&app, &roles);
            }
        }
    }

    /// Publishes the host view and tells the watchdog what may act as
    /// primary until when.
    fn refresh(&mut self) {
        let statuses: Vec<InstanceStatus> =
            self.locals.iter().map(|l| l.machine.status()).collect();
        if let Some(wd) = &self.watchdog {
            // The watchdog kills a quarter margin before the end: after the
            // agent would have fenced, before anyone else can be promoted.
            let quarter = self.topology.cluster.fence_margin / 4;
            let mut want = HashMap::new();
            for (l, st) in self.locals.iter().zip(&statuses) {
                if st.may_act_as_primary()
                    && let Some(pid) = st.pid
                {
                    let end = self.valid_for(&l.app.name).unwrap_or_else(Instant::now);
                    want.insert(pid, end.checked_sub(quarter).unwrap_or(end));
                }
            }
            for (pid, deadline) in &want {
                if self.armed.get(pid) != Some(deadline) {
                    let now = Instant::now();
                    let left = deadline.saturating_duration_since(now);
                    let _ = wd.send(watchdog::Command::Arm {
                        pgid: *pid,
                        deadline_ns: watchdog::monotonic_ns()
                            .saturating_add(left.as_nanos() as u64),
                    });
                }
            }
            for pid in self.armed.keys() {
                if !want.contains_key(pid) {
                    let _ = wd.send(watchdog::Command::Disarm { pgid: *pid });
                }
            }
            self.armed = want;
        }
        let view = HostView {
            host: self.host.name.clone(),
            store_reachable: self.session.is_some() && !self.renew_failing,
            instances: self
                .locals
                .iter()
                .zip(statuses)
                .filter(|(l, _)| !l.gone)
                .map(|(l, status)| InstanceView {
                    app: l.app.name.clone(),
                    instance: l.instance.id.clone(),
                    ha: l.app.ha,
                    status,
                    fenced: l.fenced,
                })
                .collect(),
            roles: self.roles.clone(),
        };
        self.view_tx.send_replace(view);
    }

    fn publish(&mut self, i: usize) {
        let local = &self.locals[i];
        let status = local.machine.status();
        match serde_json::to_vec(&status) {
            Ok(v) => self
                .publisher
                .put(keys::status(&local.app.name, &local.instance.id), v),
            Err(e) => warn!(error = %e, "cannot encode status"),
        }
    }

    /// Feeds an input and carries out every resulting action.
    fn feed(&mut self, idx: usize, input: Input) {
        let mut queue = std::collections::VecDeque::from([(idx, input)]);
        while let Some((i, input)) = queue.pop_front() {
            let now = self.now();
            let step = self.locals[i].machine.handle(input, now);
            let name = format!("{}/{}", self.locals[i].app.name, self.locals[i].instance.id);
            for note in step.notes {
                info!(instance = %name, "{note}");
            }
            for action in step.actions {
                match action {
                    Action::Spawn {
                        incarnation,
                        role,
                        epoch,
                    } => {
                        let local = &self.locals[i];
                        match process::spawn(
                            &local.app,
                            &local.instance,
                            &local.host,
                            role,
                            epoch,
                            &self.paths,
                            self.api.as_deref(),
                        ) {
                            Ok(child) => match child.id() {
                                Some(pid) => {
                                    debug!(instance = %name, pid, incarnation, %role, "started");
                                    self.locals[i].pid = Some(pid);
                                    self.watch_exit(i, child);
                                    queue.push_back((i, Input::Spawned { pid }));
                                    self.start_probes(i, incarnation);
                                }
                                None => queue.push_back((
                                    i,
                                    Input::SpawnFailed {
                                        error: "process ended at once".into(),
                                    },
                                )),
                            },
                            Err(e) => {
                                warn!(instance = %name, error = %e, "cannot start");
                                queue.push_back((
                                    i,
                                    Input::SpawnFailed {
                                        error: e.to_string(),
                                    },
                                ));
                            }
                        }
                    }
                    Action::RunHook {
                        role,
                        epoch,
                        incarnation,
                    } => self.run_hook(i, role, epoch, incarnation),
                    Action::Kill { reason } => {
                        warn!(instance = %name, "{reason}");
                        if let Some(pid) = self.locals[i].pid {
                            let _ = signal_group(pid, Signal::SIGKILL);
                        }
                    }
                    Action::Terminate => {
                        if let Some(pid) = self.locals[i].pid {
                            let _ = signal_group(pid, Signal::SIGTERM);
                            // A frozen process takes SIGTERM only once thawed.
                            let _ = signal_group(pid, Signal::SIGCONT);
                            let tx = self.tx.clone();
                            let grace = self.locals[i].app.stop_timeout;
                            let inc = self.locals[i].machine.incarnation();
                            tokio::spawn(async move {
                                tokio::time::sleep(grace).await;
                                let _ = tx.send(Msg::ForceKill(i, inc)).await;
                            });
                        }
                    }
                    Action::Publish => self.publish(i),
                }
            }
        }
        self.refresh();
    }

    fn watch_exit(&self, i: usize, mut child: tokio::process::Child) {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let how = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("lost track of the process: {e}"),
            };
            let _ = tx.send(Msg::Input(i, Input::Exited { how })).await;
        });
    }

    fn start_probes(&mut self, i: usize, incarnation: u64) {
        let local = &mut self.locals[i];
        for p in local.probes.drain(..) {
            p.abort();
        }
        for (check_idx, check) in local.app.checks.iter().enumerate() {
            let tx = self.tx.clone();
            let app = local.app.clone();
            let instance = local.instance.clone();
            let host = local.host.clone();
            let http = self.http.clone();
            let interval = check.interval;
            let handle = tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let check = &app.checks[check_idx];
                    let result = probe(check, &app, &instance, &host, &http).await;
                    let busy = result.as_ref().ok().copied().flatten();
                    let input = Input::Probe {
                        check: check_idx,
                        incarnation,
                        result: result.map(drop),
                    };
                    if tx.send(Msg::Input(i, input)).await.is_err() {
                        return;
                    }
                    if let Some(busy) = busy {
                        let load = Input::Load { incarnation, busy };
                        if tx.send(Msg::Input(i, load)).await.is_err() {
                            return;
                        }
                    }
                }
            });
            local.probes.push(handle.abort_handle());
        }
    }

    fn run_hook(&self, i: usize, role: tandem_core::model::Role, epoch: u64, incarnation: u64) {
        let local = &self.locals[i];
        let Some(hook) = local.app.hook.clone() else {
            return;
        };
        let Some(pid) = local.pid else {
            return;
        };
        let tx = self.tx.clone();
        let app = local.app.clone();
        let instance = local.instance.clone();
        let host = local.host.clone();
        let role_file = self.paths.role_file(&app.name, &instance.id);
        let http = self.http.clone();
        tokio::spawn(async move {
            let target = HookTarget {
                app: &app,
                instance: &instance,
                host: &host,
                pid,
                role_file: &role_file,
            };
            let started = Instant::now();
            let result = run_hook(&hook, &target, role, epoch, &http).await;
            debug!(
                instance = %format!("{}/{}", app.name, instance.id),
                %role, epoch, ok = result.is_ok(),
                hook_us = started.elapsed().as_micros() as u64,
                "hook finished"
            );
            let input = Input::HookDone {
                role,
                epoch,
                incarnation,
                result,
            };
            let _ = tx.send(Msg::Input(i, input)).await;
        });
    }
}

/// Whether every peer's answer confirms: each answered, cannot reach the
/// store, and promised at least `hold_ms`. Ok(number of peers) or why not.
fn confirmation(
    peers: &BTreeSet<SocketAddr>,
    answers: &[Option<FailsafeAnswer>],
    hold_ms: u64,
) -> Result<usize, String> {
    for (peer, answer) in peers.iter().zip(answers) {
        match answer {
            None => return Err(format!("the agent at {peer} did not answer")),
            Some(a) if a.store_reachable => {
                return Err(format!("host {} can reach the store", a.host));
            }
            Some(a) => match a.promised_ms {
                Some(ms) if ms >= hold_ms => {}
                _ => {
                    return Err(format!(
                        "host {} did not promise: {}",
                        a.host,
                        a.refused.as_deref().unwrap_or("no reason given")
                    ));
                }
            },
        }
    }
    Ok(peers.len())
}
