//! Admin-data mirroring on this host, for apps with an `admin_dir`: a
//! [`Source`] for each local instance acting as primary (at its epoch), a
//! [`Receiver`] for each other local instance, served on the agent port
//! (see [`tandem_sync`]). A receiver accepts pushes only from the primary
//! and epoch that the app's role assignment names, never from an older
//! epoch. What they report goes into each instance's published status
//! ([`tandem_core::model::InstanceStatus::admin`]), from which the
//! controller prefers a current backup at a promotion and raises events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use tandem_core::host::Local;
use tandem_core::model::{
    AdminBackup, AdminPosition, AdminSource, AdminSync, AppRoles, ProcessState, Role,
};
use tandem_core::topology::{Host, Topology, expand};
use tandem_sync::{Receiver, ReceiverSet, Source, SourceStatus, SyncConfig, SyncEvent};
use tokio::sync::mpsc;
use tracing::{Level, debug, error, info, warn};

/// (app, instance).
type Key = (String, String);

/// A local primary's source: starting, or running at an epoch.
enum Slot {
    Starting { epoch: u64 },
    Running { epoch: u64, source: Source },
}

impl Slot {
    fn epoch(&self) -> u64 {
        match self {
            Slot::Starting { epoch } | Slot::Running { epoch, .. } => *epoch,
        }
    }
}

/// A source that finished starting, sent back to the agent's loop.
pub(crate) struct Started {
    pub app: String,
    pub instance: String,
    pub epoch: u64,
    pub source: Result<Source, String>,
}

/// The host's admin-data mirroring.
pub(crate) struct Admin {
    receivers: ReceiverSet,
    secret: Option<Vec<u8>>,
    sources: HashMap<Key, Slot>,
    /// Why mirroring cannot run for an instance, until it can.
    errors: HashMap<Key, String>,
    events: mpsc::Sender<SyncEvent>,
}

/// The key the cluster secret gives admin-data requests.
const SECRET_LABEL: &str = "tandem admin-data sync";

