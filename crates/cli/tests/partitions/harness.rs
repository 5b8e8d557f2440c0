//! The cluster the partition tests run on: three etcd members (e1, e2, e3)
//! and three agent hosts (h1, h2, h3), each in its own network namespace of
//! a [`tandem_testnet::Net`], plus a control host (`ctl`) from which the
//! test talks to them. Nothing of it is reachable from the machine's own
//! network namespace, so the test body runs on a thread inside `ctl`
//! ([`run`]); processes are spawned from that thread with
//! `PR_SET_PDEATHSIG`, and the `Net` kills whatever is left when dropped.
//!
//! The topology: a warm-standby pair `web` (a on h1, priority 100; b on h2)
//! with an HTTP health check and HTTP hook, and a singleton `daemon` (a on
//! h1, b on h2); both journal when they act as primary. h3 runs no
//! instance: an agent that can be controller and serves an API that no
//! fault on h1 or h2 touches.
#![allow(dead_code, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tandem_api::types::{AppDoc, Health, InstanceDoc, Role, StatusDoc};
use tandem_client::{ApiClient, ClientError, SwitchoverOutcome};
use tandem_demo::topology::{WarmPair, app_block};
use tandem_testnet::{Host, Net, default_subnet};

use crate::common::{PrimaryInterval, overlapping_intervals, primary_intervals, tandem};

/// etcd's client port on each member's address.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const ETCD_PEER_PORT: u16 = 2380;
/// Each agent serves the API on its host's address at this port.
pub const API_PORT: u16 = 7420;
/// `web`'s port on h1 and h2.
pub const WEB_PORT: u16 = 8081;
/// `daemon`'s port on h1 and h2.
pub const DAEMON_PORT: u16 = 8091;
/// The apps of the topology.
pub const APPS: [&str; 2] = ["web", "daemon"];
/// The cluster timings (topology `[cluster]`), for messages.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How often agents renew their lease.
pub const RENEW_INTERVAL: Duration = Duration::from_millis(300);
/// How long before expiry a primary that cannot renew steps down.
pub const FENCE_MARGIN: Duration = Duration::from_millis(800);

/// One cluster at a time: they share the machine's 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the Unix epoch: the demo journals' clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The instance on the other host (`a` is on h1, `b` on h2).
pub fn other(id: &str) -> &'static str {
    if id == "a" { "b" } else { "a" }
}

/// The host of instance `id` (the same for both apps).
pub fn host_of(id: &str) -> &'static str {
    if id == "a" { "h1" } else { "h2" }
}

/// The app `name` of a status document.
pub fn app<'a>(doc: &'a StatusDoc, name: &str) -> &'a AppDoc {
    doc.apps
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no app {name} in {doc:#?}"))
}

/// The instance `id` of an app document.
pub fn inst<'a>(app: &'a AppDoc, id: &str) -> &'a InstanceDoc {
    app.instances
        .iter()
        .find(|i| i.id == id)
        .unwrap_or_else(|| panic!("no instance {id} in {app:#?}"))
}

/// Both apps have `primary` as their acknowledged, healthy primary; the
/// other `web` instance is a healthy backup and the other `daemon`
/// instance is not running; the state is fresh.
pub fn settled_on(doc: &StatusDoc, primary: &str) -> bool {
    let web = app(doc, "web");
    let daemon = app(doc, "daemon");
    let backup = other(primary);
    !doc.stale
        && web.primary.as_deref() == Some(primary)
        && web.instances.iter().all(|i| i.health == Health::Healthy)
        && inst(web, backup).role == Role::Backup
        && daemon.primary.as_deref() == Some(primary)
        && inst(daemon, primary).health == Health::Healthy
        && inst(daemon, backup).pid.is_none()
}

/// The primary and epoch of each app: what must not change when nothing
/// should.
pub fn roles_of(doc: &StatusDoc) -> Vec<(String, Option<String>, u64)> {
    doc.apps
        .iter()
        .map(|a| (a.name.clone(), a.primary.clone(), a.epoch))
        .collect()
}

