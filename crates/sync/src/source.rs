//! The primary side: a [`Source`] watches the admin directory, coalesces
//! changes into numbered batches and ships them to every receiver, one
//! worker per receiver.
//!
//! # How a receiver is kept in line
//!
//! Each detected batch gets the next sequence number `seq` and joins every
//! worker's queue. A worker starts with a full resynchronisation, then
//! pushes its queue in order. When a push fails it resynchronises again,
//! with backoff ([`BACKOFF_MIN_MS`] doubling to [`BACKOFF_MAX_MS`]), until
//! one succeeds. A resynchronisation fetches the receiver's manifest, takes
//! the current `seq` as `S` and drops the queued batches (all `<= S`: the
//! files read after that include them), then sends what differs as parts of
//! `S` and removes what the source does not have. Batches detected after
//! that follow in order.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::event::{SyncError, SyncEvent, emit};
use crate::fsops::{self, Content, Found};
use crate::wire::{
    self, ErrorBody, MAX_CHANGES_PER_PUSH, Manifest, ManifestEntry, PUSH_CONTENT_TYPE, PushAck,
    PushHeader, RESERVED_PREFIX, SIGNATURE_HEADER, TIMESTAMP_HEADER, WireChange,
};
use crate::{SyncConfig, lock, now_ms};

/// How long the source waits for more events after the last one before it
/// ships a batch.
pub const COALESCE_QUIET_MS: u64 = 1;
/// The longest a batch waits for more events after its first.
pub const COALESCE_MAX_MS: u64 = 50;
/// The first retry delay after a failure.
pub const BACKOFF_MIN_MS: u64 = 100;
/// The longest retry delay.
pub const BACKOFF_MAX_MS: u64 = 5_000;
/// How many recent lag samples are kept per receiver.
pub const LAG_SAMPLES: usize = 512;
/// How long a receiver with nothing to push waits before its whole tree is
/// compared again (a resynchronisation that ships only differences): a
/// backup's directory changed by anything but this mirror (a deposed
/// primary's late write, a person) is put right within this.
pub const VERIFY_EVERY_MS: u64 = 5_000;
/// The most content bytes in one push (a larger single file goes alone).
pub const PUSH_BYTES: usize = 16 * 1024 * 1024;
/// The most bytes of batches queued for one receiver: past that the queue
/// is dropped and the receiver resynchronised.
pub const MAX_QUEUE_BYTES: usize = 256 * 1024 * 1024;
/// The most paths of the push headers' in one push, in bytes.
const PUSH_PATH_BYTES: usize = 2 * 1024 * 1024;
/// The most entries kept to count a receiver's pending changes.
const MAX_UNACKED_ENTRIES: usize = 4096;
/// How many file-system events may wait for the coalescer.
const EVENT_QUEUE: usize = 4096;

/// One app's admin data being shipped from the local primary instance to
/// its backups, at one epoch. Dropping it stops it too, without waiting.
pub struct Source {
    shared: Arc<Shared>,
    watcher: Option<notify::RecommendedWatcher>,
    coalescer: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// Where the source is, and how each receiver is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The app.
    pub app: String,
    /// The source instance.
    pub instance: String,
    /// The source's epoch.
    pub epoch: u64,
    /// The last change sequence number assigned: a receiver whose
    /// `acked_seq` reaches it has every change detected so far.
    pub seq: u64,
    /// Each receiver by instance name.
    pub receivers: BTreeMap<String, ReceiverStatus>,
}

/// How one receiver is doing, as the source sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiverStatus {
    /// Its base URL.
    pub url: String,
    /// Every change the source detected up to this sequence number is
    /// durable on the receiver.
    pub acked_seq: u64,
    /// Changes detected but not acknowledged yet.
    pub pending: u64,
    /// Resynchronised since the last failure, and nothing pending.
    pub in_sync: bool,
    /// The error of the last failed attempt; cleared once a
    /// resynchronisation succeeds.
    pub last_error: Option<String>,
    /// Detection to acknowledgement of the last push of live changes, in ms.
    pub last_lag_ms: Option<f64>,
    /// The median of `lag_samples_ms`.
    pub lag_p50_ms: Option<f64>,
    /// The 99th percentile of `lag_samples_ms`.
    pub lag_p99_ms: Option<f64>,
    /// The last [`LAG_SAMPLES`] lags (detection to acknowledgement, per push
    /// of live changes; resynchronisations are not sampled), oldest first.
    pub lag_samples_ms: Vec<f64>,
    /// Pushes acknowledged (resynchronisation parts included).
    pub pushes: u64,
    /// Full resynchronisations completed.
    pub resyncs: u64,
}

