//! A harness for end-to-end tests: writes a topology with free ports, runs
//! the real `tandem up` binary on it, and asks the API and the demo
//! components what they see. Every wait is bounded.
#![allow(dead_code, clippy::disallowed_methods)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_api::types::{AppDoc, InstanceDoc, Role, StatusDoc};
use tandem_client::ApiClient;
pub use tandem_demo::topology::DemoHook;

/// The `tandem` binary under test.
pub fn tandem() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

/// A port free for TCP and UDP on loopback (agent ports take both).
///
/// Taken below the kernel's ephemeral range (32768-60999 on Linux), never
/// from it: a port the kernel handed out for `bind(0)` is free again at
/// once, and an outgoing connection of a test running beside this one
/// (a client, chromedriver, etcd) could take it before it is used. Each
/// call of a test binary gets a different port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread test binaries (one process each) over the range.
    let seed = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (seed + n.wrapping_mul(7)) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// A warm-standby pair `web` (a: priority 100, b: 50) of demo components
/// with an HTTP health check and HTTP hook, journaling to the working
/// directory.
pub fn pair_topology(pa: u16, pb: u16, hook: DemoHook) -> String {
    tandem_demo::topology::warm_pair(&tandem_demo::topology::WarmPair {
        ports: [pa, pb],
        hook,
        extra_args: vec![
            "--journal".into(),
            "journal.{instance}.jsonl".into(),
            "--freeze-threshold-ms".into(),
            "500".into(),
        ],
        ..Default::default()
    })
}

/// An endpoint `switch` on 127.0.0.1:`port` and a link `uplink` from `web`
/// to it (`one`, probed every 100 ms, down after 2 failures, up after 2
/// successes): append it to the pair's topology.
pub fn switch_link(port: u16) -> String {
    format!(
        r#"
[[endpoints]]
name = "switch"
address = "127.0.0.1"
port = {port}

[[links]]
name = "uplink"
from = "web"
to = "switch"
cardinality = "one"
interval = "100ms"
timeout = "80ms"
failures_before_down = 2
successes_before_up = 2
"#
    )
}

/// `text` with `[cluster] agent_port = port` added.
pub fn with_agent_port(text: &str, port: u16) -> String {
    if text.contains("[cluster]") {
        text.replacen("[cluster]", &format!("[cluster]\nagent_port = {port}"), 1)
    } else {
        format!("[cluster]\nagent_port = {port}\n{text}")
    }
}

/// A running `tandem up`.
pub struct Up {
    pub child: Child,
    pub api: String,
    pub dir: tempfile::TempDir,
    pub topology: PathBuf,
    pub ports: [u16; 2],
    /// More arguments of `tandem up` (e.g. `--tokens FILE`).
    pub extra: Vec<String>,
    /// The token [`Up::client`] presents.
    pub token: Option<String>,
}

impl Up {
    /// Runs `tandem up` on the warm-standby pair in a fresh directory.
    pub fn pair() -> Up {
        Up::pair_with(DemoHook::Http)
    }

    /// The same, with another kind of role hook.
    pub fn pair_with(hook: DemoHook) -> Up {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports = [free_port(), free_port()];
        let topology = dir.path().join("pair.toml");
        std::fs::write(&topology, pair_topology(ports[0], ports[1], hook)).expect("write topology");
        Up::start_in(dir, topology, ports)
    }

    /// Runs `tandem up` on a topology given as text, in a fresh directory.
    pub fn topology(text: &str) -> Up {
        let dir = tempfile::tempdir().expect("tempdir");
        let topology = dir.path().join("t.toml");
        std::fs::write(&topology, text).expect("write topology");
        Up::start_in(dir, topology, [0, 0])
    }

    /// Runs `tandem up` on `topology`, with the working directory `dir`.
    /// Tests run side by side: unless the topology names an agent port, a
    /// copy with a free one is what runs.
    pub fn start_in(dir: tempfile::TempDir, topology: PathBuf, ports: [u16; 2]) -> Up {
        Up::start_with(dir, topology, ports, Vec::new(), None)
    }

