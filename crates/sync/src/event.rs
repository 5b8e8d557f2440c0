//! What the crate tells its embedder: events (operator sentences) and
//! errors.

use std::path::PathBuf;

use tokio::sync::mpsc;

/// Something that happened while mirroring, for the agent to log and count.
///
/// Sent through the channel given at construction; when it is full the
/// event is dropped (and logged with `tracing`) rather than slowing the
/// mirror down.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// A receiver applied a push.
    Applied {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// The sending instance.
        source: String,
        /// The sender's epoch.
        epoch: u64,
        /// The push's sequence number.
        seq: u64,
        /// The push's part.
        part: u32,
        /// Whether it belongs to a full resynchronisation.
        resync: bool,
        /// Files written.
        written: u64,
        /// Paths removed.
        removed: u64,
    },
    /// A receiver got a push it had already applied and acknowledged it
    /// without applying it again.
    Repeated {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// The sending instance.
        source: String,
        /// The sender's epoch.
        epoch: u64,
        /// The push's sequence number.
        seq: u64,
        /// The push's part.
        part: u32,
    },
    /// A receiver refused a request from an instance that is not the
    /// current primary (HTTP 409): nothing was written.
    Refused {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// The sending instance.
        source: String,
        /// The sender's epoch.
        epoch: u64,
        /// Why, e.g. "cms/b is primary at epoch 7".
        reason: String,
    },
    /// A receiver refused a malformed push or one naming a path outside
    /// its directory (HTTP 400): nothing was written.
    BadPush {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// The sending instance, when the body could be read.
        source: Option<String>,
        /// Why, naming the path.
        reason: String,
    },
    /// A receiver refused a request without a valid signature (HTTP 401).
    Unauthenticated {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// Why.
        reason: String,
    },
    /// A receiver could not write or remove a file: the push was answered
    /// with an error, the file's old version is untouched.
    WriteFailed {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// The relative path.
        path: String,
        /// The OS error.
        error: String,
    },
    /// A source brought a receiver back in line with a full
    /// resynchronisation.
    Resynced {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// Files sent.
        sent: u64,
        /// Paths removed on the receiver.
        removed: u64,
        /// Files already identical.
        unchanged: u64,
    },
    /// A source could not push changes to a receiver: it will resynchronise
    /// it.
    PushFailed {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// Why.
        error: String,
        /// When the next attempt is, from now.
        retry_ms: u64,
    },
    /// A source could not resynchronise a receiver: it will try again.
    ResyncFailed {
        /// The app.
        app: String,
        /// The receiving instance.
        receiver: String,
        /// Why.
        error: String,
        /// When the next attempt is, from now.
        retry_ms: u64,
    },
    /// A source left a path of its admin directory out of the mirror (a
    /// symbolic link, a special file, an unreadable or too large file).
    Skipped {
        /// The app.
        app: String,
        /// The source instance.
        instance: String,
        /// The relative path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A source's file-system watch lost events or failed: it
    /// resynchronises every receiver.
    WatchTrouble {
        /// The app.
        app: String,
        /// The source instance.
        instance: String,
        /// What happened.
        error: String,
    },
}

impl SyncEvent {
    /// How loud to log it: WARN for failures, refusals and paths left out,
    /// INFO for resynchronisations, DEBUG for each push applied or repeated.
    pub fn level(&self) -> tracing::Level {
        match self {
            SyncEvent::Applied { .. } | SyncEvent::Repeated { .. } => tracing::Level::DEBUG,
            SyncEvent::Resynced { .. } => tracing::Level::INFO,
            SyncEvent::Refused { .. }
            | SyncEvent::BadPush { .. }
            | SyncEvent::Unauthenticated { .. }
            | SyncEvent::WriteFailed { .. }
            | SyncEvent::PushFailed { .. }
            | SyncEvent::ResyncFailed { .. }
            | SyncEvent::Skipped { .. }
            | SyncEvent::WatchTrouble { .. } => tracing::Level::WARN,
        }
    }