struct Shared {
    app: String,
    instance: String,
    epoch: u64,
    dir: PathBuf,
    secret: Option<Vec<u8>>,
    events: mpsc::Sender<SyncEvent>,
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    status: watch::Sender<SourceStatus>,
    hub: Mutex<Hub>,
    /// Skipped paths already reported, so a link is reported once.
    reported: Mutex<HashSet<(String, String)>>,
}

#[derive(Default)]
struct Hub {
    seq: u64,
    workers: BTreeMap<String, WorkerHandle>,
    retired: Vec<JoinHandle<()>>,
}

struct WorkerHandle {
    url: String,
    queue: Arc<Queue>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A change read on the source, ready to ship.
struct Change {
    wire: WireChange,
    data: Option<Arc<Vec<u8>>>,
    detected: Instant,
}

struct Batch {
    seq: u64,
    changes: Vec<Change>,
    bytes: usize,
}

#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Notify,
}

#[derive(Default)]
struct QueueState {
    batches: VecDeque<Arc<Batch>>,
    bytes: usize,
    /// A resynchronisation is needed (queue overflowed, events lost).
    resync: bool,
    /// Resynchronised since the last failure.
    resynced: bool,
    /// (seq, changes) of batches not acknowledged yet.
    unacked: VecDeque<(u64, u64)>,
}

impl Queue {
    fn push(&self, batch: &Arc<Batch>) {
        let mut q = lock(&self.state);
        let n = batch.changes.len() as u64;
        if q.unacked.len() >= MAX_UNACKED_ENTRIES
            && let Some((_, c)) = q.unacked.pop_back()
        {
            // Merge into the newer entry: pending stays exact once that
            // one is acknowledged.
            q.unacked.push_back((batch.seq, c + n));
        } else {
            q.unacked.push_back((batch.seq, n));
        }
        if q.resync || q.bytes + batch.bytes > MAX_QUEUE_BYTES {
            q.batches.clear();
            q.bytes = 0;
            q.resync = true;
        } else {
            q.bytes += batch.bytes;
            q.batches.push_back(batch.clone());
        }
        drop(q);
        self.wake.notify_one();
    }

    /// A queue whose receiver starts with a resynchronisation.
    fn new() -> Queue {
        let queue = Queue::default();
        lock(&queue.state).resync = true;
        queue
    }

    /// Marks the receiver for a resynchronisation: queued batches are
    /// dropped (the resynchronisation covers them) and so are new ones
    /// until it starts.
    fn request_resync(&self) {
        {
            let mut q = lock(&self.state);
            q.resync = true;
            q.resynced = false;
            q.batches.clear();
            q.bytes = 0;
        }
        self.wake.notify_one();
    }

    fn ack(&self, seq: u64) {
        let mut q = lock(&self.state);
        while q.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            q.unacked.pop_front();
        }
    }

    /// (pending, in sync)
    fn summary(&self) -> (u64, bool) {
        let q = lock(&self.state);
        let pending: u64 = q.unacked.iter().map(|(_, n)| n).sum();
        (pending, q.resynced && !q.resync && pending == 0)
    }
}

