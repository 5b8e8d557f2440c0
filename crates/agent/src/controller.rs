//! The controller: a singleton among the agents, elected through the store,
//! that turns observations into role assignments by calling
//! [`tandem_core::controller::decide`].
//!
//! Election: the candidate of each agent creates `controller` bound to its
//! host lease if the key is absent; the winner leads until its session ends
//! or the key changes, the others watch the key and campaign again when it
//! is deleted. Every write of the leader is a transaction that also checks
//! the controller key is still its own, so a deposed leader writes nothing.
//!
//! The leader keeps a cache of everything under `/tandem/` fed by one
//! watch; each change marks its app dirty, and each dirty app gets one
//! decision, written (role assignment, intent outcome and events) in one
//! transaction: the failover path costs one store write.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tandem_core::controller::fence::{FenceAction, FenceBook, FenceInput};
use tandem_core::controller::{
    AppInput, HostsState, awaits_first_reports, decide, status_events_with,
};
use tandem_core::model::{
    AppRoles, EventDraft, EventKind, FenceIntent, InstanceStatus, Intent, IntentState, SiteIntent,
    SitesRecord, keys,
};
use tandem_core::sites::{
    SiteState, host_sites, resolve, site_events, site_states, sites_found_lost,
};
use tandem_core::topology::Topology;
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{
    Compare, EventKind as StoreEventKind, LeaseId, Op, OpResult, Revision, Store, StoreError, Txn,
    WatchEvent,
};
use tandem_telemetry::controller::{ControllerEvent, ControllerMetrics};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::links::LinkClock;
use crate::webhook;

/// How many events the log keeps; older ones are deleted.
pub const MAX_EVENTS: u64 = 10_000;
/// How many times a decision is retried after a conflicting write.
const MAX_CONFLICTS: u32 = 8;
/// Most operations in one branch of a transaction (etcd's default
/// `--max-txn-ops`, and the embedded store's limit).
const MAX_TXN_OPS: usize = 128;
/// Most events of one app written in one transaction.
const MAX_EVENTS_PER_WRITE: usize = 64;
/// Pause before reading or watching the store again after it failed.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// The value of the controller key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerRecord {
    /// The host whose agent leads.
    pub host: String,
    /// The lease the key is bound to.
    pub lease: LeaseId,
}

/// Campaigns for the controller role with the agent's session, and leads
/// while elected (delivering webhooks with `secrets` meanwhile, see
/// [`crate::webhook`]). Returns when `cancel` fires.
#[allow(clippy::too_many_arguments)]
pub async fn run_candidate(
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    host: String,
    mut session: watch::Receiver<Option<LeaseId>>,
    suspected: watch::Receiver<BTreeSet<String>>,
    metrics: Arc<ControllerMetrics>,
    secrets: webhook::Secrets,
    cancel: CancellationToken,
) {
    let mut suspected = suspected;
    loop {
        // Wait for a session.
        let lease = loop {
            if let Some(l) = *session.borrow_and_update() {
                break l;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = session.changed() => if r.is_err() { return },
            }
        };
        let record = ControllerRecord {
            host: host.clone(),
            lease,
        };
        let Ok(value) = serde_json::to_vec(&record) else {
            return;
        };
        let txn = Txn {
            compares: vec![Compare::ModRevision(keys::CONTROLLER.into(), 0)],
            success: vec![Op::Put {
                key: keys::CONTROLLER.into(),
                value,
                lease: Some(lease),
            }],
            failure: vec![Op::get(keys::CONTROLLER)],
        };
        let resp = tokio::select! {
            _ = cancel.cancelled() => return,
            r = store.txn(txn) => r,
        };
        // The key as it is when the campaign fails.
        let existing = match &resp {
            Ok(r) if !r.succeeded => r.results.first().and_then(|res| match res {
                OpResult::Get(Some(kv)) => Some(kv.clone()),
                _ => None,
            }),
            _ => None,
        };
        // Still ours from this very session: a resignation that could not
        // reach the store (it had no quorum), or a candidate started again
        // with a new topology. The key stays while the lease lives, so wait
        // for its deletion would never end: lead again under it.
        let ours = existing.as_ref().filter(|kv| {
            serde_json::from_slice::<ControllerRecord>(&kv.value)
                .is_ok_and(|rec| rec.host == host && rec.lease == lease)
        });
        let elected = match (&resp, ours) {
            (Ok(r), _) if r.succeeded => Some(r.revision),
            (_, Some(kv)) => Some(kv.mod_revision),
            _ => None,
        };
        if let Some(key_revision) = elected {
            if ours.is_some() {
                info!(host = %host, "the controller key is still this session's: leading again");
            }
            metrics.emit(ControllerEvent::Elected { host: &host });
            let mut leader = Leader::new(
                store.clone(),
                topology.clone(),
                host.clone(),
                key_revision,
                metrics.clone(),
            );
            leader.secrets = secrets.clone();
            leader
                .lead(lease, &mut session, &mut suspected, &cancel)
                .await;
            metrics.emit(ControllerEvent::Deposed {
                why: "its session ended, its key changed hands, or it was stopped",
            });
            // Resign if the key is still ours, so another takes over at once.
            let resign = Txn {
                compares: vec![Compare::ModRevision(keys::CONTROLLER.into(), key_revision)],
                success: vec![Op::delete(keys::CONTROLLER)],
                failure: vec![],
            };
            let _ = store.txn(resign).await;
            if cancel.is_cancelled() {
                return;
            }
            continue;
        }
        match resp {
            Ok(r) if r.succeeded => {}
            Ok(r) => {
                let held = existing.as_ref().map(|kv| kv.mod_revision);
                let holder = existing
                    .as_ref()
                    .and_then(|kv| serde_json::from_slice::<ControllerRecord>(&kv.value).ok())
                    .map(|rec| rec.host);
                debug!(host = %host, "controller elsewhere; watching");
                let vacancy = wait_for_vacancy(
                    &store,
                    r.revision + 1,
                    held,
                    holder.as_deref(),
                    &mut suspected,
                    &mut session,
                    lease,
                    &cancel,
                )
                .await;
                if let (Vacancy::HolderSuspected, Some(held), Some(holder)) =
                    (vacancy, held, holder)
                {
                    take_over(&store, &host, lease, held, &holder).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "campaign failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RETRY_DELAY) => {}
                }
            }
        }
    }
}

/// Why [`wait_for_vacancy`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vacancy {
    /// Campaign again: the key was deleted, the watch broke, or our session
    /// changed.
    Campaign,
    /// The heartbeats suspect the holder's host: take the key over.
    HolderSuspected,
}