impl Admin {
    /// Mirroring for this host; `secret` signs its requests (the cluster
    /// secret's derived key). Logs what the mirrors report.
    pub(crate) fn new(secret: Option<&crate::sign::ClusterSecret>) -> Admin {
        let (events, mut rx) = mpsc::channel::<SyncEvent>(256);
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let msg = ev.message();
                match ev.level() {
                    Level::ERROR => error!("{msg}"),
                    Level::WARN => warn!("{msg}"),
                    Level::INFO => info!("{msg}"),
                    _ => debug!("{msg}"),
                }
            }
        });
        Admin {
            receivers: ReceiverSet::new(),
            secret: secret.map(|s| s.derive_key(SECRET_LABEL).to_vec()),
            sources: HashMap::new(),
            errors: HashMap::new(),
            events,
        }
    }

    /// The routes that serve this host's receivers (merged into the agent
    /// port's).
    pub(crate) fn router(&self) -> axum::Router {
        tandem_sync::router(self.receivers.clone())
    }

    /// Brings every local instance's mirroring in line with its role: a
    /// source for a running primary at its epoch, a receiver told the
    /// app's primary otherwise. Returns the sources to start (app,
    /// instance, epoch, config) — started by the caller, which feeds the
    /// result back through [`Admin::started`].
    pub(crate) fn reconcile<'a>(
        &mut self,
        topology: &Topology,
        host: &Host,
        locals: impl Iterator<Item = (&'a Local, bool)>,
        roles: impl Fn(&str) -> Option<&'a AppRoles>,
    ) -> Vec<(String, String, u64, SyncConfig)> {
        let mut start = Vec::new();
        let mut wanted_sources = Vec::new();
        let mut wanted_receivers = Vec::new();
        for (local, live) in locals {
            let (app, inst) = (&local.app, &local.instance);
            let Some(template) = &app.admin_dir else {
                continue;
            };
            if !live {
                continue;
            }
            let key: Key = (app.name.clone(), inst.id.clone());
            let cfg = SyncConfig {
                app: app.name.clone(),
                dir: PathBuf::from(expand(template, app, inst, host)),
                secret: self.secret.clone(),
            };
            let status = local.machine().status();
            let primary = status.process == ProcessState::Running
                && status.acting == Role::Primary
                && !local.fenced();
            if primary {
                let epoch = status.acting_epoch;
                wanted_sources.push(key.clone());
                match self.sources.get(&key) {
                    Some(slot) if slot.epoch() == epoch => {}
                    _ => {
                        self.stop_source(&key);
                        self.sources.insert(key.clone(), Slot::Starting { epoch });
                        start.push((key.0.clone(), key.1.clone(), epoch, cfg));
                    }
                }
                if let Some(Slot::Running { source, .. }) = self.sources.get(&key) {
                    source.set_receivers(peers(topology, &app.name, &inst.id));
                }
                continue;
            }
            wanted_receivers.push(key.clone());
            let receiver = match self.receivers.get(&key.0, &key.1) {
                Some(r) => Some(r),
                None => match Receiver::new(cfg, key.1.clone(), self.events.clone()) {
                    Ok(r) => {
                        self.errors.remove(&key);
                        self.receivers.insert(r.clone());
                        Some(r)
                    }
                    Err(e) => {
                        self.errors.insert(key.clone(), e.to_string());
                        None
                    }
                },
            };
            if let Some(r) = receiver {
                let primary = roles(&app.name)
                    .and_then(|r| r.primary.as_ref())
                    .filter(|g| g.instance != inst.id)
                    .map(|g| (g.instance.clone(), g.epoch));
                r.set_primary(primary);
            }
        }
        let stale: Vec<Key> = self
            .sources
            .keys()
            .filter(|k| !wanted_sources.contains(k))
            .cloned()
            .collect();
        for key in stale {
            self.stop_source(&key);
        }
        let gone: Vec<Key> = self
            .receivers
            .keys()
            .into_iter()
            .filter(|k| !wanted_receivers.contains(k))
            .collect();
        for (app, inst) in gone {
            self.receivers.remove(&app, &inst);
        }
        start
    }

    /// A source finished starting: kept if still wanted at that epoch.
    pub(crate) fn started(&mut self, s: Started, topology: &Topology) {
        let key = (s.app.clone(), s.instance.clone());
        let wanted =
            matches!(self.sources.get(&key), Some(Slot::Starting { epoch }) if *epoch == s.epoch);
        match s.source {
            Ok(source) if wanted => {
                self.errors.remove(&key);
                source.set_receivers(peers(topology, &s.app, &s.instance));
                self.sources.insert(
                    key,
                    Slot::Running {
                        epoch: s.epoch,
                        source,
                    },
                );
            }
            Ok(source) => {
                tokio::spawn(source.stop());
            }
            Err(e) => {
                if wanted {
                    self.sources.remove(&key);
                }
                warn!(app = %s.app, instance = %s.instance, "admin data cannot be mirrored: {e}");
                self.errors.insert(key, e);
            }
        }
    }

    fn stop_source(&mut self, key: &Key) {
        if let Some(Slot::Running { source, .. }) = self.sources.remove(key) {
            tokio::spawn(source.stop());
        }
    }

    /// What `app/instance`'s status says of its admin data.
    pub(crate) fn status_of(&self, app: &str, instance: &str) -> AdminSync {
        let key = (app.to_string(), instance.to_string());
        let mut out = AdminSync {
            error: self.errors.get(&key).cloned(),
            ..AdminSync::default()
        };
        if let Some(Slot::Running { source, .. }) = self.sources.get(&key) {
            out.source = Some(source_doc(&source.status()));
        } else if let Some(r) = self.receivers.get(app, instance) {
            let st = r.state();
            out.applied = (st.applied_epoch > 0).then(|| AdminPosition {
                epoch: st.applied_epoch,
                seq: st.applied_seq,
                at_ms: st.last_applied_ms.unwrap_or(0),
            });
        }
        out
    }

    /// Starts a source in the background (one [`Admin::reconcile`] asked
    /// for); its result is sent on `tx`, to be fed to [`Admin::started`].
    pub(crate) fn start_source<M: From<Started> + Send + 'static>(
        &self,
        app: String,
        instance: String,
        epoch: u64,
        cfg: SyncConfig,
        tx: mpsc::Sender<M>,
    ) {
        let events = self.events.clone();
        tokio::spawn(async move {
            let source = Source::start(cfg, instance.clone(), epoch, events)
                .await
                .map_err(|e| e.to_string());
            let _ = tx
                .send(M::from(Started {
                    app,
                    instance,
                    epoch,
                    source,
                }))
                .await;
        });
    }

    /// Stops every source (the agent is stopping).
    pub(crate) fn stop_all(&mut self) {
        let keys: Vec<Key> = self.sources.keys().cloned().collect();
        for key in keys {
            self.stop_source(&key);
        }
    }
}

/// The other instances of `app`, with their agents' base URLs.
fn peers(topology: &Topology, app: &str, me: &str) -> Vec<(String, String)> {
    let Some(a) = topology.app(app) else {
        return Vec::new();
    };
    a.instances
        .iter()
        .filter(|i| i.id != me)
        .filter_map(|i| {
            let host = topology.host(&i.host)?;
            let addr = SocketAddr::new(host.address, topology.cluster.agent_port);
            Some((i.id.clone(), format!("http://{addr}")))
        })
        .collect()
}

fn us(ms: Option<f64>) -> Option<u64> {
    ms.map(|m| (m * 1000.0).round().max(0.0) as u64)
}

fn source_doc(s: &SourceStatus) -> AdminSource {
    AdminSource {
        epoch: s.epoch,
        seq: s.seq,
        backups: s
            .receivers
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    AdminBackup {
                        acked_seq: r.acked_seq,
                        pending: r.pending,
                        in_sync: r.in_sync,
                        lag_us: us(r.last_lag_ms),
                        lag_p50_us: us(r.lag_p50_ms),
                        lag_p99_us: us(r.lag_p99_ms),
                        last_error: r.last_error.clone(),
                    },
                )
            })
            .collect(),
    }
}