impl Source {
    /// Starts watching `cfg.dir` (created if missing) for the local primary
    /// `instance` of `cfg.app` at `epoch`. Nothing is shipped until
    /// [`Source::set_receivers`] names the backups.
    ///
    /// # Errors
    ///
    /// When the directory is a file or cannot be created, or the watch or
    /// the HTTP client cannot be set up.
    pub async fn start(
        cfg: SyncConfig,
        instance: String,
        epoch: u64,
        events: mpsc::Sender<SyncEvent>,
    ) -> Result<Source, SyncError> {
        let dir = fsops::prepare_dir(&cfg.dir)?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| SyncError::Client(chain(&e)))?;
        let (status, _) = watch::channel(SourceStatus {
            app: cfg.app.clone(),
            instance: instance.clone(),
            epoch,
            seq: 0,
            receivers: BTreeMap::new(),
        });
        let shared = Arc::new(Shared {
            app: cfg.app,
            instance,
            epoch,
            dir: dir.clone(),
            secret: cfg.secret,
            events,
            client,
            runtime: tokio::runtime::Handle::current(),
            status,
            hub: Mutex::new(Hub::default()),
            reported: Mutex::new(HashSet::new()),
        });
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let mut watcher =
            notify::recommended_watcher(move |res| forward(&tx, res)).map_err(|e| {
                SyncError::Watch {
                    path: dir.clone(),
                    error: e.to_string(),
                }
            })?;
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|e| SyncError::Watch {
                path: dir.clone(),
                error: e.to_string(),
            })?;
        let (stop, stop_rx) = watch::channel(false);
        let coalescer = tokio::spawn(coalesce(shared.clone(), rx, stop_rx));
        Ok(Source {
            shared,
            watcher: Some(watcher),
            coalescer: Some(coalescer),
            stop,
        })
    }

    /// Sets the backups to ship to: (instance, base URL of its agent, e.g.
    /// `http://10.0.0.2:7400`). A new receiver, or one whose URL changed,
    /// starts with a full resynchronisation; a receiver left out is
    /// forgotten.
    pub fn set_receivers(&self, receivers: Vec<(String, String)>) {
        let wanted: BTreeMap<String, String> = receivers.into_iter().collect();
        let mut hub = lock(&self.shared.hub);
        let gone: Vec<String> = hub
            .workers
            .iter()
            .filter(|(name, w)| wanted.get(*name) != Some(&w.url))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(w) = hub.workers.remove(&name) {
                let _ = w.stop.send(true);
                hub.retired.push(w.task);
            }
            self.shared.status.send_modify(|s| {
                s.receivers.remove(&name);
            });
        }
        hub.retired.retain(|t| !t.is_finished());
        for (name, url) in wanted {
            if hub.workers.contains_key(&name) {
                continue;
            }
            let queue = Arc::new(Queue::new());
            let (stop, stop_rx) = watch::channel(false);
            self.shared.status.send_modify(|s| {
                s.receivers.insert(
                    name.clone(),
                    ReceiverStatus {
                        url: url.clone(),
                        ..ReceiverStatus::default()
                    },
                );
            });
            let worker = Worker {
                shared: self.shared.clone(),
                name: name.clone(),
                base: url.trim_end_matches('/').to_string(),
                queue: queue.clone(),
            };
            let task = self.shared.runtime.spawn(worker.run(stop_rx));
            hub.workers.insert(
                name,
                WorkerHandle {
                    url,
                    queue,
                    stop,
                    task,
                },
            );
        }
    }

    /// The last change sequence number assigned.
    pub fn seq(&self) -> u64 {
        lock(&self.shared.hub).seq
    }

    /// Where the source is, and how each receiver is doing.
    pub fn status(&self) -> SourceStatus {
        self.shared.status.borrow().clone()
    }

    /// A channel that sees every change of [`Source::status`].
    pub fn watch(&self) -> watch::Receiver<SourceStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until `receiver` has acknowledged every change up to `seq`
    /// (wrap it in a timeout).
    ///
    /// # Errors
    ///
    /// When `receiver` is not (or no longer) configured, or the source
    /// stopped.
    pub async fn wait_acked(&self, receiver: &str, seq: u64) -> Result<(), SyncError> {
        let mut rx = self.watch();
        loop {
            match rx.borrow_and_update().receivers.get(receiver) {
                None => return Err(SyncError::UnknownReceiver(receiver.to_string())),
                Some(r) if r.acked_seq >= seq => return Ok(()),
                Some(_) => {}
            }
            rx.changed().await.map_err(|_| SyncError::Stopped)?;
        }
    }

    /// Stops watching and shipping, and waits for every task to end (a push
    /// in flight is abandoned).
    pub async fn stop(mut self) {
        self.watcher = None;
        let _ = self.stop.send(true);
        let tasks = {
            let mut hub = lock(&self.shared.hub);
            let mut tasks: Vec<JoinHandle<()>> = hub.retired.drain(..).collect();
            for (_, w) in std::mem::take(&mut hub.workers) {
                let _ = w.stop.send(true);
                tasks.push(w.task);
            }
            tasks
        };
        if let Some(c) = self.coalescer.take() {
            let _ = c.await;
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for w in lock(&self.shared.hub).workers.values() {
            let _ = w.stop.send(true);
        }
    }
}

/// What the watcher hands the coalescer.
enum Signal {
    Paths(Vec<PathBuf>, Instant, u64),
    Lost(String),
}

/// The watcher's callback (on notify's thread).
fn forward(tx: &mpsc::Sender<Signal>, res: notify::Result<notify::Event>) {
    let signal = match res {
        Ok(ev) => {
            if ev.need_rescan() {
                let _ =
                    tx.blocking_send(Signal::Lost("the kernel's event queue overflowed".into()));
            }
            match ev.kind {
                // Reads (ours included) change nothing.
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
                EventKind::Access(_) => return,
                _ => {}
            }
            if ev.paths.is_empty() {
                return;
            }
            Signal::Paths(ev.paths, Instant::now(), now_ms())
        }
        Err(e) => Signal::Lost(e.to_string()),
    };
    let _ = tx.blocking_send(signal);
}

