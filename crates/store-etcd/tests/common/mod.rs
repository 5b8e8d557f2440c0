//! A real etcd cluster for the tests: three `etcd` processes on loopback,
//! on free ports, with their data and logs in a temporary directory.
//!
//! Members are spawned by one long-lived thread with `PR_SET_PDEATHSIG`,
//! so they die with the test process even if it is killed; a dropped
//! [`Cluster`] (or, for [`shared`], the end of the process) kills them and
//! removes the directory.
#![allow(dead_code)] // each test file uses part of it
#![allow(clippy::disallowed_methods)] // tests keep time

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use tandem_store_etcd::{EtcdOptions, EtcdStore};

/// How long a new cluster may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One member's fixed identity.
struct MemberSpec {
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` and `/metrics` (also when clients use TLS).
    metrics_port: u16,
}

/// Server-side TLS of the client port: PEM files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The members' certificate (valid for 127.0.0.1).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA that signs client certificates; clients must present one.
    pub client_ca: PathBuf,
}

/// A running etcd cluster on loopback. Dropping it kills every member.
pub struct Cluster {
    dir: Mutex<Option<tempfile::TempDir>>,
    data: PathBuf,
    token: String,
    members: Vec<MemberSpec>,
    tls: Option<ServerTls>,
    /// Raft timing (heartbeat interval, election timeout, in ms) other than
    /// etcd's defaults (100, 1000).
    timing: Option<(u64, u64)>,
    children: Mutex<Vec<Option<Child>>>,
}

type SpawnRequest = (Vec<String>, PathBuf, mpsc::Sender<io::Result<Child>>);

/// The thread that spawns every member: it lives as long as the process,
/// so `PR_SET_PDEATHSIG` (which fires when the spawning *thread* ends)
/// kills the members exactly when the test process ends.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("etcd-spawner".into())
            .spawn(move || {
                for (args, log, reply) in rx {
                    let _ = reply.send(spawn_etcd(&args, &log));
                }
            })
            .expect("start the etcd spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_etcd(args: &[String], log: &Path) -> io::Result<Child> {
    let log = OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = Command::new("etcd");
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
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
    cmd.spawn()
}

/// `n` distinct free ports on 127.0.0.1 (all bound at once, then freed).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// One HTTP/1.0 GET on a member's metrics port; the response, if it
/// answered.
fn http_get(port: u16, path: &str, timeout: Duration) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

impl Cluster {
    /// Starts a 3-member cluster and waits until every member is healthy.
    /// Panics with a clear message if `etcd` is not installed.
    pub fn start() -> Cluster {
        Cluster::start_with(3)
    }

    /// Starts an `n`-member cluster and waits until every member is
    /// healthy (retrying on other ports if one was taken meanwhile).
    pub fn start_with(n: usize) -> Cluster {
        Cluster::start_tls(n, None)
    }

    /// [`Cluster::start_with`], with clients talking TLS (and presenting
    /// certificates) if `tls` is given.
    pub fn start_tls(n: usize, tls: Option<ServerTls>) -> Cluster {
        Cluster::start_full(n, tls, None)
    }

    /// [`Cluster::start_with`] with raft timing `(heartbeat interval,
    /// election timeout)` in ms: etcd grants no lease shorter than about
    /// 1.5 election timeouts, so 1 s leases need a 500 ms timeout.
    pub fn start_timed(n: usize, timing: (u64, u64)) -> Cluster {
        Cluster::start_full(n, None, Some(timing))
    }

    fn start_full(n: usize, tls: Option<ServerTls>, timing: Option<(u64, u64)>) -> Cluster {
        let mut last = String::new();
        for _ in 0..3 {
            let cluster = Cluster::spawn(n, tls.clone(), timing);
            match cluster.wait_started() {
                Ok(()) => return cluster,
                Err(e) => last = e,
            }
        }
        panic!("cannot start an etcd cluster: {last}");
    }

    fn spawn(n: usize, tls: Option<ServerTls>, timing: Option<(u64, u64)>) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("tandem-etcd-test-")
            .tempdir()
            .expect("create a temporary directory");
        let ports = free_ports(3 * n);
        let members = (0..n)
            .map(|i| MemberSpec {
                name: format!("e{i}"),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                metrics_port: ports[3 * i + 2],
            })
            .collect();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let cluster = Cluster {
            data: dir.path().to_owned(),
            dir: Mutex::new(Some(dir)),
            token: format!("tandem-test-{}-{nanos}", std::process::id()),
            members,
            tls,
            timing,
            children: Mutex::new((0..n).map(|_| None).collect()),
        };
        for i in 0..n {
            cluster.restart_member(i);
        }
        cluster
    }

