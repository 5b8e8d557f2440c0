//! A store wrapper for fault tests: the embedded store, made unreachable on
//! demand, as a network partition or a store without quorum would make it.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use tandem_agent::controller::ControllerRecord;
use tandem_agent::local::{Local, LocalOptions};
use tandem_agent::sign::ClusterSecret;
use tandem_core::model::{AppRoles, InstanceStatus, Role, keys};
use tandem_store::{
    EmbeddedStore, KeyValue, Lease, LeaseId, Listing, Revision, Store, StoreError, Txn,
    TxnResponse, WatchStream,
};

/// The embedded store behind a switch.
pub struct Flaky {
    pub inner: Arc<dyn Store>,
    /// While set, calls fail with `Unavailable` (only keep-alives and lease
    /// grants with `keepalive_only`) and open watches break.
    pub unreachable: Arc<AtomicBool>,
    keepalive_only: bool,
    /// While unreachable, leases still live on (as etcd keeps them while
    /// it has no quorum): keep-alives reach the store, their answers fail.
    leases_survive: AtomicBool,
}

impl Flaky {
    /// Every call fails while unreachable: a host cut off from the store.
    pub fn partitioned(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            unreachable: Arc::new(AtomicBool::new(false)),
            keepalive_only: false,
            leases_survive: AtomicBool::new(false),
        })
    }

    /// While cut, nothing can be done through it, but the leases it holds
    /// do not expire: a store without quorum.
    pub fn quorum_lost(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            unreachable: Arc::new(AtomicBool::new(false)),
            keepalive_only: false,
            leases_survive: AtomicBool::new(true),
        })
    }

    /// Only lease renewal fails while unreachable.
    pub fn keepalive_only(inner: Arc<dyn Store>) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner,
            unreachable: Arc::new(AtomicBool::new(false)),
            keepalive_only: true,
            leases_survive: AtomicBool::new(false),
        })
    }

    pub fn cut(&self, on: bool) {
        self.unreachable.store(on, Ordering::SeqCst);
    }

    fn check(&self, lease_call: bool) -> tandem_store::Result<()> {
        if self.unreachable.load(Ordering::SeqCst) && (lease_call || !self.keepalive_only) {
            Err(StoreError::Unavailable("test: store unreachable".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn get(&self, key: &str) -> tandem_store::Result<Option<KeyValue>> {
        self.check(false)?;
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> tandem_store::Result<Listing> {
        self.check(false)?;
        self.inner.list(prefix).await
    }
    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> tandem_store::Result<Revision> {
        self.check(false)?;
        self.inner.put(key, value, lease).await
    }
    async fn delete(&self, key: &str) -> tandem_store::Result<bool> {
        self.check(false)?;
        self.inner.delete(key).await
    }
    async fn txn(&self, txn: Txn) -> tandem_store::Result<TxnResponse> {
        self.check(false)?;
        self.inner.txn(txn).await
    }
    async fn grant_lease(&self, ttl: Duration) -> tandem_store::Result<Lease> {
        self.check(true)?;
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> tandem_store::Result<Duration> {
        if let Err(e) = self.check(true) {
            if self.leases_survive.load(Ordering::SeqCst) {
                let _ = self.inner.keep_alive(lease).await;
            }
            return Err(e);
        }
        self.inner.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> tandem_store::Result<()> {
        self.check(false)?;
        self.inner.revoke_lease(lease).await
    }
    async fn watch(&self, prefix: &str, start: Revision) -> tandem_store::Result<WatchStream> {
        self.check(false)?;
        let inner = self.inner.watch(prefix, start).await?;
        if self.keepalive_only {
            return Ok(inner);
        }
        // A watch through a cut link breaks.
        Ok(breakable(inner, self.unreachable.clone()))
    }
}

/// Breaks `stream` (one `WatchLost`, then the end) as soon as `cut` is set.
pub fn breakable(stream: WatchStream, cut: Arc<AtomicBool>) -> WatchStream {
    let ticks = tokio::time::interval(Duration::from_millis(20));
    let s = futures::stream::unfold(
        (stream, cut, ticks, false),
        |(mut stream, cut, mut ticks, done)| async move {
            if done {
                return None;
            }
            loop {
                if cut.load(Ordering::SeqCst) {
                    return Some((
                        Err(StoreError::WatchLost("test: link cut".into())),
                        (stream, cut, ticks, true),
                    ));
                }
                tokio::select! {
                    item = stream.next() => return item.map(|i| (i, (stream, cut, ticks, false))),
                    _ = ticks.tick() => {}
                }
            }
        },
    );
    Box::pin(s)
}

/// The lines a test hook wrote as `instance role epoch time_ns`.
pub fn hook_lines(path: &std::path::Path) -> Vec<(String, String, u64, u128)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.first()?.to_string(),
                f.get(1)?.to_string(),
                f.get(2)?.parse().ok()?,
                f.get(3)?.parse().ok()?,
            ))
        })
        .collect()
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Hosts h1 (127.0.0.1) and h2 (127.0.0.2), a warm pair `web` of sleeps
/// (a on h1 preferred, b on h2) whose command hook logs to `log`.
pub fn topology(log: &std::path::Path) -> String {
    format!(
        r#"
[cluster]
lease_ttl = "2s"
renew_interval = "300ms"
fence_margin = "800ms"
agent_port = {agent_port}

[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "127.0.0.1"

[[hosts]]
name = "h2"
site = "dc1"
address = "127.0.0.2"

[apps.web]
ha = "warm-standby"
command = ["sleep", "1000"]

[apps.web.hook]
kind = "command"
command = ["sh", "-c", "echo \"$TANDEM_INSTANCE $0 $1 $(date +%s%N)\" >> {log}"]
timeout = "500ms"

[[apps.web.instances]]
id = "a"
host = "h1"
priority = 10

[[apps.web.instances]]
id = "b"
host = "h2"
"#,
        log = log.display(),
        agent_port = free_port(),
    )
}

pub async fn get<T: serde::de::DeserializeOwned>(store: &Arc<dyn Store>, key: &str) -> Option<T> {
    let kv = store.get(key).await.ok()??;
    serde_json::from_slice(&kv.value).ok()
}

/// Waits until `pred` holds of (roles, status a, status b, controller).
pub async fn wait_until<F>(
    store: &Arc<dyn Store>,
    what: &str,
    secs: u64,
    pred: F,
) -> (AppRoles, Option<InstanceStatus>, Option<InstanceStatus>)
where
    F: Fn(
        &AppRoles,
        Option<&InstanceStatus>,
        Option<&InstanceStatus>,
        Option<&ControllerRecord>,
    ) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let roles: AppRoles = get(store, &keys::roles("web")).await.unwrap_or_default();
        let a: Option<InstanceStatus> = get(store, &keys::status("web", "a")).await;
        let b: Option<InstanceStatus> = get(store, &keys::status("web", "b")).await;
        let ctl: Option<ControllerRecord> = get(store, keys::CONTROLLER).await;
        if pred(&roles, a.as_ref(), b.as_ref(), ctl.as_ref()) {
            return (roles, a, b);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: roles {roles:?}\na {a:?}\nb {b:?}\ncontroller {ctl:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Hosts h1 and h2 (see [`topology`]), each agent behind its own link to
/// one embedded store.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub link1: Arc<Flaky>,
    pub link2: Arc<Flaky>,
    pub l1: Local,
    pub l2: Local,
}

impl Pair {
    /// Starts h1 (the controller) then h2 and waits for a (h1) primary, b
    /// (h2) backup.
    pub async fn start() -> Pair {
        Pair::start_with(Flaky::partitioned).await
    }

    /// The same, with links made by `link`.
    pub async fn start_with(link: fn(Arc<dyn Store>) -> Arc<Flaky>) -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("hooks.log");
        let topo =
            Arc::new(tandem_core::topology::parse("t.toml", &topology(&log)).expect("valid"));
        let store: Arc<dyn Store> = EmbeddedStore::in_memory();
        let link1 = link(store.clone());
        let link2 = link(store.clone());
        // The agents authenticate each other, as in production.
        let options = LocalOptions {
            secret: Some(ClusterSecret::generate().expect("a secret")),
            ..LocalOptions::default()
        };
        let l1 = Local::start_with(
            link1.clone(),
            topo.clone(),
            &["h1".into()],
            dir.path().join("h1"),
            options.clone(),
        )
        .expect("h1");
        wait_until(&store, "h1 as controller", 10, |_, _, _, c| {
            c.is_some_and(|c| c.host == "h1")
        })
        .await;
        let l2 = Local::start_with(
            link2.clone(),
            topo.clone(),
            &["h2".into()],
            dir.path().join("h2"),
            options,
        )
        .expect("h2");
        wait_until(&store, "a primary, b backup", 15, |r, a, b, _| {
            r.primary.as_ref().is_some_and(|g| g.instance == "a")
                && a.is_some_and(|a| {
                    a.acting == Role::Primary && a.acting_epoch == r.epoch && !a.promoting
                })
                && b.is_some_and(|b| b.acting == Role::Backup && b.seen_generation >= r.generation)
        })
        .await;
        Pair {
            dir,
            store,
            link1,
            link2,
            l1,
            l2,
        }
    }
}