/// Gathers events into batches and hands them to every worker.
async fn coalesce(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Signal>,
    mut stop: watch::Receiver<bool>,
) {
    let quiet = Duration::from_millis(COALESCE_QUIET_MS);
    let longest = Duration::from_millis(COALESCE_MAX_MS);
    loop {
        let first = tokio::select! {
            s = rx.recv() => s,
            _ = stop.changed() => return,
        };
        let Some(first) = first else { return };
        let began = tokio::time::Instant::now();
        let mut paths: BTreeMap<String, (Instant, u64)> = BTreeMap::new();
        let mut lost: Option<String> = None;
        shared.absorb(first, &mut paths, &mut lost);
        loop {
            let deadline = (tokio::time::Instant::now() + quiet).min(began + longest);
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => shared.absorb(s, &mut paths, &mut lost),
                Ok(None) | Err(_) => break,
            }
        }
        if let Some(error) = lost {
            emit(
                &shared.events,
                SyncEvent::WatchTrouble {
                    app: shared.app.clone(),
                    instance: shared.instance.clone(),
                    error,
                },
            );
            for w in lock(&shared.hub).workers.values() {
                w.queue.request_resync();
            }
        }
        if paths.is_empty() {
            continue;
        }
        let s = shared.clone();
        let changes = tokio::task::spawn_blocking(move || s.read_changes(paths)).await;
        match changes {
            Ok(changes) if !changes.is_empty() => shared.enqueue(changes),
            Ok(_) => {}
            Err(e) => tracing::error!(target: "tandem_sync", "reading changes failed: {e}"),
        }
    }
}

impl Shared {
    fn absorb(
        &self,
        signal: Signal,
        paths: &mut BTreeMap<String, (Instant, u64)>,
        lost: &mut Option<String>,
    ) {
        match signal {
            Signal::Lost(e) => *lost = Some(e),
            Signal::Paths(list, at, ms) => {
                for p in list {
                    let Ok(rel) = p.strip_prefix(&self.dir) else {
                        continue;
                    };
                    let Some(rel) = rel.to_str() else {
                        continue;
                    };
                    if rel.is_empty() {
                        // The directory itself moved or vanished.
                        if !self.dir.is_dir() {
                            *lost = Some(format!(
                                "the admin directory {} is gone",
                                self.dir.display()
                            ));
                        }
                        continue;
                    }
                    if rel.split('/').any(|c| c.starts_with(RESERVED_PREFIX)) {
                        continue;
                    }
                    paths.entry(rel.to_string()).or_insert((at, ms));
                }
            }
        }
    }

    fn skipped(&self, path: &str, reason: &str) {
        {
            let mut reported = lock(&self.reported);
            if reported.len() > 10_000 {
                reported.clear();
            }
            if !reported.insert((path.to_string(), reason.to_string())) {
                return;
            }
        }
        emit(
            &self.events,
            SyncEvent::Skipped {
                app: self.app.clone(),
                instance: self.instance.clone(),
                path: path.to_string(),
                reason: reason.to_string(),
            },
        );
    }

    /// Reads what is now at each path (blocking).
    fn read_changes(&self, paths: BTreeMap<String, (Instant, u64)>) -> Vec<Change> {
        let mut out: BTreeMap<String, Change> = BTreeMap::new();
        for (rel, (detected, detected_ms)) in paths {
            let abs = self.dir.join(&rel);
            match fsops::read_path(&abs) {
                Content::File(data, mode) => {
                    out.insert(
                        rel.clone(),
                        write_change(rel, data, mode, detected, detected_ms),
                    );
                }
                Content::Missing => {
                    out.insert(
                        rel.clone(),
                        Change {
                            wire: WireChange::Remove {
                                path: rel,
                                detected_ms,
                            },
                            data: None,
                            detected,
                        },
                    );
                }
                Content::Dir => {
                    out.insert(
                        rel.clone(),
                        mkdir_change(rel.clone(), detected, detected_ms),
                    );
                    for (sub, found) in fsops::walk(&self.dir, &rel, &mut |p, r| self.skipped(p, r))
                    {
                        match found {
                            Found::Dir => {
                                out.insert(sub.clone(), mkdir_change(sub, detected, detected_ms));
                            }
                            Found::File => match fsops::read_path(&self.dir.join(&sub)) {
                                Content::File(data, mode) => {
                                    out.insert(
                                        sub.clone(),
                                        write_change(sub, data, mode, detected, detected_ms),
                                    );
                                }
                                Content::Skip(reason, _) => self.skipped(&sub, &reason),
                                // Changed meanwhile: its own event follows.
                                Content::Missing | Content::Dir => {}
                            },
                        }
                    }
                }
                Content::Skip(reason, absent) => {
                    self.skipped(&rel, &reason);
                    if absent {
                        // A link or special file now: the mirror has no
                        // file there.
                        out.insert(
                            rel.clone(),
                            Change {
                                wire: WireChange::Remove {
                                    path: rel,
                                    detected_ms,
                                },
                                data: None,
                                detected,
                            },
                        );
                    }
                }
            }
        }
        out.into_values().collect()
    }

