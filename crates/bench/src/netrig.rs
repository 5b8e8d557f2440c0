//! The cluster of the namespace benches ([`host_loss`](crate::host_loss),
//! [`site_loss`](crate::site_loss)): a `tandem-testnet` network with three
//! etcd members (e1, e2, e3), agent hosts running real `tandem agent`
//! processes (this executable), optionally other hosts, and a control
//! namespace (`ctl`) from which a bench drives and times everything, on a
//! thread of its own. [`NetRig`] owns the network, the directory of the
//! logs and every process it started; each bench keeps its own topology,
//! trials and report.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tandem_agent::controller::ControllerRecord;
use tandem_core::model::keys;
use tandem_core::topology::Topology;
use tandem_store::Store;
use tandem_testnet::{Host, Net, default_subnet};
use tempfile::TempDir;
use tokio::time::Instant;

use crate::Connect;

/// etcd's client port on each member's address.
pub(crate) const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
const ETCD_PEER_PORT: u16 = 2380;
/// The agents' port (heartbeats, liveness connections).
pub(crate) const AGENT_PORT: u16 = 7410;
/// The etcd members, in the order they are added to the network.
pub(crate) const ETCD_MEMBERS: [&str; 3] = ["e1", "e2", "e3"];
/// The longest wait for etcd to be healthy.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);

/// What differs between the benches' clusters.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// The bench's name (`host-loss`): names the directory
    /// (`tandem-NAME-...`), the etcd cluster token (`tandem-NAME`) and the
    /// bench in the error when the network cannot be built.
    pub bench: &'static str,
    /// The agent hosts, in the order they are added to the network (which
    /// gives their addresses) and their log tails are printed in.
    pub agent_hosts: &'static [&'static str],
    /// Other hosts, added after the agent hosts, that run no agent.
    pub other_hosts: &'static [&'static str],
    /// With `Some(port)`, each agent serves the API on its host's address
    /// at this port (`--api`).
    pub api_port: Option<u16>,
    /// Lines of each agent's log printed on error.
    pub log_tail_lines: usize,
}

/// The namespaced cluster of a bench: the network, the directory of the
/// logs, the processes started in it, and the store once connected.
pub(crate) struct NetRig {
    /// The processes; declared first so that they are killed before the
    /// network is torn down.
    procs: Procs,
    spec: Spec,
    etcd: Vec<Host>,
    hosts: BTreeMap<&'static str, Host>,
    ctl: Host,
    dir: TempDir,
    /// Shared with the control thread while [`NetRig::run`] runs.
    net: Arc<Net>,
}

/// The children of a rig, killed when dropped.
#[derive(Default)]
struct Procs {
    /// etcd members and any other process (the agents' are apart).
    others: Vec<Child>,
    /// The agent of each host that has one.
    agents: BTreeMap<&'static str, Child>,
    /// The client of the cluster's store, once connected.
    store: Option<Arc<dyn Store>>,
}

