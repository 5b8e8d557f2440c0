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
use tandem_core::controller::{AppInput, decide, status_events};
use tandem_core::model::{AppRoles, EventDraft, EventKind, InstanceStatus, Intent, keys};
use tandem_core::topology::Topology;
use tandem_store::watch::{AfterBreak, FollowItem, Start, follow};
use tandem_store::{
    Compare, EventKind as StoreEventKind, LeaseId, Op, OpResult, Revision, Store, StoreError, Txn,
    WatchEvent,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How many events the log keeps; older ones are deleted.
pub const MAX_EVENTS: u64 = 10_000;
/// How many times a decision is retried after a conflicting write.
const MAX_CONFLICTS: u32 = 8;
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
/// while elected. Returns when `cancel` fires.
pub async fn run_candidate(
    store: Arc<dyn Store>,
    topology: Arc<Topology>,
    host: String,
    mut session: watch::Receiver<Option<LeaseId>>,
    cancel: CancellationToken,
) {
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
            } else {
                info!(host = %host, "elected controller");
            }
            let mut leader =
                Leader::new(store.clone(), topology.clone(), host.clone(), key_revision);
            leader.lead(lease, &mut session, &cancel).await;
            info!(host = %host, "no longer controller");
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
                debug!(host = %host, "controller elsewhere; watching");
                wait_for_vacancy(&store, r.revision + 1, held, &mut session, lease, &cancel).await;
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

/// Waits until the controller key is deleted (or our session changes).
async fn wait_for_vacancy(
    store: &Arc<dyn Store>,
    from: Revision,
    held: Option<Revision>,
    session: &mut watch::Receiver<Option<LeaseId>>,
    lease: LeaseId,
    cancel: &CancellationToken,
) {
    if held.is_none() {
        return;
    }
    let mut key = follow(
        store.clone(),
        keys::CONTROLLER,
        Start::At(from),
        AfterBreak::Resume,
    );
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = session.changed() => {
                if r.is_err() || *session.borrow() != Some(lease) { return; }
            }
            item = key.next() => match item {
                FollowItem::Change(ev) if ev.kv.key == keys::CONTROLLER && ev.kind == StoreEventKind::Delete => return,
                FollowItem::Change(_) => {}
                // Campaign again: the campaign reads the key as it is.
                FollowItem::Snapshot(_) | FollowItem::Interrupted(_) => {
                    tokio::time::sleep(RETRY_DELAY).await;
                    return;
                }
            }
        }
    }
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
}

/// Events not about one app are kept under this name.
const NO_APP: &str = "";