/// Waits until the controller key is deleted (or our session changes), or
/// until the heartbeats suspect the holder's host.
#[allow(clippy::too_many_arguments)]
async fn wait_for_vacancy(
    store: &Arc<dyn Store>,
    from: Revision,
    held: Option<Revision>,
    holder: Option<&str>,
    suspected: &mut watch::Receiver<BTreeSet<String>>,
    session: &mut watch::Receiver<Option<LeaseId>>,
    lease: LeaseId,
    cancel: &CancellationToken,
) -> Vacancy {
    if held.is_none() {
        return Vacancy::Campaign;
    }
    let holder_suspected = |s: &BTreeSet<String>| holder.is_some_and(|h| s.contains(h));
    if holder_suspected(&suspected.borrow_and_update()) {
        return Vacancy::HolderSuspected;
    }
    let mut key = follow(
        store.clone(),
        keys::CONTROLLER,
        Start::At(from),
        AfterBreak::Resume,
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Vacancy::Campaign,
            r = session.changed() => {
                if r.is_err() || *session.borrow() != Some(lease) { return Vacancy::Campaign; }
            }
            r = suspected.changed() => {
                if r.is_ok() && holder_suspected(&suspected.borrow_and_update()) {
                    return Vacancy::HolderSuspected;
                }
            }
            item = key.next() => match item {
                FollowItem::Change(ev) if ev.kv.key == keys::CONTROLLER && ev.kind == StoreEventKind::Delete => return Vacancy::Campaign,
                FollowItem::Change(_) => {}
                // Campaign again: the campaign reads the key as it is.
                FollowItem::Snapshot(_) | FollowItem::Interrupted(_) => {
                    tokio::time::sleep(RETRY_DELAY).await;
                    return Vacancy::Campaign;
                }
            }
        }
    }
}

/// Replaces the controller key held (at revision `held`) by the agent of
/// `holder`, a suspected host, with ours. Safe even if that agent still
/// runs: every write of a leader is guarded by its key's revision, so the
/// deposed one writes nothing from now on. The caller campaigns next and
/// finds the key its own.
async fn take_over(
    store: &Arc<dyn Store>,
    host: &str,
    lease: LeaseId,
    held: Revision,
    holder: &str,
) {
    let record = ControllerRecord {
        host: host.to_string(),
        lease,
    };
    let Ok(value) = serde_json::to_vec(&record) else {
        return;
    };
    let txn = Txn {
        compares: vec![Compare::ModRevision(keys::CONTROLLER.into(), held)],
        success: vec![Op::Put {
            key: keys::CONTROLLER.into(),
            value,
            lease: Some(lease),
        }],
        failure: vec![],
    };
    match store.txn(txn).await {
        Ok(r) if r.succeeded => {
            warn!(host = %host, from = %holder, "took the controller role over from a suspected host");
        }
        Ok(_) => debug!(host = %host, "the controller key changed before the takeover"),
        Err(e) => warn!(error = %e, "controller takeover failed"),
    }
}