    /// Runs `tandem up` on the warm-standby pair with more arguments, its
    /// client presenting `token`.
    pub fn pair_args(dir: tempfile::TempDir, extra: &[&str], token: Option<&str>) -> Up {
        let ports = [free_port(), free_port()];
        let topology = dir.path().join("pair.toml");
        std::fs::write(&topology, pair_topology(ports[0], ports[1], DemoHook::Http))
            .expect("write topology");
        Up::start_with(
            dir,
            topology,
            ports,
            extra.iter().map(|s| s.to_string()).collect(),
            token.map(str::to_owned),
        )
    }

    /// Runs `tandem up` on `topology` with more arguments `extra`.
    pub fn start_with(
        dir: tempfile::TempDir,
        topology: PathBuf,
        ports: [u16; 2],
        extra: Vec<String>,
        token: Option<String>,
    ) -> Up {
        let text = std::fs::read_to_string(&topology).expect("read topology");
        let topology = if text.contains("agent_port") {
            topology
        } else {
            let copy = dir.path().join(format!(
                "{}.agent-port.toml",
                topology.file_stem().and_then(|s| s.to_str()).unwrap_or("t")
            ));
            std::fs::write(&copy, with_agent_port(&text, free_port())).expect("write topology");
            copy
        };
        let api = format!("127.0.0.1:{}", free_port());
        let child = Self::spawn(dir.path(), &topology, &api, &extra);
        let up = Up {
            child,
            api,
            dir,
            topology,
            ports,
            extra,
            token,
        };
        up.wait_api();
        up
    }

    fn spawn(dir: &Path, topology: &Path, api: &str, extra: &[String]) -> Child {
        let log = std::fs::File::create(dir.join("up.log")).expect("log");
        Command::new(tandem())
            .arg("up")
            .arg(topology)
            .arg("--api")
            .arg(api)
            .arg("--log-level")
            .arg("info")
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn tandem up")
    }