impl Procs {
    /// Kills the agents, then etcd and the others (the `Net` would, too,
    /// when dropped).
    fn stop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for mut c in self.others.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Dies with the thread that spawned it (the control thread, which lives
/// as long as [`NetRig::run`]); the `Net` kills whatever is left anyway.
fn pdeathsig(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child
    // before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Lease TTL, renew interval and fence margin (ms) for a TTL.
pub(crate) fn timings(lease_ttl_ms: u64) -> (u64, u64, u64) {
    (lease_ttl_ms, lease_ttl_ms / 6, lease_ttl_ms / 3)
}

/// The last `lines` lines of the file at `path` (or why it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl NetRig {
    /// Builds the network (the etcd members, the agent hosts, the other
    /// hosts, `ctl`, in that order) and the directory of the logs
    /// (in /dev/shm if it can); starts nothing.
    pub fn new(spec: Spec) -> anyhow::Result<NetRig> {
        let mut net = Net::new(&default_subnet()).with_context(|| format!(
            "bench {} builds its own etcd cluster and hosts in network namespaces: run it as root, with iproute2 and iptables installed",
            spec.bench
        ))?;
        let etcd = ETCD_MEMBERS
            .iter()
            .map(|n| net.add_host(n))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut hosts = BTreeMap::new();
        for n in spec.agent_hosts.iter().chain(spec.other_hosts) {
            hosts.insert(*n, net.add_host(n)?);
        }
        let ctl = net.add_host("ctl")?;
        let prefix = format!("tandem-{}-", spec.bench);
        let dir = tempfile::Builder::new()
            .prefix(&prefix)
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::Builder::new().prefix(&prefix).tempdir())
            .context("cannot create a temporary directory")?;
        Ok(NetRig {
            procs: Procs::default(),
            spec,
            etcd,
            hosts,
            ctl,
            dir,
            net: Arc::new(net),
        })
    }

    /// Runs `f` on a thread inside `ctl` (on a runtime of its own), then
    /// stops every process and removes the namespaces. On error, prints
    /// the agents' log tails, keeps the directory and says where; with
    /// `keep_logs`, keeps it anyway and says so after `label` ("trial 3").
    pub fn run<T: Send>(
        mut self,
        keep_logs: bool,
        label: &str,
        f: impl AsyncFnOnce(&mut NetRig) -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        let net = Arc::clone(&self.net);
        let ctl = self.ctl.clone();
        let out = net.run_in(&ctl, || -> anyhow::Result<T> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a runtime in the control namespace")?;
            let out = rt.block_on(f(&mut self));
            if out.is_err() {
                eprintln!("{}", self.logs_tail());
            }
            self.procs.stop();
            // The store's client goes with the runtime it was made on.
            self.procs.store = None;
            out
        })?;
        drop(net);
        let NetRig {
            procs, dir, net, ..
        } = self;
        drop(procs);
        let out = match out {
            Ok(v) => v,
            Err(e) => {
                let kept = dir.keep();
                eprintln!("the bench's logs are kept in {}", kept.display());
                return Err(e);
            }
        };
        Arc::into_inner(net)
            .context("the bench's network is still in use")?
            .close()
            .context("cannot remove the bench's namespaces")?;
        if keep_logs {
            let kept = dir.keep();
            eprintln!("{label}: logs kept in {}", kept.display());
        }
        Ok(out)
    }

    /// The network, for faults (kill, isolate, cut, heal).
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The etcd members, e1 first.
    pub fn etcd(&self) -> &[Host] {
        &self.etcd
    }

    /// The control namespace, where the bench runs.
    pub fn ctl(&self) -> &Host {
        &self.ctl
    }