/// The running test cluster. Dropping it kills every process it started
/// and removes the namespaces and the directory.
pub struct Cluster {
    /// The namespaces.
    pub net: Net,
    /// Topology, journals, logs and etcd data (on tmpfs when there is one).
    pub dir: tempfile::TempDir,
    /// e1, e2, e3.
    pub etcd: Vec<Host>,
    /// h1, h2, h3 by name.
    pub hosts: BTreeMap<String, Host>,
    /// Where the test talks from.
    pub ctl: Host,
    etcd_procs: Mutex<Vec<Option<Child>>>,
    agents: Mutex<BTreeMap<String, Child>>,
    started: Instant,
}

/// Sets up a cluster, starts etcd and the agents (in `order`: the first
/// one becomes controller; h1 is started before h2 so that h1 holds both
/// primaries), runs `scenario` on a thread inside the control namespace,
/// and on failure prints the journals, intervals and logs before passing
/// the panic on. One cluster runs at a time.
pub fn run(name: &str, order: [&str; 3], scenario: impl AsyncFnOnce(&Cluster) + Send) {
    let _serial = serial();
    let cluster = Cluster::new().expect("cannot set up the test network (run as root)");
    let ctl = cluster.ctl.clone();
    let outcome = cluster
        .net
        .run_in(&ctl, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                rt.block_on(async {
                    cluster.start(order).await;
                    println!(
                        "[{name}] cluster ready after {:.1} s",
                        cluster.started.elapsed().as_secs_f64()
                    );
                    scenario(&cluster).await;
                })
            }));
            if result.is_err() {
                cluster.dump(name);
            }
            drop(rt);
            result
        })
        .expect("cannot enter the control namespace");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    println!(
        "[{name}] passed in {:.1} s",
        cluster.started.elapsed().as_secs_f64()
    );
}

/// Like [`run`], for tests with their own topology: sets up a cluster with
/// the `extra` hosts, starts the three etcd members, and runs `scenario`
/// (which applies its topology and starts the agents) on a thread inside
/// the control namespace; on failure prints the agents', instances' and
/// etcd's logs. One cluster runs at a time.
pub fn run_with(name: &str, extra: &[&str], scenario: impl AsyncFnOnce(&Cluster) + Send) {
    let _serial = serial();
    let cluster = Cluster::new_with(extra).expect("cannot set up the test network (run as root)");
    let ctl = cluster.ctl.clone();
    let outcome = cluster
        .net
        .run_in(&ctl, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                rt.block_on(async {
                    for i in 0..cluster.etcd.len() {
                        cluster.start_etcd(i);
                    }
                    cluster.wait_etcd(&[0, 1, 2], 30).await;
                    println!(
                        "[{name}] etcd ready after {:.1} s",
                        cluster.started.elapsed().as_secs_f64()
                    );
                    scenario(&cluster).await;
                })
            }));
            if result.is_err() {
                cluster.dump(name);
                cluster.dump_instance_logs();
            }
            drop(rt);
            result
        })
        .expect("cannot enter the control namespace");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    println!(
        "[{name}] passed in {:.1} s",
        cluster.started.elapsed().as_secs_f64()
    );
}

/// Makes a child die with the thread that spawned it (`PR_SET_PDEATHSIG`).
pub fn die_with_parent(cmd: &mut Command) {
    pdeathsig(cmd);
}

fn pdeathsig(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(1000))
        .build()
        .expect("http client")
}

impl Cluster {
    fn new() -> anyhow::Result<Cluster> {
        Cluster::new_with(&[])
    }