    /// The event as a sentence for an operator.
    pub fn message(&self) -> String {
        match self {
            SyncEvent::Applied {
                app,
                receiver,
                source,
                epoch,
                seq,
                part,
                resync,
                written,
                removed,
            } => format!(
                "applied {}push {seq}.{part} from {app}/{source} (epoch {epoch}) on {app}/{receiver}: {written} {} written, {removed} removed",
                if *resync { "resynchronisation " } else { "" },
                files(*written)
            ),
            SyncEvent::Repeated {
                app,
                receiver,
                source,
                epoch,
                seq,
                part,
            } => format!(
                "{app}/{receiver} already applied push {seq}.{part} from {app}/{source} (epoch {epoch}): acknowledged without applying it again"
            ),
            SyncEvent::Refused {
                app,
                receiver,
                source,
                epoch,
                reason,
            } => format!(
                "refused a push from {app}/{source} at epoch {epoch} to {app}/{receiver}: {reason}"
            ),
            SyncEvent::BadPush {
                app,
                receiver,
                source,
                reason,
            } => match source {
                Some(source) => {
                    format!("refused a push from {app}/{source} to {app}/{receiver}: {reason}")
                }
                None => format!("refused a push to {app}/{receiver}: {reason}"),
            },
            SyncEvent::Unauthenticated {
                app,
                receiver,
                reason,
            } => format!("refused an unauthenticated request to {app}/{receiver}: {reason}"),
            SyncEvent::WriteFailed {
                app,
                receiver,
                path,
                error,
            } => format!("could not write admin data file {path} on {app}/{receiver}: {error}"),
            SyncEvent::Resynced {
                app,
                receiver,
                sent,
                removed,
                unchanged,
            } => format!(
                "resynchronised {app}/{receiver}: {sent} {} sent, {removed} removed, {unchanged} unchanged",
                files(*sent)
            ),
            SyncEvent::PushFailed {
                app,
                receiver,
                error,
                retry_ms,
            } => format!(
                "could not push admin data of {app} to {app}/{receiver}: {error}; resynchronising it in {retry_ms} ms"
            ),
            SyncEvent::ResyncFailed {
                app,
                receiver,
                error,
                retry_ms,
            } => format!(
                "could not resynchronise {app}/{receiver}: {error}; retrying in {retry_ms} ms"
            ),
            SyncEvent::Skipped {
                app,
                instance,
                path,
                reason,
            } => format!("left {path} of {app}/{instance} out of the admin data mirror: {reason}"),
            SyncEvent::WatchTrouble {
                app,
                instance,
                error,
            } => format!(
                "the watch on the admin data of {app}/{instance} failed or lost events ({error}): resynchronising every backup"
            ),
        }
    }
}

fn files(n: u64) -> &'static str {
    if n == 1 { "file" } else { "files" }
}

/// Sends an event without waiting; a full or closed channel drops it.
pub(crate) fn emit(events: &mpsc::Sender<SyncEvent>, event: SyncEvent) {
    tracing::debug!(target: "tandem_sync", "{}", event.message());
    if let Err(mpsc::error::TrySendError::Full(event)) = events.try_send(event) {
        tracing::warn!(target: "tandem_sync", "event channel full, dropped: {}", event.message());
    }
}

/// Why a [`crate::Receiver`] or [`crate::Source`] cannot be built or used.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The admin directory's path is a file.
    #[error("admin directory {} is a file", path.display())]
    NotADirectory {
        /// The configured path.
        path: PathBuf,
    },
    /// The admin directory cannot be created or read.
    #[error("cannot use the admin directory {}: {error}", path.display())]
    Dir {
        /// The configured path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The file-system watch cannot be started.
    #[error("cannot watch the admin directory {}: {error}", path.display())]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// No receiver of that name is configured on the source.
    #[error("no receiver {0} is configured on this source")]
    UnknownReceiver(String),
    /// The source was stopped.
    #[error("the admin data source has stopped")]
    Stopped,
}
