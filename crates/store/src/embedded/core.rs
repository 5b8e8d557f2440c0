//! The embedded store's authoritative state and every operation on it.
//!
//! [`Core`] is a plain, synchronous state machine guarded by one mutex in
//! [`super::EmbeddedStore`], held only for the duration of one method call
//! (never across disk I/O or an await). Key writes are additionally
//! serialized by the store's writer lock, and split in two steps: a write is
//! *planned* ([`Core::plan_txn`]: compares evaluated, new key versions
//! computed), made durable if needed, then *applied* ([`Core::apply`]: made
//! visible, revision bumped, watchers fed). Because every revision bump
//! happens under the writer lock, nothing changes keys between the plan and
//! the apply; reads and keep-alives never wait for the disk. Time arrives as
//! an argument (`now`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::disk::{DiskOp, Loaded};
use super::watch::{WatchReceiver, Watcher};
use super::{EmbeddedOptions, MAX_KEY_BYTES, MAX_TXN_OPS, MAX_VALUE_BYTES};
use crate::{
    Compare, EventKind, KeyValue, Lease, LeaseId, Listing, Op, OpResult, Result, Revision,
    StoreError, Txn, WatchEvent,
};

/// Fixed per-event overhead counted against the history's byte budget.
const EVENT_OVERHEAD_BYTES: usize = 64;

/// A granted, live lease.
struct LeaseEntry {
    ttl: Duration,
    deadline: Instant,
    /// Keys bound to it: `k` is here iff `kvs[k].lease == Some(id)`.
    keys: BTreeSet<String>,
}

/// One key's change within a revision.
pub(crate) struct Change {
    key: String,
    /// Whether the key existed before the revision, and its lease then.
    old: Option<Option<LeaseId>>,
    /// The key after the change; `None` deletes it.
    new: Option<KeyValue>,
}

/// A planned transaction: what it returns and what it changes.
pub(crate) struct Plan {
    /// Whether every compare held.
    pub succeeded: bool,
    /// One result per op of the branch that ran.
    pub results: Vec<OpResult>,
    /// The changes, in op order, all at revision `base_revision + 1`.
    pub changes: Vec<Change>,
    /// The store's revision when planned.
    pub base_revision: Revision,
}

/// What must reach the disk for `changes` to be durable: puts of keys
/// without a lease, and deletes of keys that were persisted (also when a
/// persisted key is rewritten with a lease). Empty when the changes touch
/// only leased keys.
pub(crate) fn disk_ops(changes: &[Change]) -> Vec<DiskOp<'_>> {
    changes
        .iter()
        .filter_map(|c| match (&c.new, c.old) {
            (Some(kv), _) if kv.lease.is_none() => Some(DiskOp::Put(kv)),
            (_, Some(None)) => Some(DiskOp::Delete(&c.key)),
            _ => None,
        })
        .collect()
}

/// The whole state of an embedded store.
pub(crate) struct Core {
    kvs: BTreeMap<String, KeyValue>,
    /// The last committed revision.
    revision: Revision,
    leases: HashMap<LeaseId, LeaseEntry>,
    /// Lease deadlines, earliest first.
    deadlines: BTreeSet<(Instant, LeaseId)>,
    next_lease_id: LeaseId,
    /// Recent events, in revision order, for watch replay.
    history: VecDeque<WatchEvent>,
    history_bytes: usize,
    /// Every event with a revision above this is in `history`.
    compacted_through: Revision,
    watchers: Vec<Watcher>,
    options: EmbeddedOptions,
    closed: bool,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(msg.into())
}

fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid("empty key"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "key of {} bytes exceeds the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

fn validate_value(key: &str, value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(invalid(format!(
            "value of {key:?} ({} bytes) exceeds the limit of {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

fn validate_branch(name: &str, ops: &[Op]) -> Result<()> {
    if ops.len() > MAX_TXN_OPS {
        return Err(invalid(format!(
            "txn {name} branch has {} ops, the limit is {MAX_TXN_OPS}",
            ops.len()
        )));
    }
    let mut written = BTreeSet::new();
    for op in ops {
        match op {
            Op::Put { key, value, .. } => {
                validate_key(key)?;
                validate_value(key, value)?;
                if !written.insert(key.as_str()) {
                    return Err(invalid(format!(
                        "txn {name} branch writes key {key:?} more than once"
                    )));
                }
            }
            Op::Delete { key } => {
                validate_key(key)?;
                if !written.insert(key.as_str()) {
                    return Err(invalid(format!(
                        "txn {name} branch writes key {key:?} more than once"
                    )));
                }
            }
            Op::Get { key } => validate_key(key)?,
        }
    }
    Ok(())
}

/// Checks a transaction's shape (keys, sizes, op counts, keys written twice)
/// without looking at the store.
pub(crate) fn validate_txn(txn: &Txn) -> Result<()> {
    if txn.compares.len() > MAX_TXN_OPS {
        return Err(invalid(format!(
            "txn has {} compares, the limit is {MAX_TXN_OPS}",
            txn.compares.len()
        )));
    }
    for c in &txn.compares {
        match c {
            Compare::ModRevision(key, _) | Compare::Value(key, _) => validate_key(key)?,
        }
    }
    validate_branch("success", &txn.success)?;
    validate_branch("failure", &txn.failure)
}

impl Core {
    /// A store with the given persisted state (or none: in memory).
    pub(crate) fn new(
        options: EmbeddedOptions,
        loaded: Option<Loaded>,
        first_lease_id: LeaseId,
    ) -> Core {
        let mut core = Core {
            kvs: BTreeMap::new(),
            revision: 0,
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_lease_id: first_lease_id.max(1),
            history: VecDeque::new(),
            history_bytes: 0,
            compacted_through: 0,
            watchers: Vec::new(),
            options,
            closed: false,
        };
        if let Some(loaded) = loaded {
            core.revision = loaded.revision;
            core.compacted_through = loaded.revision;
            core.kvs = loaded
                .kvs
                .into_iter()
                .map(|kv| (kv.key.clone(), kv))
                .collect();
        }
        core
    }

    /// Fails with `Unavailable` once the store is closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(StoreError::Unavailable("embedded store closed".to_owned()));
        }
        Ok(())
    }

    /// True once [`Core::close`] ran.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// The last committed revision.
    pub(crate) fn revision(&self) -> Revision {
        self.revision
    }

    /// Closes the store: drops every watcher (their streams end with
    /// `Unavailable`) and the in-memory state.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.watchers.clear();
        self.history.clear();
        self.kvs.clear();
        self.leases.clear();
        self.deadlines.clear();
    }

    // ---- reads -------------------------------------------------------------

    // Reads do not expire leases (only writers, under the writer lock, bump
    // revisions): a key may outlive its lease's deadline by the time a
    // writer or the expiry task needs to get to it, which the lease
    // guarantee ("no earlier than the TTL") allows.

    pub(crate) fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.check_open()?;
        validate_key(key)?;
        Ok(self.kvs.get(key).cloned())
    }

    pub(crate) fn list(&self, prefix: &str) -> Result<Listing> {
        self.check_open()?;
        let kvs = self
            .kvs
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        Ok(Listing {
            kvs,
            revision: self.revision,
        })
    }

    // ---- writes ------------------------------------------------------------

    fn compare_holds(&self, c: &Compare) -> bool {
        match c {
            Compare::ModRevision(key, rev) => {
                self.kvs.get(key).map_or(0, |kv| kv.mod_revision) == *rev
            }
            Compare::Value(key, value) => self.kvs.get(key).is_some_and(|kv| kv.value == *value),
        }
    }

    /// Evaluates a (validated) transaction against the current state: which
    /// branch runs, its results, and the changes it makes. Changes nothing.
    pub(crate) fn plan_txn(&self, txn: &Txn) -> Result<Plan> {
        self.check_open()?;
        let succeeded = txn.compares.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        for op in ops {
            if let Op::Put {
                lease: Some(id), ..
            } = op
                && !self.leases.contains_key(id)
            {
                return Err(StoreError::LeaseNotFound(*id));
            }
        }
        let rev = self.revision + 1;
        let mut changes: Vec<Change> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            // The key as this txn sees it so far: its own earlier writes
            // first (each key is written at most once), then the store.
            let current = |key: &str| -> Option<&KeyValue> {
                match changes.iter().find(|c| c.key == key) {
                    Some(c) => c.new.as_ref(),
                    None => self.kvs.get(key),
                }
            };
            match op {
                Op::Put { key, value, lease } => {
                    let cur = current(key);
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: cur.map_or(rev, |c| c.create_revision),
                        mod_revision: rev,
                        version: cur.map_or(1, |c| c.version + 1),
                        lease: *lease,
                    };
                    changes.push(Change {
                        key: key.clone(),
                        old: self.kvs.get(key).map(|kv| kv.lease),
                        new: Some(kv),
                    });
                    results.push(OpResult::Put);
                }
                Op::Delete { key } => {
                    let existed = current(key).is_some();
                    if existed {
                        changes.push(Change {
                            key: key.clone(),
                            old: self.kvs.get(key).map(|kv| kv.lease),
                            new: None,
                        });
                    }
                    results.push(OpResult::Delete(existed));
                }
                Op::Get { key } => results.push(OpResult::Get(current(key).cloned())),
            }
        }
        Ok(Plan {
            succeeded,
            results,
            changes,
            base_revision: self.revision,
        })
    }

    /// Applies one revision's changes (planned at the current revision, and
    /// already durable where needed): updates keys and leases, feeds
    /// watchers and the history. Returns the new revision.
    pub(crate) fn apply(&mut self, changes: Vec<Change>) -> Revision {
        let rev = self.revision + 1;
        debug_assert!(
            changes
                .iter()
                .all(|c| c.new.as_ref().is_none_or(|kv| kv.mod_revision == rev))
        );
        let mut events = Vec::with_capacity(changes.len());
        for c in changes {
            let new_lease = c.new.as_ref().and_then(|kv| kv.lease);
            if let Some(Some(old_lease)) = c.old
                && new_lease != Some(old_lease)
                && let Some(entry) = self.leases.get_mut(&old_lease)
            {
                entry.keys.remove(&c.key);
            }
            match c.new {
                Some(kv) => {
                    if let Some(entry) = new_lease.and_then(|id| self.leases.get_mut(&id)) {
                        entry.keys.insert(c.key.clone());
                    }
                    events.push(WatchEvent {
                        kind: EventKind::Put,
                        kv: kv.clone(),
                    });
                    self.kvs.insert(c.key, kv);
                }
                None => {
                    self.kvs.remove(&c.key);
                    events.push(WatchEvent {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: c.key,
                            value: Vec::new(),
                            create_revision: 0,
                            mod_revision: rev,
                            version: 0,
                            lease: None,
                        },
                    });
                }
            }
        }
        self.revision = rev;
        self.watchers.retain(|w| w.deliver(&events));
        self.push_history(events);
        rev
    }

    fn push_history(&mut self, events: Vec<WatchEvent>) {
        for e in events {
            self.history_bytes += EVENT_OVERHEAD_BYTES + e.kv.key.len() + e.kv.value.len();
            self.history.push_back(e);
        }
        while self.history.len() > self.options.history_max_events
            || self.history_bytes > self.options.history_max_bytes
        {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= EVENT_OVERHEAD_BYTES + old.kv.key.len() + old.kv.value.len();
            self.compacted_through = old.kv.mod_revision;
        }
    }

    // ---- leases ------------------------------------------------------------

    pub(crate) fn grant_lease(&mut self, ttl: Duration, now: Instant) -> Result<Lease> {
        self.check_open()?;
        if ttl.is_zero() {
            return Err(invalid("lease TTL must be positive"));
        }
        let deadline = now
            .checked_add(ttl)
            .ok_or_else(|| invalid(format!("lease TTL {ttl:?} is too large")))?;
        let mut id = self.next_lease_id;
        while self.leases.contains_key(&id) {
            id = id.checked_add(1).unwrap_or(1);
        }
        self.next_lease_id = id.checked_add(1).unwrap_or(1);
        self.leases.insert(
            id,
            LeaseEntry {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
        self.deadlines.insert((deadline, id));
        Ok(Lease { id, ttl })
    }

    /// Renews a lease whose deadline has not passed. A lease past its
    /// deadline is dead even if the expiry has not deleted its keys yet.
    pub(crate) fn keep_alive(&mut self, id: LeaseId, now: Instant) -> Result<Duration> {
        self.check_open()?;
        let entry = self
            .leases
            .get_mut(&id)
            .filter(|entry| entry.deadline > now)
            .ok_or(StoreError::LeaseNotFound(id))?;
        // `ttl` was checked against overflow at grant time, for an earlier `now`.
        let deadline = now.checked_add(entry.ttl).unwrap_or(entry.deadline);
        self.deadlines.remove(&(entry.deadline, id));
        entry.deadline = deadline;
        self.deadlines.insert((deadline, id));
        Ok(entry.ttl)
    }

    /// Revokes a lease, deleting its keys (memory only: leased keys are not
    /// persisted). Call under the writer lock.
    pub(crate) fn revoke_lease(&mut self, id: LeaseId, now: Instant) -> Result<()> {
        self.check_open()?;
        self.expire_due(now);
        if self.end_lease(id) {
            tracing::debug!(lease = id, "embedded store: lease revoked");
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(id))
        }
    }

    /// Ends every lease whose deadline is at or before `now`, each in its
    /// own revision. Memory only (leased keys are not persisted). Call under
    /// the writer lock.
    pub(crate) fn expire_due(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            tracing::debug!(lease = id, "embedded store: lease expired");
            self.end_lease(id);
        }
    }

    /// The earliest lease deadline, if any lease is live.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(d, _)| d)
    }

    /// Removes a lease and deletes its keys in one revision. Returns whether
    /// the lease existed.
    fn end_lease(&mut self, id: LeaseId) -> bool {
        let Some(entry) = self.leases.remove(&id) else {
            return false;
        };
        self.deadlines.remove(&(entry.deadline, id));
        let changes: Vec<Change> = entry
            .keys
            .into_iter()
            .filter(|k| self.kvs.get(k).is_some_and(|kv| kv.lease == Some(id)))
            .map(|key| Change {
                key,
                old: Some(Some(id)),
                new: None,
            })
            .collect();
        if !changes.is_empty() {
            self.apply(changes);
        }
        true
    }

    // ---- watches -----------------------------------------------------------

    pub(crate) fn watch(&mut self, prefix: &str, start: Revision) -> Result<WatchReceiver> {
        self.check_open()?;
        let next = self.revision + 1;
        let start = if start == 0 { next } else { start };
        if start <= self.compacted_through {
            return Err(StoreError::Compacted {
                requested: start,
                oldest: self.compacted_through + 1,
            });
        }
        let from = self.history.partition_point(|e| e.kv.mod_revision < start);
        let replay = self
            .history
            .range(from..)
            .filter(|e| e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        let (tx, rx) = mpsc::channel(self.options.watch_buffer_events.max(1));
        let ended = Arc::new(OnceLock::new());
        self.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            min_revision: start.max(next),
            tx,
            ended: ended.clone(),
        });
        Ok(WatchReceiver {
            replay,
            rx,
            ended,
            done: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> Core {
        Core::new(EmbeddedOptions::default(), None, 1)
    }

    fn put(core: &mut Core, key: &str, lease: Option<LeaseId>) -> Revision {
        let txn = Txn {
            compares: vec![],
            success: vec![Op::Put {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
            }],
            failure: vec![],
        };
        let plan = core.plan_txn(&txn).unwrap();
        core.apply(plan.changes)
    }

    #[test]
    fn keep_alive_after_the_deadline_fails_before_the_expiry_runs() {
        let mut core = core();
        let t0 = Instant::now();
        let lease = core.grant_lease(Duration::from_secs(1), t0).unwrap();
        put(&mut core, "/l", Some(lease.id));
        let late = t0 + Duration::from_secs(1);
        assert_eq!(
            core.keep_alive(lease.id, late),
            Err(StoreError::LeaseNotFound(lease.id))
        );
        // The key is still there until the expiry runs, and the lease stays dead.
        assert!(core.get("/l").unwrap().is_some());
        assert_eq!(
            core.keep_alive(lease.id, late),
            Err(StoreError::LeaseNotFound(lease.id))
        );
        core.expire_due(late);
        assert!(core.get("/l").unwrap().is_none());
    }

    #[test]
    fn expiry_deletes_a_leases_keys_in_one_revision_and_leaves_others() {
        let mut core = core();
        let t0 = Instant::now();
        let short = core.grant_lease(Duration::from_secs(1), t0).unwrap();
        let long = core.grant_lease(Duration::from_secs(5), t0).unwrap();
        put(&mut core, "/a", Some(short.id));
        put(&mut core, "/b", Some(short.id));
        put(&mut core, "/c", Some(long.id));
        // Rebinding moves a key from one lease to the other.
        put(&mut core, "/b", Some(long.id));
        let before = core.revision();
        core.expire_due(t0 + Duration::from_secs(2));
        assert_eq!(core.revision(), before + 1);
        assert!(core.get("/a").unwrap().is_none());
        assert!(core.get("/b").unwrap().is_some());
        assert_eq!(core.next_deadline(), Some(t0 + Duration::from_secs(5)));
        core.expire_due(t0 + Duration::from_secs(5));
        assert_eq!(core.revision(), before + 2);
        assert!(core.list("/").unwrap().kvs.is_empty());
        assert_eq!(core.next_deadline(), None);
    }

    #[test]
    fn history_byte_budget_compacts_old_events() {
        let mut core = Core::new(
            EmbeddedOptions {
                history_max_bytes: 10 * (EVENT_OVERHEAD_BYTES + "/ab".len() + "v".len()),
                ..EmbeddedOptions::default()
            },
            None,
            1,
        );
        for _ in 0..20 {
            put(&mut core, "/ab", None);
        }
        assert_eq!(core.history.len(), 10);
        assert_eq!(core.compacted_through, 10);
        assert!(matches!(
            core.watch("/", 10),
            Err(StoreError::Compacted {
                requested: 10,
                oldest: 11
            })
        ));
        assert_eq!(core.watch("/", 11).unwrap().replay.len(), 10);
    }

    #[test]
    fn disk_ops_persist_plain_keys_and_unpersist_rebound_ones() {
        let mut core = core();
        let lease = core
            .grant_lease(Duration::from_secs(9), Instant::now())
            .unwrap();
        put(&mut core, "/plain", None);
        put(&mut core, "/leased", Some(lease.id));
        let plan = core
            .plan_txn(&Txn {
                compares: vec![],
                success: vec![
                    Op::Put {
                        key: "/plain".into(),
                        value: vec![],
                        lease: Some(lease.id),
                    },
                    Op::put("/leased", vec![]),
                    Op::Put {
                        key: "/new-leased".into(),
                        value: vec![],
                        lease: Some(lease.id),
                    },
                ],
                failure: vec![],
            })
            .unwrap();
        let ops: Vec<String> = disk_ops(&plan.changes)
            .iter()
            .map(|op| {
                format!("{op:?}")
                    .split('{')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(ops, ["Delete(\"/plain\")", "Put(KeyValue "]);
        let only_leased = core
            .plan_txn(&Txn {
                compares: vec![],
                success: vec![Op::Put {
                    key: "/leased".into(),
                    value: vec![1],
                    lease: Some(lease.id),
                }],
                failure: vec![],
            })
            .unwrap();
        assert!(disk_ops(&only_leased.changes).is_empty());
    }
}
