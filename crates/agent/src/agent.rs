//! The agent of one host: the runtime of a [`HostMachine`].
//!
//! Every decision (when to fence, what to promise a peer, when a held-back
//! promotion may proceed, what the watchdog is armed with, what a topology
//! change restarts) is the host machine's, in `tandem-core`. This module
//! executes its actions: it starts processes, probes them, runs their
//! hooks, publishes their status bound to the host lease, asks peers,
//! answers them, tells the watchdog, and feeds back what happened.
//!
//! One task owns the machine; processes, probes, hooks and peer requests
//! run in tasks of their own and report back through a channel, so the loop
//! never waits on an instance or on the store.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tandem_core::host::{
    FailsafeAnswer, HostAction, HostConfig, HostInput, HostMachine, HostStep, LeaseInput, PeerAsk,
};
use tandem_core::instance::{Action, Input};
use tandem_core::model::{AppRoles, HostRecord, keys};
use tandem_core::topology::{Host, LinkAction, Topology};
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{EventKind, LeaseId, Store};
use tandem_telemetry::host::{ExitCause, HostEvent, HostMetrics};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hook::{HookTarget, run_hook, run_link_hook};
use crate::lease::{self, LeaseEvent};
use crate::peer::{self, HostView, InstanceView, PeerRequest, PeerState};
use crate::probe::{TlsProbe, http_client, probe, probe_link, read_active};
use crate::process::{self, ACTIVE_LINKS_FILE, Paths, describe_exit, signal_group};
use crate::publish::Publisher;
use crate::sign::{ClusterSecret, Verifier};
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
    /// The cluster secret that signs failsafe requests and answers on the
    /// agent port (see [`crate::sign`]); `None`: unauthenticated, with a
    /// warning at start.
    pub secret: Option<ClusterSecret>,
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
    /// The agent's metrics (served on its port at `/metrics`).
    pub metrics: Arc<HostMetrics>,
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

/// What the runtime keeps of one local instance, beside its machine.
#[derive(Default)]
struct Proc {
    pid: Option<u32>,
    probes: Vec<AbortHandle>,
    /// One per target of each link of the app.
    link_probes: Vec<AbortHandle>,
}

enum Msg {
    Input(usize, Input),
    /// The process of incarnation `.1` of local `.0` started with pid `.2`.
    Started(usize, u64, u32),
    Roles(String, Box<AppRoles>),
    /// The process of incarnation `.1` of local `.0`, told to stop, has
    /// not exited within its app's stop timeout.
    StopTimedOut(usize, u64),
    Answers(Vec<Vec<Option<FailsafeAnswer>>>),
    Topology(Arc<Topology>),
    /// An admin-data source finished starting.
    AdminStarted(crate::admin::Started),
    /// Time to publish the admin-data state that changed.
    AdminTick,
    /// Time to tell followers of pinned apps what they were not told yet.
    FollowersTick,
    /// A follower hook ended (local, link, incarnation, read-only, result).
    FollowerDone(usize, String, u64, bool, Result<(), String>),
}

impl From<crate::admin::Started> for Msg {
    fn from(s: crate::admin::Started) -> Msg {
        Msg::AdminStarted(s)
    }
}

struct Agent {
    store: Arc<dyn Store>,
    machine: HostMachine,
    /// The host's record in the topology (it never changes while the agent
    /// runs: a change restarts the agent).
    host: Host,
    procs: Vec<Proc>,
    tx: mpsc::Sender<Msg>,
    origin: Instant,
    http: reqwest::Client,
    paths: Paths,
    api: Option<String>,
    publisher: Publisher,
    session_tx: watch::Sender<Option<LeaseId>>,
    view_tx: watch::Sender<HostView>,
    /// Where each local instance stands in the view (gone ones: nowhere).
    view_pos: Vec<Option<usize>>,
    watchdog: Option<mpsc::UnboundedSender<watchdog::Command>>,
    /// Answers owed to peers, oldest first.
    replies: Vec<oneshot::Sender<FailsafeAnswer>>,
    metrics: Arc<HostMetrics>,
    /// Signs failsafe requests and checks their answers.
    secret: Option<ClusterSecret>,
    /// Admin-data mirroring of the local instances.
    admin: crate::admin::Admin,
    /// What followers of pinned apps were told.
    followers: crate::followers::Followers,
    /// The admin-data state last published, per local.
    admin_published: Vec<tandem_core::model::AdminSync>,
}