    /// A cluster with `extra` hosts (e.g. a database's) added after `ctl`,
    /// reachable with [`Cluster::host`] like h1, h2 and h3.
    fn new_with(extra: &[&str]) -> anyhow::Result<Cluster> {
        let mut net = Net::new(&default_subnet())?;
        let etcd = ["e1", "e2", "e3"]
            .iter()
            .map(|n| net.add_host(n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut hosts = BTreeMap::new();
        for n in ["h1", "h2", "h3"] {
            hosts.insert(n.to_owned(), net.add_host(n)?);
        }
        let ctl = net.add_host("ctl")?;
        for n in extra {
            hosts.insert((*n).to_owned(), net.add_host(n)?);
        }
        let dir = tempfile::Builder::new()
            .prefix("tandem-partitions-")
            .tempdir_in("/dev/shm")
            .or_else(|_| {
                tempfile::Builder::new()
                    .prefix("tandem-partitions-")
                    .tempdir()
            })?;
        Ok(Cluster {
            net,
            dir,
            etcd,
            hosts,
            ctl,
            etcd_procs: Mutex::new(vec![None, None, None]),
            agents: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
        })
    }

    /// The host named `name` (h1, h2 or h3).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .get(name)
            .unwrap_or_else(|| panic!("no host {name}"))
    }

    /// `etcd://e1:2379,e2:2379,e3:2379` with the members' addresses.
    pub fn store_url(&self) -> String {
        let members: Vec<String> = self
            .etcd
            .iter()
            .map(|h| format!("{}:{ETCD_CLIENT_PORT}", h.addr))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    fn journal(&self, app: &str, id: &str) -> PathBuf {
        self.dir.path().join(format!("{app}.{id}.jsonl"))
    }

    fn topology(&self) -> String {
        let mut t = self.topology_head();
        for (name, ha, port) in [
            ("web", "warm-standby", WEB_PORT),
            ("daemon", "singleton", DAEMON_PORT),
        ] {
            t.push('\n');
            t.push_str(&app_block(&self.pair(name, ha, port), ["h1", "h2"]));
        }
        t
    }

    /// A pair `name` of demo components in mode `ha` on `port` of h1 and
    /// h2, bound to their host's address, journaling to the test's
    /// directory.
    pub fn pair(&self, name: &str, ha: &str, port: u16) -> WarmPair {
        let journal = self.dir.path().join("{app}.{instance}.jsonl");
        WarmPair {
            app: name.into(),
            mode: ha.into(),
            ports: [port, port],
            check_interval_ms: 200,
            check_timeout_ms: 150,
            failures_before_unhealthy: 3,
            successes_before_healthy: 1,
            stable_after_ms: 1000,
            stop_timeout_ms: Some(1000),
            extra_args: vec![
                "--bind".into(),
                "{address}".into(),
                "--journal".into(),
                journal.display().to_string(),
            ],
            ..WarmPair::default()
        }
    }

    /// The topology's `[cluster]` timings, site `dc1` and hosts h1, h2,
    /// h3: what every topology of these tests starts with.
    pub fn topology_head(&self) -> String {
        let addr = |h: &str| self.host(h).addr.to_string();
        let mut t = format!(
            r#"
[cluster]
lease_ttl = "{ttl}ms"
renew_interval = "{renew}ms"
fence_margin = "{margin}ms"

[[sites]]
name = "dc1"
"#,
            ttl = LEASE_TTL.as_millis(),
            renew = RENEW_INTERVAL.as_millis(),
            margin = FENCE_MARGIN.as_millis(),
        );
        for h in ["h1", "h2", "h3"] {
            t.push_str(&format!(
                "\n[[hosts]]\nname = \"{h}\"\nsite = \"dc1\"\naddress = \"{}\"\n",
                addr(h)
            ));
        }
        t
    }

    // ---- etcd -------------------------------------------------------------

    fn etcd_args(&self, i: usize) -> Vec<String> {
        let h = &self.etcd[i];
        let name = &h.name;
        let client = format!("http://{}:{ETCD_CLIENT_PORT}", h.addr);
        let peer = format!("http://{}:{ETCD_PEER_PORT}", h.addr);
        let initial: Vec<String> = self
            .etcd
            .iter()
            .map(|m| format!("{}=http://{}:{ETCD_PEER_PORT}", m.name, m.addr))
            .collect();
        tandem_store_etcd::testing::Member {
            name,
            client_url: &client,
            peer_url: &peer,
            initial_cluster: &initial.join(","),
            token: "tandem-partitions",
            data_dir: &self.dir.path().join("etcd").join(name),
        }
        .args()
    }

    /// Starts member `i` (again, from its data directory).
    pub fn start_etcd(&self, i: usize) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", self.etcd[i].name)))
            .expect("etcd log");
        let mut cmd = Command::new("etcd");
        cmd.args(self.etcd_args(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log);
        pdeathsig(&mut cmd);
        let child = self
            .net
            .spawn(&self.etcd[i], &mut cmd)
            .expect("cannot start etcd (apt-get install etcd-server)");
        self.etcd_procs.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(child);
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill_etcd(&self, i: usize) {
        let child = self.etcd_procs.lock().unwrap_or_else(|e| e.into_inner())[i].take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn etcd_get(&self, i: usize, path: &str) -> Option<String> {
        let url = format!("http://{}:{ETCD_CLIENT_PORT}{path}", self.etcd[i].addr);
        http().get(url).send().await.ok()?.text().await.ok()
    }

    /// True if member `i` answers `/health` with a leader and a quorum read.
    pub async fn etcd_healthy(&self, i: usize) -> bool {
        self.etcd_get(i, "/health")
            .await
            .is_some_and(|b| b.contains("\"health\":\"true\""))
    }

    /// Waits until every member of `members` is healthy.
    pub async fn wait_etcd(&self, members: &[usize], secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let mut all = true;
            for &i in members {
                all &= self.etcd_healthy(i).await;
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd members {members:?} not healthy within {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The member that says it is the raft leader.
    pub async fn etcd_leader(&self) -> Option<usize> {
        for i in 0..self.etcd.len() {
            if self
                .etcd_get(i, "/metrics")
                .await
                .is_some_and(|m| m.lines().any(|l| l == "etcd_server_is_leader 1"))
            {
                return Some(i);
            }
        }
        None
    }

    /// The host whose agent holds the controller key (read with etcdctl).
    pub fn controller(&self) -> Option<String> {
        let endpoints: Vec<String> = self
            .etcd
            .iter()
            .map(|h| format!("http://{}:{ETCD_CLIENT_PORT}", h.addr))
            .collect();
        let mut cmd = Command::new("etcdctl");
        cmd.arg(format!("--endpoints={}", endpoints.join(",")))
            .args([
                "--command-timeout=2s",
                "get",
                "/tandem/controller",
                "--print-value-only",
            ])
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let out = self
            .net
            .spawn(&self.ctl, &mut cmd)
            .ok()?
            .wait_with_output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["host"].as_str().map(str::to_owned)
    }

    /// Waits until the controller key names a host that `pred` accepts.
    pub async fn wait_controller(
        &self,
        what: &str,
        secs: u64,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(h) = self.controller()
                && pred(&h)
            {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: controller is {:?}",
                self.controller()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // ---- agents -----------------------------------------------------------

    fn apply_topology(&self) {
        self.apply_topology_text("partitions.toml", &self.topology());
    }

    /// Writes `text` to `file_name` in the cluster's directory and applies
    /// it with `tandem topology apply` from the control host.
    pub fn apply_topology_text(&self, file_name: &str, text: &str) {
        let file = self.dir.path().join(file_name);
        std::fs::write(&file, text).expect("write the topology");
        let mut cmd = Command::new(tandem());
        cmd.args(["topology", "apply"])
            .arg(&file)
            .args(["--store", &self.store_url()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = self
            .net
            .spawn(&self.ctl, &mut cmd)
            .expect("spawn tandem topology apply")
            .wait_with_output()
            .expect("tandem topology apply");
        assert!(
            out.status.success(),
            "tandem topology apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `tandem agent` on host `name` (its log appends to agent-NAME.log).
    pub fn start_agent(&self, name: &str) {
        let host = self.host(name);
        let path = self.dir.path().join(format!("agent-{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("agent log");
        let mut cmd = Command::new(tandem());
        cmd.args(["agent", "--store", &self.store_url(), "--host", name])
            .arg("--cluster-secret-file")
            .arg(self.secret_file())
            .arg("--api")
            .arg(format!("{}:{API_PORT}", host.addr))
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("{name}.agent")))
            .args(["--log-level", "info"])
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log);
        pdeathsig(&mut cmd);
        let child = self.net.spawn(host, &mut cmd).expect("spawn tandem agent");
        let old = self
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), child);
        if let Some(mut old) = old {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    /// The cluster secret every agent shares (made on first use with
    /// `tandem secret new`): the agents authenticate each other.
    pub fn secret_file(&self) -> PathBuf {
        let file = self.dir.path().join("cluster.secret");
        if !file.exists() {
            let out = Command::new(tandem())
                .args(["secret", "new"])
                .arg(&file)
                .output()
                .expect("tandem secret new");
            assert!(
                out.status.success(),
                "tandem secret new: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        file
    }

    /// The pid of host `name`'s `tandem agent` process.
    pub fn agent_pid(&self, name: &str) -> u32 {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())[name].id()
    }

    /// Kills every process of host `name` (its agent and its instances).
    pub fn kill_host(&self, name: &str) {
        self.net.kill_host(self.host(name)).expect("kill host");
        if let Some(mut child) = self
            .agents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            let _ = child.wait();
        }
    }

    /// A client of host `name`'s API.
    pub fn api(&self, name: &str) -> ApiClient {
        ApiClient::new(&format!("{}:{API_PORT}", self.host(name).addr)).expect("api client")
    }

    /// Waits until `pred` holds for the status that host `via`'s API answers.
    pub async fn wait_status(
        &self,
        via: &str,
        what: &str,
        secs: u64,
        pred: impl Fn(&StatusDoc) -> bool,
    ) -> StatusDoc {
        let api = self.api(via);
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(doc) = api.status().await
                && pred(&doc)
            {
                return doc;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out ({secs} s) waiting for {what}; last status from {via}: {:#?}",
                    api.status().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The status host `via`'s API answers now.
    pub async fn status(&self, via: &str) -> StatusDoc {
        self.api(via)
            .status()
            .await
            .unwrap_or_else(|e| panic!("status from {via}: {e}"))
    }

    async fn start(&self, order: [&str; 3]) {
        for i in 0..self.etcd.len() {
            self.start_etcd(i);
        }
        self.wait_etcd(&[0, 1, 2], 30).await;
        self.apply_topology();
        for (n, name) in order.iter().enumerate() {
            self.start_agent(name);
            if n == 0 {
                self.wait_controller(&format!("{name} to be elected controller"), 30, |h| {
                    h == *name
                })
                .await;
            }
            if *name == "h1" {
                self.wait_status(name, "h1's instances to be primaries", 30, |d| {
                    APPS.iter()
                        .all(|a| app(d, a).primary.as_deref() == Some("a"))
                })
                .await;
            }
        }
        self.wait_status("h3", "a settled cluster (a primary, b backup)", 40, |d| {
            settled_on(d, "a")
        })
        .await;
    }

    // ---- demo components and journals -------------------------------------

    /// `GET /` of app `app`'s instance on host `host`, if it answers.
    pub async fn demo(&self, host: &str, app: &str) -> Option<Value> {
        let port = if app == "web" { WEB_PORT } else { DAEMON_PORT };
        let url = format!("http://{}:{port}/", self.host(host).addr);
        http().get(url).send().await.ok()?.json().await.ok()
    }

    /// Every primary interval of `app` in its instances' journals, by start.
    pub fn intervals(&self, app: &str) -> Vec<PrimaryInterval> {
        primary_intervals(&[self.journal(app, "a"), self.journal(app, "b")])
    }

    /// The raw lines of one journal.
    pub fn journal_lines(&self, app: &str, id: &str) -> Vec<Value> {
        std::fs::read_to_string(self.journal(app, id))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The safety invariant: no two primary intervals of one app overlap.
    pub fn assert_no_overlap(&self) {
        for app in APPS {
            self.assert_no_overlap_of(app);
        }
    }

    /// The safety invariant for `app` (its instances a and b).
    pub fn assert_no_overlap_of(&self, app: &str) {
        let intervals = self.intervals(app);
        let bad = overlapping_intervals(&intervals);
        assert!(
            bad.is_empty(),
            "two primaries of {app} at once: {}\nall intervals of {app}:\n{}",
            bad.iter()
                .map(|(a, b)| format!(
                    "{}/{} (pid {}, epoch {}) acted until {} while {}/{} (pid {}, epoch {}) started at {} ({} ms of overlap)",
                    app, a.instance, a.pid, a.epoch, a.last_ms, app, b.instance, b.pid, b.epoch, b.first_ms,
                    a.last_ms.min(b.last_ms) - b.first_ms
                ))
                .collect::<Vec<_>>()
                .join("; "),
            describe(&intervals)
        );
    }

    /// A planned switchover of `web` to `to` through host `via`'s API,
    /// retried while the target is not fit yet (bounded).
    pub async fn switchover(&self, via: &str, to: &str) {
        let api = self.api(via);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = api
                .switchover("web", Some(to), Duration::from_secs(10))
                .await;
            match out {
                Ok(SwitchoverOutcome::Done { .. }) => return,
                Ok(SwitchoverOutcome::InProgress { intent, progress }) => {
                    // Recorded, not carried out within 10 s: it goes on.
                    let what = format!(
                        "the switchover of web to {to} (intent {intent}, {progress:?} after 10 s) to be carried out"
                    );
                    self.wait_status(via, &what, 20, |d| {
                        app(d, "web").primary.as_deref() == Some(to)
                    })
                    .await;
                    return;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "switchover of web to {to} through {via} did not succeed: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Normal operation after a fault is healed: both apps settled, every
    /// `web` instance healthy, a planned switchover through the API works
    /// to the other instance), and no two primaries ever overlapped.
    pub async fn assert_normal_operation(&self, via: &str) {
        let doc = self
            .wait_status(
                via,
                "normal operation (a primary, a healthy backup)",
                60,
                |d| settled_on(d, "a") || settled_on(d, "b"),
            )
            .await;
        let primary = app(&doc, "web").primary.clone().expect("a primary");
        let to = other(&primary);
        self.switchover(via, to).await;
        self.wait_status(
            via,
            &format!("web/{to} primary after the switchover"),
            20,
            |d| {
                let web = app(d, "web");
                web.primary.as_deref() == Some(to)
                    && web.instances.iter().all(|i| i.health == Health::Healthy)
                    && inst(web, &primary).role == Role::Backup
            },
        )
        .await;
        let seen = self.demo(host_of(to), "web").await;
        assert_eq!(
            seen.as_ref().map(|v| v["role"].clone()),
            Some(Value::from("primary")),
            "web/{to} answers as primary after the switchover: {seen:?}"
        );
        self.assert_no_overlap();
    }

    /// Prints what a failed scenario needs: intervals, journal tails, logs.
    pub fn dump(&self, name: &str) {
        eprintln!(
            "===== {name}: diagnostics (dir {}) =====",
            self.dir.path().display()
        );
        eprintln!("now_ms = {}", now_ms());
        eprintln!("controller key names host {:?}", self.controller());
        for app in APPS {
            eprintln!(
                "--- primary intervals of {app} ---\n{}",
                describe(&self.intervals(app))
            );
            for id in ["a", "b"] {
                eprintln!("--- journal {app}.{id} (last 15 lines) ---");
                eprintln!("{}", tail(&self.journal(app, id), 15));
            }
        }
        for h in ["h1", "h2", "h3"] {
            eprintln!("--- agent-{h}.log (last 120 lines) ---");
            eprintln!(
                "{}",
                tail(&self.dir.path().join(format!("agent-{h}.log")), 120)
            );
        }
        for m in &self.etcd {
            eprintln!("--- {}.log (last 8 lines) ---", m.name);
            eprintln!(
                "{}",
                tail(&self.dir.path().join(format!("{}.log", m.name)), 8)
            );
        }
    }
}

impl Cluster {
    /// The log file of instance `app`/`id` kept by host `host`'s agent.
    pub fn instance_log(&self, host: &str, app: &str, id: &str) -> PathBuf {
        self.dir
            .path()
            .join(format!("{host}.agent"))
            .join("hosts")
            .join(host)
            .join("logs")
            .join(format!("{app}.{id}.log"))
    }

    /// Prints the last lines of every instance log of every agent.
    pub fn dump_instance_logs(&self) {
        for h in self.hosts.keys() {
            let logs = self
                .dir
                .path()
                .join(format!("{h}.agent"))
                .join("hosts")
                .join(h)
                .join("logs");
            let Ok(entries) = std::fs::read_dir(&logs) else {
                continue;
            };
            for e in entries.flatten() {
                eprintln!("--- {h}: {} (last 30 lines) ---", e.path().display());
                eprintln!("{}", tail(&e.path(), 30));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let agents = std::mem::take(&mut *self.agents.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, mut child) in agents {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..self.etcd.len() {
            self.kill_etcd(i);
        }
    }
}

/// One line per interval.
pub fn describe(intervals: &[PrimaryInterval]) -> String {
    intervals
        .iter()
        .map(|i| {
            format!(
                "  {} pid {} epoch {}: {} .. {} ({} ms)",
                i.instance,
                i.pid,
                i.epoch,
                i.first_ms,
                i.last_ms,
                i.last_ms - i.first_ms
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// True if the API refused a write because the store has no quorum.
pub fn is_read_only(e: &ClientError) -> bool {
    e.status() == Some(503)
        && e.to_string()
            .contains("read-only: the coordination store has no quorum")
}