    /// The directory of the logs (and of whatever the bench writes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The store's client, once [`NetRig::connect`] connected it.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.procs.store.as_ref()
    }

    /// The agent host or other host `name`.
    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts
            .get(name)
            .with_context(|| format!("no host {name}"))
    }

    /// The etcd cluster's URL (`etcd://ADDR:2379,...`).
    pub fn store_url(&self) -> String {
        let members: Vec<String> = self
            .etcd
            .iter()
            .map(|h| format!("{}:{ETCD_CLIENT_PORT}", h.addr))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// The log `NAME.log` in the directory, opened to append.
    pub fn log(&self, name: &str) -> anyhow::Result<std::fs::File> {
        let path = self.dir().join(format!("{name}.log"));
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    /// Writes the topology `text` to `file` in the directory and parses it.
    pub fn write_topology(&self, file: &str, text: &str) -> anyhow::Result<Topology> {
        std::fs::write(self.dir().join(file), text)?;
        tandem_core::topology::parse(file, text)
            .map_err(|d| anyhow::anyhow!("bench topology invalid: {d}"))
    }

    /// Starts `cmd` in `host`'s namespace, dying with the control thread;
    /// it is killed when the rig stops.
    pub fn spawn(&mut self, host: &Host, cmd: &mut Command) -> anyhow::Result<()> {
        pdeathsig(cmd);
        let child = self.net.spawn(host, cmd)?;
        self.procs.others.push(child);
        Ok(())
    }

    /// Starts the etcd members (each logs to NAME.log).
    pub fn start_etcd(&mut self) -> anyhow::Result<()> {
        let initial: Vec<String> = self
            .etcd
            .iter()
            .map(|m| format!("{}=http://{}:{ETCD_PEER_PORT}", m.name, m.addr))
            .collect();
        let initial = initial.join(",");
        let token = format!("tandem-{}", self.spec.bench);
        for m in self.etcd.clone() {
            let client = format!("http://{}:{ETCD_CLIENT_PORT}", m.addr);
            let peer = format!("http://{}:{ETCD_PEER_PORT}", m.addr);
            let data = self.dir().join("etcd").join(&m.name);
            let args = tandem_store_etcd::testing::Member {
                name: &m.name,
                client_url: &client,
                peer_url: &peer,
                initial_cluster: &initial,
                token: &token,
                data_dir: &data,
            }
            .args();
            let log = self.log(&m.name)?;
            let mut cmd = Command::new("etcd");
            cmd.args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            self.spawn(&m, &mut cmd)
                .context("cannot start etcd (apt-get install etcd-server)")?;
        }
        Ok(())
    }

    /// Waits until every etcd member says it is healthy.
    pub async fn wait_etcd(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(1))
            .build()?;
        let deadline = Instant::now() + ETCD_TIMEOUT;
        for m in &self.etcd {
            let url = format!("http://{}:{ETCD_CLIENT_PORT}/health", m.addr);
            loop {
                let ok = match http.get(&url).send().await {
                    Ok(r) => r
                        .text()
                        .await
                        .is_ok_and(|b| b.contains("\"health\":\"true\"")),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd member {} not healthy within {} s",
                        m.name,
                        ETCD_TIMEOUT.as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Connects to the etcd cluster, stores `topology` and keeps the
    /// client (see [`NetRig::store`]).
    pub async fn connect(
        &mut self,
        connect: &impl Connect,
        topology: &Topology,
    ) -> anyhow::Result<()> {
        let store = connect.connect(&self.store_url()).await?;
        store
            .put(keys::TOPOLOGY, serde_json::to_vec(topology)?, None)
            .await
            .context("cannot store the topology")?;
        self.procs.store = Some(store);
        Ok(())
    }

    /// Starts `tandem agent` on `name`, serving the API if the spec says
    /// so (its log appends to agent-NAME.log); an agent it had before is
    /// killed.
    pub fn start_agent(&mut self, name: &'static str) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let host = self.host(name)?.clone();
        let log = self.log(&format!("agent-{name}"))?;
        let mut cmd = Command::new(exe);
        cmd.args(["agent", "--store", &self.store_url(), "--host", name]);
        if let Some(port) = self.spec.api_port {
            cmd.arg("--api").arg(format!("{}:{port}", host.addr));
        }
        cmd.arg("--data-dir")
            .arg(self.dir().join(format!("{name}.agent")))
            .args(["--log-level", "info"])
            .env("NO_COLOR", "1")
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        pdeathsig(&mut cmd);
        let child = self
            .net
            .spawn(&host, &mut cmd)
            .with_context(|| format!("cannot start the agent of {name}"))?;
        if let Some(mut old) = self.procs.agents.insert(name, child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        Ok(())
    }

    /// True if `name`'s agent process runs.
    pub fn agent_alive(&mut self, name: &str) -> bool {
        self.procs
            .agents
            .get_mut(name)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Forgets `name`'s agent, waiting for it (once its namespace was
    /// killed).
    pub fn reap_agent(&mut self, name: &str) {
        if let Some(mut c) = self.procs.agents.remove(name) {
            let _ = c.wait();
        }
    }

    /// The host whose agent is the controller now.
    pub async fn controller(&self) -> Option<String> {
        let kv = self.store()?.get(keys::CONTROLLER).await.ok()??;
        serde_json::from_slice::<ControllerRecord>(&kv.value)
            .ok()
            .map(|r| r.host)
    }

    /// Waits, at most `timeout`, until `host` is the controller.
    pub async fn wait_controller(&self, host: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.controller().await;
            if now.as_deref() == Some(host) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{host} was not elected controller within {} s (controller: {})",
                    timeout.as_secs(),
                    now.as_deref().unwrap_or("none")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every agent's log, for error messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for h in self.spec.agent_hosts {
            let path = self.dir().join(format!("agent-{h}.log"));
            out.push_str(&format!(
                "--- agent-{h}.log ---\n{}\n",
                tail(&path, self.spec.log_tail_lines)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_and_says_why_a_file_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "1\n2\n3\n").unwrap();
        assert_eq!(tail(&path, 2), "2\n3");
        assert_eq!(tail(&path, 10), "1\n2\n3");
        assert!(tail(&dir.path().join("none.log"), 2).starts_with('('));
    }

    #[test]
    fn timings_are_the_ttl_a_sixth_and_a_third() {
        assert_eq!(timings(3000), (3000, 500, 1000));
    }
}
