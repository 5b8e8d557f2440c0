//! The coordination store: the one trait through which tandem's controller,
//! agents and API share state, and its backends.
//!
//! Everything above this crate talks to a [`Store`] and never knows which
//! backend runs. The trait is modelled on etcd's v3 API (revisions, leases,
//! transactions, ordered prefix watches) because that is the store tandem
//! runs on across machines; the [`embedded`] backend gives the same
//! guarantees inside one process, persisted on disk.
//!
//! Every backend must pass [`testing::conformance`].
#![deny(missing_docs)]
#![allow(clippy::disallowed_methods)] // a store keeps time: leases expire

pub mod embedded;
pub mod testing;
pub mod watch;

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;

/// A store-wide, strictly increasing version number. Every committed write
/// (put, delete, successful transaction with writes) gets the next revision;
/// all events of one transaction share its revision.
pub type Revision = u64;

/// Identifies a lease granted by [`Store::grant_lease`].
pub type LeaseId = i64;

/// What a backend can fail with. Callers act on the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or has no quorum. Nothing was written
    /// (or it is unknown whether it was). This drives self-fencing.
    #[error("coordination store unavailable: {0}")]
    Unavailable(String),
    /// The lease does not exist: never granted, revoked, or expired.
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// A watch asked to start at a revision whose history is gone.
    #[error("revision {requested} is compacted (oldest kept: {oldest})")]
    Compacted {
        /// The revision the caller asked to start from.
        requested: Revision,
        /// The oldest revision the store can still replay from.
        oldest: Revision,
    },
    /// A watch stream broke (the consumer fell too far behind, or the
    /// connection dropped). Resume with a new watch from the last revision
    /// seen plus one.
    #[error("watch lost: {0}")]
    WatchLost(String),
    /// The request itself is malformed (empty key, zero TTL, ...).
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The backend failed in a way that is not about reachability (disk
    /// error, corrupted data). Not retryable by the caller.
    #[error("store failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// True for failures that mean "cannot reach a quorum right now".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One key and its value, with the revisions that describe its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (opaque bytes; tandem stores JSON).
    pub value: Vec<u8>,
    /// Revision at which the key was created (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after the first put).
    pub version: u64,
    /// The lease the key is bound to, if any: the key is deleted when that
    /// lease expires or is revoked.
    pub lease: Option<LeaseId>,
}

/// A consistent listing of a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Keys under the prefix, sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store's revision at the time of the read. Watching from
    /// `revision + 1` sees every change after this listing, and none before.
    pub revision: Revision,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` equals the given one; `0` means "the key
    /// does not exist".
    ModRevision(String, Revision),
    /// The key exists and its value equals the given bytes.
    Value(String, Vec<u8>),
}

/// An operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write a key, optionally bound to a lease.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Lease to bind the key to.
        lease: Option<LeaseId>,
    },
    /// Delete a key (no error if absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Read a key as of this transaction.
    Get {
        /// The key.
        key: String,
    },
}

impl Op {
    /// A put without lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
    /// A delete.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
    /// A get.
    pub fn get(key: impl Into<String>) -> Op {
        Op::Get { key: key.into() }
    }
}

/// An atomic compare-and-swap: if every compare holds, run `success`,
/// otherwise run `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions, all of which must hold.
    pub compares: Vec<Compare>,
    /// Operations run when every compare holds.
    pub success: Vec<Op>,
    /// Operations run otherwise.
    pub failure: Vec<Op>,
}

/// What one operation of a transaction returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A put was applied.
    Put,
    /// A delete was applied; `true` if the key existed.
    Delete(bool),
    /// A get's answer.
    Get(Option<KeyValue>),
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (so `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged if it wrote
    /// nothing).
    pub revision: Revision,
    /// One result per operation of the branch that ran, in order.
    pub results: Vec<OpResult>,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: LeaseId,
    /// The TTL the store granted (backends may round up, e.g. etcd to whole
    /// seconds).
    pub ttl: Duration,
}

/// Kind of a watched change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was written.
    Put,
    /// The key was deleted (explicitly or by its lease ending).
    Delete,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, an empty value,
    /// `mod_revision` set to the deleting revision, and zero
    /// `create_revision` and `version`.
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision of the change.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A stream of changes, in revision order. An `Err` item means the stream
/// is broken; the caller resumes with a new watch from the last revision it
/// saw plus one ([`watch::follow`] does that).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// What tandem's HA logic needs from a coordination store.
///
/// # Correctness
///
/// Every backend must provide, and [`testing::conformance`] checks:
/// - **Linearizable reads and writes**: a read returns the latest committed
///   write; revisions strictly increase and are shared by all writes of one
///   transaction.
/// - **Atomic compare-and-swap**: [`Store::txn`] evaluates its compares and
///   applies its ops as one step; no other write interleaves.
/// - **Leases**: a key bound to a lease is deleted (with a watch event) no
///   earlier than the lease's TTL after its last successful keep-alive, and
///   never while keep-alives succeed in time. After expiry,
///   [`Store::keep_alive`] fails with [`StoreError::LeaseNotFound`].
/// - **Ordered watches**: a watch from revision `r` delivers every change
///   under its prefix with revision `>= r`, each once, in revision order (in
///   op order within a transaction), or breaks with an error. It never
///   silently skips a change.
/// - **Unavailability is one variant**: any failure that means "no quorum or
///   not reachable" is [`StoreError::Unavailable`].
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and status ("embedded", "etcd").
    fn backend(&self) -> &'static str;

    /// Reads one key (linearizable).
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads every key that starts with `prefix`, with the revision of the
    /// read (linearizable).
    async fn list(&self, prefix: &str) -> Result<Listing>;

    /// Writes a key, optionally bound to a lease; returns the new revision.
    /// Fails with [`StoreError::LeaseNotFound`] if the lease is gone.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;

    /// Deletes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Runs a compare-and-swap transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Grants a lease of at least `ttl`.
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease>;

    /// Renews a lease to its full TTL; returns the TTL now remaining.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration>;

    /// Revokes a lease at once, deleting every key bound to it.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;

    /// Watches every key under `prefix` from revision `start` (inclusive).
    /// `start` of `0` means "from the next change".
    async fn watch(&self, prefix: &str, start: Revision) -> Result<WatchStream>;
}

pub use embedded::EmbeddedStore;