/// The last non-empty line of the file at `path` (at most 300 bytes of
/// it), if any.
fn last_line(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read(path).ok()?;
    let tail = &text[text.len().saturating_sub(300)..];
    let text = String::from_utf8_lossy(tail);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Leader {
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    host: String,
    key_revision: Revision,
    statuses: BTreeMap<String, BTreeMap<String, InstanceStatus>>,
    roles: HashMap<String, (AppRoles, Revision)>,
    intents: HashMap<String, (Intent, Revision)>,
    pending: BTreeMap<String, Vec<EventDraft>>,
    dirty: BTreeSet<String>,
    next_seq: u64,
    oldest_seq: u64,
    deposed: bool,
    /// Until then, an app that was never decided waits for every instance
    /// to report before its first decision.
    first_decision_by: tokio::time::Instant,
    metrics: Arc<ControllerMetrics>,
    /// What is known of hosts beyond their leases: suspicions from
    /// heartbeats, confirmations from fence devices.
    hosts: HostsState,
    /// The lease each host's agent holds (from its host record).
    host_leases: BTreeMap<String, LeaseId>,
    /// Each site as last judged from the hosts' leases and the record.
    sites: Vec<SiteState>,
    /// Operators' decisions about sites, with the record's revision (0:
    /// never written).
    site_record: (SitesRecord, Revision),
    /// Operators' site requests, with their revision.
    site_intents: HashMap<String, (SiteIntent, Revision)>,
    /// Fence devices run, running or to run again.
    fences: FenceBook,
    /// Where device runs report their end.
    fence_done: (
        mpsc::UnboundedSender<FenceInput>,
        mpsc::UnboundedReceiver<FenceInput>,
    ),
    /// Operators' fence requests, with their revision.
    fence_intents: HashMap<String, (FenceIntent, Revision)>,
    /// The origin of the fence book's clock.
    origin: std::time::Instant,
    /// The webhooks' secrets, for the webhook tasks it starts.
    secrets: webhook::Secrets,
    /// Which required links are lost since when, and when apps must be
    /// decided again for them.
    links: LinkClock,
}

/// Events not about one app are kept under this name.
const NO_APP: &str = "";

impl Leader {
    fn new(
        store: Arc<dyn Store>,
        topology: Arc<Topology>,
        host: String,
        key_revision: Revision,
        metrics: Arc<ControllerMetrics>,
    ) -> Leader {
        Leader {
            store,
            topology,
            host,
            key_revision,
            statuses: BTreeMap::new(),
            roles: HashMap::new(),
            intents: HashMap::new(),
            pending: BTreeMap::new(),
            dirty: BTreeSet::new(),
            next_seq: 1,
            oldest_seq: 1,
            deposed: false,
            first_decision_by: tokio::time::Instant::now(),
            metrics,
            hosts: HostsState::default(),
            host_leases: BTreeMap::new(),
            sites: Vec::new(),
            site_record: (SitesRecord::default(), 0),
            site_intents: HashMap::new(),
            fences: FenceBook::default(),
            fence_done: mpsc::unbounded_channel(),
            fence_intents: HashMap::new(),
            origin: std::time::Instant::now(),
            secrets: webhook::Secrets::default(),
            links: LinkClock::default(),
        }
    }

    async fn lead(
        &mut self,
        lease: LeaseId,
        session: &mut watch::Receiver<Option<LeaseId>>,
        suspected: &mut watch::Receiver<BTreeSet<String>>,
        cancel: &CancellationToken,
    ) {
        let listing = loop {
            match self.store.list(keys::ROOT).await {
                Ok(l) => break l,
                Err(e) => {
                    warn!(error = %e, "controller cannot read the store; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_DELAY) => {}
                    }
                }
            }
        };
        let mut seqs = Vec::new();
        for kv in &listing.kvs {
            if let Some(seq) = keys::parse_event(&kv.key) {
                seqs.push(seq);
                continue;
            }
            self.apply(
                &WatchEvent {
                    kind: StoreEventKind::Put,
                    kv: kv.clone(),
                },
                false,
            );
        }
        self.oldest_seq = seqs.iter().copied().min().unwrap_or(1);
        self.next_seq = seqs.iter().copied().max().map_or(1, |m| m + 1);
        // Webhooks are delivered beside the decisions while this leads;
        // given-up deliveries come back to be written to the log.
        let (webhook_tx, mut webhook_rx) = mpsc::channel(webhook::EVENT_QUEUE);
        let webhooks = cancel.child_token();
        let _stop_webhooks = webhooks.clone().drop_guard();
        webhook::start(
            webhook::Context {
                store: self.store.clone(),
                topology: self.topology.clone(),
                secrets: self.secrets.clone(),
                key_revision: self.key_revision,
                newest_seq: self.next_seq - 1,
                events: webhook_tx,
                metrics: self.metrics.clone(),
            },
            webhooks,
        );
        self.pending
            .entry(NO_APP.into())
            .or_default()
            .push(EventDraft {
                kind: EventKind::Controller,
                app: None,
                instance: None,
                epoch: None,
                message: format!("controller elected on host {}", self.host),
                reason: None,
            });
        for e in sites_found_lost(&self.sites) {
            warn!("{}", e.message);
            self.cluster_event(e);
        }
        for app in &self.topology.apps {
            self.dirty.insert(app.name.clone());
        }
        self.dirty.insert(NO_APP.into());
        self.first_decision_by =
            tokio::time::Instant::now() + self.topology.cluster.renew_interval * 4;

        let mut changes = follow(
            self.store.clone(),
            keys::ROOT,
            Start::At(listing.revision + 1),
            AfterBreak::Resume,
        )
        .retry_delay(RETRY_DELAY, RETRY_DELAY);
        let mut retry_at: Option<tokio::time::Instant> = None;
        let now_suspected = suspected.borrow_and_update().clone();
        self.suspicions(now_suspected);
        loop {
            if self.deposed {
                return;
            }
            if retry_at.is_none() {
                if let Err(e) = self.flush().await {
                    warn!(error = %e, "controller write failed; retrying");
                    retry_at = Some(tokio::time::Instant::now() + Duration::from_millis(100));
                }
                if self.deposed {
                    return;
                }
            }
            let fence_at = self
                .fences
                .next_deadline()
                .map(|d| tokio::time::Instant::from_std(self.origin + d));
            let wake = [
                retry_at,
                self.pending_deadline(),
                fence_at,
                self.links.next_wake(),
            ]
            .into_iter()
            .flatten()
            .min();
            let retry = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = session.changed() => {
                    if r.is_err() || *session.borrow() != Some(lease) {
                        return;
                    }
                }
                _ = retry => {
                    retry_at = None;
                    self.fence(FenceInput::Tick);
                    let due = self.links.due(tokio::time::Instant::now());
                    self.dirty.extend(due);
                }
                r = suspected.changed() => {
                    if r.is_ok() {
                        let now = suspected.borrow_and_update().clone();
                        self.suspicions(now);
                    }
                }
                Some(done) = self.fence_done.1.recv() => self.fence(done),
                Some(draft) = webhook_rx.recv() => {
                    self.pending.entry(NO_APP.into()).or_default().push(draft);
                    self.dirty.insert(NO_APP.into());
                }
                item = changes.next() => {
                    let mut item = Some(item);
                    // Take every change already delivered before deciding.
                    while let Some(next) = item {
                        match next {
                            FollowItem::Change(ev) => self.apply(&ev, true),
                            FollowItem::Interrupted(StoreError::Compacted { .. })
                            | FollowItem::Snapshot(_) => {
                                warn!("controller fell behind the store's history; re-reading");
                                return;
                            }
                            FollowItem::Interrupted(e) => {
                                warn!(error = %e, "controller watch broke; resuming");
                                break;
                            }
                        }
                        item = changes.next().now_or_never();
                    }
                }
            }
        }
    }

    fn apply(&mut self, ev: &WatchEvent, live: bool) {
        let key = ev.kv.key.as_str();
        let put = ev.kind == StoreEventKind::Put;
        if key == keys::CONTROLLER {
            if !put || ev.kv.mod_revision != self.key_revision {
                warn!("controller key changed hands");
                self.deposed = true;
            }
            return;
        }
        if let Some((app, instance)) = keys::parse_status(key) {
            if self
                .topology
                .app(app)
                .and_then(|a| a.instance(instance))
                .is_none()
            {
                return;
            }
            let new = if put {
                match serde_json::from_slice::<InstanceStatus>(&ev.kv.value) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(key, error = %e, "unreadable status");
                        return;
                    }
                }
            } else {
                None
            };
            let map = self.statuses.entry(app.to_string()).or_default();
            let old = match &new {
                Some(s) => map.insert(instance.to_string(), s.clone()),
                None => map.remove(instance),
            };
            if live {
                // A link to a cold standby (or a singleton's spare) that is
                // stopped by design: its reachability is no news.
                let resting = |link: &str, target: &str| {
                    let Some(to) = self
                        .topology
                        .link(link)
                        .and_then(|l| self.topology.app(&l.to))
                    else {
                        return false;
                    };
                    if tandem_core::controller::style(to.ha)
                        != tandem_core::controller::Style::OnGrant
                    {
                        return false;
                    }
                    let roles = self.roles.get(&to.name).map(|(r, _)| r);
                    let holds = roles.is_some_and(|r| {
                        r.primary.as_ref().is_some_and(|g| g.instance == target)
                            || r.stepping_down
                                .as_ref()
                                .is_some_and(|s| s.grant.instance == target)
                    });
                    !holds
                };
                let evs = status_events_with(app, instance, old.as_ref(), new.as_ref(), resting);
                self.pending.entry(app.to_string()).or_default().extend(evs);
                // The grant holder now reports its role at the grant's epoch:
                // it serves (the API's "acknowledged" rule).
                let grant = self
                    .roles
                    .get(app)
                    .and_then(|(r, _)| r.primary.as_ref())
                    .filter(|g| g.instance == instance);
                let acked = |s: Option<&InstanceStatus>, g: &tandem_core::model::PrimaryGrant| {
                    s.is_some_and(|s| s.has_acknowledged(g))
                };
                if let Some(g) = grant
                    && acked(new.as_ref(), g)
                    && !acked(old.as_ref(), g)
                {
                    self.pending.entry(app.to_string()).or_default().push(
                        EventDraft::instance(
                            EventKind::Serving,
                            app,
                            instance,
                            format!("{app}/{instance} serves as primary (epoch {})", g.epoch),
                        )
                        .with_epoch(g.epoch),
                    );
                }
            }
            self.dirty.insert(app.to_string());
        } else if let Some(app) = key.strip_prefix(keys::ROLES) {
            if put {
                let known = self.roles.get(app).map(|(_, r)| *r).unwrap_or(0);
                if ev.kv.mod_revision > known {
                    match serde_json::from_slice::<AppRoles>(&ev.kv.value) {
                        Ok(r) => {
                            self.roles.insert(app.to_string(), (r, ev.kv.mod_revision));
                        }
                        Err(e) => warn!(key, error = %e, "unreadable role assignment"),
                    }
                }
            } else {
                self.roles.remove(app);
            }
            self.dirty.insert(app.to_string());
            // Links to this app are judged by where its primary is.
            let from: Vec<String> = self
                .topology
                .links_to(app)
                .map(|l| l.from.clone())
                .collect();
            self.dirty.extend(from);
        } else if let Some(app) = key.strip_prefix(keys::INTENTS) {
            if put {
                match serde_json::from_slice::<Intent>(&ev.kv.value) {
                    Ok(i) => {
                        self.intents
                            .insert(app.to_string(), (i, ev.kv.mod_revision));
                    }
                    Err(e) => warn!(key, error = %e, "unreadable intent"),
                }
            } else {
                self.intents.remove(app);
            }
            self.dirty.insert(app.to_string());
        } else if key == keys::SITES {
            let record = if put {
                match serde_json::from_slice::<SitesRecord>(&ev.kv.value) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(key, error = %e, "unreadable sites record");
                        return;
                    }
                }
            } else {
                SitesRecord::default()
            };
            if ev.kv.mod_revision >= self.site_record.1 || !put {
                self.site_record = (record, if put { ev.kv.mod_revision } else { 0 });
                // Events of sites lost or up come with the hosts' leases.
                let _ = self.judge_sites(false);
            }
        } else if let Some(site) = key.strip_prefix(keys::SITE_INTENTS) {
            if !put {
                self.site_intents.remove(site);
                return;
            }
            match serde_json::from_slice::<SiteIntent>(&ev.kv.value) {
                Ok(i) if i.site == site => {
                    let pending = i.outcome == IntentState::Pending;
                    self.site_intents
                        .insert(site.to_string(), (i, ev.kv.mod_revision));
                    if pending {
                        self.dirty.insert(NO_APP.into());
                    }
                }
                Ok(_) => warn!(key, "site request names another site"),
                Err(e) => warn!(key, error = %e, "unreadable site request"),
            }
        } else if let Some(host) = key.strip_prefix(keys::FENCE_INTENTS) {
            if !put {
                self.fence_intents.remove(host);
                return;
            }
            match serde_json::from_slice::<FenceIntent>(&ev.kv.value) {
                Ok(i) if i.host == host => {
                    let pending = i.outcome == IntentState::Pending;
                    let id = i.id.clone();
                    let by = i.by.clone();
                    self.fence_intents
                        .insert(host.to_string(), (i, ev.kv.mod_revision));
                    if pending {
                        let device = self.topology.fence_device(host).is_some();
                        let lease = self.host_leases.get(host).copied();
                        self.fence(FenceInput::Asked {
                            host: host.to_string(),
                            lease,
                            device,
                            intent: id,
                            by,
                        });
                    }
                }
                Ok(_) => warn!(key, "fence request names another host"),
                Err(e) => warn!(key, error = %e, "unreadable fence request"),
            }
        } else if let Some(host) = key.strip_prefix(keys::HOSTS) {
            let before = self.host_leases.get(host).copied();
            let now = if put { ev.kv.lease } else { None };
            match now {
                Some(l) => self.host_leases.insert(host.to_string(), l),
                None => self.host_leases.remove(host),
            };
            if let Some(old) = before.filter(|old| Some(*old) != now) {
                self.fence(FenceInput::LeaseEnded {
                    host: host.to_string(),
                    lease: old,
                });
            }
            let sites = self.judge_sites(live);
            // A new session of a host still suspected is not fenced: the
            // suspicion was of the session that ended (a device runs on a
            // new suspicion only).
            if !live {
                return;
            }
            let message = if put && ev.kv.version == 1 {
                Some(format!("host {host} joined (its agent holds a lease)"))
            } else if put {
                None
            } else {
                Some(format!("host {host} lost: its agent's lease ended"))
            };
            if let Some(message) = message {
                self.host_event(message, if put { "host_joined" } else { "host_lost" });
            }
            for e in sites {
                info!("{}", e.message);
                self.cluster_event(e);
            }
        }
    }

    /// Takes the heartbeats' suspicions: records the change, marks the
    /// apps with instances on the hosts concerned for a decision, and
    /// starts fence devices.
    fn suspicions(&mut self, now: BTreeSet<String>) {
        let known = |h: &String| self.topology.host(h).is_some();
        let now: BTreeSet<String> = now.into_iter().filter(known).collect();
        let added: Vec<String> = now.difference(&self.hosts.suspected).cloned().collect();
        let removed: Vec<String> = self.hosts.suspected.difference(&now).cloned().collect();
        if added.is_empty() && removed.is_empty() {
            return;
        }
        self.hosts.suspected = now;
        for (host, suspected) in added
            .iter()
            .map(|h| (h, true))
            .chain(removed.iter().map(|h| (h, false)))
        {
            let device = self.topology.fence_device(host).is_some();
            let tokens: Vec<&str> = self
                .topology
                .instances_on(host)
                .filter(|(a, _)| tandem_core::controller::token_fenced(a))
                .map(|(a, _)| a.name.as_str())
                .collect();
            let message = if suspected {
                let mut m = format!(
                    "suspecting host {host}: its heartbeats stopped or its agent's connection closed"
                );
                if device {
                    m.push_str("; running its fence device");
                }
                if !tokens.is_empty() {
                    m.push_str(&format!(
                        "; token-fenced apps fail over at once: {}",
                        tokens.join(", ")
                    ));
                }
                m
            } else {
                format!("host {host} answers again (heartbeats resumed)")
            };
            if suspected {
                warn!(host = %host, "{message}");
            } else {
                info!(host = %host, "{message}");
            }
            self.host_event(
                message,
                if suspected {
                    "host_suspected"
                } else {
                    "host_cleared"
                },
            );
            for (app, _) in self.topology.instances_on(host) {
                self.dirty.insert(app.name.clone());
            }
            let input = if suspected {
                FenceInput::Suspected {
                    host: host.clone(),
                    lease: self.host_leases.get(host).copied(),
                    device,
                }
            } else {
                FenceInput::Cleared { host: host.clone() }
            };
            self.fence(input);
        }
    }

    /// Records an event about a host (not about one app).
    fn host_event(&mut self, message: String, reason: &'static str) {
        self.cluster_event(EventDraft {
            kind: EventKind::Host,
            app: None,
            instance: None,
            epoch: None,
            message,
            reason: Some(reason),
        });
    }

    /// Records an event about the cluster (not about one app).
    fn cluster_event(&mut self, draft: EventDraft) {
        self.pending.entry(NO_APP.into()).or_default().push(draft);
        self.dirty.insert(NO_APP.into());
    }

    /// Judges the sites again after a host's lease came or went: the
    /// events of those lost or come up, once the initial listing is read.
    fn judge_sites(&mut self, live: bool) -> Vec<EventDraft> {
        let leases = &self.host_leases;
        let now = site_states(&self.topology, &self.site_record.0, |h| {
            leases.contains_key(h)
        });
        let events = if live {
            site_events(&self.sites, &now)
        } else {
            Vec::new()
        };
        self.sites = now;
        let by_host = host_sites(&self.sites);
        if by_host != self.hosts.sites {
            // Where a primary may be placed, and whether a pinned app is
            // read-only, may have changed.
            for (host, _) in by_host
                .iter()
                .filter(|(h, s)| self.hosts.sites.get(*h) != Some(*s))
                .chain(
                    self.hosts
                        .sites
                        .iter()
                        .filter(|(h, _)| !by_host.contains_key(*h)),
                )
            {
                for (app, _) in self.topology.instances_on(host) {
                    self.dirty.insert(app.name.clone());
                }
            }
            self.hosts.sites = by_host;
        }
        events
    }

    /// Resolves the operators' pending site requests, one transaction
    /// each: the new record, the request's outcome and the event together,
    /// guarded by the controller key and by both as they were read.
    async fn resolve_site_intents(&mut self) -> Result<(), StoreError> {
        let pending: Vec<(SiteIntent, Revision)> = self
            .site_intents
            .values()
            .filter(|(i, _)| i.outcome == IntentState::Pending)
            .cloned()
            .collect();
        for (intent, rev) in pending {
            let (record, record_rev) = self.site_record.clone();
            let r = resolve(&intent, &self.topology, &self.sites, &record, now_ms());
            let mut answered = intent.clone();
            answered.outcome = r.outcome.clone();
            let key = keys::site_intent(&intent.site);
            let event = r.event.clone().stamp(self.next_seq, now_ms());
            let mut ops = vec![
                Op::put(key.clone(), to_json(&answered)?),
                Op::put(keys::event(event.seq), to_json(&event)?),
            ];
            if let Some(next) = &r.record {
                ops.push(Op::put(keys::SITES, to_json(next)?));
            }
            let resp = self
                .store
                .txn(Txn {
                    compares: vec![
                        Compare::ModRevision(keys::CONTROLLER.into(), self.key_revision),
                        Compare::ModRevision(key.clone(), rev),
                        Compare::ModRevision(keys::SITES.into(), record_rev),
                    ],
                    success: ops,
                    failure: vec![Op::get(keys::CONTROLLER)],
                })
                .await?;
            if !resp.succeeded {
                match resp.results.into_iter().next() {
                    Some(OpResult::Get(Some(kv))) if kv.mod_revision == self.key_revision => {
                        // The request or the record changed meanwhile:
                        // the watch brings it, and it is resolved again.
                        self.dirty.insert(NO_APP.into());
                    }
                    _ => {
                        self.metrics.emit(ControllerEvent::Deposed {
                            why: "lost the controller key while writing",
                        });
                        self.deposed = true;
                    }
                }
                return Ok(());
            }
            self.next_seq += 1;
            match &r.outcome {
                IntentState::Refused { .. } => warn!("{}", event.message),
                _ => info!("{}", event.message),
            }
            self.metrics.emit(ControllerEvent::EventWritten {
                kind: event.kind.as_str(),
            });
            self.site_intents
                .insert(intent.site.clone(), (answered, resp.revision));
            if let Some(next) = r.record {
                self.site_record = (next, resp.revision);
                let _ = self.judge_sites(false);
            }
        }
        Ok(())
    }

    /// Feeds the fence book and carries out what it returns.
    fn fence(&mut self, input: FenceInput) {
        let mut actions = Vec::new();
        let now = self.origin.elapsed();
        self.fences.handle(input, now, &mut actions);
        let fenced = self.fences.fenced();
        if fenced != self.hosts.fenced {
            for host in fenced.keys().chain(self.hosts.fenced.keys()) {
                for (app, _) in self.topology.instances_on(host) {
                    self.dirty.insert(app.name.clone());
                }
            }
            self.hosts.fenced = fenced;
        }
        for action in actions {
            match action {
                FenceAction::Run {
                    host,
                    lease,
                    attempt,
                } => self.run_device(host, lease, attempt),
                FenceAction::Revoke { host, lease } => {
                    let store = self.store.clone();
                    tokio::spawn(async move {
                        match store.revoke_lease(lease).await {
                            Ok(()) => info!(host = %host, lease, "fenced host's lease revoked"),
                            Err(e) => {
                                warn!(host = %host, lease, error = %e, "cannot revoke the fenced host's lease; it ends with its TTL")
                            }
                        }
                    });
                }
                FenceAction::Event(draft) => {
                    match draft.reason {
                        Some("fence_failed") => warn!("{}", draft.message),
                        _ => info!("{}", draft.message),
                    }
                    self.pending.entry(NO_APP.into()).or_default().push(draft);
                    self.dirty.insert(NO_APP.into());
                }
                FenceAction::Answer {
                    host,
                    intent,
                    outcome,
                } => self.answer_fence(host, intent, outcome),
            }
        }
    }

    /// Runs `host`'s fence device in the background; its end comes back as
    /// [`FenceInput::Exited`].
    fn run_device(&self, host: String, lease: LeaseId, attempt: u32) {
        let (Some(device), Some(h)) =
            (self.topology.fence_device(&host), self.topology.host(&host))
        else {
            return;
        };
        let argv = tandem_core::topology::fence_command(device, h);
        let timeout = device.timeout;
        let done = self.fence_done.0.clone();
        let metrics = self.metrics.clone();
        info!(host = %host, attempt, command = ?argv, "running the fence device");
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let env = vec![
                ("TANDEM_FENCE_HOST".to_string(), host.clone()),
                ("TANDEM_FENCE_ATTEMPT".to_string(), attempt.to_string()),
            ];
            // Its output, for the reason of a failure.
            let output = std::env::temp_dir().join(format!(
                "tandem-fence-{}-{host}-{attempt}.log",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&output);
            let result = async {
                let mut child = crate::process::spawn_helper_to(argv, env, output.clone())
                    .await
                    .map_err(|e| format!("cannot run it: {e}"))?;
                match tokio::time::timeout(timeout, child.wait()).await {
                    Err(_) => Err(format!(
                        "timed out after {} ms (killed)",
                        timeout.as_millis()
                    )),
                    Ok(Err(e)) => Err(format!("cannot wait for it: {e}")),
                    Ok(Ok(status)) if status.success() => Ok(()),
                    Ok(Ok(status)) => Err(crate::process::describe_exit(status)),
                }
            }
            .await;
            let said = last_line(&output);
            let _ = std::fs::remove_file(&output);
            let result = result.map_err(|why| match said {
                Some(line) => format!("{why} (it said: {line})"),
                None => why,
            });
            metrics.emit(ControllerEvent::FenceRun {
                host: &host,
                outcome: if result.is_ok() {
                    "confirmed"
                } else {
                    "failed"
                },
                latency: started.elapsed(),
            });
            let _ = done.send(FenceInput::Exited {
                host,
                lease,
                result,
            });
        });
    }

    /// Writes the outcome of an operator's fence request (guarded by the
    /// controller key and the request as read).
    fn answer_fence(&mut self, host: String, intent: String, outcome: IntentState) {
        let Some((request, rev)) = self.fence_intents.get(&host).cloned() else {
            return;
        };
        if request.id != intent {
            return;
        }
        let mut updated = request;
        updated.outcome = outcome;
        let Ok(value) = to_json(&updated) else {
            return;
        };
        let key = keys::fence_intent(&host);
        let txn = Txn {
            compares: vec![
                Compare::ModRevision(keys::CONTROLLER.into(), self.key_revision),
                Compare::ModRevision(key.clone(), rev),
            ],
            success: vec![Op::put(key, value)],
            failure: vec![],
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.txn(txn).await {
                warn!(host = %host, error = %e, "cannot record the fence request's outcome");
            }
        });
    }

    /// True while `app` was never decided and core says it should await
    /// its instances' first reports, bounded by `first_decision_by`.
    fn waiting_for_first_reports(&self, app: &str) -> bool {
        if self.roles.contains_key(app) || tokio::time::Instant::now() >= self.first_decision_by {
            return false;
        }
        let Some(a) = self.topology.app(app) else {
            return false;
        };
        let empty = BTreeMap::new();
        awaits_first_reports(a, self.statuses.get(app).unwrap_or(&empty))
    }

    /// Decides every dirty app and writes what changed, many apps per
    /// transaction (one durable write for a whole batch); an app whose
    /// batch met a conflicting write is decided again on its own.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        self.resolve_site_intents().await?;
        if self.deposed {
            return Ok(());
        }
        let mut waiting = Vec::new();
        let mut batch: Vec<Plan> = Vec::new();
        let mut decided = 0;
        while let Some(app) = self.dirty.pop_first() {
            if self.waiting_for_first_reports(&app) {
                waiting.push(app);
                continue;
            }
            decided += 1;
            let plan = match self.plan(&app) {
                Ok(Some(plan)) => plan,
                Ok(None) => continue,
                Err(e) => {
                    self.dirty.insert(app);
                    self.dirty.extend(batch.into_iter().map(|p| p.app));
                    return Err(e);
                }
            };
            if !fits(&batch, &plan) {
                self.write_batch(std::mem::take(&mut batch)).await?;
                if self.deposed {
                    return Ok(());
                }
            }
            batch.push(plan);
        }
        self.write_batch(batch).await?;
        self.dirty.extend(waiting);
        if decided > 0 {
            self.metrics.emit(ControllerEvent::Pass {
                apps: decided,
                latency: started.elapsed(),
            });
        }
        self.trim_events().await
    }

    /// Writes a batch of plans in one transaction; on a conflict, decides
    /// and writes each of its apps again on its own.
    async fn write_batch(&mut self, batch: Vec<Plan>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let apps: Vec<String> = batch.iter().map(|p| p.app.clone()).collect();
        match self.commit(batch).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                for app in apps {
                    if self.deposed {
                        break;
                    }
                    if let Err(e) = self.settle(&app).await {
                        self.dirty.insert(app);
                        return Err(e);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.dirty.extend(apps);
                Err(e)
            }
        }
    }

    /// When the next flush is due without any change (the end of the first
    /// reports' wait), if one is.
    fn pending_deadline(&self) -> Option<tokio::time::Instant> {
        self.dirty
            .iter()
            .any(|a| self.waiting_for_first_reports(a))
            .then_some(self.first_decision_by)
    }

    /// Decides one app and writes it, deciding again after a conflicting
    /// write (bounded).
    async fn settle(&mut self, app_name: &str) -> Result<(), StoreError> {
        for _ in 0..MAX_CONFLICTS {
            let Some(plan) = self.plan(app_name)? else {
                return Ok(());
            };
            if self.commit(vec![plan]).await? || self.deposed {
                return Ok(());
            }
        }
        warn!(
            app = app_name,
            "too many conflicting writes; will decide again on the next change"
        );
        Ok(())
    }

    /// What deciding `app_name` now would write: `None` if nothing.
    fn plan(&mut self, app_name: &str) -> Result<Option<Plan>, StoreError> {
        let mut plan = Plan {
            app: app_name.to_string(),
            compares: Vec::new(),
            ops: Vec::new(),
            carried: Vec::new(),
            decided: Vec::new(),
            new_roles: None,
            new_intent: None,
        };
        // Bounded events per app and write: the rest wait for the next.
        if let Some(pending) = self.pending.get_mut(app_name) {
            let n = pending.len().min(MAX_EVENTS_PER_WRITE);
            plan.carried = pending.drain(..n).collect();
            if !pending.is_empty() {
                self.dirty.insert(app_name.to_string());
            }
        }
        if let Some(app) = self.topology.app(app_name) {
            let (roles, roles_rev) = self.roles.get(app_name).cloned().unwrap_or_default();
            let empty = BTreeMap::new();
            let status = self.statuses.get(app_name).unwrap_or(&empty);
            let intent = self.intents.get(app_name).map(|(i, _)| i);
            let now = tokio::time::Instant::now();
            let links = self.links.judge(
                &self.topology,
                app,
                Some(status),
                |to| self.roles.get(to).map(|(r, _)| r),
                now,
                now_ms(),
            );
            let d = decide(&AppInput {
                app,
                roles: &roles,
                status,
                intent,
                hosts: &self.hosts,
                links: &links,
            });
            self.links.plan(app, &links, &d.roles, now);
            if d.changed {
                info!(
                    app = app_name,
                    generation = d.roles.generation,
                    "{}",
                    d.roles.reason
                );
                plan.compares
                    .push(Compare::ModRevision(keys::roles(app_name), roles_rev));
                plan.ops
                    .push(Op::put(keys::roles(app_name), to_json(&d.roles)?));
                plan.new_roles = Some(d.roles);
            }
            if let (Some(state), Some((intent, rev))) = (d.intent, self.intents.get(app_name)) {
                let mut updated = intent.clone();
                updated.outcome = state;
                plan.compares
                    .push(Compare::ModRevision(keys::intent(app_name), *rev));
                plan.ops
                    .push(Op::put(keys::intent(app_name), to_json(&updated)?));
                plan.new_intent = Some(updated);
            }
            plan.decided = d.events;
        }
        if plan.ops.is_empty() && plan.carried.is_empty() && plan.decided.is_empty() {
            return Ok(None);
        }
        Ok(Some(plan))
    }

    /// Writes `plans` in one transaction, guarded by the controller key and
    /// by each app's assignment and intent as they were read. Ok(false):
    /// someone wrote in between; what they wrote is read back, and the
    /// plans' events go back to pending.
    async fn commit(&mut self, plans: Vec<Plan>) -> Result<bool, StoreError> {
        let mut compares = vec![Compare::ModRevision(
            keys::CONTROLLER.into(),
            self.key_revision,
        )];
        let mut ops = Vec::new();
        let mut failure = vec![Op::get(keys::CONTROLLER)];
        let t_ms = now_ms();
        let mut seq = self.next_seq;
        let mut written = Vec::new();
        for p in &plans {
            compares.extend(p.compares.iter().cloned());
            ops.extend(p.ops.iter().cloned());
            failure.push(Op::get(keys::roles(&p.app)));
            failure.push(Op::get(keys::intent(&p.app)));
            for draft in p.carried.iter().chain(&p.decided) {
                let ev = draft.clone().stamp(seq, t_ms);
                seq += 1;
                ops.push(Op::put(keys::event(ev.seq), to_json(&ev)?));
                written.push(ev);
            }
        }
        let sent = std::time::Instant::now();
        let resp = self
            .store
            .txn(Txn {
                compares,
                success: ops,
                failure,
            })
            .await;
        self.metrics.emit(ControllerEvent::StoreRequest {
            op: "txn",
            latency: sent.elapsed(),
            ok: resp.is_ok(),
        });
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => {
                self.requeue(plans);
                return Err(e);
            }
        };
        if resp.succeeded {
            self.next_seq = seq;
            for ev in &written {
                info!(kind = ?ev.kind, "{}", ev.message);
                self.metrics.emit(ControllerEvent::EventWritten {
                    kind: ev.kind.as_str(),
                });
            }
            for p in plans {
                if let Some(r) = p.new_roles {
                    self.roles.insert(p.app.clone(), (r, resp.revision));
                }
                if let Some(i) = p.new_intent {
                    self.intents.insert(p.app, (i, resp.revision));
                }
            }
            return Ok(true);
        }
        // Someone wrote in between: refresh what they wrote.
        let mut results = resp.results.into_iter();
        match results.next() {
            Some(OpResult::Get(Some(kv))) if kv.mod_revision == self.key_revision => {}
            _ => {
                self.metrics.emit(ControllerEvent::Deposed {
                    why: "lost the controller key while writing",
                });
                self.deposed = true;
                return Ok(false);
            }
        }
        for p in &plans {
            if let Some(OpResult::Get(kv)) = results.next() {
                match kv.and_then(|kv| {
                    let rev = kv.mod_revision;
                    serde_json::from_slice::<AppRoles>(&kv.value)
                        .ok()
                        .map(|r| (r, rev))
                }) {
                    Some(r) => self.roles.insert(p.app.clone(), r),
                    None => self.roles.remove(&p.app),
                };
            }
            if let Some(OpResult::Get(kv)) = results.next() {
                match kv.and_then(|kv| {
                    let rev = kv.mod_revision;
                    serde_json::from_slice::<Intent>(&kv.value)
                        .ok()
                        .map(|i| (i, rev))
                }) {
                    Some(i) => self.intents.insert(p.app.clone(), i),
                    None => self.intents.remove(&p.app),
                };
            }
        }
        self.requeue(plans);
        Ok(false)
    }

    /// Puts the events of unwritten plans back in front of their apps'
    /// pending events, and marks the apps to decide again.
    fn requeue(&mut self, plans: Vec<Plan>) {
        for p in plans {
            // The decision is made again; the events it carried are not.
            let pending = self.pending.entry(p.app.clone()).or_default();
            let rest = std::mem::take(pending);
            pending.extend(p.carried);
            pending.extend(rest);
            self.dirty.insert(p.app);
        }
    }

    /// Keeps the event log bounded.
    async fn trim_events(&mut self) -> Result<(), StoreError> {
        while self.next_seq.saturating_sub(self.oldest_seq) > MAX_EVENTS {
            let excess = self.next_seq - self.oldest_seq - MAX_EVENTS;
            // A transaction branch holds at most 128 operations.
            let n = excess.min(128);
            let ops = (self.oldest_seq..self.oldest_seq + n)
                .map(|s| Op::delete(keys::event(s)))
                .collect();
            self.store
                .txn(Txn {
                    compares: vec![Compare::ModRevision(
                        keys::CONTROLLER.into(),
                        self.key_revision,
                    )],
                    success: ops,
                    failure: vec![],
                })
                .await?;
            self.oldest_seq += n;
        }
        Ok(())
    }
}

