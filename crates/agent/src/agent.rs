//! The agent of one host: runs the host's instances through their
//! [`InstanceMachine`]s, probes them, runs their hooks, publishes their
//! status bound to the host lease, applies the controller's role
//! assignments, and fences its primaries when the lease may be lost.
//!
//! One task owns every machine; processes, probes and hooks run in tasks of
//! their own and report back through a channel, so the loop never waits on
//! an instance or on the store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use nix::sys::signal::Signal;
use tandem_core::instance::{Action, Input, InstanceMachine, InstanceSpec, assignment};
use tandem_core::model::{AppRoles, HostRecord, keys};
use tandem_core::topology::{App, Host, Instance, Topology};
use tandem_store::{EventKind, LeaseId, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hook::{HookTarget, run_hook};
use crate::lease::{self, LeaseEvent};
use crate::probe::{http_client, probe};
use crate::process::{self, Paths, describe_exit, signal_group};
use crate::publish::Publisher;

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
}

/// What an agent shares with the rest of its process.
#[derive(Clone)]
pub struct AgentHandle {
    /// The current session (host lease) while it is held and not fenced:
    /// the controller candidate of this host campaigns with it.
    pub session: watch::Receiver<Option<LeaseId>>,
}

struct Local {
    app: Arc<App>,
    instance: Instance,
    host: Host,
    machine: InstanceMachine,
    pid: Option<u32>,
    probes: Vec<AbortHandle>,
}

enum Msg {
    Input(usize, Input),
    Roles(String, AppRoles),
    ForceKill(usize, u64),
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
    let (session_tx, session_rx) = watch::channel(None);
    let handle = AgentHandle {
        session: session_rx,
    };
    let task = tokio::spawn(run(
        store,
        config.topology,
        host,
        paths,
        config.api,
        session_tx,
        cancel,
    ));
    Ok((handle, task))
}

async fn run(
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    host: Host,
    paths: Paths,
    api: Option<String>,
    session_tx: watch::Sender<Option<LeaseId>>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
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
    let (tx, mut rx) = mpsc::channel(INBOX);
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
            Some(msg) = rx.recv() => agent.on_msg(msg),
            Some(ev) = lease_rx.recv() => agent.on_lease(ev),
            _ = sleep_until_opt(fence_at) => agent.fence(),
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
        for (app, instance) in topology.instances_on(&self.host.name) {
            let app = Arc::new(app.clone());
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
                instance: instance.clone(),
                host: self.host.clone(),
                machine,
                pid: None,
                probes: Vec::new(),
            });
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

    fn fence_at(&self) -> Option<Instant> {
        if self.fenced || self.session.is_none() {
            return None;
        }
        let margin = self.topology.cluster.fence_margin;
        self.valid_until.map(|v| v.checked_sub(margin).unwrap_or(v))
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
                let until = sent_at + self.ttl;
                if self.valid_until.is_none_or(|v| until > v) {
                    self.valid_until = Some(until);
                }
                let margin = self.topology.cluster.fence_margin;
                if self.fenced && Instant::now() + margin < until {
                    info!(lease, "lease renewed again: fencing lifted");
                    self.fenced = false;
                    for i in 0..self.locals.len() {
                        self.feed(i, Input::Unfence { session: lease });
                    }
                    self.session_tx.send_replace(Some(lease));
                }
            }
            LeaseEvent::Expired { lease } => {
                if Some(lease) == self.session {
                    self.fence();
                    self.session = None;
                    self.valid_until = None;
                    self.publisher.set_lease(None);
                }
            }
        }
    }

    /// The lease may be lost: step down everywhere before it can expire.
    fn fence(&mut self) {
        if self.fenced {
            return;
        }
        self.fenced = true;
        warn!(
            host = %self.host.name,
            margin_ms = self.topology.cluster.fence_margin.as_millis() as u64,
            "host lease not renewed in time: fencing local primaries"
        );
        self.session_tx.send_replace(None);
        for i in 0..self.locals.len() {
            self.feed(i, Input::Fence);
        }
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
