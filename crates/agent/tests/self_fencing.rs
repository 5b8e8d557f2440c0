//! Self-fencing: an agent that cannot renew its lease steps its primary down
//! (or kills it when the hook fails) before the store can expire the lease
//! and let anyone else be promoted. Real agent, real controller, real
//! processes; the store is the embedded one behind a wrapper whose
//! keep-alives can be made to fail as an unreachable store's would.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use common::Flaky;
use futures::StreamExt;
use tandem_agent::local::Local;
use tandem_core::model::{AppRoles, InstanceStatus, Role, keys};
use tandem_store::{EmbeddedStore, EventKind, Store};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn topology(dir: &std::path::Path, failing_demotion: bool) -> String {
    let log = dir.join("hooks.log");
    // The hook records "instance role epoch time_ns"; with `failing_demotion`
    // it fails every demotion, as a component that cannot step down would.
    let fail = if failing_demotion {
        r#"[ \"$0\" = backup ] && exit 3; "#
    } else {
        ""
    };
    format!(
        r#"
[cluster]
lease_ttl = "3s"
renew_interval = "500ms"
fence_margin = "1s"
agent_port = {agent_port}
# Plain lease fencing: with failsafe, a primary whose app has no other host
# would keep its role while the store cannot be reached.
failsafe = false

[[sites]]
name = "dc1"

[[hosts]]
name = "local"
site = "dc1"
address = "127.0.0.1"

[apps.web]
ha = "warm-standby"
command = ["sleep", "1000"]

[apps.web.hook]
kind = "command"
command = ["sh", "-c", "{fail}echo \"$TANDEM_INSTANCE $0 $1 $(date +%s%N)\" >> {log}"]
timeout = "500ms"

[[apps.web.instances]]
id = "a"
host = "local"
priority = 10

[[apps.web.instances]]
id = "b"
host = "local"
"#,
        log = log.display(),
        agent_port = common::free_port(),
    )
}

struct Rig {
    store: Arc<Flaky>,
    local: Option<Local>,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start(failing_demotion: bool) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let topo = tandem_core::topology::parse("t.toml", &topology(dir.path(), failing_demotion))
            .expect("valid topology");
        let store = Flaky::keepalive_only(EmbeddedStore::in_memory());
        let local = Local::start(
            store.clone(),
            Arc::new(topo),
            &["local".to_string()],
            dir.path().to_path_buf(),
        )
        .expect("start");
        Rig {
            store,
            local: Some(local),
            dir,
        }
    }

    async fn status(&self, id: &str) -> Option<InstanceStatus> {
        let kv = self.store.get(&keys::status("web", id)).await.ok()??;
        serde_json::from_slice(&kv.value).ok()
    }

    /// Waits for an acknowledged primary; returns (instance, pid, epoch).
    async fn primary(&self, secs: u64) -> (String, u32, u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(kv)) = self.store.get(&keys::roles("web")).await
                && let Ok(roles) = serde_json::from_slice::<AppRoles>(&kv.value)
                && let Some(g) = roles.primary
                && let Some(s) = self.status(&g.instance).await
                && s.acting == Role::Primary
                && s.acting_epoch == g.epoch
                && !s.promoting
                && let Some(pid) = s.pid
            {
                return (g.instance, pid, g.epoch);
            }
            assert!(Instant::now() < deadline, "no acknowledged primary");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When (wall clock, ns) the store deletes `key` (its lease expired).
    fn deletion_time(&self, key: String) -> tokio::task::JoinHandle<u128> {
        let store = self.store.clone();
        tokio::spawn(async move {
            let mut w = store.watch(&key, 0).await.expect("watch");
            while let Some(Ok(ev)) = w.next().await {
                if ev.kv.key == key && ev.kind == EventKind::Delete {
                    return now_ns();
                }
            }
            panic!("watch ended before {key} was deleted");
        })
    }

    fn hook_lines(&self) -> Vec<(String, String, u64, u128)> {
        common::hook_lines(&self.dir.path().join("hooks.log"))
    }

    async fn stop(mut self) {
        self.store.unreachable.store(false, Ordering::SeqCst);
        if let Some(l) = self.local.take() {
            l.stop().await.expect("stop");
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewable_lease_demotes_the_primary_before_the_lease_can_expire() {
    let rig = Rig::start(false).await;
    let (id, pid, epoch) = rig.primary(20).await;
    let deleted = rig.deletion_time(keys::status("web", &id));

    let cut_at = now_ns();
    rig.store.unreachable.store(true, Ordering::SeqCst);
    let deleted_at = tokio::time::timeout(Duration::from_secs(15), deleted)
        .await
        .expect("the lease never expired")
        .expect("watch task");

    let demoted = rig
        .hook_lines()
        .into_iter()
        .find(|(i, role, e, t)| *i == id && role == "backup" && *e == epoch && *t > cut_at)
        .unwrap_or_else(|| panic!("{id} was never demoted: {:?}", rig.hook_lines()));
    assert!(
        demoted.3 < deleted_at,
        "demoted at {} ns, after the lease expired at {} ns",
        demoted.3,
        deleted_at
    );
    assert!(
        alive(pid),
        "a primary that confirmed stepping down is not killed"
    );

    // The store comes back: a new session, and a primary again, with a
    // higher epoch.
    rig.store.unreachable.store(false, Ordering::SeqCst);
    let (_, _, again) = rig.primary(20).await;
    assert!(
        again > epoch,
        "epoch {again} after recovery is not above {epoch}"
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_cannot_be_demoted_is_killed_before_the_lease_can_expire() {
    let rig = Rig::start(true).await;
    let (id, pid, _) = rig.primary(20).await;
    let deleted = rig.deletion_time(keys::status("web", &id));

    // Note when the process dies, independently of the agent.
    let death = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !alive(pid) {
                return Some(now_ns());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    });
    rig.store.unreachable.store(true, Ordering::SeqCst);
    let deleted_at = tokio::time::timeout(Duration::from_secs(15), deleted)
        .await
        .expect("the lease never expired")
        .expect("watch task");
    let died_at = death
        .await
        .expect("death watcher")
        .expect("the primary was never killed");
    assert!(
        died_at < deleted_at,
        "killed at {died_at} ns, after the lease expired at {deleted_at} ns"
    );
    rig.stop().await;
}