    /// Stops `tandem up` with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tandem up did not exit after SIGTERM\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `tandem up` again in the same directory (same data dir).
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert!(
            status.success(),
            "tandem up exited with {status}\n{}",
            self.log()
        );
        self.child = Self::spawn(self.dir.path(), &self.topology, &self.api, &self.extra);
        self.wait_api();
    }

    /// What `tandem up` printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("up.log")).unwrap_or_default()
    }

    fn wait_api(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&self.api).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "API never came up\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn client(&self) -> ApiClient {
        ApiClient::with_options(
            &self.api,
            &tandem_client::ClientOptions {
                token: self.token.clone(),
                ..Default::default()
            },
        )
        .expect("client")
    }

    pub async fn status(&self) -> StatusDoc {
        self.client().status().await.expect("status")
    }

    pub async fn app(&self, name: &str) -> AppDoc {
        self.client().app(name).await.expect("app")
    }

    /// Waits until `pred` holds for app `web`, or panics with `what`.
    pub async fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&AppDoc) -> bool) -> AppDoc {
        self.wait_for_app("web", what, secs, pred).await
    }

    /// Waits until `pred` holds for `app`, or panics with `what`.
    pub async fn wait_for_app(
        &self,
        app: &str,
        what: &str,
        secs: u64,
        pred: impl Fn(&AppDoc) -> bool,
    ) -> AppDoc {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(doc) = self.client().app(app).await
                && pred(&doc)
            {
                return doc;
            }
            if Instant::now() > deadline {
                let last = self.client().app(app).await;
                panic!(
                    "timed out waiting for {what}; last: {last:#?}\n--- tandem up log ---\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for an acknowledged primary and a healthy backup; returns
    /// (primary, backup).
    pub async fn wait_pair(&self) -> (InstanceDoc, InstanceDoc) {
        let app = self
            .wait_for("a primary and a healthy backup", 30, |a| {
                a.primary.is_some()
                    && a.instances
                        .iter()
                        .all(|i| i.health == tandem_api::types::Health::Healthy)
                    && a.instances.iter().any(|i| i.role == Role::Backup)
            })
            .await;
        let p = app
            .instances
            .iter()
            .find(|i| i.role == Role::Primary)
            .cloned()
            .expect("primary");
        let b = app
            .instances
            .iter()
            .find(|i| i.role == Role::Backup)
            .cloned()
            .expect("backup");
        (p, b)
    }

    pub fn port_of(&self, id: &str) -> u16 {
        if id == "a" {
            self.ports[0]
        } else {
            self.ports[1]
        }
    }

    /// The demo component's own answer to `GET /`.
    pub async fn demo(&self, id: &str) -> Option<Value> {
        demo_get(self.port_of(id)).await
    }

    /// The journal the demo instance `id` wrote.
    pub fn journal(&self, id: &str) -> Vec<Value> {
        let path = self.dir.path().join(format!("journal.{id}.jsonl"));
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET / of a demo component on `port`, with a short timeout.
pub async fn demo_get(port: u16) -> Option<Value> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .ok()?;
    client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

/// Sends a signal by name with kill(1)'s semantics.
pub fn signal(pid: u32, name: &str) {
    let sig = match name {
        "KILL" => nix::sys::signal::Signal::SIGKILL,
        "STOP" => nix::sys::signal::Signal::SIGSTOP,
        "CONT" => nix::sys::signal::Signal::SIGCONT,
        "TERM" => nix::sys::signal::Signal::SIGTERM,
        "HUP" => nix::sys::signal::Signal::SIGHUP,
        other => panic!("unknown signal {other}"),
    };
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// True if a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// One stretch of time in which one demo process acted as primary at one
/// epoch, read from its journal: from its first line saying `primary` to
/// the last one before it said anything else (or changed epoch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PrimaryInterval {
    /// Journal time (ms since the Unix epoch) of the first `primary` line.
    pub first_ms: u64,
    /// Journal time of the last `primary` line of the stretch.
    pub last_ms: u64,
    /// The instance id.
    pub instance: String,
    /// The process.
    pub pid: u64,
    /// The epoch it acted under.
    pub epoch: u64,
}

/// Every primary interval recorded in the demo journals `paths` (missing
/// files count as empty), sorted by start. A journal line whose role is
/// `primary` (start, role, acting, notification, exit, ...) is evidence
/// that the process acted as primary at that time; any other role ends
/// the stretch.
pub fn primary_intervals(paths: &[PathBuf]) -> Vec<PrimaryInterval> {
    let mut out = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Open stretches by pid: several processes may append to one journal.
        let mut open: std::collections::BTreeMap<u64, PrimaryInterval> = Default::default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let (Some(pid), Some(t), Some(epoch)) =
                (v["pid"].as_u64(), v["t_ms"].as_u64(), v["epoch"].as_u64())
            else {
                continue;
            };
            let primary = v["role"] == "primary";
            if let Some(cur) = open.get_mut(&pid) {
                if primary && cur.epoch == epoch {
                    cur.last_ms = cur.last_ms.max(t);
                    continue;
                }
                out.extend(open.remove(&pid));
            }
            if primary {
                open.insert(
                    pid,
                    PrimaryInterval {
                        first_ms: t,
                        last_ms: t,
                        instance: v["instance"].as_str().unwrap_or("?").to_owned(),
                        pid,
                        epoch,
                    },
                );
            }
        }
        out.extend(open.into_values());
    }
    out.sort();
    out
}

/// The pairs (earlier, later) of `intervals` (sorted by start) in which the
/// later one started before the earlier one ended: two primaries at once.
pub fn overlapping_intervals(
    intervals: &[PrimaryInterval],
) -> Vec<(PrimaryInterval, PrimaryInterval)> {
    let mut bad = Vec::new();
    for (i, later) in intervals.iter().enumerate() {
        for earlier in &intervals[..i] {
            if later.first_ms <= earlier.last_ms {
                bad.push((earlier.clone(), later.clone()));
            }
        }
    }
    bad
}