    /// Numbers a batch and queues it for every receiver.
    fn enqueue(&self, changes: Vec<Change>) {
        let bytes = changes
            .iter()
            .map(|c| c.data.as_ref().map_or(0, |d| d.len()) + c.wire.path().len() + 64)
            .sum();
        let summaries: Vec<(String, u64, bool)> = {
            let mut hub = lock(&self.hub);
            hub.seq += 1;
            let batch = Arc::new(Batch {
                seq: hub.seq,
                changes,
                bytes,
            });
            hub.workers
                .iter()
                .map(|(name, w)| {
                    w.queue.push(&batch);
                    let (pending, in_sync) = w.queue.summary();
                    (name.clone(), pending, in_sync)
                })
                .collect()
        };
        let seq = lock(&self.hub).seq;
        self.status.send_modify(|s| {
            s.seq = s.seq.max(seq);
            for (name, pending, in_sync) in summaries {
                if let Some(r) = s.receivers.get_mut(&name) {
                    r.pending = pending;
                    r.in_sync = in_sync;
                }
            }
        });
    }
}

fn write_change(
    path: String,
    data: Vec<u8>,
    mode: u32,
    detected: Instant,
    detected_ms: u64,
) -> Change {
    Change {
        wire: WireChange::Write {
            path,
            size: data.len() as u64,
            sha256: wire::sha256_hex(&data),
            mode,
            detected_ms,
        },
        data: Some(Arc::new(data)),
        detected,
    }
}

fn mkdir_change(path: String, detected: Instant, detected_ms: u64) -> Change {
    Change {
        wire: WireChange::Mkdir { path, detected_ms },
        data: None,
        detected,
    }
}

/// Splits changes into parts within the push limits.
fn parts<T>(items: &[T], size: impl Fn(&T) -> (usize, usize)) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let (mut bytes, mut path_bytes) = (0usize, 0usize);
    for (i, item) in items.iter().enumerate() {
        let (b, p) = size(item);
        let n = i - start;
        if n > 0
            && (bytes + b > PUSH_BYTES
                || path_bytes + p > PUSH_PATH_BYTES
                || n >= MAX_CHANGES_PER_PUSH / 4)
        {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
            path_bytes = 0;
        }
        bytes += b;
        path_bytes += p;
    }
    if start < items.len() || out.is_empty() {
        out.push(&items[start..]);
    }
    out
}

/// What a resynchronisation did.
struct Resynced {
    seq: u64,
    sent: u64,
    removed: u64,
    unchanged: u64,
}

/// One operation a resynchronisation plans.
enum Plan {
    Remove(String),
    Mkdir(String),
    Write(String),
}

/// Ships to one receiver.
struct Worker {
    shared: Arc<Shared>,
    name: String,
    base: String,
    queue: Arc<Queue>,
}

