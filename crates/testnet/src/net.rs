//! Network namespaces, the bridge between them, and iptables faults.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::DelayProxy;

/// Subnet (first three octets of a /24) used when [`SUBNET_ENV`] is unset.
pub const DEFAULT_SUBNET: &str = "10.77.0";
/// Environment variable that overrides [`DEFAULT_SUBNET`] in [`default_subnet`].
pub const SUBNET_ENV: &str = "TANDEM_TESTNET_SUBNET";

/// Every namespace this harness creates is named `tt-<pid>-<n>[-<host>]`.
const PREFIX: &str = "tt-";
/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Where each live `Net` holds an exclusive `flock` for its whole life, so a
/// later `Net::new` can tell a crashed run's leftovers from a live run's.
const LOCK_DIR: &str = "/run/tandem-testnet";
/// The bridge inside the switch namespace.
const BRIDGE: &str = "br0";
/// A host's interface to the bridge, inside the host's namespace.
const HOST_IF: &str = "eth0";
/// A /24 holds hosts .1 to .254.
const MAX_HOSTS: usize = 254;
/// Longest host name (namespace names are file names; keep them readable).
const MAX_HOST_NAME: usize = 32;
/// How long `kill_host` waits for SIGKILLed processes to leave a namespace.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two scans of a namespace's processes while killing them.
const KILL_POLL: Duration = Duration::from_millis(10);

static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// The subnet tests should use: `$TANDEM_TESTNET_SUBNET`, or [`DEFAULT_SUBNET`].
pub fn default_subnet() -> String {
    std::env::var(SUBNET_ENV).unwrap_or_else(|_| DEFAULT_SUBNET.to_owned())
}

/// Why the harness could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TestnetError {
    /// Namespaces, veths and iptables rules need root.
    #[error(
        "tandem-testnet must run as root: it creates network namespaces, veth pairs and iptables rules (effective uid is {0})"
    )]
    NotRoot(u32),
    /// A command-line tool the harness drives is not installed.
    #[error("`{tool}` is not installed ({source}); install it with `apt-get install -y {package}`")]
    MissingTool {
        /// The program that could not be run.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
        /// Why it could not be run.
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The subnet prefix is not three octets of a private IPv4 range.
    #[error(
        "subnet prefix {0:?} must be the first three octets of a private IPv4 /24 (10.x.y, 172.16-31.x or 192.168.x), e.g. \"10.77.0\""
    )]
    InvalidSubnet(String),
    /// The host name cannot be part of a namespace name.
    #[error("host name {0:?} is invalid: use 1 to {MAX_HOST_NAME} characters of a-z, 0-9 and '-'")]
    InvalidHostName(String),
    /// Two hosts of one net share a name.
    #[error("host name {0:?} is already used in this net")]
    DuplicateHost(String),
    /// The host was not created by this net.
    #[error("host {0:?} does not belong to this net")]
    UnknownHost(String),
    /// A /24 has room for 254 hosts.
    #[error("this net already has {MAX_HOSTS} hosts, all a /24 holds")]
    Full,
    /// Processes were still in a namespace after SIGKILL and a bounded wait.
    #[error("processes {pids:?} are still in namespace {ns} {KILL_TIMEOUT:?} after SIGKILL")]
    Unkillable {
        /// The namespace.
        ns: String,
        /// The processes left in it.
        pids: Vec<u32>,
    },
}

/// One simulated machine: a network namespace with `lo` and `eth0` on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The name given to [`Net::add_host`].
    pub name: String,
    /// The network namespace (`ip netns exec <ns> ...` works on it too).
    pub ns: String,
    /// The host's address on the bridge (`<subnet>.N`).
    pub addr: IpAddr,
}

/// A bridge in a private "switch" namespace plus the hosts plugged into it.
///
/// Dropping a `Net` kills every process in its namespaces and deletes them,
/// which removes the veths, the bridge and every iptables rule with them.
#[derive(Debug)]
pub struct Net {
    id: String,
    subnet: [u8; 3],
    switch_ns: String,
    hosts: Vec<Host>,
    lock_path: PathBuf,
    /// Holds this net's `flock` until the net is torn down.
    lock: Option<File>,
}

