//! The backup side: a [`Receiver`] per (app, local backup instance), served
//! by [`router`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, OriginalUri, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::event::{SyncError, SyncEvent, emit};
use crate::fsops::{self, ApplyError};
use crate::wire::{
    self, AppliedKey, ErrorBody, Manifest, PushAck, PushHeader, SIGNATURE_HEADER, TIMESTAMP_HEADER,
    WireChange,
};
use crate::{SyncConfig, lock, now_ms};

/// The largest request body the router accepts: one file of
/// [`fsops::MAX_FILE_BYTES`] plus a header.
pub const MAX_BODY_BYTES: usize = fsops::MAX_FILE_BYTES as usize + wire::MAX_HEADER_BYTES + 4;

/// The receiving end of one app's admin data on one backup instance.
///
/// Cheap to clone (shared state). It accepts pushes only from the instance
/// it is told is the app's primary, at that primary's epoch, and never from
/// an epoch lower than the highest it has accepted.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

struct Inner {
    app: String,
    instance: String,
    dir: PathBuf,
    secret: Option<Vec<u8>>,
    events: mpsc::Sender<SyncEvent>,
    state: Mutex<Progress>,
    /// Serialises pushes, so they are applied one at a time, in order.
    apply: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Progress {
    primary: Option<(String, u64)>,
    highest_epoch: u64,
    /// The source, epoch and key of the last push applied.
    last: Option<(String, u64, AppliedKey)>,
    applied_seq: u64,
    last_applied_ms: Option<u64>,
    resynced_at_ms: Option<u64>,
    pushes_applied: u64,
}

/// What a receiver holds, for the controller to prefer a backup whose admin
/// data is current (also served as JSON by `GET .../state`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverState {
    /// The app.
    pub app: String,
    /// This backup instance.
    pub instance: String,
    /// The primary (instance, epoch) the agent last told it about.
    pub primary: Option<(String, u64)>,
    /// The highest epoch it has accepted a push from (0: none).
    pub highest_epoch: u64,
    /// The instance whose data it holds, if it applied any push.
    pub applied_source: Option<String>,
    /// The epoch of the last push applied (0: none).
    pub applied_epoch: u64,
    /// The source's sequence number it holds every change up to (at
    /// `applied_epoch`): compare with [`crate::SourceStatus::seq`].
    pub applied_seq: u64,
    /// When it last applied a push (wall ms).
    pub last_applied_ms: Option<u64>,
    /// When it last completed a full resynchronisation (wall ms).
    pub resynced_at_ms: Option<u64>,
    /// How many pushes it applied since it was built (repeats not counted).
    pub pushes_applied: u64,
}

