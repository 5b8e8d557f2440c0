//! The embedded backend: the whole coordination store inside one process,
//! persisted in a `redb` file.
//!
//! This is what `tandem up` runs on one machine. Its guarantees are those of
//! [`Store`]; its design is chosen for the failover latency target (< 20 ms
//! p99), which is bounded by store round trips:
//!
//! - **State in memory.** The authoritative state (keys, revision counter,
//!   leases, a bounded history of recent events, watchers) lives in memory
//!   behind one mutex, held for microseconds: never across disk I/O or an
//!   await. Reads, lease grants and keep-alives take only that mutex, so
//!   they never wait for the disk (a keep-alive is not delayed by other
//!   clients' fsyncs).
//! - **One writer at a time.** Writes that change keys (put, delete, txn,
//!   revoke, lease expiry) are serialized by a fair (FIFO) async writer lock
//!   that also owns the database file. A write is planned under the state
//!   mutex, made durable without it, then applied under it; since only the
//!   writer changes keys, nothing interleaves, and commit order = revision
//!   order = watch delivery order.
//! - **Durable where it matters.** A write that touches at least one key
//!   *not* bound to a lease is committed to the `redb` file with fsync
//!   before it is visible (to readers or watchers) and before the call
//!   returns. Keys bound to a lease are **not persisted**: in embedded mode
//!   every lease holder runs in the same process as the store, so after a
//!   restart no lease can still be held. Writes that touch only leased keys
//!   (lease acquisition, renewal, expiry: the failover path) cost no disk
//!   I/O. The fsync runs inside the caller's call (no await between it and
//!   the apply, so cancelling a write cannot leave disk and memory apart),
//!   via `block_in_place` on a multi-threaded tokio runtime.
//! - **Revisions never go backwards across a restart.** The file holds a
//!   revision *ceiling* a block ([`REVISION_CEILING_STEP`]) above the last
//!   revision handed out; a write that would pass it first raises it on disk
//!   (one fsync per block of memory-only writes). On open the store
//!   continues above the ceiling, so every revision after a restart is
//!   greater than any seen before it, leased writes included.
//! - **Watches** replay from an in-memory history ring of recent events
//!   (see [`EmbeddedOptions`]); a watch that starts before the oldest kept
//!   revision, or before a restart, fails with [`StoreError::Compacted`].
//!   Each watcher has a bounded buffer; a watcher whose consumer falls behind
//!   is dropped and its stream ends with [`StoreError::WatchLost`].
//! - **Leases** expire by a background task that sleeps until the earliest
//!   deadline (every write also expires due leases first). A keep-alive
//!   after the deadline fails even if the expiry has not run yet. Lease ids
//!   start from a time-based value, so ids are not reused across restarts.
//! - **A disk failure** (failed commit) makes every later key write fail
//!   with [`StoreError::Internal`]; reads, keep-alives and lease expiry go
//!   on in memory.
//!
//! Limits: keys up to [`MAX_KEY_BYTES`], values up to [`MAX_VALUE_BYTES`],
//! at most [`MAX_TXN_OPS`] ops per transaction branch (etcd's default), and
//! a transaction branch may write each key at most once (as in etcd).

mod core;
mod disk;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use self::core::{Core, validate_txn};
use self::disk::Disk;
use crate::{
    KeyValue, Lease, LeaseId, Listing, Op, OpResult, Result, Revision, Store, StoreError, Txn,
    TxnResponse, WatchStream,
};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest value accepted, in bytes (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most operations accepted in one branch of a transaction, and most
/// compares (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// How far above the last handed-out revision the persisted revision
/// ceiling is set: memory-only writes cost one fsync per this many
/// revisions, and a restart skips at most this many revisions.
pub const REVISION_CEILING_STEP: u64 = 1_000_000;
/// A writer raises the persisted revision ceiling before it plans a write
/// when fewer than this many revisions are left below it, so the revisions
/// of one write (a txn, plus any lease expiries before it) never pass it.
const REVISION_CEILING_HEADROOM: u64 = REVISION_CEILING_STEP / 2;

/// Tunables of an [`EmbeddedStore`]; the defaults suit tandem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Events buffered per watcher before a consumer that does not keep up
    /// is dropped with [`StoreError::WatchLost`].
    pub watch_buffer_events: usize,
    /// Most events kept for watch replay.
    pub history_max_events: usize,
    /// Most bytes (keys + values + a fixed overhead per event) kept for
    /// watch replay.
    pub history_max_bytes: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            watch_buffer_events: 4096,
            history_max_events: 100_000,
            history_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The embedded coordination store. Cheap to share as `Arc<EmbeddedStore>`
/// (or `Arc<dyn Store>`); dropping the last `Arc` (or calling
/// [`EmbeddedStore::close`]) closes the database file.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The state; held briefly, never across I/O or an await.
    core: Mutex<Core>,
    /// Serializes key writes (FIFO) and owns the database file.
    writer: tokio::sync::Mutex<Writer>,
    /// Wakes the lease-expiry task: a sooner deadline appeared, or the store
    /// closed.
    wake: Arc<Notify>,
    expiry_task_started: AtomicBool,
    path: Option<PathBuf>,
}