/// What deciding one app writes.
struct Plan {
    app: String,
    /// The app's assignment and intent as they were read.
    compares: Vec<Compare>,
    /// Its new assignment and intent.
    ops: Vec<Op>,
    /// Events noted since the last write (status changes, hosts).
    carried: Vec<EventDraft>,
    /// Events of the decision.
    decided: Vec<EventDraft>,
    new_roles: Option<AppRoles>,
    new_intent: Option<Intent>,
}

impl Plan {
    /// (compares, success ops, failure ops) it adds to a transaction.
    fn size(&self) -> (usize, usize, usize) {
        let events = self.carried.len() + self.decided.len();
        (self.compares.len(), self.ops.len() + events, 2)
    }
}

/// Whether `plan` still fits in a transaction with `batch` (each branch
/// and the compares at most [`MAX_TXN_OPS`], with the controller key's
/// compare and read).
fn fits(batch: &[Plan], plan: &Plan) -> bool {
    let (mut c, mut s, mut f) = (1, 0, 1);
    for p in batch.iter().chain(std::iter::once(plan)) {
        let (pc, ps, pf) = p.size();
        c += pc;
        s += ps;
        f += pf;
    }
    batch.is_empty() || (c <= MAX_TXN_OPS && s <= MAX_TXN_OPS && f <= MAX_TXN_OPS)
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Internal(format!("cannot encode: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tandem_core::model::{Health, ProcessState, Role};
    use tandem_store::{EmbeddedStore, KeyValue, Lease, Listing, TxnResponse, WatchStream};

    use super::*;

    /// The embedded store, counting transactions.
    struct Counting {
        inner: Arc<EmbeddedStore>,
        txns: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Store for Counting {
        fn backend(&self) -> &'static str {
            "counting"
        }
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
            self.inner.list(prefix).await
        }
        async fn put(
            &self,
            key: &str,
            value: Vec<u8>,
            lease: Option<LeaseId>,
        ) -> Result<Revision, StoreError> {
            self.inner.put(key, value, lease).await
        }
        async fn delete(&self, key: &str) -> Result<bool, StoreError> {
            self.inner.delete(key).await
        }
        async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
            self.txns.fetch_add(1, Ordering::SeqCst);
            self.inner.txn(txn).await
        }
        async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
            self.inner.grant_lease(ttl).await
        }
        async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
            self.inner.keep_alive(lease).await
        }
        async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
            self.inner.revoke_lease(lease).await
        }
        async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream, StoreError> {
            self.inner.watch(prefix, start).await
        }
    }

    fn topology(apps: usize) -> Topology {
        let mut t = String::from(
            "[[sites]]\nname = \"dc1\"\n[[hosts]]\nname = \"h1\"\nsite = \"dc1\"\naddress = \"127.0.0.1\"\n",
        );
        for i in 0..apps {
            t.push_str(&format!(
                "[apps.s{i}]\nha = \"warm-standby\"\ncommand = [\"sleep\", \"60\"]\n\
                 [apps.s{i}.hook]\nkind = \"command\"\ncommand = [\"true\"]\ntimeout = \"500ms\"\n\
                 [[apps.s{i}.instances]]\nid = \"a\"\nhost = \"h1\"\npriority = 2\n\
                 [[apps.s{i}.instances]]\nid = \"b\"\nhost = \"h1\"\npriority = 1\n"
            ));
        }
        tandem_core::topology::parse("t.toml", &t).expect("topology")
    }

    fn running(incarnation: u64) -> InstanceStatus {
        InstanceStatus {
            host: "h1".into(),
            process: ProcessState::Running,
            pid: Some(100),
            session: 7,
            incarnation,
            seen_generation: 0,
            health: Health::Healthy,
            health_detail: None,
            acting: Role::Backup,
            acting_epoch: 0,
            promoting: false,
            drained: 0,
            links: Default::default(),
            active_links: Default::default(),
            admin: Default::default(),
            crash_looping: false,
            restarts: 0,
            last_exit: None,
        }
    }

    /// A leader over `apps` apps whose instances all run, healthy, and
    /// which were never decided.
    async fn leader(apps: usize) -> (Leader, Arc<Counting>) {
        let store = Arc::new(Counting {
            inner: EmbeddedStore::in_memory(),
            txns: AtomicUsize::new(0),
        });
        let record = serde_json::to_vec(&ControllerRecord {
            host: "h1".into(),
            lease: 7,
        })
        .expect("json");
        let rev = store
            .put(keys::CONTROLLER, record, None)
            .await
            .expect("put");
        let mut leader = Leader::new(
            store.clone(),
            Arc::new(topology(apps)),
            "h1".into(),
            rev,
            Arc::new(ControllerMetrics::new()),
        );
        for i in 0..apps {
            let app = format!("s{i}");
            let statuses = leader.statuses.entry(app.clone()).or_default();
            statuses.insert("a".into(), running(1));
            statuses.insert("b".into(), running(1));
            leader.dirty.insert(app);
        }
        (leader, store)
    }

    async fn stored_roles(store: &Counting, apps: usize) -> Vec<AppRoles> {
        let mut out = Vec::new();
        for i in 0..apps {
            let kv = store
                .get(&keys::roles(&format!("s{i}")))
                .await
                .expect("get")
                .expect("roles written");
            out.push(serde_json::from_slice(&kv.value).expect("roles"));
        }
        out
    }

    #[tokio::test]
    async fn one_pass_writes_many_apps_per_transaction_within_the_op_limits() {
        let apps = 300;
        let (mut leader, store) = leader(apps).await;
        leader.flush().await.expect("flush");
        let txns = store.txns.load(Ordering::SeqCst);
        // Each app writes its assignment and one event, guarded by one
        // compare: at most 63 apps fit the read-back branch (1 + 2 each).
        assert!(
            (5..=10).contains(&txns),
            "{txns} transactions for {apps} apps"
        );
        for roles in stored_roles(&store, apps).await {
            let grant = roles.primary.expect("a primary for every app");
            assert_eq!((grant.instance.as_str(), grant.epoch), ("a", 1));
        }
        // Every event written once, with consecutive sequence numbers.
        let events = store.list(keys::EVENTS).await.expect("events");
        let seqs: Vec<u64> = events
            .kvs
            .iter()
            .filter_map(|kv| keys::parse_event(&kv.key))
            .collect();
        assert_eq!(seqs.len(), apps);
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=apps as u64).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_batch_that_meets_a_conflicting_write_is_decided_again_app_by_app() {
        let apps = 20;
        let (mut leader, store) = leader(apps).await;
        // Someone else wrote s7's assignment: the leader's view is stale.
        let theirs = AppRoles {
            generation: 5,
            epoch: 9,
            reason: "written elsewhere".into(),
            ..AppRoles::default()
        };
        store
            .put(
                &keys::roles("s7"),
                serde_json::to_vec(&theirs).expect("json"),
                None,
            )
            .await
            .expect("put");
        leader.flush().await.expect("flush");
        let roles = stored_roles(&store, apps).await;
        for (i, r) in roles.iter().enumerate() {
            let grant = r.primary.as_ref().expect("a primary");
            if i == 7 {
                // Decided again on what was actually stored.
                assert_eq!((r.epoch, r.generation), (10, 6), "{r:?}");
            } else {
                assert_eq!(grant.epoch, 1);
            }
        }
        // One failed batch, then one transaction per app.
        assert_eq!(store.txns.load(Ordering::SeqCst), 1 + apps);
    }
}