impl Net {
    /// Creates an empty network `<subnet_prefix>.0/24` (e.g. `"10.77.0"`):
    /// a switch namespace with a bridge. Removes the namespaces of crashed
    /// earlier runs first. Fails clearly without root, `ip` or `iptables`.
    pub fn new(subnet_prefix: &str) -> anyhow::Result<Net> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(TestnetError::NotRoot(euid).into());
        }
        let subnet = parse_subnet(subnet_prefix)?;
        check_tool("ip", "iproute2", &["-V"])?;
        check_tool("iptables", "iptables", &["-V"])?;

        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT_NET.fetch_add(1, Ordering::Relaxed)
        );
        fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
        let lock_path = Path::new(LOCK_DIR).join(format!("{id}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        // SAFETY: flock on a valid, open file descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("locking {}", lock_path.display()));
        }

        remove_stale(&id);

        let net = Net {
            switch_ns: id.clone(),
            id,
            subnet,
            hosts: Vec::new(),
            lock_path,
            lock: Some(lock),
        };
        // From here on, Drop removes whatever was created if a step fails.
        ip(&["netns", "add", &net.switch_ns])?;
        let sw = net.switch_ns.clone();
        ip(&["-n", &sw, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "addrgenmode", "none"])?;
        ip(&["-n", &sw, "link", "set", BRIDGE, "up"])?;
        tracing::debug!(net = %net.id, subnet = %net.subnet_str(), "testnet created");
        Ok(net)
    }

    /// This net's unique prefix (`tt-<pid>-<n>`); every namespace it owns starts with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace holding the bridge.
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// The hosts added so far, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Adds a host: a namespace with `lo` up and `eth0` (a veth into the
    /// bridge) at `<subnet>.N/24`, N counting from 1. IPv6 is left
    /// unconfigured on `eth0` so that no traffic bypasses the IPv4 rules.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<Host> {
        if name.is_empty()
            || name.len() > MAX_HOST_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(TestnetError::InvalidHostName(name.to_owned()).into());
        }
        if self.hosts.iter().any(|h| h.name == name) {
            return Err(TestnetError::DuplicateHost(name.to_owned()).into());
        }
        if self.hosts.len() >= MAX_HOSTS {
            return Err(TestnetError::Full.into());
        }
        let n = self.hosts.len() + 1;
        let [a, b, c] = self.subnet;
        let octet = u8::try_from(n).map_err(|_| TestnetError::Full)?;
        let host = Host {
            name: name.to_owned(),
            ns: format!("{}-{name}", self.id),
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, octet)),
        };
        ip(&["netns", "add", &host.ns])?;
        // Registered now so that Drop deletes it even if a later step fails.
        self.hosts.push(host.clone());

        let ns = host.ns.as_str();
        let sw = self.switch_ns.as_str();
        let port = format!("v{n}");
        let cidr = format!("{}/24", host.addr);
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", HOST_IF, "netns", ns,
        ])?;
        ip(&["-n", sw, "link", "set", &port, "addrgenmode", "none"])?;
        ip(&["-n", sw, "link", "set", &port, "master", BRIDGE, "up"])?;
        ip(&["-n", ns, "link", "set", HOST_IF, "addrgenmode", "none"])?;
        ip(&["-n", ns, "addr", "add", &cidr, "dev", HOST_IF])?;
        ip(&["-n", ns, "link", "set", HOST_IF, "up"])?;
        tracing::debug!(net = %self.id, host = %host.name, addr = %host.addr, "testnet host added");
        Ok(host)
    }

    /// Runs `cmd` inside `host`'s network namespace (the child calls
    /// `setns` before `exec`). Its processes, and everything they fork, are
    /// found by [`Net::pids`] and killed by [`Net::kill_host`] and on drop.
    pub fn spawn(&self, host: &Host, cmd: &mut Command) -> anyhow::Result<Child> {
        self.check_host(host)?;
        let ns = open_ns(&host.ns)?;
        enter_ns_before_exec(cmd, &ns);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {cmd:?} in host {}", host.name))?;
        tracing::debug!(host = %host.name, pid = child.id(), cmd = ?cmd, "testnet spawned");
        Ok(child)
    }

    /// Runs `f` on a fresh thread that has entered `host`'s network
    /// namespace, and returns its result. Sockets `f` creates belong to the
    /// host for their whole life, whichever thread uses them later. A panic
    /// in `f` is propagated.
    pub fn run_in<T: Send>(&self, host: &Host, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        self.check_host(host)?;
        let ns = open_ns(&host.ns)?;
        in_netns(&ns, f).with_context(|| format!("entering namespace {}", host.ns))
    }

    /// Starts a [`DelayProxy`] inside `host`'s namespace: it listens on
    /// `listen` (e.g. `host.addr:port`) and connects to `target` from `host`
    /// (e.g. `127.0.0.1:port` of a service there), so traffic from other
    /// hosts to `listen` is delayed `delay` each way. Needs a tokio runtime.
    pub async fn delay_proxy(
        &self,
        host: &Host,
        listen: SocketAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> anyhow::Result<DelayProxy> {
        self.check_host(host)?;
        let ns = Arc::new(open_ns(&host.ns)?);
        let listener = in_netns(&ns, || std::net::TcpListener::bind(listen))
            .with_context(|| format!("entering namespace {}", host.ns))?
            .with_context(|| format!("binding {listen} in host {}", host.name))?;
        DelayProxy::from_listener(listener, target, delay, Some(ns))
            .with_context(|| format!("starting a delay proxy in host {}", host.name))
    }

    /// The processes currently in `host`'s namespace (found by comparing
    /// `/proc/<pid>/ns/net` with the namespace, like `ip netns pids`).
    pub fn pids(&self, host: &Host) -> anyhow::Result<Vec<u32>> {
        self.check_host(host)?;
        ns_pids(&host.ns).with_context(|| format!("listing processes of {}", host.ns))
    }

    /// SIGKILLs every process in `host`'s namespace, until none is left
    /// (bounded wait). The host's network stays; spawn on it again at will.
    pub fn kill_host(&self, host: &Host) -> anyhow::Result<()> {
        self.check_host(host)?;
        kill_ns(&host.ns)?;
        tracing::debug!(host = %host.name, "testnet host killed");
        Ok(())
    }

    /// Drops every packet into and out of `host` except on its loopback:
    /// `INPUT ! -i lo -j DROP` and `OUTPUT ! -o lo -j DROP` in its namespace.
    /// Peers see silence (timeouts), not refusals.
    pub fn isolate(&self, host: &Host) -> anyhow::Result<()> {
        self.iptables(host, &["-A", "INPUT", "!", "-i", "lo", "-j", "DROP"])?;
        self.iptables(host, &["-A", "OUTPUT", "!", "-o", "lo", "-j", "DROP"])
    }

    /// One-way cut: every packet `from` sends to `to` is dropped (`OUTPUT -d
    /// <to> -j DROP` in `from`'s namespace); packets from `to` still arrive.
    /// TCP needs both directions, so TCP between the two stalls either way.
    pub fn cut(&self, from: &Host, to: &Host) -> anyhow::Result<()> {
        self.check_host(to)?;
        self.cut_addr(from, to.addr)
    }

    /// Undoes one [`Net::cut`] of `from` to `to` (deletes that rule), leaving
    /// `from`'s other rules.
    pub fn uncut(&self, from: &Host, to: &Host) -> anyhow::Result<()> {
        self.check_host(to)?;
        let addr = to.addr.to_string();
        self.iptables(from, &["-D", "OUTPUT", "-d", &addr, "-j", "DROP"])
    }

    /// Drops every packet `host` sends to `addr` (`OUTPUT -d <addr> -j DROP`
    /// in `host`'s namespace), e.g. to cut a host off from etcd only.
    pub fn cut_addr(&self, host: &Host, addr: IpAddr) -> anyhow::Result<()> {
        let addr = addr.to_string();
        self.iptables(host, &["-A", "OUTPUT", "-d", &addr, "-j", "DROP"])
    }

    /// Drops each packet `host` sends off its loopback with the given
    /// probability (0.0 to 1.0), independently (`-m statistic --mode random`).
    pub fn loss(&self, host: &Host, probability: f64) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&probability),
            "loss probability {probability} is not between 0 and 1"
        );
        let p = format!("{probability:.4}");
        self.iptables(
            host,
            &[
                "-A",
                "OUTPUT",
                "!",
                "-o",
                "lo",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ],
        )
    }

    /// Removes every fault from `host`: flushes all iptables chains of its namespace.
    pub fn heal(&self, host: &Host) -> anyhow::Result<()> {
        self.iptables(host, &["-F"])?;
        self.iptables(host, &["-X"])
    }

    /// The rules in `host`'s namespace, as `iptables -S` prints them.
    pub fn rules(&self, host: &Host) -> anyhow::Result<String> {
        let out = self.iptables_output(host, &["-S"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stops process `pid` (SIGSTOP), e.g. to simulate a long GC pause.
    pub fn pause(pid: u32) -> anyhow::Result<()> {
        signal(pid, Signal::SIGSTOP)
    }

    /// Continues process `pid` after [`Net::pause`] (SIGCONT).
    pub fn resume(pid: u32) -> anyhow::Result<()> {
        signal(pid, Signal::SIGCONT)
    }

    /// Tears the net down now, reporting the first error (drop does the same
    /// but can only log).
    pub fn close(mut self) -> anyhow::Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> anyhow::Result<()> {
        let mut first_err: Option<anyhow::Error> = None;
        let mut keep = |r: anyhow::Result<()>| {
            if let Err(e) = r {
                tracing::warn!(error = %format!("{e:#}"), "testnet teardown");
                first_err.get_or_insert(e);
            }
        };
        let mut namespaces: Vec<String> = self.hosts.drain(..).rev().map(|h| h.ns).collect();
        if self.lock.is_some() {
            namespaces.push(self.switch_ns.clone());
        }
        for ns in &namespaces {
            keep(remove_ns(ns));
        }
        if let Some(lock) = self.lock.take() {
            keep(
                fs::remove_file(&self.lock_path)
                    .with_context(|| format!("removing {}", self.lock_path.display())),
            );
            drop(lock);
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn subnet_str(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    fn check_host(&self, host: &Host) -> Result<(), TestnetError> {
        if self.hosts.iter().any(|h| h == host) {
            Ok(())
        } else {
            Err(TestnetError::UnknownHost(host.name.clone()))
        }
    }

    fn iptables(&self, host: &Host, args: &[&str]) -> anyhow::Result<()> {
        self.iptables_output(host, args).map(drop)
    }

    fn iptables_output(&self, host: &Host, args: &[&str]) -> anyhow::Result<Output> {
        self.check_host(host)?;
        let ns = open_ns(&host.ns)?;
        let mut cmd = Command::new("iptables");
        // -w: wait for the xtables lock, which parallel tests share.
        cmd.arg("-w").args(args);
        enter_ns_before_exec(&mut cmd, &ns);
        let out = run(&mut cmd, "iptables", "iptables")?;
        tracing::debug!(host = %host.name, ?args, "testnet iptables");
        Ok(out)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(net = %self.id, error = %format!("{e:#}"), "testnet left something behind");
        }
    }
}

fn parse_subnet(prefix: &str) -> Result<[u8; 3], TestnetError> {
    let invalid = || TestnetError::InvalidSubnet(prefix.to_owned());
    let octets: Vec<u8> = prefix
        .split('.')
        .map(|o| o.parse::<u8>().map_err(|_| invalid()))
        .collect::<Result<_, _>>()?;
    let [a, b, c] = <[u8; 3]>::try_from(octets).map_err(|_| invalid())?;
    if Ipv4Addr::new(a, b, c, 0).is_private() {
        Ok([a, b, c])
    } else {
        Err(invalid())
    }
}

fn check_tool(tool: &'static str, package: &'static str, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(tool).args(args), tool, package).map(drop)
}

/// Runs `cmd` to completion; a non-zero exit becomes an error carrying stderr.
fn run(cmd: &mut Command, tool: &'static str, package: &'static str) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => TestnetError::MissingTool {
                tool,
                package,
                source,
            }
            .into(),
            _ => anyhow::Error::new(source).context(format!("running {cmd:?}")),
        })?;
    if !out.status.success() {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return Err(TestnetError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
        .into());
    }
    Ok(out)
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args), "ip", "iproute2").map(drop)
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