impl Leader {
    fn new(
        store: Arc<dyn Store>,
        topology: Arc<Topology>,
        host: String,
        key_revision: Revision,
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
        }
    }

    async fn lead(
        &mut self,
        lease: LeaseId,
        session: &mut watch::Receiver<Option<LeaseId>>,
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
            let wake = match (retry_at, self.pending_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
                _ = retry => retry_at = None,
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
                let evs = status_events(app, instance, old.as_ref(), new.as_ref());
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
        } else if let Some(host) = key.strip_prefix(keys::HOSTS)
            && live
        {
            let message = if put && ev.kv.version == 1 {
                format!("host {host} joined (its agent holds a lease)")
            } else if put {
                return;
            } else {
                format!("host {host} lost: its agent's lease ended")
            };
            self.pending
                .entry(NO_APP.into())
                .or_default()
                .push(EventDraft {
                    kind: EventKind::Host,
                    app: None,
                    instance: None,
                    epoch: None,
                    message,
                    reason: Some(if put { "host_joined" } else { "host_lost" }),
                });
            self.dirty.insert(NO_APP.into());
        }
    }

    /// True while `app` was never decided and some of its instances have
    /// not reported yet, or run without a health verdict yet (bounded by
    /// `first_decision_by`): deciding now would place it on whichever
    /// instance came up first rather than the best one.
    fn waiting_for_first_reports(&self, app: &str) -> bool {
        if self.roles.contains_key(app) || tokio::time::Instant::now() >= self.first_decision_by {
            return false;
        }
        let Some(a) = self.topology.app(app) else {
            return false;
        };
        let reported = self.statuses.get(app);
        // Not yet reported, or running without a health verdict yet: the
        // best instance may simply not have been judged.
        a.instances
            .iter()
            .any(|i| match reported.and_then(|m| m.get(&i.id)) {
                None => true,
                Some(s) => s.process.is_live() && s.health == tandem_core::model::Health::Unknown,
            })
    }

    /// Decides and writes every dirty app.
    async fn flush(&mut self) -> Result<(), StoreError> {
        let mut waiting = Vec::new();
        while let Some(app) = self.dirty.pop_first() {
            if self.waiting_for_first_reports(&app) {
                waiting.push(app);
                continue;
            }
            if let Err(e) = self.settle(&app).await {
                self.dirty.insert(app);
                return Err(e);
            }
            if self.deposed {
                return Ok(());
            }
        }
        self.dirty.extend(waiting);
        self.trim_events().await
    }

    /// When the next flush is due without any change (the end of the first
    /// reports' wait), if one is.
    fn pending_deadline(&self) -> Option<tokio::time::Instant> {
        self.dirty
            .iter()
            .any(|a| self.waiting_for_first_reports(a))
            .then_some(self.first_decision_by)
    }

    async fn settle(&mut self, app_name: &str) -> Result<(), StoreError> {
        for _ in 0..MAX_CONFLICTS {
            let mut ops = Vec::new();
            let mut compares = vec![Compare::ModRevision(
                keys::CONTROLLER.into(),
                self.key_revision,
            )];
            let mut events = self.pending.get(app_name).cloned().unwrap_or_default();
            let mut new_roles = None;
            let mut new_intent = None;
            if let Some(app) = self.topology.app(app_name) {
                let (roles, roles_rev) = self.roles.get(app_name).cloned().unwrap_or_default();
                let empty = BTreeMap::new();
                let status = self.statuses.get(app_name).unwrap_or(&empty);
                let intent = self.intents.get(app_name).map(|(i, _)| i);
                let d = decide(&AppInput {
                    app,
                    roles: &roles,
                    status,
                    intent,
                });
                if d.changed {
                    info!(
                        app = app_name,
                        generation = d.roles.generation,
                        "{}",
                        d.roles.reason
                    );
                    compares.push(Compare::ModRevision(keys::roles(app_name), roles_rev));
                    ops.push(Op::put(keys::roles(app_name), to_json(&d.roles)?));
                    new_roles = Some(d.roles);
                }
                if let (Some(state), Some((intent, rev))) = (d.intent, self.intents.get(app_name)) {
                    let mut updated = intent.clone();
                    updated.outcome = state;
                    compares.push(Compare::ModRevision(keys::intent(app_name), *rev));
                    ops.push(Op::put(keys::intent(app_name), to_json(&updated)?));
                    new_intent = Some(updated);
                }
                events.extend(d.events);
            }
            if ops.is_empty() && events.is_empty() {
                return Ok(());
            }
            let t_ms = now_ms();
            let first_seq = self.next_seq;
            for (n, draft) in events.iter().enumerate() {
                let ev = draft.clone().stamp(first_seq + n as u64, t_ms);
                info!(kind = ?ev.kind, "{}", ev.message);
                ops.push(Op::put(keys::event(ev.seq), to_json(&ev)?));
            }
            let resp = self
                .store
                .txn(Txn {
                    compares,
                    success: ops,
                    failure: vec![
                        Op::get(keys::CONTROLLER),
                        Op::get(keys::roles(app_name)),
                        Op::get(keys::intent(app_name)),
                    ],
                })
                .await?;
            if resp.succeeded {
                self.next_seq += events.len() as u64;
                self.pending.remove(app_name);
                if let Some(r) = new_roles {
                    self.roles.insert(app_name.to_string(), (r, resp.revision));
                }
                if let Some(i) = new_intent {
                    self.intents
                        .insert(app_name.to_string(), (i, resp.revision));
                }
                return Ok(());
            }
            // Someone wrote in between: refresh and decide again.
            let mut results = resp.results.into_iter();
            match results.next() {
                Some(OpResult::Get(Some(kv))) if kv.mod_revision == self.key_revision => {}
                _ => {
                    warn!("lost the controller key while writing");
                    self.deposed = true;
                    return Ok(());
                }
            }
            if let Some(OpResult::Get(kv)) = results.next() {
                match kv {
                    Some(kv) => {
                        if let Ok(r) = serde_json::from_slice::<AppRoles>(&kv.value) {
                            self.roles
                                .insert(app_name.to_string(), (r, kv.mod_revision));
                        }
                    }
                    None => {
                        self.roles.remove(app_name);
                    }
                }
            }
            if let Some(OpResult::Get(kv)) = results.next() {
                match kv {
                    Some(kv) => {
                        if let Ok(i) = serde_json::from_slice::<Intent>(&kv.value) {
                            self.intents
                                .insert(app_name.to_string(), (i, kv.mod_revision));
                        }
                    }
                    None => {
                        self.intents.remove(app_name);
                    }
                }
            }
        }
        warn!(
            app = app_name,
            "too many conflicting writes; will decide again on the next change"
        );
        Ok(())
    }

    /// Keeps the event log bounded.
    async fn trim_events(&mut self) -> Result<(), StoreError> {
        while self.next_seq.saturating_sub(self.oldest_seq) > MAX_EVENTS {
            let excess = self.next_seq - self.oldest_seq - MAX_EVENTS;
            let n = excess.min(256);
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

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Internal(format!("cannot encode: {e}")))
}