/// What the writer lock guards.
struct Writer {
    /// The database file (`None`: in memory, or closed).
    disk: Option<Disk>,
    /// Set when a disk write failed: key writes are refused from then on.
    failed: Option<String>,
}

impl Writer {
    fn check_writable(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(StoreError::Internal(format!(
                "embedded store refuses writes after a disk failure: {why}"
            ))),
            None => Ok(()),
        }
    }

    /// Commits to disk (fsync), recording a failure.
    fn commit(&mut self, ops: &[disk::DiskOp<'_>], new_ceiling: Option<Revision>) -> Result<()> {
        let Some(disk) = self.disk.as_mut() else {
            return Ok(());
        };
        let result = blocking(|| disk.commit(ops, new_ceiling));
        if let Err(e) = &result {
            tracing::error!(
                path = %disk.path().display(),
                error = %e,
                "embedded store: disk write failed; refusing key writes from now on"
            );
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Raises the persisted revision ceiling if `revision` is close to it.
    fn ensure_headroom(&mut self, revision: Revision) -> Result<()> {
        let needed = revision.saturating_add(REVISION_CEILING_HEADROOM);
        match &self.disk {
            Some(disk) if disk.ceiling() < needed => {
                self.commit(&[], Some(revision.saturating_add(REVISION_CEILING_STEP)))
            }
            _ => Ok(()),
        }
    }
}

/// Runs blocking disk I/O: through `block_in_place` on a multi-threaded
/// tokio runtime (other tasks move to other workers), inline otherwise.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// A lease-id start that differs across restarts: microseconds since the
/// Unix epoch.
fn first_lease_id() -> LeaseId {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| LeaseId::try_from(d.as_micros()).ok())
        .unwrap_or(1)
        .max(1)
}

impl EmbeddedStore {
    /// Opens (creating if needed) a store persisted in `dir` (created if
    /// missing), with default options. Call it inside a tokio runtime: it
    /// spawns the lease-expiry task (without a runtime, leases still expire,
    /// but only when the store is next used).
    pub fn open(dir: &Path) -> Result<Arc<EmbeddedStore>> {
        Self::open_with(dir, EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::open`] with explicit options.
    pub fn open_with(dir: &Path, options: EmbeddedOptions) -> Result<Arc<EmbeddedStore>> {
        let (disk, loaded) = disk::Disk::open(dir, REVISION_CEILING_STEP)?;
        tracing::info!(
            path = %disk.path().display(),
            keys = loaded.kvs.len(),
            revision = loaded.revision,
            "embedded store opened"
        );
        let path = disk.path().to_owned();
        let core = Core::new(options, Some(loaded), first_lease_id());
        Ok(Self::start(core, Some(disk), Some(path)))
    }

    /// A store that persists nothing (tests, benchmarks), with default
    /// options.
    pub fn in_memory() -> Arc<EmbeddedStore> {
        Self::in_memory_with(EmbeddedOptions::default())
    }

    /// [`EmbeddedStore::in_memory`] with explicit options.
    pub fn in_memory_with(options: EmbeddedOptions) -> Arc<EmbeddedStore> {
        Self::start(Core::new(options, None, first_lease_id()), None, None)
    }

    fn start(core: Core, disk: Option<Disk>, path: Option<PathBuf>) -> Arc<EmbeddedStore> {
        let inner = Arc::new(Inner {
            core: Mutex::new(core),
            writer: tokio::sync::Mutex::new(Writer { disk, failed: None }),
            wake: Arc::new(Notify::new()),
            expiry_task_started: AtomicBool::new(false),
            path,
        });
        inner.ensure_expiry_task();
        Arc::new(EmbeddedStore { inner })
    }

    /// The database file, or `None` for an in-memory store.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Closes the store: once this returns, the database file is closed (so
    /// the directory can be opened again at once), watch streams end with
    /// [`StoreError::Unavailable`], and every later call fails with it.
    /// Leases end without events. Dropping the last `Arc` does the same,
    /// except that a write in flight in the lease-expiry task at that moment
    /// delays the file's close until it ends; call this for a
    /// deterministic close.
    pub async fn close(&self) {
        self.inner.shutdown();
        self.inner.writer.lock().await.disk = None;
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

impl Inner {
    fn lock(&self) -> Result<MutexGuard<'_, Core>> {
        self.core.lock().map_err(|_| {
            StoreError::Internal("embedded store state lock poisoned by a panic".to_owned())
        })
    }

    /// Marks the store closed, and closes the database file unless a write
    /// holds it (that writer closes it when it sees the store closed).
    fn shutdown(&self) {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        if !core.is_closed() {
            core.close();
            if let Some(path) = &self.path {
                tracing::info!(path = %path.display(), "embedded store closed");
            }
        }
        drop(core);
        if let Ok(mut writer) = self.writer.try_lock() {
            writer.disk = None;
        }
        self.wake.notify_one();
    }

    /// Takes the writer lock for a key write: checks the store is open and
    /// writable and raises the revision ceiling if needed, then expires due
    /// leases. Returns the writer guard.
    async fn begin_write(&self) -> Result<tokio::sync::MutexGuard<'_, Writer>> {
        let mut writer = self.writer.lock().await;
        let revision = {
            let core = self.lock()?;
            if let Err(e) = core.check_open() {
                writer.disk = None;
                return Err(e);
            }
            core.revision()
        };
        writer.check_writable()?;
        writer.ensure_headroom(revision)?;
        self.lock()?.expire_due(Instant::now());
        Ok(writer)
    }

    /// Runs a transaction: plan under the state lock, fsync what must be
    /// durable (writer lock only), apply under the state lock.
    async fn txn(&self, txn: &Txn) -> Result<TxnResponse> {
        validate_txn(txn)?;
        let read_only = txn
            .success
            .iter()
            .chain(&txn.failure)
            .all(|op| matches!(op, Op::Get { .. }));
        if read_only {
            // No writer lock: a pure read.
            let plan = self.lock()?.plan_txn(txn)?;
            return Ok(TxnResponse {
                succeeded: plan.succeeded,
                revision: plan.base_revision,
                results: plan.results,
            });
        }
        let mut writer = self.begin_write().await?;
        let plan = self.lock()?.plan_txn(txn)?;
        if plan.changes.is_empty() {
            return Ok(TxnResponse {
                succeeded: plan.succeeded,
                revision: plan.base_revision,
                results: plan.results,
            });
        }
        let ops = core::disk_ops(&plan.changes);
        if !ops.is_empty() {
            writer.commit(&ops, None)?;
        }
        drop(ops);
        let revision = self.lock()?.apply(plan.changes);
        debug_assert_eq!(revision, plan.base_revision + 1);
        drop(writer);
        Ok(TxnResponse {
            succeeded: plan.succeeded,
            revision,
            results: plan.results,
        })
    }

    /// Spawns the lease-expiry task once, if a tokio runtime is available.
    fn ensure_expiry_task(self: &Arc<Self>) {
        if self.expiry_task_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.expiry_task_started.swap(true, Ordering::AcqRel) {
            return;
        }
        runtime.spawn(expire_leases(Arc::downgrade(self), self.wake.clone()));
    }
}

/// Ends leases at their deadlines, so their keys vanish (with watch events)
/// even when nobody uses the store. Holds the store only weakly and exits
/// when it is closed or dropped.
async fn expire_leases(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let mut writer = inner.writer.lock().await;
            let Ok(mut core) = inner.core.lock() else {
                return;
            };
            if core.is_closed() {
                writer.disk = None;
                return;
            }
            let revision = core.revision();
            if core.next_deadline().is_some_and(|d| d <= Instant::now()) {
                // Keep the state lock off the disk: release it for the
                // (rare) ceiling raise.
                drop(core);
                if let Err(e) = writer.ensure_headroom(revision) {
                    tracing::error!(error = %e, "embedded store: expiring leases anyway");
                }
                let Ok(relocked) = inner.core.lock() else {
                    return;
                };
                core = relocked;
                core.expire_due(Instant::now());
            }
            core.next_deadline()
        };
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[async_trait::async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner.lock()?.get(key)
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.inner.lock()?.list(prefix)
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let txn = Txn {
            compares: Vec::new(),
            success: vec![Op::Put {
                key: key.to_owned(),
                value,
                lease,
            }],
            failure: Vec::new(),
        };
        Ok(self.inner.txn(&txn).await?.revision)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let txn = Txn {
            compares: Vec::new(),
            success: vec![Op::delete(key)],
            failure: Vec::new(),
        };
        let response = self.inner.txn(&txn).await?;
        Ok(matches!(
            response.results.first(),
            Some(OpResult::Delete(true))
        ))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.inner.txn(&txn).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease> {
        let lease = {
            let mut core = self.inner.lock()?;
            core.grant_lease(ttl, Instant::now())?
        };
        self.inner.ensure_expiry_task();
        self.inner.wake.notify_one();
        Ok(lease)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let mut core = self.inner.lock()?;
        core.keep_alive(lease, Instant::now())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        // Revoking deletes only leased keys (memory only), so it needs the
        // writer lock but no disk, and works even after a disk failure.
        let mut writer = self.inner.writer.lock().await;
        let mut core = self.inner.lock()?;
        if let Err(e) = core.check_open() {
            writer.disk = None;
            return Err(e);
        }
        core.revoke_lease(lease, Instant::now())
    }

    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream> {
        let receiver = self.inner.lock()?.watch(prefix, start)?;
        Ok(Box::pin(receiver))
    }
}