impl Receiver {
    /// Builds the receiver of `cfg.app`'s admin data for the local backup
    /// `instance`, creating the directory if missing and removing temporary
    /// files a crash left behind.
    ///
    /// # Errors
    ///
    /// When the directory is a file or cannot be created.
    pub fn new(
        cfg: SyncConfig,
        instance: String,
        events: mpsc::Sender<SyncEvent>,
    ) -> Result<Receiver, SyncError> {
        let dir = fsops::prepare_dir(&cfg.dir)?;
        fsops::clean_temps(&dir);
        Ok(Receiver {
            inner: Arc::new(Inner {
                app: cfg.app,
                instance,
                dir,
                secret: cfg.secret,
                events,
                state: Mutex::new(Progress::default()),
                apply: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Tells the receiver the app's current primary (instance, epoch), or
    /// that none is known: only that instance at that epoch may push.
    pub fn set_primary(&self, primary: Option<(String, u64)>) {
        lock(&self.inner.state).primary = primary;
    }

    /// The app.
    pub fn app(&self) -> &str {
        &self.inner.app
    }

    /// The local backup instance.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// The admin directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What the receiver holds.
    pub fn state(&self) -> ReceiverState {
        let p = lock(&self.inner.state);
        ReceiverState {
            app: self.inner.app.clone(),
            instance: self.inner.instance.clone(),
            primary: p.primary.clone(),
            highest_epoch: p.highest_epoch,
            applied_source: p.last.as_ref().map(|l| l.0.clone()),
            applied_epoch: p.last.as_ref().map_or(0, |l| l.1),
            applied_seq: p.applied_seq,
            last_applied_ms: p.last_applied_ms,
            resynced_at_ms: p.resynced_at_ms,
            pushes_applied: p.pushes_applied,
        }
    }

    fn emit(&self, event: SyncEvent) {
        emit(&self.inner.events, event);
    }

    /// Whether `source` at `epoch` may push now.
    fn admit(&self, source: &str, epoch: u64) -> Result<(), String> {
        let app = &self.inner.app;
        let p = lock(&self.inner.state);
        if epoch < p.highest_epoch {
            return Err(format!(
                "stale epoch {epoch}: a newer primary (epoch {}) exists",
                p.highest_epoch
            ));
        }
        match &p.primary {
            Some((primary, e)) if primary == source && *e == epoch => Ok(()),
            Some((primary, e)) => Err(format!("{app}/{primary} is primary at epoch {e}")),
            None => Err(format!("no primary of {app} is known on this host yet")),
        }
    }

    fn refuse(&self, source: &str, epoch: u64, reason: String) -> Response {
        self.emit(SyncEvent::Refused {
            app: self.inner.app.clone(),
            receiver: self.inner.instance.clone(),
            source: source.to_string(),
            epoch,
            reason: reason.clone(),
        });
        error(StatusCode::CONFLICT, reason)
    }

    fn bad(&self, source: Option<&str>, reason: String) -> Response {
        self.emit(SyncEvent::BadPush {
            app: self.inner.app.clone(),
            receiver: self.inner.instance.clone(),
            source: source.map(str::to_string),
            reason: reason.clone(),
        });
        error(StatusCode::BAD_REQUEST, reason)
    }

    /// Checks a request's signature when a secret is configured.
    #[allow(clippy::result_large_err)]
    fn authenticate(
        &self,
        method: &str,
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Response> {
        let Some(secret) = &self.inner.secret else {
            return Ok(());
        };
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        wire::verify(
            secret,
            method,
            path,
            header(TIMESTAMP_HEADER),
            header(SIGNATURE_HEADER),
            body,
            now_ms(),
        )
        .map_err(|reason| {
            self.emit(SyncEvent::Unauthenticated {
                app: self.inner.app.clone(),
                receiver: self.inner.instance.clone(),
                reason: reason.clone(),
            });
            error(StatusCode::UNAUTHORIZED, reason)
        })
    }

    async fn push(&self, body: Bytes) -> Response {
        let (header, ranges) = match wire::decode_push(&body) {
            Ok(h) => h,
            Err(reason) => return self.bad(None, reason),
        };
        let PushHeader {
            source,
            epoch,
            seq,
            part,
            complete,
            resync,
            changes,
        } = header;
        if let Err(reason) = self.admit(&source, epoch) {
            return self.refuse(&source, epoch, reason);
        }
        for change in &changes {
            let path = change.path();
            let checked = wire::check_path(path)
                .and_then(|parts| fsops::check_parents(&self.inner.dir, &parts, path));
            if let Err(reason) = checked {
                return self.bad(Some(&source), reason);
            }
        }
        let key = AppliedKey { seq, part };
        let _applying = self.inner.apply.lock().await;
        // The primary may have changed while waiting.
        if let Err(reason) = self.admit(&source, epoch) {
            return self.refuse(&source, epoch, reason);
        }
        let repeated = matches!(
            &lock(&self.inner.state).last,
            Some((s, e, last)) if *s == source && *e == epoch && key <= *last
        );
        if repeated {
            self.emit(SyncEvent::Repeated {
                app: self.inner.app.clone(),
                receiver: self.inner.instance.clone(),
                source,
                epoch,
                seq,
                part,
            });
            return axum::Json(PushAck {
                applied: false,
                written: 0,
                removed: 0,
            })
            .into_response();
        }
        let dir = self.inner.dir.clone();
        let applied = tokio::task::spawn_blocking(move || apply(&dir, &changes, &body, &ranges))
            .await
            .unwrap_or_else(|e| {
                Err(ApplyError {
                    path: "(all)".into(),
                    error: std::io::Error::other(format!("the writing task failed: {e}")),
                })
            });
        match applied {
            Ok((written, removed)) => {
                {
                    let now = now_ms();
                    let mut p = lock(&self.inner.state);
                    p.highest_epoch = p.highest_epoch.max(epoch);
                    if complete {
                        p.applied_seq = seq;
                    } else if !matches!(&p.last, Some((s, e, _)) if *s == source && *e == epoch) {
                        // A new stream, part way through its first seq.
                        p.applied_seq = 0;
                    }
                    p.last = Some((source.clone(), epoch, key));
                    p.last_applied_ms = Some(now);
                    if resync && complete {
                        p.resynced_at_ms = Some(now);
                    }
                    p.pushes_applied += 1;
                }
                self.emit(SyncEvent::Applied {
                    app: self.inner.app.clone(),
                    receiver: self.inner.instance.clone(),
                    source,
                    epoch,
                    seq,
                    part,
                    resync,
                    written,
                    removed,
                });
                axum::Json(PushAck {
                    applied: true,
                    written,
                    removed,
                })
                .into_response()
            }
            Err(ApplyError { path, error: e }) => {
                let no_space = matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT));
                self.emit(SyncEvent::WriteFailed {
                    app: self.inner.app.clone(),
                    receiver: self.inner.instance.clone(),
                    path: path.clone(),
                    error: e.to_string(),
                });
                let status = if no_space {
                    StatusCode::INSUFFICIENT_STORAGE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                error(
                    status,
                    format!(
                        "could not write admin data file {path} on {}/{}: {e}",
                        self.inner.app, self.inner.instance
                    ),
                )
            }
        }
    }

    async fn manifest(&self, source: String, epoch: u64) -> Response {
        if let Err(reason) = self.admit(&source, epoch) {
            return self.refuse(&source, epoch, reason);
        }
        let dir = self.inner.dir.clone();
        let entries =
            tokio::task::spawn_blocking(move || fsops::manifest(&dir, &mut |_, _| {})).await;
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("could not list the admin directory: {e}"),
                );
            }
        };
        let applied = match &lock(&self.inner.state).last {
            Some((s, e, key)) if *s == source && *e == epoch => Some(*key),
            _ => None,
        };
        axum::Json(Manifest { entries, applied }).into_response()
    }
}

/// Applies a push's changes in order; returns (files written, paths
/// removed).
fn apply(
    dir: &Path,
    changes: &[WireChange],
    body: &[u8],
    ranges: &[std::ops::Range<usize>],
) -> Result<(u64, u64), ApplyError> {
    let mut contents = ranges.iter();
    let (mut written, mut removed) = (0, 0);
    for change in changes {
        let path = change.path();
        let parts: Vec<&str> = path.split('/').collect();
        match change {
            WireChange::Write { mode, .. } => {
                let data = contents.next().map_or(&[][..], |r| &body[r.clone()]);
                fsops::write_file(dir, path, &parts, data, *mode)?;
                written += 1;
            }
            WireChange::Mkdir { .. } => fsops::make_dir(dir, path, &parts)?,
            WireChange::Remove { .. } => {
                if fsops::remove(dir, path, &parts)? {
                    removed += 1;
                }
            }
        }
    }
    Ok((written, removed))
}

fn error(status: StatusCode, error: String) -> Response {
    (status, axum::Json(ErrorBody { error })).into_response()
}

/// The receivers of this agent, by (app, instance): shared with [`router`],
/// to add and remove at run time.
#[derive(Clone, Default)]
pub struct ReceiverSet {
    inner: Arc<RwLock<HashMap<(String, String), Receiver>>>,
}

impl ReceiverSet {
    /// An empty set.
    pub fn new() -> ReceiverSet {
        ReceiverSet::default()
    }

    /// Adds a receiver (replacing and returning one for the same app and
    /// instance).
    pub fn insert(&self, receiver: Receiver) -> Option<Receiver> {
        let key = (receiver.inner.app.clone(), receiver.inner.instance.clone());
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, receiver)
    }

    /// Removes the receiver of `app` on `instance`.
    pub fn remove(&self, app: &str, instance: &str) -> Option<Receiver> {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(app.to_string(), instance.to_string()))
    }

