//! Admin-data mirroring: tandem copies an app's *admin data* (a directory on
//! each instance's host) from the app's primary instance to every backup
//! instance, in real time.
//!
//! The agent (one per host) embeds this crate:
//!
//! - on the host of the primary, a [`Source`] (one per app and epoch)
//!   watches the directory (`notify`, recursive), coalesces changes for a
//!   few ms ([`source::COALESCE_QUIET_MS`]), numbers each batch with a
//!   sequence number and pushes it over HTTP to each backup's agent;
//! - on the host of a backup, a [`Receiver`] (one per app and local backup
//!   instance), served by [`router`], writes each file atomically (temporary
//!   file in the same directory, fsync, rename, fsync of the directory) and
//!   acknowledges only then.
//!
//! Data never flows back: a receiver accepts pushes only from the instance
//! the agent told it is primary ([`Receiver::set_primary`]), at that
//! epoch, and never from an epoch lower than the highest it has accepted
//! (HTTP 409, nothing written). Pushes are applied in order and
//! idempotently: a repeated push is acknowledged without being applied
//! again. A backup that was down or partitioned catches up with a full
//! resynchronisation (manifest of sha256 and sizes, then what differs),
//! which the source also runs at start and after any failed push, with
//! backoff. [`SourceStatus`] gives per receiver the acknowledged sequence
//! number, pending changes and detection-to-acknowledgement lag;
//! [`ReceiverState`] what a backup holds, so the controller can prefer a
//! backup whose admin data is current.
//!
//! Symbolic links are never followed (on the source they are left out with
//! a [`SyncEvent::Skipped`]; a push through one on the receiver is
//! refused). With a shared secret every request is signed (HMAC-SHA256,
//! see [`wire`]). The wire format is described in [`wire`].

// This crate does I/O (file-system watches, HTTP, fsync): it reads the wall
// clock for detection times and lag, unlike the pure core.
#![allow(clippy::disallowed_methods)]
#![deny(missing_docs)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

mod event;
mod fsops;
pub mod receiver;
pub mod source;
pub mod wire;

pub use event::{SyncError, SyncEvent};
pub use fsops::MAX_FILE_BYTES;
pub use receiver::{MAX_BODY_BYTES, Receiver, ReceiverSet, ReceiverState, router};
pub use source::{ReceiverStatus, Source, SourceStatus};

/// What a [`Source`] or a [`Receiver`] mirrors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// The app whose admin data it is.
    pub app: String,
    /// The admin directory on this host (created if missing; a file there
    /// is an error).
    pub dir: PathBuf,
    /// The shared secret that signs every request, if any.
    pub secret: Option<Vec<u8>>,
}

/// Wall-clock ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Locks a mutex, going on after a panic elsewhere (the state stays
/// consistent: every critical section is a few assignments).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