fn open_ns(ns: &str) -> anyhow::Result<File> {
    let path = netns_path(ns);
    File::open(&path).with_context(|| format!("opening network namespace {}", path.display()))
}

/// Makes the child enter the namespace of `ns` between fork and exec.
/// `ns` must stay open until the command is spawned.
fn enter_ns_before_exec(cmd: &mut Command, ns: &File) {
    let fd = ns.as_raw_fd();
    // SAFETY: the closure only makes the async-signal-safe setns syscall.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn signal(pid: u32, sig: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).with_context(|| format!("pid {pid} out of range"))?;
    kill(Pid::from_raw(raw), sig).with_context(|| format!("sending {sig} to {pid}"))
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`
/// (a thread's namespace is its own: the caller's is untouched). A panic in
/// `f` is propagated.
pub(crate) fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let joined = std::thread::scope(|scope| {
        scope
            .spawn(|| -> io::Result<T> {
                // SAFETY: setns on a valid namespace fd; it changes only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
    });
    match joined {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Processes whose network namespace is `ns`, except this one.
fn ns_pids(ns: &str) -> io::Result<Vec<u32>> {
    let target = fs::metadata(netns_path(ns))?;
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        // Fails for zombies and processes that just exited: they hold no namespace.
        if let Ok(m) = fs::metadata(entry.path().join("ns/net"))
            && m.dev() == target.dev()
            && m.ino() == target.ino()
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// SIGKILLs processes in `ns` until none is left or [`KILL_TIMEOUT`] passes.
fn kill_ns(ns: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + KILL_TIMEOUT;
    loop {
        let pids = match ns_pids(ns) {
            Ok(pids) => pids,
            // Deleted meanwhile (e.g. by a concurrent stale cleanup): nothing to kill.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("listing processes of {ns}")),
        };
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TestnetError::Unkillable {
                ns: ns.to_owned(),
                pids,
            }
            .into());
        }
        for pid in pids {
            if let Ok(raw) = i32::try_from(pid) {
                // ESRCH (already gone) is fine.
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        std::thread::sleep(KILL_POLL);
    }
}

/// Kills the processes of `ns`, then deletes it (which deletes its veths,
/// the bridge if it holds it, and its iptables rules).
fn remove_ns(ns: &str) -> anyhow::Result<()> {
    if !netns_path(ns).exists() {
        return Ok(());
    }
    kill_ns(ns)?;
    ip(&["netns", "del", ns])
}

/// `tt-<pid>-<n>` from a namespace name `tt-<pid>-<n>[-<host>]`.
fn net_id_of(ns: &str) -> Option<String> {
    let rest = ns.strip_prefix(PREFIX)?;
    let mut parts = rest.splitn(3, '-');
    let pid = parts.next()?;
    let n = parts.next()?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(pid) && digits(n)).then(|| format!("{PREFIX}{pid}-{n}"))
}

/// Whether the `Net` that wrote `lock_path` is alive: it holds the file's flock.
fn owner_alive(lock_path: &Path) -> bool {
    let Ok(file) = File::open(lock_path) else {
        return false;
    };
    // SAFETY: flock on a valid, open file descriptor.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Deletes the namespaces (and lock files) of nets whose owner is gone, and
/// any namespace already named after `own_id` (left by a reused pid).
fn remove_stale(own_id: &str) {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(error = %e, "testnet: cannot list {NETNS_DIR}");
            return;
        }
    };
    let mut stale: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(ns) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Some(id) = net_id_of(&ns) {
            stale.entry(id).or_default().push(ns);
        }
    }
    for (id, mut namespaces) in stale {
        let lock_path = Path::new(LOCK_DIR).join(format!("{id}.lock"));
        // Our own id can only be on a namespace left by an earlier process
        // with our pid: we hold its lock and have not created anything yet.
        if id != own_id && owner_alive(&lock_path) {
            continue;
        }
        // Hosts first (longer names), then the switch.
        namespaces.sort_by_key(|ns| std::cmp::Reverse(ns.len()));
        for ns in &namespaces {
            match remove_ns(ns) {
                Ok(()) => tracing::info!(ns = %ns, "testnet: removed stale namespace"),
                Err(e) => {
                    tracing::warn!(ns = %ns, error = %format!("{e:#}"), "testnet: stale namespace")
                }
            }
        }
        if id != own_id {
            let _ = fs::remove_file(&lock_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_must_be_three_octets_of_a_private_range() {
        assert_eq!(parse_subnet("10.77.0").ok(), Some([10, 77, 0]));
        assert_eq!(parse_subnet("192.168.203").ok(), Some([192, 168, 203]));
        assert_eq!(parse_subnet("172.20.1").ok(), Some([172, 20, 1]));
        for bad in [
            "8.8.8",
            "10.77",
            "10.77.0.0",
            "10.77.256",
            "",
            "a.b.c",
            "172.32.0",
        ] {
            assert!(parse_subnet(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn net_id_is_the_first_three_fields_of_a_namespace_name() {
        assert_eq!(net_id_of("tt-123-4").as_deref(), Some("tt-123-4"));
        assert_eq!(net_id_of("tt-123-4-etcd-1").as_deref(), Some("tt-123-4"));
        assert_eq!(net_id_of("tt-x-4"), None);
        assert_eq!(net_id_of("tt-123"), None);
        assert_eq!(net_id_of("other-1-2"), None);
    }
}