impl Worker {
    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff_ms = BACKOFF_MIN_MS;
        loop {
            if *stop.borrow() {
                return;
            }
            let resync = lock(&self.queue.state).resync;
            if resync {
                let result = tokio::select! {
                    r = self.resync() => r,
                    _ = stop.changed() => return,
                };
                match result {
                    Ok(r) => {
                        backoff_ms = BACKOFF_MIN_MS;
                        self.queue.ack(r.seq);
                        lock(&self.queue.state).resynced = true;
                        self.update(|s| {
                            s.acked_seq = s.acked_seq.max(r.seq);
                            s.last_error = None;
                            s.resyncs += 1;
                        });
                        self.resynced(&r);
                    }
                    Err(error) => {
                        self.queue.request_resync();
                        self.update(|s| s.last_error = Some(error.clone()));
                        emit(
                            &self.shared.events,
                            SyncEvent::ResyncFailed {
                                app: self.shared.app.clone(),
                                receiver: self.name.clone(),
                                error,
                                retry_ms: backoff_ms,
                            },
                        );
                        if !sleep(&mut stop, backoff_ms).await {
                            return;
                        }
                        backoff_ms = (backoff_ms * 2).min(BACKOFF_MAX_MS);
                    }
                }
                continue;
            }
            let next = lock(&self.queue.state).batches.pop_front();
            let Some(batch) = next else {
                let verify = tokio::select! {
                    _ = self.queue.wake.notified() => false,
                    _ = tokio::time::sleep(Duration::from_millis(VERIFY_EVERY_MS)) => true,
                    _ = stop.changed() => return,
                };
                if verify {
                    self.verify(&mut stop).await;
                }
                continue;
            };
            {
                let mut q = lock(&self.queue.state);
                q.bytes = q.bytes.saturating_sub(batch.bytes);
            }
            let result = tokio::select! {
                r = self.push_batch(&batch) => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(()) => {
                    self.queue.ack(batch.seq);
                    self.update(|s| s.acked_seq = s.acked_seq.max(batch.seq));
                }
                Err(error) => {
                    self.queue.request_resync();
                    self.update(|s| s.last_error = Some(error.clone()));
                    emit(
                        &self.shared.events,
                        SyncEvent::PushFailed {
                            app: self.shared.app.clone(),
                            receiver: self.name.clone(),
                            error,
                            retry_ms: backoff_ms,
                        },
                    );
                    if !sleep(&mut stop, backoff_ms).await {
                        return;
                    }
                }
            }
        }
    }

    /// Compares the receiver's whole tree with ours and ships what
    /// differs; says so only if something did. A failure is handled as any
    /// failed push (a resynchronisation with backoff follows).
    async fn verify(&self, stop: &mut watch::Receiver<bool>) {
        let result = tokio::select! {
            r = self.resync() => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(r) => {
                self.queue.ack(r.seq);
                self.update(|s| s.acked_seq = s.acked_seq.max(r.seq));
                if r.sent + r.removed > 0 {
                    self.resynced(&r);
                }
            }
            Err(error) => {
                self.queue.request_resync();
                self.update(|s| s.last_error = Some(error.clone()));
            }
        }
    }

    /// Says a resynchronisation shipped `r`.
    fn resynced(&self, r: &Resynced) {
        emit(
            &self.shared.events,
            SyncEvent::Resynced {
                app: self.shared.app.clone(),
                receiver: self.name.clone(),
                sent: r.sent,
                removed: r.removed,
                unchanged: r.unchanged,
            },
        );
    }

    /// Updates this receiver's status (pending and in_sync from the queue).
    fn update(&self, f: impl FnOnce(&mut ReceiverStatus)) {
        let (pending, in_sync) = self.queue.summary();
        self.shared.status.send_modify(|s| {
            if let Some(r) = s.receivers.get_mut(&self.name) {
                f(r);
                r.pending = pending;
                r.in_sync = in_sync;
            }
        });
    }

    async fn push_batch(&self, batch: &Batch) -> Result<(), String> {
        let chunks = parts(&batch.changes, |c| {
            (c.data.as_ref().map_or(0, |d| d.len()), c.wire.path().len())
        });
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let header = PushHeader {
                source: self.shared.instance.clone(),
                epoch: self.shared.epoch,
                seq: batch.seq,
                part: i as u32,
                complete: i == last,
                resync: false,
                changes: chunk.iter().map(|c| c.wire.clone()).collect(),
            };
            let contents: Vec<&[u8]> = chunk
                .iter()
                .filter_map(|c| c.data.as_deref().map(|d| d.as_slice()))
                .collect();
            self.send_push(&header, &contents).await?;
            let acked = Instant::now();
            if let Some(first) = chunk.iter().map(|c| c.detected).min() {
                let lag_ms = acked.duration_since(first).as_secs_f64() * 1000.0;
                self.update(|s| {
                    s.pushes += 1;
                    add_sample(s, lag_ms);
                });
            }
        }
        Ok(())
    }

    /// Sends one push; an answer other than "applied" is an error.
    async fn send_push(&self, header: &PushHeader, contents: &[&[u8]]) -> Result<(), String> {
        let body = wire::encode_push(header, contents)?;
        let path = format!("{}/push", self.route());
        let answer = self.request(reqwest::Method::POST, &path, body).await?;
        let ack: PushAck = serde_json::from_slice(&answer).map_err(|e| {
            format!(
                "{} answered a push with something unreadable: {e}",
                self.who()
            )
        })?;
        if !ack.applied {
            return Err(format!(
                "{} had already applied push {}.{}: its state and this source's disagree",
                self.who(),
                header.seq,
                header.part
            ));
        }
        Ok(())
    }

    fn who(&self) -> String {
        format!("{}/{}", self.shared.app, self.name)
    }

    fn route(&self) -> String {
        format!(
            "/v1/sync/{}/{}",
            wire::encode_segment(&self.shared.app),
            wire::encode_segment(&self.name)
        )
    }

    /// One signed HTTP request; the answer's body when it is 200.
    async fn request(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let url = format!("{}{path_and_query}", self.base);
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| format!("the URL {url} of {} is not valid: {e}", self.who()))?;
        let signed_path = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_string(),
        };
        // A generous deadline: 10 s plus 1 s per MiB.
        let timeout = Duration::from_secs(10 + (body.len() as u64 >> 20));
        let mut req = self
            .shared
            .client
            .request(method.clone(), parsed)
            .timeout(timeout);
        if let Some(secret) = &self.shared.secret {
            let ts = now_ms();
            let sig = wire::signature(secret, method.as_str(), &signed_path, ts, &body);
            req = req
                .header(TIMESTAMP_HEADER, ts.to_string())
                .header(SIGNATURE_HEADER, sig);
        }
        if method == reqwest::Method::POST {
            req = req.header(reqwest::header::CONTENT_TYPE, PUSH_CONTENT_TYPE);
        }
        let resp = req.body(body).send().await.map_err(|e| {
            format!(
                "cannot reach {} at {}: {}",
                self.who(),
                self.base,
                chain(&e)
            )
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("lost the answer of {}: {}", self.who(), chain(&e)))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let why = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        Err(format!(
            "{} answered {}: {why}",
            self.who(),
            status.as_u16()
        ))
    }

    async fn resync(&self) -> Result<Resynced, String> {
        let shared = &self.shared;
        let path = format!(
            "{}/manifest?source={}&epoch={}",
            self.route(),
            wire::encode_segment(&shared.instance),
            shared.epoch
        );
        let answer = self
            .request(reqwest::Method::GET, &path, Vec::new())
            .await?;
        let remote: Manifest = serde_json::from_slice(&answer)
            .map_err(|e| format!("{} sent an unreadable manifest: {e}", self.who()))?;
        // Take S and drop the queued batches: what is read from here on
        // includes them. A source restarted at the same epoch continues
        // above what the receiver holds.
        let floor = remote.applied.map_or(0, |k| k.seq);
        let seq = {
            let mut hub = lock(&shared.hub);
            hub.seq = hub.seq.max(floor);
            let mut q = lock(&self.queue.state);
            q.batches.clear();
            q.bytes = 0;
            q.resync = false;
            hub.seq
        };
        shared.status.send_modify(|s| s.seq = s.seq.max(seq));
        let s = shared.clone();
        let local = tokio::task::spawn_blocking(move || {
            fsops::manifest(&s.dir, &mut |p, r| s.skipped(p, r))
        })
        .await
        .map_err(|e| format!("listing the admin directory failed: {e}"))?;

        let mut plan = Vec::new();
        let mut removed_set: BTreeSet<&str> = BTreeSet::new();
        for path in remote.entries.keys() {
            if local.contains_key(path) {
                continue;
            }
            let covered = ancestors(path).any(|a| {
                removed_set.contains(a) || matches!(local.get(a), Some(ManifestEntry::File { .. }))
            });
            if !covered {
                removed_set.insert(path);
                plan.push(Plan::Remove(path.clone()));
            }
        }
        let mut unchanged = 0;
        for (path, entry) in &local {
            match (entry, remote.entries.get(path)) {
                (ManifestEntry::Dir, Some(ManifestEntry::Dir)) => {}
                (ManifestEntry::Dir, _) => plan.push(Plan::Mkdir(path.clone())),
                (file, Some(theirs)) if theirs == file => unchanged += 1,
                (_, _) => plan.push(Plan::Write(path.clone())),
            }
        }
        let size_of = |p: &Plan| match p {
            Plan::Write(path) => (
                match local.get(path) {
                    Some(ManifestEntry::File { size, .. }) => *size as usize,
                    _ => 0,
                },
                path.len(),
            ),
            Plan::Remove(path) | Plan::Mkdir(path) => (0, path.len()),
        };
        let chunks = parts(&plan, size_of);
        let first_part = match remote.applied {
            Some(k) if k.seq == seq => k.part + 1,
            _ => 0,
        };
        let (mut sent, mut removed) = (0, 0);
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let paths: Vec<(bool, String)> = chunk
                .iter()
                .map(|p| match p {
                    Plan::Remove(path) => (false, path.clone()),
                    Plan::Mkdir(path) => (false, format!("/{path}")),
                    Plan::Write(path) => (true, path.clone()),
                })
                .collect();
            let s = shared.clone();
            let read = tokio::task::spawn_blocking(move || s.read_plan(paths))
                .await
                .map_err(|e| format!("reading the admin directory failed: {e}"))?;
            let (changes, data): (Vec<WireChange>, Vec<Option<Vec<u8>>>) = read.into_iter().unzip();
            sent += changes
                .iter()
                .filter(|c| matches!(c, WireChange::Write { .. }))
                .count() as u64;
            removed += changes
                .iter()
                .filter(|c| matches!(c, WireChange::Remove { .. }))
                .count() as u64;
            let header = PushHeader {
                source: shared.instance.clone(),
                epoch: shared.epoch,
                seq,
                part: first_part + i as u32,
                complete: i == last,
                resync: true,
                changes,
            };
            let contents: Vec<&[u8]> = data.iter().filter_map(|d| d.as_deref()).collect();
            self.send_push(&header, &contents).await?;
            self.update(|s| s.pushes += 1);
        }
        Ok(Resynced {
            seq,
            sent,
            removed,
            unchanged,
        })
    }
}