    /// Waits until every member is healthy; an error if one exited.
    fn wait_started(&self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for i in 0..self.members.len() {
                let mut children = self.lock();
                if let Some(child) = children[i].as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    drop(children);
                    let log = self.log_tail(i, 20);
                    self.kill_all();
                    return Err(format!(
                        "member {i} exited with {status} while starting; its log ends with:\n{log}"
                    ));
                }
            }
            if (0..self.members.len()).all(|i| self.is_healthy(i)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..self.members.len())
                    .map(|i| format!("member {i}:\n{}", self.log_tail(i, 10)))
                    .collect();
                self.kill_all();
                return Err(format!(
                    "not healthy within {START_TIMEOUT:?}; logs:\n{}",
                    logs.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Child>>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn args(&self, i: usize) -> Vec<String> {
        let m = &self.members[i];
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let client = self.endpoint(i);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let mut args = tandem_store_etcd::testing::Member {
            name: &m.name,
            client_url: &client,
            peer_url: &peer,
            initial_cluster: &initial.join(","),
            token: &self.token,
            data_dir: &self.data.join(&m.name),
        }
        .args();
        args.extend(["--listen-metrics-urls".to_owned(), metrics]);
        if let Some((heartbeat, election)) = self.timing {
            args.extend([
                "--heartbeat-interval".to_owned(),
                heartbeat.to_string(),
                "--election-timeout".to_owned(),
                election.to_string(),
            ]);
        }
        if let Some(tls) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &tls.cert),
                ("--key-file", &tls.key),
                ("--trusted-ca-file", &tls.client_ca),
            ] {
                args.push(flag.to_owned());
                args.push(path.display().to_string());
            }
            args.push("--client-cert-auth".to_owned());
        }
        args
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.data.join(format!("{}.log", self.members[i].name))
    }

    /// The last `lines` lines of member `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The client endpoint of member `i` (`http://127.0.0.1:PORT`, or
    /// `https://` with TLS).
    pub fn endpoint(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client endpoint, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The member whose client endpoint is `endpoint`.
    pub fn member_of(&self, endpoint: &str) -> usize {
        (0..self.members.len())
            .find(|&i| self.endpoint(i) == endpoint)
            .unwrap_or_else(|| panic!("{endpoint} is not a member of this cluster"))
    }

    /// The pid of member `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.lock()[i].as_ref().map(|c| c.id())
    }

    /// Kills member `i` with SIGKILL (no-op if it is not running).
    pub fn kill_member(&self, i: usize) {
        let child = self.lock()[i].take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again from its data directory (or for the first
    /// time); does not wait for it to be healthy.
    pub fn restart_member(&self, i: usize) {
        self.kill_member(i);
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((self.args(i), self.log_path(i), tx))
            .expect("the etcd spawner thread is gone");
        let child = match rx.recv().expect("the etcd spawner thread is gone") {
            Ok(child) => child,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("etcd is not installed: apt-get install etcd-server")
            }
            Err(e) => panic!("cannot start etcd: {e}"),
        };
        self.lock()[i] = Some(child);
    }

    /// True if member `i` answers its `/health` check (it has a leader and
    /// serves a quorum read).
    pub fn is_healthy(&self, i: usize) -> bool {
        http_get(
            self.members[i].metrics_port,
            "/health",
            Duration::from_secs(2),
        )
        .is_some_and(|r| r.contains("\"health\":\"true\""))
    }

    /// Waits until every member of `members` is healthy; panics (with their
    /// logs) if not within `within`.
    pub fn wait_healthy(&self, members: &[usize], within: Duration) {
        let deadline = Instant::now() + within;
        while !members.iter().all(|&i| self.is_healthy(i)) {
            if Instant::now() > deadline {
                let logs: Vec<String> = members
                    .iter()
                    .map(|&i| format!("member {i}:\n{}", self.log_tail(i, 10)))
                    .collect();
                panic!(
                    "members {members:?} not healthy within {within:?}; logs:\n{}",
                    logs.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The member that is the raft leader now, if one says so.
    pub fn leader(&self) -> Option<usize> {
        (0..self.members.len()).find(|&i| {
            http_get(
                self.members[i].metrics_port,
                "/metrics",
                Duration::from_secs(2),
            )
            .is_some_and(|m| m.lines().any(|l| l == "etcd_server_is_leader 1"))
        })
    }

    /// A store connected to every member.
    pub async fn store(&self, request_timeout: Duration) -> Arc<EtcdStore> {
        EtcdStore::connect(
            &self.endpoints(),
            EtcdOptions {
                connect_timeout: Duration::from_secs(5),
                request_timeout,
                ..EtcdOptions::default()
            },
        )
        .await
        .expect("connect to the test cluster")
    }

    fn kill_all(&self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    /// Kills every member and removes the data directory.
    pub fn shutdown(&self) {
        self.kill_all();
        drop(self.dir.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One cluster shared by every test of a test binary, started on first
/// use and shut down when the process exits.
pub fn shared() -> &'static Cluster {
    static SHARED: OnceLock<Cluster> = OnceLock::new();
    extern "C" fn shutdown_shared() {
        if let Some(cluster) = SHARED.get() {
            cluster.shutdown();
        }
    }
    SHARED.get_or_init(|| {
        let cluster = Cluster::start();
        // SAFETY: registers a plain function; it runs at process exit.
        unsafe {
            libc::atexit(shutdown_shared);
        }
        cluster
    })
}