/// Sends `msg()` to the agent's inbox `every` interval until `cancel`
/// (a late tick is delayed, not doubled).
fn tick(tx: &mpsc::Sender<Msg>, cancel: &CancellationToken, every: Duration, msg: fn() -> Msg) {
    let tx = tx.clone();
    let cancel = cancel.child_token();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {
                    if tx.send(msg()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// How often admin-data mirroring state that changed is published.
const ADMIN_PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How often followers of pinned apps not yet told (a failed hook) are
/// told again.
const FOLLOWERS_EVERY: Duration = Duration::from_millis(250);

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
    let metrics = Arc::new(HostMetrics::new(&host.name));
    let handle = AgentHandle {
        session: session_rx,
        view: view_rx.clone(),
        agent_addr,
        metrics: metrics.clone(),
        inbox: inbox_tx.clone(),
    };
    let (peer_tx, peer_rx) = mpsc::channel(64);
    if config.secret.is_none() {
        warn!(
            host = %host.name,
            "the agent port {agent_addr} is unauthenticated: anyone who reaches it can make this agent hold back promotions, failsafe answers are not checked, and the heartbeats it hears can be forged from a peer's address; start every agent with the same --cluster-secret-file (see `tandem secret new`)"
        );
    }
    let peer_state = PeerState {
        view: view_rx,
        requests: peer_tx,
        metrics: metrics.clone(),
        auth: config.secret.clone().map(|s| Arc::new(Verifier::new(s))),
    };
    let admin = crate::admin::Admin::new(config.secret.as_ref());
    tokio::spawn(peer::serve(
        listener,
        peer_state,
        admin.router(),
        cancel.child_token(),
    ));
    let task = tokio::spawn(run(
        store,
        config.topology,
        host,
        paths,
        Extras {
            api: config.api,
            watchdog: config.watchdog,
            secret: config.secret,
            session_tx,
            view_tx,
            peer_rx,
            inbox: (inbox_tx, inbox_rx),
            metrics,
            admin,
        },
        cancel,
    ));
    Ok((handle, task))
}

/// The rest of what [`run`] needs.
struct Extras {
    api: Option<String>,
    watchdog: Option<Vec<OsString>>,
    secret: Option<ClusterSecret>,
    session_tx: watch::Sender<Option<LeaseId>>,
    view_tx: watch::Sender<HostView>,
    peer_rx: mpsc::Receiver<PeerRequest>,
    inbox: (mpsc::Sender<Msg>, mpsc::Receiver<Msg>),
    metrics: Arc<HostMetrics>,
    admin: crate::admin::Admin,
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
        secret,
        session_tx,
        view_tx,
        mut peer_rx,
        inbox: (tx, mut rx),
        metrics,
        admin,
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
    let machine = HostMachine::new(
        topology,
        HostConfig {
            host: host.name.clone(),
            watchdog: watchdog.is_some(),
        },
    );
    let mut agent = Agent {
        store: store.clone(),
        machine,
        host,
        procs: Vec::new(),
        tx,
        origin: Instant::now(),
        http: http_client(),
        paths,
        api,
        publisher,
        session_tx,
        view_tx,
        view_pos: Vec::new(),
        watchdog,
        replies: Vec::new(),
        metrics,
        secret,
        admin,
        admin_published: Vec::new(),
        followers: crate::followers::Followers::default(),
    };

    // Hold a lease before starting anything.
    let first = tokio::select! {
        _ = cancel.cancelled() => {
            keeper_cancel.cancel();
            return Ok(());
        }
        ev = lease_rx.recv() => ev,
    };
    let Some(first @ LeaseEvent::Granted { .. }) = first else {
        anyhow::bail!("lease keeper stopped before granting a lease");
    };
    agent.on_lease(first);

    // Apply the current assignments, then follow them.
    let roles_from = agent.load_roles().await;
    tokio::spawn(watch_roles(
        store.clone(),
        roles_from,
        agent.tx.clone(),
        cancel.child_token(),
    ));
    info!(host = %agent.host.name, instances = agent.procs.len(), "agent started");
    agent.handle(HostInput::Begin);
    // Admin-data mirrors change on their own (pushes, acknowledgements):
    // their state is published at most this often.
    if agent
        .machine
        .topology()
        .apps
        .iter()
        .any(|a| a.admin_dir.is_some())
    {
        tick(&agent.tx, &cancel, ADMIN_PUBLISH_EVERY, || Msg::AdminTick);
    }

    // Followers of pinned apps are told again until their hook succeeds
    // (a process starting up does not answer yet).
    if agent.machine.topology().apps.iter().any(|a| {
        tandem_core::sites::follower_links(agent.machine.topology(), &a.name)
            .next()
            .is_some()
    }) {
        tick(&agent.tx, &cancel, FOLLOWERS_EVERY, || Msg::FollowersTick);
    }

    let mut stop_deadline: Option<Instant> = None;
    loop {
        if agent.machine.stopped() {
            break;
        }
        let wake = agent.machine.next_wakeup().map(|d| agent.origin + d);
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if !agent.machine.stopping() => {
                let grace = agent
                    .machine
                    .locals()
                    .iter()
                    .map(|l| l.app.stop_timeout)
                    .max()
                    .unwrap_or_default();
                stop_deadline = Some(Instant::now() + grace + Duration::from_secs(2));
                agent.handle(HostInput::Stop);
            }
            _ = sleep_until_opt(stop_deadline) => {
                warn!("instances did not stop in time; leaving");
                break;
            }
            Some(msg) = rx.recv() => agent.on_msg(msg),
            Some(ev) = lease_rx.recv() => agent.on_lease(ev),
            Some(req) = peer_rx.recv() => match req {
                PeerRequest::Failsafe(ask, reply) => {
                    agent.replies.push(reply);
                    agent.handle(HostInput::Asked(ask));
                }
            },
            _ = sleep_until_opt(wake) => agent.handle(HostInput::Tick),
        }
    }
    agent.admin.stop_all();
    keeper_cancel.cancel();
    let _ = keeper.await;
    publisher_cancel.cancel();
    if let Some(lease) = agent.machine.session()
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
/// a log: after a broken watch, re-reading them all and watching from that
/// read is a complete resume (agents ignore older generations).
async fn watch_roles(
    store: Arc<dyn Store>,
    from: u64,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) {
    let mut roles = follow(store, keys::ROLES, Start::At(from), AfterBreak::Relist)
        .retry_delay(Duration::from_millis(200), Duration::from_millis(200));
    loop {
        let item = tokio::select! {
            _ = cancel.cancelled() => return,
            item = roles.next() => item,
        };
        let kvs = match item {
            FollowItem::Change(ev) if ev.kind == EventKind::Put => vec![ev.kv],
            FollowItem::Change(_) => continue,
            FollowItem::Snapshot(listing) => listing.kvs,
            FollowItem::Interrupted(e) => {
                warn!(error = %e, "role watch broke; re-reading");
                continue;
            }
        };
        for kv in kvs {
            let Some(app) = kv.key.strip_prefix(keys::ROLES) else {
                continue;
            };
            match serde_json::from_slice::<AppRoles>(&kv.value) {
                Ok(roles) => {
                    if tx
                        .send(Msg::Roles(app.to_string(), Box::new(roles)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => warn!(key = %kv.key, error = %e, "unreadable role assignment"),
            }
        }
    }
}

impl Agent {
    /// Now, on the machine's clock.
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// A runtime instant on the machine's clock.
    fn since_origin(&self, t: Instant) -> Duration {
        t.saturating_duration_since(self.origin)
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
                            Ok(roles) => {
                                self.followers.set(app, roles.read_only.is_some());
                                self.handle(HostInput::Assigned {
                                    app: app.to_string(),
                                    roles: Box::new(roles),
                                })
                            }
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

    fn on_lease(&mut self, ev: LeaseEvent) {
        let input = match ev {
            LeaseEvent::Granted {
                lease,
                sent_at,
                ttl,
            } => LeaseInput::Granted {
                lease,
                sent_at: self.since_origin(sent_at),
                ttl,
            },
            LeaseEvent::Renewed { lease, sent_at } => {
                self.metrics.emit(HostEvent::LeaseRenewed {
                    latency: sent_at.elapsed(),
                });
                LeaseInput::Renewed {
                    lease,
                    sent_at: self.since_origin(sent_at),
                }
            }
            LeaseEvent::Failed => {
                self.metrics.emit(HostEvent::LeaseRenewFailed {
                    error: "failed or timed out",
                });
                LeaseInput::Failed
            }
            LeaseEvent::Expired { lease } => LeaseInput::Expired { lease },
        };
        self.handle(HostInput::Lease(input));
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Input(i, input) => {
                if let Input::Exited { how } = &input {
                    self.exited(i, how);
                }
                self.handle(HostInput::Instance(i, input));
            }
            Msg::Started(i, incarnation, pid) => {
                let local = &self.machine.locals()[i];
                self.metrics.emit(HostEvent::ProcessStarted {
                    app: &local.app.name,
                    instance: &local.name(),
                    pid,
                    incarnation,
                    role: local.machine().status().acting.as_str(),
                });
                self.procs[i].pid = Some(pid);
                self.start_probes(i, incarnation);
                self.start_link_probes(i, incarnation);
                self.handle(HostInput::Instance(i, Input::Spawned { pid }));
            }
            Msg::Roles(app, roles) => {
                let changed = self.followers.set(&app, roles.read_only.is_some());
                self.handle(HostInput::Assigned { app, roles });
                if changed {
                    self.tell_followers();
                }
            }
            Msg::Answers(answers) => self.handle(HostInput::Answers(answers)),
            Msg::Topology(t) => {
                self.handle(HostInput::Topology(t));
                // Peers of a local primary may have moved elsewhere.
                self.reconcile_admin();
                // Links may have changed: probe the new set.
                for i in 0..self.procs.len() {
                    let running = self.procs[i].pid.is_some();
                    if let Some(local) = self.machine.locals().get(i)
                        && running
                    {
                        let incarnation = local.machine().incarnation();
                        self.start_link_probes(i, incarnation);
                    }
                }
            }
            Msg::StopTimedOut(i, incarnation) => {
                self.handle(HostInput::Instance(i, Input::StopTimedOut { incarnation }));
            }
            Msg::AdminStarted(started) => {
                let topology = self.machine.topology().clone();
                self.admin.started(started, &topology);
                self.publish_admin();
            }
            Msg::AdminTick => self.publish_admin(),
            Msg::FollowersTick => self.tell_followers(),
            Msg::FollowerDone(i, link, incarnation, read_only, result) => {
                let warn_now =
                    self.followers
                        .done(i, &link, incarnation, read_only, result.is_ok());
                let name = self.machine.locals().get(i).map(|l| l.name());
                match (&result, name) {
                    (Ok(()), Some(name)) => info!(
                        instance = %name,
                        link = %link,
                        "told {name} through link {link}'s hook: {}",
                        if read_only { "read-only" } else { "read-write" }
                    ),
                    (Err(e), Some(name)) if warn_now => warn!(
                        instance = %name,
                        link = %link,
                        error = %e,
                        "cannot tell {name} through link {link}'s hook that its target is {}; retrying",
                        if read_only { "read-only" } else { "writable again" }
                    ),
                    _ => {}
                }
            }
        }
    }

    /// Tells every running local follower of a pinned app what it was not
    /// told yet (see [`crate::followers`]).
    fn tell_followers(&mut self) {
        let topology = self.machine.topology().clone();
        for i in 0..self.procs.len() {
            let Some(pid) = self.procs[i].pid else {
                continue;
            };
            let Some(local) = self.machine.locals().get(i) else {
                continue;
            };
            let incarnation = local.machine().incarnation();
            let app = local.app.name.clone();
            for (link, read_only) in self.followers.due(&topology, i, &app, incarnation) {
                let Some(hook) = topology.link(&link).and_then(|l| l.hook.clone()) else {
                    continue;
                };
                self.followers.started(i, &link);
                let tx = self.tx.clone();
                let ctx = self.hook_context(i, pid);
                let http = self.http.clone();
                tokio::spawn(async move {
                    let result = crate::hook::run_follower_hook(
                        &hook,
                        &ctx.target(),
                        &link,
                        read_only,
                        &http,
                    )
                    .await;
                    let _ = tx
                        .send(Msg::FollowerDone(i, link, incarnation, read_only, result))
                        .await;
                });
            }
        }
    }

    /// Brings admin-data mirroring in line with the local instances' roles
    /// (after every change).
    fn reconcile_admin(&mut self) {
        let topology = self.machine.topology().clone();
        let roles = self.machine.roles();
        let locals = self.machine.locals().iter().map(|l| (l, !l.gone()));
        let start = self
            .admin
            .reconcile(&topology, &self.host, locals, |app| roles.get(app));
        for (app, instance, epoch, cfg) in start {
            self.admin
                .start_source(app, instance, epoch, cfg, self.tx.clone());
        }
    }

    /// Publishes the status of each local whose admin-data state changed.
    fn publish_admin(&mut self) {
        let n = self.machine.locals().len();
        self.admin_published.resize_with(n, Default::default);
        for i in 0..n {
            let l = &self.machine.locals()[i];
            if l.gone() || l.app.admin_dir.is_none() {
                continue;
            }
            let now = self.admin.status_of(&l.app.name, &l.instance.id);
            if now != self.admin_published[i] {
                self.publish(i);
            }
        }
    }

    /// Feeds the host machine one input and carries out what it decided.
    fn handle(&mut self, input: HostInput) {
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let now = self.now();
            let step = self.machine.handle(input, now);
            self.carry_out(step, &mut queue);
        }
    }

    fn carry_out(&mut self, step: HostStep, queue: &mut std::collections::VecDeque<HostInput>) {
        let HostStep {
            actions,
            notes,
            touched,
            roles_changed,
            store_changed: _,
        } = step;
        for note in &notes {
            self.metrics.emit(HostEvent::Decision(note));
        }
        let mut structure_changed = false;
        for action in actions {
            match action {
                HostAction::Instance(i, action) => {
                    if let Some(input) = self.instance_action(i, action) {
                        queue.push_back(HostInput::Instance(i, input));
                    }
                }
                HostAction::Added(i) => {
                    if self.procs.len() <= i {
                        self.procs.resize_with(i + 1, Proc::default);
                    }
                    structure_changed = true;
                }
                HostAction::Removed(i) => {
                    let l = &self.machine.locals()[i];
                    self.publisher
                        .delete(keys::status(&l.app.name, &l.instance.id));
                    structure_changed = true;
                }
                HostAction::BindLease(lease) => self.publisher.set_lease(lease),
                HostAction::PublishHost => {
                    let record = HostRecord {
                        host: self.host.name.clone(),
                        pid: std::process::id(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        lease_ttl_ms: self.machine.lease_ttl().map(|t| t.as_millis() as u64),
                    };
                    if let Ok(v) = serde_json::to_vec(&record) {
                        self.publisher.put(keys::host(&self.host.name), v);
                    }
                }
                HostAction::Session(s) => {
                    self.session_tx.send_replace(s);
                }
                HostAction::AskPeers { asks, timeout } => self.ask_peers(asks, timeout),
                HostAction::Answer(answer) => {
                    if !self.replies.is_empty() {
                        let _ = self.replies.remove(0).send(answer);
                    }
                }
                HostAction::Arm { pgid, deadline } => {
                    if let Some(wd) = &self.watchdog {
                        let left = deadline.saturating_sub(self.now());
                        let _ = wd.send(watchdog::Command::Arm {
                            pgid,
                            deadline_ns: watchdog::monotonic_ns()
                                .saturating_add(left.as_nanos() as u64),
                        });
                    }
                }
                HostAction::Disarm { pgid } => {
                    if let Some(wd) = &self.watchdog {
                        let _ = wd.send(watchdog::Command::Disarm { pgid });
                    }
                }
            }
        }
        self.update_view(&touched, &roles_changed, structure_changed);
        // Admin-data mirroring follows roles: only a change to an instance
        // of an app with admin data, or to its roles, can move it.
        let admin_app = |app: &str| {
            self.machine
                .topology()
                .app(app)
                .is_some_and(|a| a.admin_dir.is_some())
        };
        let admin_moved = structure_changed
            || roles_changed.iter().any(|app| admin_app(app))
            || touched.iter().any(|&i| {
                self.machine
                    .locals()
                    .get(i)
                    .is_some_and(|l| l.app.admin_dir.is_some())
            });
        if admin_moved {
            self.reconcile_admin();
        }
    }

    /// Carries out one instance action; returns what to feed back at once.
    fn instance_action(&mut self, i: usize, action: Action) -> Option<Input> {
        let name = self.machine.locals()[i].name();
        match action {
            Action::Spawn {
                incarnation,
                role,
                epoch,
            } => {
                self.spawn(i, incarnation, role, epoch);
                None
            }
            Action::RunHook {
                role,
                epoch,
                incarnation,
            } => {
                self.run_hook(i, role, epoch, incarnation);
                None
            }
            Action::LinkHook {
                link,
                action,
                incarnation,
            } => self.run_link_hook(i, link, action, incarnation),
            Action::Kill { reason } => {
                self.metrics.emit(HostEvent::Killed {
                    app: &self.machine.locals()[i].app.name,
                    instance: &name,
                    reason: &reason,
                });
                if let Some(pid) = self.procs[i].pid {
                    let _ = signal_group(pid, Signal::SIGKILL);
                }
                None
            }
            Action::Terminate => {
                if let Some(pid) = self.procs[i].pid {
                    let _ = signal_group(pid, Signal::SIGTERM);
                    // A frozen process takes SIGTERM only once thawed.
                    let _ = signal_group(pid, Signal::SIGCONT);
                    let tx = self.tx.clone();
                    let local = &self.machine.locals()[i];
                    let grace = local.app.stop_timeout;
                    let inc = local.machine().incarnation();
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        let _ = tx.send(Msg::StopTimedOut(i, inc)).await;
                    });
                }
                None
            }
            Action::Publish => {
                self.publish(i);
                None
            }
        }
    }

    /// Starts local `i`'s process without blocking the loop: the fork runs
    /// on the spawner thread, and its outcome comes back as
    /// [`Msg::Started`] (then [`Input::Exited`] when it ends) or
    /// [`Input::SpawnFailed`].
    fn spawn(&self, i: usize, incarnation: u64, role: tandem_core::model::Role, epoch: u64) {
        let local = &self.machine.locals()[i];
        let start = process::spawn(
            &local.app,
            &local.instance,
            &self.host,
            role,
            epoch,
            &self.paths,
            self.api.as_deref(),
        );
        let tx = self.tx.clone();
        let metrics = self.metrics.clone();
        let (app, name) = (local.app.name.clone(), local.name());
        tokio::spawn(async move {
            let failed = |error: String| Msg::Input(i, Input::SpawnFailed { error });
            let mut child = match start.await {
                Ok(child) => child,
                Err(e) => {
                    let error = e.to_string();
                    metrics.emit(HostEvent::SpawnFailed {
                        app: &app,
                        instance: &name,
                        error: &error,
                    });
                    let _ = tx.send(failed(error)).await;
                    return;
                }
            };
            let pid = child.id();
            if tx.send(Msg::Started(i, incarnation, pid)).await.is_err() {
                return;
            }
            let how = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("lost track of the process: {e}"),
            };
            let _ = tx.send(Msg::Input(i, Input::Exited { how })).await;
        });
    }

    /// Local `i`'s process ended: forget its pid and probes, count it.
    fn exited(&mut self, i: usize, how: &str) {
        let Some(p) = self.procs.get_mut(i) else {
            return;
        };
        p.pid = None;
        for probe in p.probes.drain(..).chain(p.link_probes.drain(..)) {
            probe.abort();
        }
        let local = &self.machine.locals()[i];
        let cause = if local.machine().ending().is_some() {
            ExitCause::Tandem
        } else if how.starts_with("killed by signal") {
            ExitCause::Signal
        } else {
            ExitCause::Code
        };
        self.metrics.emit(HostEvent::ProcessExited {
            app: &local.app.name,
            instance: &local.name(),
            how,
            cause,
        });
    }

    fn publish(&mut self, i: usize) {
        let local = &self.machine.locals()[i];
        let mut status = local.machine().status();
        if local.app.admin_dir.is_some() {
            status.admin = self.admin.status_of(&local.app.name, &local.instance.id);
            if self.admin_published.len() <= i {
                self.admin_published.resize_with(i + 1, Default::default);
            }
            self.admin_published[i] = status.admin.clone();
        }
        match serde_json::to_vec(&status) {
            Ok(v) => self
                .publisher
                .put(keys::status(&local.app.name, &local.instance.id), v),
            Err(e) => warn!(error = %e, "cannot encode status"),
        }
    }

    /// Updates the published view: only the touched instances, unless an
    /// instance came or went.
    fn update_view(
        &mut self,
        touched: &std::collections::BTreeSet<usize>,
        roles_changed: &std::collections::BTreeSet<String>,
        structure_changed: bool,
    ) {
        let machine = &self.machine;
        let view_of = |i: usize| {
            let l = &machine.locals()[i];
            InstanceView {
                app: l.app.name.clone(),
                instance: l.instance.id.clone(),
                ha: l.app.ha,
                status: l.machine().status(),
                fenced: l.fenced(),
            }
        };
        if structure_changed {
            self.view_pos.clear();
            let mut instances = Vec::new();
            for (i, l) in machine.locals().iter().enumerate() {
                if l.gone() {
                    self.view_pos.push(None);
                } else {
                    self.view_pos.push(Some(instances.len()));
                    instances.push(view_of(i));
                }
            }
            let roles: BTreeMap<String, AppRoles> = machine.roles().clone();
            let store_reachable = machine.store_reachable();
            self.metrics.set_store_reachable(store_reachable);
            self.view_tx.send_modify(|v| {
                v.instances = instances;
                v.roles = roles;
                v.store_reachable = store_reachable;
            });
            return;
        }
        let updates: Vec<(usize, InstanceView)> = touched
            .iter()
            .filter_map(|&i| Some((self.view_pos.get(i).copied().flatten()?, view_of(i))))
            .collect();
        let roles: Vec<(String, AppRoles)> = roles_changed
            .iter()
            .filter_map(|app| Some((app.clone(), machine.roles().get(app)?.clone())))
            .collect();
        let store_reachable = machine.store_reachable();
        self.metrics.set_store_reachable(store_reachable);
        self.view_tx.send_modify(|v| {
            for (pos, iv) in updates {
                if let Some(slot) = v.instances.get_mut(pos) {
                    *slot = iv;
                }
            }
            v.roles.extend(roles);
            v.store_reachable = store_reachable;
        });
    }

    /// Asks every peer of each app at once; feeds back the answers.
    fn ask_peers(&self, asks: Vec<PeerAsk>, timeout: Duration) {
        let http = self.http.clone();
        let tx = self.tx.clone();
        let secret = self.secret.clone();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for a in &asks {
                let got = futures::future::join_all(
                    a.peers
                        .iter()
                        .map(|p| peer::ask(&http, *p, &a.ask, timeout, secret.as_ref())),
                )
                .await;
                answers.push(got);
            }
            let _ = tx.send(Msg::Answers(answers)).await;
        });
    }

    fn start_probes(&mut self, i: usize, incarnation: u64) {
        let local = &self.machine.locals()[i];
        let proc = &mut self.procs[i];
        for p in proc.probes.drain(..) {
            p.abort();
        }
        for (check_idx, check) in local.app.checks.iter().enumerate() {
            let tx = self.tx.clone();
            let app = local.app.clone();
            let instance = local.instance.clone();
            let host = self.host.clone();
            let http = self.http.clone();
            let metrics = self.metrics.clone();
            let interval = check.interval;
            let handle = tokio::spawn(async move {
                let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    let check = &app.checks[check_idx];
                    let started = Instant::now();
                    let result = probe(check, &app, &instance, &host, &http).await;
                    metrics.emit(HostEvent::Probed {
                        app: &app.name,
                        latency: started.elapsed(),
                        ok: result.is_ok(),
                    });
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
            proc.probes.push(handle.abort_handle());
        }
    }

    /// Probes every target of every link of local `i`'s app, from this
    /// host, for incarnation `incarnation` (replacing the probes of any
    /// earlier one).
    fn start_link_probes(&mut self, i: usize, incarnation: u64) {
        let local = &self.machine.locals()[i];
        let topology = self.machine.topology().clone();
        let proc = &mut self.procs[i];
        for p in proc.link_probes.drain(..) {
            p.abort();
        }
        let links_dir = self.paths.links_dir(&local.app.name, &local.instance.id);
        for link in topology.links_from(&local.app.name) {
            let report = links_dir.join(&link.name);
            // A TLS link's CA is read once here; if it cannot be, every
            // probe of the link says why.
            let tls = link
                .tls_check
                .as_ref()
                .map(|c| std::sync::Arc::new(TlsProbe::new(c)));
            for target in topology.link_targets(link) {
                let tx = self.tx.clone();
                let http = self.http.clone();
                let probe = link.probe.clone();
                let name = link.name.clone();
                let tls = tls.clone();
                let report = report.clone();
                let handle = tokio::spawn(async move {
                    let interval = probe.interval;
                    let mut ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticker.tick().await;
                        let result =
                            probe_link(&probe, tls.as_deref(), &report, &target, &http).await;
                        let cert = result.as_ref().ok().cloned().flatten();
                        let input = Input::LinkProbe {
                            link: name.clone(),
                            target: target.name.clone(),
                            incarnation,
                            result: result.map(drop),
                            cert,
                        };
                        if tx.send(Msg::Input(i, input)).await.is_err() {
                            return;
                        }
                    }
                });
                proc.link_probes.push(handle.abort_handle());
            }
        }
        // Exclusive groups: what the process says it has active, read as
        // often as the group's links are probed.
        let every = topology
            .links_from(&local.app.name)
            .filter(|l| l.exclusive.is_some())
            .map(|l| l.probe.interval)
            .min();
        if let Some(every) = every {
            let tx = self.tx.clone();
            let file = links_dir.join(ACTIVE_LINKS_FILE);
            let handle = tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    // Absent (or unreadable): the process reports nothing.
                    let Ok(text) = tokio::fs::read_to_string(&file).await else {
                        continue;
                    };
                    let links = read_active(&text);
                    let input = Input::ActiveLinks { incarnation, links };
                    if tx.send(Msg::Input(i, input)).await.is_err() {
                        return;
                    }
                }
            });
            proc.link_probes.push(handle.abort_handle());
        }
    }

    /// Runs the hook of `link` ([`Action::LinkHook`]); its result comes
    /// back as [`Input::LinkHookDone`] (at once if the link has no hook).
    fn run_link_hook(
        &self,
        i: usize,
        link: String,
        action: LinkAction,
        incarnation: u64,
    ) -> Option<Input> {
        let hook = self
            .machine
            .topology()
            .link(&link)
            .and_then(|l| l.hook.clone());
        let (Some(hook), Some(pid)) = (hook, self.procs[i].pid) else {
            return Some(Input::LinkHookDone {
                result: Err(format!("link {link} has no hook, or its process no pid")),
                link,
                action,
                incarnation,
            });
        };
        let tx = self.tx.clone();
        let ctx = self.hook_context(i, pid);
        let http = self.http.clone();
        tokio::spawn(async move {
            let result = run_link_hook(&hook, &ctx.target(), &link, action, &http).await;
            let input = Input::LinkHookDone {
                link,
                action,
                incarnation,
                result,
            };
            let _ = tx.send(Msg::Input(i, input)).await;
        });
        None
    }

    /// What a hook task needs of local `i` (whose process is `pid`), owned:
    /// the task outlives the agent's borrow.
    fn hook_context(&self, i: usize, pid: u32) -> HookContext {
        let local = &self.machine.locals()[i];
        HookContext {
            role_file: self.paths.role_file(&local.app.name, &local.instance.id),
            app: local.app.clone(),
            instance: local.instance.clone(),
            host: self.host.clone(),
            pid,
        }
    }

    fn run_hook(&self, i: usize, role: tandem_core::model::Role, epoch: u64, incarnation: u64) {
        let local = &self.machine.locals()[i];
        let Some(hook) = local.app.hook.clone() else {
            return;
        };
        let Some(pid) = self.procs[i].pid else {
            return;
        };
        let tx = self.tx.clone();
        let ctx = self.hook_context(i, pid);
        let (app, instance) = (ctx.app.clone(), ctx.instance.clone());
        let http = self.http.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = run_hook(&hook, &ctx.target(), role, epoch, &http).await;
            metrics.emit(HostEvent::HookDone {
                app: &app.name,
                instance: &format!("{}/{}", app.name, instance.id),
                role: role.as_str(),
                epoch,
                latency: started.elapsed(),
                ok: result.is_ok(),
            });
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

/// [`Agent::hook_context`].
struct HookContext {
    app: Arc<tandem_core::topology::App>,
    instance: tandem_core::topology::Instance,
    host: Host,
    pid: u32,
    role_file: std::path::PathBuf,
}

impl HookContext {
    fn target(&self) -> HookTarget<'_> {
        HookTarget {
            app: &self.app,
            instance: &self.instance,
            host: &self.host,
            pid: self.pid,
            role_file: &self.role_file,
        }
    }
}
