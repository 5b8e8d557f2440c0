//! `tandem_agent::supervisor::run` on the embedded store: it waits for a
//! topology, refuses one that does not name its host, and follows a
//! stored topology's changes, restarting its companion with each one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_agent::local::LocalOptions;
use tandem_agent::supervisor::{self, Companion, SupervisorConfig};
use tandem_core::model::keys;
use tandem_core::topology::Topology;
use tandem_store::{EmbeddedStore, Store};
use tokio_util::sync::CancellationToken;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A topology of one host, h1, running `sleep {seconds}`, whose agent
/// listens on `port`.
fn topology(name: &str, seconds: &str, port: u16) -> Topology {
    let text = format!(
        r#"
[cluster]
name = "{name}"
lease_ttl = "2s"
renew_interval = "300ms"
fence_margin = "800ms"
agent_port = {port}

[[sites]]
name = "dc1"

[[hosts]]
name = "h1"
site = "dc1"
address = "127.0.0.1"

[apps.solo]
ha = "none"
command = ["sleep", "{seconds}"]

[[apps.solo.instances]]
id = "a"
host = "h1"
"#
    );
    tandem_core::topology::parse("t.toml", &text).expect("a valid topology")
}

async fn store_topology(store: &Arc<dyn Store>, topology: &Topology) -> u64 {
    let value = serde_json::to_vec(topology).expect("serializable");
    store
        .put(keys::TOPOLOGY, value, None)
        .await
        .expect("store the topology")
}

/// Waits until instance solo/a's status was written after `revision`
/// (its agent holds a lease and runs it); false after 20 s.
async fn status_after(store: &Arc<dyn Store>, revision: u64) -> bool {
    for _ in 0..400 {
        if let Ok(Some(kv)) = store.get(&keys::status("solo", "a")).await
            && kv.mod_revision > revision
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn config(host: &str, dir: &tempfile::TempDir) -> SupervisorConfig {
    SupervisorConfig {
        host: host.into(),
        data_dir: dir.path().to_path_buf(),
        local: LocalOptions::default(),
    }
}

/// Records what the supervisor asks of it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.0.lock().expect("lock").clone()
    }
}

impl Companion for Recorder {
    async fn start(
        &mut self,
        topology: &Arc<Topology>,
        _local: &tandem_agent::local::Local,
    ) -> anyhow::Result<()> {
        self.0
            .lock()
            .expect("lock")
            .push(format!("start {}", topology.name));
        Ok(())
    }

    async fn stop(&mut self) {
        self.0.lock().expect("lock").push("stop".into());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_topology_and_stops_cleanly_without_one() {
    let store: Arc<dyn Store> = EmbeddedStore::in_memory();
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let mut no_companion = ();
    let run = supervisor::run(store, config("h1", &dir), &mut no_companion, stop.clone());
    let stopper = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
    };
    let (result, ()) = tokio::join!(run, stopper);
    result.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_topology_without_this_host_is_a_clear_error() {
    let store: Arc<dyn Store> = EmbeddedStore::in_memory();
    store_topology(&store, &topology("t1", "1000", free_port())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let result =
        supervisor::run(store, config("h9", &dir), &mut (), CancellationToken::new()).await;
    let error = result.expect_err("h9 is not in the topology").to_string();
    assert!(
        error.contains("host \"h9\" is not in topology t1"),
        "{error}"
    );
}

/// Runs the supervisor on `first`, stores `second` once the host runs
/// `first`, stops once it runs `second`; returns the companion's calls.
/// (Stopping an agent before it holds its lease is an error of its own.)
async fn follow_change(first: Topology, second: Topology) -> Vec<String> {
    let store: Arc<dyn Store> = EmbeddedStore::in_memory();
    let r1 = store_topology(&store, &first).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let recorder = Recorder::default();
    let mut companion = recorder.clone();
    let run = supervisor::run(
        store.clone(),
        config("h1", &dir),
        &mut companion,
        stop.clone(),
    );
    let driver = async {
        if status_after(&store, r1).await {
            let r2 = store_topology(&store, &second).await;
            status_after(&store, r2).await;
        }
        stop.cancel();
    };
    let (result, ()) = tokio::join!(run, driver);
    result.expect("a clean stop");
    recorder.calls()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_app_is_applied_in_place_and_the_companion_serves_the_new_topology() {
    let port = free_port();
    let calls = follow_change(topology("t1", "1000", port), topology("t2", "2000", port)).await;
    assert_eq!(calls, ["start t1", "stop", "start t2", "stop"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_cluster_settings_restart_the_host_and_the_companion_serves_the_new_topology() {
    let calls = follow_change(
        topology("t1", "1000", free_port()),
        topology("t2", "1000", free_port()),
    )
    .await;
    assert_eq!(calls, ["start t1", "stop", "start t2", "stop"]);
}