impl Shared {
    /// Reads a resynchronisation's part (blocking). Each item is
    /// (write?, path), a leading `/` marking a directory to make.
    fn read_plan(&self, items: Vec<(bool, String)>) -> Vec<(WireChange, Option<Vec<u8>>)> {
        let detected_ms = now_ms();
        let mut out = Vec::new();
        for (write, path) in items {
            if !write {
                match path.strip_prefix('/') {
                    Some(dir) => out.push((
                        WireChange::Mkdir {
                            path: dir.to_string(),
                            detected_ms,
                        },
                        None,
                    )),
                    None => out.push((WireChange::Remove { path, detected_ms }, None)),
                }
                continue;
            }
            match fsops::read_path(&self.dir.join(&path)) {
                Content::File(data, mode) => out.push((
                    WireChange::Write {
                        path,
                        size: data.len() as u64,
                        sha256: wire::sha256_hex(&data),
                        mode,
                        detected_ms,
                    },
                    Some(data),
                )),
                // Vanished since the manifest: as if absent (its event
                // follows anyway).
                Content::Missing => out.push((WireChange::Remove { path, detected_ms }, None)),
                // Became a directory: its content follows with its events.
                Content::Dir => out.push((WireChange::Mkdir { path, detected_ms }, None)),
                Content::Skip(reason, absent) => {
                    self.skipped(&path, &reason);
                    if absent {
                        out.push((WireChange::Remove { path, detected_ms }, None));
                    }
                }
            }
        }
        out
    }
}