    /// The (app, instance) of every receiver.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The receiver of `app` on `instance`.
    pub fn get(&self, app: &str, instance: &str) -> Option<Receiver> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(app.to_string(), instance.to_string()))
            .cloned()
    }
}

/// The HTTP routes of the receivers in `receivers`, under
/// `/v1/sync/{app}/{instance}/`, to merge into the agent's peer router (see
/// [`crate::wire`] for the requests). Bodies up to [`MAX_BODY_BYTES`] are
/// accepted.
pub fn router(receivers: ReceiverSet) -> Router {
    Router::new()
        .route("/v1/sync/{app}/{instance}/push", post(push_handler))
        .route("/v1/sync/{app}/{instance}/manifest", get(manifest_handler))
        .route("/v1/sync/{app}/{instance}/state", get(state_handler))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(receivers)
}

#[allow(clippy::result_large_err)]
fn find(set: &ReceiverSet, app: &str, instance: &str) -> Result<Receiver, Response> {
    set.get(app, instance).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("no admin data receiver for {app}/{instance} on this host"),
        )
    })
}

async fn push_handler(
    State(set): State<ReceiverSet>,
    UrlPath((app, instance)): UrlPath<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = match find(&set, &app, &instance) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(resp) = r.authenticate("POST", &uri, &headers, &body) {
        return resp;
    }
    r.push(body).await
}

/// The query of a manifest request.
#[derive(Deserialize)]
struct ManifestQuery {
    source: String,
    epoch: u64,
}

async fn manifest_handler(
    State(set): State<ReceiverSet>,
    UrlPath((app, instance)): UrlPath<(String, String)>,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<ManifestQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = match find(&set, &app, &instance) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(resp) = r.authenticate("GET", &uri, &headers, &body) {
        return resp;
    }
    r.manifest(q.source, q.epoch).await
}

async fn state_handler(
    State(set): State<ReceiverSet>,
    UrlPath((app, instance)): UrlPath<(String, String)>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let r = match find(&set, &app, &instance) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(resp) = r.authenticate("GET", &uri, &headers, &body) {
        return resp;
    }
    axum::Json(r.state()).into_response()
}