/// Sleeps; false when told to stop.
async fn sleep(stop: &mut watch::Receiver<bool>, ms: u64) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
        _ = stop.changed() => false,
    }
}

/// The proper ancestors of a relative path, nearest first.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.char_indices()
        .filter(|(_, c)| *c == '/')
        .map(|(i, _)| &path[..i])
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
}

fn add_sample(s: &mut ReceiverStatus, lag_ms: f64) {
    s.last_lag_ms = Some(lag_ms);
    s.lag_samples_ms.push(lag_ms);
    if s.lag_samples_ms.len() > LAG_SAMPLES {
        let extra = s.lag_samples_ms.len() - LAG_SAMPLES;
        s.lag_samples_ms.drain(..extra);
    }
    let mut sorted = s.lag_samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    s.lag_p50_ms = percentile(&sorted, 0.50);
    s.lag_p99_ms = percentile(&sorted, 0.99);
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// An error with its sources, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[3.0], 0.99), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn ancestors_are_listed_nearest_first() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a/b", "a"]);
        assert!(ancestors("a").next().is_none());
    }

    #[test]
    fn parts_respect_the_byte_budget_and_never_come_out_empty() {
        let sizes = [PUSH_BYTES, 1, 1, PUSH_BYTES * 2, 1];
        let chunks = parts(&sizes, |s| (*s, 1));
        let lens: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(lens, vec![1, 2, 1, 1]);
        let none: [usize; 0] = [];
        assert_eq!(parts(&none, |s| (*s, 1)).len(), 1);
    }
}
